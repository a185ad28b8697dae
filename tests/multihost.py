"""Session fixtures of the multi-host tests: the test hosts, and the clustered services in them.

Each is built once per session, on first use, and torn down at the end of the session whatever
happened (the ``finally`` of each fixture; ``python -m testbed clean`` for a run that was
killed). Measured on the 2-core CI machine: hosts under 1 s, Redis with Sentinel about 5 s,
Galera about 13 s, RabbitMQ about 20 s.

The hosts: ``app1``-``app3`` carry the services (and, in the smoke test, the app), ``client``
the clients. Redis: primary on app1, replica on app2, a sentinel on each app host. RabbitMQ and
Galera: a node on each app host. A test that injects a fault puts the service back in its
``finally`` (``ensure_up``), so the next test starts from a whole cluster.

Without root, ``ip netns`` or nftables, or without a service's Debian package, the tests that
need them are skipped with the reason (and fail with ``CI=true``, as every service test does).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_service

from testbed.galera import PROVIDER, GaleraCluster
from testbed.netns import Testbed, unavailable
from testbed.rabbit import RabbitCluster
from testbed.sentinel import SentinelGroup

APP_HOSTS = ("app1", "app2", "app3")
HOSTS = (*APP_HOSTS, "client")


def need_files(what: str, *paths: str) -> None:
    for path in paths:
        found = shutil.which(path) if "/" not in path else (path if Path(path).exists() else None)
        if found is None:
            require_service(what, f"{path} not found (Debian package missing?)")


@pytest.fixture(scope="session")
def bed() -> Iterator[Testbed]:
    reason = unavailable()
    if reason is not None:
        require_service("test hosts", reason)
    with Testbed(HOSTS) as testbed:
        yield testbed


@pytest.fixture(scope="session")
def sentinels(bed: Testbed) -> Iterator[SentinelGroup]:
    need_files("redis with sentinel", "redis-server", "redis-cli")
    group = SentinelGroup(bed, primary="app1", replicas=["app2"], sentinels=list(APP_HOSTS))
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session")
def rabbit(bed: Testbed) -> Iterator[RabbitCluster]:
    need_files(
        "rabbitmq cluster",
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
        "/usr/lib/rabbitmq/bin/rabbitmqctl",
    )
    cluster = RabbitCluster(bed, list(APP_HOSTS))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def galera(bed: Testbed) -> Iterator[GaleraCluster]:
    need_files(
        "galera cluster", "/usr/sbin/mariadbd", "mariadb-install-db", "mariadb", "rsync", PROVIDER
    )
    cluster = GaleraCluster(bed, list(APP_HOSTS))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
