"""The client's chat link: GREET, send sealed chats and receipts, surface events once each.

Rules it keeps (DESIGN §5):
- bodies are sealed with the pair key before they leave (common.crypto); a body that fails to
  open is reported as a ServerError-like event with code ``UNREADABLE``, never shown;
- files go over REST, encrypted with a key of their own that travels in the sealed body
  (client/files.py); a FILE message whose sealed body names another file than the server-visible
  reference is ``UNREADABLE`` too;
- every chat and every receipt this device sends stays in an outbox until the server takes
  responsibility for it (SENT for a chat, ACCEPTED for a DELIVERED or READ); it is resent, with
  the same id and in the original order, after a reconnect and when unconfirmed for a while;
  the server and the peer's dedupe make resending safe. The outbox is bounded: ``send_text``
  waits for room;
- a new message is answered with DELIVERED by this device (through the outbox), so the receipt
  survives any server crash between the device and the sender;
- each message and each receipt is surfaced once: dedupe by (from_id, message id) and by
  (peer, message id, receipt type), in bounded memory;
- per-conversation order: every chat carries this client's stream id, its place among our
  messages to that peer and the lowest place not yet DELIVERED (client/order.py); received ones
  are surfaced in their sender's order, a message past a gap waiting (bounded) for the missing
  one, and a gap that lasts asks the connector to drain the offline store;
- TLS to the connector when the login answer says so (or when asked), verifying the server's
  certificate and host name by default;
- DELIVERED and READ carry the read tag the connector stamped on the message, its proof of
  receipt;
- a lost link is reconnected with back-off, asking REST for a live connector (falling back on
  the ones it listed), then re-GREETed, then the outbox is resent;
- events wait in a bounded queue: an application that stops reading stops the link, and the
  server then treats this device as slow instead of us buffering without bound;
- history (``history``, ``conversations``) comes over REST sealed and is opened with the pair
  key exactly as a pushed chat is (docs/timeline.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from google.protobuf.message import DecodeError

from client.files import FileInfo, download_file, upload_file
from client.history import Conversation, StoredChat
from client.order import DEFAULT_HOLD, StreamOrder
from client.rest import FriendRequests, LoginAnswer, RestClient, RestError
from common.convid import is_conv_id, pair_conv_id, parse_conv_id
from common.crypto import SealError, open_sealed, seal
from common.errors import IMError, ProtocolError
from common.ids import MessageIdGen
from common.link import Link, LinkClosed, LinkConfig, fresh, open_link
from common.tls import client_context
from common.userids import canonical_or_none
from proto import im_pb2

log = logging.getLogger(__name__)

# Remember this many surfaced ids per kind: far more than can be in flight or drained at once.
DEDUPE_MEMORY = 100_000
OUTBOX_SIZE = 10_000  # chats waiting for SENT; send_text waits beyond this
RESEND_AFTER = 8.0  # seconds a sent frame may stay unconfirmed before it is sent again
# Every hop is FIFO per conversation, so a SENT for a later message to the same peer means an
# earlier one still unconfirmed this long was most likely lost with a server: resend it at the
# next tick instead of after RESEND_AFTER (a copy that was only slow is dropped by the peer).
OVERTAKEN_AFTER = 0.5
# Messages per peer whose DELIVERED we still wait for, to compute the stream floor; beyond this
# the oldest is forgotten (the peer then no longer waits for it if it arrives late).
UNDELIVERED_MEMORY = 100_000
# A gap in a stream open this long asks the connector to drain: the missing message may sit in
# the offline store (committed after our connector last drained).
DRAIN_ASK_AFTER = 1.0
# the server refused the frame for good: resending the same bytes cannot help
FINAL_ERRORS = frozenset(
    {
        im_pb2.NOT_FRIEND,
        im_pb2.SPOOFED_SENDER,
        im_pb2.BAD_MESSAGE,
        im_pb2.UNKNOWN_TYPE,
        im_pb2.NOT_AUTHENTICATED,
        im_pb2.NOT_RECEIVED,
        im_pb2.NO_SUCH_FILE,
        im_pb2.ID_REUSED,
    }
)


@dataclass(frozen=True, slots=True)
class Message:
    msg_id: int
    from_id: str
    dest_id: str
    text: str  # a FILE message: the file's name
    msg_type: int
    create_time: int
    file: FileInfo | None = None  # FILE messages only: pass the message to IMClient.download
    read_tag: bytes = b""  # the connector's proof that we were given it; echoed in receipts
    # its place in the conversation's timeline, as the server committed it (0: not known, or
    # a server that keeps no timeline)
    conv_id: str = ""
    seq: int = 0
    server_time: int = 0


@dataclass(frozen=True, slots=True)
class Receipt:
    kind: str  # "SENT" | "DELIVERED" | "READ" (ACCEPTED is consumed by the outbox)
    peer: str  # the other side of the conversation
    msg_id: int  # the acknowledged message


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str
    detail: str
    msg_id: int
    seq: int = 0  # an UNREADABLE message from history: its place in the timeline


Event = Message | Receipt | ServerError


class _Seen:
    """A bounded set: remembers the newest ``cap`` keys."""

    def __init__(self, cap: int = DEDUPE_MEMORY) -> None:
        self._keys: OrderedDict[object, None] = OrderedDict()
        self._cap = cap

    def add(self, key: object) -> bool:
        """True if ``key`` is new."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._cap:
            self._keys.popitem(last=False)
        return True


class _Pending:
    """An outbox entry: the frame and when it last went out (0: not yet on this link)."""

    __slots__ = ("env", "is_chat", "sent_at", "seq")

    def __init__(self, env: im_pb2.Envelope) -> None:
        self.env = env
        self.is_chat = env.WhichOneof("body") == "chat"
        self.sent_at = 0.0
        self.seq = 0  # its link seq when last sent: an ERROR names the frame by it


class IMClient:
    def __init__(
        self,
        rest_url: str,
        user_id: str,
        password: str,
        *,
        device_id: str = "default",
        link_config: LinkConfig | None = None,
        queue_size: int = 10_000,
        connector: tuple[str, int] | None = None,
        reconnect: bool = True,
        outbox_size: int = OUTBOX_SIZE,
        resend_after: float = RESEND_AFTER,
        tls: ssl.SSLContext | bool | None = None,
        order_hold: float = DEFAULT_HOLD,
    ) -> None:
        """``tls``: None follows the login answer, True uses TLS with the system's trust store,
        an ``SSLContext`` is used as given (e.g. ``common.tls.client_context(cafile)``), False
        never uses TLS."""
        # the server knows every user by the canonical id (common/userids.py)
        self.user_id = canonical_or_none(user_id) or user_id
        self.device_id = device_id
        self.rest = RestClient(rest_url)
        self.friends: dict[str, str] = {}
        self.node_id = ""  # the connector we are on, from its WELCOME
        self.duplicates_dropped = 0
        self.bytes_downloaded = 0  # over the network, so a resumed download shows what it saved
        self.reconnects = 0
        self.resent = 0
        self._password = password
        self._connector_override = connector
        self._tls = tls
        self._login: LoginAnswer | None = None
        self._config = link_config or LinkConfig()
        self._ids = MessageIdGen()
        self._events: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._seen_msgs = _Seen()
        self._seen_receipts = _Seen()
        self._link: Link | None = None
        self._run: asyncio.Task[None] | None = None
        self._welcome: asyncio.Future[im_pb2.Welcome] | None = None
        self._outbox: OrderedDict[int, _Pending] = OrderedDict()
        self._outbox_chats = 0
        self._outbox_size = outbox_size
        self._room = asyncio.Event()
        self._room.set()
        self._resend_after = resend_after
        self._auto_reconnect = reconnect
        self._want_link = False
        self._keeper: asyncio.Task[None] | None = None
        self._link_lost = asyncio.Event()
        # ordering: our stream, per-peer counters and the undelivered, the receiving side
        self.stream = secrets.randbits(63) | 1
        self._stream_next: dict[str, int] = {}
        self._undelivered: dict[str, OrderedDict[int, int]] = {}  # peer -> msg id -> seq
        self._order: StreamOrder[Event] = StreamOrder(hold=order_hold)
        self._order_task: asyncio.Task[None] | None = None
        self._order_wake = asyncio.Event()
        self._surfacing = asyncio.Lock()
        self._drain_asked = 0.0

    async def __aenter__(self) -> IMClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- REST --------------------------------------------------------------------------------

    async def register(self, display_name: str = "") -> bool:
        return await self.rest.register(self.user_id, self._password, display_name)

    async def login(self) -> LoginAnswer:
        self._login = await self.rest.login(self.user_id, self._password, self.device_id)
        self.user_id = self._login.user_id
        # ids from now on carry this device's slot, so no other device of ours can make them
        self._ids.slot = self._login.slot
        self.friends = dict(self._login.friends)
        return self._login

    async def add_friend(self, friend_id: str) -> str | None:
        """Ask for ``friend_id``'s friendship or accept their request: the pair key once both
        have said yes, None while it waits for them (see :func:`befriend`)."""
        friend_id = canonical_or_none(friend_id) or friend_id
        key = await self.rest.add_friend(friend_id)
        if key is not None:
            self.friends[friend_id] = key
        return key

    async def remove_friend(self, friend_id: str) -> None:
        """Unfriend, withdraw our request or decline theirs."""
        friend_id = canonical_or_none(friend_id) or friend_id
        await self.rest.remove_friend(friend_id)
        self.friends.pop(friend_id, None)

    async def friend_requests(self) -> FriendRequests:
        return await self.rest.friend_requests()

    async def block(self, user_id: str) -> None:
        user_id = canonical_or_none(user_id) or user_id
        await self.rest.block(user_id)
        self.friends.pop(user_id, None)

    async def unblock(self, user_id: str) -> None:
        await self.rest.unblock(canonical_or_none(user_id) or user_id)

    async def blocks(self) -> list[str]:
        return await self.rest.blocks()

    async def change_password(self, new_password: str) -> None:
        """Change the password: every other session of this user ends within seconds; this
        client keeps going with the fresh token (used at the next connect)."""
        token = await self.rest.change_password(self._password, new_password)
        self._password = new_password
        if self._login is not None:
            self._login = dataclasses.replace(self._login, token=token)

    async def refresh_friends(self) -> None:
        self.friends = await self.rest.friends()

    # -- link --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closing

    @property
    def pending(self) -> int:
        """Frames in the outbox: sent or not, still waiting for the server to take them."""
        return len(self._outbox)

    @property
    def order_stats(self) -> dict[str, int]:
        """Receiving side: messages that waited for an earlier one, gaps given up, messages
        that came after their gap was given up, messages waiting now."""
        o = self._order
        return {
            "reordered": o.reordered,
            "gaps_skipped": o.gaps_skipped,
            "late": o.late,
            "held": o.held,
        }

    async def connect(self, timeout: float = 10.0) -> None:
        """Log in if needed, open the link, GREET, wait for WELCOME, send the outbox.

        From then on a lost link is reconnected in the background (unless ``reconnect=False``)
        until :meth:`close`.
        """
        login = self._login or await self.login()
        await self._open(self._connector_override or login.connector, login, timeout)
        self._want_link = True
        if self._auto_reconnect and self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_link(), name=f"keep {self.user_id}")
        if self._order_task is None:
            self._order_task = asyncio.create_task(self._keep_order(), name=f"order {self.user_id}")

    async def disconnect(self) -> None:
        """Go offline but keep the outbox, dedupe and order state: :meth:`connect` resumes.
        What is sent meanwhile waits in the outbox."""
        self._want_link = False
        self._link_lost.set()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self._link is not None:
            self._link.close()
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)

    async def _open(self, addr: tuple[str, int], login: LoginAnswer, timeout: float) -> None:
        host, port = addr
        token = login.token
        self._welcome = asyncio.get_running_loop().create_future()
        tls = self._tls if self._tls is not None else login.tls
        context = client_context() if tls is True else (tls or None)
        link = await open_link(
            host, port, self, self._config, name=f"{self.user_id}->{host}", tls=context
        )
        self._link = link
        self._link_lost.clear()
        self._run = asyncio.create_task(link.run(), name=f"link {self.user_id}")
        link.send_control(
            im_pb2.Envelope(greet=im_pb2.Greet(token=token, device_id=self.device_id))
        )
        closed = asyncio.ensure_future(link.wait_closed())
        waits: list[asyncio.Future[Any]] = [self._welcome, closed]
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if self._welcome not in done or self._welcome.cancelled():
            err = link.close_error
            link.close()
            raise IMError(f"GREET refused: {err.detail if err else 'connection closed'}")
        welcome = self._welcome.result()
        self.node_id = welcome.node_id
        self._ids.slot = welcome.id_slot  # the connector's word on our token's slot
        for pending in self._outbox.values():
            pending.sent_at, pending.seq = 0.0, 0
        await self._flush(force=True)

    async def _keep_link(self) -> None:
        """Reconnect after a lost link; resend what stays unconfirmed too long."""
        delay = 0.2
        tick = max(0.2, min(1.0, self._resend_after / 4))
        while self._want_link:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._link_lost.wait()
            if not self._want_link:
                return
            if self.connected:
                delay = 0.2
                await self._flush(force=False)
                continue
            try:
                await self._reconnect_once()
            except (IMError, OSError, TimeoutError) as exc:
                log.debug("%s: reconnect failed: %s", self.user_id, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            self.reconnects += 1
            delay = 0.2

    async def _reconnect_once(self) -> None:
        """A fresh login when REST answers (a live connector, a token that is still good),
        else the connectors the last login listed, one after the other."""
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)
        try:
            login = await self.login()
            candidates = [login.connector, *(c for c in login.connectors if c != login.connector)]
        except RestError as exc:
            if exc.status in (401, 403):
                # the password changed or the account is gone: retrying cannot succeed
                self._want_link = False
                await self._events.put(ServerError("LOGIN_REFUSED", str(exc), 0))
                raise IMError(f"login refused: {exc}") from exc
            if self._login is None:
                raise IMError(f"no login: {exc}") from exc
            login = self._login
            candidates = list(login.connectors) or [login.connector]
            random.shuffle(candidates)
        except (OSError, IMError) as exc:
            if self._login is None:
                raise IMError(f"no login: {exc}") from exc
            login = self._login
            candidates = list(login.connectors) or [login.connector]
            random.shuffle(candidates)
        if self._connector_override is not None:
            candidates = [self._connector_override]
        last: Exception | None = None
        for addr in candidates:
            try:
                await self._open(addr, login, 10.0)
                return
            except (IMError, OSError, TimeoutError) as exc:
                last = exc
        raise IMError(f"no connector took us: {last}")

    async def close(self) -> None:
        await self.disconnect()
        if self._order_task is not None:
            self._order_task.cancel()
            await asyncio.gather(self._order_task, return_exceptions=True)
            self._order_task = None
        await self.rest.close()

    # -- outbox ------------------------------------------------------------------------------

    async def _enqueue(self, env: im_pb2.Envelope, msg_id: int, *, wait: bool = True) -> None:
        """Keep ``env`` until the server takes it, and send it now if the link is up."""
        if self._link is None and not self._want_link:
            raise IMError("not connected")
        pending = _Pending(env)
        if pending.is_chat and wait:
            while self._outbox_chats >= self._outbox_size:
                self._room.clear()
                await self._room.wait()
        self._outbox[msg_id] = pending
        if pending.is_chat:
            self._outbox_chats += 1
            # its place in our stream only now that it is kept: a send cancelled while it
            # waited for room takes none, or the peer would wait for a message never sent
            chat = env.chat
            chat.stream, chat.stream_seq = self.stream, self._next_place(chat.dest_id, msg_id)
        # receipts are made by the reader: it must never wait for window room (the LinkAcks
        # that make room are read by that same reader); a full window leaves them to the keeper
        await self._send_pending(pending, may_wait=wait)

    def _confirm(self, msg_id: int) -> bool:
        pending = self._outbox.pop(msg_id, None)
        if pending is None:
            return False
        if pending.is_chat:
            self._outbox_chats -= 1
            if self._outbox_chats < self._outbox_size:
                self._room.set()
        return True

    def _overtaken(self, msg_id: int) -> None:
        """``msg_id`` got SENT: mark older chats to the same peer, unconfirmed for a while, to
        be resent at the next tick (never here: the reader must not wait for window room)."""
        pending = self._outbox.get(msg_id)
        if pending is None or not pending.is_chat:
            return
        peer = pending.env.chat.dest_id
        cutoff = time.monotonic() - OVERTAKEN_AFTER
        for key, older in self._outbox.items():
            if key == msg_id:
                break
            if older.is_chat and older.env.chat.dest_id == peer and 0 < older.sent_at <= cutoff:
                older.sent_at = -1.0  # due at once: _flush resends what is at or before cutoff

    def _give_up(self, ref_seq: int) -> None:
        """The server refused, for good, the frame it received as ``ref_seq`` on this link:
        stop resending it (and let the peer stop waiting for it)."""
        for key, pending in list(self._outbox.items()):
            if pending.seq == ref_seq:
                self._confirm(key)
                if pending.is_chat:
                    self._delivered(pending.env.chat.dest_id, key)
                return

    def _next_place(self, peer: str, msg_id: int) -> int:
        """The next stream_seq toward ``peer``, remembered as undelivered."""
        seq = self._stream_next.get(peer, 1)
        self._stream_next[peer] = seq + 1
        waiting = self._undelivered.setdefault(peer, OrderedDict())
        waiting[msg_id] = seq
        if len(waiting) > UNDELIVERED_MEMORY:
            waiting.popitem(last=False)
        return seq

    def _floor(self, peer: str) -> int:
        waiting = self._undelivered.get(peer)
        if waiting:
            return next(iter(waiting.values()))
        return self._stream_next.get(peer, 1)

    def _delivered(self, peer: str, msg_id: int) -> None:
        waiting = self._undelivered.get(peer)
        if waiting is not None:
            waiting.pop(msg_id, None)

    async def _send_pending(self, pending: _Pending, *, may_wait: bool = True) -> bool:
        link = self._link
        if link is None or link.closing or not self.node_id:
            return False
        if not may_wait and link.window_full:
            return False  # still due (sent_at 0): the keeper's next flush sends it
        if pending.is_chat:
            chat = pending.env.chat
            chat.stream_floor = self._floor(chat.dest_id)
        try:
            pending.seq = await link.send(fresh(pending.env))
        except LinkClosed:
            return False
        if pending.sent_at:
            self.resent += 1
        pending.sent_at = time.monotonic()
        return True

    async def _flush(self, *, force: bool) -> None:
        """Send, in outbox order, what was never sent on this link (``force``: everything) or
        was sent longer than ``resend_after`` ago."""
        cutoff = time.monotonic() - self._resend_after
        for pending in list(self._outbox.values()):
            if (force or pending.sent_at <= cutoff) and not await self._send_pending(pending):
                return

    async def send_text(self, to: str, text: str) -> int:
        """Seal, keep in the outbox and send; returns the message id that receipts will name.

        Waits while the outbox is full. Raises only when this client was never connected.
        """
        to = canonical_or_none(to) or to
        key = self.friends.get(to)
        if key is None:
            raise IMError(f"{to!r} is not a friend (no pair key)")
        msg_id = self._ids()
        body = seal(key, msg_id, self.user_id, to, text.encode())
        chat = im_pb2.ChatMsg(
            id=msg_id,
            from_id=self.user_id,
            dest_id=to,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=body,
            create_time=int(time.time() * 1000),
        )
        await self._enqueue(im_pb2.Envelope(chat=chat), msg_id)
        return msg_id

    async def send_file(self, to: str, path: str | os.PathLike[str], name: str = "") -> int:
        """Encrypt and upload ``path``, then send it as a FILE message; returns the message id.

        The file's key and name travel only inside the sealed body; the server sees the file id,
        the stored size and checksum. Receipts come as for text."""
        to = canonical_or_none(to) or to
        key = self.friends.get(to)
        if key is None:
            raise IMError(f"{to!r} is not a friend (no pair key)")
        src = Path(path)
        up = await upload_file(self.rest, src)
        msg_id = self._ids()
        inner = im_pb2.FileBody(
            file_id=up.ref.file_id,
            checksum=up.ref.checksum,
            size=up.plain_size,
            name=name or src.name,
            key=up.key,
            sha256=up.sha256,
        )
        chat = im_pb2.ChatMsg(
            id=msg_id,
            from_id=self.user_id,
            dest_id=to,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.FILE,
            body=seal(key, msg_id, self.user_id, to, inner.SerializeToString()),
            create_time=int(time.time() * 1000),
            file=im_pb2.FileRef(id=up.ref.file_id, size=up.ref.size, checksum=up.ref.checksum),
        )
        await self._enqueue(im_pb2.Envelope(chat=chat), msg_id)
        return msg_id

    async def download(self, msg: Message, dest: str | os.PathLike[str]) -> Path:
        """Download a FILE message's file to ``dest``, verified and decrypted; a download cut
        short earlier resumes where it stopped (``dest`` + ``.part``)."""
        if msg.file is None:
            raise IMError("not a file message")
        out = Path(dest)
        self.bytes_downloaded += await download_file(self.rest, msg.file, out)
        return out

    async def send_read(self, msg: Message) -> None:
        await self._receipt(msg.from_id, msg.msg_id, im_pb2.READ, msg.read_tag, msg.seq)

    async def _receipt(
        self, to: str, chat_id: int, kind: im_pb2.AckType, read_tag: bytes, seq: int = 0
    ) -> None:
        receipt_id = self._ids()
        ack = im_pb2.AckMsg(
            id=receipt_id,
            from_id=self.user_id,
            dest_id=to,
            ack_type=kind,
            ack_msg_id=chat_id,
            read_tag=read_tag,
            seq=seq,
        )
        # receipts never wait for room: they are made while reading, and waiting there would
        # stop the very reading that frees the room
        await self._enqueue(im_pb2.Envelope(ack=ack), receipt_id, wait=False)

    # -- events ------------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event:
        async with asyncio.timeout(timeout):
            return await self._events.get()

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._events.get()

    # -- LinkHandler -------------------------------------------------------------------------

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "welcome":
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(env.welcome)
        elif kind == "error":
            e = env.error
            if e.code == im_pb2.REPLACED:
                # another connection of this device took over: reconnecting would take it back,
                # and the two would push each other out for ever
                self._want_link = False
                self._link_lost.set()
            if e.code in FINAL_ERRORS and e.ref_seq and link is self._link:
                self._give_up(e.ref_seq)
            elif e.code == im_pb2.ID_REUSED and e.ref_msg_id in self._outbox:
                # the timeline holds another message under this id: resending can't help
                refused = self._outbox[e.ref_msg_id]
                self._confirm(e.ref_msg_id)
                if refused.is_chat:
                    self._delivered(refused.env.chat.dest_id, e.ref_msg_id)
            await self._events.put(
                ServerError(im_pb2.ErrorCode.Name(e.code), e.detail, e.ref_msg_id)
            )
        elif kind == "chat":
            await self._on_chat(env.chat)
        elif kind == "ack":
            a = env.ack
            if a.ack_type == im_pb2.ACCEPTED:
                self._confirm(a.ack_msg_id)
                return
            if a.ack_type == im_pb2.SENT:
                self._overtaken(a.ack_msg_id)
                self._confirm(a.ack_msg_id)
            elif a.ack_type == im_pb2.DELIVERED:
                self._delivered(a.from_id, a.ack_msg_id)
            if self._seen_receipts.add((a.from_id, a.ack_msg_id, a.ack_type)):
                await self._events.put(
                    Receipt(im_pb2.AckType.Name(a.ack_type), a.from_id, a.ack_msg_id)
                )
            else:
                self.duplicates_dropped += 1
        else:
            raise ProtocolError(f"unexpected {kind} from the server", code=im_pb2.UNKNOWN_TYPE)

    async def _on_chat(self, chat: im_pb2.ChatMsg) -> None:
        if not self._seen_msgs.add((chat.from_id, chat.id)):
            self.duplicates_dropped += 1
            return
        await self._receipt(chat.from_id, chat.id, im_pb2.DELIVERED, chat.read_tag)
        await self._surface(chat, _open_chat(chat, await self._key_of(chat.from_id)))

    async def _key_of(self, peer: str) -> str | None:
        """The pair key shared with ``peer``; a friend we do not know yet is looked up."""
        key = self.friends.get(peer)
        if key is None:
            with contextlib.suppress(RestError, OSError, IMError):
                await self.refresh_friends()
            key = self.friends.get(peer)
        return key

    # -- history -----------------------------------------------------------------------------

    async def conversations(self) -> list[Conversation]:
        """My conversations, most recently changed first, each last message opened."""
        out: list[Conversation] = []
        for info in await self.rest.conversations():
            last = None if info.last is None else await self._open_stored(info.last)
            out.append(Conversation(info, last))
        return out

    async def history(
        self,
        peer_or_conv_id: str,
        *,
        before: int = 0,
        after: int | None = None,
        limit: int = 50,
    ) -> list[Message | ServerError]:
        """A page of the conversation with a friend (or of a conversation id), oldest first,
        opened: the first after ``after`` if given (0: from the start), else the newest below
        ``before`` (0: the newest).
        A body that does not open is an UNREADABLE ServerError at its seq."""
        conv_id = peer_or_conv_id
        if not is_conv_id(conv_id):
            conv_id = pair_conv_id(self.user_id, peer_or_conv_id)
        page = await self.rest.messages(conv_id, before=before, after=after, limit=limit)
        return [await self._open_stored(s) for s in page]

    async def _open_stored(self, stored: StoredChat) -> Message | ServerError:
        ref = parse_conv_id(stored.conv_id)
        key = None
        if ref.dest_type == im_pb2.SINGLE and self.user_id in ref.members:
            key = await self._key_of(ref.peer_of(self.user_id))
        event = _open_chat(stored.chat, key)
        if isinstance(event, ServerError):
            return dataclasses.replace(event, seq=stored.seq)
        return dataclasses.replace(
            event, conv_id=stored.conv_id, seq=stored.seq, server_time=stored.server_time
        )

    async def _surface(self, chat: im_pb2.ChatMsg, event: Event) -> None:
        """Hand ``event`` to the application in its sender's order (a chat of a client that
        sends no stream is surfaced as it comes)."""
        if not chat.stream or not chat.stream_seq:
            await self._events.put(event)
            return
        now = time.monotonic()
        key = (chat.from_id, chat.stream)
        seq, floor = chat.stream_seq, chat.stream_floor
        # the reader and _keep_order both release messages: one at a time, or a message one of
        # them released could reach the queue ahead of older ones the other is still putting
        async with self._surfacing:
            for ready in self._order.offer(key, seq, floor, event, now, stored=chat.from_store):
                await self._events.put(ready)
        if self._order.next_deadline() is not None:
            self._order_wake.set()

    async def _keep_order(self) -> None:
        """While a message waits for an earlier one: ask for a drain now and then, and give up
        gaps that outlast the hold."""
        tick = min(0.25, self._order.first_hold / 4)
        while True:
            if self._order.next_deadline() is None:
                self._order_wake.clear()
                await self._order_wake.wait()
                continue
            await asyncio.sleep(tick)
            now = time.monotonic()
            gap = self._order.oldest_gap()
            if (
                gap is not None
                and now - gap >= DRAIN_ASK_AFTER
                and now - self._drain_asked >= DRAIN_ASK_AFTER
            ):
                self._drain_asked = now
                await self._ask_drain()
            async with self._surfacing:
                for ready in self._order.expire(time.monotonic()):
                    await self._events.put(ready)

    async def _ask_drain(self) -> None:
        link = self._link
        if link is None or link.closing or not self.node_id:
            return
        with contextlib.suppress(LinkClosed):
            await link.send(im_pb2.Envelope(drain=im_pb2.Drain(user_id=self.user_id)))

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if self._welcome is not None and not self._welcome.done():
            self._welcome.cancel()
        if link is self._link:
            self.node_id = ""
            self._link_lost.set()


def _open_chat(chat: im_pb2.ChatMsg, key: str | None) -> Message | ServerError:
    """The chat with its body opened with the pair ``key``, or UNREADABLE."""
    file: FileInfo | None = None
    try:
        if key is None:
            raise SealError(f"no pair key for {chat.from_id}")
        plain = open_sealed(key, chat.id, chat.from_id, chat.dest_id, chat.body)
        if chat.msg_type == im_pb2.FILE:
            file = _file_info(chat, plain)
            text = file.name
        else:
            text = plain.decode()
    except (SealError, UnicodeDecodeError) as exc:
        return ServerError("UNREADABLE", str(exc), chat.id)
    return Message(
        chat.id,
        chat.from_id,
        chat.dest_id,
        text,
        chat.msg_type,
        chat.create_time,
        file,
        chat.read_tag,
        chat.conv_id,
        chat.seq,
        chat.server_time,
    )


async def befriend(a: IMClient, b: IMClient) -> str:
    """Make ``a`` and ``b`` friends the only way there is, both saying yes: ``a`` asks, ``b``
    accepts. Both know the pair key afterwards, which is returned. Both must be logged in."""
    await a.add_friend(b.user_id)
    key = await b.add_friend(a.user_id)
    if key is None:  # b's yes found no request of a's: a blocked b, or a lost the request
        raise IMError(f"{a.user_id!r} and {b.user_id!r} did not become friends")
    a.friends[b.user_id] = key
    return key


def _file_info(chat: im_pb2.ChatMsg, plain: bytes) -> FileInfo:
    """The file of a FILE chat, from its opened body; the server-visible reference must name the
    same upload, or the server (or a forger) swapped it."""
    inner = im_pb2.FileBody()
    try:
        inner.ParseFromString(plain)
    except DecodeError:
        raise SealError("file message body is not a FileBody") from None
    ref = chat.file
    if (inner.file_id, inner.checksum) != (ref.id, ref.checksum) or len(inner.key) != 32:
        raise SealError("file reference does not match the sealed file description")
    return FileInfo(
        file_id=ref.id,
        size=ref.size,
        checksum=ref.checksum,
        name=_safe_name(inner.name),
        plain_size=inner.size,
        sha256=inner.sha256,
        key=inner.key,
    )


def _safe_name(name: str) -> str:
    """The sender's file name without directories or control characters: safe to show, or to
    join to a download folder."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())
    return base if base not in ("", ".", "..") else "file"
