"""The load loop of ``im bench``: senders, a window of messages in flight, receipts timed.

One driver serves every target (``im up``, a cluster, the bare relay), so their numbers are
measured the same way. Rules:
- latency is taken at the sender: from the moment a message is offered to the moment its
  receipt (SENT, DELIVERED, READ) arrives. In open loop the offer time is the *scheduled* time,
  so a server that falls behind shows it in the latency instead of slowing the offered rate
  (no coordinated omission);
- closed loop keeps ``window`` messages in flight per sender; open loop offers ``rate`` msgs/s
  in total and never more than ``window`` in flight per sender: an offer that finds the window
  full is counted as ``skipped`` (the target could not keep up), not queued;
- only messages offered inside the measured interval (after the warm-up) count for latency;
  completions inside it count for msgs/s;
- every loop is bounded by the run's deadline, and the tables hold at most a window of
  messages per sender (plus an early-receipt table capped at ``EARLY_CAP``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from common.codec import FrameDecoder, encode
from common.errors import FrameError
from proto import im_pb2
from workload.benchstats import Latencies

EARLY_CAP = 10_000  # receipts that beat their send() call home; far more than can be in flight
RELAY_BODY = bytes(53)  # makes a 103-byte chat frame, the size issue 6 measured the relay at
KINDS = ("SENT", "DELIVERED", "READ")


@dataclass
class Stats:
    """What every sender of one run adds to."""

    final: str  # the receipt whose latency is the headline: DELIVERED (or READ, SENT)
    # a message is in flight until every one of these has come (SENT may follow DELIVERED)
    required: frozenset[str] = frozenset()
    lat: dict[str, Latencies] = field(default_factory=lambda: {k: Latencies() for k in KINDS})
    offered: int = 0
    sent: int = 0
    completed: int = 0  # flights ended inside the measured interval
    completed_total: int = 0
    skipped: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    measure_from: float = 0.0
    measure_until: float = float("inf")

    def __post_init__(self) -> None:
        if not self.required:
            self.required = frozenset({self.final})

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)


class Flow:
    """One sender's messages in flight: id -> (offered at, counted for latency, still due)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.inflight: dict[int, tuple[float, bool, set[str]]] = {}
        self.room = asyncio.Event()
        self.room.set()
        self._early: dict[int, list[tuple[str, float]]] = {}

    def started(self, msg_id: int, offered_at: float) -> None:
        s = self.stats
        s.sent += 1
        counted = s.measure_from <= offered_at < s.measure_until
        self.inflight[msg_id] = (offered_at, counted, set(s.required))
        for kind, at in self._early.pop(msg_id, ()):
            self.receipt(kind, msg_id, at)

    def receipt(self, kind: str, msg_id: int, at: float | None = None) -> None:
        now = time.monotonic() if at is None else at
        entry = self.inflight.get(msg_id)
        if entry is None:
            if len(self._early) < EARLY_CAP:
                self._early.setdefault(msg_id, []).append((kind, now))
            return
        offered, counted, due = entry
        s = self.stats
        if kind not in due:
            return
        due.discard(kind)
        if counted:
            s.lat[kind].add(now - offered)
        if not due:
            del self.inflight[msg_id]
            s.completed_total += 1
            if s.measure_from <= now < s.measure_until:
                s.completed += 1
            self.room.set()

    def forget_early(self) -> None:
        self._early.clear()


async def limited(width: int, n: int, make: Callable[[int], Awaitable[None]]) -> None:
    """``make(0)`` .. ``make(n - 1)``, at most ``width`` at once (set-up: registrations and
    connects, where more at once only queue in REST or the accept backlog)."""
    sem = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def retried(attempt: Callable[[], Awaitable[str]], tries: int) -> str:
    """Run ``attempt`` until it answers "" (done) or ``tries`` times, 0.5 s, 1 s, ... apart, as
    a device tries a refused or timed-out connection again; the last reason, or ""."""
    why = ""
    for n in range(tries):
        why = await attempt()
        if not why:
            return ""
        await asyncio.sleep(0.5 * (n + 1))
    return why


SendFn = Callable[[], Awaitable[int]]
Probe = Callable[[str], object]


async def _closed(flow: Flow, send: SendFn, window: int, until: float) -> None:
    while time.monotonic() < until:
        if len(flow.inflight) >= window:
            flow.room.clear()
            try:
                async with asyncio.timeout(max(0.001, until - time.monotonic())):
                    await flow.room.wait()
            except TimeoutError:
                return
            continue
        at = time.monotonic()
        flow.stats.offered += 1
        flow.started(await send(), at)


async def _open(
    flow: Flow, send: SendFn, window: int, every: float, start: float, until: float
) -> None:
    nxt = start
    while nxt < until:
        now = time.monotonic()
        if nxt > now:
            await asyncio.sleep(nxt - now)
        flow.stats.offered += 1
        if len(flow.inflight) >= window:
            flow.stats.skipped += 1
        else:
            flow.started(await send(), nxt)
        nxt += every


async def drive(
    senders: list[tuple[Flow, SendFn]],
    *,
    window: int,
    rate: float,
    warmup: float,
    duration: float,
    settle: float,
    label: str,
    progress: bool,
    probe: Probe | None = None,
) -> dict[str, object]:
    """Run the senders for ``warmup + duration`` seconds, wait up to ``settle`` seconds for
    what is still in flight; the measured numbers as a dict. ``probe`` is called with "start"
    and "end" around the load, so process CPU is charged to the messages and not the set-up."""
    stats = senders[0][0].stats
    if probe is not None:
        probe("start")
    start = time.monotonic()
    stats.measure_from = start + warmup
    stats.measure_until = until = start + warmup + duration
    if rate > 0:
        every = len(senders) / rate
        tasks = [
            asyncio.create_task(_open(f, s, window, every, start + i * every / len(senders), until))
            for i, (f, s) in enumerate(senders)
        ]
    else:
        tasks = [asyncio.create_task(_closed(f, s, window, until)) for f, s in senders]
    ticker = asyncio.create_task(_progress(label, stats, start, until, progress))
    try:
        done, _ = await asyncio.wait(tasks, timeout=warmup + duration + settle)
        for t in done:
            if t.exception() is not None:
                stats.error(f"sender failed: {t.exception()!r}")
        deadline = until + settle
        # polled across every sender's flow, bounded by the deadline
        while time.monotonic() < deadline and any(f.inflight for f, _ in senders):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        ticker.cancel()
        await asyncio.gather(*tasks, ticker, return_exceptions=True)
    if probe is not None:
        probe("end")
    missing = sum(len(f.inflight) for f, _ in senders)
    for f, _ in senders:
        f.forget_early()
    out: dict[str, object] = {
        "msgs_per_s": round(stats.completed / duration, 1),
        "offered": stats.offered,
        "sent": stats.sent,
        "completed": stats.completed_total,
        "skipped": stats.skipped,
        "missing": missing,
        "errors": stats.errors,
    }
    final = stats.lat[stats.final].summary()
    out.update({k: v for k, v in final.items() if k != "count"})
    for kind in KINDS:
        if stats.lat[kind].count:
            out.update(stats.lat[kind].summary(kind.lower() + "_"))
    if stats.error_samples:
        out["error_samples"] = stats.error_samples
    return out


async def _progress(label: str, stats: Stats, start: float, until: float, on: bool) -> None:
    if not on:
        return
    tty = sys.stderr.isatty()
    last, last_done = start, 0
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        rate = (stats.completed_total - last_done) / (now - last)
        last, last_done = now, stats.completed_total
        phase = "warm-up" if now < stats.measure_from else ("run" if now < until else "settle")
        line = (
            f"[{label}] {now - start:5.1f}s {phase:<7} sent={stats.sent} "
            f"done={stats.completed_total} {rate:,.0f}/s skipped={stats.skipped} "
            f"errors={stats.errors}"
        )
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


# -- the bare relay's client ---------------------------------------------------------------


class FramedProtocol(asyncio.Protocol):
    """The bare relay's wire on ``asyncio.Protocol``, for its servers (cli/relay.py) and its
    client: frames decoded as they arrive and handed to :meth:`on_envelope`; frames sent in one
    loop turn coalesced into one write; a bad frame closes the socket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            envs = self._decoder.feed(data)
        except FrameError:
            self.close()
            return
        for env in envs:
            self.on_envelope(env)

    def on_envelope(self, env: im_pb2.Envelope) -> None:
        raise NotImplementedError

    def send(self, env: im_pb2.Envelope) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(encode(env))

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RelayClient(FramedProtocol):
    """A user on the bare relay (cli/relay.py): GREET with its id, send chats, answer each
    chat with DELIVERED, and report receipts to its :class:`Flow`."""

    def __init__(self, user: str, flow: Flow | None) -> None:
        super().__init__()
        self.user = user
        self.flow = flow
        self._next_id = 0
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.send(im_pb2.Envelope(greet=im_pb2.Greet(token=self.user, device_id="bench")))

    def on_envelope(self, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "chat":
            c = env.chat
            self.received += 1
            ack = im_pb2.AckMsg(
                id=c.id, from_id=self.user, dest_id=c.from_id, ack_type=im_pb2.DELIVERED,
                ack_msg_id=c.id,
            )  # fmt: skip
            self.send(im_pb2.Envelope(ack=ack))
        elif kind == "ack" and self.flow is not None:
            self.flow.receipt(im_pb2.AckType.Name(env.ack.ack_type), env.ack.ack_msg_id)

    def send_chat(self, dest: str) -> int:
        self._next_id += 1
        chat = im_pb2.ChatMsg(
            id=self._next_id, from_id=self.user, dest_id=dest, dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT, body=RELAY_BODY, create_time=int(time.time() * 1000),
        )  # fmt: skip
        self.send(im_pb2.Envelope(seq=self._next_id, chat=chat))
        return self._next_id


def relay_frame_size() -> int:
    """Bytes on the wire of one relay chat frame, for the report."""
    chat = im_pb2.ChatMsg(
        id=2**41, from_id="r-s-0000", dest_id="r-r-0000", dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT, body=RELAY_BODY, create_time=int(time.time() * 1000),
    )  # fmt: skip
    return len(encode(im_pb2.Envelope(seq=2**20, chat=chat)))
