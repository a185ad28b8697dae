"""``im migrate`` on a database of the store-and-forward model (offline/legacy.py): the chats
still waiting in ``im_offline`` go into their pair conversations' timelines, in storage order,
once; on SQLite and MariaDB (conftest ``db``).

The old table is made here as the releases that wrote it left it (its DDL frozen below, version
1 from before drain leases and version 3, the last), not by offline/sqlstore.py: what is tested
is reading what is out there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.migrate import run_migrate
from common.config import Settings
from common.db import Database, apply_migrations, open_database
from offline.legacy import ImportReport, has_offline_table, import_offline_rows
from proto import im_pb2
from timeline.model import new_message, stamp
from timeline.store import SQLTimelineStore

pytestmark = pytest.mark.asyncio

AB = "p:alice:bob"
_V1 = {
    "sqlite": [
        "CREATE TABLE im_offline (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " to_user_id VARCHAR(64) NOT NULL, from_id VARCHAR(64) NOT NULL,"
        " msg_id BIGINT NOT NULL, msg_type INTEGER NOT NULL, content BLOB NOT NULL,"
        " has_read TINYINT NOT NULL DEFAULT 0, created BIGINT NOT NULL,"
        " UNIQUE (to_user_id, from_id, msg_id, msg_type))"
    ],
    "mysql": [
        "CREATE TABLE im_offline (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
        " to_user_id VARCHAR(64) NOT NULL, from_id VARCHAR(64) NOT NULL,"
        " msg_id BIGINT NOT NULL, msg_type INT NOT NULL, content MEDIUMBLOB NOT NULL,"
        " has_read TINYINT NOT NULL DEFAULT 0, created BIGINT NOT NULL,"
        " UNIQUE KEY uk_offline_identity (to_user_id, from_id, msg_id, msg_type))"
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    ],
}
_LEASES = [
    "ALTER TABLE im_offline ADD COLUMN claim_until BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE im_offline ADD COLUMN claim_device VARCHAR(64) NOT NULL DEFAULT ''",
    "ALTER TABLE im_offline ADD COLUMN claim_session VARCHAR(128) NOT NULL DEFAULT ''",
]
_DIGEST = {
    "sqlite": ["ALTER TABLE im_offline ADD COLUMN digest BLOB NOT NULL DEFAULT x''"],
    "mysql": ["ALTER TABLE im_offline ADD COLUMN digest VARBINARY(16) NOT NULL DEFAULT ''"],
}
# an old client's read tag and stream fields (ChatMsg 9..13, reserved now), as stored then
RETIRED = b"\x4a\x03tag\x50\x05\x58\x06\x60\x07\x68\x01"


async def old_table(db: Database, version: int) -> None:
    """``im_offline`` as the release of that offline schema version left it (version 0: made
    before schema versions were kept, the shape of 1)."""
    steps = [_V1[db.dialect], _LEASES, _DIGEST[db.dialect]]
    if version:
        await apply_migrations(db, "offline", steps[:version])
    else:
        await db.script(steps[0])


def old_chat(frm: str, to: str, msg_id: int, body: bytes = b"") -> bytes:
    chat = im_pb2.ChatMsg(
        id=msg_id,
        from_id=frm,
        dest_id=to,
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=body or b"sealed-%d" % msg_id,
        create_time=1_600_000_000_000 + msg_id,
    )
    return chat.SerializeToString() + RETIRED


async def put(
    db: Database, to: str, frm: str, msg_id: int, content: bytes, *, kind: int = 0, read: int = 0
) -> None:
    await db.execute(
        "INSERT INTO im_offline (to_user_id, from_id, msg_id, msg_type, content, has_read,"
        " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (to, frm, msg_id, kind, content, read, 1_600_000_000_000),
    )


async def rows(db: Database) -> list[tuple[int, int]]:
    return [
        (int(m), int(r))
        for m, r in await db.fetchall("SELECT msg_id, has_read FROM im_offline ORDER BY id")
    ]


async def timeline(store: SQLTimelineStore, conv: str = AB) -> list[tuple[int, str, int]]:
    return [(e.seq, e.sender, e.msg_id) for e in await store.page(conv, limit=200)]


async def test_undelivered_chats_go_into_their_timelines_once(db: Database) -> None:
    await old_table(db, 3)
    store = SQLTimelineStore(db)
    await store.migrate()
    ack = im_pb2.AckMsg(from_id="bob", dest_id="alice", ack_type=im_pb2.READ, ack_msg_id=1)
    await put(db, "bob", "alice", 1, old_chat("alice", "bob", 1))
    await put(db, "bob", "alice", 5, old_chat("alice", "bob", 5), read=2)  # delivered
    await put(db, "alice", "bob", 3, old_chat("bob", "alice", 3), read=1)  # claimed, no ack
    await put(db, "bob", "alice", 2, old_chat("alice", "bob", 2))
    await put(db, "carol", "alice", 4, old_chat("alice", "carol", 4))
    await put(db, "alice", "bob", 1, ack.SerializeToString(), kind=im_pb2.READ)  # a receipt
    group = im_pb2.ChatMsg(id=6, from_id="alice", dest_id="team", dest_type=im_pb2.GROUP)
    await put(db, "bob", "alice", 6, group.SerializeToString())  # no 1-1 timeline: left
    await put(db, "bob", "alice", 7, b"\xff\xff")  # not a ChatMsg: left
    await put(db, "dave", "alice", 8, old_chat("alice", "bob", 8))  # row and chat disagree

    report = await import_offline_rows(db, store)
    assert report == ImportReport(found=True, imported=4, already=0, receipts=1, left=3)
    assert "4 undelivered messages imported" in report.line()
    # storage order within each conversation
    assert await timeline(store) == [(1, "alice", 1), (2, "bob", 3), (3, "alice", 2)]
    assert await timeline(store, "p:alice:carol") == [(1, "alice", 4)]
    entry = await store.get("alice", 1)
    assert entry is not None
    clean = new_message(im_pb2.ChatMsg.FromString(old_chat("alice", "bob", 1)[: -len(RETIRED)]))
    assert entry.content == stamp(clean.content, AB, 1, entry.server_time)  # retired: gone
    assert await rows(db) == [(5, 2), (6, 0), (7, 0), (8, 0)]  # imported rows are deleted
    (bob,) = await store.conversations("bob")
    assert (bob.last_seq, bob.unread, bob.min_seq) == (3, 2, 1)

    # again: nothing new, the rows it can't import still reported
    again = await import_offline_rows(db, store)
    assert again == ImportReport(found=True, imported=0, already=0, receipts=0, left=3)
    # a crash between an append and its delete leaves the row: the next run stores it once
    await put(db, "bob", "alice", 2, old_chat("alice", "bob", 2))
    await put(db, "bob", "alice", 9, old_chat("alice", "bob", 9))
    third = await import_offline_rows(db, store)
    assert (third.imported, third.already, third.left) == (1, 1, 3)
    assert [seq for seq, _, _ in await timeline(store)] == [1, 2, 3, 4]
    assert (await timeline(store))[3] == (4, "alice", 9)


async def test_an_id_the_timeline_holds_for_another_message_is_left(db: Database) -> None:
    await old_table(db, 3)
    store = SQLTimelineStore(db)
    await store.migrate()
    await store.append([new_message(im_pb2.ChatMsg.FromString(old_chat("alice", "bob", 1)))])
    await put(db, "bob", "alice", 1, old_chat("alice", "bob", 1))  # the same message: done
    await put(db, "bob", "alice", 2, old_chat("alice", "bob", 2))
    committed = im_pb2.ChatMsg(id=3, from_id="alice", dest_id="bob", dest_type=im_pb2.SINGLE)
    await store.append([new_message(committed)])
    await put(db, "bob", "alice", 3, old_chat("alice", "bob", 3, b"other content"))
    report = await import_offline_rows(db, store)
    assert (report.imported, report.already, report.left) == (1, 1, 1)
    assert await timeline(store) == [(1, "alice", 1), (2, "alice", 3), (3, "alice", 2)]
    assert await rows(db) == [(3, 0)]


@pytest.mark.parametrize("version", [0, 1])
async def test_a_table_from_before_drain_leases(db: Database, version: int) -> None:
    """Before leases (offline schema 1, or older still without a version row) a claim was
    final: has_read 1 is delivered there."""
    await old_table(db, version)
    store = SQLTimelineStore(db)
    await store.migrate()
    await put(db, "bob", "alice", 1, old_chat("alice", "bob", 1), read=1)
    await put(db, "bob", "alice", 2, old_chat("alice", "bob", 2))
    report = await import_offline_rows(db, store)
    assert (report.imported, report.left) == (1, 0)
    assert await timeline(store) == [(1, "alice", 2)]
    assert await rows(db) == [(1, 1)]


async def test_many_rows_in_chunks(db: Database) -> None:
    await old_table(db, 3)
    store = SQLTimelineStore(db)
    await store.migrate()
    n = 1100  # over two chunks of 500
    await db.executemany(
        "INSERT INTO im_offline (to_user_id, from_id, msg_id, msg_type, content, created)"
        " VALUES (?, ?, ?, 0, ?, 0)",
        [("bob", "alice", i, old_chat("alice", "bob", i)) for i in range(1, n + 1)],
    )
    report = await import_offline_rows(db, store)
    assert (report.imported, report.left) == (n, 0)
    assert await store.head(AB) == n
    page = await store.page(AB, after=n - 3, limit=10)
    assert [(e.seq, e.msg_id) for e in page] == [(n - 2, n - 2), (n - 1, n - 1), (n, n)]
    assert await rows(db) == []


async def test_a_fresh_database_has_nothing_to_import(db: Database) -> None:
    store = SQLTimelineStore(db)
    await store.migrate()
    assert await import_offline_rows(db, store) == ImportReport()
    assert not await has_offline_table(db)


@pytest.mark.parametrize("legacy", [False, True])
async def test_im_migrate_imports_and_never_creates_the_old_table(
    db_url: str, tmp_path: Path, legacy: bool
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=db_url)
    if legacy:
        db = await open_database(db_url)
        try:
            await old_table(db, 3)
            await put(db, "bob", "alice", 1, old_chat("alice", "bob", 1))
        finally:
            await db.close()
    first = await run_migrate(settings)
    second = await run_migrate(settings)
    if legacy:
        assert first[-1] == (
            "offline: 1 undelivered messages imported into timelines (0 already there),"
            " 0 receipts dropped, 0 rows left in im_offline"
        )
        assert second[-1].startswith("offline: 0 undelivered messages imported")
    else:
        assert first[-1] == second[-1] == "offline: no im_offline table, nothing to import"
    assert not any(line.startswith("offline: version") for line in first + second)
    db = await open_database(db_url)
    try:
        assert await has_offline_table(db) == legacy
        store = SQLTimelineStore(db)
        assert await timeline(store) == ([(1, "alice", 1)] if legacy else [])
    finally:
        await db.close()
