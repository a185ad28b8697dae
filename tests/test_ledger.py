"""The pieces behind unique ids and dedupe (issue 12, findings 3 and 8): id layout, token slot
claim, device slots on each engine, the message ledger's contract in memory and on Redis, and
the offline store's refusal of a reused id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from conftest import REDIS_URL, connect_redis

from common.db import Database
from common.errors import AuthError
from common.ids import SLOTS, MessageIdGen, slot_of
from common.ledger import (
    Fate,
    MemoryLedger,
    MessageLedger,
    ReceiptKey,
    RedisLedger,
    Verdict,
    chat_digest,
)
from common.tokens import NO_SLOT, TokenSigner
from offline import MemoryOfflineQueue, OfflineItem, OfflineWriter, RejectedError, SQLOfflineStore
from proto import im_pb2
from rest_web.devices import DeviceSlots, SlotsExhausted

SECRET = b"test-secret-0123456789"
GRACE = 0.3  # the ledgers' receipt grace here: long for one test step, short to wait out


def test_ids_carry_the_slot_never_repeat_and_borrow_the_next_ms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("common.ids.time.time", lambda: 1_700_000_000.5)
    gens = [MessageIdGen(s) for s in (0, 1, 63)]
    out = [g() for g in gens for _ in range(200)]  # 200 > 64 per ms: borrows ahead
    assert len(set(out)) == len(out)
    for i, g in enumerate(gens):
        mine = out[i * 200 : (i + 1) * 200]
        assert mine == sorted(mine) and {slot_of(m) for m in mine} == {g.slot}
    assert max(out) < 2**53
    with pytest.raises(ValueError):
        MessageIdGen(SLOTS)


def test_tokens_carry_the_slot_and_old_ones_have_none() -> None:
    signer = TokenSigner(SECRET)
    assert signer.verify(signer.issue("alice", 60, device_id="d", slot=5)).slot == 5
    assert signer.verify(signer.issue("n1", 60, role="node"), role="node").slot == NO_SLOT
    with pytest.raises(ValueError):
        signer.issue("alice", 60, slot=64)
    # a token from before the claim: verifies, with no slot (the connector refuses its GREET)
    import base64
    import json

    payload = {"u": "alice", "d": "d", "e": 2**40, "j": "x", "r": "user", "i": 1}
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signed = f"v1.{body}"
    token = f"{signed}.{signer._sig(signed.encode())}"
    assert signer.verify(token).slot == NO_SLOT
    payload["s"] = 99
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signed = f"v1.{body}"
    with pytest.raises(AuthError):
        signer.verify(f"{signed}.{signer._sig(signed.encode())}")


# -- device slots, on SQLite and MySQL --------------------------------------------------------


@pytest.mark.asyncio
async def test_device_slots_are_stable_distinct_and_reused_only_when_stale(db: Database) -> None:
    slots = DeviceSlots(db)
    await slots.migrate()
    await slots.migrate()  # twice is fine
    phone = await slots.slot_for("alice", "phone", 3600)
    assert await slots.slot_for("alice", "phone", 3600) == phone
    assert await slots.slot_for("alice", "", 3600) == await slots.slot_for("alice", "default", 60)
    assert await slots.slot_for("bob", "phone", 3600) == 0  # per user
    together = await asyncio.gather(
        *(slots.slot_for("alice", f"d{i}", 3600) for i in range(SLOTS - 2))
    )
    taken = {phone, await slots.slot_for("alice", "default", 3600), *together}
    assert taken == set(range(SLOTS))  # concurrent logins still get one slot each
    with pytest.raises(SlotsExhausted):
        await slots.slot_for("alice", "one-too-many", 3600)
    # the phone's last login is older than a token lifetime: its slot is handed over
    await db.execute(
        "UPDATE im_device_slot SET last_used = 1 WHERE user_id = ? AND device_id = ?",
        ("alice", "phone"),
    )
    assert await slots.slot_for("alice", "one-too-many", 3600) == phone
    assert await slots.slot_for("alice", "one-too-many", 3600) == phone


# -- the message ledger: one contract, in memory and on Redis ----------------------------------


@pytest_asyncio.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[MessageLedger]:
    if request.param == "memory":
        yield MemoryLedger(ttl=60, grace=GRACE)
        return
    client = await connect_redis(REDIS_URL)
    prefix = f"imtest:{uuid.uuid4().hex[:10]}:"
    led = RedisLedger(client, prefix, ttl=60, grace=GRACE)
    try:
        yield led
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await led.close()


def _chat(body: bytes, dest: str = "bob") -> im_pb2.ChatMsg:
    return im_pb2.ChatMsg(
        id=7,
        from_id="alice",
        dest_id=dest,
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=body,
    )


@pytest.mark.asyncio
async def test_ledger_tells_new_resend_done_and_reused(ledger: MessageLedger) -> None:
    a = chat_digest(_chat(b"hi"))
    restamped = _chat(b"hi")
    restamped.from_store, restamped.read_tag, restamped.stream_floor = True, b"t" * 16, 9
    assert chat_digest(restamped) == a  # stamps and order fields are not the message
    assert chat_digest(_chat(b"hi", "carol")) != a and chat_digest(_chat(b"ho")) != a
    assert await ledger.claim("alice", 7, "bob", a) is Verdict.NEW
    assert await ledger.claim("alice", 7, "bob", a) is Verdict.RESEND
    assert await ledger.claim("alice", 7, "bob", chat_digest(_chat(b"ho"))) is Verdict.REUSED
    assert await ledger.claim("alice", 8, "bob", chat_digest(_chat(b"ho"))) is Verdict.NEW
    assert await ledger.claim("carol", 7, "bob", chat_digest(_chat(b"ho"))) is Verdict.NEW
    assert await ledger.receipt_fate("alice", 7, "bob", im_pb2.SENT) is Fate.FORWARD
    # its SENT has left (arrived or not): a resend is answered SENT at the edge
    assert await ledger.claim("alice", 7, "bob", a) is Verdict.DONE


@pytest.mark.asyncio
async def test_ledger_lets_one_copy_of_a_receipt_go_at_a_time(ledger: MessageLedger) -> None:
    for kind in (im_pb2.SENT, im_pb2.DELIVERED, im_pb2.READ):
        fates = await asyncio.gather(
            *(ledger.receipt_fate("alice", 9, "bob", kind) for _ in range(5))
        )
        assert sorted(f.value for f in fates) == ["forward"] + ["in flight"] * 4
    assert await ledger.receipt_fate("alice", 9, "carol", im_pb2.READ) is Fate.FORWARD
    assert await ledger.receipt_fate("alice", 10, "bob", im_pb2.READ) is Fate.FORWARD
    # a receipt that came first does not make the chat's claim look like a resend
    assert await ledger.claim("alice", 10, "bob", b"d" * 16) is Verdict.NEW


@pytest.mark.asyncio
async def test_a_receipt_never_confirmed_lets_a_later_copy_through(ledger: MessageLedger) -> None:
    """The first copy may be lost after it left (a cut link): once it is overdue, the next copy
    goes, and restarts the clock; one the sender's device acked holds back every repeat."""
    assert await ledger.receipt_fate("alice", 12, "bob", im_pb2.READ) is Fate.FORWARD
    assert await ledger.receipt_fate("alice", 12, "bob", im_pb2.READ) is Fate.IN_FLIGHT
    await asyncio.sleep(GRACE + 0.1)
    assert await ledger.receipt_fate("alice", 12, "bob", im_pb2.READ) is Fate.FORWARD
    assert await ledger.receipt_fate("alice", 12, "bob", im_pb2.READ) is Fate.IN_FLIGHT
    await ledger.receipts_arrived([ReceiptKey("alice", 12, "bob", im_pb2.READ)])
    await asyncio.sleep(GRACE + 0.1)
    assert await ledger.receipt_fate("alice", 12, "bob", im_pb2.READ) is Fate.ARRIVED
    # only that receipt: the message's other kinds and recipients are untouched
    assert await ledger.receipt_fate("alice", 12, "bob", im_pb2.SENT) is Fate.FORWARD
    assert await ledger.receipt_fate("alice", 12, "carol", im_pb2.READ) is Fate.FORWARD
    # arrived before any copy was seen here (the sender's connector was quicker): dropped too
    await ledger.receipts_arrived([ReceiptKey("alice", 13, "bob", im_pb2.SENT)])
    assert await ledger.receipt_fate("alice", 13, "bob", im_pb2.SENT) is Fate.ARRIVED
    assert await ledger.claim("alice", 13, "bob", b"e" * 16) is Verdict.NEW
    assert await ledger.claim("alice", 13, "bob", b"e" * 16) is Verdict.DONE


@pytest.mark.asyncio
async def test_concurrent_claims_have_one_winner(ledger: MessageLedger) -> None:
    verdicts = await asyncio.gather(
        *(ledger.claim("alice", 11, "bob", bytes([i]) * 16) for i in range(8))
    )
    assert verdicts.count(Verdict.NEW) == 1 and verdicts.count(Verdict.REUSED) == 7


@pytest.mark.asyncio
async def test_redis_ledger_keeps_one_expiring_key_per_message() -> None:
    client = await connect_redis(REDIS_URL)
    prefix = f"imtest:{uuid.uuid4().hex[:10]}:"
    led = RedisLedger(client, prefix, ttl=120)
    try:
        await led.claim("alice", 5, "bob", b"x" * 16)
        for kind in (im_pb2.SENT, im_pb2.DELIVERED, im_pb2.READ):
            await led.receipt_fate("alice", 5, "bob", kind)
        await led.receipts_arrived([ReceiptKey("alice", 5, "bob", im_pb2.READ)])
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        assert keys == [f"{prefix}mid:alice:5".encode()]
        assert 0 < await client.ttl(keys[0]) <= 120
        await client.delete(*keys)
    finally:
        await led.close()


@pytest.mark.asyncio
async def test_memory_ledger_is_bounded_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    led = MemoryLedger(ttl=10, max_entries=100)
    for i in range(1000):
        await led.claim("alice", i, "bob", b"x" * 16)
    assert len(led) == 100
    now = [1000.0]
    monkeypatch.setattr("common.ledger.time.monotonic", lambda: now[0])
    await led.claim("alice", 5000, "bob", b"x" * 16)
    now[0] += 11
    assert await led.claim("alice", 5000, "bob", b"y" * 16) is Verdict.NEW  # forgotten


# -- the offline store never stores (nor lets SENT go for) a reused id ------------------------


def _item(body: bytes, *, rearm: bool = False) -> OfflineItem:
    return OfflineItem.of_chat(_chat(body), rearm=rearm)


@pytest.mark.asyncio
async def test_offline_store_returns_reused_ids_and_keeps_the_first(db: Database) -> None:
    store = SQLOfflineStore(db)
    await store.migrate()
    assert await store.save([_item(b"first")]) == []
    stamped = _chat(b"first")
    stamped.from_store, stamped.read_tag = True, b"t" * 16  # as a connector hands it back
    again = OfflineItem.of_chat(stamped, rearm=True)
    assert await store.save([again]) == []  # the same message: a duplicate, not a conflict
    other = _item(b"other", rearm=True)
    assert await store.save([other, _item(b"first")]) == [other]
    rows = await store.drain("bob")
    assert len(rows) == 1 and im_pb2.ChatMsg.FromString(rows[0].content).body == b"first"


@pytest.mark.asyncio
async def test_writer_refuses_a_reused_id_so_no_sent_is_given(db: Database) -> None:
    store = SQLOfflineStore(db)
    await store.migrate()
    queue = MemoryOfflineQueue()
    writer = OfflineWriter(queue, store)
    task = asyncio.create_task(writer.run())
    try:
        await queue.publish([_item(b"first")])
        await queue.publish([_item(b"first")])  # a resend: stored once, fine
        with pytest.raises(RejectedError):
            await queue.publish([_item(b"other")])
        assert writer.conflicts == 1
    finally:
        await queue.close()
        await task
