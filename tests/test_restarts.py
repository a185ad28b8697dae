"""Redis, RabbitMQ and MariaDB restarted for real while a conversation goes on.

The cluster's services run in one process (connector, transfer, writer, REST) on this machine's
Redis, RabbitMQ and MariaDB, and a test restarts one of those while Alice keeps sending. Then
traffic stops and the test waits for the system to settle by itself (no manual step): every
message ends SENT, and Bob surfaces all of them once, in their timeline's order (seq 1, 2, 3 ...
with no gap; a chat whose commit failed is resent by Alice's library and takes its place after
those committed meanwhile).

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


class Device:
    """One device's view: the messages it surfaced, in order."""

    def __init__(self, client: IMClient) -> None:
        self.client = client
        self.ids: list[int] = []
        self.seqs: list[int] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for ev in self.client.events():
            if isinstance(ev, Message):
                self.ids.append(ev.msg_id)
                self.seqs.append(ev.seq)
                if not ev.own:
                    await self.client.send_read(ev)
            elif isinstance(ev, Receipt):
                pass

    def check(self, name: str, sent: list[int]) -> None:
        assert len(self.ids) == len(set(self.ids)), f"{name}: a message surfaced twice"
        missing = set(sent) - set(self.ids)
        assert not missing, f"{name}: {len(missing)} of {len(sent)} SENT were lost"
        assert self.seqs == list(range(1, len(self.seqs) + 1)), f"{name}: order or a gap"


async def conversation_through(
    st: Stack, restart: Callable[[], Awaitable[None]], *, bob_online: bool
) -> None:
    """Alice sends every 50 ms from one device before, during and after ``restart``; her
    second device and Bob's first are online throughout (Bob's only if ``bob_online``, else it
    comes back afterwards); a brand-new device of Bob's joins at the end. Then everything
    settles, and every device has every message once, in the timeline's order."""
    rest = f"http://127.0.0.1:{st.rest_port}"
    name = uuid.uuid4().hex[:6]
    a, b = f"alice-{name}", f"bob-{name}"
    alice = IMClient(rest, a, "password-123", resend_after=2.0, device_id="phone")
    bob = IMClient(rest, b, "password-123", resend_after=2.0, device_id="phone")
    alice2 = IMClient(rest, a, "password-123", device_id="laptop")
    bob2 = IMClient(rest, b, "password-123", device_id="laptop")
    bob_new = IMClient(rest, b, "password-123", device_id="tablet")
    clients = (alice, bob, alice2, bob2, bob_new)
    devices = {c: Device(c) for c in clients}
    ids: list[int] = []
    stop = asyncio.Event()
    talker: asyncio.Task[None] | None = None

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
        online = [alice, alice2, bob2] + ([bob] if bob_online else [])
        for c in online:
            await c.connect()
            devices[c].start()
        talker = asyncio.create_task(talk())
        await asyncio.sleep(1.0)
        await restart()
        await asyncio.sleep(3.0)
        stop.set()
        await talker
        await poll_until(lambda: not alice.pending, 60)
        assert alice.pending == 0, f"{alice.pending} messages never got SENT"
        for c in ([] if bob_online else [bob]) + [bob_new]:
            await c.connect()
            devices[c].start()
        others = [alice2, bob, bob2, bob_new]
        await poll_until(lambda: all(set(ids) <= set(devices[c].ids) for c in others), 60)
        for c in others:
            devices[c].check(f"{c.user_id}/{c.device_id}", ids)
        assert devices[alice].ids == [], "the sending device shows its own messages"
        assert all(c.connected for c in clients)
    finally:
        stop.set()
        tasks = [d.task for d in devices.values() if d.task is not None]
        if talker is not None:
            tasks.append(talker)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()


async def test_redis_restarted_empty_during_traffic(stack: Stack) -> None:
    await conversation_through(stack, restart_redis, bob_online=True)


async def test_rabbitmq_restarted_during_traffic_to_an_offline_user(stack: Stack) -> None:
    await conversation_through(stack, restart_rabbitmq, bob_online=False)


async def test_mariadb_restarted_during_traffic(stack: Stack) -> None:
    await conversation_through(stack, restart_mariadb, bob_online=False)
