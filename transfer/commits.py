"""The transfer's submits to the timeline queue, gathered per loop turn.

Every chat and every cursor a connector forwards is a record the writer must commit before it
is fanned out. Submitting each on its own cost a task, a timeout scope, a future per shard and a
log-context binding per record; a profile of the transfer at 1 300 msgs/s put that at a quarter
of its time. Here the records that arrive in one loop turn go in one ``submit`` (at most
``BATCH_ITEMS``), from one task per batch, and each record's answer is handed to its own future.

What does not change: a record's answer is its own (the queue answers in order), records are
submitted in arrival order (one conversation's commits keep their order into its shard), and a
batch that fails gives every record in it no answer (None): its chats' senders have no SENT and
resend, its cursors are repeated by their devices. A record no writer could take is refused
alone, before it joins a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from common.errors import IMError
from proto import im_pb2
from timeline.queue import BATCH_ITEMS, TimelineQueue, record_problem

log = logging.getLogger(__name__)

Answer = asyncio.Future[im_pb2.Committed | None]


class CommitBatcher:
    """Gathers records for one ``submit`` per loop turn; bounded by its callers (every record
    has a fanout job waiting for it in ``KeyedSerial``, or holds a cursor slot)."""

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
        self._records: list[im_pb2.TimelineRecord] = []
        self._answers: list[Answer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

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
        if not self._records:
            loop.call_soon(self._flush)
        self._records.append(record)
        self._answers.append(answer)
        if len(self._records) >= BATCH_ITEMS:
            self._flush()
        return answer

    def _flush(self) -> None:
        if not self._records:
            return  # flushed already (the batch filled up before the loop turn ended)
        records, answers = self._records, self._answers
        self._records, self._answers = [], []
        self.batches += 1
        task = asyncio.get_running_loop().create_task(
            self._submit(records, answers), name=self.what
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
