"""The ``fanout`` scenario of ``im bench``: one group, every member online, senders at a window.

What it measures: how fast the server turns one group chat into a delivery on every member's
device, and what each delivery costs it. A message is in flight from the moment its sender
offers it until the **last** receiving device has it; ``p50_ms`` / ``p99_ms`` time that, and
``deliveries_per_s`` counts device deliveries inside the measured interval.

Why the receivers are lean: at 10 000 members the load generator receives 10 000 frames per
message, and the full client library (sealed bodies opened, sync state, an event queue per
device) would make the bench, not the server, the limit. A receiver here is a real device
nonetheless: a ``common.link.Link`` (frames, link acks, heartbeats) that GREETs with its own
token, takes the group's pushes in seq order and sends coalesced DELIVERED cursors as the
library does, only less often (``cursor_every``, in the output). The senders are full
``IMClient``s: their chats are sealed with the group key and go through the library's outbox.

Rules kept from the other scenarios: users carry a prefix unique to the run; every wait is
bounded; the tables hold at most the messages in flight (plus ``EARLY_CAP`` deliveries that
beat their ``send`` call home); nothing is made up: a delivery missing after the settle time is
``missing``, a seq seen twice on one device is ``duplicates``, one below the device's top is
``disorder``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from client.core import IMClient, ServerError
from client.rest import RestClient
from common.errors import IMError
from common.link import Link, LinkConfig, open_link
from common.tokens import TokenSigner
from proto import im_pb2
from workload.benchload import limited, retried
from workload.benchstats import Latencies

PASSWORD = "bench-password-1"
TEXT = "x" * 24
TOKEN_TTL = 3600
REST_AT_ONCE = 16  # registrations are a slow hash each: more only queue in REST's pool
JOIN_AT_ONCE = 32
CONNECT_AT_ONCE = 100
CONNECT_TRIES = 3
GREET_WAIT = 30.0
CREATE_MAX = 500  # invitations one POST /groups takes (rest_web/group_routes.py)
EARLY_CAP = 100_000
DELIVERED = int(im_pb2.DELIVERED)


@dataclass
class _Flight:
    offered: float
    due: int  # receiving devices that do not have it yet
    counted: bool  # offered inside the measured interval: its latency counts
    sender: int


@dataclass
class _Tally:
    """Every sender's and every receiver's numbers for one group."""

    receivers: int
    measure_from: float = float("inf")
    measure_until: float = float("inf")
    flights: dict[int, _Flight] = field(default_factory=dict)
    # msg id -> (deliveries, the last one's time) that came before its started()
    early: dict[int, tuple[int, float]] = field(default_factory=dict)
    inflight: list[int] = field(default_factory=list)  # per sender
    room: list[asyncio.Event] = field(default_factory=list)
    lat: Latencies = field(default_factory=Latencies)
    sent: int = 0
    completed: int = 0  # flights whose last delivery fell inside the measured interval
    completed_total: int = 0
    deliveries: int = 0  # inside the measured interval
    deliveries_total: int = 0
    duplicates: int = 0
    disorder: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)

    def started(self, sender: int, msg_id: int, offered: float) -> None:
        self.sent += 1
        counted = self.measure_from <= offered < self.measure_until
        self.flights[msg_id] = _Flight(offered, self.receivers, counted, sender)
        self.inflight[sender] += 1
        n, last = self.early.pop(msg_id, (0, 0.0))
        if n:
            self._arrived(msg_id, last, n)

    def delivered(self, msg_id: int, now: float) -> None:
        self.deliveries_total += 1
        if self.measure_from <= now < self.measure_until:
            self.deliveries += 1
        if msg_id in self.flights:
            self._arrived(msg_id, now, 1)
        elif len(self.early) < EARLY_CAP:
            n, _ = self.early.get(msg_id, (0, 0.0))
            self.early[msg_id] = (n + 1, now)
        else:
            self.error("early-delivery table full")

    def _arrived(self, msg_id: int, now: float, n: int) -> None:
        f = self.flights[msg_id]
        f.due -= n
        if f.due > 0:
            return
        del self.flights[msg_id]
        self.completed_total += 1
        if self.measure_from <= now < self.measure_until:
            self.completed += 1
        if f.counted:
            self.lat.add(now - f.offered)
        self.inflight[f.sender] -= 1
        self.room[f.sender].set()


class _Receiver:
    """One member's device: counts the group's chats once each, in seq order."""

    __slots__ = ("conv_id", "cursor_sent", "error", "tally", "top", "welcome")

    def __init__(self, tally: _Tally, conv_id: str) -> None:
        self.tally = tally
        self.conv_id = conv_id
        self.top = 0
        self.cursor_sent = 0
        self.error = ""
        self.welcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "chat":
            chat = env.chat
            if chat.conv_id != self.conv_id or chat.msg_type == im_pb2.SYSTEM:
                return
            if chat.seq == self.top:
                self.tally.duplicates += 1
            elif chat.seq < self.top:
                self.tally.disorder += 1
            else:
                self.top = chat.seq
                self.tally.delivered(chat.id, time.monotonic())
        elif kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(None)
        elif kind == "error":
            self.error = f"{im_pb2.ErrorCode.Name(env.error.code)} {env.error.detail}"
            self.tally.error(self.error)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(IMError(self.error or "closed before WELCOME"))


class FanoutBench:
    """Users made once (``prepare``), then one group per size (``run``), largest last."""

    def __init__(
        self,
        rest: str,
        prefix: str,
        *,
        secret: str = "",
        connector: tuple[str, int] | None = None,
        senders: int = 2,
        window: int = 4,
        cursor_every: float = 1.0,
        progress: bool = False,
    ) -> None:
        self.rest = rest
        self.prefix = prefix
        self.signer = TokenSigner(secret.encode()) if secret else None
        self.connector = connector
        self.n_senders = senders
        self.window = window
        self.cursor_every = cursor_every
        self.progress = progress
        self.names: list[str] = []
        self.tokens: dict[str, str] = {}
        self.senders: list[IMClient] = []
        self.setup_s = 0.0

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[fanout] {text}", file=sys.stderr, flush=True)

    async def prepare(self, members: int) -> None:
        """Register ``members`` users (the first ``senders`` log in as full clients)."""
        t0 = time.monotonic()
        self.names = [f"{self.prefix}-m{i:05d}" for i in range(members)]
        self.senders = [
            IMClient(self.rest, n, PASSWORD, device_id="fan-send", connector=self.connector)
            for n in self.names[: self.n_senders]
        ]
        rest = RestClient(self.rest, timeout=60.0)
        done = 0

        async def register(i: int) -> None:
            nonlocal done
            name = self.names[i]
            await rest.register(name, PASSWORD)
            if i >= self.n_senders:
                self.tokens[name] = await self._token(rest, name)
            done += 1
            if done % 1000 == 0:
                self.say(f"{done} of {members} users")

        try:
            await limited(REST_AT_ONCE, members, register)
        finally:
            await rest.close()
        for c in self.senders:
            await c.login()
        self.setup_s = time.monotonic() - t0

    async def _token(self, rest: RestClient, name: str) -> str:
        if self.signer is not None:
            return self.signer.issue(name, TOKEN_TTL, device_id="fan")
        return (await rest.login(name, PASSWORD, "fan")).token

    async def _make_group(self, size: int) -> tuple[str, str]:
        owner = self.senders[0]
        others = self.names[1:size]
        info = await owner.rest.groups.create(f"{self.prefix} fanout {size}", others[:CREATE_MAX])
        sem = asyncio.Semaphore(JOIN_AT_ONCE)

        async def invite(name: str) -> None:
            async with sem:
                await owner.rest.groups.invite(info.group_id, name)

        await asyncio.gather(*(invite(n) for n in others[CREATE_MAX:]))
        for c in self.senders[1:size]:
            await c.rest.groups.join(info.group_id, c.user_id)

        todo = iter([n for n in others if n in self.tokens])

        async def joiner() -> None:  # one REST client each, its token set per call
            r = RestClient(self.rest, timeout=60.0)
            try:
                for name in todo:
                    r.token = self.tokens[name]
                    await r.groups.join(info.group_id, name)
            finally:
                await r.close()

        await asyncio.gather(*(joiner() for _ in range(JOIN_AT_ONCE)))
        return info.group_id, info.conv_id

    async def run(
        self,
        size: int,
        *,
        warmup: float,
        duration: float,
        settle: float,
        probe: Callable[[str], object] | None = None,
    ) -> dict[str, object]:
        senders = self.senders[: min(self.n_senders, size - 1)]
        t0 = time.monotonic()
        group_id, conv_id = await self._make_group(size)
        receivers_names = [n for n in self.names[:size] if n in self.tokens]
        tally = _Tally(receivers=len(receivers_names))
        tally.inflight = [0] * len(senders)
        tally.room = [asyncio.Event() for _ in senders]
        links: list[tuple[Link, _Receiver]] = []
        runs: list[asyncio.Task[None]] = []
        tasks: list[asyncio.Task[None]] = []
        result: dict[str, object] = {"scenario": "fanout", "group_size": size}
        try:
            await self._connect(receivers_names, conv_id, tally, links, runs)
            tally.receivers = len(links)  # a flight ends at the last device that is online
            for c in senders:
                await c.connect()
            tasks = [asyncio.create_task(self._drain(c, tally)) for c in senders]
            tasks.append(asyncio.create_task(self._cursors(links, conv_id)))
            setup_s = time.monotonic() - t0
            self.say(f"size {size}: {len(links)} devices online after {setup_s:.1f} s")
            start = time.monotonic()
            tally.measure_from = start + warmup
            tally.measure_until = tally.measure_from + duration
            loops = [
                asyncio.create_task(self._send(i, c, group_id, tally))
                for i, c in enumerate(senders)
            ]
            await asyncio.sleep(warmup)
            if probe is not None:
                probe("start")
            await asyncio.sleep(duration)
            if probe is not None:
                probe("end")
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            deadline = time.monotonic() + settle
            while tally.flights and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polled: many receivers end a flight, bounded wait
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for link, _ in links:
                link.close()
            await asyncio.gather(*runs, return_exceptions=True)
            await asyncio.gather(*(c.disconnect() for c in senders), return_exceptions=True)
        missing = sum(f.due for f in tally.flights.values())
        result.update(
            {
                "receivers": tally.receivers,
                "online": len(links),
                "messages": tally.sent,
                "completed": tally.completed,
                "msgs_per_s": round(tally.completed / duration, 1),
                "deliveries": tally.deliveries,
                "deliveries_per_s": round(tally.deliveries / duration, 1),
                **tally.lat.summary(),
                "missing": missing,
                "duplicates": tally.duplicates,
                "disorder": tally.disorder,
                "errors": tally.errors,
                "setup_s": round(setup_s, 1),  # this size's group, joins and connections
                "users_setup_s": round(self.setup_s, 1),  # every member registered, once
            }
        )
        if tally.error_samples:
            result["error_samples"] = tally.error_samples
        result["config"] = {
            "group_size": size,
            "senders": len(senders),
            "window": self.window,
            "cursor_every_s": self.cursor_every or None,
            "warmup_s": warmup,
            "duration_s": duration,
            "receivers": "lean Links, one device per member; senders are IMClients",
            "tokens": "minted with the target's secret" if self.signer else "REST login",
        }
        return result

    async def _connect(
        self,
        names: list[str],
        conv_id: str,
        tally: _Tally,
        links: list[tuple[Link, _Receiver]],
        runs: list[asyncio.Task[None]],
    ) -> None:
        login = self.senders[0]._login
        assert login is not None
        addrs = [self.connector] if self.connector else (login.connectors or [login.connector])
        config = LinkConfig(heartbeat=15.0, idle_timeout=60.0)

        async def attempt(i: int) -> str:
            """'' once WELCOMEd, else why not."""
            host, port = addrs[i % len(addrs)]
            handler = _Receiver(tally, conv_id)
            try:
                link = await open_link(host, port, handler, config, name=f"fan-{i}")
            except (OSError, TimeoutError) as exc:
                return f"connect: {exc}"
            run = asyncio.create_task(link.run())
            greet = im_pb2.Greet(token=self.tokens[names[i]], device_id="fan")
            link.send_control(im_pb2.Envelope(greet=greet))
            try:
                async with asyncio.timeout(GREET_WAIT):
                    await handler.welcome
            except (IMError, TimeoutError) as exc:
                link.close()
                await asyncio.gather(run, return_exceptions=True)
                return f"greet: {exc or 'timeout'}"
            runs.append(run)
            links.append((link, handler))
            return ""

        async def connect(i: int) -> None:
            """As a device does: a refused or timed-out connection is tried again, twice."""
            why = await retried(lambda: attempt(i), CONNECT_TRIES)
            if why:
                tally.error(why)

        await limited(CONNECT_AT_ONCE, len(names), connect)

    async def _send(self, i: int, c: IMClient, group_id: str, tally: _Tally) -> None:
        """Closed loop: ``window`` messages in flight, each until its last delivery."""
        while True:
            while tally.inflight[i] >= self.window:
                tally.room[i].clear()
                await tally.room[i].wait()
            at = time.monotonic()
            tally.started(i, await c.send_group_text(group_id, TEXT), at)

    async def _drain(self, c: IMClient, tally: _Tally) -> None:
        """A sender's own events (SENT, the other senders' chats): read, errors counted."""
        async for ev in c.events():
            if isinstance(ev, ServerError):
                tally.error(f"{c.user_id}: {ev.code} {ev.detail}")

    async def _cursors(self, links: list[tuple[Link, _Receiver]], conv_id: str) -> None:
        """Each receiver's DELIVERED cursor, at most every ``cursor_every`` seconds."""
        if self.cursor_every <= 0:
            return
        while True:
            await asyncio.sleep(self.cursor_every)
            for link, r in links:
                if r.top > r.cursor_sent and not link.closing:
                    r.cursor_sent = r.top
                    cur = im_pb2.Cursor(conv_id=conv_id, type=im_pb2.DELIVERED, seq=r.top)
                    with contextlib.suppress(IMError):  # closing: its run task ends it
                        await link.send(im_pb2.Envelope(cursor=cur))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.senders), return_exceptions=True)
