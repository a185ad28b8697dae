"""User status and node registry in Redis, shared by a whole cluster.

Keys (all under one prefix, default ``im:``):
- ``u:{user_id}``: hash device_id -> connector_id. ``online`` is a plain HSET (the newest session
  wins); ``offline`` is a Lua compare-and-delete, so a late offline from a dead session never
  erases the device's newer session elsewhere. Redis drops a hash with no field left.
- ``nodes:{kind}``: sorted set node_id -> expiry (ms, Redis clock), refreshed by each node's
  heartbeat; ``addr:{kind}``: hash node_id -> address. A node whose expiry passed is not live.
  Using the server's clock (``TIME`` inside the scripts) keeps hosts' clock skew out of it.
- ``moves``: pub/sub channel with the id of every user whose devices went online or offline,
  published with the change itself, for the transfers' routing caches.

``lookup`` returns only devices on live connectors, so a connector that dies stops receiving
traffic once its TTL lapses (seconds). Its entries are not deleted then, in case it was only cut
from Redis for a moment; a node silent for ``SWEEP_AFTER`` is removed from the registry, and only
then are its users' entries dropped, lazily, by the lookups that meet them. A node that finds
itself missing at a heartbeat (``beat`` returns True: new, lapsed, swept, or Redis restarted
empty) announces its sessions again.

Driver errors become ``BackendError("redis", ...)``; the client reconnects by itself (to the new
primary after a Sentinel failover: :mod:`common.redisconn` makes every client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence

import redis.asyncio as aioredis

from common.errors import BackendError
from common.redisconn import REDIS_ERRORS

log = logging.getLogger(__name__)

SWEEP_AFTER = 600.0  # seconds a node may be silent before it is removed for good
LOOKUP_CHUNK = 500  # users per pipeline in lookup_many

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] user hash, KEYS[2] moves channel; ARGV: device, connector, user
_OFFLINE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('PUBLISH', KEYS[2], ARGV[3])
    return 1
end
return 0
"""

# KEYS[1] user hash, KEYS[2] connector registry zset -> flat device, connector list (live only)
_LOOKUP_LUA = (
    _NOW_MS
    + """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
    local expiry = redis.call('ZSCORE', KEYS[2], all[i + 1])
    if expiry then
        if tonumber(expiry) >= now then
            out[#out + 1] = all[i]
            out[#out + 1] = all[i + 1]
        end
    else
        redis.call('HDEL', KEYS[1], all[i])
    end
end
return out
"""
)

# KEYS[1] zset, KEYS[2] addr hash; ARGV: node, addr, ttl ms, sweep ms -> 1 if it was not live
_BEAT_LUA = (
    _NOW_MS
    + """
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 100)
for _, node in ipairs(dead) do
    redis.call('ZREM', KEYS[1], node)
    redis.call('HDEL', KEYS[2], node)
end
if (not prev) or tonumber(prev) < now then return 1 end
return 0
"""
)

# KEYS[1] zset, KEYS[2] addr hash -> flat node, addr list of live nodes
_LIVE_LUA = (
    _NOW_MS
    + """
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local out = {}
for _, node in ipairs(nodes) do
    local addr = redis.call('HGET', KEYS[2], node)
    if addr then
        out[#out + 1] = node
        out[#out + 1] = addr
    end
end
return out
"""
)


async def follow_channel(
    client: aioredis.Redis, channel: str, what: str
) -> AsyncGenerator[bytes | str | None, None]:
    """Messages published on ``channel``, for ever: ``None`` after every (re)subscription
    (what was published meanwhile is lost, and the caller must make up for it), then each
    message's data. A lost connection is logged and resubscribed with back-off."""
    delay = 0.1
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            delay = 0.1
            yield None
            while True:
                msg = await pubsub.get_message(timeout=5.0)
                if msg is not None and msg.get("type") == "message":
                    yield msg["data"]
        except REDIS_ERRORS as exc:
            log.warning("%s lost (%s); resubscribing", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN MATCH pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: list[bytes | str]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisUserStatus:
    """:class:`user_status.base.UserStatusService`, :class:`user_status.base.NodeRegistry` and
    :class:`user_status.base.OnlineDirectory` on Redis. Owns ``client``: ``close`` closes it."""

    def __init__(
        self, client: aioredis.Redis, prefix: str = "im:", sweep_after: float = SWEEP_AFTER
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._sweep_ms = int(sweep_after * 1000)
        self._offline_script = client.register_script(_OFFLINE_LUA)
        self._lookup_script = client.register_script(_LOOKUP_LUA)
        self._beat_script = client.register_script(_BEAT_LUA)
        self._live_script = client.register_script(_LIVE_LUA)
        self._moves = f"{prefix}moves"

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}u:{user_id}"

    def _nodes(self, kind: str) -> list[str]:
        return [f"{self._prefix}nodes:{kind}", f"{self._prefix}addr:{kind}"]

    # -- user status -------------------------------------------------------------------------

    async def online(self, user_id: str, device_id: str, connector_id: str) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(user_id), device_id, connector_id)
                pipe.publish(self._moves, user_id)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"online {user_id}/{device_id}: {exc}") from exc

    async def offline(self, user_id: str, device_id: str, connector_id: str) -> None:
        try:
            await self._offline_script(
                keys=[self._key(user_id), self._moves], args=[device_id, connector_id, user_id]
            )
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"offline {user_id}/{device_id}: {exc}") from exc

    async def moves(self) -> AsyncGenerator[list[str] | None, None]:
        async for data in follow_channel(self._client, self._moves, "moves channel"):
            yield None if data is None else [_text(data)]

    async def lookup(self, user_id: str) -> dict[str, str]:
        try:
            flat = await self._lookup_script(keys=[self._key(user_id), self._nodes("connector")[0]])
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"lookup {user_id}: {exc}") from exc
        return _pairs(flat)

    async def lookup_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """One pipeline of the lookup script per :data:`LOOKUP_CHUNK` users: a 10 000-member
        group costs a few round trips, not 10 000, and no single reply grows without bound."""
        users = list(dict.fromkeys(user_ids))
        registry = self._nodes("connector")[0]
        out: dict[str, dict[str, str]] = {}
        for start in range(0, len(users), LOOKUP_CHUNK):
            chunk = users[start : start + LOOKUP_CHUNK]
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for user in chunk:
                        await self._lookup_script(keys=[self._key(user), registry], client=pipe)
                    replies = await pipe.execute()
            except REDIS_ERRORS as exc:
                raise BackendError("redis", f"lookup of {len(chunk)} users: {exc}") from exc
            for user, flat in zip(chunk, replies, strict=True):
                devices = _pairs(flat)
                if devices:
                    out[user] = devices
        return out

    async def online_page(
        self, cursor: str = "", count: int = 100
    ) -> tuple[list[tuple[str, dict[str, str]]], str]:
        """One SCAN step over ``u:*`` (``cursor`` is SCAN's own), its hashes in one pipeline,
        kept to devices on connectors live now."""
        try:
            position = int(cursor or 0)
        except ValueError:
            raise ValueError(f"bad cursor {cursor!r}") from None
        match = _glob_escape(self._key("")) + "*"
        try:
            position, keys = await self._client.scan(cursor=position, match=match, count=count)
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                hashes = await pipe.execute()
            live = set(_pairs(await self._live_script(keys=self._nodes("connector"))))
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"online users: {exc}") from exc
        start = len(self._key(""))
        page: list[tuple[str, dict[str, str]]] = []
        for key, devices in zip(keys, hashes, strict=True):
            here = {_text(d): _text(c) for d, c in devices.items() if _text(c) in live}
            if here:
                page.append((_text(key)[start:], here))
        return page, str(position) if position else ""

    async def ping(self) -> None:
        """Raise :class:`BackendError` unless Redis answers (a readiness check)."""
        try:
            await self._client.ping()
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"ping: {exc}") from exc

    # -- node registry -----------------------------------------------------------------------

    async def beat(self, kind: str, node_id: str, addr: str, ttl: float) -> bool:
        try:
            fresh = await self._beat_script(
                keys=self._nodes(kind), args=[node_id, addr, int(ttl * 1000), self._sweep_ms]
            )
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"heartbeat of {kind} {node_id}: {exc}") from exc
        return bool(fresh)

    async def leave(self, kind: str, node_id: str) -> None:
        zset, addrs = self._nodes(kind)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(zset, node_id)
                pipe.hdel(addrs, node_id)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"leave of {kind} {node_id}: {exc}") from exc

    async def live(self, kind: str) -> dict[str, str]:
        try:
            return _pairs(await self._live_script(keys=self._nodes(kind)))
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"live {kind} nodes: {exc}") from exc

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"close: {exc}") from exc
