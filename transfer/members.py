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
``H + 1`` mean "the very next thing". Any other seq (a gap: a membership event, or chats
another transfer committed while it had the conversation) reloads the snapshot.

Bounded: at most ``max_groups`` groups and ``max_spans`` spans in all, least recently used
out first; a group larger than the whole budget is never kept (read each time).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from timeline.groupsql import MemberSnapshot

MAX_GROUPS = 1_000
MAX_SPANS = 200_000


class GroupView(Protocol):
    """The read this needs of the timeline store (timeline.store.TimelineStore)."""

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None: ...


@dataclass(slots=True)
class _Group:
    head: int
    spans: dict[str, tuple[tuple[int, int], ...]]  # user -> (from, to) ascending, to 0: open
    size: int  # spans held


def _covers(spans: tuple[tuple[int, int], ...], seq: int) -> bool:
    return any(f <= seq and (t == 0 or seq <= t) for f, t in spans)


class MemberCache:
    """Members of groups at a seq, from snapshots of the timeline's spans."""

    def __init__(
        self, view: GroupView, *, max_groups: int = MAX_GROUPS, max_spans: int = MAX_SPANS
    ) -> None:
        self._view = view
        self._max_groups = max(1, max_groups)
        self._max_spans = max(1, max_spans)
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._spans = 0
        self.loads = 0  # snapshots read (for tests and logs)

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def spans_held(self) -> int:
        return self._spans

    def head(self, conv_id: str) -> int | None:
        """The seq the cached snapshot of ``conv_id`` is exact up to (None: not cached)."""
        group = self._groups.get(conv_id)
        return None if group is None else group.head

    async def members_at(self, conv_id: str, seq: int) -> list[str]:
        """The users whose spans cover ``seq`` (a committed seq of the group), sorted."""
        group = self._groups.get(conv_id)
        if group is not None and seq <= group.head + 1:
            group.head = max(group.head, seq)
            self._groups.move_to_end(conv_id)
        else:
            group = await self._load(conv_id)
            if group is None:
                return []
        return sorted(u for u, spans in group.spans.items() if _covers(spans, seq))

    def forget(self, conv_id: str) -> None:
        group = self._groups.pop(conv_id, None)
        if group is not None:
            self._spans -= group.size

    async def _load(self, conv_id: str) -> _Group | None:
        self.loads += 1
        snap = await self._view.members_snapshot(conv_id)
        self.forget(conv_id)
        if snap is None:
            return None
        spans = {u: tuple((s.from_seq, s.to_seq) for s in v) for u, v in snap.spans.items()}
        group = _Group(snap.head, spans, sum(len(v) for v in spans.values()))
        if group.size > self._max_spans:
            return group  # too big to keep: answered, not cached
        self._groups[conv_id] = group
        self._spans += group.size
        while len(self._groups) > self._max_groups or self._spans > self._max_spans:
            _, old = self._groups.popitem(last=False)
            self._spans -= old.size
        return group
