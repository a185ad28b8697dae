"""Offline store on SQLite and MySQL (conftest ``db``), the in-process queue and the writer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import pytest_asyncio

from common.config import Settings
from common.db import Database, open_database, schema_version
from common.errors import BackendError, ConfigError
from offline import (
    MemoryOfflineQueue,
    OfflineItem,
    OfflineWriter,
    RejectedError,
    SQLOfflineStore,
    create_queue,
)
from offline.sqlstore import COMPONENT, item_problem, migrations
from proto import im_pb2


def chat(to: str, frm: str, msg_id: int, *, rearm: bool = False) -> OfflineItem:
    return OfflineItem.of_chat(
        im_pb2.ChatMsg(id=msg_id, from_id=frm, dest_id=to, body=b"sealed-%d" % msg_id),
        rearm=rearm,
    )


def ids(items: Sequence[OfflineItem]) -> list[int]:
    return [it.msg_id for it in items]


@pytest_asyncio.fixture
async def store(db: Database) -> SQLOfflineStore:
    """A migrated store on each engine."""
    s = SQLOfflineStore(db)
    await s.migrate()
    return s


# --- the store ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_save_then_drain_in_order(store: SQLOfflineStore) -> None:
    await store.migrate()  # twice is fine
    await store.save([chat("bob", "alice", 3), chat("bob", "alice", 1), chat("carol", "x", 9)])
    await store.save([chat("bob", "dave", 2)])
    assert await store.count_unread("bob") == 3
    drained = await store.drain("bob")
    assert ids(drained) == [3, 1, 2]  # storage order, not msg_id order
    assert drained[0] == chat("bob", "alice", 3)
    assert drained[0].envelope().chat.body == b"sealed-3"
    assert await store.count_unread("bob") == 0
    assert await store.drain("bob") == []
    assert ids(await store.drain("carol")) == [9]


@pytest.mark.asyncio
async def test_receipts_and_chats_are_distinct_identities(store: SQLOfflineStore) -> None:
    ack = im_pb2.AckMsg(id=77, from_id="alice", dest_id="bob", ack_type=im_pb2.READ, ack_msg_id=5)
    await store.save([chat("bob", "alice", 5), OfflineItem.of_ack(ack)])
    drained = await store.drain("bob")
    assert [(it.msg_id, it.kind) for it in drained] == [(5, 0), (5, int(im_pb2.READ))]
    assert drained[1].envelope().ack == ack


@pytest.mark.asyncio
async def test_duplicate_identity_stored_once(store: SQLOfflineStore) -> None:
    await store.save([chat("bob", "alice", 1), chat("bob", "alice", 1)])
    await store.save([chat("bob", "alice", 1), chat("bob", "alice", 2)])
    assert await store.count_unread("bob") == 2
    assert ids(await store.drain("bob")) == [1, 2]
    await store.save([chat("bob", "alice", 1)])  # redelivered after the drain: still ignored
    assert await store.count_unread("bob") == 0


@pytest.mark.asyncio
async def test_rearm_rearms_a_claimed_row_in_place(store: SQLOfflineStore) -> None:
    await store.save([chat("bob", "alice", 1), chat("bob", "alice", 2)])
    assert ids(await store.drain("bob")) == [1, 2]
    await store.save([chat("bob", "alice", 3)])
    await store.save([chat("bob", "alice", 1, rearm=True), chat("bob", "alice", 4, rearm=True)])
    await store.save([chat("bob", "alice", 3, rearm=True)])  # unread already: stays one row
    assert ids(await store.drain("bob")) == [1, 3, 4]  # 1 keeps its original place


@pytest.mark.asyncio
async def test_leased_claim_comes_back_to_the_device_after_a_crash(store: SQLOfflineStore) -> None:
    """A connector claims rows for phone's session s1 and dies before phone acks them: phone's
    next session takes them again; another device waits for the lease; acked rows are final."""
    await store.save([chat("bob", "alice", i) for i in (1, 2, 3)])
    first = await store.drain("bob", device="phone", session="s1", lease=60)
    assert ids(first) == [1, 2, 3] and all(it.row_id for it in first)
    assert await store.drain("bob", device="phone", session="s1", lease=60) == []  # its own
    assert await store.drain("bob", device="laptop", session="s9", lease=60) == []  # leased
    assert await store.count_unread("bob") == 0
    await store.mark_delivered([first[0].row_id])
    again = await store.drain("bob", device="phone", session="s2", lease=60)
    assert ids(again) == [2, 3]  # 1 was acked: never again
    await store.mark_delivered([it.row_id for it in again])
    assert await store.drain("bob", device="phone", session="s3", lease=60) == []


@pytest.mark.asyncio
async def test_lapsed_lease_lets_any_device_claim(store: SQLOfflineStore) -> None:
    await store.save([chat("bob", "alice", 1)])
    assert ids(await store.drain("bob", device="phone", session="s1", lease=0.05)) == [1]
    await asyncio.sleep(0.1)
    assert ids(await store.drain("bob", device="laptop", session="s2", lease=60)) == [1]
    # a drain without a lease claims for good, and does not take leased rows
    await store.save([chat("bob", "alice", 2)])
    assert ids(await store.drain("bob")) == [2]
    assert await store.drain("bob", device="phone", session="s3", lease=60) == []


@pytest.mark.asyncio
async def test_drain_limit(store: SQLOfflineStore) -> None:
    await store.save([chat("bob", "alice", i) for i in range(1, 8)])
    assert ids(await store.drain("bob", limit=3)) == [1, 2, 3]
    assert ids(await store.drain("bob", limit=3)) == [4, 5, 6]
    assert ids(await store.drain("bob", limit=3)) == [7]
    assert await store.drain("bob", limit=3) == []


@pytest.mark.asyncio
async def test_uint64_msg_id_round_trips(store: SQLOfflineStore) -> None:
    big = (1 << 64) - 1
    await store.save([chat("bob", "alice", big), chat("bob", "alice", 1 << 63)])
    assert ids(await store.drain("bob")) == [big, 1 << 63]


@pytest.mark.asyncio
async def test_content_bytes_round_trip(store: SQLOfflineStore) -> None:
    every = bytes(range(256))  # sealed bodies are arbitrary bytes (aio-libs/aiomysql issue 1080)
    items = [
        OfflineItem("bob", "alice", 1, 0, every),
        OfflineItem("bob", "alice", 2, 0, every[::-1] * 200),  # 51 KiB
        OfflineItem("bob", "alice", 3, 0, b""),
    ]
    await store.save(items)
    assert await store.drain("bob") == items


@pytest.mark.asyncio
async def test_concurrent_drains_never_share_a_row(store: SQLOfflineStore, db_url: str) -> None:
    # two processes' worth of connections on the same database, each draining the same user
    dbs = [await open_database(db_url) for _ in range(2)]
    try:
        one, two = (SQLOfflineStore(db) for db in dbs)
        total = 300
        await one.save([chat("bob", "alice", i) for i in range(1, total + 1)])

        async def device(store: SQLOfflineStore, limit: int) -> list[int]:
            got: list[int] = []
            while True:
                batch = await store.drain("bob", limit=limit)
                assert len(batch) <= limit
                got += ids(batch)
                if len(batch) < limit:
                    return got

        results = await asyncio.gather(
            device(one, 7), device(two, 5), device(one, 11), device(two, 3), device(store, 4)
        )
        seen = [msg_id for got in results for msg_id in got]
        assert sorted(seen) == list(range(1, total + 1))  # each row exactly once, none left
        for got in results:
            assert got == sorted(got)  # each device sees its share in order
        assert await two.count_unread("bob") == 0
    finally:
        for db in dbs:
            await db.close()


@pytest.mark.asyncio
async def test_table_from_before_schema_versions_migrates(db: Database) -> None:
    await db.script(migrations(db.dialect)[0])  # what migrate() ran before versions were kept
    legacy = SQLOfflineStore(db)
    old = chat("bob", "alice", 1)  # a row as that release wrote it
    await db.execute(
        "INSERT INTO im_offline (to_user_id, from_id, msg_id, msg_type, content, created)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (old.to_user_id, old.from_id, old.msg_id, old.kind, old.content, 0),
    )
    with pytest.raises(ConfigError, match=r"schema 'offline' is at version 0, .*`im migrate`"):
        await legacy.check_schema()
    await legacy.migrate()
    await legacy.migrate()
    await legacy.check_schema()
    assert await schema_version(db, COMPONENT) == len(migrations(db.dialect))
    assert ids(await legacy.drain("bob")) == [1]


def test_migration_steps_shape() -> None:
    assert len(migrations("sqlite")) == len(migrations("mysql"))  # one version numbering
    for dialect in ("sqlite", "mysql"):
        assert all(" IF NOT EXISTS " in s for s in migrations(dialect)[0])
    assert "MEDIUMBLOB" in migrations("mysql")[0][0]
    with pytest.raises(ConfigError):
        migrations("oracle")


def test_item_problem() -> None:
    assert item_problem(chat("bob", "alice", 1)) is None
    assert item_problem(chat("b" * 65, "alice", 1)) is not None
    assert item_problem(chat("", "alice", 1)) is not None
    assert item_problem(chat("bob", "a" * 65, 1)) is not None
    assert item_problem(OfflineItem("bob", "alice", 1 << 64, 0, b"")) is not None
    assert item_problem(OfflineItem("bob", "alice", 1, -1, b"")) is not None


# --- queue and writer ---------------------------------------------------------------------------


class FlakyStore:
    """Fails ``failures`` saves with BackendError, then stores in memory."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[list[OfflineItem]] = []
        self.saved: list[OfflineItem] = []
        self.retried = asyncio.Event()  # set from the second call on

    async def migrate(self) -> None:
        pass

    async def save(self, items: Sequence[OfflineItem]) -> list[OfflineItem]:
        self.calls.append(list(items))
        if len(self.calls) >= 2:
            self.retried.set()
        if self.failures:
            self.failures -= 1
            raise BackendError("fake", "down")
        self.saved += items
        return []

    async def drain(
        self,
        user_id: str,
        limit: int = 1000,
        *,
        device: str = "",
        session: str = "",
        lease: float = 0.0,
    ) -> list[OfflineItem]:
        return []

    async def mark_delivered(self, row_ids: Sequence[int]) -> None:
        pass

    async def count_unread(self, user_id: str) -> int:
        return 0


@pytest.mark.asyncio
async def test_publish_returns_after_commit(store: SQLOfflineStore) -> None:
    queue = MemoryOfflineQueue()
    writer = asyncio.create_task(OfflineWriter(queue, store).run())
    try:
        await queue.publish([chat("bob", "alice", 1), chat("bob", "alice", 2)])
        assert await store.count_unread("bob") == 2
        await asyncio.gather(*(queue.publish([chat("bob", "carol", i)]) for i in range(50)))
        assert await store.count_unread("bob") == 52
        await queue.publish([])  # nothing to store: returns at once
    finally:
        await queue.close()
        await asyncio.wait_for(writer, 1)  # the writer ends when the queue closes


@pytest.mark.asyncio
async def test_writer_retries_failing_store_without_loss() -> None:
    queue = MemoryOfflineQueue()
    flaky = FlakyStore(failures=2)
    writer = asyncio.create_task(OfflineWriter(queue, flaky, backoff_start=0.001).run())
    try:
        items = [chat("bob", "alice", i) for i in range(10)]
        await asyncio.wait_for(asyncio.gather(*(queue.publish([it]) for it in items)), 5)
        assert sorted(ids(flaky.saved)) == list(range(10))
        assert len(flaky.calls) >= 3
        assert flaky.calls[0] == flaky.calls[1] == flaky.calls[2]  # the same batch, retried
    finally:
        await queue.close()
        await writer


@pytest.mark.asyncio
async def test_writer_batches_up_to_max_batch() -> None:
    queue = MemoryOfflineQueue()
    store = FlakyStore(failures=0)
    publishers = [asyncio.create_task(queue.publish([chat("bob", "a", i)])) for i in range(7)]
    await asyncio.sleep(0)  # all seven queued before the writer starts
    writer = asyncio.create_task(OfflineWriter(queue, store, max_batch=3).run())
    await asyncio.gather(*publishers)
    assert [len(call) for call in store.calls] == [3, 3, 1]
    await queue.close()
    await writer


@pytest.mark.asyncio
async def test_writer_rejects_unstorable_items_only() -> None:
    queue = MemoryOfflineQueue()
    store = FlakyStore(failures=0)
    bad = queue.publish([chat("b" * 65, "alice", 1)])
    good = queue.publish([chat("bob", "alice", 2)])
    writer = asyncio.create_task(OfflineWriter(queue, store).run())
    results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], RejectedError)
    assert results[1] is None
    assert ids(store.saved) == [2]
    await queue.close()
    await writer


@pytest.mark.asyncio
async def test_cancelled_writer_acks_nothing() -> None:
    queue = MemoryOfflineQueue()
    store = FlakyStore(failures=10**6)  # never succeeds
    writer = asyncio.create_task(OfflineWriter(queue, store, backoff_start=0.001).run())
    publisher = asyncio.create_task(queue.publish([chat("bob", "alice", 1)]))
    await asyncio.wait_for(store.retried.wait(), 5)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert not publisher.done()
    await queue.close()
    with pytest.raises(BackendError):
        await publisher


@pytest.mark.asyncio
async def test_close_fails_waiting_publishers() -> None:
    queue = MemoryOfflineQueue(maxsize=1)
    # the first is queued, the second waits for room: both must be failed
    publishers = [asyncio.create_task(queue.publish([chat("bob", "a", i)])) for i in range(2)]
    await asyncio.sleep(0.01)
    assert queue.qsize() == 1
    assert not any(p.done() for p in publishers)
    await queue.close()
    for publisher in publishers:
        with pytest.raises(BackendError):
            await publisher
    with pytest.raises(BackendError):
        await queue.publish([chat("bob", "a", 9)])
    assert [batch async for batch in queue.deliveries(10)] == []


@pytest.mark.asyncio
async def test_create_queue() -> None:
    """No URL: the in-process queue (RabbitMQ's is tested in test_amqp.py)."""
    assert isinstance(await create_queue(Settings(amqp_url="")), MemoryOfflineQueue)
