"""Who may do what in a group: the rules as pure functions, every (actor, target) pair of
every action, without I/O."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from groups import rules
from groups.model import GroupRow, MemberRow, Refusal, Refused, Role
from groups.rules import Snapshot
from proto import im_pb2

GROUP = GroupRow("g1", "team", "olivia", 1, 0, 3)
ROLES: tuple[Role, ...] = ("owner", "admin", "member")
NAMES = {"owner": "olivia", "admin": "adam", "member": "mia"}
Ev = im_pb2.SystemBody


def m(role: Role, name: str = "", state: str = "member") -> MemberRow:
    return MemberRow(name or NAMES[role], role, state)  # type: ignore[arg-type]


def snap(actor: MemberRow | None, target: MemberRow | None = None, **kw: object) -> Snapshot:
    return Snapshot(GROUP, actor, target, **kw)  # type: ignore[arg-type]


def refusal(call: object) -> Refusal | None:
    try:
        call()  # type: ignore[operator]
    except Refused as exc:
        return exc.why
    return None


# the table the issue gives, written out once more by hand: (action, actor, target) allowed
EXPECTED = {
    ("remove", "owner", "admin"),
    ("remove", "owner", "member"),
    ("remove", "admin", "member"),
    ("mute", "owner", "admin"),
    ("mute", "owner", "member"),
    ("mute", "admin", "member"),
    ("set_role", "owner", "admin"),
    ("set_role", "owner", "member"),
    ("transfer", "owner", "admin"),
    ("transfer", "owner", "member"),
}


@pytest.mark.parametrize("action", ["remove", "mute", "set_role", "transfer"])
def test_targeted_actions_table(action: rules.Action) -> None:
    for actor, target in itertools.product(ROLES, ROLES):
        assert rules.may(action, actor, target) == ((action, actor, target) in EXPECTED), (
            action,
            actor,
            target,
        )


def test_group_actions_table() -> None:
    assert [r for r in ROLES if rules.may("invite", r)] == ["owner", "admin"]
    assert [r for r in ROLES if rules.may("rename", r)] == ["owner", "admin"]
    assert [r for r in ROLES if rules.may("dissolve", r)] == ["owner"]


@pytest.mark.parametrize(("actor", "target"), list(itertools.product(ROLES, ROLES)))
def test_remove_every_pair(actor: Role, target: Role) -> None:
    a, t = m(actor), m(target, name="x-" + target)
    why = refusal(lambda: rules.plan_delete(snap(a, t), a.user_id, t.user_id))
    if target == "owner":
        expected = Refusal.FORBIDDEN if actor == "member" else Refusal.OWNER_STAYS
    elif ("remove", actor, target) in EXPECTED:
        expected = None
    else:
        expected = Refusal.FORBIDDEN
    assert why is expected


def test_remove_writes_removed_then_a_new_key() -> None:
    plan = rules.plan_delete(snap(m("admin"), m("member")), "adam", "mia")
    assert plan.deletes == ["mia"] and plan.rotate
    assert [(e.event, e.target) for e in plan.events] == [(Ev.REMOVED, "mia"), (Ev.KEY_ROTATED, "")]
    assert plan.events[1].key_id == GROUP.key_id + 1


def test_leave_decline_and_the_owner_stays() -> None:
    plan = rules.plan_delete(snap(m("member")), "mia", "mia")
    assert plan.outcome == "left" and [e.event for e in plan.events] == [Ev.LEFT, Ev.KEY_ROTATED]
    invited = m("member", state="invited")
    assert rules.plan_delete(snap(invited), "mia", "mia").outcome == "declined"
    assert refusal(lambda: rules.plan_delete(snap(m("owner")), "olivia", "olivia")) is (
        Refusal.OWNER_STAYS
    )


def _outsider_calls(actor: MemberRow | None) -> list[Callable[[], object]]:
    alone, with_target = snap(actor), snap(actor, m("member"))
    return [
        lambda: rules.plan_put(alone, "ivy", "zed"),
        lambda: rules.plan_delete(with_target, "ivy", "mia"),
        lambda: rules.plan_mute(with_target, "ivy", "mia", 5),
        lambda: rules.plan_role(with_target, "ivy", "mia", "admin"),
        lambda: rules.plan_rename(alone, "ivy", "x"),
        lambda: rules.plan_dissolve(alone, "ivy"),
    ]


def test_outsiders_learn_nothing() -> None:
    """A stranger, an invitee and a missing group all get NOT_FOUND for any change but the
    invitee's own accept or decline."""
    invitee = m("member", name="ivy", state="invited")
    for actor in (None, invitee):
        calls = _outsider_calls(actor)
        assert [refusal(c) for c in calls] == [Refusal.NOT_FOUND] * len(calls)
    gone = Snapshot(None, m("owner"), None)
    assert refusal(lambda: rules.plan_put(gone, "olivia", "olivia")) is Refusal.NOT_FOUND


def test_invitation_then_acceptance() -> None:
    plan = rules.plan_put(snap(m("admin")), "adam", "ivy")
    assert plan.outcome == "invited" and plan.events == []
    assert plan.upserts[0].state == "invited" and plan.upserts[0].invited_by == "adam"
    assert refusal(lambda: rules.plan_put(snap(m("member")), "mia", "ivy")) is Refusal.FORBIDDEN
    invitee = MemberRow("ivy", "member", "invited", invited_by="adam")
    joined = rules.plan_put(snap(invitee), "ivy", "ivy")
    assert joined.outcome == "member" and joined.upserts[0].state == "member"
    assert [(e.event, e.actor, e.target) for e in joined.events] == [(Ev.JOINED, "adam", "ivy")]
    assert rules.plan_put(snap(m("member")), "mia", "mia").events == []  # already in: no event


def test_size_limit_counts_invitations() -> None:
    full = snap(m("owner"), size=10, max_size=10)
    assert refusal(lambda: rules.plan_put(full, "olivia", "new")) is Refusal.FULL
    assert rules.plan_put(snap(m("owner"), size=9, max_size=10), "olivia", "new").outcome == (
        "invited"
    )


def test_dissolved_group_takes_no_change() -> None:
    dead = Snapshot(GroupRow("g1", "t", "olivia", 1, 99, 1), m("owner"), m("member"))
    for call in (
        lambda: rules.plan_put(dead, "olivia", "new"),
        lambda: rules.plan_put(dead, "mia", "mia"),
        lambda: rules.plan_delete(dead, "olivia", "mia"),
        lambda: rules.plan_delete(dead, "mia", "mia"),
        lambda: rules.plan_rename(dead, "olivia", "x"),
        lambda: rules.plan_dissolve(dead, "olivia"),
    ):
        assert refusal(call) is Refusal.DISSOLVED


def test_roles_and_transfer() -> None:
    plan = rules.plan_role(snap(m("owner"), m("member")), "olivia", "mia", "admin")
    assert plan.upserts[0].role == "admin" and plan.events[0].text == "admin"
    admin_sets = snap(m("admin"), m("member"))
    assert refusal(lambda: rules.plan_role(admin_sets, "adam", "mia", "admin")) is Refusal.FORBIDDEN
    assert refusal(lambda: rules.plan_role(snap(m("owner")), "olivia", "olivia", "admin")) is (
        Refusal.SELF
    )
    invitee = m("member", state="invited")
    assert refusal(
        lambda: rules.plan_role(snap(m("owner"), invitee), "olivia", "mia", "admin")
    ) is (Refusal.NOT_JOINED)
    t = rules.plan_role(snap(m("owner"), m("admin")), "olivia", "adam", "owner")
    assert t.owner == "adam" and {(u.user_id, u.role) for u in t.upserts} == {
        ("adam", "owner"),
        ("olivia", "admin"),
    }


def test_mute_and_rename() -> None:
    plan = rules.plan_mute(snap(m("admin"), m("member")), "adam", "mia", 123)
    assert plan.upserts[0].muted_until == 123 and plan.events[0].until == 123
    assert refusal(lambda: rules.plan_mute(snap(m("admin"), m("owner")), "adam", "olivia", 1)) is (
        Refusal.FORBIDDEN
    )
    assert rules.plan_rename(snap(m("admin")), "adam", "new").name == "new"
    assert rules.plan_rename(snap(m("admin")), "adam", GROUP.name).events == []
    assert refusal(lambda: rules.plan_rename(snap(m("member")), "mia", "x")) is Refusal.FORBIDDEN
    assert refusal(lambda: rules.plan_dissolve(snap(m("admin")), "adam")) is Refusal.FORBIDDEN
