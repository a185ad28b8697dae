"""``im bench``: start (or find) a target, run the scenarios, print one JSON object per scenario.

Targets: ``up`` (``im up`` in a temporary data directory), ``cluster`` (``im cluster`` on the
local MariaDB, Redis and RabbitMQ) or, with ``--rest``, one that is already running; and the
bare relay (cli/relay.py), always started here, as the yardstick of the same run.

Rules:
- what this starts listens on 127.0.0.1 only, on ports of its own (REST 28082, connectors 29081,
  transfers 29082, the relay 29181..; the next free one when taken) and uses its own Redis
  database (12), RabbitMQ queue (``imbench.offline``) and MySQL database (``im_bench``), so it
  never meets the services' default users or the test suite;
- every process it starts is its own child in a session of its own, stopped by its PID
  (SIGTERM, then SIGKILL after a grace period) however the run ends;
- CPU and RSS are read from /proc for the server PIDs it started, or those given with
  ``--pids``; without either there are no process numbers, and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli import cluster
from cli import loop as eventloop
from common.config import Settings
from common.errors import IMError
from workload import bench, benchfanout, benchlean, benchstats, benchwrites
from workload.benchload import Flow, RelayClient, Stats, drive, relay_frame_size

HOST = "127.0.0.1"
REST_PORT, CONNECTOR_PORT, TRANSFER_PORT, RELAY_PORT = 28082, 29081, 29082, 29181
BENCH_MYSQL = "mysql://root@127.0.0.1:3306/im_bench"
BENCH_REDIS = "redis://127.0.0.1:6379/12"
BENCH_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
BENCH_QUEUE = "imbench.offline"
# the cluster's write queue shards: IM_AMQP_SHARDS's default (bench does not set it)
BENCH_SHARDS: int = Settings.model_fields["amqp_shards"].default
START_TIMEOUT = 60.0
STOP_GRACE = 15.0
SCENARIOS = ("relay", "online", "idle", "offline", "fanout", "durable", "writes")


def free_port(preferred: int) -> int:
    """``preferred`` if nothing listens there, else one the kernel picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


@dataclass
class Proc:
    """A child process in its own session, with its output in a log file."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @classmethod
    async def start(cls, name: str, args: list[str], env: dict[str, str], logdir: Path) -> Proc:
        log = logdir / f"{name}.log"
        return cls(name, await cluster.spawn(args, env, log), log)

    async def stop(self) -> None:
        await cluster.stop_gently(self.proc, STOP_GRACE)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def wait_port(port: int, proc: Proc, timeout: float = START_TIMEOUT) -> None:
    if await cluster.wait_port(HOST, port, proc.proc, timeout):
        return
    if proc.proc.returncode is not None:
        raise IMError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.tail()}")
    raise IMError(f"{proc.name} did not listen on {port} within {timeout:g}s:\n{proc.tail()}")


# The per-connection message rate limit (default 500/s, a guard against one abusive client) is
# raised for the targets started here: a bench sender offers more than one user would, and a
# returning user's DELIVERED receipts for a 10k drain would hit it too. The output says so.
BENCH_RATE_LIMIT = 1_000_000


def _base_env(server_loop: str, tree: str = "") -> dict[str, str]:
    """The environment for a child: ours without IM_* (the target's settings are ours to set);
    ``tree``: the servers run from that checkout (``--server-tree``), the load from this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
    if tree:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    env["IM_BIND_HOST"] = HOST
    env["IM_LOOP"] = server_loop
    env["IM_RATE_LIMIT"] = str(BENCH_RATE_LIMIT)
    env["IM_RATE_BURST"] = str(BENCH_RATE_LIMIT)
    env["IM_WS_PORT"] = "0"  # the bench speaks TCP; 9083 may be someone else's
    # every bench connection comes from this one host, up to 200 connecting at once
    env["IM_PREAUTH_PER_ADDRESS"] = "4096"
    # and every bench user registers from it, thousands in a minute
    env["IM_REGISTER_PER_ADDRESS"] = "1000000"
    env["PYTHONUNBUFFERED"] = "1"
    env["IM_METRICS_PORT"] = "0"  # `im up` and `im cluster` would take 9090 and up
    return env


@dataclass
class Started:
    """A target (or the relay) this run started, and the server PIDs to watch."""

    procs: list[Proc] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    target: bench.Target | None = None
    ports: dict[str, int] = field(default_factory=dict)

    async def stop(self) -> None:
        for p in reversed(self.procs):
            await p.stop()


async def start_up(logdir: Path, server_loop: str, tree: str = "") -> Started:
    data = logdir / "up-data"
    rest, conn, tr = free_port(REST_PORT), free_port(CONNECTOR_PORT), free_port(TRANSFER_PORT)
    secret = secrets.token_urlsafe(32)
    env = _base_env(server_loop, tree) | {
        "IM_DATA_DIR": str(data),
        "IM_REST_PORT": str(rest),
        "IM_CONNECTOR_PORT": str(conn),
        "IM_TRANSFER_PORT": str(tr),
        "IM_TRANSFER_ADDRS": f"{HOST}:{tr}",
        "IM_SECRET": secret,
    }
    started = Started(ports={"rest": rest, "connector": conn, "transfer": tr})
    p = await Proc.start("im-up", ["-m", "cli.main", "up"], env, logdir)
    started.procs.append(p)
    try:
        await wait_port(rest, p)
    except BaseException:
        await started.stop()
        raise
    started.pids["im-up"] = p.proc.pid
    started.target = bench.Target(f"http://{HOST}:{rest}", secret=secret)
    return started


async def start_cluster(
    logdir: Path, server_loop: str, connectors: int, transfers: int, writers: int, tree: str = ""
) -> Started:
    rest = free_port(REST_PORT)
    # connector i and transfer j use base + 10 * i (cli/cluster.py): check every one is free
    conn, tr = CONNECTOR_PORT, TRANSFER_PORT
    for _ in range(20):
        ports = [conn + 10 * i for i in range(connectors)] + [tr + 10 * j for j in range(transfers)]
        if all(free_port(x) == x for x in ports):
            break
        conn, tr = conn + 200, tr + 200
    secret = secrets.token_urlsafe(32)
    env = _base_env(server_loop, tree) | {
        "IM_DATABASE_URL": BENCH_MYSQL,
        "IM_REDIS_URL": BENCH_REDIS,
        "IM_AMQP_URL": BENCH_AMQP,
        "IM_AMQP_QUEUE": BENCH_QUEUE,
        "IM_SECRET": secret,
        "IM_REST_PORT": str(rest),
        "IM_CONNECTOR_PORT": str(conn),
        "IM_TRANSFER_PORT": str(tr),
        "IM_DATA_DIR": str(logdir / "cluster-data"),
    }
    mig = await Proc.start("migrate", ["-m", "cli.main", "migrate"], env, logdir)
    if await asyncio.wait_for(mig.proc.wait(), START_TIMEOUT) != 0:
        raise IMError(f"im migrate failed:\n{mig.tail()}")
    args = ["-m", "cli.main", "cluster", "--connectors", str(connectors)]
    args += ["--transfers", str(transfers), "--writers", str(writers)]
    p = await Proc.start("im-cluster", args, env, logdir)
    started = Started(procs=[p], ports={"rest": rest, "connector": conn, "transfer": tr})
    try:
        await wait_port(rest, p)
        for i in range(connectors):
            await wait_port(conn + 10 * i, p)
        await asyncio.sleep(3.0)  # connectors find the transfer in the registry (heartbeats)
    except BaseException:
        await started.stop()
        raise
    started.pids = _cluster_children(p.proc.pid)
    started.target = bench.Target(f"http://{HOST}:{rest}", secret=secret)
    return started


def _cluster_children(pid: int) -> dict[str, int]:
    """The ``im cluster`` launcher's children, named by role: transfer-1, connector-2, ..."""
    out: dict[str, int] = {}
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    counts: dict[str, int] = {}
    for kid in kids:
        try:
            argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        role = argv[3].decode() if len(argv) > 3 else "child"
        counts[role] = counts.get(role, 0) + 1
        out[f"{role}-{counts[role]}"] = int(kid)
    return out


async def start_relay(logdir: Path, server_loop: str, tree: str = "") -> Started:
    env = _base_env(server_loop, tree)
    t, a, b = free_port(RELAY_PORT), free_port(RELAY_PORT + 1), free_port(RELAY_PORT + 2)
    started = Started(ports={"transfer": t, "connector-a": a, "connector-b": b})
    try:
        tp = await Proc.start("relay-transfer", _relay_args("transfer", t), env, logdir)
        started.procs.append(tp)
        await wait_port(t, tp)
        for name, port in (("relay-connector-a", a), ("relay-connector-b", b)):
            cp = await Proc.start(name, [*_relay_args("connector", port), "--transfer", str(t)],
                                  env, logdir)  # fmt: skip
            started.procs.append(cp)
            await wait_port(port, cp)
    except BaseException:
        await started.stop()
        raise
    started.pids = {p.name: p.proc.pid for p in started.procs}
    return started


def _factory(c: RelayClient) -> Callable[[], RelayClient]:
    return lambda: c


def _relay_args(role: str, port: int) -> list[str]:
    return ["-m", "cli.relay", role, "--port", str(port)]


async def relay_scenario(
    started: Started, *, pairs: int, window: int, rate: float, warmup: float, duration: float,
    progress: bool, probe: Any = None,
) -> dict[str, object]:  # fmt: skip
    """The online scenario's load, on the bare relay: senders on one connector, receivers on
    the other, so every message crosses connector -> transfer -> connector and back."""
    loop = asyncio.get_running_loop()
    stats = Stats(final="DELIVERED")
    senders: list[RelayClient] = []
    receivers: list[RelayClient] = []
    try:
        for i in range(pairs):
            r = RelayClient(f"r-r-{i:04d}", None)
            await loop.create_connection(_factory(r), HOST, started.ports["connector-b"])
            receivers.append(r)
            s = RelayClient(f"r-s-{i:04d}", Flow(stats))
            await loop.create_connection(_factory(s), HOST, started.ports["connector-a"])
            senders.append(s)
        await asyncio.sleep(0.5)  # the GREETs reach the transfer

        def sender(c: RelayClient, dest: str) -> Any:
            async def send() -> int:
                return c.send_chat(dest)

            return send

        load = []
        for s, r in zip(senders, receivers, strict=True):
            assert s.flow is not None
            load.append((s.flow, sender(s, r.user)))
        result = await drive(
            load, window=window, rate=rate, warmup=warmup, duration=duration, settle=5.0,
            label="relay", progress=progress, probe=probe,
        )  # fmt: skip
    finally:
        for c in senders + receivers:
            c.close()
    config = {"pairs": pairs, "window": window, "rate": rate or None, "frame_bytes":
              relay_frame_size(), "processes": 3}  # fmt: skip
    return {"scenario": "relay", "mode": "open" if rate > 0 else "closed", **result,
            "config": config}  # fmt: skip


def _parse_pids(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, pid = part.rpartition("=")
        if not pid.isdigit():
            raise IMError(f"--pids: {part!r} is not NAME=PID or PID")
        out[name if sep else f"pid-{pid}"] = int(pid)
    return out


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or HOST, int(port)


class Runner:
    """Runs the scenarios in order and emits each result with its process numbers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.results: list[dict[str, object]] = []
        self.common = {
            "target": args.target if not args.rest else f"{args.target} at {args.rest}",
            "server_loop": args.server_loop,
            "bench_loop": eventloop.loop_name(),
            "nproc": os.cpu_count(),
            "server_rate_limit": "as configured" if args.rest else BENCH_RATE_LIMIT,
        }
        if args.server_tree:
            self.common["server_tree"] = str(Path(args.server_tree).resolve())

    def emit(self, result: dict[str, object]) -> None:
        result.setdefault("config", {})
        cfg = result["config"]
        assert isinstance(cfg, dict)
        cfg.update(self.common)
        if self.a.json:
            print(json.dumps(result, sort_keys=False), flush=True)
        else:
            keys = ("msgs_per_s", "p50_ms", "p99_ms", "connections", "rss_per_conn_kb",
                    "catchup_messages", "catchup_seconds", "group_size", "deliveries_per_s",
                    "server_cpu_us_per_delivery", "skipped")  # fmt: skip
            shown = " ".join(f"{k}={result[k]}" for k in keys if k in result)
            print(f"{result['scenario']:<8} {result.get('mode', ''):<6} {shown}", flush=True)
        self.results.append(result)

    async def measured(self, pids: dict[str, int], make: Any) -> dict[str, object]:
        """Run ``make(probe)``; process CPU and RSS between the scenario's probe calls (its
        load, without the set-up), or around the whole scenario if it never calls it."""
        marks: dict[str, dict[str, benchstats.ProcSample]] = {}
        mine: dict[str, benchstats.ProcSample | None] = {}

        def probe(when: str) -> None:
            marks[when] = benchstats.sample_all(pids)
            mine[when] = benchstats.sample(os.getpid())

        probe("start")
        t0 = time.monotonic()
        result: dict[str, object] = await make(probe)
        wall = time.monotonic() - t0
        if "end" not in marks:
            probe("end")
        result["wall_s"] = round(wall, 2)
        if not pids:
            result["processes"] = "no server PIDs known"
        else:
            use = benchstats.usage(marks["start"], marks["end"])
            result["processes"] = use
            total = sum(float(u["cpu_s"]) for u in use.values())
            result["server_cpu_s"] = round(total, 3)
            done = result.get("completed") or result.get("catchup_messages")
            if isinstance(done, int) and done > 0:
                result["server_cpu_us_per_msg"] = round(total / done * 1e6, 1)
        a, b = mine.get("start"), mine.get("end")
        if a is not None and b is not None:
            result["bench_cpu_s"] = mine_s = round(b.cpu_s - a.cpu_s, 3)
            done = result.get("completed")
            if isinstance(done, int) and done > 0:
                result["bench_cpu_us_per_msg"] = round(mine_s / done * 1e6, 1)
        return result

    async def online_runs(self, pids: dict[str, int], run: Any, label: str) -> None:
        a = self.a
        closed: dict[str, object] = await self.measured(pids, lambda p: run(0.0, p))
        self.emit(closed)
        rate = a.rate
        if rate == "half":
            rate = float(str(closed.get("msgs_per_s") or 0)) / 2
        if rate and float(rate) > 0:
            result = await self.measured(pids, lambda p: run(float(rate), p))
            if a.rate == "half":
                result["config"]["rate_from"] = f"half of the closed-loop {label} rate"  # type: ignore[index]
            self.emit(result)

    async def run(self) -> int:
        a = self.a
        logdir = Path(tempfile.mkdtemp(prefix="im-bench-"))
        prefix = f"b{secrets.token_hex(3)}"
        targets: list[Started] = []
        try:
            if "relay" in a.scenarios:
                relay = await start_relay(logdir, a.server_loop, a.server_tree)
                targets.append(relay)

                def relay_run(rate: float, probe: Any) -> Any:
                    return relay_scenario(
                        relay, pairs=a.pairs, window=a.window, rate=rate, warmup=a.warmup,
                        duration=a.duration, progress=not a.quiet, probe=probe,
                    )  # fmt: skip

                await self.online_runs(relay.pids, relay_run, "relay")
                await relay.stop()
                targets.remove(relay)
            server = set(a.scenarios) & {"online", "idle", "offline", "fanout", "durable", "writes"}
            server_cluster = False  # a cluster this run started: its write queue is known
            target: bench.Target | None = None
            pids = _parse_pids(a.pids)
            if server and a.rest:
                target = bench.Target(a.rest, a.secret)
            elif server and a.target == "up":
                st = await start_up(logdir, a.server_loop, a.server_tree)
                targets.append(st)
                target, pids = st.target, pids | st.pids
            elif server:
                server_cluster = True
                st = await start_cluster(logdir, a.server_loop, a.connectors, a.transfers,
                                         a.writers, a.server_tree)  # fmt: skip
                targets.append(st)
                target, pids = st.target, pids | st.pids
            if target is not None and a.connector:
                target = dataclasses.replace(target, connector=_addr(a.connector))
            if target is not None and "online" in a.scenarios and a.client == "library":

                def online_run(rate: float, probe: Any) -> Any:
                    assert target is not None
                    return bench.online(
                        target, f"{prefix}o{int(rate)}", pairs=a.pairs, window=a.window,
                        rate=rate, read=a.read, warmup=a.warmup, duration=a.duration,
                        progress=not a.quiet, probe=probe,
                    )  # fmt: skip

                await self.online_runs(pids, online_run, "online")
            elif target is not None and "online" in a.scenarios:
                await self.lean(target, f"{prefix}n", pids, "online", a.pairs)
            if target is not None and "idle" in a.scenarios:
                await self.idle(target, prefix, pids)
            if target is not None and "offline" in a.scenarios:
                result = await self.measured(pids, lambda p: bench.offline(
                    target, f"{prefix}f", messages=a.offline_messages, senders=a.offline_senders,
                    window=a.window, timeout=a.timeout, progress=not a.quiet, probe=p,
                ))  # fmt: skip
                self.emit(result)
            if target is not None and "fanout" in a.scenarios:
                await self.fanout(target, prefix, pids)
            if target is not None and "durable" in a.scenarios:
                await self.lean(target, f"{prefix}d", pids, "durable", a.durable_senders)
            if "writes" in a.scenarios:
                await self.writes(prefix, pids, started_cluster=server_cluster)
        finally:
            for st in targets:
                await st.stop()
        bad = [r for r in self.results if any(r.get(k) for k in
               ("errors", "missing", "failed", "duplicates", "disorder"))]  # fmt: skip
        return 1 if bad else 0

    async def lean(
        self, target: bench.Target, prefix: str, pids: dict[str, int], scenario: str, senders: int
    ) -> None:
        """``online`` or ``durable`` on lean devices (workload/benchlean.py): users and devices
        made once, for the closed-loop run and the open-loop one after it."""
        a = self.a
        lean = benchlean.LeanScenario(
            target, prefix, scenario=scenario, senders=senders, read=a.read,
            progress=not a.quiet,
        )  # fmt: skip

        def run(rate: float, probe: Any) -> Any:
            return lean.run(rate=rate, window=a.window, warmup=a.warmup, duration=a.duration,
                            probe=probe)  # fmt: skip

        try:
            await self.online_runs(pids, run, scenario)
        finally:
            await lean.close()

    async def writes(self, prefix: str, pids: dict[str, int], *, started_cluster: bool) -> None:
        """The durable write path alone (workload/benchwrites.py), into the queue of the cluster
        this run started; any other target's queue is not known here."""
        a = self.a
        if not started_cluster:
            why = "needs --target cluster started by im bench (its write queue)"
            self.emit({"scenario": "writes", "skipped": why})
            return
        result = await self.measured(pids, lambda p: benchwrites.writes(
            BENCH_AMQP, BENCH_QUEUE + ".tl", BENCH_SHARDS, f"{prefix}w",
            conversations=a.write_conversations, window=a.window, warmup=a.warmup,
            duration=a.duration, progress=not a.quiet, probe=p,
        ))  # fmt: skip
        self.emit(result)

    async def fanout(self, target: bench.Target, prefix: str, pids: dict[str, int]) -> None:
        """One group per ``--group-size``, smallest first, on users made once for the largest;
        the process numbers cover each size's measured interval only."""
        a = self.a
        fb = benchfanout.FanoutBench(
            target.rest, f"{prefix}g", secret=target.secret, connector=target.connector,
            senders=a.fanout_senders, window=a.window, cursor_every=a.cursor_every,
            progress=not a.quiet,
        )  # fmt: skip
        try:
            await fb.prepare(max(a.group_size))
            for size in a.group_size:
                result = await self.measured(pids, lambda p, n=size: fb.run(
                    n, warmup=a.warmup, duration=a.duration, settle=a.timeout,
                    probe=p,
                ))  # fmt: skip
                cpu, n_deliveries = result.get("server_cpu_s"), result.get("deliveries")
                if isinstance(cpu, float) and isinstance(n_deliveries, int) and n_deliveries:
                    result["server_cpu_us_per_delivery"] = round(cpu / n_deliveries * 1e6, 2)
                mine = result.get("bench_cpu_s")
                if isinstance(mine, float) and isinstance(n_deliveries, int) and n_deliveries:
                    result["bench_cpu_us_per_delivery"] = round(mine / n_deliveries * 1e6, 2)
                self.emit(result)
        finally:
            await fb.close()

    async def idle(self, target: bench.Target, prefix: str, pids: dict[str, int]) -> None:
        a = self.a
        before: dict[str, benchstats.ProcSample] = {}
        snap: dict[str, benchstats.ProcSample] = {}

        def ready() -> object:
            before.update(benchstats.sample_all(pids))
            return None

        def measure() -> object:
            snap.update(benchstats.sample_all(pids))
            return None

        result = await self.measured(pids, lambda _p: bench.idle(
            target, f"{prefix}i", connections=a.connections, hold=a.hold,
            heartbeat=a.heartbeat, ready=ready, measure=measure, progress=not a.quiet,
        ))  # fmt: skip
        result.pop("measured", None)
        growth = {
            n: snap[n].rss_kb - before[n].rss_kb for n in before if n in snap
        }  # every server process: an idle connection may cost more than its connector
        result["rss_growth_kb"] = growth
        conns = max(1, int(result["connections"]))  # type: ignore[call-overload]
        result["rss_per_conn_kb"] = round(sum(growth.values()) / conns, 2) if growth else None
        self.emit(result)


async def _main(runner: Runner) -> int:
    """The run, cancelled by SIGINT or SIGTERM so that its children are stopped first."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await runner.run()
    except asyncio.CancelledError:
        print("im bench: interrupted; children stopped", file=sys.stderr)
        return 130


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="load generator: msgs/s, latency, RSS per connection")
    b.add_argument("--target", choices=("up", "cluster"), default="up")
    b.add_argument("--rest", default="", help="a running target's REST URL (else one is started)")
    b.add_argument("--secret", default="", help="its IM_SECRET, to mint idle tokens")
    b.add_argument("--pids", default="", help="its server PIDs: name=pid,name=pid")
    b.add_argument("--connector", default="", help="pin every connection to host:port")
    b.add_argument("--scenarios", default=",".join(SCENARIOS))
    b.add_argument("--pairs", type=int, default=100)
    b.add_argument("--window", type=int, default=8, help="messages in flight per sender")
    b.add_argument("--rate", default="", help="open loop: total msgs/s, or 'half'")
    b.add_argument("--read", action="store_true", help="receivers send READ; flight ends on it")
    b.add_argument("--client", choices=("lean", "library"), default="lean",
                   help="online: lean devices (workload/benchlean.py) or IMClient")  # fmt: skip
    b.add_argument("--durable-senders", type=int, default=400,
                   help="durable: lean senders to receivers that never connect")  # fmt: skip
    b.add_argument("--write-conversations", type=int, default=400,
                   help="writes: conversations submitting into the write queue")  # fmt: skip
    b.add_argument("--warmup", type=float, default=2.0)
    b.add_argument("--duration", type=float, default=10.0)
    b.add_argument("--connections", type=int, default=1000)
    b.add_argument("--hold", type=float, default=5.0, help="seconds idle before RSS is read")
    b.add_argument("--heartbeat", type=float, default=15.0)
    b.add_argument("--offline-messages", type=int, default=10_000,
                   help="offline: how far behind the catching-up device is")  # fmt: skip
    b.add_argument("--offline-senders", type=int, default=100)
    b.add_argument("--timeout", type=float, default=300.0)
    b.add_argument("--group-size", default="1000",
                   help="fanout: group members, or a list (10,100,1000): a run each")  # fmt: skip
    b.add_argument("--fanout-senders", type=int, default=2, help="fanout: members sending")
    b.add_argument("--cursor-every", type=float, default=1.0,
                   help="fanout: seconds between DELIVERED cursors (0: none)")  # fmt: skip
    b.add_argument("--connectors", type=int, default=2, help="im cluster: connector processes")
    b.add_argument("--transfers", type=int, default=1)
    b.add_argument("--writers", type=int, default=1)
    b.add_argument("--server-loop", choices=eventloop.CHOICES, default="auto",
                   help="IM_LOOP of the servers this starts (the relay too)")  # fmt: skip
    b.add_argument("--server-tree", default="",
                   help="servers from this checkout (before/after of a change)")  # fmt: skip
    b.add_argument("--short", action="store_true", help="small sizes: a CI smoke run")
    b.add_argument("--json", action="store_true", help="one JSON object per scenario")
    b.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    b.set_defaults(func=cmd_bench)


SHORT = {"pairs": 10, "warmup": 0.5, "duration": 2.0, "connections": 100, "hold": 1.0,
         "offline_messages": 1000, "offline_senders": 10, "timeout": 60.0,
         "group_size": "20", "durable_senders": 20, "write_conversations": 20}  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> int:
    if args.short:
        defaults = {
            "pairs": 100, "warmup": 2.0, "duration": 10.0, "connections": 1000, "hold": 5.0,
            "offline_messages": 10_000, "offline_senders": 100, "timeout": 300.0,
            "group_size": "1000", "durable_senders": 400, "write_conversations": 400,
        }  # fmt: skip
        for key, value in SHORT.items():
            if getattr(args, key) == defaults[key]:  # an explicit size wins over --short
                setattr(args, key, value)
    try:
        args.group_size = sorted({int(n) for n in str(args.group_size).split(",") if n.strip()})
    except ValueError:
        args.group_size = []
    if (
        not args.group_size
        or args.group_size[0] < args.fanout_senders + 1
        or args.fanout_senders < 1
    ):
        print("im bench: --group-size takes sizes above --fanout-senders (>= 1)", file=sys.stderr)
        return 2
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        print(f"im bench: unknown scenario(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.rate not in ("", "half"):
        try:
            args.rate = float(args.rate)
        except ValueError:
            print("im bench: --rate is msgs/s or 'half'", file=sys.stderr)
            return 2
    try:
        return eventloop.run(_main(Runner(args)))
    except (IMError, OSError) as exc:
        print(f"im bench: {exc}", file=sys.stderr)
        return 2
