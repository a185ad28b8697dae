"""File metadata: who uploaded which file and whom it was sent to, over the ``Database`` seam.

It lives in ``common/`` because two services need it and may not import each other (DESIGN.md
§2): rest_web records uploads and checks downloads, the connector checks a FILE message against
its upload and records the recipient's right to download when it accepts the message. The file
bytes themselves are not here (rest_web/blobs.py); this is only their description.

Rules kept here, whatever the caller:
- ``im_file`` holds one row per finished upload: id, owner, stored size and SHA-256 (of the
  ciphertext: the server never sees anything else), created;
- ``im_file_grant`` holds one row per (file, recipient): the right to download. It is written only
  through :meth:`FileStore.grant`, which inserts it in the same statement that checks that the file
  exists, belongs to the sender and has the size and checksum the message claims;
- a FILE chat in a group grants to the *message*, not to users: the recipient is
  ``g:<group id>#<message id>`` (:func:`group_recipient`; no user id has a ``:`` or a ``#``).
  Who may download is decided when they ask: the members at that message's seq
  (rest_web/files.py), so a later joiner or a removed member is refused without a row per
  member, and one chat in a group of 10 000 writes one row;
- a file with no grant is an orphan; :meth:`FileStore.delete_orphan` removes its row in one
  statement that re-checks "still no grant", so a grant that wins the race keeps the file;
- the SQL runs unchanged on SQLite and MySQL/MariaDB (``?`` placeholders; only the DDL and
  ``INSERT ... IGNORE`` differ), MySQL tables with a binary collation so ids compare exactly.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from common.db import Database, apply_migrations, require_schema

# File ids are 128 random bits, base64url: unguessable, so a 404 cannot be turned into a search.
FILE_ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"
CHECKSUM_PATTERN = r"^[0-9a-f]{64}$"
_FILE_ID = re.compile(FILE_ID_PATTERN)
_CHECKSUM = re.compile(CHECKSUM_PATTERN)

COMPONENT = "files"
# group chats of one file looked at per download: a file sent to more groups than this is
# downloadable through the first ones only (its owner can always send it again)
GROUP_GRANTS = 100
_MYSQL_TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def new_file_id() -> str:
    return secrets.token_urlsafe(16)


def valid_file_id(file_id: str) -> bool:
    return _FILE_ID.match(file_id) is not None


def valid_checksum(checksum: str) -> bool:
    return _CHECKSUM.match(checksum) is not None


def group_recipient(conv_id: str, msg_id: int) -> str:
    """The grant recipient of a FILE chat ``msg_id`` in the group conversation ``conv_id``."""
    return f"{conv_id}#{msg_id}"


def parse_group_recipient(recipient: str) -> tuple[str, int] | None:
    """``(conv_id, msg_id)`` of a group grant's recipient; None for a user's."""
    conv_id, sep, msg_id = recipient.partition("#")
    if not sep or not conv_id.startswith("g:") or not msg_id.isdigit():
        return None
    return conv_id, int(msg_id)


def ddl(dialect: str) -> list[str]:
    """The schema for ``dialect`` ("sqlite" or "mysql"), every statement safe to run twice."""
    if dialect == "sqlite":
        return [
            "CREATE TABLE IF NOT EXISTS im_file ("
            " file_id VARCHAR(32) NOT NULL PRIMARY KEY,"
            " owner VARCHAR(64) NOT NULL,"
            " size BIGINT NOT NULL,"
            " checksum CHAR(64) NOT NULL,"
            " created BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS idx_file_created ON im_file (created)",
            "CREATE TABLE IF NOT EXISTS im_file_grant ("
            " file_id VARCHAR(32) NOT NULL,"
            " user_id VARCHAR(64) NOT NULL,"
            " created BIGINT NOT NULL,"
            " PRIMARY KEY (file_id, user_id))",
        ]
    if dialect == "mysql":
        return [
            "CREATE TABLE IF NOT EXISTS im_file ("
            " file_id VARCHAR(32) NOT NULL PRIMARY KEY,"
            " owner VARCHAR(64) NOT NULL,"
            " size BIGINT NOT NULL,"
            " checksum CHAR(64) NOT NULL,"
            " created BIGINT NOT NULL,"
            " KEY idx_file_created (created))" + _MYSQL_TABLE,
            "CREATE TABLE IF NOT EXISTS im_file_grant ("
            " file_id VARCHAR(32) NOT NULL,"
            " user_id VARCHAR(64) NOT NULL,"
            " created BIGINT NOT NULL,"
            " PRIMARY KEY (file_id, user_id))" + _MYSQL_TABLE,
        ]
    raise ValueError(f"no schema for database dialect {dialect!r}")


@dataclass(frozen=True, slots=True)
class FileMeta:
    file_id: str
    owner: str
    size: int
    checksum: str
    created: int


class FileStore:
    """Upload records and download grants; every method is one short statement or two."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert_ignore = "INSERT OR IGNORE" if db.dialect == "sqlite" else "INSERT IGNORE"

    async def migrate(self) -> None:
        """Create or upgrade ``im_file`` and ``im_file_grant``; safe to run twice."""
        await apply_migrations(self._db, COMPONENT, [ddl(self._db.dialect)])

    async def check_schema(self) -> None:
        """Raise :class:`common.errors.ConfigError` if the schema is older than this code."""
        await require_schema(self._db, COMPONENT, 1)

    async def create(
        self, file_id: str, owner: str, size: int, checksum: str, created: int | None = None
    ) -> None:
        """Record a finished upload (its bytes are already stored under ``file_id``)."""
        await self._db.execute(
            "INSERT INTO im_file (file_id, owner, size, checksum, created) VALUES (?, ?, ?, ?, ?)",
            (file_id, owner, size, checksum, int(time.time()) if created is None else created),
        )

    async def get(self, file_id: str) -> FileMeta | None:
        row = await self._db.fetchone(
            "SELECT file_id, owner, size, checksum, created FROM im_file WHERE file_id = ?",
            (file_id,),
        )
        if row is None:
            return None
        return FileMeta(str(row[0]), str(row[1]), int(row[2]), str(row[3]), int(row[4]))

    async def readable(self, file_id: str, user_id: str) -> FileMeta | None:
        """The file if ``user_id`` uploaded it or was sent it; None otherwise (or no such file),
        so a caller cannot tell someone else's file from one that does not exist."""
        meta = await self.get(file_id)
        if meta is None:
            return None
        if meta.owner == user_id:
            return meta
        row = await self._db.fetchone(
            "SELECT 1 FROM im_file_grant WHERE file_id = ? AND user_id = ?", (file_id, user_id)
        )
        return meta if row is not None else None

    async def group_grants(self, file_id: str, limit: int = GROUP_GRANTS) -> list[tuple[str, int]]:
        """``(conv_id, msg_id)`` of the group chats ``file_id`` was sent in, at most ``limit``
        (oldest first): the messages whose members may download it."""
        rows = await self._db.fetchall(
            "SELECT user_id FROM im_file_grant WHERE file_id = ? AND user_id LIKE ?"
            " ORDER BY created, user_id LIMIT ?",
            (file_id, "g:%", limit),
        )
        return [g for r in rows if (g := parse_group_recipient(str(r[0]))) is not None]

    async def grant(
        self, file_id: str, owner: str, size: int, checksum: str, recipient: str
    ) -> bool:
        """Let ``recipient`` download ``file_id``, if it is ``owner``'s upload of exactly that
        size and checksum; False (nothing written) otherwise. Idempotent: a resent message
        grants again and gets True. ``recipient`` is a user id, or a group chat's
        :func:`group_recipient`."""
        match = "FROM im_file WHERE file_id = ? AND owner = ? AND size = ? AND checksum = ?"
        inserted = await self._db.execute(
            f"{self._insert_ignore} INTO im_file_grant (file_id, user_id, created)"
            f" SELECT file_id, ?, ? {match}",
            (recipient, int(time.time()), file_id, owner, size, checksum),
        )
        if inserted:
            return True
        # nothing inserted: either already granted (a resend) or no such file of the sender's
        row = await self._db.fetchone(
            "SELECT 1 FROM im_file_grant g WHERE g.file_id = ? AND g.user_id = ?"
            " AND EXISTS (SELECT 1 FROM im_file f WHERE f.file_id = g.file_id AND f.owner = ?"
            " AND f.size = ? AND f.checksum = ?)",
            (file_id, recipient, owner, size, checksum),
        )
        return row is not None

    async def orphans(self, created_before: int, limit: int = 500) -> list[str]:
        """Ids of files uploaded before ``created_before`` (unix s) and never sent, oldest first."""
        rows = await self._db.fetchall(
            "SELECT f.file_id FROM im_file f WHERE f.created < ?"
            " AND NOT EXISTS (SELECT 1 FROM im_file_grant g WHERE g.file_id = f.file_id)"
            " ORDER BY f.created LIMIT ?",
            (created_before, limit),
        )
        return [str(r[0]) for r in rows]

    async def delete_orphan(self, file_id: str, created_before: int) -> bool:
        """Remove the row of ``file_id`` if it is (still) an orphan older than the cut-off."""
        deleted = await self._db.execute(
            "DELETE FROM im_file WHERE file_id = ? AND created < ?"
            " AND NOT EXISTS (SELECT 1 FROM im_file_grant g WHERE g.file_id = im_file.file_id)",
            (file_id, created_before),
        )
        return deleted > 0

    async def delete(self, file_id: str) -> None:
        """Forget an upload whose bytes could not be kept (used when storing them failed)."""
        await self._db.execute("DELETE FROM im_file WHERE file_id = ?", (file_id,))
