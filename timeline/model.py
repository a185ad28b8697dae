"""What a timeline is made of: the messages going in, the entries coming out (conversation
ids are common/convid.py's, re-exported here).

An :class:`Entry`'s content is the ChatMsg as its sender sent it, with the server's stamps
(``conv_id`` 14, ``seq`` 15, ``server_time`` 16 of ChatMsg in proto/im.proto) written into it
by :func:`stamp`. The stamps are placed on the wire bytes directly, so every field of the
sender's (including ones a newer client knows and this server does not) survives byte for byte,
anything a client put in the stamp fields itself is replaced, and the retired fields 9 to 13
(read tags and streams of the store-and-forward model, reserved now) are dropped: an old client
may still send them, and no reader should ever find them stored.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Literal

from google.protobuf.unknown_fields import UnknownFieldSet

from common.convid import (
    CONV_ID_MAX_LEN,
    GROUP,
    ID_MAX_LEN,
    SINGLE,
    USER_ID,
    ConvRef,
    group_conv_id,
    is_conv_id,
    pair_conv_id,
    pair_members,
    parse_conv_id,
)
from proto import im_pb2

__all__ = [
    "CONV_ID_MAX_LEN",
    "GROUP",
    "ID_MAX_LEN",
    "SINGLE",
    "USER_ID",
    "AppendResult",
    "ConvRef",
    "ConvSummary",
    "CursorMove",
    "CursorResult",
    "Entry",
    "NewMessage",
    "Receipts",
    "Span",
    "chat_digest",
    "conv_of_chat",
    "conv_ref",
    "group_conv_id",
    "is_conv_id",
    "message_problem",
    "new_message",
    "pair_conv_id",
    "pair_members",
    "parse_conv_id",
    "resend_outcome",
    "stamp",
]

DIGEST_SIZE = 32  # SHA-256
MAX_CONTENT = 16 * 1024 * 1024 - 1  # MySQL MEDIUMBLOB; frames are far smaller anyway
UNREAD_CAP = 9999  # unread counts stop here: enough to say "lots", bounded to count
U64 = 1 << 64

# wire tags of the stamp fields: (field number << 3) | wire type
_CONV_ID_FIELD, _SEQ_FIELD, _SERVER_TIME_FIELD = 14, 15, 16
_STAMPS = frozenset({_CONV_ID_FIELD, _SEQ_FIELD, _SERVER_TIME_FIELD})
_RETIRED = frozenset(range(9, 14))  # read_tag, stream, stream_seq, stream_floor, from_store
_DROPPED = _STAMPS | _RETIRED

# committed/duplicate/reused: every conversation; not_member, closed (a dissolved group),
# muted and stale_key (sealed with a key the group replaced): group chats, checked in the
# append's transaction, nothing stored
Outcome = Literal[
    "committed", "duplicate", "reused", "not_member", "closed", "muted", "stale_key", "out_of_order"
]
REFUSALS: frozenset[str] = frozenset({"not_member", "closed", "muted", "stale_key", "out_of_order"})
SYSTEM = int(im_pb2.SYSTEM)


def conv_of_chat(chat: im_pb2.ChatMsg) -> str:
    """The conversation a chat belongs to, from its sender and destination."""
    if chat.dest_type == im_pb2.GROUP:
        return group_conv_id(chat.dest_id)
    return pair_conv_id(chat.from_id, chat.dest_id)


# --- messages and entries -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A chat to append: ``content`` is the serialized ChatMsg as the client sent it (its body
    sealed); ``digest`` (:func:`chat_digest`) tells a resend from a reused id."""

    conv_id: str
    sender: str
    msg_id: int  # uint64
    dest_type: int
    msg_type: int
    content: bytes
    digest: bytes
    key_id: int = 0  # the group key that sealed it (0: a pair key); a group checks it is current
    # the sender's earlier chat (its msg_id) that must be in this conversation's timeline
    # before this one may be (0: none; ChatMsg.after_id)
    after_id: int = 0
    # ``content`` was serialized here (new_message) from a parsed chat with its stamps, after_id
    # and unknown fields cleared: well formed and with nothing for :func:`stamp` to drop, so the
    # writer need not walk its bytes in Python twice per message (a fifth of its time at load)
    bare: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    """A committed message at its place in a timeline; ``content`` carries the stamps."""

    conv_id: str
    seq: int
    sender: str
    msg_id: int
    server_time: int  # ms since the epoch, never below an earlier seq's
    content: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    """``committed``: stored now at ``entry.seq``; ``duplicate``: a resend of ``entry``, stored
    before (or earlier in the same batch), nothing new stored; ``reused``: the sender's id
    belongs to another message (``entry``, the one stored), nothing stored. A group chat the
    group refused, or a chat whose ``after_id`` is not in its timeline (``out_of_order``), is
    one of :data:`REFUSALS`: ``entry.seq`` 0, its content unstamped."""

    entry: Entry
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class ConvSummary:
    """One conversation as one of its members sees it (the REST list, ConvState later)."""

    conv_id: str
    dest_type: int
    peer_id: str  # SINGLE: the other user; GROUP: the group id
    last_seq: int
    last: Entry | None  # the message at last_seq; None once retention removed it
    read_seq: int  # the member's READ cursor, shared by its devices
    delivered_seq: int  # the asking device's DELIVERED cursor (0 when no device was named)
    peer_read_seq: int
    peer_delivered_seq: int  # the highest over the peer's devices
    unread: int  # messages from others after read_seq, at most UNREAD_CAP
    changed: int  # ms: the last message or cursor move this member should hear about
    # the first seq still stored: 1 until retention removes a prefix, last_seq + 1 once it
    # removed everything (nothing left to sync)
    min_seq: int = 1
    # GROUP, after the member left or was removed: the last seq they may read (0: a member)
    max_seq: int = 0


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of a group's timeline a user may read: from the seq of the event that let
    them in (CREATED, JOINED) to the one that let them out (LEFT, REMOVED), both included;
    ``to_seq`` 0 while they are a member."""

    from_seq: int
    to_seq: int = 0

    def covers(self, seq: int) -> bool:
        return self.from_seq <= seq and (self.to_seq == 0 or seq <= self.to_seq)


@dataclass(frozen=True, slots=True)
class Receipts:
    """Who of the members at ``seq`` (their spans cover it; the sender left out) has it:
    counted in full, listed up to the caller's bound."""

    seq: int
    members: int
    read: int
    delivered: int
    read_by: list[str]
    delivered_to: list[str]


@dataclass(frozen=True, slots=True)
class CursorMove:
    """A member's cursor to merge: ``kind`` is ``im_pb2.READ`` (the member's, shared by its
    devices) or ``im_pb2.DELIVERED`` (``device_id``'s, the member's being the best of them)."""

    conv_id: str
    user_id: str
    kind: int
    seq: int
    device_id: str = ""


@dataclass(frozen=True, slots=True)
class CursorResult:
    """What a merge did. ``member``: the user is in the conversation (when not, nothing was
    stored and the rest is 0). ``seq``: the member's cursor as it now stands (READ: read_seq;
    DELIVERED: the best over its devices), which is what its peers are told. ``moved``: that
    cursor went up just now, so the peers must be told (a repeat or a lower one: False).
    ``device_seq``: DELIVERED, the device's own cursor as it now stands (READ: 0)."""

    seq: int
    moved: bool
    member: bool
    device_seq: int = 0


def conv_ref(conv_id: str) -> ConvRef | None:
    """The parsed conversation id, or None for a string that is none."""
    try:
        return parse_conv_id(conv_id)
    except ValueError:
        return None


def resend_outcome(stored_digest: bytes, digest: bytes) -> Outcome:
    """What a message whose identity is taken is: a resend, or a reuse of the id."""
    return "duplicate" if stored_digest == digest else "reused"


def message_problem(m: NewMessage) -> str | None:
    """Why ``m`` can never be appended (so retrying is pointless), or None when it fits."""
    try:
        ref = parse_conv_id(m.conv_id)
    except ValueError as exc:
        return str(exc)
    if not USER_ID.fullmatch(m.sender):
        return "sender is not a user id"
    if ref.dest_type == SINGLE and m.sender not in ref.members:
        return f"sender {m.sender} is not in {m.conv_id}"
    if m.msg_type == SYSTEM:
        return "SYSTEM messages are made by the server only"
    if m.dest_type != ref.dest_type:
        return f"dest_type {m.dest_type} does not match {m.conv_id}"
    if not 0 <= m.msg_id < U64:
        return "msg_id is not a uint64"
    if not 0 <= m.msg_type < 1 << 31:
        return "msg_type out of range"
    if m.after_id and not 0 < m.after_id < m.msg_id:
        return "after_id must name an earlier chat (an id below msg_id)"
    if len(m.digest) != DIGEST_SIZE:
        return f"digest must be {DIGEST_SIZE} bytes"
    if len(m.content) > MAX_CONTENT - 200:  # room for the stamps
        return "content too large"
    if not m.bare and not _well_formed(m.content):
        return "content is not a protobuf message"
    return None


def chat_digest(chat: im_pb2.ChatMsg) -> bytes:
    """SHA-256 over what makes a chat the message it is: destination, types, body, file
    reference and the sender's time. Ids, stamps and hop-by-hop fields are left out, so a resend
    has the same digest and a reused id with other content does not."""
    h = hashlib.sha256(b"im-chat-digest-1")
    for part in (
        chat.dest_id.encode(),
        struct.pack(">iiq", chat.dest_type, chat.msg_type, chat.create_time),
        chat.body,
        chat.file.id.encode(),
        struct.pack(">Q", chat.file.size),
        chat.file.checksum.encode(),
    ):
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    return h.digest()


def new_message(chat: im_pb2.ChatMsg, content: bytes | None = None) -> NewMessage:
    """The NewMessage for a chat its sender sent (``content``: its bytes as received, default
    the chat serialized without its ``after_id``, a sending hint nobody else needs). A chat with
    no unknown fields (all of them, past the connector's edge) is serialized ``bare``: without
    the stamps too, which the store would drop anyway. One that has some (a newer peer's) keeps
    them for :func:`stamp` to sort out, as received."""
    after_id = chat.after_id
    bare = content is None and not len(UnknownFieldSet(chat))
    if content is None:
        if after_id or bare:
            chat = copy_chat(chat)
            for name in _BARE_CLEARED if bare else ("after_id",):
                chat.ClearField(name)
        content = chat.SerializeToString()
    return NewMessage(
        conv_id=conv_of_chat(chat),
        sender=chat.from_id,
        msg_id=chat.id,
        dest_type=chat.dest_type,
        msg_type=chat.msg_type,
        content=content,
        digest=chat_digest(chat),
        key_id=chat.key_id,
        after_id=after_id,
        bare=bare,
    )


_BARE_CLEARED = ("after_id", "conv_id", "seq", "server_time")  # a bare content has none


def copy_chat(chat: im_pb2.ChatMsg) -> im_pb2.ChatMsg:
    out = im_pb2.ChatMsg()
    out.CopyFrom(chat)
    return out


# --- wire stamps --------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= U64 - 1  # int64 as protobuf writes it: two's complement, 10 bytes when negative
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each top-level field of a serialized message."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:  # groups (3, 4) are not in proto3, and 6, 7 do not exist
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        out.append((number, start, pos))
    return out


def _well_formed(data: bytes) -> bool:
    try:
        _fields(data)
    except ValueError:
        return False
    return True


def stamp(content: bytes, conv_id: str, seq: int, server_time: int, *, bare: bool = False) -> bytes:
    """``content`` with ChatMsg's conv_id, seq and server_time set, every other field kept as
    it was but the retired 9..13; whatever the sender put in those is dropped. ``bare``: the
    content has none of those (NewMessage.bare), so it is kept whole without being walked."""
    if bare:
        kept = content
    else:
        kept = b"".join(
            content[start:end] for number, start, end in _fields(content) if number not in _DROPPED
        )
    conv = conv_id.encode()
    return b"".join(
        (
            kept,
            _varint(_CONV_ID_FIELD << 3 | 2),
            _varint(len(conv)),
            conv,
            _varint(_SEQ_FIELD << 3),
            _varint(seq),
            _varint(_SERVER_TIME_FIELD << 3),
            _varint(server_time),
        )
    )
