"""The transfer's submits to the timeline queue, gathered per loop turn.

Every chat and every cursor a connector forwards is a record the writer must commit before it
is fanned out. Submitting each on its own cost a task, a timeout scope, a future per shard and a
log-context binding per record; a profile of the transfer at 1 300 msgs/s put that at a quarter
of its time. Here the records that arrive in one loop turn go in one ``submit`` per queue shard
(at most ``BATCH_ITEMS`` records or ``BATCH_BYTES``), from one task per batch, and each record's
answer is handed to its own future.

What does not change: a record's answer is its own (the queue answers in order), records are
submitted in arrival order (one conversation's commits keep their order into its shard), and a
batch that fails gives every record in it no answer (None): its chats' senders have no SENT and
resend, its cursors are repeated by their devices; and since a batch is one shard's, a shard
that fails holds up no other shard's records. A record no writer could take is refused
alone, before it joins a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from common.errors import IMError
from proto import im_pb2
from timeline.queue import (
    BATCH_BYTES,
    BATCH_ITEMS,
    TimelineQueue,
    conversation_of,
    record_problem,
    shard_of,
)

log = logging.getLogger(__name__)

Answer = asyncio.Future[im_pb2.Committed | None]


class _Batch:
    """One shard's records of this loop turn, with their answers and their size."""

    __slots__ = ("answers", "records", "size")

    def __init__(self) -> None:
        self.records: list[im_pb2.TimelineRecord] = []
        self.answers: list[Answer] = []
        self.size = 0


def shards_of(timeline: TimelineQueue) -> int:
    """How many shards ``timeline`` spreads conversations over (1 for a queue without)."""
    n = getattr(timeline, "shards", 1)
    return n if isinstance(n, int) and n > 0 else 1


class CommitBatcher:
    """Gathers records for one ``submit`` per shard and loop turn; bounded by its callers
    (every record has a fanout job waiting for it in ``KeyedSerial``, or holds a cursor slot).

    One submit per shard, not one for all: a submit waits for every shard it touches, so a
    shard whose writer is gone (until its queue's consumer fails over) would otherwise hold
    up, and then fail, the records of every other shard in the same turn."""

    def __init__(
        self,
        timeline: TimelineQueue,
        what: str = "commit",
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.timeline = timeline
        self.what = what
        self.observe = observe  # each committed record's submit -> answer time, in seconds
        self.batches = 0  # submits made, for tests and the profile
        self._open: dict[int, _Batch] = {}  # shard -> what this turn brought for it
        self._flushing = False  # a flush is scheduled for the end of this turn
        self._tasks: dict[asyncio.Task[None], list[Answer]] = {}
        self._closed = False

    @property
    def timeline(self) -> TimelineQueue:
        return self._timeline

    @timeline.setter
    def timeline(self, queue: TimelineQueue) -> None:
        self._timeline = queue
        self._shards = shards_of(queue)

    def add(self, record: im_pb2.TimelineRecord, answer: Answer | None = None) -> Answer:
        """The writer's answer for ``record`` (None: none came, or it could not be queued), in
        ``answer`` if given (it is left alone if done meanwhile), else in a new future."""
        loop = asyncio.get_running_loop()
        if answer is None:
            answer = loop.create_future()
        problem = record_problem(record)
        if problem is not None or self._closed:
            log.warning("%s not queued: %s", self.what, problem or "transfer stopping")
            answer.set_result(None)
            return answer
        shard = shard_of(conversation_of(record), self._shards) if self._shards > 1 else 0
        batch = self._open.get(shard)
        if batch is None:
            batch = self._open[shard] = _Batch()
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        batch.records.append(record)
        batch.answers.append(answer)
        batch.size += record.ByteSize()
        if len(batch.records) >= BATCH_ITEMS or batch.size >= BATCH_BYTES:
            self._send(self._open.pop(shard))
        return answer

    def _flush(self) -> None:
        self._flushing = False
        batches, self._open = self._open, {}
        for batch in batches.values():
            self._send(batch)

    def _send(self, batch: _Batch) -> None:
        self.batches += 1
        task = asyncio.get_running_loop().create_task(
            self._submit(batch.records, batch.answers), name=self.what
        )
        self._tasks[task] = batch.answers
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        # a task cancelled before it ran never reached _submit's finally: its answers are None
        _none(self._tasks.pop(task, []))

    async def _submit(self, records: list[im_pb2.TimelineRecord], answers: list[Answer]) -> None:
        got: list[im_pb2.Committed] = []
        submitted = time.monotonic()
        try:
            got = await self.timeline.submit(records)
            if len(got) != len(records):
                log.error("%s: %d answers for %d records", self.what, len(got), len(records))
                got = []
            elif self.observe is not None:
                took = time.monotonic() - submitted
                for _ in got:
                    self.observe(took)
        except (IMError, ValueError) as exc:
            log.warning("%s of %d records failed: %s", self.what, len(records), exc)
        finally:
            for i, answer in enumerate(answers):
                if not answer.done():
                    answer.set_result(got[i] if got else None)

    async def close(self) -> None:
        """No more records; cancel the submits under way (their records get no answer)."""
        self._closed = True
        self._flush()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for answers in self._tasks.values():
            _none(answers)


def _none(answers: list[Answer]) -> None:
    for answer in answers:
        if not answer.done():
            answer.set_result(None)
