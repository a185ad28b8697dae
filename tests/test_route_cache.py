"""The transfer's route cache when users move while a lookup is in flight, on the memory and
the Redis backend: the users who moved are not kept (their answer may predate the move), the
rest of the batch is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest
import pytest_asyncio
from test_user_status import backend, status  # noqa: F401  (the backend fixtures)

from user_status import StatusBackend
from user_status.cache import MOVED_MEMORY, RouteCache

pytestmark = pytest.mark.asyncio


class HeldStatus:
    """The real backend, whose batched lookups can be held after they read (so a move can
    land between the read and the cache's use of it)."""

    def __init__(self, real: StatusBackend) -> None:
        self.real = real
        self.gate: asyncio.Event | None = None
        self.read = asyncio.Event()

    async def lookup(self, user_id: str) -> dict[str, str]:
        found = await self.real.lookup(user_id)
        await self._hold()
        return found

    async def lookup_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        found = await self.real.lookup_many(user_ids)
        await self._hold()
        return found

    async def _hold(self) -> None:
        self.read.set()
        if self.gate is not None:
            await self.gate.wait()

    def moves(self) -> AsyncGenerator[list[str] | None, None]:
        return self.real.moves()


@pytest_asyncio.fixture
async def routes(status: StatusBackend) -> AsyncIterator[tuple[RouteCache, HeldStatus]]:  # noqa: F811
    held = HeldStatus(status)
    cache = RouteCache(held, ttl=60.0)  # type: ignore[arg-type]  # the part of it the cache uses
    follower = asyncio.create_task(cache.follow())
    try:
        for _ in range(250):
            if cache._following:
                break
            await asyncio.sleep(0.02)
        assert cache._following
        yield cache, held
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def applied(cache: RouteCache, generation: int) -> None:
    """Wait until the cache has applied a notice past ``generation``."""
    for _ in range(250):
        if cache._generation > generation:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the move notice never arrived")


async def test_a_move_during_a_batch_drops_only_the_movers_answer(
    routes: tuple[RouteCache, HeldStatus],
    status: StatusBackend,  # noqa: F811
) -> None:
    cache, held = routes
    users = [f"u{i}" for i in range(20)]
    await status.online("u1", "phone", "c1")
    await status.online("u7", "phone", "c1")
    await asyncio.sleep(0.1)  # those notices are applied before the batch
    held.gate = asyncio.Event()
    batch = asyncio.create_task(cache.lookup_many(users))
    await asyncio.wait_for(held.read.wait(), 5)  # read: the answer is as of now
    generation = cache._generation
    await status.online("u7", "phone", "c2")  # u7 moves while the answer is on its way
    await applied(cache, generation)
    held.gate.set()
    first = await batch
    assert first["u7"] == {"phone": "c1"} and first["u1"] == {"phone": "c1"}
    held.gate = None
    hits, misses = cache.hits, cache.misses
    again = await cache.lookup_many(users)
    assert again["u7"] == {"phone": "c2"}, "the stale answer was not kept"
    assert again["u1"] == {"phone": "c1"} and again["u3"] == {}
    assert (cache.hits - hits, cache.misses - misses) == (19, 1), "only u7 was read again"


async def test_a_single_lookup_is_kept_unless_its_own_user_moved(
    routes: tuple[RouteCache, HeldStatus],
    status: StatusBackend,  # noqa: F811
) -> None:
    cache, held = routes
    for mover, target in (("bob", "alice"), ("carol", "carol")):
        held.gate = asyncio.Event()
        held.read.clear()
        one = asyncio.create_task(cache.lookup(target))
        await asyncio.wait_for(held.read.wait(), 5)
        generation = cache._generation
        await status.online(mover, "phone", "c1")
        await applied(cache, generation)
        held.gate.set()
        assert await one == {}
        held.gate = None
        misses = cache.misses
        got = await cache.lookup(target)
        if mover == target:
            assert got == {"phone": "c1"} and cache.misses == misses + 1, "moved: read again"
        else:
            assert got == {} and cache.misses == misses, "someone else moved: kept"


async def test_past_the_memory_of_moves_the_batch_keeps_nothing(
    routes: tuple[RouteCache, HeldStatus],
) -> None:
    """The remembered movers are bounded; once some are forgotten, a lookup in flight cannot
    tell whether its users moved, so it keeps nothing (the bound costs caching, never a stale
    route)."""
    cache, held = routes
    held.gate = asyncio.Event()
    batch = asyncio.create_task(cache.lookup_many(["alice", "bob"]))
    await asyncio.wait_for(held.read.wait(), 5)
    cache.invalidate([f"m{i}" for i in range(MOVED_MEMORY + 1)])
    assert len(cache._moved) == MOVED_MEMORY
    held.gate.set()
    await batch
    assert cache._moved == {}, "cleared once no lookup is in flight"
    held.gate = None
    misses = cache.misses
    await cache.lookup_many(["alice", "bob"])
    assert cache.misses == misses + 2
