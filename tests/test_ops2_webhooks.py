"""The message webhooks, on ``im up`` with a real HTTP receiver: ``message.sent`` once for every
committed chat, ``message.offline`` once for every chat to a user with no device online and
never for one to a user online, both signed and without the body; and a receiver that answers
500 costs chat nothing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from rawdevice import RawDevice, until
from test_e2e import make_users, stack_settings
from webhook_receiver import Receiver, Request

from cli.stack import Stack
from common.convid import pair_conv_id

pytestmark = pytest.mark.asyncio


def data(r: Request) -> dict[str, Any]:
    """The event's ``data`` object."""
    d = r.json()["data"]
    assert isinstance(d, dict)
    return d


SECRET = "hook-secret-0123456789"
DATA_KEYS = {
    "msg_id",
    "from_id",
    "to_id",
    "dest_type",
    "conversation",
    "msg_type",
    "body_bytes",
    "created_ms",
    "seq",
}


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver(secret=SECRET).start()
    try:
        yield r
    finally:
        await r.stop()


async def stack_with(tmp_path: Path, url: str, **more: object) -> Stack:
    st = Stack(stack_settings(tmp_path, webhook_url=url, webhook_secret=SECRET, **more))
    await st.start()
    return st


def deliveries(receiver: Receiver) -> set[str]:
    return {r.headers["x-im-delivery"] for r in receiver.requests}


def of(requests: list[Request], event: str) -> list[Request]:
    return [r for r in requests if r.headers.get("x-im-event") == event]


async def test_message_sent_for_each_chat_and_offline_only_for_an_offline_recipient(
    tmp_path: Path, receiver: Receiver
) -> None:
    st = await stack_with(tmp_path, receiver.url)
    try:
        await make_users(st, "alice", "bob", "carol", connect=False)
        alice = await RawDevice("alice", "phone").connect(st)
        carol = await RawDevice("carol", "pc").connect(st)
        await asyncio.sleep(0.3)
        receiver.requests.clear()  # the users' registrations and friendships
        # bob has no device online: two chats to him; carol is online: one to her
        to_bob = [await alice.send_chat("bob", b"secret words") for _ in range(2)]
        to_carol = await alice.send_chat("carol", b"hi carol")
        await until(lambda: all(alice.sent(i) for i in [*to_bob, to_carol]))
        await receiver.wait_for(5)
        await asyncio.sleep(0.5)  # time for an event too many to arrive
        sent, offline = (
            of(receiver.requests, "message.sent"),
            of(receiver.requests, "message.offline"),
        )
        assert len(receiver.requests) == 5
        assert Counter(data(r)["msg_id"] for r in sent) == Counter(
            str(i) for i in [*to_bob, to_carol]
        )
        assert sorted(data(r)["msg_id"] for r in offline) == sorted(str(i) for i in to_bob)
        for r in receiver.requests:
            assert r.signed_ok, r.headers
            body = r.json()
            assert set(data(r)) == DATA_KEYS, body
            assert b"secret words" not in r.body and b"hi carol" not in r.body
            assert body["id"] == r.headers["x-im-delivery"]
        first = data(offline[0])
        assert first == {
            "msg_id": first["msg_id"],
            "from_id": "alice",
            "to_id": "bob",
            "dest_type": "single",
            "conversation": "alice:bob",
            "msg_type": "text",
            "body_bytes": len(b"secret words"),
            "created_ms": 0,
            "seq": first["seq"],
        }
        assert {data(r)["seq"] for r in offline} == {1, 2}

        # bob comes online: a chat to him now is sent, not offline; a resend of a committed
        # chat (the same id and body) is neither again
        bob = await RawDevice("bob", "pc").connect(st)
        receiver.requests.clear()
        now = await alice.send_chat("bob", b"you are here")
        await alice.send_chat("bob", b"secret words", msg_id=to_bob[0])
        await until(lambda: alice.sent(now) and len(alice.sent(to_bob[0])) == 2)
        await receiver.wait_for(1)
        await asyncio.sleep(0.5)
        assert [r.headers["x-im-event"] for r in receiver.requests] == ["message.sent"]
        assert data(receiver.requests[0])["msg_id"] == str(now)
        assert data(receiver.requests[0])["conversation"] == "alice:bob"
        assert pair_conv_id("alice", "bob") != "alice:bob"  # the receiver's form, not ours
        for dev in (alice, bob, carol):
            await dev.close()
    finally:
        await st.stop()


async def test_only_the_events_asked_for_and_a_failing_receiver_costs_chat_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 500
    st = await stack_with(tmp_path, receiver.url, webhook_events="message.offline")
    try:
        await make_users(st, "alice", "bob", connect=False)
        alice = await RawDevice("alice", "phone").connect(st)
        receiver.requests.clear()
        started = time.monotonic()
        ids = [await alice.send_chat("bob", b"x") for _ in range(20)]
        await until(lambda: all(alice.sent(i) for i in ids))
        assert time.monotonic() - started < 3.0
        # each event is retried after its 500 under the same delivery id; once the receiver
        # is back, every chat's event arrives, once (one delivery id per message)
        await until(lambda: len(receiver.requests) > len(deliveries(receiver)) >= 1)
        receiver.status = 200
        await until(lambda: len(deliveries(receiver)) >= 20, timeout=20)
        await asyncio.sleep(0.5)
        assert {r.headers["x-im-event"] for r in receiver.requests} == {"message.offline"}
        by_msg = {(data(r)["msg_id"], r.headers["x-im-delivery"]) for r in receiver.requests}
        assert sorted(m for m, _ in by_msg) == sorted(str(i) for i in ids)
        await alice.close()
    finally:
        await st.stop()
