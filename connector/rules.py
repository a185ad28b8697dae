"""Who may send what on a client connection: a pure state machine, no I/O.

States: CONNECTED (socket open, no identity) -> AUTHENTICATED (GREET accepted) -> CLOSING.
Before GREET only GREET is accepted (anything else is fatal: the peer is not speaking the
protocol); after it, only chat, receipts and keep-alives (a second GREET is refused but not
fatal). Server-to-client bodies from a client are an unknown type; ``drain`` is both (a client
asks for its own offline rows).
"""

from __future__ import annotations

from enum import IntEnum

from common.errors import ProtocolError
from common.files import valid_checksum, valid_file_id
from proto import im_pb2

# A chat grows on its way (longer link sequence, the read tag, the timeline's stamps: conv_id,
# seq, server_time; wrapped in a Bounce): bodies leave this much of the frame limit for the
# envelope, so a maximal client frame still fits on every later hop. Two 64-char ids, the
# varints and the wrappers' tags and lengths take under 250 bytes, a FILE chat's FileRef
# (22-char id, 64-char checksum, a varint) about 100, the stamps about 160
# (tests/test_timeline_write.py builds the largest chat and checks every hop's frame).
ENVELOPE_HEADROOM = 1024


class State(IntEnum):
    CONNECTED = 0
    AUTHENTICATED = 1
    CLOSING = 2


# body kind -> states in which a client may send it
ALLOWED: dict[str, frozenset[State]] = {
    "greet": frozenset({State.CONNECTED}),
    "chat": frozenset({State.AUTHENTICATED}),
    "ack": frozenset({State.AUTHENTICATED}),
    "drain": frozenset({State.AUTHENTICATED}),  # drain my offline rows now
    "link_ack": frozenset({State.AUTHENTICATED}),
    "ping": frozenset({State.CONNECTED, State.AUTHENTICATED}),
    "pong": frozenset({State.CONNECTED, State.AUTHENTICATED}),
}


def check(state: State, kind: str | None) -> None:
    """Raise the ProtocolError a client deserves for sending ``kind`` in ``state``."""
    if state is State.CLOSING:
        raise ProtocolError("connection is closing", code=im_pb2.SHUTTING_DOWN, fatal=True)
    allowed = ALLOWED.get(kind or "")
    if allowed is None:
        raise ProtocolError(
            f"a client may not send {kind or 'an empty envelope'}",
            code=im_pb2.UNKNOWN_TYPE,
            fatal=state is State.CONNECTED,
        )
    if state in allowed:
        return
    if state is State.CONNECTED:
        raise ProtocolError(f"{kind} before GREET", code=im_pb2.NOT_AUTHENTICATED, fatal=True)
    raise ProtocolError("already greeted", code=im_pb2.ALREADY_GREETED)


def check_chat(user_id: str, chat: im_pb2.ChatMsg, max_body: int) -> None:
    """Field checks for a client's chat; the friendship check needs I/O and is done after."""
    if chat.from_id != user_id:
        raise ProtocolError(f"from_id {chat.from_id!r} is not you", code=im_pb2.SPOOFED_SENDER)
    if chat.id == 0:
        raise ProtocolError("message id must not be 0")
    if not chat.dest_id or len(chat.dest_id) > 64:
        raise ProtocolError("bad dest_id")
    if chat.dest_type != im_pb2.SINGLE:
        raise ProtocolError("only SINGLE chat is supported")
    if chat.msg_type not in (im_pb2.TEXT, im_pb2.FILE):
        raise ProtocolError("unknown msg_type")
    if chat.msg_type == im_pb2.FILE:
        f = chat.file
        if not chat.HasField("file") or not valid_file_id(f.id) or not valid_checksum(f.checksum):
            raise ProtocolError("a FILE chat needs its file reference: id, size, checksum")
    elif chat.HasField("file"):
        raise ProtocolError("only a FILE chat carries a file reference")
    if len(chat.body) > max_body:
        raise ProtocolError(f"body over {max_body} bytes")


SERVER_STAMPS = ("read_tag", "from_store", "conv_id", "seq", "server_time")


def clear_stamps(chat: im_pb2.ChatMsg) -> None:
    """Fields only the servers set, taken from no client: a client that sets them is ignored."""
    for name in SERVER_STAMPS:
        chat.ClearField(name)


def check_receipt(user_id: str, ack: im_pb2.AckMsg) -> None:
    """Clients send DELIVERED and READ: SENT and ACCEPTED are the server's to issue."""
    if ack.from_id != user_id:
        raise ProtocolError(f"from_id {ack.from_id!r} is not you", code=im_pb2.SPOOFED_SENDER)
    if ack.ack_type not in (im_pb2.DELIVERED, im_pb2.READ):
        raise ProtocolError("clients may only send DELIVERED and READ receipts")
    if ack.id == 0 or ack.ack_msg_id == 0 or not ack.dest_id or len(ack.dest_id) > 64:
        raise ProtocolError("bad receipt")
