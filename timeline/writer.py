"""The timeline writer: the queue's consumer that appends chats and merges cursors in batches.

Rules:
- one ``store.append`` per batch (one transaction); a failing store (``BackendError``) is retried
  with the same batch and exponential back-off, forever: a batch is never dropped, and since the
  deliveries are not acked meanwhile, a writer killed while retrying loses nothing;
- answers go back only after the commit, then the acks: a writer killed between the two leaves
  the records queued, and the next append finds each chat a duplicate and answers its first seq;
- what no writer could ever append (a chat whose conv_id is not its pair's, a SYSTEM chat, a
  cursor of someone who is not in the conversation) is answered ``refused``, never retried,
  never stored; a group chat its group refuses at commit (not a member, dissolved, muted, an
  old key) is answered ``refused`` with NOT_MEMBER, MUTED or STALE_KEY, and a chat whose
  ``after_id`` is not in its timeline yet with OUT_OF_ORDER (its sender sends again, in order);
- a batch's cursors are merged in one ``store.merge_cursors`` (one transaction) after its chats
  (so a cursor up to a chat of the same batch finds it), and each answer says whether the
  member's cursor ``moved``: only then are the peers told;
- ``CancelledError`` is never caught: cancelling ``run`` stops the writer, unacked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from common import metrics
from common.errors import BackendError
from proto import im_pb2
from timeline.model import (
    AppendResult,
    CursorMove,
    CursorResult,
    NewMessage,
    message_problem,
    new_message,
)
from timeline.queue import TimelineDelivery, TimelineQueue
from timeline.store import DEVICE_ID_MAX

log = logging.getLogger(__name__)

T = TypeVar("T")


class Appender(Protocol):
    """What the writer needs of the timeline store."""

    async def append(self, batch: Sequence[NewMessage]) -> list[AppendResult]: ...

    async def merge_cursors(self, moves: Sequence[CursorMove]) -> list[CursorResult]: ...


def prepare(chat: im_pb2.ChatMsg) -> tuple[NewMessage | None, str]:
    """The store's message for this chat, built once, or why it can't be appended (the
    connector checked; this is the last line, for a record that reached the queue some other
    way)."""
    if chat.dest_type not in (im_pb2.SINGLE, im_pb2.GROUP):
        return None, "a chat goes to a user or a group"
    try:
        message = new_message(chat)  # its conv_id from the sender and destination
    except ValueError as exc:
        return None, str(exc)
    if chat.conv_id != message.conv_id:
        return (
            None,
            f"conv_id {chat.conv_id!r} is not the conversation of its sender and destination",
        )
    problem = message_problem(message)
    return (None, problem) if problem else (message, "")


def cursor_problem(record: im_pb2.TimelineRecord) -> str | None:
    """Why no store could merge this cursor (the connector checked; the last line again)."""
    cursor = record.cursor
    if cursor.type not in (im_pb2.READ, im_pb2.DELIVERED):
        return "a cursor is READ or DELIVERED"
    if not cursor.user_id:
        return "a cursor without user_id"
    if cursor.type == im_pb2.DELIVERED and len(record.device_id) > DEVICE_ID_MAX:
        return f"device id over {DEVICE_ID_MAX} characters"
    return None


# what the store's refusals are answered with (Committed.refused): a reused id, and a group
# that refused the chat in the append's transaction (the sender is no member now, the group
# was dissolved, the sender is muted, the body is sealed with a key the group replaced)
_REFUSED: dict[str, im_pb2.ErrorCode] = {
    "reused": im_pb2.ID_REUSED,
    "not_member": im_pb2.NOT_MEMBER,
    "closed": im_pb2.NOT_MEMBER,
    "muted": im_pb2.MUTED,
    "stale_key": im_pb2.STALE_KEY,
    "out_of_order": im_pb2.OUT_OF_ORDER,
}


class TimelineWriter:
    def __init__(
        self,
        queue: TimelineQueue,
        store: Appender,
        max_batch: int = 64,
        *,
        backoff_start: float = 0.1,
        backoff_max: float = 5.0,
        on_commit: Callable[[Sequence[im_pb2.Committed]], Awaitable[None]] | None = None,
    ) -> None:
        self._queue = queue
        self._store = store
        self._max_batch = max_batch
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self._on_commit = on_commit
        self.appended = 0
        self.duplicates = 0
        self.refused = 0

    async def run(self) -> None:
        """Write batches until the queue is closed."""
        async for batch in self._queue.deliveries(self._max_batch):
            await self.write(batch)

    async def write(self, batch: Sequence[TimelineDelivery]) -> None:
        records = [r for d in batch for r in d.records]
        answers = await self._commit(records)
        if self._on_commit is not None:
            try:
                await self._on_commit(answers)
            except Exception:
                log.exception("timeline on_commit hook failed")  # costs a metric, not a row
        start = 0
        for delivery in batch:
            n = len(delivery.records)
            try:
                await delivery.answer(answers[start : start + n])
            except BackendError as exc:
                # committed: the redelivery is answered from the store, same seqs
                log.warning("timeline answer/ack failed after commit: %s", exc)
            start += n

    async def _commit(self, records: Sequence[im_pb2.TimelineRecord]) -> list[im_pb2.Committed]:
        answers = [im_pb2.Committed(origin=r.origin) for r in records]
        chats: list[tuple[int, NewMessage]] = []
        for i, record in enumerate(records):
            if record.WhichOneof("body") != "chat":
                continue
            message, problem = prepare(record.chat)
            if message is not None:
                chats.append((i, message))
            else:
                answers[i].chat.CopyFrom(record.chat)
                answers[i].refused = im_pb2.BAD_MESSAGE
                log.warning("timeline chat refused: %s", problem)
        if chats:
            batch = [m for _, m in chats]
            results = await self._retry("append", lambda: self._store.append(batch))
            for (i, _), result in zip(chats, results, strict=True):
                self._answer_chat(answers[i], records[i].chat, result)
        await self._merge_cursors(records, answers)
        self.refused += sum(1 for a in answers if a.refused)
        return answers

    def _answer_chat(
        self, answer: im_pb2.Committed, sent: im_pb2.ChatMsg, result: AppendResult
    ) -> None:
        refused = _REFUSED.get(result.outcome)
        if refused is not None:
            answer.chat.CopyFrom(sent)
            answer.refused = refused
            return
        answer.chat.ParseFromString(result.entry.content)  # stamped by the store
        if result.outcome == "duplicate":
            answer.duplicate = True
            self.duplicates += 1
        else:
            self.appended += 1
            # counted here, where the store says it is new: once per message whatever the
            # resends, reconnects and redeliveries (a redelivered record is a duplicate)
            metrics.message(metrics.message_kind(sent.msg_type), "accepted")

    async def _merge_cursors(
        self, records: Sequence[im_pb2.TimelineRecord], answers: list[im_pb2.Committed]
    ) -> None:
        moves: list[tuple[int, CursorMove]] = []
        for i, record in enumerate(records):
            if record.WhichOneof("body") != "cursor":
                continue
            cursor = record.cursor
            answers[i].cursor.CopyFrom(cursor)
            problem = cursor_problem(record)
            if problem:
                answers[i].refused = im_pb2.BAD_MESSAGE
                log.warning("timeline cursor refused: %s", problem)
                continue
            device = record.device_id if cursor.type == im_pb2.DELIVERED else ""
            moves.append(
                (i, CursorMove(cursor.conv_id, cursor.user_id, cursor.type, cursor.seq, device))
            )
        if not moves:
            return
        batch = [m for _, m in moves]
        results = await self._retry("cursors", lambda: self._store.merge_cursors(batch))
        for (i, _), result in zip(moves, results, strict=True):
            if not result.member:
                answers[i].refused = im_pb2.BAD_MESSAGE
                continue
            answers[i].cursor.seq = result.seq
            answers[i].moved = result.moved

    async def _retry(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        delay = self._backoff_start
        while True:
            try:
                return await work()
            except BackendError as exc:
                log.error("timeline %s failed, retrying in %.1fs: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)


class Purger(Protocol):
    async def purge(self, older_than_ms: int) -> int: ...


async def keep_retention(
    store: Purger,
    days: int,
    *,
    every: float = 3600.0,
    clock: Callable[[], float] = time.time,
) -> None:
    """Delete what is older than ``days`` now and then (``IM_TIMELINE_RETENTION_DAYS``; 0 keeps
    everything and returns at once). Every writer may run it: a purge deletes by time, so two
    at once delete the same rows once. A failing database is logged and tried at the next turn."""
    if days <= 0:
        return
    while True:
        cut = int((clock() - days * 86400) * 1000)
        try:
            removed = await store.purge(cut)
            if removed:
                log.info("timeline retention removed %d messages older than %d days", removed, days)
        except BackendError as exc:
            log.warning("timeline retention skipped: %s", exc)
        await asyncio.sleep(every)
