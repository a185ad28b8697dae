"""The ``im`` command: run the services, alone or together, and the user-side tools."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

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


def cmd_serve(args: argparse.Namespace, roles: frozenset[str]) -> int:
    settings = _settings(args)
    logsetup.setup(settings.log_level)
    try:
        asyncio.run(_serve(settings, roles, banner=True))
    except (IMError, OSError) as exc:
        print(f"im: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from client import demo

    logsetup.setup("WARNING")
    return demo.main(
        args.rest, args.users, args.messages, args.offline, args.json, args.timeout, args.files
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="im", description="IM server cluster")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="connector + transfer + REST + offline writer in one process")
    up.add_argument("--data-dir", help="where SQLite and the secret live (default ./im-data)")
    up.set_defaults(
        func=lambda a: cmd_serve(a, frozenset({"rest", "transfer", "connector", "writer"}))
    )
    for name, roles, helptext in (
        ("connector", {"connector"}, "client-facing connector only"),
        (
            "transfer",
            {"transfer", "writer"},
            "transfer only (+ the writer if the queue is in-process)",
        ),
        ("rest", {"rest"}, "REST API only"),
        ("offline-writer", {"writer"}, "offline writer only (needs IM_AMQP_URL)"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--data-dir")
        sp.set_defaults(func=lambda a, r=frozenset(roles): cmd_serve(a, r))

    d = sub.add_parser("demo", help="simulated users chat; checks every receipt")
    d.add_argument("--users", type=int, default=20)
    d.add_argument("--messages", type=int, default=1000)
    d.add_argument("--offline", type=int, default=5)
    d.add_argument(
        "--files", type=int, default=0, help="how many of the messages are files (up to 1 MiB)"
    )
    d.add_argument("--rest", default="http://127.0.0.1:8082")
    d.add_argument("--timeout", type=float, default=120.0)
    d.add_argument("--json", action="store_true", help="last line: one JSON object")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
