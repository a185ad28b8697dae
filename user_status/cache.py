"""A transfer's cache of routing lookups: a chat and its cursors cost no Redis round trip
while the conversation's two users stay where they are.

Rules:
- an entry lives until its user's devices move (a ``moves`` notice: online or offline anywhere
  in the cluster) or ``ttl`` passes, whichever is first; a gap in the notices (resubscribed, or
  a follower too far behind) forgets everything;
- a lookup that was in flight while a notice named one of its users returns that user's answer
  but does not keep it: the answer may predate the move it would otherwise hide. The other
  users of the same batch are kept (a group's batch of thousands would otherwise never be
  cached while anyone anywhere moves). For that, the users moved while lookups are in flight
  are remembered (at most :data:`MOVED_MEMORY`; past that, or after a notice that anyone may
  have moved, the lookups in flight keep nothing);
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
MOVED_MEMORY = 100_000  # users moved while lookups were in flight, remembered to drop their answers


class RouteCache:
    def __init__(
        self, status: UserStatusService, ttl: float = DEFAULT_TTL, size: int = DEFAULT_SIZE
    ) -> None:
        self._status = status
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()
        self._generation = 0  # bumped by every notice
        # while lookups are in flight: the generation of each user's latest move, and the latest
        # generation whose moves are not all known (a notice naming everyone, or forgotten ones)
        self._moved: OrderedDict[str, int] = OrderedDict()
        self._unknown_upto = 0
        self._in_flight = 0
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
        generation = self._start()
        try:
            devices = await self._status.lookup(user_id)
            if self._keeps(user_id, generation):
                self._entries[user_id] = (now + self._ttl, devices)
                self._entries.move_to_end(user_id)
                if len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        finally:
            self._end()
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
        generation = self._start()
        try:
            found = await self._status.lookup_many(missing)
            for user in missing:
                devices = found.get(user, {})
                out[user] = devices
                if self._keeps(user, generation):
                    self._entries[user] = (now + self._ttl, devices)
                    self._entries.move_to_end(user)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        finally:
            self._end()
        return out

    def _start(self) -> int:
        """A lookup begins: the generation its answers are as of."""
        self._in_flight += 1
        return self._generation

    def _end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:  # no answer is waiting that a move could make stale
            self._moved.clear()

    def _keeps(self, user: str, generation: int) -> bool:
        """The answer for ``user`` of a lookup begun at ``generation`` may be cached: notices are
        followed and none since then named ``user`` (or might have)."""
        return (
            self._following
            and self._unknown_upto <= generation
            and self._moved.get(user, 0) <= generation
        )

    def invalidate(self, user_ids: list[str] | None) -> None:
        """These users moved (None: anyone may have)."""
        self._generation += 1
        if user_ids is None:
            self._entries.clear()
            self._moved.clear()
            self._unknown_upto = self._generation
            return
        for user in user_ids:
            self._entries.pop(user, None)
            if self._in_flight:
                self._moved[user] = self._generation
                self._moved.move_to_end(user)
        while len(self._moved) > MOVED_MEMORY:
            _, forgotten = self._moved.popitem(last=False)
            self._unknown_upto = max(self._unknown_upto, forgotten)

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
