"""A transfer's cache of routing lookups: a chat and its cursors cost no Redis round trip
while the conversation's two users stay where they are.

Rules:
- an entry lives until its user's devices move (a ``moves`` notice: online or offline anywhere
  in the cluster) or ``ttl`` passes, whichever is first; a gap in the notices (resubscribed, or
  a follower too far behind) forgets everything;
- a lookup that was in flight while any notice arrived is returned but not kept: it may predate
  the move it would otherwise hide;
- a stale entry costs a fanout, never a message: every chat is in its timeline before it is
  fanned out, so a device a stale entry missed (it just moved to another connector) lists its
  conversations when it connects there and Syncs what it lacks; a fanout to a connector the
  device already left finds no session and is dropped there;
- bounded: at most ``size`` users, least recently used forgotten first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from common import metrics
from common.errors import IMError
from user_status.base import UserStatusService

log = logging.getLogger(__name__)

DEFAULT_TTL = 5.0  # the safety net under the notices, seconds
DEFAULT_SIZE = 100_000


class RouteCache:
    def __init__(
        self, status: UserStatusService, ttl: float = DEFAULT_TTL, size: int = DEFAULT_SIZE
    ) -> None:
        self._status = status
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()
        self._generation = 0  # bumped by every notice
        self._following = False
        self.hits = 0
        self.misses = 0

    async def lookup(self, user_id: str) -> dict[str, str]:
        now = time.monotonic()
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] > now and self._following:
            self._entries.move_to_end(user_id)
            self.hits += 1
            metrics.route_cache_hit()
            return entry[1]
        self.misses += 1
        metrics.route_cache_miss()
        generation = self._generation
        devices = await self._status.lookup(user_id)
        if generation == self._generation and self._following:
            self._entries[user_id] = (now + self._ttl, devices)
            self._entries.move_to_end(user_id)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return devices

    async def lookup_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Cached users from the cache, the rest in one batched lookup (kept by the same rule
        as :meth:`lookup`: not when a notice came while it was in flight). Users with no device
        online are in the answer too, as ``{}``: a group's offline members are the common case,
        and caching them saves the most."""
        now = time.monotonic()
        out: dict[str, dict[str, str]] = {}
        missing: list[str] = []
        for user in dict.fromkeys(user_ids):
            entry = self._entries.get(user)
            if entry is not None and entry[0] > now and self._following:
                self._entries.move_to_end(user)
                out[user] = entry[1]
            else:
                missing.append(user)
        hits = len(out)
        self.hits += hits
        self.misses += len(missing)
        metrics.ROUTE_HITS.inc(hits)
        metrics.ROUTE_MISSES.inc(len(missing))
        if not missing:
            return out
        generation = self._generation
        found = await self._status.lookup_many(missing)
        keep = generation == self._generation and self._following
        for user in missing:
            devices = found.get(user, {})
            out[user] = devices
            if keep:
                self._entries[user] = (now + self._ttl, devices)
                self._entries.move_to_end(user)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return out

    def invalidate(self, user_ids: list[str] | None) -> None:
        """These users moved (None: anyone may have)."""
        self._generation += 1
        if user_ids is None:
            self._entries.clear()
            return
        for user in user_ids:
            self._entries.pop(user, None)

    async def follow(self) -> None:
        """Apply move notices until cancelled. Nothing is cached while the notices are not
        followed (before the first subscription, and while a backend error is retried)."""
        delay = 0.1
        while True:
            try:
                async for users in self._status.moves():
                    self._following = True
                    self.invalidate(users)
                    delay = 0.1
            except IMError as exc:
                log.warning("route cache: move notices lost (%s); not caching", exc)
            self._following = False
            self.invalidate(None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
