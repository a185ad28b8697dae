"""The timeline queue of the embedded mode (``im up``): submitter and writer in one process.

Nothing here is durable, and nothing needs to be: a submit returns only with the writer's
committed answers, so a record the process dies with was never SENT. The queue is bounded
(submitters wait for room: back-pressure), and ``close`` fails everyone still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence

from common.errors import BackendError
from proto import im_pb2
from timeline.queue import SUBMIT_TIMEOUT, TimelineDelivery, record_problem

_SERVICE = "timeline-queue"


class _MemoryDelivery:
    __slots__ = ("_future", "records")

    records: Sequence[im_pb2.TimelineRecord]

    def __init__(
        self,
        records: Sequence[im_pb2.TimelineRecord],
        future: asyncio.Future[list[im_pb2.Committed]],
    ) -> None:
        self.records = records
        self._future = future

    async def answer(self, answers: Sequence[im_pb2.Committed]) -> None:
        if len(answers) != len(self.records):
            raise ValueError(f"{len(answers)} answers for {len(self.records)} records")
        if not self._future.done():
            self._future.set_result(list(answers))

    async def reject(self, reason: str) -> None:
        if not self._future.done():
            self._future.set_exception(BackendError(_SERVICE, f"records rejected: {reason}"))


class MemoryTimelineQueue:
    """:class:`timeline.queue.TimelineQueue` in this process, for any number of writers."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._waiting: deque[_MemoryDelivery] = deque()
        # a Condition, not asyncio.Queue: close() must wake submitters blocked on a full queue
        # and writers blocked on an empty one alike
        self._cond = asyncio.Condition()
        self._unresolved: set[asyncio.Future[list[im_pb2.Committed]]] = set()
        self._closed = False

    async def submit(
        self, records: Sequence[im_pb2.TimelineRecord], *, timeout: float = SUBMIT_TIMEOUT
    ) -> list[im_pb2.Committed]:
        if not records:
            return []
        problem = next(filter(None, map(record_problem, records)), None)
        if problem is not None:
            raise ValueError(problem)
        future: asyncio.Future[list[im_pb2.Committed]] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                async with self._cond:
                    await self._cond.wait_for(
                        lambda: self._closed or len(self._waiting) < self._maxsize
                    )
                    if self._closed:
                        raise BackendError(_SERVICE, "closed")
                    self._waiting.append(_MemoryDelivery(tuple(records), future))
                    self._unresolved.add(future)
                    future.add_done_callback(self._unresolved.discard)
                    self._cond.notify_all()
                # shielded: a submitter that gives up does not take the records back; the
                # writer still appends them (their sender's resend is then a duplicate)
                return await asyncio.shield(future)
        except TimeoutError:
            raise BackendError(_SERVICE, f"no answer within {timeout:g}s") from None

    async def deliveries(self, max_batch: int) -> AsyncIterator[list[TimelineDelivery]]:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        while True:
            async with self._cond:
                await self._cond.wait_for(lambda: self._closed or bool(self._waiting))
                if self._closed:
                    return
                batch: list[TimelineDelivery] = []
                while self._waiting and len(batch) < max_batch:
                    batch.append(self._waiting.popleft())
                self._cond.notify_all()
            yield batch

    def qsize(self) -> int:
        """Submits waiting for a writer (not those being written)."""
        return len(self._waiting)

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            self._waiting.clear()
            for future in list(self._unresolved):
                if not future.done():
                    future.set_exception(BackendError(_SERVICE, "closed before committing"))
                    with contextlib.suppress(BaseException):
                        future.exception()  # retrieved: no "never retrieved" warning
            self._cond.notify_all()
