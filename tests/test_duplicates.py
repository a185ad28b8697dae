"""Issue 12, findings 3, 8 and 9, in the timeline model, end to end on raw devices (no client
library dedupe):

- ids are unique per sender across its devices (slots); a resend is the same message (SENT
  again with the same seq, one row in the timeline), a reuse for other content is ID_REUSED
  and never SENT;
- cursors are idempotent: a repeated or lower one moves nothing and reaches the peer once;
- server-stamped fields a client sets (conv_id, seq, server_time) do not survive the edge.

Each test runs on the embedded stack and on one whose user status is in the test Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import REDIS_URL, connect_redis
from rawdevice import RawDevice, settle, until
from test_e2e import make_users, stack_settings

from cli.stack import Stack
from common.ids import MessageIdGen, slot_of
from proto import im_pb2

pytestmark = pytest.mark.asyncio

CONV = "p:alice:bob"


@pytest_asyncio.fixture(params=["embedded", "redis"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    extra: dict[str, str] = {}
    prefix = f"imtest:{uuid.uuid4().hex[:10]}:"
    client: aioredis.Redis | None = None
    if request.param == "redis":
        client = await connect_redis(REDIS_URL)
        extra = {"redis_url": REDIS_URL, "redis_prefix": prefix}
    st = Stack(stack_settings(tmp_path, **extra))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()
        if client is not None:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


async def friends(st: Stack) -> None:
    alice, bob = await make_users(st, "alice", "bob", connect=False)
    await alice.close()
    await bob.close()


async def synced(st: Stack, user: str) -> list[im_pb2.ChatMsg]:
    """Every chat of CONV, as a fresh device of ``user`` Syncs it."""
    dev = await RawDevice(user, f"check-{uuid.uuid4().hex[:6]}").connect(st)
    try:
        await dev.send_sync(CONV, 1)
        await until(lambda: dev.sync_dones)
        return dev.chats
    finally:
        await dev.close()


# -- finding 3: ids, resends, reuses ---------------------------------------------------------


async def test_two_devices_of_a_user_get_different_slots_and_ids(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await friends(stack)
    phone = await RawDevice("alice", "phone").connect(stack)
    laptop = await RawDevice("alice", "laptop").connect(stack)
    again = await RawDevice("alice", "phone").connect(stack)  # a device keeps its slot
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        assert phone.slot != laptop.slot and again.slot == phone.slot
        monkeypatch.setattr("common.ids.time.time", lambda: 1_700_000_000.123)
        a, b = phone.ids(), laptop.ids()  # the same millisecond on both
        assert a != b and slot_of(a) == phone.slot and slot_of(b) == laptop.slot
        await again.send_chat("bob", b"from the phone", a)
        await laptop.send_chat("bob", b"from the laptop", b)
        await until(lambda: len(bob.chats) == 2)
        await until(lambda: again.sent(a) and laptop.sent(b))
        assert sorted(c.seq for c in bob.chats) == [1, 2]
    finally:
        for d in (phone, laptop, again, bob):
            await d.close()


async def test_a_chat_id_of_another_slot_is_refused(stack: Stack) -> None:
    await friends(stack)
    await (await RawDevice("alice", "phone").connect(stack)).close()  # takes slot 0
    laptop = await RawDevice("alice", "laptop").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        foreign = MessageIdGen(0)()  # the phone's slot
        await laptop.send_chat("bob", b"x", foreign)
        await until(lambda: laptop.errors)
        assert laptop.codes() == ["BAD_MESSAGE"] and laptop.errors[0].ref_msg_id == foreign
        await settle()
        assert not bob.chats and not laptop.sent(foreign)
    finally:
        await laptop.close()
        await bob.close()


async def test_a_resend_is_sent_again_with_its_seq_and_a_reuse_is_refused(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    try:
        mid = await alice.send_chat("bob", b"first")
        await until(lambda: alice.sent(mid))
        await alice.send_chat("bob", b"first", mid)  # a resend: SENT again, same seq
        await until(lambda: len(alice.sent(mid)) == 2)
        assert [a.seq for a in alice.sent(mid)] == [1, 1]
        await alice.send_chat("bob", b"other text", mid)  # a reuse: refused, never SENT
        await until(lambda: alice.errors)
        assert alice.codes() == ["ID_REUSED"] and alice.errors[0].ref_msg_id == mid
        await settle()
        assert len(alice.sent(mid)) == 2
        assert [(c.id, c.body, c.seq) for c in await synced(stack, "bob")] == [(mid, b"first", 1)]
    finally:
        await alice.close()


async def test_a_resend_of_a_delivered_chat_keeps_its_place(stack: Stack) -> None:
    """A resend is fanned out again (the first fanout may be what was lost): devices dedupe by
    (conv_id, seq), so every copy has the first one's place."""
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        mid = await alice.send_chat("bob", b"hello")
        await until(lambda: alice.sent(mid) and bob.chats)
        await alice.send_chat("bob", b"hello", mid)
        await until(lambda: len(alice.sent(mid)) == 2)
        await settle()
        assert {(c.id, c.conv_id, c.seq) for c in bob.chats} == {(mid, CONV, 1)}
        assert not alice.errors
        assert len(await synced(stack, "bob")) == 1
    finally:
        await alice.close()
        await bob.close()


# -- finding 8: cursors are idempotent ---------------------------------------------------------


async def test_a_replayed_read_reaches_the_sender_once(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        await alice.send_chat("bob", b"read me")
        await until(lambda: bob.chats)
        for _ in range(4):
            await bob.send_cursor(CONV, im_pb2.READ, 1)
        await bob.send_cursor(CONV, im_pb2.READ, 1, user_id="bob")
        await until(lambda: alice.cursors)
        await settle()
        reads = [(c.user_id, c.seq) for c in alice.cursors if c.type == im_pb2.READ]
        assert reads == [("bob", 1)] and not bob.errors
    finally:
        await alice.close()
        await bob.close()


async def test_two_recipient_devices_move_the_delivered_cursor_once(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    phone = await RawDevice("bob", "phone").connect(stack)
    pc = await RawDevice("bob", "pc").connect(stack)
    try:
        mids = [await alice.send_chat("bob", b"m%d" % i) for i in range(3)]
        await until(lambda: len(phone.chats) == 3 and len(pc.chats) == 3)
        assert all(len(alice.sent(m)) == 1 for m in mids)
        await phone.send_cursor(CONV, im_pb2.DELIVERED, 3)
        await until(lambda: alice.cursors)
        await pc.send_cursor(CONV, im_pb2.DELIVERED, 3)
        await pc.send_cursor(CONV, im_pb2.DELIVERED, 2)  # lower: ignored
        await settle()
        got = [(c.user_id, c.type, c.seq) for c in alice.cursors]
        assert got == [("bob", im_pb2.DELIVERED, 3)]
    finally:
        for d in (alice, phone, pc):
            await d.close()


# -- finding 9: server-owned fields -----------------------------------------------------------


async def test_server_stamped_fields_from_a_client_do_not_survive(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        mid = await alice.send_chat("bob", b"live", conv_id="p:bob:zed", seq=999, server_time=5)
        await until(lambda: bob.chats)
        got = bob.chats[0]
        assert (got.id, got.conv_id, got.seq) == (mid, CONV, 1)
        assert got.server_time > 1_600_000_000_000
    finally:
        await alice.close()
        await bob.close()
