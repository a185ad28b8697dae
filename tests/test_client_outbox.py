"""The client library's reliability rules without a server: outbox, resend, stream floor,
dedupe and per-conversation order, driven through a fake link and frames fed to on_frame."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import test_session_fuzz as session_fuzz

from client.core import IMClient, Message, Receipt, ServerError
from common.crypto import new_pair_key, seal
from common.link import Link
from proto import im_pb2

pytestmark = pytest.mark.asyncio

KEY = new_pair_key()


class FakeLink(session_fuzz.FakeLink):
    """What IMClient uses of a Link (the session tests' fake), plus the window's state."""

    def __init__(self) -> None:
        super().__init__()
        self.window_full = False

    def chats(self) -> list[im_pb2.ChatMsg]:
        return [e.chat for e in self.sent if e.WhichOneof("body") == "chat"]

    def receipts(self) -> list[im_pb2.AckMsg]:
        return [e.ack for e in self.sent if e.WhichOneof("body") == "ack"]


def client(**kw: Any) -> tuple[IMClient, FakeLink]:
    c = IMClient("http://127.0.0.1:1", "alice", "pw", reconnect=False, **kw)
    c.friends = {"bob": KEY, "carol": KEY}
    link = FakeLink()
    attach(c, link)
    return c, link


def attach(c: IMClient, link: FakeLink) -> None:
    """As a successful connect leaves it: linked, welcomed, wanting the link."""
    c._link = cast(Link, link)
    c.node_id = "c1"
    c._want_link = True


def ack(kind: int, of: int, frm: str = "bob", rid: int = 900) -> im_pb2.Envelope:
    return im_pb2.Envelope(
        ack=im_pb2.AckMsg(id=rid, from_id=frm, dest_id="alice", ack_type=kind, ack_msg_id=of)  # type: ignore[arg-type]
    )


def chat_from(
    frm: str, msg_id: int, text: str, *, stream: int = 0, seq: int = 0, floor: int = 0
) -> im_pb2.Envelope:
    return im_pb2.Envelope(
        chat=im_pb2.ChatMsg(
            id=msg_id,
            from_id=frm,
            dest_id="alice",
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=seal(KEY, msg_id, frm, "alice", text.encode()),
            read_tag=b"tag",
            stream=stream,
            stream_seq=seq,
            stream_floor=floor,
        )
    )


async def feed(c: IMClient, env: im_pb2.Envelope) -> None:
    await c.on_frame(cast(Link, None), env)


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
    assert c.pending == 1 and [x.id for x in link.chats()] == [m1]
    await feed(c, ack(im_pb2.DELIVERED, m1))
    assert c.pending == 1, "DELIVERED is not SENT: the server has not said it took it"
    await feed(c, ack(im_pb2.SENT, m1))
    assert c.pending == 0


async def test_after_a_reconnect_the_outbox_goes_again_in_order_with_the_same_ids() -> None:
    c, first = client()
    ids = [await c.send_text("bob", f"m{i}") for i in range(3)]
    await feed(c, ack(im_pb2.SENT, ids[0]))
    first.closing = True
    later = await c.send_text("bob", "while down")  # kept, not sent
    second = FakeLink()
    attach(c, second)
    await c._flush(force=True)
    assert [x.id for x in second.chats()] == [ids[1], ids[2], later]
    assert c.resent == 2  # the two that had gone out once


async def test_unconfirmed_frames_are_resent_after_a_while() -> None:
    c, link = client(resend_after=0.0)
    m1 = await c.send_text("bob", "one")
    await c._flush(force=False)
    assert [x.id for x in link.chats()] == [m1, m1]


async def test_the_outbox_is_bounded_and_send_waits_for_room() -> None:
    c, link = client(outbox_size=2)
    m1 = await c.send_text("bob", "one")
    await c.send_text("bob", "two")
    third = asyncio.create_task(c.send_text("bob", "three"))
    await asyncio.sleep(0.05)
    assert not third.done() and len(link.chats()) == 2
    await feed(c, ack(im_pb2.SENT, m1))
    await asyncio.wait_for(third, 1.0)
    assert len(link.chats()) == 3


async def test_a_refusal_for_good_ends_the_resending() -> None:
    c, link = client()
    await c.send_text("bob", "one")
    seq = link.sent[-1].seq
    err = im_pb2.Error(code=im_pb2.NOT_FRIEND, detail="no", ref_seq=seq)
    await c.on_frame(cast(Link, link), im_pb2.Envelope(error=err))
    assert c.pending == 0
    ev = await c.next_event(timeout=1)
    assert isinstance(ev, ServerError) and ev.code == "NOT_FRIEND"


async def test_receipts_wait_in_the_outbox_for_accepted() -> None:
    c, link = client()
    await feed(c, chat_from("bob", 5, "hi"))
    (delivered,) = link.receipts()
    assert delivered.ack_type == im_pb2.DELIVERED and delivered.ack_msg_id == 5
    assert c.pending == 1
    await feed(c, ack(im_pb2.ACCEPTED, delivered.id))
    assert c.pending == 0


async def test_stream_places_and_floor() -> None:
    """Each peer has its own numbering; the floor is the oldest not yet DELIVERED, and a
    resend carries the floor of the moment it is resent."""
    c, link = client(resend_after=0.0)
    a1 = await c.send_text("bob", "a1")
    a2 = await c.send_text("bob", "a2")
    await c.send_text("carol", "c1")
    chats = link.chats()
    assert [(x.dest_id, x.stream_seq, x.stream_floor) for x in chats] == [
        ("bob", 1, 1),
        ("bob", 2, 1),
        ("carol", 1, 1),
    ]
    assert len({x.stream for x in chats}) == 1 and chats[0].stream != 0
    await feed(c, ack(im_pb2.DELIVERED, a1))
    await c.send_text("bob", "a3")
    assert link.chats()[-1].stream_floor == 2
    await feed(c, ack(im_pb2.DELIVERED, a2))
    link.sent.clear()
    await c._flush(force=False)  # everything is unconfirmed (no SENT): all resent
    assert {(x.id, x.stream_floor) for x in link.chats() if x.dest_id == "bob"} >= {(a2, 3)}


async def test_duplicate_messages_and_receipts_surface_once() -> None:
    c, _ = client()
    await feed(c, chat_from("bob", 7, "hi"))
    await feed(c, chat_from("bob", 7, "hi"))
    await feed(c, ack(im_pb2.SENT, 42))
    await feed(c, ack(im_pb2.SENT, 42))
    events = await drain_events(c)
    assert [type(e) for e in events] == [Message, Receipt]
    assert c.duplicates_dropped == 2


async def test_messages_of_a_stream_surface_in_the_senders_order() -> None:
    c, _ = client()
    await feed(c, chat_from("bob", 11, "first", stream=77, seq=1, floor=1))
    await feed(c, chat_from("bob", 13, "third", stream=77, seq=3, floor=2))
    await feed(c, chat_from("carol", 5, "other", stream=99, seq=1, floor=1))
    await feed(c, chat_from("bob", 12, "second", stream=77, seq=2, floor=2))
    events = await drain_events(c)
    texts = [e.text for e in events if isinstance(e, Message)]
    assert texts == ["first", "other", "second", "third"]
    assert c.order_stats["reordered"] == 1


async def test_a_gap_that_lasts_asks_for_a_drain_then_is_given_up() -> None:
    c, link = client(order_hold=1.5)
    c._order_task = asyncio.create_task(c._keep_order())
    try:
        await feed(c, chat_from("bob", 11, "first", stream=77, seq=1, floor=1))
        await feed(c, chat_from("bob", 13, "third", stream=77, seq=3, floor=2))
        first = await c.next_event(timeout=1)
        assert isinstance(first, Message) and first.text == "first"
        third = await c.next_event(timeout=3)  # the hold ran out: surfaced, out of place
        assert isinstance(third, Message) and third.text == "third"
        drains = [e for e in link.sent if e.WhichOneof("body") == "drain"]
        assert drains and drains[0].drain.user_id == "alice"
        assert c.order_stats["gaps_skipped"] == 1
    finally:
        c._order_task.cancel()
        await asyncio.gather(c._order_task, return_exceptions=True)


async def test_a_chat_overtaken_by_a_later_sent_is_resent_at_once() -> None:
    """Hops are FIFO per conversation: SENT for m2 while m1 waits means m1 was lost."""
    c, link = client(resend_after=60.0)
    m1 = await c.send_text("bob", "one")
    m2 = await c.send_text("bob", "two")
    c1 = await c.send_text("carol", "other peer")
    for key in (m1, c1):
        c._outbox[key].sent_at -= 5.0  # out a while ago
    await feed(c, ack(im_pb2.SENT, m2))
    link.sent.clear()
    await c._flush(force=False)
    assert [x.id for x in link.chats()] == [m1], "only the overtaken one, to the same peer"


async def test_a_chat_just_sent_is_not_resent_when_overtaken() -> None:
    c, link = client(resend_after=60.0)
    await c.send_text("bob", "one")
    m2 = await c.send_text("bob", "two")
    await feed(c, ack(im_pb2.SENT, m2))
    link.sent.clear()
    await c._flush(force=False)
    assert link.chats() == []


async def test_a_receipt_made_by_the_reader_never_waits_for_window_room() -> None:
    """The reader makes DELIVERED; waiting there for room would stop the reading of the very
    LinkAcks that make room. It stays in the outbox, due, for the keeper's next flush."""
    c, link = client()
    link.window_full = True
    await asyncio.wait_for(feed(c, chat_from("bob", 5, "hi")), 1.0)
    assert link.receipts() == [] and c.pending == 1
    link.window_full = False
    await c._flush(force=False)
    assert [r.ack_msg_id for r in link.receipts()] == [5]


async def test_a_send_cancelled_while_waiting_for_room_takes_no_place_in_the_stream() -> None:
    c, link = client(outbox_size=1)
    m1 = await c.send_text("bob", "one")
    waiting = asyncio.create_task(c.send_text("bob", "never"))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await feed(c, ack(im_pb2.SENT, m1))
    await c.send_text("bob", "two")
    assert [x.stream_seq for x in link.chats()] == [1, 2]
