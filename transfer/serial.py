"""Per-key serial execution: one conversation's jobs run in arrival order, conversations in
parallel. The transfer fans a conversation's committed chats out in the order they arrived (and
so in seq order: one conversation's commits go to one queue shard, in submission order), so a
device online throughout sees 1, 2, 3 ... and never has to Sync a gap that is only a race."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.errors import IMError

log = logging.getLogger(__name__)


class KeyedSerial:
    """Runs jobs one at a time per key, keys in parallel, with a bound on jobs waiting in all."""

    def __init__(self, limit: int = 10_000) -> None:
        self._queues: dict[str, asyncio.Queue[Callable[[], Awaitable[None]]]] = {}
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        """Queue ``job`` behind ``key``'s; waits only while ``limit`` jobs are queued in all
        (the back-pressure that reaches the connector's link)."""
        await self._slots.acquire()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = asyncio.Queue()
            task = asyncio.create_task(self._work(key, q))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        q.put_nowait(job)

    async def _work(self, key: str, q: asyncio.Queue[Callable[[], Awaitable[None]]]) -> None:
        try:
            while not q.empty():
                job = q.get_nowait()
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except IMError as exc:
                    # a lost fanout: the devices Sync the gap, the sender resends without SENT
                    log.error("routing in %r given up: %s", key, exc)
                except Exception:
                    log.exception("routing job for %r failed", key)
                finally:
                    self._slots.release()
        finally:
            if self._queues.get(key) is q:
                del self._queues[key]

    async def close(self, grace: float = 5.0) -> None:
        """Let queued jobs finish for up to ``grace`` seconds, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
