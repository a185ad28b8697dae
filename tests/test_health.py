"""common/health.py and common/opsweb.py: readiness checks (cached, shared, timed out, draining),
the node link table, and the ops endpoint over ASGI and over a real socket."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import free_port

from common.errors import BackendError
from common.health import CheckResult, NodeLinks, Readiness
from common.opsweb import MAX_CONNECTIONS, OpsApp, OpsServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A check that fails while ``down`` and counts its runs."""

    def __init__(self, delay: float = 0.0) -> None:
        self.runs = 0
        self.down = False
        self.delay = delay

    async def __call__(self) -> None:
        self.runs += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise BackendError("redis", "connection refused")


@pytest.mark.asyncio
async def test_ready_when_every_check_passes_and_results_are_cached() -> None:
    clock = Clock()
    r = Readiness(ttl=1.0, clock=clock)
    db, redis = Counting(), Counting()
    r.add("database", db)
    r.add("redis", redis)
    report = await r.report()
    assert report.ready
    assert report.as_json() == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "ok"},
        "failed": {},
    }
    redis.down = True
    clock.now += 0.5
    assert (await r.report()).ready  # within the TTL: the cached result, no new run
    assert redis.runs == 1
    clock.now += 0.6
    report = await r.report()
    assert not report.ready
    assert report.as_json()["failed"] == {"redis": "redis: connection refused"}
    assert report.checks["database"] == CheckResult(True)
    assert redis.runs == 2


@pytest.mark.asyncio
async def test_failures_are_cached_too_and_recover() -> None:
    clock = Clock()
    r = Readiness(ttl=1.0, clock=clock)
    check = Counting()
    check.down = True
    r.add("redis", check)
    for _ in range(5):
        assert not (await r.report()).ready
    assert check.runs == 1  # a dead backend is not hammered by probes
    check.down = False
    clock.now += 1.0
    assert (await r.report()).ready


@pytest.mark.asyncio
async def test_concurrent_probes_share_one_run() -> None:
    r = Readiness()
    slow = Counting(delay=0.2)
    r.add("database", slow)
    reports = await asyncio.gather(*(r.report() for _ in range(20)))
    assert all(rep.ready for rep in reports)
    assert slow.runs == 1


@pytest.mark.asyncio
async def test_a_hung_check_times_out_as_not_ready() -> None:
    r = Readiness(timeout=0.1)

    async def hung() -> None:
        await asyncio.sleep(60)

    r.add("rabbitmq", hung)
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await r.report()
    assert loop.time() - started < 1.0
    assert report.as_json()["failed"] == {"rabbitmq": "timed out after 0.1s"}


@pytest.mark.asyncio
async def test_a_probe_that_gives_up_does_not_cancel_the_shared_run() -> None:
    r = Readiness()
    slow = Counting(delay=0.3)
    r.add("database", slow)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await r.report()
    assert (await r.report()).ready
    assert slow.runs == 1


@pytest.mark.asyncio
async def test_draining_is_not_ready_for_good() -> None:
    r = Readiness()
    r.add("database", Counting())
    assert (await r.report()).ready
    r.drain()
    report = await r.report()
    assert not report.ready
    assert report.as_json()["failed"] == {"draining": "shutting down"}


@pytest.mark.asyncio
async def test_node_links_per_owner_and_the_link_check() -> None:
    links = NodeLinks()
    check = links.check("connector-1", "transfer")
    with pytest.raises(RuntimeError, match="no live link to a transfer"):
        await check()
    links.up("connector-1", "transfer", "t1")
    links.up("connector-1", "transfer", "t1")  # twice: one link
    links.up("connector-2", "transfer", "t1")
    links.up("connector-1", "transfer", "t2")
    await check()
    assert links.count("connector-1", "transfer") == 2
    assert links.total("transfer") == 3
    links.down("connector-1", "transfer", "t1")
    links.down("connector-1", "transfer", "t2")
    links.down("connector-1", "transfer", "never")
    with pytest.raises(RuntimeError):
        await check()
    assert links.total("transfer") == 1


@pytest.mark.asyncio
async def test_ops_app_paths() -> None:
    r = Readiness()
    check = Counting()
    r.add("redis", check)
    transport = httpx.ASGITransport(app=OpsApp(r))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as http:
        m = await http.get("/metrics")
        assert m.status_code == 200
        assert m.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE im_messages_total counter" in m.text
        om = await http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert (await http.head("/readyz")).content == b""
        assert (await http.get("/nope")).status_code == 404
        assert (await http.post("/readyz")).status_code == 405
        check.down = True
        r.drain()
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["failed"] == {"draining": "shutting down"}
        assert (await http.get("/healthz")).status_code == 200  # live while draining


@pytest.mark.asyncio
async def test_ops_server_on_a_socket_refuses_a_connection_flood() -> None:
    r = Readiness()
    server = OpsServer(r, "127.0.0.1", free_port())
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.get("/healthz")).status_code == 200
        # many more connections at once than allowed: answered 503 at once (not queued), the
        # check runs at most once, and the server serves again right after
        limits = httpx.Limits(max_connections=4 * MAX_CONNECTIONS)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", limits=limits
        ) as http:
            slow = Counting(delay=0.5)
            r.add("database", slow)
            answers = await asyncio.gather(
                *(http.get("/readyz") for _ in range(4 * MAX_CONNECTIONS))
            )
            codes = [a.status_code for a in answers]
            assert set(codes) <= {200, 503} and 503 in codes
            assert slow.runs <= 1
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{server.port}/healthz")


@pytest.mark.asyncio
async def test_ops_server_port_in_use_is_a_config_error() -> None:
    from common.errors import ConfigError

    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        server = OpsServer(Readiness(), "127.0.0.1", port)
        with pytest.raises(ConfigError, match="IM_METRICS_PORT"):
            await server.start()
        await server.stop()
    finally:
        blocker.close()
        await blocker.wait_closed()
