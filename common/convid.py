"""Conversation ids: what names a timeline, shared by the servers and the client library.

- ``p:<a>:<b>``: the 1-1 conversation of users ``a`` and ``b``, with ``a < b`` (compared as
  Python compares ``str``, which is what MySQL's binary collation does too), so both sides name
  it the same. User ids match ``^[A-Za-z0-9_.-]{1,64}$``: ``:`` never occurs in one, so the id
  splits back into its members without escaping;
- ``g:<group id>``: a group conversation (reserved: groups come later).

The server derives a chat's conversation from its sender and destination; it never takes one
from a client. Imports only ``proto``, so the client library can ship with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proto import im_pb2

USER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ID_MAX_LEN = 64  # user ids, group ids and device ids: VARCHAR(64) like im_user's
CONV_ID_MAX_LEN = 2 + ID_MAX_LEN + 1 + ID_MAX_LEN  # "p:" a ":" b

SINGLE = int(im_pb2.SINGLE)
GROUP = int(im_pb2.GROUP)


def pair_conv_id(a: str, b: str) -> str:
    """The 1-1 conversation of ``a`` and ``b``, the same from either side."""
    for user in (a, b):
        if not USER_ID.fullmatch(user):
            raise ValueError(f"not a user id: {user!r}")
    if a == b:
        raise ValueError("a 1-1 conversation needs two different users")
    low, high = sorted((a, b))
    return f"p:{low}:{high}"


def group_conv_id(group_id: str) -> str:
    if not USER_ID.fullmatch(group_id):
        raise ValueError(f"not a group id: {group_id!r}")
    return f"g:{group_id}"


@dataclass(frozen=True, slots=True)
class ConvRef:
    """A parsed conversation id."""

    conv_id: str
    dest_type: int  # SINGLE or GROUP
    members: tuple[str, ...]  # SINGLE: the two users, in order; GROUP: () (kept elsewhere)
    group_id: str = ""

    def peer_of(self, user_id: str) -> str:
        """The other side for ``user_id``: the other member of a pair, a group's id."""
        if self.dest_type == GROUP:
            return self.group_id
        a, b = self.members
        if user_id not in (a, b):
            raise ValueError(f"{user_id!r} is not in {self.conv_id}")
        return b if user_id == a else a


def parse_conv_id(conv_id: str) -> ConvRef:
    """The conversation ``conv_id`` names; ValueError for anything that is not one."""
    kind, sep, rest = conv_id.partition(":")
    if sep and kind == "p":
        a, sep, b = rest.partition(":")
        if sep and USER_ID.fullmatch(a) and USER_ID.fullmatch(b) and a < b:
            return ConvRef(conv_id, SINGLE, (a, b))
    elif sep and kind == "g" and USER_ID.fullmatch(rest):
        return ConvRef(conv_id, GROUP, (), rest)
    raise ValueError(f"not a conversation id: {conv_id[:150]!r}")


def is_conv_id(conv_id: str) -> bool:
    try:
        parse_conv_id(conv_id)
    except ValueError:
        return False
    return True


def pair_members(conv_id: str) -> tuple[str, str]:
    """The two users of a 1-1 conversation."""
    ref = parse_conv_id(conv_id)
    if ref.dest_type != SINGLE:
        raise ValueError(f"{conv_id} is not a 1-1 conversation")
    a, b = ref.members
    return a, b
