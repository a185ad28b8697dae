"""The services as separate OS processes: ``im transfer``, two ``im connector``, ``im rest``.

They share routing through the real Redis and the SQLite file in one data directory, which is
the embedded backends' multi-process shape. Users land on both connectors, so messages cross
processes: connector A -> transfer -> connector B; offline users come online at the end and
catch up from their timelines. Its keys carry a prefix of its own, so it shares Redis with
anything else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import REDIS_URL, free_port, require_service

pytestmark = pytest.mark.slow
MP_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/14"


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} never opened")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    prefix = f"imtest:mp{uuid.uuid4().hex[:10]}:"
    try:
        r = redis.Redis.from_url(MP_REDIS_URL, socket_connect_timeout=1)
        r.ping()
    except (redis.RedisError, OSError) as exc:
        require_service("redis", f"no answer at {MP_REDIS_URL} ({exc})")
    ports = {"t": free_port(), "c1": free_port(), "c2": free_port(), "rest": free_port()}
    base = {
        **os.environ,
        "IM_DATA_DIR": str(tmp_path),
        "IM_REDIS_URL": MP_REDIS_URL,
        "IM_REDIS_PREFIX": prefix,
        "IM_SECRET": "multi-process-secret-0123",
        "IM_TRANSFER_PORT": str(ports["t"]),
        "IM_TRANSFER_ADDRS": f"127.0.0.1:{ports['t']}",
        "IM_CONNECTOR_ADDRS": f"127.0.0.1:{ports['c1']},127.0.0.1:{ports['c2']}",
        "IM_REST_PORT": str(ports["rest"]),
        "IM_WS_PORT": "0",
        "IM_LOG_LEVEL": "WARNING",
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: str, port: int, **env: str) -> None:
        p = subprocess.Popen(
            [sys.executable, "-m", "cli.main", cmd],
            env={**base, **env},
            stdout=subprocess.DEVNULL,
        )
        procs.append(p)
        wait_port(port, p)

    try:
        start("transfer", ports["t"])
        start("connector", ports["c1"], IM_CONNECTOR_PORT=str(ports["c1"]), IM_NODE_ID="c1")
        start("connector", ports["c2"], IM_CONNECTOR_PORT=str(ports["c2"]), IM_NODE_ID="c2")
        start("rest", ports["rest"])
        yield f"http://127.0.0.1:{ports['rest']}"
        for p in procs:
            assert p.poll() is None, "a service died during the test"
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        keys = list(r.scan_iter(match=f"{prefix}*"))
        if keys:
            r.delete(*keys)
        r.close()


def test_demo_across_processes_and_connectors(cluster: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "demo",
            "--rest",
            cluster,
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
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, report
    assert report["received"] == report["sent"] == report["read"] == 300
    assert report["connectors_used"] == 2
