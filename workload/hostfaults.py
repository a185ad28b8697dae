"""The network and service faults of the multi-host chaos run (``im chaos --hosts N``).

Why apart from cli/chaoshosts.py: what a fault *is* (which node dies, which link is cut, what
"recovered" means) is the testbed's business, not the traffic's; the run only asks for the next
fault and counts it. Each fault is injected, held, undone, and then the clustered services are
waited on until they are whole again, so faults never pile up: two at once could take a majority
away from a cluster of three, which no layout survives and which would test nothing of ours.

The five kinds (each drawn in turn, in a shuffled order per round, so every kind comes once per
round of five):

- ``partition``: one app host cut off from every other host, the client included, for
  ``partition_seconds``, then healed;
- ``redis_failover``: the Redis primary SIGKILLed; the sentinels promote the replica; the dead
  one comes back as a replica of the new primary;
- ``rabbitmq_node``: one RabbitMQ node's VM SIGKILLed, started again after ``down_seconds``;
- ``mariadb_node``: the Galera node the timeline writers are connected to SIGKILLed, started
  again after ``down_seconds`` at its recovered position;
- ``half_open``: the links between one connector and the transfers on the other hosts cut one
  way only for ``half_open_seconds``: transfers to connector or connector to transfers, drawn
  the first time and then in turn, so a long run has both.

Every blocking testbed call runs in a worker thread: the users' event loop keeps going.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.app import PORTS, AppCluster
from testbed.galera import GaleraCluster
from testbed.netns import Testbed, TestbedError
from testbed.rabbit import RabbitCluster
from testbed.sentinel import SentinelGroup

KINDS = ("partition", "redis_failover", "rabbitmq_node", "mariadb_node", "half_open")
WHOLE_TIMEOUT = 180.0  # seconds for the clustered services to be whole after a fault
LOG_MAX = 500  # entries of the fault log kept (a ten-minute run makes about fifty)


@dataclass
class Services:
    """The test hosts with the clustered services and the ``im`` processes in them."""

    bed: Testbed
    redis: SentinelGroup
    rabbit: RabbitCluster
    galera: GaleraCluster
    app: AppCluster
    app_hosts: list[str]

    def whole(self, timeout: float = WHOLE_TIMEOUT) -> None:
        """Every sentinel, Redis, RabbitMQ node (and every member of its quorum queues) and
        Galera node up and in its cluster."""
        self.redis.wait_ready(timeout=timeout)
        self.rabbit.wait_running(list(self.rabbit.nodes), timeout=timeout)
        self.rabbit.wait_queues_whole(timeout=timeout)
        self.galera.wait_cluster(list(self.galera.nodes), timeout=timeout)


@dataclass
class Injector:
    """Draws, injects and undoes faults; counts them and keeps a short log."""

    svc: Services
    rng: random.Random
    partition_seconds: float = 10.0
    half_open_seconds: float = 8.0
    down_seconds: float = 3.0
    say: Callable[[str], None] = lambda _text: None
    counts: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)  # SIGKILLs by service
    log: list[dict[str, object]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _round: list[str] = field(default_factory=list)
    _inbound: bool = False

    def missing(self) -> list[str]:
        """Kinds not injected yet."""
        return [k for k in KINDS if self.counts[k] == 0]

    def next_kind(self) -> str:
        if not self._round:
            self._round = list(KINDS)
            self.rng.shuffle(self._round)
        return self._round.pop()

    async def inject(self, kind: str, started: float) -> None:
        """One fault of ``kind``, held and undone, then the services whole again. A fault whose
        injection failed is not counted; one that did not recover is noted in ``errors``."""
        t0 = time.monotonic()
        try:
            target = await getattr(self, f"_{kind}")()
        except (TestbedError, OSError, ValueError) as exc:
            self.errors.append(f"{kind}: {exc}")
            self.say(f"fault {kind} failed: {exc}")
            return
        held = time.monotonic() - t0
        try:
            await asyncio.to_thread(self.svc.whole)
        except TestbedError as exc:
            self.errors.append(f"{kind} on {target}: not whole again: {exc}")
            self.say(f"after {kind}: services not whole: {exc}")
        if len(self.log) < LOG_MAX:
            self.log.append(
                {
                    "kind": kind,
                    "target": target,
                    "at": round(t0 - started, 1),
                    "held": round(held, 1),
                    "whole_after": round(time.monotonic() - t0, 1),
                }
            )
        self.say(f"fault {kind} on {target}: over after {time.monotonic() - t0:.1f}s")

    # -- the kinds: each returns what it hit -----------------------------------------------------

    async def _partition(self) -> str:
        host = self.rng.choice(self.svc.app_hosts)
        self.say(f"partition {host} for {self.partition_seconds:g}s")
        self.counts["partition"] += 1
        await self.svc.bed.partition_for(host, self.partition_seconds)
        return host

    async def _redis_failover(self) -> str:
        redis = self.svc.redis
        old = await asyncio.to_thread(redis.kill_primary)
        self.counts["redis_failover"] += 1
        self.kills["redis"] += 1
        self.say(f"SIGKILL redis primary on {old}")
        new = await asyncio.to_thread(redis.wait_failover, old, 60.0)
        self.say(f"sentinels promoted {new}; {old} back as its replica")
        await asyncio.to_thread(redis.restart, old)
        return f"{old}->{new}"

    async def _rabbitmq_node(self) -> str:
        rabbit = self.svc.rabbit
        host = self.rng.choice(rabbit.alive())
        await asyncio.to_thread(rabbit.kill, host)
        self.counts["rabbitmq_node"] += 1
        self.kills["rabbitmq"] += 1
        self.say(f"SIGKILL rabbitmq on {host}")
        await asyncio.sleep(self.down_seconds)
        await asyncio.to_thread(rabbit.restart, host)
        return host

    async def _mariadb_node(self) -> str:
        galera = self.svc.galera
        host = await asyncio.to_thread(self.writers_node)
        await asyncio.to_thread(galera.kill, host)
        self.counts["mariadb_node"] += 1
        self.kills["mariadb"] += 1
        self.say(f"SIGKILL mariadb on {host} (the writers' node)")
        await asyncio.sleep(self.down_seconds)
        await asyncio.to_thread(galera.restart, host)
        return host

    async def _half_open(self) -> str:
        bed = self.svc.bed
        connectors = [p for p in self.svc.app.procs.values() if p.role == "connector"]
        conn = self.rng.choice(connectors).host
        others = [h for h in self.svc.app_hosts if h != conn]
        # transfers -> connector dropped, else the reverse: drawn the first time, then in turn
        inbound = self._inbound = (
            not self._inbound if self.counts["half_open"] else (self.rng.random() < 0.5)
        )
        port = PORTS["transfer"]
        arrow = "transfers->connector" if inbound else "connector->transfers"
        self.say(f"half-open: {arrow} of connector-{conn} for {self.half_open_seconds:g}s")

        def cut() -> None:
            for other in others:
                src, dst = (other, conn) if inbound else (conn, other)
                bed.cut_one_way(src, dst, port=port)

        await asyncio.to_thread(cut)
        self.counts["half_open"] += 1
        try:
            await asyncio.sleep(self.half_open_seconds)
        finally:
            await asyncio.to_thread(bed.heal)
        return f"connector-{conn} {arrow}"

    def writers_node(self) -> str:
        """The Galera node the timeline writers hold connections to now (the pool does not move
        back by itself, so after a failover it is not the first of the list): the one whose
        process list shows the most of the app's connections from the writers' hosts."""
        galera = self.svc.galera
        writer_addrs = {
            self.svc.bed[p.host].addr
            for p in self.svc.app.procs.values()
            if p.role == "offline-writer"
        }
        best, most = galera.first_alive(), -1
        for host in galera.alive():
            rows = galera.sql(
                host,
                "SELECT host FROM information_schema.processlist WHERE user = 'im'",
                check=False,
            )
            n = sum(1 for line in rows.splitlines() if line.rsplit(":", 1)[0] in writer_addrs)
            if n > most:
                best, most = host, n
        return best
