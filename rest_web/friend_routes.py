"""``/friends`` and ``/blocks``: friendship needs both sides' yes; anyone can be blocked.

- ``PUT /friends/{id}``: 200 with the pair key when the two are friends (this call accepted the
  other's request, or they already were); 202 ``{"user_id", "state": "pending"}`` when it is a
  request waiting for the other side. A request to a name nobody holds, or to someone who
  blocked you, is answered the same 202 with the same body, so this says nothing about who
  exists (rest_web/friendships.py);
- ``GET /friends/requests``: incoming and outgoing pending requests;
- ``DELETE /friends/{id}``: unfriend, withdraw or decline (204; 404 when there was nothing);
- ``PUT /blocks/{id}`` (204, also ends the friendship), ``DELETE /blocks/{id}``, ``GET /blocks``.

No ``from __future__ import annotations``: FastAPI reads the endpoint annotations, and the auth
dependency they name is a parameter of :func:`add_routes`.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from common.tokens import Claims
from hooks import events
from rest_web.friendships import Friendships, Pending, Refusal, Refused
from rest_web.params import UserPath
from rest_web.store import UserStore

Emit = Callable[[str, events.Data], None]


class ErrorOut(BaseModel):
    detail: str


class FriendOut(BaseModel):
    user_id: str
    key: str = Field(description="the pair's AES-256-GCM key, base64url (43 chars)")


class PendingOut(BaseModel):
    user_id: str
    state: Literal["pending"] = "pending"


class RequestOut(BaseModel):
    user_id: str
    created: int = Field(description="when it was asked, unix seconds")


class RequestsOut(BaseModel):
    incoming: list[RequestOut] = Field(description="who asked you, newest first")
    outgoing: list[RequestOut] = Field(description="whom you asked, newest first")


class BlockOut(BaseModel):
    user_id: str
    created: int = Field(description="when it was blocked, unix seconds")


_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing, bad, expired or revoked token"}
}
_STATUS = {
    Refusal.SELF: status.HTTP_409_CONFLICT,
    Refusal.BLOCKED_BY_YOU: status.HTTP_409_CONFLICT,
    Refusal.TOO_MANY_REQUESTS: status.HTTP_409_CONFLICT,
    Refusal.TOO_MANY_BLOCKS: status.HTTP_409_CONFLICT,
}


def _refused(exc: Refused) -> HTTPException:
    return HTTPException(_STATUS[exc.why], exc.why.value)


def _out(rows: list[Pending]) -> list[RequestOut]:
    return [RequestOut(user_id=p.user_id, created=p.created) for p in rows]


def add_routes(app: FastAPI, caller: Callable[..., Any], store: UserStore, emit: Emit) -> None:
    friendships = Friendships(store)
    Caller = Annotated[Claims, Depends(caller)]

    @app.get("/friends", tags=["friends"], responses=_UNAUTHORIZED)
    async def list_friends(me: Caller) -> list[FriendOut]:
        return [FriendOut(user_id=f, key=k) for f, k in await store.relations_of(me.user_id)]

    # before /friends/{friend_id}, which would match it too; "requests" is no user id that can
    # be registered (rest_web/app.py RESERVED_IDS), so this path is never a friend's
    @app.get("/friends/requests", tags=["friends"], responses=_UNAUTHORIZED)
    async def list_requests(me: Caller) -> RequestsOut:
        return RequestsOut(
            incoming=_out(await friendships.incoming(me.user_id)),
            outgoing=_out(await friendships.outgoing(me.user_id)),
        )

    @app.api_route("/friends/requests", methods=["PUT", "DELETE"], include_in_schema=False)
    async def requests_is_read_only() -> None:
        raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, "Method Not Allowed")

    @app.get(
        "/friends/{friend_id}",
        tags=["friends"],
        responses={**_UNAUTHORIZED, 404: {"model": ErrorOut, "description": "not a friend"}},
    )
    async def get_friend(me: Caller, friend_id: UserPath) -> FriendOut:
        key = await store.relation_key(me.user_id, friend_id)
        if key is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not a friend")
        return FriendOut(user_id=friend_id, key=key)

    @app.put(
        "/friends/{friend_id}",
        tags=["friends"],
        response_model=FriendOut,
        responses={
            **_UNAUTHORIZED,
            200: {"model": FriendOut, "description": "friends (now or already): the pair key"},
            202: {"model": PendingOut, "description": "asked; waits for the other side"},
            409: {
                "model": ErrorOut,
                "description": "yourself, someone you block, or too many pending requests",
            },
        },
    )
    async def add_friend(me: Caller, friend_id: UserPath) -> FriendOut | JSONResponse:
        """Ask ``friend_id`` for friendship, or accept their request (idempotent)."""
        try:
            asked = await friendships.ask(me.user_id, friend_id)
        except Refused as exc:
            raise _refused(exc) from None
        if asked.key is None:
            return JSONResponse(
                PendingOut(user_id=friend_id).model_dump(), status_code=status.HTTP_202_ACCEPTED
            )
        if asked.accepted_now:
            emit(events.FRIEND_ACCEPTED, events.friend_accepted(me.user_id, friend_id))
        return FriendOut(user_id=friend_id, key=asked.key)

    @app.delete(
        "/friends/{friend_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["friends"],
        responses={
            **_UNAUTHORIZED,
            404: {"model": ErrorOut, "description": "neither a friend nor a pending request"},
        },
    )
    async def remove_friend(me: Caller, friend_id: UserPath) -> None:
        """Unfriend, withdraw your request, or decline theirs."""
        if not await friendships.remove(me.user_id, friend_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not a friend")

    @app.get("/blocks", tags=["friends"], responses=_UNAUTHORIZED)
    async def list_blocks(me: Caller) -> list[BlockOut]:
        return [
            BlockOut(user_id=b.user_id, created=b.created)
            for b in await friendships.blocked(me.user_id)
        ]

    @app.put(
        "/blocks/{user_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["friends"],
        responses={
            **_UNAUTHORIZED,
            409: {"model": ErrorOut, "description": "yourself, or too many blocks"},
        },
    )
    async def block(me: Caller, user_id: UserPath) -> None:
        """Block ``user_id`` (idempotent; the same answer whether or not the name exists): a
        friendship with them ends, and they can neither ask you nor message you."""
        try:
            await friendships.block(me.user_id, user_id)
        except Refused as exc:
            raise _refused(exc) from None

    @app.delete(
        "/blocks/{user_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["friends"],
        responses={**_UNAUTHORIZED, 404: {"model": ErrorOut, "description": "not blocked"}},
    )
    async def unblock(me: Caller, user_id: UserPath) -> None:
        if not await friendships.unblock(me.user_id, user_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not blocked")
