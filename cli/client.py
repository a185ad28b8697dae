"""``im client``: chat from a terminal (tui/), against the REST API of ``im up`` or a cluster.

With ``--user`` and a password (``--password``, or ``IM_PASSWORD`` so it stays out of the
process list) it logs in at once; otherwise a login screen asks. ``--register`` creates the
account first (an existing one is just logged in to).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cli import loop as eventloop

DEFAULT_REST = "http://127.0.0.1:8082"


def add_parser(sub: Any) -> None:
    c = sub.add_parser("client", help="chat from a terminal: conversations, friends, receipts")
    c.add_argument("--rest", default=DEFAULT_REST, help=f"REST URL (default {DEFAULT_REST})")
    c.add_argument("--user", default="", help="user id (else the login screen asks)")
    c.add_argument("--password", default="", help="password (or IM_PASSWORD)")
    c.add_argument("--device", default="tui", help="device id (default tui)")
    c.add_argument("--register", action="store_true", help="create the account first")
    c.add_argument("--poll", type=float, default=3.0, help="seconds between request polls")
    c.set_defaults(func=cmd_client)


def cmd_client(args: argparse.Namespace) -> int:
    from tui.screens import ChatApp
    from tui.session import Options

    if not args.poll > 0:
        print("im client: --poll must be above 0", file=sys.stderr)
        return 2
    password = args.password or os.environ.get("IM_PASSWORD", "")
    opts = Options(
        rest_url=args.rest,
        user=args.user,
        password=password,
        device_id=args.device,
        register=args.register,
        poll_every=args.poll,
    )
    app = ChatApp(opts, login_screen=not (args.user and password))
    eventloop.run(app.run_async())
    return app.return_code or 0
