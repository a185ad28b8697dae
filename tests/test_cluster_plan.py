"""`im cluster`'s plan, without starting anything: every listening port of every child is its
own (the ops endpoint of connector-1 once sat on connector-2's WebSocket port, so whichever
started second could not listen and the cluster did not come up)."""

from __future__ import annotations

import pytest

from cli.cluster import plan
from common.config import Settings

PORT_KEYS = (
    "IM_REST_PORT",
    "IM_CONNECTOR_PORT",
    "IM_TRANSFER_PORT",
    "IM_WS_PORT",
    "IM_METRICS_PORT",
)


@pytest.mark.parametrize("size", [1, 2, 3, 9])
def test_no_two_children_listen_on_one_port(size: int) -> None:
    settings = Settings(metrics_port=9090, ws_port=9083)
    children = plan(settings, connectors=size, transfers=size, writers=size)
    ports = [
        int(child.env[key])
        for child in children
        for key in PORT_KEYS
        if int(child.env.get(key, "0") or 0)
    ]
    assert ports, "the plan names ports"
    assert len(ports) == len(set(ports)), sorted(ports)
    assert 9090 not in ports  # im up's own ops port stays free for a neighbour


def test_the_printed_layout_is_the_documented_one() -> None:
    children = plan(Settings(metrics_port=9090, ws_port=9083), connectors=2, transfers=2, writers=1)
    by_name = {c.name: c.env for c in children}
    assert by_name["connector-1"]["IM_METRICS_PORT"] == "9096"
    assert by_name["connector-2"]["IM_METRICS_PORT"] == "9106"
    assert by_name["transfer-1"]["IM_METRICS_PORT"] == "9097"
    assert by_name["writer-1"]["IM_METRICS_PORT"] == "9098"
    assert by_name["connector-2"]["IM_WS_PORT"] == "9093"
