"""Test hosts: Linux network namespaces on a private bridge, and the faults a network can have.

Why it exists: one machine's loopback hides everything a real network does to a cluster (a host
that vanishes, a link that carries packets one way only). Namespaces give each "host" its own
address, loopback, ports and firewall, so the services run exactly as on separate machines.

Rules it keeps:
- a host is the namespace ``<prefix>-<tag>-<name>`` with one veth ``eth0`` whose peer sits on the
  bridge ``br0`` in a namespace of its own (``<prefix>-<tag>-sw``). Both ends are created inside
  their namespaces: the root namespace gets no interface, address, route or rule, and a host has
  no default route, so traffic reaches only the other hosts of this testbed and its own loopback.
- faults are drop rules in an nftables table ``imfault`` inside the receiving host's namespace
  (packets leave the sender and die at the receiver, as on a cut cable: senders see timeouts, not
  local errors). Each host's table is rewritten whole from the current fault set, so healing is
  removing entries and rewriting; ``heal()`` with no host removes every fault.
- every process started here is started inside a host's namespace, so teardown finds them all
  with ``ip netns pids`` and kills them by pid before the namespace is deleted; nothing is ever
  killed by name. :func:`destroy_all` does the same for namespaces a crashed run left behind.

Needs root, iproute2 (``ip``) and nftables (``nft``): :func:`unavailable` says what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PREFIX = "imtb"
DEFAULT_SUBNET = "10.77.0"  # a /24 of the private range; isolated per testbed, so reuse is fine
FIRST_HOST = 11  # host i (from 0) gets <subnet>.<11 + i>
CMD_TIMEOUT = 30.0  # seconds for one ip/nft command: they take milliseconds when all is well
KILL_WAIT = 10.0  # seconds teardown waits for a namespace's processes to be gone
_CLONE_NEWNET = 0x40000000  # <sched.h>; os.setns is Python 3.12+, this runs on 3.11


class TestbedError(RuntimeError):
    """Setting up, using or removing the hosts failed; the message names the command."""

    __test__ = False  # not a test class, whatever pytest guesses from the name


def unavailable() -> str | None:
    """Why test hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (Debian: apt-get install iproute2 nftables)"
    probe = f"{PREFIX}-probe-{secrets.token_hex(3)}"
    try:
        _sh(["ip", "netns", "add", probe])
        try:
            _sh(["ip", "netns", "exec", probe, "nft", "list", "ruleset"])
        finally:
            _sh(["ip", "netns", "del", probe], check=False)
    except TestbedError as exc:
        return f"`ip netns` / nftables do not work here: {exc}"
    return None


def _sh(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = CMD_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise TestbedError(f"{' '.join(argv)}: exit {done.returncode}: {detail}")
    return done


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise TestbedError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the calling thread in namespace ``ns`` for the block, then back where it was.

    A socket belongs to the namespace it was made in for its whole life, so a client opened
    in the block keeps talking to the test hosts after it. Only this thread moves: threads
    that already exist (an executor's) stay where they are, so open connections here, not in
    ``asyncio.to_thread``. Meant for tests that drive the real adapters from inside a host.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def namespace_pids(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns``."""
    done = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_namespace(ns: str) -> None:
    """SIGKILL every process in ``ns`` (by pid) and wait until none is left."""
    deadline = time.monotonic() + KILL_WAIT
    while pids := namespace_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TestbedError(f"processes {pids} in {ns} survived SIGKILL")
        time.sleep(0.05)


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    done = _sh(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def destroy_all(prefix: str = PREFIX) -> list[str]:
    """Remove every namespace named ``<prefix>-*`` after killing its processes (a run that died
    without cleaning up); the names removed."""
    removed = []
    for ns in list_namespaces(prefix):
        _kill_namespace(ns)
        _sh(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    return removed


@dataclass(frozen=True)
class Host:
    """One test host: a namespace with one address on the testbed's bridge."""

    name: str
    ns: str
    addr: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host (``ip netns exec`` execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass(frozen=True)
class Drop:
    """Packets arriving at host ``at`` from address ``src`` are dropped (TCP ones with source or
    destination port ``port`` only, when given)."""

    at: str
    src: str
    port: int | None = None


class Testbed:
    """N hosts on one bridge, the processes started in them, and the faults between them.

    ``with Testbed(["app1", "app2", "app3", "client"]) as bed:`` creates them and always removes
    them (processes killed, namespaces deleted, ``root`` removed if it made it).
    """

    __test__ = False  # not a test class, whatever pytest guesses from the name

    def __init__(
        self,
        names: Sequence[str],
        *,
        tag: str | None = None,
        root: Path | None = None,
        subnet: str = DEFAULT_SUBNET,
        prefix: str = PREFIX,
    ) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError("host names must be given, each once")
        if len(names) > 200:
            raise ValueError("at most 200 hosts fit the /24")
        for n in names:
            if not n.isalnum() or len(n) > 12:
                raise ValueError(f"host name {n!r}: 1-12 letters or digits")
        self.tag = tag or secrets.token_hex(3)
        self.prefix = prefix
        self.subnet = subnet
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix=f"{prefix}-{self.tag}-")) if root is None else root
        self.switch = f"{prefix}-{self.tag}-sw"
        self.hosts: dict[str, Host] = {
            n: Host(n, f"{prefix}-{self.tag}-{n}", f"{subnet}.{FIRST_HOST + i}")
            for i, n in enumerate(names)
        }
        self._faults: set[Drop] = set()
        self._children: list[subprocess.Popen[bytes]] = []
        self.created = False

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Testbed:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(h.ns for h in self.hosts.values())]

    # -- life cycle ------------------------------------------------------------------------------

    def create(self) -> None:
        """Make the switch and every host; on any failure, undo what was made and raise."""
        try:
            _sh(["ip", "netns", "add", self.switch])
            sw = ["ip", "-n", self.switch]
            _sh([*sw, "link", "add", "br0", "type", "bridge"])
            _sh([*sw, "link", "set", "br0", "up"])
            for host in self.hosts.values():
                port = f"v-{host.name}"
                _sh(["ip", "netns", "add", host.ns])
                veth = ["eth0", "netns", host.ns, "type", "veth"]
                _sh(["ip", "link", "add", *veth, "peer", "name", port, "netns", self.switch])
                _sh([*sw, "link", "set", port, "master", "br0", "up"])
                h = ["ip", "-n", host.ns]
                _sh([*h, "link", "set", "lo", "up"])
                _sh([*h, "addr", "add", f"{host.addr}/24", "dev", "eth0"])
                _sh([*h, "link", "set", "eth0", "up"])
                self._write_rules(host)
            self.created = True
        except BaseException:
            self.destroy()
            raise
        self.save(self.root / "testbed.json")

    def destroy(self) -> None:
        """Kill every process in the hosts, delete the namespaces and the root it made. Safe to
        call twice, and on a half-made testbed."""
        errors: list[str] = []
        existing = set(list_namespaces(self.prefix))
        for ns in self.namespaces:
            if ns not in existing:
                continue
            try:
                _kill_namespace(ns)
            except TestbedError as exc:
                errors.append(str(exc))
            done = _sh(["ip", "netns", "del", ns], check=False)
            if done.returncode != 0:
                errors.append(f"ip netns del {ns}: {done.stderr.strip()}")
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)  # reap: the kill above took them all
        self._children.clear()
        self._faults.clear()
        self.created = False
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise TestbedError("; ".join(errors))

    def save(self, path: Path) -> None:
        """What :meth:`load` needs to find these hosts again (``python -m testbed down``)."""
        state = {
            "tag": self.tag,
            "prefix": self.prefix,
            "subnet": self.subnet,
            "hosts": list(self.hosts),
        }
        path.write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, root: Path) -> Testbed:
        state = json.loads((root / "testbed.json").read_text())
        bed = cls(
            state["hosts"],
            tag=state["tag"],
            root=root,
            subnet=state["subnet"],
            prefix=state["prefix"],
        )
        bed.created = True
        return bed

    # -- processes -------------------------------------------------------------------------------

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = CMD_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion in ``host``; output captured as text."""
        return _sh(self[host].argv(argv), check=check, input=input, timeout=timeout, env=env)

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``host`` in a session of its own, output appended to ``log``."""
        self.reap()  # keeps the list to the children alive, however many restarts
        with log.open("ab") as out:
            child = subprocess.Popen(
                self[host].argv(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        self._children.append(child)
        return child

    def inside(self, host: str) -> contextlib.AbstractContextManager[None]:
        """The calling thread in ``host``'s network for a block: see :func:`inside`."""
        return inside(self[host].ns)

    def pids(self, host: str) -> list[int]:
        return namespace_pids(self[host].ns)

    def find(self, host: str, needle: str) -> list[int]:
        """Pids in ``host`` whose command line contains ``needle``."""
        found = []
        for pid in self.pids(host):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if needle.encode() in cmdline:
                found.append(pid)
        return found

    def kill(self, host: str, pid: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``pid``, which must be a process of ``host``."""
        if pid not in self.pids(host):
            raise TestbedError(f"pid {pid} is not a process of host {host}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        self.reap()

    def reap(self) -> None:
        """Collect the exit status of children that died, so none lingers as a zombie."""
        for child in self._children:
            child.poll()
        self._children = [c for c in self._children if c.returncode is None]

    # -- faults ----------------------------------------------------------------------------------

    def _addr(self, name: str) -> str:
        return self[name].addr

    def _others(self, host: str) -> list[str]:
        return [n for n in self.hosts if n != host]

    def partition(self, host: str, peers: Iterable[str] | None = None) -> None:
        """Cut ``host`` off from ``peers`` (default: every other host), both ways."""
        for peer in self._others(host) if peers is None else list(peers):
            self._faults.add(Drop(host, self._addr(peer)))
            self._faults.add(Drop(peer, self._addr(host)))
        self._apply()

    def cut_one_way(self, src: str, dst: str, port: int | None = None) -> None:
        """Drop packets from ``src`` to ``dst`` only; the other direction still flows (a
        half-open TCP path). With ``port``, only TCP packets to or from that port on either
        side, so one service's path is cut and the hosts' other traffic flows."""
        self._faults.add(Drop(dst, self._addr(src), port))
        self._apply()

    def heal(self, host: str | None = None) -> None:
        """Remove every fault that touches ``host`` (every fault, with no host)."""
        if host is None:
            self._faults.clear()
        else:
            addr = self._addr(host)
            self._faults = {f for f in self._faults if f.at != host and f.src != addr}
        self._apply()

    async def partition_for(
        self, host: str, seconds: float, peers: Iterable[str] | None = None
    ) -> None:
        """Partition ``host`` for ``seconds``, then heal it (also when cancelled)."""
        await asyncio.to_thread(self.partition, host, peers)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(self.heal, host)

    @property
    def faults(self) -> frozenset[Drop]:
        return frozenset(self._faults)

    def _apply(self) -> None:
        for host in self.hosts.values():
            self._write_rules(host)

    def _write_rules(self, host: Host) -> None:
        rules = []
        for f in sorted(self._faults, key=lambda f: (f.src, f.port or 0)):
            if f.at != host.name:
                continue
            if f.port is None:
                rules.append(f"  ip saddr {f.src} drop")
            else:
                rules.append(f"  ip saddr {f.src} tcp sport {f.port} drop")
                rules.append(f"  ip saddr {f.src} tcp dport {f.port} drop")
        # one transaction: the table is made if missing, emptied, and refilled
        script = "\n".join(
            [
                "table inet imfault {}",
                "delete table inet imfault",
                "table inet imfault {",
                " chain input {",
                "  type filter hook input priority -10; policy accept;",
                *rules,
                " }",
                "}",
            ]
        )
        _sh(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], input=script + "\n")
