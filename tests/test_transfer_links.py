"""The connector's transfer links (connector/transfers.py) against two stand-in transfers on real
links: a chat the lost transfer acknowledged but never answered with its commit goes out again
through the other one, ahead of anything newer, and a chat whose commit came back does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from common.config import Settings
from common.ids import conversation_key
from common.link import Link, LinkConfig, serve_links
from common.tokens import TokenSigner
from connector.transfers import TransferLinks
from proto import im_pb2

pytestmark = pytest.mark.asyncio
SIGNER = TokenSigner(b"transfer-links-test-secret-0123")


@dataclass
class StandIn:
    """A transfer that greets back, takes frames (the link acks them) and answers nothing
    unless told to: ``got`` is what reached it, in order."""

    name: str
    got: list[im_pb2.Envelope] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    server: asyncio.Server | None = None

    def handler(self, link: Link) -> StandInLink:
        self.links.append(link)
        return StandInLink(self)


class StandInLink:
    def __init__(self, t: StandIn) -> None:
        self.t = t

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        if env.WhichOneof("body") == "greet":
            link.authenticated = True
            link.send_control(im_pb2.Envelope(welcome=im_pb2.Welcome(node_id=self.t.name)))
            return
        self.t.got.append(env)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        pass


def chat(n: int) -> im_pb2.Envelope:
    return im_pb2.Envelope(
        chat=im_pb2.ChatMsg(id=n, from_id="alice", dest_id="bob", dest_type=im_pb2.SINGLE)
    )


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[tuple[TransferLinks, dict[str, StandIn]]]:
    config = LinkConfig()
    standins = {name: StandIn(name) for name in ("t1", "t2")}
    addrs: dict[str, str] = {}
    for name, t in standins.items():
        t.server = await serve_links("127.0.0.1", 0, t.handler, config)
        addrs[name] = f"127.0.0.1:{t.server.sockets[0].getsockname()[1]}"

    async def source() -> dict[str, str]:
        return dict(addrs)

    fanouts: list[im_pb2.Fanout] = []
    links = TransferLinks(
        Settings(secret="transfer-links-test-secret-0123"),
        "c1",
        SIGNER,
        source,
        fanouts.append,
        lambda: None,
    )
    links.reconcile(await source())
    for _ in range(200):
        if all(h.ready.is_set() for h in links.handlers.values()):
            break
        await asyncio.sleep(0.02)
    try:
        yield links, standins
    finally:
        await links.close()
        for t in standins.values():
            assert t.server is not None
            t.server.close()


async def until(check: object, timeout: float = 5.0) -> None:
    assert callable(check)
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_an_acked_chat_not_seen_committed_goes_again_before_newer_ones(
    pair: tuple[TransferLinks, dict[str, StandIn]],
) -> None:
    links, standins = pair
    key = conversation_key("alice", "bob")
    first = links.pick_handler(key)
    assert first is not None and first.link is not None
    owner, other = standins[first.node_id], standins[{"t1": "t2", "t2": "t1"}[first.node_id]]
    for n in (1, 2, 3):
        await links.forward(chat(n), key)
    await until(lambda: len(owner.got) == 3 and first.link is not None and not first.link.unacked)
    # the commit of chat 1 comes back; 2 and 3 were acked by the link but never answered
    fanout = im_pb2.Envelope(fanout=im_pb2.Fanout(users=["alice"], chat=chat(1).chat))
    await owner.links[-1].send(fanout)
    await until(lambda: ("alice", 1) not in first.in_commit)
    assert owner.server is not None
    owner.server.close()  # the transfer is gone (as if SIGKILLed before publishing 2 and 3)
    owner.links[-1].close()
    await until(lambda: len(other.got) == 2)
    await links.forward(chat(4), key)  # newer: after the ones forwarded again
    await until(lambda: len(other.got) == 3)
    assert [e.chat.id for e in other.got] == [2, 3, 4]


async def test_a_conversation_moving_to_another_transfer_waits_for_its_chats_in_commit(
    pair: tuple[TransferLinks, dict[str, StandIn]],
) -> None:
    """Chat 1 is in commit through its transfer when the conversation moves to the other one
    (here: its transfer stops being ready): chat 2 goes only once chat 1's commit came back,
    so it cannot be committed first."""
    links, standins = pair
    key = conversation_key("alice", "bob")
    first = links.pick_handler(key)
    assert first is not None and first.link is not None
    owner, other = standins[first.node_id], standins[{"t1": "t2", "t2": "t1"}[first.node_id]]
    await links.forward(chat(1), key)
    await until(lambda: len(owner.got) == 1)
    first.ready.clear()  # the conversation now hashes to the other transfer
    moving = asyncio.create_task(links.forward(chat(2), key))
    await asyncio.sleep(0.3)
    assert other.got == [] and not moving.done()  # held: chat 1 is not committed yet
    fanout = im_pb2.Envelope(fanout=im_pb2.Fanout(users=["alice"], chat=chat(1).chat))
    await owner.links[-1].send(fanout)
    await asyncio.wait_for(moving, 2.0)
    await until(lambda: len(other.got) == 1)
    assert other.got[0].chat.id == 2
