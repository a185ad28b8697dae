"""The user status seam."""

from __future__ import annotations

from typing import Protocol


class UserStatusService(Protocol):
    """Routing table of online devices. Every method is safe to call concurrently."""

    async def online(self, user_id: str, device_id: str, connector_id: str) -> None:
        """Record that ``device_id`` of ``user_id`` is connected to ``connector_id``.

        A device that reconnects elsewhere simply moves: the newest call wins.
        """
        ...

    async def offline(self, user_id: str, device_id: str, connector_id: str) -> None:
        """Forget the device, but only if it is still recorded at ``connector_id``.

        The condition keeps a late offline from a dead session from erasing the device's newer
        session on another connector.
        """
        ...

    async def lookup(self, user_id: str) -> dict[str, str]:
        """The user's online devices: ``{device_id: connector_id}``, empty when offline."""
        ...

    async def close(self) -> None: ...
