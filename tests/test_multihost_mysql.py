"""The MySQL engine (common/db.py) against a three-node Galera cluster in test hosts.

From the ``client`` host, with the address-list form of the URL: reads and writes go on while
the node the pool uses is SIGKILLed, and while it is cut off from its cluster (it then refuses
work until it rejoins); the pool moves to the next node and nothing that was acknowledged is
lost. A write whose connection died under it is never run again by the engine: the test
resolves each of those by reading, as the app's writers must. And two pools on two nodes
writing one row collide in Galera's certification; the engine runs such a statement again,
since the server rolled it back.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from common.db import ConflictError, MySQLDatabase, create_database, open_database
from common.errors import BackendError
from testbed.galera import GaleraCluster
from testbed.netns import Testbed

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

AFTER = 100  # writes acknowledged after the fault


@pytest_asyncio.fixture
async def database(bed: Testbed, galera: GaleraCluster) -> AsyncIterator[str]:
    """A database of this test's own on the cluster, with one table; the URL names app1 first."""
    name = f"im_test_mh_{secrets.token_hex(3)}"
    url = galera.url(name)
    await asyncio.to_thread(galera.ensure_up)
    with bed.inside("client"):
        await create_database(url)
        db = await open_database(url, pool_size=2)
        try:
            await db.execute("CREATE TABLE im_t (id INT PRIMARY KEY, v INT NOT NULL DEFAULT 0)")
        finally:
            await db.close()
    try:
        yield url
    finally:
        await asyncio.to_thread(bed.heal)
        await asyncio.to_thread(galera.ensure_up)
        galera.sql("app2", f"DROP DATABASE IF EXISTS `{name}`")


class Traffic:
    """One writer inserting ids 1, 2, 3, ... in order and a reader counting rows, on one pool.
    A write that failed may have committed: it is not repeated but looked up later."""

    def __init__(self, db: MySQLDatabase) -> None:
        self.db = db
        self.acked: dict[int, float] = {}
        self.unknown: list[int] = []
        self.read_errors = 0
        self.reads_after: list[float] = []
        self._next = 1
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._read())]

    async def _write(self) -> None:
        while not self._stop.is_set():
            msg_id, self._next = self._next, self._next + 1
            try:
                await self.db.execute("INSERT INTO im_t (id) VALUES (?)", (msg_id,))
                self.acked[msg_id] = time.monotonic()
            except BackendError:
                self.unknown.append(msg_id)
                await asyncio.sleep(0.1)

    async def _read(self) -> None:
        while not self._stop.is_set():
            try:
                await self.db.fetchone("SELECT COUNT(*) FROM im_t")
                self.reads_after.append(time.monotonic())
            except BackendError:
                self.read_errors += 1
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.01)

    def acked_since(self, t: float) -> int:
        return sum(1 for when in self.acked.values() if when > t)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def poll(cond: object, timeout: float, what: str) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.05)


async def check_rows(url_other_first: str, traffic: Traffic) -> None:
    """Every acknowledged write is there, read through another node; each write that failed
    is there or not, and nothing else is. The read is causal (``wsrep_sync_wait=1``): another
    node may not have applied the last writesets yet (seen here: the last 15 of 200, applied
    within 2 s), and a plain read there would report them missing."""
    check = await open_database(url_other_first + "?wsrep_sync_wait=1", pool_size=1)
    try:
        rows = {int(r[0]) for r in await check.fetchall("SELECT id FROM im_t")}
    finally:
        await check.close()
    missing = set(traffic.acked) - rows
    assert not missing, f"acknowledged writes lost: {sorted(missing)[:20]}"
    assert rows <= set(traffic.acked) | set(traffic.unknown), "rows nobody wrote"


async def test_writes_and_reads_move_to_the_next_node_when_theirs_dies(
    bed: Testbed, galera: GaleraCluster, database: str
) -> None:
    with bed.inside("client"):
        db = await open_database(database, pool_size=4)
        assert isinstance(db, MySQLDatabase)
        assert db.server == f"{bed['app1'].addr}:3306"
        traffic = Traffic(db)
        try:
            await poll(lambda: len(traffic.acked) >= 50, 30, "writing")
            assert await asyncio.to_thread(galera.kill_writer_node) == "app1"
            dead_at = time.monotonic()
            await poll(lambda: traffic.acked_since(dead_at) >= AFTER, 60, "writing again")
        finally:
            await traffic.stop()
        # it searched from the top of the list: app1 is dead, so app2, where everyone goes
        assert db.server == f"{bed['app2'].addr}:3306"
        assert db.failovers == 1
        await db.close()
        await check_rows(galera.url(database.rsplit("/", 1)[1], ["app3", "app2"]), traffic)
    writes_back = min(t for t in traffic.acked.values() if t > dead_at) - dead_at
    reads_back = min(t for t in traffic.reads_after if t > dead_at) - dead_at
    print(
        f"galera node kill: writes back after {writes_back:.1f} s, reads after {reads_back:.1f} s;"
        f" {len(traffic.acked)} acknowledged, all kept; {len(traffic.unknown)} writes unknown,"
        f" {traffic.read_errors} read errors"
    )


async def test_a_node_cut_off_from_its_cluster_is_left(
    bed: Testbed, galera: GaleraCluster, database: str
) -> None:
    """app1 loses its peers but not its clients: it leaves the primary component and refuses
    work (error 1047), the pool on it moves to app2, and a new pool given the same list skips
    app1 because it is not Synced."""
    with bed.inside("client"):
        db = await open_database(database, pool_size=4)
        assert isinstance(db, MySQLDatabase)
        traffic = Traffic(db)
        try:
            await poll(lambda: len(traffic.acked) >= 50, 30, "writing")
            await asyncio.to_thread(bed.partition, "app1", ["app2", "app3"])
            cut_at = time.monotonic()
            await poll(lambda: traffic.acked_since(cut_at) >= AFTER, 60, "writing again")
            assert db.server == f"{bed['app2'].addr}:3306"
            fresh = await open_database(database, pool_size=1)
            assert isinstance(fresh, MySQLDatabase)
            assert fresh.server == f"{bed['app2'].addr}:3306"
            await fresh.close()
        finally:
            await traffic.stop()
            await asyncio.to_thread(bed.heal)
        await db.close()
        await check_rows(galera.url(database.rsplit("/", 1)[1], ["app3", "app2"]), traffic)
    writes_back = min(t for t in traffic.acked.values() if t > cut_at) - cut_at
    print(
        f"galera node partitioned: writes back after {writes_back:.1f} s; "
        f"{len(traffic.unknown)} writes unknown"
    )


async def test_conflicting_writes_through_two_nodes_are_run_again(
    bed: Testbed, galera: GaleraCluster, database: str
) -> None:
    """Two pools, one on app1 and one on app2, increment one row: Galera certifies one of two
    colliding commits and rolls the other back (a deadlock error); the engine runs that
    statement again, so no increment is lost and none is applied twice."""
    name = database.rsplit("/", 1)[1]
    rounds = 40
    with bed.inside("client"):
        one = await open_database(galera.url(name, ["app1", "app2", "app3"]), pool_size=2)
        two = await open_database(galera.url(name, ["app2", "app1", "app3"]), pool_size=2)
        assert isinstance(one, MySQLDatabase) and isinstance(two, MySQLDatabase)
        assert one.server != two.server
        await one.execute("INSERT INTO im_t (id, v) VALUES (1, 0)")
        gave_up = 0

        async def bump(db: MySQLDatabase) -> None:
            nonlocal gave_up
            for _ in range(rounds):
                try:
                    await db.execute("UPDATE im_t SET v = v + 1 WHERE id = 1")
                except ConflictError:
                    gave_up += 1  # rolled back after every retry: not applied

        try:
            await asyncio.gather(bump(one), bump(one), bump(two), bump(two))
        finally:
            await one.close()
            await two.close()
        # causal: app1 may not have applied app2's last increments yet
        check = await open_database(f"{galera.url(name)}?wsrep_sync_wait=1", pool_size=1)
        try:
            row = await check.fetchone("SELECT v FROM im_t WHERE id = 1")
        finally:
            await check.close()
    retried = one.conflicts_retried + two.conflicts_retried
    assert retried > 0, "the two nodes never collided: the test proved nothing"
    assert row == (4 * rounds - gave_up,)
    print(f"galera conflicts: {retried} statements run again, {gave_up} given up of {4 * rounds}")


async def test_causal_reads_are_a_url_option(
    bed: Testbed, galera: GaleraCluster, database: str
) -> None:
    """``?wsrep_sync_wait=1`` makes every session's reads wait until the node has applied what
    the cluster committed before them (a node that took over may lag by a few writesets)."""
    with bed.inside("client"):
        for url, want in ((database, 0), (f"{database}?wsrep_sync_wait=1", 1)):
            db = await open_database(url, pool_size=1)
            try:
                assert await db.fetchone("SELECT @@session.wsrep_sync_wait") == (want,)
            finally:
                await db.close()
