"""The sync-by-cursor wire (proto/im.proto) as the connector speaks it, seen from raw devices on
the embedded stack: the listing after WELCOME (ConvState ... CaughtUp), Sync pages and their
SyncDone, cursors and their errors, SENT's fields, fanout to the sender's other devices, and
TOO_LARGE. No client library in between: each frame is what the connector sent."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from rawdevice import RawDevice, settle, until
from test_e2e import make_users, stack_settings

from cli.stack import Stack
from proto import im_pb2

pytestmark = pytest.mark.asyncio

AB, BC = "p:alice:bob", "p:bob:carol"


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


async def users(st: Stack) -> None:
    for c in await make_users(st, "alice", "bob", "carol", connect=False):
        await c.close()


async def fill(st: Stack, n: int, frm: str = "alice", to: str = "bob") -> list[int]:
    """``n`` chats from ``frm`` to ``to``, all SENT."""
    dev = await RawDevice(frm, f"filler-{frm}").connect(st)
    try:
        ids = [await dev.send_chat(to, b"m%d" % i) for i in range(n)]
        await until(lambda: all(dev.sent(i) for i in ids), 10)
        return ids
    finally:
        await dev.close()


async def test_a_new_device_is_listed_every_conversation_then_caught_up(stack: Stack) -> None:
    await users(stack)
    await fill(stack, 3)
    await fill(stack, 2, "carol", "bob")
    before = int(time.time() * 1000)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        await until(lambda: bob.caught_ups)
        kinds = [e.WhichOneof("body") for e in bob.frames]
        assert kinds.index("caught_up") == len(kinds) - 1, "CaughtUp ends the listing"
        states = {s.conv_id: s for s in bob.conv_states}
        assert set(states) == {AB, BC}
        ab = states[AB]
        assert (ab.type, ab.peer_id, ab.last_seq, ab.unread) == (im_pb2.SINGLE, "alice", 3, 3)
        assert ab.min_seq == 1 and ab.read_seq == 0 and ab.device_seq == 0
        assert (states[BC].peer_id, states[BC].last_seq) == ("carol", 2)
        assert bob.caught_ups[0].since >= before - 1000
    finally:
        await bob.close()


async def test_a_device_greeting_with_a_later_since_is_listed_nothing(stack: Stack) -> None:
    await users(stack)
    await fill(stack, 2)
    future = int(time.time() * 1000) + 3_600_000
    bob = await RawDevice("bob", "pc").connect(stack, since=future)
    try:
        await until(lambda: bob.caught_ups)
        assert bob.conv_states == []
    finally:
        await bob.close()


async def test_sync_pages_and_sync_done(stack: Stack) -> None:
    await users(stack)
    ids = await fill(stack, 250)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        await until(lambda: bob.caught_ups)
        bob.clear()
        await bob.send_sync(AB, 1)
        await until(lambda: bob.sync_dones)
        assert [c.seq for c in bob.chats] == list(range(1, 201))
        assert [c.id for c in bob.chats] == ids[:200]
        d = bob.sync_dones[0]
        assert (d.conv_id, d.from_seq, d.to_seq, d.last_seq) == (AB, 1, 200, 250)
        bob.clear()
        await bob.send_sync(AB, 201)
        await until(lambda: bob.sync_dones)
        assert [c.seq for c in bob.chats] == list(range(201, 251))
        d = bob.sync_dones[0]
        assert (d.from_seq, d.to_seq, d.last_seq) == (201, 250, 250)
        bob.clear()
        await bob.send_sync(AB, 0, to_seq=10, limit=5)  # from 0 is from 1
        await until(lambda: bob.sync_dones)
        assert [c.seq for c in bob.chats] == [1, 2, 3, 4, 5]
        assert bob.sync_dones[0].to_seq == 5
        bob.clear()
        await bob.send_sync(AB, 300)
        await until(lambda: bob.sync_dones)
        d = bob.sync_dones[0]
        assert bob.chats == [] and (d.from_seq, d.to_seq, d.last_seq) == (300, 299, 250)
    finally:
        await bob.close()


async def test_sync_of_someone_elses_conversation_is_not_member(stack: Stack) -> None:
    await users(stack)
    await fill(stack, 1, "carol", "bob")
    alice = await RawDevice("alice", "pc").connect(stack)
    try:
        await alice.send_sync(BC, 1)
        await until(lambda: alice.errors)
        assert alice.codes() == ["NOT_MEMBER"] and alice.chats == []
        await settle(0.2)
        assert alice.link is not None and not alice.link.closing
    finally:
        await alice.close()


async def test_cursor_errors_are_not_fatal(stack: Stack) -> None:
    await users(stack)
    await fill(stack, 1)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        await bob.send_cursor(AB, im_pb2.READ, 1, user_id="alice")
        await until(lambda: len(bob.errors) == 1)
        await bob.send_cursor("p:alice:carol", im_pb2.READ, 1)
        await until(lambda: len(bob.errors) == 2)
        await bob.send_cursor("not a conv", im_pb2.READ, 1)
        await until(lambda: len(bob.errors) == 3)
        await bob.send_cursor(AB, im_pb2.READ, 0)
        await until(lambda: len(bob.errors) == 4)
        await bob.send_cursor(AB, im_pb2.SENT, 1)
        await until(lambda: len(bob.errors) == 5)
        assert bob.codes() == [
            "SPOOFED_SENDER",
            "NOT_MEMBER",
            "NOT_MEMBER",
            "BAD_MESSAGE",
            "BAD_MESSAGE",
        ]
        assert bob.link is not None and not bob.link.closing
    finally:
        await bob.close()


async def test_sent_names_the_place_and_the_senders_other_devices_get_the_chat(
    stack: Stack,
) -> None:
    await users(stack)
    laptop = await RawDevice("alice", "laptop").connect(stack)
    phone = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        mid = await laptop.send_chat("bob", b"hi")
        await until(lambda: laptop.sent(mid) and phone.chats and bob.chats)
        (ack,) = laptop.sent(mid)
        assert (ack.conv_id, ack.seq, ack.from_id, ack.dest_id) == (AB, 1, "bob", "alice")
        for dev in (phone, bob):
            (chat,) = dev.chats
            assert (chat.id, chat.from_id, chat.conv_id, chat.seq) == (mid, "alice", AB, 1)
        await settle(0.3)
        assert laptop.chats == [], "the sending device gets SENT, not its own chat"
        assert phone.sent(mid) == []
    finally:
        for d in (laptop, phone, bob):
            await d.close()


async def test_cursors_reach_the_peer_and_the_readers_other_devices(stack: Stack) -> None:
    await users(stack)
    alice = await RawDevice("alice", "pc").connect(stack)
    phone = await RawDevice("bob", "phone").connect(stack)
    pc = await RawDevice("bob", "pc").connect(stack)
    try:
        for i in range(2):
            await alice.send_chat("bob", b"m%d" % i)
        await until(lambda: len(pc.chats) == 2)
        await pc.send_cursor(AB, im_pb2.DELIVERED, 2)
        await until(lambda: alice.cursors)
        assert [(c.user_id, c.type, c.seq) for c in alice.cursors] == [("bob", im_pb2.DELIVERED, 2)]
        await pc.send_cursor(AB, im_pb2.READ, 1)
        await until(lambda: len(alice.cursors) == 2 and phone.cursors)
        assert (alice.cursors[1].type, alice.cursors[1].seq) == (im_pb2.READ, 1)
        assert [(c.user_id, c.type, c.seq) for c in phone.cursors] == [("bob", im_pb2.READ, 1)]
        # what a device is listed afterwards carries the cursors
        fresh = await RawDevice("alice", "new").connect(stack)
        try:
            await until(lambda: fresh.caught_ups)
            (cs,) = fresh.conv_states
            assert (cs.last_seq, cs.peer_delivered_seq, cs.peer_read_seq) == (2, 2, 1)
        finally:
            await fresh.close()
        again = await RawDevice("bob", "pc").connect(stack)
        try:
            await until(lambda: again.caught_ups)
            (cs,) = again.conv_states
            assert (cs.read_seq, cs.device_seq, cs.unread) == (1, 2, 1)
        finally:
            await again.close()
    finally:
        for d in (alice, phone, pc):
            await d.close()


async def test_a_body_over_the_limit_is_too_large_and_not_fatal(stack: Stack) -> None:
    await users(stack)
    alice = await RawDevice("alice", "pc").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        assert alice.welcome is not None
        limit = alice.welcome.result().max_body_bytes
        assert limit > 0
        mid = await alice.send_chat("bob", b"x" * (limit + 1))
        await until(lambda: alice.errors)
        assert alice.codes() == ["TOO_LARGE"] and alice.errors[0].ref_msg_id == mid
        ok = await alice.send_chat("bob", b"x" * limit)
        await until(lambda: alice.sent(ok) and bob.chats)
        assert [c.id for c in bob.chats] == [ok]
    finally:
        await alice.close()
        await bob.close()
