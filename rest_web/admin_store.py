"""Admins, disabled accounts and the admin audit log, over :class:`common.db.Database`.

A migration component of its own (``admin``), apart from ``users``, so that it and the users'
schema evolve without stepping on each other's version numbers. Rules kept here:
- an admin is a row of ``im_admin`` (``im admin grant``) or a user id in ``IM_ADMINS``; it is
  looked up at every admin call, so a revoke takes effect at the next one;
- a disabled account is a row of ``im_user_disabled``: login refuses it; its tokens die by the
  revocation cutoff the admin API sets when disabling (rest_web/admin.py);
- every admin call is one row of ``im_admin_audit`` (who, what, target, when, the answer);
  rows older than ``keep_days`` are removed as new ones come, so the table stays bounded;
- :meth:`AdminStore.erase_user` removes an account and everything REST and the file store keep
  for it, in one place; :meth:`AdminStore.erase_messages` rewrites what it sent in the
  timelines (the SQL is here, not in timeline/, because only an account's deletion needs it).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Literal

from common.db import Database, apply_migrations, require_schema
from proto import im_pb2

COMPONENT = "admin"

_MYSQL_TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
MAX_DETAIL = 1000  # characters of an audit row's detail

# The author a deleted account's messages show: not a user id (ids are [a-z0-9_.-]), so no
# later registration can be it. Each deletion's rows get a ``sender`` of their own
# (``~deleted.<hex>``): the timeline's identity of a message is (sender, msg_id), and two
# deleted accounts' ids may coincide.
DELETED_USER = "~deleted"
TOMBSTONE_TEXT = "message of a deleted user"
ERASE_PAGE = 500  # rows rewritten per statement
DeleteMode = Literal["anonymize", "delete"]

_STEPS: dict[str, list[list[str]]] = {
    "sqlite": [
        [
            "CREATE TABLE IF NOT EXISTS im_admin ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " granted_by VARCHAR(64) NOT NULL,"
            " created BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS im_user_disabled ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " by_user VARCHAR(64) NOT NULL,"
            " reason VARCHAR(255) NOT NULL DEFAULT '',"
            " created BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS im_admin_audit ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " at_ms BIGINT NOT NULL,"
            " actor VARCHAR(64) NOT NULL,"
            " action VARCHAR(64) NOT NULL,"
            " target VARCHAR(255) NOT NULL DEFAULT '',"
            " detail VARCHAR(1024) NOT NULL DEFAULT '',"
            " status INT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS idx_audit_at ON im_admin_audit (at_ms)",
        ]
    ],
    "mysql": [
        [
            "CREATE TABLE IF NOT EXISTS im_admin ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " granted_by VARCHAR(64) NOT NULL,"
            " created BIGINT NOT NULL)" + _MYSQL_TABLE,
            "CREATE TABLE IF NOT EXISTS im_user_disabled ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " by_user VARCHAR(64) NOT NULL,"
            " reason VARCHAR(255) NOT NULL DEFAULT '',"
            " created BIGINT NOT NULL)" + _MYSQL_TABLE,
            "CREATE TABLE IF NOT EXISTS im_admin_audit ("
            " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            " at_ms BIGINT NOT NULL,"
            " actor VARCHAR(64) NOT NULL,"
            " action VARCHAR(64) NOT NULL,"
            " target VARCHAR(255) NOT NULL DEFAULT '',"
            " detail VARCHAR(1024) NOT NULL DEFAULT '',"
            " status INT NOT NULL,"
            " KEY idx_audit_at (at_ms))" + _MYSQL_TABLE,
        ]
    ],
}


def migrations(dialect: str) -> list[list[str]]:
    try:
        return _STEPS[dialect]
    except KeyError:
        raise ValueError(f"no schema for database dialect {dialect!r}") from None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at_ms: int
    actor: str
    action: str
    target: str
    detail: str
    status: int


@dataclass(frozen=True, slots=True)
class Erased:
    """What :meth:`AdminStore.erase_user` removed."""

    user: bool
    relations: int
    files: list[str]
    grants: int


class AdminStore:
    def __init__(self, db: Database, admins: frozenset[str] = frozenset(), keep_days: int = 365):
        self._db = db
        self._steps = migrations(db.dialect)
        self._settings_admins = admins
        self._keep_ms = keep_days * 86_400_000
        self._ignore = "INSERT OR IGNORE" if db.dialect == "sqlite" else "INSERT IGNORE"

    async def migrate(self) -> None:
        await apply_migrations(self._db, COMPONENT, self._steps)

    async def check_schema(self) -> None:
        await require_schema(self._db, COMPONENT, len(self._steps))

    # -- admins --------------------------------------------------------------------------------

    async def is_admin(self, user_id: str) -> bool:
        if user_id in self._settings_admins:
            return True
        row = await self._db.fetchone("SELECT 1 FROM im_admin WHERE user_id = ?", (user_id,))
        return row is not None

    async def grant(self, user_id: str, by: str) -> bool:
        """Make ``user_id`` an admin; False if it already was one (by grant)."""
        added = await self._db.execute(
            f"{self._ignore} INTO im_admin (user_id, granted_by, created) VALUES (?, ?, ?)",
            (user_id, by, int(time.time())),
        )
        return added == 1

    async def revoke(self, user_id: str) -> bool:
        """Take the grant away; False if there was none (IM_ADMINS is not touched)."""
        return await self._db.execute("DELETE FROM im_admin WHERE user_id = ?", (user_id,)) > 0

    async def granted(self) -> list[str]:
        rows = await self._db.fetchall("SELECT user_id FROM im_admin ORDER BY user_id")
        return [str(r[0]) for r in rows]

    # -- disabled accounts ---------------------------------------------------------------------

    async def is_disabled(self, user_id: str) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 FROM im_user_disabled WHERE user_id = ?", (user_id,)
        )
        return row is not None

    async def disable(self, user_id: str, by: str, reason: str = "") -> bool:
        """False if it was disabled already."""
        added = await self._db.execute(
            f"{self._ignore} INTO im_user_disabled (user_id, by_user, reason, created)"
            " VALUES (?, ?, ?, ?)",
            (user_id, by, reason[:255], int(time.time())),
        )
        return added == 1

    async def enable(self, user_id: str) -> bool:
        """False if it was not disabled."""
        removed = await self._db.execute(
            "DELETE FROM im_user_disabled WHERE user_id = ?", (user_id,)
        )
        return removed > 0

    # -- audit ---------------------------------------------------------------------------------

    async def audit(self, entry: AuditEntry) -> None:
        await self._db.execute(
            "INSERT INTO im_admin_audit (at_ms, actor, action, target, detail, status)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                entry.at_ms,
                entry.actor[:64],
                entry.action[:64],
                entry.target[:255],
                entry.detail[:MAX_DETAIL],
                entry.status,
            ),
        )
        await self._db.execute(
            "DELETE FROM im_admin_audit WHERE at_ms < ?", (entry.at_ms - self._keep_ms,)
        )

    async def audit_log(self, limit: int = 100, before_ms: int | None = None) -> list[AuditEntry]:
        """The newest entries first, at most ``limit``, older than ``before_ms`` if given."""
        rows = await self._db.fetchall(
            "SELECT at_ms, actor, action, target, detail, status FROM im_admin_audit"
            " WHERE at_ms < ? ORDER BY at_ms DESC, id DESC LIMIT ?",
            (before_ms if before_ms is not None else 2**62, limit),
        )
        return [
            AuditEntry(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]))
            for r in rows
        ]

    # -- deleting an account -------------------------------------------------------------------

    async def erase_messages(self, user_id: str, mode: DeleteMode) -> int:
        """Rewrite every timeline row ``user_id`` sent, in place, and drop its cursors; the
        number of rows rewritten. Call it before :meth:`erase_user`, while the id is still
        taken, so no new account's messages can be caught.

        Why in place: devices sync by seq, so a removed row would be a gap that they ask for
        for ever. Each row keeps its conversation, seq and time, and its author becomes
        :data:`DELETED_USER`. ``anonymize`` keeps the (sealed) body; ``delete`` makes the row a
        server SYSTEM chat (``WITHHELD``: nothing to show) with no trace of the body. Devices
        that hold a copy already keep it: the server cannot reach into them.
        """
        db = self._db
        sender = f"{DELETED_USER}.{secrets.token_hex(8)}"
        done = 0
        while True:
            # the rewritten rows leave the WHERE: each page is the next
            rows = await db.fetchall(
                "SELECT conv_id, seq, content FROM im_tl_message WHERE sender = ? LIMIT ?",
                (user_id, ERASE_PAGE),
            )
            if not rows:
                break
            await db.executemany(
                "UPDATE im_tl_message SET sender = ?, content = ? WHERE conv_id = ? AND seq = ?",
                [(sender, erased_content(bytes(r[2]), mode), str(r[0]), int(r[1])) for r in rows],
            )
            done += len(rows)
        await db.execute("DELETE FROM im_tl_device WHERE user_id = ?", (user_id,))
        await db.execute("DELETE FROM im_tl_member WHERE user_id = ?", (user_id,))
        return done

    async def erase_user(self, user_id: str) -> Erased:
        """Remove the account and what is kept for it: its row and profile, its friendships,
        its uploads' records (the caller deletes their bytes: :attr:`Erased.files`), the
        download grants it was given, its admin grant and disabled mark. Tokens are not rows
        here: the caller sets the revocation cutoff first, so any live one is refused.

        Its messages are :meth:`erase_messages`'s.

        Its friend requests and blocks go both ways too: a request to a name nobody holds any
        more would be offered to whoever registers it next; a block of it would keep them out.
        """
        db = self._db
        rows = await db.fetchall("SELECT file_id FROM im_file WHERE owner = ?", (user_id,))
        files = [str(r[0]) for r in rows]
        for file_id in files:
            await db.execute("DELETE FROM im_file_grant WHERE file_id = ?", (file_id,))
            await db.execute("DELETE FROM im_file WHERE file_id = ?", (file_id,))
        grants = await db.execute("DELETE FROM im_file_grant WHERE user_id = ?", (user_id,))
        relations = await db.execute(
            "DELETE FROM im_relation WHERE user_id1 = ? OR user_id2 = ?", (user_id, user_id)
        )
        await db.execute(
            "DELETE FROM im_friend_request WHERE from_id = ? OR to_id = ?", (user_id, user_id)
        )
        await db.execute(
            "DELETE FROM im_block WHERE user_id = ? OR blocked_id = ?", (user_id, user_id)
        )
        # what groups keep of the id (groups/leaving.py left them first): no later holder of
        # the name may read, post or hold a role as this account could
        await db.execute("DELETE FROM im_group_member WHERE user_id = ?", (user_id,))
        await db.execute("DELETE FROM im_tl_span WHERE user_id = ?", (user_id,))
        await db.execute("DELETE FROM im_user_profile WHERE user_id = ?", (user_id,))
        await db.execute("DELETE FROM im_admin WHERE user_id = ?", (user_id,))
        await db.execute("DELETE FROM im_user_disabled WHERE user_id = ?", (user_id,))
        user = await db.execute("DELETE FROM im_user WHERE user_id = ?", (user_id,))
        return Erased(user > 0, relations, files, grants)


def erased_content(content: bytes, mode: DeleteMode) -> bytes:
    """A stored chat as it stays after its author's account is deleted."""
    chat = im_pb2.ChatMsg.FromString(content)
    if mode == "anonymize":
        chat.from_id = DELETED_USER
        return chat.SerializeToString()
    system = im_pb2.SystemBody(event=im_pb2.SystemBody.WITHHELD, text=TOMBSTONE_TEXT)
    tomb = im_pb2.ChatMsg(
        id=chat.id,
        from_id=DELETED_USER,
        dest_id=chat.dest_id,
        dest_type=chat.dest_type,
        msg_type=im_pb2.SYSTEM,
        body=system.SerializeToString(),
        conv_id=chat.conv_id,
        seq=chat.seq,
        server_time=chat.server_time,
    )
    return tomb.SerializeToString()
