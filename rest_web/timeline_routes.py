"""History over REST: the caller's conversations, and pages of one conversation's timeline.

Rules:
- a conversation is readable by its members only; anyone else gets the same 404 as for a
  conversation that does not exist;
- bodies stay sealed: the server hands out what the sender sealed (base64), and only the
  members' clients, which hold the key, can open it;
- bad parameters (a conversation id of the wrong shape, a negative seq, a limit out of 1..200)
  are 400, with what was wrong; a page is never larger than :data:`timeline.store.MAX_PAGE`;
- message ids are uint64: JSON carries them as decimal strings, which no JSON reader rounds.

No ``from __future__ import annotations``: FastAPI reads the endpoint annotations, and the auth
dependency they name is a local of :func:`add_routes`.
"""

import base64
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from google.protobuf.message import DecodeError
from pydantic import BaseModel, Field

from common.tokens import Claims
from proto import im_pb2
from timeline.model import SINGLE, UNREAD_CAP, ConvSummary, Entry, parse_conv_id
from timeline.store import MAX_CONVERSATIONS, MAX_PAGE, TimelineStore

DEFAULT_PAGE = 50
_SEQ_MAX = (1 << 63) - 1
CONV_ID_PATTERN = r"^(p:[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.-]{1,64}|g:[A-Za-z0-9_.-]{1,64})$"


class ProblemOut(BaseModel):
    detail: str


class FileRefOut(BaseModel):
    id: str
    size: int
    checksum: str


class SystemOut(BaseModel):
    """A membership change or notice, made by the server (in the clear)."""

    event: str = Field(description="CREATED, JOINED, LEFT, REMOVED, ROLE, MUTED, DISSOLVED, ...")
    actor: str
    target: str
    text: str = Field(description="ROLE: the role; RENAMED, CREATED: the name")
    key_id: int = Field(description="KEY_ROTATED: the new key")
    until: int = Field(description="MUTED: ms since the epoch (0: unmuted)")


class MessageOut(BaseModel):
    conv_id: str
    seq: int = Field(description="its place in the conversation: 1, 2, 3, ...")
    server_time: int = Field(description="when it was committed, ms since the epoch")
    id: str = Field(description="the sender's message id: a uint64, in decimal")
    from_id: str
    dest_id: str
    dest_type: str = Field(description="SINGLE or GROUP")
    msg_type: str = Field(description="TEXT or FILE (a number for a type this server lacks)")
    create_time: int = Field(description="the sender's clock, ms since the epoch")
    body: str = Field(description="the sealed body, base64: only the members can open it")
    file: FileRefOut | None = Field(None, description="FILE messages: the upload it refers to")
    key_id: int = Field(0, description="the group key that sealed the body (0: the pair key)")
    system: SystemOut | None = Field(None, description="SYSTEM messages: what happened")


class ConversationOut(BaseModel):
    conv_id: str
    type: str = Field(description="SINGLE or GROUP")
    peer_id: str = Field(description="the other user (SINGLE) or the group id")
    last_seq: int = Field(description="the newest message's seq; 0 before the first")
    min_seq: int = Field(
        description="the first seq still stored: 1 unless retention removed older ones,"
        " last_seq + 1 when it removed them all"
    )
    last_message: MessageOut | None = Field(description="null once retention removed it")
    unread: int = Field(description=f"messages from others after read_seq, at most {UNREAD_CAP}")
    read_seq: int = Field(description="your READ cursor, shared by your devices")
    delivered_seq: int = Field(description="this device's DELIVERED cursor")
    peer_read_seq: int
    peer_delivered_seq: int = Field(description="the highest of the peer's devices'")
    max_seq: int = Field(
        0, description="GROUP, after you left or were removed: the last seq you may read"
    )
    changed: int = Field(description="last message or cursor move, ms since the epoch")


class BadRequestRoute(APIRoute):
    """This module's routes answer parameters that fail validation with 400 and one line, as
    they document, instead of FastAPI's 422 with a list."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                problems = [
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()
                ]
                return JSONResponse({"detail": "; ".join(problems)}, status_code=400)

        return run


def _name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def message_out(entry: Entry) -> MessageOut:
    """The JSON of an entry. Sender and destination come from the timeline (the sender's id
    as the server checked it, the conversation's other side), the rest from the stored chat."""
    chat = im_pb2.ChatMsg()
    try:
        chat.ParseFromString(entry.content)
    except DecodeError:
        chat = im_pb2.ChatMsg()  # not expected: shown as a message nobody can open
    ref = parse_conv_id(entry.conv_id)
    system = None
    if chat.msg_type == im_pb2.SYSTEM:
        system = system_out(chat.body)
    return MessageOut(
        conv_id=entry.conv_id,
        seq=entry.seq,
        server_time=entry.server_time,
        id=str(entry.msg_id),
        from_id="" if system is not None else entry.sender,
        dest_id=ref.peer_of(entry.sender) if ref.dest_type == SINGLE else ref.group_id,
        dest_type=_name(im_pb2.DestType, ref.dest_type),
        msg_type=_name(im_pb2.MsgType, chat.msg_type),
        create_time=chat.create_time,
        file=(
            FileRefOut(id=chat.file.id, size=chat.file.size, checksum=chat.file.checksum)
            if chat.HasField("file")
            else None
        ),
        key_id=chat.key_id,
        system=system,
        body="" if system is not None else base64.b64encode(chat.body).decode(),
    )


def system_out(body: bytes) -> SystemOut | None:
    sb = im_pb2.SystemBody()
    try:
        sb.ParseFromString(body)
    except DecodeError:
        return None
    return SystemOut(
        event=_name(im_pb2.SystemBody.Event, sb.event),
        actor=sb.actor,
        target=sb.target,
        text=sb.text,
        key_id=sb.key_id,
        until=sb.until,
    )


def conversation_out(s: ConvSummary) -> ConversationOut:
    return ConversationOut(
        conv_id=s.conv_id,
        type=_name(im_pb2.DestType, s.dest_type),
        peer_id=s.peer_id,
        last_seq=s.last_seq,
        min_seq=s.min_seq,
        last_message=None if s.last is None else message_out(s.last),
        unread=s.unread,
        read_seq=s.read_seq,
        delivered_seq=s.delivered_seq,
        peer_read_seq=s.peer_read_seq,
        peer_delivered_seq=s.peer_delivered_seq,
        max_seq=s.max_seq,
        changed=s.changed,
    )


def add_routes(
    app: FastAPI, caller: Callable[..., Awaitable[Claims]], store: TimelineStore | None
) -> None:
    """Mount ``GET /conversations`` and ``GET /conversations/{conv_id}/messages`` on ``store``;
    without one (an app wired with no timeline) they answer 503."""
    Caller = Annotated[Claims, Depends(caller)]
    router = APIRouter(route_class=BadRequestRoute, tags=["conversations"])
    common: dict[int | str, dict[str, Any]] = {
        400: {"model": ProblemOut, "description": "a parameter is malformed or out of range"},
        401: {"model": ProblemOut, "description": "missing, bad, expired or revoked token"},
        503: {"model": ProblemOut, "description": "storage unavailable"},
    }

    def timelines() -> TimelineStore:
        if store is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "history unavailable")
        return store

    @router.get("/conversations", responses=common)
    async def list_conversations(
        me: Caller,
        since: Annotated[
            int, Query(ge=0, le=_SEQ_MAX, description="only those changed at or after, ms")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_CONVERSATIONS)] = 500,
    ) -> list[ConversationOut]:
        """The caller's conversations, the most recently changed first: each with its last
        message (sealed), the caller's unread count and cursors, and the peer's cursors."""
        summaries = await timelines().conversations(
            me.user_id, since_ms=since, device_id=me.device_id, limit=limit
        )
        return [conversation_out(s) for s in summaries]

    @router.get(
        "/conversations/{conv_id}/messages",
        responses={
            **common,
            404: {"model": ProblemOut, "description": "no such conversation of yours"},
        },
    )
    async def list_messages(
        me: Caller,
        conv_id: Annotated[
            str,
            Path(
                pattern=CONV_ID_PATTERN,
                max_length=131,
                description="p:<a>:<b> (a < b) for a 1-1 conversation, g:<id> for a group",
            ),
        ],
        before: Annotated[
            int, Query(ge=0, le=_SEQ_MAX, description="only seqs below it (0: no bound)")
        ] = 0,
        after: Annotated[
            int | None, Query(ge=0, le=_SEQ_MAX, description="only seqs above it: read forward")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    ) -> list[MessageOut]:
        """A page of the conversation's messages, oldest first. With ``after`` (0 too): the
        first ``limit`` after it, below ``before`` if given; without: the newest ``limit``
        below ``before`` if given, so no parameters is the latest page."""
        tl = timelines()
        # an id of the right shape that names no conversation (p:b:a, p:a:a) is one the
        # caller is not in: the same 404
        if not await tl.is_member(conv_id, me.user_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such conversation")
        # a group's page holds only what the caller may read (their membership spans)
        if after is not None:
            entries = await tl.page(
                conv_id, after=after, before=before, limit=limit, reader=me.user_id
            )
        else:
            entries = await tl.page(
                conv_id, before=before or _SEQ_MAX, limit=limit, reader=me.user_id
            )
        return [message_out(e) for e in entries]

    app.include_router(router)
