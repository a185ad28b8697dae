"""The in-process offline queue of the embedded mode (``im up``): transfer -> writer.

Nothing here is durable, so ``publish`` returns only once the writer has committed the rows (or
raises): that commit is what lets the transfer answer SENT (DESIGN §5, G1). The queue is bounded:
when the writer falls behind, publishers wait (back-pressure, DESIGN §8). ``close`` fails every
publisher still waiting, queued or being written, with :class:`BackendError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence

from common.errors import BackendError
from offline.base import Delivery, OfflineItem
from offline.errors import RejectedError

_SERVICE = "offline-queue"


class _MemoryDelivery:
    """One publish: its items and the future its publisher is waiting on."""

    __slots__ = ("_future", "items")

    items: Sequence[OfflineItem]

    def __init__(self, items: Sequence[OfflineItem], future: asyncio.Future[None]) -> None:
        self.items = items
        self._future = future

    async def ack(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def reject(self, reason: str) -> None:
        if not self._future.done():
            self._future.set_exception(RejectedError(f"offline items rejected: {reason}"))


class MemoryOfflineQueue:
    """:class:`offline.base.OfflineQueue` in this process, for any number of writers."""

    stored_on_publish = True

    def __init__(self, maxsize: int = 10000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._waiting: deque[_MemoryDelivery] = deque()
        # a Condition rather than asyncio.Queue: close() must wake publishers blocked on a full
        # queue and writers blocked on an empty one, and Queue.shutdown needs Python 3.13
        self._cond = asyncio.Condition()
        self._unresolved: set[asyncio.Future[None]] = set()
        self._closed = False

    async def publish(self, items: Sequence[OfflineItem]) -> None:
        if not items:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._cond:
            await self._cond.wait_for(lambda: self._closed or len(self._waiting) < self._maxsize)
            if self._closed:
                raise BackendError(_SERVICE, "closed")
            self._waiting.append(_MemoryDelivery(tuple(items), future))
            self._unresolved.add(future)
            future.add_done_callback(self._unresolved.discard)
            self._cond.notify_all()
        # cancelling the publisher cancels the future; the writer still stores the items
        await future

    async def deliveries(self, max_batch: int) -> AsyncIterator[list[Delivery]]:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        while True:
            async with self._cond:
                await self._cond.wait_for(lambda: self._closed or bool(self._waiting))
                if self._closed:
                    return
                batch: list[Delivery] = []
                while self._waiting and len(batch) < max_batch:
                    batch.append(self._waiting.popleft())
                self._cond.notify_all()
            yield batch

    def qsize(self) -> int:
        """Publishes waiting for a writer (not counting those being written)."""
        return len(self._waiting)

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            self._waiting.clear()
            for future in list(self._unresolved):
                if not future.done():
                    future.set_exception(
                        BackendError(_SERVICE, "closed before the items were stored")
                    )
            self._cond.notify_all()
