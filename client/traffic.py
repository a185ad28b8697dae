"""Users that chat without pause, and a ledger of what every side saw: the chaos checker's half
that knows nothing of processes (``im chaos`` kills and restarts them; see cli/chaos.py).

Each user sends to random friends at a steady rate through the client library, goes offline now
and then (its outbox keeps what it sends meanwhile) and comes back, answers every message with
READ, and writes down each send, each surfaced message and each surfaced receipt. After the run
:func:`check` compares the three (DESIGN §5):

- ``acked``: messages whose sender surfaced SENT; ``not_acked`` ones are the sender's to resend
  and are reported apart, never as lost;
- ``lost``: acked, never surfaced by the recipient (G1);
- ``duplicates``: surfaced twice, messages or receipts (G2, G4);
- ``out_of_order``: surfaced after a message its sender sent later, per conversation (G3);
- ``receipts_missing``: a surfaced message whose sender lacks its SENT, DELIVERED or READ (G4).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from client.core import IMClient, Message, Receipt, ServerError, befriend
from common.errors import IMError

PASSWORD = "chaos-password-1"
KINDS = ("SENT", "DELIVERED", "READ")
# Up to this many users everyone befriends everyone; above it, a ring of neighbours.
FULL_MESH_MAX = 16
RING_NEIGHBOURS = 6


def friends_of(i: int, n: int) -> list[int]:
    if n <= FULL_MESH_MAX:
        return [j for j in range(n) if j != i]
    ks = range(1, RING_NEIGHBOURS // 2 + 1)
    return sorted({(i + k) % n for k in ks} | {(i - k) % n for k in ks})


@dataclass
class Ledger:
    """What every side recorded. Keys: (sender, message id); message ids are per sender."""

    sent: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)  # -> (dest, n)
    surfaced: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    receipts: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (kind, who, id)
    errors: Counter[str] = field(default_factory=Counter)
    bogus_receipts: int = 0

    def record_send(self, sender: str, dest: str, msg_id: int) -> None:
        self.sent[(sender, msg_id)] = (dest, len(self.sent))

    def acked(self) -> set[tuple[str, int]]:
        return {(who, mid) for (kind, who, mid) in self.receipts if kind == "SENT"}


@dataclass
class Users:
    """The chatting population: clients, their tasks, their on/off state."""

    rest: str
    names: list[str]
    ledger: Ledger = field(default_factory=Ledger)
    clients: dict[str, IMClient] = field(default_factory=dict)
    offline: set[str] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sending: bool = True
    went_offline: int = 0

    @classmethod
    def named(cls, rest: str, prefix: str, n: int) -> Users:
        return cls(rest, [f"{prefix}-{i:03d}" for i in range(n)])

    async def setup(self) -> None:
        """Register, befriend, connect everyone; then start the readers."""
        sem = asyncio.Semaphore(8)
        for name in self.names:
            self.clients[name] = IMClient(self.rest, name, PASSWORD, device_id="chaos")

        async def register(c: IMClient) -> None:
            async with sem:
                await _retry(c.register)
                await _retry(c.login)

        await asyncio.gather(*(register(c) for c in self.clients.values()))
        n = len(self.names)
        for i, name in enumerate(self.names):
            c = self.clients[name]
            for j in friends_of(i, n):
                if j > i:
                    other = self.clients[self.names[j]]
                    await _retry(functools.partial(befriend, c, other))  # idempotent
        await asyncio.gather(*(_retry(c.refresh_friends) for c in self.clients.values()))

        async def connect(c: IMClient) -> None:
            async with sem:
                await _retry(c.connect, attempts=20)

        await asyncio.gather(*(connect(c) for c in self.clients.values()))
        for c in self.clients.values():
            self.tasks.append(asyncio.create_task(self._read(c), name=f"read {c.user_id}"))

    # -- the workload ------------------------------------------------------------------------

    def start(self, rate: float, flap_every: float, rng: random.Random) -> None:
        """``rate`` messages per second in all; a user goes offline every ``flap_every`` s."""
        per_user = rate / max(1, len(self.names))
        for name in self.names:
            seed = rng.getrandbits(32)
            self.tasks.append(asyncio.create_task(self._send(name, per_user, seed)))
        if flap_every > 0:
            self.tasks.append(asyncio.create_task(self._flap(flap_every, rng.getrandbits(32))))

    async def _send(self, name: str, rate: float, seed: int) -> None:
        rng = random.Random(seed)
        c = self.clients[name]
        friends = [self.names[j] for j in friends_of(self.names.index(name), len(self.names))]
        k = 0
        while self.sending:
            await asyncio.sleep(rng.expovariate(rate))
            if not self.sending:
                return
            dest = rng.choice(friends)
            k += 1
            msg_id = await c.send_text(dest, f"{name} #{k}")
            self.ledger.record_send(name, dest, msg_id)

    async def _flap(self, every: float, seed: int) -> None:
        """Now and then a user goes offline for a few seconds (at most a quarter at once)."""
        rng = random.Random(seed)
        limit = max(1, len(self.names) // 4)
        while self.sending:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * every)
            if not self.sending or len(self.offline) >= limit:
                continue
            name = rng.choice([n for n in self.names if n not in self.offline])
            self.offline.add(name)
            self.went_offline += 1
            self.tasks.append(asyncio.create_task(self._away(name, rng.uniform(1.0, 6.0))))

    async def _away(self, name: str, seconds: float) -> None:
        c = self.clients[name]
        await c.disconnect()
        await asyncio.sleep(seconds)
        await self.come_back(name)

    async def come_back(self, name: str) -> None:
        if name not in self.offline:
            return
        await _retry(self.clients[name].connect, attempts=60)
        self.offline.discard(name)

    async def _read(self, c: IMClient) -> None:
        led = self.ledger
        me = c.user_id
        async for ev in c.events():
            if isinstance(ev, Message):
                led.surfaced[me].append((ev.from_id, ev.msg_id))
                with contextlib.suppress(IMError):
                    await c.send_read(ev)
            elif isinstance(ev, Receipt):
                if (me, ev.msg_id) not in led.sent:
                    led.bogus_receipts += 1
                led.receipts[(ev.kind, me, ev.msg_id)] += 1
            elif isinstance(ev, ServerError):
                led.errors[ev.code] += 1

    # -- the end -----------------------------------------------------------------------------

    async def everyone_online(self) -> None:
        self.sending = False
        while self.offline:
            await asyncio.gather(*(self.come_back(n) for n in list(self.offline)))

    def settled(self) -> bool:
        """Every outbox empty, every acked message surfaced, every receipt in."""
        if any(c.pending for c in self.clients.values()):
            return False
        report = check(self.ledger)
        return report["lost"] == 0 and report["receipts_missing"] == 0

    async def quiesce(self, timeout: float, progress: Callable[[str], None]) -> bool:
        deadline = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < deadline:
            if self.settled():
                return True
            now = time.monotonic()
            if now - last > 5:
                last = now
                r = check(self.ledger)
                pending = sum(c.pending for c in self.clients.values())
                progress(
                    f"quiescing: {pending} in outboxes, {r['lost']} acked not yet surfaced,"
                    f" {r['receipts_missing']} receipts missing"
                )
            await asyncio.sleep(0.25)
        return self.settled()

    def client_stats(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for c in self.clients.values():
            out["reconnects"] += c.reconnects
            out["resent"] += c.resent
            out["duplicates_dropped_by_client"] += c.duplicates_dropped
            for k, v in c.order_stats.items():
                out[k] += v
        return dict(out)

    async def close(self) -> None:
        self.sending = False
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)


def check(led: Ledger) -> dict[str, int]:
    """Compare sends, surfaced messages and receipts (see the module docstring)."""
    acked = led.acked()
    seen: Counter[tuple[str, int]] = Counter()
    out_of_order = 0
    for receiver, items in led.surfaced.items():
        newest: dict[str, int] = {}  # sender -> highest send index surfaced so far
        for sender, msg_id in items:
            seen[(sender, msg_id)] += 1
            if seen[(sender, msg_id)] > 1:
                continue
            sent = led.sent.get((sender, msg_id))
            if sent is None or sent[0] != receiver:
                continue
            n = sent[1]
            if n < newest.get(sender, -1):
                out_of_order += 1
            newest[sender] = max(n, newest.get(sender, -1))
    delivered = {key for key in seen if key in led.sent}
    missing = 0
    for sender, msg_id in delivered:
        missing += sum(1 for kind in KINDS if led.receipts[(kind, sender, msg_id)] == 0)
    return {
        "sent": len(led.sent),
        "acked": len(acked),
        "not_acked": len(set(led.sent) - acked),
        "delivered": len(delivered),
        "lost": len(acked - set(seen)),
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "out_of_order": out_of_order,
        "receipts_missing": missing,
        "receipts_duplicated": sum(n - 1 for n in led.receipts.values() if n > 1),
        "stray": sum(1 for key in seen if key not in led.sent) + led.bogus_receipts,
    }


async def _retry(call: Callable[[], object], attempts: int = 10, delay: float = 0.2) -> object:
    """REST and connectors come and go under chaos: try again with back-off."""
    for attempt in range(attempts):
        try:
            result = call()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except (IMError, OSError, TimeoutError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")
