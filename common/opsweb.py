"""The ops endpoint of a process that has no HTTP API of its own: ``/metrics``, ``/healthz``,
``/readyz`` on ``IM_METRICS_PORT`` (REST serves the same three paths on its own port).

Why this shape: a bare ASGI app on uvicorn in the process's own event loop. The answers read
in-memory state (the metrics registry, readiness results cached by :mod:`common.health`), so a
thread would buy nothing and would need locks; and the loop is never blocked, since nothing here
waits on I/O but the readiness checks, which run under their own timeout. Rules:
- off costs nothing: with port 0 no server, socket or task exists (cli/ops.py);
- bounded: beyond :data:`MAX_CONNECTIONS` open connections uvicorn answers 503 at once,
  idle keep-alives closed after :data:`KEEP_ALIVE` seconds; request bodies are never read;
- only GET and HEAD, only these three paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator

import uvicorn
from starlette.types import Receive, Scope, Send

from common import metrics
from common.errors import ConfigError
from common.health import Readiness

log = logging.getLogger(__name__)

# Prometheus, one or two orchestrator probes and a curl or two: a dozen is plenty, and a flood
# of connections is refused instead of queued.
MAX_CONNECTIONS = 16
KEEP_ALIVE = 5.0


async def _answer(send: Send, status: int, body: bytes, content_type: str, head: bool) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class OpsApp:
    """ASGI app: ``/metrics`` (Prometheus text, or OpenMetrics when asked), ``/healthz``,
    ``/readyz`` (503 with the failed checks when not ready)."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await _answer(send, 405, b'{"detail":"only GET"}', "application/json", head)
            return
        if path == "/metrics":
            accept = dict(scope["headers"]).get(b"accept", b"").decode("latin-1")
            body, content_type = metrics.exposition(accept)
            await _answer(send, 200, body, content_type, head)
        elif path == "/healthz":
            await _answer(send, 200, _json({"status": "ok"}), "application/json", head)
        elif path == "/readyz":
            report = await self.readiness.report()
            status = 200 if report.ready else 503
            await _answer(send, status, _json(report.as_json()), "application/json", head)
        else:
            await _answer(send, 404, b'{"detail":"not found"}', "application/json", head)


class _GuestServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the hosting process owns SIGINT/SIGTERM."""

    def install_signal_handlers(self) -> None:
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class OpsServer:
    """:class:`OpsApp` served on ``host:port`` in the running loop until :meth:`stop`."""

    def __init__(self, readiness: Readiness, host: str, port: int) -> None:
        config = uvicorn.Config(
            OpsApp(readiness),
            host=host,
            port=port,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=int(KEEP_ALIVE),
        )
        self._server = _GuestServer(config)
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    async def start(self) -> None:
        task = self._task = asyncio.create_task(self._serve(), name="ops-http")
        while not self._server.started:
            if task.done():
                task.result()
                raise ConfigError(f"metrics endpoint stopped at start on port {self.port}")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit:  # uvicorn's answer to a port it cannot bind
            raise ConfigError(
                f"metrics endpoint cannot listen on {self.host}:{self.port}"
                " (IM_METRICS_PORT; 0 turns it off)"
            ) from None

    async def stop(self) -> None:
        task = self._task
        if task is None:
            return
        self._server.should_exit = True
        await asyncio.wait([task], timeout=3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConfigError):
            await task
