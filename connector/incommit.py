"""Chats a transfer link took whose commit has not come back yet (connector/transfers.py).

A transfer acknowledges a chat on its link as soon as it has it, well before the chat is
committed; one that dies in between loses it. So the connector keeps each chat it forwarded
until the chat's fanout comes back (the origin connector always gets one), to forward again,
in the order first sent, if that link is lost. Pure bookkeeping, bounded three ways: entries,
body bytes and age (a commit that never answers is the sending client's to resend: it has no
SENT). Counts per conversation say whether a conversation still has a chat in commit through
this link, which a conversation moving to another transfer waits for (sender order, I3).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from contextvars import ContextVar

from common.ids import route_key
from proto import im_pb2

MAX_ENTRIES = 20_000
MAX_BYTES = 64 * 1024 * 1024
MAX_AGE = 30.0  # seconds

ChatKey = tuple[str, int]  # (sender, message id)

# When the chat being forwarded came in from its client (time.monotonic()): set by the client
# session in the task that handles the frame, read by the link that takes the chat, in the same
# task. The entry's time is then the frame-in time, which im_send_latency_seconds{hop=
# "connector"} measures from; a reroute (another task) finds none and uses its own clock.
CHAT_IN: ContextVar[float | None] = ContextVar("chat_in", default=None)


class InCommit:
    """One link's chats not yet seen committed, oldest first."""

    __slots__ = ("_bytes", "_convs", "_items")

    def __init__(self) -> None:
        self._items: OrderedDict[ChatKey, tuple[float, str, im_pb2.Envelope]] = OrderedDict()
        self._convs: Counter[str] = Counter()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    @property
    def bytes(self) -> int:
        return self._bytes

    def holds(self, conv_key: str) -> bool:
        """A chat of this conversation is still in commit through this link."""
        return self._convs[conv_key] > 0

    def add(self, env: im_pb2.Envelope, now: float) -> None:
        chat = env.chat
        key = (chat.from_id, chat.id)
        self.forget(key)
        conv = route_key(chat.from_id, chat.dest_type, chat.dest_id)
        self._items[key] = (now, conv, env)
        self._convs[conv] += 1
        self._bytes += len(chat.body)
        while self._items:
            first, (when, _, _) = next(iter(self._items.items()))
            fits = len(self._items) <= MAX_ENTRIES and self._bytes <= MAX_BYTES
            if fits and now - when < MAX_AGE:
                break
            self.forget(first)

    def forget(self, key: ChatKey) -> float | None:
        """Drop ``key``; the time it was added with, or None when it was not held."""
        held = self._items.pop(key, None)
        if held is None:
            return None
        when, conv, env = held
        self._bytes -= len(env.chat.body)
        self._convs[conv] -= 1
        if self._convs[conv] <= 0:
            del self._convs[conv]
        return when

    def take(self) -> list[im_pb2.Envelope]:
        """Everything held, in the order first sent; empty afterwards."""
        out = [env for _, _, env in self._items.values()]
        self._items.clear()
        self._convs.clear()
        self._bytes = 0
        return out
