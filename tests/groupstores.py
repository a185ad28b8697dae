"""The group store and its timeline, opened together on one engine: what the group tests
(tests/test_groups_store.py, tests/test_groups_wire_members.py) run their contract on. The
``engine_url`` fixture that picks the engine is in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from common.db import Database, open_database
from groups.memstore import MemoryGroupStore
from groups.model import DEFAULT_MAX_SIZE
from groups.store import GroupStore, SQLGroupStore
from timeline.memstore import MemoryTimelineStore
from timeline.store import SQLTimelineStore, TimelineStore


@dataclass
class Pair:
    groups: GroupStore
    timeline: TimelineStore


@asynccontextmanager
async def open_pair(
    engine_url: tuple[str, str], max_size: int = DEFAULT_MAX_SIZE
) -> AsyncIterator[Pair]:
    """A group store on a fresh timeline of ``engine_url`` (``("memory", "")``, or a SQLite or
    MySQL URL with no ``im_*`` tables), migrated; the database is closed on the way out."""
    kind, url = engine_url
    if kind == "memory":
        mem = MemoryTimelineStore()
        yield Pair(MemoryGroupStore(mem, max_size=max_size), mem)
        return
    db: Database = await open_database(url)
    try:
        tl = SQLTimelineStore(db)
        await tl.migrate()
        gs = SQLGroupStore(db, tl, max_size=max_size)
        await gs.migrate()
        yield Pair(gs, tl)
    finally:
        await db.close()
