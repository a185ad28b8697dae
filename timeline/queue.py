"""The timeline write queue: transfer -> queue -> writer -> back to the transfer.

Every chat is appended to its conversation's timeline by a writer, and its sender hears SENT only
once the append is committed with its seq fixed (issue 13, I4). So unlike the offline queue, a
submit does not end at the broker's confirm: :meth:`TimelineQueue.submit` returns the writer's
answers, one :class:`im_pb2.Committed` per record, in order. The shape stays the product's:
records travel through a durable queue to a batching writer, and the answer comes back to the
node that asked.

Rules both implementations keep:
- records of one conversation go to one shard, and a shard has one active writer, so one
  conversation's records are appended in the order they were submitted (I3 rests on it);
- a delivery is acked only after its records are committed and answered; a writer killed before
  the ack leaves them queued, and the one that appends them again finds them duplicates with
  their first seq (the store's unique key), so no record is ever appended twice;
- every wait is bounded: a submitter gives up after ``timeout`` (``BackendError``: its sender
  resends, and the resend is answered from the store), and queues are bounded.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError

from proto import im_pb2

SUBMIT_TIMEOUT = 10.0  # a submit that has no answer by then fails: its sender resends
BATCH_ITEMS = 500  # records per queue message, and per writer batch
BATCH_BYTES = 4 * 1024 * 1024  # per queue message; far below RabbitMQ's limit


class TimelineDelivery(Protocol):
    """One submitted group of records, handed to the writer."""

    records: Sequence[im_pb2.TimelineRecord]

    async def answer(self, answers: Sequence[im_pb2.Committed]) -> None:
        """Send the answers (one per record, in order) to the submitter, then ack: call only
        once they are committed."""
        ...

    async def reject(self, reason: str) -> None:
        """These records can never be appended (malformed): drop them, unanswered."""
        ...


class TimelineQueue(Protocol):
    async def submit(
        self, records: Sequence[im_pb2.TimelineRecord], *, timeout: float = SUBMIT_TIMEOUT
    ) -> list[im_pb2.Committed]:
        """The writer's answers for ``records``, in order, once committed; ``BackendError``
        when the queue or the writer does not answer within ``timeout``."""
        ...

    def deliveries(self, max_batch: int) -> AsyncIterator[list[TimelineDelivery]]:
        """Batches of up to ``max_batch`` waiting deliveries, for a writer."""
        ...

    async def close(self) -> None: ...


def conversation_of(record: im_pb2.TimelineRecord) -> str:
    kind = record.WhichOneof("body")
    if kind == "chat":
        return record.chat.conv_id
    if kind == "cursor":
        return record.cursor.conv_id
    return ""


def shard_of(conv_id: str, shards: int) -> int:
    return zlib.crc32(conv_id.encode()) % shards


def record_problem(record: im_pb2.TimelineRecord) -> str | None:
    """Why a record can't be appended by any writer, or None: checked before it is queued, so
    a bad one never shares a queue message with good ones."""
    kind = record.WhichOneof("body")
    if kind is None:
        return "timeline record with no body"
    if not conversation_of(record):
        return f"timeline {kind} without conv_id"
    if kind == "chat" and (record.chat.id == 0 or not record.chat.from_id):
        return "timeline chat without id or sender"
    if kind == "cursor" and record.cursor.type not in (im_pb2.DELIVERED, im_pb2.READ):
        return "timeline cursor that is neither DELIVERED nor READ"
    return None


def encode_records(records: Sequence[im_pb2.TimelineRecord]) -> bytes:
    return im_pb2.TimelineBatch(records=records).SerializeToString()


def decode_records(data: bytes) -> list[im_pb2.TimelineRecord]:
    """The records of one queue message; ``ValueError`` when it is not a batch of ours."""
    batch = im_pb2.TimelineBatch()
    try:
        batch.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a timeline batch: {exc}") from None
    if not batch.records:
        raise ValueError("empty timeline batch")
    for record in batch.records:
        problem = record_problem(record)
        if problem is not None:
            raise ValueError(problem)
    return list(batch.records)


def encode_answers(answers: Sequence[im_pb2.Committed]) -> bytes:
    return im_pb2.CommittedBatch(records=answers).SerializeToString()


def decode_answers(data: bytes) -> list[im_pb2.Committed]:
    batch = im_pb2.CommittedBatch()
    try:
        batch.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a committed batch: {exc}") from None
    return list(batch.records)
