"""Where each user is online (seed §4.1): user -> {device: connector}; which connectors and
transfers are alive.

Two implementations of one :class:`UserStatusService` protocol: in-memory for the embedded mode
and tests, Redis for a cluster. :func:`create` picks one from the settings and, for Redis, checks
the server answers before the process starts serving.
"""

from __future__ import annotations

from common.config import Settings
from common.redisconn import connect
from user_status.base import (
    NodeRegistry,
    OnlineDirectory,
    StatusBackend,
    UserStatusService,
)
from user_status.memory import MemoryUserStatus
from user_status.redis import RedisUserStatus

__all__ = [
    "MemoryUserStatus",
    "NodeRegistry",
    "OnlineDirectory",
    "RedisUserStatus",
    "StatusBackend",
    "UserStatusService",
    "create",
]


async def create(settings: Settings) -> StatusBackend:
    """Redis when ``settings.redis_url`` is set (one server or a Sentinel group; pinged once
    here), else in-memory."""
    if not settings.redis_url:
        return MemoryUserStatus()
    client = await connect(settings.redis_url)
    return RedisUserStatus(client, prefix=settings.redis_prefix)
