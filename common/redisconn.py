"""The one place the app connects to Redis: a single server, or the primary that Sentinel names.

Every Redis client of the app (user status, node registry, move, kick and revocation channels, the
tools' clean-up) is made by :func:`connect`, so ``IM_REDIS_URL`` means the same thing everywhere.
Two forms:

- ``redis://[[user]:password@]host[:port][/db][?option=value...]`` (also ``rediss://`` and
  ``unix://``): one server, parsed by redis-py itself, exactly as before.
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?option=value...]``:
  the sentinels (port 26379 when left out) that watch the primary named ``service``; ``db``
  defaults to 0. The user and password are the Redis servers'. Options: ``sentinel_password``
  (the sentinels' own, if they ask for one), ``socket_timeout`` and ``socket_connect_timeout``
  (seconds, for the servers and the sentinels).

With Sentinel, redis-py's pool asks the sentinels for the primary's address every time it opens
a connection, and drops a connection that finds its server demoted (``READONLY``), so after a
failover the next command or (re)subscription reaches the new primary; in between, commands
fail with ``ConnectionError`` and callers retry as they do when a single server restarts.

A primary that dies with its host up resets its connections, and clients notice at once. One
that vanishes (its host partitioned or powered off) sends nothing, and a subscriber waiting on it
would wait forever, missing every message published on the new primary without knowing. So the
Sentinel form also turns on TCP keep-alives, a ``TCP_USER_TIMEOUT`` and redis-py's health-check
PINGs on idle connections: a silent server is given up within :data:`DEAD_AFTER` seconds and
the subscriber resubscribes (and yields its "messages may be lost" marker).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from common.addrlist import parse_host_list
from common.errors import BackendError, ConfigError
from common.redact import redact_url

# what a Redis call raises when the server or the connection fails: redis-py's own errors, the
# socket's, and, under uvloop, RuntimeError from a write on a transport already closed
# ("unable to perform operation on <TCPTransport closed=True>"); each becomes a BackendError
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, RuntimeError)

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379  # Sentinel's registered port
CONNECT_TIMEOUT = 5.0  # seconds; a server that is down should fail a start quickly
# A server that acknowledges nothing for this long is dead to us. It must be longer than a
# healthy network ever stalls, and short against Sentinel's failover (seconds): a subscriber
# stuck on the old primary for longer misses that much more.
DEAD_AFTER = 6.0
HEALTH_CHECK = 2.0  # seconds idle before a PING: keeps data in flight so DEAD_AFTER applies
# redis-py's pools allow 100 connections and then *fail* a command ("Too many connections"):
# under load (a connector checking every chat in the message ledger) that turned bursts into
# INTERNAL errors. One server: a blocking pool, so a burst waits for a free connection (back-
# pressure, bounded by POOL_WAIT). Sentinel's pool has no blocking kind: a larger bound there.
MAX_CONNECTIONS = 128
POOL_WAIT = 10.0  # seconds a command waits for a pooled connection before it fails
SENTINEL_MAX_CONNECTIONS = 1024
_SENTINEL_OPTIONS = {"sentinel_password", "socket_timeout", "socket_connect_timeout"}


@dataclass(frozen=True)
class SentinelParams:
    """Where the sentinels are and what to ask them, from a ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    socket_timeout: float = CONNECT_TIMEOUT
    socket_connect_timeout: float = CONNECT_TIMEOUT

    @classmethod
    def from_url(cls, url: str) -> SentinelParams:
        scheme, sep, rest = url.partition("://")
        if scheme != SENTINEL_SCHEME or not sep:
            raise ConfigError(f"not a {SENTINEL_SCHEME}:// URL")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = parse_host_list(hosts, SENTINEL_PORT, f"{SENTINEL_SCHEME} URL")
        segments = path.split("/") if path else []
        if not segments or not segments[0] or len(segments) > 2:
            raise ConfigError(
                f"{SENTINEL_SCHEME} URL: need /service or /service/db after the sentinels, "
                f"got {'/' + path!r}"
            )
        service = unquote(segments[0])
        db = 0
        if len(segments) == 2 and segments[1]:
            if not segments[1].isdigit():
                raise ConfigError(f"{SENTINEL_SCHEME} URL: db {segments[1]!r} is not a number")
            db = int(segments[1])
        options: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in _SENTINEL_OPTIONS:
                raise ConfigError(f"{SENTINEL_SCHEME} URL: unknown option {key!r}")
            if key == "sentinel_password":
                options[key] = value
                continue
            try:
                seconds = float(value)
            except ValueError:
                problem = f"{key}={value!r} is not a number"
                raise ConfigError(f"{SENTINEL_SCHEME} URL: {problem}") from None
            if seconds <= 0:
                raise ConfigError(f"{SENTINEL_SCHEME} URL: {key} must be positive")
            options[key] = seconds
        return cls(sentinels, service, db, username, password, **options)


def _liveness() -> dict[str, Any]:
    """Socket options that make a silent server an error within :data:`DEAD_AFTER`."""
    options: dict[int, int] = {}
    for name, value in (
        ("TCP_KEEPIDLE", 1),
        ("TCP_KEEPINTVL", 1),
        ("TCP_KEEPCNT", int(DEAD_AFTER)),
        ("TCP_USER_TIMEOUT", int(DEAD_AFTER * 1000)),  # ms of unacknowledged data
    ):
        if hasattr(socket, name):  # Linux has all four
            options[getattr(socket, name)] = value
    return {
        "socket_keepalive": True,
        "socket_keepalive_options": options,
        "health_check_interval": HEALTH_CHECK,
    }


class SentinelRedis(aioredis.Redis):
    """A client of the primary that its :class:`Sentinel` names; closing it closes the
    sentinels' connections too (redis-py leaves those to the caller)."""

    sentinels_of: Sentinel | None = None  # not `sentinel`: that is the SENTINEL command

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinels_of is not None:
                await self.sentinels_of.aclose()


def is_sentinel_url(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def client_for(url: str) -> aioredis.Redis:
    """A client for ``url``, not yet connected (redis-py connects on first use)."""
    if not is_sentinel_url(url):
        try:
            # URL query options (e.g. ?socket_connect_timeout=1) override these defaults
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=POOL_WAIT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=CONNECT_TIMEOUT,
            )
            return aioredis.Redis(connection_pool=pool)
        except (RedisError, ValueError) as exc:
            raise BackendError("redis", f"bad URL {redact_url(url)}: {exc}") from exc
    p = SentinelParams.from_url(url)
    timeouts = {
        "socket_timeout": p.socket_timeout,
        "socket_connect_timeout": p.socket_connect_timeout,
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(p.sentinels),
        sentinel_kwargs={**timeouts, "password": p.sentinel_password},
        socket_timeout=p.socket_timeout,
        socket_connect_timeout=p.socket_connect_timeout,
    )
    client = sentinel.master_for(
        p.service,
        redis_class=SentinelRedis,
        max_connections=SENTINEL_MAX_CONNECTIONS,
        db=p.db,
        username=p.username,
        password=p.password,
        **_liveness(),
    )
    assert isinstance(client, SentinelRedis)
    client.sentinels_of = sentinel
    return client


async def connect(url: str) -> aioredis.Redis:
    """A client on ``url``, pinged once: ``BackendError`` naming Redis if it does not answer
    (with Sentinel: if no sentinel names a primary that answers)."""
    client = client_for(url)
    try:
        await client.ping()
    except REDIS_ERRORS as exc:
        await client.aclose()
        raise BackendError("redis", f"cannot reach {redact_url(url)}: {exc}") from exc
    return client
