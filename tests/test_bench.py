"""``im bench --short`` end to end: every scenario runs against an ``im up`` it starts itself
(and the bare relay), and reports what the docs and checks rely on. No timing is asserted: the
numbers depend on the machine; only that the run worked and counted what it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_service

from cli import loop as eventloop

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str, timeout: float = 150.0) -> list[dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "--short", "--json", "--quiet", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"im bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_short_bench_against_im_up() -> None:
    """Each scenario emits one object with its required keys, positive counts and no errors;
    the online run with a fixed rate emits an open-loop object too."""
    results = _bench("--rate", "half")
    by = {(r["scenario"], r.get("mode")): r for r in results}
    assert {s for s, _ in by} == {"relay", "online", "idle", "offline", "fanout"}
    for scenario in ("relay", "online"):
        for mode in ("closed", "open"):
            r = by[(scenario, mode)]
            assert float(r["msgs_per_s"]) > 0, r  # type: ignore[arg-type]
            assert 0 < float(r["p50_ms"]) <= float(r["p99_ms"]), r  # type: ignore[arg-type]
            assert r["errors"] == 0 and r["missing"] == 0, r
    online = by[("online", "closed")]
    assert int(online["sent_count"]) > 0  # type: ignore[call-overload]
    processes = online["processes"]
    assert isinstance(processes, dict) and processes["im-up"]["cpu_s"] > 0
    idle = by[("idle", None)]
    assert idle["connections"] == 100 and idle["alive"] == 100, idle
    assert float(idle["rss_per_conn_kb"]) > 0, idle  # type: ignore[arg-type]
    off = by[("offline", None)]  # catch-up: a device 1000 messages behind
    assert off["catchup_messages"] == 1000 and off["catchup_disorder"] == 0, off
    assert float(off["catchup_seconds"]) > 0 and off["missing"] == 0, off  # type: ignore[arg-type]
    fan = by[("fanout", None)]  # a group of 20: 2 senders, 18 lean receiving devices
    assert fan["group_size"] == 20 and fan["receivers"] == 18 and fan["online"] == 18, fan
    assert int(fan["deliveries"]) > 0 and float(fan["deliveries_per_s"]) > 0, fan  # type: ignore[call-overload, arg-type]
    assert int(fan["deliveries"]) <= 18 * int(fan["messages"]), fan  # type: ignore[call-overload]
    assert 0 < float(fan["p50_ms"]) <= float(fan["p99_ms"]), fan  # type: ignore[arg-type]
    for key in ("missing", "duplicates", "disorder", "errors"):
        assert fan[key] == 0, (key, fan)
    assert float(fan["server_cpu_us_per_delivery"]) > 0, fan  # type: ignore[arg-type]


def test_loop_choice() -> None:
    """IM_LOOP picks the loop; an unknown value is refused instead of silently ignored."""
    assert eventloop.loop_name("asyncio") == "asyncio"
    assert eventloop.loop_name("auto") in ("uvloop", "asyncio")
    with pytest.raises(Exception, match="IM_LOOP"):
        eventloop.loop_name("tokio")
    assert eventloop.run(_answer(), "asyncio") == 42


async def _answer() -> int:
    return 42


def test_percentiles_and_reservoir() -> None:
    """Nearest-rank percentiles; the reservoir stays bounded while count and max stay exact."""
    from workload.benchstats import Latencies, percentile

    assert percentile([], 0.5) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    lat = Latencies(cap=100)
    for i in range(1, 10_001):
        lat.add(i / 1000)
    assert lat.count == 10_000 and len(lat.samples) == 100 and lat.max == 10.0
    s = lat.summary()
    assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"] == 10_000.0


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_short_bench_against_im_cluster() -> None:
    """The same short run against ``im cluster`` on MySQL, Redis and RabbitMQ (its own database
    im_bench, Redis db 12, queues imbench.*)."""

    for name, port in (("redis", 6379), ("rabbitmq", 5672), ("mysql", 3306)):
        if not _listening(port):
            require_service(name, f"nothing listens on 127.0.0.1:{port}")
    results = _bench("--target", "cluster", "--scenarios", "online,idle,offline", timeout=240)
    by = {r["scenario"]: r for r in results}
    assert float(by["online"]["msgs_per_s"]) > 0 and by["online"]["errors"] == 0  # type: ignore[arg-type]
    processes = by["online"]["processes"]
    assert isinstance(processes, dict) and any(n.startswith("connector") for n in processes)
    assert by["idle"]["alive"] == 100
    assert by["offline"]["catchup_messages"] == 1000 and by["offline"]["errors"] == 0


def test_fanout_tally_ends_a_flight_at_its_last_delivery() -> None:
    """A message is in flight until every receiving device has it; a delivery that beats the
    sender's ``started`` is kept and counted; only offers inside the measured interval give a
    latency, and only deliveries inside it count for deliveries_per_s."""
    import asyncio

    from workload.benchfanout import _Tally

    async def go() -> None:
        t = _Tally(receivers=3, measure_from=0.0)
        t.inflight, t.room = [0], [asyncio.Event()]
        t.delivered(7, 1.0)  # early: before started()
        t.started(0, 7, 0.5)
        assert t.inflight == [1] and t.flights[7].due == 2
        t.delivered(7, 1.1)
        assert t.completed_total == 0 and t.inflight == [1]
        t.delivered(7, 1.2)
        assert t.completed_total == 1 and t.inflight == [0] and t.room[0].is_set()
        assert t.lat.count == 1 and t.deliveries == 3 and not t.flights
        t.measure_until = 2.0
        t.started(0, 8, 3.0)  # offered after the interval: no latency sample
        for _ in range(3):
            t.delivered(8, 3.5)
        assert t.lat.count == 1 and t.deliveries == 3 and t.deliveries_total == 6

    asyncio.run(go())
