"""``/groups``: groups with roles, invitations by consent, keys and read-by (docs/groups.md).

- ``POST /groups`` {name, members}: a new group, the caller its owner; the members named are
  invited (201);
- ``GET /groups``: the caller's groups and pending invitations;
- ``GET /groups/{id}``: the group and a page of its members (``after``, ``limit``), for its
  members only;
- ``PUT /groups/{id}/members/{user}``: an owner's or admin's invites (202, ``invited``); the
  invitee's own accepts (200, ``member``); ``DELETE`` the same path: yourself leaves (or
  declines), an admin removes a member (the owner an admin too) or withdraws an invitation;
- ``PUT /groups/{id}/members/{user}/role`` {role}: the owner makes an admin or a member;
  ``PUT /groups/{id}/owner`` {user_id}: the owner hands ownership over (and stays an admin);
- ``PUT /groups/{id}/members/{user}/mute`` {until}: an admin mutes a member until ``until``
  (ms since the epoch; 0 lifts it);
- ``PUT /groups/{id}/name`` {name}: an admin renames; ``DELETE /groups/{id}``: the owner
  dissolves (no posts or changes after; the history stays readable to its members);
- ``GET /groups/{id}/keys``: the group keys of the seqs the caller may read;
- ``GET /groups/{id}/messages/{seq}/receipts``: read-by and delivered-to, from cursors.

Anyone who is not a joined member (a stranger, an invitee who has not accepted, a former
member asking for the member list) gets the same 404 as for a group that does not exist: it
says nothing about who is in it. Keys and receipts go to whoever may read the seqs they are
about, former members included. Every change a role does not allow is 403; one the group's
state does not allow (dissolved, full, the owner leaving) 409. Ill-formed input is 400.

No ``from __future__ import annotations``: FastAPI reads the endpoint annotations.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from common.errors import BackendError
from common.tokens import Claims
from groups.model import NAME_MAX, Change, GroupRow, MemberRow, Refusal, Refused
from groups.store import LIST_MAX, GroupStore, conv_of
from hooks import events
from rest_web.params import UserId, UserPath
from rest_web.timeline_routes import BadRequestRoute, ProblemOut
from timeline.groupsql import RECEIPT_LIST_MAX
from timeline.store import TimelineStore
from user_status.groupnotice import GroupNoticeBus, Notice

log = logging.getLogger(__name__)

Emit = Callable[[str, events.Data], None]
CREATE_MEMBERS_MAX = 500  # invitations in one POST /groups (the body limit is 64 KiB); more by PUT
_SEQ_MAX = (1 << 63) - 1
# a mute's end, ms: JSON readers (JavaScript's, and schema tools') hold integers exactly up to
# 2**53 - 1, some 285 000 years from the epoch: far enough for "muted for good"
_UNTIL_MAX = (1 << 53) - 1
GroupPath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the group's id, from POST /groups")
]
GroupName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=NAME_MAX,
        pattern=r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
    ),
]


class CreateIn(BaseModel):
    name: GroupName
    members: Annotated[list[UserId], Field(max_length=CREATE_MEMBERS_MAX)] = []


class MemberOut(BaseModel):
    user_id: str
    role: Literal["owner", "admin", "member"]
    state: Literal["invited", "member"] = Field(description="invited: has not accepted yet")
    muted_until: int = Field(description="ms since the epoch; 0 or past: not muted")
    invited_by: str


class GroupOut(BaseModel):
    group_id: str
    conv_id: str = Field(description="its conversation: g:<group id>")
    name: str
    owner: str
    created: int = Field(description="ms since the epoch")
    dissolved: int = Field(description="ms since the epoch; 0 while the group lives")
    key_id: int = Field(description="the key to seal new messages with (GET .../keys)")
    size: int = Field(description="members plus pending invitations")
    members: list[MemberOut] = Field(description="a page, by user id (after=, limit=)")


class MyGroupOut(BaseModel):
    group_id: str
    name: str
    role: Literal["owner", "admin", "member"]
    state: Literal["invited", "member"]
    dissolved: int


class MembershipOut(BaseModel):
    group_id: str
    user_id: str
    state: str = Field(description="member, invited, or what the change did")


class RoleIn(BaseModel):
    role: Literal["admin", "member"]


class OwnerIn(BaseModel):
    user_id: UserId


class MuteIn(BaseModel):
    until: Annotated[int, Field(ge=0, le=_UNTIL_MAX, description="ms since the epoch; 0 lifts")]


class NameIn(BaseModel):
    name: GroupName


class KeyOut(BaseModel):
    key_id: int
    key: str = Field(description="AES-256-GCM key, base64url (43 chars)")
    from_seq: int = Field(description="the first seq sealed with it")
    to_seq: int = Field(description="the last (0: the current key)")


class ReceiptsOut(BaseModel):
    seq: int
    members: int = Field(description="members at that seq (their spans cover it), sender aside")
    read: int
    delivered: int
    read_by: list[str] = Field(description=f"at most {RECEIPT_LIST_MAX}, by user id")
    delivered_to: list[str] = Field(description=f"at most {RECEIPT_LIST_MAX}, by user id")


_STATUS = {
    Refusal.NOT_FOUND: status.HTTP_404_NOT_FOUND,
    Refusal.NO_MEMBER: status.HTTP_404_NOT_FOUND,
    Refusal.FORBIDDEN: status.HTTP_403_FORBIDDEN,
    Refusal.DISSOLVED: status.HTTP_409_CONFLICT,
    Refusal.FULL: status.HTTP_409_CONFLICT,
    Refusal.OWNER_STAYS: status.HTTP_409_CONFLICT,
    Refusal.SELF: status.HTTP_409_CONFLICT,
    Refusal.NOT_JOINED: status.HTTP_409_CONFLICT,
}


def member_out(m: MemberRow) -> MemberOut:
    return MemberOut(
        user_id=m.user_id,
        role=m.role,
        state=m.state,
        muted_until=m.muted_until,
        invited_by=m.invited_by,
    )


def group_out(g: GroupRow, members: list[MemberRow], size: int) -> GroupOut:
    return GroupOut(
        group_id=g.group_id,
        conv_id=f"g:{g.group_id}",
        name=g.name,
        owner=g.owner,
        created=g.created,
        dissolved=g.dissolved,
        key_id=g.key_id,
        size=size,
        members=[member_out(m) for m in members],
    )


def add_routes(
    app: FastAPI,
    caller: Callable[..., Awaitable[Claims]],
    store: GroupStore | None,
    timeline: TimelineStore | None,
    emit: Emit,
) -> None:
    Caller = Annotated[Claims, Depends(caller)]
    router = APIRouter(route_class=BadRequestRoute, tags=["groups"])
    common: dict[int | str, dict[str, Any]] = {
        400: {"model": ProblemOut, "description": "a parameter or field is malformed"},
        401: {"model": ProblemOut, "description": "missing, bad, expired or revoked token"},
        404: {"model": ProblemOut, "description": "no such group of yours (or member)"},
        503: {"model": ProblemOut, "description": "storage unavailable"},
    }
    changes: dict[int | str, dict[str, Any]] = {
        **common,
        403: {"model": ProblemOut, "description": "your role does not allow it"},
        409: {"model": ProblemOut, "description": "dissolved, full, or the owner leaving"},
    }

    def groups() -> GroupStore:
        if store is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "groups unavailable")
        return store

    def timelines() -> TimelineStore:
        if timeline is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "history unavailable")
        return timeline

    def refused(exc: Refused) -> HTTPException:
        return HTTPException(_STATUS[exc.why], exc.why.value)

    def announce(change: Change) -> None:
        for h in change.hooks:
            emit(h.event, events.group_member(change.group_id, h.user_id, h.by, h.role))

    async def run(work: Awaitable[Change]) -> Change:
        try:
            change = await work
        except Refused as exc:
            raise refused(exc) from None
        announce(change)
        await notify(change)
        return change

    async def notify(change: Change) -> None:
        """Nudge the connectors: members' online devices list the group's new head now. A
        nudge lost is not a change lost (committed already; devices list again within a
        minute), so a bus that fails is logged, not the caller's error."""
        bus: GroupNoticeBus | None = getattr(app.state, "group_notices", None)
        if bus is None or not change.seqs:
            return
        try:
            await bus.publish(Notice(f"g:{change.group_id}", min(change.seqs)))
        except BackendError as exc:
            log.warning("group notice of %s not published: %s", change.group_id, exc)

    async def visible_member(group_id: str, user_id: str) -> MemberRow:
        me = await groups().member(group_id, user_id)
        if me is None or me.state != "member":
            raise HTTPException(status.HTTP_404_NOT_FOUND, Refusal.NOT_FOUND.value)
        return me

    @router.post("/groups", status_code=status.HTTP_201_CREATED, responses=changes)
    async def create_group(me: Caller, body: CreateIn) -> GroupOut:
        """Create a group: you are its owner and first member; ``members`` are invited and
        join when they accept (their own PUT)."""
        change = await run(groups().create(me.user_id, body.name, body.members))
        view = await groups().view(change.group_id, limit=LIST_MAX)
        return group_out(view.group, view.members, view.size)

    @router.get("/groups", responses=common)
    async def list_groups(me: Caller) -> list[MyGroupOut]:
        """Your groups and the invitations waiting for you, the most recently changed first."""
        return [
            MyGroupOut(
                group_id=g.group.group_id,
                name=g.group.name,
                role=g.role,
                state=g.state,
                dissolved=g.group.dissolved,
            )
            for g in await groups().groups_of(me.user_id)
        ]

    @router.get("/groups/{group_id}", responses=common)
    async def get_group(
        me: Caller,
        group_id: GroupPath,
        after: Annotated[str, Query(max_length=64, description="members after this id")] = "",
        limit: Annotated[int, Query(ge=1, le=LIST_MAX)] = LIST_MAX,
    ) -> GroupOut:
        """The group, with a page of members and invitations (roles, mute): members only."""
        await visible_member(group_id, me.user_id)
        try:
            view = await groups().view(group_id, after=after, limit=limit)
        except Refused as exc:
            raise refused(exc) from None
        return group_out(view.group, view.members, view.size)

    @router.delete("/groups/{group_id}", status_code=status.HTTP_204_NO_CONTENT, responses=changes)
    async def dissolve_group(me: Caller, group_id: GroupPath) -> None:
        """The owner dissolves the group: a DISSOLVED event, then no posts and no changes."""
        await run(groups().dissolve(group_id, me.user_id))

    @router.put("/groups/{group_id}/name", responses=changes)
    async def rename_group(me: Caller, group_id: GroupPath, body: NameIn) -> MembershipOut:
        """An admin (or the owner) renames the group: a RENAMED event."""
        change = await run(groups().rename(group_id, me.user_id, body.name))
        return MembershipOut(group_id=group_id, user_id=me.user_id, state=change.outcome)

    @router.put(
        "/groups/{group_id}/members/{user_id}",
        response_model=MembershipOut,
        responses={
            **changes,
            200: {"model": MembershipOut, "description": "a member (joined now, or already)"},
            202: {"model": MembershipOut, "description": "invited: waits for their own PUT"},
        },
    )
    async def put_member(
        me: Caller, group_id: GroupPath, user_id: UserPath
    ) -> MembershipOut | JSONResponse:
        """Your own id: accept your invitation (a JOINED event). Another's: invite them (an
        owner or admin); they join when they accept."""
        change = await run(groups().put_member(group_id, me.user_id, user_id))
        out = MembershipOut(group_id=group_id, user_id=user_id, state=change.outcome)
        if change.outcome == "invited":
            return JSONResponse(out.model_dump(), status_code=status.HTTP_202_ACCEPTED)
        return out

    @router.delete(
        "/groups/{group_id}/members/{user_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=changes,
    )
    async def delete_member(me: Caller, group_id: GroupPath, user_id: UserPath) -> None:
        """Your own id: leave (a LEFT event and a new key) or decline. Another's: remove a
        member (REMOVED, new key) or withdraw an invitation; admins remove members, the owner
        admins too; nobody removes the owner."""
        await run(groups().delete_member(group_id, me.user_id, user_id))

    @router.put("/groups/{group_id}/members/{user_id}/role", responses=changes)
    async def set_role(
        me: Caller, group_id: GroupPath, user_id: UserPath, body: RoleIn
    ) -> MemberOut:
        """The owner makes a member an admin, or an admin a member (a ROLE event)."""
        await run(groups().set_role(group_id, me.user_id, user_id, body.role))
        return await changed_member(group_id, user_id)

    @router.put("/groups/{group_id}/owner", responses=changes)
    async def transfer(me: Caller, group_id: GroupPath, body: OwnerIn) -> MemberOut:
        """The owner hands ownership to a member and stays on as an admin (two ROLE events)."""
        await run(groups().set_role(group_id, me.user_id, body.user_id, "owner"))
        return await changed_member(group_id, body.user_id)

    @router.put("/groups/{group_id}/members/{user_id}/mute", responses=changes)
    async def mute(me: Caller, group_id: GroupPath, user_id: UserPath, body: MuteIn) -> MemberOut:
        """An admin mutes a member (the owner an admin too) until ``until``; 0 lifts it. A
        muted member's chats are refused with MUTED."""
        await run(groups().mute(group_id, me.user_id, user_id, body.until))
        return await changed_member(group_id, user_id)

    async def changed_member(group_id: str, user_id: str) -> MemberOut:
        m = await groups().member(group_id, user_id)
        if m is None:  # changed and gone since: not expected
            raise HTTPException(status.HTTP_404_NOT_FOUND, Refusal.NO_MEMBER.value)
        return member_out(m)

    @router.get("/groups/{group_id}/keys", responses=common)
    async def keys(me: Caller, group_id: GroupPath) -> list[KeyOut]:
        """The group's keys whose seqs overlap what you may read, oldest first: a member
        gets the current key; nobody gets a key made after they left."""
        try:
            found = await groups().keys(group_id, me.user_id)
        except Refused as exc:
            raise refused(exc) from None
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, Refusal.NOT_FOUND.value)
        return [
            KeyOut(key_id=k.key_id, key=k.key, from_seq=k.from_seq, to_seq=k.to_seq) for k in found
        ]

    @router.get("/groups/{group_id}/messages/{seq}/receipts", responses=common)
    async def receipts(
        me: Caller,
        group_id: GroupPath,
        seq: Annotated[int, Path(ge=1, le=_SEQ_MAX)],
        limit: Annotated[int, Query(ge=0, le=RECEIPT_LIST_MAX)] = 100,
    ) -> ReceiptsOut:
        """How many of the members at ``seq`` have read it, and have it on a device, and
        who (up to ``limit`` names each): from the members' cursors, for anyone who may read
        ``seq``."""
        try:
            conv = conv_of(group_id)
        except Refused as exc:
            raise refused(exc) from None
        tl = timelines()
        spans = await tl.spans(conv, me.user_id)
        if not any(s.covers(seq) for s in spans):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such message of yours")
        found = await tl.receipts(conv, seq, limit)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such message of yours")
        return ReceiptsOut(
            seq=found.seq,
            members=found.members,
            read=found.read,
            delivered=found.delivered,
            read_by=found.read_by,
            delivered_to=found.delivered_to,
        )

    app.include_router(router)
