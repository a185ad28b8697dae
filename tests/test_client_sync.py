"""The client's sync state machine (client/sync.py) without sockets: frames and times in,
effects out. A small fake server answers Syncs from a timeline so random orders can be
checked end to end: every message surfaces exactly once, in seq order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import client.sync
from client.sync import (
    DELIVERED,
    READ,
    Effect,
    SendCursor,
    SendSync,
    Surface,
    SurfaceReceipt,
    SyncMachine,
)
from proto import im_pb2

ME, PEER = "alice", "bob"
CONV = "p:alice:bob"
OTHER = "p:alice:carol"


def chat(seq: int, conv: str = CONV, frm: str = PEER, msg_id: int = 0) -> im_pb2.ChatMsg:
    dest = ME if frm != ME else conv.split(":")[2 if conv.split(":")[1] == ME else 1]
    return im_pb2.ChatMsg(id=msg_id or 1000 + seq, from_id=frm, dest_id=dest, conv_id=conv, seq=seq)


def state(conv: str = CONV, last: int = 0, **kw: int) -> im_pb2.ConvState:
    return im_pb2.ConvState(conv_id=conv, type=im_pb2.SINGLE, last_seq=last, **kw)  # type: ignore[arg-type]


def done(frm: int, to: int, last: int, conv: str = CONV) -> im_pb2.SyncDone:
    return im_pb2.SyncDone(conv_id=conv, from_seq=frm, to_seq=to, last_seq=last)


def surfaced(effects: list[Effect]) -> list[int]:
    return [e.chat.seq for e in effects if isinstance(e, Surface)]


def syncs(effects: list[Effect]) -> list[SendSync]:
    return [e for e in effects if isinstance(e, SendSync)]


def receipts(effects: list[Effect]) -> list[tuple[str, int]]:
    return [(e.kind, e.msg_id) for e in effects if isinstance(e, SurfaceReceipt)]


def cursors(effects: list[Effect]) -> list[tuple[int, int]]:
    return [(e.type, e.seq) for e in effects if isinstance(e, SendCursor)]


def online(**kw: float) -> SyncMachine:
    m = SyncMachine(ME, **kw)  # type: ignore[arg-type]
    m.link_up(0.0)
    return m


def test_in_order_chats_surface_and_advance() -> None:
    m = online()
    out = m.on_chat(chat(1), 0.0) + m.on_chat(chat(2), 0.0)
    assert surfaced(out) == [1, 2] and m.have(CONV) == 2
    assert syncs(out) == []


def test_duplicates_are_dropped() -> None:
    m = online()
    m.on_chat(chat(1), 0.0)
    assert surfaced(m.on_chat(chat(1), 0.0)) == []
    assert m.stats["duplicates"] == 1


def test_a_gap_buffers_and_syncs_just_the_gap_once() -> None:
    m = online()
    m.on_chat(chat(1), 0.0)
    out = m.on_chat(chat(4), 0.0)
    assert surfaced(out) == [] and syncs(out) == [SendSync(CONV, 2, 3, 200)]
    assert syncs(m.on_chat(chat(5), 0.0)) == [], "one Sync per conversation at a time"
    out = m.on_chat(chat(2), 0.0) + m.on_chat(chat(3), 0.0)
    assert surfaced(out) == [2, 3, 4, 5]
    out = m.on_sync_done(done(2, 3, 5), 0.0)
    assert surfaced(out) == [] and m.have(CONV) == 5 and syncs(out) == []


def test_sync_done_closes_holes() -> None:
    m = online()
    m.on_chat(chat(1), 0.0)
    m.on_chat(chat(5), 0.0)
    m.on_chat(chat(3), 0.0)  # came with the Sync; 2 and 4 never come
    out = m.on_sync_done(done(2, 4, 5), 0.0)
    assert surfaced(out) == [3, 5] and m.have(CONV) == 5
    assert m.stats["holes_skipped"] == 2


def test_conv_state_syncs_in_pages_to_the_head_and_caught_up_waits_for_it() -> None:
    m = SyncMachine(ME)
    m.link_up(0.0)
    out = m.on_conv_state(state(last=450), 0.0)
    assert syncs(out) == [SendSync(CONV, 1, 0, 200)]
    m.on_caught_up(777, 0.0)
    assert m.since == 777 and not m.caught_up
    for s in range(1, 201):
        m.on_chat(chat(s), 0.0)
    out = m.on_sync_done(done(1, 200, 450), 0.0)
    assert syncs(out) == [SendSync(CONV, 201, 0, 200)]
    assert cursors(out) == [(DELIVERED, 200)], "a DELIVERED per page"
    for s in range(201, 451):
        m.on_chat(chat(s), 0.0)
    m.on_sync_done(done(201, 450, 450), 0.0)
    assert m.caught_up and m.have(CONV) == 450


def test_caught_up_with_nothing_listed_is_immediate_and_needs_the_caught_up_frame() -> None:
    m = online()
    assert not m.caught_up
    m.on_caught_up(5, 0.0)
    assert m.caught_up


def test_at_most_max_syncing_conversations_sync_at_once() -> None:
    m = online(max_syncing=2)
    out: list[Effect] = []
    for i in range(5):
        out += m.on_conv_state(state(f"p:alice:u{i}", last=3), 0.0)
    assert [s.conv_id for s in syncs(out)] == ["p:alice:u0", "p:alice:u1"]
    out = m.on_sync_done(done(1, 3, 3, "p:alice:u0"), 0.0)
    assert [s.conv_id for s in syncs(out)] == ["p:alice:u2"]


def test_own_message_from_another_device_surfaces_as_own() -> None:
    m = online()
    out = m.on_chat(chat(1, frm=ME, msg_id=77), 0.0)
    (s,) = [e for e in out if isinstance(e, Surface)]
    assert s.own and s.chat.id == 77


def test_sent_holds_its_seq_and_receipts_follow_the_peer_cursor_once() -> None:
    m = online()
    m.local_sent(50)
    out = m.on_sent(50, CONV, 1, PEER, 0.0)
    assert receipts(out) == [("SENT", 50)] and m.have(CONV) == 1
    assert receipts(m.on_sent(50, CONV, 1, PEER, 0.0)) == [], "SENT once"
    m.local_sent(51)
    m.on_sent(51, CONV, 3, PEER, 0.0)  # seq 2 is the peer's, not here yet
    assert m.have(CONV) == 1
    cur = im_pb2.Cursor(conv_id=CONV, user_id=PEER, type=im_pb2.DELIVERED, seq=2)
    assert receipts(m.on_cursor(cur, 0.0)) == [("DELIVERED", 50)]
    cur = im_pb2.Cursor(conv_id=CONV, user_id=PEER, type=im_pb2.READ, seq=3)
    assert receipts(m.on_cursor(cur, 0.0)) == [("DELIVERED", 51), ("READ", 50), ("READ", 51)]
    assert receipts(m.on_cursor(cur, 0.0)) == []
    assert surfaced(m.on_chat(chat(2), 0.0)) == [2] and m.have(CONV) == 3


def test_chats_waiting_for_receipts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that never reads costs bounded memory: past WAIT_MEMORY the oldest chat waiting
    for its DELIVERED/READ is forgotten (its receipt never shows), the newer ones still get
    theirs."""
    monkeypatch.setattr(client.sync, "WAIT_MEMORY", 3)
    m = online()
    for i in range(1, 6):
        m.local_sent(100 + i)
        m.on_sent(100 + i, CONV, i, PEER, 0.0)
    cur = im_pb2.Cursor(conv_id=CONV, user_id=PEER, type=im_pb2.DELIVERED, seq=5)
    assert receipts(m.on_cursor(cur, 0.0)) == [
        ("DELIVERED", 103),
        ("DELIVERED", 104),
        ("DELIVERED", 105),
    ]


def test_own_chat_back_through_a_sync_counts_as_sent_not_as_a_message() -> None:
    m = online()
    m.local_sent(60)
    out = m.on_chat(chat(1, frm=ME, msg_id=60), 0.0)
    assert surfaced(out) == [] and receipts(out) == [("SENT", 60)] and m.have(CONV) == 1


def test_cursors_known_before_sent_give_receipts_at_sent() -> None:
    m = online()
    m.on_conv_state(state(last=0, peer_delivered_seq=4, peer_read_seq=2), 0.0)
    m.local_sent(9)
    out = m.on_sent(9, CONV, 3, PEER, 0.0)
    assert receipts(out) == [("SENT", 9), ("DELIVERED", 9)]


def test_delivered_cursors_are_coalesced() -> None:
    m = online(cursor_every=0.1)
    out = m.on_chat(chat(1), 0.0)
    assert cursors(out) == [(DELIVERED, 1)]
    out = m.on_chat(chat(2), 0.01) + m.on_chat(chat(3), 0.02)
    assert cursors(out) == []
    assert cursors(m.tick(0.05)) == []
    assert cursors(m.tick(0.11)) == [(DELIVERED, 3)]
    assert cursors(m.tick(0.5)) == []


def test_mark_read_sends_read_coalesced_and_own_read_elsewhere_counts() -> None:
    m = online(cursor_every=0.1)
    m.on_chat(chat(1), 0.0)
    assert cursors(m.mark_read(CONV, 1, 0.0)) == [(READ, 1)]
    assert cursors(m.mark_read(CONV, 2, 0.01)) == []
    assert cursors(m.tick(0.2)) == [(READ, 2)]
    m.on_cursor(im_pb2.Cursor(conv_id=CONV, user_id=ME, type=im_pb2.READ, seq=9), 0.3)
    assert cursors(m.mark_read(CONV, 5, 1.0)) == []


def test_conv_state_with_a_lower_server_cursor_resends_it() -> None:
    m = online()
    m.on_chat(chat(1), 0.0)
    m.on_chat(chat(2), 1.0)
    m.link_down()
    assert cursors(m.link_up(2.0)) == []
    m.on_conv_state(state(last=2, device_seq=1), 2.0)
    assert cursors(m.tick(2.5)) == [(DELIVERED, 2)]


def test_offline_cursors_wait_for_the_link_and_unacked_ones_go_again() -> None:
    m = online()
    m.link_down()
    assert cursors(m.on_chat(chat(1), 0.0)) == []
    assert cursors(m.link_up(1.0)) == [(DELIVERED, 1)]
    m.cursor_unsent(CONV, DELIVERED, 1)
    assert cursors(m.tick(2.0)) == [(DELIVERED, 1)]


def test_a_lost_link_asks_again_for_what_was_syncing() -> None:
    m = online()
    assert syncs(m.on_conv_state(state(last=10), 0.0)) == [SendSync(CONV, 1, 0, 200)]
    m.link_down()
    assert syncs(m.tick(1.0)) == [], "offline: nothing is asked"
    assert syncs(m.link_up(2.0)) == [SendSync(CONV, 1, 0, 200)]


def test_an_unanswered_sync_is_asked_again_and_a_refused_one_later() -> None:
    m = online(sync_retry=5.0)
    m.on_conv_state(state(last=10), 0.0)
    assert syncs(m.tick(4.0)) == []
    assert syncs(m.tick(5.5)) == [SendSync(CONV, 1, 0, 200)]
    assert syncs(m.sync_failed(CONV, 6.0, retry=True)) == []
    assert syncs(m.tick(6.5)) == []
    assert syncs(m.tick(7.1)) == [SendSync(CONV, 1, 0, 200)]


def test_not_a_member_stops_syncing_and_does_not_block_caught_up() -> None:
    m = online()
    m.on_conv_state(state(last=10), 0.0)
    m.on_caught_up(1, 0.0)
    assert not m.caught_up
    m.sync_failed(CONV, 1.0, retry=False)
    assert m.caught_up and syncs(m.tick(100.0)) == []


def test_the_buffer_is_bounded_and_what_it_drops_is_fetched_later() -> None:
    m = online(max_buffer=3)
    out: list[Effect] = []
    for s in range(3, 10):
        out += m.on_chat(chat(s), 0.0)
    assert syncs(out) == [SendSync(CONV, 1, 2, 200)]
    assert m.stats["dropped"] == 4
    m.on_chat(chat(1), 0.0)
    out = m.on_chat(chat(2), 0.0) + m.on_sync_done(done(1, 2, 9), 0.0)
    assert surfaced(out) == [2, 3, 4, 5]
    assert syncs(out) == [SendSync(CONV, 6, 0, 200)]


def test_chats_without_a_place_surface_as_they_come() -> None:
    m = online()
    assert len(surfaced(m.on_chat(im_pb2.ChatMsg(id=1, from_id=PEER), 0.0))) == 1


class FakeServer:
    """One conversation's timeline with holes; answers Syncs as the connector does."""

    def __init__(self, seqs: list[int], head: int) -> None:
        self.seqs, self.head = seqs, head

    def answer(self, s: SendSync) -> list[im_pb2.ChatMsg | im_pb2.SyncDone]:
        to = self.head if s.to_seq == 0 else min(s.to_seq, self.head)
        got = [q for q in self.seqs if s.from_seq <= q <= to][: s.limit]
        covered = to if len(got) < s.limit else got[-1]
        frames: list[im_pb2.ChatMsg | im_pb2.SyncDone] = [chat(q) for q in got]
        if covered < s.from_seq:
            covered = s.from_seq - 1
        frames.append(done(s.from_seq, covered, self.head))
        return frames


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 60),
    holes=st.sets(st.integers(1, 60), max_size=10),
    order_seed=st.integers(0, 2**32),
    page=st.integers(1, 20),
    buffer=st.integers(1, 10),
    drop_links=st.booleans(),
)
def test_random_orders_surface_everything_once_in_order(
    n: int, holes: set[int], order_seed: int, page: int, buffer: int, drop_links: bool
) -> None:
    """Live pushes in any order (some lost), a listing, Syncs answered with holes and a link
    that may drop: every existing message surfaces exactly once, in seq order."""
    rng = random.Random(order_seed)
    seqs = [s for s in range(1, n + 1) if s not in holes]
    server = FakeServer(seqs, n)
    m = SyncMachine(ME, page=page, max_buffer=buffer)
    pushes = [chat(s) for s in seqs if rng.random() < 0.7]
    rng.shuffle(pushes)
    inbox: list[im_pb2.ChatMsg | im_pb2.SyncDone | im_pb2.ConvState | im_pb2.CaughtUp] = []
    got: list[int] = []
    now = 0.0

    def run(effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Surface):
                got.append(e.chat.seq)
            elif isinstance(e, SendSync):
                inbox.extend(server.answer(e))

    run(m.link_up(now))
    inbox.append(state(last=n))
    inbox.append(im_pb2.CaughtUp(since=1))
    steps = 0
    while inbox or pushes:
        steps += 1
        assert steps < 10_000
        now += 0.05
        if pushes and (not inbox or rng.random() < 0.5):
            run(m.on_chat(pushes.pop(), now))
            continue
        frame = inbox.pop(0)
        if drop_links and rng.random() < 0.03:
            m.link_down()
            inbox.clear()  # whatever was in flight is lost
            run(m.link_up(now))
            inbox.extend([state(last=n), im_pb2.CaughtUp(since=2)])
            continue
        if isinstance(frame, im_pb2.ChatMsg):
            run(m.on_chat(frame, now))
        elif isinstance(frame, im_pb2.SyncDone):
            run(m.on_sync_done(frame, now))
        elif isinstance(frame, im_pb2.ConvState):
            run(m.on_conv_state(frame, now))
        else:
            run(m.on_caught_up(frame.since, now))
        if not inbox and not pushes:
            run(m.tick(now + 100.0))  # anything left waiting is asked again
    assert got == seqs
    assert m.have(CONV) == n and m.caught_up
