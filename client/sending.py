"""IMClient's sending side: chats made, kept in the outbox, sent in order, resent, and a group
chat refused STALE_KEY sealed again without breaking the sender's order.

Rules it keeps (client/outbox.py and client/groupsend.py say why):
- a chat gets its id when it enters the outbox, so ids follow the order chats were made, and
  it goes out the first time on a link only from :meth:`Sending._send_chats`, oldest first, one
  task at a time: the server sees a device's chats in the order they were made (I3);
- each chat names the newest earlier chat of its conversation still without SENT
  (``after_id``); the writer refuses it OUT_OF_ORDER unless that one is committed, and then the
  conversation's unconfirmed chats go again, oldest first: a chat lost on the way (a broker
  node or a transfer gone with it) can't be overtaken by one made after it;
- a group chat waits at the gate while an older chat of its group, sealed with an older key,
  has no answer yet (it may be refused STALE_KEY and come back behind it);
- a STALE_KEY holds the group; once the new key is in, the refused chat and every later chat
  of the group still in the outbox are sealed again in their order under new ids (RESEALED),
  without an await in between, so no other chat of the group can slip in among them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from client.account import AccountCalls
from client.bodies import file_chat, text_chat
from client.events import Event, Receipt, ServerError
from client.files import upload_file
from client.groups import ReadBy
from client.groupsend import RESEALS, Recipe, Seal
from common.convid import group_conv_id
from common.errors import IMError
from common.userids import canonical_or_none
from proto import im_pb2


class Sending(AccountCalls):
    # -- making chats ------------------------------------------------------------------------

    def _key(self, to: str) -> tuple[str, str]:
        to = canonical_or_none(to) or to
        key = self.friends.get(to)
        if key is None:
            raise IMError(f"{to!r} is not a friend (no pair key)")
        return to, key

    def send_typing(self, conv_id: str, typing: bool = True) -> bool:
        """Tell ``conv_id``'s other side (a friend, a group's members) this user is typing, or
        stopped. Ephemeral: nothing is stored or resent, a start holds about 6 s, so repeat it
        every few seconds while typing (the server rate-limits faster repeats). False when
        offline: there is nobody to tell then."""
        link = self._conn.link
        if link is None or not self._conn.up or not conv_id:
            return False
        body = im_pb2.Typing(conv_id=conv_id, typing=typing)
        link.send_control(im_pb2.Envelope(typing=body))
        return True

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
        message id (a STALE_KEY refusal seals it again under a new id: RESEALED)."""
        me = self.user_id
        return await self._enqueue_group(
            group_id,
            lambda key, key_id, msg_id: text_chat(
                key, msg_id, me, group_id, text, group_key_id=key_id
            ),
        )

    async def send_group_file(
        self, group_id: str, path: str | os.PathLike[str], name: str = ""
    ) -> int:
        """Encrypt and upload ``path``, then send it to the group as a FILE message sealed with
        the group's current key; returns the message id. Who was a member at its seq may
        download it (docs/groups.md); a STALE_KEY refusal seals it again as a text's is (the
        upload is not repeated)."""
        group_conv_id(group_id)  # ValueError before anything is uploaded
        await self.group_keys.current(group_id)  # IMError if not a member: nothing uploaded
        src = Path(path)
        up = await upload_file(self.rest, src)
        label = name or src.name
        me = self.user_id
        return await self._enqueue_group(
            group_id,
            lambda key, key_id, msg_id: file_chat(
                key, msg_id, me, group_id, up, label, group_key_id=key_id
            ),
        )

    async def _enqueue_group(self, group_id: str, seal: Seal) -> int:
        group_conv_id(group_id)  # ValueError for what cannot be a group id
        key_id, key = await self.group_keys.current(group_id)

        def make(msg_id: int) -> im_pb2.ChatMsg:
            self._recipes.add(msg_id, Recipe(group_id, seal, 0, key_id))  # before any refusal
            return seal(key, key_id, msg_id)

        return await self._enqueue(make)

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

    async def read_by(self, group_id: str, seq: int, *, limit: int = 100) -> ReadBy:
        """Who of the group's members at ``seq`` (the sender left out) have read and received
        it, as the server counts from their cursors (``GET /groups/{id}/messages/{seq}/
        receipts``): "read by 7 of 12", and the first ``limit`` names of each."""
        return await self.rest.groups.receipts(group_id, seq, limit=limit)

    # -- sending them ------------------------------------------------------------------------

    async def _send_chats(self) -> None:
        """Send what the outbox has not sent on this link, oldest first, one sender at a time:
        the only way a chat goes out the first time on a link. A new chat made while a fresh
        link's resends are still going out waits its turn behind them, so the server sees a
        device's chats in the order they were made (I3) whatever races the reconnect. A group
        chat at the gate (module docstring) stops the line until the ticker finds it open."""
        async with self._chat_lock:
            while self._conn.up:
                pending = self._outbox.next_unsent()
                if pending is None or not self._recipes.may_send(pending.chat.id):
                    return
                pending.chat.after_id = self._outbox.before(pending.chat)
                seq = await self._send(im_pb2.Envelope(chat=pending.chat), may_wait=True)
                if not seq:
                    return
                if pending.chat.id in self._outbox:  # not confirmed while it was being sent
                    self.resent += pending.tries > 0
                    self._outbox.sent(pending, seq, time.monotonic())

    async def _resend_stale(self) -> None:
        """Chats sent on this link long ago and still without SENT go again (same id: the
        writer commits a message once); not those of a group held for a re-seal."""
        async with self._chat_lock:
            for pending in self._outbox.due(time.monotonic()):
                msg_id = pending.chat.id
                if not self._conn.up or msg_id not in self._outbox:
                    continue
                if not self._recipes.may_send(msg_id):
                    continue
                pending.chat.after_id = self._outbox.before(pending.chat)
                seq = await self._send(im_pb2.Envelope(chat=pending.chat), may_wait=True)
                if not seq:
                    return
                self.resent += 1
                self._outbox.sent(pending, seq, time.monotonic())

    # -- OUT_OF_ORDER ------------------------------------------------------------------------

    def _on_out_of_order(self, e: im_pb2.Error) -> None:
        """The chat's after_id was not in the timeline when it reached the writer (that one
        was lost on the way, or is still stuck somewhere): send the conversation's chats
        without SENT again, oldest first, so they commit in the order they were made."""
        msg_id = e.ref_msg_id or self._outbox.by_link_seq(e.ref_seq)
        pending = self._outbox.get(msg_id)
        if pending is None or not pending.sent_at:
            return  # answered meanwhile, or already going again with its conversation
        if not self._recipes.may_send(msg_id):
            return  # held for a re-seal, which sends it again in its order
        if not self._outbox.requeue(pending.chat, time.monotonic()):
            return  # the conversation went again a moment ago: this is that round's echo
        self.out_of_order += 1
        if self._conn.up:
            self._chore(self._send_chats())  # from a task: the reader never waits for room

    # -- STALE_KEY ---------------------------------------------------------------------------

    async def _on_stale_key(self, e: im_pb2.Error) -> None:
        """A group chat sealed with a key the group has moved past: hold its group and seal it
        (and what follows it) again from a task (the reader never waits for a key fetch)."""
        msg_id = e.ref_msg_id or self._outbox.by_link_seq(e.ref_seq)
        recipe = self._recipes.get(msg_id)
        if recipe is None:
            in_outbox = msg_id in self._outbox
            self._outbox.confirm(msg_id)  # these bytes will never commit
            if in_outbox or not msg_id:
                await self._events.put(ServerError("STALE_KEY", e.detail, msg_id))
            # else: the old bytes of a chat already sealed again (its id is never used again)
            return
        self.group_keys.rotated(recipe.group_id, 0)
        if self._recipes.hold(recipe.group_id, msg_id):
            self._chore(self._reseal(recipe.group_id))
        # else: the group's re-seal under way takes this one too (it starts at the oldest)

    async def _reseal(self, group_id: str) -> None:
        """Seal the held group's refused chat and every later one again, in order."""
        try:
            key_id, key = await self.group_keys.current(group_id)
        except (IMError, OSError) as exc:  # not a member any more, REST down: say so
            head = self._recipes.release(group_id)
            self._recipes.done(head)
            self._outbox.confirm(head)
            await self._events.put(ServerError("STALE_KEY", str(exc), head))
            return
        # no await from here until every chat is back in the outbox: nothing slips in between
        head = self._recipes.release(group_id)
        conv_id = group_conv_id(group_id)
        shown: list[Event] = []
        for old_id, recipe in self._recipes.take_from(head):
            self._outbox.confirm(old_id)
            refused = old_id == head  # the others come along for the order only
            if refused and recipe.reseals >= RESEALS:
                shown.append(ServerError("STALE_KEY", "refused again after a re-seal", old_id))
                continue
            new_id = self._ids()
            chat = recipe.seal(key, key_id, new_id)
            self._recipes.add(
                new_id, Recipe(group_id, recipe.seal, recipe.reseals + refused, key_id)
            )
            self._sync.local_sent(new_id)
            self._outbox.add(chat)
            shown.append(Receipt("RESEALED", group_id, old_id, 0, conv_id, new_msg_id=new_id))
        for event in shown:
            await self._events.put(event)
        if self._conn.up:
            await self._send_chats()
