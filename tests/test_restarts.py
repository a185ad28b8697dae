"""Redis, RabbitMQ and MariaDB restarted for real while a conversation goes on.

The cluster's services run in one process (connector, transfer, writer, REST) on this machine's
Redis, RabbitMQ and MariaDB, and a test restarts one of those while Alice keeps sending. Then
traffic stops and the test waits for the system to settle by itself (no manual step): every
message ends SENT, and Bob surfaces all of them once, in order.

What a restart can and cannot save: Redis here keeps nothing on disk, so it comes back empty —
who is online where and which nodes are alive are written again by the processes themselves
(heartbeats notice they are missing, connectors announce their sessions, pub/sub resubscribes);
the messages were never in Redis. RabbitMQ keeps its durable queues and persistent messages;
MariaDB its committed rows. What was in flight at the moment of the restart had no SENT yet,
so the client library sends it again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import (
    MYSQL_URL,
    REDIS_URL,
    drop_namespace,
    free_port,
    poll_until,
    require_service,
)
from services import restart_mariadb, restart_rabbitmq, restart_redis, restarts_allowed
from test_faults import AMQP_URL

from cli.migrate import run_migrate
from cli.stack import Stack
from client.core import IMClient, Message, Receipt, befriend
from common.config import Settings
from common.db import MySQLParams

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

RESTART_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/14"


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    restarts_allowed()
    tag = uuid.uuid4().hex[:10]
    try:
        probe = aioredis.from_url(RESTART_REDIS_URL, socket_connect_timeout=1)
        await probe.ping()
        await probe.aclose()
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
        await conn.close()
    except Exception as exc:
        require_service("redis/rabbitmq", str(exc))
    params = MySQLParams.from_url(MYSQL_URL)
    database = f"{params.database}_r{tag}"
    db_url = MYSQL_URL.rsplit("/", 1)[0] + f"/{database}"
    settings = Settings(
        data_dir=tmp_path,
        database_url=db_url,
        redis_url=RESTART_REDIS_URL,
        redis_prefix=f"imtest:{tag}:",
        amqp_url=AMQP_URL + "?reconnect_interval=0.5",
        amqp_queue=f"imtest.{tag}",
        amqp_shards=1,
        secret="restart-test-secret-0123456789",
        connector_port=0,
        transfer_port=0,
        rest_port=free_port(),
        node_ttl=2.0,
        node_id="",
    )
    try:
        await run_migrate(settings)
    except Exception as exc:
        require_service("mysql", str(exc))
    st = Stack(settings)
    await st.start()
    try:
        yield st
    finally:
        await st.stop()
        await drop_namespace(RESTART_REDIS_URL, tag, AMQP_URL, database)


async def conversation_through(
    st: Stack, restart: Callable[[], Awaitable[None]], *, bob_online: bool
) -> None:
    """Alice sends every 50 ms before, during and after ``restart``; then everything settles."""
    rest = f"http://127.0.0.1:{st.rest_port}"
    name = uuid.uuid4().hex[:6]
    alice = IMClient(rest, f"alice-{name}", "password-123", resend_after=2.0)
    bob = IMClient(rest, f"bob-{name}", "password-123", resend_after=2.0)
    got: list[int] = []
    ids: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def read(c: IMClient, into: list[int] | None) -> None:
        async for ev in c.events():
            if isinstance(ev, Message) and into is not None:
                into.append(ev.msg_id)
                await c.send_read(ev)
            elif isinstance(ev, Receipt):
                pass

    stop = asyncio.Event()

    async def talk() -> None:
        while not stop.is_set():
            ids.append(await alice.send_text(bob.user_id, f"m{len(ids)}"))
            await asyncio.sleep(0.05)

    try:
        for c in (alice, bob):
            await c.register()
            await c.login()
        await befriend(alice, bob)
        await bob.refresh_friends()
        await alice.connect()
        tasks.append(asyncio.create_task(read(alice, None)))
        if bob_online:
            await bob.connect()
            tasks.append(asyncio.create_task(read(bob, got)))
        tasks.append(asyncio.create_task(talk()))
        await asyncio.sleep(1.0)
        await restart()
        await asyncio.sleep(3.0)
        stop.set()
        await poll_until(lambda: not alice.pending, 60)
        assert alice.pending == 0, f"{alice.pending} messages never got SENT"
        if not bob_online:
            await bob.connect()
            tasks.append(asyncio.create_task(read(bob, got)))
        await poll_until(lambda: set(ids) <= set(got), 60)
        assert len(got) == len(set(got)), "a message surfaced twice"
        assert set(ids) <= set(got), f"{len(set(ids) - set(got))} of {len(ids)} SENT were lost"
        assert got == ids, "out of order"
        assert alice.connected and bob.connected
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await alice.close()
        await bob.close()


async def test_redis_restarted_empty_during_traffic(stack: Stack) -> None:
    await conversation_through(stack, restart_redis, bob_online=True)


async def test_rabbitmq_restarted_during_traffic_to_an_offline_user(stack: Stack) -> None:
    await conversation_through(stack, restart_rabbitmq, bob_online=False)


async def test_mariadb_restarted_during_traffic(stack: Stack) -> None:
    await conversation_through(stack, restart_mariadb, bob_online=False)
