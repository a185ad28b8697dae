"""The group keys this user holds, cached per group: which key seals a new chat, which opens one.

Why a cache with its own rules: every group chat sent needs the group's *current* key and every
one received needs the key its ``key_id`` names, and asking ``GET /groups/{id}/keys`` per chat
would put a REST call on every message. The rules:

- the keys of a group are fetched when first needed and kept; the current one is the key whose
  ``to_seq`` is 0 (a former member has none: sending is refused before anything goes out);
- a chat naming a ``key_id`` above the highest one held means the group rotated since the last
  fetch: fetch again (once per group at a time, rechecked after the wait); a ``key_id`` at or
  below the highest held that is not among them is a key of seqs this user never could read,
  and no fetch will bring it;
- a KEY_ROTATED event naming a newer key, or a STALE_KEY refusal, marks the group stale: the
  next send fetches first;
- at most ``max_groups`` groups are kept (least recently used dropped), so a user in many
  groups costs bounded memory.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from client.groups import GroupKeyInfo
from common.errors import IMError

MAX_GROUPS = 10_000  # groups whose keys are kept; a user in more refetches the oldest


@dataclass(slots=True)
class _Group:
    keys: dict[int, str] = field(default_factory=dict)  # key_id -> key
    current: int = 0  # key_id to seal with (0: none: not a member)
    stale: bool = True  # fetch before the next send
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def highest(self) -> int:
        return max(self.keys, default=0)


class GroupKeyRing:
    def __init__(
        self,
        fetch: Callable[[str], Awaitable[list[GroupKeyInfo]]],
        *,
        max_groups: int = MAX_GROUPS,
    ) -> None:
        self._fetch = fetch
        self.max_groups = max_groups
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self.fetches = 0

    def _group(self, group_id: str) -> _Group:
        g = self._groups.get(group_id)
        if g is None:
            g = self._groups[group_id] = _Group()
            while len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(group_id)
        return g

    async def _refresh(self, group_id: str, g: _Group) -> None:
        found = await self._fetch(group_id)
        self.fetches += 1
        g.keys = {k.key_id: k.key for k in found}
        g.current = next((k.key_id for k in reversed(found) if k.to_seq == 0), 0)
        g.stale = False

    async def current(self, group_id: str) -> tuple[int, str]:
        """(key_id, key) to seal a new chat with; IMError if this user is not a member."""
        g = self._group(group_id)
        async with g.lock:
            if g.stale or not g.current:
                await self._refresh(group_id, g)
        if not g.current:
            raise IMError(f"not a member of group {group_id!r} (no current key)")
        return g.current, g.keys[g.current]

    async def key(self, group_id: str, key_id: int) -> str | None:
        """The key ``key_id`` of the group, fetched if it may be new; None if not ours."""
        g = self._group(group_id)
        if key_id in g.keys:
            return g.keys[key_id]
        async with g.lock:
            if key_id not in g.keys and (key_id > g.highest or not g.keys):
                await self._refresh(group_id, g)
        return g.keys.get(key_id)

    def rotated(self, group_id: str, key_id: int) -> None:
        """A KEY_ROTATED event (or a STALE_KEY refusal, ``key_id`` 0) was seen: if it names a
        key newer than the current one, the next send fetches first."""
        g = self._groups.get(group_id)
        if g is not None and (key_id == 0 or key_id > g.current):
            g.stale = True

    def held(self, group_id: str) -> dict[int, str]:
        """The keys held now (a copy; for tests and tools)."""
        g = self._groups.get(group_id)
        return {} if g is None else dict(g.keys)
