"""The ``im`` services spread over the test hosts, on clustered backing services.

Each service is its own ``im`` process in its host, as on separate machines: it binds and
advertises its host's address (``IM_BIND_HOST``, ``IM_ADVERTISE_HOST``), registers in Redis and
is found through it, and takes the backing services' address lists from its environment, like a
deployment's. Inside a host the standard ports are free, so every service keeps its default
port (REST 8082, connector 9081, transfer 9082); one host runs at most one service of a role.

Rules:
- the schema is migrated once, by ``im migrate`` in the first host, before anything starts;
- start order is the one ``im cluster`` uses: transfers, writers, connectors, REST;
- a process is stopped with SIGTERM (SIGKILL after a grace period) and killed with SIGKILL by
  pid, never by name; :meth:`AppCluster.restart` starts it again with the same environment.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbed.netns import Testbed, TestbedError

PORTS = {"rest": 8082, "connector": 9081, "transfer": 9082}  # the defaults of common.config
START_ORDER = ("transfer", "offline-writer", "connector", "rest")
START_TIMEOUT = 60.0
STOP_GRACE = 10.0
REPO = Path(__file__).resolve().parent.parent
# REST and a writer on two of the three hosts, a connector and a transfer on each
DEFAULT_LAYOUT: tuple[tuple[str, str], ...] = (
    ("transfer", "app1"),
    ("transfer", "app2"),
    ("transfer", "app3"),
    ("offline-writer", "app2"),
    ("connector", "app1"),
    ("connector", "app2"),
    ("connector", "app3"),
    ("rest", "app1"),
)


@dataclass
class AppProcess:
    name: str  # connector-app2
    role: str  # an `im` subcommand
    host: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return PORTS.get(self.role, 0)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class AppCluster:
    """The services of ``layout`` (role, host) on the given backing services."""

    def __init__(
        self,
        bed: Testbed,
        *,
        database_url: str,
        redis_url: str,
        amqp_url: str,
        layout: Sequence[tuple[str, str]] = DEFAULT_LAYOUT,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        seen = set()
        for role, host in layout:
            if role not in (*PORTS, "offline-writer"):
                raise ValueError(f"unknown role {role!r}")
            if (role, host) in seen:
                raise ValueError(f"two {role}s on {host}: they would share a port")
            seen.add((role, host))
        self.bed = bed
        self.secret = secrets.token_urlsafe(32)
        base = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
        base.update(
            {
                "IM_DATABASE_URL": database_url,
                "IM_REDIS_URL": redis_url,
                "IM_AMQP_URL": amqp_url,
                "IM_SECRET": self.secret,
                "IM_LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
                **(settings or {}),
            }
        )
        self._base = base
        logs = bed.root / "app"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, AppProcess] = {}
        for role, host in layout:
            name = f"{role.removeprefix('offline-')}-{host}"
            addr = bed[host].addr
            env = {
                **base,
                "IM_NODE_ID": name,
                "IM_BIND_HOST": addr,
                "IM_ADVERTISE_HOST": addr,
                "IM_DATA_DIR": str(logs / name),
            }
            self.procs[name] = AppProcess(name, role, host, env, logs / f"{name}.log")

    @property
    def rest_url(self) -> str:
        rest = next(p for p in self.procs.values() if p.role == "rest")
        return f"http://{self.bed[rest.host].addr}:{rest.port}"

    def im(self, host: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run ``im args...`` to completion in ``host``, with the cluster's settings."""
        return self.bed.run(
            host, [sys.executable, "-m", "cli.main", *args], env=self._base, timeout=timeout
        )

    def migrate(self) -> None:
        first = next(iter(self.procs.values())).host
        self.im(first, "migrate", timeout=120)

    def start(self) -> None:
        """Migrate, then start every process in order; return once each listens."""
        self.migrate()
        ordered = sorted(self.procs.values(), key=lambda p: START_ORDER.index(p.role))
        for p in ordered:
            self._spawn(p)
        for p in ordered:
            self._wait_listening(p)

    def _spawn(self, p: AppProcess) -> None:
        p.proc = self.bed.spawn(
            p.host, [sys.executable, "-m", "cli.main", p.role], env=p.env, log=p.log, cwd=REPO
        )

    def _wait_listening(self, p: AppProcess) -> None:
        if not p.port:
            return
        deadline = time.monotonic() + START_TIMEOUT
        addr = self.bed[p.host].addr
        while True:
            if not p.alive:
                raise TestbedError(f"{p.name} exited; see {p.log}")
            with self.bed.inside(p.host), socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((addr, p.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise TestbedError(f"{p.name} does not listen on {addr}:{p.port}; see {p.log}")
            time.sleep(0.1)

    def kill(self, name: str) -> None:
        """SIGKILL one process (by its pid, in its host)."""
        p = self.procs[name]
        if p.proc is None or not p.alive:
            raise TestbedError(f"{name} is not running")
        self.bed.kill(p.host, p.proc.pid)
        p.proc.wait()

    def restart(self, name: str) -> None:
        p = self.procs[name]
        if p.alive:
            raise TestbedError(f"{name} is running")
        self._spawn(p)
        self._wait_listening(p)

    def exited(self) -> dict[str, int]:
        """Processes that ended (by themselves, or killed and not restarted): exit codes."""
        return {
            n: p.proc.returncode
            for n, p in self.procs.items()
            if p.proc is not None and p.proc.poll() is not None
        }

    def stop(self) -> None:
        """SIGTERM in reverse start order, SIGKILL after the grace period."""
        ordered = sorted(self.procs.values(), key=lambda p: START_ORDER.index(p.role))
        for p in reversed(ordered):
            if p.proc is not None and p.alive:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for p in ordered:
            if p.proc is None:
                continue
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
