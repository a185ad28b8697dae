"""Security (DESIGN.md §6, docs/security.md): secrets, tokens, revocation, throttling, device
binding and limits, sealed bodies at rest.

Unit tests for the sans-IO parts first, then REST over ASGI, then the embedded stack over TCP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import REDIS_URL, require_service
from fastapi import FastAPI
from test_e2e import (
    PW,
    codes,
    expect,
    greet,
    make_users,
    raw,
    raw_chat,
    receipts,
    rest_url,
    stack_settings,
)

from cli.main import main as im_main
from cli.stack import Stack
from client import IMClient, Message, ServerError
from common.codec import encode
from common.config import Settings
from common.crypto import SealError, new_pair_key, open_sealed, seal
from common.db import Database, open_database
from common.errors import AuthError, ConfigError, IMError
from common.tokens import Claims, Revocation, RevokedSet, TokenSigner
from proto import im_pb2
from rest_web.app import create_app
from rest_web.store import UserStore
from rest_web.throttle import LoginThrottle
from user_status.revocation import MemoryRevocationBus, create_bus

SECRET = "security-test-secret-0123456789"

# -- secret and settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        {"redis_url": "redis://127.0.0.1:6379/0"},
        {"amqp_url": "amqp://guest:guest@127.0.0.1:5672/"},
        {"database_url": "mysql://root@127.0.0.1:3306/im"},
    ],
)
def test_cluster_mode_without_secret_is_refused(tmp_path: Path, backend: dict[str, str]) -> None:
    settings = Settings(data_dir=tmp_path, secret="", **backend)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="IM_SECRET is not set"):
        settings.signing_secret()
    assert not (tmp_path / "secret").exists()  # nothing invented on disk either


def test_embedded_mode_keeps_a_generated_secret(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path, secret="").signing_secret()
    assert len(first) >= 32
    assert Settings(data_dir=tmp_path, secret="").signing_secret() == first
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0


def test_im_connector_refuses_to_start_in_cluster_mode_without_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("IM_SECRET", "IM_AMQP_URL", "IM_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("IM_REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("IM_DATA_DIR", str(tmp_path))
    assert im_main(["connector"]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "IM_SECRET is not set" in err


def test_limits_have_safe_defaults() -> None:
    s = Settings()
    assert s.greet_timeout <= 10
    assert s.max_frame == 64 * 1024 and s.rest_max_body == 64 * 1024
    assert s.max_devices >= 1 and s.window >= 1 and s.rate_limit > 0
    assert s.idle_timeout > s.heartbeat
    assert not s.tls_enabled()


def test_tls_needs_both_certificate_and_key() -> None:
    with pytest.raises(ConfigError, match="both"):
        Settings(tls_cert="/x/cert.pem").tls_enabled()


# -- tokens ----------------------------------------------------------------------------------


def test_tokens_carry_user_device_and_issue_time() -> None:
    signer = TokenSigner(SECRET.encode())
    before = int(time.time() * 1000)
    claims = signer.verify(signer.issue("alice", 60, device_id="phone"))
    assert (claims.user_id, claims.device_id, claims.role) == ("alice", "phone", "user")
    assert before <= claims.issued_ms <= int(time.time() * 1000)
    with pytest.raises(AuthError):
        TokenSigner(b"another-secret-0123456789").verify(signer.issue("alice", 60))


def test_revocations_cover_what_they_say_and_round_trip() -> None:
    old = Claims("alice", "phone", 2**40, "t1", "user", issued_ms=1_000)
    new = Claims("alice", "phone", 2**40, "t2", "user", issued_ms=3_000)
    bob = Claims("bob", "phone", 2**40, "t3", "user", issued_ms=1_000)
    by_token = Revocation(expires=2**40, token_id="t1", user_id="alice")
    by_cutoff = Revocation(expires=2**40, user_id="alice", before_ms=2_000)
    assert by_token.covers(old) and not by_token.covers(new)
    assert by_cutoff.covers(old) and not by_cutoff.covers(new) and not by_cutoff.covers(bob)
    for rev in (by_token, by_cutoff):
        assert Revocation.decode(rev.encode()) == rev
    for bad in ("", "[]", '{"x": 1}', "not json", '{"j": "t", "e": "soon"}'):
        with pytest.raises(ValueError):
            Revocation.decode(bad)


def test_revoked_set_is_bounded_and_forgets_expired() -> None:
    now = 1_000_000.0
    revoked = RevokedSet(cap=3)
    for i in range(10):
        revoked.add(Revocation(expires=int(now) + 60, token_id=f"t{i}"), now=now)
    assert len(revoked) == 3
    newest = Claims("u", "d", 0, "t9", "user")
    assert revoked.covers(newest, now=now)
    assert not revoked.covers(Claims("u", "d", 0, "t0", "user"), now=now)  # evicted
    assert not revoked.covers(newest, now=now + 61)  # expired: nothing left to cover
    revoked.add(Revocation(expires=int(now) - 1, token_id="dead"), now=now)
    assert not revoked.covers(Claims("u", "d", 0, "dead", "user"), now=now)
    # a later cutoff for the same user replaces the earlier one: one entry per user
    revoked.add(Revocation(expires=int(now) + 60, user_id="u", before_ms=5), now=now)
    revoked.add(Revocation(expires=int(now) + 60, user_id="u", before_ms=9), now=now)
    assert revoked.covers(Claims("u", "d", 0, "x", "user", issued_ms=8), now=now)


# -- sealing ---------------------------------------------------------------------------------


def test_seal_uses_a_fresh_nonce_and_binds_the_ids() -> None:
    key = new_pair_key()
    a = seal(key, 7, "alice", "bob", b"hello")
    b = seal(key, 7, "alice", "bob", b"hello")
    assert a != b and a[1:13] != b[1:13]  # 96-bit random nonce per message
    assert open_sealed(key, 7, "alice", "bob", a) == b"hello"
    for ids in ((8, "alice", "bob"), (7, "bob", "alice"), (7, "alice", "carol")):
        with pytest.raises(SealError):
            open_sealed(key, *ids, a)  # moved onto another message
    with pytest.raises(SealError):
        open_sealed(new_pair_key(), 7, "alice", "bob", a)
    tampered = bytearray(a)
    tampered[-1] ^= 1
    with pytest.raises(SealError):
        open_sealed(key, 7, "alice", "bob", bytes(tampered))


# -- REST ------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def users_store() -> AsyncIterator[UserStore]:
    database = await open_database("sqlite://:memory:")
    s = UserStore(database)
    await s.migrate()
    yield s
    await database.close()


def rest_app(tmp_path: Path, store: UserStore, **kw: object) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path,
        secret=SECRET,
        connector_addrs="c1.example:9081",
        token_ttl=3600,
        **kw,  # type: ignore[arg-type]
    )
    bus = MemoryRevocationBus()
    app = create_app(settings, store, TokenSigner(SECRET.encode()), revocations=bus.publish)
    app.state.bus = bus
    return app


def http(app: FastAPI, address: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def signup(c: httpx.AsyncClient, user: str, password: str = PW) -> None:
    assert (await c.post("/users", json={"user_id": user, "password": password})).status_code == 201


async def try_login(c: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await c.post("/login", json={"user_id": user, "password": password})


@pytest.mark.asyncio
async def test_failed_logins_are_throttled_per_user_and_say_nothing_about_existence(
    tmp_path: Path, users_store: UserStore
) -> None:
    app = rest_app(tmp_path, users_store, login_failures_per_user=3)
    async with http(app, "10.0.0.1") as one, http(app, "10.0.0.2") as two:
        await signup(one, "alice")
        for user in ("alice", "nobody"):
            for _ in range(3):
                assert (await try_login(one, user, "wrong-password")).status_code == 401
        known = await try_login(one, "alice", "wrong-password")
        unknown = await try_login(one, "nobody", "wrong-password")
        assert known.status_code == unknown.status_code == 429
        assert known.json() == unknown.json()
        assert 1 <= int(known.headers["retry-after"]) <= 60
        # the owner's right password from another address is not locked out (issue 12, 5)
        assert (await try_login(two, "alice", PW)).status_code == 200
        # other users are not affected
        await signup(two, "bob")
        assert (await try_login(two, "bob", PW)).status_code == 200
    assert app.state.throttle.refused == 2


@pytest.mark.asyncio
async def test_failed_logins_are_throttled_per_address(
    tmp_path: Path, users_store: UserStore
) -> None:
    app = rest_app(tmp_path, users_store, login_failures_per_address=4)
    async with http(app, "10.0.0.1") as sprayer, http(app, "10.0.0.2") as other:
        await signup(other, "alice")
        for i in range(4):  # one wrong guess at each of many accounts
            assert (await try_login(sprayer, f"user{i}", "wrong-password")).status_code == 401
        assert (await try_login(sprayer, "alice", PW)).status_code == 429
        assert (await try_login(other, "alice", PW)).status_code == 200


@pytest.mark.asyncio
async def test_a_success_clears_the_users_failures_and_the_window_ends(
    tmp_path: Path, users_store: UserStore
) -> None:
    app = rest_app(tmp_path, users_store, login_failures_per_user=2, login_window=0.2)
    async with http(app) as c:
        await signup(c, "alice")
        assert (await try_login(c, "alice", "wrong-password")).status_code == 401
        assert (await try_login(c, "alice", PW)).status_code == 200
        assert (await try_login(c, "alice", "wrong-password")).status_code == 401
        assert (await try_login(c, "alice", PW)).status_code == 200  # cleared again
        for _ in range(2):
            await try_login(c, "alice", "wrong-password")
        r = await try_login(c, "alice", PW)
        assert r.status_code == 429 and r.headers["retry-after"] == "2"  # the first back-off
        await asyncio.sleep(2.1)
        assert (await try_login(c, "alice", PW)).status_code == 200


def test_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(5, 20, 60.0, max_keys=100)
    for i in range(10_000):
        address = f"10.0.{i // 256}.{i % 256}"
        throttle.failed(f"user{i}", address, now=0.0)
        throttle.succeeded(f"user{i}", address, now=0.0)
    assert len(throttle) <= 4 * 100


@pytest.mark.asyncio
async def test_rest_body_limit_follows_the_setting(tmp_path: Path, users_store: UserStore) -> None:
    app = rest_app(tmp_path, users_store, rest_max_body=2048)
    async with http(app) as c:
        body = {"user_id": "alice", "password": "p" * 100, "display_name": "x" * 2000}
        r = await c.post("/users", json=body)
        assert r.status_code == 413


@pytest.mark.asyncio
async def test_logout_is_published(tmp_path: Path, users_store: UserStore) -> None:
    app = rest_app(tmp_path, users_store)
    follower = app.state.bus.follow()
    assert await anext(follower) is None
    async with http(app) as c:
        await signup(c, "alice")
        token = (await try_login(c, "alice", PW)).json()["token"]
        assert (await c.post("/logout", headers=bearer(token))).status_code == 204
    rev = await anext(follower)
    claims = TokenSigner(SECRET.encode()).verify(token)
    assert rev == Revocation(expires=claims.expires, token_id=claims.token_id, user_id="alice")
    await follower.aclose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.asyncio
async def test_password_change_revokes_every_older_token(
    tmp_path: Path, users_store: UserStore
) -> None:
    app = rest_app(tmp_path, users_store)
    follower = app.state.bus.follow()
    await anext(follower)
    async with http(app) as c:
        await signup(c, "alice")
        await signup(c, "bob")
        phone = (await try_login(c, "alice", PW)).json()["token"]
        laptop = (await try_login(c, "alice", PW)).json()["token"]
        bobs = (await try_login(c, "bob", PW)).json()["token"]
        new_password = "a-new-password-456"
        r = await c.put(
            "/password",
            json={"old_password": "wrong-password", "new_password": new_password},
            headers=bearer(phone),
        )
        assert r.status_code == 403
        r = await c.put(
            "/password",
            json={"old_password": PW, "new_password": new_password},
            headers=bearer(phone),
        )
        assert r.status_code == 200, r.text
        fresh = r.json()["token"]
        for old in (phone, laptop):
            r = await c.get("/friends", headers=bearer(old))
            assert (r.status_code, r.json()) == (401, {"detail": "token revoked"})
        assert (await c.get("/friends", headers=bearer(fresh))).status_code == 200
        assert (await c.get("/friends", headers=bearer(bobs))).status_code == 200
        assert (await try_login(c, "alice", PW)).status_code == 401
        assert (await try_login(c, "alice", new_password)).status_code == 200
    rev = await anext(follower)
    assert rev is not None and rev.user_id == "alice" and not rev.token_id
    signer = TokenSigner(SECRET.encode())
    assert rev.covers(signer.verify(laptop)) and not rev.covers(signer.verify(fresh))
    await follower.aclose()


@pytest.mark.asyncio
async def test_wrong_old_passwords_are_throttled(tmp_path: Path, users_store: UserStore) -> None:
    app = rest_app(tmp_path, users_store, login_failures_per_user=2)
    async with http(app) as c:
        await signup(c, "alice")
        token = (await try_login(c, "alice", PW)).json()["token"]
        body = {"old_password": "wrong-password", "new_password": "whatever-123"}
        for _ in range(2):
            assert (await c.put("/password", json=body, headers=bearer(token))).status_code == 403
        r = await c.put("/password", json={**body, "old_password": PW}, headers=bearer(token))
        assert r.status_code == 429 and "retry-after" in r.headers


@pytest.mark.asyncio
async def test_store_cutoffs(users: UserStore) -> None:
    """On each engine: the latest cutoff wins, and an expired one is gone."""
    now = int(time.time())
    assert await users.cutoff_of("alice") == 0
    await users.set_cutoff("alice", 2_000, now + 60)
    await users.set_cutoff("alice", 1_000, now + 30)  # older: keeps the later one
    assert await users.cutoff_of("alice") == 2_000
    await users.set_cutoff("bob", 5_000, now - 1)
    assert await users.cutoff_of("bob") == 0
    assert await users.cutoff_of("alice") == 2_000


@pytest_asyncio.fixture
async def users(db: Database) -> UserStore:
    s = UserStore(db)
    await s.migrate()
    return s


# -- the connector ---------------------------------------------------------------------------


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path, greet_timeout=1.0, max_devices=2))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


async def until(cond: Callable[[], bool], within: float = 3.0) -> None:
    """Poll ``cond`` (state changed by the server's tasks, with no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def closed_with(c: IMClient, code: str, within: float = 3.0) -> None:
    """Wait until the server closes ``c``'s link with ERROR ``code``."""
    assert c._link is not None
    async with asyncio.timeout(within):
        await c._link.wait_closed()
    assert c._link.close_error is None  # closed by the server, not by us
    err = await expect(c, ServerError)
    assert err.code == code  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_logout_closes_the_live_session_and_the_token_cannot_greet_again(
    stack: Stack,
) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        token = alice.rest.token
        started = time.monotonic()
        await alice.rest.logout()
        await closed_with(alice, "BAD_TOKEN")
        assert time.monotonic() - started < 2
        envs, closed = await raw(stack, greet(token))
        assert codes(envs) == ["BAD_TOKEN"] and closed
        assert stack.connector is not None
        errors = stack.connector.counters.errors
        await until(lambda: errors.get("BAD_TOKEN", 0) >= 2)
        mid = await bob.send_text("alice", "you left")  # bob's session is untouched
        assert ("SENT", mid) in await receipts(bob, 1)
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_password_change_closes_every_device_but_the_new_token_connects(
    stack: Stack,
) -> None:
    (bob,) = await make_users(stack, "bob")
    phone = IMClient(rest_url(stack), "bob", PW, device_id="phone")
    try:
        await phone.connect()
        await bob.change_password("a-new-password-456")
        await closed_with(bob, "BAD_TOKEN")
        await closed_with(phone, "BAD_TOKEN")
        await bob.connect()  # with the fresh token from the change
        assert bob.connected
    finally:
        await bob.close()
        await phone.close()


@pytest.mark.asyncio
async def test_a_revocation_that_was_not_published_is_still_checked_at_greet(
    stack: Stack,
) -> None:
    """REST stores before it publishes: a connector that missed the message asks the database."""
    await make_users(stack, "alice", connect=False)
    signer = TokenSigner(stack.settings.signing_secret())
    token = signer.issue("alice", 60, device_id="default")
    assert stack.db is not None
    claims = signer.verify(token)
    await UserStore(stack.db).revoke(claims.token_id, claims.expires)
    envs, closed = await raw(stack, greet(token))
    assert codes(envs) == ["BAD_TOKEN"] and closed
    # and a cutoff (a password change) likewise
    token = signer.issue("alice", 60, device_id="default")
    await UserStore(stack.db).set_cutoff(
        "alice", int(time.time() * 1000) + 1, int(time.time()) + 60
    )
    envs, closed = await raw(stack, greet(token))
    assert codes(envs) == ["BAD_TOKEN"] and closed


@pytest.mark.asyncio
async def test_a_token_is_bound_to_its_device(stack: Stack) -> None:
    await make_users(stack, "alice", connect=False)
    token = TokenSigner(stack.settings.signing_secret()).issue("alice", 60, device_id="phone")
    envs, closed = await raw(stack, greet(token, device_id="laptop"))
    assert codes(envs) == ["BAD_TOKEN"] and closed
    envs, closed = await raw(stack, greet(token, device_id="phone"), wait=0.5)
    assert any(e.WhichOneof("body") == "welcome" for e in envs) and not closed


@pytest.mark.asyncio
async def test_devices_per_user_are_limited(stack: Stack) -> None:
    (one,) = await make_users(stack, "alice")
    two = IMClient(rest_url(stack), "alice", PW, device_id="two")
    three = IMClient(rest_url(stack), "alice", PW, device_id="three")
    again = IMClient(rest_url(stack), "alice", PW)  # device "default" again: replaces `one`
    try:
        await two.connect()
        with pytest.raises(IMError, match="GREET refused"):
            await three.connect()
        err = await expect(three, ServerError)
        assert err.code == "TOO_MANY_DEVICES"  # type: ignore[attr-defined]
        assert stack.connector is not None
        errors = stack.connector.counters.errors
        await until(lambda: errors.get("TOO_MANY_DEVICES") == 1)
        await again.connect()
        assert two.connected and again.connected
    finally:
        for c in (one, two, three, again):
            await c.close()


@pytest.mark.asyncio
async def test_rate_limit_refuses_without_closing(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path, rate_limit=5.0, rate_burst=5))
    await st.start()
    # bob stays offline: at 5 control frames a second (the chat bucket's size), the link acks
    # alice's device owes for bob's presence pushes would close it before the flood is done
    alice, bob = await make_users(st, "alice", "bob", connect=False)
    await alice.connect()
    try:
        for _ in range(20):
            await alice.send_text("bob", "flood")
        refused = 0
        with pytest.raises(TimeoutError):
            while True:
                ev = await alice.next_event(1.0)
                if isinstance(ev, ServerError):
                    assert ev.code == "RATE_LIMITED"
                    refused += 1
        assert 10 <= refused <= 15 and alice.connected
        assert st.connector is not None
        assert st.connector.counters.errors["RATE_LIMITED"] == refused
    finally:
        await alice.close()
        await bob.close()
        await st.stop()


@pytest.mark.asyncio
async def test_idle_and_window_breaches_close_the_link(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path, idle_timeout=0.5, heartbeat=30.0, window=8))
    await st.start()
    try:
        (alice,) = await make_users(st, "alice", connect=False)
        login = await alice.login()
        started = time.monotonic()
        envs, closed = await raw(st, greet(login.token))  # then silence
        assert "IDLE_TIMEOUT" in codes(envs) and closed
        assert time.monotonic() - started < 2
        far = encode(im_pb2.Envelope(seq=9, chat=raw_chat(1, "alice", "alice").chat))
        envs, closed = await raw(st, greet(login.token) + far)
        assert "WINDOW_FULL" in codes(envs) and closed
        assert st.connector is not None
        errors = st.connector.counters.errors
        await until(lambda: errors.get("WINDOW_FULL") == 1)  # counted as the session ends
        assert errors["IDLE_TIMEOUT"] == 1
        # both sessions are gone, here and from routing: a breach right after GREET leaks none
        await until(lambda: st.connector is not None and st.connector.online_sessions == 0)
        assert st.status is not None and await st.status.lookup("alice") == {}
        await alice.close()
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_a_body_that_fails_to_open_is_reported_never_shown(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        assert alice._link is not None
        wrong_key = seal(new_pair_key(), 5, "alice", "bob", b"forged")
        moved = seal(alice.friends["bob"], 5, "alice", "bob", b"moved")  # sealed for id 5
        for msg_id, body in ((5, wrong_key), (6, moved), (7, b"\x01garbage")):
            await alice._link.send(raw_chat(msg_id, "alice", "bob", body))
            ev = await expect(bob, ServerError, timeout=5)  # past friends' presence
            assert isinstance(ev, ServerError) and ev.code == "UNREADABLE", ev
        with pytest.raises(TimeoutError):
            await expect(bob, Message, timeout=0.5)
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_timeline_rows_hold_only_sealed_bodies(stack: Stack) -> None:
    """What the server stores for a message (im_tl_message.content) is the chat as sent: its
    body sealed with the pair key, never the plaintext."""
    alice, bob = await make_users(stack, "alice", "bob", connect=False)
    await alice.connect()
    try:
        secret_text = "the plaintext nobody on the server may read"
        mid = await alice.send_text("bob", secret_text)
        assert await receipts(alice, 1) == {("SENT", mid)}  # committed
        assert stack.db is not None
        rows = await stack.db.fetchall("SELECT content FROM im_tl_message WHERE sender = 'alice'")
        assert len(rows) == 1
        content = bytes(rows[0][0])
        assert secret_text.encode() not in content
        chat = im_pb2.ChatMsg.FromString(content)
        assert chat.seq == 1 and chat.conv_id == "p:alice:bob"
        key = alice.friends["bob"]
        assert open_sealed(key, mid, "alice", "bob", chat.body).decode() == secret_text
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_revocations_reach_connectors_over_redis_even_after_a_gap(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    """In a cluster REST and connectors are separate processes: the revocation travels on a
    Redis channel; one missed while the subscription was down is found in the database when the
    connector resubscribes."""
    prefix = f"imtest:{uuid.uuid4().hex[:10]}:"
    st = Stack(stack_settings(tmp_path, redis_url=REDIS_URL, redis_prefix=prefix))
    await st.start()
    bus = await create_bus(REDIS_URL, prefix)  # as another process's REST would
    alice, bob = await make_users(st, "alice", "bob")
    try:
        signer = TokenSigner(st.settings.signing_secret())
        claims = signer.verify(alice.rest.token)
        await bus.publish(Revocation(claims.expires, token_id=claims.token_id, user_id="alice"))
        await closed_with(alice, "BAD_TOKEN")
        # stored but never published, and then the connector's subscription drops
        claims = signer.verify(bob.rest.token)
        assert st.db is not None
        await UserStore(st.db).revoke(claims.token_id, claims.expires)
        await asyncio.sleep(0.3)
        assert bob.connected
        await redis_client.client_kill_filter(_type="pubsub")
        await closed_with(bob, "BAD_TOKEN", within=10)
    finally:
        await alice.close()
        await bob.close()
        await bus.close()
        await st.stop()
        keys = [k async for k in redis_client.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis_client.delete(*keys)


@pytest.mark.asyncio
async def test_the_timeline_queue_holds_only_sealed_bodies(tmp_path: Path) -> None:
    """With RabbitMQ and no writer running, a chat waits in the timeline queue (and is not SENT
    until a writer commits it): read it there, as an operator with broker access could."""
    import aio_pika
    from test_cluster import AMQP_URL

    name = f"imtest.{uuid.uuid4().hex[:10]}"
    settings = stack_settings(tmp_path, amqp_url=AMQP_URL, amqp_queue=name, amqp_shards=1)
    try:
        conn = await aio_pika.connect(AMQP_URL)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        require_service("rabbitmq", f"no answer at {AMQP_URL} ({exc})")
    st = Stack(settings, frozenset({"rest", "transfer", "connector"}))
    await st.start()
    alice, bob = await make_users(st, "alice", "bob", connect=False)
    try:
        await alice.connect()
        secret_text = "queued plaintext nobody on the broker may read"
        mid = await alice.send_text("bob", secret_text)
        channel = await conn.channel()
        queue = await channel.get_queue(f"{name}.tl.0")
        body = b""
        async with queue.iterator(no_ack=True) as messages, asyncio.timeout(5):
            async for message in messages:  # no basic.get on a single-active-consumer queue
                body = message.body
                break
        assert secret_text.encode() not in body
        (record,) = im_pb2.TimelineBatch.FromString(body).records
        assert record.chat.id == mid and record.chat.conv_id == "p:alice:bob"
        key = alice.friends["bob"]
        assert open_sealed(key, mid, "alice", "bob", record.chat.body).decode() == secret_text
    finally:
        await alice.close()
        await bob.close()
        await st.stop()
        channel = await conn.channel()
        for suffix in ("0", "dead", "tl.0", "tl.dead"):
            await channel.queue_delete(f"{name}.{suffix}")
        await conn.close()


@pytest.mark.asyncio
async def test_a_ping_flood_is_closed_as_rate_limited(stack: Stack) -> None:
    """PINGs get answers and pass no message rate limit; a flood of them, before GREET or after,
    must not buy unbounded work."""
    ping = encode(im_pb2.Envelope(ping=im_pb2.Ping(nonce=1)))
    burst = stack.settings.rate_burst
    envs, closed = await raw(stack, ping * (burst // 2))
    assert "RATE_LIMITED" not in codes(envs)  # a few are fine (then GREET_TIMEOUT)
    envs, closed = await raw(stack, ping * (burst * 3))
    assert codes(envs) == ["RATE_LIMITED"] and closed
    pongs = [e for e in envs if e.WhichOneof("body") == "pong"]
    assert len(pongs) <= burst + 10


@pytest.mark.asyncio
async def test_unknown_fields_are_dropped_at_the_edge(stack: Stack) -> None:
    """A chat padded with a field this build does not know reaches its recipient without it:
    nothing a client adds survives a hop (so it can't grow a frame past a later hop's limit)."""
    alice, bob = await make_users(stack, "alice", "bob")
    seen: list[bytes] = []
    on_chat = bob._on_chat

    async def record(chat: im_pb2.ChatMsg) -> None:
        seen.append(chat.SerializeToString())
        await on_chat(chat)

    bob._on_chat = record  # type: ignore[method-assign]
    try:
        assert alice._link is not None
        body = seal(alice.friends["bob"], 57, "alice", "bob", b"padded")
        chat = raw_chat(57, "alice", "bob", body).chat
        padding = b"\xa2\x06\x82\x01" + b"p" * 130  # field 100, length-delimited, 130 bytes
        padded = im_pb2.ChatMsg.FromString(chat.SerializeToString() + padding)
        assert padding in padded.SerializeToString()  # protobuf keeps what it doesn't know
        await alice._link.send(im_pb2.Envelope(chat=padded))
        msg = await expect(bob, Message)
        assert isinstance(msg, Message) and msg.msg_id == 57 and msg.text == "padded"
        assert seen and all(b"p" * 130 not in s for s in seen)
    finally:
        await alice.close()
        await bob.close()
