"""What a group is made of, as the stores and the rules pass it around (docs/groups.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from proto import im_pb2

Role = Literal["owner", "admin", "member"]
State = Literal["invited", "member"]
ROLES: tuple[Role, ...] = ("owner", "admin", "member")
NAME_MAX = 128  # characters of a group's name
DEFAULT_MAX_SIZE = 10_000  # members plus pending invitations (IM_GROUP_MAX_SIZE)
GROUP_ID_HEX = 16  # a group id is this many hex digits, made by the server


@dataclass(frozen=True, slots=True)
class GroupRow:
    group_id: str
    name: str
    owner: str
    created: int  # ms
    dissolved: int  # ms; 0 while the group lives
    key_id: int  # the current key


@dataclass(frozen=True, slots=True)
class MemberRow:
    """A member, or an invitation (``state`` invited: no span, reads nothing, posts nothing)."""

    user_id: str
    role: Role
    state: State
    muted_until: int = 0  # ms; 0 or past: not muted
    invited_by: str = ""
    changed: int = 0  # ms


@dataclass(frozen=True, slots=True)
class GroupKey:
    """A key and the seqs it seals: ``from_seq`` up to the next key's, ``to_seq`` 0 for the
    current one."""

    key_id: int
    key: str  # AES-256-GCM, base64url (common/crypto.py)
    from_seq: int
    to_seq: int = 0


@dataclass(frozen=True, slots=True)
class MyGroup:
    group: GroupRow
    role: Role
    state: State


@dataclass(frozen=True, slots=True)
class GroupView:
    """A group as one of its members sees it: a page of members, and how many there are."""

    group: GroupRow
    members: list[MemberRow]
    size: int  # members plus pending invitations


class Refusal(Enum):
    """Why a change is refused; the REST layer maps each to its status."""

    NOT_FOUND = "no such group"  # or not yours: the same answer
    NO_MEMBER = "no such member or invitation"
    FORBIDDEN = "your role does not allow this"
    DISSOLVED = "the group was dissolved"
    FULL = "the group is full"
    OWNER_STAYS = "the owner cannot leave or be removed: hand ownership over first"
    SELF = "not on yourself"
    NOT_JOINED = "only a member who joined can take this role"


class Refused(Exception):
    def __init__(self, why: Refusal) -> None:
        super().__init__(why.value)
        self.why = why


@dataclass(frozen=True, slots=True)
class Hook:
    """A webhook event to emit once the change committed (hooks/events.py)."""

    event: str
    user_id: str
    by: str
    role: str = "member"


@dataclass
class Plan:
    """What a decided change writes, in one transaction: member rows, the group row, the
    system messages (in order), and a new key when ``rotate`` (its KEY_ROTATED is the last
    event)."""

    outcome: str
    upserts: list[MemberRow] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    events: list[im_pb2.SystemBody] = field(default_factory=list)
    rotate: bool = False
    name: str | None = None
    owner: str | None = None
    dissolve: bool = False
    hooks: list[Hook] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Change:
    """A change as committed: what happened, the seqs of its system messages."""

    group_id: str
    outcome: str  # invited, member, left, removed, declined, withdrawn, role, owner, muted, ...
    seqs: list[int]
    hooks: list[Hook]
