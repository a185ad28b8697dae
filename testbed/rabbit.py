"""A three-node RabbitMQ cluster in the test hosts, from Debian's ``rabbitmq-server``.

Each node runs in its host with everything of its own under the testbed's root: node name
``rabbit@<address>`` (long names, so no host name needs resolving), Erlang cookie (in its own
``HOME``), Mnesia and log directories, config and an empty plugin list, and its own ``epmd``
(it starts one in its namespace). The machine's RabbitMQ, its config in ``/etc/rabbitmq`` and its
epmd are never read or touched: ``RABBITMQ_CONF_ENV_FILE`` and ``RABBITMQ_CONFIG_FILE`` point
here.

Rules:
- the first node boots alone, then the others join it (classic-config peer discovery naming
  the first), so the cluster forms the same way every time;
- ``cluster_partition_handling = pause_minority``: a node cut off from the other two stops
  serving, so clients move to the majority instead of writing into a minority;
- the app declares its queues as quorum queues, whose members are every node present at
  declaration: declare them once the cluster is whole (:meth:`RabbitCluster.start` returns
  then);
- a killed node restarts with its own data and rejoins (:meth:`RabbitCluster.restart`).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.netns import Testbed, TestbedError

AMQP_PORT = 5672
USER = "im"
START_TIMEOUT = 120.0  # seconds: a node boots in 5-15 s here; joining can take longer
CTL_TIMEOUT = 60.0


@dataclass
class _Node:
    host: str
    name: str  # rabbit@10.77.0.11
    dir: Path
    proc: subprocess.Popen[bytes] | None = None


class RabbitCluster:
    """RabbitMQ nodes on ``hosts`` (three for a majority that survives one loss)."""

    def __init__(self, bed: Testbed, hosts: Sequence[str]) -> None:
        if len(hosts) < 3:
            raise ValueError("three nodes or more: quorum queues need a majority after a loss")
        self.bed = bed
        self.password = secrets.token_hex(12)
        self._cookie = secrets.token_hex(16).upper()
        root = bed.root / "rabbitmq"
        self.nodes = {h: _Node(h, f"rabbit@{bed[h].addr}", root / f"rabbit-{h}") for h in hosts}
        self._seed = hosts[0]

    def url(self, hosts: Sequence[str] | None = None) -> str:
        """``IM_AMQP_URL``: one URL per node, comma-separated, in the order of ``hosts``."""
        order = list(self.nodes) if hosts is None else list(hosts)
        return ",".join(
            f"amqp://{USER}:{self.password}@{self.bed[h].addr}:{AMQP_PORT}/" for h in order
        )

    # -- files -----------------------------------------------------------------------------------

    def _prepare(self, node: _Node) -> None:
        for sub in ("home", "mnesia", "log"):
            (node.dir / sub).mkdir(parents=True, exist_ok=True)
        cookie = node.dir / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self._cookie)
            cookie.chmod(0o400)
        (node.dir / "rabbitmq-env.conf").write_text("")
        (node.dir / "enabled_plugins").write_text("[].\n")
        addr = self.bed[node.host].addr
        lines = [
            f"listeners.tcp.1 = {addr}:{AMQP_PORT}",
            f"default_user = {USER}",
            f"default_pass = {self.password}",
            "loopback_users = none",
            "cluster_partition_handling = pause_minority",
            "disk_free_limit.absolute = 50MB",
            "vm_memory_high_watermark.absolute = 512MB",
            "log.console = false",
            "log.file.level = info",
        ]
        if node.host != self._seed:
            lines += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {self.nodes[self._seed].name}",
            ]
        (node.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _env(self, node: _Node) -> dict[str, str]:
        d = node.dir
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(d / "home"),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_USE_LONGNAME": "true",
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
        }

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the seed node, then the others (they join it); return once the cluster lists
        every node as running."""
        seed = self.nodes[self._seed]
        self._launch(seed)
        self._await_startup(seed)
        others = [n for n in self.nodes.values() if n is not seed]
        for node in others:
            self._launch(node)
        for node in others:
            self._await_startup(node)
        self.wait_running(list(self.nodes))

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def _launch(self, node: _Node) -> None:
        self._prepare(node)
        node.proc = self.bed.spawn(
            node.host,
            ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
            env=self._env(node),
            log=node.dir / "server.log",
            cwd=node.dir,
        )

    def ctl(self, host: str, *args: str, check: bool = True) -> str:
        """``rabbitmqctl`` against the node on ``host``, from inside that host."""
        node = self.nodes[host]
        done = self.bed.run(
            host,
            ["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", node.name, "--longnames", *args],
            env=self._env(node),
            check=check,
            timeout=CTL_TIMEOUT,
        )
        return done.stdout

    def _await_startup(self, node: _Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if node.proc is not None and node.proc.poll() is not None:
                raise TestbedError(f"rabbitmq on {node.host} exited; see {node.dir}/log")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestbedError(f"rabbitmq on {node.host} did not start; see {node.dir}/log")
            done = self.bed.run(
                node.host,
                [
                    "/usr/lib/rabbitmq/bin/rabbitmqctl",
                    *("-n", node.name, "--longnames", "await_startup"),
                    *("--timeout", str(int(max(left, 1)))),
                ],
                env=self._env(node),
                check=False,
                timeout=left + 10,
            )
            if done.returncode == 0:
                return
            time.sleep(0.5)

    def running(self, host: str) -> list[str]:
        """Hosts whose node the node on ``host`` sees running in the cluster."""
        status = json.loads(self.ctl(host, "cluster_status", "--formatter", "json"))
        names = {n.name: h for h, n in self.nodes.items()}
        return sorted(names[n] for n in status.get("running_nodes", []) if n in names)

    def wait_running(self, hosts: Sequence[str], timeout: float = START_TIMEOUT) -> None:
        """Wait until the node on the first of ``hosts`` sees exactly ``hosts`` running."""
        deadline = time.monotonic() + timeout
        want = sorted(hosts)
        while True:
            try:
                seen = self.running(want[0])
            except (TestbedError, ValueError):
                seen = []
            if seen == want:
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"rabbitmq cluster: running {seen}, want {want}")
            time.sleep(0.5)

    # -- faults ----------------------------------------------------------------------------------

    def alive(self) -> list[str]:
        return [h for h, n in self.nodes.items() if n.proc is not None and n.proc.poll() is None]

    def vm_pid(self, host: str) -> int:
        """The node's Erlang VM: not the process we started, since in the foreground
        ``rabbitmq-server`` runs the VM as its child and waits for it (to pass signals on)."""
        node = self.nodes[host]
        if node.proc is None:
            raise TestbedError(f"rabbitmq on {host} is not running")
        for pid in self.bed.pids(host):
            with contextlib.suppress(OSError, IndexError, ValueError):
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
                if comm == "beam.smp" and ppid == node.proc.pid:
                    return pid
        raise TestbedError(f"no Erlang VM of {node.name} runs on {host}")

    def kill(self, host: str) -> None:
        """SIGKILL the node's VM on ``host`` (its epmd stays, as after a crash)."""
        node = self.nodes[host]
        if node.proc is None or node.proc.poll() is not None:
            raise TestbedError(f"rabbitmq on {host} is not running")
        self.bed.kill(host, self.vm_pid(host))
        node.proc.wait(timeout=30)  # the wrapper script exits with its VM
        node.proc = None

    def restart(self, host: str) -> None:
        """Start the killed node on ``host`` again; return once the cluster runs it again."""
        node = self.nodes[host]
        if node.proc is not None and node.proc.poll() is None:
            raise TestbedError(f"rabbitmq on {host} is running")
        self._launch(node)
        self._await_startup(node)
        self.wait_running(self.alive())

    def ensure_up(self) -> None:
        """Restart any node that is down (a test that failed mid-fault), wait for all."""
        for host in self.nodes:
            if host not in self.alive():
                self.restart(host)
        self.wait_running(list(self.nodes))

    def queues_whole(self, host: str) -> list[str]:
        """Quorum queues, as the node on ``host`` lists them, with a member not online (a node
        back in the cluster may still be catching its members up): empty when all are whole."""
        out = self.ctl(
            host, "list_queues", "name", "type", "members", "online", "--formatter", "json"
        )
        return [
            str(row.get("name"))
            for row in json.loads(out)
            if row.get("type") == "quorum"
            and sorted(row.get("online") or []) != sorted(row.get("members") or [])
        ]

    def wait_queues_whole(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every quorum queue has every member online, asked of the first live node:
        until then one more lost node could leave a queue without its majority."""
        deadline = time.monotonic() + timeout
        lagging: list[str] = ["?"]
        while True:
            alive = self.alive()
            if alive:
                try:
                    lagging = self.queues_whole(alive[0])
                except (TestbedError, ValueError):
                    lagging = ["?"]
                if not lagging:
                    return
            if time.monotonic() > deadline:
                raise TestbedError(f"rabbitmq quorum queues not whole: {lagging}")
            time.sleep(0.5)

    def quorum_members(self, host: str, queue: str) -> list[str]:
        """Hosts holding a member of quorum queue ``queue``, as the node on ``host`` says."""
        out = self.ctl(host, "list_queues", "name", "type", "members", "--formatter", "json")
        names = {n.name: h for h, n in self.nodes.items()}
        for row in json.loads(out):
            if row.get("name") == queue:
                return sorted(names.get(m, m) for m in row.get("members", []))
        raise TestbedError(f"no queue {queue!r} on {host}")
