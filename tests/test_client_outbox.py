"""IMClient's own rules without a server: the outbox (until SENT, resent with the same id,
bounded, ended by a refusal), frames fed to it turned into events, Syncs and cursors, and the
reader never waiting for window room. Driven through a fake link."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
import test_session_fuzz as session_fuzz

from client.core import IMClient
from client.events import Message, Receipt, ServerError
from common.crypto import new_pair_key, seal
from common.link import Link
from proto import im_pb2

pytestmark = pytest.mark.asyncio

KEY = new_pair_key()
CONV = "p:alice:bob"


class FakeLink(session_fuzz.FakeLink):
    """What IMClient uses of a Link (the session tests' fake), plus the window's state."""

    def __init__(self) -> None:
        super().__init__()
        self.window_full = False

    def kinds(self, kind: str) -> list[Any]:
        return [getattr(e, kind) for e in self.sent if e.WhichOneof("body") == kind]


def client(**kw: Any) -> tuple[IMClient, FakeLink]:
    c = IMClient("http://127.0.0.1:1", "alice", "pw", reconnect=False, **kw)
    c.friends = {"bob": KEY, "carol": KEY}
    link = FakeLink()
    attach(c, link)
    return c, link


def attach(c: IMClient, link: FakeLink) -> None:
    """As a successful connect leaves it: linked, welcomed, wanting the link."""
    conn = c._conn
    conn.link = cast(Link, link)
    conn.node_id = "c1"
    conn.wanted = True
    c._outbox.new_link()
    c._sync.link_up(0.0)


def sent_ack(of: int, seq: int) -> im_pb2.Envelope:
    return im_pb2.Envelope(
        ack=im_pb2.AckMsg(
            from_id="bob",
            dest_id="alice",
            ack_type=im_pb2.SENT,
            ack_msg_id=of,
            conv_id=CONV,
            seq=seq,
        )
    )


def chat_from(frm: str, msg_id: int, text: str, seq: int, conv: str = CONV) -> im_pb2.Envelope:
    to = "alice" if frm != "alice" else "bob"
    return im_pb2.Envelope(
        chat=im_pb2.ChatMsg(
            id=msg_id,
            from_id=frm,
            dest_id=to,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=seal(KEY, msg_id, frm, to, text.encode()),
            conv_id=conv,
            seq=seq,
        )
    )


async def feed(c: IMClient, env: im_pb2.Envelope) -> None:
    await c.on_envelope(env)


async def drain_events(c: IMClient) -> list[object]:
    out: list[object] = []
    while True:
        try:
            out.append(await c.next_event(timeout=0.05))
        except TimeoutError:
            return out


async def test_a_chat_stays_in_the_outbox_until_sent() -> None:
    c, link = client()
    m1 = await c.send_text("bob", "one")
    assert c.pending == 1 and [x.id for x in link.kinds("chat")] == [m1]
    await feed(c, sent_ack(m1, 1))
    assert c.pending == 0
    (ev,) = await drain_events(c)
    assert ev == Receipt("SENT", "bob", m1, 1, CONV)
    assert c.have(CONV) == 1, "our own message holds its seq"


async def test_after_a_reconnect_the_outbox_goes_again_in_order_with_the_same_ids() -> None:
    c, first = client()
    ids = [await c.send_text("bob", f"m{i}") for i in range(3)]
    await feed(c, sent_ack(ids[0], 1))
    first.closing = True
    c._conn.node_id = ""
    later = await c.send_text("bob", "while down")  # kept, not sent
    second = FakeLink()
    attach(c, second)
    await c._send_chats()
    assert [x.id for x in second.kinds("chat")] == [ids[1], ids[2], later]
    assert c.resent == 2  # the two that had gone out once


async def test_a_chat_made_as_a_link_comes_up_waits_for_the_resends() -> None:
    """The race the 10-minute chaos run caught (sender_disorder 1): a WELCOME hands the resends
    to a task, and a chat made before that task ran went out first, so a resent older chat was
    committed after it. Now every chat leaves in the order made, whoever sends it."""
    c, first = client()
    old = [await c.send_text("bob", f"m{i}") for i in range(3)]
    first.closing = True
    c._conn.node_id = ""
    second = FakeLink()
    c._conn.link, c._conn.node_id = cast(Link, second), "c2"
    c.welcomed(cast(Link, second), im_pb2.Welcome(node_id="c2", id_slot=0))
    new = await c.send_text("bob", "made as the link came up")  # before the resend task ran
    await asyncio.sleep(0.05)
    ids = [x.id for x in second.kinds("chat")]
    assert ids[: len(old) + 1] == [*old, new], ids
    assert len(ids) == len(set(ids)), "nothing twice on one link"


class SlowLink(FakeLink):
    """A link whose every send waits a moment (window room), so senders interleave."""

    async def send(self, env: im_pb2.Envelope) -> int:
        await asyncio.sleep(0.001)
        return await super().send(env)


async def test_concurrent_senders_keep_the_order_ids_were_made() -> None:
    c = IMClient("http://127.0.0.1:1", "alice", "pw", reconnect=False)
    c.friends = {"bob": KEY}
    link = SlowLink()
    attach(c, link)
    made = await asyncio.gather(*(c.send_text("bob", f"m{i}") for i in range(30)))
    ids = [x.id for x in link.kinds("chat")]
    assert ids == sorted(made) and sorted(ids) == ids


async def test_unconfirmed_chats_are_resent_after_a_while() -> None:
    c, link = client(resend_after=0.0)
    m1 = await c.send_text("bob", "one")
    await c._resend_stale()
    assert [x.id for x in link.kinds("chat")] == [m1, m1]
    assert c.resent == 1


async def test_the_outbox_is_bounded_and_send_waits_for_room() -> None:
    c, link = client(outbox_size=2)
    m1 = await c.send_text("bob", "one")
    await c.send_text("bob", "two")
    third = asyncio.create_task(c.send_text("bob", "three"))
    await asyncio.sleep(0.05)
    assert not third.done() and len(link.kinds("chat")) == 2
    await feed(c, sent_ack(m1, 1))
    await asyncio.wait_for(third, 1.0)
    assert len(link.kinds("chat")) == 3


@pytest.mark.parametrize("code", [im_pb2.NOT_FRIEND, im_pb2.TOO_LARGE, im_pb2.ID_REUSED])
async def test_a_refusal_for_good_ends_the_resending(code: int) -> None:
    c, _link = client()
    m1 = await c.send_text("bob", "one")
    err = im_pb2.Error(code=code, detail="no", ref_msg_id=m1)  # type: ignore[arg-type]
    await feed(c, im_pb2.Envelope(error=err))
    assert c.pending == 0
    ev = await c.next_event(timeout=1)
    assert isinstance(ev, ServerError) and ev.code == im_pb2.ErrorCode.Name(code)


async def test_a_refusal_naming_only_the_link_seq_ends_the_resending_too() -> None:
    c, _link = client()
    await c.send_text("bob", "one")
    err = im_pb2.Error(code=im_pb2.NOT_FRIEND, detail="no", ref_seq=1)  # its link seq
    await feed(c, im_pb2.Envelope(error=err))
    assert c.pending == 0


async def test_a_message_surfaces_once_and_delivered_goes_as_a_cursor() -> None:
    c, link = client()
    await feed(c, chat_from("bob", 7, "hi", 1))
    await feed(c, chat_from("bob", 7, "hi", 1))
    (ev,) = await drain_events(c)
    assert isinstance(ev, Message) and (ev.text, ev.conv_id, ev.seq, ev.own) == (
        "hi",
        CONV,
        1,
        False,
    )
    assert c.duplicates_dropped == 1
    assert [(x.conv_id, x.type, x.seq) for x in link.kinds("cursor")] == [
        (CONV, im_pb2.DELIVERED, 1)
    ]
    await c.send_read(ev)
    assert link.kinds("cursor")[-1].type == im_pb2.READ


async def test_a_gap_asks_for_a_sync_and_sync_done_closes_it() -> None:
    c, link = client()
    await feed(c, chat_from("bob", 1, "one", 1))
    await feed(c, chat_from("bob", 4, "four", 4))
    (sync,) = link.kinds("sync")
    assert (sync.conv_id, sync.from_seq, sync.to_seq) == (CONV, 2, 3)
    await feed(c, chat_from("bob", 3, "three", 3))
    done = im_pb2.SyncDone(conv_id=CONV, from_seq=2, to_seq=3, last_seq=4)
    await feed(c, im_pb2.Envelope(sync_done=done))
    texts = [e.text for e in await drain_events(c) if isinstance(e, Message)]
    assert texts == ["one", "three", "four"] and c.have(CONV) == 4


async def test_caught_up_is_set_once_the_listing_is_synced() -> None:
    c, _link = client()
    cs = im_pb2.ConvState(conv_id=CONV, type=im_pb2.SINGLE, peer_id="bob", last_seq=1)
    await feed(c, im_pb2.Envelope(conv_state=cs))
    await feed(c, im_pb2.Envelope(caught_up=im_pb2.CaughtUp(since=42)))
    assert not c.caught_up.is_set() and c.since == 42
    await feed(c, chat_from("bob", 9, "x", 1))
    done = im_pb2.SyncDone(conv_id=CONV, from_seq=1, to_seq=1, last_seq=1)
    await feed(c, im_pb2.Envelope(sync_done=done))
    assert c.caught_up.is_set()


async def test_a_body_that_does_not_open_is_unreadable() -> None:
    c, _ = client()
    env = chat_from("bob", 5, "hi", 1)
    env.chat.body = b"garbage"
    await feed(c, env)
    (ev,) = await drain_events(c)
    assert isinstance(ev, ServerError) and (ev.code, ev.seq, ev.conv_id) == ("UNREADABLE", 1, CONV)


async def test_the_reader_never_waits_for_window_room() -> None:
    """Cursors and Syncs made while reading wait for the ticker when the window is full: the
    reader must go on reading the LinkAcks that make room."""
    c, link = client()
    link.window_full = True
    await asyncio.wait_for(feed(c, chat_from("bob", 5, "hi", 1)), 1.0)
    assert link.kinds("cursor") == [] and len(c._deferred) == 1
    link.window_full = False
    c._ticker = asyncio.create_task(c._tick_loop())
    try:
        await asyncio.sleep(0.2)
        assert [x.seq for x in link.kinds("cursor")] == [1]
    finally:
        c._ticker.cancel()
        await asyncio.gather(c._ticker, return_exceptions=True)


async def test_a_cursor_lost_with_the_link_goes_again_on_the_next() -> None:
    c, first = client()
    await feed(c, chat_from("bob", 5, "hi", 1))
    (cursor,) = first.kinds("cursor")
    await c.link_lost([im_pb2.Envelope(cursor=cursor)])
    second = FakeLink()
    c._conn.link, c._conn.node_id = cast(Link, second), "c2"
    c.welcomed(cast(Link, second), im_pb2.Welcome(node_id="c2", id_slot=0))
    await asyncio.sleep(0.05)
    await c._apply(c._sync.tick(time.monotonic() + 1.0), may_wait=True)  # the ticker's part
    assert [x.seq for x in second.kinds("cursor")] == [1]
