"""``im chaos`` end to end, short: the real cluster on this machine's services, killed and
restarted while users chat on two devices each, 1-1 and in two groups where one member leaves
and one joins mid-run, and the report it prints. (CI also runs the full 60 s one.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from conftest import free_port
from test_cluster import services_env

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

KEYS = (
    "acked",
    "delivered",
    "lost",
    "duplicates",
    "out_of_order",
    "receipts_missing",
    "receipts_duplicated",
    "kills",
    "seconds",
)
DEVICE_KEYS = (
    "device_missing",
    "device_duplicates",
    "device_order_mismatch",
    "read_cursor_divergent",
)
GROUP_KEYS = (
    "group_missing",
    "group_duplicates",
    "group_leaks",
    "group_out_of_order",
    "group_refused",
    "group_receipts_duplicated",
    "group_nonmember_posts",
    "group_membership_mismatch",
)


async def test_short_chaos_run_reports_and_holds_the_guarantees() -> None:
    env = services_env("chaosprobe")  # skips (fails in CI) without Redis
    base = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
    base.update(
        {
            "IM_DATABASE_URL": env["IM_DATABASE_URL"].rsplit("/", 1)[0] + "/im_test",
            "IM_REDIS_URL": env["IM_REDIS_URL"],
            "IM_AMQP_URL": env["IM_AMQP_URL"],
            "IM_REST_PORT": str(free_port()),
            "IM_CONNECTOR_PORT": str(free_port()),
            "IM_TRANSFER_PORT": str(free_port()),
            "IM_WS_PORT": "0",
        }
    )
    cmd = [sys.executable, "-m", "cli.main", "chaos", "--seconds", "12", "--users", "8"]
    cmd += ["--rate", "60", "--kill-every", "2", "--devices", "2", "--json"]
    cmd += ["--groups", "2", "--group-size", "5"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    except TimeoutError:
        proc.terminate()  # SIGTERM: im chaos stops its cluster, then exits
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    stdout, stderr = out.decode(), err.decode()
    assert stdout.strip(), stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert key in report, key
    assert proc.returncode == 0, (report, stderr[-3000:])
    assert report["kills"] >= 2 and report["acked"] > 100
    assert report["delivered"] >= report["acked"]
    assert all(report[k] == 0 for k in KEYS[2:7])
    assert report["settled"] is True
    # every device of every user checked on its own and against its sibling
    assert report["devices"] == 2
    assert all(report[k] == 0 for k in DEVICE_KEYS), report
    assert report["device_deliveries"] == report["device_deliveries_expected"] > 0
    assert report["read_cursors_checked"] > 0
    # the groups: chats committed and held by every device of every member of their seq, none
    # shown twice, out of order or to a non-member, both membership changes made under kills
    assert report["groups"] == 2 and report["group_changes"] == 2
    assert all(report[k] == 0 for k in GROUP_KEYS), report
    assert report["group_messages"] > 20
    assert report["group_deliveries"] == report["group_deliveries_expected"] > 0
    assert report["group_not_acked"] == 0
