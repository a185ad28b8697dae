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
from proto import im_pb2

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
    the online and durable runs with a fixed rate emit an open-loop object too. Online runs on
    the lean client by default."""
    results = _bench("--rate", "half")
    by = {(r["scenario"], r.get("mode")): r for r in results}
    scenarios = {"relay", "online", "idle", "offline", "fanout", "durable", "writes"}
    assert {s for s, _ in by} == scenarios
    # the write path alone needs the queue of a cluster: on im up it says so and measures nothing
    assert "cluster" in str(by[("writes", None)]["skipped"]), by[("writes", None)]
    for scenario in ("relay", "online", "durable"):
        for mode in ("closed", "open"):
            r = by[(scenario, mode)]
            assert float(r["msgs_per_s"]) > 0 and int(r["completed"]) > 0, r  # type: ignore[arg-type, call-overload]
            assert 0 < float(r["p50_ms"]) <= float(r["p99_ms"]), r  # type: ignore[arg-type]
            assert r["errors"] == 0 and r["missing"] == 0, r
    for scenario in ("online", "durable"):
        for mode in ("closed", "open"):
            r = by[(scenario, mode)]
            assert r["config"]["client"] == "lean", r  # type: ignore[index]
            for key in ("duplicates", "disorder", "gaps", "out_of_order", "rate_limited"):
                assert r[key] == 0, (key, r)
            assert float(r["bench_cpu_us_per_msg"]) > 0, r  # type: ignore[arg-type]
    online = by[("online", "closed")]
    assert int(online["sent_count"]) > 0 and int(online["delivered_count"]) > 0, online  # type: ignore[call-overload]
    assert online["config"]["pairs"] == 10, online  # type: ignore[index]
    durable = by[("durable", "closed")]  # 20 lean senders, their friends never online
    assert durable["config"]["senders"] == 20 and durable["config"]["receivers_online"] == 0  # type: ignore[index]
    assert int(durable["sent_count"]) > 0 and "delivered_count" not in durable, durable  # type: ignore[call-overload]
    assert int(durable["completed"]) == int(durable["sent"]), durable  # type: ignore[call-overload]
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


@pytest.mark.slow
def test_short_bench_online_on_the_library() -> None:
    """``--client library`` keeps the online scenario on IMClient, and says so."""
    (online,) = _bench("--scenarios", "online", "--client", "library")
    assert online["scenario"] == "online" and online["config"]["client"] == "library", online  # type: ignore[index]
    assert int(online["completed"]) > 0 and float(online["msgs_per_s"]) > 0, online  # type: ignore[call-overload, arg-type]
    assert online["errors"] == 0 and online["missing"] == 0, online
    assert "duplicates" not in online  # the lean devices' counters are not made up here


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
    results = _bench(
        "--target", "cluster", "--scenarios", "online,idle,offline,writes", timeout=240
    )  # fmt: skip
    by = {r["scenario"]: r for r in results}
    # the write path alone: every chat committed and answered, none refused or lost
    writes = by["writes"]
    assert int(writes["completed"]) > 0 and writes["errors"] == 0 and writes["missing"] == 0  # type: ignore[call-overload]
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


class _Wire:
    """What a lean device sends, kept instead of framed (the link's own rules are test_link's)."""

    window_full = False
    closing = False

    def __init__(self) -> None:
        self.sent: list[im_pb2.Envelope] = []

    async def send(self, env: im_pb2.Envelope) -> int:
        self.sent.append(env)
        return len(self.sent)

    async def send_body(self, field: str, body: bytes) -> int:
        assert field == "chat"
        self.sent.append(im_pb2.Envelope(chat=im_pb2.ChatMsg.FromString(body)))
        return len(self.sent)


def test_lean_sender_keeps_the_protocol() -> None:
    """Ids in the device's slot, bodies that open with the pair key, after_id naming the newest
    chat still without SENT, SENT once per id, DELIVERED when the peer's cursor passes the seq
    (also when the cursor came first); other users' cursors change nothing."""
    import asyncio
    from typing import cast

    from common.crypto import new_pair_key, open_sealed
    from common.ids import slot_of
    from common.link import Link
    from workload.bench import TEXT
    from workload.benchlean import LeanSender, Run
    from workload.benchload import Flow, Stats

    async def go() -> None:
        stats = Stats(final="DELIVERED", required=frozenset({"SENT", "DELIVERED"}))
        key, wire = new_pair_key(), _Wire()
        s = LeanSender("alice", "token", Run(stats=stats), "bob", key)
        s.link = cast(Link, wire)
        s.welcomed(5)
        flow = Flow(stats)
        s.use(flow)
        a, b = await s.send(), await s.send()
        for msg_id in (a, b):
            flow.started(msg_id, 0.0)
        first, second = (e.chat for e in wire.sent)
        assert slot_of(a) == slot_of(b) == 5 and a < b
        assert (first.after_id, second.after_id) == (0, a)
        assert open_sealed(key, b, "alice", "bob", second.body) == TEXT.encode()

        def ack(msg_id: int, seq: int) -> im_pb2.Envelope:
            return im_pb2.Envelope(ack=im_pb2.AckMsg(
                ack_type=im_pb2.SENT, ack_msg_id=msg_id, conv_id=s.conv_id, seq=seq))  # fmt: skip

        def cursor(user: str, seq: int, conv: str = s.conv_id) -> im_pb2.Envelope:
            return im_pb2.Envelope(cursor=im_pb2.Cursor(
                conv_id=conv, user_id=user, type=im_pb2.DELIVERED, seq=seq))  # fmt: skip

        await s.on_frame(s.link, ack(a, 1))
        await s.on_frame(s.link, ack(a, 1))  # again, for a resend: counted once
        assert stats.lat["SENT"].count == 1 and list(s.unsent) == [b]
        c = await s.send()
        flow.started(c, 0.0)
        assert wire.sent[-1].chat.after_id == b  # a is committed: b is the newest unsent
        await s.on_frame(s.link, cursor("carol", 1))
        await s.on_frame(s.link, cursor("bob", 1, "p:bob:carol"))
        assert stats.completed_total == 0
        await s.on_frame(s.link, cursor("bob", 1))
        assert stats.completed_total == 1 and a not in flow.inflight
        await s.on_frame(s.link, cursor("bob", 2))  # before b's SENT: it completes on SENT
        await s.on_frame(s.link, ack(b, 2))
        assert stats.completed_total == 2 and list(flow.inflight) == [c]

    asyncio.run(go())


def test_lean_receiver_checks_order_and_coalesces_cursors() -> None:
    """A DELIVERED cursor at once when the last went 0.1 s ago or more, else one later for all
    that came meanwhile; a duplicate, a seq below the top and a gap are errors of the run, and
    the cursor never passes a gap."""
    import asyncio
    import time
    from typing import cast

    from common.link import Link
    from workload.benchlean import LeanReceiver, Run
    from workload.benchload import Stats

    async def go() -> None:
        run, wire = Run(stats=Stats(final="DELIVERED")), _Wire()
        r = LeanReceiver("bob", "token", run)
        r.link = link = cast(Link, wire)
        conv = "p:alice:bob"

        async def chat(seq: int) -> None:
            chat = im_pb2.ChatMsg(id=seq, from_id="alice", dest_id="bob", conv_id=conv, seq=seq)
            await r.on_frame(link, im_pb2.Envelope(chat=chat))

        def cursors() -> list[int]:
            return [e.cursor.seq for e in wire.sent if e.WhichOneof("body") == "cursor"]

        for seq in (1, 2, 3):
            await chat(seq)
        assert cursors() == [1] and r.dirty == {conv}
        await r.flush(conv, r.convs[conv], time.monotonic() + 0.1)
        assert cursors() == [1, 3] and not r.dirty
        assert run.stats.errors == 0
        await chat(3)  # a duplicate
        await chat(5)  # past a gap: 4 never came
        await chat(4)  # below the top
        c = run.counts
        assert (c.duplicates, c.gaps, c.disorder, run.stats.errors) == (1, 1, 1, 3)
        await r.flush(conv, r.convs[conv], time.monotonic() + 1.0)
        assert cursors() == [1, 3]

    asyncio.run(go())
