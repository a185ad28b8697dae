"""Redis with Sentinel in the test hosts: a primary, replicas, and sentinels that fail over.

Started from Debian's ``redis-server`` (a sentinel is ``redis-server <conf> --sentinel``, which is
all the ``redis-sentinel`` package adds), each in its host, with its files under the testbed's
root. Nothing is written to disk but the sentinels' own config (Sentinel rewrites it as it
learns the topology): Redis holds only state the cluster rebuilds, as on the single server.

Rules:
- the sentinels are the source of truth for who is primary: :meth:`SentinelGroup.primary` asks
  them, never remembers;
- a Redis that comes back after being killed is started as a replica of the current primary
  (:meth:`SentinelGroup.restart`). Started alone it would be an empty primary, and if that
  happened before the sentinels noticed it had died, the replica would resync from it and
  the data would be gone;
- quorum 2 of 3 sentinels: one sentinel host can be lost or partitioned and failover still
  happens, and a lone sentinel cannot promote anything.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.netns import Testbed, TestbedError

REDIS_PORT = 6379
SENTINEL_PORT = 26379
SERVICE = "im"
# Sentinel's defaults are 30 s to call a primary down and 3 min per failover attempt: made for
# WANs. On one bridge a second of silence is already a death; docs/deployment.md has the
# production choice.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
READY_TIMEOUT = 30.0


@dataclass
class _Node:
    host: str
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None


class SentinelGroup:
    """Redis on ``primary`` and ``replicas``, sentinels on ``sentinels`` (three, for quorum 2)."""

    def __init__(
        self,
        bed: Testbed,
        *,
        primary: str,
        replicas: Sequence[str],
        sentinels: Sequence[str],
        service: str = SERVICE,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
    ) -> None:
        if len(sentinels) < 3:
            raise ValueError("three sentinels or more: a quorum of two must survive one loss")
        self.bed = bed
        self.service = service
        self.quorum = len(sentinels) // 2 + 1
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        root = bed.root / "redis"
        self.redis = {h: _Node(h, REDIS_PORT, root / f"redis-{h}") for h in (primary, *replicas)}
        self.sentinels = {h: _Node(h, SENTINEL_PORT, root / f"sentinel-{h}") for h in sentinels}
        self._first_primary = primary

    # -- addresses -------------------------------------------------------------------------------

    def url(self, db: int = 0) -> str:
        """``IM_REDIS_URL`` for the app: ``redis+sentinel://s1:26379,s2:26379,.../im/0``."""
        where = ",".join(f"{self.bed[h].addr}:{n.port}" for h, n in self.sentinels.items())
        return f"redis+sentinel://{where}/{self.service}/{db}"

    def _host_of(self, addr: str) -> str:
        for name, host in self.bed.hosts.items():
            if host.addr == addr:
                return name
        raise TestbedError(f"no host has address {addr}")

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Primary, replicas, sentinels; returns once every sentinel sees every replica and
        the other sentinels (before that a failover could not happen)."""
        primary = self.redis[self._first_primary]
        self._start_redis(primary, replica_of=None)
        for node in self.redis.values():
            if node is not primary:
                self._start_redis(node, replica_of=self.bed[primary.host].addr)
        for node in self.sentinels.values():
            self._start_sentinel(node, self.bed[primary.host].addr)
        self.wait_ready()

    def stop(self) -> None:
        for node in [*self.sentinels.values(), *self.redis.values()]:
            self._stop(node)

    def _stop(self, node: _Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        node.proc = None

    def _start_redis(self, node: _Node, replica_of: str | None) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        addr = self.bed[node.host].addr
        argv = [
            "redis-server",
            "--bind", addr, "127.0.0.1",
            "--port", str(node.port),
            "--protected-mode", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(node.dir),
            "--logfile", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if replica_of is not None:
            argv += ["--replicaof", replica_of, str(REDIS_PORT)]
        node.proc = self.bed.spawn(node.host, argv, log=node.dir / "redis.log")
        self._wait_ping(node)

    def _start_sentinel(self, node: _Node, primary_addr: str) -> None:
        node.dir.mkdir(parents=True, exist_ok=True)
        conf = node.dir / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {node.port}",
                    f"bind {self.bed[node.host].addr} 127.0.0.1",
                    "protected-mode no",
                    f"dir {node.dir}",
                    f"sentinel monitor {self.service} {primary_addr} {REDIS_PORT} {self.quorum}",
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {self.service} 1",
                    "",
                ]
            )
        )
        node.proc = self.bed.spawn(
            node.host, ["redis-server", str(conf), "--sentinel"], log=node.dir / "sentinel.log"
        )
        self._wait_ping(node)

    def _cli(self, node: _Node, *args: str, check: bool = True) -> str:
        done = self.bed.run(
            node.host,
            ["redis-cli", "-h", "127.0.0.1", "-p", str(node.port), "--raw", *args],
            check=check,
            timeout=5,
        )
        return done.stdout.strip()

    def _wait_ping(self, node: _Node) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while self._cli(node, "PING", check=False) != "PONG":
            if node.proc is not None and node.proc.poll() is not None:
                raise TestbedError(f"redis on {node.host}:{node.port} exited; see {node.dir}")
            if time.monotonic() > deadline:
                raise TestbedError(f"redis on {node.host}:{node.port} does not answer")
            time.sleep(0.05)

    def _master_info(self, node: _Node) -> dict[str, str]:
        flat = self._cli(node, "SENTINEL", "MASTER", self.service, check=False).splitlines()
        return dict(zip(flat[::2], flat[1::2], strict=False))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Every sentinel agrees on the primary and sees all replicas and the other sentinels."""
        want_replicas = len(self.redis) - 1
        want_sentinels = len(self.sentinels) - 1
        deadline = time.monotonic() + timeout
        while True:
            infos = [self._master_info(n) for n in self.sentinels.values()]
            ok = (
                all(
                    i.get("num-slaves") == str(want_replicas)
                    and i.get("num-other-sentinels") == str(want_sentinels)
                    and "s_down" not in i.get("flags", "s_down")
                    for i in infos
                )
                and len({i.get("ip") for i in infos}) == 1
            )
            if ok and self._replicas_online(self._host_of(infos[0]["ip"])) == want_replicas:
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"sentinels not ready within {timeout:g} s: {infos}")
            time.sleep(0.2)

    def _replicas_online(self, primary: str) -> int:
        info = self._cli(self.redis[primary], "INFO", "replication", check=False)
        return sum(1 for line in info.splitlines() if "state=online" in line)

    # -- topology and faults ---------------------------------------------------------------------

    def primary(self) -> str:
        """The host a quorum of sentinels names as primary now. A sentinel cut off from the
        others still names the primary it last knew, so no single one is trusted."""
        votes: Counter[str] = Counter()
        for node in self.sentinels.values():
            out = self._cli(
                node, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service, check=False
            ).split()
            if len(out) == 2:
                votes[self._host_of(out[0])] += 1
        if votes:
            host, count = votes.most_common(1)[0]
            if count >= self.quorum:
                return host
        raise TestbedError(f"no quorum of sentinels names a primary: {dict(votes)}")

    def kill(self, host: str) -> None:
        """SIGKILL the Redis server on ``host`` (not its sentinel)."""
        node = self.redis[host]
        if node.proc is None or node.proc.poll() is not None:
            raise TestbedError(f"redis on {host} is not running")
        self.bed.kill(host, node.proc.pid)
        node.proc.wait()
        node.proc = None

    def kill_primary(self) -> str:
        """SIGKILL the current primary; the sentinels will promote a replica. Its host."""
        host = self.primary()
        self.kill(host)
        return host

    def kill_sentinel(self, host: str) -> None:
        node = self.sentinels[host]
        if node.proc is not None:
            self.bed.kill(host, node.proc.pid)
            node.proc.wait()
            node.proc = None

    def wait_failover(self, old: str, timeout: float = 30.0) -> str:
        """Wait until the sentinels name a primary other than ``old``; its host."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                now = self.primary()
            except TestbedError:
                now = old
            if now != old:
                return now
            if time.monotonic() > deadline:
                raise TestbedError(f"no failover away from {old} within {timeout:g} s")
            time.sleep(0.1)

    def restart(self, host: str) -> None:
        """Start the killed Redis on ``host`` again, as a replica of the current primary, and
        wait until the sentinels count it again."""
        node = self.redis[host]
        if node.proc is not None and node.proc.poll() is None:
            raise TestbedError(f"redis on {host} is running")
        current = self.primary()
        if current == host:
            raise TestbedError(f"sentinels still name dead {host} primary: wait_failover first")
        self._start_redis(node, replica_of=self.bed[current].addr)
        self.wait_ready(timeout=READY_TIMEOUT + self.failover_timeout_ms / 1000)

    def ensure_up(self) -> None:
        """Restart whatever is down (a test that failed mid-fault) and wait until the group is
        whole again."""
        for host, node in self.sentinels.items():
            if node.proc is None or node.proc.poll() is not None:
                self.restart_sentinel(host)
        dead = [h for h, n in self.redis.items() if n.proc is None or n.proc.poll() is not None]
        if dead:
            primary = self.primary()
            if primary in dead:
                primary = self.wait_failover(primary)
            for host in dead:
                self.restart(host)
        self.wait_ready()

    def restart_sentinel(self, host: str) -> None:
        node = self.sentinels[host]
        node.proc = self.bed.spawn(
            host,
            ["redis-server", str(node.dir / "sentinel.conf"), "--sentinel"],
            log=node.dir / "sentinel.log",
        )
        self._wait_ping(node)
