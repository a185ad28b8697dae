"""The cluster as separate OS processes on the real MySQL, Redis and RabbitMQ.

Two transfers, two connectors, one timeline writer and REST, each an ``im`` process, as
``im cluster`` and docker compose run them. Every test gets its own MySQL database, Redis key
prefix and RabbitMQ queue names, so it can run beside anything else.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aio_pika
import pytest
import pytest_asyncio
import redis
from conftest import MYSQL_URL, REDIS_URL, free_port, require_service

from client.core import IMClient, Message, Receipt, befriend
from common.db import MySQLParams, create_database, open_database

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

AMQP_URL = os.environ.get("IM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CLUSTER_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/13"


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


@dataclass
class Cluster:
    env: dict[str, str]
    database_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.ports['rest']}"

    def start(self, name: str, command: str, port: int = 0, **env: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", command],
            env={**self.env, "IM_NODE_ID": name, **env},
            stdout=subprocess.DEVNULL,
        )
        self.procs[name] = proc
        if port:
            self.ports[name] = port
            wait_port(port, proc)

    def start_connector(self, name: str) -> None:
        port = self.ports.get(name) or free_port()
        self.start(name, "connector", port, IM_CONNECTOR_PORT=str(port))

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        procs = list(self.procs.values())
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    async def timeline_rows(self, user_ids: list[str]) -> int:
        """Messages committed to MySQL sent to or by any of ``user_ids``."""
        db = await open_database(self.database_url, pool_size=1)
        try:
            marks = ", ".join("?" for _ in user_ids)
            row = await db.fetchone(
                "SELECT COUNT(*) FROM im_tl_message m JOIN im_tl_member u"
                f" ON u.conv_id = m.conv_id WHERE u.user_id IN ({marks})",
                user_ids,
            )
            return int(row[0]) if row else 0
        finally:
            await db.close()


def services_env(tag: str) -> dict[str, str]:
    """Environment for one test's cluster; skip (fail in CI) when a service is missing."""
    try:
        r = redis.Redis.from_url(CLUSTER_REDIS_URL, socket_connect_timeout=1)
        r.ping()
        r.close()
    except (redis.RedisError, OSError) as exc:
        require_service("redis", f"no answer at {CLUSTER_REDIS_URL} ({exc})")
    params = MySQLParams.from_url(MYSQL_URL)
    database_url = MYSQL_URL.rsplit("/", 1)[0] + f"/{params.database}_{tag}"
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("IM_")},
        "IM_DATABASE_URL": database_url,
        "IM_REDIS_URL": CLUSTER_REDIS_URL,
        "IM_REDIS_PREFIX": f"imtest:{tag}:",
        "IM_AMQP_URL": AMQP_URL,
        "IM_AMQP_QUEUE": f"imtest.{tag}",
        "IM_AMQP_SHARDS": "2",
        "IM_SECRET": "cluster-test-secret-0123456789",
        "IM_NODE_TTL": "3",
        "IM_LOG_LEVEL": "WARNING",
        "IM_WS_PORT": "0",  # 9083 is the machine's; these tests speak TCP
    }


async def cleanup(env: dict[str, str]) -> None:
    prefix = env["IM_REDIS_PREFIX"]
    r = redis.Redis.from_url(CLUSTER_REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()
    conn = await aio_pika.connect(AMQP_URL)
    ch = await conn.channel()
    for suffix in ("tl.0", "tl.1", "tl.dead"):
        await ch.queue_delete(f"{env['IM_AMQP_QUEUE']}.{suffix}")
    await conn.close()
    db = await open_database(env["IM_DATABASE_URL"].rsplit("/", 1)[0] + "/mysql", pool_size=1)
    try:
        await db.execute(
            f"DROP DATABASE IF EXISTS `{MySQLParams.from_url(env['IM_DATABASE_URL']).database}`"
        )
    finally:
        await db.close()


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    tag = uuid.uuid4().hex[:10]
    env = services_env(tag)
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
        await conn.close()
    except Exception as exc:
        require_service("rabbitmq", f"no answer at {AMQP_URL} ({exc})")
    try:
        await create_database(env["IM_DATABASE_URL"])
    except Exception as exc:
        require_service("mysql", f"{exc}")
    c = Cluster(env, env["IM_DATABASE_URL"])
    try:
        migrate = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cli.main", "migrate"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert migrate.returncode == 0, migrate.stderr
        for name in ("t1", "t2"):
            port = free_port()
            c.start(name, "transfer", port, IM_TRANSFER_PORT=str(port))
        c.start("w1", "offline-writer")
        c.start_connector("c1")
        c.start_connector("c2")
        rest_port = free_port()
        c.start("rest", "rest", rest_port, IM_REST_PORT=str(rest_port))
        yield c
        for name, p in c.procs.items():
            assert p.poll() is None, f"{name} died during the test"
    finally:
        c.stop()
        await cleanup(env)


async def test_demo_across_the_cluster(cluster: Cluster) -> None:
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "cli.main",
            "demo",
            "--rest",
            cluster.rest,
            "--users",
            "10",
            "--messages",
            "300",
            "--offline",
            "3",
            "--json",
            "--timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, report
    for key in ("sent", "delivered", "read", "received"):
        assert report[key] == 300, (key, report)
    assert report["duplicates"] == report["out_of_order"] == report["errors"] == 0
    assert report["connectors_used"] == 2
    # the demo's first three users were offline: their messages were committed through
    # RabbitMQ to MySQL like every other, and found there when they came online
    assert await cluster.timeline_rows([f"demo10-{i:04d}" for i in range(3)]) > 0


Addr = tuple[str, int]


async def users(
    rest: str, tag: str, *devices: str, at: dict[str, Addr] | None = None
) -> tuple[IMClient, list[IMClient]]:
    """Alice (one device) and friend Bob with one client per device name; ``at`` pins a
    client (``"alice"`` or a device name) to a connector."""
    where = at or {}
    alice = IMClient(rest, f"alice-{tag}", "password-123", connector=where.get("alice"))
    await alice.register()
    bobs = [
        IMClient(rest, f"bob-{tag}", "password-123", device_id=d, connector=where.get(d))
        for d in devices
    ]
    await bobs[0].register()
    await alice.login()
    for b in bobs:
        await b.login()
    await befriend(alice, bobs[0])
    for b in bobs[1:]:
        await b.refresh_friends()
    return alice, bobs


async def collect(
    client: IMClient, want: int, timeout: float = 20.0, sender: str = ""
) -> list[Message]:
    """Messages surfaced by ``client`` until ``want`` arrived or ``timeout`` passed."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            ev = await client.next_event(timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        if isinstance(ev, Message) and (not sender or ev.from_id == sender):
            got.append(ev)
    return got


async def wait_sent(client: IMClient, ids: set[int], timeout: float = 20.0) -> set[int]:
    """Which of ``ids`` got SENT within ``timeout`` (other events are dropped)."""
    sent: set[int] = set()
    deadline = time.monotonic() + timeout
    while sent != ids and time.monotonic() < deadline:
        try:
            ev = await client.next_event(timeout=max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        if isinstance(ev, Receipt) and ev.kind == "SENT" and ev.msg_id in ids:
            sent.add(ev.msg_id)
    return sent


async def test_several_devices_online_and_offline_each_get_everything(cluster: Cluster) -> None:
    """Two devices of Bob on two connectors get every message live; while both are away Alice
    sends 30 more, committed through RabbitMQ into MySQL; each device that comes back (new
    devices: they list everything) finds all 40, in order, once."""
    c1 = ("127.0.0.1", cluster.ports["c1"])
    c2 = ("127.0.0.1", cluster.ports["c2"])
    at = {"alice": c1, "phone": c1, "laptop": c2}
    alice, (phone, laptop) = await users(cluster.rest, "dev", "phone", "laptop", at=at)
    try:
        for c in (alice, phone, laptop):
            await c.connect()
        # online on two connectors at once: both devices receive every message
        live = [await alice.send_text(phone.user_id, f"live {i}") for i in range(10)]
        for device in (phone, laptop):
            got = await collect(device, 10, sender=alice.user_id)
            assert [m.msg_id for m in got] == live, device.device_id
        await phone.close()
        await laptop.close()
        await asyncio.sleep(0.2)
        away = [await alice.send_text(phone.user_id, f"away {i}") for i in range(30)]
        assert await wait_sent(alice, set(away)) == set(away)
        assert await cluster.timeline_rows([phone.user_id]) == 40
        phone2 = IMClient(
            cluster.rest, phone.user_id, "password-123", device_id="phone", connector=c1
        )
        laptop2 = IMClient(
            cluster.rest, phone.user_id, "password-123", device_id="laptop", connector=c2
        )
        await asyncio.gather(phone2.connect(), laptop2.connect())
        got_phone, got_laptop = await asyncio.gather(
            collect(phone2, 40, sender=alice.user_id),
            collect(laptop2, 40, sender=alice.user_id),
        )
        for got in (got_phone, got_laptop):
            assert [m.msg_id for m in got] == live + away
            assert [m.seq for m in got] == list(range(1, 41))
        await phone2.close()
        await laptop2.close()
    finally:
        for c in (alice, phone, laptop):
            await c.close()


async def test_connector_killed_users_move_and_nothing_sent_is_lost(cluster: Cluster) -> None:
    """SIGKILL the connector Bob is on while Alice keeps sending; Bob reconnects to the other
    connector. Every message Alice got SENT for reaches Bob, once."""
    c1 = ("127.0.0.1", cluster.ports["c1"])
    c2 = ("127.0.0.1", cluster.ports["c2"])
    alice, (bob,) = await users(cluster.rest, "kill", "phone", at={"alice": c1, "phone": c2})
    try:
        await alice.connect()
        await bob.connect()
        sent_ids: list[int] = []
        for i in range(20):
            sent_ids.append(await alice.send_text(bob.user_id, f"before {i}"))
        before = await collect(bob, 20, sender=alice.user_id)
        assert [m.msg_id for m in before] == sent_ids
        cluster.kill("c2")
        for i in range(20):  # while Bob's connector is dead (and still in Redis until its TTL)
            sent_ids.append(await alice.send_text(bob.user_id, f"during {i}"))
        acked = await wait_sent(alice, set(sent_ids[20:]), timeout=15)
        assert len(acked) == 20, f"{len(acked)} of 20 got SENT"
        await bob.close()
        # a new client: it lists everything, so it finds the 20 it had as well, then the rest
        bob2 = IMClient(cluster.rest, bob.user_id, "password-123", device_id="phone", connector=c1)
        await bob2.connect()
        after = await collect(bob2, 40, sender=alice.user_id)
        assert [m.msg_id for m in after] == sent_ids
        for i in range(5):
            sent_ids.append(await alice.send_text(bob.user_id, f"after {i}"))
        assert [m.msg_id for m in await collect(bob2, 5, sender=alice.user_id)] == sent_ids[40:]
        await bob2.close()
        # within its TTL (3 s here) plus REST's 1 s cache, login hands out only the live one
        carol = IMClient(cluster.rest, alice.user_id, "password-123")
        deadline = time.monotonic() + 3 + 1 + 1
        while (await carol.login()).connectors != [("127.0.0.1", cluster.ports["c1"])]:
            assert time.monotonic() < deadline, "the dead connector is still handed out"
            await asyncio.sleep(0.2)
    finally:
        await alice.close()
        await bob.close()
        cluster.start_connector("c2")  # the fixture checks every process is alive at the end


@pytest.mark.parametrize(
    ("command", "key", "url", "name"),
    [
        ("connector", "IM_REDIS_URL", "redis://127.0.0.1:{port}/0", "redis"),
        ("transfer", "IM_AMQP_URL", "amqp://guest:guest@127.0.0.1:{port}/", "rabbitmq"),
        ("offline-writer", "IM_AMQP_URL", "amqp://guest:guest@127.0.0.1:{port}/", "rabbitmq"),
        ("rest", "IM_DATABASE_URL", "mysql://root@127.0.0.1:{port}/im", "mysql"),
        ("migrate", "IM_DATABASE_URL", "mysql://root@127.0.0.1:{port}/im", "mysql"),
    ],
)
async def test_dead_service_at_start_is_named(
    command: str, key: str, url: str, name: str, tmp_path: object
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IM_")},
        "IM_DATA_DIR": str(tmp_path),
        "IM_CONNECTOR_PORT": str(free_port()),
        "IM_TRANSFER_PORT": str(free_port()),
        "IM_REST_PORT": str(free_port()),
        "IM_WS_PORT": "0",
        "IM_AMQP_URL": AMQP_URL,  # the writer needs one to get as far as connecting
        "IM_SECRET": "cluster-test-secret-0123456789",  # cluster mode refuses to start without
        key: url.format(port=free_port()),
    }
    started = time.monotonic()
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli.main", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("im: ") and f"{name}" in last, last
    assert time.monotonic() - started < 20


async def test_im_cluster_command_runs_demo_and_stops_on_ctrl_c() -> None:
    tag = uuid.uuid4().hex[:10]
    env = services_env(tag)
    env.update(
        IM_REST_PORT=str(free_port()),
        IM_CONNECTOR_PORT=str(free_port()),
        IM_TRANSFER_PORT=str(free_port()),
        IM_METRICS_PORT="0",  # tests/test_ops_cluster.py runs it with them
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "cluster",
        "--connectors",
        "2",
        "--transfers",
        "2",
        "--writers",
        "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while not any("Ctrl-C stops them all" in line for line in lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert raw, "im cluster exited early:\n" + "".join(lines)
            lines.append(raw.decode())
        names = {line.split("|")[0].strip() for line in lines}
        assert {"rest", "transfer-1", "transfer-2", "connector-1", "connector-2"} <= names
        assert {"writer-1", "writer-2"} <= names
        rest = f"http://127.0.0.1:{env['IM_REST_PORT']}"
        demo = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "cli.main",
                "demo",
                "--rest",
                rest,
                "--users",
                "6",
                "--messages",
                "100",
                "--offline",
                "2",
                "--json",
                "--timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(demo.stdout.strip().splitlines()[-1])
        assert demo.returncode == 0, report
        assert report["connectors_used"] == 2
        proc.send_signal(signal.SIGINT)
        rest_of_output = await asyncio.wait_for(proc.stdout.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert "stopping" in rest_of_output.decode()
    finally:
        if proc.returncode is None:
            # SIGTERM first: im cluster stops its children (their own sessions) itself; a
            # SIGKILL here would leave them running
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await cleanup({**env, "IM_AMQP_QUEUE": env["IM_AMQP_QUEUE"]})
