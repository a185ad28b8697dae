"""What an idle authenticated client connection costs the server, per connection (issue 17).

    python scripts/idlemem.py [--stages 2000,10000] [--hold 5] [--trace] [--watch 2]

Starts the whole embedded stack (what ``im up`` runs: connector, transfer, REST, writer, on
SQLite in a temporary directory) in a child process, then from this process opens the
connections of each stage (cumulative counts, ``--width`` at a time), each a real link that
GREETs with a token minted with the child's secret (8 devices per user, as ``im bench`` does)
and then only heartbeats. After each stage and ``--hold`` seconds it asks the child for its
``VmRSS`` (after a ``gc.collect()``) and prints the growth over the baseline taken before the
first connection, divided by the connections, with what pymalloc holds (in live blocks, in
free blocks, in empty pools: what a burst of short-lived objects left behind).

``--trace`` runs the child under tracemalloc (which inflates RSS: read its Python-object
numbers, and the RSS of a run without it) and prints the allocation sites that grew most, per
connection; ``--watch S`` prints the child's RSS and its most numerous tasks every S seconds
while connecting; ``--trim`` adds the RSS after glibc's ``malloc_trim``. The process limit on
open files is raised to its hard limit in both processes (10 000 connections need it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import secrets
import shutil
import socket
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli import loop as eventloop  # noqa: E402
from common.link import Link, LinkConfig, open_link  # noqa: E402
from common.tokens import TokenSigner  # noqa: E402
from proto import im_pb2  # noqa: E402

DEVICES_PER_USER = 8


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def vmrss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def pymalloc_stats() -> dict[str, int]:
    """What pymalloc holds (KB): in live blocks, in free blocks of its pools, in empty pools."""
    import re

    r, w = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(w, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(w)
        os.close(saved)
    with os.fdopen(r) as f:
        text = f.read()
    out: dict[str, int] = {}
    for key, label in (
        ("pymalloc_arenas_kb", "arenas * 1048576 bytes/arena"),
        ("pymalloc_used_kb", "# bytes in allocated blocks"),
        ("pymalloc_free_blocks_kb", "# bytes in available blocks"),
        ("pymalloc_unused_pools_kb", "unused pools * 16384 bytes"),
    ):
        m = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
        if m:
            out[key] = int(m.group(1).replace(",", "")) // 1024
    return out


def malloc_trim() -> None:
    """Give glibc's free heap memory back, to tell what is held from what is fragmentation."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_port() -> int:
    """A port below 32768 outside the ones the briefing reserves."""
    for _ in range(200):
        port = secrets.randbelow(20000) + 11000
        if port == 8082 or 9081 <= port <= 9098:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


# -- the server (child) ----------------------------------------------------------------------


async def serve(trace: bool, top: int) -> None:
    from cli.stack import Stack
    from common.config import Settings

    stack = Stack(Settings())
    await stack.start()
    assert stack.connector is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"port": stack.connector.port, "pid": os.getpid()}), flush=True)
    base: tracemalloc.Snapshot | None = None
    try:
        while line := (await reader.readline()).decode().split():
            cmd, arg = line[0], int(line[1]) if len(line) > 1 else 0
            if cmd == "peek":
                kinds: dict[str, int] = {}
                for task in asyncio.all_tasks():
                    coro = task.get_coro()
                    name = getattr(coro, "__qualname__", type(coro).__name__)
                    kinds[name] = kinds.get(name, 0) + 1
                most = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:4])
                print(json.dumps({"rss_kb": vmrss_kb(), "tasks": most}), flush=True)
                continue
            gc.collect()
            out: dict[str, object] = {"rss_kb": vmrss_kb(), "hwm_kb": vmrss_kb(field="VmHWM")}
            out |= pymalloc_stats()
            if cmd == "trim":
                malloc_trim()
                out["rss_kb"] = vmrss_kb()
            out["sessions"] = stack.connector.online_sessions
            if trace and cmd == "base":
                base = tracemalloc.take_snapshot()
            elif trace and cmd == "snap" and base is not None and arg:
                snap = tracemalloc.take_snapshot()
                out["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
                stats = snap.compare_to(base, "lineno")
                total = sum(s.size_diff for s in stats)
                out["traced_growth_per_conn"] = round(total / arg)
                out["top"] = [
                    {
                        "where": f"{s.traceback[0].filename.split('/site-packages/')[-1]}"
                        f":{s.traceback[0].lineno}".replace(str(ROOT) + "/", ""),
                        "bytes_per_conn": round(s.size_diff / arg),
                        "count_per_conn": round(s.count_diff / arg, 2),
                    }
                    for s in stats[:top]
                ]
            print(json.dumps(out), flush=True)
    finally:
        await stack.stop()


# -- the clients (parent) --------------------------------------------------------------------


class _Idle:
    """Waits for WELCOME; the link sends heartbeats by itself."""

    def __init__(self) -> None:
        self.welcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        if env.WhichOneof("body") == "welcome" and not self.welcome.done():
            self.welcome.set_result(None)
        elif env.WhichOneof("body") == "error" and not self.welcome.done():
            self.welcome.set_exception(RuntimeError(im_pb2.ErrorCode.Name(env.error.code)))

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(RuntimeError("closed before WELCOME"))


async def drive(args: argparse.Namespace) -> None:
    stages = [int(x) for x in args.stages.split(",")]
    data = tempfile.mkdtemp(prefix="idlemem-")
    secret = secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
    env |= {
        "IM_DATA_DIR": data,
        "IM_SECRET": secret,
        "IM_BIND_HOST": "127.0.0.1",
        "IM_CONNECTOR_PORT": str(free_port()),
        "IM_REST_PORT": str(free_port()),
        "IM_TRANSFER_PORT": str(free_port()),
        "IM_WS_PORT": "0",
        "IM_METRICS_PORT": "0",
        "IM_PREAUTH_PER_ADDRESS": "4096",
        "IM_LOG_LEVEL": "WARNING",
        "IM_LOOP": args.loop,
    }
    env["IM_TRANSFER_ADDRS"] = f"127.0.0.1:{env['IM_TRANSFER_PORT']}"
    child_args = [sys.executable, __file__, "--serve", "--top", str(args.top)]
    if args.trace:
        child_args[1:1] = ["-X", "tracemalloc=1"]
        child_args.append("--trace")
    child = await asyncio.create_subprocess_exec(
        *child_args, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    async def ask(cmd: str) -> dict[str, object]:
        stdin.write(cmd.encode() + b"\n")
        await stdin.drain()
        answer: dict[str, object] = json.loads(await stdout.readline())
        return answer

    hello = json.loads(await stdout.readline())
    port = int(hello["port"])
    signer = TokenSigner(secret.encode())
    config = LinkConfig(heartbeat=10.0, idle_timeout=60.0)
    links: list[Link] = []
    await asyncio.sleep(2.0)
    base = await ask("base")
    base_rss = int(base["rss_kb"])  # type: ignore[call-overload]
    print(json.dumps({"baseline_rss_kb": base_rss, "trace": args.trace} | base), flush=True)
    users = max(1, -(-stages[-1] // DEVICES_PER_USER))
    failed = 0

    async def connect(k: int) -> None:
        nonlocal failed
        user, device = f"idle{k % users:05d}", f"d{k // users}"
        token = signer.issue(user, 3600, device_id=device, slot=k // users)
        handler = _Idle()
        try:
            link = await open_link("127.0.0.1", port, handler, config, timeout=30)
            links.append(link)
            link.send_control(im_pb2.Envelope(greet=im_pb2.Greet(token=token, device_id=device)))
            async with asyncio.timeout(60):
                await handler.welcome
        except (OSError, TimeoutError, RuntimeError) as exc:
            failed += 1
            if failed < 5:
                print(f"connect {k}: {exc!r}", file=sys.stderr)

    sem = asyncio.Semaphore(args.width)

    async def one(k: int) -> None:
        async with sem:
            await connect(k)

    done = 0
    try:
        for n in stages:
            started = time.monotonic()
            stage = asyncio.gather(*(one(k) for k in range(done, n)))
            while args.watch and not stage.done():
                await asyncio.wait([stage], timeout=args.watch)
                t = round(time.monotonic() - started, 1)
                peek = {"t": t, "made": len(links)} | await ask("peek")
                print(json.dumps(peek), flush=True)
            await stage
            done = n
            up_s = time.monotonic() - started
            await asyncio.sleep(args.hold)
            snap = await ask(f"snap {n}")
            rss = int(snap.pop("rss_kb"))  # type: ignore[call-overload]
            if args.trim:
                trimmed = int((await ask("trim"))["rss_kb"])  # type: ignore[call-overload]
                snap["trimmed_per_conn_kb"] = round((trimmed - base_rss) / n, 2)
            alive = sum(1 for link in links if not link.closing)
            line = {
                "connections": n,
                "alive": alive,
                "failed": failed,
                "connect_s": round(up_s, 1),
                "rss_kb": rss,
                "rss_growth_kb": rss - base_rss,
                "rss_per_conn_kb": round((rss - base_rss) / n, 2),
            } | snap
            print(json.dumps(line), flush=True)
    finally:
        for link in links:
            link.close()
        await asyncio.gather(*(link.wait_closed() for link in links), return_exceptions=True)
        stdin.close()
        await child.wait()
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--stages", default="2000,10000")
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--trace", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--loop", default="uvloop")
    p.add_argument("--watch", type=float, default=0, help="print tasks and RSS this often")
    p.add_argument("--trim", action="store_true", help="also RSS after glibc's malloc_trim")
    p.add_argument("--width", type=int, default=200, help="connections being made at once")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    raise_nofile()
    if args.serve:
        eventloop.run(serve(args.trace, args.top))
    else:
        eventloop.run(drive(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
