"""Issue 12, findings 3, 8 and 9, end to end on raw devices (no client library dedupe):

- ids are unique per sender across its devices (slots), a resend is SENT again and never shown
  or stored twice, a reuse for other content is ID_REUSED and never SENT;
- at most one SENT, one DELIVERED and one READ per message reaches the sender once one has
  arrived, and a first copy lost on the way never leaves it with none;
- server-stamped fields a client sets (from_store, read_tag) do not survive the edge.

Each test runs on the embedded stack and on one whose user status and message ledger are in the
test Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import REDIS_URL, connect_redis, poll_until
from test_e2e import PW, conn_addr, make_users, rest_url, stack_settings

from cli.stack import Stack
from client.rest import RestClient
from common.ids import MessageIdGen, slot_of
from common.ledger import MemoryLedger
from common.link import Link, LinkConfig, open_link
from common.tokens import TokenSigner
from proto import im_pb2

pytestmark = pytest.mark.asyncio

GRACE = 1.0  # seconds an unconfirmed receipt holds back its repeats (IM_RECEIPT_GRACE)


@pytest_asyncio.fixture(params=["embedded", "redis"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    extra: dict[str, str] = {}
    prefix = f"imtest:{uuid.uuid4().hex[:10]}:"
    client: aioredis.Redis | None = None
    if request.param == "redis":
        client = await connect_redis(REDIS_URL)
        extra = {"redis_url": REDIS_URL, "redis_prefix": prefix}
    st = Stack(stack_settings(tmp_path, receipt_grace=GRACE, **extra))
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


class RawDevice:
    """A device speaking raw frames: records everything, dedupes nothing. Its link acks what
    it receives (that is the link layer's job), and it answers nothing by itself."""

    def __init__(self, user: str, device: str) -> None:
        self.user, self.device = user, device
        self.chats: list[im_pb2.ChatMsg] = []
        self.acks: list[im_pb2.AckMsg] = []
        self.errors: list[im_pb2.Error] = []
        self.welcome: asyncio.Future[im_pb2.Welcome] = asyncio.get_running_loop().create_future()
        self.link: Link | None = None
        self.slot = 0
        self.ids = MessageIdGen()
        self.token = ""

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(env.welcome)
        elif kind == "chat":
            self.chats.append(env.chat)
        elif kind == "ack":
            self.acks.append(env.ack)
        elif kind == "error":
            self.errors.append(env.error)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if not self.welcome.done():
            self.welcome.cancel()

    async def connect(self, st: Stack) -> RawDevice:
        rest = RestClient(rest_url(st))
        try:
            login = await rest.login(self.user, PW, self.device)
        finally:
            await rest.close()
        self.token, self.slot = login.token, login.slot
        self.ids.slot = login.slot
        self.link = await open_link(*conn_addr(st), self, LinkConfig(), name=self.device)
        self.link.send_control(
            im_pb2.Envelope(greet=im_pb2.Greet(token=self.token, device_id=self.device))
        )
        welcome = await asyncio.wait_for(self.welcome, 5)
        assert welcome.id_slot == self.slot
        return self

    async def close(self) -> None:
        if self.link is not None:
            self.link.close()
            await self.link.wait_closed()

    async def send_chat(self, to: str, body: bytes, msg_id: int = 0, **fields: object) -> int:
        assert self.link is not None
        chat = im_pb2.ChatMsg(
            id=msg_id or self.ids(),
            from_id=self.user,
            dest_id=to,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=body,
            **fields,  # type: ignore[arg-type]
        )
        await self.link.send(im_pb2.Envelope(chat=chat))
        return chat.id

    async def send_receipt(self, chat: im_pb2.ChatMsg, kind: int, ack_id: int = 0) -> int:
        """A receipt for ``chat``; ``ack_id``: the id of one sent before (a resend of it)."""
        assert self.link is not None
        ack = im_pb2.AckMsg(
            id=ack_id or self.ids(),
            from_id=self.user,
            dest_id=chat.from_id,
            ack_type=kind,  # type: ignore[arg-type]
            ack_msg_id=chat.id,
            read_tag=chat.read_tag,
        )
        await self.link.send(im_pb2.Envelope(ack=ack))
        return ack.id

    def receipts(self, kind: int, msg_id: int) -> list[im_pb2.AckMsg]:
        return [a for a in self.acks if a.ack_type == kind and a.ack_msg_id == msg_id]

    def accepted(self) -> set[int]:
        return {a.ack_msg_id for a in self.acks if a.ack_type == im_pb2.ACCEPTED}

    def codes(self) -> list[str]:
        return [im_pb2.ErrorCode.Name(e.code) for e in self.errors]


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    assert await poll_until(lambda: bool(cond()), timeout, 0.02), "condition never held"


async def settle(seconds: float = 0.5) -> None:
    """Give a frame that should not come the time to come."""
    await asyncio.sleep(seconds)


async def friends(st: Stack) -> None:
    alice, bob = await make_users(st, "alice", "bob", connect=False)
    await alice.close()
    await bob.close()


async def stored_rows(st: Stack, msg_id: int) -> int:
    assert st.db is not None
    row = await st.db.fetchone(
        "SELECT COUNT(*) FROM im_offline WHERE from_id = ? AND msg_id = ? AND msg_type = 0",
        ("alice", msg_id),
    )
    return int(row[0]) if row else 0


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
        await until(lambda: again.receipts(im_pb2.SENT, a) and laptop.receipts(im_pb2.SENT, b))
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
        assert not bob.chats and not laptop.receipts(im_pb2.SENT, foreign)
    finally:
        await laptop.close()
        await bob.close()


async def test_reuse_for_an_offline_user_is_refused_and_a_resend_stored_once(
    stack: Stack,
) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    try:
        mid = await alice.send_chat("bob", b"first")
        await until(lambda: alice.receipts(im_pb2.SENT, mid))
        await alice.send_chat("bob", b"first", mid)  # a resend: SENT again
        await until(lambda: len(alice.receipts(im_pb2.SENT, mid)) == 2)
        await alice.send_chat("bob", b"other text", mid)  # a reuse: refused, never SENT
        await until(lambda: alice.errors)
        assert alice.codes() == ["ID_REUSED"] and alice.errors[0].ref_msg_id == mid
        await settle()
        assert len(alice.receipts(im_pb2.SENT, mid)) == 2
        assert await stored_rows(stack, mid) == 1
        bob = await RawDevice("bob", "pc").connect(stack)
        try:
            await until(lambda: bob.chats)
            await settle()
            assert [c.body for c in bob.chats] == [b"first"]
        finally:
            await bob.close()
    finally:
        await alice.close()


async def test_reuse_after_a_delivery_through_the_store_is_refused(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    try:
        mid = await alice.send_chat("bob", b"stored first")
        await until(lambda: alice.receipts(im_pb2.SENT, mid))
        bob = await RawDevice("bob", "pc").connect(stack)
        try:
            await until(lambda: bob.chats)
            await alice.send_chat("bob", b"something else", mid)
            await until(lambda: alice.errors)
            assert alice.codes() == ["ID_REUSED"]
            await settle()
            assert len(alice.receipts(im_pb2.SENT, mid)) == 1
            assert [c.body for c in bob.chats] == [b"stored first"]
        finally:
            await bob.close()
    finally:
        await alice.close()


async def test_a_resend_of_a_delivered_chat_is_sent_again_and_not_pushed_again(
    stack: Stack,
) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        mid = await alice.send_chat("bob", b"hello")
        await until(lambda: alice.receipts(im_pb2.SENT, mid))
        await alice.send_chat("bob", b"hello", mid)
        await until(lambda: len(alice.receipts(im_pb2.SENT, mid)) == 2)
        await settle()
        assert len(bob.chats) == 1 and not alice.errors
    finally:
        await alice.close()
        await bob.close()


# -- finding 8: one receipt of each kind ------------------------------------------------------


async def test_a_replayed_read_reaches_the_sender_once(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        mid = await alice.send_chat("bob", b"read me")
        await until(lambda: bob.chats)
        chat = bob.chats[0]
        reads = [await bob.send_receipt(chat, im_pb2.READ) for _ in range(4)]
        # A copy that comes while the first is on its way is dropped but not taken yet (were
        # the first lost, this device's next try is what reaches alice); once alice has one,
        # every try is taken. So bob resends what is not taken, as the client library does.
        while not set(reads) <= bob.accepted():
            await asyncio.sleep(0.2)
            for r in set(reads) - bob.accepted():
                await bob.send_receipt(chat, im_pb2.READ, r)
        await settle()
        assert len(alice.receipts(im_pb2.READ, mid)) == 1
        assert len(alice.receipts(im_pb2.SENT, mid)) == 1
    finally:
        await alice.close()
        await bob.close()


def lose_first(stack: Stack, kind: int, lost: list[im_pb2.AckMsg]) -> None:
    """The first ``kind`` receipt the transfer sends to alice's connector vanishes there, as
    it would with a link cut before the connector read it and a row stranded in the store."""
    assert stack.connector is not None
    deliver = stack.connector.deliver_local

    async def lossy(env: im_pb2.Envelope) -> None:
        if env.WhichOneof("body") == "ack" and env.ack.ack_type == kind and not lost:
            lost.append(env.ack)
            return
        await deliver(env)

    stack.connector.deliver_local = lossy  # type: ignore[method-assign]


async def test_a_read_lost_after_the_transfer_still_reaches_the_sender(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    lost: list[im_pb2.AckMsg] = []
    lose_first(stack, im_pb2.READ, lost)
    try:
        mid = await alice.send_chat("bob", b"read me")
        await until(lambda: bob.chats)
        read = await bob.send_receipt(bob.chats[0], im_pb2.READ)
        await until(lambda: lost)
        await settle()
        assert read not in bob.accepted() and not alice.receipts(im_pb2.READ, mid)
        # bob never got ACCEPTED, so it tries again; the first copy is overdue by then
        await asyncio.sleep(GRACE)
        await bob.send_receipt(bob.chats[0], im_pb2.READ, read)
        await until(lambda: alice.receipts(im_pb2.READ, mid) and read in bob.accepted())
        await settle()
        assert len(alice.receipts(im_pb2.READ, mid)) == 1
    finally:
        await alice.close()
        await bob.close()


async def test_a_sent_lost_after_the_transfer_still_reaches_the_sender(stack: Stack) -> None:
    """Alice's connector keeps a ledger of its own (a connector built without one, as in
    tests/test_link_faults.py): it cannot tell that the SENT left, so the resend goes on, and
    the SENT it makes must get past the transfer's record of the lost one."""
    assert stack.connector is not None
    stack.connector.ledger = MemoryLedger()
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    lost: list[im_pb2.AckMsg] = []
    lose_first(stack, im_pb2.SENT, lost)
    try:
        mid = await alice.send_chat("bob", b"hello")
        await until(lambda: lost and bob.chats)
        await settle()
        assert not alice.receipts(im_pb2.SENT, mid)
        await asyncio.sleep(GRACE)
        await alice.send_chat("bob", b"hello", mid)  # no SENT came: alice resends
        await until(lambda: alice.receipts(im_pb2.SENT, mid))
        await settle()
        assert len(alice.receipts(im_pb2.SENT, mid)) == 1 and not alice.errors
    finally:
        await alice.close()
        await bob.close()


async def test_two_recipient_devices_make_one_sent_and_one_delivered(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    phone = await RawDevice("bob", "phone").connect(stack)
    pc = await RawDevice("bob", "pc").connect(stack)
    try:
        mids = [await alice.send_chat("bob", b"m%d" % i) for i in range(3)]
        await until(lambda: len(phone.chats) == 3 and len(pc.chats) == 3)
        for device in (phone, pc):
            for chat in device.chats:
                await device.send_receipt(chat, im_pb2.DELIVERED)
        await until(lambda: all(alice.receipts(im_pb2.DELIVERED, m) for m in mids))
        await settle()
        for m in mids:
            assert len(alice.receipts(im_pb2.SENT, m)) == 1
            assert len(alice.receipts(im_pb2.DELIVERED, m)) == 1
    finally:
        for d in (alice, phone, pc):
            await d.close()


# -- finding 9: server-owned fields -----------------------------------------------------------


async def test_server_stamped_fields_from_a_client_do_not_survive(stack: Stack) -> None:
    await friends(stack)
    alice = await RawDevice("alice", "phone").connect(stack)
    bob = await RawDevice("bob", "pc").connect(stack)
    try:
        forged = b"\x01" * 16
        mid = await alice.send_chat("bob", b"live", from_store=True, read_tag=forged)
        await until(lambda: bob.chats)
        got = bob.chats[0]
        assert got.id == mid and got.from_store is False
        assert got.read_tag == TokenSigner(b"test-secret-0123456789").read_tag("bob", "alice", mid)
    finally:
        await alice.close()
        await bob.close()
