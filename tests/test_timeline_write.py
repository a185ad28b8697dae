"""The timeline write path (issue 13, step 2): every chat is committed to its conversation's
timeline before it is routed, and reaches its recipient stamped with (conv_id, seq).

The writer on a real store (SQLite and MySQL): seqs, resends, reuses, and cursors merged a
batch at a time with ``moved`` saying when the member's cursor went up; then the embedded stack
end to end: seqs 1, 2, 3 in send order, SENT only for what is in the timeline, a resend
answered with its first seq and never stored twice, an id reused for other content refused
with ``ID_REUSED``, stamps a client sets ignored, and the largest chat the connector accepts
fitting every hop's frame. The stack and the client library are imported by the end-to-end
tests only, so the writer's tests run on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from common.codec import FrameDecoder, encode
from common.db import Database
from common.errors import BackendError
from proto import im_pb2
from timeline.memqueue import MemoryTimelineQueue
from timeline.model import AppendResult, CursorMove, CursorResult, NewMessage, pair_conv_id
from timeline.store import SQLTimelineStore
from timeline.writer import TimelineWriter

if TYPE_CHECKING:
    from cli.stack import Stack

pytestmark = pytest.mark.asyncio


def record(frm: str, to: str, msg_id: int, body: bytes = b"sealed") -> im_pb2.TimelineRecord:
    chat = im_pb2.ChatMsg(
        id=msg_id,
        from_id=frm,
        dest_id=to,
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=body,
        conv_id=pair_conv_id(frm, to),
    )
    return im_pb2.TimelineRecord(chat=chat, origin="t1")


@pytest_asyncio.fixture
async def store(db: Database) -> SQLTimelineStore:
    s = SQLTimelineStore(db)
    await s.migrate()
    return s


@pytest_asyncio.fixture
async def writer(store: SQLTimelineStore) -> AsyncIterator[MemoryTimelineQueue]:
    queue = MemoryTimelineQueue()
    task = asyncio.create_task(TimelineWriter(queue, store).run())
    yield queue
    await queue.close()
    task.cancel()


async def test_writer_assigns_seqs_and_answers_resends_and_reuses(
    writer: MemoryTimelineQueue, store: SQLTimelineStore
) -> None:
    answers = await writer.submit([record("alice", "bob", n) for n in (11, 12, 13)])
    assert [(a.chat.seq, a.duplicate, a.refused) for a in answers] == [
        (1, False, 0),
        (2, False, 0),
        (3, False, 0),
    ]
    assert all(a.chat.conv_id == "p:alice:bob" and a.chat.server_time > 0 for a in answers)
    assert all(a.origin == "t1" for a in answers)
    # the other direction is the same conversation
    (back,) = await writer.submit([record("bob", "alice", 21)])
    assert back.chat.seq == 4
    # a resend: its first seq again, and nothing new stored
    (again,) = await writer.submit([record("alice", "bob", 12)])
    assert (again.chat.seq, again.duplicate) == (2, True)
    # the same id with another body: refused, nothing stored
    (reused,) = await writer.submit([record("alice", "bob", 13, b"other")])
    assert reused.refused == im_pb2.ID_REUSED and reused.chat.seq == 0
    page = await store.page("p:alice:bob", limit=50)
    assert [(e.seq, e.sender, e.msg_id) for e in page] == [
        (1, "alice", 11),
        (2, "alice", 12),
        (3, "alice", 13),
        (4, "bob", 21),
    ]


async def test_writer_refuses_what_no_writer_could_append(writer: MemoryTimelineQueue) -> None:
    bad = record("alice", "bob", 5)
    bad.chat.conv_id = "p:alice:carol"  # not the pair's conversation
    (answer,) = await writer.submit([bad])
    assert answer.refused == im_pb2.BAD_MESSAGE
    cursor = im_pb2.TimelineRecord(
        cursor=im_pb2.Cursor(conv_id="p:alice:bob", user_id="mallory", type=im_pb2.READ, seq=1)
    )
    (refused,) = await writer.submit([cursor])
    assert refused.refused == im_pb2.BAD_MESSAGE


async def test_writer_answers_group_refusals_at_commit(
    writer: MemoryTimelineQueue, store: SQLTimelineStore, db: Database
) -> None:
    """A group chat is checked in the append's transaction: a member's commits; a stranger's
    is NOT_MEMBER, a muted member's MUTED, one sealed with a replaced key STALE_KEY; a SYSTEM
    chat from a client is BAD_MESSAGE, never stored."""
    from groups.store import SQLGroupStore

    groups = SQLGroupStore(db, store)
    await groups.migrate()
    gid = (await groups.create("alice", "team", ["bob"])).group_id
    await groups.put_member(gid, "bob", "bob")

    def group_record(
        frm: str, msg_id: int, key_id: int = 1, msg_type: im_pb2.MsgType = im_pb2.TEXT
    ) -> im_pb2.TimelineRecord:
        chat = im_pb2.ChatMsg(
            id=msg_id,
            from_id=frm,
            dest_id=gid,
            dest_type=im_pb2.GROUP,
            msg_type=msg_type,
            body=b"sealed",
            key_id=key_id,
            conv_id=f"g:{gid}",
        )
        return im_pb2.TimelineRecord(chat=chat, origin="t1")

    (ok,) = await writer.submit([group_record("bob", 1)])
    assert (ok.chat.seq, ok.refused) == (3, 0)
    (stranger,) = await writer.submit([group_record("mallory", 2)])
    assert (stranger.refused, stranger.chat.seq) == (im_pb2.NOT_MEMBER, 0)
    await groups.mute(gid, "alice", "bob", 2**62)
    (muted,) = await writer.submit([group_record("bob", 3)])
    assert muted.refused == im_pb2.MUTED
    await groups.mute(gid, "alice", "bob", 0)
    await groups.put_member(gid, "alice", "carol")
    await groups.put_member(gid, "carol", "carol")
    await groups.delete_member(gid, "carol", "carol")  # key 2 from here on
    (stale,) = await writer.submit([group_record("bob", 4, key_id=1)])
    assert stale.refused == im_pb2.STALE_KEY
    (system,) = await writer.submit([group_record("alice", 5, msg_type=im_pb2.SYSTEM)])
    assert system.refused == im_pb2.BAD_MESSAGE
    (fresh,) = await writer.submit([group_record("bob", 4, key_id=2)])
    assert fresh.refused == 0 and fresh.chat.seq == 9


async def test_writer_merges_read_cursors_forward_only(
    writer: MemoryTimelineQueue,
) -> None:
    await writer.submit([record("alice", "bob", n) for n in (1, 2, 3)])

    def read(seq: int) -> im_pb2.TimelineRecord:
        return im_pb2.TimelineRecord(
            cursor=im_pb2.Cursor(conv_id="p:alice:bob", user_id="bob", type=im_pb2.READ, seq=seq)
        )

    (a,) = await writer.submit([read(2)])
    (b,) = await writer.submit([read(1)])  # lower: ignored
    assert (a.cursor.seq, b.cursor.seq) == (2, 2)
    assert (a.moved, b.moved) == (True, False)


def delivered(user: str, device: str, seq: int, conv: str = "p:alice:bob") -> im_pb2.TimelineRecord:
    return im_pb2.TimelineRecord(
        cursor=im_pb2.Cursor(conv_id=conv, user_id=user, type=im_pb2.DELIVERED, seq=seq),
        device_id=device,
        origin="c2",
    )


async def test_writer_says_when_the_members_delivered_cursor_moved(
    writer: MemoryTimelineQueue,
) -> None:
    """``moved`` is about the member (the best of its devices): a device catching up behind
    another moves nothing the peer must hear of; ``cursor.seq`` is the member's cursor."""
    answers = await writer.submit(
        [record("alice", "bob", 1), record("alice", "bob", 2), delivered("bob", "phone", 2)]
    )
    assert answers[2].cursor.seq == 2 and answers[2].moved  # the chats of its own batch count
    assert answers[2].origin == "c2" and answers[2].cursor.type == im_pb2.DELIVERED
    (behind,) = await writer.submit([delivered("bob", "laptop", 1)])
    assert (behind.cursor.seq, behind.moved, behind.refused) == (2, False, 0)
    await writer.submit([record("alice", "bob", 3)])
    burst = await writer.submit(
        [delivered("bob", "laptop", 3), delivered("bob", "phone", 3), delivered("bob", "x", 9)]
    )
    assert [(a.cursor.seq, a.moved) for a in burst] == [(3, True), (3, False), (3, False)]
    refused = await writer.submit(
        [
            delivered("carol", "phone", 1),  # not a member
            delivered("bob", "d" * 65, 1),  # a device id no store keeps
            delivered("bob", "phone", 1, conv="p:bob:alice"),  # not a conversation id
        ]
    )
    assert [a.refused for a in refused] == [im_pb2.BAD_MESSAGE] * 3
    assert not any(a.moved for a in refused)


class FlakyStore:
    """The real store behind an append that fails the first ``n`` times (a database outage)."""

    def __init__(self, store: SQLTimelineStore, n: int) -> None:
        self.store = store
        self.failures = n

    async def append(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        if self.failures:
            self.failures -= 1
            raise BackendError("mysql", "gone away")
        return await self.store.append(batch)

    async def merge_cursors(self, moves: Sequence[CursorMove]) -> list[CursorResult]:
        if self.failures:
            self.failures -= 1
            raise BackendError("mysql", "gone away")
        return await self.store.merge_cursors(moves)


async def test_writer_retries_a_failing_store_and_loses_nothing(store: SQLTimelineStore) -> None:
    queue = MemoryTimelineQueue()
    flaky = FlakyStore(store, 3)
    task = asyncio.create_task(TimelineWriter(queue, flaky, backoff_start=0.01).run())
    try:
        answers = await queue.submit([record("alice", "bob", n) for n in (1, 2)], timeout=10)
        assert [a.chat.seq for a in answers] == [1, 2] and flaky.failures == 0
        flaky.failures = 2
        (cursor,) = await queue.submit([delivered("bob", "phone", 2)], timeout=10)
        assert (cursor.cursor.seq, cursor.moved, flaky.failures) == (2, True, 0)
    finally:
        await queue.close()
        task.cancel()


# -- end to end on the embedded stack ----------------------------------------------------------


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    from test_e2e import stack_settings

    from cli.stack import Stack

    st = Stack(stack_settings(tmp_path, greet_timeout=1.0))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


async def timeline_of(st: Stack, conv_id: str) -> list[tuple[int, str, int]]:
    assert st.db is not None
    page = await SQLTimelineStore(st.db).page(conv_id, limit=200)
    return [(e.seq, e.sender, e.msg_id) for e in page]


async def test_chats_arrive_stamped_in_send_order_and_sent_means_stored(stack: Stack) -> None:
    from test_e2e import expect, make_users, receipts

    from client import Message

    alice, bob = await make_users(stack, "alice", "bob")
    try:
        ids = [await alice.send_text("bob", f"m{i}") for i in range(20)]
        got = [await expect(bob, Message) for _ in ids]
        assert [m.msg_id for m in got] == ids  # type: ignore[attr-defined]
        assert [m.seq for m in got] == list(range(1, 21))  # type: ignore[attr-defined]
        assert {m.conv_id for m in got} == {"p:alice:bob"}  # type: ignore[attr-defined]
        sent = {m for k, m in await receipts(alice, 40) if k == "SENT"}
        assert sent == set(ids)
        # every SENT chat is in the timeline, once, in send order
        assert await timeline_of(stack, "p:alice:bob") == [
            (i + 1, "alice", mid) for i, mid in enumerate(ids)
        ]
        reply = await bob.send_text("alice", "back")
        echo = await expect(alice, Message)
        assert (echo.msg_id, echo.seq) == (reply, 21)  # type: ignore[attr-defined]
    finally:
        await alice.close()
        await bob.close()


async def greeted(st: Stack, user: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection of ``user`` (registered, friends with the others), after WELCOME."""
    from test_e2e import conn_addr, rest_url

    from client import IMClient

    c = IMClient(rest_url(st), user, "password-123")
    token, device = (await c.login()).token, c.device_id
    await c.close()
    reader, writer = await asyncio.open_connection(*conn_addr(st))
    writer.write(encode(im_pb2.Envelope(greet=im_pb2.Greet(token=token, device_id=device))))
    await writer.drain()
    dec = FrameDecoder()
    async with asyncio.timeout(5):
        while True:
            for env in dec.feed(await reader.read(65536)):
                if env.WhichOneof("body") == "welcome":
                    return reader, writer


async def frames_until(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, want: int, wait: float = 5.0
) -> list[im_pb2.Envelope]:
    """Frames until ``want`` non-control ones came (link-acking them as a client must)."""
    dec = FrameDecoder()
    out: list[im_pb2.Envelope] = []
    try:
        async with asyncio.timeout(wait):
            while sum(1 for e in out if e.WhichOneof("body") in ("ack", "error")) < want:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                for env in dec.feed(chunk):
                    out.append(env)
                    if env.seq:
                        writer.write(encode(im_pb2.Envelope(link_ack=im_pb2.LinkAck(seq=env.seq))))
    except TimeoutError:
        pass
    return out


async def test_a_resend_is_sent_again_and_a_reused_id_is_refused(stack: Stack) -> None:
    from test_e2e import expect, make_users, raw_chat

    from client import ServerError

    alice, bob = await make_users(stack, "alice", "bob", connect=False)
    await bob.connect()
    reader, writer = await greeted(stack, "alice")
    try:
        mid = 7001 << 12  # in alice's id slot, 0

        def only(frames: list[im_pb2.Envelope]) -> list[tuple[str, int]]:
            out = []
            for e in frames:
                if e.WhichOneof("body") == "ack" and e.ack.ack_type == im_pb2.SENT:
                    out.append(("SENT", e.ack.ack_msg_id))
                elif e.WhichOneof("body") == "error":
                    out.append((im_pb2.ErrorCode.Name(e.error.code), e.error.ref_msg_id))
            return out

        for seq, body, want in (
            (1, b"same", ("SENT", mid)),
            (2, b"same", ("SENT", mid)),  # a resend once SENT: SENT again
            (3, b"different", ("ID_REUSED", mid)),  # a reuse: refused, never SENT
        ):
            frame = raw_chat(mid, "alice", "bob", body)
            frame.seq = seq
            writer.write(encode(frame))
            await writer.drain()
            got: list[tuple[str, int]] = []
            async with asyncio.timeout(5):
                while want not in got:
                    got += only(await frames_until(reader, writer, 1, wait=1.0))
            assert set(got) == {want}, got
        assert await timeline_of(stack, "p:alice:bob") == [(1, "alice", 7001 << 12)]
        # bob sees it once (the resend reached him too: his library drops the copy)
        msg = await expect(bob, ServerError)  # the raw body was not sealed: shown as unreadable
        assert msg.msg_id == 7001 << 12  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError):
            await expect(bob, ServerError, timeout=0.5)
    finally:
        writer.close()
        await alice.close()
        await bob.close()


async def test_stamps_a_client_sets_are_replaced_by_the_servers(stack: Stack) -> None:
    from test_e2e import expect, make_users, raw_chat

    from client import ServerError

    alice, bob = await make_users(stack, "alice", "bob", connect=False)
    await bob.connect()
    reader, writer = await greeted(stack, "alice")
    try:
        forged = raw_chat(9001 << 12, "alice", "bob", b"x")
        forged.seq = 1
        forged.chat.seq = 999
        forged.chat.conv_id = "p:bob:mallory"
        forged.chat.server_time = 1
        writer.write(encode(forged))
        await writer.drain()
        await frames_until(reader, writer, 1)
        got = await expect(bob, ServerError)  # unsealed body: surfaced as unreadable
        assert got.msg_id == 9001 << 12  # type: ignore[attr-defined]
        assert await timeline_of(stack, "p:alice:bob") == [(1, "alice", 9001 << 12)]
        assert await timeline_of(stack, "p:bob:mallory") == []
    finally:
        writer.close()
        await alice.close()
        await bob.close()


async def test_the_largest_accepted_chat_fits_every_hops_frame() -> None:
    """Every field at its longest, the body at the connector's limit, then every stamp and
    wrapper a hop adds: still within the client frame limit (and the node links' headroom)."""
    from connector.rules import ENVELOPE_HEADROOM

    max_frame = 64 * 1024
    a, b = "a" * 64, "b" * 64
    chat = im_pb2.ChatMsg(
        id=(1 << 64) - 1,
        from_id=a,
        dest_id=b,
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.FILE,
        body=b"\xff" * (max_frame - ENVELOPE_HEADROOM),
        create_time=-(1 << 63),
        file=im_pb2.FileRef(id="f" * 22, size=(1 << 64) - 1, checksum="c" * 64),
        key_id=(1 << 32) - 1,
    )
    # the timeline's stamps, then the recipient connector's link seq
    chat.conv_id = pair_conv_id(a, b)
    chat.seq, chat.server_time = (1 << 64) - 1, (1 << 63) - 1
    pushed = im_pb2.Envelope(seq=(1 << 64) - 1, chat=chat)
    assert len(pushed.SerializeToString()) <= max_frame
    fanout = im_pb2.Envelope(seq=(1 << 64) - 1, fanout=im_pb2.Fanout(users=[a, b], chat=chat))
    assert len(fanout.SerializeToString()) <= max_frame + 16 * 1024  # node links: 16 KiB more
    batch = im_pb2.TimelineBatch(records=[im_pb2.TimelineRecord(chat=chat, origin="n" * 64)])
    assert len(batch.SerializeToString()) <= max_frame + 16 * 1024


async def test_a_read_moves_the_readers_cursor_and_the_unread_count(stack: Stack) -> None:
    from test_e2e import expect, make_users

    from client import Message

    alice, bob = await make_users(stack, "alice", "bob")
    try:
        for i in range(5):
            await alice.send_text("bob", f"m{i}")
        got = [await expect(bob, Message) for _ in range(5)]
        await bob.mark_read(got[2].conv_id, got[2].seq)  # type: ignore[attr-defined]
        assert stack.db is not None
        store = SQLTimelineStore(stack.db)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            (conv,) = await store.conversations("bob")
            if conv.read_seq == 3 or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert (conv.conv_id, conv.last_seq, conv.read_seq, conv.unread) == ("p:alice:bob", 5, 3, 2)
        (theirs,) = await store.conversations("alice")
        assert (theirs.peer_read_seq, theirs.unread) == (3, 0)
    finally:
        await alice.close()
        await bob.close()


async def test_retention_purges_what_is_older_than_the_setting(
    writer: MemoryTimelineQueue, store: SQLTimelineStore
) -> None:
    from timeline.writer import keep_retention

    await writer.submit([record("alice", "bob", n) for n in (1, 2)])
    # nothing is older than a day yet
    task = asyncio.create_task(keep_retention(store, 1, every=0.01))
    await asyncio.sleep(0.1)
    assert len(await store.page("p:alice:bob", limit=10)) == 2
    task.cancel()
    # two days later, both are
    later = asyncio.create_task(
        keep_retention(store, 1, every=0.01, clock=lambda: time.time() + 2 * 86400)
    )
    await asyncio.sleep(0.1)
    later.cancel()
    assert await store.page("p:alice:bob", limit=10) == []
    # 0 keeps everything: returns at once
    await asyncio.wait_for(keep_retention(store, 0), 1)
