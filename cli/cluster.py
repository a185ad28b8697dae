"""``im cluster``: the production topology as local OS processes on the real services.

REST, M transfers, N connectors and K timeline writers, each its own ``im`` process, sharing
Redis (user status, registry), RabbitMQ (the timeline write queue) and MySQL (users, relations,
timelines). Every child's output is prefixed with its name; Ctrl-C (or SIGTERM) stops them all,
politely first, then with SIGKILL after a grace period. A writer runs as ``im offline-writer``,
the old name of ``im writer``, which scripts (and ``im chaos``) still use.

Unset service URLs default to this machine's services, so ``im cluster`` alone works where
MariaDB, Redis and RabbitMQ run on 127.0.0.1 with their stock settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.config import Settings
from common.redact import redact_url

LOCAL_DATABASE = "mysql://root@127.0.0.1:3306/im"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
STOP_GRACE = 10.0
PORT_STEP = 10  # connector i listens on connector_port + 10 * i, transfer j likewise
# ops endpoints (IM_METRICS_PORT): process i of a role on metrics_port + 10 * i + offset, so
# with the defaults (9090) they sit beside the service ports (connector 9081 + 10 i, transfer
# 9082 + 10 j, WebSocket 9083 + 10 i) and never on one: 9096 9097 9098, 9106 9107 ...
METRICS_OFFSET = {"connector": 6, "transfer": 7, "offline-writer": 8}


@dataclass
class Child:
    name: str
    role: str
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


def cluster_settings(settings: Settings) -> tuple[Settings, list[str]]:
    """``settings`` with every unset service URL pointed at the local default; and what was
    defaulted, to tell the user."""
    notes: list[str] = []
    update: dict[str, str] = {}
    for key, default, env in (
        ("database_url", LOCAL_DATABASE, "IM_DATABASE_URL"),
        ("redis_url", LOCAL_REDIS, "IM_REDIS_URL"),
        ("amqp_url", LOCAL_AMQP, "IM_AMQP_URL"),
    ):
        if not getattr(settings, key):
            update[key] = default
            notes.append(f"{env} not set: using {default}")
    if not settings.secret:
        update["secret"] = secrets.token_urlsafe(32)
        notes.append("IM_SECRET not set: a random one for this run (tokens die with it)")
    return settings.model_copy(update=update), notes


def plan(settings: Settings, connectors: int, transfers: int, writers: int) -> list[Child]:
    """The children to start, with the environment that makes each one what it is."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
    base.update(
        {
            "IM_DATABASE_URL": settings.database_url,
            "IM_REDIS_URL": settings.redis_url,
            "IM_AMQP_URL": settings.amqp_url,
            "IM_SECRET": settings.secret,
            "IM_BIND_HOST": settings.bind_host,
            "IM_LOG_LEVEL": settings.log_level,
            "PYTHONUNBUFFERED": "1",
        }
    )
    # the rest of the user's IM_* settings (limits, TTLs, ...) reach every child unchanged
    for key, value in os.environ.items():
        if key.startswith("IM_") and key not in base and key != "IM_NODE_ID":
            base[key] = value
    rest_env = {**base, "IM_REST_PORT": str(settings.rest_port), "IM_METRICS_PORT": "0"}
    children = [Child("rest", "rest", rest_env)]
    for j in range(transfers):
        port = settings.transfer_port + PORT_STEP * j
        env = {**base, "IM_NODE_ID": f"transfer-{j + 1}", "IM_TRANSFER_PORT": str(port)}
        env |= _metrics(settings, "transfer", j)
        children.append(Child(f"transfer-{j + 1}", "transfer", env))
    for i in range(connectors):
        port = settings.connector_port + PORT_STEP * i
        env = {**base, "IM_NODE_ID": f"connector-{i + 1}", "IM_CONNECTOR_PORT": str(port)}
        # WebSocket ports step like the TCP ones (0 stays off)
        ws = settings.ws_port + PORT_STEP * i if settings.ws_port else 0
        env["IM_WS_PORT"] = str(ws)
        env |= _metrics(settings, "connector", i)
        children.append(Child(f"connector-{i + 1}", "connector", env))
    for k in range(writers):
        env = {**base, "IM_NODE_ID": f"writer-{k + 1}"}
        env |= _metrics(settings, "offline-writer", k)
        children.append(Child(f"writer-{k + 1}", "offline-writer", env))
    return children


def _metrics(settings: Settings, role: str, index: int) -> dict[str, str]:
    if not settings.metrics_port:
        return {"IM_METRICS_PORT": "0"}
    port = settings.metrics_port + PORT_STEP * index + METRICS_OFFSET[role]
    return {"IM_METRICS_PORT": str(port)}


def metrics_port_of(child: Child) -> int:
    """The child's ops endpoint port; 0 when it has none."""
    return int(child.env.get("IM_METRICS_PORT", "0"))


async def wait_ready(
    host: str, port: int, proc: asyncio.subprocess.Process, timeout: float
) -> bool:
    """Poll ``GET /readyz`` on ``host:port`` until it answers 200 (True), the process exits or
    ``timeout`` passes (False)."""
    import httpx

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=2.0) as http:
        while loop.time() < deadline:
            if proc.returncode is not None:
                return False
            try:
                if (await http.get(f"http://{host}:{port}/readyz")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    return False


async def _pump(name: str, stream: asyncio.StreamReader | None, width: int) -> None:
    if stream is None:
        return
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip("\n")
        print(f"{name:<{width}} | {text}", flush=True)


async def _start(child: Child, width: int) -> None:
    child.proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        child.role,
        env=child.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
    )
    child.pumps = [asyncio.create_task(_pump(child.name, child.proc.stdout, width))]


async def _stop(children: list[Child]) -> None:
    """SIGTERM in reverse start order (connectors first, so what they passed on is still
    committed and fanned out), then SIGKILL."""
    for child in reversed(children):
        if child.proc is not None and child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
    procs = [c.proc for c in children if c.proc is not None]
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    if waits:
        _, pending = await asyncio.wait(waits, timeout=STOP_GRACE)
        if pending:
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            await asyncio.gather(*pending, return_exceptions=True)
    for child in children:
        for t in child.pumps:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(t, 2)


async def wait_port(host: str, port: int, proc: asyncio.subprocess.Process, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.returncode is not None:
            return False
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True
    return False


async def spawn(args: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """``python args...`` in a session of its own (so Ctrl-C reaches only us), its output
    appended to ``log``."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )


async def stop_gently(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the child's process group, SIGKILL after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def check_services(settings: Settings) -> None:
    """Fail fast, naming the service, when MySQL, Redis or RabbitMQ does not answer."""
    import user_status
    from cli.migrate import run_migrate
    from timeline.amqpqueue import AmqpTimelineQueue

    status = await user_status.create(settings)
    await status.close()
    queue = await AmqpTimelineQueue.connect(
        settings.amqp_url, name=settings.timeline_queue(), shards=settings.amqp_shards
    )
    await queue.close()
    for line in await run_migrate(settings):
        print(f"{'cluster':<12} | schema {line}", flush=True)


async def run_cluster(settings: Settings, connectors: int, transfers: int, writers: int) -> int:
    settings, notes = cluster_settings(settings)
    for note in notes:
        print(f"{'cluster':<12} | {note}", flush=True)
    await check_services(settings)
    children = plan(settings, connectors, transfers, writers)
    width = max(12, *(len(c.name) for c in children))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = settings.advertised_host()
    code = 0
    try:
        # transfers first, so connectors find them; REST last, so logins find connectors
        order = sorted(
            children,
            key=lambda c: ["transfer", "offline-writer", "connector", "rest"].index(c.role),
        )
        for child in order:
            await _start(child, width)
        for child in order:
            assert child.proc is not None
            port = _port_of(child, settings)
            ready = metrics_port_of(child) or (port if child.role == "rest" else 0)
            if ready:
                up = await wait_ready(host, ready, child.proc, 30.0)
            else:
                up = not port or await wait_port(host, port, child.proc, 30.0)
            if not up:
                print(f"{'cluster':<12} | {child.name} did not come up", file=sys.stderr)
                code = 1
                return code
        print(f"{'cluster':<12} | up:", flush=True)
        for child in order:
            port = _port_of(child, settings)
            where = f"{host}:{port}" if port else "(queue consumer)"
            if child.role == "rest":
                where = f"http://{host}:{port}  (/metrics, /readyz here too)"
            if metrics_port_of(child):
                where = f"{where:<22} metrics http://{host}:{metrics_port_of(child)}/metrics"
            print(f"{'cluster':<12} |   {child.name:<12} {where}", flush=True)
        print(f"{'cluster':<12} |   database {redact_url(settings.database_url)}", flush=True)
        print(f"{'cluster':<12} |   redis    {redact_url(settings.redis_url)}", flush=True)
        print(f"{'cluster':<12} |   rabbitmq {redact_url(settings.amqp_url)}", flush=True)
        print(f"{'cluster':<12} | Ctrl-C stops them all.", flush=True)
        pending = {asyncio.ensure_future(c.proc.wait()) for c in children if c.proc}
        stopper = asyncio.ensure_future(stop.wait())
        reported: set[str] = set()
        while not stop.is_set() and pending:
            await asyncio.wait({*pending, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for child in children:
                p = child.proc
                if p is not None and p.returncode is not None and child.name not in reported:
                    reported.add(child.name)
                    print(f"{'cluster':<12} | {child.name} exited with {p.returncode}", flush=True)
            pending = {w for w in pending if not w.done()}
        stopper.cancel()
    finally:
        print(f"{'cluster':<12} | stopping...", flush=True)
        await _stop(children)
    return code


def _port_of(child: Child, settings: Settings) -> int:
    if child.role == "rest":
        return settings.rest_port
    if child.role == "transfer":
        return int(child.env["IM_TRANSFER_PORT"])
    if child.role == "connector":
        return int(child.env["IM_CONNECTOR_PORT"])
    return 0
