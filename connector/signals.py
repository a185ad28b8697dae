"""Typing and presence at the connector: signals that are never stored.

Typing (the rules are pure, :class:`TypingLimiter`; the session calls them):
- a client's ``Typing{conv_id, typing}`` is a control frame (seq 0: never windowed, never
  retransmitted, never in a timeline). Its ``user_id`` is the session's: empty or the same, else
  SPOOFED_SENDER; ``conv_id`` must be a pair conversation of the user or a group id (else
  NOT_MEMBER). The friendship (NOT_FRIEND) and the group's open span and mute (NOT_MEMBER,
  MUTED) are checked by the connector like a chat's (connector/server.py), with the same caches;
- per session, a start in one conversation is let through at most :data:`CONV_BURST` at once
  and :data:`CONV_RATE` a second after that, and starts across all conversations at most
  :data:`SESSION_BURST` / :data:`SESSION_RATE`. Excess starts are dropped without an ERROR
  (a typing notice is a hint, the next keystroke repeats it; the webapp sends one every 3 s at
  most) and counted (``TYPING_DROPPED``). A stop goes through only while this session's start
  in that conversation is live, so stops are never more than starts;
- a start lasts :data:`TYPING_TTL` (6) seconds at the receiver unless repeated
  (proto/im.proto); when a session closes with starts still live, the connector sends their
  stops itself;
- it goes connector -> transfer (control frame) -> ``Fanout{typing}`` to the connectors of the
  other side's devices (transfer/server.py), never to the sender's own devices, and from there
  to the devices as a control frame again.

Presence (:class:`PresenceShell`): user_status/presence.py decides and publishes; this follows
the bus and pushes each change to the devices here of the users it names, works out changes
after devices come and go here (one worker, coalescing a user's repeats), and sends a device
that just came online its friends' presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from common.convid import GROUP, parse_conv_id
from common.errors import IMError, ProtocolError
from proto import im_pb2
from user_status.presence import Change, Presence

log = logging.getLogger(__name__)

TYPING_TTL = 6.0  # seconds a start lasts unless repeated (proto/im.proto Typing)
CONV_RATE = 1.0  # starts per second per conversation, after the burst
CONV_BURST = 3
SESSION_RATE = 5.0  # starts per second across a session's conversations
SESSION_BURST = 10
TYPING_CONVS = 32  # conversations whose typing state a session keeps (least recent out)
PENDING_USERS = 10_000  # users waiting for their presence to be worked out, per connector
SNAPSHOTS = 8  # GREET presence snapshots read at once
SNAPSHOT_MAX = 1000  # friends' presence sent to a device at GREET at most


def check_typing(user_id: str, typing: im_pb2.Typing) -> im_pb2.Typing:
    """A client's typing, as it goes on (``user_id`` the session's); raises what it deserves."""
    if typing.user_id and typing.user_id != user_id:
        raise ProtocolError(
            f"typing of {typing.user_id[:64]!r} is not yours", code=im_pb2.SPOOFED_SENDER
        )
    try:
        ref = parse_conv_id(typing.conv_id)
    except ValueError:
        raise ProtocolError(
            f"not a conversation id: {typing.conv_id[:80]!r}", code=im_pb2.NOT_MEMBER
        ) from None
    if ref.dest_type != GROUP and user_id not in ref.members:
        raise ProtocolError(f"you are not in {typing.conv_id}", code=im_pb2.NOT_MEMBER)
    return im_pb2.Typing(conv_id=typing.conv_id, user_id=user_id, typing=typing.typing)


@dataclass(slots=True)
class _Conv:
    tokens: float
    stamp: float
    live_until: float = 0.0  # a start went through and lasts until then (0: none live)


class TypingLimiter:
    """One session's typing rate and its live starts; time is passed in."""

    __slots__ = ("_convs", "_stamp", "_tokens", "dropped")

    def __init__(self, now: float) -> None:
        self._convs: OrderedDict[str, _Conv] = OrderedDict()
        self._tokens = float(SESSION_BURST)
        self._stamp = now
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._convs)

    def admit(self, conv_id: str, typing: bool, now: float) -> bool:
        """Whether this start or stop goes on."""
        conv = self._convs.get(conv_id)
        if not typing:
            if conv is None or conv.live_until <= now:
                return False
            conv.live_until = 0.0
            return True
        if conv is None:
            conv = _Conv(float(CONV_BURST), now)
            self._convs[conv_id] = conv
            while len(self._convs) > TYPING_CONVS:
                self._convs.popitem(last=False)
        self._convs.move_to_end(conv_id)
        conv.tokens = min(CONV_BURST, conv.tokens + max(0.0, now - conv.stamp) * CONV_RATE)
        conv.stamp = now
        self._tokens = min(SESSION_BURST, self._tokens + max(0.0, now - self._stamp) * SESSION_RATE)
        self._stamp = now
        if conv.tokens < 1 or self._tokens < 1:
            self.dropped += 1
            return False
        conv.tokens -= 1
        self._tokens -= 1
        conv.live_until = now + TYPING_TTL
        return True

    def live(self, now: float) -> list[str]:
        """Conversations where a start of this session still lasts (their stops are due when
        the session ends)."""
        return [c for c, s in self._convs.items() if s.live_until > now]


# -- presence ------------------------------------------------------------------------------------


def presence_frame(user_id: str, online: bool, last_seen: int) -> im_pb2.Fanout:
    state = im_pb2.ONLINE if online else im_pb2.OFFLINE
    p = im_pb2.Presence(user_id=user_id, state=state, last_seen=0 if online else last_seen)
    return im_pb2.Fanout(users=[], presence=p)


class PresenceSession(Protocol):
    """What the shell needs of a session (connector.clientsession.ClientSession)."""

    @property
    def user_id(self) -> str: ...

    def deliver(self, fanout: im_pb2.Fanout) -> bool: ...


class PresenceShell:
    """The connector's side of presence."""

    def __init__(
        self,
        presence: Presence,
        sessions_of: Callable[[str], Sequence[PresenceSession]],
        spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None,
    ) -> None:
        """``spawn`` runs the snapshot readers (the connector's, so that its stop ends them)."""
        self.presence = presence
        self._sessions_of = sessions_of
        self._spawn = spawn if spawn is not None else self._own_task
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        # devices waiting for their friends' presence, and the readers (at most SNAPSHOTS)
        # that work through them in order: a waiting device is a place in this queue, not a
        # task of its own, since thousands come at once when a connector restarts
        self._greets: deque[PresenceSession] = deque()
        self._readers = 0
        self._idle = asyncio.Event()  # nothing pending, nothing being worked out
        self._idle.set()
        self.pushed = 0  # presence frames handed to sessions (for tests and logs)
        self.lost = 0  # users whose change was not worked out (queue full, backend down)

    def moved(self, user_id: str) -> None:
        """A device of ``user_id`` came or went here: work its presence out soon."""
        if user_id in self._pending:
            return
        if len(self._pending) >= PENDING_USERS:
            self._pending.popitem(last=False)
            self.lost += 1
        self._pending[user_id] = None
        self._idle.clear()
        self._wake.set()

    async def work(self) -> None:
        """Forever: the users that moved, one at a time, in the order they first moved."""
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            user, _ = self._pending.popitem(last=False)
            try:
                await self.presence.changed(user)
            except IMError as exc:
                self.lost += 1
                log.warning("presence of %s not worked out: %s", user, exc)

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for the users that moved to be worked out: a stopping
        connector's sessions going offline are told before the worker is cancelled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def follow(self) -> None:
        """Forever: changes published anywhere, to the devices here of the users named."""
        async for change in self.presence.follow():
            self.push(change)

    def push(self, change: Change) -> None:
        frame = presence_frame(change.user_id, change.online, change.last_seen)
        for user in dict.fromkeys(change.audience):
            if user == change.user_id:
                continue
            for s in self._sessions_of(user):
                s.deliver(frame)
                self.pushed += 1

    def greet(self, session: PresenceSession) -> None:
        """A device came online: its friends' presence (soon: at most :data:`SNAPSHOTS` are
        read at once, in the order the devices came), then (the worker) its own to them."""
        self._greets.append(session)
        if self._readers < SNAPSHOTS:
            self._readers += 1
            self._spawn(self._read_snapshots())

    async def _read_snapshots(self) -> None:
        try:
            while self._greets:
                session = self._greets.popleft()
                try:
                    await self._snapshot(session)
                except Exception:  # a bug here must not leave the devices behind it waiting
                    log.exception("presence of %s's friends not sent", session.user_id)
        finally:
            self._readers -= 1

    def _own_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _snapshot(self, session: PresenceSession) -> None:
        try:
            seen = await self.presence.of_friends(session.user_id)
        except IMError as exc:
            log.warning("presence of %s's friends not sent: %s", session.user_id, exc)
            return
        for s in seen[:SNAPSHOT_MAX]:
            session.deliver(presence_frame(s.user_id, s.online, s.last_seen))
            self.pushed += 1
