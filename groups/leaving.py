"""Taking an account out of every group before it is deleted.

Why: a group's membership, spans and keys are keyed by user id, and a deleted id may be
registered again. Whoever took it must not inherit the groups: not their role, not their
keys, not the history the old account could read, not a seat that counts against the size.
So the admin delete first has the account leave each group the way a user would (an event in
the timeline, a new key, the member gone), handing ownership on first, and dissolving a group
that would be left with nobody; then the caller removes what is left of the id in the groups'
tables for good (rest_web/admin_store.py ``erase_user``), including spans a group that can no
longer change (dissolved) still holds.
"""

from __future__ import annotations

import logging

from groups.model import MemberRow, Refused
from groups.store import GroupStore

log = logging.getLogger(__name__)

MAX_GROUPS = 100_000  # a bound on the loop, far past any real account


def heir(members: list[MemberRow], user_id: str, now_ms: int) -> str | None:
    """Who takes over a group ``user_id`` owns: a joined admin before a joined member, one not
    muted before a muted one, in the order listed; None when nobody else has joined."""
    joined = [m for m in members if m.user_id != user_id and m.state == "member"]
    joined.sort(key=lambda m: (m.role != "admin", m.muted_until > now_ms))
    return joined[0].user_id if joined else None


async def leave_all(store: GroupStore, user_id: str, now_ms: int) -> int:
    """Leave (or decline) every group ``user_id`` is in or invited to; how many it left."""
    left = 0
    seen: set[str] = set()
    while len(seen) < MAX_GROUPS:
        mine = [g for g in await store.groups_of(user_id) if g.group.group_id not in seen]
        if not mine:
            break
        for g in mine:
            gid = g.group.group_id
            seen.add(gid)
            try:
                if g.state == "member" and g.role == "owner":
                    view = await store.view(gid)
                    taker = heir(view.members, user_id, now_ms)
                    if taker is None:
                        await store.dissolve(gid, user_id)
                        continue
                    await store.set_role(gid, user_id, taker, "owner")
                await store.delete_member(gid, user_id, user_id)
                left += 1
            except Refused as exc:  # dissolved meanwhile, already gone: the erase covers it
                log.info("deleting %s: group %s: %s", user_id, gid, exc.why.value)
    return left
