"""A three-node MariaDB Galera cluster in the test hosts, from Debian's ``mariadb-server`` and
``galera-4``.

Each node is ``mariadbd --no-defaults`` with every option on its command line, so nothing in
``/etc/mysql`` (the machine's own server) is read; its data directory, socket and logs are
under the testbed's root. It runs as Debian's ``mysql`` user, as the packaged server does: the
rsync snapshot transfer runs its daemon as the server's user, and as root that daemon would
drop to ``nobody`` and be refused the data directory. Ports are the standard ones inside each
host (3306 SQL, 4567 replication, 4568 incremental transfer, 4444 snapshot transfer).

Rules:
- the first node bootstraps the cluster (``--wsrep-new-cluster``) on a fresh data directory and
  gets the app's user; the others join one at a time and receive a full snapshot by rsync (a
  donor serves one snapshot at a time);
- a node that was killed restarts as ``galera_recovery`` would restart it: first
  ``--wsrep-recover`` reads the last committed position from InnoDB, then the node starts at
  that position and catches up by incremental transfer from a peer's cache;
- failure detection is tightened for one bridge (:data:`PROVIDER_OPTIONS`): a silent node is
  suspected after 2 s and evicted after 4 s; Galera's defaults (5 s, 15 s) suit a WAN better,
  docs/deployment.md has the production choice.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.netns import Testbed, TestbedError

SQL_PORT = 3306
USER = "im"
RUN_AS = "mysql"  # Debian's mariadb-server makes this user
PROVIDER = "/usr/lib/galera/libgalera_smm.so"
PROVIDER_OPTIONS = ";".join(
    [
        "gcache.size=64M",  # room for the incremental catch-up of a restarted node
        "evs.suspect_timeout=PT2S",
        "evs.inactive_timeout=PT4S",
        "evs.install_timeout=PT3S",
        "evs.keepalive_period=PT0.5S",
    ]
)
START_TIMEOUT = 120.0
SYNCED = "4"  # wsrep_local_state: 4 is Synced


@dataclass
class _Node:
    host: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def socket(self) -> Path:
        return self.dir / "mysqld.sock"


class GaleraCluster:
    """Galera nodes on ``hosts`` (three: two keep a majority when one dies)."""

    def __init__(self, bed: Testbed, hosts: Sequence[str], name: str = "im") -> None:
        if len(hosts) < 3:
            raise ValueError("three nodes or more: a majority must survive the loss of one")
        self.bed = bed
        self.name = name
        self.password = secrets.token_hex(12)
        root = bed.root / "mariadb"
        self.nodes = {h: _Node(h, root / f"galera-{h}") for h in hosts}
        self._seed = hosts[0]

    def url(self, database: str, hosts: Sequence[str] | None = None) -> str:
        """``IM_DATABASE_URL``: every node, in the order of ``hosts`` (the app writes to the
        first that answers)."""
        order = list(self.nodes) if hosts is None else list(hosts)
        where = ",".join(f"{self.bed[h].addr}:{SQL_PORT}" for h in order)
        return f"mysql://{USER}:{self.password}@{where}/{database}"

    # -- life cycle ------------------------------------------------------------------------------

    def _argv(self, node: _Node, *extra: str) -> list[str]:
        addr = self.bed[node.host].addr
        peers = ",".join(self.bed[h].addr for h in self.nodes)
        return [
            "/usr/sbin/mariadbd",
            "--no-defaults",
            f"--user={RUN_AS}",
            f"--datadir={node.data}",
            f"--socket={node.socket}",
            f"--pid-file={node.dir / 'mysqld.pid'}",
            f"--log-error={node.dir / 'error.log'}",
            f"--bind-address={addr}",
            f"--port={SQL_PORT}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
            "--innodb-buffer-pool-size=64M",
            "--max-connections=500",
            "--binlog-format=ROW",
            "--default-storage-engine=InnoDB",
            "--innodb-autoinc-lock-mode=2",
            "--wsrep-on=ON",
            f"--wsrep-provider={PROVIDER}",
            f"--wsrep-provider-options={PROVIDER_OPTIONS}",
            f"--wsrep-cluster-name={self.name}",
            f"--wsrep-cluster-address=gcomm://{peers}",
            f"--wsrep-node-address={addr}",
            f"--wsrep-node-name={node.host}",
            "--wsrep-sst-method=rsync",
            *extra,
        ]

    def _make_dirs(self, node: _Node) -> None:
        """The node's directory, owned by the server's user, reachable through the root (which
        may list nothing to others, but must let them pass)."""
        try:
            user = pwd.getpwnam(RUN_AS)
        except KeyError:
            raise TestbedError(f"no user {RUN_AS!r}: is mariadb-server installed?") from None
        self.bed.root.chmod(0o711)
        node.data.mkdir(parents=True, exist_ok=True)
        for path in (node.dir.parent, node.dir, node.data):
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        """Bootstrap the first node, then join the others one by one; return once every node
        is Synced in one cluster of all of them."""
        seed = self.nodes[self._seed]
        self._make_dirs(seed)
        self.bed.run(
            seed.host,
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--user={RUN_AS}",
                f"--datadir={seed.data}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            timeout=120,
        )
        self._launch(seed, "--wsrep-new-cluster")
        self._wait_synced(seed)
        self.sql(
            seed.host,
            f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{self.password}';"
            f" GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION;",
        )
        for host, node in self.nodes.items():
            if host != self._seed:
                self._make_dirs(node)
                self._launch(node)
                self._wait_synced(node)
        self.wait_cluster(list(self.nodes))

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def _launch(self, node: _Node, *extra: str) -> None:
        node.proc = self.bed.spawn(
            node.host,
            self._argv(node, *extra),
            log=node.dir / "stdout.log",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # the SST script needs rsync on it
        )

    def sql(self, host: str, statements: str, *, check: bool = True) -> str:
        """Run ``statements`` as root over the node's socket; tab-separated rows, no header."""
        node = self.nodes[host]
        client = ["mariadb", "--no-defaults", "-uroot", f"--socket={node.socket}", "-N", "-B"]
        done = self.bed.run(
            host,
            [*client, "-e", statements],
            check=check,
            timeout=30,
        )
        return done.stdout

    def status(self, host: str) -> dict[str, str]:
        """The node's ``wsrep_%`` status; empty when it does not answer."""
        out = self.sql(host, "SHOW GLOBAL STATUS LIKE 'wsrep_%'", check=False)
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def _wait_synced(self, node: _Node, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if node.proc is not None and node.proc.poll() is not None:
                raise TestbedError(f"mariadbd on {node.host} exited; see {node.dir}/error.log")
            s = self.status(node.host)
            if s.get("wsrep_local_state") == SYNCED and s.get("wsrep_ready") == "ON":
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"mariadbd on {node.host} not synced: {s}")
            time.sleep(0.3)

    def wait_cluster(self, hosts: Sequence[str], timeout: float = START_TIMEOUT) -> None:
        """Every one of ``hosts`` Synced, Primary, in a cluster of exactly that many."""
        deadline = time.monotonic() + timeout
        while True:
            states = {h: self.status(h) for h in hosts}
            if all(
                s.get("wsrep_local_state") == SYNCED
                and s.get("wsrep_cluster_status") == "Primary"
                and s.get("wsrep_cluster_size") == str(len(hosts))
                for s in states.values()
            ):
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"galera cluster not whole: {states}")
            time.sleep(0.3)

    # -- faults ----------------------------------------------------------------------------------

    def alive(self) -> list[str]:
        return [h for h, n in self.nodes.items() if n.proc is not None and n.proc.poll() is None]

    def kill(self, host: str) -> None:
        """SIGKILL mariadbd on ``host``: a crash, with whatever was in flight."""
        node = self.nodes[host]
        if node.proc is None or node.proc.poll() is not None:
            raise TestbedError(f"mariadbd on {host} is not running")
        self.bed.kill(host, node.proc.pid)
        node.proc.wait()
        node.proc = None

    def first_alive(self, order: Sequence[str] | None = None) -> str:
        """The node an app given ``url(order)`` starts on: the first that runs."""
        for host in list(self.nodes) if order is None else order:
            if host in self.alive():
                return host
        raise TestbedError("no galera node runs")

    def kill_writer_node(self, order: Sequence[str] | None = None) -> str:
        """SIGKILL the node the app's writers use (given ``url(..., order)``, every process
        is on the first live node of that order); its host."""
        host = self.first_alive(order)
        self.kill(host)
        return host

    def recovered_position(self, host: str) -> str:
        """The last committed ``uuid:seqno`` in the node's InnoDB (``--wsrep-recover``)."""
        node = self.nodes[host]
        log = node.dir / "recover.log"
        log.unlink(missing_ok=True)
        argv = [a for a in self._argv(node) if not a.startswith("--log-error=")]
        self.bed.run(
            host,
            [*argv, f"--log-error={log}", "--wsrep-recover"],
            timeout=120,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        found = re.findall(r"WSREP: Recovered position: (\S+)", log.read_text())
        if not found:
            raise TestbedError(f"no recovered position in {log}")
        return str(found[-1])

    def restart(self, host: str) -> None:
        """Start the killed node on ``host`` at its recovered position (so it catches up by
        incremental transfer); return once the whole cluster is Synced again."""
        node = self.nodes[host]
        if node.proc is not None and node.proc.poll() is None:
            raise TestbedError(f"mariadbd on {host} is running")
        position = self.recovered_position(host)
        self._launch(node, f"--wsrep-start-position={position}")
        self._wait_synced(node)
        self.wait_cluster(self.alive())

    def ensure_up(self) -> None:
        for host in self.nodes:
            if host not in self.alive():
                self.restart(host)
        self.wait_cluster(list(self.nodes))

    def wipe(self) -> None:
        """Remove every node's files (after :meth:`stop`)."""
        for node in self.nodes.values():
            shutil.rmtree(node.dir, ignore_errors=True)
