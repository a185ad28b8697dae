"""Link ack windows (seed §8): dedupe with re-ack, reorder buffer with a bound, retry limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ProtocolError, WindowError
from common.window import RecvWindow, RetryLimitError, SendWindow


def test_in_order_frames_are_released_at_once() -> None:
    w: RecvWindow[str] = RecvWindow()
    assert w.offer(1, "a") == ["a"]
    assert w.offer(2, "b") == ["b"]
    assert w.last == 2


def test_duplicate_is_reported_not_released() -> None:
    w: RecvWindow[str] = RecvWindow()
    w.offer(1, "a")
    assert w.offer(1, "a") is None
    w.offer(3, "c")
    assert w.offer(3, "c") is None  # parked duplicate


def test_gap_is_parked_until_it_closes() -> None:
    w: RecvWindow[str] = RecvWindow()
    assert w.offer(3, "c") == []
    assert w.offer(2, "b") == []
    assert w.parked == 2
    assert w.offer(1, "a") == ["a", "b", "c"]
    assert w.last == 3 and w.parked == 0


def test_frame_beyond_window_is_refused() -> None:
    w: RecvWindow[str] = RecvWindow(capacity=4)
    with pytest.raises(WindowError):
        w.offer(6, "f")


@given(st.permutations(list(range(1, 40))))
def test_any_arrival_order_releases_everything_once_in_order(order: list[int]) -> None:
    w: RecvWindow[int] = RecvWindow(capacity=64)
    released: list[int] = []
    for seq in order:
        out = w.offer(seq, seq)
        assert out is not None
        released.extend(out)
        assert w.offer(seq, seq) is None  # a repeat is always a duplicate
    assert released == sorted(order)


def test_send_window_numbers_and_cumulative_ack() -> None:
    w: SendWindow[str] = SendWindow(capacity=3, timeout=1.0)
    assert [w.push(x, 0.0) for x in "abc"] == [1, 2, 3]
    assert w.full
    with pytest.raises(WindowError):
        w.push("d", 0.0)
    assert w.ack(2) == [(1, "a"), (2, "b")]
    assert not w.full and len(w) == 1
    assert w.ack(2) == []  # an old ack again changes nothing


def test_ack_for_unsent_frame_is_a_protocol_error() -> None:
    w: SendWindow[str] = SendWindow()
    w.push("a", 0.0)
    with pytest.raises(ProtocolError):
        w.ack(5)


def test_retransmit_then_retry_limit() -> None:
    w: SendWindow[str] = SendWindow(timeout=1.0, max_retries=2)
    w.push("a", 0.0)
    assert w.due(0.5) == []
    assert w.due(1.0) == [(1, "a")]
    assert w.due(2.0) == [(1, "a")]
    with pytest.raises(RetryLimitError):
        w.due(3.0)


def test_take_unacked_returns_what_was_never_acked() -> None:
    w: SendWindow[str] = SendWindow()
    for x in "abc":
        w.push(x, 0.0)
    w.ack(1)
    assert w.take_unacked() == ["b", "c"]
    assert len(w) == 0
