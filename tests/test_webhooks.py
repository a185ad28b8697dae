"""Webhooks against real HTTP receivers started here: one that verifies signatures, one that is
slow, one that is down, one that answers 500; retries with back-off, the bounded queue that drops
its oldest, the before_send hook and its fail modes, and REST's events."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from conftest import free_port
from test_metrics import sample
from webhook_receiver import Receiver

from common.config import Settings
from common.db import open_database
from common.errors import ConfigError
from common.tokens import TokenSigner
from hooks import BeforeSend, Webhooks, events, signing
from hooks.sender import retry_delay
from proto import im_pb2
from rest_web.app import create_app
from rest_web.store import UserStore

SECRET = "webhook-secret-0123456789"
PW = "password-123"


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver(secret=SECRET).start()
    yield r
    await r.stop()


def sender(url: str, **kw: object) -> Webhooks:
    args: dict[str, object] = {"timeout": 2.0, "retries": 3, "backoff_base": 0.05}
    args.update(kw)
    return Webhooks(url, SECRET, node="test/node-1", **args)  # type: ignore[arg-type]


# --- signing ------------------------------------------------------------------------------------


def test_signature_verifies_and_rejects_tampering_and_replays() -> None:
    key, body, now = SECRET.encode(), b'{"a":1}', 1_700_000_000
    header = signing.sign(key, now, body)
    assert signing.verify(key, header, body, now + 10)
    assert not signing.verify(key, header, b'{"a":2}', now)  # body changed
    assert not signing.verify(b"another-secret-0123456789", header, body, now)
    assert not signing.verify(key, header, body, now + signing.TOLERANCE + 1)  # a replay
    assert not signing.verify(key, header, body, now - signing.TOLERANCE - 1)  # from the future
    old = signing.sign(b"old-secret-0123456789", now, body).split(",")[1]
    assert signing.verify(key, f"{header},{old}", body, now)  # rotation: either v1 may match
    for bad in ("", "t=abc,v1=00", "v1=00", f"t={now}", "garbage", f"t={now},v1=é"):
        assert not signing.verify(key, bad, body, now), bad


def test_retry_delay_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    assert [retry_delay(n, 0.5, 30, lambda: 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(20, 0.5, 30, lambda: 0.5) == 30
    assert retry_delay(1, 1.0, 30, lambda: 0.0) == pytest.approx(0.8)
    assert retry_delay(1, 1.0, 30, lambda: 0.999999) == pytest.approx(1.2, abs=1e-5)


def test_webhook_url_needs_a_secret_and_known_events() -> None:
    with pytest.raises(ConfigError, match="IM_WEBHOOK_SECRET"):
        Webhooks("http://127.0.0.1:9/", "short")
    with pytest.raises(ConfigError, match="unknown events"):
        Webhooks("http://127.0.0.1:9/", SECRET, only=["message.typo"])
    with pytest.raises(ConfigError, match="IM_WEBHOOK_SECRET"):
        BeforeSend("http://127.0.0.1:9/", "")


# --- deliveries ---------------------------------------------------------------------------------


def chat(msg_id: int = 7) -> im_pb2.ChatMsg:
    return im_pb2.ChatMsg(
        id=msg_id,
        from_id="alice",
        dest_id="bob",
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=b"sealed-bytes",
        create_time=1_700_000_000_000,
    )


@pytest.mark.asyncio
async def test_signed_events_reach_a_verifying_receiver(receiver: Receiver) -> None:
    hooks = sender(receiver.url)
    await hooks.start()
    delivered = sample("im_webhook_deliveries_total", outcome="delivered")
    try:
        hooks.emit(events.MESSAGE_OFFLINE, events.message_data(chat(2**63 + 5)))
        hooks.emit(events.USER_REGISTERED, events.user_registered("carol", "Carol", "builtin"))
        got = await receiver.wait_for(2)
    finally:
        await hooks.close()
    assert len(got) == 2 and all(r.signed_ok for r in got)
    first = got[0].json()
    assert first["type"] == "message.offline" and first["node"] == "test/node-1"
    assert got[0].headers["x-im-event"] == "message.offline"
    assert got[0].headers["x-im-delivery"] == first["id"]
    assert first["data"] == {
        "msg_id": str(2**63 + 5),
        "from_id": "alice",
        "to_id": "bob",
        "dest_type": "single",
        "conversation": "alice:bob",
        "msg_type": "text",
        "body_bytes": len(b"sealed-bytes"),
        "created_ms": 1_700_000_000_000,
    }
    assert b"sealed-bytes" not in got[0].body  # no body, sealed or not, ever leaves
    assert sample("im_webhook_deliveries_total", outcome="delivered") == delivered + 2


@pytest.mark.asyncio
async def test_a_500_is_retried_with_growing_gaps_then_given_up(receiver: Receiver) -> None:
    receiver.status = 500
    hooks = sender(receiver.url, retries=3, backoff_base=0.1)
    retried = sample("im_webhook_deliveries_total", outcome="retried")
    failed = sample("im_webhook_deliveries_total", outcome="failed")
    await hooks.start()
    try:
        hooks.emit(events.FRIEND_ACCEPTED, events.friend_accepted("a", "b"))
        got = await receiver.wait_for(4)
        await asyncio.sleep(0.3)  # no fifth attempt comes
    finally:
        await hooks.close()
    assert len(receiver.requests) == 4
    assert len({r.headers["x-im-delivery"] for r in got}) == 1  # one event, same id each time
    assert all(r.signed_ok for r in got)  # re-signed at every attempt
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= 0.8 * expected - 0.01, gaps
    assert sample("im_webhook_deliveries_total", outcome="retried") == retried + 3
    assert sample("im_webhook_deliveries_total", outcome="failed") == failed + 1


@pytest.mark.asyncio
async def test_a_receiver_that_recovers_gets_the_event(receiver: Receiver) -> None:
    receiver.status = 503
    hooks = sender(receiver.url, retries=6, backoff_base=0.05)
    await hooks.start()
    try:
        hooks.emit(events.USER_REGISTERED, events.user_registered("d", "D", "builtin"))
        await receiver.wait_for(2)
        receiver.status = 200
        got = await receiver.wait_for(3)
        await asyncio.sleep(0.3)
    finally:
        await hooks.close()
    assert len(got) == 3  # two 503s, then delivered, then nothing more


@pytest.mark.asyncio
async def test_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.status = 429
    receiver.headers = {"Retry-After": "1"}
    hooks = sender(receiver.url, retries=1, backoff_base=0.01)
    await hooks.start()
    try:
        hooks.emit(events.USER_REGISTERED, events.user_registered("e", "E", "builtin"))
        got = await receiver.wait_for(2, timeout=5)
    finally:
        await hooks.close()
    assert len(got) == 2 and got[1].at - got[0].at >= 0.95


@pytest.mark.asyncio
async def test_a_4xx_is_final(receiver: Receiver) -> None:
    receiver.status = 400
    hooks = sender(receiver.url)
    rejected = sample("im_webhook_deliveries_total", outcome="rejected")
    await hooks.start()
    try:
        hooks.emit(events.USER_REGISTERED, events.user_registered("f", "F", "builtin"))
        await receiver.wait_for(1)
        await asyncio.sleep(0.3)
    finally:
        await hooks.close()
    assert len(receiver.requests) == 1
    assert sample("im_webhook_deliveries_total", outcome="rejected") == rejected + 1


@pytest.mark.asyncio
async def test_a_dead_receiver_fills_the_bounded_queue_which_drops_its_oldest() -> None:
    port = free_port()
    hooks = sender(
        f"http://127.0.0.1:{port}/hook", retries=50, queue_size=5, workers=1, backoff_cap=0.2
    )
    dropped = sample("im_webhook_deliveries_total", outcome="dropped")
    await hooks.start()
    try:
        started = time.monotonic()
        for i in range(50):
            hooks.emit(events.USER_REGISTERED, events.user_registered(f"u{i}", "", "builtin"))
            assert hooks.depth <= 5
        assert time.monotonic() - started < 0.5  # emit never waits for the receiver
        await asyncio.sleep(0.2)
        # emit never yields, so the queue filled first: 45 dropped, oldest first; then the
        # worker took one (it is retrying it) and four wait
        assert hooks.dropped == 45
        assert sample("im_webhook_deliveries_total", outcome="dropped") == dropped + hooks.dropped
        assert hooks.depth == 4
        assert sample("im_queue_depth", queue="webhook") >= hooks.depth
        receiver = await Receiver(secret=SECRET, port=port).start()  # it comes back
        try:
            got = await receiver.wait_for(5, timeout=15)
        finally:
            await receiver.stop()
    finally:
        await hooks.close()
    users = [r.json()["data"]["user_id"] for r in got]  # type: ignore[index]
    assert users == [f"u{i}" for i in range(45, 50)]  # the newest five survived, in order


@pytest.mark.asyncio
async def test_a_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.delay = 2.0
    hooks = sender(receiver.url, timeout=0.3, retries=1, backoff_base=0.05)
    failed = sample("im_webhook_deliveries_total", outcome="failed")
    await hooks.start()
    try:
        hooks.emit(events.USER_REGISTERED, events.user_registered("g", "G", "builtin"))
        got = await receiver.wait_for(2, timeout=5)
        for _ in range(40):
            if sample("im_webhook_deliveries_total", outcome="failed") > failed:
                break
            await asyncio.sleep(0.05)
    finally:
        await hooks.close()
    assert len(got) == 2
    assert sample("im_webhook_deliveries_total", outcome="failed") == failed + 1


@pytest.mark.asyncio
async def test_close_gives_up_within_its_grace_on_a_dead_receiver() -> None:
    hooks = sender(f"http://127.0.0.1:{free_port()}/hook", retries=50)
    await hooks.start()
    for i in range(10):
        hooks.emit(events.USER_REGISTERED, events.user_registered(f"h{i}", "", "builtin"))
    started = time.monotonic()
    await hooks.close(grace=0.5)
    assert time.monotonic() - started < 2.0
    hooks.emit(events.USER_REGISTERED, events.user_registered("late", "", "builtin"))
    assert hooks.depth == 0  # closed: nothing more is taken


@pytest.mark.asyncio
async def test_event_filter(receiver: Receiver) -> None:
    hooks = sender(receiver.url, only=[events.FRIEND_ACCEPTED])
    await hooks.start()
    try:
        hooks.emit(events.USER_REGISTERED, events.user_registered("i", "I", "builtin"))
        hooks.emit(events.FRIEND_ACCEPTED, events.friend_accepted("i", "j"))
        await receiver.wait_for(1)
        await asyncio.sleep(0.2)
    finally:
        await hooks.close()
    assert [r.json()["type"] for r in receiver.requests] == ["friend.accepted"]


# --- before_send --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_before_send_allows_and_refuses_as_the_hook_answers(receiver: Receiver) -> None:
    hook = BeforeSend(receiver.url, SECRET, timeout=1.0)
    try:
        receiver.answer = b'{"allow": true}'
        verdict = await hook(events.message_data(chat()))
        assert verdict.allowed and verdict.answered
        receiver.answer = b'{"allow": false, "reason": "' + b"x" * 500 + b'"}'
        verdict = await hook(events.message_data(chat()))
        assert not verdict.allowed and verdict.answered and len(verdict.reason) == 200
    finally:
        await hook.close()
    assert all(r.signed_ok for r in receiver.requests)
    assert receiver.requests[0].json()["type"] == "message.before_send"
    assert receiver.requests[0].json()["data"]["msg_id"] == "7"  # type: ignore[index]


@pytest.mark.parametrize("fail_closed", [False, True])
@pytest.mark.parametrize("trouble", ["slow", "500", "not json", "no allow", "down"])
@pytest.mark.asyncio
async def test_before_send_without_an_answer_follows_the_fail_mode(
    receiver: Receiver, trouble: str, fail_closed: bool
) -> None:
    if trouble == "slow":
        receiver.delay = 3.0
    elif trouble == "500":
        receiver.status = 500
    elif trouble == "not json":
        receiver.answer = b"<html>"
    elif trouble == "no allow":
        receiver.answer = b'{"ok": true}'
    else:
        await receiver.stop()
    hook = BeforeSend(receiver.url, SECRET, timeout=0.3, fail_closed=fail_closed)
    verdict_name = "error_refused" if fail_closed else "error_allowed"
    before = sample("im_before_send_total", verdict=verdict_name)
    try:
        started = time.monotonic()
        verdict = await hook(events.message_data(chat()))
        assert time.monotonic() - started < 1.5  # bounded by the timeout, whatever happens
    finally:
        await hook.close()
    assert not verdict.answered
    assert verdict.allowed is (not fail_closed)
    assert sample("im_before_send_total", verdict=verdict_name) == before + 1


@pytest.mark.asyncio
async def test_before_send_off_allows_at_once() -> None:
    verdict = await BeforeSend("", "")(events.message_data(chat()))
    assert verdict.allowed


# --- REST emits -----------------------------------------------------------------------------


@pytest_asyncio.fixture
async def rest_with_hooks(
    tmp_path: Path, receiver: Receiver
) -> AsyncIterator[tuple[httpx.AsyncClient, Webhooks]]:
    db = await open_database("sqlite://:memory:")
    store = UserStore(db)
    await store.migrate()
    hooks = sender(receiver.url)
    await hooks.start()
    settings = Settings(data_dir=tmp_path, secret=SECRET, connector_addrs="127.0.0.1:9")
    app = create_app(settings, store, TokenSigner(SECRET.encode()), hooks=hooks)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http, hooks
    await hooks.close()
    await db.close()


async def register_and_login(http: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await http.post("/users", json={"user_id": user, "password": PW})
    assert r.status_code == 201, r.text
    r = await http.post("/login", json={"user_id": user, "password": PW})
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.mark.asyncio
async def test_rest_emits_user_registered_and_friend_accepted_once(
    rest_with_hooks: tuple[httpx.AsyncClient, Webhooks], receiver: Receiver
) -> None:
    http, _ = rest_with_hooks
    alice = await register_and_login(http, "alice")
    bob = await register_and_login(http, "bob")
    assert (await http.put("/friends/bob", headers=alice)).status_code == 202  # a request
    assert (await http.put("/friends/alice", headers=bob)).status_code == 200  # accepted
    assert (await http.put("/friends/bob", headers=alice)).status_code == 200  # idempotent
    got = await receiver.wait_for(3)
    await asyncio.sleep(0.2)
    kinds = [(r.json()["type"], r.json()["data"]) for r in receiver.requests]
    assert kinds == [
        ("user.registered", {"user_id": "alice", "display_name": "alice", "provider": "builtin"}),
        ("user.registered", {"user_id": "bob", "display_name": "bob", "provider": "builtin"}),
        ("friend.accepted", {"user_id": "bob", "friend_id": "alice"}),
    ]
    assert all(r.signed_ok for r in got)


@pytest.mark.asyncio
async def test_rest_answers_at_once_while_the_receiver_never_answers(
    rest_with_hooks: tuple[httpx.AsyncClient, Webhooks], receiver: Receiver
) -> None:
    """The receiver takes every request and sits on it (a black hole, longer than the whole
    test): REST's answers do not wait for it."""
    receiver.delay = 60.0
    http, hooks = rest_with_hooks
    started = time.monotonic()
    for i in range(10):
        await register_and_login(http, f"user{i}")
    elapsed = time.monotonic() - started
    assert len(await receiver.wait_for(1)) >= 1  # events are being sent meanwhile
    # scrypt makes each register+login take ~0.1 s; a wait on the receiver would take 2 s each
    assert elapsed < 10 * 2.0, elapsed
    assert hooks.depth > 0  # the rest wait their turn in the queue, not in REST
