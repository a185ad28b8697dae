"""The test hosts themselves (testbed/netns.py): isolation, faults, kills, teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_service

from testbed.netns import Testbed, TestbedError, destroy_all, list_namespaces, unavailable

pytestmark = pytest.mark.slow

# An echo server: answers every chunk, and appends what it got to the file named in argv[2].
ECHO = """
import socket, sys, threading
def serve(c):
    while data := c.recv(100):
        with open(sys.argv[2], "ab") as f:
            f.write(data)
        c.sendall(data)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


@pytest.fixture(scope="module")
def echo(bed: Testbed) -> Iterator[Path]:
    """Echo servers on app2, ports 7001 and 7002; the file that logs what they received."""
    got = bed.root / "echo.log"
    procs = [
        bed.spawn(
            "app2", [sys.executable, "-c", ECHO, str(port), str(got)], log=bed.root / "echo.out"
        )
        for port in (7001, 7002)
    ]
    deadline = time.monotonic() + 10
    while not all(reachable(bed, "client", bed["app2"].addr, p) for p in (7001, 7002)):
        assert time.monotonic() < deadline, "echo servers did not start"
        time.sleep(0.05)
    yield got
    for p in procs:
        bed.kill("app2", p.pid)


def reachable(bed: Testbed, src: str, addr: str, port: int, timeout: float = 1.0) -> bool:
    with bed.inside(src):
        try:
            socket.create_connection((addr, port), timeout=timeout).close()
        except OSError:
            return False
    return True


def test_hosts_reach_each_other_and_nothing_else(bed: Testbed, echo: Path) -> None:
    assert reachable(bed, "client", bed["app2"].addr, 7001)
    assert reachable(bed, "app1", bed["app2"].addr, 7001)
    # a host's loopback is its own: this machine's Redis is not there
    assert not reachable(bed, "client", "127.0.0.1", 6379)
    # no route out of a host: only its own subnet
    routes = bed.run("client", ["ip", "route"]).stdout
    assert "default" not in routes and routes.count("\n") == 1, routes
    # and the hosts are nowhere in this machine's own namespace (checked without sending:
    # its default route leads off the machine)
    subnet = bed["client"].addr.rsplit(".", 1)[0] + "."
    root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    assert subnet not in root.stdout


def test_partition_cuts_a_host_off_both_ways_until_healed(bed: Testbed, echo: Path) -> None:
    try:
        bed.partition("app2")
        assert not reachable(bed, "client", bed["app2"].addr, 7001)
        assert not reachable(bed, "app1", bed["app2"].addr, 7001)
        assert reachable(bed, "app2", bed["app2"].addr, 7001)  # itself, still
        bed.heal("app2")
        assert reachable(bed, "client", bed["app2"].addr, 7001)
        bed.partition("app2", peers=["app1"])
        assert not reachable(bed, "app1", bed["app2"].addr, 7001)
        assert reachable(bed, "client", bed["app2"].addr, 7001)
    finally:
        bed.heal()
    assert bed.faults == frozenset()


def test_one_way_cut_leaves_the_other_direction_flowing(bed: Testbed, echo: Path) -> None:
    """Packets from app2 to the client are dropped: what the client sends still arrives (the
    server logs it), the answers never do: a half-open TCP path. With a port, only that
    service's path is cut."""
    with bed.inside("client"):
        a = socket.create_connection((bed["app2"].addr, 7001), timeout=2)
        b = socket.create_connection((bed["app2"].addr, 7002), timeout=2)
    try:
        bed.cut_one_way("app2", "client", port=7001)
        a.sendall(b"lost-answer")
        b.sendall(b"other-port")
        assert b.recv(100) == b"other-port"  # port 7002 is not cut
        a.settimeout(1.5)
        with pytest.raises(TimeoutError):
            a.recv(100)
        deadline = time.monotonic() + 5
        while b"lost-answer" not in echo.read_bytes():
            assert time.monotonic() < deadline, "the client's bytes never arrived"
            time.sleep(0.05)
        bed.heal()
        assert a.recv(100) == b"lost-answer"  # TCP retransmits the answer once healed
    finally:
        bed.heal()
        a.close()
        b.close()


def test_kill_and_teardown_leave_nothing_behind() -> None:
    """A testbed of its own: kill takes one process by pid (and refuses a pid of another host);
    destroy kills every process in the hosts and removes namespaces and root; destroy_all
    finds the namespaces of a run that did not clean up."""
    reason = unavailable()
    if reason is not None:
        require_service("test hosts", reason)
    bed = Testbed(["a", "b"], prefix="imtbcheck")
    bed.create()
    try:
        root = bed.root
        sleepers = {h: bed.spawn(h, ["sleep", "600"], log=root / f"{h}.log") for h in ("a", "b")}
        with pytest.raises(TestbedError):
            bed.kill("a", sleepers["b"].pid)
        bed.kill("a", sleepers["a"].pid)
        assert sleepers["a"].wait(timeout=5) == -9
        assert bed.pids("a") == []
        assert bed.pids("b") == [sleepers["b"].pid]
        orphan = bed.spawn("b", ["sleep", "600"], log=root / "orphan.log")
    finally:
        bed.destroy()
    assert list_namespaces("imtbcheck") == []
    assert not root.exists()
    assert sleepers["b"].poll() is not None and orphan.poll() is not None
    # a run that died: its namespaces and processes are found by prefix and removed
    stale = Testbed(["a"], prefix="imtbcheck")
    stale.create()
    sleeper = stale.spawn("a", ["sleep", "600"], log=stale.root / "x.log")
    assert sorted(destroy_all("imtbcheck")) == sorted([stale["a"].ns, stale.switch])
    assert list_namespaces("imtbcheck") == []
    assert sleeper.wait(timeout=5) == -9
    stale.destroy()  # only its root is left to remove
    assert not stale.root.exists()


def test_inside_returns_the_thread_to_its_namespace(bed: Testbed) -> None:
    own = os.readlink("/proc/thread-self/ns/net")
    with bed.inside("client"):
        assert os.readlink("/proc/thread-self/ns/net") != own
    assert os.readlink("/proc/thread-self/ns/net") == own
