"""Message ids: unique per sender and increasing, so receivers can check order per conversation.

An id is ``milliseconds << 12 | n``: 4096 ids per millisecond before it borrows from the next
one, and it never goes backwards within a process even if the wall clock does. 2**53 is reached
in the year 2248, so ids stay exact in JSON numbers too.
"""

from __future__ import annotations

import time


class MessageIdGen:
    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        candidate = int(time.time() * 1000) << 12
        self._last = max(self._last + 1, candidate)
        return self._last


def conversation_key(a: str, b: str) -> str:
    """The same key for both directions of a 1-1 conversation: it picks one transfer and one
    routing worker, which is what keeps a conversation in order."""
    return f"{a}\x00{b}" if a < b else f"{b}\x00{a}"
