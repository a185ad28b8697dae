"""common/metrics.py: every metric the operations doc names is exported, with help text and its
closed label set, the helpers move the right series, and the output passes ``promtool``."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess

import pytest
from conftest import require_service
from prometheus_client.parser import text_string_to_metric_families

from common import metrics
from proto import im_pb2

# name -> (type, label names): the contract docs/operations.md documents
EXPECTED = {
    "im_process_info": ("gauge", {"role", "node"}),
    "im_connections": ("gauge", {"state"}),
    "im_messages": ("counter", {"kind", "outcome"}),
    "im_receipts": ("counter", {"type"}),
    "im_frame_errors": ("counter", {"code"}),
    "im_send_latency_seconds": ("histogram", {"hop"}),
    "im_route_cache_hits": ("counter", set()),
    "im_route_cache_misses": ("counter", set()),
    "im_queue_depth": ("gauge", {"queue"}),
    "im_db_pool_in_use": ("gauge", set()),
    "im_db_pool_size": ("gauge", set()),
    "im_node_links": ("gauge", {"peer"}),
    "im_login": ("counter", {"outcome"}),
    "im_webhook_deliveries": ("counter", {"outcome"}),
    "im_before_send": ("counter", {"verdict"}),
}


def families() -> dict[str, object]:
    text = metrics.exposition()[0].decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(name: str, **labels: str) -> float:
    """The current value of the series ``name`` with exactly ``labels``."""
    text = metrics.exposition()[0].decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no series {name}{labels}")


def test_every_metric_is_exported_with_help_type_and_only_its_labels() -> None:
    metrics.set_process("connector", "connector-1")
    found = families()
    for name, (kind, labels) in EXPECTED.items():
        family = found.get(name)
        assert family is not None, f"{name} missing"
        assert family.type == kind, name  # type: ignore[attr-defined]
        assert len(family.documentation) > 20, f"{name} has no real help text"  # type: ignore[attr-defined]
        for s in family.samples:  # type: ignore[attr-defined]
            assert set(s.labels) - {"le"} == labels, (name, s.labels)


def test_label_values_are_closed_sets_bound_at_import() -> None:
    """Every child exists before anything is recorded (a rate() over a fresh process works),
    and no label can take a value the code did not list: no user ids can leak in."""
    found = families()
    codes = {s.labels["code"] for s in found["im_frame_errors"].samples}  # type: ignore[attr-defined]
    assert codes == set(im_pb2.ErrorCode.keys())
    outcomes = {
        (s.labels["kind"], s.labels["outcome"])
        for s in found["im_messages"].samples  # type: ignore[attr-defined]
        if s.name == "im_messages_total"
    }
    assert len(outcomes) == 2 * 3
    with pytest.raises(KeyError):
        metrics.message("text", "alice")  # type: ignore[arg-type]


def test_helpers_move_their_series() -> None:
    before = sample("im_messages_total", kind="file", outcome="accepted")
    metrics.message(metrics.message_kind(im_pb2.FILE), "accepted")
    assert sample("im_messages_total", kind="file", outcome="accepted") == before + 1

    refused = sample("im_messages_total", kind="text", outcome="refused")
    failed = sample("im_messages_total", kind="text", outcome="failed")
    metrics.chat_error(im_pb2.TEXT, im_pb2.NOT_FRIEND)
    metrics.chat_error(im_pb2.TEXT, im_pb2.INTERNAL)
    metrics.chat_answered(im_pb2.TEXT, im_pb2.ID_REUSED)
    assert sample("im_messages_total", kind="text", outcome="refused") == refused + 2
    assert sample("im_messages_total", kind="text", outcome="failed") == failed + 1

    delivered = sample("im_receipts_total", type="delivered")
    metrics.cursor_moved(im_pb2.DELIVERED)
    metrics.cursor_moved(im_pb2.SENT)  # not a cursor type: nothing moves
    assert sample("im_receipts_total", type="delivered") == delivered + 1

    before = sample("im_receipts_total", type="read")
    metrics.receipt("read")
    assert sample("im_receipts_total", type="read") == before + 1

    before = sample("im_frame_errors_total", code="NOT_FRIEND")
    metrics.frame_error(im_pb2.NOT_FRIEND)
    assert sample("im_frame_errors_total", code="NOT_FRIEND") == before + 1

    before = sample("im_frame_errors_total", code="ERROR_CODE_UNSPECIFIED")
    metrics.frame_error(9999)  # a code no release defines: no new label value
    assert sample("im_frame_errors_total", code="ERROR_CODE_UNSPECIFIED") == before + 1

    before = sample("im_send_latency_seconds_count", hop="transfer")
    metrics.send_latency("transfer", 0.003)
    assert sample("im_send_latency_seconds_count", hop="transfer") == before + 1
    assert sample("im_send_latency_seconds_bucket", hop="transfer", le="0.005") >= 1

    hits, misses = sample("im_route_cache_hits_total"), sample("im_route_cache_misses_total")
    metrics.route_cache_hit()
    metrics.route_cache_miss()
    metrics.route_cache_miss()
    assert sample("im_route_cache_hits_total") == hits + 1
    assert sample("im_route_cache_misses_total") == misses + 2

    for outcome in ("ok", "disabled"):
        before = sample("im_login_total", outcome=outcome)
        metrics.login(outcome)
        assert sample("im_login_total", outcome=outcome) == before + 1


def test_connection_gauge_follows_the_session_states() -> None:
    unauth = sample("im_connections", state="unauthenticated")
    auth = sample("im_connections", state="authenticated")
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_authenticated()
    assert sample("im_connections", state="unauthenticated") == unauth + 1
    assert sample("im_connections", state="authenticated") == auth + 1
    metrics.connection_closed(authenticated=True)
    metrics.connection_closed(authenticated=False)
    assert sample("im_connections", state="unauthenticated") == unauth
    assert sample("im_connections", state="authenticated") == auth


class _Pool:
    def __init__(self, busy: int, size: int) -> None:
        self.busy, self.size = busy, size


def test_scraped_gauges_add_live_sources_and_forget_dead_ones() -> None:
    gc.collect()  # pools that earlier tests left for the collector must not go mid-test
    base_busy, base_size = sample("im_db_pool_in_use"), sample("im_db_pool_size")
    a, b = _Pool(2, 10), _Pool(1, 5)
    for pool in (a, b):
        metrics.db_pool_source(pool, lambda p: p.busy, lambda p: p.size)
    assert sample("im_db_pool_in_use") == base_busy + 3
    assert sample("im_db_pool_size") == base_size + 15
    a.busy = 7  # read at scrape time, not when registered
    assert sample("im_db_pool_in_use") == base_busy + 8
    del a
    gc.collect()
    assert sample("im_db_pool_in_use") == base_busy + 1
    assert sample("im_db_pool_size") == base_size + 5


def test_process_info_is_one_series() -> None:
    metrics.set_process("transfer", "transfer-1")
    metrics.set_process("transfer", "transfer-2")
    series = [s.labels for s in families()["im_process_info"].samples]  # type: ignore[attr-defined]
    assert series == [{"role": "transfer", "node": "transfer-2"}]


def test_openmetrics_is_served_when_asked() -> None:
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    body, content_type = metrics.exposition("")
    assert content_type.startswith("text/plain; version=0.0.4")


def promtool() -> str:
    """The promtool binary (Debian package prometheus); skip locally, fail in CI."""
    path = shutil.which("promtool")
    if path is None:
        require_service("promtool", "apt-get install prometheus")
    return path


def promtool_check_metrics(text: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"],
        input=text.decode(),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "NO_COLOR": "1"},
    )


def test_promtool_accepts_the_exposition() -> None:
    metrics.set_process("connector", "connector-1")
    metrics.send_latency("connector", 0.01)
    done = promtool_check_metrics(metrics.exposition()[0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr
