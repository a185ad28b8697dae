"""Unit costs for docs/scaling.md: what one message and one login cost each backing service.

    python scripts/measure_units.py messages --rest URL --secret S --launcher PID \\
        --database im_x --redis-db 10 --queue-prefix imx [--short 1 --long 20 --pairs 100]
    python scripts/measure_units.py logins --rest URL --launcher PID --redis-db 10 [--users 200]

``messages`` runs ``im bench --scenarios online`` twice against a running ``im cluster`` (a
short run and a long one) and takes, around each, the Redis commands of our database (counted
from ``MONITOR``, the only view of a shared Redis that is ours alone), the rows and bytes of
our MySQL database's tables, the server-wide InnoDB counters, and the Raft log index of each of
our quorum queues. Costs per message are the long run's minus the short run's, divided by the
difference in stored messages: that cancels what both runs share (users registered, logged in,
befriended and connected) without having to know it. ``logins`` registers and logs in users
over REST and reports the REST process's CPU and our Redis commands per login.

Why this way: Redis, MariaDB and RabbitMQ here are shared with other work, so server-wide
counters (``INFO commandstats``, ``SHOW GLOBAL STATUS``) carry other clients' traffic. What is
filtered to ours is said so in the output keys (``redis_db_*``, ``table_*``, ``raft_*``); the
``global_*`` deltas are printed for comparison and are upper bounds only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

GLOBAL_STATUS = (  # MariaDB 10.11 has no Innodb_rows_*: the handler counters stand in
    "Handler_write",
    "Handler_update",
    "Handler_delete",
    "Handler_commit",
    "Innodb_lsn_current",
    "Innodb_os_log_written",
    "Com_commit",
)
_TICKS = 100  # SC_CLK_TCK on Linux
_MONITOR_LINE = re.compile(r'^\d+\.\d+ \[(\d+) ([^\]]+)\] "([^"]+)"')
_MONITOR_CAP = 10_000_000  # lines counted per window: far above any run here, never unbounded


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cluster_children(launcher: int) -> dict[str, int]:
    """The ``im cluster`` launcher's children by role and index, as ``im bench`` names them."""
    out: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for kid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        role = argv[3].decode() if len(argv) > 3 else "child"
        counts[role] += 1
        out[f"{role}-{counts[role]}"] = int(kid)
    return out


@contextmanager
def redis_monitor(host: str, port: int, db: int) -> Iterator[Counter[str]]:
    """Commands issued on database ``db`` while the block runs, by name (a Lua script's own
    calls counted as ``lua:NAME``). MONITOR slows a busy Redis: keep the window short."""
    counts: Counter[str] = Counter()
    proc = subprocess.Popen(
        ["redis-cli", "-h", host, "-p", str(port), "monitor"],
        stdout=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    stream = proc.stdout

    def read() -> None:
        seen = 0
        for line in stream:
            m = _MONITOR_LINE.match(line)
            if m is None or int(m.group(1)) != db:
                continue
            seen += 1
            if seen > _MONITOR_CAP:
                break
            name = m.group(3).upper()
            counts[f"lua:{name}" if m.group(2) == "lua" else name] += 1

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)  # MONITOR is subscribed before the work starts
    try:
        yield counts
    finally:
        time.sleep(0.5)
        proc.terminate()
        proc.wait(5)
        reader.join(5)


def mysql(sql: str) -> list[list[str]]:
    out = subprocess.run(
        ["mysql", "-uroot", "-h127.0.0.1", "-N", "-B", "-e", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def mysql_snapshot(database: str) -> dict[str, int]:
    """Exact row counts and on-disk bytes (after ANALYZE) of ``database``'s tables, and the
    server-wide counters of GLOBAL_STATUS."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", database):
        raise SystemExit(f"database name {database!r}: letters, digits and _ only")
    tables = [r[0] for r in mysql(
        "SELECT table_name FROM information_schema.tables"
        f" WHERE table_schema = '{database}' AND table_name LIKE 'im\\_tl\\_%'"
    )]  # fmt: skip
    out: dict[str, int] = {}
    if tables:
        mysql(f"ANALYZE TABLE {', '.join(f'{database}.{t}' for t in tables)}")
        counts = " UNION ALL ".join(f"SELECT '{t}', COUNT(*) FROM {database}.{t}" for t in tables)
        for name, n in mysql(counts):
            out[f"table_rows.{name}"] = int(n)
        for name, data, index in mysql(
            "SELECT table_name, data_length, index_length FROM information_schema.tables"
            f" WHERE table_schema = '{database}' AND table_name LIKE 'im\\_tl\\_%'"
        ):
            out[f"table_bytes.{name}"] = int(data) + int(index)
    names = ", ".join(f"'{n}'" for n in GLOBAL_STATUS)
    for name, value in mysql(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})"):
        out[f"global.{name}"] = int(value)
    return out


def raft_indexes(prefix: str) -> dict[str, int]:
    """The Raft commit index of each quorum queue named ``prefix.*``: one entry per command
    the queue applied (an enqueue, a settle, a consumer's checkout ...)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out: dict[str, int] = {}
    for q in json.loads(listed):
        if not str(q["name"]).startswith(f"{prefix}.") or q["type"] != "quorum":
            continue
        status = subprocess.run(
            ["rabbitmq-queues", "-q", "quorum_status", q["name"], "--formatter", "json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        leader = [m for m in json.loads(status) if m.get("Raft State") == "leader"]
        if leader:
            out[f"raft.{q['name']}"] = int(leader[0]["Commit Index"])
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def bench_run(args: argparse.Namespace, pids: dict[str, int], duration: float) -> dict[str, Any]:
    """One ``im bench --scenarios online`` run with every service counter around it."""
    im = str(Path(sys.executable).with_name("im"))
    pid_arg = ",".join(f"{n}={p}" for n, p in pids.items())
    cmd = [im, "bench", "--rest", args.rest, "--secret", args.secret, "--pids", pid_arg,
           "--scenarios", "online", "--pairs", str(args.pairs), "--duration", str(duration),
           "--json", "--quiet"]  # fmt: skip
    sql0, raft0 = mysql_snapshot(args.database), raft_indexes(args.queue_prefix)
    with redis_monitor(args.redis_host, args.redis_port, args.redis_db) as redis:
        done = subprocess.run(cmd, capture_output=True, text=True)
    sql1, raft1 = mysql_snapshot(args.database), raft_indexes(args.queue_prefix)
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"im bench failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return {
        "bench": lines[0],
        "counts": {
            **delta(sql1, sql0),
            **delta(raft1, raft0),
            **{f"redis_db.{k}": v for k, v in redis.items()},
        },
    }


def messages(args: argparse.Namespace) -> None:
    pids = cluster_children(args.launcher)
    short = bench_run(args, pids, args.short)
    long = bench_run(args, pids, args.long)
    diff = delta(long["counts"], short["counts"])
    stored = diff.get("table_rows.im_tl_message", 0)
    if stored <= 0:
        raise SystemExit(f"the long run stored no more messages than the short one: {diff}")
    bench = long["bench"]
    completed = int(bench["completed"])
    per_msg = {k: round(v / stored, 4) for k, v in sorted(diff.items()) if v}
    cpu = {n: round(float(u["cpu_s"]) / completed * 1e6, 1) for n, u in bench["processes"].items()}
    print(json.dumps({
        "measure": "messages",
        "msgs_per_s": bench["msgs_per_s"],
        "completed": completed,
        "stored_difference": stored,
        "cpu_us_per_msg": cpu,
        "bench_cpu_us_per_msg": round(float(bench["bench_cpu_s"]) / completed * 1e6, 1),
        "per_message": per_msg,
        "short_run_counts": short["counts"],
        "config": {"pairs": args.pairs, "short_s": args.short, "long_s": args.long,
                   "sent_p99_ms": bench.get("sent_p99_ms"), "p99_ms": bench.get("p99_ms")},
    }))  # fmt: skip


def logins(args: argparse.Namespace) -> None:
    rest = cluster_children(args.launcher)["rest-1"]
    tag = f"mu{int(time.time()) % 100000}"
    users = [f"{tag}-{i:05d}" for i in range(args.users)]
    password = "measure-units-password"
    with httpx.Client(base_url=args.rest, timeout=60.0) as http:

        def register(user: str) -> None:
            r = http.post("/users", json={"user_id": user, "password": password})
            if r.status_code not in (201, 409):
                raise SystemExit(f"register {user}: {r.status_code} {r.text[:200]}")

        def login(user: str) -> None:
            r = http.post("/login", json={"user_id": user, "password": password})
            if r.status_code != 200:
                raise SystemExit(f"login {user}: {r.status_code} {r.text[:200]}")

        result: dict[str, Any] = {"measure": "logins", "users": args.users}
        for what, work in (("register", register), ("login", login)):
            with redis_monitor(args.redis_host, args.redis_port, args.redis_db) as redis:
                c0, t0 = cpu_s(rest), time.monotonic()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    list(pool.map(work, users))
                c1, t1 = cpu_s(rest), time.monotonic()
            result[what] = {
                "per_s": round(args.users / (t1 - t0), 1),
                "rest_cpu_ms_each": round((c1 - c0) / args.users * 1000, 2),
                "redis_db_commands_each": round(sum(redis.values()) / args.users, 2),
                "redis_db_commands": dict(sorted(redis.items())),
            }
    print(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("messages", "logins"):
        s = sub.add_parser(name)
        s.add_argument("--rest", required=True)
        s.add_argument("--launcher", type=int, required=True, help="the im cluster launcher PID")
        s.add_argument("--redis-host", default="127.0.0.1")
        s.add_argument("--redis-port", type=int, default=6379)
        s.add_argument("--redis-db", type=int, required=True)
    m = sub.choices["messages"]
    m.add_argument("--secret", required=True)
    m.add_argument("--database", required=True)
    m.add_argument("--queue-prefix", required=True, help="IM_AMQP_QUEUE of the cluster")
    m.add_argument("--pairs", type=int, default=100)
    m.add_argument("--short", type=float, default=1.0, help="seconds of the short run's load")
    m.add_argument("--long", type=float, default=20.0, help="seconds of the long run's load")
    lg = sub.choices["logins"]
    lg.add_argument("--users", type=int, default=200)
    lg.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    if args.what == "messages":
        messages(args)
    else:
        logins(args)


if __name__ == "__main__":
    main()
