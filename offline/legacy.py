"""Moving a deployment of the store-and-forward model onto timelines: the chats still waiting
in ``im_offline`` for a recipient go into their pair conversation's timeline, once.

The new model has no offline store: a device catches up by syncing its conversations. So a chat
that was stored for an offline user and never reached a device must be in the timeline, or the
upgrade loses it. :func:`import_offline_rows` (run by ``im migrate``) does that:

- only a database that has an ``im_offline`` table has anything to import, and nothing here
  creates or alters one (a fresh install never has it). What ``has_read`` means depends on the
  table's offline schema version (offline/sqlstore.py's steps): before version 2 (no drain
  leases) 0 is unread and 1 delivered; from 2 on, 0 is unread, 1 claimed by a drain whose
  device never acked it, 2 delivered. Unread and unacked rows are undelivered: imported;
- rows go in their storage order (``id``), so each conversation gets them in the order they were
  first stored, after whatever it holds already; the new seqs are stamped at import time;
- a row is deleted once the timeline holds its message, imported now or before: the message's
  identity ``(sender, msg_id)`` is unique in the timeline, so a second run (or one after a crash
  between the append and the delete) finds a duplicate and stores nothing twice;
- rows that can't go in a 1-1 timeline (a group chat, bytes that are no ChatMsg, ids that don't
  match) or whose id the timeline already holds for another message are left where they are and
  counted, for an operator to look at; receipt rows (the old DELIVERED/READ acks) have no place
  in the new model, whose cursors replace them: the undelivered ones are deleted, and counted.

The old table's shape is read here as the releases that wrote it left it, without importing
offline/sqlstore.py: the import must not depend on the retired store's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError

from common.db import Database, Row, schema_version
from proto import im_pb2
from timeline.model import AppendResult, NewMessage, message_problem, new_message

TABLE = "im_offline"
COMPONENT = "offline"  # offline/sqlstore.py's schema component
LEASES_VERSION = 2  # the offline schema version that made has_read 1 "claimed, not acked"
CHUNK = 500  # rows per read, and per timeline append
_EXISTS = {
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    "mysql": (
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
    ),
}
_UNDELIVERED_CHATS = (
    "SELECT id, to_user_id, from_id, content FROM im_offline"
    " WHERE id > ? AND msg_type = 0 AND has_read < ? ORDER BY id LIMIT ?"
)
_RECEIPTS = "DELETE FROM im_offline WHERE msg_type <> 0 AND has_read < ?"


class Appender(Protocol):
    async def append(self, batch: Sequence[NewMessage]) -> list[AppendResult]: ...


@dataclass
class ImportReport:
    found: bool = False  # the database has an im_offline table
    imported: int = 0  # appended now
    already: int = 0  # in the timeline before (an earlier run, or the client resent it)
    receipts: int = 0  # receipt rows marked delivered
    left: int = 0  # rows that can't be imported, left in im_offline

    def line(self) -> str:
        if not self.found:
            return "offline: no im_offline table, nothing to import"
        return (
            f"offline: {self.imported} undelivered messages imported into timelines"
            f" ({self.already} already there), {self.receipts} receipts dropped,"
            f" {self.left} rows left in im_offline"
        )


async def has_offline_table(db: Database) -> bool:
    return await db.fetchone(_EXISTS[db.dialect], (TABLE,)) is not None


async def import_offline_rows(db: Database, store: Appender) -> ImportReport:
    """Import every undelivered chat of ``im_offline`` into ``store`` (see the module)."""
    report = ImportReport()
    if db.dialect not in _EXISTS or not await has_offline_table(db):
        return report
    report.found = True
    # has_read below this is undelivered
    delivered = 2 if await schema_version(db, COMPONENT) >= LEASES_VERSION else 1
    after = 0
    while rows := await db.fetchall(_UNDELIVERED_CHATS, (after, delivered, CHUNK)):
        after = int(rows[-1][0])
        await _import(db, store, rows, report)
    report.receipts = await db.execute(_RECEIPTS, (delivered,))
    return report


async def _import(db: Database, store: Appender, rows: list[Row], report: ImportReport) -> None:
    batch: list[tuple[int, NewMessage]] = []
    for row in rows:
        message = _message(row)
        if message is None:
            report.left += 1
        else:
            batch.append((int(row[0]), message))
    if not batch:
        return
    results = await store.append([m for _, m in batch])
    done: list[int] = []
    for (row_id, _), result in zip(batch, results, strict=True):
        if result.outcome == "reused":  # the timeline has another message under this id
            report.left += 1
            continue
        report.imported += result.outcome == "committed"
        report.already += result.outcome == "duplicate"
        done.append(row_id)
    if done:
        marks = ", ".join("?" for _ in done)
        await db.execute(f"DELETE FROM im_offline WHERE id IN ({marks})", done)


def _message(row: Row) -> NewMessage | None:
    """The timeline message of a stored chat row, or None when it has none."""
    _, to_user_id, from_id, content = row
    chat = im_pb2.ChatMsg()
    try:
        chat.ParseFromString(bytes(content))
    except DecodeError:
        return None
    if chat.from_id != from_id or chat.dest_id != to_user_id or chat.dest_type != im_pb2.SINGLE:
        return None
    try:
        message = new_message(chat, bytes(content))
    except ValueError:  # ids no conversation can have
        return None
    return None if message_problem(message) else message
