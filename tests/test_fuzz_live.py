"""The live fuzz test: hostile connections against a running stack while a normal conversation
goes on (DESIGN.md §4: bad input never kills the process or another user's session).

Many connections send random, truncated, over-size and well-formed-but-wrong frames
(tests/hostile.py); meanwhile ``im demo``'s conversation runs. The conversation must come out
exactly right, every hostile connection must be closed by the server, each breach counted, no
session left behind, and the process's memory must stay within a fixed bound.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import hostile
import pytest
from test_e2e import rest_url, stack_settings
from test_security import until

from cli.stack import Stack
from workload.demo import ok, run_demo

PAGE = os.sysconf("SC_PAGE_SIZE")
# Unbounded buffering would show here at once: the attackers announce frames of up to 4 GiB and
# send tens of MiB in all. What a few hundred open connections legitimately cost is far less.
MEMORY_BOUND = 64 * 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


@pytest.mark.asyncio
async def test_hostile_connections_never_disturb_a_conversation(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path, greet_timeout=4.0))
    await st.start()
    assert st.connector is not None
    # warm up first (scrypt's 16 MiB per hash, allocator arenas, imports): the bound is on what
    # the attack adds, not on what any run of the server costs
    await hostile.run("127.0.0.1", st.connector.port, 30, 30, rest=rest_url(st), seed=3)
    warm = await run_demo(rest_url(st), 4, 40, 1, prefix="warm", progress=False, timeout=30)
    assert ok(warm), warm
    before = rss()
    peak = before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        demo = asyncio.create_task(
            run_demo(rest_url(st), 6, 300, 2, prefix="fz", progress=False, timeout=90)
        )
        attacks = await hostile.run(
            "127.0.0.1",
            st.connector.port,
            connections=300,
            concurrency=60,
            rest=rest_url(st),
            seed=7,
            max_frame=st.settings.max_frame,
            max_wait=20.0,
        )
        report = await demo
        assert ok(report), report
        assert report["received"] == 300
        summary = attacks.as_dict()
        assert attacks.opened == 300 and attacks.refused_connect == 0, summary
        assert attacks.closed_by_server == 300 and attacks.still_open == 0, summary
        assert attacks.max_close_seconds < 20, summary
        expected = {"BAD_FRAME", "BAD_TOKEN", "GREET_TIMEOUT", "NOT_AUTHENTICATED", "UNKNOWN_TYPE"}
        expected |= {"SPOOFED_SENDER", "NOT_FRIEND", "NOT_MEMBER", "BAD_MESSAGE"}
        assert expected <= set(attacks.codes), summary
        counted = st.connector.counters.errors
        assert expected | {"RATE_LIMITED"} <= set(counted), counted  # the PING floods
        # nothing left behind: every session, hostile or not, ends and leaves routing
        await until(lambda: st.connector is not None and st.connector.online_sessions == 0, 10)
        print("GROWTH_MB", (peak - before) // 2**20)
        assert peak - before < MEMORY_BOUND, (peak - before) // 2**20
    finally:
        sampler.cancel()
        await st.stop()
