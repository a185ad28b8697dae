"""Renaming user ids from before the canonical rule (common/userids.py) to their canonical form.

Before, ``Alice`` and ``alice`` could be two accounts. Now every lookup folds the id first, so
an account stored as ``Alice`` would be unreachable. :func:`canonicalize_user_ids` renames each
such account to its canonical id, in every table that names users, when that is unambiguous:

- the canonical id is free and no other stored id folds to it: the account and everything that
  names it (relations, requests, blocks, profile, admin marks, uploads and grants, offline rows)
  are renamed, and every token issued to the old spelling is revoked (a cutoff on the old id),
  so its owner logs in again, with either spelling, and gets the canonical id;
- otherwise (``Alice`` and ``alice`` both exist, or ``Alice`` and ``ALICE``) nothing of them is
  renamed: merging two people's accounts is not a migration's call. The account that already
  has the canonical id keeps working; the others cannot log in until an operator deletes the
  duplicates (``im admin delete``), after which the next ``im migrate`` renames what is left.
  Each such group is logged as a warning and listed in ``im migrate``'s output.

Ids before the rule were ASCII (``[A-Za-z0-9_.-]``), so the only ids to rename are those with
capitals, found in SQL without reading every row. Runs at every migrate (and every embedded
start); with nothing to rename it is one indexed query.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from common.db import Database
from common.userids import canonical_or_none

log = logging.getLogger(__name__)

# (table, column) pairs naming a user, besides im_user and im_relation, which are special
_COLUMNS = [
    ("im_token_cutoff", "user_id"),
    ("im_user_profile", "user_id"),
    ("im_friend_request", "from_id"),
    ("im_friend_request", "to_id"),
    ("im_block", "user_id"),
    ("im_block", "blocked_id"),
    ("im_admin", "user_id"),
    ("im_user_disabled", "user_id"),
    ("im_file", "owner"),
    ("im_file_grant", "user_id"),
    ("im_offline", "to_user_id"),
    ("im_offline", "from_id"),
]
# tokens of a renamed spelling are refused this long; longer than any token lives
_CUTOFF_FOR = 400 * 24 * 3600


@dataclass
class IdReport:
    renamed: dict[str, str] = field(default_factory=dict)  # old -> canonical
    collisions: dict[str, list[str]] = field(default_factory=dict)  # canonical -> stored ids
    invalid: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.renamed:
            out.append(f"users: {len(self.renamed)} user ids renamed to their canonical form")
        for canonical, ids in sorted(self.collisions.items()):
            out.append(
                f"users: NOT renamed, {', '.join(ids)} all fold to {canonical!r}: delete the "
                "duplicates (im admin delete), then run im migrate again"
            )
        if self.invalid:
            out.append(f"users: ids with no canonical form, left alone: {', '.join(self.invalid)}")
        return out


async def _tables(db: Database) -> set[str]:
    if db.dialect == "sqlite":
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await db.fetchall(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        )
    return {str(r[0]) for r in rows}


async def canonicalize_user_ids(db: Database) -> IdReport:
    report = IdReport()
    rows = await db.fetchall("SELECT user_id FROM im_user WHERE user_id <> LOWER(user_id)")
    if not rows:
        return report
    groups: dict[str, list[str]] = defaultdict(list)
    for (raw,) in rows:
        old = str(raw)
        canonical = canonical_or_none(old)
        if canonical is None:
            report.invalid.append(old)
        else:
            groups[canonical].append(old)
    tables = await _tables(db)
    update = "UPDATE OR IGNORE" if db.dialect == "sqlite" else "UPDATE IGNORE"
    for canonical, olds in sorted(groups.items()):
        taken = await db.fetchone("SELECT 1 FROM im_user WHERE user_id = ?", (canonical,))
        if taken is not None or len(olds) > 1:
            ids = sorted(olds + ([canonical] if taken is not None else []))
            report.collisions[canonical] = ids
            log.warning("user ids %s fold to %r: left as they are", ids, canonical)
            continue
        (old,) = olds
        if await db.execute("UPDATE im_user SET user_id = ? WHERE user_id = ?", (canonical, old)):
            await _rename_everywhere(db, tables, update, old, canonical)
            report.renamed[old] = canonical
            log.info("user id %r renamed to %r", old, canonical)
    return report


async def _rename_everywhere(
    db: Database, tables: set[str], update: str, old: str, new: str
) -> None:
    await _rename_relations(db, old, new)
    for table, column in _COLUMNS:
        if table not in tables:
            continue
        # a row the new id already has wins (it can only be a leftover of no account: the new
        # id was free); the old id's duplicate of it goes
        await db.execute(f"{update} {table} SET {column} = ? WHERE {column} = ?", (new, old))
        await db.execute(f"DELETE FROM {table} WHERE {column} = ?", (old,))
    now = int(time.time())
    await db.execute(
        "INSERT INTO im_token_cutoff (user_id, before_ms, expires) VALUES (?, ?, ?)",
        (old, now * 1000 + 1000, now + _CUTOFF_FOR),
    )


async def _rename_relations(db: Database, old: str, new: str) -> None:
    """Relations store their pair ordered, and the new spelling may sort elsewhere: each row is
    written again under its new pair, with its key."""
    rows = await db.fetchall(
        "SELECT id, user_id1, user_id2, encrypt_key, created FROM im_relation"
        " WHERE user_id1 = ? OR user_id2 = ?",
        (old, old),
    )
    insert = (
        "INSERT OR IGNORE INTO im_relation"
        if db.dialect == "sqlite"
        else "INSERT IGNORE INTO im_relation"
    )
    for row_id, u1, u2, key, created in rows:
        other = str(u2) if str(u1) == old else str(u1)
        a, b = (new, other) if new < other else (other, new)
        await db.execute("DELETE FROM im_relation WHERE id = ?", (row_id,))
        await db.execute(
            f"{insert} (user_id1, user_id2, encrypt_key, created) VALUES (?, ?, ?, ?)",
            (a, b, key, created),
        )
