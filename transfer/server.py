"""The transfer: commits chats and cursors to the timelines and fans the results out to the
connectors holding the devices that must see them.

Rules it keeps:
- connectors dial in and GREET with a node token; the link is then known by the connector's
  node id, which is what ``user_status`` maps devices to;
- every chat is committed to its conversation's timeline (the timeline queue and its writer)
  BEFORE anyone sees it. Commits are submitted as chats arrive, and fanned out per conversation
  in that order (:class:`transfer.serial.KeyedSerial`), so a conversation's chats leave in seq
  order while conversations run in parallel;
- a committed chat goes in ONE ``Fanout`` per connector holding a device of its recipient or its
  sender (``users``: those of the two on that connector); the origin connector, the one the chat
  came on, always gets one, with at least the sender in it, because it holds the sending device
  that waits for SENT, whatever the (possibly stale) route lookup says. A resend of a committed
  chat (``duplicate``) is fanned out again the same way: devices dedupe by (conv_id, seq);
- a committed GROUP chat goes to exactly the members whose span covers its seq, one Fanout
  per connector in bounded frames (transfer/groupfanout.py, transfer/members.py);
- a chat the writer refused (``ID_REUSED``) goes back to the sender's devices only, marked
  ``refused``; one with no answer (queue down, timeout) goes nowhere: the sender never got
  SENT, so its library resends it;
- a client's cursor (``record``) is merged by the writer; only when the member's cursor MOVED
  are the devices told: a DELIVERED goes to the peer (its receipts), a READ to the reader's
  other devices (unread cleared) and to the peer; in a group, either goes to the member's own
  devices only;
- nothing is stored here and nothing is retried here: a fanout lost with a connector's link is
  dropped, since that connector has every session re-list its conversations when it links
  again, and devices Sync what they lack;
- routing lookups go through a cache that a user's move invalidates (user_status/cache.py);
- a connector's typing (a control frame, its user filled in and checked there) goes to the
  connectors of the other side's devices as ``Fanout{typing}`` (transfer/typing.py), beside the
  chats and never through the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from common import health, metrics
from common.config import Settings
from common.convid import GROUP, parse_conv_id
from common.errors import AuthError, IMError, ProtocolError
from common.ids import route_key
from common.link import Link, LinkClosed, LinkConfig, log_peer_error, serve_links
from common.tokens import TokenSigner
from hooks import events
from proto import im_pb2
from timeline.groupsql import MemberSnapshot
from timeline.model import Entry, conv_of_chat
from timeline.queue import TimelineQueue, record_problem
from transfer.commits import CommitBatcher
from transfer.groupfanout import GroupFanout
from transfer.groupreceipts import GroupReceipts, ReceiptView
from transfer.members import GroupView, MemberCache
from transfer.serial import KeyedSerial
from transfer.typing import TypingRouter
from user_status.base import StatusBackend
from user_status.cache import RouteCache
from user_status.heartbeat import keep_alive

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where the message webhooks go (hooks.sender.Webhooks): never blocks."""

    def wants(self, event: str) -> bool: ...

    def emit(self, event: str, data: events.Data) -> None: ...


# Lookups of a backend that fails are retried this many times (exponential back-off from 50 ms);
# after that the event reaches only the origin connector (the sender's SENT), and the devices
# that missed it catch up by Sync.
BACKEND_RETRIES = 5
# Cursor records in flight at once (merged by the writer, answered, fanned out); beyond this the
# connector's link waits, which is the back-pressure a flood of cursors meets.
CURSORS_IN_FLIGHT = 2000
# Workers fanning out the cursors that moved (each keeps its slot until told): several, so a
# connector whose link window is full, or a slow route lookup, holds up only what waits on it.
CURSOR_FANOUT_WORKERS = 16
# Cursors waiting for a slot, one per (conversation, user, type, device), each kept at the
# highest seq asked: past this many distinct ones the connector's link waits.
PENDING_CURSORS = 100_000
CursorKey = tuple[str, str, int, str]


class ConnectorLink:
    """The transfer's side of one connector's link."""

    def __init__(self, transfer: Transfer) -> None:
        self.t = transfer
        self.node_id = ""

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if not self.node_id:
            if kind != "greet":
                raise ProtocolError(
                    f"{kind} before GREET", code=im_pb2.NOT_AUTHENTICATED, fatal=True
                )
            self._greet(link, env.greet)
            return
        try:
            if kind == "chat":
                await self.t.on_chat(env.chat, self.node_id)
            elif kind == "record":
                await self.t.on_record(env.record, self.node_id)
            elif kind == "typing":
                self.t.on_typing(env.typing)
            elif kind == "error":
                log_peer_error(log, link, env)
            else:
                raise ProtocolError(f"a connector may not send {kind}", code=im_pb2.UNKNOWN_TYPE)
        except ProtocolError as err:
            if not err.fatal:  # a fatal one closes the link: counted in on_closed
                metrics.frame_error(err.code)
            raise

    def _greet(self, link: Link, greet: im_pb2.Greet) -> None:
        try:
            claims = self.t.signer.verify(greet.token, role="node")
        except AuthError as exc:
            raise ProtocolError(str(exc), code=im_pb2.BAD_TOKEN, fatal=True) from None
        if greet.node_id and greet.node_id != claims.user_id:
            raise ProtocolError(
                "node id does not match the node token", code=im_pb2.BAD_TOKEN, fatal=True
            )
        self.node_id = claims.user_id
        link.authenticated = True
        link.name = f"connector {self.node_id}"
        self.t.attach(self.node_id, link)
        health.LINKS.up(self.t.node_id, "connector", self.node_id)
        link.send_control(im_pb2.Envelope(welcome=im_pb2.Welcome(node_id=self.t.node_id)))
        log.info("connector %s linked", self.node_id)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        """Fanouts the connector did not ack are dropped: it re-lists its sessions when it
        links again, and their devices Sync what they missed."""
        self.t._conns.discard(link)
        if link.close_error is not None:
            metrics.frame_error(link.close_error.code)
        if self.node_id:
            if self.t.detach(self.node_id, link):  # not when a newer link replaced this one
                health.LINKS.down(self.t.node_id, "connector", self.node_id)
            log.info("connector %s unlinked (%d fanouts dropped)", self.node_id, len(unacked))
            self.t.dropped += len(unacked)


class Transfer:
    def __init__(
        self,
        settings: Settings,
        status: StatusBackend,
        signer: TokenSigner,
        timeline: TimelineQueue,
        group_view: GroupStore | None = None,
        *,
        hooks: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self.status = status
        self.signer = signer
        self.node_id = settings.name(settings.transfer_port)
        self.serial = KeyedSerial()
        self.routes = RouteCache(status)
        # the message webhooks, each decided once here: None (or not wanted) costs a chat
        # nothing, not even its payload
        self._sent_hook = hooks if hooks is not None and hooks.wants(events.MESSAGE_SENT) else None
        self._offline_hook = (
            hooks if hooks is not None and hooks.wants(events.MESSAGE_OFFLINE) else None
        )
        self.links: dict[str, Link] = {}
        # group chats: the members at each seq (None: no timeline store here, so a group
        # chat reaches its sender's SENT only and the members' devices by their listings)
        self.groups = GroupFanout(
            MemberCache(group_view or _NoGroups()),
            self._lookup_many,
            self.links,
            settings.node_frame_limit(),
        )
        self.typing = TypingRouter(group_view or _NoGroups(), self.fan_out)
        # live read-by counts of group messages, for their senders, as cursors move
        self.receipts = GroupReceipts(group_view or _NoGroups(), self.fan_out)
        self.link_config = LinkConfig.from_settings(settings, node=True)
        self._commits = CommitBatcher(
            timeline, "timeline commit", lambda took: metrics.send_latency("store", took)
        )
        self._cursor_batches = CommitBatcher(timeline, "cursor merge")
        self._timeline = timeline
        self._cursors_in_flight = 0  # cursor records submitted and not answered
        self._slot_room: asyncio.Event | None = None  # made when every slot was taken once
        self._moved: deque[im_pb2.Cursor] = deque()  # merged and moved: to fan out
        self._movers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._pending: dict[CursorKey, im_pb2.TimelineRecord] = {}
        self._pending_room = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[Link] = set()
        self._beat: asyncio.Task[None] | None = None
        self.port = settings.transfer_port
        self.address = ""
        # counters, for tests and logs
        self.routed = 0  # chats fanned out (committed ones and resends of them)
        self.committed = 0  # chats the writer appended or found appended
        self.cursors_moved = 0  # cursors merged that moved, so were fanned out
        self.dropped = 0  # fanouts lost with a connector's link

    @property
    def timeline(self) -> TimelineQueue:
        """Where chats and cursors are committed (replaceable: tests put a faulty one in)."""
        return self._timeline

    @timeline.setter
    def timeline(self, queue: TimelineQueue) -> None:
        self._timeline = self._commits.timeline = self._cursor_batches.timeline = queue

    def attach(self, node_id: str, link: Link) -> None:
        old = self.links.get(node_id)
        self.links[node_id] = link
        if old is not None and old is not link:
            old.close()

    def detach(self, node_id: str, link: Link) -> bool:
        """Forget ``link`` if it is still ``node_id``'s (True), not a replaced one (False)."""
        if self.links.get(node_id) is link:
            del self.links[node_id]
            return True
        return False

    # -- chats -------------------------------------------------------------------------------

    async def on_chat(self, chat: im_pb2.ChatMsg, origin: str) -> None:
        """Queue the fanout behind the conversation's earlier chats, then start the commit
        (in that order: the fanout job is in place before its answer can come)."""
        started = time.monotonic()
        try:
            conv_id = key = conv_of_chat(chat)
        except ValueError as exc:  # the connector lets none through; this one is refused
            log.warning("chat %s/%d has no conversation: %s", chat.from_id, chat.id, exc)
            conv_id, key = "", route_key(chat.from_id, chat.dest_type, chat.dest_id)
        done: asyncio.Future[im_pb2.Committed | None] = asyncio.get_running_loop().create_future()
        await self.serial.submit(key, lambda: self.route_committed(done, origin, started))
        self.commit(chat, conv_id, origin, done)

    def commit(
        self,
        chat: im_pb2.ChatMsg,
        conv_id: str,
        origin: str,
        done: asyncio.Future[im_pb2.Committed | None],
    ) -> None:
        """Start committing ``chat`` to its timeline ``conv_id`` ("": it has none, and is
        refused); ``done`` gets the writer's answer, or None when there is none (not committed
        as far as we know: the sender resends). Started in arrival order, so the queue sees one
        conversation's chats in that order (the records of one loop turn share a submit:
        transfer/commits.py); how many are in flight is bounded by the fanout jobs waiting for
        them (``KeyedSerial``)."""
        if not conv_id:
            done.set_result(im_pb2.Committed(chat=chat, refused=im_pb2.BAD_MESSAGE, origin=origin))
            return
        record = im_pb2.TimelineRecord(origin=origin, chat=chat)
        record.chat.conv_id = conv_id
        self._commits.add(record, done)

    async def route_committed(
        self, done: asyncio.Future[im_pb2.Committed | None], origin: str, started: float
    ) -> None:
        """Fan a chat out once committed (stamped with conv_id, seq, server_time)."""
        answer = await done
        if answer is None:
            return  # not SENT: the sender's library still holds it and resends
        chat = answer.chat
        if answer.refused:
            log.info(
                "chat %s/%d refused by the timeline: %s",
                chat.from_id,
                chat.id,
                im_pb2.ErrorCode.Name(answer.refused),
            )
            refused = im_pb2.Fanout(chat=chat, refused=answer.refused)
            await self.fan_out([chat.from_id], refused, origin, chat.from_id)
            return
        self.committed += 1
        # a resend of a committed chat is told nothing new: each event once per chat
        first = not answer.duplicate
        offline = False  # message.offline: 1-1 chats only (a group's is per member: later)
        if chat.dest_type == im_pb2.GROUP:
            await self.groups.fan_out(chat, origin)
        else:
            offline = await self.fan_out(
                [chat.dest_id, chat.from_id],
                im_pb2.Fanout(chat=chat),
                origin,
                chat.from_id,
                recipient=chat.dest_id if first and self._offline_hook is not None else "",
            )
        self.routed += 1
        metrics.send_latency("transfer", time.monotonic() - started)
        if first and self._sent_hook is not None:
            self._sent_hook.emit(events.MESSAGE_SENT, events.message_data(chat, seq=chat.seq))
        if offline and self._offline_hook is not None:
            self._offline_hook.emit(events.MESSAGE_OFFLINE, events.message_data(chat, seq=chat.seq))

    # -- cursors -----------------------------------------------------------------------------

    async def on_record(self, record: im_pb2.TimelineRecord, origin: str) -> None:
        """Merge a client's cursor (the connector checked it and filled in its user), without
        holding the link: up to :data:`CURSORS_IN_FLIGHT` at once, the rest coalesced while
        they wait (cursors only move forward, so the highest seq asked is all that counts)."""
        problem = record_problem(record)
        if problem is None and record.WhichOneof("body") != "cursor":
            problem = "a connector's record must be a cursor"
        if problem is None and not record.cursor.user_id:
            problem = "cursor without its user"
        if problem is not None:
            raise ProtocolError(problem, code=im_pb2.BAD_MESSAGE)
        out = im_pb2.TimelineRecord()
        out.CopyFrom(record)
        out.origin = origin
        c = out.cursor
        key: CursorKey = (c.conv_id, c.user_id, c.type, out.device_id)
        held = self._pending.get(key)
        if held is not None:  # the same cursor waits already: it now goes to the higher seq
            held.cursor.seq = max(held.cursor.seq, c.seq)
            return
        if not self._pending and self._cursors_in_flight < CURSORS_IN_FLIGHT:
            self._start_merge(out)
            return
        # every slot busy: wait in the coalescing table, not on the link (a flood of cursors
        # from a few devices must not hold up the chats of everyone on their connector)
        while len(self._pending) >= PENDING_CURSORS:
            self._pending_room.clear()
            await self._pending_room.wait()
        self._pending[key] = out
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_pending(), name="pending cursors")

    def _start_merge(self, record: im_pb2.TimelineRecord) -> None:
        """Submit the cursor with the other records of this loop turn; its answer comes to
        :meth:`_merged` (no task per cursor)."""
        self._cursors_in_flight += 1
        self._cursor_batches.add(record).add_done_callback(self._merged)

    def _merged(self, answer: asyncio.Future[im_pb2.Committed | None]) -> None:
        got = answer.result()
        # None: not merged (queue down, timeout); the client repeats its cursors (idempotent)
        if got is None or got.refused or not got.moved or self._stopping:
            self._slot_free()
            return
        # it keeps its slot until it is fanned out: the slots bound this table too
        self._moved.append(got.cursor)
        if len(self._movers) < min(CURSOR_FANOUT_WORKERS, len(self._moved)):
            task = asyncio.create_task(self._fan_moved(), name="cursor fanouts")
            self._movers.add(task)
            task.add_done_callback(self._movers.discard)

    def _slot_free(self) -> None:
        self._cursors_in_flight -= 1
        if self._slot_room is not None:
            self._slot_room.set()

    async def _drain_pending(self) -> None:
        while self._pending:
            while self._cursors_in_flight >= CURSORS_IN_FLIGHT:
                if self._slot_room is None:
                    self._slot_room = asyncio.Event()
                self._slot_room.clear()
                await self._slot_room.wait()
            key = next(iter(self._pending))
            self._start_merge(self._pending.pop(key))
            self._pending_room.set()

    async def _fan_moved(self) -> None:
        """Tell the devices of cursors that moved, about in the order the writer answered
        (one conversation's cursors only move forward, so order among workers is harmless)."""
        while self._moved:
            moved = self._moved.popleft()
            try:
                await self._fan_cursor(moved)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not keep the slots of the cursors behind
                log.exception("cursor fanout of %s failed", moved.user_id)
            finally:
                self._slot_free()

    async def _fan_cursor(self, moved: im_pb2.Cursor) -> None:
        metrics.cursor_moved(moved.type)
        try:
            ref = parse_conv_id(moved.conv_id)
            peer = ref.peer_of(moved.user_id)
        except ValueError as exc:
            log.warning("cursor of %s: %s", moved.user_id, exc)
            return
        if ref.dest_type == GROUP:
            users = [moved.user_id]  # the member's own devices; the senders get GroupReceipts
            self.receipts.moved(moved.conv_id, moved.user_id, moved.seq)
        elif moved.type == im_pb2.DELIVERED:
            users = [peer]
        else:
            users = [moved.user_id, peer]
        self.cursors_moved += 1
        try:
            await self.fan_out(users, im_pb2.Fanout(cursor=moved))
        except IMError as exc:
            log.warning("cursor fanout of %s lost: %s", moved.user_id, exc)

    # -- typing ------------------------------------------------------------------------------

    def on_typing(self, typing: im_pb2.Typing) -> None:
        if not typing.user_id or not typing.conv_id:
            raise ProtocolError("typing without its user or conversation", code=im_pb2.BAD_MESSAGE)
        self.typing.take(typing)

    # -- fanout ------------------------------------------------------------------------------

    async def fan_out(
        self,
        users: list[str],
        body: im_pb2.Fanout,
        origin: str = "",
        sender: str = "",
        *,
        recipient: str = "",
    ) -> bool:
        """One copy of ``body`` per connector holding a device of any of ``users``, naming the
        users it has; ``origin`` gets one naming at least ``sender`` whatever the lookups say.
        A user whose lookup fails is left out (its devices catch up by Sync). True when
        ``recipient`` (one of ``users``) has no device online, as its lookup says: the
        message.offline push; a failed lookup is not known to be offline."""
        by_node: dict[str, list[str]] = {}
        offline = False
        for user in dict.fromkeys(users):
            try:
                devices = await self._lookup(user)
            except IMError as exc:
                log.warning("fanout: where %s is online is unknown: %s", user, exc)
                continue
            if not devices and user == recipient:
                offline = True
            for node in dict.fromkeys(devices.values()):
                by_node.setdefault(node, []).append(user)
        if origin:
            here = by_node.setdefault(origin, [])
            if sender not in here:
                here.append(sender)
        if body.users:  # the users are this function's to name, per connector
            plain = im_pb2.Fanout()
            plain.CopyFrom(body)
            del plain.users[:]
            body = plain
        # encoded once for every connector: a Fanout is its body's bytes followed by the users
        # field (protobuf appends a repeated field's values across concatenated messages)
        encoded = body.SerializeToString()
        for node, its_users in by_node.items():
            link = self.links.get(node)
            if link is None:
                continue  # not linked to us (yet): that connector re-lists when it links
            named = encoded + im_pb2.Fanout(users=its_users).SerializeToString()
            with contextlib.suppress(LinkClosed):
                await link.send_body("fanout", named)
        return offline

    async def _lookup_many(self, users: Sequence[str]) -> dict[str, dict[str, str]]:
        return await self.routes.lookup_many(users)

    async def _lookup(self, user_id: str) -> dict[str, str]:
        delay = 0.05
        for attempt in range(BACKEND_RETRIES):
            try:
                return await self.routes.lookup(user_id)
            except IMError as exc:
                if attempt == BACKEND_RETRIES - 1:
                    raise
                log.warning("user status lookup failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self._server = await serve_links(
            s.bind_host, s.transfer_port, self._on_conn, self.link_config
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if not s.node_id and s.transfer_port == 0:
            self.node_id = s.name(self.port)
        self.address = f"{s.advertised_host()}:{self.port}"
        self._follow = asyncio.create_task(self.routes.follow(), name="route cache")
        await self.status.beat("transfer", self.node_id, self.address, s.node_ttl)
        self._beat = asyncio.create_task(
            keep_alive(self.status, "transfer", self.node_id, self.address, s.node_ttl),
            name="transfer heartbeat",
        )

    def _on_conn(self, link: Link) -> ConnectorLink:
        """A connector dialed in (the GREET deadline is the link's own)."""
        self._conns.add(link)
        return ConnectorLink(self)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting and leave the registry; give connectors that are leaving a moment to
        finish sending; close the rest; finish the fanouts of commits under way (their senders
        wait for SENT), then cancel what is left."""
        for task in (self._beat, self._follow):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await self.status.leave("transfer", self.node_id)
        except IMError as exc:
            log.warning("could not leave the registry: %s", exc)
        if self._server is not None:
            self._server.close()
        if self._conns:
            await asyncio.wait(
                [asyncio.ensure_future(link.wait_closed()) for link in self._conns],
                timeout=min(grace, 1.0),
            )
        for link in list(self._conns):
            link.close(ProtocolError("transfer stopping", code=im_pb2.SHUTTING_DOWN, fatal=True))
        await self.serial.close(grace)
        await self.typing.close()
        await self.receipts.close()
        # the batchers first: the answers their close hands out start no new fanouts
        self._stopping = True
        await self._commits.close()
        await self._cursor_batches.close()
        rest = [t for t in (self._drainer, *self._movers) if t is not None]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class GroupStore(GroupView, ReceiptView, Protocol):
    """What the transfer reads of the timeline store for groups (timeline.store.TimelineStore)."""


class _NoGroups:
    """No timeline store in this process: no group has members here."""

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None:
        return None

    async def page(
        self,
        conv_id: str,
        *,
        after: int = 0,
        before: int = 0,
        limit: int,
        reader: str | None = None,
    ) -> list[Entry]:
        return []

    async def receipt_counts(
        self, conv_id: str, messages: Sequence[tuple[int, str]]
    ) -> list[tuple[int, int, int]]:
        return []
