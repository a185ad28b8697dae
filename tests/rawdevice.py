"""A device that speaks raw frames of proto/im.proto to a running stack: it records everything,
dedupes nothing, answers nothing by itself (its link acks what it receives: that is the link
layer's job). Tests of the wire use it to see exactly what the connector sends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from conftest import poll_until
from test_e2e import PW, conn_addr, rest_url

from cli.stack import Stack
from client.rest import RestClient
from common.ids import MessageIdGen
from common.link import Link, LinkConfig, open_link
from proto import im_pb2


class RawDevice:
    def __init__(self, user: str, device: str) -> None:
        self.user, self.device = user, device
        self.frames: list[im_pb2.Envelope] = []  # every frame after WELCOME, in order
        self.welcome: asyncio.Future[im_pb2.Welcome] | None = None
        self.link: Link | None = None
        self.closed = asyncio.Event()
        self.slot = 0
        self.ids = MessageIdGen()
        self.token = ""

    # -- LinkHandler -------------------------------------------------------------------------

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        if env.WhichOneof("body") == "welcome":
            if self.welcome is not None and not self.welcome.done():
                self.welcome.set_result(env.welcome)
            return
        self.frames.append(env)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if self.welcome is not None and not self.welcome.done():
            self.welcome.cancel()
        self.closed.set()

    # -- life --------------------------------------------------------------------------------

    async def connect(self, st: Stack, since: int = 0) -> RawDevice:
        """Log in over REST (a slot of its own), GREET with ``since``, wait for WELCOME."""
        rest = RestClient(rest_url(st))
        try:
            login = await rest.login(self.user, PW, self.device)
        finally:
            await rest.close()
        self.token, self.slot = login.token, login.slot
        self.ids.slot = login.slot
        self.welcome = asyncio.get_running_loop().create_future()
        self.closed.clear()
        self.link = await open_link(*conn_addr(st), self, LinkConfig(), name=self.device)
        greet = im_pb2.Greet(token=self.token, device_id=self.device, since=since)
        self.link.send_control(im_pb2.Envelope(greet=greet))
        welcome = await asyncio.wait_for(self.welcome, 5)
        assert welcome.id_slot == self.slot
        return self

    async def close(self) -> None:
        if self.link is not None:
            self.link.close()
            await self.link.wait_closed()

    # -- sending -----------------------------------------------------------------------------

    async def send(self, env: im_pb2.Envelope) -> int:
        assert self.link is not None
        return await self.link.send(env)

    async def send_chat(self, to: str, body: bytes, msg_id: int = 0, **fields: object) -> int:
        chat = im_pb2.ChatMsg(
            id=msg_id or self.ids(),
            from_id=self.user,
            dest_id=to,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=body,
            **fields,  # type: ignore[arg-type]
        )
        await self.send(im_pb2.Envelope(chat=chat))
        return chat.id

    async def send_cursor(self, conv_id: str, kind: int, seq: int, user_id: str = "") -> int:
        cur = im_pb2.Cursor(conv_id=conv_id, user_id=user_id, type=kind, seq=seq)  # type: ignore[arg-type]
        return await self.send(im_pb2.Envelope(cursor=cur))

    async def send_sync(self, conv_id: str, from_seq: int, to_seq: int = 0, limit: int = 0) -> int:
        sync = im_pb2.Sync(conv_id=conv_id, from_seq=from_seq, to_seq=to_seq, limit=limit)
        return await self.send(im_pb2.Envelope(sync=sync))

    # -- what came ---------------------------------------------------------------------------

    def of(self, kind: str) -> list[object]:
        return [getattr(e, kind) for e in self.frames if e.WhichOneof("body") == kind]

    @property
    def chats(self) -> list[im_pb2.ChatMsg]:
        return self.of("chat")  # type: ignore[return-value]

    @property
    def acks(self) -> list[im_pb2.AckMsg]:
        return self.of("ack")  # type: ignore[return-value]

    @property
    def errors(self) -> list[im_pb2.Error]:
        return self.of("error")  # type: ignore[return-value]

    @property
    def cursors(self) -> list[im_pb2.Cursor]:
        return self.of("cursor")  # type: ignore[return-value]

    @property
    def conv_states(self) -> list[im_pb2.ConvState]:
        return self.of("conv_state")  # type: ignore[return-value]

    @property
    def caught_ups(self) -> list[im_pb2.CaughtUp]:
        return self.of("caught_up")  # type: ignore[return-value]

    @property
    def sync_dones(self) -> list[im_pb2.SyncDone]:
        return self.of("sync_done")  # type: ignore[return-value]

    def sent(self, msg_id: int) -> list[im_pb2.AckMsg]:
        """The SENTs for ``msg_id``."""
        return [a for a in self.acks if a.ack_type == im_pb2.SENT and a.ack_msg_id == msg_id]

    def codes(self) -> list[str]:
        return [im_pb2.ErrorCode.Name(e.code) for e in self.errors]

    def clear(self) -> None:
        self.frames.clear()


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    assert await poll_until(lambda: bool(cond()), timeout, 0.02), "condition never held"


async def settle(seconds: float = 0.5) -> None:
    """Give a frame that should not come the time to come."""
    await asyncio.sleep(seconds)
