"""Webhook event names and payloads: what a receiver gets, and nothing more.

Every request body is one JSON object::

    {"id": "<delivery id>", "type": "<event>", "time": <unix ms>, "node": "<process>",
     "data": {...}}

``id`` is unique per event and the same on every retry of it (also sent as ``X-IM-Delivery``).
Rules: no payload carries a message body, a file key or a password: message bodies are sealed
by the clients and the servers could not open them anyway; ids are strings (64-bit message ids
do not survive a JavaScript number). Group events are defined here so receivers can be written
now; the group code emits them when groups exist.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from common.ids import conversation_key
from proto import im_pb2

MESSAGE_OFFLINE = "message.offline"
MESSAGE_SENT = "message.sent"
MESSAGE_BEFORE_SEND = "message.before_send"
USER_REGISTERED = "user.registered"
FRIEND_ACCEPTED = "friend.accepted"
GROUP_CREATED = "group.created"
GROUP_MEMBER_ADDED = "group.member_added"
GROUP_MEMBER_REMOVED = "group.member_removed"
GROUP_MEMBER_ROLE_CHANGED = "group.member_role_changed"

# the events IM_WEBHOOK_URL may receive (message.before_send has its own URL)
EVENTS = frozenset(
    {
        MESSAGE_OFFLINE,
        MESSAGE_SENT,
        USER_REGISTERED,
        FRIEND_ACCEPTED,
        GROUP_CREATED,
        GROUP_MEMBER_ADDED,
        GROUP_MEMBER_REMOVED,
        GROUP_MEMBER_ROLE_CHANGED,
    }
)

Data = dict[str, Any]


def new_delivery_id() -> str:
    return "evt_" + secrets.token_hex(12)


def envelope(event: str, data: Data, node: str, delivery_id: str = "") -> bytes:
    """The request body of one event."""
    body = {
        "id": delivery_id or new_delivery_id(),
        "type": event,
        "time": int(time.time() * 1000),
        "node": node,
        "data": data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def conversation_id(a: str, b: str) -> str:
    """A 1-1 conversation as receivers see it: both user ids, sorted, joined by ``:`` (user ids
    cannot contain one)."""
    return conversation_key(a, b).replace("\x00", ":")


def message_data(chat: im_pb2.ChatMsg, *, seq: int | None = None) -> Data:
    """``data`` of message.offline, message.sent and message.before_send: who, to whom, which
    message, what kind and how big; never its (sealed) body. For a push gateway this is what a
    notification can say: "new message from <from_id>"."""
    kind: Literal["text", "file"] = "file" if chat.msg_type == im_pb2.FILE else "text"
    data: Data = {
        "msg_id": str(chat.id),
        "from_id": chat.from_id,
        "to_id": chat.dest_id,
        "dest_type": "group" if chat.dest_type == im_pb2.GROUP else "single",
        "conversation": conversation_id(chat.from_id, chat.dest_id),
        "msg_type": kind,
        "body_bytes": len(chat.body),
        "created_ms": chat.create_time,
    }
    if seq is not None:
        data["seq"] = seq
    return data


def user_registered(user_id: str, display_name: str, provider: str) -> Data:
    return {"user_id": user_id, "display_name": display_name, "provider": provider}


def friend_accepted(user_id: str, friend_id: str) -> Data:
    """``user_id`` and ``friend_id`` are friends now; ``user_id`` made it so (accepted)."""
    return {"user_id": user_id, "friend_id": friend_id}


def group_member(group_id: str, user_id: str, by: str, role: str = "member") -> Data:
    """``data`` of the group.member_* events: whose membership changed, by whom, its role."""
    return {"group_id": group_id, "user_id": user_id, "by": by, "role": role}
