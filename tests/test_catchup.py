"""Listings and sync answers (connector/catchup.py) over a timeline: the in-memory store, read
through the connector's TimelineReader protocol, and a fake for the races a store can show."""

from __future__ import annotations

import time

import pytest

from connector import catchup
from connector.catchup import TimelineReader, sync_page
from connector.rules import SyncRange
from proto import im_pb2
from timeline.memstore import MemoryTimelineStore
from timeline.model import ConvSummary, Entry, new_message

pytestmark = pytest.mark.asyncio
CONV = "p:alice:bob"


async def store_with(n: int) -> MemoryTimelineStore:
    store = MemoryTimelineStore()
    chats = [
        im_pb2.ChatMsg(
            id=i, from_id="alice", dest_id="bob", dest_type=im_pb2.SINGLE, body=b"m%d" % i
        )
        for i in range(1, n + 1)
    ]
    await store.append([new_message(c) for c in chats])
    return store


async def listed(
    reader: TimelineReader, user: str, device: str, since_ms: int, started_ms: int
) -> list[im_pb2.Envelope]:
    return [
        env
        async for page in catchup.listing(reader, user, device, since_ms, started_ms)
        for env in page
    ]


def seqs(chats: list[bytes]) -> list[int]:
    return [im_pb2.ChatMsg.FromString(c).seq for c in chats]


def done(from_seq: int, to_seq: int, last_seq: int) -> im_pb2.SyncDone:
    return im_pb2.SyncDone(conv_id=CONV, from_seq=from_seq, to_seq=to_seq, last_seq=last_seq)


async def test_sync_answers_the_range_up_to_the_head() -> None:
    reader = await store_with(5)
    answer = await sync_page(reader, SyncRange(CONV, 1, 0, 200))
    assert seqs(answer.chats) == [1, 2, 3, 4, 5] and answer.done == done(1, 5, 5)
    chat = im_pb2.ChatMsg.FromString(answer.chats[0])
    assert (chat.conv_id, chat.body, chat.from_id) == (CONV, b"m1", "alice")  # as stored
    answer = await sync_page(reader, SyncRange(CONV, 2, 3, 200))
    assert seqs(answer.chats) == [2, 3] and answer.done == done(2, 3, 5)
    answer = await sync_page(reader, SyncRange(CONV, 4, 99, 200))  # past the head: the head
    assert seqs(answer.chats) == [4, 5] and answer.done == done(4, 5, 5)


async def test_a_full_page_ends_at_its_last_row() -> None:
    reader = await store_with(5)
    answer = await sync_page(reader, SyncRange(CONV, 1, 0, 2))
    assert seqs(answer.chats) == [1, 2] and answer.done == done(1, 2, 5)
    answer = await sync_page(reader, SyncRange(CONV, 4, 5, 2))  # exactly the range: all of it
    assert seqs(answer.chats) == [4, 5] and answer.done == done(4, 5, 5)


async def test_nothing_to_cover_says_from_minus_one() -> None:
    reader = await store_with(3)
    assert (await sync_page(reader, SyncRange(CONV, 4, 0, 200))).done == done(4, 3, 3)
    empty = await sync_page(MemoryTimelineStore(), SyncRange(CONV, 1, 0, 200))
    assert empty.chats == [] and empty.done == done(1, 0, 0)


async def test_rows_retention_removed_are_covered_not_sent() -> None:
    store = await store_with(5)
    reader = FakeReader(head=5, rows=[e for e in await store.page(CONV, limit=10) if e.seq > 3])
    answer = await sync_page(reader, SyncRange(CONV, 1, 0, 200))
    assert seqs(answer.chats) == [4, 5] and answer.done == done(1, 5, 5)


async def test_rows_committed_after_the_head_was_read_are_cut() -> None:
    store = await store_with(6)
    reader = FakeReader(head=4, rows=await store.page(CONV, limit=10))  # 5, 6 came meanwhile
    answer = await sync_page(reader, SyncRange(CONV, 2, 0, 200))
    assert seqs(answer.chats) == [2, 3, 4] and answer.done == done(2, 4, 4)
    assert reader.asked == [(1, 0, 200)]  # after from_seq - 1, no upper bound: cut here


class FakeReader:
    """A TimelineReader whose head and rows are set by the test: rows past the head are what
    a writer committed after the head was read."""

    def __init__(
        self, head: int, rows: list[Entry], convs: list[ConvSummary] | None = None
    ) -> None:
        self._head, self._rows, self._convs = head, rows, convs or []
        self.asked: list[tuple[int, int, int]] = []
        self.listed: list[tuple[str, int, str, int]] = []

    async def conversations(
        self,
        user_id: str,
        *,
        since_ms: int = 0,
        device_id: str = "",
        limit: int = 500,
        after: tuple[int, str] | None = None,
    ) -> list[ConvSummary]:
        self.listed.append((user_id, since_ms, device_id, limit))
        assert after is not None  # the listing pages
        return [c for c in self._convs if (c.changed, c.conv_id) > after][:limit]

    async def page(
        self, conv_id: str, *, after: int = 0, before: int = 0, limit: int
    ) -> list[Entry]:
        self.asked.append((after, before, limit))
        return [r for r in self._rows if r.seq > after][:limit]

    async def head(self, conv_id: str) -> int:
        return self._head


def summary(conv_id: str, **kw: int) -> ConvSummary:
    fields: dict[str, int] = dict(
        last_seq=9, read_seq=4, delivered_seq=6, peer_read_seq=8, peer_delivered_seq=9, unread=5
    )
    fields.update(kw)
    return ConvSummary(
        conv_id=conv_id,
        dest_type=im_pb2.SINGLE,
        peer_id="bob",
        last=None,
        changed=50_000,
        **fields,
    )


async def test_a_listing_is_one_conv_state_each_then_caught_up() -> None:
    reader = FakeReader(0, [], [summary(CONV), summary("p:alice:carol", last_seq=1)])
    frames = await listed(reader, "alice", "d1", 40_000, 123_456)
    assert reader.listed == [("alice", 40_000, "d1", catchup.LISTING_PAGE)]
    assert [f.WhichOneof("body") for f in frames] == ["conv_state", "conv_state", "caught_up"]
    state = frames[0].conv_state
    assert state == im_pb2.ConvState(
        conv_id=CONV,
        type=im_pb2.SINGLE,
        peer_id="bob",
        last_seq=9,
        min_seq=1,
        read_seq=4,
        device_seq=6,
        peer_read_seq=8,
        peer_delivered_seq=9,
        unread=5,
    )
    assert frames[-1].caught_up.since == 123_456


async def test_a_listing_over_the_memory_store_names_the_devices_cursor() -> None:
    store = await store_with(3)
    await store.set_delivered(CONV, "bob", "phone", 2)
    reader: TimelineReader = store
    frames = await listed(reader, "bob", "phone", 0, 7)
    (state,) = [f.conv_state for f in frames if f.WhichOneof("body") == "conv_state"]
    assert (state.conv_id, state.peer_id, state.last_seq, state.device_seq) == (CONV, "alice", 3, 2)
    assert state.unread == 3
    assert await listed(reader, "carol", "x", 0, 7) == [
        im_pb2.Envelope(caught_up=im_pb2.CaughtUp(since=7))
    ]


async def test_the_stores_head_is_the_last_seq() -> None:
    store = await store_with(4)
    direct: TimelineReader = store  # the store is a TimelineReader as it is
    assert await direct.head(CONV) == 4
    assert await direct.head("p:alice:carol") == 0
    answer = await sync_page(direct, SyncRange(CONV, 3, 0, 200))
    assert seqs(answer.chats) == [3, 4] and answer.done == done(3, 4, 4)


async def test_a_listing_pages_through_more_conversations_than_a_page() -> None:
    """Every changed conversation is listed, however many: CaughtUp moves the device past all
    of them, so none may be left out (pages of LISTING_PAGE, oldest change first)."""
    store = MemoryTimelineStore()
    n = 2 * catchup.LISTING_PAGE + 7
    chats = [
        im_pb2.ChatMsg(id=i + 1, from_id="alice", dest_id=f"u{i:04d}", dest_type=im_pb2.SINGLE)
        for i in range(n)
    ]
    await store.append([new_message(c) for c in chats])
    started = int(time.time() * 1000) + 1
    frames = await listed(store, "alice", "d1", 0, started)
    states = [f.conv_state.conv_id for f in frames if f.WhichOneof("body") == "conv_state"]
    assert len(states) == n and len(set(states)) == n
    assert frames[-1].caught_up.since == started
    assert await listed(store, "alice", "d1", started, started) == [
        im_pb2.Envelope(caught_up=im_pb2.CaughtUp(since=started))
    ]


async def test_a_page_is_cut_by_bytes_and_ends_at_its_last_chat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync answer holds at most SYNC_PAGE_BYTES of stored chats (one at least), so a device
    that stops acking pins one bounded page; the cut page's SyncDone ends at its last chat."""
    store = await store_with(6)
    size = len((await store.page(CONV, limit=1))[0].content)
    monkeypatch.setattr(catchup, "SYNC_PAGE_BYTES", 2 * size + 1)
    answer = await sync_page(store, SyncRange(CONV, 1, 0, 200))
    assert seqs(answer.chats) == [1, 2] and answer.done == done(1, 2, 6)
    monkeypatch.setattr(catchup, "SYNC_PAGE_BYTES", 1)  # smaller than any chat: one still goes
    answer = await sync_page(store, SyncRange(CONV, 5, 0, 200))
    assert seqs(answer.chats) == [5] and answer.done == done(5, 5, 6)
