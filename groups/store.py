"""The group store: groups, members and invitations, keys; :class:`SQLGroupStore` on SQLite
or MySQL, beside the timeline tables of the same database.

Rules kept here, whatever the caller:
- every change is one transaction that first locks the group conversation's row
  (``im_tl_conv``, the lock a chat's append takes), then reads what it decides on, asks
  :mod:`groups.rules`, and writes the member rows, the group row, the system messages and a
  new key together: a change and the messages around it are in one order, and a chat
  appended after a removal is refused (timeline/groupsql.py, timeline.store.post_refusal);
- ids are the server's: a group id is :data:`groups.model.GROUP_ID_HEX` random hex digits;
- reads are bounded: members are listed a page at a time, groups up to :data:`LIST_MAX`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

from common.crypto import new_pair_key
from common.db import Database, Row, Session, apply_migrations, require_schema
from groups import rules, schema
from groups.model import (
    DEFAULT_MAX_SIZE,
    GROUP_ID_HEX,
    Change,
    GroupKey,
    GroupRow,
    GroupView,
    Hook,
    MemberRow,
    MyGroup,
    Plan,
    Refusal,
    Refused,
    Role,
)
from hooks import events
from proto import im_pb2
from timeline import groupsql
from timeline.model import USER_ID, Span, group_conv_id
from timeline.store import SQLTimelineStore, now_ms

LIST_MAX = 1000  # groups per list, members per page
Decide = Callable[[rules.Snapshot], Plan]


class GroupStore(Protocol):
    """Groups and their members; see :mod:`groups.rules` for who may do what."""

    async def migrate(self) -> None: ...

    async def create(self, owner: str, name: str, invitees: Sequence[str]) -> Change:
        """A new group, ``owner`` its owner and first member, ``invitees`` invited (the
        owner's name among them is dropped). :class:`Refused` FULL past the size."""
        ...

    async def group(self, group_id: str) -> GroupRow | None: ...

    async def member(self, group_id: str, user_id: str) -> MemberRow | None: ...

    async def view(self, group_id: str, *, after: str = "", limit: int = LIST_MAX) -> GroupView:
        """The group with a page of members and invitations (user id order, after ``after``).
        Refused NOT_FOUND when there is no such group."""
        ...

    async def groups_of(self, user_id: str, limit: int = LIST_MAX) -> list[MyGroup]:
        """The groups ``user_id`` is in or invited to, newest change first."""
        ...

    async def put_member(self, group_id: str, actor: str, target: str) -> Change: ...

    async def delete_member(self, group_id: str, actor: str, target: str) -> Change: ...

    async def set_role(self, group_id: str, actor: str, target: str, role: Role) -> Change:
        """``role`` owner hands ownership over (the owner becomes an admin)."""
        ...

    async def mute(self, group_id: str, actor: str, target: str, until: int) -> Change: ...

    async def rename(self, group_id: str, actor: str, name: str) -> Change: ...

    async def dissolve(self, group_id: str, actor: str) -> Change: ...

    async def keys(self, group_id: str, user_id: str) -> list[GroupKey] | None:
        """The keys of the seqs ``user_id`` may read, oldest first; None for a user who never
        was a member (the same as no group)."""
        ...


def new_group_id() -> str:
    return secrets.token_hex(GROUP_ID_HEX // 2)


def conv_of(group_id: str) -> str:
    """The group's conversation; NOT_FOUND for a string that can be no group's id."""
    if not USER_ID.fullmatch(group_id):
        raise Refused(Refusal.NOT_FOUND)
    return group_conv_id(group_id)


def invitation_list(owner: str, invitees: Sequence[str], max_size: int) -> list[str]:
    """The invitees, once each, the owner left out, within the group's size."""
    out = sorted(set(invitees) - {owner})
    if 1 + len(out) > max_size:
        raise Refused(Refusal.FULL)
    return out


def created_hooks(owner: str) -> list[Hook]:
    return [Hook(events.GROUP_CREATED, owner, owner, "owner")]


def keys_for(keys: Sequence[GroupKey], spans: Sequence[Span]) -> list[GroupKey]:
    """The keys whose seqs (from_seq up to the next key's) overlap ``spans``."""
    ranged: list[GroupKey] = []
    for i, key in enumerate(keys):
        to_seq = keys[i + 1].from_seq - 1 if i + 1 < len(keys) else 0
        ranged.append(GroupKey(key.key_id, key.key, key.from_seq, to_seq))
    return [
        k
        for k in ranged
        if any(
            (k.to_seq == 0 or s.from_seq <= k.to_seq) and (s.to_seq == 0 or k.from_seq <= s.to_seq)
            for s in spans
        )
    ]


_UPSERT = {
    "sqlite": "ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role,"
    " state = excluded.state, muted_until = excluded.muted_until,"
    " invited_by = excluded.invited_by, changed = excluded.changed",
    "mysql": "ON DUPLICATE KEY UPDATE role = VALUES(role), state = VALUES(state),"
    " muted_until = VALUES(muted_until), invited_by = VALUES(invited_by),"
    " changed = VALUES(changed)",
}
_GROUP_COLS = "group_id, name, owner, created, dissolved, key_id"
_MEMBER_COLS = "user_id, role, state, muted_until, invited_by, changed"


def _group_row(r: Row) -> GroupRow:
    return GroupRow(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]))


def _member_row(r: Row) -> MemberRow:
    role, state = str(r[1]), str(r[2])
    assert role in ("owner", "admin", "member") and state in ("invited", "member")
    return MemberRow(str(r[0]), role, state, int(r[3]), str(r[4]), int(r[5]))  # type: ignore[arg-type]


class SQLGroupStore:
    """:class:`GroupStore` on a :class:`common.db.Database`, with ``timeline`` on the same one."""

    def __init__(
        self, db: Database, timeline: SQLTimelineStore, max_size: int = DEFAULT_MAX_SIZE
    ) -> None:
        self._db = db
        self._timeline = timeline
        self._steps = schema.migrations(db.dialect)
        self.max_size = max_size

    async def migrate(self) -> None:
        await apply_migrations(self._db, schema.COMPONENT, self._steps)

    async def check_schema(self) -> None:
        await require_schema(self._db, schema.COMPONENT, len(self._steps))

    # --- reads ----------------------------------------------------------------------------------

    async def group(self, group_id: str) -> GroupRow | None:
        row = await self._db.fetchone(
            f"SELECT {_GROUP_COLS} FROM im_group WHERE group_id = ?", (group_id,)
        )
        return None if row is None else _group_row(row)

    async def member(self, group_id: str, user_id: str) -> MemberRow | None:
        return await self._member(self._db, group_id, user_id)

    async def _member(
        self, db: Database | Session, group_id: str, user_id: str
    ) -> MemberRow | None:
        row = await db.fetchone(
            f"SELECT {_MEMBER_COLS} FROM im_group_member WHERE group_id = ? AND user_id = ?",
            (group_id, user_id),
        )
        return None if row is None else _member_row(row)

    async def view(self, group_id: str, *, after: str = "", limit: int = LIST_MAX) -> GroupView:
        group = await self.group(group_id)
        if group is None:
            raise Refused(Refusal.NOT_FOUND)
        rows = await self._db.fetchall(
            f"SELECT {_MEMBER_COLS} FROM im_group_member WHERE group_id = ? AND user_id > ?"
            " ORDER BY user_id LIMIT ?",
            (group_id, after, min(max(limit, 1), LIST_MAX)),
        )
        count = await self._db.fetchone(
            "SELECT COUNT(*) FROM im_group_member WHERE group_id = ?", (group_id,)
        )
        return GroupView(
            group, [_member_row(r) for r in rows], 0 if count is None else int(count[0])
        )

    async def groups_of(self, user_id: str, limit: int = LIST_MAX) -> list[MyGroup]:
        rows = await self._db.fetchall(
            "SELECT g.group_id, g.name, g.owner, g.created, g.dissolved, g.key_id, m.role,"
            " m.state FROM im_group_member m JOIN im_group g ON g.group_id = m.group_id"
            " WHERE m.user_id = ? ORDER BY m.changed DESC, m.group_id LIMIT ?",
            (user_id, min(max(limit, 1), LIST_MAX)),
        )
        out: list[MyGroup] = []
        for r in rows:
            mine = _member_row((r[0], r[6], r[7], 0, "", 0))
            out.append(MyGroup(_group_row(r), mine.role, mine.state))
        return out

    async def keys(self, group_id: str, user_id: str) -> list[GroupKey] | None:
        conv = conv_of(group_id)
        spans = await self._timeline.spans(conv, user_id)
        if not spans:
            return None
        rows = await self._db.fetchall(
            "SELECT key_id, group_key, from_seq FROM im_group_key WHERE group_id = ?"
            " ORDER BY key_id",
            (group_id,),
        )
        return keys_for([GroupKey(int(k), str(v), int(f)) for k, v, f in rows], spans)

    # --- changes --------------------------------------------------------------------------------

    async def create(self, owner: str, name: str, invitees: Sequence[str]) -> Change:
        invited = invitation_list(owner, invitees, self.max_size)
        group_id = new_group_id()
        conv = group_conv_id(group_id)
        dialect = self._db.dialect

        async def work(tx: Session) -> Change:
            now = now_ms()
            head = await groupsql.create(tx, conv, now, key_id=1)
            await tx.execute(
                f"INSERT INTO im_group ({_GROUP_COLS}) VALUES (?, ?, ?, ?, 0, 1)",
                (group_id, name, owner, now),
            )
            members = [MemberRow(owner, "owner", "member")]
            members += [MemberRow(u, "member", "invited", invited_by=owner) for u in invited]
            await self._upsert(tx, group_id, members, now)
            await tx.execute(
                "INSERT INTO im_group_key (group_id, key_id, group_key, from_seq)"
                " VALUES (?, 1, ?, 1)",
                (group_id, new_pair_key()),
            )
            created = im_pb2.SystemBody(event=im_pb2.SystemBody.CREATED, actor=owner, text=name)
            entries = await groupsql.append_system(tx, dialect, conv, head, [created], now)
            return Change(group_id, "created", [e.seq for e in entries], created_hooks(owner))

        return await self._db.transaction(work)

    async def put_member(self, group_id: str, actor: str, target: str) -> Change:
        return await self._change(
            group_id, actor, target, lambda s: rules.plan_put(s, actor, target)
        )

    async def delete_member(self, group_id: str, actor: str, target: str) -> Change:
        return await self._change(
            group_id, actor, target, lambda s: rules.plan_delete(s, actor, target)
        )

    async def set_role(self, group_id: str, actor: str, target: str, role: Role) -> Change:
        return await self._change(
            group_id, actor, target, lambda s: rules.plan_role(s, actor, target, role)
        )

    async def mute(self, group_id: str, actor: str, target: str, until: int) -> Change:
        return await self._change(
            group_id, actor, target, lambda s: rules.plan_mute(s, actor, target, until)
        )

    async def rename(self, group_id: str, actor: str, name: str) -> Change:
        return await self._change(group_id, actor, "", lambda s: rules.plan_rename(s, actor, name))

    async def dissolve(self, group_id: str, actor: str) -> Change:
        return await self._change(group_id, actor, "", lambda s: rules.plan_dissolve(s, actor))

    async def _change(self, group_id: str, actor: str, target: str, decide: Decide) -> Change:
        conv = conv_of(group_id)
        dialect = self._db.dialect

        async def work(tx: Session) -> Change:
            head = await groupsql.lock_head(tx, dialect, conv)  # first: the append's lock
            row = await tx.fetchone(
                f"SELECT {_GROUP_COLS} FROM im_group WHERE group_id = ?", (group_id,)
            )
            if head is None or row is None:
                raise Refused(Refusal.NOT_FOUND)
            group = _group_row(row)
            me = await self._member(tx, group_id, actor)
            other = await self._member(tx, group_id, target) if target else None
            count = await tx.fetchone(
                "SELECT COUNT(*) FROM im_group_member WHERE group_id = ?", (group_id,)
            )
            size = 0 if count is None else int(count[0])
            plan = decide(rules.Snapshot(group, me, other, size, self.max_size))
            now = now_ms()
            await self._upsert(tx, group_id, plan.upserts, now)
            for user in plan.deletes:
                await tx.execute(
                    "DELETE FROM im_group_member WHERE group_id = ? AND user_id = ?",
                    (group_id, user),
                )
            if plan.name is not None or plan.owner is not None or plan.dissolve or plan.rotate:
                await tx.execute(
                    "UPDATE im_group SET name = ?, owner = ?, dissolved = ?, key_id = ?"
                    " WHERE group_id = ?",
                    (
                        plan.name if plan.name is not None else group.name,
                        plan.owner or group.owner,
                        now if plan.dissolve else group.dissolved,
                        group.key_id + 1 if plan.rotate else group.key_id,
                        group_id,
                    ),
                )
            entries = await groupsql.append_system(tx, dialect, conv, head, plan.events, now)
            if plan.rotate:  # sealing from the KEY_ROTATED event on, the plan's last
                await tx.execute(
                    "INSERT INTO im_group_key (group_id, key_id, group_key, from_seq)"
                    " VALUES (?, ?, ?, ?)",
                    (group_id, group.key_id + 1, new_pair_key(), entries[-1].seq),
                )
            return Change(group_id, plan.outcome, [e.seq for e in entries], plan.hooks)

        return await self._db.transaction(work)

    async def _upsert(
        self, tx: Session, group_id: str, members: Sequence[MemberRow], now: int
    ) -> None:
        if not members:
            return
        await tx.executemany(
            f"INSERT INTO im_group_member (group_id, {_MEMBER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            + _UPSERT[self._db.dialect],
            [
                (group_id, m.user_id, m.role, m.state, m.muted_until, m.invited_by, now)
                for m in members
            ],
        )
