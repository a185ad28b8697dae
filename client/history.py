"""Timelines as REST hands them out: conversation summaries and stored chats, still sealed.

The client library opens them (IMClient.conversations / IMClient.history) with the pair key,
exactly as it opens a pushed chat. An answer that does not have the documented shape is a
:class:`client.rest.RestError`, never a half-read object.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proto import im_pb2

if TYPE_CHECKING:
    from client.events import Message, ServerError


class MalformedAnswer(ValueError):
    """A field is missing or of the wrong kind."""


@dataclass(frozen=True, slots=True)
class StoredChat:
    """A message at its place in a timeline; ``chat.body`` is sealed."""

    conv_id: str
    seq: int
    server_time: int
    chat: im_pb2.ChatMsg


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    conv_id: str
    type: str  # "SINGLE" or "GROUP"
    peer_id: str
    last_seq: int
    unread: int
    read_seq: int
    delivered_seq: int  # this device's
    peer_read_seq: int
    peer_delivered_seq: int
    changed: int
    last: StoredChat | None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation with its last message opened (a Message, or UNREADABLE)."""

    info: ConversationInfo
    last: Message | ServerError | None


def _enum(enum: Any, value: object) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return int(enum.Value(text))
    except ValueError:
        raise MalformedAnswer(f"unknown {enum.DESCRIPTOR.name} {text!r}") from None


def stored_chat(data: Any) -> StoredChat:
    """A StoredChat from one element of ``GET /conversations/{id}/messages``."""
    try:
        chat = im_pb2.ChatMsg(
            id=int(data["id"]),
            from_id=str(data["from_id"]),
            dest_id=str(data["dest_id"]),
            dest_type=_enum(im_pb2.DestType, data["dest_type"]),  # type: ignore[arg-type]
            msg_type=_enum(im_pb2.MsgType, data["msg_type"]),  # type: ignore[arg-type]
            body=base64.b64decode(str(data["body"]), validate=True),
            create_time=int(data["create_time"]),
        )
        chat.key_id = int(data.get("key_id", 0))
        system = data.get("system")
        if system is not None:  # a group's membership change, in the clear
            _system_into(chat, system, str(data["conv_id"]))
        ref = data.get("file")
        if ref is not None:
            chat.file.id, chat.file.size = str(ref["id"]), int(ref["size"])
            chat.file.checksum = str(ref["checksum"])
        return StoredChat(str(data["conv_id"]), int(data["seq"]), int(data["server_time"]), chat)
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise MalformedAnswer(f"not a stored message: {exc}") from None


def _system_into(chat: im_pb2.ChatMsg, system: Any, conv_id: str) -> None:
    """The SystemBody REST spelt out as JSON, back in the chat as a pushed one carries it (sent
    by ``#<group id>``), so both open the same way."""
    sb = im_pb2.SystemBody(
        event=_enum(im_pb2.SystemBody.Event, system["event"]),  # type: ignore[arg-type]
        actor=str(system["actor"]),
        target=str(system["target"]),
        text=str(system.get("text", "")),
        key_id=int(system.get("key_id", 0)),
        until=int(system.get("until", 0)),
    )
    chat.msg_type = im_pb2.SYSTEM
    chat.body = sb.SerializeToString()
    if not chat.from_id and conv_id.startswith("g:"):
        chat.from_id = "#" + conv_id[2:]


def conversation_info(data: Any) -> ConversationInfo:
    """A ConversationInfo from one element of ``GET /conversations``."""
    try:
        last = data["last_message"]
        return ConversationInfo(
            conv_id=str(data["conv_id"]),
            type=str(data["type"]),
            peer_id=str(data["peer_id"]),
            last_seq=int(data["last_seq"]),
            unread=int(data["unread"]),
            read_seq=int(data["read_seq"]),
            delivered_seq=int(data.get("delivered_seq", 0)),
            peer_read_seq=int(data["peer_read_seq"]),
            peer_delivered_seq=int(data["peer_delivered_seq"]),
            changed=int(data.get("changed", 0)),
            last=None if last is None else stored_chat(last),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedAnswer(f"not a conversation: {exc}") from None
