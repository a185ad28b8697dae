"""docs/operations.md stays true: its alert rules and scrape configuration pass ``promtool``, the
connector alert fires when it should (``promtool test rules``), every metric the code exports is
in its table, and the compose files check /readyz."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # comes with schemathesis
from test_metrics import EXPECTED, promtool

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "operations.md").read_text()
ALERT = "IMConnectorWithoutTransfer"
UP_ROLE = "connector+rest+transfer+writer"  # `im up`: a connector too


def yaml_block(starting: str) -> str:
    """The ```yaml block of the doc whose first line starts with ``starting``."""
    for block in re.findall(r"```yaml\n(.*?)```", DOC, flags=re.S):
        if block.startswith(starting):
            return str(block)
    raise AssertionError(f"no yaml block starting with {starting!r} in docs/operations.md")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    (tmp_path / "im-alerts.yml").write_text(yaml_block("groups:"))
    done = run("check", "rules", "im-alerts.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    (tmp_path / "im-alerts.yml").write_text(yaml_block("groups:"))
    (tmp_path / "prometheus.yml").write_text(yaml_block("global:"))
    done = run("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def test_connector_alert_fires_for_a_connector_without_transfers_only(tmp_path: Path) -> None:
    (tmp_path / "im-alerts.yml").write_text(yaml_block("groups:"))
    tests = {
        "rule_files": ["im-alerts.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    # c1 and `im up` lose their last transfer link at 30 s, c2 never does; a
                    # transfer has no transfer links, and must not page
                    series("im_node_links", 'peer="transfer",instance="c1"', "1 1 0x8"),
                    series("im_node_links", 'peer="transfer",instance="c2"', "2x10"),
                    series("im_node_links", 'peer="transfer",instance="t1"', "0x10"),
                    series("im_node_links", 'peer="transfer",instance="up"', "1 1 0x8"),
                    series("im_process_info", 'instance="c1",role="connector"', "1x10"),
                    series("im_process_info", 'instance="c2",role="connector"', "1x10"),
                    series("im_process_info", 'instance="t1",role="transfer"', "1x10"),
                    series("im_process_info", f'instance="up",role="{UP_ROLE}"', "1x10"),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "30s",
                        "alertname": ALERT,
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "2m",
                        "alertname": ALERT,
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "page",
                                    "instance": "c1",
                                    "peer": "transfer",
                                },
                                "exp_annotations": {
                                    "summary": "connector c1 has no link to any transfer"
                                },
                            },
                            {
                                "exp_labels": {
                                    "severity": "page",
                                    "instance": "up",
                                    "peer": "transfer",
                                },
                                "exp_annotations": {
                                    "summary": "connector up has no link to any transfer"
                                },
                            },
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = run("test", "rules", "tests.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_exported_metric_is_in_the_doc() -> None:
    for name, (kind, _) in EXPECTED.items():
        shown = f"{name}_total" if kind == "counter" else name
        assert f"`{shown}" in DOC, f"{shown} missing from docs/operations.md"


@pytest.mark.parametrize("compose", ["docker-compose.yml", "docker-compose.local.yml"])
def test_compose_health_checks_ask_readyz(compose: str) -> None:
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = base["services"]
    im = [n for n, s in services.items() if s.get("image", "").startswith("${IM_IMAGE")]
    im = [n for n in im if n != "migrate"]
    assert set(im) >= {"rest", "transfer1", "transfer2", "connector1", "connector2"}
    for name in im:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "/readyz" in test, name
        port_var = "IM_REST_PORT" if name == "rest" else "IM_METRICS_PORT"
        assert port_var in test, name
    if compose == "docker-compose.local.yml":
        # one network namespace for all: every ops endpoint needs a port of its own
        local = yaml.safe_load((ROOT / compose).read_text())["services"]
        ports = [local[n]["environment"]["IM_METRICS_PORT"] for n in im if n != "rest"]
        assert len(set(ports)) == len(ports) == len(im) - 1
