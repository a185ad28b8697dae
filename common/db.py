"""Relational database seam: one small async interface, an engine per URL scheme.

Stores write portable SQL with ``?`` placeholders; the engine adapts it. ``sqlite:///path`` is
the embedded engine (aiosqlite, WAL mode so readers don't block the writer);
``mysql://user:pass@host:port/db`` is MySQL/MariaDB through a bounded pool of aiomysql
connections. Driver exceptions are translated to :class:`BackendError` here, at the boundary;
``CancelledError`` passes through.

``mysql://user:pass@host1:port,host2:port,host3:port/db`` names the servers of one cluster (a
Galera cluster, or a primary and the replicas it may fail over to). A pool then uses one server
at a time for all its connections: the first that answers and may take writes (Galera: Synced;
otherwise: not ``read_only``), in the order given. When its server fails (a connection lost, a
query timed out, a new connection refused) it moves to the next usable one, searching from the
top of the list, so that every process given the same list lands on the same server; it does
not move back by itself. Galera turns concurrent writes to one row through two nodes into
deadlock errors at commit (certification), and a transaction that got one has been rolled
back: with a list, single statements that get one (:class:`ConflictError`) are run again, a
few times. One address behaves exactly as before.

Both engines count affected rows the same way for the statements the stores use: an INSERT that
was ignored (``INSERT OR IGNORE`` / ``INSERT IGNORE`` / ``ON DUPLICATE KEY UPDATE id = id``)
counts 0, an UPDATE counts the rows it changed. SQLite counts an UPDATE's matched rows even when
the value was already there and MySQL does not, so conditional updates name the old value in
their WHERE clause (``SET has_read = 1 ... AND has_read = 0``), where the two agree.

Transactions: every call is a transaction of its own, except :meth:`Database.transaction`, which
runs a function's statements on one connection and commits them together (SQLite: ``BEGIN
IMMEDIATE``, so writers take turns; MySQL: ``READ COMMITTED``, so each statement sees what
committed before it and ``SELECT ... FOR UPDATE`` orders writers on a row). A transaction the
server rolled back to resolve a conflict (a deadlock, which several statements per transaction
can meet even on one server) is run again from the start, a few times.

Schema versions: each owning package keeps its own list of migration steps and calls
:func:`apply_migrations` with its component name; :func:`schema_version` and
:func:`require_schema` tell a process whether the database is recent enough for its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosqlite
import pymysql  # type: ignore[import-untyped]

from common.addrlist import format_address, parse_host_list
from common.errors import BackendError, ConfigError

Row = tuple[Any, ...]
T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 10
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds; a server that is down should fail a start quickly
DEFAULT_QUERY_TIMEOUT = 30.0  # seconds; a server that stops answering must not hang callers
LOCK_WAIT = 120.0  # seconds a migration waits for another process's migration to finish
_PING_AFTER = 30.0  # a connection idle this long is pinged before it is handed out
# A conflict is rolled back whole, so running the statement again is safe; a few tries, backing
# off, because two writers on two Galera nodes that collided once collide again if in step.
CONFLICT_RETRIES = 3
CONFLICT_BACKOFF = 0.02  # seconds, doubled per try


class Session(Protocol):
    """Statements on one connection held by :meth:`Database.exclusive` or
    :meth:`Database.transaction`."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


class Database(Protocol):
    """What stores need from a database; every call is one transaction of its own."""

    dialect: str
    label: str  # engine and location for messages, never a password: "mysql root@host:3306/im"

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement and commit; return the affected row count."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def script(self, statements: Sequence[str]) -> None:
        """Run DDL statements in order (schema migration)."""
        ...

    async def transaction(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``work``'s statements as one transaction: committed when it returns, rolled back
        when it raises (its exception passes through, a driver error as BackendError).

        A conflict the server resolved by rolling back runs ``work`` again (a few times, then
        :class:`ConflictError`), so ``work`` must decide from what it reads inside the
        transaction and keep no state across tries. A connection lost under it is not retried:
        the commit may or may not have happened.
        """
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[Session]:
        """One connection, held while no other process of this database holds ``name``.

        For schema migration: SQLite runs the whole block as one write transaction (its write
        lock is the database's); MySQL holds the named lock ``GET_LOCK`` across statements,
        which it commits one by one (DDL commits implicitly anyway).
        """
        ...

    async def close(self) -> None: ...


# --- SQLite -------------------------------------------------------------------------------------


class _SQLiteSession:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self._conn.execute(sql, tuple(params))
        return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        cur = await self._conn.executemany(sql, [tuple(r) for r in rows])
        return max(cur.rowcount, 0)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = await self._conn.execute(sql, tuple(params))
        return [tuple(r) for r in await cur.fetchall()]

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cur = await self._conn.execute(sql, tuple(params))
        row = await cur.fetchone()
        return None if row is None else tuple(row)


class SQLiteDatabase:
    """aiosqlite engine. One connection, serialized by a lock: SQLite has one writer anyway."""

    dialect = "sqlite"
    pool_size = 1

    def __init__(self, conn: aiosqlite.Connection, label: str = "sqlite") -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.label = label

    @property
    def in_use(self) -> int:
        """1 while a statement holds the connection (``im_db_pool_in_use``)."""
        return int(self._lock.locked())

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
        return cls(conn, f"sqlite {path}")

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
            return max(cur.rowcount, 0)

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

    async def transaction(self, work: Callable[[Session], Awaitable[T]]) -> T:
        # one writer at a time (BEGIN IMMEDIATE): nothing to conflict with, nothing to retry
        async with self._tx() as conn:
            return await work(_SQLiteSession(conn))

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[Session]:
        async with self._tx() as conn:
            yield _SQLiteSession(conn)

    async def close(self) -> None:
        await self._conn.close()


# --- MySQL / MariaDB ----------------------------------------------------------------------------

_DB_NAME = re.compile(r"[A-Za-z0-9_$]{1,64}")
# Server errors after which the connection is gone: 1053 shutdown in progress, 1927 connection
# killed (MariaDB), 4031 disconnected for inactivity (MySQL 8). 2000-2999 are client-side errors
# (lost connection, server gone away, commands out of sync): all of them end the connection.
# 1047 is a Galera node that left the primary component ("WSREP has not yet prepared node for
# application use"): it refuses everything until it rejoins, so the connection is as good as
# lost, and a list moves on to another node.
_LOST_CODES = frozenset({1047, 1053, 1927, 4031})
# 1213: deadlock, and Galera's certification failure; the server rolled the transaction back
_CONFLICT_CODES = frozenset({1213})
_SYNCED = "4"  # Galera's wsrep_local_state of a node in step with the cluster
_SYNC_WAIT_MAX = 15  # wsrep_sync_wait is a bit mask of 4 statement kinds (MariaDB 10.11)
_SQL_MODE = "sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"


@dataclass(frozen=True)
class MySQLParams:
    """Where and how to connect, from a ``mysql://`` URL."""

    host: str
    port: int
    user: str | None
    password: str
    database: str
    pool_size: int = DEFAULT_POOL_SIZE
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    # every server of a cluster's URL in order, (host, port) first; one entry for one server
    addresses: tuple[tuple[str, int], ...] = ()
    # Galera's causality checks for each session (None: the server's setting; 1: reads wait
    # until the node has applied everything the cluster committed before them)
    wsrep_sync_wait: int | None = None

    def __post_init__(self) -> None:
        if not self.addresses:
            object.__setattr__(self, "addresses", ((self.host, self.port),))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def clustered(self) -> bool:
        """Several servers: the pool picks one that answers and may fail over."""
        return len(self.addresses) > 1

    @property
    def label(self) -> str:
        who = f"{self.user}@" if self.user else ""
        where = ",".join(map(format_address, self.addresses)) if self.clustered else self.address
        return f"mysql {who}{where}/{self.database}"

    @classmethod
    def from_url(cls, url: str) -> MySQLParams:
        """Parse ``mysql://user:pass@host:port/db?pool_size=N&connect_timeout=S&query_timeout=S``,
        where ``host:port`` may be a list, ``host1:port,host2:port,...``."""
        addresses: tuple[tuple[str, int], ...] = ()
        try:
            parts = urlsplit(url)
            hosts = parts.netloc.rpartition("@")[2]
            if "," in hosts and parts.scheme == "mysql":
                addresses = parse_host_list(hosts, 3306, "mysql URL")
            port = addresses[0][1] if addresses else parts.port or 3306
        except ValueError as exc:
            raise ConfigError(f"database URL is not a valid mysql:// URL: {exc}") from None
        if parts.scheme != "mysql":
            raise ConfigError(f"not a mysql:// URL: scheme {parts.scheme!r}")
        database = unquote(parts.path.lstrip("/"))
        if not _DB_NAME.fullmatch(database):
            raise ConfigError(
                f"mysql URL needs a database name of 1-64 letters, digits, '_' or '$', "
                f"got {database!r}"
            )
        options: dict[str, float] = {}
        sync_wait: int | None = None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "wsrep_sync_wait":
                if not value.isdigit() or int(value) > _SYNC_WAIT_MAX:
                    raise ConfigError(f"mysql URL: wsrep_sync_wait is 0-{_SYNC_WAIT_MAX}")
                sync_wait = int(value)
                continue
            if key not in ("pool_size", "connect_timeout", "query_timeout"):
                raise ConfigError(f"mysql URL: unknown option {key!r}")
            try:
                number = int(value) if key == "pool_size" else float(value)
            except ValueError:
                raise ConfigError(f"mysql URL: {key}={value!r} is not a number") from None
            if number <= 0:
                raise ConfigError(f"mysql URL: {key} must be positive")
            options[key] = number
        return cls(
            host=addresses[0][0] if addresses else parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password or ""),
            database=database,
            pool_size=int(options.get("pool_size", DEFAULT_POOL_SIZE)),
            connect_timeout=options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            query_timeout=options.get("query_timeout", DEFAULT_QUERY_TIMEOUT),
            addresses=addresses,
            wsrep_sync_wait=sync_wait,
        )


class _LostConnection(BackendError):
    """The connection died under a statement; the server may or may not have run it."""


class ConflictError(BackendError):
    """The server rolled the transaction back to resolve a conflict (a deadlock, or a Galera
    certification failure): none of it committed, so it is safe to run again."""


def _aiomysql() -> Any:
    """The driver, imported on first use so the embedded engine does not depend on it loading."""
    try:
        import aiomysql  # type: ignore[import-untyped]
    except ImportError as exc:  # e.g. a PyMySQL release aiomysql cannot import from
        raise ConfigError(f"mysql: the aiomysql driver does not load: {exc}") from exc
    return aiomysql


@functools.cache
def _cursor_class() -> Any:
    class QuietCursor(_aiomysql().Cursor):  # type: ignore[misc]
        """A cursor that does not run SHOW WARNINGS after a statement with warnings.

        aiomysql's does, to turn them into Python warnings: one more round trip for every
        ``IF NOT EXISTS`` or duplicate ``INSERT IGNORE``, and noise nobody acts on. Strict SQL
        mode makes the warnings that matter (bad data) errors instead.
        """

        async def _show_warnings(self, conn: Any) -> None:
            return None

    return QuietCursor


@functools.lru_cache(maxsize=512)
def _format_sql(sql: str) -> str:
    """``?`` placeholders to the driver's ``%s``; a literal ``%`` must survive its ``%``
    formatting. A ``?`` inside a string literal is not supported: pass it as a parameter."""
    return sql.replace("%", "%%").replace("?", "%s")


def _mysql_params(params: Sequence[Any]) -> tuple[Any, ...]:
    # the driver escapes only ``bytes`` as binary; sqlite3 takes any buffer
    return tuple(bytes(p) if isinstance(p, bytearray | memoryview) else p for p in params)


def _code(exc: BaseException) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


def _lost(exc: BaseException, conn: Any) -> bool:
    if conn.closed or isinstance(exc, pymysql.err.InterfaceError | OSError):
        return True
    code = _code(exc)
    return code in _LOST_CODES or 2000 <= code < 3000


async def _connect_mysql(
    params: MySQLParams, *, database: bool = True, address: tuple[str, int] | None = None
) -> Any:
    """One new connection to ``address`` (default: the URL's first): autocommit off, utf8mb4,
    strict SQL mode, bounded connect time."""
    driver = _aiomysql()
    host, port = address or (params.host, params.port)
    where = format_address((host, port)) if address else params.address
    try:
        async with asyncio.timeout(params.connect_timeout):
            return await driver.connect(
                host=host,
                port=port,
                user=params.user,
                password=params.password,
                db=params.database if database else None,
                charset="utf8mb4",
                autocommit=False,
                connect_timeout=params.connect_timeout,
                # strict: an over-long value is an error, not a silently truncated row
                init_command=f"SET SESSION {_SQL_MODE}"
                + (
                    ""
                    if params.wsrep_sync_wait is None
                    else f", wsrep_sync_wait = {params.wsrep_sync_wait}"
                ),
            )
    except TimeoutError as exc:
        raise BackendError(
            "mysql",
            f"cannot connect to {where}: no answer within {params.connect_timeout:g} s",
        ) from exc
    except (pymysql.err.Error, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        hint = ""
        if isinstance(exc, pymysql.err.Error) and exc.args and exc.args[0] == 1049:
            hint = " (run `im migrate` to create it)"
        raise BackendError("mysql", f"cannot connect to {where}: {detail}{hint}") from exc


async def _unusable(conn: Any) -> str | None:
    """Why the server of ``conn`` must not take the app's writes, or None: a Galera node that is
    not Synced (joining, donating a snapshot, cut off from the primary component) or a server
    that is ``read_only`` (a replica not yet promoted)."""
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_local_state'")
            row = await cur.fetchone()
            if row is not None and str(row[1]) != _SYNCED:
                return f"Galera node not synced (wsrep_local_state {row[1]})"
            await cur.execute("SELECT @@global.read_only")
            row = await cur.fetchone()
            if row is not None and int(row[0]):
                return "read_only (a replica?)"
        await conn.rollback()  # end the probe's transaction: no snapshot kept from it
    except (pymysql.err.Error, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


async def _connect_any(
    params: MySQLParams, first: int, *, database: bool = True
) -> tuple[Any, int]:
    """A connection to the first usable server of the list, trying ``first`` and then the rest
    from the top; with its index. One address: just the connection, as always."""
    if not params.clustered:
        return await _connect_mysql(params, database=database), 0
    failures: list[str] = []
    order = [first, *(i for i in range(len(params.addresses)) if i != first)]
    for i in order:
        address = params.addresses[i]
        try:
            conn = await _connect_mysql(params, database=database, address=address)
        except BackendError as exc:
            failures.append(exc.detail)
            continue
        try:
            async with asyncio.timeout(params.connect_timeout):
                problem = await _unusable(conn)
        except TimeoutError:
            problem = f"no answer within {params.connect_timeout:g} s"
        except BaseException:
            conn.close()
            raise
        if problem is None:
            return conn, i
        conn.close()
        failures.append(f"{format_address(address)}: {problem}")
    raise BackendError("mysql", "no usable server: " + "; ".join(failures))


class _MySQLSession:
    """Statements on one pooled connection; each commits unless ``autocommit`` is off (a
    transaction: the caller commits). Driver errors become BackendError."""

    def __init__(self, conn: Any, *, autocommit: bool = True) -> None:
        self._conn = conn
        self._autocommit = autocommit

    def _error(self, exc: BaseException) -> BackendError:
        kind = _LostConnection if _lost(exc, self._conn) else BackendError
        if _code(exc) in _CONFLICT_CODES:
            kind = ConflictError
        return kind("mysql", str(exc) or type(exc).__name__)

    async def _run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        try:
            async with self._conn.cursor(_cursor_class()) as cur:
                result = await work(cur)
            if self._autocommit:
                await self._conn.commit()
            return result
        except (pymysql.err.Error, OSError) as exc:
            raise self._error(exc) from exc

    async def commit(self) -> None:
        try:
            await self._conn.commit()
        except (pymysql.err.Error, OSError) as exc:
            raise self._error(exc) from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async def work(cur: Any) -> int:
            return int(await cur.execute(_format_sql(sql), _mysql_params(params)))

        return await self._run(work)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        async def work(cur: Any) -> int:
            # INSERT ... VALUES becomes one multi-row statement (split near 1 MB)
            await cur.executemany(_format_sql(sql), [_mysql_params(r) for r in rows])
            return max(int(cur.rowcount), 0)

        return await self._run(work) if rows else 0

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async def work(cur: Any) -> list[Row]:
            await cur.execute(_format_sql(sql), _mysql_params(params))
            return [tuple(r) for r in await cur.fetchall()]

        return await self._run(work)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async def work(cur: Any) -> Row | None:
            await cur.execute(_format_sql(sql), _mysql_params(params))
            row = await cur.fetchone()
            return None if row is None else tuple(row)

        return await self._run(work)

    async def script(self, statements: Sequence[str]) -> None:
        async def work(cur: Any) -> None:
            for stmt in statements:
                await cur.execute(_format_sql(stmt), ())

        await self._run(work)


class MySQLDatabase:
    """MySQL/MariaDB through aiomysql, on a pool of at most ``pool_size`` connections.

    Every call takes a connection, runs its statement(s), commits and gives it back. A connection
    that saw any error or a cancellation is closed, never reused: its state (open transaction,
    half-read result) is unknown. When one is found dead the idle ones are dropped too (after a
    server restart they all are), so the pool reconnects by itself once the server is back.
    Reads are retried once on a fresh connection after a lost connection; writes are not, since
    the lost statement may have committed: the caller decides (the offline writer retries, REST
    answers 503).

    With several addresses (module docstring) every connection is to the server at
    ``self._active``; a connection to any other is dropped when it comes back, so a failover
    leaves no connection behind on the old server.
    """

    dialect = "mysql"

    def __init__(self, params: MySQLParams) -> None:
        self.params = params
        self.label = params.label
        self.pool_size = params.pool_size
        self._slots = asyncio.Semaphore(params.pool_size)
        # (connection, when it was given back, index of its server in params.addresses)
        self._idle: deque[tuple[Any, float, int]] = deque()
        self._open = 0
        self._busy = 0
        self._closed = False
        self._active = 0  # the server new connections go to
        self.failovers = 0  # times the pool moved to another server
        self.conflicts_retried = 0  # statements run again after a conflict rolled them back

    @classmethod
    async def open(cls, params: MySQLParams) -> MySQLDatabase:
        """Connect once now, so a wrong address or a server that is down fails the start."""
        db = cls(params)
        conn, db._active = await _connect_any(params, 0)
        db._open += 1
        db._idle.append((conn, asyncio.get_running_loop().time(), db._active))
        return db

    @property
    def server(self) -> str:
        """The address this pool uses now."""
        if not self.params.clustered:
            return self.params.address
        return format_address(self.params.addresses[self._active])

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use; never more than ``pool_size``."""
        return self._open

    @property
    def in_use(self) -> int:
        """Connections busy with a statement right now (``im_db_pool_in_use``)."""
        return self._busy

    def _discard(self, conn: Any) -> None:
        conn.close()
        self._open -= 1

    def _drop_idle(self) -> None:
        while self._idle:
            self._discard(self._idle.pop()[0])

    async def _take(self) -> tuple[Any, int]:
        if self._closed:
            raise RuntimeError(f"{self.label}: database is closed")
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn, since, where = self._idle.pop()
            reader = getattr(conn, "_reader", None)
            if (
                where != self._active
                or conn.closed
                or reader is None
                or reader.at_eof()
                or getattr(reader, "eof_received", False)  # aiomysql's reader: EOF after data
            ):
                self._discard(conn)
                continue
            if now - since > _PING_AFTER:
                try:
                    await conn.ping(reconnect=False)
                except (pymysql.err.Error, OSError):
                    self._discard(conn)
                    continue
                except BaseException:
                    self._discard(conn)
                    raise
            return conn, where
        conn, where = await _connect_any(self.params, self._active)
        self._open += 1
        if where != self._active:
            log.warning(
                "%s: %s is not usable, moving to %s",
                self.label,
                self.server,
                format_address(self.params.addresses[where]),
            )
            self._active = where
            self.failovers += 1
            self._drop_idle()
        return conn, where

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[_MySQLSession]:
        async with self._slots:
            self._busy += 1
            try:
                conn, where = await self._take()
                try:
                    yield _MySQLSession(conn)
                except BaseException as exc:
                    self._discard(conn)
                    if isinstance(exc, _LostConnection):
                        self._drop_idle()
                    raise
                if self._closed or where != self._active:
                    self._discard(conn)
                else:
                    self._idle.append((conn, asyncio.get_running_loop().time(), where))
            finally:
                self._busy -= 1

    async def _once(self, op: Callable[[_MySQLSession], Awaitable[T]]) -> T:
        server = self.server
        try:
            async with asyncio.timeout(self.params.query_timeout):
                async with self._session() as session:
                    return await op(session)
        except TimeoutError as exc:
            if self.params.clustered:
                # a server that stopped answering: its idle connections would hang the same way
                self._drop_idle()
            raise BackendError(
                "mysql", f"{server}: no result within {self.params.query_timeout:g} s"
            ) from exc

    async def _call(
        self,
        op: Callable[[_MySQLSession], Awaitable[T]],
        *,
        read: bool,
        conflicts: bool = False,
    ) -> T:
        """``op`` on a pooled connection; a conflict runs it again when the pool is clustered
        (Galera), or always with ``conflicts`` (a transaction, which deadlocks can hit)."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                try:
                    return await self._once(op)
                except _LostConnection:
                    if not read:
                        raise
                return await self._once(op)
            except ConflictError:
                # rolled back whole: safe to run again; expected only between Galera nodes
                if not (conflicts or self.params.clustered) or attempt == CONFLICT_RETRIES:
                    raise
                self.conflicts_retried += 1
                await asyncio.sleep(CONFLICT_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._call(lambda s: s.execute(sql, params), read=False)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        batch = [tuple(r) for r in rows]
        if not batch:
            return 0
        return await self._call(lambda s: s.executemany(sql, batch), read=False)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._call(lambda s: s.fetchall(sql, params), read=True)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._call(lambda s: s.fetchone(sql, params), read=True)

    async def script(self, statements: Sequence[str]) -> None:
        await self._call(lambda s: s.script(statements), read=False)

    async def transaction(self, work: Callable[[Session], Awaitable[T]]) -> T:
        async def op(session: _MySQLSession) -> T:
            tx = _MySQLSession(session._conn, autocommit=False)
            # the pool's connections never hold an open transaction (every call commits or
            # closes its connection), so this applies to the one work starts
            await tx.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            result = await work(tx)
            await tx.commit()
            return result

        # on any error _session closes the connection, and the server rolls the work back
        return await self._call(op, read=False, conflicts=True)

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[Session]:
        # named locks are server-wide: qualify by database so two databases don't contend
        lock = f"{self.params.database}.{name}"[:64]
        async with self._session() as session:
            row = await session.fetchone("SELECT GET_LOCK(?, ?)", (lock, LOCK_WAIT))
            if row is None or row[0] != 1:
                raise BackendError(
                    "mysql", f"lock {lock!r} not granted within {LOCK_WAIT:g} s: another migration?"
                )
            yield session
            # on an error the session's connection is closed instead, which frees the lock too
            await session.fetchone("SELECT RELEASE_LOCK(?)", (lock,))

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            conn = self._idle.pop()[0]
            with contextlib.suppress(Exception):
                await conn.ensure_closed()  # a polite COM_QUIT, so the server logs no abort
            self._discard(conn)


# --- opening ------------------------------------------------------------------------------------


async def open_database(
    url: str,
    *,
    pool_size: int | None = None,
    connect_timeout: float | None = None,
) -> Database:
    """The engine for ``url``.

    ``sqlite:///relative/or/absolute/path`` or ``sqlite://:memory:``; or
    ``mysql://user:password@host:port/database`` with optional ``?pool_size=``,
    ``connect_timeout=`` and ``query_timeout=`` (seconds), and ``wsrep_sync_wait=`` (Galera's
    causality checks, set for every session). ``pool_size`` and ``connect_timeout``
    given here win over the URL's.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"database URL {url!r} has no scheme")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        # sqlite:////abs/path keeps its leading slash; sqlite:///rel/path is relative
        return await SQLiteDatabase.open(path or ":memory:")
    if scheme == "mysql":
        params = MySQLParams.from_url(url)
        if pool_size is not None:
            if pool_size < 1:
                raise ConfigError("database pool size must be at least 1")
            params = replace(params, pool_size=pool_size)
        if connect_timeout is not None:
            params = replace(params, connect_timeout=connect_timeout)
        return await MySQLDatabase.open(params)
    raise ConfigError(f"unsupported database URL scheme {scheme!r} (supported: sqlite, mysql)")


async def create_database(url: str) -> None:
    """Create the database ``url`` names if it is missing.

    MySQL needs it before :func:`open_database` can connect, so this connects without one;
    SQLite creates its file on open, so there is nothing to do.
    """
    if not url.startswith("mysql://"):
        return
    params = MySQLParams.from_url(url)
    conn, _ = await _connect_any(params, 0, database=False)
    try:
        await _MySQLSession(conn).execute(
            f"CREATE DATABASE IF NOT EXISTS `{params.database}`"
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
    finally:
        conn.close()


# --- schema migration ---------------------------------------------------------------------------

_VERSION_TABLE = "im_schema_version"
_VERSION_DDL = {
    "sqlite": (
        f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} ("
        " component VARCHAR(64) NOT NULL PRIMARY KEY, version INT NOT NULL)"
    ),
    "mysql": (
        f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} ("
        " component VARCHAR(64) NOT NULL PRIMARY KEY, version INT NOT NULL)"
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    ),
}
_TABLE_EXISTS = {
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    "mysql": (
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
    ),
}
_GET_VERSION = f"SELECT version FROM {_VERSION_TABLE} WHERE component = ?"


async def apply_migrations(db: Database, component: str, steps: Sequence[Sequence[str]]) -> int:
    """Bring ``component`` to version ``len(steps)``; return the version it is at afterwards.

    Step ``i`` (1-based, a list of statements for ``db.dialect``) runs only when the stored
    version is below ``i``, and the version is stored after each step, so a run that failed
    resumes at the step that failed (write steps so that a half-done one can run again, e.g.
    ``IF NOT EXISTS``). The run holds ``db.exclusive``: a second process running it at the same
    time waits, then finds nothing to do. A version above ``len(steps)`` (a newer release
    migrated) is left alone.
    """
    if db.dialect not in _VERSION_DDL:
        raise ConfigError(f"schema migration: unsupported SQL dialect {db.dialect!r}")
    async with db.exclusive("im_migrate") as session:
        await session.execute(_VERSION_DDL[db.dialect])
        row = await session.fetchone(_GET_VERSION, (component,))
        version = 0 if row is None else int(row[0])
        for number in range(version + 1, len(steps) + 1):
            for statement in steps[number - 1]:
                await session.execute(statement)
            if number == 1 and row is None:
                await session.execute(
                    f"INSERT INTO {_VERSION_TABLE} (component, version) VALUES (?, ?)",
                    (component, number),
                )
            else:
                await session.execute(
                    f"UPDATE {_VERSION_TABLE} SET version = ? WHERE component = ?",
                    (number, component),
                )
            version = number
        return version


async def schema_version(db: Database, component: str) -> int:
    """The stored version of ``component``; 0 when it was never migrated."""
    if db.dialect not in _TABLE_EXISTS:
        raise ConfigError(f"schema version: unsupported SQL dialect {db.dialect!r}")
    if await db.fetchone(_TABLE_EXISTS[db.dialect], (_VERSION_TABLE,)) is None:
        return 0
    row = await db.fetchone(_GET_VERSION, (component,))
    return 0 if row is None else int(row[0])


async def require_schema(db: Database, component: str, version: int) -> None:
    """Refuse to run code that needs ``version`` of ``component`` on an older schema."""
    have = await schema_version(db, component)
    if have < version:
        raise ConfigError(
            f"database {db.label}: schema {component!r} is at version {have}, this code needs "
            f"{version}: run `im migrate`"
        )
