"""The transfer on its own: real links from stand-in connectors, the in-memory user status,
timeline queue, writer and store. What is checked is the fanout rule: one Fanout per connector
holding a device of the chat's sender or recipient, naming those of the two it has; the origin
always; refusals to the sender only; cursors that moved to the peer (and a READ to the reader)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from common.config import Settings
from common.link import Link, LinkConfig, open_link
from common.tokens import TokenSigner
from proto import im_pb2
from timeline import MemoryTimelineQueue, MemoryTimelineStore, TimelineWriter
from transfer.server import CURSORS_IN_FLIGHT, Transfer
from user_status import MemoryUserStatus

SECRET = "transfer-test-secret-0123456789"
CONV = "p:alice:bob"


@dataclass
class FakeConnector:
    """A connector's end of a transfer link: keeps every Fanout it is sent."""

    node_id: str
    fanouts: asyncio.Queue[im_pb2.Fanout] = field(default_factory=asyncio.Queue)
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    link: Link | None = None

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "welcome":
            self.welcomed.set()
        elif kind == "fanout":
            self.fanouts.put_nowait(env.fanout)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        pass

    async def next(self, timeout: float = 5.0) -> im_pb2.Fanout:
        return await asyncio.wait_for(self.fanouts.get(), timeout)

    async def nothing(self, wait: float = 0.3) -> None:
        await asyncio.sleep(wait)
        assert self.fanouts.empty(), self.fanouts.get_nowait()

    async def send(self, env: im_pb2.Envelope) -> None:
        assert self.link is not None
        await self.link.send(env)


@dataclass
class Rig:
    transfer: Transfer
    status: MemoryUserStatus
    store: MemoryTimelineStore
    c1: FakeConnector
    c2: FakeConnector


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = Settings(
        data_dir=tmp_path, secret=SECRET, transfer_port=0, node_id="t1", bind_host="127.0.0.1"
    )
    signer = TokenSigner(settings.signing_secret())
    status = MemoryUserStatus()
    queue = MemoryTimelineQueue()
    store = MemoryTimelineStore()
    writer = asyncio.create_task(TimelineWriter(queue, store).run())
    transfer = Transfer(settings, status, signer, queue)
    await transfer.start()
    config = LinkConfig.from_settings(settings, node=True)
    connectors = []
    for node in ("c1", "c2"):
        await status.beat("connector", node, f"127.0.0.1:{node}", 60.0)
        fake = FakeConnector(node)
        fake.link = await open_link("127.0.0.1", transfer.port, fake, config)
        token = signer.issue(node, 3600, role="node")
        fake.link.send_control(im_pb2.Envelope(greet=im_pb2.Greet(token=token, node_id=node)))
        await asyncio.wait_for(fake.welcomed.wait(), 5)
        connectors.append(fake)
    try:
        yield Rig(transfer, status, store, connectors[0], connectors[1])
    finally:
        for fake in connectors:
            assert fake.link is not None
            fake.link.close()
        await transfer.stop(grace=1.0)
        await queue.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


def chat(
    msg_id: int, body: bytes = b"sealed", frm: str = "alice", to: str = "bob"
) -> im_pb2.Envelope:
    return im_pb2.Envelope(
        chat=im_pb2.ChatMsg(
            id=msg_id,
            from_id=frm,
            dest_id=to,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=body,
            create_time=1,
        )
    )


def cursor(user: str, kind: im_pb2.AckType, seq: int, device: str = "d") -> im_pb2.Envelope:
    record = im_pb2.TimelineRecord(
        cursor=im_pb2.Cursor(conv_id=CONV, user_id=user, type=kind, seq=seq), device_id=device
    )
    return im_pb2.Envelope(record=record)


async def place(status: MemoryUserStatus) -> None:
    """alice: a phone on c1 (it sends), a laptop on c2; bob: one device on c2."""
    await status.online("alice", "phone", "c1")
    await status.online("alice", "laptop", "c2")
    await status.online("bob", "tablet", "c2")


@pytest.mark.asyncio
async def test_committed_chat_goes_once_per_connector_with_its_users(rig: Rig) -> None:
    await place(rig.status)
    await rig.c1.send(chat(1 << 20))
    at_origin, at_other = await rig.c1.next(), await rig.c2.next()
    assert list(at_origin.users) == ["alice"]
    assert sorted(at_other.users) == ["alice", "bob"]
    for fanout in (at_origin, at_other):
        assert fanout.WhichOneof("body") == "chat" and not fanout.refused
        assert (fanout.chat.conv_id, fanout.chat.seq) == (CONV, 1)
        assert fanout.chat.server_time > 0 and fanout.chat.id == 1 << 20
    await rig.c2.send(chat(2 << 20, frm="bob", to="alice"))
    # bob's chat: alice's phone on c1, alice's laptop and bob (the origin) on c2
    assert list((await rig.c1.next()).users) == ["alice"]
    second = await rig.c2.next()
    assert sorted(second.users) == ["alice", "bob"] and second.chat.seq == 2
    assert rig.transfer.committed == 2
    await rig.c1.nothing()
    await rig.c2.nothing()


@pytest.mark.asyncio
async def test_origin_gets_the_fanout_even_when_the_lookup_misses(rig: Rig) -> None:
    """Nobody is online as far as the registry knows (a stale cache, a slow announce): the
    origin still gets the chat naming its sender, who waits for SENT."""
    await rig.c1.send(chat(5))
    fanout = await rig.c1.next()
    assert list(fanout.users) == ["alice"] and fanout.chat.seq == 1
    await rig.c2.nothing()


@pytest.mark.asyncio
async def test_resend_is_fanned_out_again_with_its_seq(rig: Rig) -> None:
    await place(rig.status)
    for _ in range(2):
        await rig.c1.send(chat(7))
        assert (await rig.c1.next()).chat.seq == 1
        assert (await rig.c2.next()).chat.seq == 1
    assert len(rig.store._convs[CONV].seqs) == 1


@pytest.mark.asyncio
async def test_reused_id_is_refused_to_the_sender_only(rig: Rig) -> None:
    await place(rig.status)
    await rig.c1.send(chat(9, b"first"))
    await rig.c1.next()
    await rig.c2.next()
    await rig.c1.send(chat(9, b"other content"))
    for fake in (rig.c1, rig.c2):
        fanout = await fake.next()
        assert list(fanout.users) == ["alice"]  # bob never hears of it
        assert fanout.refused == im_pb2.ID_REUSED and fanout.chat.id == 9


@pytest.mark.asyncio
async def test_one_conversation_fans_out_in_seq_order(rig: Rig) -> None:
    await place(rig.status)
    for i in range(1, 51):
        await rig.c1.send(chat(i))
    seqs = [(await rig.c2.next()).chat.seq for _ in range(50)]
    assert seqs == list(range(1, 51))


@pytest.mark.asyncio
async def test_moved_cursors_reach_the_peer_and_the_reader(rig: Rig) -> None:
    await place(rig.status)
    for i in (1, 2):
        await rig.c1.send(chat(i))
        await rig.c1.next()
        await rig.c2.next()
    # bob's device has both: alice (on c1 and c2) hears DELIVERED; bob himself does not
    await rig.c2.send(cursor("bob", im_pb2.DELIVERED, 2, "tablet"))
    for fake in (rig.c1, rig.c2):
        fanout = await fake.next()
        assert list(fanout.users) == ["alice"]
        assert fanout.cursor == im_pb2.Cursor(
            conv_id=CONV, user_id="bob", type=im_pb2.DELIVERED, seq=2
        )
    # a repeat does not move: nothing goes out
    await rig.c2.send(cursor("bob", im_pb2.DELIVERED, 2, "tablet"))
    await rig.c1.nothing()
    # bob read 1: alice's devices and bob's own (c2 holds both users)
    await rig.c2.send(cursor("bob", im_pb2.READ, 1))
    assert list((await rig.c1.next()).users) == ["alice"]
    read = await rig.c2.next()
    assert sorted(read.users) == ["alice", "bob"]
    assert (read.cursor.type, read.cursor.seq, read.cursor.user_id) == (im_pb2.READ, 1, "bob")


@pytest.mark.asyncio
async def test_a_bad_record_is_refused_not_fatal(rig: Rig) -> None:
    await rig.c1.send(cursor("", im_pb2.READ, 1))  # no user: the connector must fill it in
    await rig.c1.send(chat(3))
    assert (await rig.c1.next()).chat.seq == 1  # the link still works


@pytest.mark.asyncio
async def test_cursors_waiting_for_a_slot_are_coalesced_not_held_on_the_link(rig: Rig) -> None:
    """Every merge slot busy: cursors wait in a table, one per (conversation, user, type,
    device) at the highest seq asked, and the link goes on carrying chats meanwhile."""
    await place(rig.status)
    for i in range(1, 6):
        await rig.c1.send(chat(i))
        await rig.c1.next()
        await rig.c2.next()
    t = rig.transfer
    t._cursors_in_flight += CURSORS_IN_FLIGHT  # as if 2000 merges were under way
    for seq in (1, 3, 2, 5, 4):
        await rig.c2.send(cursor("bob", im_pb2.DELIVERED, seq, "tablet"))
    await rig.c1.send(chat(6))  # not stuck behind the cursors
    assert (await rig.c1.next()).chat.seq == 6
    assert (await rig.c2.next()).chat.seq == 6
    assert len(rig.transfer._pending) == 1
    t._cursors_in_flight -= CURSORS_IN_FLIGHT
    assert t._slot_room is not None  # the drainer waits for a slot
    t._slot_room.set()
    moved = [await rig.c1.next()]
    await rig.c1.nothing()  # one merge for the five
    assert moved[0].cursor.seq == 5 and moved[0].cursor.type == im_pb2.DELIVERED
    assert (await rig.c2.next()).cursor.seq == 5


@pytest.mark.asyncio
async def test_a_failing_cursor_fanout_frees_its_slot_and_the_next_goes_out(rig: Rig) -> None:
    """A bug in one cursor's fanout is logged; its slot comes back and later cursors are told."""
    await place(rig.status)
    for i in (1, 2):
        await rig.c1.send(chat(i))
        await rig.c1.next()
        await rig.c2.next()
    t = rig.transfer
    real = t._fan_cursor
    failed: list[int] = []

    async def broken(moved: im_pb2.Cursor) -> None:
        failed.append(moved.seq)
        raise RuntimeError("bug in a fanout (test)")

    t._fan_cursor = broken  # type: ignore[method-assign]
    await rig.c2.send(cursor("bob", im_pb2.DELIVERED, 1, "tablet"))
    for _ in range(100):
        if failed and t._cursors_in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert failed == [1] and t._cursors_in_flight == 0
    await rig.c1.nothing()
    t._fan_cursor = real  # type: ignore[method-assign]
    await rig.c2.send(cursor("bob", im_pb2.DELIVERED, 2, "tablet"))
    for fake in (rig.c1, rig.c2):
        assert (await fake.next()).cursor.seq == 2
    assert t._cursors_in_flight == 0
