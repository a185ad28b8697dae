"""IMClient's receiving side: frames in -> the sync machine -> effects out (sent on the link, or
opened and put in the event queue, in order), errors, and history over REST opened the same way.

Rules it keeps:
- events wait in a bounded queue: an application that stops reading stops the link (its
  reader waits on the queue), and the server then treats this device as slow;
- the reader never waits for window room (the LinkAcks that make room come through the same
  reader): a frame it cannot send at once waits for the ticker;
- a chat refused for good leaves the outbox and shows as a ServerError; a group chat refused
  STALE_KEY is sealed again (client/sending.py);
- a body opens with the pair key, a group's with the key its ``key_id`` names (fetched if new
  to us); one that does not open is UNREADABLE at its seq, never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from client import sync as S
from client.bodies import open_chat
from client.events import Event, GroupReceipt, Message, Presence, Receipt, ServerError, Typing
from client.files import download_file
from client.history import Conversation, StoredChat
from client.rest import RestError
from client.sending import Sending
from common.convid import is_conv_id, pair_conv_id, parse_conv_id
from common.errors import IMError
from proto import im_pb2

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


class Receiving(Sending):
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
        elif kind == "typing":
            t = env.typing
            if t.user_id and t.user_id != self.user_id and not self._events.full():
                # ephemeral: with the app behind on its events, a typing notice is dropped
                # rather than hold the link's reader
                self._events.put_nowait(Typing(t.conv_id, t.user_id, t.typing))
            return
        elif kind == "presence":
            pr = env.presence
            online = pr.state == im_pb2.ONLINE
            await self._events.put(Presence(pr.user_id, online, 0 if online else pr.last_seen))
            return
        else:
            return
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
        elif e.code == im_pb2.OUT_OF_ORDER:
            self._on_out_of_order(e)
            return
        if e.code in FINAL_ERRORS:
            msg_id = e.ref_msg_id if e.ref_msg_id in self._outbox else 0
            if not msg_id and e.ref_seq:
                msg_id = self._outbox.by_link_seq(e.ref_seq)
            if msg_id:
                self._outbox.confirm(msg_id)
                self._recipes.done(msg_id)
        await self._events.put(ServerError(im_pb2.ErrorCode.Name(e.code), e.detail, e.ref_msg_id))

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

    # -- reading -----------------------------------------------------------------------------

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

    # -- opening -----------------------------------------------------------------------------

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
