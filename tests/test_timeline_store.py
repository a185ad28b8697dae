"""The timeline store's contract, once per implementation: memory, SQLite and MySQL.

Also the model's conversation ids and wire stamps, a MySQL test of two connections appending to
one conversation at once, and a property test of the memory store against a plain model."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import drop_im_tables
from hypothesis import given, settings
from hypothesis import strategies as st
from timeline_pb import cls

from common.db import Database, open_database, schema_version
from proto import im_pb2
from timeline import model
from timeline.memstore import MemoryTimelineStore
from timeline.model import (
    UNREAD_CAP,
    AppendResult,
    CursorMove,
    CursorResult,
    NewMessage,
    chat_digest,
    new_message,
    pair_conv_id,
    parse_conv_id,
    stamp,
)
from timeline.store import MAX_PAGE, SQLTimelineStore, TimelineStore

AB = "p:alice:bob"


def chat(sender: str, dest: str, msg_id: int, body: bytes = b"", **kw: object) -> NewMessage:
    msg = im_pb2.ChatMsg(
        id=msg_id,
        from_id=sender,
        dest_id=dest,
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=body or b"sealed-%d" % msg_id,
        create_time=1_700_000_000_000,
        **kw,  # type: ignore[arg-type]
    )
    return new_message(msg)


def seqs(results: list[AppendResult]) -> list[int]:
    return [r.entry.seq for r in results]


class Engine:
    """One store implementation, and a way to open a second store on the same data."""

    def __init__(self, kind: str, url: str = "") -> None:
        self.kind = kind
        self.url = url
        self._dbs: list[Database] = []
        self._memory: MemoryTimelineStore | None = None

    async def open(self) -> TimelineStore:
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryTimelineStore()
            return self._memory
        db = await open_database(self.url)
        self._dbs.append(db)
        store = SQLTimelineStore(db)
        await store.migrate()
        return store

    async def close(self) -> None:
        for db in self._dbs:
            await db.close()


@pytest.fixture(params=["memory", "sqlite", "mysql"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, database URL): MySQL's test database cleaned first, as conftest's db_url does."""
    if request.param == "memory":
        return "memory", ""
    if request.param == "sqlite":
        return "sqlite", f"sqlite:///{tmp_path / 'im.db'}"
    url: str = request.getfixturevalue("mysql_url")
    asyncio.run(drop_im_tables(url))
    return "mysql", url


@pytest_asyncio.fixture
async def engine(engine_url: tuple[str, str]) -> AsyncIterator[Engine]:
    e = Engine(*engine_url)
    try:
        yield e
    finally:
        await e.close()


@pytest_asyncio.fixture
async def store(engine: Engine) -> TimelineStore:
    return await engine.open()


# --- conversation ids and stamps ----------------------------------------------------------------


def test_conversation_ids() -> None:
    assert pair_conv_id("bob", "alice") == pair_conv_id("alice", "bob") == AB
    assert model.pair_members(AB) == ("alice", "bob")
    assert parse_conv_id(AB).peer_of("alice") == "bob"
    assert parse_conv_id("g:team-1").group_id == "team-1"
    assert parse_conv_id("g:team-1").peer_of("alice") == "team-1"
    assert model.group_conv_id("team-1") == "g:team-1"
    bad_ids = ("", "p:", "p:bob:alice", "p:a:a", "p:a:b:c", "p:a", "x:a:b", "g:", "g:a:b", "p:a:b ")
    for bad in bad_ids:
        assert not model.is_conv_id(bad), bad
    for a, b in (("a", "a"), ("a", "b:c"), ("", "b"), ("a" * 65, "b")):
        with pytest.raises(ValueError):
            pair_conv_id(a, b)
    with pytest.raises(ValueError):
        parse_conv_id(AB).peer_of("carol")
    with pytest.raises(ValueError):
        model.pair_members("g:team")


def test_stamp_sets_the_server_fields_and_keeps_the_rest() -> None:
    pinned = cls("ChatMsg")
    sent = pinned(id=7, from_id="alice", dest_id="bob", body=b"x", key_id=3)
    sent.conv_id, sent.seq, sent.server_time = "forged", 99, -5  # what a client may try
    out = pinned.FromString(stamp(sent.SerializeToString(), AB, 12, 1_700_000_000_123))
    assert (out.conv_id, out.seq, out.server_time) == (AB, 12, 1_700_000_000_123)
    assert (out.id, out.from_id, out.dest_id, out.body, out.key_id) == (7, "alice", "bob", b"x", 3)
    # and the generated classes of proto/im.proto read the same bytes
    again = im_pb2.ChatMsg.FromString(stamp(b"", AB, 1, 1))
    assert (again.conv_id, again.seq, again.server_time) == (AB, 1, 1)
    with pytest.raises(ValueError):
        stamp(b"\x0a\x05ab", AB, 1, 1)  # a length past the end


def test_stamp_drops_the_retired_fields() -> None:
    """ChatMsg 9..13 (read_tag, stream, stream_seq, stream_floor, from_store) are reserved: an
    old client's values are unknown fields now, and never stored."""
    sent = im_pb2.ChatMsg(id=7, from_id="alice", dest_id="bob", body=b"x", key_id=3)
    retired = b"".join(
        (
            b"\x4a\x03tag",  # 9, bytes
            b"\x50\x05",  # 10, varint
            b"\x58\x06",  # 11
            b"\x60\x07",  # 12
            b"\x68\x01",  # 13, bool
            b"\xa0\x06\x2a",  # 100: a field some newer client knows, kept
        )
    )
    out = im_pb2.ChatMsg.FromString(stamp(sent.SerializeToString() + retired, AB, 2, 5))
    assert (out.id, out.body, out.key_id, out.seq) == (7, b"x", 3, 2)
    # the retired fields are gone, the unknown field 100 is kept
    assert stamp(retired, AB, 2, 5) == stamp(b"\xa0\x06\x2a", AB, 2, 5)


def test_a_bare_content_stamps_as_the_walked_one_does() -> None:
    """new_message serializes a chat without unknown fields ``bare`` (no stamps, no after_id),
    so stamp keeps it whole; what is stored reads exactly as the walked path's result. A chat
    with unknown fields is not bare: stamp walks it, drops the retired ones, keeps the rest."""
    sent = im_pb2.ChatMsg(
        id=7, from_id="alice", dest_id="bob", dest_type=im_pb2.SINGLE, body=b"x", key_id=3,
        after_id=5, conv_id="forged", seq=99, server_time=-5,
    )  # fmt: skip
    m = new_message(sent)
    assert m.bare and m.after_id == 5
    plain = im_pb2.ChatMsg.FromString(m.content)
    assert (plain.after_id, plain.conv_id, plain.seq, plain.server_time) == (0, "", 0, 0)
    fast = stamp(m.content, AB, 12, 1_000, bare=True)
    walked = im_pb2.ChatMsg.FromString(stamp(sent.SerializeToString(), AB, 12, 1_000))
    walked.ClearField("after_id")
    assert im_pb2.ChatMsg.FromString(fast) == walked
    assert model.message_problem(m) is None
    # unknown fields (retired 10, a newer client's 100): walked, 10 dropped, 100 kept
    odd = im_pb2.ChatMsg.FromString(
        im_pb2.ChatMsg(id=8, from_id="alice", dest_id="bob", body=b"y").SerializeToString()
        + b"\x50\x05\xa0\x06\x2a"
    )
    m2 = new_message(odd)
    assert not m2.bare
    stored = stamp(m2.content, AB, 13, 1_000, bare=m2.bare)
    assert stored.endswith(stamp(b"", AB, 13, 1_000)) and b"\xa0\x06\x2a" in stored
    assert b"\x50\x05" not in stored


def test_digest_tells_a_resend_from_a_reused_id() -> None:
    base = im_pb2.ChatMsg(id=1, from_id="alice", dest_id="bob", body=b"x", create_time=5)
    resend = im_pb2.ChatMsg()
    resend.CopyFrom(base)
    resend.conv_id, resend.seq, resend.server_time = AB, 3, 4  # stamps are not the message
    assert chat_digest(resend) == chat_digest(base)
    for change in ({"body": b"y"}, {"dest_id": "carol"}, {"create_time": 6}, {"msg_type": 2}):
        other = im_pb2.ChatMsg()
        other.CopyFrom(base)
        for k, v in change.items():
            setattr(other, k, v)
        assert chat_digest(other) != chat_digest(base), change
    with_file = im_pb2.ChatMsg()
    with_file.CopyFrom(base)
    with_file.file.id = "f1"
    assert chat_digest(with_file) != chat_digest(base)


def test_message_problem() -> None:
    good = chat("alice", "bob", 1)
    assert model.message_problem(good) is None
    for bad in (
        dataclasses.replace(good, conv_id="p:bob:alice"),
        dataclasses.replace(good, sender="carol"),
        dataclasses.replace(good, sender="x:y"),
        dataclasses.replace(good, msg_id=1 << 64),
        dataclasses.replace(good, msg_id=-1),
        dataclasses.replace(good, dest_type=im_pb2.GROUP),
        dataclasses.replace(good, digest=b"short"),
        dataclasses.replace(good, content=b"\xff", bare=False),  # not one new_message made
        dataclasses.replace(good, after_id=1),  # not below its own id
        dataclasses.replace(good, after_id=7),
    ):
        assert model.message_problem(bad) is not None, bad


# --- append -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_seqs_are_gapless_and_keep_batch_order(store: TimelineStore) -> None:
    await store.migrate()  # twice is fine
    batch = [
        chat("alice", "bob", 10),
        chat("bob", "alice", 3),
        chat("alice", "carol", 11),
        chat("alice", "bob", 2),
    ]
    results = await store.append(batch)
    assert [r.outcome for r in results] == ["committed"] * 4
    assert [(r.entry.conv_id, r.entry.seq) for r in results] == [
        (AB, 1),
        (AB, 2),
        ("p:alice:carol", 1),
        (AB, 3),
    ]
    more = await store.append([chat("bob", "alice", 4), chat("alice", "carol", 12)])
    assert seqs(more) == [4, 2]
    page = await store.page(AB, limit=50)
    assert [(e.seq, e.sender, e.msg_id) for e in page] == [
        (1, "alice", 10),
        (2, "bob", 3),
        (3, "alice", 2),
        (4, "bob", 4),
    ]
    times = [e.server_time for e in page]
    assert times == sorted(times) and abs(times[0] - time.time() * 1000) < 60_000
    pinned = cls("ChatMsg").FromString(page[1].content)
    assert (pinned.conv_id, pinned.seq, pinned.server_time) == (AB, 2, page[1].server_time)
    assert (pinned.id, pinned.from_id, pinned.body) == (3, "bob", b"sealed-3")
    assert await store.get("bob", 3) == page[1]
    assert await store.get("bob", 999) is None
    assert await store.append([]) == []


@pytest.mark.asyncio
async def test_resend_is_a_duplicate_and_a_reused_id_is_refused(store: TimelineStore) -> None:
    first = (await store.append([chat("alice", "bob", 1), chat("alice", "bob", 2)]))[1]
    again = await store.append(
        [
            chat("alice", "bob", 2),  # a resend: the same seq, nothing new
            chat("alice", "bob", 1, body=b"other"),  # the id of another message
            chat("alice", "bob", 3),
        ]
    )
    assert [r.outcome for r in again] == ["duplicate", "reused", "committed"]
    assert again[0].entry == first.entry
    assert again[1].entry.msg_id == 1 and again[1].entry.seq == 1
    assert again[2].entry.seq == 3
    assert [e.msg_id for e in await store.page(AB, limit=10)] == [1, 2, 3]
    # the same identity twice in one batch
    inside = await store.append(
        [chat("bob", "alice", 7), chat("bob", "alice", 7), chat("bob", "alice", 7, body=b"z")]
    )
    assert [r.outcome for r in inside] == ["committed", "duplicate", "reused"]
    assert inside[0].entry == inside[1].entry == inside[2].entry
    assert inside[0].entry.seq == 4
    assert len(await store.page(AB, limit=10)) == 4


@pytest.mark.asyncio
async def test_a_chat_after_one_not_in_the_timeline_waits_for_it(store: TimelineStore) -> None:
    """after_id: a chat whose sender's earlier chat is not committed is refused and stores
    nothing, so a lost chat can't be overtaken by a later one (sender order, I3)."""
    lost = await store.append([chat("alice", "bob", 20, after_id=10)])
    assert [r.outcome for r in lost] == ["out_of_order"] and lost[0].entry.seq == 0
    assert await store.page(AB, limit=10) == [] and await store.get("alice", 20) is None
    # the sender sends both again, in order: one batch, or two
    both = await store.append([chat("alice", "bob", 10), chat("alice", "bob", 20, after_id=10)])
    assert [(r.outcome, r.entry.seq) for r in both] == [("committed", 1), ("committed", 2)]
    later = await store.append([chat("alice", "bob", 30, after_id=20)])
    assert [(r.outcome, r.entry.seq) for r in later] == [("committed", 3)]
    # behind a refused chat of the same batch, behind the same id in another conversation,
    # and behind another sender's id: refused too
    mixed = await store.append(
        [
            chat("alice", "bob", 40, after_id=35),
            chat("alice", "bob", 50, after_id=40),
            chat("alice", "carol", 60, after_id=30),
            chat("bob", "alice", 70, after_id=30),
        ]
    )
    assert [r.outcome for r in mixed] == ["out_of_order"] * 4
    # a resend of a committed chat is its duplicate, whatever it names now
    again = await store.append([chat("alice", "bob", 20, after_id=15)])
    assert [(r.outcome, r.entry.seq) for r in again] == [("duplicate", 2)]
    page = await store.page(AB, limit=10)
    assert [e.msg_id for e in page] == [10, 20, 30]
    stored = cls("ChatMsg").FromString(page[1].content)
    assert stored.after_id == 0, "the hint is not part of the stored message"


@pytest.mark.asyncio
async def test_a_bad_message_refuses_the_batch_and_stores_nothing(store: TimelineStore) -> None:
    spoofed = chat("alice", "bob", 1)
    spoofed = NewMessage(
        "p:bob:carol", "alice", 1, spoofed.dest_type, 1, spoofed.content, spoofed.digest
    )
    with pytest.raises(ValueError, match="not in"):
        await store.append([chat("alice", "bob", 5), spoofed])
    assert await store.page(AB, limit=10) == []


@pytest.mark.asyncio
async def test_uint64_ids_round_trip(store: TimelineStore) -> None:
    top = (1 << 64) - 1
    results = await store.append([chat("alice", "bob", top), chat("alice", "bob", 1 << 63)])
    assert [r.entry.msg_id for r in results] == [top, 1 << 63]
    assert (await store.get("alice", top)) == results[0].entry
    assert [e.msg_id for e in await store.page(AB, limit=5)] == [top, 1 << 63]
    assert (await store.append([chat("alice", "bob", top)]))[0].outcome == "duplicate"


# --- paging -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_page_bounds_and_caps(store: TimelineStore) -> None:
    await store.append([chat("alice" if i % 2 else "bob", "bob" if i % 2 else "alice", i)
                        for i in range(1, 301)])  # fmt: skip

    async def page(*, after: int = 0, before: int = 0, limit: int) -> list[int]:
        return [e.seq for e in await store.page(AB, after=after, before=before, limit=limit)]

    assert await page(limit=5) == [1, 2, 3, 4, 5]
    assert await page(after=10, limit=3) == [11, 12, 13]
    assert await page(before=10, limit=3) == [7, 8, 9]  # the newest before, ascending
    assert await page(before=3, limit=10) == [1, 2]
    assert await page(after=5, before=9, limit=10) == [6, 7, 8]
    assert await page(after=5, before=9, limit=2) == [6, 7]
    assert await page(after=5, before=6, limit=10) == []
    assert await page(after=9, before=5, limit=10) == []
    assert await page(after=300, limit=10) == []
    assert await page(before=1 << 70, limit=2) == [299, 300]
    assert len(await page(limit=1000)) == MAX_PAGE
    assert await page(after=1 << 70, limit=2) == []
    for after, before, limit in ((0, 0, 0), (-1, 0, 1), (0, -1, 1)):
        with pytest.raises(ValueError):
            await store.page(AB, after=after, before=before, limit=limit)
    assert await store.page("p:x:y", limit=5) == []


@pytest.mark.asyncio
async def test_paging_through_ten_thousand_messages_is_fast(store: TimelineStore) -> None:
    total = 10_000
    for start in range(0, total, 500):
        await store.append([chat("alice", "bob", i) for i in range(start + 1, start + 501)])
    began = time.monotonic()
    got: list[int] = []
    after = 0
    while True:
        entries = await store.page(AB, after=after, limit=MAX_PAGE)
        if not entries:
            break
        got.extend(e.seq for e in entries)
        after = entries[-1].seq
    forward = time.monotonic() - began
    began = time.monotonic()
    back: list[int] = []
    before = 0
    while True:
        entries = await store.page(AB, before=before or total + 1, limit=MAX_PAGE)
        if not entries:
            break
        back[:0] = [e.seq for e in entries]
        before = entries[0].seq
        if before == 1:
            break
    backward = time.monotonic() - began
    assert got == back == list(range(1, total + 1))
    assert forward < 2.0 and backward < 2.0, (forward, backward)


# --- conversations and cursors ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_conversations_with_unread_and_cursors(store: TimelineStore) -> None:
    await store.append([chat("alice", "bob", 1), chat("bob", "alice", 2), chat("bob", "alice", 3)])
    await asyncio.sleep(0.005)
    await store.append([chat("carol", "alice", 4)])
    convs = await store.conversations("alice")
    assert [c.conv_id for c in convs] == ["p:alice:carol", AB]  # newest change first
    ab = convs[1]
    assert (ab.peer_id, ab.dest_type, ab.last_seq, ab.unread) == ("bob", im_pb2.SINGLE, 3, 2)
    assert ab.last is not None and (ab.last.seq, ab.last.msg_id) == (3, 3)
    assert (ab.read_seq, ab.peer_read_seq, ab.peer_delivered_seq, ab.delivered_seq) == (0, 0, 0, 0)
    assert (await store.conversations("bob"))[0].unread == 1
    assert await store.conversations("dave") == []

    await asyncio.sleep(0.005)
    assert await store.set_read(AB, "alice", 2) == 2
    assert await store.set_delivered(AB, "alice", "phone", 3) == 3
    assert await store.set_delivered(AB, "alice", "laptop", 1) == 1
    ab = next(c for c in await store.conversations("alice", device_id="laptop") if c.conv_id == AB)
    assert (ab.read_seq, ab.unread, ab.delivered_seq) == (2, 1, 1)
    bob = (await store.conversations("bob", device_id="phone"))[0]
    assert (bob.peer_id, bob.peer_read_seq, bob.peer_delivered_seq, bob.delivered_seq) == (
        "alice",
        2,
        3,  # the best of alice's devices
        0,  # bob has no device "phone"
    )
    assert (await store.conversations("alice", limit=1))[0].conv_id == AB  # read: changed
    with pytest.raises(ValueError):
        await store.conversations("alice", limit=0)


@pytest.mark.asyncio
async def test_conversations_since(store: TimelineStore) -> None:
    await store.append([chat("alice", "bob", 1)])
    await store.append([chat("alice", "carol", 2)])
    everything = await store.conversations("alice")
    mark = max(c.changed for c in everything) + 1
    assert await store.conversations("alice", since_ms=mark) == []
    await asyncio.sleep(0.002)
    await store.set_read(AB, "bob", 1)  # bob's read is alice's receipt: she hears of it
    changed = await store.conversations("alice", since_ms=mark)
    assert [(c.conv_id, c.peer_read_seq) for c in changed] == [(AB, 1)]
    assert [c.conv_id for c in await store.conversations("bob", since_ms=mark)] == [AB]
    assert await store.conversations("carol", since_ms=mark) == []


@pytest.mark.asyncio
async def test_conversations_page_oldest_first_after_a_key(store: TimelineStore) -> None:
    """Keyset paging for the connector's listing: (changed, conv_id) strictly after the key,
    oldest change first, every conversation exactly once across the pages."""
    peers = [f"p{i:02d}" for i in range(7)]
    for i, peer in enumerate(peers):
        await store.append([chat("alice", peer, i + 1)])
    seen: list[str] = []
    after = (-1, "")
    while True:
        page = await store.conversations("alice", limit=3, after=after)
        seen += [c.conv_id for c in page]
        if len(page) < 3:
            break
        after = (page[-1].changed, page[-1].conv_id)
    assert sorted(seen) == sorted(f"p:alice:{p}" for p in peers) and len(seen) == len(set(seen))
    listed = await store.conversations("alice", after=(-1, ""))
    keys = [(c.changed, c.conv_id) for c in listed]
    assert keys == sorted(keys)
    assert all(c.last is None and c.last_seq == 1 for c in listed)  # pages carry no bodies
    newest = await store.conversations("alice")
    assert [c.conv_id for c in newest] == [k[1] for k in reversed(keys)]  # default: newest first


@pytest.mark.asyncio
async def test_cursors_only_move_forward_and_never_past_the_head(store: TimelineStore) -> None:
    await store.append([chat("bob", "alice", i) for i in range(1, 6)])
    assert await store.set_read(AB, "alice", 3) == 3
    assert await store.set_read(AB, "alice", 2) == 3  # never lowered
    assert await store.set_read(AB, "alice", 1 << 70) == 5  # never past last_seq
    assert await store.set_delivered(AB, "alice", "d1", 4) == 4
    assert await store.set_delivered(AB, "alice", "d1", 1) == 4
    assert await store.set_delivered(AB, "alice", "d1", 99) == 5
    assert await store.set_delivered(AB, "alice", "d2", 2) == 2  # each device its own
    # no conversation, or not a member: nothing stored
    assert await store.set_read("p:x:y", "x", 3) == 0
    assert await store.set_read(AB, "carol", 3) == 0
    assert await store.set_delivered(AB, "carol", "d1", 3) == 0
    with pytest.raises(ValueError):
        await store.set_read(AB, "alice", -1)
    with pytest.raises(ValueError):
        await store.set_delivered(AB, "alice", "d" * 65, 1)
    ab = (await store.conversations("alice", device_id="d2"))[0]
    assert (ab.read_seq, ab.delivered_seq, ab.unread) == (5, 2, 0)
    assert (await store.conversations("bob"))[0].peer_delivered_seq == 5


@pytest.mark.asyncio
async def test_unread_counts_only_others_and_stops_at_the_cap(store: TimelineStore) -> None:
    n = UNREAD_CAP + 3
    for start in range(0, n, 500):
        await store.append(
            [chat("bob", "alice", i) for i in range(start + 1, min(n, start + 500) + 1)]
        )
    await store.append([chat("alice", "bob", n + i) for i in range(1, 4)])
    alice = (await store.conversations("alice"))[0]
    assert alice.unread == UNREAD_CAP
    assert (await store.conversations("bob"))[0].unread == 3
    await store.set_read(AB, "alice", n - 10)
    assert (await store.conversations("alice"))[0].unread == 10  # alice's own 3 not counted


@pytest.mark.asyncio
async def test_membership(store: TimelineStore) -> None:
    assert await store.is_member(AB, "alice")  # a pair's members follow from its id
    assert await store.is_member(AB, "bob")
    assert not await store.is_member(AB, "carol")
    assert not await store.is_member("p:bob:alice", "bob")  # not a conversation id
    assert not await store.is_member("g:team", "alice")  # groups: none yet


@pytest.mark.asyncio
async def test_head(store: TimelineStore) -> None:
    assert await store.head(AB) == 0
    await store.append([chat("alice", "bob", i) for i in range(1, 4)])
    assert await store.head(AB) == 3
    assert await store.head("p:alice:carol") == 0
    assert await store.head("not an id") == 0


@pytest.mark.asyncio
async def test_min_seq_is_the_first_seq_still_stored(store: TimelineStore) -> None:
    await store.append([chat("alice", "bob", 1), chat("alice", "bob", 2)])
    assert (await store.conversations("bob"))[0].min_seq == 1
    await asyncio.sleep(0.01)
    cut = int(time.time() * 1000)
    await asyncio.sleep(0.01)
    await store.append([chat("alice", "bob", 3)])
    await store.purge(cut)
    (conv,) = await store.conversations("bob")
    assert (conv.min_seq, conv.last_seq) == (3, 3)
    await store.purge(int(time.time() * 1000) + 1000)
    (conv,) = await store.conversations("alice")
    assert (conv.min_seq, conv.last_seq) == (4, 3)  # nothing left: nothing to sync


READ, DELIVERED = im_pb2.READ, im_pb2.DELIVERED


@pytest.mark.asyncio
async def test_merge_cursors_in_one_batch(store: TimelineStore) -> None:
    await store.append([chat("alice", "bob", i) for i in range(1, 6)])
    await store.append([chat("carol", "bob", 9)])
    got = await store.merge_cursors(
        [
            CursorMove(AB, "bob", DELIVERED, 3, "phone"),
            CursorMove(AB, "bob", DELIVERED, 2, "laptop"),  # behind the best: not moved
            CursorMove(AB, "bob", DELIVERED, 4, "laptop"),  # ahead: the member moved
            CursorMove(AB, "bob", DELIVERED, 4, "laptop"),  # a repeat
            CursorMove(AB, "bob", READ, 2),
            CursorMove(AB, "bob", READ, 1),  # lower: ignored
            CursorMove(AB, "bob", READ, 1 << 63),  # capped at the head
            CursorMove(AB, "carol", READ, 1),  # not a member
            CursorMove("p:bob:carol", "bob", DELIVERED, 1, "phone"),  # another conversation
            CursorMove("p:alice:dave", "dave", READ, 1),  # a member, no message yet
            CursorMove("g:team", "bob", READ, 1),  # no such group
            CursorMove("p:bob:alice", "bob", READ, 1),  # not a conversation id
        ]
    )
    assert got == [
        CursorResult(3, True, True, 3),
        CursorResult(3, False, True, 2),
        CursorResult(4, True, True, 4),
        CursorResult(4, False, True, 4),
        CursorResult(2, True, True),
        CursorResult(2, False, True),
        CursorResult(5, True, True),
        CursorResult(0, False, False),
        CursorResult(1, True, True, 1),
        CursorResult(0, False, True),
        CursorResult(0, False, False),
        CursorResult(0, False, False),
    ]
    bob = {c.conv_id: c for c in await store.conversations("bob", device_id="laptop")}
    assert (bob[AB].read_seq, bob[AB].delivered_seq, bob[AB].unread) == (5, 4, 0)
    (alice,) = await store.conversations("alice")
    assert (alice.peer_read_seq, alice.peer_delivered_seq) == (5, 4)
    assert await store.set_delivered(AB, "bob", "phone", 2) == 3  # the device's own cursor
    assert await store.merge_cursors([]) == []
    for bad in (
        CursorMove(AB, "bob", im_pb2.SENT, 1),
        CursorMove(AB, "bob", READ, -1),
        CursorMove(AB, "bob", DELIVERED, 1, "d" * 65),
    ):
        with pytest.raises(ValueError):
            await store.merge_cursors([CursorMove(AB, "bob", READ, 1), bad])


@pytest.mark.asyncio
async def test_a_merge_tells_the_peer_only_when_the_member_moved(store: TimelineStore) -> None:
    await store.append([chat("alice", "bob", i) for i in range(1, 4)])
    await store.merge_cursors([CursorMove(AB, "bob", DELIVERED, 3, "phone")])
    mark = max(c.changed for c in await store.conversations("alice")) + 1
    await asyncio.sleep(0.005)
    (behind,) = await store.merge_cursors([CursorMove(AB, "bob", DELIVERED, 2, "laptop")])
    assert (behind.moved, behind.device_seq) == (False, 2)
    assert await store.conversations("alice", since_ms=mark) == []  # no receipt for alice
    assert [c.conv_id for c in await store.conversations("bob", since_ms=mark)] == [AB]
    await asyncio.sleep(0.005)
    (read,) = await store.merge_cursors([CursorMove(AB, "bob", READ, 1)])
    assert read.moved
    assert [c.peer_read_seq for c in await store.conversations("alice", since_ms=mark)] == [1]


@pytest.mark.asyncio
async def test_merge_cursors_of_many_conversations(store: TimelineStore) -> None:
    """More conversations than one lookup takes (500 keys): one merge still gets them all."""
    n = 700
    await store.append([chat(f"a{i}", f"b{i}", i + 1) for i in range(n)])
    moves = [
        CursorMove(pair_conv_id(f"a{i}", f"b{i}"), f"b{i}", DELIVERED, 1, "p") for i in range(n)
    ]
    assert all(r == CursorResult(1, True, True, 1) for r in await store.merge_cursors(moves))
    assert all(r == CursorResult(1, False, True, 1) for r in await store.merge_cursors(moves))
    (a0,) = await store.conversations("a0")
    assert a0.peer_delivered_seq == 1


# --- retention ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_purge_removes_old_prefixes(store: TimelineStore) -> None:
    await store.append([chat("alice", "bob", 1), chat("alice", "bob", 2)])
    await asyncio.sleep(0.01)
    cut = int(time.time() * 1000)
    await asyncio.sleep(0.01)
    await store.append([chat("alice", "bob", 3)])
    assert await store.purge(cut) == 2
    assert [e.seq for e in await store.page(AB, limit=10)] == [3]
    assert await store.purge(cut) == 0
    convs = await store.conversations("bob")
    assert (convs[0].last_seq, convs[0].unread) == (3, 1)
    # seqs go on from the head: a purge never frees one for reuse
    assert seqs(await store.append([chat("alice", "bob", 4)])) == [4]
    assert await store.purge(int(time.time() * 1000) + 1000) == 2
    assert (await store.conversations("bob"))[0].last is None


# --- the SQL store ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_stores_on_one_database_share_timelines(engine: Engine) -> None:
    one, two = await engine.open(), await engine.open()
    await one.append([chat("alice", "bob", 1)])
    assert seqs(await two.append([chat("bob", "alice", 2), chat("alice", "bob", 1)])) == [2, 1]
    assert [e.seq for e in await one.page(AB, limit=5)] == [1, 2]


@pytest.mark.asyncio
async def test_schema_version(engine: Engine) -> None:
    if engine.kind == "memory":
        pytest.skip("no schema")
    store = await engine.open()
    assert isinstance(store, SQLTimelineStore)
    await store.check_schema()
    db = await open_database(engine.url)
    try:
        assert await schema_version(db, "timeline") == 2  # step 2: group spans, closed_seq, key_id
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_concurrent_appends_to_one_conversation(engine: Engine) -> None:
    """Two connection pools append to one conversation at once, 20 tasks of 50 messages each:
    every seq from 1 to 1000 is given exactly once, and each task's order is kept."""
    if engine.kind != "mysql":
        pytest.skip("concurrency of two servers' connections: MySQL")
    stores = [await engine.open(), await engine.open()]
    tasks, per_task = 20, 50

    async def sender(t: int) -> None:
        store = stores[t % 2]
        frm, to = ("alice", "bob") if t % 4 < 2 else ("bob", "alice")  # both sides write
        for i in range(0, per_task, 5):
            ids = [t * 1000 + i + k for k in range(5)]
            await store.append([chat(frm, to, msg_id) for msg_id in ids])

    await asyncio.gather(*(sender(t) for t in range(tasks)))
    entries: list[int] = []
    after = 0
    while page := await stores[0].page(AB, after=after, limit=MAX_PAGE):
        entries.extend(e.msg_id for e in page)
        assert [e.seq for e in page] == list(range(after + 1, after + len(page) + 1))
        after = page[-1].seq
    assert len(entries) == len(set(entries)) == tasks * per_task
    for t in range(tasks):
        mine = [m for m in entries if m // 1000 == t]
        assert mine == sorted(mine) and len(mine) == per_task
    summary = (await stores[1].conversations("bob"))[0]
    assert (summary.last_seq, summary.unread) == (tasks * per_task, tasks * per_task // 2)


# --- the memory store against a model -----------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("send"),
            st.sampled_from(["alice", "bob", "carol"]),
            st.sampled_from(["alice", "bob", "carol"]),
            st.integers(1, 6),
            st.booleans(),
        ),
        st.tuples(
            st.just("read"),
            st.sampled_from(["alice", "bob", "carol"]),
            st.sampled_from(["alice", "bob", "carol"]),
            st.integers(0, 12),
            st.booleans(),
        ),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_memory_store_matches_a_plain_model(ops: list[tuple[str, str, str, int, bool]]) -> None:
    async def run() -> None:
        store = MemoryTimelineStore()
        log: dict[str, list[tuple[str, int]]] = {}  # conv -> [(sender, id)] in seq order
        ids: dict[tuple[str, int], tuple[str, bool]] = {}  # identity -> (dest, body flag)
        reads: dict[tuple[str, str], int] = {}
        for kind, a, b, n, flag in ops:
            if a == b:
                continue
            conv = pair_conv_id(a, b)
            if kind == "send":
                result = (await store.append([chat(a, b, n, body=b"1" if flag else b"2")]))[0]
                if (a, n) not in ids:
                    ids[(a, n)] = (b, flag)
                    log.setdefault(conv, []).append((a, n))
                    assert result.outcome == "committed"
                    assert result.entry.seq == len(log[conv])
                else:
                    assert result.outcome == ("duplicate" if ids[(a, n)] == (b, flag) else "reused")
            else:
                head = len(log.get(conv, []))
                got = await store.set_read(conv, a, n)
                if head:
                    reads[(conv, a)] = max(reads.get((conv, a), 0), min(n, head))
                assert got == reads.get((conv, a), 0)
        for conv, msgs in log.items():
            page = await store.page(conv, limit=MAX_PAGE)
            assert [(e.sender, e.msg_id) for e in page] == msgs
            for user in model.pair_members(conv):
                summary = next(c for c in await store.conversations(user) if c.conv_id == conv)
                read = reads.get((conv, user), 0)
                assert summary.unread == sum(1 for s, _ in msgs[read:] if s != user)

    asyncio.run(run())
