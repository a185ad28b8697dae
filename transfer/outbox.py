"""One connector's queue of group fan-out frames, drained on its own, so that a slow or dead
connector link holds back nobody else: not the members on other connectors, not the group's
serial lane, not other conversations.

Why it is built so:
- the group's lane only *offers* frames here (no waiting), and one task per connector sends
  them, waiting on that link's window (its back-pressure). The lane is free as soon as the
  members and their devices are known;
- bounded: at most ``max_frames`` frames and ``max_bytes`` bytes wait per connector. A chat
  whose frames do not fit is not queued: its conversation is *behind* on that connector, and
  only its newest chat is remembered (one per conversation; at most :data:`MAX_BEHIND`
  conversations and :data:`MAX_BEHIND_BYTES` of chats). Later chats of a behind conversation
  replace it instead of queuing, so what a connector gets of one conversation is always in
  seq order;
- drop to catch up: once the queue is down to half, each behind conversation's newest chat is
  queued (to the users the connector holds at that seq). A device that held seq N and gets
  N+k keeps it aside and Syncs N+1.. from its cursor (client/sync.py: a chat past a gap asks
  for the rest), so it surfaces every seq, in order, from the timeline, where every
  committed chat already is. No connector change was needed for this;
- the sender's SENT is not held back by its own conversation being behind: the origin
  connector is offered a frame naming the sender alone, which may use a second allowance of
  ``max_frames`` (past that it is dropped too, and the sender's library resends; the resend
  is a duplicate, answered with SENT at its first seq);
- a behind conversation pushed out past those bounds (the oldest first) is forgotten: its
  devices learn the head by their next listing (every session lists about once a minute) or
  by their next chat there;
- the link gone (closed, or no longer this connector's): everything waiting is dropped; the
  connector has every session list again when it links again, and devices Sync what they lack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from common.link import LinkClosed
from proto import im_pb2

log = logging.getLogger(__name__)

MAX_FRAMES = 1024  # frames waiting per connector
MAX_BYTES = 8 * 1024 * 1024  # bytes of frames waiting per connector
MAX_BEHIND = 10_000  # conversations behind per connector, each one chat
MAX_BEHIND_BYTES = 16 * 1024 * 1024  # bytes of those chats


class FanoutLink(Protocol):
    """What this sends on (common.link.Link)."""

    async def send(self, env: im_pb2.Envelope) -> int: ...


@dataclass(slots=True)
class _Behind:
    body: im_pb2.Fanout  # the newest chat of the conversation not queued
    runs: list[list[str]]  # the users this connector holds at its seq, one run a frame
    size: int  # bytes held for it


def frames(body: im_pb2.Fanout, runs: list[list[str]]) -> list[im_pb2.Envelope]:
    out = []
    for users in runs:
        env = im_pb2.Envelope()
        env.fanout.CopyFrom(body)
        env.fanout.users[:] = users
        out.append(env)
    return out


class ConnectorOutbox:
    """Frames for one connector, in the order offered, sent by a task of its own."""

    def __init__(
        self,
        node: str,
        links: Mapping[str, FanoutLink],
        *,
        max_frames: int = MAX_FRAMES,
        max_bytes: int = MAX_BYTES,
        max_behind: int = MAX_BEHIND,
        max_behind_bytes: int = MAX_BEHIND_BYTES,
    ) -> None:
        self.node = node
        self._links = links
        self._max_frames = max(1, max_frames)
        self._max_bytes = max(1, max_bytes)
        self._max_behind = max(1, max_behind)
        self._max_behind_bytes = max(1, max_behind_bytes)
        self._behind_bytes = 0
        self._queue: deque[tuple[im_pb2.Envelope, int]] = deque()
        self._bytes = 0
        self._behind: OrderedDict[str, _Behind] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        # counters, for tests and logs
        self.sent = 0  # frames the link took
        self.skipped = 0  # chats not queued: their conversation fell or stayed behind
        self.caught_up = 0  # newest chats queued for a behind conversation
        self.forgotten = 0  # behind conversations pushed out past the bounds
        self.lost = 0  # frames dropped with the link

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def behind_bytes(self) -> int:
        return self._behind_bytes

    @property
    def idle(self) -> bool:
        return not self._queue and not self._behind

    def behind(self, conv_id: str) -> int:
        """The seq of the newest chat held back for ``conv_id`` (0: none)."""
        held = self._behind.get(conv_id)
        return held.body.chat.seq if held is not None else 0

    def offer(self, body: im_pb2.Fanout, runs: list[list[str]], sender: str = "") -> None:
        """Queue ``body`` naming ``runs`` (one frame each) if it fits and its conversation is
        not behind; else hold it as that conversation's newest, and queue a frame naming
        ``sender`` alone (the origin's: its SENT) if the second allowance has room."""
        conv_id = body.chat.conv_id
        if conv_id not in self._behind:
            envs = frames(body, runs)
            if self._fits(envs, 1):
                self._put(envs)
                self._kick()
                return
        self.skipped += 1
        if not self._behind:
            log.warning(
                "connector %s takes group fanouts slower than they come (%d frames waiting):"
                " its conversations get their newest chat, its devices Sync the rest",
                self.node,
                len(self._queue),
            )
        self._hold(conv_id, body, runs)
        if sender:
            sent = frames(body, [[sender]])
            if self._fits(sent, 2):
                self._put(sent)
        self._kick()

    def _fits(self, envs: list[im_pb2.Envelope], allowance: int) -> bool:
        if not self._queue:
            return True  # one chat's frames always go: the queue moves on
        size = sum(e.ByteSize() for e in envs)
        return (
            len(self._queue) + len(envs) <= allowance * self._max_frames
            and self._bytes + size <= allowance * self._max_bytes
        )

    def _put(self, envs: list[im_pb2.Envelope]) -> None:
        for env in envs:
            size = env.ByteSize()
            self._queue.append((env, size))
            self._bytes += size

    def _hold(self, conv_id: str, body: im_pb2.Fanout, runs: list[list[str]]) -> None:
        held = self._behind.get(conv_id)
        if held is not None and held.body.chat.seq > body.chat.seq:
            return  # a resend's duplicate of an older chat: the newer one stands
        if held is not None:
            self._behind_bytes -= held.size
        size = body.ByteSize() + sum(len(u) + 3 for run in runs for u in run)
        self._behind[conv_id] = _Behind(body, runs, size)
        self._behind.move_to_end(conv_id)
        self._behind_bytes += size
        while len(self._behind) > 1 and (
            len(self._behind) > self._max_behind or self._behind_bytes > self._max_behind_bytes
        ):
            _, old = self._behind.popitem(last=False)
            self._behind_bytes -= old.size
            self.forgotten += 1

    def _catch_up(self) -> None:
        """Queue behind conversations' newest chats while the queue is at most half full."""
        while self._behind:
            if self._queue and (
                len(self._queue) > self._max_frames // 2 or self._bytes > self._max_bytes // 2
            ):
                return
            _, held = self._behind.popitem(last=False)
            self._behind_bytes -= held.size
            self._put(frames(held.body, held.runs))
            self.caught_up += 1

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=f"group fanout to {self.node}")

    async def _drain(self) -> None:
        while True:
            if not self._queue:
                self._catch_up()
                if not self._queue:
                    return
            link = self._links.get(self.node)
            if link is None:
                self._drop("unlinked")
                return
            env, size = self._queue[0]
            try:
                await link.send(env)
            except LinkClosed:
                self._drop("link closed")
                return
            except Exception:
                log.exception("group fanout to connector %s failed", self.node)
                self._drop("failed")
                return
            self._queue.popleft()
            self._bytes -= size
            self.sent += 1
            if self._behind:
                self._catch_up()

    def _drop(self, why: str) -> None:
        if self._queue or self._behind:
            log.info(
                "connector %s %s: %d group frames and %d behind conversations dropped (it lists"
                " again when it links)",
                self.node,
                why,
                len(self._queue),
                len(self._behind),
            )
        self.lost += len(self._queue)
        self._queue.clear()
        self._bytes = 0
        self._behind.clear()
        self._behind_bytes = 0

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop("closing")
