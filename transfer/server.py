"""The transfer: routes chats and receipts between connectors (seed §4.2).

Rules it keeps:
- connectors dial in and GREET with a node token; the link is then known by the connector's
  node id, which is what ``user_status`` maps devices to;
- frames are routed per conversation in arrival order (a :class:`KeyedSerial` worker per
  conversation), so one conversation never overtakes itself, while conversations run in parallel;
- dest online -> forward to each of its connectors; offline -> publish to the offline queue, and
  only once that is durable tell the sender SENT (G1);
- after storing, look the user up again: if it came online meanwhile, send its connectors a
  ``Drain`` so the row is not stranded until its next login (the hole in the seed's version);
  with RabbitMQ the row is committed later, and the writer asks for that drain itself;
- routing lookups go through a cache that a user's move invalidates (user_status/cache.py);
- a connector link that dies with frames unacked: those are stored offline;
- repeats of a SENT, DELIVERED or READ are dropped here (the message ledger, common/ledger.py):
  a second recipient device's SENT, a replayed READ. Only while an earlier copy is known to
  have reached the sender, or left a moment ago: a first copy lost after it left here (a cut
  link, a stranded row) must not make the sender miss the receipt for good. A DELIVERED or READ
  dropped because an earlier one arrived is answered ACCEPTED, so its device stops resending;
  one dropped while the earlier is in flight is not, so its device tries again later.
- with a timeline queue (issue 13), every chat is committed to its conversation's timeline
  before it goes anywhere: the commit is started as the chat arrives (so commits are submitted
  in arrival order), and the chat is routed, in that order, stamped with its conv_id and seq,
  only once committed. So a SENT is only ever given for a chat that is durable with its seq
  fixed; a chat that could not be committed is not routed (its sender resends it, and a resend
  of a committed one is answered with its first seq); one whose id the sender already used for
  another message is refused back to the sender (``ID_REUSED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from common.config import Settings
from common.errors import AuthError, IMError, ProtocolError
from common.ids import MessageIdGen, conversation_key
from common.ledger import Fate, MessageLedger, memory_ledger
from common.link import Link, LinkClosed, LinkConfig, fresh, log_peer_error, serve_links
from common.tokens import TokenSigner
from offline.base import KIND_CHAT, OfflineItem, OfflineQueue
from offline.errors import RejectedError
from proto import im_pb2
from timeline.model import pair_conv_id
from timeline.queue import TimelineQueue
from user_status.base import StatusBackend
from user_status.cache import RouteCache
from user_status.heartbeat import keep_alive

log = logging.getLogger(__name__)

# How long a frame may wait for a backend (status lookup, queue) before it is given up; the sender
# never got SENT for it, so its client library still holds it and resends.
BACKEND_RETRIES = 5


class KeyedSerial:
    """Runs jobs one at a time per key, keys in parallel, with a bound on jobs waiting in all."""

    def __init__(self, limit: int = 10_000) -> None:
        self._queues: dict[str, asyncio.Queue[Callable[[], Awaitable[None]]]] = {}
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        await self._slots.acquire()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = asyncio.Queue()
            task = asyncio.create_task(self._work(key, q))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        q.put_nowait(job)

    async def _work(self, key: str, q: asyncio.Queue[Callable[[], Awaitable[None]]]) -> None:
        try:
            while not q.empty():
                job = q.get_nowait()
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except IMError as exc:
                    # not SENT: the sender's client still holds the message and resends it
                    log.error("routing in %r given up: %s", key, exc)
                except Exception:
                    log.exception("routing job for %r failed", key)
                finally:
                    self._slots.release()
        finally:
            if self._queues.get(key) is q:
                del self._queues[key]

    async def close(self, grace: float = 5.0) -> None:
        """Let queued jobs finish for up to ``grace`` seconds, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


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
            try:
                claims = self.t.signer.verify(env.greet.token, role="node")
            except AuthError as exc:
                raise ProtocolError(str(exc), code=im_pb2.BAD_TOKEN, fatal=True) from None
            if env.greet.node_id and env.greet.node_id != claims.user_id:
                raise ProtocolError(
                    "node id does not match the node token", code=im_pb2.BAD_TOKEN, fatal=True
                )
            self.node_id = claims.user_id
            link.authenticated = True
            link.name = f"connector {self.node_id}"
            self.t.attach(self.node_id, link)
            link.send_control(im_pb2.Envelope(welcome=im_pb2.Welcome(node_id=self.t.node_id)))
            log.info("connector %s linked", self.node_id)
            return
        if kind == "chat":
            c = env.chat
            key = conversation_key(c.from_id, c.dest_id)
            if self.t.timeline is None:
                await self.t.serial.submit(key, lambda: self.t.route(fresh(env)))
                return
            done: asyncio.Future[im_pb2.Committed | None] = (
                asyncio.get_running_loop().create_future()
            )
            await self.t.serial.submit(key, lambda: self.t.route_committed(env, done))
            self.t.commit(env.chat, done)
        elif kind == "ack":
            a = env.ack
            await self.t.serial.submit(
                conversation_key(a.from_id, a.dest_id), lambda: self.t.route_receipt(fresh(env))
            )
        elif kind == "bounce":
            item = _bounced_item(env.bounce)
            if item is None:
                raise ProtocolError("empty bounce")
            await self.t.serial.submit(
                conversation_key(item.from_id, item.to_user_id), lambda: self.t.store_offline(item)
            )
        elif kind == "error":
            log_peer_error(log, link, env)
        else:
            raise ProtocolError(f"a connector may not send {kind}", code=im_pb2.UNKNOWN_TYPE)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        self.t._conns.discard(link)
        if self.node_id:
            self.t.detach(self.node_id, link)
            log.info("connector %s unlinked (%d unacked)", self.node_id, len(unacked))
        for env in unacked:
            kind = env.WhichOneof("body")
            if kind == "chat":
                item = OfflineItem.of_chat(env.chat, rearm=True)
            elif kind == "ack":
                item = OfflineItem.of_ack(env.ack, rearm=True)
            else:
                continue
            await self.t.serial.submit(
                conversation_key(item.from_id, item.to_user_id),
                functools.partial(self.t.store_offline, item),
            )


def _bounced_item(b: im_pb2.Bounce) -> OfflineItem | None:
    kind = b.WhichOneof("body")
    if kind == "chat":
        return OfflineItem.of_chat(b.chat, rearm=True)
    if kind == "ack":
        return OfflineItem.of_ack(b.ack, rearm=True)
    return None


class Transfer:
    def __init__(
        self,
        settings: Settings,
        status: StatusBackend,
        queue: OfflineQueue,
        signer: TokenSigner,
        timeline: TimelineQueue | None = None,
        *,
        ledger: MessageLedger | None = None,
    ) -> None:
        self.settings = settings
        self.status = status
        self.queue = queue
        self.signer = signer
        self.timeline = timeline  # None: the store-and-forward relay without timelines
        self._commits: set[asyncio.Task[None]] = set()
        self.committed = 0
        # None: one of this transfer's own (the embedded mode shares one with its connector)
        self.ledger: MessageLedger = memory_ledger(settings) if ledger is None else ledger
        self.receipts_dropped = 0  # repeats of a receipt that arrived or is in flight
        self.node_id = settings.name(settings.transfer_port)
        self.ids = MessageIdGen()
        self.serial = KeyedSerial()
        self.routes = RouteCache(status)
        self._follow: asyncio.Task[None] | None = None
        self.links: dict[str, Link] = {}
        self.link_config = LinkConfig.from_settings(settings, node=True)
        self.routed = 0
        self.stored = 0
        self._server: asyncio.Server | None = None
        self._conns: set[Link] = set()
        self._beat: asyncio.Task[None] | None = None
        self.port = settings.transfer_port
        self.address = ""

    def attach(self, node_id: str, link: Link) -> None:
        old = self.links.get(node_id)
        self.links[node_id] = link
        if old is not None and old is not link:
            old.close()

    def detach(self, node_id: str, link: Link) -> None:
        if self.links.get(node_id) is link:
            del self.links[node_id]

    async def _lookup(self, user_id: str, *, cached: bool = True) -> dict[str, str]:
        delay = 0.05
        for attempt in range(BACKEND_RETRIES):
            try:
                if cached:
                    return await self.routes.lookup(user_id)
                return await self.status.lookup(user_id)
            except IMError as exc:
                if attempt == BACKEND_RETRIES - 1:
                    raise
                log.warning("user status lookup failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _repeated(self, ack: im_pb2.AckMsg) -> bool:
        """True if this receipt is a repeat to drop. A ledger that does not answer lets it
        through: a second receipt beats a lost one."""
        if ack.ack_type not in (im_pb2.SENT, im_pb2.DELIVERED, im_pb2.READ):
            return False
        try:
            fate = await self.ledger.receipt_fate(
                ack.dest_id, ack.ack_msg_id, ack.from_id, ack.ack_type
            )
        except IMError as exc:
            log.warning("message ledger unavailable, receipt forwarded unchecked: %s", exc)
            return False
        if fate is Fate.FORWARD:
            return False
        self.receipts_dropped += 1
        if fate is Fate.ARRIVED and ack.ack_type != im_pb2.SENT:
            # a client's receipt, and the sender has one: taken, so say so. Not while the
            # earlier copy is only in flight: if that one is lost, this device's next try is
            # what reaches the sender.
            accepted = im_pb2.AckMsg(
                id=self.ids(),
                from_id=ack.dest_id,
                dest_id=ack.from_id,
                ack_type=im_pb2.ACCEPTED,
                ack_msg_id=ack.id,
            )
            await self.route(im_pb2.Envelope(ack=accepted))
        return True

    async def route(self, env: im_pb2.Envelope) -> None:
        """Forward to every connector holding the destination, or store offline."""
        body = env.chat if env.WhichOneof("body") == "chat" else env.ack
        if isinstance(body, im_pb2.AckMsg) and await self._repeated(body):
            return
        devices = await self._lookup(body.dest_id)
        sent = False
        for node in set(devices.values()):
            link = self.links.get(node)
            if link is None:
                continue
            try:
                await link.send(fresh(env))
                sent = True
            except LinkClosed:
                continue
        self.routed += 1
        if sent:
            return
        if env.WhichOneof("body") == "chat":
            await self.store_offline(OfflineItem.of_chat(env.chat))
        else:
            await self.store_offline(OfflineItem.of_ack(env.ack))

    def commit(self, chat: im_pb2.ChatMsg, done: asyncio.Future[im_pb2.Committed | None]) -> None:
        """Start committing ``chat`` to its timeline; ``done`` gets the writer's answer, or None
        when there is none (not committed as far as we know: the sender resends). Started
        here, in arrival order, so the queue sees one conversation's chats in that order; the
        number in flight is bounded by the routing jobs waiting for them (``KeyedSerial``)."""
        assert self.timeline is not None
        timeline = self.timeline
        record = im_pb2.TimelineRecord(origin=self.node_id)
        record.chat.CopyFrom(chat)
        try:
            record.chat.conv_id = pair_conv_id(chat.from_id, chat.dest_id)
        except ValueError as exc:  # the connector lets none through; this one is refused
            log.warning("chat %s/%d has no conversation: %s", chat.from_id, chat.id, exc)
            done.set_result(im_pb2.Committed(chat=chat, refused=im_pb2.BAD_MESSAGE))
            return

        async def run() -> None:
            answer: im_pb2.Committed | None = None
            try:
                (answer,) = await timeline.submit([record])
            except (IMError, ValueError) as exc:
                log.warning("timeline commit of %s/%d failed: %s", chat.from_id, chat.id, exc)
            finally:
                if not done.done():
                    done.set_result(answer)

        task = asyncio.create_task(run(), name=f"commit {chat.from_id}/{chat.id}")
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def route_committed(
        self, env: im_pb2.Envelope, done: asyncio.Future[im_pb2.Committed | None]
    ) -> None:
        """Route a chat once committed, stamped; tell its sender when the writer refused it."""
        answer = await done
        if answer is None:
            return  # not SENT: the sender's library still holds it and resends
        if answer.refused:
            await self._refuse(answer)
            return
        self.committed += 1
        out = fresh(env)
        out.chat.CopyFrom(answer.chat)
        await self.route(out)

    async def route_receipt(self, env: im_pb2.Envelope) -> None:
        """Route a receipt; a READ that names its chat's seq first moves the reader's read
        cursor in the timeline (what the conversation list's unread count is made of). A cursor
        that can't be merged now is logged and the receipt still goes: the next READ moves the
        cursor past it (cursors only go forward)."""
        ack = env.ack
        if self.timeline is not None and ack.ack_type == im_pb2.READ and ack.seq:
            try:
                cursor = im_pb2.Cursor(
                    conv_id=pair_conv_id(ack.from_id, ack.dest_id),
                    user_id=ack.from_id,
                    type=im_pb2.READ,
                    seq=ack.seq,
                )
                await self.timeline.submit(
                    [im_pb2.TimelineRecord(cursor=cursor, origin=self.node_id)]
                )
            except (IMError, ValueError) as exc:
                log.warning("read cursor of %s not merged: %s", ack.from_id, exc)
        await self.route(env)

    async def _refuse(self, answer: im_pb2.Committed) -> None:
        chat = answer.chat
        log.info(
            "chat %s/%d refused by the timeline: %s",
            chat.from_id,
            chat.id,
            im_pb2.ErrorCode.Name(answer.refused),
        )
        fanout = im_pb2.Fanout(users=[chat.from_id], chat=chat, refused=answer.refused)
        devices = await self._lookup(chat.from_id)
        for node in set(devices.values()):
            link = self.links.get(node)
            if link is not None:
                with contextlib.suppress(LinkClosed):
                    await link.send(im_pb2.Envelope(fanout=fanout))

    async def store_offline(self, item: OfflineItem) -> None:
        """Make ``item`` durable, then SENT to a chat's sender, then re-check the recipient."""
        delay = 0.05
        for attempt in range(BACKEND_RETRIES):
            try:
                await self.queue.publish([item])
                break
            except RejectedError as exc:
                log.error(
                    "offline store refused %s/%d for good: %s", item.from_id, item.msg_id, exc
                )
                return
            except IMError as exc:
                if attempt == BACKEND_RETRIES - 1:
                    log.error(
                        "offline store failed for %s/%d: %s; sender will resend",
                        item.from_id,
                        item.msg_id,
                        exc,
                    )
                    return
                log.warning("offline publish failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay *= 2
        self.stored += 1
        # the sender may now drop it from its outbox: SENT for a chat, ACCEPTED for a receipt
        if item.kind == KIND_CHAT:
            sent = im_pb2.AckMsg(
                id=self.ids(),
                from_id=item.to_user_id,
                dest_id=item.from_id,
                ack_type=im_pb2.SENT,
                ack_msg_id=item.msg_id,
            )
            await self.route(im_pb2.Envelope(ack=sent))
        elif item.kind in (im_pb2.DELIVERED, im_pb2.READ):
            receipt = im_pb2.AckMsg.FromString(item.content)
            accepted = im_pb2.AckMsg(
                id=self.ids(),
                from_id=item.to_user_id,
                dest_id=item.from_id,
                ack_type=im_pb2.ACCEPTED,
                ack_msg_id=receipt.id,
            )
            await self.route(im_pb2.Envelope(ack=accepted))
        if not self.queue.stored_on_publish:
            return  # not committed yet: the writer asks for the drain after its commit
        # uncached: a user who just came online must be found, or the row waits for a drain
        devices = await self._lookup(item.to_user_id, cached=False)
        for node in set(devices.values()):
            link = self.links.get(node)
            if link is not None:
                with contextlib.suppress(LinkClosed):
                    await link.send(im_pb2.Envelope(drain=im_pb2.Drain(user_id=item.to_user_id)))

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
        """Stop accepting; give connectors that are leaving a moment to finish sending (their
        last frames may be bounces to store); close the rest; finish queued routing jobs."""
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
        for task in list(self._commits):
            task.cancel()
        await asyncio.gather(*self._commits, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
