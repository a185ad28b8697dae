"""Live "read by N of M" for group messages: GroupReceipt pushes to the senders.

A group has no receipt per member per message; a message's counts are derived from the members'
cursors (timeline/groupsql.py, ``receipts``). When a member's cursor moves, the counts of the
messages up to it may change, so their senders are told, but not once per cursor:

- a moved cursor only marks its group (up to its seq, with the member as the reader whose page
  is read); a group marked again before its turn just raises the mark, so a flood of cursors
  costs one turn;
- a group's turns are at least ``every`` seconds apart, longer for big groups (one turn reads
  every member's cursor: a 10 000-member group gets one turn in 5 s), and one task serves all
  groups, one at a time;
- a turn reads the last ``window`` messages up to the mark, counts them in one read of the
  cursors and pushes each its GroupReceipt (to its sender's devices); older messages keep the
  counts they were last told, and REST (``GET /groups/{id}/messages/{seq}/receipts``) is exact
  for any of them;
- marks are bounded (``max_groups``): past that, the newest marks are dropped and counted (a
  lost push costs a live update, never a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from common.errors import IMError
from proto import im_pb2
from timeline.groupsql import system_sender
from timeline.model import Entry, parse_conv_id

log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between two turns of one group, at least
MEMBERS_PER_SECOND = 2000  # a turn reads every cursor: a big group's turns are further apart
WINDOW = 20  # the latest messages a turn tells
MAX_GROUPS = 10_000  # groups marked at once


class ReceiptView(Protocol):
    """What this needs of the timeline store."""

    async def page(
        self,
        conv_id: str,
        *,
        after: int = 0,
        before: int = 0,
        limit: int,
        reader: str | None = None,
    ) -> list[Entry]: ...

    async def receipt_counts(
        self, conv_id: str, messages: Sequence[tuple[int, str]]
    ) -> list[tuple[int, int, int]]: ...


Push = Callable[[list[str], im_pb2.Fanout], Awaitable[object]]


class GroupReceipts:
    def __init__(
        self,
        view: ReceiptView,
        push: Push,
        *,
        every: float = EVERY,
        window: int = WINDOW,
        max_groups: int = MAX_GROUPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._push = push
        self._every = every
        self._window = window
        self._max = max_groups
        self._clock = clock
        self._marks: dict[str, tuple[int, str]] = {}  # conv -> (highest seq, a member)
        self._next: dict[str, float] = {}  # conv -> earliest next turn (bounded with marks)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.pushed = 0
        self.dropped = 0

    def moved(self, conv_id: str, user_id: str, seq: int) -> None:
        """A member's cursor in ``conv_id`` moved up to ``seq``."""
        if self._closed:
            return
        mark = self._marks.get(conv_id)
        if mark is not None:
            if seq > mark[0]:
                self._marks[conv_id] = (seq, user_id)
        elif len(self._marks) >= self._max:
            self.dropped += 1
            return
        else:
            self._marks[conv_id] = (seq, user_id)
            self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="group receipts")

    async def _run(self) -> None:
        while self._marks:
            now = self._clock()
            ready = [c for c in self._marks if self._next.get(c, 0.0) <= now]
            if not ready:
                self._wake.clear()
                wait = min(self._next.get(c, now) for c in self._marks) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))
                continue
            for conv_id in ready:
                seq, reader = self._marks.pop(conv_id)
                try:
                    members = await self._turn(conv_id, seq, reader)
                except Exception:  # one group's turn must not end every group's pushes
                    log.exception("group receipts of %s failed", conv_id)
                    members = 0
                pause = max(self._every, members / MEMBERS_PER_SECOND)
                self._next[conv_id] = self._clock() + pause
            # forget the pacing of groups with nothing marked whose pause is over
            now = self._clock()
            for conv_id in [c for c, t in self._next.items() if t <= now and c not in self._marks]:
                del self._next[conv_id]

    async def _turn(self, conv_id: str, seq: int, reader: str) -> int:
        """Tell the latest messages' senders their counts; how many members were counted."""
        try:
            entries = await self._view.page(
                conv_id, before=seq + 1, limit=self._window, reader=reader
            )
            system = system_sender(parse_conv_id(conv_id).group_id)  # its own events
            messages = [(e.seq, e.sender) for e in entries if e.sender != system]
            counts = await self._view.receipt_counts(conv_id, messages) if messages else []
        except (IMError, ValueError) as exc:
            log.warning("group receipts of %s skipped: %s", conv_id, exc)
            return 0
        for (at, sender), (members, read, delivered) in zip(messages, counts, strict=True):
            body = im_pb2.GroupReceipt(
                conv_id=conv_id, seq=at, members=members, delivered=delivered, read=read
            )
            try:
                await self._push([sender], im_pb2.Fanout(group_receipt=body))
            except IMError as exc:
                log.warning("group receipt to %s lost: %s", sender, exc)
                continue
            self.pushed += 1
        return max((m for m, _, _ in counts), default=0)

    async def close(self) -> None:
        self._closed = True  # a cursor merge that ends after this starts nothing
        self._marks.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
