"""Restart this machine's Redis, RabbitMQ and MariaDB for fault tests, the way CI starts them.

Only with ``CI=true`` or ``IM_TEST_RESTARTS=1``: restarting someone's database server is not
a thing a test suite does unasked. Each restart waits until the service answers again, and
raises if it does not, so a test never leaves the machine without its services.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time

import pytest

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]
# The pid file matters: without one, start-stop-daemon's --oknodo takes *any* running
# /usr/sbin/mariadbd for "already started" -- and the multi-host tests' Galera nodes (their
# session fixture lives until the end of the run) are exactly that, so MariaDB stayed down.
MARIADB_PIDFILE = "/tmp/im-test-mariadbd.pid"
MARIADB_START = [
    "start-stop-daemon",
    "--start",
    "--oknodo",
    "--background",
    "--pidfile",
    MARIADB_PIDFILE,
    "--make-pidfile",
    "--exec",
    "/usr/sbin/mariadbd",
]


def restarts_allowed() -> None:
    """Skip unless restarting the machine's services was asked for (always in CI)."""
    if os.environ.get("CI") == "true" or os.environ.get("IM_TEST_RESTARTS") == "1":
        return
    pytest.skip("restarts this machine's Redis, RabbitMQ and MariaDB: set IM_TEST_RESTARTS=1")


def answering(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


async def _wait(port: int, up: bool, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while answering(port) != up:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not {'come up' if up else 'stop'} in {timeout:g}s")
        await asyncio.sleep(0.1)


async def _run(*cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await proc.wait()


async def restart_redis(down: float = 1.0) -> None:
    """SHUTDOWN NOSAVE and start again: Redis comes back empty, as it would here."""
    await _run("redis-cli", "-p", "6379", "shutdown", "nosave")
    await _wait(6379, False, 10, "redis")
    await asyncio.sleep(down)
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    await _run(*REDIS_START)
    await _wait(6379, True, 30, "redis")


async def restart_rabbitmq(down: float = 1.0) -> None:
    """Stop and start the broker application (connections drop; durable queues and persistent
    messages stay)."""
    await _run("rabbitmqctl", "stop_app")
    await _wait(5672, False, 30, "rabbitmq")
    await asyncio.sleep(down)
    await _run("rabbitmqctl", "start_app")
    await _wait(5672, True, 120, "rabbitmq")


async def restart_mariadb(down: float = 1.0) -> None:
    """A clean shutdown, then the daemon again."""
    admin = shutil.which("mariadb-admin") or shutil.which("mysqladmin") or "mysqladmin"
    await _run(admin, "-uroot", "shutdown")
    await _wait(3306, False, 30, "mariadb")
    await asyncio.sleep(down)
    await _run(*MARIADB_START)
    await _wait(3306, True, 60, "mariadb")
