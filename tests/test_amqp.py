"""The offline queue contract on both implementations, and the RabbitMQ one in detail on a real
broker: confirms, batching, shard order with several writers, redelivery stored once, dead
letters, and a broker that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
import pytest_asyncio
from conftest import require_service
from netproxy import TcpProxy

from common.db import Database, SQLiteDatabase
from common.errors import BackendError
from offline import (
    AmqpOfflineQueue,
    MemoryOfflineQueue,
    OfflineItem,
    OfflineQueue,
    OfflineWriter,
    SQLOfflineStore,
)
from offline.amqpqueue import decode_batch, encode_batch
from offline.errors import RejectedError
from proto import im_pb2

AMQP_URL = os.environ.get("IM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

pytestmark = pytest.mark.asyncio


def chat(to: str, frm: str, msg_id: int, text: bytes = b"sealed") -> OfflineItem:
    return OfflineItem.of_chat(
        im_pb2.ChatMsg(id=msg_id, from_id=frm, dest_id=to, body=text, msg_type=im_pb2.TEXT)
    )


@pytest_asyncio.fixture
async def qname() -> AsyncIterator[str]:
    """A queue name of this test's own; its queues are deleted afterwards."""
    async with own_queue_name() as name:
        yield name


@contextlib.asynccontextmanager
async def own_queue_name() -> AsyncIterator[str]:
    name = f"imtest.{uuid.uuid4().hex[:12]}"
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:
        require_service("rabbitmq", f"no answer at {AMQP_URL} ({exc}); set IM_TEST_AMQP_URL")
    try:
        yield name
    finally:
        ch = await conn.channel()
        for suffix in [*(str(i) for i in range(8)), "dead"]:
            await ch.queue_delete(f"{name}.{suffix}")
        await conn.close()


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLOfflineStore]:
    db: Database = await SQLiteDatabase.open(tmp_path / "offline.db")
    s = SQLOfflineStore(db)
    await s.migrate()
    yield s
    await db.close()


async def run_writer(
    queue: AmqpOfflineQueue, store: SQLOfflineStore, until: int, timeout: float = 20.0
) -> OfflineWriter:
    """Run a writer until it has stored ``until`` items (or fail after ``timeout``)."""
    writer = OfflineWriter(queue, store)
    task = asyncio.create_task(writer.run())
    deadline = time.monotonic() + timeout
    try:
        while writer.stored < until:
            assert time.monotonic() < deadline, f"writer stored {writer.stored} of {until}"
            assert not task.done(), task
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return writer


@pytest_asyncio.fixture(params=["memory", "rabbitmq"])
async def any_queue(request: pytest.FixtureRequest) -> AsyncIterator[OfflineQueue]:
    """Each implementation of the queue contract."""
    if request.param == "memory":
        mem = MemoryOfflineQueue()
        yield mem
        await mem.close()
        return
    async with own_queue_name() as name:
        q = await AmqpOfflineQueue.connect(AMQP_URL, name=name, shards=2)
        yield q
        await q.close()


async def test_contract_published_items_reach_the_store_in_order(
    any_queue: OfflineQueue, store: SQLOfflineStore
) -> None:
    writer = OfflineWriter(any_queue, store)
    task = asyncio.create_task(writer.run())
    try:
        # the in-process queue returns only after the commit, so publish concurrently with it
        await asyncio.gather(
            *(any_queue.publish([chat("bob", "alice", i)]) for i in range(1, 4)),
        )
        for i in range(4, 8):
            await any_queue.publish([chat("bob", "alice", i), chat("carol", "alice", i)])
        deadline = time.monotonic() + 20
        while writer.stored < 11:
            assert time.monotonic() < deadline, writer.stored
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    bob = [it.msg_id for it in await store.drain("bob")]
    assert sorted(bob[:3]) == [1, 2, 3] and bob[3:] == [4, 5, 6, 7]
    assert [it.msg_id for it in await store.drain("carol")] == [4, 5, 6, 7]


async def test_contract_publish_after_close_fails(any_queue: OfflineQueue) -> None:
    await any_queue.close()
    with pytest.raises(BackendError):
        await any_queue.publish([chat("bob", "alice", 1)])


async def test_batch_codec_round_trip() -> None:
    ack = OfflineItem.of_ack(
        im_pb2.AckMsg(id=9, from_id="bob", dest_id="alice", ack_type=im_pb2.READ, ack_msg_id=7),
        rearm=True,
    )
    items = [chat("bob", "alice", (1 << 64) - 1, bytes(range(256))), ack]
    assert decode_batch(encode_batch(items)) == items
    for bad in (b"\xff\xff", b"", im_pb2.OfflineBatch(records=[im_pb2.OfflineRecord()])):
        data = bad if isinstance(bad, bytes) else bad.SerializeToString()
        with pytest.raises(ValueError):
            decode_batch(data)


async def test_publish_confirmed_then_written_and_acked(qname: str, store: SQLOfflineStore) -> None:
    q = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=2)
    try:
        await q.publish([chat("bob", "alice", i) for i in range(1, 6)])
        await q.publish([chat("carol", "alice", 1)])
        await run_writer(q, store, 6)
    finally:
        await q.close()
    assert [it.msg_id for it in await store.drain("bob")] == [1, 2, 3, 4, 5]
    assert [it.msg_id for it in await store.drain("carol")] == [1]
    # acked: a new consumer finds nothing left
    q2 = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=2)
    try:
        stream = q2.deliveries(10)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(anext(stream), 1.0)
    finally:
        await q2.close()


async def test_concurrent_publishes_are_coalesced(qname: str, store: SQLOfflineStore) -> None:
    q = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=1)
    n = 300
    try:
        await asyncio.gather(*(q.publish([chat(f"u{i % 7}", "alice", i)]) for i in range(n)))
        messages = 0
        stored = 0
        stream = q.deliveries(1000)
        while stored < n:
            batch = await asyncio.wait_for(anext(stream), 10)
            messages += len(batch)
            stored += sum(len(d.items) for d in batch)
            for d in batch:
                await d.ack()
    finally:
        await q.close()
    assert stored == n
    assert messages < n / 3, f"{messages} broker messages for {n} publishes"


async def test_one_recipient_stays_in_order_across_two_writers(
    qname: str, store: SQLOfflineStore
) -> None:
    """Two writers consume the same shards: the single active consumer keeps commit order."""
    producer = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=2)
    w1 = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=2, prefetch=4)
    w2 = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=2, prefetch=4)
    writers = [asyncio.create_task(OfflineWriter(w, store, max_batch=2).run()) for w in (w1, w2)]
    try:
        for i in range(1, 201):
            await producer.publish([chat("bob", "alice", i), chat("dave", "carol", i)])
        deadline = time.monotonic() + 20
        while await store.count_unread("bob") + await store.count_unread("dave") < 400:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        for t in writers:
            t.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        for q in (producer, w1, w2):
            await q.close()
    assert [it.msg_id for it in await store.drain("bob")] == list(range(1, 201))
    assert [it.msg_id for it in await store.drain("dave")] == list(range(1, 201))


async def test_unacked_message_is_redelivered_and_stored_once(
    qname: str, store: SQLOfflineStore
) -> None:
    q = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=1)
    await q.publish([chat("bob", "alice", 1), chat("bob", "alice", 2)])
    # a writer that stored the rows and died before its ack
    batch = await asyncio.wait_for(anext(q.deliveries(10)), 10)
    await store.save([it for d in batch for it in d.items])
    await q.close()
    q2 = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=1)
    try:
        await run_writer(q2, store, 2)
    finally:
        await q2.close()
    assert [it.msg_id for it in await store.drain("bob")] == [1, 2]


async def test_unparseable_message_is_dead_lettered(qname: str, store: SQLOfflineStore) -> None:
    q = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=1)
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        await ch.default_exchange.publish(
            aio_pika.Message(b"\xffnot a batch"), routing_key=q.shard_queue(0)
        )
        await q.publish([chat("bob", "alice", 1)])
        await run_writer(q, store, 1)  # the bad message did not stop the good one
        dead = await ch.declare_queue(
            q.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_dead(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            if not got.done():
                got.set_result(message.body)

        await dead.consume(on_dead)
        assert await asyncio.wait_for(got, 10) == b"\xffnot a batch"
    finally:
        await conn.close()
        await q.close()
    assert [it.msg_id for it in await store.drain("bob")] == [1]


async def test_item_that_can_never_be_stored_is_refused_before_publishing(qname: str) -> None:
    q = await AmqpOfflineQueue.connect(AMQP_URL, name=qname, shards=1)
    try:
        with pytest.raises(RejectedError):
            await q.publish([chat("b" * 65, "alice", 1)])
    finally:
        await q.close()


async def test_dead_broker_at_start_names_rabbitmq() -> None:
    with socket_free_port() as port:
        started = time.monotonic()
        with pytest.raises(BackendError) as err:
            await AmqpOfflineQueue.connect(f"amqp://guest:secret@127.0.0.1:{port}/", timeout=2)
    assert err.value.service == "rabbitmq"
    assert "secret" not in str(err.value)
    assert time.monotonic() - started < 5


async def test_broker_lost_and_back(qname: str, store: SQLOfflineStore) -> None:
    """Publishes fail with BackendError while the broker is unreachable, and succeed again once
    it is back, on the same queue object (the connection reconnects by itself)."""
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    q = await AmqpOfflineQueue.connect(
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.2", name=qname, shards=1
    )
    try:
        await q.publish([chat("bob", "alice", 1)])
        await proxy.cut()
        with pytest.raises(BackendError):
            await q.publish([chat("bob", "alice", 2)])
        await proxy.restore()
        deadline = time.monotonic() + 20
        while True:
            try:
                await q.publish([chat("bob", "alice", 3)])
                break
            except BackendError:
                assert time.monotonic() < deadline, "never recovered"
                await asyncio.sleep(0.2)
        await run_writer(q, store, 2)
    finally:
        await q.close()
        await proxy.close()
    assert [it.msg_id for it in await store.drain("bob")] == [1, 3]


class socket_free_port:
    """A port nothing listens on, for the duration of the ``with``."""

    def __enter__(self) -> int:
        from conftest import free_port

        return free_port()

    def __exit__(self, *exc: object) -> None:
        return None
