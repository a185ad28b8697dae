"""The transfer's commit batcher (transfer/commits.py): the records of one loop turn share one
submit, each gets its own answer in order, a bad record is refused alone, a failed submit leaves
every record of its batch without an answer (None) and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio

from common.convid import pair_conv_id
from common.errors import BackendError
from proto import im_pb2
from timeline import MemoryTimelineQueue, MemoryTimelineStore, TimelineWriter
from timeline.queue import (
    BATCH_BYTES,
    BATCH_ITEMS,
    TimelineDelivery,
    conversation_of,
    shard_of,
)
from transfer.commits import CommitBatcher

pytestmark = pytest.mark.asyncio


def record(msg_id: int, frm: str = "alice", to: str = "bob") -> im_pb2.TimelineRecord:
    chat = im_pb2.ChatMsg(
        id=msg_id, from_id=frm, dest_id=to, dest_type=im_pb2.SINGLE, msg_type=im_pb2.TEXT,
        body=b"sealed", create_time=1, conv_id=pair_conv_id(frm, to),
    )  # fmt: skip
    return im_pb2.TimelineRecord(origin="c1", chat=chat)


@pytest_asyncio.fixture
async def queue() -> AsyncIterator[MemoryTimelineQueue]:
    q = MemoryTimelineQueue()
    writer = asyncio.create_task(TimelineWriter(q, MemoryTimelineStore()).run())
    yield q
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await q.close()


async def test_one_turn_is_one_submit_answers_in_order(queue: MemoryTimelineQueue) -> None:
    batcher = CommitBatcher(queue)
    answers = [batcher.add(record(i)) for i in range(1, 21)]
    got = await asyncio.gather(*answers)
    assert batcher.batches == 1
    assert [a.chat.id for a in got if a is not None] == list(range(1, 21))
    assert [a.chat.seq for a in got if a is not None] == list(range(1, 21))
    # a later turn is a second submit; a resend is answered as the duplicate it is
    again = await batcher.add(record(5))
    assert batcher.batches == 2 and again is not None and again.duplicate and again.chat.seq == 5


async def test_a_full_batch_goes_at_once(queue: MemoryTimelineQueue) -> None:
    batcher = CommitBatcher(queue)
    answers = [batcher.add(record(i)) for i in range(1, BATCH_ITEMS + 11)]
    got = await asyncio.gather(*answers)
    assert batcher.batches == 2  # BATCH_ITEMS, then the 10 left at the end of the turn
    assert all(a is not None and not a.refused for a in got)


async def test_a_bad_record_is_refused_alone(queue: MemoryTimelineQueue) -> None:
    batcher = CommitBatcher(queue)
    bad = im_pb2.TimelineRecord(origin="c1")  # no body: no writer could take it
    answers = [batcher.add(record(1)), batcher.add(bad), batcher.add(record(2))]
    first, refused, second = await asyncio.gather(*answers)
    assert refused is None
    assert first is not None and second is not None
    assert (first.chat.seq, second.chat.seq) == (1, 2)


async def test_a_failed_submit_answers_none_and_the_next_works() -> None:
    q = MemoryTimelineQueue()
    store = MemoryTimelineStore()
    batcher = CommitBatcher(q)
    await q.close()  # the queue is down: the batch fails as a whole
    assert list(await asyncio.gather(batcher.add(record(1)), batcher.add(record(2)))) == [
        None,
        None,
    ]
    q2 = MemoryTimelineQueue()
    writer = asyncio.create_task(TimelineWriter(q2, store).run())
    try:
        batcher.timeline = q2
        got = await batcher.add(record(1))
        assert got is not None and got.chat.seq == 1  # nothing of the failed batch was stored
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await q2.close()


class ShardedQueue:
    """A write queue of ``shards`` shards whose shard ``bad`` is down: a submit touching it
    fails whole, as AmqpTimelineQueue.submit does; every other record is answered."""

    def __init__(self, shards: int, bad: int) -> None:
        self.shards = shards
        self.bad = bad
        self.submits: list[list[im_pb2.TimelineRecord]] = []

    async def submit(
        self, records: Sequence[im_pb2.TimelineRecord], *, timeout: float = 10.0
    ) -> list[im_pb2.Committed]:
        self.submits.append(list(records))
        await asyncio.sleep(0)
        if any(shard_of(conversation_of(r), self.shards) == self.bad for r in records):
            raise BackendError("rabbitmq", "shard down (test)")
        return [im_pb2.Committed(chat=r.chat) for r in records]

    def deliveries(self, max_batch: int) -> AsyncIterator[list[TimelineDelivery]]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


async def test_one_submit_per_shard_so_a_dead_shard_holds_up_no_other() -> None:
    q = ShardedQueue(shards=4, bad=1)
    batcher = CommitBatcher(q)
    recs = [record(i, to=f"u{i:03d}") for i in range(1, 41)]
    got = await asyncio.gather(*(batcher.add(r) for r in recs))
    shards = [shard_of(conversation_of(r), 4) for r in recs]
    assert set(shards) == {0, 1, 2, 3}  # every shard is touched by this turn
    assert batcher.batches == len(q.submits) == 4
    for shard, answer in zip(shards, got, strict=True):
        assert (answer is None) == (shard == 1), (shard, answer)
    for sub in q.submits:  # one shard's records each, in the order they came
        assert len({shard_of(conversation_of(r), 4) for r in sub}) == 1
        ids = [r.chat.id for r in sub]
        assert ids == sorted(ids)


async def test_a_batch_is_cut_at_batch_bytes() -> None:
    q = ShardedQueue(shards=1, bad=-1)
    batcher = CommitBatcher(q)
    big = BATCH_BYTES // 3 + 1  # three of these are over the bound
    recs = []
    for i in range(1, 6):
        r = record(i)
        r.chat.body = bytes(big)
        recs.append(r)
    got = await asyncio.gather(*(batcher.add(r) for r in recs))
    assert all(a is not None for a in got)
    assert [len(sub) for sub in q.submits] == [3, 2]
    assert all(sum(r.ByteSize() for r in sub) < BATCH_BYTES + big for sub in q.submits)


async def test_close_before_the_submit_ran_answers_none() -> None:
    q = MemoryTimelineQueue()
    batcher = CommitBatcher(q)
    pending = batcher.add(record(1))
    await batcher.close()  # its submit task never got to run
    assert pending.done() and pending.result() is None
    await q.close()


async def test_close_answers_what_is_under_way_with_none() -> None:
    q = MemoryTimelineQueue()  # no writer: submits wait
    batcher = CommitBatcher(q)
    pending = batcher.add(record(1))
    await asyncio.sleep(0.01)
    await batcher.close()
    assert await pending is None
    assert await batcher.add(record(2)) is None  # closed: refused at once
    await q.close()
