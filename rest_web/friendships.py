"""Friendship by consent, and blocks, over ``im_friend_request``, ``im_block`` and ``im_relation``.

A relation (with its pair key) exists only once both users asked for it: the first ask is a
request, the other side's ask accepts it. Rules kept here, whatever the caller:

- asking someone who does not exist, or who blocked you, looks exactly like asking anyone else:
  a pending request, stored and listed in your outgoing requests. The blocked user's request is
  never shown to the blocker, and no request is ever accepted for a name nobody holds (if the
  name is registered later, its owner sees the request like any other);
- two users asking each other at the same moment end as friends: each stores its request first,
  then looks for the other's, so at least one of them sees both;
- a block ends the pair's relation and drops requests both ways; while it stands the blocked
  user can neither be asked by the blocker (unblock first) nor reach them: no relation, so the
  connector's friend check refuses their chats and receipts (within the relation cache's ttl,
  user_status/relations.py), and their requests stay hidden. Lifting a block drops the requests
  the blocked user made meanwhile, so none surfaces later;
- outgoing requests and blocks are capped per user (:data:`MAX_PENDING`, :data:`MAX_BLOCKS`):
  nobody fills the tables. Lists answer at most :data:`LIST_LIMIT` rows, newest first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from common.db import Database
from rest_web.store import UserStore

MAX_PENDING = 1000
MAX_BLOCKS = 10_000
LIST_LIMIT = 1000


class Refusal(Enum):
    SELF = "cannot befriend or block yourself"
    BLOCKED_BY_YOU = "you blocked this user: unblock first"
    TOO_MANY_REQUESTS = f"more than {MAX_PENDING} pending requests: withdraw some first"
    TOO_MANY_BLOCKS = f"more than {MAX_BLOCKS} blocks: lift some first"


class Refused(Exception):
    def __init__(self, why: Refusal) -> None:
        super().__init__(why.value)
        self.why = why


@dataclass(frozen=True, slots=True)
class Asked:
    """The outcome of a request: ``key`` set when the two are friends now."""

    key: str | None
    accepted_now: bool = False


@dataclass(frozen=True, slots=True)
class Pending:
    user_id: str
    created: int


class Friendships:
    def __init__(self, users: UserStore) -> None:
        self._users = users
        self._db: Database = users.db
        ignore = "INSERT OR IGNORE" if self._db.dialect == "sqlite" else "INSERT IGNORE"
        self._insert_request = (
            f"{ignore} INTO im_friend_request (from_id, to_id, created) VALUES (?, ?, ?)"
        )
        self._insert_block = (
            f"{ignore} INTO im_block (user_id, blocked_id, created) VALUES (?, ?, ?)"
        )

    async def _blocks(self, blocker: str, blocked: str) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 FROM im_block WHERE user_id = ? AND blocked_id = ?", (blocker, blocked)
        )
        return row is not None

    async def _requested(self, asker: str, asked: str) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 FROM im_friend_request WHERE from_id = ? AND to_id = ?", (asker, asked)
        )
        return row is not None

    async def ask(self, me: str, other: str) -> Asked:
        """``me`` asks for ``other``'s friendship: the key if they are friends (now or already),
        else a pending request. :class:`Refused` only for what ``me`` knows about themselves."""
        if me == other:
            raise Refused(Refusal.SELF)
        key = await self._users.relation_key(me, other)
        if key is not None:
            return Asked(key)
        if await self._blocks(me, other):
            raise Refused(Refusal.BLOCKED_BY_YOU)
        if not await self._requested(me, other):
            row = await self._db.fetchone(
                "SELECT COUNT(*) FROM im_friend_request WHERE from_id = ?", (me,)
            )
            if row is not None and int(row[0]) >= MAX_PENDING:
                raise Refused(Refusal.TOO_MANY_REQUESTS)
            await self._db.execute(self._insert_request, (me, other, int(time.time())))
        # the other side's request exists only if it is a real user who has not blocked us
        # (a block drops it, and a blocker cannot ask): then this ask accepts it
        if not await self._requested(other, me) or await self._blocks(other, me):
            return Asked(None)
        key = await self._users.add_relation(me, other)
        await self._drop_requests(me, other)
        return Asked(key, accepted_now=True)

    async def _drop_requests(self, a: str, b: str) -> int:
        return await self._db.execute(
            "DELETE FROM im_friend_request WHERE (from_id = ? AND to_id = ?)"
            " OR (from_id = ? AND to_id = ?)",
            (a, b, b, a),
        )

    async def remove(self, me: str, other: str) -> bool:
        """Unfriend, withdraw ``me``'s request or decline ``other``'s; False if none was there."""
        dropped = await self._drop_requests(me, other)
        removed = await self._users.remove_relation(me, other)
        return removed or dropped > 0

    async def incoming(self, me: str) -> list[Pending]:
        rows = await self._db.fetchall(
            "SELECT r.from_id, r.created FROM im_friend_request r WHERE r.to_id = ?"
            " AND NOT EXISTS (SELECT 1 FROM im_block b"
            " WHERE b.user_id = r.to_id AND b.blocked_id = r.from_id)"
            " ORDER BY r.created DESC, r.from_id LIMIT ?",
            (me, LIST_LIMIT),
        )
        return [Pending(str(u), int(c)) for u, c in rows]

    async def outgoing(self, me: str) -> list[Pending]:
        rows = await self._db.fetchall(
            "SELECT to_id, created FROM im_friend_request WHERE from_id = ?"
            " ORDER BY created DESC, to_id LIMIT ?",
            (me, LIST_LIMIT),
        )
        return [Pending(str(u), int(c)) for u, c in rows]

    async def block(self, me: str, other: str) -> None:
        """Block ``other`` (idempotent): their relation with ``me`` and requests both ways end."""
        if me == other:
            raise Refused(Refusal.SELF)
        if not await self._blocks(me, other):
            row = await self._db.fetchone("SELECT COUNT(*) FROM im_block WHERE user_id = ?", (me,))
            if row is not None and int(row[0]) >= MAX_BLOCKS:
                raise Refused(Refusal.TOO_MANY_BLOCKS)
            await self._db.execute(self._insert_block, (me, other, int(time.time())))
        await self._drop_requests(me, other)
        await self._users.remove_relation(me, other)

    async def unblock(self, me: str, other: str) -> bool:
        """Lift a block; False if there was none. Requests ``other`` made while blocked go."""
        removed = await self._db.execute(
            "DELETE FROM im_block WHERE user_id = ? AND blocked_id = ?", (me, other)
        )
        if removed:
            await self._db.execute(
                "DELETE FROM im_friend_request WHERE from_id = ? AND to_id = ?", (other, me)
            )
        return removed > 0

    async def blocked(self, me: str) -> list[Pending]:
        rows = await self._db.fetchall(
            "SELECT blocked_id, created FROM im_block WHERE user_id = ?"
            " ORDER BY created DESC, blocked_id LIMIT ?",
            (me, LIST_LIMIT),
        )
        return [Pending(str(u), int(c)) for u, c in rows]
