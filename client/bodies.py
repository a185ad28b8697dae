"""Sealing and opening chat bodies: the only place the library touches plaintext.

A body is sealed with the pair key (a group's: the group key named by ``key_id``) and bound to
(message id, sender, recipient or group id) (common/crypto.py), so neither the server nor
anyone else can move it to another message. A body that fails to open, or a FILE message whose
sealed description names another upload than the server-visible reference, becomes an
``UNREADABLE`` ServerError: it is never shown. A SYSTEM message (a group's membership change)
is not sealed: the server made it, and its SystemBody is read as it is.
"""

from __future__ import annotations

import time

from google.protobuf.message import DecodeError

from client.events import Message, ServerError, SystemInfo
from client.files import FileInfo, SealedUpload
from common.crypto import SealError, open_sealed, seal
from proto import im_pb2


def text_chat(
    key: str, msg_id: int, me: str, to: str, text: str, *, group_key_id: int = 0
) -> im_pb2.ChatMsg:
    """A TEXT chat to ``to`` with ``text`` sealed under the pair ``key``; with
    ``group_key_id``, ``to`` is a group id and ``key`` that group's key ``group_key_id``."""
    return im_pb2.ChatMsg(
        id=msg_id,
        from_id=me,
        dest_id=to,
        dest_type=im_pb2.GROUP if group_key_id else im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=seal(key, msg_id, me, to, text.encode()),
        create_time=int(time.time() * 1000),
        key_id=group_key_id,
    )


def file_chat(
    key: str,
    msg_id: int,
    me: str,
    to: str,
    up: SealedUpload,
    name: str,
    *,
    group_key_id: int = 0,
) -> im_pb2.ChatMsg:
    """A FILE chat for an upload: the file's key and name only inside the sealed body
    (``group_key_id`` as for :func:`text_chat`)."""
    inner = im_pb2.FileBody(
        file_id=up.ref.file_id,
        checksum=up.ref.checksum,
        size=up.plain_size,
        name=name,
        key=up.key,
        sha256=up.sha256,
    )
    return im_pb2.ChatMsg(
        id=msg_id,
        from_id=me,
        dest_id=to,
        dest_type=im_pb2.GROUP if group_key_id else im_pb2.SINGLE,
        msg_type=im_pb2.FILE,
        body=seal(key, msg_id, me, to, inner.SerializeToString()),
        create_time=int(time.time() * 1000),
        file=im_pb2.FileRef(id=up.ref.file_id, size=up.ref.size, checksum=up.ref.checksum),
        key_id=group_key_id,
    )


def open_chat(chat: im_pb2.ChatMsg, key: str | None, *, own: bool = False) -> Message | ServerError:
    """The chat with its body opened with the pair ``key``, or UNREADABLE. A SYSTEM chat
    needs no key: its body is the server's SystemBody."""
    if chat.msg_type == im_pb2.SYSTEM:
        return _system(chat)
    file: FileInfo | None = None
    try:
        if key is None:
            raise SealError(f"no pair key for {chat.from_id} -> {chat.dest_id}")
        plain = open_sealed(key, chat.id, chat.from_id, chat.dest_id, chat.body)
        if chat.msg_type == im_pb2.FILE:
            file = _file_info(chat, plain)
            text = file.name
        else:
            text = plain.decode()
    except (SealError, UnicodeDecodeError) as exc:
        return ServerError("UNREADABLE", str(exc), chat.id, chat.seq, chat.conv_id)
    return Message(
        msg_id=chat.id,
        from_id=chat.from_id,
        dest_id=chat.dest_id,
        text=text,
        msg_type=chat.msg_type,
        create_time=chat.create_time,
        file=file,
        conv_id=chat.conv_id,
        seq=chat.seq,
        server_time=chat.server_time,
        own=own,
    )


def _system(chat: im_pb2.ChatMsg) -> Message | ServerError:
    sb = im_pb2.SystemBody()
    try:
        sb.ParseFromString(chat.body)
        event = im_pb2.SystemBody.Event.Name(sb.event)
    except (DecodeError, ValueError):
        return ServerError("UNREADABLE", "not a SystemBody", chat.id, chat.seq, chat.conv_id)
    info = SystemInfo(event, sb.actor, sb.target, sb.text, sb.key_id, sb.until)
    return Message(
        msg_id=chat.id,
        from_id=chat.from_id,
        dest_id=chat.dest_id,
        text=describe(info),
        msg_type=chat.msg_type,
        create_time=chat.create_time,
        conv_id=chat.conv_id,
        seq=chat.seq,
        server_time=chat.server_time,
        system=info,
    )


_SAYS = {
    "CREATED": "{actor} created the group",
    "JOINED": "{target} joined",
    "LEFT": "{target} left",
    "REMOVED": "{actor} removed {target}",
    "ROLE": "{actor} made {target} {text}",
    "MUTED": "{actor} muted {target}",
    "DISSOLVED": "{actor} dissolved the group",
    "KEY_ROTATED": "the group key changed",
    "NOTICE": "{text}",
    "WITHHELD": "",
    "RENAMED": "{actor} renamed the group to {text}",
}


def describe(info: SystemInfo) -> str:
    """A line an app may show as it is ("bob joined"); ``Message.system`` has the parts."""
    if info.event == "MUTED" and not info.until:
        return f"{info.actor} unmuted {info.target}"
    says = _SAYS.get(info.event, info.event)
    return says.format(actor=info.actor, target=info.target, text=info.text)


def _file_info(chat: im_pb2.ChatMsg, plain: bytes) -> FileInfo:
    """The file of a FILE chat, from its opened body; the server-visible reference must name the
    same upload, or the server (or a forger) swapped it."""
    inner = im_pb2.FileBody()
    try:
        inner.ParseFromString(plain)
    except DecodeError:
        raise SealError("file message body is not a FileBody") from None
    ref = chat.file
    if (inner.file_id, inner.checksum) != (ref.id, ref.checksum) or len(inner.key) != 32:
        raise SealError("file reference does not match the sealed file description")
    return FileInfo(
        file_id=ref.id,
        size=ref.size,
        checksum=ref.checksum,
        name=safe_name(inner.name),
        plain_size=inner.size,
        sha256=inner.sha256,
        key=inner.key,
    )


def safe_name(name: str) -> str:
    """The sender's file name without directories or control characters: safe to show, or to
    join to a download folder."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())
    return base if base not in ("", ".", "..") else "file"
