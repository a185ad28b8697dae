"""A backing service that goes away while the cluster runs, and comes back.

The services run in one process on the real Redis, RabbitMQ and MySQL, each reached through a
:class:`TcpProxy` that the test cuts: to the process the service is dead, while the service
keeps serving everyone else. For each of the three: client sockets stay open, nothing that got
SENT is lost, and traffic flows again once the service is back, with no restart.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aio_pika
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import MYSQL_URL, REDIS_URL, drop_namespace, require_service
from netproxy import TcpProxy

from cli.migrate import run_migrate
from cli.stack import Stack
from client.core import IMClient, Message, Receipt, befriend
from common.config import Settings
from common.db import MySQLParams, create_database

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

AMQP_URL = os.environ.get("IM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# the test Redis database of this run (IM_TEST_REDIS_URL): each stack's keys carry a prefix of
# their own, removed after the test
FAULT_REDIS_DB = REDIS_URL.rsplit("/", 1)[1] or "0"
FAULT_REDIS_URL = REDIS_URL


def fault_settings(db_url: str, redis_port: int, amqp_port: int, tag: str) -> Settings:
    """The stack's settings, every service reached through its proxy; every port ephemeral
    (the WebSocket one off): 9081-9083 are the machine's, another stack may hold them."""
    return Settings(
        database_url=db_url,
        redis_url=f"redis://127.0.0.1:{redis_port}/{FAULT_REDIS_DB}",
        redis_prefix=f"imtest:{tag}:",
        amqp_url=f"amqp://guest:guest@127.0.0.1:{amqp_port}/?reconnect_interval=0.3",
        amqp_queue=f"imtest.{tag}",
        amqp_shards=1,
        secret="fault-test-secret-0123456789",
        connector_port=0,
        transfer_port=0,
        rest_port=0,
        ws_port=0,
        metrics_port=0,
        node_ttl=1.5,
        node_id="",
    )


async def test_the_fault_stack_binds_no_fixed_port() -> None:
    s = fault_settings("mysql://root@127.0.0.1:1/x", 1, 2, "t")
    ports = [s.connector_port, s.transfer_port, s.rest_port, s.ws_port, s.metrics_port]
    assert ports == [0, 0, 0, 0, 0]


@dataclass
class Faulty:
    stack: Stack
    redis: TcpProxy
    amqp: TcpProxy
    mysql: TcpProxy

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.stack.rest_port}"


@pytest_asyncio.fixture
async def faulty(tmp_path: object) -> AsyncIterator[Faulty]:
    tag = uuid.uuid4().hex[:10]
    params = MySQLParams.from_url(MYSQL_URL)
    try:
        probe = aioredis.from_url(FAULT_REDIS_URL, socket_connect_timeout=1)
        await probe.ping()
        await probe.aclose()
    except Exception as exc:
        require_service("redis", f"no answer at {FAULT_REDIS_URL} ({exc})")
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
        await conn.close()
    except Exception as exc:
        require_service("rabbitmq", f"no answer at {AMQP_URL} ({exc})")
    redis_proxy = await TcpProxy("127.0.0.1", 6379).start()
    amqp_proxy = await TcpProxy("127.0.0.1", 5672).start()
    mysql_proxy = await TcpProxy(params.host, params.port).start()
    database = f"{params.database}_f{tag}"
    auth = (params.user or "root") + (f":{params.password}" if params.password else "")
    db_url = f"mysql://{auth}@127.0.0.1:{mysql_proxy.port}/{database}"
    try:
        await create_database(db_url)
    except Exception as exc:
        require_service("mysql", str(exc))
    settings = fault_settings(db_url, redis_proxy.port, amqp_proxy.port, tag)
    await run_migrate(settings)
    stack = Stack(settings)
    await stack.start()
    try:
        yield Faulty(stack, redis_proxy, amqp_proxy, mysql_proxy)
    finally:
        for proxy in (redis_proxy, amqp_proxy, mysql_proxy):
            await proxy.restore()
        await stack.stop()
        for proxy in (redis_proxy, amqp_proxy, mysql_proxy):
            await proxy.close()
        await drop_namespace(FAULT_REDIS_URL, tag, AMQP_URL, database)


async def pair(rest: str, tag: str) -> tuple[IMClient, IMClient]:
    alice = IMClient(rest, f"alice-{tag}", "password-123")
    bob = IMClient(rest, f"bob-{tag}", "password-123")
    for c in (alice, bob):
        await c.register()
        await c.login()
    await befriend(alice, bob)
    return alice, bob


Done = Callable[[list[Message], set[int]], bool]


async def events_until(
    client: IMClient, done: Done, timeout: float
) -> tuple[list[Message], set[int]]:
    """Messages and SENT receipts surfaced until ``done(messages, sent)`` or ``timeout``."""
    messages: list[Message] = []
    sent: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(messages, sent):
        try:
            ev = await client.next_event(timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        if isinstance(ev, Message):
            messages.append(ev)
        elif isinstance(ev, Receipt) and ev.kind == "SENT":
            sent.add(ev.msg_id)
    return messages, sent


async def send_until_sent(alice: IMClient, to: str, text: str, timeout: float = 30.0) -> int:
    """Send fresh messages until one gets SENT: the path works again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = await alice.send_text(to, text)

        def got_it(messages: list[Message], sent: set[int], msg_id: int = msg_id) -> bool:
            return msg_id in sent

        _, sent = await events_until(alice, got_it, 2.0)
        if msg_id in sent:
            return msg_id
    raise AssertionError("the path never recovered")


async def test_redis_lost_while_running(faulty: Faulty) -> None:
    alice, bob = await pair(faulty.rest, "redis")
    try:
        await alice.connect()
        await bob.connect()
        first = await alice.send_text(bob.user_id, "before")
        got, _ = await events_until(bob, lambda m, s: len(m) >= 1, 10)
        assert [m.msg_id for m in got] == [first]
        await faulty.redis.cut()
        during = [await alice.send_text(bob.user_id, f"during {i}") for i in range(5)]
        _, sent_during = await events_until(alice, lambda m, s: False, 3.0)
        await faulty.redis.restore()
        after = await send_until_sent(alice, bob.user_id, "after")
        _, more_sent = await events_until(alice, lambda m, s: False, 1.0)
        acked = (sent_during | more_sent | {after}) & {*during, after}
        got, _ = await events_until(bob, lambda m, s: acked <= {x.msg_id for x in m}, 20)
        ids = [m.msg_id for m in got]
        assert acked <= set(ids), "a message that got SENT was lost"
        assert len(ids) == len(set(ids))
        assert alice.connected and bob.connected, "a client socket was dropped"
    finally:
        await alice.close()
        await bob.close()


async def test_rabbitmq_lost_while_running(faulty: Faulty) -> None:
    alice, bob = await pair(faulty.rest, "amqp")
    try:
        await alice.connect()  # bob stays offline: he finds his messages in the timeline
        await faulty.amqp.cut()
        during = [await alice.send_text(bob.user_id, f"during {i}") for i in range(3)]
        _, sent_during = await events_until(alice, lambda m, s: False, 3.0)
        await faulty.amqp.restore()
        after = await send_until_sent(alice, bob.user_id, "after")
        acked = (sent_during & set(during)) | {after}
        await bob.connect()
        got, _ = await events_until(bob, lambda m, s: acked <= {x.msg_id for x in m}, 20)
        ids = [m.msg_id for m in got]
        assert acked <= set(ids), "a message that got SENT was lost"
        assert len(ids) == len(set(ids))
        assert alice.connected
    finally:
        await alice.close()
        await bob.close()


async def test_mysql_lost_while_running(faulty: Faulty) -> None:
    """SENT means committed to the timeline with its seq fixed, so nothing sent while MySQL is
    down is SENT; the chats wait in the queue (and in the sender's outbox), the writer retries
    until MySQL is back, and then every one is SENT, once, and Bob gets them all in order."""
    alice, bob = await pair(faulty.rest, "mysql")
    try:
        await alice.connect()
        warm = await send_until_sent(alice, bob.user_id, "warm")  # friendship now cached
        await faulty.mysql.cut()
        during = [await alice.send_text(bob.user_id, f"during {i}") for i in range(10)]
        _, sent = await events_until(alice, lambda m, s: bool(set(during) & s), 3.0)
        assert not set(during) & sent, "SENT for a chat that could not be committed"
        await faulty.mysql.restore()
        _, sent = await events_until(alice, lambda m, s: set(during) <= s, 30.0)
        assert set(during) <= sent
        await bob.connect()
        want = {warm, *during}
        got, _ = await events_until(bob, lambda m, s: want <= {x.msg_id for x in m}, 30)
        assert [m.msg_id for m in got] == [warm, *during]
        assert alice.connected
    finally:
        await alice.close()
        await bob.close()
