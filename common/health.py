"""Liveness and readiness: what ``GET /healthz`` and ``GET /readyz`` answer.

Live means the process's event loop answers at all: nothing else is checked, so an orchestrator
restarts only a process that is truly stuck. Ready means it can do its job now: each component
registers a named check (database ping, Redis ping, RabbitMQ channel, schema version, "linked to
a transfer"), and the process is ready when every check passes and it is not draining.

Rules kept here:
- a check is an async callable that returns on success and raises with the reason on failure;
  it runs under :data:`CHECK_TIMEOUT`, so a hung backend reads as "timed out", never a hung
  probe;
- a result, good or bad, is kept for :data:`CHECK_TTL`: probes as often as anyone likes cost at
  most one backend call per check per TTL, and concurrent probes share the one in flight;
- :meth:`Readiness.drain` makes every later answer "not ready" for good: a stopping process is
  taken out of load balancing before its sessions close;
- sans-IO where it can be: the clock is injected, and :class:`NodeLinks` is a plain table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from common import metrics

Check = Callable[[], Awaitable[None]]

# A probe every few seconds (docker's interval is 5 s, Prometheus' 15 s) then costs at most one
# backend round trip per check per second, and a state change shows within about a second.
CHECK_TTL = 1.0
# Below docker-compose's 3 s health check timeout, so a slow backend reads as "not ready
# (timed out)" rather than as a probe that itself timed out.
CHECK_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    ready: bool
    checks: dict[str, CheckResult]
    draining: bool = False

    def as_json(self) -> dict[str, object]:
        """What ``/readyz`` answers: the status, every check's state, and what failed."""
        failed = {name: r.detail for name, r in self.checks.items() if not r.ok}
        if self.draining:
            failed["draining"] = "shutting down"
        return {
            "status": "ready" if self.ready else "not ready",
            "checks": {name: "ok" if r.ok else "failed" for name, r in self.checks.items()},
            "failed": failed,
        }


@dataclass
class _Entry:
    check: Check
    result: CheckResult | None = None
    at: float = float("-inf")
    running: asyncio.Future[CheckResult] | None = None


class Readiness:
    """The named checks of one process."""

    def __init__(
        self,
        *,
        ttl: float = CHECK_TTL,
        timeout: float = CHECK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._draining = False

    def add(self, name: str, check: Check) -> None:
        """Register (or replace) the check ``name``."""
        self._entries[name] = _Entry(check)

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def drain(self) -> None:
        """From now on, not ready: the process is shutting down."""
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    async def report(self) -> Report:
        names = sorted(self._entries)
        results = await asyncio.gather(*(self._result(self._entries[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        ready = not self._draining and all(r.ok for r in checks.values())
        return Report(ready, checks, self._draining)

    async def _result(self, entry: _Entry) -> CheckResult:
        if entry.result is not None and self._clock() - entry.at < self._ttl:
            return entry.result
        if entry.running is None:
            entry.running = asyncio.ensure_future(self._run(entry))
        # shielded: a probe that gives up (client gone) does not cancel the shared run
        return await asyncio.shield(entry.running)

    async def _run(self, entry: _Entry) -> CheckResult:
        try:
            async with asyncio.timeout(self._timeout):
                await entry.check()
            result = CheckResult(True)
        except TimeoutError:
            result = CheckResult(False, f"timed out after {self._timeout:g}s")
        except Exception as exc:  # any failure of a check is "not ready", with its reason
            result = CheckResult(False, str(exc) or type(exc).__name__)
        finally:
            entry.running = None
        entry.result, entry.at = result, self._clock()
        return result


@dataclass
class NodeLinks:
    """Which peers each node of this process has a live link to.

    The core calls :meth:`up` when a link to a peer is usable (a transfer answered the GREET with
    WELCOME) and :meth:`down` when it is lost; readiness ("a connector linked to at least one
    transfer") and ``im_node_links`` read :meth:`count`. Keyed by the owning node, so several
    connectors in one process (tests) keep their own counts.
    """

    _links: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def up(self, owner: str, kind: metrics.PeerKind, peer: str) -> None:
        self._links.setdefault((owner, kind), set()).add(peer)

    def down(self, owner: str, kind: metrics.PeerKind, peer: str) -> None:
        peers = self._links.get((owner, kind))
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._links[owner, kind]

    def count(self, owner: str, kind: metrics.PeerKind) -> int:
        return len(self._links.get((owner, kind), ()))

    def total(self, kind: metrics.PeerKind) -> int:
        return sum(len(p) for (_, k), p in self._links.items() if k == kind)

    def check(self, owner: str, kind: metrics.PeerKind) -> Check:
        """A readiness check: at least one live link from ``owner`` to a peer of ``kind``."""

        async def linked() -> None:
            if not self.count(owner, kind):
                raise RuntimeError(f"{owner} has no live link to a {kind}")

        return linked


# The process's links: the core reports to it (docs/operations.md, "Hooks for the core").
LINKS = NodeLinks()
metrics.node_links_source("transfer", LINKS, lambda links: links.total("transfer"))
metrics.node_links_source("connector", LINKS, lambda links: links.total("connector"))
