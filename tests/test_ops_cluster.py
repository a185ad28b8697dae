"""``im cluster`` with its ops endpoints, on the real MySQL, Redis and RabbitMQ: every process is
ready and its /metrics passes ``promtool`` while ``im demo`` runs, the counters grow by what the
demo did, and the admin API's kick and disable reach a session on another process within a
second (the Redis buses)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from typing import Any

import aio_pika
import httpx
import pytest
from conftest import MYSQL_URL, REDIS_URL, drop_namespace, poll_until, require_service
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import promtool_check_metrics
from webhook_receiver import Receiver

from client import ServerError
from client.core import IMClient
from common.db import MySQLParams

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

AMQP_URL = os.environ.get("IM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PW = "password-123"
HOOK_SECRET = "cluster-hook-secret-0123456789"


def free_block(size: int) -> int:
    """A port ``p`` with ``p .. p + size - 1`` all free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + size > 65000:
            continue
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free block of ports")


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def total(text: str, name: str) -> float:
    return sum(series(text, name).values())


async def scrape(urls: dict[str, str]) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=5) as http:
        return {name: (await http.get(url)).text for name, url in urls.items()}


async def next_error(c: IMClient, timeout: float) -> ServerError:
    while True:
        ev = await c.next_event(timeout)
        if isinstance(ev, ServerError):
            return ev


async def test_cluster_ops_endpoints_demo_and_admin_across_processes() -> None:
    tag = uuid.uuid4().hex[:10]
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
        await conn.close()
    except Exception as exc:
        require_service("rabbitmq", str(exc))
    params = MySQLParams.from_url(MYSQL_URL)
    database = f"{params.database}_o{tag}"
    base = free_block(30)
    receiver = await Receiver(secret=HOOK_SECRET).start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IM_")},
        "IM_DATABASE_URL": MYSQL_URL.rsplit("/", 1)[0] + f"/{database}",
        "IM_REDIS_URL": REDIS_URL,
        "IM_REDIS_PREFIX": f"imtest:{tag}:",
        "IM_AMQP_URL": AMQP_URL,
        "IM_AMQP_QUEUE": f"imtest.{tag}",
        "IM_AMQP_SHARDS": "1",
        "IM_SECRET": "ops-cluster-secret-0123456789",
        "IM_NODE_TTL": "3",
        "IM_LOG_LEVEL": "WARNING",
        "IM_CONNECTOR_PORT": str(base),
        "IM_TRANSFER_PORT": str(base + 1),
        "IM_REST_PORT": str(base + 2),
        "IM_WS_PORT": "0",  # 9083 is the machine's (another stack may hold it), not a test's
        "IM_METRICS_PORT": str(base + 9),  # as 9081/9090: ops ports base+15, +16, +17, +25, +26
        "IM_ADMINS": "root",
        "IM_WEBHOOK_URL": receiver.url,
        "IM_WEBHOOK_SECRET": HOOK_SECRET,
    }
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
        "1",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    lines: list[str] = []
    clients: list[IMClient] = []
    try:
        assert proc.stdout is not None
        while not any("Ctrl-C stops them all" in line for line in lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), 90)
            if not raw:
                require_service("mysql/redis", "im cluster exited:\n" + "".join(lines))
            lines.append(raw.decode())
        pump = asyncio.ensure_future(proc.stdout.read())  # keep the pipe drained
        rest = f"http://127.0.0.1:{base + 2}"
        urls = {"rest": f"{rest}/metrics"}
        for line in lines:
            m = re.search(r"\|\s+(\S+)\s.*metrics (http://\S+/metrics)", line)
            if m:
                urls[m.group(1)] = m.group(2)
        assert set(urls) == {
            "rest",
            "connector-1",
            "connector-2",
            "transfer-1",
            "transfer-2",
            "writer-1",
        }, lines
        assert urls["connector-2"].endswith(f":{base + 25}/metrics")
        async with httpx.AsyncClient(timeout=5) as http:
            for name, url in urls.items():
                r = await http.get(url.replace("/metrics", "/readyz"))
                assert r.status_code == 200, (name, r.text)
                checks = set(r.json()["checks"])
                assert {"database", "schema", "redis"} <= checks, (name, checks)
                if name.startswith("connector"):
                    assert "transfer_link" in checks
                if name.startswith(("transfer", "writer")):
                    assert "rabbitmq" in checks
        before = await scrape(urls)
        for name, text in before.items():
            role = next(iter(series(text, "im_process_info")))
            assert dict(role)["role"] in name or name == "writer-1", (name, role)
        demo = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "demo", "--rest", rest, "--users", "6",
            "--messages", "60", "--offline", "2", "--json", "--timeout", "60",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # every process's /metrics passes promtool while the demo runs
        while demo.returncode is None:
            for name, text in (await scrape(urls)).items():
                done = promtool_check_metrics(text.encode())
                assert done.returncode == 0, (name, done.stdout + done.stderr)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(demo.wait()), 0.5)
        out, err = await demo.communicate()
        report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        assert demo.returncode == 0, (report, err.decode()[-2000:])
        after = await scrape(urls)
        logins = series(after["rest"], "im_login_total")[(("outcome", "ok"),)]
        logins -= series(before["rest"], "im_login_total")[(("outcome", "ok"),)]
        assert logins >= report["users"]
        lookups = sum(
            total(after[t], name) - total(before[t], name)
            for t in ("transfer-1", "transfer-2")
            for name in ("im_route_cache_hits_total", "im_route_cache_misses_total")
        )
        assert lookups >= report["messages"]  # one routing lookup per message at least

        def accepted(text: str) -> float:
            return sum(
                v for labels, v in series(text, "im_messages_total").items()
                if dict(labels)["outcome"] == "accepted"
            )  # fmt: skip

        # each message counted once cluster-wide: by the writer that committed it
        connectors = ("connector-1", "connector-2")
        grown = accepted(after["writer-1"]) - accepted(before["writer-1"])
        assert grown == report["messages"], (grown, report)
        for name in ("rest", "transfer-1", "transfer-2", *connectors):
            assert accepted(after[name]) == 0, name
        sent = sum(
            series(after[c], "im_receipts_total")[(("type", "sent"),)]
            - series(before[c], "im_receipts_total")[(("type", "sent"),)]
            for c in connectors
        )
        assert sent == report["messages"]  # one SENT per message: one device each
        for c in connectors:
            assert series(after[c], "im_connections")[(("state", "authenticated"),)] >= 0
        links = sum(series(after[t], "im_node_links")[(("peer", "connector"),)] for t in
                    ("transfer-1", "transfer-2"))  # fmt: skip
        assert links == 4  # both connectors linked to both transfers

        # the transfers' message webhooks: message.sent for every message, message.offline for
        # every one to the users the demo kept offline while it sent, each signed and once
        def events(kind: str) -> list[dict[str, Any]]:
            out = [r for r in receiver.requests if r.headers.get("x-im-event") == kind]
            assert all(r.signed_ok for r in out)
            return [r.json()["data"] for r in out]  # type: ignore[misc]

        await poll_until(lambda: len(events("message.sent")) >= report["messages"], 15)
        await asyncio.sleep(0.5)  # time for one too many to come
        sent_events = events("message.sent")
        ids = {(e["from_id"], e["msg_id"]) for e in sent_events}  # a message id is per sender
        assert len(ids) == len(sent_events) == report["messages"]
        kept_off = {f"-{i:04d}" for i in range(report["offline_users"])}
        to_offline = {
            (e["from_id"], e["msg_id"]) for e in sent_events if e["to_id"][-5:] in kept_off
        }
        offline_events = events("message.offline")
        assert to_offline and len(offline_events) == len(to_offline)
        assert {(e["from_id"], e["msg_id"]) for e in offline_events} == to_offline
        for c in ("connector-1", "connector-2"):
            assert series(after[c], "im_node_links")[(("peer", "transfer"),)] == 2

        async with httpx.AsyncClient(base_url=rest, timeout=10) as http:
            await http.post("/users", json={"user_id": "root", "password": PW})
            r = await http.post("/login", json={"user_id": "root", "password": PW})
            root = {"Authorization": f"Bearer {r.json()['token']}"}
            stats = (await http.get("/admin/stats", headers=root)).json()
            assert [c["node_id"] for c in stats["connectors"]] == ["connector-1", "connector-2"]
            assert [t["node_id"] for t in stats["transfers"]] == ["transfer-1", "transfer-2"]
            assert "timeline" in stats["queues"]

            # a kick and a disable, from REST to whichever connector holds the session
            for user in ("kicked", "disabled"):
                client = IMClient(rest, user, PW, device_id="phone")
                clients.append(client)
                await client.register()
                await client.login()
                await client.connect()
            started = time.monotonic()
            r = await http.post("/admin/users/kicked/kick", headers=root, json={})
            assert r.status_code == 202
            err1 = await next_error(clients[0], 5)
            kick_s = time.monotonic() - started
            assert err1.code == "REPLACED" and kick_s < 1.0, (err1, kick_s)
            started = time.monotonic()
            r = await http.post("/admin/users/disabled/disable", headers=root, json={})
            assert r.status_code == 200
            err2 = await next_error(clients[1], 5)
            disable_s = time.monotonic() - started
            assert err2.code == "BAD_TOKEN" and disable_s < 1.0, (err2, disable_s)
            online = (await http.get("/admin/users/online", headers=root)).json()
            assert "disabled" not in {u["user_id"] for u in online["users"]}
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await pump
    finally:
        for client in clients:
            await client.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        await receiver.stop()
        await drop_namespace(REDIS_URL, tag, AMQP_URL, database)
