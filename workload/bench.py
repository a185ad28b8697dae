"""The scenarios of ``im bench``, driven through the client library against a running target.

Each scenario returns one JSON-ready dict with ``scenario`` and its exact configuration; the
process-level numbers (CPU, RSS of the server processes) are added by the caller, which knows
the PIDs (cli/bench.py). Rules:
- the load is the real client: ``IMClient`` (sealing, outbox, dedupe, receipts) for chats, and
  ``common.link.Link`` with a real GREET for idle connections; ``online --client lean`` and
  ``durable`` use the lean devices of workload/benchlean.py (the protocol without the
  library's conveniences, which would cost the bench more CPU than the servers spend);
- users are named ``{prefix}-...`` with a prefix unique to the run, so a run never meets the
  timelines or sessions of an earlier one on a shared target;
- a scenario that cannot be measured says so (``skipped`` with a reason): no number is made up;
- every wait is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from client.core import IMClient, Message, Receipt, ServerError, befriend
from common.errors import IMError
from common.link import Link, LinkConfig, open_link
from common.tokens import TokenSigner
from proto import im_pb2
from workload.benchload import Flow, Probe, SendFn, Stats, drive

PASSWORD = "bench-password-1"
TEXT = "x" * 24  # sealed (nonce + tag) this makes a chat frame of about 100 bytes
AT_ONCE = 16  # concurrent REST calls while setting up users (logins are a slow hash each)
DEVICES_PER_USER = 8  # the connector's default max_devices: idle connections share users
IDLE_TOKEN_TTL = 3600


@dataclass(frozen=True)
class Target:
    """Where the scenarios send: a REST URL, and what the caller knows besides."""

    rest: str
    secret: str = ""  # the token secret, to mint idle connections' tokens without a login each
    connector: tuple[str, int] | None = None  # pin every connection to this connector


async def _gather_limited(n: int, make: Callable[[int], object]) -> None:
    sem = asyncio.Semaphore(AT_ONCE)

    async def one(i: int) -> None:
        async with sem:
            await make(i)  # type: ignore[misc]

    await asyncio.gather(*(one(i) for i in range(n)))


async def _users(
    target: Target, names: list[str], friends_with: list[str], peers: Sequence[IMClient] = ()
) -> list[IMClient]:
    """Register and log in ``names``; each befriends the user at the same index of
    ``friends_with`` (empty string: nobody), who is one of these or of ``peers`` and accepts."""
    clients = [
        IMClient(target.rest, n, PASSWORD, device_id="bench", connector=target.connector)
        for n in names
    ]

    async def setup(i: int) -> None:
        await clients[i].register()
        await clients[i].login()

    async def pair(i: int) -> None:
        c = clients[i]
        if friends_with[i] and friends_with[i] not in c.friends:
            await befriend(c, by_name[friends_with[i]])

    await _gather_limited(len(clients), setup)
    by_name = {c.user_id: c for c in [*peers, *clients]}
    await _gather_limited(len(clients), pair)
    return clients


async def _consume(c: IMClient, flows: dict[str, Flow], stats: Stats, read: bool) -> None:
    """Feed one client's receipts to its flow; answer chats with READ when asked."""
    flow = flows.get(c.user_id)
    async for ev in c.events():
        if isinstance(ev, Receipt):
            if flow is not None:
                flow.receipt(ev.kind, ev.msg_id)
        elif isinstance(ev, Message):
            if read:
                await c.send_read(ev)
        elif isinstance(ev, ServerError):
            stats.error(f"{c.user_id}: {ev.code} {ev.detail}")


async def _close_all(clients: list[IMClient], tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def online(
    target: Target,
    prefix: str,
    *,
    pairs: int,
    window: int,
    rate: float,
    read: bool,
    warmup: float,
    duration: float,
    progress: bool,
    probe: Probe | None = None,
) -> dict[str, object]:
    """``pairs`` senders each chatting with their own receiver, both online."""
    senders = [f"{prefix}-s{i:05d}" for i in range(pairs)]
    receivers = [f"{prefix}-r{i:05d}" for i in range(pairs)]
    clients = await _users(target, senders + receivers, receivers + [""] * pairs)
    for c in clients[pairs:]:
        await c.refresh_friends()
    required = {"SENT", "DELIVERED", "READ"} if read else {"SENT", "DELIVERED"}
    stats = Stats(final="DELIVERED", required=frozenset(required))
    flows = {n: Flow(stats) for n in senders}
    tasks: list[asyncio.Task[None]] = []
    try:
        await _gather_limited(len(clients), lambda i: clients[i].connect())
        tasks = [asyncio.create_task(_consume(c, flows, stats, read)) for c in clients]

        def sender(c: IMClient, dest: str) -> SendFn:
            return lambda: c.send_text(dest, TEXT)

        load = [(flows[c.user_id], sender(c, d)) for c, d in zip(clients, receivers, strict=False)]
        result = await drive(
            load,
            window=window,
            rate=rate,
            warmup=warmup,
            duration=duration,
            settle=max(10.0, 2 * warmup),
            label="online",
            progress=progress,
            probe=probe,
        )
    finally:
        await _close_all(clients, tasks)
    config = {"pairs": pairs, "window": window, "rate": rate or None, "read": read,
              "client": "library"}  # fmt: skip
    mode = "open" if rate > 0 else "closed"
    return {"scenario": "online", "mode": mode, **result, "config": config}


class _Idle:
    """A LinkHandler that only waits for WELCOME; the Link itself sends the heartbeats."""

    def __init__(self) -> None:
        self.welcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error = ""

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(None)
        elif kind == "error":
            self.error = f"{im_pb2.ErrorCode.Name(env.error.code)} {env.error.detail}"

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(IMError(self.error or "closed before WELCOME"))


async def idle(
    target: Target,
    prefix: str,
    *,
    connections: int,
    hold: float,
    heartbeat: float,
    ready: Callable[[], object],
    measure: Callable[[], object],
    progress: bool,
) -> dict[str, object]:
    """``connections`` authenticated links, idle but for heartbeats, held for ``hold`` s.

    ``ready`` is called once the users exist and just before the first connection, ``measure``
    when all are up and have idled for ``hold`` s: the caller samples the servers' RSS then."""
    users = max(1, -(-connections // DEVICES_PER_USER))
    names = [f"{prefix}-i{i:05d}" for i in range(users)]
    clients = await _users(target, names, [""] * users)
    signer = TokenSigner(target.secret.encode()) if target.secret else None
    tokens: list[tuple[str, str, tuple[str, int]]] = []
    for k in range(connections):
        c = clients[k % users]
        device = f"idle-{k // users}"
        assert c._login is not None
        addrs = c._login.connectors or [c._login.connector]
        addr = target.connector or addrs[k % len(addrs)]
        if signer is not None:
            token = signer.issue(c.user_id, IDLE_TOKEN_TTL, device_id=device)
        else:
            token = (await c.rest.login(c.user_id, PASSWORD, device)).token
        tokens.append((token, device, addr))
    await asyncio.gather(*(c.rest.close() for c in clients))
    config = LinkConfig(heartbeat=heartbeat, idle_timeout=max(60.0, 4 * heartbeat))
    links: list[Link] = []
    runs: list[asyncio.Task[None]] = []
    failed: list[str] = []
    await asyncio.sleep(hold)  # let the logins' memory settle before the baseline
    ready()
    started = time.monotonic()

    async def connect(i: int) -> None:
        token, device, (host, port) = tokens[i]
        handler = _Idle()
        try:
            link = await open_link(host, port, handler, config, name=f"idle-{i}")
        except (OSError, TimeoutError) as exc:
            failed.append(f"connect: {exc}")
            return
        links.append(link)
        runs.append(asyncio.create_task(link.run()))
        link.send_control(im_pb2.Envelope(greet=im_pb2.Greet(token=token, device_id=device)))
        try:
            async with asyncio.timeout(30):
                await handler.welcome
        except (IMError, TimeoutError) as exc:
            failed.append(f"greet: {exc or 'timeout'}")
        if progress and len(links) % 1000 == 0:
            print(f"[idle] {len(links)} connected", file=sys.stderr, flush=True)

    try:
        await _gather_limited_wide(connections, connect)
        up_s = time.monotonic() - started
        await asyncio.sleep(hold)
        alive = sum(1 for link in links if not link.closing)
        measured = measure()
    finally:
        for link in links:
            link.close()
        await asyncio.gather(*runs, return_exceptions=True)
    return {
        "scenario": "idle",
        "connections": connections,
        "alive": alive,
        "failed": len(failed),
        "failed_samples": failed[:5],
        "connect_s": round(up_s, 2),
        "measured": measured,
        "missing": connections - alive,
        "config": {
            "connections": connections,
            "users": users,
            "hold_s": hold,
            "heartbeat_s": heartbeat,
            "tokens": "minted with the target's secret" if signer else "REST login per device",
        },
    }


async def _gather_limited_wide(n: int, make: Callable[[int], object], width: int = 200) -> None:
    """Like :func:`_gather_limited`, wider: a TCP connect and GREET are cheap, unlike logins."""
    sem = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with sem:
            await make(i)  # type: ignore[misc]

    await asyncio.gather(*(one(i) for i in range(n)))


async def offline(
    target: Target,
    prefix: str,
    *,
    messages: int,
    senders: int,
    window: int,
    timeout: float,
    progress: bool,
    probe: Probe | None = None,
) -> dict[str, object]:
    """Catch-up: a device ``messages`` behind connects and catches up.

    The receiving device is online once (so it greets with the ``since`` of a device that has
    been here before, as a phone back from a flight does), then goes away while ``senders``
    online users send it ``messages`` chats; once all are SENT (committed to their timelines)
    it connects again and Syncs them. ``catchup_seconds`` runs from its connect to the last
    of them surfaced, in seq order, each once (``catchup_messages``)."""
    receiver = f"{prefix}-off"
    names = [f"{prefix}-o{i:05d}" for i in range(senders)]
    (dest,) = await _users(target, [receiver], [""])
    clients = await _users(target, names, [receiver] * senders, peers=[dest])
    await dest.refresh_friends()
    stats = Stats(final="SENT")
    flows = {n: Flow(stats) for n in names}
    tasks: list[asyncio.Task[None]] = []
    result: dict[str, object] = {"scenario": "offline"}
    try:
        await dest.connect()
        await dest.disconnect()  # away: what follows waits in the timelines
        await _gather_limited(senders, lambda i: clients[i].connect())
        tasks = [asyncio.create_task(_consume(c, flows, stats, False)) for c in clients]
        per = [messages // senders + (1 if i < messages % senders else 0) for i in range(senders)]
        if probe is not None:
            probe("start")
        started = time.monotonic()
        stats.measure_from = started

        async def send_all(i: int) -> None:
            c, flow = clients[i], flows[names[i]]
            for _ in range(per[i]):
                while len(flow.inflight) >= window:
                    flow.room.clear()
                    await flow.room.wait()
                at = time.monotonic()
                flow.started(await c.send_text(receiver, TEXT), at)

        async with asyncio.timeout(timeout):
            await asyncio.gather(*(send_all(i) for i in range(senders)))
            # polled: many flows add to one counter, and the timeout bounds the wait
            while stats.completed_total < messages:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        all_sent = time.monotonic() - started
        result["sent_per_s"] = round(messages / all_sent, 1)
        result.update(stats.lat["SENT"].summary("sent_"))
        got, disorder, seconds = await _catch_up(dest, set(names), messages, timeout, stats)
        if probe is not None:
            probe("end")
        result["catchup_messages"] = got
        result["catchup_seconds"] = round(seconds, 3)
        result["catchup_per_s"] = round(got / seconds, 1) if seconds > 0 else None
        result["catchup_disorder"] = disorder
        if got < messages:
            stats.error(f"caught up {got} of {messages} in {seconds:.1f}s")
        if disorder:
            stats.error(f"{disorder} messages surfaced below a seq already surfaced")
    except TimeoutError:
        stats.error(f"timed out after {timeout:g}s")
        result.setdefault("catchup_seconds", None)
        result.setdefault("catchup_messages", 0)
    finally:
        await _close_all([*clients, dest], tasks)
    caught = result.get("catchup_messages")
    result["missing"] = messages - caught if isinstance(caught, int) else messages
    result["errors"] = stats.errors
    if stats.error_samples:
        result["error_samples"] = stats.error_samples
    result["config"] = {"messages": messages, "senders": senders, "window": window}
    return result


async def _catch_up(
    dest: IMClient, senders: set[str], messages: int, timeout: float, stats: Stats
) -> tuple[int, int, float]:
    """Connect ``dest`` and read until ``messages`` chats of ``senders`` surfaced: how many
    did (each place once), how many came below a seq already seen, and the seconds taken."""
    places: set[tuple[str, int]] = set()
    top: dict[str, int] = {}
    disorder = 0
    t0 = time.monotonic()
    await dest.connect()
    deadline = t0 + timeout
    while len(places) < messages and time.monotonic() < deadline:
        try:
            ev = await dest.next_event(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        if isinstance(ev, Message) and ev.from_id in senders:
            if ev.seq < top.get(ev.conv_id, 0):
                disorder += 1
            top[ev.conv_id] = max(ev.seq, top.get(ev.conv_id, 0))
            places.add((ev.conv_id, ev.seq))
        elif isinstance(ev, ServerError):
            stats.error(f"{dest.user_id}: {ev.code} {ev.detail}")
    return len(places), disorder, time.monotonic() - t0
