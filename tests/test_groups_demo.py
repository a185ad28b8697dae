"""``im demo --groups`` end to end on an embedded stack (``im up``): group traffic mixed with
the 1-1 traffic, devices flapping, one member leaving (a device of theirs offline over it) and
one joining per group; every group count exact, no leak, read-by agreeing with the cursors.
Needs the group wire (connector and transfer, issue 14 step 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.asyncio


async def test_demo_with_groups_is_exact(tmp_path: Path) -> None:
    from cli.stack import Stack
    from common.config import Settings
    from workload.demo import groups_ok, ok, run_demo

    settings = Settings(
        data_dir=tmp_path,
        connector_port=0,
        transfer_port=0,
        rest_port=free_port(),
        ws_port=0,
        secret="test-secret-0123456789",
    )
    st = Stack(settings)
    await st.start()
    try:
        report = await run_demo(
            f"http://127.0.0.1:{st.rest_port}", 8, 120, 1, devices=2, prefix="gd",
            progress=False, timeout=90, groups=2, group_size=4, group_messages=30,
        )  # fmt: skip
        assert groups_ok(report), report
        assert ok(report), report
        assert report["group_messages"] == report["group_planned"] == 60
        # each group: 4 members at every seq (one left, one joined), 2 devices each
        assert report["group_deliveries_expected"] == 60 * 4 * 2
        assert report["group_leaks"] == 0 and report["read_by_checked"] == 40
    finally:
        await st.stop()
