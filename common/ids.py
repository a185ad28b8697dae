"""Message ids: unique per sender across all its devices, and increasing per device.

An id is ``milliseconds << 12 | slot << 6 | n``. The slot (0..63) is the device's, given by REST
login and carried in its token (rest_web/devices.py); the connector refuses a chat whose id names
another slot, so two devices of one user can never make the same id, even in the same
millisecond. ``n`` counts 64 ids per millisecond; past that a generator borrows the next
millisecond, and it never goes backwards within a process even if the wall clock does. 2**53 is
reached in the year 2248, so ids stay exact in JSON numbers too.
"""

from __future__ import annotations

import time

SLOT_BITS = 6
COUNTER_BITS = 6
SLOTS = 1 << SLOT_BITS  # 64 devices per user can make ids at once
_COUNTER_MASK = (1 << COUNTER_BITS) - 1
_SLOT_MASK = SLOTS - 1
_MS_SHIFT = SLOT_BITS + COUNTER_BITS
GROUP_DEST = 2  # im_pb2.GROUP, as a number: this module imports nothing of the wire


def slot_of(msg_id: int) -> int:
    """The device slot an id was made in."""
    return (msg_id >> COUNTER_BITS) & _SLOT_MASK


class MessageIdGen:
    """Ids for one device slot. Servers use slot 0 for the receipts they make: receipt ids are
    not dedupe keys, so they need no slot of their own."""

    __slots__ = ("_last", "_slot")

    def __init__(self, slot: int = 0) -> None:
        self._last = 0
        self._slot = 0
        self.slot = slot

    @property
    def slot(self) -> int:
        return self._slot

    @slot.setter
    def slot(self, value: int) -> None:
        """A new login may name another slot: later ids carry it and still never go back."""
        if not 0 <= value < SLOTS:
            raise ValueError(f"id slot {value} is not in 0..{SLOTS - 1}")
        self._slot = value

    def __call__(self) -> int:
        base = self._slot << COUNTER_BITS
        candidate = int(time.time() * 1000) << _MS_SHIFT | base
        if candidate > self._last:
            self._last = candidate
            return candidate
        ms, last_n = self._last >> _MS_SHIFT, self._last & _COUNTER_MASK
        if slot_of(self._last) == self._slot and last_n < _COUNTER_MASK:
            self._last += 1
        else:  # this millisecond is used up (or was another slot's): borrow the next one
            self._last = (ms + 1) << _MS_SHIFT | base
        return self._last


def conversation_key(a: str, b: str) -> str:
    """The same key for both directions of a 1-1 conversation: it picks one transfer and one
    routing worker, which is what keeps a conversation in order."""
    return f"{a}\x00{b}" if a < b else f"{b}\x00{a}"


def route_key(from_id: str, dest_type: int, dest_id: str) -> str:
    """The key that picks a chat's transfer (and, in the connector, what is in commit): a
    group chat's is its conversation id, so every member's chats of one group go one way and
    stay in one order; a 1-1 chat's is :func:`conversation_key`."""
    if dest_type == GROUP_DEST:
        return f"g:{dest_id}"
    return conversation_key(from_id, dest_id)
