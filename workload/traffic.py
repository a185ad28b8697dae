"""Users that chat without pause on D devices each, and a ledger of what every device saw: the
chaos checker's half that knows nothing of processes (``im chaos`` kills and restarts them;
see cli/chaos.py).

Each user sends to random friends at a steady rate from a random device of theirs; devices go
offline now and then and come back as the same object (workload/fleet.py); every device marks
read what it shows, and writes down each surfaced message and receipt in its DeviceLog. After
the run :func:`check` compares sends, surfaced messages and receipts (DESIGN §5):

- ``acked``: messages whose sender surfaced SENT; ``not_acked`` ones are the sender's to resend
  and are reported apart, never as lost;
- ``lost``: acked, never surfaced by any device of the recipient (G1);
- ``duplicates``: a message surfaced twice by one device, or a receipt twice (G2, G4);
- ``out_of_order`` (also ``disorder``): a device surfaced a chat below a seq it had already
  shown in that conversation (G3: the timeline's order is the order);
- ``receipts_missing``: a surfaced message whose sender lacks its SENT, DELIVERED or READ (G4);

and :func:`check_all` adds the per-device verdicts of workload/devices.py: ``device_missing``,
``device_duplicates``, ``device_order_mismatch``, ``read_cursor_divergent``.

Those are the 1-1 verdicts, over pair conversations only. With groups (``Users.named(...,
groups=G, group_size=S)``) a share of the rate goes to group chats and a member leaves and
another joins in each group mid-run (workload/chaosgroups.py); their verdicts are the
``group_*`` keys of :func:`check_all`. ``sender_disorder`` and ``read_cursor_divergent`` look
at both kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from client.core import IMClient, befriend
from client.events import Message, Receipt, ServerError
from common.errors import IMError
from workload.chaosgroups import ChaosGroups, GroupLedger, group_report, group_settled, is_group
from workload.devices import (
    DeviceLog,
    check_devices,
    committed,
    disorder,
    read_divergent,
    sender_disorder,
)
from workload.fleet import Flapper, Fleet, read_cursors, record

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
    logs: dict[tuple[str, str], DeviceLog] = field(default_factory=dict)  # (user, device)
    receipts: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (kind, who, id)
    errors: Counter[str] = field(default_factory=Counter)
    bogus_receipts: int = 0
    devices: int = 1  # per user
    group: GroupLedger = field(default_factory=GroupLedger)

    def record_send(self, sender: str, dest: str, msg_id: int) -> None:
        self.sent[(sender, msg_id)] = (dest, len(self.sent))

    def log(self, user: str, device: str) -> DeviceLog:
        key = (user, device)
        if key not in self.logs:
            self.logs[key] = DeviceLog(user, device)
        return self.logs[key]

    def acked(self) -> set[tuple[str, int]]:
        return {(who, mid) for (kind, who, mid) in self.receipts if kind == "SENT"}


@dataclass
class Users:
    """The chatting population: a fleet of devices, their tasks, the flapper."""

    rest: str
    names: list[str]
    devices: int = 1
    ledger: Ledger = field(default_factory=Ledger)
    fleet: Fleet[IMClient] | None = None
    flapper: Flapper[IMClient] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sending: bool = True
    group_count: int = 0
    group_size: int = 0
    group_share: float = 0.25  # of the rate, when there are groups
    groups: ChaosGroups | None = None

    @classmethod
    def named(
        cls,
        rest: str,
        prefix: str,
        n: int,
        devices: int = 1,
        *,
        groups: int = 0,
        group_size: int = 0,
        group_share: float = 0.25,
    ) -> Users:
        users = cls(rest, [f"{prefix}-{i:03d}" for i in range(n)], devices)
        users.ledger.devices = devices
        users.group_count, users.group_size, users.group_share = groups, group_size, group_share
        return users

    @property
    def went_offline(self) -> int:
        return self.flapper.flaps if self.flapper is not None else 0

    @property
    def offline(self) -> set[int]:
        return self.flapper.offline if self.flapper is not None else set()

    def all(self) -> list[IMClient]:
        return [] if self.fleet is None else list(self.fleet.all())

    async def setup(self, rng: random.Random | None = None) -> None:
        """Register, befriend, connect every device; start the readers; make the groups."""
        sem = asyncio.Semaphore(8)

        def make(user: str, device: str) -> IMClient:
            return IMClient(self.rest, user, PASSWORD, device_id=device)

        fleet = self.fleet = Fleet(self.names, self.devices, make, tag="chaos")

        async def register(name: str) -> None:
            async with sem:
                await _retry(fleet.primary(name).register)

        async def login(c: IMClient) -> None:
            async with sem:
                await _retry(c.login)

        await asyncio.gather(*(register(n) for n in self.names))
        await asyncio.gather(*(login(c) for c in fleet.all()))
        n = len(self.names)
        for i, name in enumerate(self.names):
            c = fleet.primary(name)
            for j in friends_of(i, n):
                if j > i:
                    other = fleet.primary(self.names[j])
                    await _retry(functools.partial(befriend, c, other))  # idempotent
        await asyncio.gather(*(_retry(c.refresh_friends) for c in fleet.all()))

        async def connect(c: IMClient) -> None:
            async with sem:
                await _retry(c.connect, attempts=20)

        await asyncio.gather(*(connect(c) for c in fleet.all()))
        for c in fleet.all():
            name = f"read {c.user_id}/{c.device_id}"
            self.tasks.append(asyncio.create_task(self._read(c), name=name))
        self.groups = ChaosGroups(fleet, self.ledger.group, _reconnect)
        if self.group_count:
            grng = rng or random.Random(len(self.names))
            prefix = self.names[0].rsplit("-", 1)[0]
            await self.groups.setup(self.names, self.group_count, self.group_size, grng, prefix)

    # -- the workload ------------------------------------------------------------------------

    def start(
        self, rate: float, flap_every: float, rng: random.Random, seconds: float = 0.0
    ) -> None:
        """``rate`` messages per second in all (a share of it to the groups); a device goes
        offline every ``flap_every`` s; the groups' membership changes within ``seconds``."""
        share = self.group_share if self.groups is not None and self.groups.groups else 0.0
        per_user = rate * (1 - share) / max(1, len(self.names))
        for name in self.names:
            seed = rng.getrandbits(32)
            self.tasks.append(asyncio.create_task(self._send(name, per_user, seed)))
        if flap_every > 0:
            pool = self.all()
            self.flapper = Flapper(
                pool,
                max_offline=max(1, len(pool) // 4),
                every=flap_every,
                away=(1.0, 6.0),
                reconnect=_reconnect,
            )
            self.flapper.start(random.Random(rng.getrandbits(32)))
        if self.groups is not None:
            self.groups.start(
                rate * share, seconds, random.Random(rng.getrandbits(32)), self.flapper
            )

    async def _send(self, name: str, rate: float, seed: int) -> None:
        rng = random.Random(seed)
        assert self.fleet is not None
        devs = self.fleet.clients[name]
        friends = [self.names[j] for j in friends_of(self.names.index(name), len(self.names))]
        k = 0
        while self.sending:
            await asyncio.sleep(rng.expovariate(rate))
            if not self.sending:
                return
            dest = rng.choice(friends)
            k += 1
            msg_id = await rng.choice(devs).send_text(dest, f"{name} #{k}")
            self.ledger.record_send(name, dest, msg_id)

    async def _read(self, c: IMClient) -> None:
        led = self.ledger
        me = c.user_id
        log = led.log(me, c.device_id)
        async for ev in c.events():
            record(log, ev)
            if isinstance(ev, Message):
                if ev.conv_id and ev.seq:
                    with contextlib.suppress(IMError):
                        await c.mark_read(ev.conv_id, ev.seq)
            elif isinstance(ev, Receipt) and is_group(ev.conv_id):
                led.group.receipt(me, ev)  # judged once the run is over: a SENT may come first
            elif isinstance(ev, Receipt):
                if (me, ev.msg_id) not in led.sent:
                    led.bogus_receipts += 1
                led.receipts[(ev.kind, me, ev.msg_id)] += 1
            elif isinstance(ev, ServerError):
                led.errors[ev.code] += 1
                led.group.error(me, ev)  # a refusal counts if a group chat has that id

    # -- the end -----------------------------------------------------------------------------

    async def finish_groups(self, timeout: float) -> None:
        """The groups' membership changes done (or given up after ``timeout``), no more group
        chats, the leavers' held devices back."""
        if self.groups is not None:
            await self.groups.finish(timeout)

    async def everyone_online(self) -> None:
        self.sending = False
        await self.finish_groups(0.0)
        if self.flapper is not None:
            await self.flapper.stop()

    def read_cursors(self) -> None:
        """Copy each device's read cursors into its log (what it knows of its user's READ)."""
        for c in self.all():
            log = self.ledger.log(c.user_id, c.device_id)
            for conv_id, seq in read_cursors(c).items():
                log.read_cursor(conv_id, seq)

    def settled(self) -> bool:
        """Every outbox empty, every acked message surfaced on every device, every receipt in,
        the read cursors of each user's devices equal."""
        if any(c.pending for c in self.all()):
            return False
        self.read_cursors()
        report = check_all(self.ledger, groups=False)
        if not all(report[k] == 0 for k in SETTLED_ON):
            return False
        led = self.ledger
        return group_settled(led.logs.values(), led.group, led.devices)

    async def quiesce(self, timeout: float, progress: Callable[[str], None]) -> bool:
        deadline = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < deadline:
            if self.settled():
                return True
            now = time.monotonic()
            if now - last > 5:
                last = now
                r = check_all(self.ledger)
                pending = sum(c.pending for c in self.all())
                progress(
                    f"quiescing: {pending} in outboxes, {r['lost']} acked not yet surfaced,"
                    f" {r['receipts_missing']} receipts missing, {r['device_missing']} missing"
                    f" on devices, {r['read_cursor_divergent']} read cursors apart,"
                    f" {r['group_not_acked']} group chats not SENT, {r['group_missing']}"
                    " group deliveries missing"
                )
            await asyncio.sleep(0.25)
        return self.settled()

    def client_stats(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for c in self.all():
            out["reconnects"] += c.reconnects
            out["resent"] += c.resent
            out["out_of_order_resends"] += c.out_of_order  # chats the writer held for order
        if self.flapper is not None:
            out["reconnect_failures"] = len(self.flapper.failures)
        if self.groups is not None:
            out["group_send_errors"] = self.groups.send_errors
        return dict(out)

    async def close(self) -> None:
        self.sending = False
        if self.groups is not None:
            await self.groups.close()
        if self.flapper is not None:
            await self.flapper.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.all()), return_exceptions=True)


SETTLED_ON = ("lost", "receipts_missing", "device_missing", "read_cursor_divergent")


def pair_view(log: DeviceLog) -> DeviceLog:
    """The device's log without its groups: what the 1-1 verdicts judge."""
    out = DeviceLog(log.user, log.device)
    out.surfaced = [s for s in log.surfaced if not is_group(s[0])]
    out.sent = {place: key for place, key in log.sent.items() if not is_group(place[0])}
    out.read = {conv: seq for conv, seq in log.read.items() if not is_group(conv)}
    return out


def check(led: Ledger) -> dict[str, int]:
    """Compare 1-1 sends, surfaced messages and receipts (see the module docstring)."""
    acked = led.acked()
    reached: set[tuple[str, int]] = set()  # (sender, id) shown by a device of its recipient
    duplicates = out_of_order = stray = 0
    for log in map(pair_view, led.logs.values()):
        counts: Counter[tuple[str, int]] = Counter(key for _, _, key in log.surfaced)
        duplicates += sum(n - 1 for n in counts.values() if n > 1)
        out_of_order += disorder(log)
        for key in counts:
            sent = led.sent.get(key)
            if sent is None:
                stray += 1
            elif sent[0] == log.user:
                reached.add(key)
    missing = 0
    for sender, msg_id in reached:
        missing += sum(1 for kind in KINDS if led.receipts[(kind, sender, msg_id)] == 0)
    return {
        "sent": len(led.sent),
        "acked": len(acked),
        "not_acked": len(set(led.sent) - acked),
        "delivered": len(reached),
        "lost": len(acked - reached),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "disorder": out_of_order,
        "receipts_missing": missing,
        "receipts_duplicated": sum(n - 1 for n in led.receipts.values() if n > 1),
        "stray": stray + led.bogus_receipts,
    }


def check_all(led: Ledger, *, groups: bool = True) -> dict[str, int]:
    """:func:`check` and the per-device verdicts over every device of every user; with
    ``groups``, the group keys too (workload/chaosgroups.py ``group_report``)."""
    rep = check_devices(map(pair_view, led.logs.values()), led.devices)
    truth, _ = committed(led.logs.values())  # both kinds: I3 holds in groups too
    out = check(led)
    out.update(
        {
            "devices": led.devices,
            "device_deliveries": rep.device_deliveries,
            "device_deliveries_expected": rep.device_deliveries_expected,
            "device_missing": rep.device_missing,
            "device_duplicates": rep.device_duplicates,
            "device_order_mismatch": rep.device_order_mismatch,
            "read_cursor_divergent": read_divergent(led.logs.values()),
            "sender_disorder": sender_disorder(truth),
            # (device, conversation) read cursors compared: 0 would make the line above vacuous
            "read_cursors_checked": sum(len(log.read) for log in led.logs.values()),
        }
    )
    if groups:
        counts, _ = group_report(led.logs.values(), led.group, led.devices)
        out.update({k: v for k, v in counts.items() if isinstance(v, int)})
    return out


def group_samples(led: Ledger) -> list[str]:
    """A few lines on what the group verdicts found wrong (empty when nothing)."""
    return group_report(led.logs.values(), led.group, led.devices)[1]


async def _reconnect(c: IMClient) -> None:
    await _retry(c.connect, attempts=60)


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
