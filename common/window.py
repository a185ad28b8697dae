"""Link ack windows (seed §8): per connection and direction, sans-IO.

The sender numbers windowed frames 1, 2, 3, ... (the *link sequence*, restarting with each
connection), keeps each until the peer's cumulative ``LinkAck`` covers it, and retransmits it when
its timer runs out. After ``max_retries`` retransmits the link is declared dead: the caller closes
it and takes the unacked frames back (seed §8.1, option 2) to store them elsewhere.

The receiver processes frames strictly in sequence: ``seq <= last`` is a duplicate (re-ack, do not
process again), a gap is parked in a reorder buffer until it closes. Both sides are bounded: the
sender by ``capacity`` unacked frames (callers wait for room: back-pressure), the receiver by
refusing a frame more than ``capacity`` ahead of what it has processed.

Time is passed in (``now``) so tests need no clock and no sleeps.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.errors import ProtocolError, WindowError
from proto import im_pb2

T = TypeVar("T")

# Defaults: a window of 1024 frames covers ~10 ms at 100k msgs/s, far more than one chat link
# needs, while bounding what a dead peer can pin in memory to 1024 * 64 KiB in the worst case.
DEFAULT_WINDOW = 1024
DEFAULT_RETRY_TIMEOUT = 5.0  # seconds before a frame is resent
DEFAULT_MAX_RETRIES = 3


class RetryLimitError(ProtocolError):
    """A frame went unacked through every retransmit: the peer is gone or stuck."""

    code = im_pb2.RETRY_LIMIT
    fatal = True


@dataclass(slots=True)
class _Pending(Generic[T]):
    item: T
    deadline: float
    retries: int


# An idle link keeps no dict of its own: the windows share these (never written to) while empty.
_NO_PENDING: OrderedDict[int, _Pending[object]] = OrderedDict()
_NO_PARKED: dict[int, object] = {}
_MISSING = object()


class SendWindow(Generic[T]):
    """Sender half: sequence numbers, unacked frames, retransmit deadlines."""

    __slots__ = ("_next", "_pending", "capacity", "max_retries", "timeout")

    def __init__(
        self,
        capacity: int = DEFAULT_WINDOW,
        timeout: float = DEFAULT_RETRY_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.max_retries = max_retries
        self._next = 1
        self._pending: OrderedDict[int, _Pending[T]] = _NO_PENDING  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.capacity

    def push(self, item: T, now: float) -> int:
        """Give ``item`` the next sequence number and start its timer."""
        if self.full:
            raise WindowError(f"send window full ({self.capacity} unacked)")
        seq = self._next
        self._next += 1
        if self._pending is _NO_PENDING:
            self._pending = OrderedDict()
        self._pending[seq] = _Pending(item, now + self.timeout, 0)
        return seq

    def ack(self, upto: int) -> list[tuple[int, T]]:
        """Apply a cumulative ack; return the frames it covers, oldest first."""
        if upto >= self._next:
            raise ProtocolError(
                f"link ack {upto} for a frame never sent (next is {self._next})",
                code=im_pb2.BAD_MESSAGE,
                fatal=True,
            )
        done: list[tuple[int, T]] = []
        while self._pending:
            seq = next(iter(self._pending))
            if seq > upto:
                break
            done.append((seq, self._pending.popitem(last=False)[1].item))
        if not self._pending:
            self._pending = _NO_PENDING  # type: ignore[assignment]
        return done

    def release(self, upto: int) -> int:
        """Apply a cumulative ack like :meth:`ack`, returning only how many frames it covered."""
        if upto >= self._next:
            raise ProtocolError(
                f"link ack {upto} for a frame never sent (next is {self._next})",
                code=im_pb2.BAD_MESSAGE,
                fatal=True,
            )
        pending = self._pending
        n = 0
        while pending and next(iter(pending)) <= upto:
            pending.popitem(last=False)
            n += 1
        if not pending:
            self._pending = _NO_PENDING  # type: ignore[assignment]
        return n

    def due(self, now: float) -> list[tuple[int, T]]:
        """Frames whose timer ran out, to resend now; raises once one has used every retry."""
        out: list[tuple[int, T]] = []
        for seq, p in self._pending.items():
            if p.deadline > now:
                continue
            if p.retries >= self.max_retries:
                raise RetryLimitError(f"frame {seq} unacked after {p.retries} retransmits")
            p.retries += 1
            p.deadline = now + self.timeout
            out.append((seq, p.item))
        return out

    @property
    def next_seq(self) -> int:
        return self._next

    def next_deadline(self) -> float | None:
        """When the earliest retransmit timer runs out (None: nothing unacked)."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def take_unacked(self) -> list[T]:
        """Empty the window, returning what the peer never acknowledged, oldest first."""
        items = [p.item for p in self._pending.values()]
        self._pending = _NO_PENDING  # type: ignore[assignment]
        return items


class RecvWindow(Generic[T]):
    """Receiver half: in-order release, duplicate detection, bounded reorder buffer."""

    __slots__ = ("_parked", "capacity", "last")

    def __init__(self, capacity: int = DEFAULT_WINDOW) -> None:
        self.capacity = capacity
        self.last = 0  # highest sequence released in order; the cumulative ack to send
        self._parked: dict[int, T] = _NO_PARKED  # type: ignore[assignment]

    @property
    def parked(self) -> int:
        return len(self._parked)

    def offer(self, seq: int, item: T) -> list[T] | None:
        """Take frame ``seq``: None for a duplicate (re-ack it), else the frames now in order."""
        if seq <= self.last or seq in self._parked:
            return None
        if seq > self.last + self.capacity:
            raise WindowError(f"frame {seq} is beyond the window (last in order {self.last})")
        if seq != self.last + 1:
            if self._parked is _NO_PARKED:
                self._parked = {}
            self._parked[seq] = item
            return []
        out = [item]
        self.last = seq
        parked = self._parked
        if parked:
            # items may be None (a refused frame's place): look them up, don't test them
            while (nxt := parked.pop(self.last + 1, _MISSING)) is not _MISSING:
                out.append(nxt)  # type: ignore[arg-type]
                self.last += 1
            if not parked:
                self._parked = _NO_PARKED  # type: ignore[assignment]
        return out
