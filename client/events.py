"""What the client library hands the application: messages, receipts and errors.

Every event names its place in a conversation (``conv_id``, ``seq``) when it has one, so an
application can show it, mark it read (``IMClient.mark_read(conv_id, seq)``) or page history
around it without keeping a table of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from client.files import FileInfo


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


@dataclass(frozen=True, slots=True)
class Receipt:
    kind: str  # "SENT" | "DELIVERED" | "READ", each at most once per message sent here
    peer: str  # the other side of the conversation
    msg_id: int  # the acknowledged message (one this library sent)
    seq: int = 0
    conv_id: str = ""


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str  # an ErrorCode name, or UNREADABLE / LOGIN_REFUSED made by the library
    detail: str
    msg_id: int
    seq: int = 0  # an UNREADABLE message: its place in the timeline
    conv_id: str = ""


Event = Message | Receipt | ServerError
