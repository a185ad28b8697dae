"""Where each user is online (seed §4.1): user -> {device: connector}; which connectors and
transfers are alive; drain requests from offline writers to connectors.

Two implementations of one :class:`UserStatusService` protocol: in-memory for the embedded mode
and tests, Redis for a cluster. :func:`create` picks one from the settings and, for Redis, checks
the server answers before the process starts serving.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.config import Settings
from common.errors import BackendError
from common.redact import redact_url
from user_status.base import DrainBus, NodeRegistry, StatusBackend, UserStatusService
from user_status.memory import MemoryUserStatus
from user_status.redis import RedisUserStatus

__all__ = [
    "DrainBus",
    "MemoryUserStatus",
    "NodeRegistry",
    "RedisUserStatus",
    "StatusBackend",
    "UserStatusService",
    "create",
]

CONNECT_TIMEOUT = 5.0


async def create(settings: Settings) -> StatusBackend:
    """Redis when ``settings.redis_url`` is set (pinged once here), else in-memory."""
    if not settings.redis_url:
        return MemoryUserStatus()
    url = settings.redis_url
    try:
        # URL query options (e.g. ?socket_connect_timeout=1) override these defaults
        client = aioredis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
        )
    except (RedisError, ValueError) as exc:
        raise BackendError("redis", f"bad URL {redact_url(url)}: {exc}") from exc
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise BackendError("redis", f"cannot reach {redact_url(url)}: {exc}") from exc
    return RedisUserStatus(client, prefix=settings.redis_prefix)
