"""Shared test helpers and fixtures."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.db import Database, MySQLParams, create_database, open_database
from common.errors import BackendError, ConfigError

REDIS_URL = os.environ.get("IM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MYSQL_URL = os.environ.get("IM_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/im_test")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_service(name: str, reason: str) -> NoReturn:
    """A backing service the test needs is missing: skip locally, fail in CI (``CI=true``)."""
    message = f"{name} not available: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis: ``IM_TEST_REDIS_URL``, default database 15 on localhost."""
    return REDIS_URL


async def connect_redis(url: str) -> aioredis.Redis:
    """A client on the test Redis, or skip (fail in CI) if it does not answer."""
    client = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        require_service("redis", f"no answer at {url} ({exc}); set IM_TEST_REDIS_URL")
    return client


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the test Redis. Tests share the database: use a unique key prefix and delete
    your keys."""
    client = await connect_redis(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """The test MySQL/MariaDB database (``IM_TEST_MYSQL_URL``, default ``im_test`` on localhost),
    created if missing. Its ``im_*`` tables are dropped by :func:`db_url` before each test, so the
    database name must contain "test"."""
    if "test" not in MySQLParams.from_url(MYSQL_URL).database:
        pytest.fail(f"IM_TEST_MYSQL_URL {MYSQL_URL!r}: tests drop tables, use a *test* database")
    try:
        asyncio.run(create_database(MYSQL_URL))
    except (BackendError, ConfigError) as exc:
        require_service("mysql", f"{exc}; set IM_TEST_MYSQL_URL")
    return MYSQL_URL


async def drop_im_tables(url: str) -> None:
    """Drop every ``im_*`` table of the (test) database ``url``."""
    db = await open_database(url, pool_size=1)
    try:
        rows = await db.fetchall(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        )
        for (name,) in rows:
            if str(name).startswith("im_"):
                await db.execute(f"DROP TABLE `{name}`")
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with no ``im_*`` tables, once per engine: a SQLite file in ``tmp_path``,
    and the test MySQL database, cleaned first. Tests name their own tables ``im_test_*``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'im.db'}"
    url: str = request.getfixturevalue("mysql_url")
    asyncio.run(drop_im_tables(url))
    return url


@pytest.fixture(params=["memory", "sqlite", "mysql"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(kind, url)`` of a store to test, once per engine: in memory (no URL), a SQLite file
    in ``tmp_path``, and the test MySQL database with its ``im_*`` tables dropped first
    (tests/groupstores.py opens a group store and its timeline on it)."""
    if request.param == "memory":
        return "memory", ""
    if request.param == "sqlite":
        return "sqlite", f"sqlite:///{tmp_path / 'im.db'}"
    url: str = request.getfixturevalue("mysql_url")
    asyncio.run(drop_im_tables(url))
    return "mysql", url


@pytest_asyncio.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """An open database on :func:`db_url`, once per engine."""
    database = await open_database(db_url)
    try:
        yield database
    finally:
        await database.close()


async def poll_until(cond: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` passes; its last value."""
    for _ in range(max(1, int(timeout / step))):
        if cond():
            return True
        await asyncio.sleep(step)
    return cond()


async def drop_namespace(redis_url: str, tag: str, amqp_url: str, database: str) -> None:
    """Remove what one test's stack left: ``imtest:{tag}:*`` keys, the ``imtest.{tag}`` queue
    (one shard and the dead letters) and the MySQL database ``database``."""
    import aio_pika

    r = aioredis.from_url(redis_url)
    keys = [k async for k in r.scan_iter(match=f"imtest:{tag}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    for suffix in ("tl.0", "tl.dead"):
        await ch.queue_delete(f"imtest.{tag}.{suffix}")
    await conn.close()
    db = await open_database(MYSQL_URL, pool_size=1)
    try:
        await db.execute(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        await db.close()


# -- the web app's browser tests (tests/browser.py); imported late: most tests need none of it


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium under Playwright; skips (fails in CI) without them. Per module:
    Playwright's sync API runs an event loop in this thread while it lives, and the asyncio tests
    of later modules need the thread without one."""
    from browser import chromium

    yield from chromium()


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A REST server with the web app at /app/, on SQLite, for one test module."""
    from browser import rest_server

    yield from rest_server(tmp_path_factory.mktemp("webapp-rest"))


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own storage): one user's browser."""
    from browser import new_context

    ctx = new_context(browser)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: Any, rest: Any) -> Any:
    """A page on the app at /app/."""
    from browser import open_app

    return open_app(context, rest)


# session fixtures of the multi-host tests (test hosts, clustered services); imported last
# because that module uses require_service from here
from multihost import bed, galera, rabbit, sentinels  # noqa: E402, F401
