"""Kicks, from the admin API to the connector that holds the device, within a second.

A kick closes a device's session now; it is not a revocation. The client library stops
reconnecting on the close code the connector uses (see ``Connector._follow_kicks``), but the
device's token stays valid: to keep a user out, disable the account, which revokes every token
through the revocation cutoff (user_status/revocation.py) and refuses new logins.

Rules, as for revocations: one protocol, two buses (in-process for ``im up``; a Redis pub/sub
channel ``{prefix}kick`` for a cluster, where every connector follows it and acts only on the
sessions it holds). A kick published while a connector was not subscribed is lost: kicks are
"now or never", and the admin API says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from common.redisconn import connect
from user_status.channel import RedisChannel

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 10_000  # kicks waiting per in-process follower; beyond, the oldest go
MAX_REASON = 200  # characters of the reason the device is told


@dataclass(frozen=True, slots=True)
class Kick:
    """Close ``device_id`` of ``user_id`` (every device of the user when empty)."""

    user_id: str
    device_id: str = ""
    reason: str = "kicked by an administrator"

    def matches(self, user_id: str, device_id: str) -> bool:
        return user_id == self.user_id and (not self.device_id or device_id == self.device_id)

    def encode(self) -> str:
        return json.dumps(
            {"u": self.user_id, "d": self.device_id, "r": self.reason[:MAX_REASON]},
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | bytes) -> Kick:
        """The inverse of :meth:`encode`; ``ValueError`` for anything else."""
        try:
            raw = json.loads(text)
            return cls(str(raw["u"]), str(raw.get("d", "")), str(raw.get("r", ""))[:MAX_REASON])
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a kick: {exc}") from None


class KickBus(Protocol):
    async def publish(self, kick: Kick) -> None:
        """Tell every connector now; :class:`BackendError` if that cannot be done."""
        ...

    def follow(self) -> AsyncGenerator[Kick, None]:
        """Kicks as published, from the moment of subscribing."""
        ...

    async def close(self) -> None: ...


class MemoryKickBus:
    """:class:`KickBus` within one process (``im up``)."""

    def __init__(self) -> None:
        self._followers: set[asyncio.Queue[Kick]] = set()

    async def publish(self, kick: Kick) -> None:
        for q in self._followers:
            if q.full():
                log.warning("kick follower %d behind: dropping its oldest kick", q.qsize())
                q.get_nowait()
            q.put_nowait(kick)

    async def follow(self) -> AsyncGenerator[Kick, None]:
        q: asyncio.Queue[Kick] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._followers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._followers.discard(q)

    async def close(self) -> None:
        self._followers.clear()


class RedisKickBus:
    """:class:`KickBus` on the Redis pub/sub channel ``{prefix}kick``. Owns ``client``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "im:") -> None:
        self._channel = RedisChannel(client, f"{prefix}kick", "kick", Kick.decode)

    async def publish(self, kick: Kick) -> None:
        await self._channel.publish(kick.encode())

    async def follow(self) -> AsyncGenerator[Kick, None]:
        async for kick in self._channel.follow():
            if kick is not None:  # (re)subscribed: kicks published meanwhile are gone, by design
                yield kick

    async def close(self) -> None:
        await self._channel.close()


async def create_kick_bus(redis_url: str, prefix: str = "im:") -> KickBus:
    """Redis when ``redis_url`` is set (pinged once here), else in-process."""
    if not redis_url:
        return MemoryKickBus()
    return RedisKickBus(await connect(redis_url), prefix)
