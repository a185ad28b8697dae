"""The admin API under ``/admin``: who is online, kick, disable, delete, notices, cluster stats.

Rules kept here:
- every endpoint needs a valid bearer token of an admin (``im admin grant USER`` or
  ``IM_ADMINS``), checked at each call: anyone else gets 403, a missing or revoked token 401;
- every call by a token holder, allowed or not, is audit-logged: a row of ``im_admin_audit`` and
  a line on the ``im.audit`` logger, both written after the answer is known (who, what, target,
  when, status); a call without a valid token is only logged, so nobody can fill the table
  anonymously;
- disabling an account marks it (login then answers 403) and sets its revocation cutoff, which
  is published to every connector: every session of the user closes at once, and every token it
  had is refused from then on, by REST and at GREET;
- a kick closes a device's session now (published on the kick bus, user_status/kick.py); it does
  not revoke, and the admin API says so;
- deleting an account does what disabling does, then erases its data (rest_web/admin_store.py);
- an admin cannot disable or delete themselves (the way to lock everyone out by accident).

No ``from __future__ import annotations``: FastAPI reads the endpoint annotations, and the
dependencies they name are locals of :func:`add_routes`.
"""

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, model_validator
from starlette.responses import Response

from common.config import Settings
from common.errors import BackendError
from common.tokens import Claims, Revocation
from groups.leaving import leave_all
from groups.store import GroupStore
from rest_web.admin_store import AdminStore, AuditEntry
from rest_web.blobs import BlobStore
from rest_web.params import OptionalUserId, UserPath
from rest_web.store import UserStore
from user_status.base import NodeRegistry, OnlineDirectory
from user_status.kick import Kick, KickBus

log = logging.getLogger(__name__)
audit_log = logging.getLogger("im.audit")

USER_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
DEVICE_PATTERN = r"^[A-Za-z0-9_.:-]{0,64}$"
TargetUser = UserPath
# a full count for the stats stops here (one SCAN pass over this many users is a few seconds)
STATS_MAX_USERS = 100_000
STATS_PAGE = 1000

QueueDepths = Callable[[], Awaitable[dict[str, int]]]
RevocationPublisher = Callable[[Revocation], Awaitable[None]]


class AdminStatus(OnlineDirectory, NodeRegistry, Protocol):
    """The user status the admin API reads (both backends of user_status provide it)."""

    async def lookup(self, user_id: str) -> dict[str, str]: ...


@dataclass
class AdminDeps:
    """What the admin API works with; ``None`` parts make their endpoints answer 503."""

    store: AdminStore
    settings: Settings
    kicks: KickBus | None = None
    status: AdminStatus | None = None
    blobs: BlobStore | None = None
    queue_depths: QueueDepths | None = None


class ErrorOut(BaseModel):
    detail: str


class DeviceOut(BaseModel):
    device_id: str
    connector: str = Field(description="node id of the connector holding it")


class OnlineUserOut(BaseModel):
    user_id: str
    devices: list[DeviceOut]


class OnlinePage(BaseModel):
    users: list[OnlineUserOut]
    next_cursor: str = Field(
        description="pass as ?cursor= for the next page; empty when this was the last. A page "
        "may be empty before the last, and a user may appear twice (Redis SCAN)."
    )


class UserStateOut(BaseModel):
    user_id: str
    exists: bool
    disabled: bool
    admin: bool
    devices: list[DeviceOut]


class KickIn(BaseModel):
    device_id: Annotated[str, Field(pattern=DEVICE_PATTERN, description="empty: every device")] = ""


class KickOut(BaseModel):
    user_id: str
    device_id: str
    note: str = Field(
        "published: the connector holding it closes the session within a second; the token "
        "stays valid, so disable the account to keep the user out"
    )


class DisableIn(BaseModel):
    reason: Annotated[str, Field(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""


class AccountOut(BaseModel):
    user_id: str
    disabled: bool
    changed: bool = Field(description="false when it already was in that state")


class DeletedOut(BaseModel):
    user_id: str
    relations: int
    files: int
    grants: int
    messages: str = Field(description="what happened to the user's messages")


class NoticeIn(BaseModel):
    user_id: OptionalUserId = None
    group_id: Annotated[str | None, Field(pattern=USER_ID_PATTERN)] = None
    text: Annotated[str, Field(min_length=1, max_length=2000)]

    @model_validator(mode="after")
    def one_target(self) -> "NoticeIn":
        if (self.user_id is None) == (self.group_id is None):
            raise ValueError("name exactly one of user_id and group_id")
        return self


class NodeOut(BaseModel):
    node_id: str
    address: str
    connections: int | None = Field(None, description="devices online there (connectors)")


class StatsOut(BaseModel):
    connectors: list[NodeOut]
    transfers: list[NodeOut]
    online_users: int
    online_devices: int
    counted_all: bool = Field(description=f"false when over {STATS_MAX_USERS} users were seen")
    queues: dict[str, int] = Field(description="queue depths where measurable (RabbitMQ)")


class AuditOut(BaseModel):
    at_ms: int
    actor: str
    action: str
    target: str
    detail: str
    status: int


_COMMON: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, bad, expired or revoked token"},
    403: {"model": ErrorOut, "description": "the caller is not an admin"},
    503: {"model": ErrorOut, "description": "storage or the user status backend unavailable"},
}


def _target(request: Request) -> str:
    params = request.path_params
    return str(params.get("user_id", ""))


class AuditedRoute(APIRoute):
    """An admin route whose every call is audit-logged once its answer is known."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        action = self.name

        async def audited(request: Request) -> Response:
            code = 500
            try:
                response = await handler(request)
                code = response.status_code
                return response
            except HTTPException as exc:
                code = exc.status_code
                raise
            except RequestValidationError:
                code = 422
                raise
            except BackendError:
                code = 503  # what the app's handler answers (rest_web/app.py)
                raise
            finally:
                await _record(request, action, code)

        return audited


async def _record(request: Request, action: str, code: int) -> None:
    actor = getattr(request.state, "im_actor", "")
    detail = getattr(request.state, "im_audit", "")
    target = _target(request)
    audit_log.info(
        "admin call: actor=%s action=%s target=%s status=%d detail=%s",
        actor or "-",
        action,
        target or "-",
        code,
        detail or "-",
    )
    store: AdminStore | None = getattr(request.state, "im_audit_store", None)
    if not actor or store is None:
        return
    entry = AuditEntry(int(time.time() * 1000), actor, action, target, detail, code)
    try:
        await store.audit(entry)
    except BackendError as exc:
        log.error("audit row not written (the line above is the record): %s", exc)


def add_routes(
    app: FastAPI,
    caller: Callable[..., Awaitable[Claims]],
    users: UserStore,
    publish: RevocationPublisher,
    deps: AdminDeps,
    groups: GroupStore | None = None,
) -> None:
    """Mount ``/admin/*`` on ``app``; ``caller`` is the app's bearer-token dependency and
    ``publish`` tells connectors about a revocation; ``groups``, when served, are left by an
    account before it is deleted."""
    store = deps.store
    Caller = Annotated[Claims, Depends(caller)]

    async def admin(request: Request, me: Caller) -> Claims:
        request.state.im_actor = me.user_id
        request.state.im_audit_store = store
        if not await store.is_admin(me.user_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "admin role required")
        return me

    Admin = Annotated[Claims, Depends(admin)]
    router = APIRouter(prefix="/admin", tags=["admin"], route_class=AuditedRoute, responses=_COMMON)

    def need(part: object, what: str) -> None:
        if part is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"no {what} in this REST process"
            )

    async def cut_off(user_id: str) -> None:
        """Revoke every token of ``user_id`` issued up to now, and tell the connectors."""
        # +1 ms: a token issued in this same millisecond is covered too (issued_ms < cutoff)
        cutoff = int(time.time() * 1000) + 1
        until = cutoff // 1000 + deps.settings.token_ttl + 1
        await users.set_cutoff(user_id, cutoff, until)
        await publish(Revocation(expires=until, user_id=user_id, before_ms=cutoff))

    def not_yourself(me: Claims, user_id: str, what: str) -> None:
        if me.user_id == user_id:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"an admin cannot {what} themselves")

    @router.get("/users/online")
    async def list_online(
        me: Admin,
        cursor: Annotated[str, Query(max_length=64, pattern=r"^[0-9A-Za-z_.-]*$")] = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> OnlinePage:
        """Online users with their devices and the connector of each, a page at a time."""
        need(deps.status, "user status backend")
        assert deps.status is not None
        try:
            page, nxt = await deps.status.online_page(cursor, limit)
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "bad cursor") from None
        return OnlinePage(
            users=[
                OnlineUserOut(
                    user_id=u,
                    devices=[DeviceOut(device_id=d, connector=c) for d, c in sorted(devs.items())],
                )
                for u, devs in page
            ],
            next_cursor=nxt,
        )

    @router.get("/users/{user_id}", responses={404: {"model": ErrorOut}})
    async def user_state(me: Admin, user_id: TargetUser) -> UserStateOut:
        """Whether the account exists, is disabled or an admin, and its devices online."""
        devices = await deps.status.lookup(user_id) if deps.status is not None else {}
        return UserStateOut(
            user_id=user_id,
            exists=await users.user_exists(user_id),
            disabled=await store.is_disabled(user_id),
            admin=await store.is_admin(user_id),
            devices=[DeviceOut(device_id=d, connector=c) for d, c in sorted(devices.items())],
        )

    @router.post("/users/{user_id}/kick", status_code=status.HTTP_202_ACCEPTED)
    async def kick(me: Admin, user_id: TargetUser, body: KickIn, request: Request) -> KickOut:
        """Close a device's session (``device_id`` empty: every device of the user) on
        whichever connector holds it. It may reconnect with its token: disable to keep it out."""
        request.state.im_audit = f"device={body.device_id or '*'}"
        need(deps.kicks, "kick bus")
        assert deps.kicks is not None
        await deps.kicks.publish(Kick(user_id, body.device_id))
        return KickOut(user_id=user_id, device_id=body.device_id)

    @router.post("/users/{user_id}/disable", responses={404: {"model": ErrorOut}})
    async def disable(
        me: Admin, user_id: TargetUser, body: DisableIn, request: Request
    ) -> AccountOut:
        """Disable the account: every session closes at once, every token is refused, and
        login answers 403 until it is enabled again."""
        request.state.im_audit = f"reason={body.reason}" if body.reason else ""
        not_yourself(me, user_id, "disable")
        if not await users.user_exists(user_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
        # marked first, then cut off: a login that passed its check before the mark still
        # issued its token before the cutoff (see the login endpoint's second check)
        changed = await store.disable(user_id, me.user_id, body.reason)
        await cut_off(user_id)
        return AccountOut(user_id=user_id, disabled=True, changed=changed)

    @router.post("/users/{user_id}/enable", responses={404: {"model": ErrorOut}})
    async def enable(me: Admin, user_id: TargetUser) -> AccountOut:
        """Let the account log in again (its old tokens stay revoked)."""
        if not await users.user_exists(user_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
        return AccountOut(user_id=user_id, disabled=False, changed=await store.enable(user_id))

    @router.delete("/users/{user_id}", responses={404: {"model": ErrorOut}})
    async def delete_user(me: Admin, user_id: TargetUser) -> DeletedOut:
        """Delete the account and its data: row, profile, friendships, uploaded files, the
        downloads it was granted; its sessions close and its tokens die first."""
        not_yourself(me, user_id, "delete")
        if not await users.user_exists(user_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
        await cut_off(user_id)
        if groups is not None:  # while the id is still taken: its leaving is in the timelines
            await leave_all(groups, user_id, int(time.time() * 1000))
        mode = deps.settings.delete_messages
        # while the id is still taken: no new account's messages can be caught
        rewritten = await store.erase_messages(user_id, mode)
        erased = await store.erase_user(user_id)
        if deps.blobs is not None:
            for file_id in erased.files:
                await deps.blobs.delete(file_id)
        done = "anonymized (kept, from a deleted user)" if mode == "anonymize" else "deleted"
        messages = f"{rewritten} {done}"
        return DeletedOut(
            user_id=user_id,
            relations=erased.relations,
            files=len(erased.files),
            grants=erased.grants,
            messages=messages,
        )

    @router.post(
        "/notices",
        status_code=status.HTTP_202_ACCEPTED,
        responses={501: {"model": ErrorOut, "description": "delivery comes with the timeline"}},
    )
    async def send_notice(me: Admin, body: NoticeIn, request: Request) -> ErrorOut:
        """A system notice to one user or one group.

        Phase 2: notices are delivered as system messages in the timeline, which does not exist
        yet; until then this validates, audits and answers 501 (nothing is sent)."""
        to = f"user={body.user_id}" if body.user_id else f"group={body.group_id}"
        request.state.im_audit = f"{to} chars={len(body.text)}"
        # TODO(timeline, phase 2): append a system message to the target's timeline
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED,
            "system notices are delivered through the timeline, which this release lacks",
        )

    @router.get("/stats")
    async def stats(me: Admin) -> StatsOut:
        """Connectors (with devices online on each), transfers, online users and devices,
        queue depths where they can be measured."""
        need(deps.status, "user status backend")
        assert deps.status is not None
        connectors = await deps.status.live("connector")
        transfers = await deps.status.live("transfer")
        per_connector: dict[str, int] = {}
        seen_users, devices, counted_all = 0, 0, True
        cursor = ""
        while True:
            page, cursor = await deps.status.online_page(cursor, STATS_PAGE)
            for _, devs in page:
                seen_users += 1
                devices += len(devs)
                for node in devs.values():
                    per_connector[node] = per_connector.get(node, 0) + 1
            if not cursor:
                break
            if seen_users >= STATS_MAX_USERS:
                counted_all = False
                break
        queues = await deps.queue_depths() if deps.queue_depths is not None else {}
        return StatsOut(
            connectors=[
                NodeOut(node_id=n, address=a, connections=per_connector.get(n, 0))
                for n, a in sorted(connectors.items())
            ],
            transfers=[NodeOut(node_id=n, address=a) for n, a in sorted(transfers.items())],
            online_users=seen_users,
            online_devices=devices,
            counted_all=counted_all,
            queues=queues,
        )

    @router.get("/audit")
    async def audit(
        me: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_ms: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    ) -> list[AuditOut]:
        """The audit log, newest first."""
        entries = await store.audit_log(limit, before_ms)
        return [AuditOut(**dataclasses.asdict(e)) for e in entries]

    app.include_router(router)
