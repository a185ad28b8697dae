"""The ``im`` command: run the services, alone or together, and the user-side tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from cli import loop as eventloop
from common import log as logsetup
from common.config import Settings
from common.errors import IMError


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings()
    if getattr(args, "data_dir", None):
        s = s.model_copy(update={"data_dir": Path(args.data_dir)})
    return s


async def _serve(settings: Settings, roles: frozenset[str], banner: bool) -> None:
    from cli.stack import Stack

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(settings, roles)
    try:
        await stack.start()
        if banner:
            print("im is up:", flush=True)
            for line in stack.describe():
                print("  " + line, flush=True)
            print("Ctrl-C stops it.", flush=True)
        await stop.wait()
        print("stopping...", file=sys.stderr, flush=True)
    finally:
        await stack.stop()


def _log_setup(settings: Settings, role: str) -> None:
    process = f"{role}/{settings.node_id}" if settings.node_id else role
    logsetup.setup(settings.log_level, fmt=settings.log_format, process=process)


def _metrics_default(settings: Settings) -> Settings:
    """`im up` and `im cluster` serve metrics unless IM_METRICS_PORT says otherwise (0: off)."""
    from cli.ops import DEFAULT_METRICS_PORT

    if "IM_METRICS_PORT" in os.environ:
        return settings
    return settings.model_copy(update={"metrics_port": DEFAULT_METRICS_PORT})


def cmd_serve(args: argparse.Namespace, roles: frozenset[str]) -> int:
    settings = _settings(args)
    if roles == frozenset({"rest", "transfer", "connector", "writer"}):
        settings = _metrics_default(settings)
    _log_setup(settings, "+".join(sorted(roles)))
    try:
        eventloop.run(_serve(settings, roles, banner=True))
    except (IMError, OSError) as exc:
        print(f"im: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """A transfer; with the in-process queue it must also write what it queues."""
    roles = {"transfer"} if _settings(args).amqp_url else {"transfer", "writer"}
    return cmd_serve(args, frozenset(roles))


def cmd_writer(args: argparse.Namespace) -> int:
    if not _settings(args).amqp_url:
        print(
            "im: the timeline writer consumes the RabbitMQ queue: set IM_AMQP_URL"
            " (with the in-process queue, the transfer writes itself)",
            file=sys.stderr,
        )
        return 2
    return cmd_serve(args, frozenset({"writer"}))


def cmd_migrate(args: argparse.Namespace) -> int:
    from cli.migrate import run_migrate

    settings = _settings(args)
    _log_setup(settings, "migrate")
    try:
        lines = eventloop.run(run_migrate(settings))
    except (IMError, OSError) as exc:
        print(f"im: migrate failed: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from cli.cluster import run_cluster

    settings = _metrics_default(_settings(args))
    _log_setup(settings, "cluster")
    for name in ("connectors", "transfers", "writers"):
        if getattr(args, name) < 1:
            print(f"im: --{name} must be at least 1", file=sys.stderr)
            return 2
    try:
        return eventloop.run(run_cluster(settings, args.connectors, args.transfers, args.writers))
    except (IMError, OSError) as exc:
        print(f"im: cannot start the cluster: {exc}", file=sys.stderr)
        return 2


def cmd_chaos(args: argparse.Namespace) -> int:
    if args.hosts:
        from cli.chaoshosts import cmd_chaos_hosts

        return cmd_chaos_hosts(args)
    from cli import chaos

    settings = _settings(args)
    logsetup.setup("WARNING")
    opts = chaos.Options(
        seconds=args.seconds,
        users=args.users,
        rate=args.rate,
        kill_every=args.kill_every,
        connectors=args.connectors,
        transfers=args.transfers,
        writers=args.writers,
        quiesce=args.quiesce,
        seed=args.seed,
        keep=args.keep,
        devices=args.devices,
        groups=args.groups,
        group_size=args.group_size,
        group_share=args.group_share,
    )
    if opts.users < 2 or min(opts.connectors, opts.transfers, opts.writers, opts.devices) < 1:
        print("im: need 2+ users and 1+ connector, transfer and writer", file=sys.stderr)
        return 2
    try:
        opts.sized_groups()
    except IMError as exc:
        print(f"im: {exc}", file=sys.stderr)
        return 2
    try:
        return chaos.main(settings, opts, args.json)
    except (IMError, OSError, RuntimeError) as exc:
        print(f"im: chaos could not run: {exc}", file=sys.stderr)
        return 2


def cmd_admin(args: argparse.Namespace) -> int:
    from cli.admin import run_admin

    settings = _settings(args)
    _log_setup(settings, "admin")
    try:
        code, lines = eventloop.run(run_admin(settings, args.action, args.user))
    except (IMError, OSError) as exc:
        print(f"im: admin: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line, file=sys.stderr if code else sys.stdout)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from workload import demo

    logsetup.setup("WARNING")
    return demo.main(
        args.rest,
        args.users,
        args.messages,
        args.offline,
        args.json,
        args.timeout,
        args.files,
        devices=args.devices,
        groups=args.groups,
        group_size=args.group_size,
        group_messages=args.group_messages,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="im", description="IM server cluster")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="connector + transfer + REST + timeline writer in one process")
    up.add_argument("--data-dir", help="where SQLite and the secret live (default ./im-data)")
    up.set_defaults(
        func=lambda a: cmd_serve(a, frozenset({"rest", "transfer", "connector", "writer"}))
    )
    for name, roles, helptext in (
        ("connector", {"connector"}, "client-facing connector only"),
        ("rest", {"rest"}, "REST API only"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--data-dir")
        sp.set_defaults(func=lambda a, r=frozenset(roles): cmd_serve(a, r))
    # `offline-writer`: its name before the timelines, kept so scripts and compose files run
    ow = sub.add_parser(
        "writer",
        aliases=["offline-writer"],
        help="timeline writer only (needs IM_AMQP_URL)",
    )
    ow.add_argument("--data-dir")
    ow.set_defaults(func=cmd_writer)
    tr = sub.add_parser("transfer", help="transfer only (+ the writer if the queue is in-process)")
    tr.add_argument("--data-dir")
    tr.set_defaults(func=cmd_transfer)

    mg = sub.add_parser("migrate", help="create or upgrade the database schema (IM_DATABASE_URL)")
    mg.add_argument("--data-dir")
    mg.set_defaults(func=cmd_migrate)

    ad = sub.add_parser("admin", help="grant or revoke the admin role (the admin API, /admin)")
    ad.add_argument("action", choices=("grant", "revoke", "list"))
    ad.add_argument("user", nargs="?", default="", help="user id (not for list)")
    ad.add_argument("--data-dir")
    ad.set_defaults(func=cmd_admin)

    cl = sub.add_parser(
        "cluster", help="REST, transfers, connectors, writers as processes on MySQL/Redis/RabbitMQ"
    )
    cl.add_argument("--connectors", type=int, default=2)
    cl.add_argument("--transfers", type=int, default=2)
    cl.add_argument("--writers", type=int, default=1)
    cl.set_defaults(func=cmd_cluster)

    ch = sub.add_parser(
        "chaos",
        help="the cluster under SIGKILL while users chat; checks no loss, duplicates, order",
    )
    ch.add_argument("--seconds", type=float, default=60.0, help="how long to kill (default 60)")
    ch.add_argument("--users", type=int, default=20)
    ch.add_argument("--rate", type=float, default=40.0, help="messages per second in all")
    ch.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills, about")
    ch.add_argument("--connectors", type=int, default=2)
    ch.add_argument("--transfers", type=int, default=2)
    ch.add_argument("--writers", type=int, default=2)
    ch.add_argument("--quiesce", type=float, default=90.0, help="longest wait to settle, s")
    ch.add_argument("--seed", type=int, default=None, help="replay a run's random choices")
    ch.add_argument("--keep", action="store_true", help="keep its database, keys, queues, logs")
    ch.add_argument("--devices", type=int, default=1, help="devices per user, each checked")
    ch.add_argument("--groups", type=int, default=2, help="group chats among the users (0: off)")
    ch.add_argument(
        "--group-size", type=int, default=6, help="members per group (at most users - 1)"
    )
    ch.add_argument(
        "--group-share", type=float, default=0.25, help="share of --rate sent to groups"
    )
    ch.add_argument("--json", action="store_true", help="last line: one JSON object")
    ch.add_argument("--hosts", type=int, default=0, help="N>=3 test hosts, network faults (root)")
    ch.add_argument("--fault-every", type=float, default=20.0, help="--hosts: s between faults")
    ch.set_defaults(func=cmd_chaos)

    d = sub.add_parser("demo", help="simulated users chat; checks every receipt")
    d.add_argument("--users", type=int, default=20)
    d.add_argument("--messages", type=int, default=1000)
    d.add_argument("--offline", type=int, default=5)
    d.add_argument(
        "--files", type=int, default=0, help="how many of the messages are files (up to 1 MiB)"
    )
    d.add_argument("--rest", default="http://127.0.0.1:8082")
    d.add_argument("--timeout", type=float, default=120.0)
    d.add_argument("--devices", type=int, default=1, help="devices per user, each checked")
    d.add_argument("--groups", type=int, default=0, help="groups with traffic, each checked")
    d.add_argument("--group-size", type=int, default=10, help="members of each group")
    d.add_argument(
        "--group-messages",
        type=int,
        default=0,
        help="messages per group (default: a quarter of --messages over the groups)",
    )
    d.add_argument("--json", action="store_true", help="last line: one JSON object")
    d.set_defaults(func=cmd_demo)

    from cli.bench import add_parser as add_bench
    from cli.client import add_parser as add_client

    add_bench(sub)
    add_client(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
