"""Relational database seam: one small async interface, an engine per URL scheme.

Stores write portable SQL with ``?`` placeholders; the engine adapts it. ``sqlite:///path`` is
the embedded engine (aiosqlite, WAL mode so readers don't block the writer). Driver exceptions are
translated to :class:`BackendError` here, at the boundary; ``CancelledError`` passes through.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from common.errors import BackendError, ConfigError

Row = tuple[Any, ...]


class Database(Protocol):
    """What stores need from a database; every call is one transaction unless inside ``tx()``."""

    dialect: str

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement and commit; return the affected row count."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def script(self, statements: Sequence[str]) -> None:
        """Run DDL statements in order (schema migration)."""
        ...

    async def close(self) -> None: ...


class SQLiteDatabase:
    """aiosqlite engine. One connection, serialized by a lock: SQLite has one writer anyway."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteDatabase:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise BackendError("sqlite", f"cannot open {path}: {exc}") from exc
        return cls(conn)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    await self._conn.execute("ROLLBACK")
                    raise
                await self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise BackendError("sqlite", str(exc)) from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._tx() as conn:
            cur = await conn.execute(sql, tuple(params))
            return cur.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        async with self._tx() as conn:
            cur = await conn.executemany(sql, [tuple(r) for r in rows])
            return cur.rowcount

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            try:
                cur = await self._conn.execute(sql, tuple(params))
                return [tuple(r) for r in await cur.fetchall()]
            except sqlite3.Error as exc:
                raise BackendError("sqlite", str(exc)) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def script(self, statements: Sequence[str]) -> None:
        async with self._tx() as conn:
            for stmt in statements:
                await conn.execute(stmt)

    async def close(self) -> None:
        await self._conn.close()


async def open_database(url: str) -> Database:
    """The engine for ``url``: ``sqlite:///relative/or/absolute/path`` or ``sqlite://:memory:``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"database URL {url!r} has no scheme")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        # sqlite:////abs/path keeps its leading slash; sqlite:///rel/path is relative
        return await SQLiteDatabase.open(path or ":memory:")
    raise ConfigError(f"unsupported database URL scheme {scheme!r} (supported: sqlite)")
