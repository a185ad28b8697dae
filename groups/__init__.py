"""Group chat (issue 14): groups, roles, invitations by consent and group keys; membership
changes live in the group's timeline (timeline/groupsql.py). docs/groups.md has the design."""

from __future__ import annotations

from groups.memstore import MemoryGroupStore
from groups.model import Change, GroupKey, GroupRow, GroupView, MemberRow, MyGroup, Refusal, Refused
from groups.store import GroupStore, SQLGroupStore

__all__ = [
    "Change",
    "GroupKey",
    "GroupRow",
    "GroupStore",
    "GroupView",
    "MemberRow",
    "MemoryGroupStore",
    "MyGroup",
    "Refusal",
    "Refused",
    "SQLGroupStore",
]
