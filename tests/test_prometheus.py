"""A real Prometheus (Debian package ``prometheus``) scrapes a running ``im up``, with a
configuration written here and the alert rules of docs/operations.md, and answers queries
about it through its HTTP API. Skipped locally when Prometheus is not installed; fails in CI."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, require_service
from test_metrics import promtool_check_metrics
from test_ops_docs import yaml_block

from cli.cluster import stop_gently

pytestmark = pytest.mark.slow


def prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        require_service("prometheus", "apt-get install prometheus (the Debian package)")
    return path


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_http(url: str, proc: asyncio.subprocess.Process, log: Path, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while loop.time() < deadline:
            assert proc.returncode is None, f"exited: {tail(log)}"
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered 200: {tail(log)}")


async def query(http: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/query", params={"query": promql})
    body = r.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.asyncio
async def test_prometheus_scrapes_im_up_and_loads_the_alert_rules(tmp_path: Path) -> None:
    binary = prometheus()
    rest, conn, transfer, ops, prom = (free_port() for _ in range(5))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IM_")},
        "IM_DATA_DIR": str(tmp_path / "im"),
        "IM_REST_PORT": str(rest),
        "IM_CONNECTOR_PORT": str(conn),
        "IM_TRANSFER_PORT": str(transfer),
        "IM_TRANSFER_ADDRS": f"127.0.0.1:{transfer}",
        "IM_METRICS_PORT": str(ops),
        "IM_WS_PORT": "0",  # 9083 is the machine's (another stack may hold it), not a test's
        "IM_SECRET": secrets.token_urlsafe(24),
        "IM_LOG_LEVEL": "WARNING",
    }
    im_log, prom_log = tmp_path / "im.log", tmp_path / "prometheus.log"
    with im_log.open("wb") as out:
        im = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "up",
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    promp: asyncio.subprocess.Process | None = None
    try:
        await wait_http(f"http://127.0.0.1:{ops}/readyz", im, im_log, 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest}") as http:
            await http.post("/users", json={"user_id": "scraped", "password": "password-123"})
            r = await http.post("/login", json={"user_id": "scraped", "password": "password-123"})
            assert r.status_code == 200
        (tmp_path / "im-alerts.yml").write_text(yaml_block("groups:"))
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [im-alerts.yml]\n"
            "scrape_configs:\n  - job_name: im\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{ops}']\n"
        )
        with prom_log.open("wb") as out:
            promp = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom}",
                "--log.level=warn",
                stdout=out,
                stderr=out,
                cwd=tmp_path,
                start_new_session=True,
            )
        await wait_http(f"http://127.0.0.1:{prom}/-/ready", promp, prom_log, 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{prom}", timeout=5) as http:
            up: list[dict[str, Any]] = []
            for _ in range(150):
                up = await query(http, 'up{job="im"}')
                if up and up[0]["value"][1] == "1":
                    break
                await asyncio.sleep(0.2)
            assert up and up[0]["value"][1] == "1", (up, tail(prom_log))
            info = await query(http, "im_process_info")
            assert info[0]["metric"]["role"] == "connector+rest+transfer+writer"
            assert info[0]["metric"]["node"] == f"127.0.0.1:{conn}"
            logins = await query(http, 'im_login_total{outcome="ok"}')
            assert logins and float(logins[0]["value"][1]) >= 1
            links = await query(http, 'im_node_links{peer="transfer"}')
            assert float(links[0]["value"][1]) == 1
            # the same families a test of the doc's alert rules can use: evaluated, healthy
            rules = (await http.get("/api/v1/rules")).json()["data"]["groups"]
            assert [g["name"] for g in rules] == ["im-cluster"]
            assert len(rules[0]["rules"]) == 7
            assert all(rule["health"] in ("ok", "unknown") for rule in rules[0]["rules"])
            firing = await query(http, 'ALERTS{alertname="IMConnectorWithoutTransfer"}')
            assert firing == []  # linked to its transfer: nothing to page about
        async with httpx.AsyncClient() as http:
            for url in (f"http://127.0.0.1:{ops}/metrics", f"http://127.0.0.1:{rest}/metrics"):
                done = promtool_check_metrics((await http.get(url)).content)
                assert done.returncode == 0, (url, done.stdout + done.stderr)
    finally:
        if promp is not None:
            await stop_gently(promp, 10)
        await stop_gently(im, 15)
    assert im.returncode == 0, tail(im_log)


def test_promtool_is_there_when_prometheus_is() -> None:
    """CI installs the package (.ci/run): both binaries come with it."""
    if shutil.which("prometheus") is None:
        require_service("prometheus", "apt-get install prometheus")
    version = subprocess.run(["promtool", "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0
