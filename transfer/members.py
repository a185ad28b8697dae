"""Who is in a group at a given seq, for the transfer's fan-out: a cache that is exact by
construction, not by expiry.

A group's membership changes only by SYSTEM events in its own timeline (REST appends them,
timeline/groupsql.py), each at a seq of its own. So the members at seq ``s`` are exactly the
users whose spans cover ``s``, and a snapshot of (head H, every span) read in one consistent
read (timeline/groupsql.py ``members_snapshot``) answers every ``s <= H`` for good: spans
only ever close at a seq past the head they were read at, never before it. A chat at
``H + 1`` is the next seq after the snapshot: nothing else (no membership event) happened in
between, so it is answered from the snapshot too and H moves to it. One conversation's
fan-outs run in seq order on one transfer (transfer/serial.py), which is what makes
``H + 1`` mean "the very next thing". Any other seq past H (a gap: a membership event, or
chats another transfer committed while it had the conversation) reloads the snapshot.

Above the snapshot's own head the answer is always the same: the users with an open span. It
is kept sorted, so the common case (the next chat) costs no scan of the spans.

Bounded and not thrashing:
- at most ``max_groups`` groups and ``max_spans`` spans in all, least recently used out
  first;
- a group's spans are kept whole when they take at most ``max_spans // 8``. A larger group
  (a long history of joins and leaves) keeps only the spans that reach the seq it was loaded
  for (its *floor*): the open ones and those closed since, about its member count. Seqs below
  the floor (a resend's duplicate of an old chat) are answered from a fresh read that replaces
  nothing. So a big group is read once per membership change, never once per message;
- a group whose kept spans alone exceed ``max_spans`` is answered and not kept: the transfer
  sizes ``max_spans`` from ``IM_GROUP_MAX_SIZE`` so that a group of the allowed size fits.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from timeline.groupsql import MemberSnapshot

log = logging.getLogger(__name__)

MAX_GROUPS = 1_000
MAX_SPANS = 200_000
SPANS_PER_ALLOWED_MEMBER = 2  # the budget is at least this many spans per IM_GROUP_MAX_SIZE
WHOLE_SHARE = 8  # a group kept whole takes at most 1/8 of the span budget

Spans = tuple[tuple[int, int], ...]  # (from, to) ascending, to 0: open


def span_budget(group_max_size: int) -> int:
    """The span budget of a transfer whose groups hold at most ``group_max_size`` members: a
    full group (kept from its floor: about one span per member) takes at most half of it."""
    return max(MAX_SPANS, SPANS_PER_ALLOWED_MEMBER * group_max_size)


class GroupView(Protocol):
    """The read this needs of the timeline store (timeline.store.TimelineStore)."""

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None: ...


def _covers(spans: Spans, seq: int) -> bool:
    return any(f <= seq and (t == 0 or seq <= t) for f, t in spans)


@dataclass(slots=True)
class _Group:
    floor: int  # the lowest seq answered (0: every seq up to head)
    loaded: int  # the snapshot's head: above it, the members are exactly ``current``
    head: int  # exact up to here (moves on by H + 1)
    spans: dict[str, Spans]
    current: list[str]  # users with an open span, sorted
    size: int  # spans held

    def members(self, seq: int) -> list[str]:
        if seq > self.loaded:
            return list(self.current)
        return sorted(u for u, spans in self.spans.items() if _covers(spans, seq))


def _build(snap: MemberSnapshot, floor: int) -> _Group:
    """The snapshot as cached, keeping only the spans that reach ``floor``."""
    spans: dict[str, Spans] = {}
    size = 0
    for user, held in snap.spans.items():
        kept = tuple((s.from_seq, s.to_seq) for s in held if s.to_seq == 0 or s.to_seq >= floor)
        if kept:
            spans[user] = kept
            size += len(kept)
    current = sorted(u for u, v in spans.items() if v[-1][1] == 0)
    return _Group(floor, snap.head, snap.head, spans, current, size)


class MemberCache:
    """Members of groups at a seq, from snapshots of the timeline's spans."""

    def __init__(
        self, view: GroupView, *, max_groups: int = MAX_GROUPS, max_spans: int = MAX_SPANS
    ) -> None:
        self._view = view
        self._max_groups = max(1, max_groups)
        self._max_spans = max(1, max_spans)
        self._whole = max(1, self._max_spans // WHOLE_SHARE)
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._spans = 0
        self.loads = 0  # snapshots read (for tests and logs)
        self.uncached = 0  # snapshots read that were too big to keep

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def spans_held(self) -> int:
        return self._spans

    @property
    def max_spans(self) -> int:
        return self._max_spans

    def head(self, conv_id: str) -> int | None:
        """The seq the cached snapshot of ``conv_id`` is exact up to (None: not cached)."""
        group = self._groups.get(conv_id)
        return None if group is None else group.head

    def floor(self, conv_id: str) -> int | None:
        """The lowest seq the cached snapshot answers (0: all; None: not cached)."""
        group = self._groups.get(conv_id)
        return None if group is None else group.floor

    async def members_at(self, conv_id: str, seq: int) -> list[str]:
        """The users whose spans cover ``seq`` (a committed seq of the group), sorted."""
        group = self._groups.get(conv_id)
        if group is not None and group.floor <= seq <= group.head + 1:
            group.head = max(group.head, seq)
            self._groups.move_to_end(conv_id)
            return group.members(seq)
        if group is not None and seq < group.floor:
            return await self._read_through(conv_id, seq)
        loaded = await self._load(conv_id, seq)
        return [] if loaded is None else loaded.members(seq)

    def forget(self, conv_id: str) -> None:
        group = self._groups.pop(conv_id, None)
        if group is not None:
            self._spans -= group.size

    async def _read_through(self, conv_id: str, seq: int) -> list[str]:
        """An old seq of a group kept from a floor above it: read, answer, keep nothing."""
        self.loads += 1
        snap = await self._view.members_snapshot(conv_id)
        if snap is None:
            return []
        return sorted(u for u, v in snap.spans.items() if any(s.covers(seq) for s in v))

    async def _load(self, conv_id: str, seq: int) -> _Group | None:
        self.loads += 1
        snap = await self._view.members_snapshot(conv_id)
        self.forget(conv_id)
        if snap is None:
            return None
        total = sum(len(v) for v in snap.spans.values())
        group = _build(snap, 0 if total <= self._whole else seq)
        if group.size > self._max_spans:
            self.uncached += 1
            if self.uncached % 1000 == 1:
                log.warning(
                    "group %s: %d spans at its members' seqs, over the cache's %d: read for"
                    " every fan-out (the budget is sized from IM_GROUP_MAX_SIZE)",
                    conv_id,
                    group.size,
                    self._max_spans,
                )
            return group  # too big to keep: answered, not cached
        self._groups[conv_id] = group
        self._spans += group.size
        while len(self._groups) > self._max_groups or self._spans > self._max_spans:
            _, old = self._groups.popitem(last=False)
            self._spans -= old.size
        return group
