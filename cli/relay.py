"""A bare relay, the yardstick ``im bench`` measures the real cluster against (issue 6).

Three processes shaped like the cluster's hop, connector -> transfer -> connector, and nothing
else: no tokens, friends, windows, storage or routing registry. Frames are the project's own
(4-byte length + protobuf ``Envelope``) and each is decoded once per hop and encoded again,
as a real hop must. Built on ``asyncio.Protocol`` with the writes of one loop turn coalesced
into one ``write``, on the loop ``IM_LOOP`` selects (``cli/loop.py``).

Roles (``python -m cli.relay ROLE --port P [--transfer PORT]``):
- ``transfer``: connectors connect and announce each user they hold with a GREET
  ``{token: user, node_id: connector}``; a CHAT goes to the dest's connector, an ACK to the
  ``dest_id`` of the receipt;
- ``connector``: a client GREETs with its user id as token; its CHATs and ACKs go to the
  transfer, and what the transfer sends for a local user goes to that user's socket.

Bounds: one decoder per connection (at most one incomplete frame), routing tables with one
entry per connected user; a frame for an unknown user is dropped (the bench then reports it
missing). It listens on 127.0.0.1 only, for the bench that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from cli import loop as eventloop
from proto import im_pb2
from workload.benchload import FramedProtocol

HOST = "127.0.0.1"


class _Conn(FramedProtocol):
    """One socket of a relay node: envelopes go to the node, which knows where they go."""

    def __init__(self, node: _Node) -> None:
        super().__init__()
        self.node = node
        self.users: list[str] = []

    def on_envelope(self, env: im_pb2.Envelope) -> None:
        self.node.on_env(self, env)

    def connection_lost(self, exc: Exception | None) -> None:
        self.node.forget(self)


class _Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.routes: dict[str, _Conn] = {}
        self.upstream: _Conn | None = None  # a connector's link to the transfer

    def on_env(self, conn: _Conn, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "greet":
            user = env.greet.token
            self.routes[user] = conn
            conn.users.append(user)
            if self.upstream is not None:  # a connector tells the transfer where the user is
                greet = im_pb2.Greet(token=user, node_id=self.name)
                self.upstream.send(im_pb2.Envelope(greet=greet))
            return
        if kind == "chat":
            dest = env.chat.dest_id
        elif kind == "ack":
            dest = env.ack.dest_id
        else:
            return
        if self.upstream is not None and conn is not self.upstream:
            self.upstream.send(env)  # from a local client: up to the transfer
            return
        target = self.routes.get(dest)
        if target is not None:
            target.send(env)

    def forget(self, conn: _Conn) -> None:
        for user in conn.users:
            if self.routes.get(user) is conn:
                del self.routes[user]


async def serve(role: str, port: int, transfer: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    node = _Node(name)
    if role == "connector":
        _, up = await loop.create_connection(lambda: _Conn(node), HOST, transfer)
        node.upstream = up
    server = await loop.create_server(lambda: _Conn(node), HOST, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"relay {role} {name} on {HOST}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cli.relay", description=__doc__)
    p.add_argument("role", choices=("connector", "transfer"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--transfer", type=int, default=0, help="the transfer's port (connectors)")
    p.add_argument("--name", default="")
    args = p.parse_args(argv)
    if args.role == "connector" and not args.transfer:
        p.error("a connector needs --transfer")
    eventloop.run(serve(args.role, args.port, args.transfer, args.name or f"relay-{args.port}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
