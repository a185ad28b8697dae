"""The offline store on the relational database (SQLite embedded, MySQL/MariaDB in a cluster).

Rules (DESIGN §5, §7):
- one row per identity ``(to_user_id, from_id, msg_id, msg_type)``: a redelivered queue message
  is stored once. A ``rearm`` item instead re-arms its existing row (``has_read=0``), so a message
  a connector could not deliver after a drain is pushed again, in its original place.
- ``drain`` claims each row with the has_read CAS; only rows whose CAS won are returned, so two
  devices draining at once never get the same row. Claimed rows are kept (``has_read=1``): simple
  and auditable; purging old read rows is an operator's job.
- with a lease (a connector draining for a device), a claim is ``has_read=1`` until the device
  acks the frame (``mark_delivered``: ``has_read=2``); a row whose lease ran out, or that another
  session of the same device claimed (a connector that died mid-drain), is claimed again, so a
  SIGKILL between the claim and the device's ack loses nothing; the client library dedupes;
- order is the autoincrement ``id``, i.e. the order rows were first stored.
- ``msg_id`` is a uint64 on the wire; it is stored as the signed BIGINT with the same 64 bits.
- a chat row keeps the digest of its message (``chat_digest`` below, as the retired message
  ledger made it): a chat whose
  identity is stored with another digest is a reuse of its id for other content, not a
  duplicate; ``save`` leaves the stored row alone and returns it among the conflicts, and the
  writer refuses it (no SENT) where the sender still waits for the answer.

The schema is the component ``offline`` of :func:`common.db.apply_migrations`; version 1 is the
first ``im_offline`` table, created ``IF NOT EXISTS`` so a database made before versions were
kept just records version 1.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import DecodeError

from common.db import Database, Row, apply_migrations, require_schema
from common.errors import ConfigError
from offline.base import KIND_CHAT, OfflineItem
from proto import im_pb2

ID_MAX_LEN = 64  # to_user_id / from_id: VARCHAR(64), like im_user's ids
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
_INT_MAX = (1 << 31) - 1

COMPONENT = "offline"

# one list of migration steps per dialect; step i takes the schema from version i - 1 to i
_STEPS: dict[str, list[list[str]]] = {
    "sqlite": [
        [
            """CREATE TABLE IF NOT EXISTS im_offline (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                to_user_id VARCHAR(64) NOT NULL,
                from_id VARCHAR(64) NOT NULL,
                msg_id BIGINT NOT NULL,
                msg_type INTEGER NOT NULL,
                content BLOB NOT NULL,
                has_read TINYINT NOT NULL DEFAULT 0,
                created BIGINT NOT NULL,
                UNIQUE (to_user_id, from_id, msg_id, msg_type)
            )""",
            "CREATE INDEX IF NOT EXISTS idx_offline_unread"
            " ON im_offline (to_user_id, has_read, id)",
        ],
    ],
    "mysql": [
        [
            """CREATE TABLE IF NOT EXISTS im_offline (
                id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                to_user_id VARCHAR(64) NOT NULL,
                from_id VARCHAR(64) NOT NULL,
                msg_id BIGINT NOT NULL,
                msg_type INT NOT NULL,
                content MEDIUMBLOB NOT NULL,
                has_read TINYINT NOT NULL DEFAULT 0,
                created BIGINT NOT NULL,
                UNIQUE KEY uk_offline_identity (to_user_id, from_id, msg_id, msg_type),
                KEY idx_offline_unread (to_user_id, has_read, id)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
        ],
    ],
}
# step 2: drain leases. has_read: 0 unread, 1 claimed until claim_until (ms), 2 delivered; rows
# claimed before leases existed were final, so they count as delivered.
for _dialect in ("sqlite", "mysql"):
    _STEPS[_dialect].append(
        [
            "ALTER TABLE im_offline ADD COLUMN claim_until BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE im_offline ADD COLUMN claim_device VARCHAR(64) NOT NULL DEFAULT ''",
            "ALTER TABLE im_offline ADD COLUMN claim_session VARCHAR(128) NOT NULL DEFAULT ''",
            "UPDATE im_offline SET has_read = 2 WHERE has_read = 1",
        ]
    )
# step 3: the message digest of chat rows (empty for receipts and for rows older than the step)
_STEPS["sqlite"].append(["ALTER TABLE im_offline ADD COLUMN digest BLOB NOT NULL DEFAULT x''"])
_STEPS["mysql"].append(
    ["ALTER TABLE im_offline ADD COLUMN digest VARBINARY(16) NOT NULL DEFAULT ''"]
)


def migrations(dialect: str) -> list[list[str]]:
    """The migration steps of ``im_offline`` for ``dialect``, oldest first."""
    try:
        return _STEPS[dialect]
    except KeyError:
        raise ConfigError(f"offline store: unsupported SQL dialect {dialect!r}") from None


_COLUMNS = "to_user_id, from_id, msg_id, msg_type, content, created, digest"
# MySQL: "ON DUPLICATE KEY UPDATE id = id" ignores only a duplicate key; INSERT IGNORE would also
# turn data errors (e.g. a too-long id) into silently truncated rows.
_INSERT = {
    "sqlite": f"INSERT OR IGNORE INTO im_offline ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "mysql": (
        f"INSERT INTO im_offline ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON DUPLICATE KEY UPDATE id = id"
    ),
}
# the stored digests of a batch's chats: one OR term per identity (each an index lookup)
_IDENTITY = "(to_user_id = ? AND from_id = ? AND msg_id = ? AND msg_type = ?)"
_DIGESTS = "SELECT to_user_id, from_id, msg_id, digest FROM im_offline WHERE {terms}"
_DIGEST_CHUNK = 100
_REARM = (
    "UPDATE im_offline SET has_read = 0"
    " WHERE to_user_id = ? AND from_id = ? AND msg_id = ? AND msg_type = ? AND has_read <> 0"
)
# claimable: unread, or claimed with a lapsed lease, or claimed by another session of this device
_CLAIMABLE = (
    "(has_read = 0 OR (has_read = 1 AND (claim_until < ?"
    " OR (claim_device = ? AND claim_session <> ?))))"
)
_SELECT_UNREAD = (
    f"SELECT id FROM im_offline WHERE to_user_id = ? AND {_CLAIMABLE}"
    " AND id > ? ORDER BY id LIMIT ?"
)
# one statement claims a whole batch; each row's CAS still holds on its own (row locks), and the
# rows read back under this claim's token are exactly those it won
_CLAIM = (
    "UPDATE im_offline SET has_read = ?, claim_until = ?, claim_device = ?, claim_session = ?"
    " WHERE id IN ({marks}) AND " + _CLAIMABLE
)
_CLAIMED = (
    "SELECT id, to_user_id, from_id, msg_id, msg_type, content FROM im_offline"
    " WHERE id IN ({marks}) AND has_read = ? AND claim_session = ? ORDER BY id"
)
_DELIVERED = "UPDATE im_offline SET has_read = 2 WHERE has_read = 1 AND id IN ({marks})"
_COUNT_UNREAD = "SELECT COUNT(*) FROM im_offline WHERE to_user_id = ? AND has_read = 0"


def item_problem(item: OfflineItem) -> str | None:
    """Why ``item`` can never be stored (so retrying is pointless), or None when it fits."""
    if not item.to_user_id or len(item.to_user_id) > ID_MAX_LEN:
        return f"to_user_id must be 1..{ID_MAX_LEN} characters"
    if len(item.from_id) > ID_MAX_LEN:
        return f"from_id longer than {ID_MAX_LEN} characters"
    if not 0 <= item.msg_id < _U64:
        return "msg_id is not a uint64"
    if not 0 <= item.kind <= _INT_MAX:
        return f"kind {item.kind} out of range"
    return None


def _to_db_id(msg_id: int) -> int:
    return msg_id - _U64 if msg_id > _I64_MAX else msg_id


def _from_db_id(value: int) -> int:
    return value + _U64 if value < 0 else value


def _identity(item: OfflineItem) -> tuple[Any, ...]:
    return (item.to_user_id, item.from_id, _to_db_id(item.msg_id), item.kind)


def _digest(item: OfflineItem) -> bytes:
    """The chat's message digest; empty for a receipt (receipts of one identity are alike)."""
    if item.kind != KIND_CHAT:
        return b""
    try:
        return chat_digest(im_pb2.ChatMsg.FromString(item.content))
    except DecodeError:
        return b""


def chat_digest(chat: im_pb2.ChatMsg) -> bytes:
    """16 bytes naming what a chat says and to whom, as rows stored before timelines carry it."""
    h = hashlib.blake2b(digest_size=16, person=b"im chat v1")
    for part in (
        chat.dest_id.encode(),
        struct.pack(">IIQ", chat.dest_type, chat.msg_type, chat.file.size),
        chat.file.id.encode(),
        chat.file.checksum.encode(),
        bytes(chat.body),
    ):
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    return h.digest()


class SQLOfflineStore:
    """:class:`offline.base.OfflineStore` on a :class:`common.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._steps = migrations(db.dialect)
        self._db = db

    async def migrate(self) -> None:
        """Create or upgrade ``im_offline``; safe to run twice, and from two processes at once."""
        await apply_migrations(self._db, COMPONENT, self._steps)

    async def check_schema(self) -> None:
        """Raise :class:`common.errors.ConfigError` if the schema is older than this code."""
        await require_schema(self._db, COMPONENT, len(self._steps))

    async def save(self, items: Sequence[OfflineItem]) -> list[OfflineItem]:
        """Insert new identities, re-arm existing rows of ``rearm`` items; the chats whose
        identity holds another message (their id reused for other content), which are neither
        stored nor re-armed.

        Two statements when some item re-arms, so two transactions (the Database seam has no
        public multi-statement transaction); both are idempotent, and the writer acks only after
        both, so a crash in between is repaired by the queue's redelivery.
        """
        if not items:
            return []
        now = int(time.time() * 1000)
        digests = [_digest(it) for it in items]
        await self._db.executemany(
            _INSERT[self._db.dialect],
            [
                (*_identity(it), bytes(it.content), now, d)
                for it, d in zip(items, digests, strict=True)
            ],
        )
        conflicts = await self._conflicts(
            [(it, d) for it, d in zip(items, digests, strict=True) if d]
        )
        rearm = [_identity(it) for it in items if it.rearm and it not in conflicts]
        if rearm:
            await self._db.executemany(_REARM, rearm)
        return conflicts

    async def _conflicts(self, chats: list[tuple[OfflineItem, bytes]]) -> list[OfflineItem]:
        """The chats whose stored row has another digest (a row from before digests has none:
        it can't be told apart and counts as the same message)."""
        out: list[OfflineItem] = []
        for start in range(0, len(chats), _DIGEST_CHUNK):
            chunk = chats[start : start + _DIGEST_CHUNK]
            terms = " OR ".join(_IDENTITY for _ in chunk)
            params = [v for it, _ in chunk for v in _identity(it)]
            stored = {
                (str(to), str(frm), _from_db_id(int(mid))): bytes(dig)
                for to, frm, mid, dig in await self._db.fetchall(
                    _DIGESTS.format(terms=terms), params
                )
            }
            for it, digest in chunk:
                have = stored.get((it.to_user_id, it.from_id, it.msg_id), b"")
                if have and have != digest:
                    out.append(it)
        return out

    async def drain(
        self,
        user_id: str,
        limit: int = 1000,
        *,
        device: str = "",
        session: str = "",
        lease: float = 0.0,
    ) -> list[OfflineItem]:
        """Without a lease a claim is final; with one (seconds) it lasts until
        :meth:`mark_delivered`, the lease's end, or a drain by another session of ``device``."""
        out: list[OfflineItem] = []
        after = 0
        now = int(time.time() * 1000)
        claimable = (now, device, session) if device else (now, "\x00", "")
        state, until = (1, now + int(lease * 1000)) if lease > 0 else (2, 0)
        # the claim's token: the session, or for a final claim one of this call's own
        token = session if lease > 0 and session else f"drain:{secrets.token_hex(8)}"
        # Rows lost to a concurrent drain don't count against the limit: keep reading past them,
        # so that returning fewer than ``limit`` still means "nothing more right now".
        while len(out) < limit:
            want = limit - len(out)
            rows = await self._db.fetchall(_SELECT_UNREAD, (user_id, *claimable, after, want))
            ids = [row[0] for row in rows]
            if ids:
                marks = ", ".join("?" for _ in ids)
                claim = (state, until, device, token, *ids, *claimable)
                await self._db.execute(_CLAIM.format(marks=marks), claim)
                won = await self._db.fetchall(_CLAIMED.format(marks=marks), (*ids, state, token))
                out.extend(_item(row) for row in won)
            if len(rows) < want:
                break
            after = ids[-1]
        return out

    async def mark_delivered(self, row_ids: Sequence[int]) -> None:
        ids = [int(i) for i in row_ids if i]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            await self._db.execute(_DELIVERED.format(marks=marks), chunk)

    async def count_unread(self, user_id: str) -> int:
        row = await self._db.fetchone(_COUNT_UNREAD, (user_id,))
        return int(row[0]) if row else 0


def _item(row: Row) -> OfflineItem:
    row_id, to_user_id, from_id, msg_id, kind, content = row
    return OfflineItem(
        str(to_user_id),
        str(from_id),
        _from_db_id(int(msg_id)),
        int(kind),
        bytes(content),
        row_id=int(row_id),
    )
