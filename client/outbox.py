"""Chats this device sent and the server has not committed yet (no SENT).

Why: a chat can be lost anywhere before its commit (a link, a connector, a transfer, a queue);
only SENT says it has its seq. Until then it is kept and sent again, with the same id (the
writer commits a resend once: same id, same content), after a reconnect and when unconfirmed for
``resend_after`` seconds. The outbox is bounded: a sender waits for room instead of keeping an
ever-growing backlog. Receipts are not here: cursors are re-sent by the sync machine instead.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict

from proto import im_pb2

OUTBOX_SIZE = 10_000  # chats waiting for SENT; send_text waits beyond this
RESEND_AFTER = 8.0  # seconds a sent chat may stay unconfirmed before it goes again
# after an OUT_OF_ORDER sends a conversation again, its other refusals in this long are the
# same round's echo (every chat behind a lost one is refused too) and change nothing
REQUEUE_GAP = 2.0


class Pending:
    """An outbox entry: the chat and when it last went out (0: not yet on this link)."""

    __slots__ = ("chat", "link_seq", "sent_at", "tries")

    def __init__(self, chat: im_pb2.ChatMsg) -> None:
        self.chat = chat
        self.tries = 0  # times it went out
        self.sent_at = 0.0
        self.link_seq = 0  # its link seq when last sent: an ERROR may name it by that


class Outbox:
    def __init__(self, size: int = OUTBOX_SIZE, resend_after: float = RESEND_AFTER) -> None:
        self.size = size
        self.resend_after = resend_after
        self._items: OrderedDict[int, Pending] = OrderedDict()
        # ids not sent on the current link yet, in the order they were made: a chat goes out
        # only after every older one did (sender order, I3), so a new chat never overtakes the
        # resends a fresh link owes
        self._unsent: OrderedDict[int, None] = OrderedDict()
        # each conversation's ids, ascending (ids grow as chats are made): what after_id names
        self._convs: dict[tuple[int, str], list[int]] = {}
        self._requeued: dict[tuple[int, str], float] = {}  # conv -> when it last went again
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, msg_id: int) -> bool:
        return msg_id in self._items

    async def wait_room(self) -> None:
        while len(self._items) >= self.size:
            self._room.clear()
            await self._room.wait()

    def add(self, chat: im_pb2.ChatMsg) -> Pending:
        pending = self._items[chat.id] = Pending(chat)
        self._unsent[chat.id] = None
        ids = self._convs.setdefault(_conv(chat), [])
        bisect.insort(ids, chat.id)  # an append: a new chat has the highest id yet
        return pending

    def get(self, msg_id: int) -> Pending | None:
        return self._items.get(msg_id)

    def confirm(self, msg_id: int) -> Pending | None:
        """Committed (or refused for good): forget it."""
        pending = self._items.pop(msg_id, None)
        self._unsent.pop(msg_id, None)
        if pending is not None:
            key = _conv(pending.chat)
            ids = self._convs[key]
            del ids[bisect.bisect_left(ids, msg_id)]
            if not ids:
                del self._convs[key]
                self._requeued.pop(key, None)
        if len(self._items) < self.size:
            self._room.set()
        return pending

    def before(self, chat: im_pb2.ChatMsg) -> int:
        """The after_id for ``chat`` as it goes out now: the newest earlier chat of its
        conversation still without SENT (0: none, so it may take any seq)."""
        ids = self._convs.get(_conv(chat), [])
        at = bisect.bisect_left(ids, chat.id)
        return ids[at - 1] if at else 0

    def requeue(self, chat: im_pb2.ChatMsg, now: float, gap: float = REQUEUE_GAP) -> int:
        """``chat`` was refused OUT_OF_ORDER: every chat of its conversation still here goes
        out again, oldest first, in its place among the unsent (how many; 0 when the
        conversation went again less than ``gap`` seconds ago: one lost chat has every chat
        behind it refused, and each of those refusals must not send the whole conversation
        again; a refusal after the gap does, and the resend timer covers the rest)."""
        key = _conv(chat)
        ids = self._convs.get(key, [])
        last = self._requeued.get(key)
        if not ids or (last is not None and now - last < gap):
            return 0
        self._requeued[key] = now
        for msg_id in ids:
            pending = self._items[msg_id]
            pending.sent_at, pending.link_seq = 0.0, 0
        self._unsent = OrderedDict.fromkeys(sorted({*self._unsent, *ids}))
        return len(ids)

    def by_link_seq(self, link_seq: int) -> int:
        """The id of the chat last sent as ``link_seq`` on this link (0: none)."""
        for msg_id, pending in self._items.items():
            if pending.link_seq == link_seq:
                return msg_id
        return 0

    def new_link(self) -> None:
        """A fresh link: everything goes again."""
        for pending in self._items.values():
            pending.sent_at, pending.link_seq = 0.0, 0
        self._unsent = OrderedDict.fromkeys(self._items)

    def next_unsent(self) -> Pending | None:
        """The oldest chat not sent on this link yet."""
        for msg_id in self._unsent:
            return self._items[msg_id]
        return None

    def sent(self, pending: Pending, link_seq: int, now: float) -> None:
        """``pending`` went out on this link as ``link_seq``."""
        self._unsent.pop(pending.chat.id, None)
        pending.tries += 1
        pending.sent_at, pending.link_seq = now, link_seq

    def due(self, now: float) -> list[Pending]:
        """Sent on this link but unconfirmed for too long, oldest first (the unsent ones go by
        :meth:`next_unsent`)."""
        cutoff = now - self.resend_after
        return [p for p in self._items.values() if 0 < p.sent_at <= cutoff]


def _conv(chat: im_pb2.ChatMsg) -> tuple[int, str]:
    return chat.dest_type, chat.dest_id
