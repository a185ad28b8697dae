"""The connector: holds client sockets, authenticates GREET, pushes with ack windows.

Rules it keeps (DESIGN.md §3, seed §8-9):
- nothing from a client is trusted before a GREET whose token verifies locally, is for the
  device it names, and is not revoked (the database is asked at GREET; revocations published
  later close the sessions they cover); from_id must be the session's user; a SINGLE chat or
  READ goes only to a friend; a READ only for a message pushed to that user (its read tag);
- a user has at most ``max_devices`` devices online, counted across the cluster;
- every push to a device goes through a per-session inbox, consumed by one pump task, so the
  offline drain on login and live messages reach the device in one order: the drain is queued
  first, then the session is registered in ``user_status``, then drained once more (rows
  committed while it registered); a ``Drain`` from a transfer queues another drain in line;
- a chat's id must carry the slot of the sender's token (common/ids.py), so two devices of one
  user never make the same id; every chat then passes the message ledger (common/ledger.py): a
  reuse of an id for other content is ``ID_REUSED``, a resend whose SENT was issued is answered
  SENT again and goes no further, and nothing a client set in a server-stamped field
  (``from_store``, ``read_tag``) survives the edge;
- a FILE chat is accepted only if its file is the sender's upload with the size and checksum the
  message claims; accepting it records the recipient's right to download the file (the grant is
  written before the chat is forwarded, so the recipient can always fetch what it receives);
- a device's link ack of a pushed chat is what makes it DELIVERED (and SENT, the server having
  handed it over); drained chats were SENT when they were stored; its ack of a pushed SENT,
  DELIVERED or READ records that receipt in the ledger as arrived, and only that lets the
  transfer drop every later repeat of it;
- when a session ends, whatever it still holds (unacked or queued) goes back to a transfer as a
  ``Bounce`` to be stored offline (seed §8.1, option 2);
- a slow device is disconnected, not buffered without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from common import health
from common.admission import PreAuthLimits
from common.config import Settings
from common.errors import AuthError, BackendError, ConfigError, IMError, ProtocolError
from common.ids import MessageIdGen, conversation_key, slot_of
from common.ledger import MessageLedger, ReceiptKey, Verdict, chat_digest, memory_ledger
from common.link import (
    Link,
    LinkClosed,
    LinkConfig,
    fresh,
    log_peer_error,
    open_link,
    serve_links,
)
from common.tls import server_context
from common.tokens import NO_SLOT, Claims, RevokedSet, TokenSigner
from common.wslink import serve_ws_links
from connector import rules
from connector.rules import State
from offline.base import OfflineStore
from proto import im_pb2
from user_status.base import StatusBackend
from user_status.heartbeat import keep_alive
from user_status.kick import KickBus
from user_status.revocation import RevocationBus

log = logging.getLogger(__name__)

_DRAIN = object()  # inbox marker: drain the offline store here
_SENDER_RECEIPTS = (im_pb2.SENT, im_pb2.DELIVERED, im_pb2.READ)
DRAIN_BATCH = 500
# a drained row stays claimed this long without the device's ack; then any drain may take it
DRAIN_LEASE = 60.0
_SESSION_IDS = itertools.count(1)


class FriendCheck(Protocol):
    """The relation lookup the connector needs (see user_status.relations)."""

    async def are_friends(self, a: str, b: str) -> bool: ...


class FileGrants(Protocol):
    """The file check the connector needs for FILE chats (see common.files.FileStore)."""

    async def grant(
        self, file_id: str, owner: str, size: int, checksum: str, recipient: str
    ) -> bool: ...


class RevocationCheck(Protocol):
    """The database's word on a token (see user_status.revocation.RevocationReader)."""

    async def revoked(self, claims: Claims) -> bool: ...


@dataclass
class Counters:
    """What happened, for logs and tests; each breach of the protocol counts once."""

    connections: int = 0
    sessions: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    bounced: int = 0
    duplicates: int = 0  # chats resent with an id the ledger knew (same message)
    reused: int = 0  # chats refused as ID_REUSED

    def error(self, code_name: str) -> None:
        self.errors[code_name] = self.errors.get(code_name, 0) + 1


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ClientSession:
    """One client connection: the protocol rules on top of a :class:`Link`."""

    def __init__(self, connector: Connector) -> None:
        self.c = connector
        self.state = State.CONNECTED
        self.user_id = ""
        self.device_id = ""
        self.claims: Claims | None = None
        self.link: Link | None = None
        # chats and drain markers, in order; receipts have a lane of their own, served first
        # and between drained rows, so a long drain never piles up the device's ACCEPTEDs
        # (receipts carry no order among chats). Both together hold at most session_queue.
        self._inbox: deque[object] = deque()
        self._receipts: deque[im_pb2.Envelope] = deque()
        self._queue_limit = connector.settings.session_queue
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._handing_back = False  # closed, still taking pushes to hand them back in order
        self._drain_queued = False
        self._drained_seqs: dict[int, int] = {}  # link seq of a drained frame -> its store row
        # link seq -> what was pushed with it, until the device acks it (at most a window)
        self._pushed: dict[int, im_pb2.Envelope] = {}
        self._acked_upto = 0
        self.session_key = f"{connector.node_id}#{next(_SESSION_IDS)}"
        loop = asyncio.get_running_loop()
        self._bucket = TokenBucket(
            connector.settings.rate_limit, connector.settings.rate_burst, loop.time()
        )

    def __repr__(self) -> str:
        return f"<ClientSession {self.user_id or '?'}/{self.device_id or '?'} {self.state.name}>"

    # -- LinkHandler -------------------------------------------------------------------------

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        try:
            rules.check(self.state, kind)
            if kind == "greet":
                await self._greet(link, env.greet)
            elif kind == "chat":
                await self._chat(env)
            elif kind == "ack":
                await self._receipt(env)
            elif kind == "drain":
                self._drain_request(env.drain)
        except ProtocolError as err:
            if not err.fatal:  # fatal ones end the link and are counted in on_closed
                self.c.counters.error(err.code_name)
            raise

    def on_acked(self, link: Link, upto: int) -> None:
        """The device has the frames up to ``upto``. A live chat is now SENT (the server handed
        it over); a client's receipt is ACCEPTED. Drained ones got theirs when they were stored.
        A SENT, DELIVERED or READ it got, live or drained, is recorded in the message ledger as
        arrived: only now may the transfer drop every repeat of it."""
        delivered_rows: list[int] = []
        arrived: list[ReceiptKey] = []
        first, self._acked_upto = self._acked_upto + 1, max(self._acked_upto, upto)
        for seq in range(first, upto + 1):
            env = self._pushed.pop(seq, None)
            row_id = self._drained_seqs.pop(seq, None)
            if env is None:
                continue
            drained = row_id is not None
            if row_id:
                delivered_rows.append(row_id)
            kind = env.WhichOneof("body")
            if kind == "chat":
                self.c.counters.delivered += 1
                if not drained:
                    self.c.forward_soon(_receipt(self.c, env.chat, im_pb2.SENT))
            elif kind == "ack" and env.ack.ack_type in _SENDER_RECEIPTS:
                a = env.ack
                arrived.append(ReceiptKey(a.dest_id, a.ack_msg_id, a.from_id, a.ack_type))
                if not drained and a.ack_type != im_pb2.SENT:
                    self.c.forward_soon(_accepted(self.c, a))
        if delivered_rows:
            self.c.mark_delivered_soon(delivered_rows)
        if arrived:
            self.c.receipts_arrived_soon(arrived)

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        self.state = State.CLOSING
        # from now on push() queues for the hand-back below instead of refusing: a refusal
        # bounces at once, ahead of what this session still holds
        self._handing_back = True
        if self._pump is not None:
            # the pump sees the link closed (at once if idle, else at its next send) and stops;
            # what it had not sent is still queued
            self._wake.set()
            await asyncio.gather(self._pump, return_exceptions=True)
        # Hand back what the device never acked, then what was queued, then what keeps coming
        # for it while we do (push() still queues here): still registered until the queue is
        # empty, so nothing newer can reach the store ahead of it (per-conversation order).
        leftovers = list(unacked)
        while True:
            leftovers += self._receipts
            leftovers += [item for item in self._inbox if isinstance(item, im_pb2.Envelope)]
            self._receipts.clear()
            self._inbox.clear()
            if not leftovers:
                break
            for env in leftovers:
                await self.c.bounce(env)
            leftovers = []
        # Only the session still registered for this device may take it offline: a reconnect
        # to this same connector has already replaced us, and its entry must stay.
        if self.user_id and self.c.unregister(self):
            try:
                await self.c.status.offline(self.user_id, self.device_id, self.c.node_id)
            except IMError as exc:
                log.warning("%s: could not record offline: %s", self, exc)
        if link.close_error is not None:
            self.c.counters.error(link.close_error.code_name)
            log.info("%s: closed (%s)", self, link.close_error.code_name)

    # -- inbound -----------------------------------------------------------------------------

    async def _greet(self, link: Link, greet: im_pb2.Greet) -> None:
        try:
            claims = self.c.signer.verify(greet.token)
        except AuthError as exc:
            raise ProtocolError(str(exc), code=im_pb2.BAD_TOKEN, fatal=True) from None
        device = greet.device_id or claims.device_id or "default"
        if len(device) > 64:
            raise ProtocolError("device_id too long", code=im_pb2.BAD_MESSAGE, fatal=True)
        bound = claims.device_id or "default"
        if device != bound:
            raise ProtocolError(f"token is for device {bound!r}", code=im_pb2.BAD_TOKEN, fatal=True)
        if claims.slot == NO_SLOT:
            # made before id slots: its device's ids could collide with another's. The client
            # library logs in again after a refused GREET and gets a token with its slot.
            raise ProtocolError(
                "token has no message id slot: log in again", code=im_pb2.BAD_TOKEN, fatal=True
            )
        if await self.c.is_revoked(claims):
            raise ProtocolError("token revoked", code=im_pb2.BAD_TOKEN, fatal=True)
        await self.c.check_devices(claims.user_id, device)
        # no await from here to register(): a revocation that arrived while we asked the
        # database is in the set now, and one arriving later finds the session registered
        if self.c.revoked.covers(claims):
            raise ProtocolError("token revoked", code=im_pb2.BAD_TOKEN, fatal=True)
        self.claims = claims
        self.user_id, self.device_id = claims.user_id, device
        self.state = State.AUTHENTICATED
        link.authenticated = True
        link.name = f"{link.name} {self.user_id}/{device}"
        s = self.c.settings
        link.send_control(
            im_pb2.Envelope(
                welcome=im_pb2.Welcome(
                    user_id=self.user_id,
                    node_id=self.c.node_id,
                    heartbeat_ms=int(s.heartbeat * 1000),
                    max_frame_bytes=s.max_frame,
                    window=s.window,
                    id_slot=claims.slot,
                )
            )
        )
        # Offline before live (seed §9): local routing first, so a Drain or a live message
        # arriving from now on queues behind the first drain; then go online; then drain again
        # for rows committed while we registered.
        self.c.register(self)
        self._pump = asyncio.create_task(self._run_pump(link), name=f"pump {link.name}")
        self._inbox.append(_DRAIN)
        self._wake.set()
        await self.c.status.online(self.user_id, device, self.c.node_id)
        self.queue_drain()
        self.c.counters.sessions += 1
        log.info("%s: online", self)

    async def _chat(self, env: im_pb2.Envelope) -> None:
        out = fresh(env)
        chat = out.chat
        rules.check_chat(self.user_id, chat, self.c.settings.max_frame - rules.ENVELOPE_HEADROOM)
        assert self.claims is not None
        if slot_of(chat.id) != self.claims.slot:
            raise ProtocolError(
                f"message id {chat.id} is of id slot {slot_of(chat.id)}, "
                f"this device's is {self.claims.slot}"
            )
        rules.clear_stamps(chat)  # server-owned: stamped by the timeline and on each push
        self._rate()
        if not await self.c.friends.are_friends(self.user_id, chat.dest_id):
            raise ProtocolError(f"{chat.dest_id!r} is not your friend", code=im_pb2.NOT_FRIEND)
        if chat.msg_type == im_pb2.FILE:
            await self._grant_file(chat)
        try:
            verdict = await self.c.ledger.claim(
                self.user_id, chat.id, chat.dest_id, chat_digest(chat)
            )
        except IMError as exc:
            log.error("%s: message ledger unavailable: %s", self, exc)
            raise ProtocolError(
                "message ledger unavailable, retry later", code=im_pb2.INTERNAL
            ) from None
        if verdict is Verdict.REUSED:
            self.c.counters.reused += 1
            raise ProtocolError(
                f"message id {chat.id} was used for another message", code=im_pb2.ID_REUSED
            )
        if verdict is Verdict.DONE:
            # the sender missed its SENT: tell it again, and only it; nothing goes further
            self.c.counters.duplicates += 1
            self.push(_receipt(self.c, chat, im_pb2.SENT))
            return
        if verdict is Verdict.RESEND:
            self.c.counters.duplicates += 1
        await self.c.forward(out)

    async def _grant_file(self, chat: im_pb2.ChatMsg) -> None:
        f = chat.file
        granted = False
        if self.c.files is not None:
            try:
                granted = await self.c.files.grant(
                    f.id, self.user_id, f.size, f.checksum, chat.dest_id
                )
            except IMError as exc:
                log.error("%s: file grant failed: %s", self, exc)
                raise ProtocolError(
                    "file store unavailable, retry later", code=im_pb2.INTERNAL
                ) from None
        if not granted:
            raise ProtocolError(
                f"no upload {f.id!r} of yours with that size and checksum",
                code=im_pb2.NO_SUCH_FILE,
            )

    async def _receipt(self, env: im_pb2.Envelope) -> None:
        rules.check_receipt(self.user_id, env.ack)
        self._rate()
        ack = env.ack
        signer = self.c.signer
        if not signer.check_read_tag(self.user_id, ack.dest_id, ack.ack_msg_id, ack.read_tag):
            raise ProtocolError(
                f"message {ack.ack_msg_id} of {ack.dest_id!r} was not given to you",
                code=im_pb2.NOT_RECEIVED,
            )
        if not await self.c.friends.are_friends(self.user_id, env.ack.dest_id):
            raise ProtocolError(f"{env.ack.dest_id!r} is not your friend", code=im_pb2.NOT_FRIEND)
        out = fresh(env)
        out.ack.read_tag = b""  # it proved receipt to us; the sender has no use for it
        await self.c.forward(out)

    def _drain_request(self, drain: im_pb2.Drain) -> None:
        """The client misses a message that may be in the offline store: drain, in line."""
        if drain.user_id and drain.user_id != self.user_id:
            raise ProtocolError("a client drains only itself", code=im_pb2.SPOOFED_SENDER)
        self._rate()
        self.queue_drain()

    def _tag(self, env: im_pb2.Envelope) -> im_pb2.Envelope:
        """Stamp a chat about to be pushed with this user's read tag (proof of receipt)."""
        if env.WhichOneof("body") == "chat":
            chat = env.chat
            chat.read_tag = self.c.signer.read_tag(self.user_id, chat.from_id, chat.id)
        return env

    def revoke(self) -> None:
        """The session's token was revoked: close it as a bad token."""
        if self.link is not None:
            log.info("%s: token revoked, closing", self)
            self.link.close(ProtocolError("token revoked", code=im_pb2.BAD_TOKEN, fatal=True))

    def _rate(self) -> None:
        if not self._bucket.take(asyncio.get_running_loop().time()):
            raise ProtocolError("too many messages", code=im_pb2.RATE_LIMITED)

    # -- outbound ----------------------------------------------------------------------------

    def push(self, env: object) -> bool:
        """Queue a chat, receipt or drain for the device; False (and the session closes) when
        the device is too far behind."""
        if not self._handing_back and (
            self.state is not State.AUTHENTICATED or self.link is None or self.link.closing
        ):
            return False
        queued = len(self._inbox) + len(self._receipts)
        if queued >= self._queue_limit:
            log.warning("%s: device is too slow (%d queued): closing", self, queued)
            if self.link is not None:
                self.link.close(ProtocolError("too slow", code=im_pb2.WINDOW_FULL, fatal=True))
            return False
        if isinstance(env, im_pb2.Envelope) and env.WhichOneof("body") == "ack":
            self._receipts.append(env)
        else:
            self._inbox.append(env)
        self._wake.set()
        return True

    def queue_drain(self) -> None:
        """Drain the offline store in line with live pushes (a ``Drain`` or a login). One drain
        waiting in the inbox covers any number of requests made before it starts."""
        if not self._drain_queued and self.push(_DRAIN):
            self._drain_queued = True

    async def _send_receipts(self, link: Link) -> None:
        """Send the receipt lane; an item leaves the lane only once it is in the window, so a
        link that closes meanwhile finds it there and on_closed hands it back."""
        while self._receipts:
            seq = await link.send(self._receipts[0])
            self._pushed[seq] = self._receipts.popleft()

    async def _run_pump(self, link: Link) -> None:
        store = self.c.store
        try:
            while not link.closing:
                # closed while we were busy (e.g. draining): on_closed waits for us and hands
                # back what is still queued
                await self._send_receipts(link)
                if not self._inbox:
                    if not self._receipts:
                        self._wake.clear()
                        await self._wake.wait()
                    continue
                item = self._inbox[0]
                if isinstance(item, im_pb2.Envelope):
                    seq = await link.send(self._tag(item))
                    self._pushed[seq] = item
                    self._inbox.popleft()
                    continue
                self._inbox.popleft()
                self._drain_queued = False
                while True:
                    rows = await store.drain(
                        self.user_id,
                        DRAIN_BATCH,
                        device=self.device_id,
                        session=self.session_key,
                        lease=DRAIN_LEASE,
                    )
                    for i, row in enumerate(rows):
                        try:
                            if self._receipts:
                                await self._send_receipts(link)
                            env = self._tag(_from_store(row.envelope()))
                            seq = await link.send(env)
                        except LinkClosed:
                            # claimed but not pushed: back to the store, armed again
                            for rest in rows[i:]:
                                await self.c.bounce(rest.envelope())
                            raise
                        self._drained_seqs[seq] = row.row_id
                        self._pushed[seq] = env
                    if len(rows) < DRAIN_BATCH:
                        break
        except LinkClosed:
            pass
        except IMError as exc:
            log.error("%s: offline drain failed: %s; closing so the client retries", self, exc)
            link.close(ProtocolError("offline store unavailable", code=im_pb2.INTERNAL, fatal=True))


def _from_store(env: im_pb2.Envelope) -> im_pb2.Envelope:
    if env.WhichOneof("body") == "chat":
        env.chat.from_store = True
    return env


def _receipt(c: Connector, chat: im_pb2.ChatMsg, kind: im_pb2.AckType) -> im_pb2.Envelope:
    """A server-made receipt for ``chat``, from its recipient to its sender."""
    ack = im_pb2.AckMsg(
        id=c.ids(),
        from_id=chat.dest_id,
        dest_id=chat.from_id,
        ack_type=kind,
        ack_msg_id=chat.id,
        seq=chat.seq,  # its place in the timeline, for the sender's library
    )
    return im_pb2.Envelope(ack=ack)


def _accepted(c: Connector, receipt: im_pb2.AckMsg) -> im_pb2.Envelope:
    """ACCEPTED for a client's receipt: back to the client that sent it, naming its id."""
    ack = im_pb2.AckMsg(
        id=c.ids(),
        from_id=receipt.dest_id,
        dest_id=receipt.from_id,
        ack_type=im_pb2.ACCEPTED,
        ack_msg_id=receipt.id,
    )
    return im_pb2.Envelope(ack=ack)


def _conversation_of(env: im_pb2.Envelope) -> str | None:
    kind = env.WhichOneof("body")
    if kind == "bounce":
        inner = env.bounce.WhichOneof("body")
        if inner is None:
            return None
        body: im_pb2.ChatMsg | im_pb2.AckMsg = getattr(env.bounce, inner)
    elif kind == "chat":
        body = env.chat
    elif kind == "ack":
        body = env.ack
    else:
        return None
    return conversation_key(body.from_id, body.dest_id)


def _msg_key(env: im_pb2.Envelope) -> int:
    return env.chat.id if env.WhichOneof("body") == "chat" else env.ack.ack_msg_id


class TransferLinkHandler:
    """The connector's side of its link to one transfer."""

    def __init__(self, connector: Connector, node_id: str, addr: tuple[str, int]) -> None:
        self.c = connector
        self.node_id = node_id
        self.addr = addr
        self.ready = asyncio.Event()
        self.link: Link | None = None
        self.task: asyncio.Task[None] | None = None
        self.rank = b""
        # set as soon as the link is down, before on_closed reroutes what it held: the keeper
        # dials again at once, since that reroute may need this transfer's next link
        self.down = asyncio.Event()

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind in ("chat", "ack"):
            await self.c.deliver_local(env)
        elif kind == "drain":
            for s in self.c.sessions_of(env.drain.user_id):
                s.queue_drain()
        elif kind == "fanout":
            self.c.fanout(env.fanout)
        elif kind == "welcome":
            self.ready.set()
            health.LINKS.up(self.c.node_id, "transfer", self.node_id)  # readiness, im_node_links
        elif kind == "error":
            log_peer_error(log, link, env)
        else:
            raise ProtocolError(f"unexpected {kind} from a transfer", code=im_pb2.UNKNOWN_TYPE)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        self.ready.clear()
        self.down.set()
        health.LINKS.down(self.c.node_id, "transfer", self.node_id)
        if unacked:
            log.warning(
                "transfer %s gone with %d unacked frames; sending them through another",
                link.name,
                len(unacked),
            )
            await self.c.reroute(unacked)


TransferSource = Callable[[], Awaitable[dict[str, str]]]


def _addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _static_transfers(settings: Settings) -> TransferSource:
    """Without a shared registry: the configured transfer addresses, named by address."""
    fixed = {f"{h}:{p}": f"{h}:{p}" for h, p in settings.transfers()}

    async def source() -> dict[str, str]:
        return fixed

    return source


class Connector:
    def __init__(
        self,
        settings: Settings,
        status: StatusBackend,
        store: OfflineStore,
        friends: FriendCheck,
        signer: TokenSigner,
        transfer_source: TransferSource | None = None,
        *,
        files: FileGrants | None = None,
        revocations: RevocationBus | None = None,
        revocation_check: RevocationCheck | None = None,
        kicks: KickBus | None = None,
        ledger: MessageLedger | None = None,
    ) -> None:
        self.settings = settings
        self.status = status
        self.store = store
        self.friends = friends
        self.signer = signer
        self.files = files  # None: every FILE chat is refused with NO_SUCH_FILE
        self.node_id = settings.name(settings.connector_port)
        self.ids = MessageIdGen()
        # None: one of this connector's own (the embedded mode shares one with its transfer)
        self.ledger: MessageLedger = memory_ledger(settings) if ledger is None else ledger
        self.counters = Counters()
        self.link_config = LinkConfig.from_settings(settings, node=True)
        # clients are untrusted: control frames rate limited, unknown fields dropped, a GREET
        # deadline, and a place among the unauthenticated until the GREET is accepted
        self.client_link_config = LinkConfig.from_settings(settings)
        self.preauth = PreAuthLimits(settings.preauth_per_address, settings.preauth_max)
        # None: no revocations reach this connector (a deployment without REST logout)
        self.revocations = revocations
        self.revocation_check = revocation_check
        self.kicks = kicks  # None: no admin API reaches this connector
        self.revoked = RevokedSet()
        self._sessions: dict[str, dict[str, ClientSession]] = {}
        self._transfers: dict[str, TransferLinkHandler] = {}
        self._transfer_source = transfer_source or _static_transfers(settings)
        self._rerouting = 0
        self._reroute_done = asyncio.Event()
        self._reroute_done.set()
        self._server: asyncio.Server | None = None
        self._ws_server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.port = settings.connector_port
        self.ws_port = 0  # the WebSocket port once listening (0: off)
        self.address = ""

    # -- routing table -----------------------------------------------------------------------

    def register(self, s: ClientSession) -> None:
        devices = self._sessions.setdefault(s.user_id, {})
        old = devices.get(s.device_id)
        devices[s.device_id] = s
        if old is not None and old.link is not None:
            old.link.close(
                ProtocolError("signed in again elsewhere", code=im_pb2.REPLACED, fatal=True)
            )

    def unregister(self, s: ClientSession) -> bool:
        """Remove ``s`` if it is still the device's session; False if a newer one replaced it."""
        devices = self._sessions.get(s.user_id)
        if devices is None or devices.get(s.device_id) is not s:
            return False
        del devices[s.device_id]
        if not devices:
            del self._sessions[s.user_id]
        return True

    def sessions_of(self, user_id: str) -> list[ClientSession]:
        return list(self._sessions.get(user_id, {}).values())

    def fanout(self, fanout: im_pb2.Fanout) -> None:
        """A transfer's word about a chat for some users' devices here. Today: the timeline
        refused the chat (``ID_REUSED``), so every device of its sender hears an error naming
        it (the one that sent it drops it from its outbox; the others know no such id)."""
        if not fanout.refused or fanout.WhichOneof("body") != "chat":
            return
        err = ProtocolError(
            f"message id {fanout.chat.id} was used before for another message",
            code=fanout.refused,
        )
        for user in fanout.users:
            for s in self.sessions_of(user):
                if s.link is not None:
                    s.link.send_error(err, ref_msg_id=fanout.chat.id)
                    self.counters.error(err.code_name)

    async def is_revoked(self, claims: Claims) -> bool:
        """Revoked as far as we know: published to us, or in the database. A database that does
        not answer is logged and passed over (fail open): the published revocations still
        apply, and refusing every login during an outage would be worse."""
        if self.revoked.covers(claims):
            return True
        if self.revocation_check is None:
            return False
        try:
            return await self.revocation_check.revoked(claims)
        except BackendError as exc:
            log.warning("revocation check skipped for %s: %s", claims.user_id, exc)
            self.counters.error("REVOCATION_UNCHECKED")
            return False

    async def check_devices(self, user_id: str, device: str) -> None:
        """Refuse one more device when the user already has ``max_devices`` online, here or on
        another connector (``user_status``); a reconnecting device does not count twice."""
        limit = self.settings.max_devices
        try:
            elsewhere = set(await self.status.lookup(user_id))
        except IMError as exc:
            log.warning("device count of %s from this connector only: %s", user_id, exc)
            elsewhere = set()
        devices = elsewhere | set(self._sessions.get(user_id, {}))
        devices.discard(device)
        if len(devices) >= limit:
            raise ProtocolError(
                f"{len(devices)} devices online already, the limit is {limit}",
                code=im_pb2.TOO_MANY_DEVICES,
                fatal=True,
            )

    async def _follow_revocations(self, bus: RevocationBus) -> None:
        async for rev in bus.follow():
            if rev is None:
                # (re)subscribed: whatever was published meanwhile is only in the database
                for sessions in list(self._sessions.values()):
                    for session in list(sessions.values()):
                        if session.claims is not None and await self.is_revoked(session.claims):
                            session.revoke()
                continue
            self.revoked.add(rev)
            for session in self.sessions_of(rev.user_id):
                if session.claims is not None and rev.covers(session.claims):
                    session.revoke()

    async def _follow_kicks(self, bus: KickBus) -> None:
        """An admin kicked a device (user_status/kick.py): close its session if it is here.
        REPLACED, so the client library does not reconnect by itself."""
        async for kick in bus.follow():
            for session in self.sessions_of(kick.user_id):
                if kick.matches(session.user_id, session.device_id) and session.link is not None:
                    log.info("%s: kicked (%s)", session, kick.reason)
                    session.link.close(ProtocolError(kick.reason, code=im_pb2.REPLACED, fatal=True))

    @property
    def online_sessions(self) -> int:
        return sum(len(d) for d in self._sessions.values())

    async def deliver_local(self, env: im_pb2.Envelope) -> None:
        body = env.chat if env.WhichOneof("body") == "chat" else env.ack
        pushed = False
        for s in self.sessions_of(body.dest_id):
            pushed = s.push(fresh(env)) or pushed
        if not pushed:
            # spawned, not awaited: this runs on the transfer link's reader, which must keep
            # reading (and acking) even when the link back to the transfer is full
            self._spawn(self.bounce(env))

    # -- transfer links ----------------------------------------------------------------------

    def _pick(self, key: str) -> Link | None:
        """The transfer for a conversation, by rendezvous hashing over the linked transfers: one
        conversation keeps one path while its transfer lives, and a transfer joining or leaving
        moves only the conversations it wins or held."""
        best: tuple[int, str] | None = None
        link: Link | None = None
        for node, handler in self._transfers.items():
            cand = handler.link
            if cand is None or cand.closing or not handler.ready.is_set():
                continue
            score = (zlib.crc32(handler.rank + key.encode()), node)
            if best is None or score > best:
                best, link = score, cand
        return link

    async def reroute(self, unacked: list[im_pb2.Envelope]) -> None:
        """Send what a lost transfer link never acknowledged through the transfers still up,
        before anything newer is forwarded (per-conversation order). The lost transfer may
        have routed some of it already: peers dedupe, the store keeps one row per identity."""
        self._rerouting += 1
        self._reroute_done.clear()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(5.0, 2 * self.settings.node_ttl)
            for env in unacked:
                key = _conversation_of(env)
                if key is None:
                    continue
                while True:
                    link = self._pick(key)
                    try:
                        if link is None:
                            raise LinkClosed("no transfer")
                        await link.send(fresh(env))
                        break
                    except LinkClosed:
                        if loop.time() > deadline or self._stopping:
                            log.error("no transfer to take %s back", env.WhichOneof("body"))
                            self.counters.error("REROUTE_LOST")
                            break
                        await asyncio.sleep(0.1)
        finally:
            self._rerouting -= 1
            if not self._rerouting:
                self._reroute_done.set()

    async def forward(self, env: im_pb2.Envelope) -> None:
        if self._rerouting:
            await self._reroute_done.wait()
        body = env.chat if env.WhichOneof("body") == "chat" else env.ack
        link = self._pick(conversation_key(body.from_id, body.dest_id))
        if link is None:
            raise ProtocolError("no transfer available, retry later", code=im_pb2.INTERNAL)
        try:
            await link.send(env)
        except LinkClosed:
            raise ProtocolError("transfer link lost, retry later", code=im_pb2.INTERNAL) from None

    def mark_delivered_soon(self, row_ids: list[int]) -> None:
        """Drained rows the device acked: final in the store (a failure only means the row is
        pushed again after its lease, and the client drops the copy)."""
        self._spawn(self._mark_delivered(row_ids))

    async def _mark_delivered(self, row_ids: list[int]) -> None:
        try:
            await self.store.mark_delivered(row_ids)
        except IMError as exc:
            log.warning("%d drained rows not marked delivered: %s", len(row_ids), exc)

    def receipts_arrived_soon(self, keys: list[ReceiptKey]) -> None:
        """Record receipts a sender's device acked (a failure only lets a later repeat through
        to the sender, whose client library drops it)."""
        self._spawn(self._receipts_arrived(keys))

    async def _receipts_arrived(self, keys: list[ReceiptKey]) -> None:
        try:
            await self.ledger.receipts_arrived(keys)
        except IMError as exc:
            log.warning("%d arrived receipts not recorded: %s", len(keys), exc)

    def forward_soon(self, env: im_pb2.Envelope) -> None:
        """Forward a server-made receipt without blocking the caller (a sync callback)."""
        self._spawn(self._forward_logged(env))

    async def _forward_logged(self, env: im_pb2.Envelope) -> None:
        try:
            await self.forward(env)
        except ProtocolError as err:
            log.warning("receipt %s not forwarded: %s", env.ack.ack_msg_id, err.detail)
            self.counters.error("RECEIPT_LOST")

    async def bounce(self, env: im_pb2.Envelope) -> None:
        """Hand an undeliverable chat or receipt to a transfer to store offline."""
        kind = env.WhichOneof("body")
        if kind == "chat":
            bounce = im_pb2.Bounce(chat=env.chat)
            key = conversation_key(env.chat.from_id, env.chat.dest_id)
        elif kind == "ack":
            bounce = im_pb2.Bounce(ack=env.ack)
            key = conversation_key(env.ack.from_id, env.ack.dest_id)
        else:
            return
        self.counters.bounced += 1
        link = self._pick(key)
        try:
            if link is None:
                raise LinkClosed("no transfer")
            await link.send(im_pb2.Envelope(bounce=bounce))
        except LinkClosed:
            # Not acknowledged to anyone yet as stored: the sender still holds it until SENT.
            log.error("could not hand back %s %d: no transfer", kind, _msg_key(env))
            self.counters.error("BOUNCE_LOST")

    async def _keep_transfer_link(self, handler: TransferLinkHandler) -> None:
        delay = 0.1
        token = self.signer.issue(self.node_id, 3600 * 24 * 365, role="node")
        host, port = handler.addr
        while not self._stopping:
            handler.down.clear()
            try:
                link = await open_link(
                    host, port, handler, self.link_config, name=f"transfer {handler.node_id}"
                )
            except (OSError, TimeoutError) as exc:
                log.debug(
                    "transfer %s at %s:%d not reachable: %s", handler.node_id, host, port, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            handler.link = link
            link.send_control(
                im_pb2.Envelope(greet=im_pb2.Greet(token=token, node_id=self.node_id))
            )
            log.info("linked to transfer %s at %s:%d", handler.node_id, host, port)
            try:
                # not link.run(): that waits for on_closed, whose reroute of the frames the
                # link held waits for a transfer link, which (one transfer) only this loop
                # makes; waiting there kept the connector unlinked for the reroute's deadline
                await handler.down.wait()
            finally:
                handler.link = None
            if not self._stopping:
                log.warning("link to transfer %s lost; reconnecting", handler.node_id)

    async def _watch_transfers(self) -> None:
        """Link to every live transfer, and drop the links of those that left the registry."""
        interval = max(0.2, self.settings.node_ttl / 3)
        while not self._stopping:
            try:
                live = await self._transfer_source()
            except IMError as exc:
                log.warning("transfer list unavailable, keeping the current links: %s", exc)
            else:
                self._reconcile(live)
            await asyncio.sleep(interval)

    def _reconcile(self, live: dict[str, str]) -> None:
        for node, handler in list(self._transfers.items()):
            addr = live.get(node)
            if addr is None or _addr(addr) != handler.addr:
                log.info("transfer %s left the registry; unlinking", node)
                del self._transfers[node]
                if handler.task is not None:
                    handler.task.cancel()
                if handler.link is not None:
                    handler.link.close()
        for node, addr in live.items():
            if node in self._transfers:
                continue
            try:
                handler = TransferLinkHandler(self, node, _addr(addr))
            except ConfigError as exc:
                log.warning("transfer %s has a bad address: %s", node, exc)
                continue
            handler.rank = node.encode()
            self._transfers[node] = handler
            handler.task = asyncio.create_task(
                self._keep_transfer_link(handler), name=f"link {node}"
            )

    async def _announce(self) -> None:
        """The registry had lost this connector (first beat, lapse, Redis restarted empty):
        record every session again, then drain them, for rows stored while they were unseen."""
        for sessions in list(self._sessions.values()):
            for session in list(sessions.values()):
                await self.status.online(session.user_id, session.device_id, self.node_id)
                session.queue_drain()

    async def _follow_drain_requests(self) -> None:
        async for users in self.status.drain_requests(self.node_id):
            if users is None:
                for sessions in list(self._sessions.values()):
                    for session in list(sessions.values()):
                        session.queue_drain()
                continue
            for user in users:
                for session in self.sessions_of(user):
                    session.queue_drain()

    # -- lifecycle ---------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, *, wait_transfers: float = 5.0) -> None:
        s = self.settings
        tls = server_context(s.tls_cert, s.tls_key) if s.tls_enabled() else None
        self._server = await serve_links(
            s.bind_host,
            s.connector_port,
            self._on_client,
            self.client_link_config,
            start_serving=False,
            ssl=tls,
            # a handshake that stalls is closed like a missing GREET
            ssl_handshake_timeout=s.greet_timeout if tls is not None else None,
            admission=self.preauth,
        )
        if s.ws_port:
            # browsers: the same sessions, limits and admission bounds over WebSocket
            self._ws_server = await serve_ws_links(
                s.bind_host,
                s.ws_port,
                self._on_client,
                self.client_link_config,
                start_serving=False,
                ssl=tls,
                ssl_handshake_timeout=s.greet_timeout if tls is not None else None,
                admission=self.preauth,
            )
            self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        if not s.node_id and s.connector_port == 0:
            self.node_id = s.name(self.port)
        self.address = f"{s.advertised_host()}:{self.port}"
        # live in the registry before the first client registers: lookups forget devices on
        # connectors they don't know
        await self.status.beat("connector", self.node_id, self.address, s.node_ttl)
        self._spawn(
            keep_alive(
                self.status, "connector", self.node_id, self.address, s.node_ttl, self._announce
            )
        )
        self._spawn(self._follow_drain_requests())
        if self.revocations is not None:
            self._spawn(self._follow_revocations(self.revocations))
        if self.kicks is not None:
            self._spawn(self._follow_kicks(self.kicks))
        self._spawn(self._watch_transfers())
        # serve once a transfer link is up: transfers started beside us may not be in the
        # registry at the first look, so keep looking (the watcher adds them) for a while
        for _ in range(max(1, int(wait_transfers / 0.05))):
            if any(h.ready.is_set() for h in self._transfers.values()):
                break
            await asyncio.sleep(0.05)
        else:
            log.warning("no transfer reachable yet; clients will get errors until one is")
        await self._server.start_serving()
        if self._ws_server is not None:
            await self._ws_server.start_serving()

    def _on_client(self, link: Link) -> ClientSession:
        """A client connection was accepted (the GREET deadline is the link's own)."""
        self.counters.connections += 1
        session = ClientSession(self)
        session.link = link
        if self._stopping:
            link.close()
        return session

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close sessions (their leftovers bounce), leave the registry, then drop
        transfer links."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._ws_server is not None:
            self._ws_server.close()
        sessions = [s for d in self._sessions.values() for s in d.values()]
        for s in sessions:
            if s.link is not None:
                s.link.close(
                    ProtocolError("server stopping", code=im_pb2.SHUTTING_DOWN, fatal=True)
                )
        waits = [s.link.wait_closed() for s in sessions if s.link is not None]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=grace)
        try:
            await self.status.leave("connector", self.node_id)
        except IMError as exc:
            log.warning("could not leave the registry: %s", exc)
        # the sessions' last bounces must reach a transfer before its link goes
        for _ in range(int(min(grace, 3.0) / 0.02)):
            if not any(
                h.link is not None and not h.link.closing and h.link.unacked
                for h in self._transfers.values()
            ):
                break
            await asyncio.sleep(0.02)
        for handler in self._transfers.values():
            if handler.link is not None:
                handler.link.close()
            if handler.task is not None:
                self._tasks.add(handler.task)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._ws_server is not None:
            await self._ws_server.wait_closed()
