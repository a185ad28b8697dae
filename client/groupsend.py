"""Group chats in the outbox: how to seal one again when the group's key moved on under it.

Why: a group chat is sealed with the group's current key, and a member leaving makes a new one
(docs/groups.md, Keys). A chat sealed just before, or by a device that had not heard of the
rotation yet, is refused ``STALE_KEY`` and nothing is stored. Resending the same bytes cannot
help, and the same id with another body would be ``ID_REUSED``, so the library seals the same
content with the new key under a **new** id, once:

- each group chat made here is kept as a *recipe* (the group, and how to seal its content given
  a key and an id) until its SENT or a refusal, bounded like the outbox it shadows;
- a first STALE_KEY takes the recipe out, marks the group's keys stale, and hands the recipe
  back to be sealed again with a fresh key and id (it goes at the end of the outbox: the new id
  is the later one, so the device's chats still take seqs in the order of their ids);
- a second STALE_KEY for the re-sealed chat is surfaced as the error it is (the group is
  rotating faster than we can follow): the library does not loop;
- a STALE_KEY naming no recipe (a resend's second refusal, already handled) is dropped.

The old id never gets a SENT; the application learns the new one from a ``RESEALED`` receipt
(``Receipt.msg_id`` the old id, ``Receipt.seq`` 0, ``Receipt.new_msg_id`` the new one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from proto import im_pb2

Seal = Callable[[str, int, int], im_pb2.ChatMsg]  # (key, key_id, msg_id) -> the chat
RESEALS = 1  # times one message is sealed again after STALE_KEY before the refusal shows


@dataclass(frozen=True, slots=True)
class Recipe:
    group_id: str
    seal: Seal
    reseals: int = 0  # times this content was sealed again already


class Recipes:
    """Recipes of group chats not yet SENT, by message id; at most ``size`` (oldest dropped:
    a chat whose recipe is gone is treated as any other on STALE_KEY: its error shows)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[int, Recipe] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, msg_id: int, recipe: Recipe) -> None:
        self._items[msg_id] = recipe
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def done(self, msg_id: int) -> None:
        """SENT, or refused for good: nothing to redo."""
        self._items.pop(msg_id, None)

    def stale(self, msg_id: int) -> tuple[Recipe | None, bool]:
        """A STALE_KEY for ``msg_id``: (the recipe to seal again, None if none or spent;
        whether the refusal is ours to show)."""
        recipe = self._items.pop(msg_id, None)
        if recipe is None:
            return None, False
        if recipe.reseals >= RESEALS:
            return None, True
        return Recipe(recipe.group_id, recipe.seal, recipe.reseals + 1), False
