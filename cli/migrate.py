"""``im migrate``: create or upgrade the database schema of every component, then stop.

Each package owns its tables and their migration steps (``rest_web.store`` the users,
``rest_web.devices`` the message id slots, ``timeline.schema`` the timelines, ``groups.schema``
the groups, their members and keys); this only runs
them, in one place an operator can call before starting a new release. Safe to run again, and
from several hosts at once. It also brings user ids stored before the canonical-id rule to their
canonical form, and says which it could not (rest_web/id_migration.py); and last, on a database
of the store-and-forward model, it moves the chats still waiting in ``im_offline`` into their
timelines (offline/legacy.py). A fresh install has no ``im_offline`` and gets none.
"""

from __future__ import annotations

from common import files
from common.config import Settings
from common.db import create_database, open_database, schema_version
from common.files import FileStore
from groups import schema as group_schema
from groups.store import SQLGroupStore
from offline.legacy import import_offline_rows
from rest_web import admin_store, devices
from rest_web import store as userstore
from rest_web.admin_store import AdminStore
from rest_web.devices import DeviceSlots
from rest_web.id_migration import IdReport
from rest_web.store import UserStore
from timeline import schema as timeline_schema
from timeline.store import SQLTimelineStore


async def run_migrate(settings: Settings) -> list[str]:
    """Migrate the configured database; one line per component, e.g. ``users: version 0 -> 1``.

    On MySQL the database itself is created first if missing (utf8mb4, binary collation, so ids
    compare as they do in Python).
    """
    url = settings.db_url()
    await create_database(url)
    db = await open_database(url, pool_size=1)
    try:
        lines: list[str] = []
        components: list[
            tuple[
                str,
                UserStore | FileStore | AdminStore | DeviceSlots | SQLTimelineStore | SQLGroupStore,
            ]
        ] = [
            (userstore.COMPONENT, UserStore(db)),
            (files.COMPONENT, FileStore(db)),
            (admin_store.COMPONENT, AdminStore(db)),
            (devices.COMPONENT, DeviceSlots(db)),
            (timeline_schema.COMPONENT, SQLTimelineStore(db)),
            (group_schema.COMPONENT, SQLGroupStore(db, SQLTimelineStore(db))),
        ]
        for name, store in components:
            before = await schema_version(db, name)
            result = await store.migrate()
            after = await schema_version(db, name)
            if after == before:
                lines.append(f"{name}: version {after} (up to date)")
            else:
                lines.append(f"{name}: version {before} -> {after}")
            if isinstance(result, IdReport):  # user ids from before the canonical rule
                lines += result.lines()
        # after the timeline tables (they receive the rows) and the user ids (they rename the
        # rows' ids to canonical ones first)
        report = await import_offline_rows(db, SQLTimelineStore(db))
        lines.append(report.line())
        return lines
    finally:
        await db.close()
