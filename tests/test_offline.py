"""The retired offline store's schema (offline/sqlstore.py), on SQLite and MySQL (conftest
``db``): all that is left of it is the shape of ``im_offline`` that old releases made, which
``im migrate`` reads to import undelivered rows (offline/legacy.py; tests/test_legacy_import.py
tests the import itself on a frozen copy of that shape).

Here: the steps still say what those releases ran, and a table made by them is imported."""

from __future__ import annotations

import pytest

from common.db import Database, apply_migrations, schema_version
from offline.legacy import COMPONENT, LEASES_VERSION, import_offline_rows
from offline.sqlstore import COMPONENT as STORE_COMPONENT
from offline.sqlstore import migrations
from proto import im_pb2
from timeline.store import SQLTimelineStore


def test_migration_steps_shape() -> None:
    assert len(migrations("sqlite")) == len(migrations("mysql")) == 3  # frozen: no new steps
    assert STORE_COMPONENT == COMPONENT
    assert any("claim_until" in s for s in migrations("sqlite")[LEASES_VERSION - 1])


@pytest.mark.asyncio
async def test_a_table_the_old_steps_made_is_imported(db: Database) -> None:
    await apply_migrations(db, COMPONENT, migrations(db.dialect))
    assert await schema_version(db, COMPONENT) == 3
    store = SQLTimelineStore(db)
    await store.migrate()
    for msg_id, has_read in ((1, 0), (2, 1), (3, 2)):  # unread, claimed unacked, delivered
        chat = im_pb2.ChatMsg(id=msg_id, from_id="alice", dest_id="bob", dest_type=im_pb2.SINGLE)
        await db.execute(
            "INSERT INTO im_offline (to_user_id, from_id, msg_id, msg_type, content, has_read,"
            " created) VALUES ('bob', 'alice', ?, 0, ?, ?, 0)",
            (msg_id, chat.SerializeToString(), has_read),
        )
    report = await import_offline_rows(db, store)
    assert (report.imported, report.left) == (2, 0)
    assert [e.msg_id for e in await store.page("p:alice:bob", limit=10)] == [1, 2]
