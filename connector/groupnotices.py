"""Membership notices, as a connector acts on them: the members here (and whoever just left)
are pushed the group's ConvState with the head they may see, and their devices Sync it.

REST publishes ``(conv_id, seq)`` after each membership change (user_status/groupnotice.py).
For each, one read of the group's spans (``members_snapshot``) says who is in it; every user
with a session here whose span is open, or closed at or after that seq (the leaver, so their
devices learn the removal), gets a ConvState: ``last_seq`` the head they may see (a leaver's
stops at their span's end), ``min_seq`` their first span's start, and ``head_only`` set:
cursors are not in a notice (reading every member's would cost a query per member), and the
flag tells the device so: it keeps its own instead of taking the zeros for a server that is
behind and sending its cursors again (from every member's device at once: a storm in a big
group). The next listing has them. Bounded: notices that arrive while one is being read
wait coalesced, one per group, at most :data:`PENDING`; past that the oldest are dropped
(those devices learn the change by their next listing, within a minute).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from common.convid import parse_conv_id
from common.errors import IMError
from proto import im_pb2
from timeline.groupsql import MemberSnapshot
from user_status.groupnotice import GroupNoticeBus

log = logging.getLogger(__name__)

PENDING = 10_000  # groups with a notice waiting to be read


class SnapshotReader(Protocol):
    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None: ...


class StatePush(Protocol):
    """A session here (connector.clientsession.ClientSession)."""

    def push_state(self, state: im_pb2.ConvState) -> None: ...


def states_for(
    conv_id: str, seq: int, snap: MemberSnapshot, local: Iterable[str]
) -> dict[str, im_pb2.ConvState]:
    """The ConvState each of the ``local`` users should be told after the event at ``seq``."""
    group_id = parse_conv_id(conv_id).group_id
    out: dict[str, im_pb2.ConvState] = {}
    for user in local:
        spans = snap.spans.get(user)
        if not spans:
            continue
        last = spans[-1].to_seq
        if last and last < seq:
            continue  # left before this event: it is none of theirs
        out[user] = im_pb2.ConvState(
            conv_id=conv_id,
            type=im_pb2.GROUP,
            peer_id=group_id,
            last_seq=min(snap.head, last) if last else snap.head,
            min_seq=spans[0].from_seq,
            head_only=True,
        )
    return out


class NoticeFollower:
    """Follows a bus and pushes to the sessions ``sessions_of`` names."""

    def __init__(
        self,
        bus: GroupNoticeBus,
        reader: SnapshotReader,
        sessions_of: Callable[[str], Sequence[StatePush]],
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._on_change = on_change  # told each group a notice names, as it comes
        self._bus = bus
        self._reader = reader
        self._sessions_of = sessions_of
        self._pending: OrderedDict[str, int] = OrderedDict()
        self._wake = asyncio.Event()
        self.pushed = 0  # ConvStates pushed (for tests and logs)
        self.dropped = 0  # notices dropped past PENDING

    def note(self, conv_id: str, seq: int) -> None:
        if self._on_change is not None:
            self._on_change(conv_id)
        # the earliest seq of the waiting changes: a user whose span ended at an earlier one
        # (removed, then someone joined) is still told
        held = self._pending.get(conv_id)
        self._pending[conv_id] = seq if held is None else min(seq, held)
        while len(self._pending) > PENDING:
            self._pending.popitem(last=False)
            self.dropped += 1
        self._wake.set()

    async def run(self) -> None:
        """Follow and act until cancelled."""
        worker = asyncio.create_task(self._work(), name="group notices")
        try:
            async for notice in self._bus.follow():
                if notice is not None:
                    self.note(notice.conv_id, notice.seq)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            conv_id, seq = self._pending.popitem(last=False)
            try:
                await self.act(conv_id, seq)
            except IMError as exc:
                log.warning("group notice of %s not acted on: %s", conv_id, exc)

    async def act(self, conv_id: str, seq: int) -> None:
        snap = await self._reader.members_snapshot(conv_id)
        if snap is None:
            return
        here = {u: s for u in snap.spans if (s := self._sessions_of(u))}
        for user, state in states_for(conv_id, seq, snap, here).items():
            for session in here[user]:
                session.push_state(state)
                self.pushed += 1
