"""The Redis adapters against Redis with Sentinel in test hosts, through a failover.

The test runs in the ``client`` host (``bed.inside``), with the app's own clients from
``IM_REDIS_URL``'s Sentinel form: user status, lookups and pub/sub keep working when the primary
is killed (the sentinels promote the replica) and when the primary's host drops off the network
without a word, which only the liveness settings of :mod:`common.redisconn` can notice.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import pytest

from common.errors import BackendError
from common.redisconn import connect
from common.tokens import Revocation
from testbed.netns import Testbed
from testbed.sentinel import SentinelGroup
from user_status.redis import RedisUserStatus
from user_status.revocation import RedisRevocationBus

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]
T = TypeVar("T")


async def until_ok(op: Callable[[], Awaitable[T]], timeout: float) -> T:
    """``op()`` retried on BackendError (Redis between primaries) until it succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await op()
        except BackendError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class Follower:
    """Everything a channel follower yields, with when it came."""

    def __init__(self, source: AsyncGenerator[object, None]) -> None:
        self.seen: list[tuple[float, object]] = []
        self._source = source
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self._source:
            self.seen.append((time.monotonic(), item))

    def markers_after(self, t: float) -> int:
        """(Re)subscriptions announced after ``t``."""
        return sum(1 for when, item in self.seen if when >= t and item is None)

    def items_after(self, t: float) -> list[object]:
        return [item for when, item in self.seen if when >= t and item is not None]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._source.aclose()


def subscribed(f: Follower) -> bool:
    return f.markers_after(0) == 1


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    began = time.monotonic()
    while not cond():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def test_status_lookup_and_pubsub_follow_a_sentinel_failover(
    bed: Testbed, sentinels: SentinelGroup
) -> None:
    """Kill the primary: writes and lookups fail only until the sentinels promote the replica,
    what was written before is still there, and every subscriber (moves, revocations)
    announces its gap (``None``) and receives what is published on the new primary."""
    prefix = f"imtest:{secrets.token_hex(4)}:"
    old = sentinels.primary()
    try:
        with bed.inside("client"):
            status = RedisUserStatus(await connect(sentinels.url()), prefix=prefix)
            bus = RedisRevocationBus(await connect(sentinels.url()), prefix=prefix)
            moves = Follower(status.moves())
            revoked = Follower(bus.follow())
            try:
                for f in (moves, revoked):
                    await wait_for(functools.partial(subscribed, f), 10, "first subscription")
                await status.online("before", "d1", "c1")
                await status.beat("connector", "c1", "10.0.0.1:1", 60)
                await wait_for(lambda: moves.items_after(0) == [["before"]], 5, "a move")

                killed_at = time.monotonic()
                await asyncio.to_thread(sentinels.kill, old)
                await until_ok(lambda: status.online("after", "d1", "c1"), timeout=30)
                write_back = time.monotonic() - killed_at
                assert sentinels.primary() != old
                # written before the kill (replicated then) and after it, both visible
                assert await status.lookup("before") == {"d1": "c1"}
                assert await status.lookup("after") == {"d1": "c1"}

                # each follower noticed the loss, resubscribed on the new primary and gets
                # what is published there (published again until the subscription is back)
                async def published(
                    f: Follower, publish: Callable[[], Awaitable[None]], expected: object
                ) -> float:
                    await wait_for(lambda: f.markers_after(killed_at) >= 1, 30, "resubscribed")
                    began = time.monotonic()
                    # what this publish sends, not merely anything (the "after" write above
                    # may already have come through the new subscription)
                    while expected not in f.items_after(killed_at):
                        await until_ok(publish, 10)
                        await asyncio.sleep(0.2)
                        assert time.monotonic() - began < 15, "nothing received after failover"
                    return time.monotonic() - killed_at

                rev = Revocation(expires=int(time.time()) + 60, token_id="t1", user_id="u1")
                back = [
                    await published(moves, lambda: status.online("again", "d1", "c1"), ["again"]),
                    await published(revoked, lambda: bus.publish(rev), rev),
                ]
                assert ["again"] in moves.items_after(killed_at)
                assert rev in revoked.items_after(killed_at)
                print(f"redis failover: writes back after {write_back:.1f} s, "
                      f"subscribers after {max(back):.1f} s")  # fmt: skip
            finally:
                for f in (moves, revoked):
                    await f.close()
                await status.close()
                await bus.close()
    finally:
        await asyncio.to_thread(sentinels.ensure_up)


async def test_subscriber_leaves_a_primary_whose_host_vanished(
    bed: Testbed, sentinels: SentinelGroup
) -> None:
    """Partition the primary's host: no reset ever reaches the client, yet its subscriber gives
    the silent connection up (keep-alive, TCP_USER_TIMEOUT and health-check PINGs), resubscribes
    on the promoted replica and announces the gap. Without those settings it would wait on the
    dead connection for as long as the partition lasts, missing everything without a marker."""
    prefix = f"imtest:{secrets.token_hex(4)}:"
    old = sentinels.primary()
    try:
        with bed.inside("client"):
            status = RedisUserStatus(await connect(sentinels.url()), prefix=prefix)
            moves = Follower(status.moves())
            try:
                await wait_for(lambda: moves.markers_after(0) == 1, 10, "first subscription")
                cut_at = time.monotonic()
                await asyncio.to_thread(bed.partition, old)
                new = await asyncio.to_thread(sentinels.wait_failover, old)
                assert new != old
                await wait_for(lambda: moves.markers_after(cut_at) >= 1, 30, "resubscribed")
                gone = time.monotonic() - cut_at
                began = time.monotonic()
                while not moves.items_after(cut_at):
                    await until_ok(lambda: status.online("u", "d", "c"), 15)
                    await asyncio.sleep(0.2)
                    assert time.monotonic() - began < 15, "nothing received on the new primary"
                print(f"redis partition: subscriber moved after {gone:.1f} s")
            finally:
                await moves.close()
                await status.close()
    finally:
        await asyncio.to_thread(bed.heal)
        await asyncio.to_thread(sentinels.ensure_up)
