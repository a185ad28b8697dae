"""Friendship by consent and blocks (issue 12), over HTTP on SQLite and MySQL (conftest ``db``),
then what a block means to the connector, end to end; and the id migration of old rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from test_e2e import PW, expect, make_users, stack_settings

from cli.migrate import run_migrate
from cli.stack import Stack
from client import IMClient, ServerError, befriend
from common.config import Settings
from common.db import Database, open_database
from common.tokens import TokenSigner
from rest_web.app import create_app
from rest_web.store import UserStore

SECRET = "friends-test-secret-0123456789"


@pytest_asyncio.fixture
async def client(db: Database, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = UserStore(db)
    await store.migrate()
    settings = Settings(data_dir=tmp_path, secret=SECRET, connector_addrs="c1.example:9081")
    app = create_app(settings, store, TokenSigner(SECRET.encode()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def user(c: httpx.AsyncClient, name: str) -> dict[str, str]:
    assert (await c.post("/users", json={"user_id": name, "password": PW})).status_code == 201
    r = await c.post("/login", json={"user_id": name, "password": PW})
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def requests_of(c: httpx.AsyncClient, who: dict[str, str]) -> tuple[list[str], list[str]]:
    r = await c.get("/friends/requests", headers=who)
    assert r.status_code == 200, r.text
    body = r.json()
    return [x["user_id"] for x in body["incoming"]], [x["user_id"] for x in body["outgoing"]]


@pytest.mark.asyncio
async def test_a_request_needs_the_other_sides_yes(client: httpx.AsyncClient) -> None:
    a, b = await user(client, "alice"), await user(client, "bob")
    r = await client.put("/friends/bob", headers=a)
    assert (r.status_code, r.json()) == (202, {"user_id": "bob", "state": "pending"})
    assert (await client.put("/friends/bob", headers=a)).status_code == 202  # asked again: same
    # no relation, no key yet, for either side
    assert (await client.get("/friends/bob", headers=a)).status_code == 404
    assert (await client.get("/friends", headers=b)).json() == []
    assert await requests_of(client, a) == ([], ["bob"])
    assert await requests_of(client, b) == (["alice"], [])
    r = await client.put("/friends/alice", headers=b)  # bob says yes
    assert r.status_code == 200
    key = r.json()["key"]
    assert (await client.get("/friends/bob", headers=a)).json() == {"user_id": "bob", "key": key}
    assert await requests_of(client, a) == ([], [])
    assert await requests_of(client, b) == ([], [])


@pytest.mark.asyncio
async def test_withdraw_and_decline(client: httpx.AsyncClient) -> None:
    a, b = await user(client, "alice"), await user(client, "bob")
    await client.put("/friends/bob", headers=a)
    assert (await client.delete("/friends/bob", headers=a)).status_code == 204  # withdrawn
    assert await requests_of(client, b) == ([], [])
    await client.put("/friends/bob", headers=a)
    assert (await client.delete("/friends/alice", headers=b)).status_code == 204  # declined
    assert await requests_of(client, a) == ([], [])
    assert (await client.delete("/friends/alice", headers=b)).status_code == 404
    # a declined request is gone: bob's later ask is a fresh request, not an accept
    assert (await client.put("/friends/alice", headers=b)).status_code == 202


@pytest.mark.asyncio
async def test_asking_nobody_looks_like_asking_anybody(client: httpx.AsyncClient) -> None:
    """No account enumeration: a request to a name nobody holds, to someone who blocked you,
    and to a real user who has not answered, are the same answer and the same listing."""
    a = await user(client, "alice")
    await user(client, "bob")
    carol = await user(client, "carol")
    assert (await client.put("/blocks/alice", headers=carol)).status_code == 204
    answers = [await client.put(f"/friends/{u}", headers=a) for u in ("bob", "nobody", "carol")]
    assert {(r.status_code, r.headers["content-type"]) for r in answers} == {
        (202, "application/json")
    }
    assert [r.json() for r in answers] == [
        {"user_id": u, "state": "pending"} for u in ("bob", "nobody", "carol")
    ]
    assert sorted((await requests_of(client, a))[1]) == ["bob", "carol", "nobody"]
    # carol never sees the blocked user's request
    assert await requests_of(client, carol) == ([], [])
    # a block of a name nobody holds is answered like any block
    assert (await client.put("/blocks/nobody2", headers=a)).status_code == 204


@pytest.mark.asyncio
async def test_a_block_ends_the_friendship_and_keeps_them_out(client: httpx.AsyncClient) -> None:
    a, b = await user(client, "alice"), await user(client, "bob")
    await client.put("/friends/bob", headers=a)
    assert (await client.put("/friends/alice", headers=b)).status_code == 200
    assert (await client.put("/blocks/bob", headers=a)).status_code == 204
    assert (await client.put("/blocks/bob", headers=a)).status_code == 204  # idempotent
    assert (await client.get("/friends", headers=a)).json() == []
    assert (await client.get("/friends", headers=b)).json() == []
    blocks = (await client.get("/blocks", headers=a)).json()
    assert [x["user_id"] for x in blocks] == ["bob"] and blocks[0]["created"] > 0
    # bob asks again and again: pending for him, never shown to alice, never a friendship
    for _ in range(2):
        assert (await client.put("/friends/alice", headers=b)).status_code == 202
    assert await requests_of(client, a) == ([], [])
    # alice cannot ask someone she blocks: she knows, so she is told
    r = await client.put("/friends/bob", headers=a)
    assert r.status_code == 409 and "unblock" in r.json()["detail"]
    # lifting the block drops what bob asked meanwhile: nothing surfaces
    assert (await client.delete("/blocks/bob", headers=a)).status_code == 204
    assert (await client.delete("/blocks/bob", headers=a)).status_code == 404
    assert await requests_of(client, a) == ([], [])
    assert (await client.get("/blocks", headers=a)).json() == []
    assert (await client.put("/blocks/alice", headers=a)).status_code == 409  # yourself
    assert (await client.put("/friends/alice", headers=a)).status_code == 409
    # the list of requests is no friend's name
    r = await client.put("/friends/requests", headers=a)
    assert r.status_code == 405 and r.headers["allow"] == "GET"


@pytest.mark.asyncio
async def test_two_users_asking_each_other_at_once_become_friends(
    client: httpx.AsyncClient,
) -> None:
    a, b = await user(client, "alice"), await user(client, "bob")
    ra, rb = await asyncio.gather(
        client.put("/friends/bob", headers=a), client.put("/friends/alice", headers=b)
    )
    assert 200 in (ra.status_code, rb.status_code)
    assert (await client.get("/friends/bob", headers=a)).status_code == 200
    assert (await client.get("/friends/alice", headers=b)).status_code == 200


@pytest.mark.asyncio
async def test_friend_endpoints_need_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/friends/requests"),
        ("GET", "/blocks"),
        ("PUT", "/blocks/bob"),
        ("DELETE", "/blocks/bob"),
    ]:
        assert (await client.request(method, path)).status_code == 401


# -- end to end: a block reaches the connector's friend check ---------------------------------


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_a_blocked_user_cannot_message(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        await bob.block("alice")
        assert await bob.blocks() == ["alice"]
        await asyncio.sleep(2.2)  # the connector's relation cache (ttl 2 s) forgets the pair
        alice.friends["bob"] = "k" * 43  # alice's library still holds the old key
        await alice.send_text("bob", "are you there?")
        err = await expect(alice, ServerError)
        assert err.code == "NOT_FRIEND"  # type: ignore[attr-defined]
        assert await alice.add_friend("bob") is None  # a request, which bob never sees
        assert (await bob.friend_requests()).incoming == []
    finally:
        for c in (alice, bob):
            await c.close()


@pytest.mark.asyncio
async def test_the_client_library_befriends_from_both_sides(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.rest_port}"
    alice, bob = IMClient(url, "Alice", PW), IMClient(url, "bob", PW)
    try:
        for c in (alice, bob):
            await c.register()
            await c.login()
        assert alice.user_id == "alice"  # the canonical id
        assert await alice.add_friend("BOB") is None
        assert (await bob.friend_requests()).incoming == ["alice"]
        assert (await alice.friend_requests()).outgoing == ["bob"]
        key = await befriend(alice, bob)
        assert alice.friends == {"bob": key} and bob.friends == {"alice": key}
    finally:
        for c in (alice, bob):
            await c.close()


# -- im migrate: ids from before the canonical rule -------------------------------------------


@pytest.mark.asyncio
async def test_migrate_canonicalizes_old_ids_and_leaves_collisions(
    db_url: str, tmp_path: Path
) -> None:
    db = await open_database(db_url)
    try:
        store = UserStore(db)
        await store.migrate()
        # rows as the old code could write them
        for uid in ("Alice", "Bob", "bob", "carol", "DAVE", "Dave"):
            assert await store.create_user(uid, "x")
        await store.add_relation("Alice", "carol")
        await store.add_relation("Alice", "Bob")
        key = await store.relation_key("Alice", "carol")
        report = await store.migrate()
        assert report.renamed == {"Alice": "alice"}
        assert report.collisions == {"bob": ["Bob", "bob"], "dave": ["DAVE", "Dave"]}
        assert any("NOT renamed" in line for line in report.lines())
        assert await store.user_exists("alice") and not await store.user_exists("Alice")
        assert await store.relation_key("alice", "carol") == key
        assert [f for f, _ in await store.relations_of("alice")] == ["Bob", "carol"]
        # the old spelling's tokens are revoked: its owner logs in again
        assert await store.cutoff_of("Alice") > 0
        # idempotent; the collisions are reported again until an operator resolves them
        again = await store.migrate()
        assert again.renamed == {} and set(again.collisions) == {"bob", "dave"}
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_im_migrate_reports_the_id_migration(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    db = await open_database(settings.db_url())
    try:
        store = UserStore(db)
        await store.migrate()
        await store.create_user("Zed", "x")
    finally:
        await db.close()
    lines = await run_migrate(settings)
    assert "users: 1 user ids renamed to their canonical form" in lines
