"""Friendship checks for the connector's "a SINGLE chat must be to a friend" rule (DESIGN §6).

``im_relation`` belongs to rest_web (it creates and writes the table); this module only reads it.
Rows store each pair once with ``user_id1 < user_id2``, so the pair is ordered before the query.
Positive answers are cached for ``ttl`` seconds in a bounded dict (oldest evicted first), so a
removed friendship is refused again within ``ttl``; negative answers are never cached, so a new
friendship works at once. When the database is down, a pair that was known as friends stays
friends (the stale entry is used and kept), so chats between them go on through an outage.
"""

from __future__ import annotations

import time

from common.db import Database
from common.errors import BackendError

DEFAULT_MAX_ENTRIES = 100_000


class RelationReader:
    def __init__(
        self, db: Database, ttl: float = 2.0, *, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._db = db
        self._ttl = ttl
        self._max_entries = max_entries
        # ordered pair -> monotonic expiry; insertion order is age order, so the first is oldest
        self._friends: dict[tuple[str, str], float] = {}

    async def are_friends(self, a: str, b: str) -> bool:
        """True when ``a`` and ``b`` have a relation row (in either order)."""
        pair = (a, b) if a < b else (b, a)
        expiry = self._friends.get(pair)
        if expiry is not None and time.monotonic() < expiry:
            return True
        try:
            row = await self._db.fetchone(
                "SELECT 1 FROM im_relation WHERE user_id1 = ? AND user_id2 = ? LIMIT 1", pair
            )
        except BackendError:
            if expiry is not None:
                return True  # stale but known: better than refusing every chat in an outage
            raise
        if row is None:
            self._friends.pop(pair, None)
            return False
        self._remember(pair)
        return True

    def _remember(self, pair: tuple[str, str]) -> None:
        self._friends.pop(pair, None)  # re-insert at the end: it is now the youngest
        self._friends[pair] = time.monotonic() + self._ttl
        while len(self._friends) > self._max_entries:
            del self._friends[next(iter(self._friends))]
