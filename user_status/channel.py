"""One Redis pub/sub channel carrying one kind of small message, the part every bus here shares
(revocations, admin kicks, group membership notices): publishing with the backend's error,
following through resubscriptions (user_status/redis.follow_channel), and skipping what does
not decode instead of ending the follower. What a bus does after a gap (recheck everyone, or
nothing) stays the bus's own: the follower sees ``None`` there."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from typing import Generic, TypeVar

import redis.asyncio as aioredis

from common.errors import BackendError
from common.redisconn import REDIS_ERRORS
from user_status.redis import follow_channel

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisChannel(Generic[T]):
    """Owns ``client``: :meth:`close` closes it."""

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        what: str,
        decode: Callable[[bytes | str], T],
    ) -> None:
        self._client = client
        self._channel = channel
        self._what = what
        self._decode = decode

    async def publish(self, data: bytes | str) -> None:
        try:
            await self._client.publish(self._channel, data)
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"publish {self._what}: {exc}") from exc

    async def follow(self) -> AsyncGenerator[T | None, None]:
        """Messages as published; ``None`` after every (re)subscription."""
        async for data in follow_channel(self._client, self._channel, f"{self._what} channel"):
            if data is None:
                yield None
                continue
            try:
                yield self._decode(data)
            except ValueError as exc:
                log.warning("ignoring a malformed %s: %s", self._what, exc)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"close: {exc}") from exc
