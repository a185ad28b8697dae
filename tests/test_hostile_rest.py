"""Issue 12, the REST findings: a hostile user can neither dodge the login throttle nor turn it
on others, nor crash an endpoint with nested JSON, nor mint accounts in bulk.

Over ASGI with a chosen client address, except where the point is what a real server does with
``X-Forwarded-For``: there a REST process runs on uvicorn on a free port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from conftest import free_port
from fastapi import FastAPI

from cli.stack import Stack
from common.config import Settings
from common.db import open_database
from common.errors import ConfigError
from common.tokens import TokenSigner
from rest_web.admin import AdminDeps
from rest_web.admin_store import AdminStore
from rest_web.app import create_app
from rest_web.proxies import TrustedProxies
from rest_web.store import UserStore
from rest_web.throttle import AddressLimit, LoginThrottle

SECRET = "hostile-rest-secret-0123456789"
PW = "right-password-1"
WRONG = "wrong-password-1"


@pytest_asyncio.fixture
async def store() -> AsyncIterator[UserStore]:
    db = await open_database("sqlite://:memory:")
    s = UserStore(db)
    await s.migrate()
    await AdminStore(db).migrate()
    yield s
    await db.close()


def rest_app(tmp_path: Path, store: UserStore, **kw: object) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path,
        secret=SECRET,
        connector_addrs="c1.example:9081",
        **kw,  # type: ignore[arg-type]
    )
    admin = AdminDeps(AdminStore(store.db), settings)
    return create_app(settings, store, TokenSigner(SECRET.encode()), admin=admin)


def http(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def signup(c: httpx.AsyncClient, user: str) -> None:
    r = await c.post("/users", json={"user_id": user, "password": PW})
    assert r.status_code == 201, r.text


async def try_login(c: httpx.AsyncClient, user: str, password: str) -> int:
    r = await c.post("/login", json={"user_id": user, "password": password})
    return r.status_code


# -- finding 4: X-Forwarded-For is believed only from configured proxies ----------------------


@pytest.mark.asyncio
async def test_rotating_x_forwarded_for_from_loopback_still_hits_429(tmp_path: Path) -> None:
    """25 failed logins from 127.0.0.1, each claiming another address: uvicorn believed the
    header from loopback, so all 25 were 401. Now the TCP peer is the client."""
    settings = Settings(
        data_dir=tmp_path,
        rest_port=free_port(),
        secret=SECRET,
        connector_addrs="127.0.0.1:9",
        ws_port=0,
    )
    stack = Stack(settings, frozenset({"rest"}))
    await stack.start()
    try:
        url = f"http://127.0.0.1:{stack.rest_port}"
        async with httpx.AsyncClient(base_url=url) as c:
            await signup(c, "alice")
            for who in ("alice", None):  # one account, then one account each time (spraying)
                codes = []
                for i in range(25):
                    user = who or f"sprayed{i}"
                    r = await c.post(
                        "/login",
                        json={"user_id": user, "password": WRONG},
                        headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
                    )
                    codes.append(r.status_code)
                assert 429 in codes, (who, codes)
                assert set(codes) == {401, 429}
    finally:
        await stack.stop()


def test_trusted_proxies_rule() -> None:
    def scope(peer: str, xff: str | None) -> dict[str, object]:
        headers = [] if xff is None else [(b"x-forwarded-for", xff.encode())]
        return {"client": (peer, 1234), "headers": headers}

    nobody = TrustedProxies.parse("")
    assert nobody.client_of(scope("127.0.0.1", "198.51.100.7")) == "127.0.0.1"
    proxies = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8")
    # the rightmost entry not a trusted proxy is the client; what it wrote left of that is not
    assert proxies.client_of(scope("127.0.0.1", "1.2.3.4, 198.51.100.7")) == "198.51.100.7"
    assert proxies.client_of(scope("127.0.0.1", "198.51.100.7, 10.1.2.3")) == "198.51.100.7"
    assert proxies.client_of(scope("127.0.0.1", None)) == "127.0.0.1"
    assert proxies.client_of(scope("127.0.0.1", "[2001:db8::1]:443")) == "2001:db8::1"
    # an untrusted peer's header is ignored whatever it says
    assert proxies.client_of(scope("192.0.2.9", "10.0.0.1")) == "192.0.2.9"
    with pytest.raises(ConfigError):
        TrustedProxies.parse("not-an-address")


@pytest.mark.asyncio
async def test_behind_a_trusted_proxy_each_client_is_counted_alone(
    tmp_path: Path, store: UserStore
) -> None:
    app = rest_app(tmp_path, store, trusted_proxies="10.0.0.1", login_failures_per_user=3)
    async with http(app, "10.0.0.1") as proxy:
        await signup(proxy, "alice")

        async def login(client: str, password: str) -> int:
            r = await proxy.post(
                "/login",
                json={"user_id": "alice", "password": password},
                headers={"X-Forwarded-For": client},
            )
            return r.status_code

        for _ in range(3):
            assert await login("198.51.100.1", WRONG) == 401
        assert await login("198.51.100.1", PW) == 429  # the guesser is held
        assert await login("198.51.100.2", PW) == 200  # the owner elsewhere is not


# -- finding 5: the throttle slows the attacker and locks nobody else out --------------------


@pytest.mark.asyncio
async def test_wrong_passwords_do_not_lock_the_owner_out_from_elsewhere(
    tmp_path: Path, store: UserStore
) -> None:
    app = rest_app(tmp_path, store)
    async with http(app, "198.51.100.66") as attacker, http(app, "192.0.2.10") as owner:
        await signup(owner, "alice")
        for _ in range(5):
            assert await try_login(attacker, "alice", WRONG) == 401
        # the attacker is slowed: the next guesses wait, longer each time
        r = await attacker.post("/login", json={"user_id": "alice", "password": PW})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # the owner, from their own address, gets in with the right password
        assert await try_login(owner, "alice", PW) == 200


@pytest.mark.asyncio
async def test_failures_from_a_nat_do_not_lock_out_everyone_behind_it(
    tmp_path: Path, store: UserStore
) -> None:
    app = rest_app(tmp_path, store)
    async with http(app, "203.0.113.1") as nat:
        for user in ("victim", "bob", "carol"):
            await signup(nat, user)
        assert await try_login(nat, "carol", PW) == 200  # carol uses this address daily
        for _ in range(20):  # one neighbour hammers one account
            assert await try_login(nat, "victim", WRONG) in (401, 429)
        assert await try_login(nat, "bob", PW) == 200
        # another sprays many accounts: past 20 distinct ids the address is spraying; new
        # ids are refused from it, but carol, known here, still gets in
        codes = [await try_login(nat, f"guess{i}", WRONG) for i in range(25)]
        assert codes.count(401) <= 20 and codes[-1] == 429
        assert await try_login(nat, "carol", PW) == 200


@pytest.mark.asyncio
async def test_distributed_guessing_is_capped_but_known_addresses_stay_open(
    tmp_path: Path, store: UserStore
) -> None:
    app = rest_app(tmp_path, store, login_failures_per_user_total=10)
    async with http(app, "192.0.2.10") as home:
        await signup(home, "alice")
        assert await try_login(home, "alice", PW) == 200
        for i in range(10):  # a botnet: one guess from each of many hosts
            async with http(app, f"198.51.100.{i + 1}") as bot:
                assert await try_login(bot, "alice", WRONG) == 401
        async with http(app, "198.51.100.200") as bot:
            assert await try_login(bot, "alice", WRONG) == 429
        async with http(app, "192.0.2.99") as new_place:
            assert await try_login(new_place, "alice", PW) == 429  # unknown here: held too
        assert await try_login(home, "alice", PW) == 200


def test_back_off_doubles_and_is_forgotten() -> None:
    t = LoginThrottle(3, 20, 60.0, max_backoff=30.0)
    for _ in range(3):
        assert t.retry_after("alice", "a", now=0.0) == 0
        t.failed("alice", "a", now=0.0)
    assert t.retry_after("alice", "a", now=0.0) == 2.0
    t.failed("alice", "a", now=2.0)
    assert t.retry_after("alice", "a", now=2.0) == 4.0
    t.failed("alice", "a", now=6.0)
    assert t.retry_after("alice", "a", now=6.0) == 8.0
    for step in range(10):
        t.failed("alice", "a", now=100.0 + step)
    assert t.retry_after("alice", "a", now=109.0) == 30.0  # capped at max_backoff
    assert t.retry_after("alice", "b", now=109.0) == 0  # another address: not held
    # a quiet window after the last wait: counted afresh
    t.failed("alice", "a", now=109.0 + 30.0 + 60.0)
    assert t.retry_after("alice", "a", now=200.0) == 0


# -- finding 6: nested JSON is a 400 everywhere ----------------------------------------------


@pytest.mark.asyncio
async def test_deeply_nested_json_is_400_on_every_endpoint(
    tmp_path: Path, store: UserStore
) -> None:
    app = rest_app(tmp_path, store)
    deep = '{"user_id": ' + "[" * 10_000 + "]" * 10_000 + "}"
    async with http(app, "192.0.2.1") as c:
        await signup(c, "alice")
        r = await c.post("/login", json={"user_id": "alice", "password": PW})
        auth = {"Authorization": f"Bearer {r.json()['token']}", "Content-Type": "application/json"}
        for method, path in [
            ("POST", "/login"),
            ("POST", "/users"),
            ("PUT", "/password"),
            ("POST", "/admin/notices"),
        ]:
            r = await c.request(method, path, content=deep, headers=auth)
            assert r.status_code == 400, (path, r.status_code, r.text)
            assert "detail" in r.json()
        # and the server is fine
        assert await try_login(c, "alice", PW) == 200


# -- finding 10: registration is throttled per address ---------------------------------------


@pytest.mark.asyncio
async def test_registration_burst_from_one_address_hits_429(
    tmp_path: Path, store: UserStore
) -> None:
    app = rest_app(tmp_path, store)  # the default limit
    async with http(app, "198.51.100.5") as c, http(app, "192.0.2.5") as other:

        async def make(i: int) -> httpx.Response:
            return await c.post("/users", json={"user_id": f"bulk{i}", "password": PW})

        answers = await asyncio.gather(*(make(i) for i in range(25)))  # at once, as a burst
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] * 20 + [429] * 5
        refused = next(r for r in answers if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        # a taken id is answered 409 and does not count; another address is not affected
        assert (
            await c.post("/users", json={"user_id": "bulk0", "password": PW})
        ).status_code == 409
        await signup(other, "someone")


def test_address_limit_unit() -> None:
    limit = AddressLimit(2, 10.0)
    assert limit.take("a", now=0.0) == 0 and limit.take("a", now=1.0) == 0
    assert limit.take("a", now=2.0) == 8.0
    limit.give_back("a")
    assert limit.take("a", now=3.0) == 0
    assert limit.take("a", now=10.0) == 0  # a new window
