"""Membership notices: REST tells the connectors that a group's timeline has a new membership
event, so members' online devices hear of it at once rather than at their next listing.

A notice is only a nudge, ``(conv_id, seq)``: the event itself is in the group's timeline,
committed before the notice is published, and a connector that misses a notice (resubscribing,
a full queue) loses nothing a device needs, since every session lists again within a minute
(connector/session.py) and the listing carries the group's head. So both buses drop freely
rather than grow: in-process for ``im up`` (REST and connector in one process), a Redis pub/sub
channel ``{prefix}group-notices`` for a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from common.convid import GROUP, parse_conv_id
from common.errors import BackendError
from common.redisconn import connect
from user_status.channel import RedisChannel

log = logging.getLogger(__name__)

FOLLOWER_QUEUE = 10_000  # notices waiting per in-process follower; beyond, the oldest go
_MAX_SEQ = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Notice:
    conv_id: str  # g:<group id>
    seq: int  # the seq of the change's first event (a removal, then its key rotation)

    def encode(self) -> bytes:
        return f"{self.conv_id} {self.seq}".encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Notice:
        text = data.decode() if isinstance(data, bytes) else data
        conv_id, sep, seq = text.partition(" ")
        if not sep or not seq.isdigit() or len(seq) > 19 or not 0 < int(seq) <= _MAX_SEQ:
            raise ValueError(f"not a notice: {text[:100]!r}")
        if parse_conv_id(conv_id).dest_type != GROUP:
            raise ValueError(f"not a group: {conv_id[:100]!r}")
        return cls(conv_id, int(seq))


class GroupNoticeBus(Protocol):
    async def publish(self, notice: Notice) -> None:
        """Tell every follower; raise :class:`BackendError` if that cannot be done."""
        ...

    def follow(self) -> AsyncGenerator[Notice | None, None]:
        """Notices as published; ``None`` after every (re)subscription (some were missed)."""
        ...

    async def close(self) -> None: ...


class MemoryGroupNoticeBus:
    """:class:`GroupNoticeBus` within one process."""

    def __init__(self) -> None:
        self._followers: set[asyncio.Queue[Notice | None]] = set()

    async def publish(self, notice: Notice) -> None:
        for q in self._followers:
            if q.full():
                q.get_nowait()  # the oldest goes: its devices learn it by their next listing
            q.put_nowait(notice)

    async def follow(self) -> AsyncGenerator[Notice | None, None]:
        q: asyncio.Queue[Notice | None] = asyncio.Queue(FOLLOWER_QUEUE)
        self._followers.add(q)
        try:
            yield None
            while True:
                yield await q.get()
        finally:
            self._followers.discard(q)

    async def close(self) -> None:
        self._followers.clear()


class RedisGroupNoticeBus:
    """:class:`GroupNoticeBus` on a Redis pub/sub channel. Owns ``client``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "im:") -> None:
        self._channel = RedisChannel(
            client, f"{prefix}group-notices", "group notice", Notice.decode
        )

    async def publish(self, notice: Notice) -> None:
        await self._channel.publish(notice.encode())

    def follow(self) -> AsyncGenerator[Notice | None, None]:
        return self._channel.follow()

    async def close(self) -> None:
        with contextlib.suppress(BackendError):
            await self._channel.close()


async def create_notice_bus(redis_url: str, prefix: str = "im:") -> GroupNoticeBus:
    """Redis when ``redis_url`` is set (pinged once here), else in-process."""
    if not redis_url:
        return MemoryGroupNoticeBus()
    return RedisGroupNoticeBus(await connect(redis_url), prefix)
