"""The timeline queue on RabbitMQ: submit, the writer's commit, and its answer coming back.

Rules:
- records go to ``shards`` durable quorum queues by conversation, each with a single active
  consumer, so one conversation's records are appended in submit order however many writers
  run; a writer that dies hands its shards on, and its unacked messages are redelivered;
- each submitter has a reply queue of its own (exclusive, deleted with its connection); every
  queue message names it (``reply_to``) with a correlation id, and the writer publishes its
  answers there after the commit and before the ack;
- concurrent submits to one shard are coalesced while the previous message waits for its
  confirm; when a publish fails, every submit waiting behind it in that shard fails too, so no
  record overtakes an earlier one that is going to be resent;
- a submit whose answer does not come within its timeout fails (``BackendError``) and its
  waiter is forgotten: a late answer finds nobody and is dropped (the resend gets the same
  answer from the store), so the waiter table is bounded by what is in flight;
- a message that can't be parsed is dead-lettered to ``<name>.dead`` instead of redelivered
  forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Sequence

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from common import amqpconn, shardqueue
from common.errors import BackendError
from proto import im_pb2
from timeline.queue import (
    BATCH_BYTES,
    BATCH_ITEMS,
    SUBMIT_TIMEOUT,
    TimelineDelivery,
    conversation_of,
    decode_answers,
    decode_records,
    encode_answers,
    encode_records,
    record_problem,
    shard_of,
)

log = logging.getLogger(__name__)

_SERVICE = "rabbitmq"
_AMQP_ERRORS = shardqueue.AMQP_ERRORS

_Waiter = tuple[int, "asyncio.Future[list[im_pb2.Committed]]"]


class _AmqpDelivery:
    __slots__ = ("_message", "_replies", "records")

    records: Sequence[im_pb2.TimelineRecord]

    def __init__(
        self,
        records: Sequence[im_pb2.TimelineRecord],
        message: AbstractIncomingMessage,
        replies: AbstractRobustChannel | None,
    ) -> None:
        self.records = records
        self._message = message
        self._replies = replies

    async def answer(self, answers: Sequence[im_pb2.Committed]) -> None:
        if len(answers) != len(self.records):
            raise ValueError(f"{len(answers)} answers for {len(self.records)} records")
        reply_to = self._message.reply_to
        if reply_to and self._replies is not None:
            try:
                # not confirmed: a lost answer times its submitter out, and the resend is
                # answered from the store
                await self._replies.default_exchange.publish(
                    aio_pika.Message(
                        encode_answers(answers),
                        correlation_id=self._message.correlation_id,
                        content_type="application/x-protobuf",
                        type="im.CommittedBatch",
                    ),
                    routing_key=reply_to,
                )
            except _AMQP_ERRORS as exc:
                log.warning("timeline answer to %s lost: %s", reply_to, exc)
        await shardqueue.ack(self._message)

    async def reject(self, reason: str) -> None:
        await shardqueue.dead_letter(self._message, reason, log, "timeline")


class _ShardBatcher:
    """Coalesces one shard's submits into as few broker messages as the confirms allow."""

    def __init__(self, queue: AmqpTimelineQueue, routing_key: str) -> None:
        self._queue = queue
        self._key = routing_key
        self._pending: list[
            tuple[Sequence[im_pb2.TimelineRecord], asyncio.Future[list[im_pb2.Committed]]]
        ] = []
        self._task: asyncio.Task[None] | None = None

    def enqueue(
        self, records: Sequence[im_pb2.TimelineRecord]
    ) -> asyncio.Future[list[im_pb2.Committed]]:
        future: asyncio.Future[list[im_pb2.Committed]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name=f"timeline {self._key}")
        return future

    async def _flush(self) -> None:
        while self._pending:
            take, size, count = 0, 0, 0
            for records, _ in self._pending:
                n = sum(r.ByteSize() for r in records)
                if take and (size + n > BATCH_BYTES or count + len(records) > BATCH_ITEMS):
                    break
                take += 1
                size += n
                count += len(records)
            group, self._pending = self._pending[:take], self._pending[take:]
            group = [(records, future) for records, future in group if not future.done()]
            if not group:
                continue
            try:
                await self._queue.send(self._key, group)
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else BackendError(_SERVICE, "cancelled")
                # everything behind the failed message fails too: nothing overtakes it
                failed, self._pending = [*group, *self._pending], []
                for _, future in failed:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._pending:
            if not future.done():
                future.set_exception(BackendError(_SERVICE, "closed"))
        self._pending.clear()


class AmqpTimelineQueue:
    """:class:`timeline.queue.TimelineQueue` on RabbitMQ. Make one with :meth:`connect`."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractRobustChannel,
        name: str,
        shards: int,
        prefetch: int,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self.name = name
        self.shards = shards
        self._prefetch = prefetch
        self.reply_queue = f"{name}.reply.{uuid.uuid4().hex[:16]}"
        self._batchers = [_ShardBatcher(self, self.shard_queue(i)) for i in range(shards)]
        # correlation id -> the submits one queue message carries, with their record counts
        self._waiting: dict[str, list[_Waiter]] = {}
        self._replies: AbstractRobustChannel | None = None
        self._consumer_channel: AbstractRobustChannel | None = None
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "im.timeline",
        shards: int = 4,
        prefetch: int = 64,
        timeout: float = 5.0,
    ) -> AmqpTimelineQueue:
        """Connect, declare the shard queues and this node's reply queue: ``BackendError`` when
        the broker does not answer."""
        if shards < 1 or prefetch < 1:
            raise ValueError("shards and prefetch must be at least 1")
        connection = await amqpconn.connect(url, timeout=timeout)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            queue = cls(connection, channel, name, shards, prefetch)
            await queue._declare(channel)
            await queue._listen()
        except _AMQP_ERRORS as exc:
            await connection.close()
            raise BackendError(_SERVICE, f"declaring {name}: {exc}") from exc
        return queue

    def shard_queue(self, shard: int) -> str:
        return f"{self.name}.{shard}"

    @property
    def dead_letter_queue(self) -> str:
        return shardqueue.dead_letter_queue(self.name)

    async def _declare(self, channel: AbstractRobustChannel) -> list[AbstractQueue]:
        return await shardqueue.declare_shards(channel, self.name, self.shards)

    async def _listen(self) -> None:
        """The reply queue and its consumer; the robust channel declares both again after a
        reconnect (same name, so queue messages in flight still find it)."""
        channel = await self._connection.channel()
        self._replies = channel
        reply = await channel.declare_queue(self.reply_queue, exclusive=True, auto_delete=True)
        await reply.consume(self._on_answer, no_ack=True)

    async def _on_answer(self, message: AbstractIncomingMessage) -> None:
        waiters = self._waiting.pop(message.correlation_id or "", None)
        if waiters is None:
            return  # its submitters gave up; their resends are answered from the store
        try:
            answers = decode_answers(message.body)
        except ValueError as exc:
            log.error("timeline answer unreadable: %s", exc)
            answers = []
        if len(answers) != sum(n for n, _ in waiters):
            error = BackendError(_SERVICE, "timeline answer does not match its records")
            for _, future in waiters:
                if not future.done():
                    future.set_exception(error)
            return
        start = 0
        for n, future in waiters:
            if not future.done():
                future.set_result(answers[start : start + n])
            start += n

    async def submit(
        self, records: Sequence[im_pb2.TimelineRecord], *, timeout: float = SUBMIT_TIMEOUT
    ) -> list[im_pb2.Committed]:
        if not records:
            return []
        if self._closed:
            raise BackendError(_SERVICE, "queue closed")
        problem = next(filter(None, map(record_problem, records)), None)
        if problem is not None:
            raise ValueError(problem)
        by_shard: dict[int, list[int]] = {}
        for i, record in enumerate(records):
            by_shard.setdefault(shard_of(conversation_of(record), self.shards), []).append(i)
        futures = [
            (idx, self._batchers[s].enqueue([records[i] for i in idx]))
            for s, idx in by_shard.items()
        ]
        answers: list[im_pb2.Committed | None] = [None] * len(records)
        try:
            async with asyncio.timeout(timeout):
                for idx, future in futures:
                    for i, answer in zip(idx, await future, strict=True):
                        answers[i] = answer
        except TimeoutError:
            raise BackendError(_SERVICE, f"no answer within {timeout:g}s") from None
        finally:
            for _, future in futures:
                if not future.done():
                    future.cancel()  # still waiting: its waiter is forgotten
                elif not future.cancelled():
                    future.exception()  # retrieved, so a failure behind a failure is not logged
        return [a for a in answers if a is not None]

    async def send(
        self,
        routing_key: str,
        group: Sequence[
            tuple[Sequence[im_pb2.TimelineRecord], asyncio.Future[list[im_pb2.Committed]]]
        ],
    ) -> None:
        """One persistent message for ``group``; its waiters are registered before the publish
        (an answer can come back before the confirm does)."""
        correlation = uuid.uuid4().hex
        waiters: list[_Waiter] = [(len(records), future) for records, future in group]
        self._waiting[correlation] = waiters
        forget = functools.partial(self._forget, correlation)
        for _, future in waiters:
            future.add_done_callback(forget)
        message = aio_pika.Message(
            encode_records([r for records, _ in group for r in records]),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/x-protobuf",
            type="im.TimelineBatch",
            reply_to=self.reply_queue,
            correlation_id=correlation,
        )
        await shardqueue.publish_confirmed(self._channel, message, routing_key)

    def _forget(self, correlation: str, _done: object = None) -> None:
        """Drop a message's waiters once none of them waits any more."""
        waiters = self._waiting.get(correlation)
        if waiters is not None and all(f.done() for _, f in waiters):
            del self._waiting[correlation]

    def in_flight(self) -> int:
        """Queue messages whose answers are awaited (bounded by the submits in flight)."""
        return len(self._waiting)

    async def deliveries(self, max_batch: int) -> AsyncIterator[list[TimelineDelivery]]:
        """Consume every shard (the broker makes this writer the active consumer of some)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        inbox: asyncio.Queue[TimelineDelivery] = asyncio.Queue()
        try:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            queues = await self._declare(channel)
            replies = await self._connection.channel()
        except _AMQP_ERRORS as exc:
            raise BackendError(_SERVICE, f"consume: {exc}") from exc
        self._consumer_channel = channel

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                records = decode_records(message.body)
            except ValueError as exc:
                await _AmqpDelivery((), message, None).reject(f"{exc} ({len(message.body)} B)")
                return
            inbox.put_nowait(_AmqpDelivery(records, message, replies))

        # at most shards * prefetch unacked messages ever reach ``inbox``: bounded
        for q in queues:
            await q.consume(on_message)
        async for batch in shardqueue.batches(
            inbox, max_batch, BATCH_ITEMS, lambda d: len(d.records), lambda: self._closed
        ):
            yield batch

    async def close(self) -> None:
        self._closed = True
        for b in self._batchers:
            await b.close()
        for waiters in self._waiting.values():
            for _, future in waiters:
                if not future.done():
                    future.set_exception(BackendError(_SERVICE, "closed"))
        self._waiting.clear()
        with contextlib.suppress(*_AMQP_ERRORS, asyncio.TimeoutError):
            await self._connection.close()
