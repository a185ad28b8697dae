"""What the link layer alone costs per idle authenticated connection, server side.

    python scripts/link_idle_rss.py [CONNECTIONS]

Serves links with a handler that does nothing but accept the GREET, opens CONNECTIONS plain
sockets to it from a child process (so only the server's memory is read here), waits until every
one is authenticated, and prints the server's RSS growth per connection. ``im bench --scenarios
idle`` measures the whole connection (session, routing) on a real connector; this separates the
link layer's part of it. The loop is IM_LOOP's (uvloop by default, as on the servers). Run it
in the project's environment (``pip install -e .``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys

from cli import loop as eventloop
from common.admission import PreAuthLimits
from common.config import Settings
from common.link import Link, LinkConfig, serve_links
from proto import im_pb2

PAGE = os.sysconf("SC_PAGE_SIZE")
CHILD = """
import socket, sys, time
from common.codec import encode
from proto import im_pb2
greet = encode(im_pb2.Envelope(greet=im_pb2.Greet(token="t")))
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(greet)
    socks.append(s)
print("up", flush=True)
sys.stdin.read()
"""


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _Idle:
    __slots__ = ()
    greeted = 0
    everyone: asyncio.Event | None = None
    expected = 0

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        link.authenticated = True
        _Idle.greeted += 1
        if _Idle.greeted == _Idle.expected and _Idle.everyone is not None:
            _Idle.everyone.set()

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        pass


async def measure(n: int) -> float:
    settings = Settings(preauth_per_address=n, preauth_max=n)
    admission = PreAuthLimits(settings.preauth_per_address, settings.preauth_max)
    server = await serve_links(
        "127.0.0.1", 0, lambda _link: _Idle(), LinkConfig.from_settings(settings),
        admission=admission,
    )  # fmt: skip
    port = server.sockets[0].getsockname()[1]
    _Idle.everyone, _Idle.expected = asyncio.Event(), n
    gc.collect()
    await asyncio.sleep(0.5)
    before = rss()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(port), str(n),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    await child.stdout.readline()
    await _Idle.everyone.wait()
    await asyncio.sleep(1.0)
    gc.collect()
    after = rss()
    child.stdin.close()
    await child.wait()
    server.close()
    return (after - before) / n


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    per = eventloop.run(measure(n))
    print(f'{{"connections": {n}, "link_rss_per_conn_bytes": {per:.0f}}}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
