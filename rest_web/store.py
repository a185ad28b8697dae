"""Users, friend relations and revoked tokens, over the :class:`common.db.Database` seam.

Rules kept here, whatever the caller:
- a relation is one row per unordered pair, stored with ``user_id1 < user_id2``; its key is made
  once, by whoever adds the pair first, and every later add returns that same key;
- the SQL runs unchanged on SQLite and MySQL/MariaDB; only the DDL and the insert-if-new
  statement differ by dialect. MySQL tables use a binary collation so ids compare exactly as they
  do in SQLite and Python (token ids are case-sensitive). User ids reach the store already in
  canonical form (common/userids.py), which is what makes ``Alice`` and ``alice`` one user; rows
  from before that rule are renamed by :meth:`UserStore.migrate` (rest_web/id_migration.py);
- the revoked-token table holds only tokens that could still be used: rows past their expiry are
  dropped on each revoke, so it does not grow without bound. The same goes for the per-user token
  cutoffs (``im_token_cutoff``: every token of the user issued before ``before_ms`` is revoked,
  written by a password change), one row per user, the latest cutoff winning.

The schema is the component ``users`` of :func:`common.db.apply_migrations`: step ``i`` of
:func:`migrations` takes it from version ``i - 1`` to ``i``. Version 1 is the first schema, whose
statements are all ``IF NOT EXISTS``, so a database created before versions were kept just
records version 1.
"""

from __future__ import annotations

import time

from common.crypto import new_pair_key
from common.db import Database, apply_migrations, require_schema
from rest_web.id_migration import IdReport, canonicalize_user_ids

COMPONENT = "users"

_MYSQL_TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

_STEPS: dict[str, list[list[str]]] = {
    "sqlite": [
        [
            "CREATE TABLE IF NOT EXISTS im_user ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " display_name VARCHAR(128) NOT NULL DEFAULT '',"
            " password_hash VARCHAR(255) NOT NULL,"
            " created BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS im_relation ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " user_id1 VARCHAR(64) NOT NULL,"
            " user_id2 VARCHAR(64) NOT NULL,"
            " encrypt_key CHAR(43) NOT NULL,"
            " created BIGINT NOT NULL,"
            " UNIQUE (user_id1, user_id2))",
            "CREATE INDEX IF NOT EXISTS idx_relation_user2 ON im_relation (user_id2)",
            "CREATE TABLE IF NOT EXISTS im_token_revoked ("
            " token_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " expires BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS idx_revoked_expires ON im_token_revoked (expires)",
        ],
        [
            "CREATE TABLE IF NOT EXISTS im_token_cutoff ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " before_ms BIGINT NOT NULL,"
            " expires BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS idx_cutoff_expires ON im_token_cutoff (expires)",
        ],
    ],
    # MySQL has no CREATE INDEX IF NOT EXISTS (MariaDB does): indexes go inline instead.
    "mysql": [
        [
            "CREATE TABLE IF NOT EXISTS im_user ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " display_name VARCHAR(128) NOT NULL DEFAULT '',"
            " password_hash VARCHAR(255) NOT NULL,"
            " created BIGINT NOT NULL)" + _MYSQL_TABLE,
            "CREATE TABLE IF NOT EXISTS im_relation ("
            " id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            " user_id1 VARCHAR(64) NOT NULL,"
            " user_id2 VARCHAR(64) NOT NULL,"
            " encrypt_key CHAR(43) NOT NULL,"
            " created BIGINT NOT NULL,"
            " UNIQUE KEY uq_relation_pair (user_id1, user_id2),"
            " KEY idx_relation_user2 (user_id2))" + _MYSQL_TABLE,
            "CREATE TABLE IF NOT EXISTS im_token_revoked ("
            " token_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " expires BIGINT NOT NULL,"
            " KEY idx_revoked_expires (expires))" + _MYSQL_TABLE,
        ],
        [
            "CREATE TABLE IF NOT EXISTS im_token_cutoff ("
            " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
            " before_ms BIGINT NOT NULL,"
            " expires BIGINT NOT NULL,"
            " KEY idx_cutoff_expires (expires))" + _MYSQL_TABLE,
        ],
    ],
}


# step 3: where a directory login (LDAP, an operator's provider) records what it knows of a user
_PROFILE = (
    "CREATE TABLE IF NOT EXISTS im_user_profile ("
    " user_id VARCHAR(64) NOT NULL PRIMARY KEY,"
    " provider VARCHAR(255) NOT NULL,"
    " email VARCHAR(255) NOT NULL DEFAULT '',"
    " updated BIGINT NOT NULL)"
)
_STEPS["sqlite"].append([_PROFILE])
_STEPS["mysql"].append([_PROFILE + _MYSQL_TABLE])

# step 4: friendship needs consent (rest_web/friendships.py). A request is one row per asker and
# asked; a block one row per blocker and blocked. Relations made before this step were made by
# one side alone and stay as they are: accepted friendships.
_REQUEST = (
    "CREATE TABLE IF NOT EXISTS im_friend_request ("
    " from_id VARCHAR(64) NOT NULL,"
    " to_id VARCHAR(64) NOT NULL,"
    " created BIGINT NOT NULL,"
    " PRIMARY KEY (from_id, to_id)"
)
_BLOCK = (
    "CREATE TABLE IF NOT EXISTS im_block ("
    " user_id VARCHAR(64) NOT NULL,"
    " blocked_id VARCHAR(64) NOT NULL,"
    " created BIGINT NOT NULL,"
    " PRIMARY KEY (user_id, blocked_id)"
)
_STEPS["sqlite"].append(
    [
        _REQUEST + ")",
        "CREATE INDEX IF NOT EXISTS idx_request_to ON im_friend_request (to_id)",
        _BLOCK + ")",
        "CREATE INDEX IF NOT EXISTS idx_block_blocked ON im_block (blocked_id)",
    ]
)
_STEPS["mysql"].append(
    [
        _REQUEST + ", KEY idx_request_to (to_id))" + _MYSQL_TABLE,
        _BLOCK + ", KEY idx_block_blocked (blocked_id))" + _MYSQL_TABLE,
    ]
)

# step 5: who sees the user's presence (user_status/presence.py): "friends" (the default) or
# "hidden" (offline with no last seen, to everyone). One statement, so the step cannot be left
# half done; a column of im_user, so deleting the account deletes the setting with it.
_PRESENCE = "ALTER TABLE im_user ADD COLUMN presence VARCHAR(16) NOT NULL DEFAULT 'friends'"
_STEPS["sqlite"].append([_PRESENCE])
_STEPS["mysql"].append([_PRESENCE])
PRESENCE_SETTINGS = ("friends", "hidden")


def migrations(dialect: str) -> list[list[str]]:
    """The migration steps for ``dialect`` ("sqlite" or "mysql"), oldest first."""
    try:
        return _STEPS[dialect]
    except KeyError:
        raise ValueError(f"no schema for database dialect {dialect!r}") from None


def _insert_new(dialect: str, table: str, columns: str, key: str) -> str:
    """INSERT that does nothing (and counts 0) when the row's unique key is taken.

    MySQL: ``ON DUPLICATE KEY UPDATE key = key`` rather than ``INSERT IGNORE``, which would also
    turn data errors (an over-long id) into a silently truncated row.
    """
    marks = ", ".join("?" for _ in columns.split(","))
    if dialect == "sqlite":
        return f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})"
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {key} = {key}"


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class UserStore:
    """Users, relations and token revocations; every method is one short transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._steps = migrations(db.dialect)
        self._insert_user = _insert_new(
            db.dialect, "im_user", "user_id, display_name, password_hash, created", "user_id"
        )
        self._insert_relation = _insert_new(
            db.dialect, "im_relation", "user_id1, user_id2, encrypt_key, created", "id"
        )
        self._insert_revoked = _insert_new(
            db.dialect, "im_token_revoked", "token_id, expires", "token_id"
        )
        if db.dialect == "sqlite":
            self._upsert_cutoff = (
                "INSERT INTO im_token_cutoff (user_id, before_ms, expires) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET"
                " before_ms = MAX(before_ms, excluded.before_ms),"
                " expires = MAX(expires, excluded.expires)"
            )
        else:
            self._upsert_cutoff = (
                "INSERT INTO im_token_cutoff (user_id, before_ms, expires) VALUES (?, ?, ?)"
                " ON DUPLICATE KEY UPDATE"
                " before_ms = GREATEST(before_ms, VALUES(before_ms)),"
                " expires = GREATEST(expires, VALUES(expires))"
            )

    @property
    def db(self) -> Database:
        return self._db

    async def migrate(self) -> IdReport:
        """Create or upgrade the schema, then bring user ids from before the canonical rule to
        their canonical form; safe to run twice, and from two processes at once."""
        await apply_migrations(self._db, COMPONENT, self._steps)
        return await canonicalize_user_ids(self._db)

    async def check_schema(self) -> None:
        """Raise :class:`common.errors.ConfigError` if the schema is older than this code."""
        await require_schema(self._db, COMPONENT, len(self._steps))

    @property
    def database(self) -> Database:
        """The database under the store, for tables kept beside it (rest_web/devices.py)."""
        return self._db

    async def ping(self) -> None:
        """Raise :class:`common.errors.BackendError` if the database does not answer."""
        await self._db.fetchone("SELECT 1")

    async def create_user(self, user_id: str, password_hash: str, display_name: str = "") -> bool:
        """Add a user; False (and nothing changed) if ``user_id`` is taken."""
        inserted = await self._db.execute(
            self._insert_user, (user_id, display_name, password_hash, int(time.time()))
        )
        return inserted == 1

    async def user_exists(self, user_id: str) -> bool:
        row = await self._db.fetchone("SELECT 1 FROM im_user WHERE user_id = ?", (user_id,))
        return row is not None

    async def get_password_hash(self, user_id: str) -> str | None:
        row = await self._db.fetchone(
            "SELECT password_hash FROM im_user WHERE user_id = ?", (user_id,)
        )
        return None if row is None else str(row[0])

    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        """Replace the user's password hash; False if there is no such user."""
        changed = await self._db.execute(
            "UPDATE im_user SET password_hash = ? WHERE user_id = ? AND password_hash <> ?",
            (password_hash, user_id, password_hash),
        )
        return changed == 1

    async def presence_setting(self, user_id: str) -> str | None:
        """Who sees the user's presence (:data:`PRESENCE_SETTINGS`); None: no such user."""
        row = await self._db.fetchone("SELECT presence FROM im_user WHERE user_id = ?", (user_id,))
        return None if row is None else str(row[0])

    async def set_presence_setting(self, user_id: str, setting: str) -> bool:
        """Set it; False if there is no such user. Only :data:`PRESENCE_SETTINGS` are taken."""
        if setting not in PRESENCE_SETTINGS:
            raise ValueError(f"presence is one of {PRESENCE_SETTINGS}")
        await self._db.execute(
            "UPDATE im_user SET presence = ? WHERE user_id = ?", (setting, user_id)
        )
        return await self.presence_setting(user_id) is not None

    async def add_relation(self, a: str, b: str) -> str:
        """Make ``a`` and ``b`` friends; the pair's key, new or the one it already had."""
        if a == b:
            raise ValueError("a user cannot be their own friend")
        u1, u2 = _pair(a, b)
        # Insert-or-ignore then read back: two concurrent adds both end with the winner's key.
        await self._db.execute(self._insert_relation, (u1, u2, new_pair_key(), int(time.time())))
        key = await self.relation_key(u1, u2)
        if key is None:  # only if removed between the two statements
            return await self.add_relation(a, b)
        return key

    async def remove_relation(self, a: str, b: str) -> bool:
        """Unfriend; False if they were not friends."""
        u1, u2 = _pair(a, b)
        removed = await self._db.execute(
            "DELETE FROM im_relation WHERE user_id1 = ? AND user_id2 = ?", (u1, u2)
        )
        return removed > 0

    async def relation_key(self, a: str, b: str) -> str | None:
        u1, u2 = _pair(a, b)
        row = await self._db.fetchone(
            "SELECT encrypt_key FROM im_relation WHERE user_id1 = ? AND user_id2 = ?", (u1, u2)
        )
        return None if row is None else str(row[0])

    async def relations_of(self, user_id: str) -> list[tuple[str, str]]:
        """``(friend_id, key)`` for every friend of ``user_id``, ordered by friend id."""
        rows = await self._db.fetchall(
            "SELECT user_id2, encrypt_key FROM im_relation WHERE user_id1 = ?"
            " UNION ALL"
            " SELECT user_id1, encrypt_key FROM im_relation WHERE user_id2 = ?"
            " ORDER BY 1",
            (user_id, user_id),
        )
        return [(str(friend), str(key)) for friend, key in rows]

    async def revoke(self, token_id: str, expires: int) -> None:
        """Refuse ``token_id`` from now until ``expires`` (unix s), when it dies anyway."""
        await self._db.execute(self._insert_revoked, (token_id, expires))
        await self._db.execute(
            "DELETE FROM im_token_revoked WHERE expires < ?", (int(time.time()),)
        )

    async def is_revoked(self, token_id: str) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 FROM im_token_revoked WHERE token_id = ?", (token_id,)
        )
        return row is not None

    async def set_cutoff(self, user_id: str, before_ms: int, expires: int) -> None:
        """Revoke every token of ``user_id`` issued before ``before_ms`` (unix ms); the row may
        go once ``expires`` (unix s) has passed, when the newest token it covers has expired."""
        await self._db.execute(self._upsert_cutoff, (user_id, before_ms, expires))
        await self._db.execute("DELETE FROM im_token_cutoff WHERE expires < ?", (int(time.time()),))

    async def cutoff_of(self, user_id: str) -> int:
        """The user's token cutoff (unix ms), 0 if none is in force."""
        row = await self._db.fetchone(
            "SELECT before_ms FROM im_token_cutoff WHERE user_id = ? AND expires >= ?",
            (user_id, int(time.time())),
        )
        return 0 if row is None else int(row[0])
