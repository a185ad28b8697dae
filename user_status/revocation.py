"""Token revocations, from REST (logout, password change) to every connector within seconds.

REST stores each revocation in the database (``im_token_revoked``, ``im_token_cutoff``: owned by
rest_web) and then publishes it on a :class:`RevocationBus`; connectors follow the bus, keep the
recent ones in a bounded :class:`common.tokens.RevokedSet` and close the sessions they cover.
A connector also asks the database at every GREET (:class:`RevocationReader`), so a revocation
published while it was not listening still stops new sessions; and after every (re)subscription
the bus yields ``None``, on which the connector rechecks its live sessions against the database.

Two buses behind one protocol, like the rest of this package: in-process for ``im up`` (REST and
connector in one process), and a Redis pub/sub channel ``{prefix}revoked`` for a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Protocol

import redis.asyncio as aioredis

from common.db import Database
from common.redisconn import connect
from common.tokens import Claims, Revocation
from user_status.channel import RedisChannel

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 10_000  # revocations waiting per in-process follower; beyond: recheck all


class RevocationBus(Protocol):
    async def publish(self, rev: Revocation) -> None:
        """Tell every follower, now; raise :class:`BackendError` if that cannot be done."""
        ...

    def follow(self) -> AsyncGenerator[Revocation | None, None]:
        """Revocations as published; ``None`` first and after every gap (resubscription,
        overflow), when some may have been missed: recheck against the database then."""
        ...

    async def close(self) -> None: ...


class MemoryRevocationBus:
    """:class:`RevocationBus` within one process (``im up``)."""

    def __init__(self) -> None:
        self._followers: set[asyncio.Queue[Revocation | None]] = set()

    async def publish(self, rev: Revocation) -> None:
        for q in self._followers:
            if q.full():
                q.get_nowait()
                q.put_nowait(None)  # dropped one: the follower rechecks everyone
            else:
                q.put_nowait(rev)

    async def follow(self) -> AsyncGenerator[Revocation | None, None]:
        q: asyncio.Queue[Revocation | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._followers.add(q)
        try:
            yield None
            while True:
                yield await q.get()
        finally:
            self._followers.discard(q)

    async def close(self) -> None:
        self._followers.clear()


class RedisRevocationBus:
    """:class:`RevocationBus` on a Redis pub/sub channel. Owns ``client``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "im:") -> None:
        self._channel = RedisChannel(client, f"{prefix}revoked", "revocation", Revocation.decode)

    async def publish(self, rev: Revocation) -> None:
        await self._channel.publish(rev.encode())

    def follow(self) -> AsyncGenerator[Revocation | None, None]:
        return self._channel.follow()

    async def close(self) -> None:
        await self._channel.close()


async def create_bus(redis_url: str, prefix: str = "im:") -> RevocationBus:
    """Redis when ``redis_url`` is set (pinged once here), else in-process."""
    if not redis_url:
        return MemoryRevocationBus()
    return RedisRevocationBus(await connect(redis_url), prefix)


class RevocationReader:
    """The database's word on a token: revoked by logout, or older than its user's cutoff.

    Reads rest_web's tables (like :mod:`user_status.relations` reads ``im_relation``); raises
    :class:`BackendError` when the database is down, and the caller decides what that means.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def revoked(self, claims: Claims) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 FROM im_token_revoked WHERE token_id = ?", (claims.token_id,)
        )
        if row is not None:
            return True
        row = await self._db.fetchone(
            "SELECT before_ms FROM im_token_cutoff WHERE user_id = ? AND expires >= ?",
            (claims.user_id, int(time.time())),
        )
        return row is not None and claims.issued_ms < int(row[0])
