"""The ``im`` services spread over three test hosts, on the clustered Redis, RabbitMQ and Galera,
with ``im demo`` run from a client host of its own.

REST on app1, a transfer and a connector on each app host, the timeline writer on app2: every
message crosses the bridge at least twice (client -> connector -> transfer -> connector), each
one committed through RabbitMQ and the writer into Galera before anyone sees it, the offline
users' ones found by their devices' catch-up, and the demo checks every count.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator

import pytest

from testbed.app import AppCluster
from testbed.galera import GaleraCluster
from testbed.netns import Testbed
from testbed.rabbit import RabbitCluster
from testbed.sentinel import SentinelGroup

pytestmark = pytest.mark.slow


@pytest.fixture
def app(
    bed: Testbed, sentinels: SentinelGroup, rabbit: RabbitCluster, galera: GaleraCluster
) -> Iterator[AppCluster]:
    tag = secrets.token_hex(3)
    cluster = AppCluster(
        bed,
        database_url=galera.url(f"im_smoke_{tag}"),
        redis_url=sentinels.url(db=0),
        amqp_url=rabbit.url(),
        settings={"IM_REDIS_PREFIX": f"imsmoke:{tag}:", "IM_AMQP_QUEUE": f"imsmoke.{tag}"},
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        galera.sql("app2", f"DROP DATABASE IF EXISTS `im_smoke_{tag}`", check=False)


def test_demo_through_three_app_hosts(bed: Testbed, app: AppCluster) -> None:
    demo = ["demo", "--rest", app.rest_url, "--users", "12", "--messages", "300", "--offline", "4"]
    done = bed.run(
        "client",
        [sys.executable, "-m", "cli.main", *demo, "--json", "--timeout", "120"],
        check=False,
        timeout=200,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["messages"] == report["sent"] == report["delivered"] == report["read"] == 300
    assert report["duplicates"] == report["out_of_order"] == 0
    assert report["connectors_used"] == 3  # the users landed on every app host
    assert app.exited() == {}, "a service died during the demo"
    print(f"demo over three app hosts: {report['seconds']} s")
