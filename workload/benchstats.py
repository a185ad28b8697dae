"""What ``im bench`` measures with: latency samples, percentiles, and a process's CPU and RSS.

Rules:
- latency samples are kept in a bounded reservoir (``SAMPLE_CAP``): a long run costs the same
  memory as a short one; the count and the maximum stay exact;
- CPU is user + system time from ``/proc/PID/stat`` and memory is ``VmRSS`` from
  ``/proc/PID/status``: what the kernel charges the process, read the same way for every target;
- nothing here does I/O but those two small reads, so it runs on any loop.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

# 200k samples keep p99 exact to well under a percent of rank at any run length, in ~2 MB.
SAMPLE_CAP = 200_000
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Latencies:
    """Latency samples in seconds: exact count and max, a uniform reservoir for percentiles."""

    __slots__ = ("_cap", "_rng", "count", "max", "samples")

    def __init__(self, cap: int = SAMPLE_CAP, seed: int = 1) -> None:
        self.samples: list[float] = []
        self.count = 0
        self.max = 0.0
        self._cap = cap
        self._rng = random.Random(seed)

    def add(self, seconds: float) -> None:
        self.count += 1
        if seconds > self.max:
            self.max = seconds
        if len(self.samples) < self._cap:
            self.samples.append(seconds)
        else:
            k = self._rng.randrange(self.count)
            if k < self._cap:
                self.samples[k] = seconds

    def summary(self, prefix: str = "") -> dict[str, float | int]:
        """``{prefix}p50_ms`` ... ``{prefix}max_ms`` and ``{prefix}count``; zeros when empty."""
        ordered = sorted(self.samples)
        out: dict[str, float | int] = {f"{prefix}count": self.count}
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
            out[f"{prefix}{name}_ms"] = round(percentile(ordered, q) * 1000, 3)
        out[f"{prefix}max_ms"] = round(self.max * 1000, 3)
        return out


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of an already sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), int(q * len(ordered) + 0.999999)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class ProcSample:
    pid: int
    cpu_s: float  # user + system seconds since the process started
    rss_kb: int


def sample(pid: int) -> ProcSample | None:
    """CPU seconds and resident memory of ``pid``; None when it is gone (or not on Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            status = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing parenthesis
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
            break
    return ProcSample(pid, cpu, rss)


def sample_all(pids: dict[str, int]) -> dict[str, ProcSample]:
    out: dict[str, ProcSample] = {}
    for name, pid in pids.items():
        s = sample(pid)
        if s is not None:
            out[name] = s
    return out


def usage(
    before: dict[str, ProcSample], after: dict[str, ProcSample]
) -> dict[str, dict[str, float | int]]:
    """Per process: CPU seconds spent between the samples, and RSS before and after (KiB)."""
    out: dict[str, dict[str, float | int]] = {}
    for name, b in before.items():
        a = after.get(name)
        if a is None:
            continue
        out[name] = {
            "pid": a.pid,
            "cpu_s": round(a.cpu_s - b.cpu_s, 3),
            "rss_kb_before": b.rss_kb,
            "rss_kb": a.rss_kb,
        }
    return out
