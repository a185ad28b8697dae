"""The TTL heartbeat every connector and transfer runs, and the REST side's view of it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from common.errors import IMError
from user_status.base import NodeRegistry

log = logging.getLogger(__name__)


async def keep_alive(
    registry: NodeRegistry,
    kind: str,
    node_id: str,
    addr: str,
    ttl: float,
    on_fresh: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Beat every ``ttl / 3`` seconds until cancelled; call ``on_fresh`` whenever the registry had
    lost this node (first beat, lapse, Redis restarted empty). A failing registry is logged and
    retried at the same pace: the node keeps serving what it can meanwhile."""
    interval = ttl / 3
    failing = False
    while True:
        try:
            fresh = await registry.beat(kind, node_id, addr, ttl)
            if failing:
                log.info("%s %s: registry reachable again", kind, node_id)
                failing = False
            if fresh and on_fresh is not None:
                await on_fresh()
        except IMError as exc:
            if not failing:
                log.error("%s %s: heartbeat failed, retrying: %s", kind, node_id, exc)
            failing = True
        await asyncio.sleep(interval)


class LiveNodes:
    """The live nodes of one kind, read at most once per ``max_age`` seconds.

    On a registry error the last known list is kept (stale but useful) and the error is logged.
    """

    def __init__(self, registry: NodeRegistry, kind: str, max_age: float = 1.0) -> None:
        self._registry = registry
        self._kind = kind
        self._max_age = max_age
        self._nodes: dict[str, str] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, str]:
        async with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self._max_age:
                try:
                    self._nodes = await self._registry.live(self._kind)
                except IMError as exc:
                    log.warning("live %s nodes unknown, keeping the last list: %s", self._kind, exc)
                self._read_at = now
            return dict(self._nodes)
