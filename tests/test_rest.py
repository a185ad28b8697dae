"""REST API and user store: every endpoint's success and error paths, auth, limits, serving.

The HTTP tests run on SQLite; the store's own tests run on SQLite and MySQL (conftest ``db``)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from conftest import drop_im_tables
from fastapi import FastAPI

from common.config import Settings
from common.db import Database, open_database, schema_version
from common.errors import BackendError, ConfigError
from common.tokens import TokenSigner
from rest_web.app import MAX_BODY, create_app, serve
from rest_web.store import COMPONENT, UserStore, migrations

SECRET = "test-secret-0123456789abcdef"
PASSWORD = "s3cret-passw0rd"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "database_url": "",
        "bind_host": "127.0.0.1",
        "connector_port": 9081,
        "secret": SECRET,
        "connector_addrs": "c1.example:9081,c2.example:9091",
        "token_ttl": 3600,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def store() -> AsyncIterator[UserStore]:
    """The store behind the HTTP tests: SQLite in memory (the store's own contract tests below run
    on every engine)."""
    database = await open_database("sqlite://:memory:")
    s = UserStore(database)
    await s.migrate()
    yield s
    await database.close()


@pytest_asyncio.fixture
async def users(db: Database) -> UserStore:
    """A migrated store on each engine (``db`` from conftest: SQLite and MySQL)."""
    s = UserStore(db)
    await s.migrate()
    return s


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(SECRET.encode())


@pytest.fixture
def app(tmp_path: Path, store: UserStore, signer: TokenSigner) -> FastAPI:
    return create_app(make_settings(tmp_path), store, signer)


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(client: httpx.AsyncClient, user_id: str, password: str = PASSWORD) -> None:
    r = await client.post("/users", json={"user_id": user_id, "password": password})
    assert r.status_code == 201, r.text


async def login(client: httpx.AsyncClient, user_id: str, device_id: str = "") -> str:
    body = {"user_id": user_id, "password": PASSWORD, "device_id": device_id}
    r = await client.post("/login", json=body)
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


async def user(client: httpx.AsyncClient, user_id: str) -> dict[str, str]:
    """Register ``user_id`` and return its auth headers."""
    await register(client, user_id)
    return bearer(await login(client, user_id))


# --- health, docs ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


@pytest.mark.asyncio
async def test_readyz_503_when_database_fails_while_healthz_stays_live(
    client: httpx.AsyncClient, store: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await client.get("/readyz")).json() == {
        "status": "ready",
        "checks": {"database": "ok"},
        "failed": {},
    }

    async def down() -> None:
        raise BackendError("sqlite", "disk I/O error")

    monkeypatch.setattr(store, "ping", down)
    await asyncio.sleep(1.1)  # past the cached answer (common.health.CHECK_TTL)
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["failed"] == {"database": "sqlite: disk I/O error"}
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.asyncio
async def test_openapi_describes_endpoints_and_bearer_auth(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/users", "/login", "/logout", "/friends", "/friends/{friend_id}", "/healthz"} <= set(
        spec["paths"]
    )
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "LoginOut" in spec["components"]["schemas"]


# --- register -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_register_then_duplicate_409(client: httpx.AsyncClient, store: UserStore) -> None:
    r = await client.post(
        "/users", json={"user_id": "alice", "password": PASSWORD, "display_name": "Alice A."}
    )
    assert r.status_code == 201
    assert r.json() == {"user_id": "alice"}
    stored = await store.get_password_hash("alice")
    assert stored is not None and stored.startswith("scrypt$") and PASSWORD not in stored

    r = await client.post("/users", json={"user_id": "alice", "password": "another-password"})
    assert r.status_code == 409
    # the first registration's password still works
    assert (await client.post("/login", json={"user_id": "alice", "password": PASSWORD})).is_success


@pytest.mark.asyncio
@pytest.mark.parametrize("spelling", ["Bob", "BOB", "\uff22\uff4f\uff42", "bob"])
async def test_user_ids_are_one_account_in_any_spelling(
    client: httpx.AsyncClient, store: UserStore, spelling: str
) -> None:
    """Issue 12 finding 7: case and compatibility variants (full-width letters) are one id,
    stored and answered in canonical form; login with any spelling is the same user."""
    r = await client.post("/users", json={"user_id": spelling, "password": PASSWORD})
    assert (r.status_code, r.json()) == (201, {"user_id": "bob"})
    for other in ("bob", "Bob", "bOB", "\uff42\uff4f\uff42"):
        r = await client.post("/users", json={"user_id": other, "password": "another-password"})
        assert r.status_code == 409, other
        r = await client.post("/login", json={"user_id": other, "password": PASSWORD})
        assert (r.status_code, r.json()["user_id"]) == (200, "bob"), other
    assert await store.user_exists("bob") and not await store.user_exists("Bob")


@pytest.mark.asyncio
@pytest.mark.parametrize("user_id", ["", " ", "\u200b", "a\u0000b", "\u0430lice", "a\u0301"])
async def test_ids_without_a_canonical_form_are_refused(
    client: httpx.AsyncClient, user_id: str
) -> None:
    """Empty after folding, control or zero-width characters, look-alike letters of other
    scripts: none is a user id."""
    r = await client.post("/users", json={"user_id": user_id, "password": PASSWORD})
    assert r.status_code == 422, r.text


@pytest.mark.asyncio
async def test_friend_and_admin_lookups_use_the_canonical_id(client: httpx.AsyncClient) -> None:
    alice = await user(client, "alice")
    bob = await user(client, "bob")
    assert (await client.put("/friends/BOB", headers=alice)).json() == {
        "user_id": "bob",
        "state": "pending",
    }
    r = await client.put("/friends/Alice", headers=bob)
    assert r.status_code == 200 and r.json()["user_id"] == "alice"
    assert (await client.get("/friends/Bob", headers=alice)).json()["user_id"] == "bob"
    assert (await client.put("/friends/ALICE", headers=alice)).status_code == 409  # yourself


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "", "password": PASSWORD},
        {"user_id": "a" * 65, "password": PASSWORD},
        {"user_id": "a b", "password": PASSWORD},
        {"user_id": "a/b", "password": PASSWORD},
        {"user_id": "\u00fcser", "password": PASSWORD},
        {"user_id": "alice\n", "password": PASSWORD},
        {"user_id": 12345, "password": PASSWORD},
        {"user_id": "alice", "password": "short77"},
        {"user_id": "alice", "password": "x" * 129},
        {"user_id": "alice"},
        {"password": PASSWORD},
        {"user_id": "alice", "password": PASSWORD, "display_name": ""},
        {"user_id": "alice", "password": PASSWORD, "display_name": "x" * 129},
        {"user_id": "alice", "password": PASSWORD, "display_name": "bad\x00name"},
    ],
)
async def test_register_bad_input_422(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    r = await client.post("/users", json=body)
    assert r.status_code == 422, r.text
    # nothing was created
    assert (
        await client.post("/login", json={"user_id": "alice", "password": PASSWORD})
    ).status_code == 401


@pytest.mark.asyncio
async def test_register_edge_lengths_accepted(client: httpx.AsyncClient) -> None:
    r = await client.post("/users", json={"user_id": "a" * 64, "password": "p" * 8})
    assert r.status_code == 201
    r = await client.post("/users", json={"user_id": "A.b_c-9", "password": "p" * 128})
    assert r.status_code == 201


@pytest.mark.asyncio
async def test_register_not_json_422(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/users", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422


# --- login ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_login_answer(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    await register(client, "alice")
    before = int(time.time())
    r = await client.post(
        "/login", json={"user_id": "alice", "password": PASSWORD, "device_id": "phone-1"}
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "user_id",
        "token",
        "expires_at",
        "connector",
        "connectors",
        "friends",
        "tls",
        "slot",
    }
    assert body["tls"] is False
    assert body["slot"] == 0  # the user's first device
    assert body["user_id"] == "alice"
    assert body["connectors"] == ["c1.example:9081", "c2.example:9091"]
    assert body["connector"] in body["connectors"]
    assert body["friends"] == []
    claims = signer.verify(body["token"])
    assert (claims.user_id, claims.device_id, claims.role) == ("alice", "phone-1", "user")
    assert claims.expires == body["expires_at"]
    assert before + 3600 <= body["expires_at"] <= int(time.time()) + 3600


@pytest.mark.asyncio
async def test_login_connectors_round_robin(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    picks = []
    for _ in range(4):
        r = await client.post("/login", json={"user_id": "alice", "password": PASSWORD})
        picks.append(r.json()["connector"])
    assert picks == ["c1.example:9081", "c2.example:9091"] * 2


@pytest.mark.asyncio
async def test_login_default_connector_is_bind_address(
    tmp_path: Path, store: UserStore, signer: TokenSigner
) -> None:
    settings = make_settings(tmp_path, connector_addrs="", bind_host="10.1.2.3")
    app = create_app(settings, store, signer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await register(c, "alice")
        r = await c.post("/login", json={"user_id": "alice", "password": PASSWORD})
    assert r.json()["connectors"] == ["10.1.2.3:9081"]


@pytest.mark.asyncio
async def test_unknown_user_and_wrong_password_look_the_same(client: httpx.AsyncClient) -> None:
    await register(client, "alice")
    wrong = await client.post("/login", json={"user_id": "alice", "password": "wrong-password"})
    unknown = await client.post("/login", json={"user_id": "nobody", "password": "wrong-password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content
    assert wrong.headers == unknown.headers
    assert "token" not in wrong.json()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "alice"},
        {"user_id": "alice", "password": ""},
        {"user_id": "bad id", "password": PASSWORD},
        {"user_id": "alice", "password": PASSWORD, "device_id": "d" * 65},
        {"user_id": "alice", "password": PASSWORD, "device_id": "bad device"},
    ],
)
async def test_login_bad_input_422(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    await register(client, "alice")
    assert (await client.post("/login", json=body)).status_code == 422


# --- tokens and logout ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_logout_revokes_only_that_token(client: httpx.AsyncClient, store: UserStore) -> None:
    await register(client, "alice")
    await register(client, "bob")
    phone = bearer(await login(client, "alice", "phone"))
    laptop = bearer(await login(client, "alice", "laptop"))

    r = await client.post("/logout", headers=phone)
    assert r.status_code == 204
    assert r.content == b""

    # the revoked token is refused by every endpoint that takes one
    assert (await client.get("/friends", headers=phone)).status_code == 401
    assert (await client.get("/friends/bob", headers=phone)).status_code == 401
    assert (await client.put("/friends/bob", headers=phone)).status_code == 401
    assert (await client.delete("/friends/bob", headers=phone)).status_code == 401
    r = await client.post("/logout", headers=phone)
    assert r.status_code == 401
    assert r.json() == {"detail": "token revoked"}

    # the user's other device is still logged in
    assert (await client.get("/friends", headers=laptop)).status_code == 200
    assert (await client.put("/friends/bob", headers=laptop)).status_code == 202


@pytest.mark.asyncio
async def test_bad_tokens_401(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    await register(client, "alice")
    good = await login(client, "alice")
    payload, sig = good.split(".")[1:]
    cases = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {good}"},
        "garbage": bearer("not-a-token"),
        "empty": {"Authorization": "Bearer "},
        "tampered": bearer(f"v1.{payload}x.{sig}"),
        "other secret": bearer(TokenSigner(b"another-secret-0123456789").issue("alice", 3600)),
        "expired": bearer(signer.issue("alice", -1)),
        "node role": bearer(signer.issue("alice", 3600, role="node")),
        "too long": bearer("v1." + "a" * 5000 + ".b"),
    }
    for name, headers in cases.items():
        r = await client.get("/friends", headers=headers)
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"] == "Bearer", name
    assert (await client.get("/friends", headers=bearer(good))).status_code == 200


# --- friends --------------------------------------------------------------------------------


async def befriend(
    client: httpx.AsyncClient, a: dict[str, str], a_id: str, b: dict[str, str], b_id: str
) -> str:
    """Both say yes: ``a`` asks (202), ``b`` accepts (200 with the key)."""
    r = await client.put(f"/friends/{b_id}", headers=a)
    assert r.status_code == 202, r.text
    r = await client.put(f"/friends/{a_id}", headers=b)
    assert r.status_code == 200, r.text
    key: str = r.json()["key"]
    return key


@pytest.mark.asyncio
async def test_friend_key_is_the_same_from_both_sides(client: httpx.AsyncClient) -> None:
    alice = await user(client, "alice")
    bob = await user(client, "bob")

    r = await client.put("/friends/bob", headers=alice)
    assert (r.status_code, r.json()) == (202, {"user_id": "bob", "state": "pending"})
    r = await client.put("/friends/alice", headers=bob)
    assert r.status_code == 200
    key = r.json()["key"]
    assert r.json() == {"user_id": "alice", "key": key}
    assert len(key) == 43

    # idempotent, from either side
    assert (await client.put("/friends/bob", headers=alice)).json() == {
        "user_id": "bob",
        "key": key,
    }
    assert (await client.put("/friends/alice", headers=bob)).json()["key"] == key

    assert (await client.get("/friends/bob", headers=alice)).json() == {
        "user_id": "bob",
        "key": key,
    }
    assert (await client.get("/friends/alice", headers=bob)).json() == {
        "user_id": "alice",
        "key": key,
    }
    assert (await client.get("/friends", headers=alice)).json() == [{"user_id": "bob", "key": key}]
    assert (await client.get("/friends", headers=bob)).json() == [{"user_id": "alice", "key": key}]

    # and login hands it out too
    r = await client.post("/login", json={"user_id": "bob", "password": PASSWORD})
    assert r.json()["friends"] == [{"user_id": "alice", "key": key}]


@pytest.mark.asyncio
async def test_each_pair_has_its_own_key(client: httpx.AsyncClient) -> None:
    alice = await user(client, "alice")
    for name in ("carol", "bob", "dave"):
        await befriend(client, alice, "alice", await user(client, name), name)
    friends = (await client.get("/friends", headers=alice)).json()
    assert [f["user_id"] for f in friends] == ["bob", "carol", "dave"]
    assert len({f["key"] for f in friends}) == 3


@pytest.mark.asyncio
async def test_add_friend_errors(client: httpx.AsyncClient) -> None:
    alice = await user(client, "alice")
    r = await client.put("/friends/alice", headers=alice)
    assert r.status_code == 409
    assert (await client.put("/friends/bad%20id", headers=alice)).status_code == 422
    assert (await client.put("/friends/" + "a" * 65, headers=alice)).status_code == 422
    assert (await client.get("/friends", headers=alice)).json() == []


@pytest.mark.asyncio
async def test_cannot_see_or_change_others_relations(client: httpx.AsyncClient) -> None:
    alice = await user(client, "alice")
    bob = await user(client, "bob")
    carol = await user(client, "carol")
    key = await befriend(client, alice, "alice", bob, "bob")

    assert (await client.get("/friends", headers=carol)).json() == []
    assert (await client.get("/friends/bob", headers=carol)).status_code == 404
    assert (await client.get("/friends/alice", headers=carol)).status_code == 404
    assert (await client.delete("/friends/bob", headers=carol)).status_code == 404
    assert (await client.delete("/friends/alice", headers=carol)).status_code == 404
    r = await client.post("/login", json={"user_id": "carol", "password": PASSWORD})
    assert r.json()["friends"] == []

    # alice and bob are untouched
    assert (await client.get("/friends/bob", headers=alice)).json()["key"] == key


@pytest.mark.asyncio
async def test_remove_friend(client: httpx.AsyncClient) -> None:
    alice = await user(client, "alice")
    bob = await user(client, "bob")
    old_key = await befriend(client, alice, "alice", bob, "bob")

    r = await client.delete("/friends/alice", headers=bob)  # either side may remove
    assert r.status_code == 204
    assert r.content == b""
    assert (await client.get("/friends/bob", headers=alice)).status_code == 404
    assert (await client.get("/friends/alice", headers=bob)).status_code == 404
    assert (await client.get("/friends", headers=alice)).json() == []
    assert (await client.get("/friends", headers=bob)).json() == []
    assert (await client.delete("/friends/bob", headers=alice)).status_code == 404

    # the one who was removed cannot simply re-add: it is a request again, and a fresh key
    # comes only with the other's yes
    new_key = await befriend(client, alice, "alice", bob, "bob")
    assert new_key != old_key


@pytest.mark.asyncio
async def test_get_friend_not_a_friend_404(client: httpx.AsyncClient) -> None:
    alice = await user(client, "alice")
    await register(client, "bob")
    assert (await client.get("/friends/bob", headers=alice)).status_code == 404
    assert (await client.get("/friends/nobody", headers=alice)).status_code == 404
    assert (await client.delete("/friends/nobody", headers=alice)).status_code == 404


# --- request size ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_declared_body_over_limit_413(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/users",
        content=b" " * (MAX_BODY + 1),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413


@pytest.mark.asyncio
async def test_streamed_body_over_limit_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    r = await client.post("/users", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.asyncio
async def test_streamed_body_within_limit_works(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"user_id": "alice", '
        yield b'"password": "' + PASSWORD.encode() + b'"}'

    r = await client.post("/users", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text


# --- store ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_migrate_twice_keeps_data(db_url: str) -> None:
    database = await open_database(db_url)
    try:
        s = UserStore(database)
        await s.migrate()
        assert await s.create_user("alice", "h1")
        assert await s.create_user("bob", "h2")
        key = await s.add_relation("alice", "bob")
        await s.migrate()
        await s.migrate()
        assert await s.get_password_hash("alice") == "h1"
        assert await s.relation_key("bob", "alice") == key
    finally:
        await database.close()
    database = await open_database(db_url)  # and on reopening
    try:
        s = UserStore(database)
        await s.migrate()
        await s.check_schema()
        assert await s.relations_of("bob") == [("alice", key)]
        assert await schema_version(database, COMPONENT) == len(migrations(database.dialect))
    finally:
        await database.close()


@pytest.mark.asyncio
async def test_tables_from_before_schema_versions_migrate(db: Database) -> None:
    # what migrate() ran before versions were kept: the first step's statements, by themselves
    await db.script(migrations(db.dialect)[0])
    legacy = UserStore(db)
    assert await legacy.create_user("alice", "h1")
    with pytest.raises(ConfigError, match=r"schema 'users' is at version 0, .*: run `im migrate`"):
        await legacy.check_schema()
    await legacy.migrate()
    await legacy.check_schema()
    assert await schema_version(db, COMPONENT) == len(migrations(db.dialect))
    assert await legacy.get_password_hash("alice") == "h1"


@pytest.mark.asyncio
async def test_store_users(users: UserStore) -> None:
    assert await users.create_user("alice", "hash-1", "Alice")
    assert not await users.create_user("alice", "hash-2")
    assert await users.get_password_hash("alice") == "hash-1"
    assert await users.get_password_hash("nobody") is None
    assert await users.user_exists("alice")
    assert not await users.user_exists("nobody")
    assert await users.create_user("Alice", "hash-3")  # ids are case-sensitive on every engine
    assert await users.get_password_hash("Alice") == "hash-3"
    await users.ping()


@pytest.mark.asyncio
async def test_store_rejects_overlong_ids_on_mysql(mysql_url: str) -> None:
    # SQLite does not enforce VARCHAR lengths (the REST layer checks them); MySQL in strict mode
    # must refuse, never store a truncated id
    await drop_im_tables(mysql_url)
    database = await open_database(mysql_url)
    try:
        s = UserStore(database)
        await s.migrate()
        with pytest.raises(BackendError):
            await s.create_user("a" * 65, "hash")
        assert not await s.user_exists("a" * 64)
    finally:
        await database.close()


@pytest.mark.asyncio
async def test_store_relations_ordered_pair(users: UserStore, db: Database) -> None:
    key = await users.add_relation("zed", "amy")
    assert await users.add_relation("amy", "zed") == key
    assert await db.fetchall("SELECT user_id1, user_id2, encrypt_key FROM im_relation") == [
        ("amy", "zed", key)
    ]
    assert await users.relations_of("amy") == [("zed", key)]
    assert await users.relations_of("zed") == [("amy", key)]
    assert await users.relation_key("zed", "amy") == key
    with pytest.raises(ValueError):
        await users.add_relation("amy", "amy")
    assert await users.remove_relation("zed", "amy")
    assert not await users.remove_relation("amy", "zed")
    assert await users.relation_key("amy", "zed") is None
    assert await users.relations_of("amy") == []


@pytest.mark.asyncio
async def test_concurrent_adds_agree_on_one_key(users: UserStore) -> None:
    keys = await asyncio.gather(*(users.add_relation("a", "b") for _ in range(10)))
    assert len(set(keys)) == 1


@pytest.mark.asyncio
async def test_store_revocation_purges_expired(users: UserStore, db: Database) -> None:
    now = int(time.time())
    await users.revoke("old", now - 10)
    await users.revoke("live", now + 3600)
    await users.revoke("live", now + 3600)  # twice is fine
    assert await users.is_revoked("live")
    assert not await users.is_revoked("old")  # expired anyway; row dropped
    assert not await users.is_revoked("other")
    assert await db.fetchall("SELECT token_id FROM im_token_revoked") == [("live",)]


def test_migration_steps_shape() -> None:
    assert len(migrations("sqlite")) == len(migrations("mysql"))  # one version numbering
    first = migrations("mysql")[0]
    text = " ".join(first)
    assert "AUTO_INCREMENT" in text and "AUTOINCREMENT" not in text
    assert "CREATE INDEX" not in text  # MySQL has no CREATE INDEX IF NOT EXISTS
    # version 1 must be safe on tables made before versions were kept
    assert all(s.startswith("CREATE TABLE IF NOT EXISTS") for s in first)
    assert all("utf8mb4_bin" in s for s in first)
    assert all(" IF NOT EXISTS " in s for s in migrations("sqlite")[0])
    with pytest.raises(ValueError):
        migrations("oracle")


# --- serving ----------------------------------------------------------------------------------


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    yield port


@pytest.mark.asyncio
async def test_serve_until_stopped(tmp_path: Path, free_port: int) -> None:
    settings = make_settings(tmp_path, rest_port=free_port)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    url = f"http://127.0.0.1:{free_port}"
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(100):
            try:
                r = await c.get("/healthz")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("REST server did not come up")
        assert r.json() == {"status": "ok"}
        await register(c, "alice")
        assert (tmp_path / "im.db").exists()
    stop.set()
    await asyncio.wait_for(task, 10)
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", free_port))


@pytest.mark.asyncio
async def test_serve_port_in_use_raises_config_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = make_settings(tmp_path, rest_port=busy.getsockname()[1])
        with pytest.raises(ConfigError):
            await asyncio.wait_for(serve(settings, asyncio.Event()), 10)
