"""User status in Redis, shared by every connector and transfer of a cluster.

One hash per user, ``{prefix}u:{user_id}``, field device_id -> connector_id. ``online`` is a plain
HSET (the newest session wins); ``offline`` is a Lua compare-and-delete, so a late offline from a
dead session never erases the device's newer session elsewhere. Redis drops a hash with no field
left, so an offline user has no key. Driver errors become ``BackendError("redis", ...)`` here.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.errors import BackendError

# delete the field only if it still names the connector that is going offline
_OFFLINE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisUserStatus:
    """:class:`user_status.base.UserStatusService` on Redis. Owns ``client``: ``close`` closes it.

    Works with or without ``decode_responses`` on the client.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "im:") -> None:
        self._client = client
        self._prefix = prefix
        self._offline_script = client.register_script(_OFFLINE_LUA)

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}u:{user_id}"

    async def online(self, user_id: str, device_id: str, connector_id: str) -> None:
        try:
            await self._client.hset(self._key(user_id), device_id, connector_id)
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"online {user_id}/{device_id}: {exc}") from exc

    async def offline(self, user_id: str, device_id: str, connector_id: str) -> None:
        try:
            await self._offline_script(keys=[self._key(user_id)], args=[device_id, connector_id])
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"offline {user_id}/{device_id}: {exc}") from exc

    async def lookup(self, user_id: str) -> dict[str, str]:
        try:
            raw = await self._client.hgetall(self._key(user_id))
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"lookup {user_id}: {exc}") from exc
        return {_text(device): _text(connector) for device, connector in raw.items()}

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"close: {exc}") from exc
