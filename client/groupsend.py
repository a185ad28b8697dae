"""Group chats in the outbox: how to seal one again when the group's key moved on under it, and
how to keep the sender's order while that happens.

Why: a group chat is sealed with the group's current key, and a member leaving makes a new one
(docs/groups.md, Keys). A chat sealed just before, or by a device that had not heard of the
rotation yet, is refused ``STALE_KEY`` and nothing is stored. Resending the same bytes cannot
help, and the same id with another body would be ``ID_REUSED``, so the library seals the same
content with the new key under a **new** id. The new id is the later one, and the chats of the
group made after the refused one must still take seqs after it, in the order they were made
(I3: per conversation and device, ids grow with the seq). The rules:

- each group chat made here is kept as a *recipe* (the group, the key it was sealed with, how to
  seal its content given a key and an id) until its SENT or a refusal, bounded like the outbox
  it shadows, and in the order made, per group;
- **the gate**: a group chat sealed with a newer key than the group's oldest chat still without
  SENT does not go out until that one is answered. The older one may be refused STALE_KEY; had
  the newer one gone, it would commit first;
- a first STALE_KEY for a chat *holds* the group (none of its chats goes out) and, once the new
  key is fetched, takes that chat **and every later chat of the group still in the outbox** out
  and seals them again, in their order, under new ids at the end of the outbox: their seqs come
  in the order they were made, and their ids grow with them. Those of them already on the wire
  carried the old key too and are refused; their refusals name no recipe and are dropped;
- a chat is sealed again once: a second STALE_KEY for a re-sealed chat is surfaced as the error
  it is (the group is rotating faster than we can follow) and the rest goes on; the library does
  not loop. The chats taken along behind it are not counted as sealed again (they were not
  refused).

Each old id never gets a SENT; the application learns the new one from a ``RESEALED`` receipt
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
    key_id: int = 0  # the key its current chat is sealed with


class Recipes:
    """Recipes of group chats not yet SENT, by message id and per group in the order made; at
    most ``size`` (oldest dropped: a chat whose recipe is gone is treated as any other on
    STALE_KEY: its error shows). Also which groups are held for a re-seal."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[int, Recipe] = OrderedDict()
        self._order: dict[str, OrderedDict[int, None]] = {}  # group -> its ids, in order made
        # groups waiting for a re-seal (nothing of theirs goes out) -> their oldest refused chat
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, msg_id: int) -> Recipe | None:
        return self._items.get(msg_id)

    def add(self, msg_id: int, recipe: Recipe) -> None:
        self._items[msg_id] = recipe
        self._order.setdefault(recipe.group_id, OrderedDict())[msg_id] = None
        while len(self._items) > self.size:
            oldest = next(iter(self._items))
            self.done(oldest)

    def done(self, msg_id: int) -> Recipe | None:
        """SENT, or refused for good: nothing to redo."""
        recipe = self._items.pop(msg_id, None)
        if recipe is not None:
            ids = self._order[recipe.group_id]
            ids.pop(msg_id, None)
            if not ids:
                del self._order[recipe.group_id]
        return recipe

    def may_send(self, msg_id: int) -> bool:
        """Whether chat ``msg_id`` may go out now (a chat that is no group's always may): its
        group is not held, and no older chat of the group still waits with an older key."""
        recipe = self._items.get(msg_id)
        if recipe is None:
            return True
        if recipe.group_id in self._held:
            return False
        oldest = next(iter(self._order[recipe.group_id]))
        return oldest == msg_id or self._items[oldest].key_id >= recipe.key_id

    def hold(self, group_id: str, msg_id: int) -> bool:
        """Hold the group for a re-seal starting at its refused chat ``msg_id``; False if it is
        held already (one re-seal at a time: the one under way starts at the oldest refused
        chat and takes every later one along)."""
        head = self._held.get(group_id)
        self._held[group_id] = msg_id if head is None else min(head, msg_id)
        return head is None

    def held(self, group_id: str) -> bool:
        return group_id in self._held

    def release(self, group_id: str) -> int:
        """End the hold: the oldest refused chat it was for (0: none)."""
        return self._held.pop(group_id, 0)

    def take_from(self, msg_id: int) -> list[tuple[int, Recipe]]:
        """Take out ``msg_id`` and every later chat of its group, in the order made (nothing
        if ``msg_id`` has no recipe)."""
        recipe = self._items.get(msg_id)
        if recipe is None:
            return []
        ids = list(self._order[recipe.group_id])
        later = ids[ids.index(msg_id) :]
        out: list[tuple[int, Recipe]] = []
        for i in later:
            taken = self._items.get(i)
            if taken is not None:
                out.append((i, taken))
                self._items.pop(i)
                self._order[recipe.group_id].pop(i)
        if not self._order[recipe.group_id]:
            del self._order[recipe.group_id]
        return out
