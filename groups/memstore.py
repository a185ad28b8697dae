"""The group store in memory, over :class:`timeline.memstore.MemoryTimelineStore`: the same
rules as the SQL store. A change runs with no ``await`` between what it reads and what it
writes, the loop being its lock, as the conversation row's lock is the SQL store's."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.crypto import new_pair_key
from groups import rules
from groups.model import (
    DEFAULT_MAX_SIZE,
    Change,
    GroupKey,
    GroupRow,
    GroupView,
    MemberRow,
    MyGroup,
    Refusal,
    Refused,
    Role,
)
from groups.store import (
    LIST_MAX,
    Decide,
    conv_of,
    created_hooks,
    invitation_list,
    keys_for,
    new_group_id,
)
from proto import im_pb2
from timeline.memstore import MemoryTimelineStore
from timeline.store import now_ms


@dataclass
class _Group:
    row: GroupRow
    members: dict[str, MemberRow] = field(default_factory=dict)
    keys: list[GroupKey] = field(default_factory=list)


class MemoryGroupStore:
    """:class:`groups.store.GroupStore` in dictionaries."""

    def __init__(self, timeline: MemoryTimelineStore, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._timeline = timeline
        self._groups: dict[str, _Group] = {}
        self.max_size = max_size

    async def migrate(self) -> None:
        return None

    async def group(self, group_id: str) -> GroupRow | None:
        g = self._groups.get(group_id)
        return None if g is None else g.row

    async def member(self, group_id: str, user_id: str) -> MemberRow | None:
        g = self._groups.get(group_id)
        return None if g is None else g.members.get(user_id)

    async def view(self, group_id: str, *, after: str = "", limit: int = LIST_MAX) -> GroupView:
        g = self._groups.get(group_id)
        if g is None:
            raise Refused(Refusal.NOT_FOUND)
        page = sorted((m for u, m in g.members.items() if u > after), key=lambda m: m.user_id)
        return GroupView(g.row, page[: min(max(limit, 1), LIST_MAX)], len(g.members))

    async def groups_of(self, user_id: str, limit: int = LIST_MAX) -> list[MyGroup]:
        mine = [(g.members[user_id], g.row) for g in self._groups.values() if user_id in g.members]
        mine.sort(key=lambda p: (-p[0].changed, p[1].group_id))
        return [MyGroup(row, m.role, m.state) for m, row in mine[: min(max(limit, 1), LIST_MAX)]]

    async def keys(self, group_id: str, user_id: str) -> list[GroupKey] | None:
        spans = await self._timeline.spans(conv_of(group_id), user_id)
        g = self._groups.get(group_id)
        if not spans or g is None:
            return None
        return keys_for(g.keys, spans)

    async def create(self, owner: str, name: str, invitees: Sequence[str]) -> Change:
        invited = invitation_list(owner, invitees, self.max_size)
        group_id = new_group_id()
        conv = conv_of(group_id)
        now = now_ms()
        self._timeline.create_group(conv, key_id=1)
        g = _Group(GroupRow(group_id, name, owner, now, 0, 1))
        g.members[owner] = MemberRow(owner, "owner", "member", changed=now)
        for user in invited:
            g.members[user] = MemberRow(user, "member", "invited", invited_by=owner, changed=now)
        g.keys.append(GroupKey(1, new_pair_key(), 1))
        self._groups[group_id] = g
        created = im_pb2.SystemBody(event=im_pb2.SystemBody.CREATED, actor=owner, text=name)
        entries = self._timeline.append_system(conv, [created], now)
        return Change(group_id, "created", [e.seq for e in entries], created_hooks(owner))

    async def put_member(self, group_id: str, actor: str, target: str) -> Change:
        return self._change(group_id, actor, target, lambda s: rules.plan_put(s, actor, target))

    async def delete_member(self, group_id: str, actor: str, target: str) -> Change:
        return self._change(group_id, actor, target, lambda s: rules.plan_delete(s, actor, target))

    async def set_role(self, group_id: str, actor: str, target: str, role: Role) -> Change:
        return self._change(
            group_id, actor, target, lambda s: rules.plan_role(s, actor, target, role)
        )

    async def mute(self, group_id: str, actor: str, target: str, until: int) -> Change:
        return self._change(
            group_id, actor, target, lambda s: rules.plan_mute(s, actor, target, until)
        )

    async def rename(self, group_id: str, actor: str, name: str) -> Change:
        return self._change(group_id, actor, "", lambda s: rules.plan_rename(s, actor, name))

    async def dissolve(self, group_id: str, actor: str) -> Change:
        return self._change(group_id, actor, "", lambda s: rules.plan_dissolve(s, actor))

    def _change(self, group_id: str, actor: str, target: str, decide: Decide) -> Change:
        conv = conv_of(group_id)
        g = self._groups.get(group_id)
        if g is None or self._timeline.group_head(conv) is None:
            raise Refused(Refusal.NOT_FOUND)
        snap = rules.Snapshot(
            g.row,
            g.members.get(actor),
            g.members.get(target) if target else None,
            len(g.members),
            self.max_size,
        )
        plan = decide(snap)
        now = now_ms()
        for m in plan.upserts:
            g.members[m.user_id] = dataclasses.replace(m, changed=now)
        for user in plan.deletes:
            g.members.pop(user, None)
        row = g.row
        g.row = dataclasses.replace(
            row,
            name=plan.name if plan.name is not None else row.name,
            owner=plan.owner or row.owner,
            dissolved=now if plan.dissolve else row.dissolved,
            key_id=row.key_id + 1 if plan.rotate else row.key_id,
        )
        entries = self._timeline.append_system(conv, plan.events, now)
        if plan.rotate:
            g.keys.append(GroupKey(row.key_id + 1, new_pair_key(), entries[-1].seq))
        return Change(group_id, plan.outcome, [e.seq for e in entries], plan.hooks)
