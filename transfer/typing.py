"""Typing, at the transfer: from the connector of the typing device to the connectors of the
devices that should show it, and nowhere else; nothing stored, nothing retried.

- a pair conversation's typing goes to the other user's devices; a group's to the members
  whose span is open now, minus the typist, and only in groups of at most
  :data:`MAX_GROUP_TYPING` members (in a bigger group "who is typing" is noise, and one
  keystroke would fan out to every member's connector): beyond it, typing is dropped
  (``dropped_big``). Members come from the timeline's spans (the store's ``members_snapshot``)
  through a cache of :data:`MEMBERS_TTL` seconds, at most :data:`MEMBERS_GROUPS` groups; a
  member who left within that second may still see a typing hint, never a message;
- it runs beside the chats, not in their per-conversation order (a hint has no place in the
  timeline), in at most :data:`IN_FLIGHT` tasks at once: beyond, typing is dropped
  (``dropped_busy``), never queued, because a late one is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from common.convid import GROUP, parse_conv_id
from common.errors import IMError
from proto import im_pb2
from timeline.groupsql import MemberSnapshot

log = logging.getLogger(__name__)

MAX_GROUP_TYPING = 100  # open members a group may have for its typing to be relayed
MEMBERS_TTL = 1.0
MEMBERS_GROUPS = 1000
IN_FLIGHT = 1000

FanOut = Callable[[list[str], im_pb2.Fanout], Awaitable[object]]


class SpanView(Protocol):
    """The read this needs of the timeline store (timeline.store.TimelineStore)."""

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None: ...


class TypingRouter:
    """One per transfer."""

    def __init__(self, view: SpanView, fan_out: FanOut) -> None:
        self._view = view
        self._fan_out = fan_out
        self._members: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.routed = 0
        self.dropped_big = 0
        self.dropped_busy = 0

    def take(self, typing: im_pb2.Typing) -> None:
        """A connector's typing (its user filled in by that connector): route it soon."""
        if len(self._tasks) >= IN_FLIGHT:
            self.dropped_busy += 1
            return
        task = asyncio.create_task(self._route(typing), name=f"typing {typing.user_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(self, typing: im_pb2.Typing) -> None:
        try:
            ref = parse_conv_id(typing.conv_id)
            if ref.dest_type == GROUP:
                members = await self._open_members(typing.conv_id)
                if typing.user_id not in members:
                    return  # the connector's check was a second old: no longer a member
                if len(members) > MAX_GROUP_TYPING:
                    self.dropped_big += 1
                    return
                users = [u for u in members if u != typing.user_id]
            else:
                users = [ref.peer_of(typing.user_id)]
            if users:
                await self._fan_out(users, im_pb2.Fanout(typing=typing))
                self.routed += 1
        except ValueError as exc:
            log.warning("typing of %s dropped: %s", typing.user_id, exc)
        except IMError as exc:
            log.info("typing of %s in %s lost: %s", typing.user_id, typing.conv_id, exc)

    async def _open_members(self, conv_id: str) -> tuple[str, ...]:
        now = time.monotonic()
        held = self._members.get(conv_id)
        if held is not None and held[0] > now:
            self._members.move_to_end(conv_id)
            return held[1]
        snap = await self._view.members_snapshot(conv_id)
        members: tuple[str, ...] = ()
        if snap is not None:
            members = tuple(
                sorted(u for u, spans in snap.spans.items() if any(s.to_seq == 0 for s in spans))
            )
        self._members[conv_id] = (now + MEMBERS_TTL, members)
        self._members.move_to_end(conv_id)
        while len(self._members) > MEMBERS_GROUPS:
            self._members.popitem(last=False)
        return members

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
