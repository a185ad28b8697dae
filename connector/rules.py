"""Who may send what on a client connection, and the field checks of each body: pure, no I/O.

States: CONNECTED (socket open, no identity) -> AUTHENTICATED (GREET accepted) -> CLOSING.
Before GREET only GREET and keep-alives are accepted (anything else is fatal: the peer is not
speaking the protocol); after it, chat, cursor, sync and keep-alives (a second GREET is refused
but not fatal). Bodies only servers send, ``ack`` among them (receipts travel as cursors now),
are an unknown type. ``typing`` is taken once greeted (connector/signals.py checks and limits it).

Every refusal is a :class:`common.errors.ProtocolError` carrying its wire code, so the link
answers with an ERROR frame naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from common.convid import SINGLE, USER_ID, parse_conv_id
from common.errors import ProtocolError
from common.files import valid_checksum, valid_file_id
from proto import im_pb2

# A chat grows on its way (longer link sequence, the timeline's stamps: conv_id, seq,
# server_time; wrapped in a Fanout): bodies leave this much of the frame limit for the envelope,
# so a maximal client frame still fits on every later hop. Two 64-char ids, the varints and the
# wrappers' tags and lengths take under 250 bytes, a FILE chat's FileRef about 100, the stamps
# about 160 (tests/test_timeline_write.py builds the largest chat and checks every hop's frame).
ENVELOPE_HEADROOM = 1024
SYNC_PAGE = 200  # most chats one Sync is answered with


class State(IntEnum):
    CONNECTED = 0
    AUTHENTICATED = 1
    CLOSING = 2


_AUTH = frozenset({State.AUTHENTICATED})
# body kind -> states in which a client may send it
ALLOWED: dict[str, frozenset[State]] = {
    "greet": frozenset({State.CONNECTED}),
    "chat": _AUTH,
    "cursor": _AUTH,
    "sync": _AUTH,
    "typing": _AUTH,
    "link_ack": _AUTH,
    "ping": frozenset({State.CONNECTED, State.AUTHENTICATED}),
    "pong": frozenset({State.CONNECTED, State.AUTHENTICATED}),
}
# known to the schema, but not taken from a client yet: refused without closing once greeted
UNSUPPORTED: frozenset[str] = frozenset()


def check(state: State, kind: str | None) -> None:
    """Raise the ProtocolError a client deserves for sending ``kind`` in ``state``."""
    if state is State.CLOSING:
        raise ProtocolError("connection is closing", code=im_pb2.SHUTTING_DOWN, fatal=True)
    allowed = ALLOWED.get(kind or "")
    if allowed is None:
        what = "is not supported yet" if kind in UNSUPPORTED else "is not for a client to send"
        raise ProtocolError(
            f"{kind or 'an empty envelope'} {what}",
            code=im_pb2.UNKNOWN_TYPE,
            fatal=state is State.CONNECTED,
        )
    if state in allowed:
        return
    if state is State.CONNECTED:
        raise ProtocolError(f"{kind} before GREET", code=im_pb2.NOT_AUTHENTICATED, fatal=True)
    raise ProtocolError("already greeted", code=im_pb2.ALREADY_GREETED)


def check_chat(user_id: str, chat: im_pb2.ChatMsg, max_body: int) -> None:
    """Field checks for a client's chat; the friendship and file checks need I/O and come after.
    A body over ``max_body`` is TOO_LARGE (the link names the chat's id in the ERROR)."""
    if chat.from_id != user_id:
        raise ProtocolError(f"from_id {chat.from_id!r} is not you", code=im_pb2.SPOOFED_SENDER)
    if chat.id == 0:
        raise ProtocolError("message id must not be 0")
    if chat.after_id >= chat.id:  # it names an earlier chat of the same device
        raise ProtocolError("after_id must be below the message id")
    if chat.dest_type == im_pb2.GROUP:
        check_group_chat(chat)
    elif chat.dest_type != im_pb2.SINGLE:
        raise ProtocolError("dest_type is SINGLE or GROUP")
    elif not USER_ID.fullmatch(chat.dest_id):
        raise ProtocolError("dest_id is not a user id")
    if chat.msg_type not in (im_pb2.TEXT, im_pb2.FILE):
        raise ProtocolError("unknown msg_type")
    if chat.msg_type == im_pb2.FILE:
        f = chat.file
        if not chat.HasField("file") or not valid_file_id(f.id) or not valid_checksum(f.checksum):
            raise ProtocolError("a FILE chat needs its file reference: id, size, checksum")
    elif chat.HasField("file"):
        raise ProtocolError("only a FILE chat carries a file reference")
    if len(chat.body) > max_body:
        raise ProtocolError(f"body over {max_body} bytes", code=im_pb2.TOO_LARGE)


def check_group_chat(chat: im_pb2.ChatMsg) -> None:
    """A group chat's own field checks: a group id as ``dest_id`` (the conversation is
    ``g:<dest_id>``). A FILE chat is checked as a pair's is; its download grant names the
    message, and the members at its seq may download (common/files.py)."""
    if not USER_ID.fullmatch(chat.dest_id):
        raise ProtocolError("dest_id is not a group id")


SERVER_STAMPS = ("conv_id", "seq", "server_time")


def clear_stamps(chat: im_pb2.ChatMsg) -> None:
    """Fields only the timeline sets, taken from no client: whatever a client put there goes."""
    for name in SERVER_STAMPS:
        chat.ClearField(name)


def _own_conv(user_id: str, conv_id: str) -> None:
    """NOT_MEMBER unless ``conv_id`` is a 1-1 conversation of ``user_id`` or a group's (whose
    membership needs I/O: the shell checks it, connector/groupaccess.py)."""
    try:
        ref = parse_conv_id(conv_id)
    except ValueError:
        raise ProtocolError("not a conversation id", code=im_pb2.NOT_MEMBER) from None
    if ref.dest_type == SINGLE and user_id not in ref.members:
        raise ProtocolError(f"you are not in {conv_id}", code=im_pb2.NOT_MEMBER)


def check_cursor(user_id: str, cursor: im_pb2.Cursor) -> im_pb2.Cursor:
    """A client's own DELIVERED or READ cursor, as it goes on: ``user_id`` filled in."""
    if cursor.user_id and cursor.user_id != user_id:
        raise ProtocolError(
            f"cursor of {cursor.user_id[:64]!r} is not yours", code=im_pb2.SPOOFED_SENDER
        )
    if cursor.type not in (im_pb2.DELIVERED, im_pb2.READ):
        raise ProtocolError("a cursor is DELIVERED or READ")
    if cursor.seq == 0:
        raise ProtocolError("a cursor's seq starts at 1")
    _own_conv(user_id, cursor.conv_id)
    return im_pb2.Cursor(conv_id=cursor.conv_id, user_id=user_id, type=cursor.type, seq=cursor.seq)


@dataclass(frozen=True, slots=True)
class SyncRange:
    """What one Sync asks for: seqs ``from_seq..to_seq`` (to_seq 0: the head), at most
    ``limit`` of them (1..SYNC_PAGE)."""

    conv_id: str
    from_seq: int
    to_seq: int
    limit: int


def check_sync(user_id: str, sync: im_pb2.Sync) -> SyncRange:
    """A Sync of one of the user's conversations, with its bounds made explicit."""
    _own_conv(user_id, sync.conv_id)
    from_seq = max(sync.from_seq, 1)
    if sync.to_seq and sync.to_seq < from_seq:
        raise ProtocolError(f"to_seq {sync.to_seq} is below from_seq {from_seq}")
    limit = sync.limit if 0 < sync.limit <= SYNC_PAGE else SYNC_PAGE
    return SyncRange(sync.conv_id, from_seq, sync.to_seq, limit)
