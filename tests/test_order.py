"""The receiver's per-stream reordering (client/order.py), sans-IO: no sockets, no sleeps."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from client.order import StreamOrder

A = ("alice", 1)


def test_in_order_messages_pass_straight_through() -> None:
    o: StreamOrder[str] = StreamOrder()
    assert o.offer(A, 1, 1, "m1", 0.0) == ["m1"]
    assert o.offer(A, 2, 1, "m2", 0.0) == ["m2"]
    assert o.held == 0 and o.next_deadline() is None


def test_a_message_past_a_gap_waits_for_the_missing_one() -> None:
    o: StreamOrder[str] = StreamOrder()
    assert o.offer(A, 1, 1, "m1", 0.0) == ["m1"]
    assert o.offer(A, 3, 2, "m3", 0.0) == []
    assert o.offer(A, 4, 2, "m4", 0.0) == []
    assert o.held == 2 and o.next_deadline() is not None
    assert o.offer(A, 2, 2, "m2", 1.0) == ["m2", "m3", "m4"]
    assert o.held == 0 and o.reordered == 2 and o.gaps_skipped == 0


def test_the_floor_passing_a_gap_ends_the_wait() -> None:
    """The sender saw DELIVERED for the missing one (another device has it)."""
    o: StreamOrder[str] = StreamOrder()
    o.offer(A, 1, 1, "m1", 0.0)
    assert o.offer(A, 3, 2, "m3", 0.0) == []
    assert o.offer(A, 4, 3, "m4", 0.5) == ["m3", "m4"]
    assert o.gaps_skipped == 0


def test_a_gap_is_given_up_after_the_hold_and_a_late_message_still_surfaces() -> None:
    o: StreamOrder[str] = StreamOrder(hold=10.0)
    o.offer(A, 1, 1, "m1", 0.0)
    o.offer(A, 3, 2, "m3", 0.0)
    assert o.expire(9.9) == []
    assert o.expire(10.0) == ["m3"]
    assert o.gaps_skipped == 1
    assert o.offer(A, 2, 2, "m2", 11.0) == ["m2"]  # not dropped: late
    assert o.late == 1


def test_first_contact_waits_briefly_for_what_the_floor_names() -> None:
    o: StreamOrder[str] = StreamOrder(hold=30.0, first_hold=3.0)
    assert o.offer(A, 5, 3, "m5", 0.0) == []
    assert o.next_deadline() == 3.0
    assert o.offer(A, 3, 3, "m3", 1.0) == ["m3"]
    assert o.offer(A, 4, 3, "m4", 1.5) == ["m4", "m5"]


def test_first_contact_gives_up_after_first_hold() -> None:
    o: StreamOrder[str] = StreamOrder(hold=30.0, first_hold=3.0)
    o.offer(A, 5, 3, "m5", 0.0)
    assert o.expire(3.0) == ["m5"]
    # later gaps in the same stream are waited for the full hold
    o.offer(A, 7, 6, "m7", 4.0)
    assert o.next_deadline() == 34.0


def test_first_contact_with_nothing_undelivered_before_it_starts_there() -> None:
    o: StreamOrder[str] = StreamOrder()
    assert o.offer(A, 41, 41, "m41", 0.0) == ["m41"]
    assert o.offer(A, 42, 0, "m42", 0.0) == ["m42"]  # no floor given: 0


def test_streams_are_independent() -> None:
    o: StreamOrder[str] = StreamOrder()
    b = ("bob", 9)
    o.offer(A, 1, 1, "a1", 0.0)
    assert o.offer(A, 3, 2, "a3", 0.0) == []
    assert o.offer(b, 1, 1, "b1", 0.0) == ["b1"]
    assert o.offer(("alice", 2), 1, 1, "a'1", 0.0) == ["a'1"]  # alice restarted: a new stream


def test_memory_is_bounded() -> None:
    o: StreamOrder[int] = StreamOrder(max_streams=3, max_held=5)
    o.offer(A, 1, 1, 1, 0.0)
    released: list[int] = []
    for seq in range(3, 12):
        released += o.offer(A, seq, 2, seq, 0.0)
    assert o.held <= 5 and o.gaps_skipped >= 1
    assert released == sorted(released)
    for n in range(10):
        o.offer(("u", n), 2, 1, 100 + n, 0.0)
    assert len(o._streams) == 3


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 60), st.randoms(use_true_random=False), st.integers(0, 3))
def test_any_arrival_order_with_duplicates_is_released_in_order_once(
    n: int, rnd: random.Random, dup_every: int
) -> None:
    """Whatever the network does to one stream (reorder; the caller drops exact duplicates
    before offering), everything is released once, in send order, without any gap skipped."""
    arrivals = list(range(1, n + 1))
    rnd.shuffle(arrivals)
    o: StreamOrder[int] = StreamOrder()
    out: list[int] = []
    seen: set[int] = set()
    for i, seq in enumerate(arrivals):
        if seq in seen:
            continue
        seen.add(seq)
        # the floor the sender wrote: it has seen DELIVERED for nothing yet, or for a prefix the
        # receiver already released
        floor = 1 if not dup_every or i % (dup_every + 1) else max(1, min(len(out), seq))
        out += o.offer(A, seq, floor, seq, float(i))
    assert out == list(range(1, n + 1))
    assert o.gaps_skipped == 0 and o.late == 0 and o.held == 0


def test_gaps_before_stored_messages_are_waited_for_briefly_and_together() -> None:
    """Offline rows go to one device: another device of ours may hold the missing ones."""
    o: StreamOrder[str] = StreamOrder(hold=30.0, first_hold=3.0)
    o.offer(A, 1, 1, "m1", 0.0, stored=True)
    assert o.offer(A, 3, 1, "m3", 0.0, stored=True) == []
    assert o.offer(A, 6, 1, "m6", 0.5, stored=True) == []
    assert o.next_deadline() == 3.0
    assert o.expire(3.0) == ["m3"]  # the first gap given up...
    assert o.expire(3.0) == ["m6"]  # ...and the next at once: no fresh wait per gap
    assert o.gaps_skipped == 2


def test_a_live_gap_gets_a_fresh_wait_after_progress() -> None:
    o: StreamOrder[str] = StreamOrder(hold=30.0, first_hold=3.0)
    o.offer(A, 1, 1, "m1", 0.0)
    o.offer(A, 3, 2, "m3", 0.0)
    o.offer(A, 5, 2, "m5", 0.0)
    assert o.offer(A, 2, 2, "m2", 10.0) == ["m2", "m3"]
    assert o.next_deadline() == 40.0
