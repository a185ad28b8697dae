"""IMClient: one device of one user, the facade over REST, the link, the outbox and the sync.

Who does what (each module says why):
- client/rest.py: login, friends, blocks, files and history over HTTP;
- client/connection.py: the link to a connector, GREET with ``since``, reconnects;
- client/outbox.py: chats until SENT, resent with the same id;
- client/sync.py: the timelines, sans-IO: what to surface, which Syncs and cursors to send;
- client/bodies.py: sealing and opening bodies with the pair key (UNREADABLE when it fails);
- client/groupkeys.py, client/groupsend.py: group keys, cached; a group chat refused
  STALE_KEY sealed again once, under a new id.

This module wires them: frames in -> the sync machine -> effects out (sent on the link, or
opened and put in the event queue, in order). Rules it keeps itself:
- events wait in a bounded queue: an application that stops reading stops the link (its
  reader waits on the queue), and the server then treats this device as slow;
- the reader never waits for window room (the LinkAcks that make room come through the same
  reader): a frame it cannot send at once waits for the ticker, which may wait;
- a device that comes back (this IMClient reconnecting) greets with the ``since`` of its last
  CaughtUp and resumes from what it holds; a new IMClient is a new device (since 0) and is
  given every conversation, so either ends with every message exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import TracebackType

from client import sync as S
from client.bodies import file_chat, open_chat, text_chat
from client.connection import Connection
from client.events import Event, GroupReceipt, Message, Receipt, ServerError
from client.files import download_file, upload_file
from client.groupkeys import GroupKeyRing
from client.groups import ReadBy
from client.groupsend import Recipe, Recipes, Seal
from client.history import Conversation, StoredChat
from client.outbox import OUTBOX_SIZE, RESEND_AFTER, Outbox
from client.rest import FriendRequests, LoginAnswer, RestClient, RestError
from common.convid import group_conv_id, is_conv_id, pair_conv_id, parse_conv_id
from common.errors import IMError
from common.ids import MessageIdGen
from common.link import Link, LinkClosed, LinkConfig
from common.userids import canonical_or_none
from proto import im_pb2

__all__ = ["Event", "GroupReceipt", "IMClient", "Message", "Receipt", "ServerError", "befriend"]

log = logging.getLogger(__name__)

TICK = 0.05  # seconds between ticks: coalesced cursors, resends, deferred frames
# the server refused the chat for good: resending the same bytes cannot help
FINAL_ERRORS = frozenset(
    {
        im_pb2.NOT_FRIEND,
        im_pb2.SPOOFED_SENDER,
        im_pb2.BAD_MESSAGE,
        im_pb2.NO_SUCH_FILE,
        im_pb2.ID_REUSED,
        im_pb2.TOO_LARGE,
        im_pb2.NOT_MEMBER,
        im_pb2.MUTED,
        im_pb2.REFUSED,
    }
)
SYNC_MEMORY = 64  # link seqs of recent Syncs kept, to know which one an ERROR names


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
    ) -> None:
        """``tls``: None follows the login answer, True uses TLS with the system's trust store,
        an ``SSLContext`` is used as given (e.g. ``common.tls.client_context(cafile)``), False
        never uses TLS. ``connector`` pins the connector instead of the one REST names."""
        self.user_id = canonical_or_none(user_id) or user_id  # the id the server knows
        self.device_id = device_id
        self.rest = RestClient(rest_url)
        self.friends: dict[str, str] = {}
        self.bytes_downloaded = 0  # over the network, so a resumed download shows what it saved
        self.resent = 0
        self._password = password
        self._login: LoginAnswer | None = None
        self._ids = MessageIdGen()
        self._events: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._outbox = Outbox(outbox_size, resend_after)
        self.group_keys = GroupKeyRing(lambda group_id: self.rest.groups.keys(group_id))
        self._recipes = Recipes(outbox_size)  # group chats in the outbox: how to seal again
        self._sync = S.SyncMachine(self.user_id)
        self._conn = Connection(
            self,
            self.login,
            lambda: self._sync.since,
            name=self.user_id,
            device_id=device_id,
            config=link_config or LinkConfig(),
            tls=tls,
            connector=connector,
            reconnect=reconnect,
        )
        self._deferred: deque[im_pb2.Envelope] = deque()  # for the ticker: no room at once
        self._sync_seqs: OrderedDict[int, str] = OrderedDict()  # link seq -> conv of a Sync
        self._ticker: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()  # after-WELCOME sends, kept referenced
        self._chat_lock = asyncio.Lock()  # one task sends chats at a time (their order)
        self._caught_up = asyncio.Event()

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
        if self._login.user_id != self.user_id:
            self.user_id = self._sync.me = self._login.user_id
        self._ids.slot = self._login.slot  # ids from now on carry this device's slot
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
        """Every other session of this user ends within seconds; this client keeps going with
        the fresh token (used at the next connect)."""
        token = await self.rest.change_password(self._password, new_password)
        self._password = new_password
        if self._login is not None:
            self._login = dataclasses.replace(self._login, token=token)

    async def refresh_friends(self) -> None:
        self.friends = await self.rest.friends()

    # -- state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn.up

    @property
    def link(self) -> Link | None:
        """The current link (None before the first connect): for tests that send raw frames."""
        return self._conn.link

    _link = link  # the name tests used before the split

    @property
    def node_id(self) -> str:
        """The connector we are on, from its WELCOME ("" while offline)."""
        return self._conn.node_id

    @property
    def reconnects(self) -> int:
        return self._conn.reconnects

    @property
    def pending(self) -> int:
        """Chats in the outbox: not yet SENT."""
        return len(self._outbox)

    @property
    def since(self) -> int:
        """The ``since`` of the last CaughtUp: what the next GREET says."""
        return self._sync.since

    @property
    def caught_up(self) -> asyncio.Event:
        """Set once the first CaughtUp of the current link has come and every conversation it
        listed is held up to the head it named; cleared when a new link comes up."""
        return self._caught_up

    def have(self, conv_id: str) -> int:
        """The highest seq of ``conv_id`` held with nothing missing below it."""
        return self._sync.have(conv_id)

    def read_cursors(self) -> dict[str, int]:
        """Per conversation, the user's READ cursor as this device knows it (its own marks and
        the other devices' READ cursors): what an app's unread counts start from."""
        return self._sync.read_cursors()

    @property
    def duplicates_dropped(self) -> int:
        return self._sync.stats["duplicates"]

    @property
    def order_stats(self) -> dict[str, int]:
        """The sync's counters: duplicates, buffered (past a gap), dropped (buffer full, fetched
        again), holes_skipped (seqs that do not exist for us), syncs."""
        return dict(self._sync.stats)

    # -- link --------------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Log in if needed, open the link, GREET, wait for WELCOME; the outbox goes again and
        the listing and Syncs follow. A lost link is reconnected in the background (unless
        ``reconnect=False``) until :meth:`close`. Await ``caught_up.wait()`` to know the device
        holds everything that was there when it connected."""
        login = self._login or await self.login()
        await self._conn.start(login, timeout)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name=f"tick {self.user_id}")

    async def disconnect(self) -> None:
        """Go offline but keep the outbox and what the device holds: :meth:`connect` resumes."""
        await self._conn.stop()

    async def close(self) -> None:
        await self.disconnect()
        for task in list(self._chores):
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        await self.rest.close()

    def welcomed(self, link: Link, welcome: im_pb2.Welcome) -> None:
        self._ids.slot = welcome.id_slot  # the connector's word on our token's slot
        self._outbox.new_link()
        self._deferred.clear()
        self._sync_seqs.clear()
        self._caught_up.clear()
        # sent once the WELCOME is handled, before any frame after it, from the ticker's side
        effects = self._sync.link_up(time.monotonic())
        self._chore(self._after_welcome(effects))

    async def _after_welcome(self, effects: list[S.Effect]) -> None:
        try:
            await self._send_chats()
            await self._apply(effects, may_wait=True)
        except (IMError, OSError) as exc:  # the link went again: the next WELCOME redoes it
            log.debug("%s: after welcome: %s", self.user_id, exc)

    async def link_lost(self, unacked: list[im_pb2.Envelope]) -> None:
        self._sync.link_down()
        for env in [*unacked, *self._deferred]:
            if env.WhichOneof("body") == "cursor":
                self._sync.cursor_unsent(env.cursor.conv_id, env.cursor.type, env.cursor.seq)
        self._deferred.clear()

    async def login_refused(self, exc: RestError) -> None:
        await self._events.put(ServerError("LOGIN_REFUSED", str(exc), 0))

    async def _send(self, env: im_pb2.Envelope, *, may_wait: bool) -> int:
        """Send on the current link: its link seq, or 0 (kept for the ticker, or offline)."""
        link = self._conn.link
        if link is None or not self._conn.up:
            if env.WhichOneof("body") == "cursor":
                c = env.cursor
                self._sync.cursor_unsent(c.conv_id, c.type, c.seq)
            return 0
        if not may_wait and (link.window_full or self._deferred):
            self._deferred.append(env)
            return 0
        try:
            return await link.send(env)
        except LinkClosed:
            return 0

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                while self._deferred and self._conn.up:
                    await self._send(self._deferred.popleft(), may_wait=True)
                await self._apply(self._sync.tick(time.monotonic()), may_wait=True)
                await self._send_chats()
                await self._resend_stale()
            except (IMError, OSError) as exc:
                log.debug("%s: tick: %s", self.user_id, exc)

    async def _send_chats(self) -> None:
        """Send what the outbox has not sent on this link, oldest first, one sender at a time:
        the only way a chat goes out the first time on a link. A new chat made while a fresh
        link's resends are still going out waits its turn behind them, so the server sees a
        device's chats in the order they were made (I3) whatever races the reconnect."""
        async with self._chat_lock:
            while self._conn.up:
                pending = self._outbox.next_unsent()
                if pending is None:
                    return
                seq = await self._send(im_pb2.Envelope(chat=pending.chat), may_wait=True)
                if not seq:
                    return
                if pending.chat.id in self._outbox:  # not confirmed while it was being sent
                    self.resent += pending.tries > 0
                    self._outbox.sent(pending, seq, time.monotonic())

    async def _resend_stale(self) -> None:
        """Chats sent on this link long ago and still without SENT go again (same id: the
        writer commits a message once)."""
        async with self._chat_lock:
            for pending in self._outbox.due(time.monotonic()):
                if not self._conn.up or pending.chat.id not in self._outbox:
                    continue
                seq = await self._send(im_pb2.Envelope(chat=pending.chat), may_wait=True)
                if not seq:
                    return
                self.resent += 1
                self._outbox.sent(pending, seq, time.monotonic())

    # -- sending -----------------------------------------------------------------------------

    def _key(self, to: str) -> tuple[str, str]:
        to = canonical_or_none(to) or to
        key = self.friends.get(to)
        if key is None:
            raise IMError(f"{to!r} is not a friend (no pair key)")
        return to, key

    async def send_text(self, to: str, text: str) -> int:
        """Seal, keep in the outbox and send; returns the message id that receipts will name.
        Waits while the outbox is full. Raises only when this client was never connected."""
        to, key = self._key(to)
        return await self._enqueue(lambda msg_id: text_chat(key, msg_id, self.user_id, to, text))

    async def send_file(self, to: str, path: str | os.PathLike[str], name: str = "") -> int:
        """Encrypt and upload ``path``, then send it as a FILE message; returns the message id.
        The file's key and name travel only inside the sealed body."""
        to, key = self._key(to)
        src = Path(path)
        up = await upload_file(self.rest, src)
        label = name or src.name
        return await self._enqueue(
            lambda msg_id: file_chat(key, msg_id, self.user_id, to, up, label)
        )

    async def send_group_text(self, group_id: str, text: str) -> int:
        """Seal ``text`` with the group's current key and send it to the group; returns the
        message id (a STALE_KEY refusal seals it again once under a new id: RESEALED)."""
        me = self.user_id
        return await self._enqueue_group(
            group_id,
            lambda key, key_id, msg_id: text_chat(
                key, msg_id, me, group_id, text, group_key_id=key_id
            ),
        )

    async def _enqueue_group(self, group_id: str, seal: Seal, reseals: int = 0) -> int:
        group_conv_id(group_id)  # ValueError for what cannot be a group id
        key_id, key = await self.group_keys.current(group_id)
        recipe = Recipe(group_id, seal, reseals)

        def make(msg_id: int) -> im_pb2.ChatMsg:
            self._recipes.add(msg_id, recipe)  # before it can be refused
            return seal(key, key_id, msg_id)

        return await self._enqueue(make)

    async def _reseal(self, old_id: int, recipe: Recipe) -> None:
        """A chat refused STALE_KEY: the same content under the group's new key and a new id."""
        try:
            new_id = await self._enqueue_group(recipe.group_id, recipe.seal, recipe.reseals)
        except (IMError, OSError) as exc:  # not a member any more, REST down: say so
            await self._events.put(ServerError("STALE_KEY", str(exc), old_id))
            return
        conv_id = group_conv_id(recipe.group_id)
        await self._events.put(
            Receipt("RESEALED", recipe.group_id, old_id, 0, conv_id, new_msg_id=new_id)
        )

    def _chore(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def read_by(self, group_id: str, seq: int, *, limit: int = 100) -> ReadBy:
        """Who of the group's members at ``seq`` (the sender left out) have read and received
        it, as the server counts from their cursors (``GET /groups/{id}/messages/{seq}/
        receipts``): "read by 7 of 12", and the first ``limit`` names of each."""
        return await self.rest.groups.receipts(group_id, seq, limit=limit)

    async def _enqueue(self, make: Callable[[int], im_pb2.ChatMsg]) -> int:
        """Make the chat with a fresh id once the outbox has room (ids then follow the order
        chats enter the outbox, which is the order they go out), keep it, send it."""
        if not self._conn.wanted and self._conn.link is None:
            raise IMError("not connected")
        await self._outbox.wait_room()
        chat = make(self._ids())
        self._sync.local_sent(chat.id)
        self._outbox.add(chat)
        if self._conn.up:
            await self._send_chats()
        return chat.id

    async def mark_read(self, conv_id: str, seq: int) -> None:
        """The user has read ``conv_id`` up to ``seq``: a READ cursor (coalesced), which the
        peer sees as READ receipts and this user's other devices as read."""
        await self._apply(self._sync.mark_read(conv_id, seq, time.monotonic()), may_wait=False)

    async def send_read(self, msg: Message) -> None:
        """Mark read up to ``msg`` (a message this client surfaced)."""
        if msg.conv_id and msg.seq:
            await self.mark_read(msg.conv_id, msg.seq)

    async def download(self, msg: Message, dest: str | os.PathLike[str]) -> Path:
        """Download a FILE message's file to ``dest``, verified and decrypted; a download cut
        short earlier resumes where it stopped (``dest`` + ``.part``)."""
        if msg.file is None:
            raise IMError("not a file message")
        out = Path(dest)
        self.bytes_downloaded += await download_file(self.rest, msg.file, out)
        return out

    # -- events ------------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event:
        async with asyncio.timeout(timeout):
            return await self._events.get()

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._events.get()

    async def on_envelope(self, env: im_pb2.Envelope) -> None:
        now = time.monotonic()
        kind = env.WhichOneof("body")
        sm = self._sync
        effects: list[S.Effect]
        if kind == "chat":
            await self._on_chat(env.chat)
            return
        if kind == "ack":
            a = env.ack
            if a.ack_type != im_pb2.SENT:
                return
            self._outbox.confirm(a.ack_msg_id)
            self._recipes.done(a.ack_msg_id)
            effects = sm.on_sent(a.ack_msg_id, a.conv_id, a.seq, a.from_id, now)
        elif kind == "sync_done":
            effects = sm.on_sync_done(env.sync_done, now)
        elif kind == "conv_state":
            effects = sm.on_conv_state(env.conv_state, now)
        elif kind == "caught_up":
            effects = sm.on_caught_up(env.caught_up.since, now)
        elif kind == "cursor":
            effects = sm.on_cursor(env.cursor, now)
        elif kind == "error":
            await self._on_error(env.error, now)
            return
        elif kind == "group_receipt":
            g = env.group_receipt
            await self._events.put(GroupReceipt(g.conv_id, g.seq, g.members, g.delivered, g.read))
            return
        else:
            return  # presence, typing: not surfaced yet
        await self._apply(effects, may_wait=False)

    async def _on_chat(self, chat: im_pb2.ChatMsg) -> None:
        """A pushed or synced chat (a seam tests hook to see chats as they come)."""
        await self._apply(self._sync.on_chat(chat, time.monotonic()), may_wait=False)

    async def _on_error(self, e: im_pb2.Error, now: float) -> None:
        conv = self._sync_seqs.pop(e.ref_seq, None) if e.ref_seq else None
        if conv is not None:  # a Sync of ours was refused
            retry = e.code != im_pb2.NOT_MEMBER
            await self._apply(self._sync.sync_failed(conv, now, retry=retry), may_wait=False)
            if retry:
                return
        elif e.code == im_pb2.RATE_LIMITED and not e.ref_msg_id:
            return  # a cursor: the sync machine sends it again when it moves
        elif e.code == im_pb2.STALE_KEY:
            await self._on_stale_key(e)
            return
        if e.code in FINAL_ERRORS:
            msg_id = e.ref_msg_id if e.ref_msg_id in self._outbox else 0
            if not msg_id and e.ref_seq:
                msg_id = self._outbox.by_link_seq(e.ref_seq)
            if msg_id:
                self._outbox.confirm(msg_id)
                self._recipes.done(msg_id)
        await self._events.put(ServerError(im_pb2.ErrorCode.Name(e.code), e.detail, e.ref_msg_id))

    async def _on_stale_key(self, e: im_pb2.Error) -> None:
        """A group chat sealed with a key the group has moved past (client/groupsend.py): seal
        it again once, from a task (the reader never waits for outbox room)."""
        msg_id = e.ref_msg_id or self._outbox.by_link_seq(e.ref_seq)
        recipe, show = self._recipes.stale(msg_id)
        in_outbox = msg_id in self._outbox
        self._outbox.confirm(msg_id)  # these bytes will never commit
        if recipe is not None:
            self.group_keys.rotated(recipe.group_id, 0)
            self._chore(self._reseal(msg_id, recipe))
        elif show or in_outbox or not msg_id:
            await self._events.put(ServerError("STALE_KEY", e.detail, msg_id))
        # else: a second refusal of a chat already re-sealed (a resend raced the first)

    async def _apply(self, effects: list[S.Effect], *, may_wait: bool) -> None:
        """Carry out the sync machine's effects, in order."""
        for eff in effects:
            if isinstance(eff, S.Surface):
                await self._events.put(await self._open(eff.chat, eff.own))
            elif isinstance(eff, S.SurfaceReceipt):
                if eff.kind == "SENT":
                    self._outbox.confirm(eff.msg_id)
                    self._recipes.done(eff.msg_id)
                await self._events.put(
                    Receipt(eff.kind, eff.peer, eff.msg_id, eff.seq, eff.conv_id)
                )
            elif isinstance(eff, S.SendSync):
                sync = im_pb2.Sync(
                    conv_id=eff.conv_id, from_seq=eff.from_seq, to_seq=eff.to_seq, limit=eff.limit
                )
                seq = await self._send(im_pb2.Envelope(sync=sync), may_wait=may_wait)
                if seq:
                    self._sync_seqs[seq] = eff.conv_id
                    while len(self._sync_seqs) > SYNC_MEMORY:
                        self._sync_seqs.popitem(last=False)
            else:
                cur = im_pb2.Cursor(conv_id=eff.conv_id, type=eff.type, seq=eff.seq)  # type: ignore[arg-type]
                await self._send(im_pb2.Envelope(cursor=cur), may_wait=may_wait)
        if self._sync.caught_up and not self._caught_up.is_set():
            self._caught_up.set()

    async def _open(self, chat: im_pb2.ChatMsg, own: bool) -> Message | ServerError:
        if chat.dest_type == im_pb2.GROUP or chat.conv_id.startswith("g:"):
            group_id = chat.conv_id[2:] if chat.conv_id.startswith("g:") else chat.dest_id
            return await self._open_group(chat, group_id, own)
        peer = chat.dest_id if chat.from_id == self.user_id else chat.from_id
        return open_chat(chat, await self._key_of(peer), own=own)

    async def _open_group(
        self, chat: im_pb2.ChatMsg, group_id: str, own: bool
    ) -> Message | ServerError:
        """A group chat opened with the key its ``key_id`` names (fetched if new to us); a
        SYSTEM one as it is, and a KEY_ROTATED among them makes the next send fetch keys."""
        if chat.msg_type == im_pb2.SYSTEM:
            msg = open_chat(chat, None, own=own)
            if isinstance(msg, Message) and msg.system and msg.system.event == "KEY_ROTATED":
                self.group_keys.rotated(group_id, msg.system.key_id)
            return msg
        key = None
        with contextlib.suppress(RestError, OSError, IMError):
            key = await self.group_keys.key(group_id, chat.key_id)
        if chat.dest_id != group_id:  # the seal binds the group id: a server's swap fails it
            key = None
        return open_chat(chat, key, own=own)

    async def _key_of(self, peer: str) -> str | None:
        """The pair key shared with ``peer``; a friend we do not know yet is looked up."""
        key = self.friends.get(peer)
        if key is None:
            with contextlib.suppress(RestError, OSError, IMError):
                await self.refresh_friends()
            key = self.friends.get(peer)
        return key

    # -- history (REST) ----------------------------------------------------------------------

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
        ``before`` (0: the newest). A body that does not open is UNREADABLE at its seq."""
        conv_id = peer_or_conv_id
        if not is_conv_id(conv_id):
            conv_id = pair_conv_id(self.user_id, peer_or_conv_id)
        page = await self.rest.messages(conv_id, before=before, after=after, limit=limit)
        return [await self._open_stored(s) for s in page]

    async def _open_stored(self, stored: StoredChat) -> Message | ServerError:
        ref = parse_conv_id(stored.conv_id)
        key = None
        chat = im_pb2.ChatMsg()
        chat.CopyFrom(stored.chat)
        chat.conv_id, chat.seq, chat.server_time = stored.conv_id, stored.seq, stored.server_time
        own = chat.from_id == self.user_id
        if ref.dest_type == im_pb2.GROUP:
            return await self._open_group(chat, ref.group_id, own)
        if ref.dest_type == im_pb2.SINGLE and self.user_id in ref.members:
            key = await self._key_of(ref.peer_of(self.user_id))
        return open_chat(chat, key, own=own)


async def befriend(a: IMClient, b: IMClient) -> str:
    """Make ``a`` and ``b`` friends the only way there is, both saying yes: ``a`` asks, ``b``
    accepts. Both know the pair key afterwards, which is returned. Both must be logged in."""
    await a.add_friend(b.user_id)
    key = await b.add_friend(a.user_id)
    if key is None:  # b's yes found no request of a's: a blocked b, or a lost the request
        raise IMError(f"{a.user_id!r} and {b.user_id!r} did not become friends")
    a.friends[b.user_id] = key
    return key
