"""Per-conversation order at the receiver: surface each sender stream's messages in send order.

Why the receiver and not only the servers: a message can take a longer road than the one sent
after it — held in RabbitMQ until the writer commits it while the next goes live, lost with a
transfer before SENT and resent by its sender seconds later, bounced to the offline store by a
closing session. Each of those keeps the message (G1) but not its place. The sender numbers its
messages to each peer (``stream_seq`` 1, 2, 3, ...) and says, in each, the lowest number it has
not yet seen DELIVERED (``stream_floor``); the receiver then knows what is still on its way.

Rules (sans-IO: time is passed in, nothing here sleeps or sends):
- a stream is (sender, stream id); its messages are released in ``stream_seq`` order;
- a message past a gap is held until the gap fills; the sender's floor moving past a gap ends
  the wait for it (those messages went to another device, or were refused);
- a gap is waited for ``hold`` seconds at most, then skipped and counted: liveness over order
  when a message really is gone (a sender that restarted and lost its outbox);
- the first message of a stream that names earlier undelivered ones is waited on only
  ``first_hold``: they may have gone to another device of ours; so is a gap before a message
  that came out of the offline store (an offline row goes to one device), and then all the
  gaps of that stream are given up together, ``first_hold`` after the first one opened;
- a message below the point already released (it arrives after its gap was skipped) is released
  at once, counted as late: it is not dropped, only out of place;
- bounded: at most ``max_streams`` streams (least recently used forgotten, their held messages
  released) and ``max_held`` held per stream (beyond it the oldest gap is skipped).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# A gap in an established stream is a message the sender still resends (after a reconnect, or
# every few seconds) or that sits in the offline store until a drain: 30 s covers both with room.
DEFAULT_HOLD = 30.0
# At first contact the missing ones may have been delivered to another device of this user.
DEFAULT_FIRST_HOLD = 3.0
DEFAULT_MAX_STREAMS = 10_000
DEFAULT_MAX_HELD = 1_000


@dataclass(slots=True)
class _Stream(Generic[T]):
    next: int  # the stream_seq to release next
    first: bool  # still waiting at first contact
    short: bool = False  # a stored message is waiting: gaps are waited for briefly
    held: dict[int, T] = field(default_factory=dict)
    deadline: float = 0.0  # when the current gap is given up (0: no gap)
    since: float = 0.0  # when the current gap opened


class StreamOrder(Generic[T]):
    """Reorders items of many streams; see the module docstring for the rules."""

    def __init__(
        self,
        hold: float = DEFAULT_HOLD,
        first_hold: float = DEFAULT_FIRST_HOLD,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_held: int = DEFAULT_MAX_HELD,
    ) -> None:
        self.hold = hold
        self.first_hold = first_hold
        self.max_streams = max_streams
        self.max_held = max_held
        self._streams: OrderedDict[Hashable, _Stream[T]] = OrderedDict()
        self._waiting: set[Hashable] = set()  # streams with held items
        self.gaps_skipped = 0
        self.late = 0
        self.reordered = 0  # items that had to wait for an earlier one

    @property
    def held(self) -> int:
        return sum(len(self._streams[k].held) for k in self._waiting)

    def offer(
        self, key: Hashable, seq: int, floor: int, item: T, now: float, *, stored: bool = False
    ) -> list[T]:
        """Take one item (``stored``: it came out of the offline store); return what may be
        surfaced now, in order (possibly nothing)."""
        out: list[T] = []
        st = self._streams.get(key)
        if st is None:
            start = floor if 0 < floor <= seq else seq
            st = _Stream(next=start, first=start < seq)
            self._streams[key] = st
            if len(self._streams) > self.max_streams:
                old_key, old = self._streams.popitem(last=False)
                self._waiting.discard(old_key)
                out.extend(old.held[s] for s in sorted(old.held))
        else:
            self._streams.move_to_end(key)
        before = st.next
        if floor > st.next:
            # the sender has seen DELIVERED for everything below its floor: stop waiting for it
            for s in sorted(s for s in st.held if s < floor):
                out.append(st.held.pop(s))
            st.next = floor
        if seq < st.next:
            self.late += 1
            out.append(item)
        elif seq not in st.held:
            st.held[seq] = item
            if seq != st.next:
                self.reordered += 1
                st.short = st.short or stored
        self._advance(st, out)
        if len(st.held) > self.max_held:
            self._skip(st, out)
        # progress is the stream moving on, not a late item passing through
        self._arm(key, st, now, progressed=st.next != before)
        return out

    def expire(self, now: float) -> list[T]:
        """Skip every gap whose wait ran out; return what that releases, stream by stream."""
        out: list[T] = []
        for key in list(self._waiting):
            st = self._streams[key]
            if st.deadline > now:
                continue
            released: list[T] = []
            self._skip(st, released)
            out.extend(released)
            self._arm(key, st, now, progressed=True)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (None: nothing is held)."""
        return min((self._streams[k].deadline for k in self._waiting), default=None)

    def oldest_gap(self) -> float | None:
        """When the longest-open gap opened (None: no gap): time to ask for a drain?"""
        return min((self._streams[k].since for k in self._waiting), default=None)

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _advance(st: _Stream[T], out: list[T]) -> None:
        while (nxt := st.held.pop(st.next, None)) is not None:
            out.append(nxt)
            st.next += 1

    def _skip(self, st: _Stream[T], out: list[T]) -> None:
        """Give up the current gap: continue from the oldest held item."""
        if not st.held:
            return
        self.gaps_skipped += 1
        st.next = min(st.held)
        self._advance(st, out)

    def _arm(self, key: Hashable, st: _Stream[T], now: float, *, progressed: bool) -> None:
        if not st.held:
            st.deadline = st.since = 0.0
            st.first = st.short = False
            self._waiting.discard(key)
            return
        brief = st.first or st.short
        if key not in self._waiting:
            st.since = now
            self._waiting.add(key)
        elif progressed and not brief:
            st.since = now  # a gap of a live stream moved: wait for the next one afresh
        st.deadline = st.since + (self.first_hold if brief else self.hold)
