"""The ops side of running processes (cli/ops.py in cli/stack.py): the ops endpoint of ``im up``,
readiness that follows its backends and the transfer links, draining first at shutdown, kick
and disable reaching a live session within a second, and chat with a webhook receiver that
never answers."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from conftest import MYSQL_URL, REDIS_URL, drop_namespace, free_port, require_service
from netproxy import TcpProxy
from test_e2e import make_users, rest_url, stack_settings
from test_metrics import promtool_check_metrics
from webhook_receiver import Receiver

from cli.migrate import run_migrate
from cli.stack import Stack
from client import Message, ServerError
from client.core import IMClient
from common.config import Settings
from common.db import MySQLParams, create_database

pytestmark = pytest.mark.asyncio

AMQP_URL = os.environ.get("IM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PW = "password-123"


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(url)


async def until_ready(url: str, ready: bool, timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``url`` (a /readyz) until it says ``ready``; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        r = await get(url)
        body: dict[str, Any] = r.json()
        if (r.status_code == 200) == ready or time.monotonic() > deadline:
            assert (r.status_code == 200) == ready, body
            return body
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture
async def up(tmp_path: Path) -> AsyncIterator[Stack]:
    """``im up`` in process with its ops endpoint on, and an admin called root."""
    st = Stack(stack_settings(tmp_path, metrics_port=free_port(), admins="root"))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


def ops_url(st: Stack, path: str) -> str:
    assert st.ops is not None and st.ops.metrics_port
    return f"http://127.0.0.1:{st.ops.metrics_port}{path}"


async def test_im_up_serves_metrics_health_and_readiness(up: Stack) -> None:
    assert any("metrics    http://127.0.0.1:" in line for line in up.describe())
    r = await get(ops_url(up, "/metrics"))
    assert r.status_code == 200
    assert 'im_process_info{node="' in r.text and 'role="connector+rest+transfer+writer"' in r.text
    assert "im_node_links" in r.text
    done = promtool_check_metrics(r.content)
    assert done.returncode == 0, done.stdout + done.stderr
    ready = await until_ready(ops_url(up, "/readyz"), True)
    assert ready["checks"] == {"database": "ok", "schema": "ok", "transfer_link": "ok"}
    assert (await get(ops_url(up, "/healthz"))).json() == {"status": "ok"}
    # REST serves the same three paths on its own port, from the same registry and checks
    rest = rest_url(up)
    assert (await get(f"{rest}/readyz")).json()["checks"] == ready["checks"]
    assert "im_process_info" in (await get(f"{rest}/metrics")).text


async def test_metrics_port_zero_serves_nothing(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    try:
        assert st.ops is not None and st.ops.metrics_port == 0 and st.ops._server is None
        assert not any(line.startswith("metrics") for line in st.describe())
    finally:
        await st.stop()


async def test_readiness_goes_false_before_the_services_stop(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path, metrics_port=free_port()))
    await st.start()
    await until_ready(ops_url(st, "/readyz"), True)
    seen: list[int] = []
    assert st.connector is not None
    stop_connector = st.connector.stop

    async def spy(grace: float = 5.0) -> None:
        # while the connector is stopping, the endpoint is still up and says "not ready"
        seen.append((await get(ops_url(st, "/readyz"))).status_code)
        await stop_connector(grace)

    st.connector.stop = spy  # type: ignore[method-assign]
    port = st.ops.metrics_port if st.ops is not None else 0
    await st.stop()
    assert seen == [503]
    with pytest.raises(httpx.ConnectError):
        await get(f"http://127.0.0.1:{port}/healthz")  # and gone once stopped


async def test_a_connector_is_ready_only_while_linked_to_a_transfer(tmp_path: Path) -> None:
    transfer_port = free_port()
    settings = stack_settings(
        tmp_path,
        metrics_port=free_port(),
        transfer_addrs=f"127.0.0.1:{transfer_port}",
        node_id="connector-x",
    )
    connector = Stack(settings, frozenset({"connector"}))
    await connector.start()
    transfer: Stack | None = None
    try:
        body = await until_ready(ops_url(connector, "/readyz"), False)
        assert body["failed"] == {"transfer_link": "connector-x has no live link to a transfer"}
        transfer = Stack(
            stack_settings(tmp_path, transfer_port=transfer_port, node_id="transfer-x"),
            frozenset({"transfer", "writer"}),
        )
        await transfer.start()
        await until_ready(ops_url(connector, "/readyz"), True)
        metrics = (await get(ops_url(connector, "/metrics"))).text
        assert 'im_node_links{peer="transfer"} 1.0' in metrics
        await transfer.stop()
        transfer = None
        await until_ready(ops_url(connector, "/readyz"), False)
    finally:
        if transfer is not None:
            await transfer.stop()
        await connector.stop()


async def admin_token(st: Stack) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=rest_url(st)) as http:
        await http.post("/users", json={"user_id": "root", "password": PW})
        r = await http.post("/login", json={"user_id": "root", "password": PW})
        return {"Authorization": f"Bearer {r.json()['token']}"}


async def closed_within(st: Stack, user: str, seconds: float) -> float:
    """Seconds until the connector holds no session of ``user``; fails after ``seconds``."""
    assert st.connector is not None
    started = time.monotonic()
    while st.connector.sessions_of(user):
        assert time.monotonic() - started < seconds, f"{user} still connected"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def next_error(c: IMClient, timeout: float = 3.0) -> ServerError:
    while True:
        ev = await c.next_event(timeout)
        if isinstance(ev, ServerError):
            return ev


async def test_kick_closes_the_device_within_a_second(up: Stack) -> None:
    root = await admin_token(up)
    alice, bob = await make_users(up, "kick-alice", "kick-bob")
    laptop = IMClient(rest_url(up), "kick-alice", PW, device_id="laptop")
    await laptop.login()
    await laptop.connect()
    try:
        assert up.connector is not None and len(up.connector.sessions_of("kick-alice")) == 2
        async with httpx.AsyncClient(base_url=rest_url(up)) as http:
            r = await http.post(
                "/admin/users/kick-alice/kick", headers=root, json={"device_id": "laptop"}
            )
            assert r.status_code == 202
        started = time.monotonic()
        while len(up.connector.sessions_of("kick-alice")) != 1:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.01)
        assert [s.device_id for s in up.connector.sessions_of("kick-alice")] == ["default"]
        err = await next_error(laptop)
        assert err.code == "REPLACED" and "administrator" in err.detail
        # the other device is untouched and still chats
        await alice.send_text("kick-bob", "still here")
        while True:
            ev = await bob.next_event(5)
            if isinstance(ev, Message):
                assert ev.text == "still here"
                break
    finally:
        for c in (alice, bob, laptop):
            await c.close()


async def test_disable_logs_the_user_out_everywhere_within_a_second(up: Stack) -> None:
    root = await admin_token(up)
    (carol,) = await make_users(up, "dis-carol")
    try:
        async with httpx.AsyncClient(base_url=rest_url(up)) as http:
            r = await http.post("/admin/users/dis-carol/disable", headers=root, json={})
            assert r.status_code == 200
            await closed_within(up, "dis-carol", 1.0)
            err = await next_error(carol)
            assert err.code == "BAD_TOKEN"
            r = await http.post("/login", json={"user_id": "dis-carol", "password": PW})
            assert r.status_code == 403
    finally:
        await carol.close()


async def test_chat_and_rest_with_a_webhook_receiver_that_never_answers(tmp_path: Path) -> None:
    receiver = await Receiver(delay=60.0).start()
    st = Stack(
        stack_settings(tmp_path, webhook_url=receiver.url, webhook_secret="hook-secret-0123456789")
    )
    await st.start()
    try:
        started = time.monotonic()
        alice, bob = await make_users(st, "hook-alice", "hook-bob")
        ids = [await alice.send_text("hook-bob", f"m{i}") for i in range(20)]
        got: list[int] = []
        while len(got) < len(ids):
            ev = await bob.next_event(10)
            if isinstance(ev, Message):
                got.append(ev.msg_id)
        elapsed = time.monotonic() - started
        assert got == ids
        assert len(await receiver.wait_for(1)) >= 1  # the events did go out (and hang there)
        # each webhook attempt would hold 5 s: one awaited on the way would show plainly
        assert elapsed < 5.0, elapsed
        for c in (alice, bob):
            await c.close()
    finally:
        await st.stop()
        await receiver.stop()


# --- readiness follows the real backends ----------------------------------------------------


@pytest_asyncio.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[Stack, dict[str, TcpProxy]]]:
    """A transfer + writer + connector + REST process on the real Redis, RabbitMQ and MySQL,
    each reached through a proxy the test can cut, with its ops endpoint on."""
    tag = uuid.uuid4().hex[:10]
    params = MySQLParams.from_url(MYSQL_URL)
    try:
        probe = aioredis.from_url(REDIS_URL, socket_connect_timeout=1)
        await probe.ping()
        await probe.aclose()
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
        await conn.close()
    except Exception as exc:
        require_service("redis/rabbitmq", str(exc))
    proxies = {
        "redis": await TcpProxy("127.0.0.1", 6379).start(),
        "rabbitmq": await TcpProxy("127.0.0.1", 5672).start(),
        "database": await TcpProxy(params.host, params.port).start(),
    }
    database = f"{params.database}_r{tag}"
    auth = (params.user or "root") + (f":{params.password}" if params.password else "")
    db_url = f"mysql://{auth}@127.0.0.1:{proxies['database'].port}/{database}?connect_timeout=1"
    try:
        await create_database(db_url)
    except Exception as exc:
        require_service("mysql", str(exc))
    redis_db = REDIS_URL.rsplit("/", 1)[1]
    settings = Settings(
        database_url=db_url,
        redis_url=f"redis://127.0.0.1:{proxies['redis'].port}/{redis_db}"
        "?socket_timeout=1&socket_connect_timeout=1",
        redis_prefix=f"imtest:{tag}:",
        amqp_url=f"amqp://guest:guest@127.0.0.1:{proxies['rabbitmq'].port}/",
        amqp_queue=f"imtest.{tag}",
        amqp_shards=1,
        secret="ready-test-secret-0123456789",
        connector_port=0,
        transfer_port=0,
        rest_port=0,
        metrics_port=free_port(),
        node_ttl=1.5,
        ws_port=0,  # 9083 is the machine's (another stack may hold it), not a test's
    )
    await run_migrate(settings)
    stack = Stack(settings)
    await stack.start()
    try:
        yield stack, proxies
    finally:
        for proxy in proxies.values():
            await proxy.restore()
        await stack.stop()
        for proxy in proxies.values():
            await proxy.close()
        await drop_namespace(REDIS_URL, tag, AMQP_URL, database)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "rabbitmq", "database"])
async def test_readyz_follows_each_backend_down_and_back(
    proxied: tuple[Stack, dict[str, TcpProxy]], backend: str
) -> None:
    stack, proxies = proxied
    url = ops_url(stack, "/readyz")
    body = await until_ready(url, True, timeout=20)
    assert set(body["checks"]) == {"database", "schema", "redis", "rabbitmq", "transfer_link"}
    await proxies[backend].cut()
    body = await until_ready(url, False, timeout=20)
    assert backend in body["failed"], body
    assert (await get(ops_url(stack, "/healthz"))).status_code == 200  # live all along
    await proxies[backend].restore()
    await until_ready(url, True, timeout=30)
