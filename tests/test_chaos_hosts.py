"""``im chaos --hosts 3`` in its short mode: three app hosts and a client host, the clustered
services, users on two devices each, and every one of the five faults at least once (partition,
Redis failover, a RabbitMQ node killed, the writers' Galera node killed, a half-open link
between a connector and its transfers), then the checks of ``im chaos --devices``.

It builds hosts and services of its own (not the session ones of tests/multihost.py: a fault
here must not leak into those tests), so it costs the start-up again: about 3-4 minutes in all
on the 2-core machine.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from conftest import require_service

from cli.chaos import VIOLATIONS
from cli.chaoshosts import disorder_samples, layout, missing, ok
from testbed.netns import list_namespaces
from workload.devices import DeviceLog
from workload.hostfaults import KINDS, Injector

ZERO = (
    "lost",
    "duplicates",
    "out_of_order",
    "receipts_missing",
    "receipts_duplicated",
    "device_missing",
    "device_duplicates",
    "device_order_mismatch",
    "read_cursor_divergent",
    "sender_disorder",
    "crashed",
)


def clean_report() -> dict[str, object]:
    """What a run that passed reports, for the verdict tests."""
    report: dict[str, object] = {k: 0 for k in (*ZERO, *VIOLATIONS)}  # group keys: no groups
    report.update(
        {
            "acked": 5,
            "device_deliveries": 10,
            "device_deliveries_expected": 10,
            "group_deliveries": 0,
            "group_deliveries_expected": 0,
            "read_cursors_checked": 4,
            "settled": True,
            "faults": {k: 1 for k in KINDS},
            "fault_errors": [],
        }
    )
    return report


def test_the_verdict_needs_every_fault_kind_and_every_recovery() -> None:
    assert ok(clean_report())
    for kind in KINDS:
        report = clean_report()
        report["faults"] = {k: (0 if k == kind else 2) for k in KINDS}
        assert not ok(report), kind
    report = clean_report()
    report["fault_errors"] = ["rabbitmq_node on app2: not whole again"]
    assert not ok(report)
    report = clean_report()
    report["sender_disorder"] = 1  # im chaos's own checks still decide
    assert not ok(report)


def test_each_round_of_faults_draws_every_kind_once() -> None:
    inj = Injector(svc=None, rng=random.Random(7))  # type: ignore[arg-type]
    for _ in range(3):
        assert sorted(inj.next_kind() for _ in KINDS) == sorted(KINDS)


def test_layout_puts_a_transfer_and_a_connector_on_every_host_and_two_writers() -> None:
    hosts = ["app1", "app2", "app3", "app4"]
    plan = layout(hosts)
    for role in ("transfer", "connector"):
        assert sorted(h for r, h in plan if r == role) == hosts
    assert [h for r, h in plan if r == "offline-writer"] == ["app2", "app3"]
    assert [h for r, h in plan if r == "rest"] == ["app1"]


def test_disorder_samples_name_the_message_committed_out_of_its_sender_order() -> None:
    t0 = 1_800_000_000.0
    early, late = (int((t0 + s) * 1000) << 12 for s in (10.0, 20.0))
    log = DeviceLog("alice", "a0")
    log.own_sent("p:alice:bob", 1, ("alice", late))
    log.own_sent("p:alice:bob", 2, ("alice", early))
    (sample,) = disorder_samples([log], t0)
    assert "seq 2 made at 10.0s, after seq 1 made at 20.0s" in sample
    log.sent = {("p:alice:bob", 1): ("alice", early), ("p:alice:bob", 2): ("alice", late)}
    assert disorder_samples([log], t0) == []


def test_bad_options_are_refused_before_anything_is_built(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli.main import build_parser

    for argv, complaint in (
        (["--hosts", "2"], "--hosts takes 3 to 9"),
        (["--hosts", "3", "--users", "1"], "need 2+ users"),
        (["--hosts", "3", "--seconds", "0"], "need 2+ users"),
    ):
        args = build_parser().parse_args(["chaos", *argv])
        assert args.func(args) == 2, argv
        assert complaint in capsys.readouterr().err


@pytest.mark.slow
def test_chaos_over_three_hosts_injects_every_fault_and_loses_nothing() -> None:
    reason = missing()
    if reason is not None:
        require_service("test hosts for im chaos --hosts", reason)
    argv = [sys.executable, "-m", "cli.main", "chaos", "--hosts", "3", "--seconds", "60"]
    argv += ["--users", "8", "--rate", "10", "--devices", "2", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    report = json.loads(lines[-1])
    assert done.returncode == 0, (report, done.stderr[-3000:])
    assert report["faults"] == {k: report["faults"][k] for k in KINDS}
    assert all(report["faults"][k] >= 1 for k in KINDS), report["faults"]
    assert report["fault_errors"] == []
    for key in ZERO:
        assert report[key] == 0, (key, report)
    assert report["acked"] > 0 and report["delivered"] == report["acked"]
    assert report["device_deliveries"] == report["device_deliveries_expected"] > 0
    assert report["read_cursors_checked"] > 0 and report["settled"] is True
    assert report["hosts"] == 3 and report["devices"] == 2
    # the run removed every host it made (other testbeds may come and go meanwhile)
    assert [ns for ns in list_namespaces() if ns.startswith(f"imtb-{report['testbed']}-")] == []
    print(
        f"chaos --hosts 3: acked {report['acked']} faults {report['faults']}"
        f" in {report['total_seconds']} s"
    )
