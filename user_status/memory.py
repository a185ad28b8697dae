"""In-memory user status and node registry for the embedded mode and tests.

Rules: plain dicts touched only from the event loop, so every method is atomic without a lock;
a user with no device left is removed, so the table holds only online users. Liveness follows
the Redis backend exactly (same contract tests), with the event loop's clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence

SWEEP_AFTER = 600.0
MOVES_QUEUE = 10_000  # pending move notices per follower; beyond that, "forget everything"


class MemoryUserStatus:
    """:class:`user_status.base.StatusBackend` kept in this process."""

    def __init__(self, sweep_after: float = SWEEP_AFTER) -> None:
        self._users: dict[str, dict[str, str]] = {}
        self._expiry: dict[str, dict[str, float]] = {}
        self._addrs: dict[str, dict[str, str]] = {}
        self._sweep_after = sweep_after
        self._movers: set[asyncio.Queue[list[str] | None]] = set()

    async def online(self, user_id: str, device_id: str, connector_id: str) -> None:
        self._users.setdefault(user_id, {})[device_id] = connector_id
        self._moved(user_id)

    async def offline(self, user_id: str, device_id: str, connector_id: str) -> None:
        devices = self._users.get(user_id)
        if devices is None or devices.get(device_id) != connector_id:
            return
        del devices[device_id]
        if not devices:
            del self._users[user_id]
        self._moved(user_id)

    def _moved(self, user_id: str) -> None:
        for q in self._movers:
            _offer(q, [user_id])

    async def moves(self) -> AsyncGenerator[list[str] | None, None]:
        q: asyncio.Queue[list[str] | None] = asyncio.Queue(MOVES_QUEUE)
        self._movers.add(q)
        try:
            yield None
            while True:
                yield await q.get()
        finally:
            self._movers.discard(q)

    async def lookup(self, user_id: str) -> dict[str, str]:
        devices = self._users.get(user_id)
        if not devices:
            return {}
        now = time.monotonic()
        registry = self._expiry.get("connector", {})
        out: dict[str, str] = {}
        for device, connector in list(devices.items()):
            expiry = registry.get(connector)
            if expiry is None:
                del devices[device]
            elif expiry >= now:
                out[device] = connector
        if not devices:
            del self._users[user_id]
        return out

    async def lookup_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for user in dict.fromkeys(user_ids):
            devices = await self.lookup(user)
            if devices:
                out[user] = devices
        return out

    async def online_page(
        self, cursor: str = "", count: int = 100
    ) -> tuple[list[tuple[str, dict[str, str]]], str]:
        """Users in id order after ``cursor`` (the last id of the previous page)."""
        after = sorted(u for u in self._users if u > cursor)
        page: list[tuple[str, dict[str, str]]] = []
        for user in after[: max(1, count)]:
            devices = await self.lookup(user)
            if devices:
                page.append((user, devices))
        more = len(after) > max(1, count)
        return page, after[max(1, count) - 1] if more else ""

    async def beat(self, kind: str, node_id: str, addr: str, ttl: float) -> bool:
        now = time.monotonic()
        nodes = self._expiry.setdefault(kind, {})
        addrs = self._addrs.setdefault(kind, {})
        prev = nodes.get(node_id)
        nodes[node_id] = now + ttl
        addrs[node_id] = addr
        for node, expiry in list(nodes.items()):
            if expiry < now - self._sweep_after:
                del nodes[node]
                addrs.pop(node, None)
        return prev is None or prev < now

    async def leave(self, kind: str, node_id: str) -> None:
        self._expiry.get(kind, {}).pop(node_id, None)
        self._addrs.get(kind, {}).pop(node_id, None)

    async def live(self, kind: str) -> dict[str, str]:
        now = time.monotonic()
        addrs = self._addrs.get(kind, {})
        return {
            node: addrs[node]
            for node, expiry in self._expiry.get(kind, {}).items()
            if expiry >= now and node in addrs
        }

    async def close(self) -> None:
        self._users.clear()


def _offer(q: asyncio.Queue[list[str] | None], users: list[str]) -> None:
    """Queue ``users`` for a follower; when it is too far behind, drop the oldest and tell
    it something was missed (``None``): it then forgets everything it cached."""
    if q.full():
        q.get_nowait()
        q.put_nowait(None)
    else:
        q.put_nowait(users)
