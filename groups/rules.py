"""Who may do what in a group, and what each change writes: pure functions, no I/O.

The stores read a :class:`Snapshot` inside their transaction (after taking the group
conversation's row lock, so nothing changes under them), ask a ``plan_*`` function here, and
write the :class:`groups.model.Plan` it returns, or pass its :class:`Refused` on. Rules:

- the table :data:`MAY` says which role may act on which: admins invite, remove members, mute
  members and rename; the owner also removes and mutes admins, sets roles, hands ownership
  over and dissolves. Nobody removes the owner, and the owner leaves only after handing over;
- someone who is not a joined member of the group (a stranger, an invitee who has not
  accepted, a former member) learns nothing: every change they ask for is ``NOT_FOUND``,
  exactly as for a group that does not exist; only an invitee may accept or decline;
- a dissolved group takes no membership change at all (``DISSOLVED``);
- membership is by consent: an admin's invitation waits for the invitee's own PUT, and only
  then is there a JOINED event and a span; invitations and members together stay within the
  group's maximum size;
- a member leaving or removed gets a new group key (a KEY_ROTATED event right after theirs):
  what is sealed after they left does not open with a key they hold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from groups.model import GroupRow, Hook, MemberRow, Plan, Refusal, Refused, Role
from hooks import events
from proto import im_pb2

Action = Literal["invite", "remove", "set_role", "transfer", "mute", "rename", "dissolve"]
_ALL: frozenset[Role] = frozenset({"owner", "admin", "member"})
_BELOW_OWNER: frozenset[Role] = frozenset({"admin", "member"})

# action -> actor's role -> the roles of the members it may act on (for actions on the group
# itself, rename and dissolve, any non-empty set means "may")
MAY: dict[Action, dict[Role, frozenset[Role]]] = {
    "invite": {"owner": _ALL, "admin": _ALL},
    "remove": {"owner": _BELOW_OWNER, "admin": frozenset({"member"})},
    "set_role": {"owner": _BELOW_OWNER},
    "transfer": {"owner": _BELOW_OWNER},
    "mute": {"owner": _BELOW_OWNER, "admin": frozenset({"member"})},
    "rename": {"owner": _ALL, "admin": _ALL},
    "dissolve": {"owner": _ALL},
}

Event = im_pb2.SystemBody


def may(action: Action, actor: Role, target: Role | None = None) -> bool:
    allowed = MAY[action].get(actor, frozenset())
    return bool(allowed) if target is None else target in allowed


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a change is decided on, read under the group's lock."""

    group: GroupRow | None
    actor: MemberRow | None
    target: MemberRow | None
    size: int = 0  # members plus invitations
    max_size: int = 10_000


def _joined(m: MemberRow | None) -> bool:
    return m is not None and m.state == "member"


def _acting(snap: Snapshot) -> tuple[GroupRow, MemberRow]:
    """The group and the actor, for a change by a joined member of a living group."""
    if snap.group is None or snap.actor is None or not _joined(snap.actor):
        raise Refused(Refusal.NOT_FOUND)
    if snap.group.dissolved:
        raise Refused(Refusal.DISSOLVED)
    return snap.group, snap.actor


def _rotation(group: GroupRow, actor: str) -> Event:
    return Event(event=Event.KEY_ROTATED, actor=actor, key_id=group.key_id + 1)


def plan_put(snap: Snapshot, actor_id: str, target_id: str) -> Plan:
    """PUT /groups/{id}/members/{target}: the invitee's own accepts, an admin's invites."""
    if actor_id == target_id:
        if snap.group is None or snap.actor is None:
            raise Refused(Refusal.NOT_FOUND)
        if snap.group.dissolved:
            raise Refused(Refusal.DISSOLVED)
        me = snap.actor
        if me.state == "member":
            return Plan("member")
        joined = dataclasses.replace(me, state="member", role="member")
        return Plan(
            "member",
            upserts=[joined],
            events=[Event(event=Event.JOINED, actor=me.invited_by, target=actor_id)],
            hooks=[Hook(events.GROUP_MEMBER_ADDED, actor_id, me.invited_by or actor_id)],
        )
    _, actor = _acting(snap)
    if not may("invite", actor.role):
        raise Refused(Refusal.FORBIDDEN)
    if snap.target is not None:
        return Plan(snap.target.state)
    if snap.size >= snap.max_size:
        raise Refused(Refusal.FULL)
    return Plan("invited", upserts=[MemberRow(target_id, "member", "invited", invited_by=actor_id)])


def plan_delete(snap: Snapshot, actor_id: str, target_id: str) -> Plan:
    """DELETE /groups/{id}/members/{target}: leave or decline (oneself); remove, or withdraw
    an invitation (an admin)."""
    if actor_id == target_id:
        if snap.group is None or snap.actor is None:
            raise Refused(Refusal.NOT_FOUND)
        if snap.group.dissolved:
            raise Refused(Refusal.DISSOLVED)
        if snap.actor.state == "invited":
            return Plan("declined", deletes=[actor_id])
        if snap.actor.role == "owner":
            raise Refused(Refusal.OWNER_STAYS)
        left = Event(event=Event.LEFT, actor=actor_id, target=actor_id)
        return Plan(
            "left",
            deletes=[actor_id],
            events=[left, _rotation(snap.group, actor_id)],
            rotate=True,
            hooks=[Hook(events.GROUP_MEMBER_REMOVED, actor_id, actor_id, snap.actor.role)],
        )
    group, actor = _acting(snap)
    if not may("remove", actor.role, "member"):
        raise Refused(Refusal.FORBIDDEN)
    target = snap.target
    if target is None:
        raise Refused(Refusal.NO_MEMBER)
    if target.state == "invited":
        return Plan("withdrawn", deletes=[target_id])
    if target.role == "owner":
        raise Refused(Refusal.OWNER_STAYS)
    if not may("remove", actor.role, target.role):
        raise Refused(Refusal.FORBIDDEN)
    return Plan(
        "removed",
        deletes=[target_id],
        events=[
            Event(event=Event.REMOVED, actor=actor_id, target=target_id),
            _rotation(group, actor_id),
        ],
        rotate=True,
        hooks=[Hook(events.GROUP_MEMBER_REMOVED, target_id, actor_id, target.role)],
    )


def _joined_target(snap: Snapshot, actor_id: str, target_id: str, action: Action) -> MemberRow:
    _, actor = _acting(snap)
    if not may(action, actor.role):
        raise Refused(Refusal.FORBIDDEN)
    if actor_id == target_id:
        raise Refused(Refusal.SELF)
    target = snap.target
    if target is None:
        raise Refused(Refusal.NO_MEMBER)
    if target.state != "member":
        raise Refused(Refusal.NOT_JOINED)
    if not may(action, actor.role, target.role):
        raise Refused(Refusal.FORBIDDEN)
    return target


def plan_role(snap: Snapshot, actor_id: str, target_id: str, role: Role) -> Plan:
    """The owner makes a member an admin or an admin a member (ownership: plan_transfer)."""
    if role == "owner":
        return plan_transfer(snap, actor_id, target_id)
    target = _joined_target(snap, actor_id, target_id, "set_role")
    if target.role == role:
        return Plan("role")
    return Plan(
        "role",
        upserts=[dataclasses.replace(target, role=role)],
        events=[Event(event=Event.ROLE, actor=actor_id, target=target_id, text=role)],
        hooks=[Hook(events.GROUP_MEMBER_ROLE_CHANGED, target_id, actor_id, role)],
    )


def plan_transfer(snap: Snapshot, actor_id: str, target_id: str) -> Plan:
    """The owner hands ownership to a joined member and stays on as an admin."""
    target = _joined_target(snap, actor_id, target_id, "transfer")
    assert snap.actor is not None  # _joined_target checked
    return Plan(
        "owner",
        upserts=[
            dataclasses.replace(target, role="owner", muted_until=0),
            dataclasses.replace(snap.actor, role="admin"),
        ],
        events=[
            Event(event=Event.ROLE, actor=actor_id, target=target_id, text="owner"),
            Event(event=Event.ROLE, actor=actor_id, target=actor_id, text="admin"),
            # an owner can't be muted, and nobody could lift it later: the mute ends here, in
            # the timeline too (the span's mute is what posting checks)
            *(
                [Event(event=Event.MUTED, actor=actor_id, target=target_id, until=0)]
                if target.muted_until
                else []
            ),
        ],
        owner=target_id,
        hooks=[
            Hook(events.GROUP_MEMBER_ROLE_CHANGED, target_id, actor_id, "owner"),
            Hook(events.GROUP_MEMBER_ROLE_CHANGED, actor_id, actor_id, "admin"),
        ],
    )


def plan_mute(snap: Snapshot, actor_id: str, target_id: str, until: int) -> Plan:
    """Mute until ``until`` (ms; 0 lifts it). Only its own posts are held back."""
    target = _joined_target(snap, actor_id, target_id, "mute")
    return Plan(
        "muted",
        upserts=[dataclasses.replace(target, muted_until=until)],
        events=[Event(event=Event.MUTED, actor=actor_id, target=target_id, until=until)],
    )


def plan_rename(snap: Snapshot, actor_id: str, name: str) -> Plan:
    group, actor = _acting(snap)
    if not may("rename", actor.role):
        raise Refused(Refusal.FORBIDDEN)
    if name == group.name:
        return Plan("renamed")
    return Plan(
        "renamed", events=[Event(event=Event.RENAMED, actor=actor_id, text=name)], name=name
    )


def plan_dissolve(snap: Snapshot, actor_id: str) -> Plan:
    """The owner closes the group for good: no posts, no changes; its history stays."""
    _, actor = _acting(snap)
    if not may("dissolve", actor.role):
        raise Refused(Refusal.FORBIDDEN)
    return Plan("dissolved", events=[Event(event=Event.DISSOLVED, actor=actor_id)], dissolve=True)
