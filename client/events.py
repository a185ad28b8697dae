"""What the client library hands the application: messages, receipts and errors.

Every event names its place in a conversation (``conv_id``, ``seq``) when it has one, so an
application can show it, mark it read (``IMClient.mark_read(conv_id, seq)``) or page history
around it without keeping a table of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from client.files import FileInfo


@dataclass(frozen=True, slots=True)
class SystemInfo:
    """What a SYSTEM message of a group says happened ("bob joined"): made by the server, in
    the clear. ``event`` is a ``SystemBody.Event`` name (CREATED, JOINED, LEFT, REMOVED, ROLE,
    MUTED, KEY_ROTATED, RENAMED, DISSOLVED, ...)."""

    event: str
    actor: str
    target: str
    text: str = ""  # ROLE: the role; RENAMED, CREATED: the name
    key_id: int = 0  # KEY_ROTATED: the key new messages are sealed with
    until: int = 0  # MUTED: ms since the epoch (0: lifted)


@dataclass(frozen=True, slots=True)
class Message:
    msg_id: int
    from_id: str
    dest_id: str
    text: str  # a FILE message: the file's name
    msg_type: int
    create_time: int
    file: FileInfo | None = None  # FILE messages only: pass the message to IMClient.download
    conv_id: str = ""
    seq: int = 0  # its place in the conversation's timeline
    server_time: int = 0
    own: bool = False  # sent by another device of this user
    # a group's membership change (msg_type SYSTEM, from_id "#<group id>", msg_id its seq)
    system: SystemInfo | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    kind: str  # "SENT" | "DELIVERED" | "READ", each at most once per message sent here;
    # "RESEALED": a group chat refused STALE_KEY was sealed again as ``new_msg_id``
    peer: str  # the other side of the conversation (a group: its id)
    msg_id: int  # the acknowledged message (one this library sent)
    seq: int = 0
    conv_id: str = ""
    new_msg_id: int = 0  # RESEALED only: the id the content goes on under (its SENT names it)


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str  # an ErrorCode name, or UNREADABLE / LOGIN_REFUSED made by the library
    detail: str
    msg_id: int
    seq: int = 0  # an UNREADABLE message: its place in the timeline
    conv_id: str = ""


@dataclass(frozen=True, slots=True)
class GroupReceipt:
    """How many members of a group have DELIVERED and READ up to ``seq`` (the server's count
    from their cursors); the names are ``IMClient.read_by(group_id, seq)``."""

    conv_id: str
    seq: int
    members: int
    delivered: int
    read: int


@dataclass(frozen=True, slots=True)
class Typing:
    """``user_id`` is typing in ``conv_id`` (or stopped). Ephemeral: a start holds for
    :data:`TYPING_HOLDS` seconds unless repeated, so an app clears it by itself when no stop
    comes (the typist's connection may just have gone)."""

    conv_id: str
    user_id: str
    typing: bool


@dataclass(frozen=True, slots=True)
class Presence:
    """A friend's presence: ``online`` (any device connected) or not, and when the last device
    left (``last_seen``, ms since the epoch; 0 when unknown or hidden by the friend)."""

    user_id: str
    online: bool
    last_seen: int = 0


TYPING_HOLDS = 6.0  # seconds a typing start lasts without a repeat (proto/im.proto Typing)

Event = Message | Receipt | ServerError | GroupReceipt | Typing | Presence
