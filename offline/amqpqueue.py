"""The offline queue on RabbitMQ (aio-pika): transfer -> broker -> offline writer.

Rules (DESIGN §5, §7, §8):
- ``publish`` returns once the broker has confirmed the message (publisher confirms on a
  persistent message in a durable quorum queue): that confirm is what lets a transfer answer SENT;
- the queue is split into ``shards`` queues by recipient, each with a single active consumer, so
  one recipient's rows are committed in the order they were published however many writers run;
  a writer that dies hands its shards to the next one, and its unacked messages are redelivered;
- concurrent publishes to one shard are coalesced: while one batch waits for its confirm, the next
  ones gather, so the broker sees few large messages under load and one small one at rest;
- a message that can't be parsed is rejected without requeue and lands in ``<name>.dead`` with a
  log line, instead of being redelivered forever.
Driver errors become ``BackendError("rabbitmq", ...)``; the robust connection reconnects by itself
and re-subscribes, so callers just retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Sequence

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from google.protobuf.message import DecodeError

from common import amqpconn, shardqueue
from common.errors import BackendError
from offline.base import KIND_CHAT, Delivery, OfflineItem
from offline.errors import RejectedError
from offline.sqlstore import item_problem
from proto import im_pb2

log = logging.getLogger(__name__)

_SERVICE = "rabbitmq"
_AMQP_ERRORS = shardqueue.AMQP_ERRORS
BATCH_ITEMS = 500  # records per queue message
BATCH_BYTES = 4 * 1024 * 1024  # below RabbitMQ's default 128 MiB message limit by far


def encode_batch(items: Sequence[OfflineItem]) -> bytes:
    batch = im_pb2.OfflineBatch()
    for it in items:
        rec = batch.records.add(rearm=it.rearm)
        if it.kind == KIND_CHAT:
            rec.chat.ParseFromString(it.content)
        else:
            rec.ack.ParseFromString(it.content)
    return batch.SerializeToString()


def decode_batch(data: bytes) -> list[OfflineItem]:
    """The items of one queue message; ``ValueError`` when it is not a batch of ours."""
    batch = im_pb2.OfflineBatch()
    try:
        batch.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not an offline batch: {exc}") from None
    items: list[OfflineItem] = []
    for rec in batch.records:
        kind = rec.WhichOneof("body")
        if kind == "chat":
            items.append(OfflineItem.of_chat(rec.chat, rearm=rec.rearm))
        elif kind == "ack":
            items.append(OfflineItem.of_ack(rec.ack, rearm=rec.rearm))
        else:
            raise ValueError("offline record with no body")
    if not items:
        raise ValueError("empty offline batch")
    return items


class _AmqpDelivery:
    __slots__ = ("_message", "items")

    items: Sequence[OfflineItem]

    def __init__(self, items: Sequence[OfflineItem], message: AbstractIncomingMessage) -> None:
        self.items = items
        self._message = message

    async def ack(self) -> None:
        await shardqueue.ack(self._message)

    async def reject(self, reason: str) -> None:
        await shardqueue.dead_letter(self._message, reason, log, "offline")


class _ShardBatcher:
    """Coalesces the publishes of one shard into as few broker messages as the confirms allow."""

    def __init__(self, queue: AmqpOfflineQueue, routing_key: str) -> None:
        self._queue = queue
        self._key = routing_key
        self._pending: list[tuple[Sequence[OfflineItem], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def publish(self, items: Sequence[OfflineItem]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name=f"publish {self._key}")
        await future

    async def _flush(self) -> None:
        while self._pending:
            take, size = 0, 0
            for items, _ in self._pending:
                n = sum(len(it.content) for it in items)
                if take and (size + n > BATCH_BYTES or take >= BATCH_ITEMS):
                    break
                take += 1
                size += n
            group, self._pending = self._pending[:take], self._pending[take:]
            try:
                await self._queue.send(self._key, [it for items, _ in group for it in items])
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else BackendError(_SERVICE, "cancelled")
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, future in group:
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._pending:
            if not future.done():
                future.set_exception(BackendError(_SERVICE, "closed"))
        self._pending.clear()


class AmqpOfflineQueue:
    """:class:`offline.base.OfflineQueue` on RabbitMQ. Make one with :meth:`connect`."""

    stored_on_publish = False  # confirmed when durable in the broker; the writer commits later

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
        self._batchers = [_ShardBatcher(self, self.shard_queue(i)) for i in range(shards)]
        self._consumer_channel: AbstractRobustChannel | None = None
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "im.offline",
        shards: int = 4,
        prefetch: int = 64,
        timeout: float = 5.0,
    ) -> AmqpOfflineQueue:
        """Connect, declare the queues, and check the broker answers: ``BackendError`` if not."""
        if shards < 1 or prefetch < 1:
            raise ValueError("shards and prefetch must be at least 1")
        connection = await amqpconn.connect(url, timeout=timeout)  # one node or a cluster's
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            queue = cls(connection, channel, name, shards, prefetch)
            await queue._declare(channel)
        except _AMQP_ERRORS as exc:
            await connection.close()
            raise BackendError(_SERVICE, f"declaring {name}: {exc}") from exc
        return queue

    def shard_queue(self, shard: int) -> str:
        return f"{self.name}.{shard}"

    @property
    def dead_letter_queue(self) -> str:
        return shardqueue.dead_letter_queue(self.name)

    def shard_of(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.shards

    async def _declare(self, channel: AbstractRobustChannel) -> list[AbstractQueue]:
        return await shardqueue.declare_shards(channel, self.name, self.shards)

    async def publish(self, items: Sequence[OfflineItem]) -> None:
        if self._closed:
            raise BackendError(_SERVICE, "queue closed")
        # never publish what the writer would have to dead-letter: its batch-mates would go too
        problem = next(filter(None, map(item_problem, items)), None)
        if problem is not None:
            raise RejectedError(f"offline item refused: {problem}")
        by_shard: dict[int, list[OfflineItem]] = {}
        for it in items:
            by_shard.setdefault(self.shard_of(it.to_user_id), []).append(it)
        await asyncio.gather(*(self._batchers[s].publish(its) for s, its in by_shard.items()))

    async def send(self, routing_key: str, items: Sequence[OfflineItem]) -> None:
        """One persistent message, returned once the broker confirmed it."""
        message = aio_pika.Message(
            encode_batch(items),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/x-protobuf",
            type="im.OfflineBatch",
        )
        await shardqueue.publish_confirmed(self._channel, message, routing_key)

    async def deliveries(self, max_batch: int) -> AsyncIterator[list[Delivery]]:
        """Consume every shard (the broker makes this writer the active consumer of some);
        yields what has arrived, up to ``max_batch`` deliveries and :data:`BATCH_ITEMS` items."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        try:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            queues = await self._declare(channel)
        except _AMQP_ERRORS as exc:
            raise BackendError(_SERVICE, f"consume: {exc}") from exc
        self._consumer_channel = channel

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                items = decode_batch(message.body)
            except ValueError as exc:
                await _AmqpDelivery((), message).reject(f"{exc} ({len(message.body)} bytes)")
                return
            inbox.put_nowait(_AmqpDelivery(items, message))

        # never more than shards * prefetch unacked deliveries reach ``inbox``: bounded
        for q in queues:
            await q.consume(on_message)
        async for batch in shardqueue.batches(
            inbox, max_batch, BATCH_ITEMS, lambda d: len(d.items), lambda: self._closed
        ):
            yield batch

    async def close(self) -> None:
        self._closed = True
        for b in self._batchers:
            await b.close()
        with contextlib.suppress(*_AMQP_ERRORS, asyncio.TimeoutError):
            await self._connection.close()
