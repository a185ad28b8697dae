"""The asyncio shell of a client session: carries out what connector/session.py decides.

It is the link's handler. What it keeps bounded (a slow or hostile device never makes the
connector hold more for it than this):

- one outbox for every frame to the device (chats, SENT acks, cursors, listings, sync pages),
  emptied into the link's window by a pump task that runs only while the outbox holds
  something (one at a time, so frames go out in the order they were queued, each waiting for
  window room as before). Live pushes may fill it to
  ``session_queue``; past that the device is too slow and is closed (WINDOW_FULL): its next
  session lists and Syncs what it missed. Listings and sync answers are produced only while the
  outbox is under half of that, so they wait for a slow device instead of closing it;
- at most :data:`connector.session.MAX_SYNCS` syncs run at once (the rules refuse more);
- nothing is handed back on close: every chat is in its timeline, the device catches up by seq.

An idle session is most of what a connection costs the connector, so it holds no task, no
Event, no set and no queue storage while there is nothing to do: they are made when needed and
dropped when empty, and the periodic listing waits on one shared timer (connector/refresh.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from common import metrics
from common.config import Settings
from common.errors import IMError, ProtocolError
from common.link import LinkClosed
from common.log import log_context
from common.tokens import Claims, TokenSigner
from connector import catchup
from connector.catchup import GroupReader, TimelineReader
from connector.incommit import CHAT_IN
from connector.refresh import RefreshWheel
from connector.rules import State, SyncRange
from connector.session import (
    Admit,
    Close,
    Effect,
    Forward,
    ForwardChat,
    Limits,
    Push,
    Register,
    ScheduleRefresh,
    ScheduleRelist,
    SendControl,
    SendError,
    SessionRules,
    StartListing,
    StartSync,
)
from proto import im_pb2

log = logging.getLogger(__name__)

Out = im_pb2.Envelope | bytes  # bytes: a stored chat, sent as the body of a chat frame


@dataclass
class Counters:
    """What happened, for logs and tests; each breach of the protocol counts once."""

    connections: int = 0
    sessions: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    delivered: int = 0  # chats handed to devices' links (live and synced)
    refused: int = 0  # chats the writer refused (ID_REUSED), told to their sending device

    def error(self, code_name: str) -> None:
        self.errors[code_name] = self.errors.get(code_name, 0) + 1


class ClientLink(Protocol):
    """What a session uses of its link (common.link.Link)."""

    name: str
    authenticated: bool

    @property
    def closing(self) -> bool: ...

    @property
    def close_error(self) -> ProtocolError | None: ...

    async def send(self, env: im_pb2.Envelope) -> int: ...

    async def send_body(self, field: str | int, body: bytes) -> int: ...

    def send_control(self, env: im_pb2.Envelope) -> None: ...

    def send_error(self, err: ProtocolError, ref_seq: int = 0, ref_msg_id: int = 0) -> None: ...

    def close(self, error: ProtocolError | None = None) -> None: ...


class SessionHost(Protocol):
    """What a session needs of its connector (connector.server.Connector)."""

    @property
    def node_id(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def signer(self) -> TokenSigner: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def reader(self) -> TimelineReader: ...

    async def admit(self, claims: Claims, device_id: str) -> None:
        """Raise the fatal ProtocolError a GREET deserves (revoked, too many devices)."""
        ...

    def register(self, s: ClientSession) -> None: ...

    def unregister(self, s: ClientSession) -> bool: ...

    async def online(self, s: ClientSession) -> None: ...

    async def offline(self, s: ClientSession) -> None: ...

    async def check_chat(self, user_id: str, chat: im_pb2.ChatMsg) -> None:
        """Raise NOT_FRIEND / NO_SUCH_FILE / INTERNAL for a chat that may not go on."""
        ...

    async def forward(self, env: im_pb2.Envelope, key: str) -> None:
        """Raise NOT_MEMBER for a group cursor of a user with no span in that group."""
        ...


# stored chats (sync answers) queued for one device, in bytes: with the count bound alone a
# device that stops acking could pin half an outbox of maximal chats
BULK_BYTES = 2 * 1024 * 1024


class Outbox:
    """Frames for the device, oldest first: live pushes up to ``limit``; listings and sync
    answers only while under half of it and under :data:`BULK_BYTES` of stored chats."""

    __slots__ = ("_items", "chat_bytes", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = max(2, limit)
        self._items: deque[Out] | None = None  # made at the first put, dropped when emptied
        self.chat_bytes = 0

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __bool__(self) -> bool:
        return self._items is not None  # never kept empty

    def put(self, item: Out) -> bool:
        items = self._items
        if items is None:
            items = self._items = deque()
        elif len(items) >= self.limit:
            return False
        items.append(item)
        if isinstance(item, bytes):
            self.chat_bytes += len(item)
        return True

    @property
    def bulk_room(self) -> bool:
        items = self._items
        if items is not None and len(items) >= self.limit // 2:
            return False
        return self.chat_bytes < BULK_BYTES

    def peek(self) -> Out:
        assert self._items is not None
        return self._items[0]

    def pop(self) -> None:
        items = self._items
        assert items is not None
        item = items.popleft()
        if isinstance(item, bytes):
            self.chat_bytes -= len(item)
        if not items:
            self._items = None

    def clear(self) -> None:
        self._items = None
        self.chat_bytes = 0


_shared: tuple[Settings, TokenSigner, Limits, Callable[[str], Claims]] | None = None


def _shared_of(host: SessionHost) -> tuple[Limits, Callable[[str], Claims]]:
    """The sessions of one connector share one Limits and one bound ``verify`` (made anew,
    each would cost a connection some 150 bytes)."""
    global _shared
    s, signer = host.settings, host.signer
    if _shared is None or _shared[0] is not s or _shared[1] is not signer:
        _shared = (s, signer, Limits.from_settings(s), signer.verify)
    return _shared[2], _shared[3]


class ClientSession:
    """One client connection, as the handler of its link."""

    __slots__ = (
        "_counted",
        "_loop",
        "_pump",
        "_refresh",
        "_room",
        "_sync_reads",
        "_tasks",
        "_timers",
        "host",
        "link",
        "outbox",
        "rules",
    )

    def __init__(self, host: SessionHost, link: ClientLink | None = None) -> None:
        self.host = host
        self.link = link
        self._loop = asyncio.get_running_loop()
        s = host.settings
        limits, verify = _shared_of(host)
        self.rules = SessionRules(host.node_id, limits, verify, self._loop.time())
        self.outbox = Outbox(s.session_queue)
        # each of these exists only while needed (None otherwise): an idle session holds none
        self._pump: asyncio.Task[None] | None = None  # while the outbox holds something
        self._room: asyncio.Event | None = None  # while a listing or sync waits for room
        self._tasks: set[asyncio.Task[None]] | None = None  # listings and syncs running
        self._timers: set[asyncio.TimerHandle] | None = None  # relists to come
        self._refresh = 0  # the periodic listing's slot in the RefreshWheel (0: none)
        # one sync answer read from the store at a time: a device asking many at once, and not
        # acking, holds one page in memory (and what the outbox takes), not MAX_SYNCS of them
        self._sync_reads: asyncio.Semaphore | None = None
        # im_connections: counted open from here, authenticated from Register, closed once
        self._counted = "unauthenticated"
        metrics.connection_opened()

    def __repr__(self) -> str:
        return f"<ClientSession {self.user_id or '?'}/{self.device_id or '?'} {self.state.name}>"

    @property
    def user_id(self) -> str:
        return self.rules.user_id

    @property
    def device_id(self) -> str:
        return self.rules.device_id

    @property
    def claims(self) -> Claims | None:
        return self.rules.claims

    @property
    def state(self) -> State:
        return self.rules.state

    # -- LinkHandler -----------------------------------------------------------------------------

    async def on_frame(self, link: ClientLink, env: im_pb2.Envelope) -> None:
        self.link = link
        try:
            await self._run(link, self.rules.frame(env, self._loop.time()))
        except ProtocolError as err:
            if env.HasField("chat"):
                metrics.chat_error(env.chat.msg_type, err.code)
            if not err.fatal:  # fatal ones end the link and are counted in on_closed
                self.host.counters.error(err.code_name)
                metrics.frame_error(err.code)
            raise
        except (LinkClosed, asyncio.CancelledError):
            raise
        except Exception:  # the link answers INTERNAL (a backend down, a bug) and stays up
            if env.HasField("chat"):
                metrics.chat_error(env.chat.msg_type, im_pb2.INTERNAL)
            metrics.frame_error(im_pb2.INTERNAL)
            raise

    def on_acked(self, link: ClientLink, upto: int) -> None:
        pass

    async def on_closed(self, link: ClientLink, unacked: list[im_pb2.Envelope]) -> None:
        self.rules.closing()
        for timer in self._timers or ():
            timer.cancel()
        self._timers = None
        if self._refresh:
            RefreshWheel.cancel(self._loop, self, self._refresh)
            self._refresh = 0
        tasks = [*(self._tasks or ()), *([self._pump] if self._pump is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.outbox.clear()
        if self._counted:
            metrics.connection_closed(authenticated=self._counted == "authenticated")
            self._counted = ""
        # only the session still registered for this device takes it offline: a reconnect to
        # this connector has replaced us already, and its entry must stay
        if self.user_id and self.host.unregister(self):
            try:
                await self.host.offline(self)
            except IMError as exc:
                log.warning("%s: could not record offline: %s", self, exc)
        if link.close_error is not None:
            self.host.counters.error(link.close_error.code_name)
            metrics.frame_error(link.close_error.code)
            log.info("%s: closed (%s)", self, link.close_error.code_name)

    # -- effects ---------------------------------------------------------------------------------

    async def _run(self, link: ClientLink, effects: list[Effect]) -> None:
        """Carry out effects in order; the ones that need I/O are awaited here."""
        for eff in effects:
            if isinstance(eff, Admit):
                await self.host.admit(eff.claims, eff.device_id)
                # no await from here to Register: a revocation the connector learnt while it
                # asked is in its set (admit checked), a later one finds us registered
                await self._run(link, self.rules.admitted(eff.claims, eff.device_id, eff.since))
            elif isinstance(eff, Register):
                if link.closing:
                    # gone while it was admitted (its client gave up on it): it must not push
                    # out the newer session of the same device with REPLACED
                    return
                link.authenticated = True
                if self._counted == "unauthenticated":
                    metrics.connection_authenticated()
                    self._counted = "authenticated"
                link.name = f"{link.name} {self.user_id}/{self.device_id}"
                self.host.register(self)
                try:
                    await self.host.online(self)
                except IMError as exc:
                    log.error("%s: could not record online: %s", self, exc)
                    raise ProtocolError(
                        "user status unavailable, retry later", code=im_pb2.INTERNAL, fatal=True
                    ) from None
                self.host.counters.sessions += 1
                log.info("%s: online", self)
            elif isinstance(eff, ForwardChat):
                # the frame-in time of im_send_latency_seconds{hop="connector"}, read by the
                # transfer link that takes the chat (same task: no per-chat bookkeeping here)
                came_in = CHAT_IN.set(time.monotonic())
                try:
                    # lines about this chat (friend check, hook, no transfer) name it
                    with log_context(conn=link.name, user=self.user_id, msg_id=eff.chat.id):
                        await self.host.check_chat(self.user_id, eff.chat)
                        await self.host.forward(eff.env, eff.key)
                finally:
                    CHAT_IN.reset(came_in)
            elif isinstance(eff, Forward):
                await self.host.forward(eff.env, eff.key)
            else:
                self._apply(eff)

    def _apply(self, eff: Effect) -> None:
        """The effects that need no waiting (fanouts and timers come through here)."""
        link = self.link
        if isinstance(eff, Push):
            self._push(eff.env)
        elif isinstance(eff, SendError):
            if link is not None and not link.closing:
                link.send_error(eff.error, ref_msg_id=eff.ref_msg_id)
                metrics.frame_error(eff.error.code)
            self.host.counters.error(eff.error.code_name)
        elif isinstance(eff, StartListing):
            self._spawn(self._list(eff.since_ms), "listing")
        elif isinstance(eff, StartSync):
            self._spawn(self._sync(eff.range), "sync")
        elif isinstance(eff, ScheduleRelist):
            self._later(eff.delay)
        elif isinstance(eff, ScheduleRefresh):
            if self._refresh:
                RefreshWheel.cancel(self._loop, self, self._refresh)
            # spread, so sessions that listed together do not all list again together
            delay = eff.delay * random.uniform(0.8, 1.2)
            self._refresh = RefreshWheel.of(self._loop).add(self, self._loop.time() + delay)
        elif isinstance(eff, SendControl):
            if link is not None:
                link.send_control(eff.env)
        elif isinstance(eff, Close):
            if link is not None:
                link.close(eff.error)
        else:  # pragma: no cover - every other effect needs I/O and goes through _run
            raise AssertionError(f"{eff!r} needs _run")

    def deliver(self, fanout: im_pb2.Fanout) -> bool:
        """A transfer's fanout for this session's user; True when it gave this device the SENT
        of its chat. A refusal is counted here, where it reaches the sending device; an accepted
        chat is counted by the writer that committed it (once, whatever the resends)."""
        given = False
        for eff in self.rules.deliver(fanout):
            if isinstance(eff, Push) and eff.sent:
                if self._push(eff.env):
                    metrics.receipt("sent")  # the message itself is counted by the writer
                    given = True
                continue
            if isinstance(eff, SendError) and fanout.refused:
                metrics.chat_answered(fanout.chat.msg_type, fanout.refused)
            self._apply(eff)
        return given

    def push_state(self, state: im_pb2.ConvState) -> None:
        """A conversation's new head for the device (a group's membership changed)."""
        if self.state is State.AUTHENTICATED:
            self._push(im_pb2.Envelope(conv_state=state))

    def request_relist(self, delay: float = 0.0) -> None:
        """List again (after ``delay`` seconds): a fanout for this device may have been lost."""
        if delay > 0:
            self._later(delay)
        else:
            self._relist()

    def close(self, error: ProtocolError) -> None:
        if self.link is not None:
            self.link.close(error)

    def _later(self, delay: float) -> None:
        def fire() -> None:
            if self._timers is not None:
                self._timers.discard(handle)
                if not self._timers:
                    self._timers = None
            self._relist()

        handle = self._loop.call_later(delay, fire)
        if self._timers is None:
            self._timers = set()
        self._timers.add(handle)

    def refresh_due(self) -> None:
        """The periodic listing's time came (connector/refresh.py)."""
        self._refresh = 0
        self._relist()

    def _relist(self) -> None:
        for eff in self.rules.relist():
            self._apply(eff)

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = self._loop.create_task(coro, name=f"{what} {self}")
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None

    # -- the outbox ------------------------------------------------------------------------------

    def _push(self, item: Out) -> bool:
        """Queue a live push; False when the session could not take it."""
        link = self.link
        if link is None or link.closing or self.state is not State.AUTHENTICATED:
            return False
        if not self.outbox.put(item):
            log.warning("%s: device is too slow (%d queued): closing", self, len(self.outbox))
            link.close(ProtocolError("too slow", code=im_pb2.WINDOW_FULL, fatal=True))
            return False
        self._start_pump(link)
        return True

    async def _put_bulk(self, item: Out) -> None:
        """Queue a listing or sync frame once the outbox has room (LinkClosed: gone)."""
        while True:
            link = self.link
            if link is None or link.closing or self.state is not State.AUTHENTICATED:
                raise LinkClosed("session closed")
            if self.outbox.bulk_room:
                break
            self._start_pump(link)  # there is one whenever the outbox holds something
            if self._room is None:
                self._room = asyncio.Event()
            await self._room.wait()
        self.outbox.put(item)
        self._start_pump(link)

    def _start_pump(self, link: ClientLink) -> None:
        if self._pump is None:
            self._pump = self._loop.create_task(self._run_pump(link), name=f"pump {link.name}")

    def _room_made(self) -> None:
        """Wake the listing or sync waiting for outbox room; the next wait makes a new Event."""
        room, self._room = self._room, None
        if room is not None:
            room.set()

    async def _run_pump(self, link: ClientLink) -> None:
        """Empty the outbox into the link, oldest first, then end: a push starts it again."""
        box, counters = self.outbox, self.host.counters
        try:
            while box and not link.closing:
                item = box.peek()
                if isinstance(item, bytes):
                    await link.send_body("chat", item)
                    counters.delivered += 1
                else:
                    await link.send(item)
                    if item.WhichOneof("body") == "chat":
                        counters.delivered += 1
                box.pop()
                if self._room is not None and box.bulk_room:
                    self._room_made()
        except LinkClosed:
            pass
        finally:
            # no await since the last look at the outbox: a push from now on starts a new pump
            self._pump = None
            if self._room is not None:
                self._room_made()  # producers waiting for room see the link closed, or room

    # -- catching up -----------------------------------------------------------------------------

    async def _list(self, since_ms: int) -> None:
        started = int(time.time() * 1000)
        try:
            pages = catchup.listing(
                self.host.reader, self.user_id, self.device_id, since_ms, started
            )
            async for frames in pages:
                for env in frames:
                    await self._put_bulk(env)
        except LinkClosed:
            return
        except Exception as exc:  # the timeline store failed: the rules try again later
            log.warning("%s: listing failed: %s", self, exc)
            effects = self.rules.listing_failed()
        else:
            effects = self.rules.listing_done(started)
        for eff in effects:
            self._apply(eff)

    async def _sync(self, rng: SyncRange) -> None:
        if self._sync_reads is None:
            self._sync_reads = asyncio.Semaphore(1)
        try:
            async with self._sync_reads:
                reader = self.host.reader
                if not rng.conv_id.startswith("g:"):
                    answer = await catchup.sync_page(reader, rng)
                elif isinstance(reader, GroupReader):
                    answer = await catchup.group_sync_page(reader, rng, self.user_id)
                else:
                    raise ProtocolError("no groups here", code=im_pb2.NOT_MEMBER)
                for content in answer.chats:
                    await self._put_bulk(content)
                await self._put_bulk(im_pb2.Envelope(sync_done=answer.done))
        except LinkClosed:
            pass
        except ProtocolError as refusal:  # a group the user has no span in: NOT_MEMBER
            if self.link is not None:
                self.link.send_error(refusal)
                self.host.counters.error(refusal.code_name)
        except Exception as exc:  # the timeline store failed: the device asks again
            log.warning("%s: sync of %s failed: %s", self, rng.conv_id, exc)
            if self.link is not None:
                err = ProtocolError(
                    f"sync of {rng.conv_id} failed, retry later", code=im_pb2.INTERNAL
                )
                self.link.send_error(err)
                self.host.counters.error(err.code_name)
                metrics.frame_error(err.code)
        finally:
            self.rules.sync_done()
            if not self.rules.syncs:
                self._sync_reads = None  # no sync holds or waits for it
