"""``python -m testbed``: three app hosts and a client host, with the clustered services, from a
shell (``scripts/testbed`` runs it). Needs root.

    python -m testbed up --dir /tmp/tb [--app]   # hosts, Redis+Sentinel, RabbitMQ, Galera (+ im)
    python -m testbed exec --dir /tmp/tb client -- im demo --rest http://10.77.0.11:8082
    python -m testbed partition --dir /tmp/tb app2 --seconds 10
    python -m testbed down --dir /tmp/tb         # kills everything in the hosts, removes all
    python -m testbed clean                      # the same for every testbed a crash left

``up`` writes ``<dir>/env`` with the settings the app needs on these hosts (``IM_DATABASE_URL``,
``IM_REDIS_URL``, ``IM_AMQP_URL``, ``IM_SECRET``), and ``exec`` runs a command in a host with
them. The services keep running after ``up`` returns (each in its host's namespace) until
``down``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from testbed.app import AppCluster
from testbed.galera import GaleraCluster
from testbed.netns import PREFIX, Testbed, TestbedError, destroy_all, unavailable
from testbed.rabbit import RabbitCluster
from testbed.sentinel import SentinelGroup

APP_HOSTS = ["app1", "app2", "app3"]
HOSTS = [*APP_HOSTS, "client"]


def _env_file(root: Path) -> Path:
    return root / "env"


def _read_env(root: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    path = _env_file(root)
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                env[key] = shlex.split(value)[0] if value else ""
    return env


def cmd_up(args: argparse.Namespace) -> int:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix=f"{PREFIX}-cli-"))
    root.mkdir(parents=True, exist_ok=True)
    if (root / "testbed.json").exists():
        print(f"testbed: {root} holds a testbed already: `down` it first", file=sys.stderr)
        return 2
    bed = Testbed(HOSTS, root=root)
    began = time.monotonic()
    try:
        bed.create()
        print(f"hosts up: {', '.join(f'{h.name} {h.addr}' for h in bed.hosts.values())}")
        redis = SentinelGroup(bed, primary="app1", replicas=["app2"], sentinels=APP_HOSTS)
        redis.start()
        print(f"redis with sentinel up: primary {redis.primary()}")
        rabbit = RabbitCluster(bed, APP_HOSTS)
        rabbit.start()
        print("rabbitmq cluster up")
        galera = GaleraCluster(bed, APP_HOSTS)
        galera.start()
        print("galera cluster up")
        app = AppCluster(
            bed, database_url=galera.url("im"), redis_url=redis.url(), amqp_url=rabbit.url()
        )
        settings = {
            "IM_DATABASE_URL": galera.url("im"),
            "IM_REDIS_URL": redis.url(),
            "IM_AMQP_URL": rabbit.url(),
            "IM_SECRET": app.secret,
        }
        _env_file(root).write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in settings.items())
        )
        if args.app:
            app.start()
            print(f"im services up; REST at {app.rest_url}")
    except (TestbedError, OSError) as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        bed.destroy()
        shutil.rmtree(root, ignore_errors=True)
        return 1
    print(f"ready in {time.monotonic() - began:.0f} s; settings in {_env_file(root)}:")
    print(_env_file(root).read_text(), end="")
    print(f"run a command in a host:  python -m testbed exec --dir {root} client -- CMD...")
    print(f"remove it all:            python -m testbed down --dir {root}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    try:
        Testbed.load(root).destroy()
    except (TestbedError, OSError, ValueError) as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    print(f"removed {root}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    bed = Testbed.load(Path(args.dir))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("testbed: exec needs a command", file=sys.stderr)
        return 2
    env = {**os.environ, **_read_env(bed.root)}
    if command[0] == "im":  # this interpreter's im, whatever PATH says inside
        command = [sys.executable, "-m", "cli.main", *command[1:]]
    os.execvpe("ip", bed[args.host].argv(command), env)


def cmd_partition(args: argparse.Namespace) -> int:
    bed = Testbed.load(Path(args.dir))
    bed.partition(args.host)
    print(f"{args.host} partitioned for {args.seconds:g} s")
    try:
        time.sleep(args.seconds)
    finally:
        bed.heal()
    print("healed")
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    Testbed.load(Path(args.dir)).heal()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    bed = Testbed.load(Path(args.dir))
    report = {h: {"addr": bed[h].addr, "processes": len(bed.pids(h))} for h in bed.hosts}
    print(json.dumps(report, indent=1))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    removed = destroy_all()
    for ns in removed:
        print(f"removed namespace {ns}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="hosts and clustered services")
    up.add_argument("--dir", help="where its files go (default: a new temporary directory)")
    up.add_argument("--app", action="store_true", help="also start the im services on the hosts")
    up.set_defaults(func=cmd_up)
    for name, func, helptext in (
        ("down", cmd_down, "kill everything in the hosts, remove them and the directory"),
        ("status", cmd_status, "the hosts and how many processes each runs"),
        ("heal", cmd_heal, "remove every fault"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--dir", required=True)
        sp.set_defaults(func=func)
    ex = sub.add_parser("exec", help="run a command in a host, with the settings of `up`")
    ex.add_argument("--dir", required=True)
    ex.add_argument("host")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    pa = sub.add_parser("partition", help="cut a host off from the others for a while")
    pa.add_argument("--dir", required=True)
    pa.add_argument("host")
    pa.add_argument("--seconds", type=float, default=10.0)
    pa.set_defaults(func=cmd_partition)
    cl = sub.add_parser("clean", help=f"remove every {PREFIX}-* namespace and its processes")
    cl.set_defaults(func=cmd_clean)
    args = p.parse_args(argv)
    reason = unavailable() if args.cmd in ("up", "clean") else None
    if reason is not None:
        print(f"testbed: {reason}", file=sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
