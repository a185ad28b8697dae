"""A client session that closes hands back everything it still held, in order: unacked frames,
then queued chats and receipts, then what kept arriving for the device while it did so."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from test_session_fuzz import SECRET, USER, FakeLink, Friends

from common.config import Settings
from common.link import Link
from common.tokens import TokenSigner
from connector.server import ClientSession, Connector
from proto import im_pb2
from user_status.memory import MemoryUserStatus

pytestmark = pytest.mark.asyncio


class StuckStore:
    """A drain that does not return until released: the pump is busy, pushes queue up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def drain(self, user_id: str, limit: int = 1000, **kw: Any) -> list[Any]:
        await self.release.wait()
        return []


def chat(n: int) -> im_pb2.Envelope:
    return im_pb2.Envelope(chat=im_pb2.ChatMsg(id=n, from_id="bob", dest_id=USER))


def receipt(n: int) -> im_pb2.Envelope:
    return im_pb2.Envelope(
        ack=im_pb2.AckMsg(id=n, from_id="bob", dest_id=USER, ack_type=im_pb2.SENT, ack_msg_id=n)
    )


async def test_queued_pushes_are_handed_back_even_with_nothing_unacked() -> None:
    signer = TokenSigner(SECRET)
    store = StuckStore()
    settings = Settings(secret=SECRET.decode())
    connector = Connector(settings, MemoryUserStatus(), cast(Any, store), Friends(), signer)
    bounced: list[int] = []

    async def bounce(env: im_pb2.Envelope) -> None:
        bounced.append(env.chat.id if env.WhichOneof("body") == "chat" else -env.ack.id)
        if env.WhichOneof("body") == "chat" and env.chat.id == 2:
            # arrives for the device while the session hands back: must come after the rest
            assert session.push(chat(3))

    connector.bounce = bounce  # type: ignore[method-assign]
    session = ClientSession(connector)
    link = FakeLink()
    session.link = cast(Link, link)
    token = signer.issue(USER, 60, device_id="d1")
    await session.on_frame(cast(Link, link), im_pb2.Envelope(greet=im_pb2.Greet(token=token)))
    await asyncio.sleep(0.01)  # the pump is in the (stuck) drain now
    assert session.push(chat(1)) and session.push(receipt(7)) and session.push(chat(2))
    link.closing = True
    store.release.set()
    await asyncio.wait_for(session.on_closed(cast(Link, link), []), 2.0)
    assert bounced == [-7, 1, 2, 3]  # receipts first (no order among chats), chats in order
    assert connector.sessions_of(USER) == []
