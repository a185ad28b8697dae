"""In-memory user status for the embedded mode (one process) and tests.

Rules: plain dicts touched only from the event loop, so every method is atomic without a lock;
a user with no device left is removed, so the table holds only online users.
"""

from __future__ import annotations


class MemoryUserStatus:
    """:class:`user_status.base.UserStatusService` kept in this process."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, str]] = {}

    async def online(self, user_id: str, device_id: str, connector_id: str) -> None:
        self._users.setdefault(user_id, {})[device_id] = connector_id

    async def offline(self, user_id: str, device_id: str, connector_id: str) -> None:
        devices = self._users.get(user_id)
        if devices is None or devices.get(device_id) != connector_id:
            return
        del devices[device_id]
        if not devices:
            del self._users[user_id]

    async def lookup(self, user_id: str) -> dict[str, str]:
        return dict(self._users.get(user_id, {}))

    async def close(self) -> None:
        self._users.clear()
