"""UserStatusService contract (memory and Redis), create(), and RelationReader."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import REDIS_URL, connect_redis

from common.config import Settings
from common.db import Database, SQLiteDatabase
from common.errors import BackendError
from user_status import (
    MemoryUserStatus,
    RedisUserStatus,
    StatusBackend,
    UserStatusService,
    create,
)
from user_status.cache import RouteCache
from user_status.kick import Kick, KickBus, MemoryKickBus, RedisKickBus
from user_status.relations import RelationReader

SWEEP = 0.5  # seconds a silent node stays in the registry, in these tests


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[StatusBackend]:
    """A fresh backend with nothing registered."""
    if request.param == "memory":
        service: StatusBackend = MemoryUserStatus(sweep_after=SWEEP)
        yield service
        await service.close()
        return
    client = await connect_redis(request.getfixturevalue("redis_url"))
    prefix = f"imtest:{uuid.uuid4().hex}:"
    try:
        yield RedisUserStatus(client, prefix=prefix, sweep_after=SWEEP)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def status(backend: StatusBackend) -> StatusBackend:
    """A backend on which connectors c0, c1 and c2 are live for a minute."""
    for node in ("c0", "c1", "c2"):
        assert await backend.beat("connector", node, f"{node}.example:9081", 60.0)
    return backend


# --- the contract -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_online_then_lookup(status: UserStatusService) -> None:
    assert await status.lookup("alice") == {}
    await status.online("alice", "phone", "c1")
    assert await status.lookup("alice") == {"phone": "c1"}
    assert await status.lookup("bob") == {}


@pytest.mark.asyncio
async def test_several_devices(status: UserStatusService) -> None:
    await status.online("alice", "phone", "c1")
    await status.online("alice", "laptop", "c2")
    await status.online("bob", "phone", "c1")
    assert await status.lookup("alice") == {"phone": "c1", "laptop": "c2"}
    assert await status.lookup("bob") == {"phone": "c1"}


@pytest.mark.asyncio
async def test_device_moves_to_newest_connector(status: UserStatusService) -> None:
    await status.online("alice", "phone", "c1")
    await status.online("alice", "phone", "c2")
    assert await status.lookup("alice") == {"phone": "c2"}


@pytest.mark.asyncio
async def test_stale_offline_does_not_remove_newer_session(status: UserStatusService) -> None:
    await status.online("alice", "phone", "c1")
    await status.online("alice", "phone", "c2")
    await status.offline("alice", "phone", "c1")  # late offline of the dead session
    assert await status.lookup("alice") == {"phone": "c2"}
    await status.offline("alice", "tablet", "c2")  # unknown device: no-op
    await status.offline("nobody", "phone", "c2")  # unknown user: no-op
    assert await status.lookup("alice") == {"phone": "c2"}


@pytest.mark.asyncio
async def test_offline_of_devices(status: UserStatusService) -> None:
    await status.online("alice", "phone", "c1")
    await status.online("alice", "laptop", "c2")
    await status.offline("alice", "phone", "c1")
    assert await status.lookup("alice") == {"laptop": "c2"}
    await status.offline("alice", "laptop", "c2")
    assert await status.lookup("alice") == {}


@pytest.mark.asyncio
async def test_concurrent_calls(status: UserStatusService) -> None:
    await asyncio.gather(*(status.online("alice", f"d{i}", f"c{i % 3}") for i in range(50)))
    assert await status.lookup("alice") == {f"d{i}": f"c{i % 3}" for i in range(50)}
    await asyncio.gather(*(status.offline("alice", f"d{i}", f"c{i % 3}") for i in range(50)))
    assert await status.lookup("alice") == {}


@pytest.mark.asyncio
async def test_lookup_many(status: UserStatusService) -> None:
    """One answer for many users, the same as one lookup each; users with no device online are
    left out, repeats count once, and more users than one pipeline chunk all come back."""
    assert await status.lookup_many([]) == {}
    await status.online("alice", "phone", "c1")
    await status.online("alice", "laptop", "c2")
    await status.online("bob", "phone", "c0")
    got = await status.lookup_many(["alice", "carol", "bob", "alice"])
    assert got == {"alice": {"phone": "c1", "laptop": "c2"}, "bob": {"phone": "c0"}}
    many = [f"u{i}" for i in range(1200)]
    for i, user in enumerate(many[::2]):
        await status.online(user, "d", f"c{i % 3}")
    got = await status.lookup_many(many)
    assert got == {u: {"d": f"c{i % 3}"} for i, u in enumerate(many[::2])}
    await status.offline("alice", "phone", "c1")
    assert await status.lookup_many(["alice"]) == {"alice": {"laptop": "c2"}}


@pytest.mark.asyncio
async def test_lookup_many_skips_dead_connectors(backend: StatusBackend) -> None:
    assert await backend.beat("connector", "c1", "c1.example:9081", 60.0)
    await backend.online("alice", "phone", "c1")
    await backend.online("alice", "laptop", "gone")  # never registered: forgotten
    assert await backend.lookup_many(["alice"]) == {"alice": {"phone": "c1"}}


# --- liveness, registry, move notices ---------------------------------------------------------


@pytest.mark.asyncio
async def test_device_on_lapsed_connector_is_not_routed(backend: StatusBackend) -> None:
    assert await backend.beat("connector", "c1", "h:1", 0.3)
    assert await backend.beat("connector", "c2", "h:2", 60.0)
    await backend.online("alice", "phone", "c1")
    await backend.online("alice", "laptop", "c2")
    assert await backend.lookup("alice") == {"phone": "c1", "laptop": "c2"}
    assert not await backend.beat("connector", "c1", "h:1", 0.3)  # still live: not fresh
    await asyncio.sleep(0.4)
    assert await backend.lookup("alice") == {"laptop": "c2"}
    assert await backend.live("connector") == {"c2": "h:2"}
    # back within the sweep time: its device is routed again, and the beat says it had lapsed
    assert await backend.beat("connector", "c1", "h:1", 60.0)
    assert await backend.lookup("alice") == {"phone": "c1", "laptop": "c2"}


@pytest.mark.asyncio
async def test_device_on_unregistered_connector_is_forgotten(backend: StatusBackend) -> None:
    await backend.online("alice", "phone", "ghost")
    assert await backend.lookup("alice") == {}
    assert await backend.beat("connector", "ghost", "h:1", 60.0)
    assert await backend.lookup("alice") == {}  # forgotten, not just hidden


@pytest.mark.asyncio
async def test_long_silent_node_is_swept(backend: StatusBackend) -> None:
    assert await backend.beat("connector", "old", "h:1", 0.1)
    await backend.online("alice", "phone", "old")
    await asyncio.sleep(0.1 + SWEEP + 0.1)
    assert await backend.beat("connector", "other", "h:2", 60.0)  # sweeps "old"
    assert await backend.lookup("alice") == {}
    assert await backend.beat("connector", "old", "h:1", 60.0)  # fresh again: must re-announce
    assert await backend.lookup("alice") == {}


@pytest.mark.asyncio
async def test_registry_live_and_leave(backend: StatusBackend) -> None:
    assert await backend.live("transfer") == {}
    assert await backend.beat("transfer", "t1", "10.0.0.1:9082", 60.0)
    assert await backend.beat("transfer", "t2", "10.0.0.2:9082", 60.0)
    assert await backend.beat("connector", "c1", "10.0.0.3:9081", 60.0)
    assert await backend.live("transfer") == {"t1": "10.0.0.1:9082", "t2": "10.0.0.2:9082"}
    assert not await backend.beat("transfer", "t1", "10.0.0.9:9082", 60.0)  # address moves
    await backend.leave("transfer", "t2")
    assert await backend.live("transfer") == {"t1": "10.0.0.9:9082"}
    assert await backend.live("connector") == {"c1": "10.0.0.3:9081"}


@pytest.mark.asyncio
async def test_moves_name_users_whose_devices_changed(status: StatusBackend) -> None:
    moves = status.moves()
    assert await asyncio.wait_for(anext(moves), 5) is None  # following: forget what you had
    await status.online("alice", "phone", "c1")
    await status.offline("alice", "phone", "c2")  # not there: no change, no notice
    await status.offline("alice", "phone", "c1")
    assert await asyncio.wait_for(anext(moves), 5) == ["alice"]
    assert await asyncio.wait_for(anext(moves), 5) == ["alice"]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(moves), 0.3)
    await moves.aclose()


@pytest.mark.asyncio
async def test_route_cache_serves_until_the_user_moves(status: StatusBackend) -> None:
    """Cached lookups cost nothing; a move anywhere is seen at the next lookup."""
    routes = RouteCache(status, ttl=60.0)
    follower = asyncio.create_task(routes.follow())
    try:
        for _ in range(50):
            await asyncio.sleep(0.02)
            if routes._following:
                break
        await status.online("alice", "phone", "c1")
        await asyncio.sleep(0.1)
        assert await routes.lookup("alice") == {"phone": "c1"}
        assert await routes.lookup("alice") == {"phone": "c1"}
        assert routes.hits == 1
        await status.online("alice", "phone", "c2")  # moved to another connector
        for _ in range(50):
            if await routes.lookup("alice") == {"phone": "c2"}:
                break
            await asyncio.sleep(0.02)
        assert await routes.lookup("alice") == {"phone": "c2"}
        await status.offline("alice", "phone", "c2")
        for _ in range(50):
            if await routes.lookup("alice") == {}:
                break
            await asyncio.sleep(0.02)
        assert await routes.lookup("alice") == {}
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


@pytest.mark.asyncio
async def test_route_cache_lookup_many(status: StatusBackend) -> None:
    """A batch takes cached users from the cache (offline ones too), asks for the rest in one
    call, and a move is seen at the next batch."""
    routes = RouteCache(status, ttl=60.0)
    follower = asyncio.create_task(routes.follow())
    try:
        for _ in range(50):
            await asyncio.sleep(0.02)
            if routes._following:
                break
        await status.online("alice", "phone", "c1")
        await asyncio.sleep(0.1)
        want = {"alice": {"phone": "c1"}, "bob": {}}
        assert await routes.lookup_many(["alice", "bob"]) == want
        assert (routes.hits, routes.misses) == (0, 2)
        assert await routes.lookup_many(["bob", "alice"]) == want
        assert (routes.hits, routes.misses) == (2, 2)
        await status.online("bob", "laptop", "c2")
        for _ in range(50):
            if (await routes.lookup_many(["alice", "bob"]))["bob"]:
                break
            await asyncio.sleep(0.02)
        got = await routes.lookup_many(["alice", "bob"])
        assert got == {"alice": {"phone": "c1"}, "bob": {"laptop": "c2"}}
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


@pytest.mark.asyncio
async def test_route_cache_keeps_nothing_while_not_following(status: StatusBackend) -> None:
    routes = RouteCache(status, ttl=60.0)
    await status.online("alice", "phone", "c1")
    await routes.lookup("alice")
    await status.online("alice", "phone", "c2")
    assert await routes.lookup("alice") == {"phone": "c2"}
    assert routes.hits == 0


# --- the whole table, for the admin API -------------------------------------------------------


async def all_online(status: StatusBackend, count: int) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    cursor, pages = "", 0
    while True:
        page, cursor = await status.online_page(cursor, count)
        out += page
        pages += 1
        assert pages < 1000, "the cursor never ends"
        if not cursor:
            return out


@pytest.mark.asyncio
async def test_online_page_lists_everyone_with_live_devices(status: StatusBackend) -> None:
    assert await all_online(status, 10) == []
    for i in range(57):
        await status.online(f"user{i:02d}", "phone", f"c{i % 3}")
    await status.online("user00", "laptop", "c1")
    await status.online("gone", "phone", "dead-connector")  # never registered: left out
    await status.online("user*[x]", "phone", "c0")  # glob characters are just characters
    listed = await all_online(status, 10)
    by_user = dict(listed)  # Redis SCAN may repeat a user: the set is what counts
    assert set(by_user) == {f"user{i:02d}" for i in range(57)} | {"user*[x]"}
    assert by_user["user00"] == {"phone": "c0", "laptop": "c1"}
    assert by_user["user05"] == {"phone": "c2"}
    await status.offline("user05", "phone", "c2")
    assert "user05" not in dict(await all_online(status, 1000))


@pytest.mark.asyncio
async def test_online_page_leaves_out_lapsed_connectors(backend: StatusBackend) -> None:
    assert await backend.beat("connector", "short", "s:1", 0.2)
    assert await backend.beat("connector", "long", "l:1", 60.0)
    await backend.online("alice", "phone", "short")
    await backend.online("bob", "phone", "long")
    assert dict(await all_online(backend, 10)) == {
        "alice": {"phone": "short"},
        "bob": {"phone": "long"},
    }
    await asyncio.sleep(0.4)
    assert dict(await all_online(backend, 10)) == {"bob": {"phone": "long"}}


@pytest.mark.asyncio
async def test_online_page_refuses_a_bad_cursor_on_redis(status: StatusBackend) -> None:
    if isinstance(status, MemoryUserStatus):
        assert await status.online_page("zzz", 10) == ([], "")  # ids after zzz: none
        return
    with pytest.raises(ValueError, match="cursor"):
        await status.online_page("not-a-number", 10)


# --- kicks --------------------------------------------------------------------------------------


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def kick_bus(request: pytest.FixtureRequest) -> AsyncIterator[KickBus]:
    if request.param == "memory":
        bus: KickBus = MemoryKickBus()
    else:
        client = await connect_redis(request.getfixturevalue("redis_url"))
        bus = RedisKickBus(client, prefix=f"imtest:{uuid.uuid4().hex}:")
    yield bus
    await bus.close()


@pytest.mark.asyncio
async def test_kicks_reach_every_follower(kick_bus: KickBus) -> None:
    followers = [kick_bus.follow(), kick_bus.follow()]
    pending = [asyncio.ensure_future(anext(f)) for f in followers]
    await asyncio.sleep(0.3)  # subscribed (Redis needs a moment)
    await kick_bus.publish(Kick("alice", "phone"))
    got = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert got == [Kick("alice", "phone"), Kick("alice", "phone")]
    await kick_bus.publish(Kick("bob"))
    assert await asyncio.wait_for(anext(followers[0]), 5) == Kick("bob")
    for f in followers:
        await f.aclose()


def test_kick_matching_and_wire_form() -> None:
    k = Kick("alice", "phone", "spam")
    assert k.matches("alice", "phone") and not k.matches("alice", "laptop")
    assert Kick("alice").matches("alice", "laptop") and not Kick("alice").matches("bob", "x")
    assert Kick.decode(k.encode()) == k
    assert Kick.decode(Kick("a", reason="r" * 500).encode()).reason == "r" * 200
    for bad in (b"", b"[]", b'{"d": "x"}', b"\xff"):
        with pytest.raises(ValueError):
            Kick.decode(bad)


@pytest.mark.redis
@pytest.mark.asyncio
async def test_redis_kick_bus_skips_malformed_messages(redis_client: aioredis.Redis) -> None:
    prefix = f"imtest:{uuid.uuid4().hex}:"
    client = await connect_redis(REDIS_URL)
    bus = RedisKickBus(client, prefix=prefix)
    follower = bus.follow()
    pending = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0.3)
    await redis_client.publish(f"{prefix}kick", b"not json")
    await bus.publish(Kick("carol"))
    assert await asyncio.wait_for(pending, 5) == Kick("carol")
    await follower.aclose()
    await bus.close()


# --- Redis specifics and create() -------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.asyncio
async def test_redis_layout_and_empty_hash_removed(redis_client: aioredis.Redis) -> None:
    prefix = f"imtest:{uuid.uuid4().hex}:"
    service = RedisUserStatus(redis_client, prefix=prefix)
    try:
        await service.online("alice", "phone", "c1")
        assert await redis_client.hgetall(f"{prefix}u:alice") == {b"phone": b"c1"}
        await service.offline("alice", "phone", "c1")
        assert await redis_client.exists(f"{prefix}u:alice") == 0
    finally:
        await redis_client.delete(f"{prefix}u:alice")


@pytest.mark.asyncio
async def test_redis_errors_become_backend_error() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    service = RedisUserStatus(client)
    for call in (
        service.online("a", "d", "c"),
        service.offline("a", "d", "c"),
        service.lookup("a"),
    ):
        with pytest.raises(BackendError) as info:
            await call
        assert info.value.service == "redis"
    await service.close()


@pytest.mark.asyncio
async def test_create_without_redis_url_is_memory() -> None:
    service = await create(Settings(redis_url=""))
    assert isinstance(service, MemoryUserStatus)
    await service.close()


@pytest.mark.asyncio
async def test_create_unreachable_redis_names_it() -> None:
    url = "redis://:hunter2secret@127.0.0.1:1/0?socket_connect_timeout=0.5"
    with pytest.raises(BackendError) as info:
        await create(Settings(redis_url=url))
    assert info.value.service == "redis"
    assert "127.0.0.1:1" in str(info.value)
    assert "hunter2secret" not in str(info.value)


@pytest.mark.redis
@pytest.mark.asyncio
async def test_create_with_redis_url(redis_client: aioredis.Redis, redis_url: str) -> None:
    service = await create(Settings(redis_url=redis_url))
    try:
        assert isinstance(service, RedisUserStatus)
        assert await service.lookup(f"nobody-{uuid.uuid4().hex}") == {}
    finally:
        await service.close()


# --- RelationReader -----------------------------------------------------------------------------

RELATION_DDL = (
    "CREATE TABLE im_relation (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id1 VARCHAR(64),"
    " user_id2 VARCHAR(64), encrypt_key CHAR(43), UNIQUE(user_id1,user_id2))"
)


@pytest_asyncio.fixture
async def relation_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await SQLiteDatabase.open(tmp_path / "im.db")
    await db.script([RELATION_DDL])
    yield db
    await db.close()


async def befriend(db: Database, a: str, b: str) -> None:
    lo, hi = sorted((a, b))
    await db.execute(
        "INSERT INTO im_relation (user_id1, user_id2, encrypt_key) VALUES (?, ?, ?)",
        (lo, hi, "k" * 43),
    )


@pytest.mark.asyncio
async def test_friends_in_either_order(relation_db: Database) -> None:
    await befriend(relation_db, "bob", "alice")
    reader = RelationReader(relation_db)
    assert await reader.are_friends("alice", "bob")
    assert await reader.are_friends("bob", "alice")
    assert not await reader.are_friends("alice", "carol")
    assert not await reader.are_friends("carol", "bob")


@pytest.mark.asyncio
async def test_new_friendship_seen_at_once(relation_db: Database) -> None:
    reader = RelationReader(relation_db, ttl=60)
    assert not await reader.are_friends("alice", "bob")
    await befriend(relation_db, "alice", "bob")
    assert await reader.are_friends("alice", "bob")  # negatives are not cached


@pytest.mark.asyncio
async def test_removed_friendship_seen_after_ttl(relation_db: Database) -> None:
    await befriend(relation_db, "alice", "bob")
    reader = RelationReader(relation_db, ttl=0.05)
    assert await reader.are_friends("alice", "bob")
    await relation_db.execute("DELETE FROM im_relation")
    assert await reader.are_friends("bob", "alice")  # cached, within ttl
    await asyncio.sleep(0.08)
    assert not await reader.are_friends("alice", "bob")


@pytest.mark.asyncio
async def test_cache_is_bounded(relation_db: Database) -> None:
    for i in range(5):
        await befriend(relation_db, "alice", f"u{i}")
    reader = RelationReader(relation_db, ttl=60, max_entries=2)
    for i in range(5):
        assert await reader.are_friends("alice", f"u{i}")
    await relation_db.execute("DELETE FROM im_relation WHERE user_id2 IN ('u0', 'u4')")
    assert not await reader.are_friends("alice", "u0")  # evicted: read again
    assert await reader.are_friends("alice", "u4")  # youngest: still cached
