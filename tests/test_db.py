"""The database seam on both engines: the contract the stores rely on, schema migration, and the
MySQL pool's bounds, time limits and recovery against a real MariaDB/MySQL server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import drop_im_tables, free_port

from cli.migrate import run_migrate
from common.config import Settings
from common.db import (
    Database,
    MySQLDatabase,
    MySQLParams,
    Session,
    apply_migrations,
    open_database,
    require_schema,
    schema_version,
)
from common.errors import BackendError, ConfigError
from rest_web.store import UserStore
from timeline.store import SQLTimelineStore

_MYSQL_TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def create_table(db: Database, name: str, columns: str) -> str:
    return f"CREATE TABLE {name} ({columns})" + (_MYSQL_TABLE if db.dialect == "mysql" else "")


def insert_ignore(db: Database) -> str:
    return "INSERT OR IGNORE" if db.dialect == "sqlite" else "INSERT IGNORE"


def blob(db: Database) -> str:
    return "BLOB" if db.dialect == "sqlite" else "MEDIUMBLOB"


# --- the contract, on both engines ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_placeholders_and_literal_percent(db: Database) -> None:
    await db.execute(create_table(db, "im_test_kv", "k VARCHAR(64) PRIMARY KEY, v VARCHAR(64)"))
    assert await db.execute("INSERT INTO im_test_kv (k, v) VALUES (?, '100%')", ("a",)) == 1
    assert await db.execute("INSERT INTO im_test_kv (k, v) VALUES (?, ?)", ("b", "50%s ?")) == 1
    assert await db.fetchall("SELECT k, v FROM im_test_kv WHERE v LIKE '%0%' ORDER BY k") == [
        ("a", "100%"),
        ("b", "50%s ?"),
    ]
    assert await db.fetchone("SELECT v FROM im_test_kv WHERE k = ?", ("b",)) == ("50%s ?",)
    assert await db.fetchone("SELECT v FROM im_test_kv WHERE k = ?", ("nobody",)) is None
    assert await db.fetchall("SELECT v FROM im_test_kv WHERE k = ?", ("nobody",)) == []


@pytest.mark.asyncio
async def test_text_is_utf8mb4_and_case_sensitive(db: Database) -> None:
    await db.execute(create_table(db, "im_test_kv", "k VARCHAR(64) PRIMARY KEY, v VARCHAR(64)"))
    text = "h\u00e9llo \U0001f44b \u4e2d"  # the emoji needs 4 bytes: utf8mb4, not utf8
    await db.executemany(
        "INSERT INTO im_test_kv (k, v) VALUES (?, ?)", [("Alice", text), ("alice", "lower")]
    )
    assert await db.fetchone("SELECT v FROM im_test_kv WHERE k = ?", ("Alice",)) == (text,)
    assert await db.fetchone("SELECT v FROM im_test_kv WHERE v = ?", (text,)) == (text,)
    assert await db.fetchone("SELECT v FROM im_test_kv WHERE k = ?", ("ALICE",)) is None


@pytest.mark.asyncio
async def test_rowcounts_agree(db: Database) -> None:
    await db.execute(create_table(db, "im_test_kv", "k VARCHAR(64) PRIMARY KEY, v VARCHAR(64)"))
    ignore = f"{insert_ignore(db)} INTO im_test_kv (k, v) VALUES (?, ?)"
    assert await db.execute(ignore, ("a", "1")) == 1  # inserted
    assert await db.execute(ignore, ("a", "2")) == 0  # ignored
    assert await db.executemany(ignore, [("a", "x"), ("b", "x"), ("c", "x")]) == 2
    assert await db.executemany(ignore, []) == 0
    if db.dialect == "mysql":  # an insert-if-new (the timeline store's, as the offline store's was)
        upsert = "INSERT INTO im_test_kv (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE k = k"
        assert await db.execute(upsert, ("a", "3")) == 0
        assert await db.execute(upsert, ("d", "3")) == 1
        assert await db.executemany(upsert, [("d", "y"), ("e", "y")]) == 1

    await db.execute(create_table(db, "im_test_cas", "id INT PRIMARY KEY, has_read INT NOT NULL"))
    await db.executemany("INSERT INTO im_test_cas VALUES (?, 0)", [(1,), (2,), (3,)])
    claim = "UPDATE im_test_cas SET has_read = 1 WHERE id = ? AND has_read = 0"
    assert await db.execute(claim, (1,)) == 1  # the CAS won
    assert await db.execute(claim, (1,)) == 0  # already claimed
    assert await db.executemany(claim, [(1,), (2,), (3,)]) == 2
    assert await db.execute("DELETE FROM im_test_cas WHERE id > ?", (1,)) == 2
    assert await db.execute("DELETE FROM im_test_cas WHERE id > ?", (1,)) == 0


@pytest.mark.asyncio
async def test_binary_round_trips_every_byte(db: Database) -> None:
    # Every byte value as a parameter and back. aiomysql 0.3.2 escapes bytes with a PyMySQL helper
    # that PyMySQL 1.2.1/1.2.2 removed and 1.2.3 made a string (aio-libs/aiomysql issue 1080):
    # with those, every bytes parameter fails, which is what this catches.
    await db.execute(create_table(db, "im_test_bin", f"id INT PRIMARY KEY, data {blob(db)}"))
    every = bytes(range(256))
    big = os.urandom(200_000)  # over BLOB's 64 KiB on MySQL: timeline messages are MEDIUMBLOB
    values = {1: every, 2: every[::-1] * 3, 3: b"", 4: big, 5: b"%s?'\\\x00"}
    await db.execute("INSERT INTO im_test_bin (id, data) VALUES (?, ?)", (1, every))
    await db.executemany(
        "INSERT INTO im_test_bin (id, data) VALUES (?, ?)",
        [(k, v) for k, v in values.items() if k != 1],
    )
    await db.execute("INSERT INTO im_test_bin (id, data) VALUES (?, ?)", (6, bytearray(every)))
    rows = await db.fetchall("SELECT id, data FROM im_test_bin ORDER BY id")
    assert rows == [*sorted(values.items()), (6, every)]
    assert all(type(data) is bytes for _, data in rows)
    assert await db.fetchone("SELECT id FROM im_test_bin WHERE data = ?", (every,)) == (1,)


@pytest.mark.asyncio
async def test_signed_bigint_extremes(db: Database) -> None:
    # uint64 message ids are stored as the signed BIGINT with the same bits (timeline.store)
    await db.execute(create_table(db, "im_test_ids", "id BIGINT PRIMARY KEY"))
    extremes = [-(1 << 63), -1, 0, (1 << 63) - 1]
    await db.executemany("INSERT INTO im_test_ids (id) VALUES (?)", [(v,) for v in extremes])
    assert await db.fetchall("SELECT id FROM im_test_ids ORDER BY id") == [(v,) for v in extremes]
    assert await db.fetchone("SELECT id FROM im_test_ids WHERE id = ?", (-(1 << 63),)) == (
        -(1 << 63),
    )


@pytest.mark.asyncio
async def test_script_runs_statements_in_order(db: Database) -> None:
    await db.script(
        [
            create_table(db, "im_test_s", "n INT PRIMARY KEY"),
            "INSERT INTO im_test_s (n) VALUES (1)",
            "INSERT INTO im_test_s (n) SELECT n + 1 FROM im_test_s",
        ]
    )
    assert await db.fetchall("SELECT n FROM im_test_s ORDER BY n") == [(1,), (2,)]


@pytest.mark.asyncio
async def test_driver_errors_are_backend_errors(db: Database) -> None:
    await db.execute(create_table(db, "im_test_s", "n INT PRIMARY KEY"))
    await db.execute("INSERT INTO im_test_s (n) VALUES (1)")
    for sql in ("SELEC 1", "SELECT * FROM im_test_nowhere", "INSERT INTO im_test_s VALUES (1)"):
        with pytest.raises(BackendError) as err:
            await db.execute(sql)
        assert err.value.service == db.dialect
    with pytest.raises(BackendError):
        await db.fetchall("SELECT * FROM im_test_nowhere")
    with pytest.raises(BackendError):
        await db.script(["INSERT INTO im_test_s VALUES (2)", "INSERT INTO im_test_s VALUES (2)"])
    # the failed statements left nothing behind, and the database still answers
    assert await db.fetchall("SELECT n FROM im_test_s") == [(1,)]


@pytest.mark.asyncio
async def test_transaction_commits_together_or_not_at_all(db: Database) -> None:
    await db.execute(create_table(db, "im_test_tx", "k INT PRIMARY KEY, v INT"))

    async def work(tx: Session) -> list[tuple[object, ...]]:
        await tx.execute("INSERT INTO im_test_tx (k, v) VALUES (1, 1)")
        await tx.executemany("INSERT INTO im_test_tx (k, v) VALUES (?, ?)", [(2, 2), (3, 3)])
        assert await tx.fetchone("SELECT v FROM im_test_tx WHERE k = 2") == (2,)
        return await tx.fetchall("SELECT k FROM im_test_tx ORDER BY k")

    assert await db.transaction(work) == [(1,), (2,), (3,)]

    class Boom(Exception):
        pass

    async def failing(tx: Session) -> None:
        await tx.execute("UPDATE im_test_tx SET v = 10")
        raise Boom

    async def bad_sql(tx: Session) -> None:
        await tx.execute("UPDATE im_test_tx SET v = 20")
        await tx.execute("INSERT INTO im_test_tx (k, v) VALUES (1, 1)")

    with pytest.raises(Boom):
        await db.transaction(failing)
    with pytest.raises(BackendError):
        await db.transaction(bad_sql)
    # neither left anything behind, and the database still answers
    assert await db.fetchall("SELECT v FROM im_test_tx ORDER BY k") == [(1,), (2,), (3,)]


@pytest.mark.asyncio
async def test_transaction_that_deadlocks_runs_again(db: Database) -> None:
    """Two transactions lock two rows in opposite orders: the server rolls one back, and it
    runs again (on one server too, where single statements are not retried)."""
    if db.dialect != "mysql":
        pytest.skip("SQLite has one writer: no deadlocks")
    await db.execute(create_table(db, "im_test_tx", "k INT PRIMARY KEY, v INT"))
    await db.execute("INSERT INTO im_test_tx (k, v) VALUES (1, 0), (2, 0)")
    both_hold_one = asyncio.Barrier(2)
    tries = {1: 0, 2: 0}

    async def bump(first: int, second: int) -> None:
        async def work(tx: Session) -> None:
            tries[first] += 1
            await tx.execute("UPDATE im_test_tx SET v = v + 1 WHERE k = ?", (first,))
            if tries[first] == 1:
                await both_hold_one.wait()
            await tx.execute("UPDATE im_test_tx SET v = v + 1 WHERE k = ?", (second,))

        await db.transaction(work)

    await asyncio.wait_for(asyncio.gather(bump(1, 2), bump(2, 1)), 30)
    assert sorted(tries.values()) == [1, 2]
    assert await db.fetchall("SELECT k, v FROM im_test_tx ORDER BY k") == [(1, 2), (2, 2)]


# --- schema migration ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_migrations_run_each_step_once(db: Database) -> None:
    steps = [
        [create_table(db, "im_test_m", "n INT PRIMARY KEY")],  # not IF NOT EXISTS: once only
        ["INSERT INTO im_test_m (n) VALUES (1)", "INSERT INTO im_test_m (n) VALUES (2)"],
    ]
    assert await schema_version(db, "test") == 0
    assert await apply_migrations(db, "test", steps) == 2
    assert await apply_migrations(db, "test", steps) == 2  # twice: nothing runs again
    steps.append(["INSERT INTO im_test_m (n) VALUES (3)"])
    assert await apply_migrations(db, "test", steps) == 3
    assert await db.fetchall("SELECT n FROM im_test_m ORDER BY n") == [(1,), (2,), (3,)]
    assert await schema_version(db, "test") == 3
    assert await schema_version(db, "other") == 0  # components are independent
    assert await apply_migrations(db, "test", steps[:1]) == 3  # older code: left alone
    assert await db.fetchall("SELECT component, version FROM im_schema_version") == [("test", 3)]


@pytest.mark.asyncio
async def test_failed_migration_resumes(db: Database) -> None:
    steps = [
        [create_table(db, "im_test_m", "n INT PRIMARY KEY")],
        ["INSERT INTO im_test_nowhere (n) VALUES (1)"],
    ]
    with pytest.raises(BackendError):
        await apply_migrations(db, "test", steps)
    # SQLite runs the whole migration as one transaction; MySQL commits DDL as it goes and
    # keeps each step it finished
    done = 0 if db.dialect == "sqlite" else 1
    assert await schema_version(db, "test") == done
    steps[1] = ["INSERT INTO im_test_m (n) VALUES (1)"]
    assert await apply_migrations(db, "test", steps) == 2
    assert await db.fetchall("SELECT n FROM im_test_m") == [(1,)]


@pytest.mark.asyncio
async def test_concurrent_migrations_run_each_step_once(db_url: str) -> None:
    dbs = [await open_database(db_url) for _ in range(5)]
    try:
        # a step that takes a while, so that unlocked runs would overlap
        pause = (
            "DO SLEEP(0.2)"
            if dbs[0].dialect == "mysql"
            else "CREATE TABLE im_test_pause AS WITH RECURSIVE c(x) AS"
            " (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT x FROM c"
        )
        steps = [
            [create_table(dbs[0], "im_test_m", "n INT PRIMARY KEY"), pause],
            ["INSERT INTO im_test_m (n) VALUES (1)"],
        ]
        results = await asyncio.gather(*(apply_migrations(d, "test", steps) for d in dbs))
        assert results == [2] * len(dbs)
        assert await dbs[0].fetchall("SELECT n FROM im_test_m") == [(1,)]
    finally:
        for d in dbs:
            await d.close()


@pytest.mark.asyncio
async def test_require_schema_refuses_an_older_schema(db: Database) -> None:
    with pytest.raises(ConfigError) as err:
        await require_schema(db, "test", 1)
    assert str(err.value) == (
        f"database {db.label}: schema 'test' is at version 0, this code needs 1: run `im migrate`"
    )
    await apply_migrations(db, "test", [[create_table(db, "im_test_m", "n INT")]])
    await require_schema(db, "test", 1)
    await require_schema(db, "test", 0)
    with pytest.raises(ConfigError, match="at version 1, this code needs 2"):
        await require_schema(db, "test", 2)


MIGRATED = [
    "users: version 0 -> 5",
    "files: version 0 -> 1",
    "admin: version 0 -> 1",
    "devices: version 0 -> 1",
    "timeline: version 0 -> 2",
    "groups: version 0 -> 1",
    "offline: no im_offline table, nothing to import",  # a fresh install never gets one
]
UP_TO_DATE = [
    "users: version 5 (up to date)",
    "files: version 1 (up to date)",
    "admin: version 1 (up to date)",
    "devices: version 1 (up to date)",
    "timeline: version 2 (up to date)",
    "groups: version 1 (up to date)",
    "offline: no im_offline table, nothing to import",
]


@pytest.mark.asyncio
async def test_run_migrate_twice_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="")
    assert await run_migrate(settings) == MIGRATED
    assert await run_migrate(settings) == UP_TO_DATE
    db = await open_database(settings.db_url())
    try:
        await UserStore(db).check_schema()
        await SQLTimelineStore(db).check_schema()
    finally:
        await db.close()


@pytest_asyncio.fixture
async def fresh_mysql_url(mysql_url: str) -> AsyncIterator[str]:
    """A MySQL URL whose database does not exist yet (dropped again afterwards)."""
    params = MySQLParams.from_url(mysql_url)
    name = f"{params.database}_migrate"
    url = mysql_url.replace(f"/{params.database}", f"/{name}", 1)
    admin = await open_database(mysql_url, pool_size=1)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS `{name}`")
        yield url
        await admin.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await admin.close()


@pytest.mark.asyncio
async def test_run_migrate_twice_on_mysql_creates_the_database(
    fresh_mysql_url: str, tmp_path: Path
) -> None:
    # not there yet, and the error says what to do
    with pytest.raises(BackendError, match="im migrate"):
        await open_database(fresh_mysql_url)
    settings = Settings(data_dir=tmp_path, database_url=fresh_mysql_url)
    assert await run_migrate(settings) == MIGRATED
    assert await run_migrate(settings) == UP_TO_DATE
    db = await open_database(fresh_mysql_url)
    try:
        assert await db.fetchone(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM"
            " information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()"
        ) == ("utf8mb4", "utf8mb4_bin")
        await UserStore(db).check_schema()
        await SQLTimelineStore(db).check_schema()
    finally:
        await db.close()


# --- MySQL: URL, pool, time limits, recovery ------------------------------------------------------


def test_mysql_url_options() -> None:
    p = MySQLParams.from_url(
        "mysql://bob:p%40ss%3A@db.example:3307/im?pool_size=3&connect_timeout=2"
    )
    assert (p.host, p.port, p.user, p.password, p.database) == (
        "db.example",
        3307,
        "bob",
        "p@ss:",
        "im",
    )
    assert (p.pool_size, p.connect_timeout) == (3, 2.0)
    assert p.label == "mysql bob@db.example:3307/im"  # never the password
    d = MySQLParams.from_url("mysql://localhost/im")
    assert (d.port, d.user, d.pool_size) == (3306, None, 10)
    for bad in (
        "mysql://root@localhost/",
        "mysql://root@localhost",
        "mysql://root@localhost/im;drop",
        "mysql://root@localhost/im?pool_size=0",
        "mysql://root@localhost/im?pool_size=x",
        "mysql://root@localhost/im?colour=blue",
        "mysql://root@localhost:99999/im",
    ):
        with pytest.raises(ConfigError):
            MySQLParams.from_url(bad)


@pytest.mark.asyncio
async def test_open_refuses_bad_urls() -> None:
    with pytest.raises(ConfigError):
        await open_database("mysql://root@127.0.0.1/im_test", pool_size=0)
    with pytest.raises(ConfigError):
        await open_database("postgres://root@127.0.0.1/im")


@pytest.mark.asyncio
async def test_closed_port_fails_fast() -> None:
    port = free_port()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(BackendError) as err:
        await open_database(f"mysql://root@127.0.0.1:{port}/im_test")
    assert loop.time() - start < 3
    assert err.value.service == "mysql"
    assert f"127.0.0.1:{port}" in str(err.value)


@pytest.mark.asyncio
async def test_silent_server_times_out() -> None:
    """A server that accepts and never answers (hung, or not MySQL) fails the open in time."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with pytest.raises(BackendError, match=rf"127\.0\.0\.1:{port}: no answer within 0\.3 s"):
            await open_database(f"mysql://root@127.0.0.1:{port}/im_test?connect_timeout=0.3")
        assert loop.time() - start < 2
        assert accepted  # it did get as far as the server
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest_asyncio.fixture
async def mysql_clean(mysql_url: str) -> str:
    """The test MySQL database with no ``im_*`` tables."""
    await drop_im_tables(mysql_url)
    return mysql_url


async def connection_id(db: Database) -> int:
    row = await db.fetchone("SELECT CONNECTION_ID()")
    assert row is not None
    return int(row[0])


@pytest.mark.asyncio
async def test_pool_is_bounded(mysql_url: str) -> None:
    db = await open_database(mysql_url, pool_size=3)
    assert isinstance(db, MySQLDatabase)
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, db.open_connections)
            await asyncio.sleep(0.002)

    async def query() -> int:
        row = await db.fetchone("SELECT CONNECTION_ID(), SLEEP(0.05)")
        assert row is not None
        return int(row[0])

    watcher = asyncio.create_task(watch())
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        ids = await asyncio.gather(*(query() for _ in range(12)))
    finally:
        done.set()
        await watcher
        elapsed = loop.time() - start
        await db.close()
    assert len(ids) == 12
    assert len(set(ids)) == 3  # the server saw exactly pool_size connections
    assert peak == 3
    assert elapsed >= 4 * 0.05 * 0.9  # 12 sleeps, at most 3 at a time
    assert db.open_connections == 0  # closed


@pytest.mark.asyncio
async def test_recovers_after_pooled_connections_are_killed(mysql_clean: str) -> None:
    db = await open_database(mysql_clean, pool_size=3)
    assert isinstance(db, MySQLDatabase)
    admin = await open_database(mysql_clean, pool_size=1)
    try:
        await db.execute(create_table(db, "im_test_k", "n INT PRIMARY KEY"))
        rows = await asyncio.gather(
            *(db.fetchone("SELECT CONNECTION_ID(), SLEEP(0.05)") for _ in range(3))
        )
        pooled = {int(row[0]) for row in rows if row is not None}
        assert len(pooled) == 3
        for conn_id in pooled:  # as a server restart or an operator would
            await admin.execute(f"KILL {conn_id}")
        # the next calls, writes as well as reads, run on new connections
        assert await db.execute("INSERT INTO im_test_k (n) VALUES (?)", (1,)) == 1
        assert await db.fetchall("SELECT n FROM im_test_k") == [(1,)]
        assert await connection_id(db) not in pooled
        assert db.open_connections == 1  # the dead ones were dropped, not kept
    finally:
        await db.close()
        await admin.close()


@pytest.mark.asyncio
async def test_read_is_retried_when_its_connection_dies(mysql_url: str) -> None:
    db = await open_database(mysql_url, pool_size=1)
    admin = await open_database(mysql_url, pool_size=1)
    try:
        victim = await connection_id(db)
        read = asyncio.create_task(db.fetchone("SELECT CONNECTION_ID(), SLEEP(0.4)"))
        await asyncio.sleep(0.15)
        assert not read.done()
        await admin.execute(f"KILL {victim}")
        row = await asyncio.wait_for(read, 5)
        assert row is not None and row[0] != victim  # answered on a fresh connection
    finally:
        await db.close()
        await admin.close()


@pytest.mark.asyncio
async def test_write_is_not_retried_when_its_connection_dies(mysql_clean: str) -> None:
    db = await open_database(mysql_clean, pool_size=1)
    admin = await open_database(mysql_clean, pool_size=1)
    try:
        await db.execute(create_table(db, "im_test_k", "n INT PRIMARY KEY"))
        victim = await connection_id(db)
        write = asyncio.create_task(db.execute("INSERT INTO im_test_k (n) SELECT 7 + SLEEP(0.4)"))
        await asyncio.sleep(0.15)
        await admin.execute(f"KILL {victim}")
        with pytest.raises(BackendError) as err:
            await asyncio.wait_for(write, 5)
        assert err.value.service == "mysql"
        # the caller decides about the lost write; the database works again at once
        assert await db.execute("INSERT INTO im_test_k (n) VALUES (8)") == 1
        assert await db.fetchall("SELECT n FROM im_test_k") == [(8,)]
    finally:
        await db.close()
        await admin.close()


@pytest.mark.asyncio
async def test_cancelled_call_passes_through_and_drops_its_connection(mysql_url: str) -> None:
    db = await open_database(mysql_url, pool_size=1)
    assert isinstance(db, MySQLDatabase)
    try:
        busy = await connection_id(db)
        call = asyncio.create_task(db.fetchone("SELECT SLEEP(3)"))
        await asyncio.sleep(0.15)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert db.open_connections == 0  # not returned to the pool mid-query
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await connection_id(db) != busy
        assert loop.time() - start < 1
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_query_timeout(mysql_url: str) -> None:
    sep = "&" if "?" in mysql_url else "?"
    db = await open_database(f"{mysql_url}{sep}query_timeout=0.3", pool_size=1)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(BackendError, match=r"no result within 0\.3 s"):
            await db.fetchone("SELECT SLEEP(3)")
        assert loop.time() - start < 2
        assert await db.fetchone("SELECT 1") == (1,)
    finally:
        await db.close()
