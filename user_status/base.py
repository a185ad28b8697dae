"""The user status seams: where devices are online, which nodes are alive."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
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
        """The user's devices on live connectors: ``{device_id: connector_id}``.

        A device on a connector whose heartbeat lapsed is left out; one on a connector that is
        no longer registered at all is forgotten.
        """
        ...

    async def lookup_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """:meth:`lookup` for many users in few round trips (a group's fanout): only users
        with a device online appear in the answer."""
        ...

    def moves(self) -> AsyncGenerator[list[str] | None, None]:
        """Users whose devices went online or offline, as they do (for caches of ``lookup``);
        ``None`` first and after any gap in the notices: forget everything cached."""
        ...

    async def close(self) -> None: ...


class NodeRegistry(Protocol):
    """Connectors and transfers announce themselves with a TTL heartbeat (DESIGN §8)."""

    async def beat(self, kind: str, node_id: str, addr: str, ttl: float) -> bool:
        """Keep ``node_id`` of ``kind`` ("connector", "transfer") live for ``ttl`` seconds more.

        True when it was not live before this beat (first beat, lapsed, or forgotten): a
        connector then announces its sessions again.
        """
        ...

    async def leave(self, kind: str, node_id: str) -> None:
        """Stop being live at once (clean shutdown)."""
        ...

    async def live(self, kind: str) -> dict[str, str]:
        """``{node_id: address}`` of the live nodes of ``kind``."""
        ...


class OnlineDirectory(Protocol):
    """The whole table, page by page, for the admin API (not a routing path: it may be slow)."""

    async def online_page(
        self, cursor: str = "", count: int = 100
    ) -> tuple[list[tuple[str, dict[str, str]]], str]:
        """About ``count`` online users from ``cursor`` ("" to start), each with its devices on
        live connectors as :meth:`UserStatusService.lookup` gives them, and the cursor of the
        next page ("" when there is none). A page may be empty before the end. A user online
        for the whole listing appears at least once; one may appear twice (Redis SCAN)."""
        ...


class StatusBackend(UserStatusService, NodeRegistry, OnlineDirectory, Protocol):
    """What one backend provides: all three, sharing one store."""
