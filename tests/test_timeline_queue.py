"""The timeline queue contract on both implementations (in-process, and RabbitMQ for real):
answers come back in order to the submitter, one conversation keeps its order through any
number of writers, a writer that dies unacked hands its records on, a submit that gets no
answer fails in bounded time, and a malformed message is dead-lettered, not redelivered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
import pytest_asyncio
from conftest import require_service

from common.errors import BackendError
from proto import im_pb2
from timeline.amqpqueue import AmqpTimelineQueue
from timeline.memqueue import MemoryTimelineQueue
from timeline.queue import TimelineQueue, decode_records, encode_records

AMQP_URL = os.environ.get("IM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

pytestmark = pytest.mark.asyncio


def chat(conv: str, msg_id: int, origin: str = "c1") -> im_pb2.TimelineRecord:
    a, b = conv.split(":")[1:]
    return im_pb2.TimelineRecord(
        chat=im_pb2.ChatMsg(
            id=msg_id, from_id=a, dest_id=b, dest_type=im_pb2.SINGLE, conv_id=conv, body=b"x"
        ),
        origin=origin,
    )


class EchoWriter:
    """Answers each chat with the next seq of its conversation, and records arrival order."""

    def __init__(self, queue: TimelineQueue) -> None:
        self.queue = queue
        self.seqs: dict[str, int] = {}
        self.seen: list[tuple[str, int]] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def run(self) -> None:
        async for batch in self.queue.deliveries(16):
            await self.hold.wait()
            for delivery in batch:
                answers = []
                for record in delivery.records:
                    conv = record.chat.conv_id
                    self.seqs[conv] = self.seqs.get(conv, 0) + 1
                    self.seen.append((conv, record.chat.id))
                    done = im_pb2.Committed(origin=record.origin)
                    done.chat.CopyFrom(record.chat)
                    done.chat.seq = self.seqs[conv]
                    answers.append(done)
                await delivery.answer(answers)


@contextlib.asynccontextmanager
async def amqp_name() -> AsyncIterator[str]:
    name = f"imtest.tl.{uuid.uuid4().hex[:10]}"
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:
        require_service("rabbitmq", f"no answer at {AMQP_URL} ({exc}); set IM_TEST_AMQP_URL")
    try:
        yield name
    finally:
        ch = await conn.channel()
        for suffix in [*(str(i) for i in range(4)), "dead"]:
            await ch.queue_delete(f"{name}.{suffix}")
        await conn.close()


Factory = Callable[[], Any]


@pytest_asyncio.fixture(params=["memory", "rabbitmq"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[TimelineQueue, Factory]]:
    """A submitter's queue, and a factory of writer-side queues on the same broker (the same
    object in memory)."""
    if request.param == "memory":
        q = MemoryTimelineQueue(maxsize=100)

        async def same() -> TimelineQueue:
            return q

        yield q, same
        await q.close()
        return
    async with amqp_name() as name:
        opened: list[AmqpTimelineQueue] = []

        async def writer_side() -> TimelineQueue:
            w = await AmqpTimelineQueue.connect(AMQP_URL, name=name, shards=2)
            opened.append(w)
            return w

        sub = await AmqpTimelineQueue.connect(AMQP_URL, name=name, shards=2)
        yield sub, writer_side
        for w in [sub, *opened]:
            await w.close()


async def test_answers_come_back_in_order(pair: tuple[TimelineQueue, Factory]) -> None:
    sub, make = pair
    writer = EchoWriter(await make())
    task = asyncio.create_task(writer.run())
    try:
        records = [chat("p:a:b", 1), chat("p:c:d", 2), chat("p:a:b", 3)]
        answers = await sub.submit(records, timeout=10)
        assert [a.chat.id for a in answers] == [1, 2, 3]
        assert [a.chat.seq for a in answers] == [1, 1, 2]
        assert all(a.origin == "c1" for a in answers)
    finally:
        task.cancel()


async def test_one_conversation_keeps_submit_order(pair: tuple[TimelineQueue, Factory]) -> None:
    sub, make = pair
    writers = [EchoWriter(await make()) for _ in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in writers]
    try:
        # pipelined: each submit is issued before the previous one is answered
        pending = [
            asyncio.create_task(sub.submit([chat(f"p:u{i % 3}:v", n)], timeout=15))
            for n, i in enumerate(range(150), start=1)
        ]
        await asyncio.sleep(0)  # the tasks start in creation order, so enqueue in order
        answers = [a for t in pending for a in await t]
        assert len(answers) == 150
        for conv in ("p:u0:v", "p:u1:v", "p:u2:v"):
            ids = [a.chat.id for a in answers if a.chat.conv_id == conv]
            seqs = [a.chat.seq for a in answers if a.chat.conv_id == conv]
            assert ids == sorted(ids) and len(ids) == 50
            # one writer (or several, one after another) saw this conversation in order
            assert seqs == sorted(seqs)
    finally:
        for t in tasks:
            t.cancel()


async def test_no_answer_fails_in_bounded_time(pair: tuple[TimelineQueue, Factory]) -> None:
    sub, make = pair
    writer = EchoWriter(await make())
    writer.hold.clear()
    task = asyncio.create_task(writer.run())
    try:
        with pytest.raises(BackendError):
            await sub.submit([chat("p:a:b", 7)], timeout=0.5)
        # the writer still appends it; the late answer finds nobody and is dropped
        writer.hold.set()
        assert await sub.submit([chat("p:a:b", 8)], timeout=10)
        if isinstance(sub, AmqpTimelineQueue):
            assert sub.in_flight() == 0
        assert ("p:a:b", 7) in writer.seen
    finally:
        task.cancel()


async def test_malformed_records_are_refused_at_submit(
    pair: tuple[TimelineQueue, Factory],
) -> None:
    sub, _ = pair
    with pytest.raises(ValueError, match="conv_id"):
        await sub.submit([im_pb2.TimelineRecord(chat=im_pb2.ChatMsg(id=1, from_id="a"))])
    with pytest.raises(ValueError, match="no body"):
        await sub.submit([im_pb2.TimelineRecord(origin="x")])


async def test_a_writer_that_dies_unacked_hands_its_records_on() -> None:
    async with amqp_name() as name:
        sub = await AmqpTimelineQueue.connect(AMQP_URL, name=name, shards=1)
        dying = await AmqpTimelineQueue.connect(AMQP_URL, name=name, shards=1)
        got = asyncio.Event()

        async def take_and_die() -> None:
            async for _batch in dying.deliveries(16):
                got.set()
                await asyncio.sleep(3600)  # never answers, never acks

        dead = asyncio.create_task(take_and_die())
        submit = asyncio.create_task(sub.submit([chat("p:a:b", 41)], timeout=20))
        await asyncio.wait_for(got.wait(), 10)
        dead.cancel()
        await dying.close()  # its connection goes: the broker redelivers the message
        second = await AmqpTimelineQueue.connect(AMQP_URL, name=name, shards=1)
        writer = EchoWriter(second)
        task = asyncio.create_task(writer.run())
        try:
            answers = await submit
            assert [a.chat.id for a in answers] == [41]
        finally:
            task.cancel()
            await second.close()
            await sub.close()


async def test_garbage_in_a_shard_is_dead_lettered() -> None:
    async with amqp_name() as name:
        q = await AmqpTimelineQueue.connect(AMQP_URL, name=name, shards=1)
        conn = await aio_pika.connect(AMQP_URL)
        try:
            ch = await conn.channel()
            await ch.default_exchange.publish(
                aio_pika.Message(b"\xff\xffnot a batch"), routing_key=q.shard_queue(0)
            )
            writer = EchoWriter(q)
            task = asyncio.create_task(writer.run())
            answers = await q.submit([chat("p:a:b", 5)], timeout=10)
            assert [a.chat.id for a in answers] == [5]
            dead = await ch.declare_queue(
                q.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            for _ in range(50):
                if dead.declaration_result.message_count:
                    break
                await asyncio.sleep(0.1)
                dead = await ch.declare_queue(
                    q.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
                )
            assert dead.declaration_result.message_count == 1
            task.cancel()
        finally:
            await conn.close()
            await q.close()


async def test_memory_queue_is_bounded_and_close_fails_waiters() -> None:
    q = MemoryTimelineQueue(maxsize=2)
    waiting = [asyncio.create_task(q.submit([chat("p:a:b", n)], timeout=30)) for n in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert q.qsize() == 2  # the third waits for room
    await q.close()
    for task in waiting:
        with pytest.raises(BackendError):
            await task


async def test_batch_codec_round_trip_and_refusals() -> None:
    records = [chat("p:a:b", 1), chat("p:a:b", 2)]
    assert decode_records(encode_records(records)) == records
    with pytest.raises(ValueError):
        decode_records(b"")
    with pytest.raises(ValueError):
        decode_records(encode_records([im_pb2.TimelineRecord(origin="x")]))
