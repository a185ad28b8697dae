"""The group half of ``im chaos``: groups among the chaos users, their chats mixed into the
traffic, one member leaving and one joining in each group mid-run, all while the cluster is
SIGKILLed; and the group verdicts of the report (workload/groupcheck.py does the judging).

What "acknowledged" means around a LEAVE. A chat the leaver's device still holds unSENT when
the LEFT commits is refused NOT_MEMBER at commit: correct, but then the run could not tell a
refusal it should make from one it must not. So each group's change happens at a quiet moment
for its leaver: the leaver stops posting to the group, every group chat of theirs already made
is waited for until it is SENT (under kills that takes a reconnect or two), then one device of
theirs is taken offline (it must get nothing past the LEFT when it comes back, docs/groups.md),
the leaver leaves, the owner invites the joiner and the joiner accepts, and the joiner posts
from then on. The other members never pause: their chats in flight across the rotation are
refused STALE_KEY and sealed again once (client/groupsend.py), which the run counts
(``group_resealed``). Any other refusal of a group chat is a violation (``group_refused``):
every sender is a member when they post.

The membership calls go to REST, which the killer spares; a call that fails without an answer
(status 0, 5xx, 429) is tried again, and a LEAVE whose retry finds the leaver gone already
(404) took effect the first time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from client.core import FINAL_ERRORS, IMClient
from client.events import Receipt, ServerError
from client.rest import RestError
from common.errors import IMError
from proto import im_pb2
from workload.demogroups import GroupPlan, make_groups
from workload.devices import DeviceLog, Key
from workload.fleet import Flapper, Fleet
from workload.groupcheck import (
    check_groups,
    final_members,
    group_disorder,
    group_events,
    nonmember_posts,
)

# what ends a group chat without a SENT: the library's final refusals, and STALE_KEY once the
# one re-seal is spent (a first STALE_KEY is re-sealed, surfacing RESEALED instead)
REFUSALS = frozenset({im_pb2.ErrorCode.Name(c) for c in FINAL_ERRORS} | {"STALE_KEY"})
QUIET_TIMEOUT = 60.0  # longest wait for a leaver's chats to be SENT before its LEAVE
MAX_ERRORS = 100_000  # refusals kept: a run with more is failing anyway
CHANGE_WINDOW = (0.3, 0.6)  # the share of the chaos period a group's change starts within


def is_group(conv_id: str) -> bool:
    return conv_id.startswith("g:")


@dataclass
class GroupLedger:
    """What the group side recorded; keys (sender, message id) as for 1-1 chats."""

    sent: dict[Key, str] = field(default_factory=dict)  # every id a group chat went under
    acked: Counter[Key] = field(default_factory=Counter)  # SENT receipts per id
    resealed: dict[Key, Key] = field(default_factory=dict)  # refused STALE_KEY -> new id
    refused: dict[Key, str] = field(default_factory=dict)  # refusal code per id
    members: dict[str, set[str]] = field(default_factory=dict)  # conv -> members as planned
    changes_planned: int = 0
    key_refusals: int = 0  # a member's post refused before it went out (no current key)
    held: int = 0  # leavers' devices kept offline over their LEAVE
    changes: int = 0
    change_failures: list[str] = field(default_factory=list)

    def record_send(self, sender: str, conv_id: str, msg_id: int) -> None:
        self.sent[(sender, msg_id)] = conv_id

    def receipt(self, user: str, ev: Receipt) -> None:
        key = (user, ev.msg_id)
        if ev.kind == "SENT":
            self.acked[key] += 1
        elif ev.kind == "RESEALED":
            new = (user, ev.new_msg_id)
            self.resealed[key] = new
            self.sent[new] = ev.conv_id  # the same content goes on under the new id

    def error(self, user: str, ev: ServerError) -> None:
        if ev.code in REFUSALS and ev.msg_id and len(self.refused) < MAX_ERRORS:
            self.refused[(user, ev.msg_id)] = ev.code

    def done(self, key: Key) -> bool:
        """SENT, refused, or handed on to a re-sealed id (which is judged on its own)."""
        return key in self.acked or key in self.refused or key in self.resealed

    def pending(self, sender: str | None = None, conv_id: str | None = None) -> int:
        return sum(
            1
            for key, conv in self.sent.items()
            if (sender is None or key[0] == sender)
            and (conv_id is None or conv == conv_id)
            and not self.done(key)
        )


@dataclass
class Group:
    plan: GroupPlan
    paused: set[str] = field(default_factory=set)  # members not posting now
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held around one post


@dataclass
class ChaosGroups:
    """The groups, their traffic and their membership changes."""

    fleet: Fleet[IMClient]
    ledger: GroupLedger
    reconnect: Callable[[IMClient], Awaitable[None]]
    groups: list[Group] = field(default_factory=list)
    flapper: Flapper[IMClient] | None = None
    held: list[IMClient] = field(default_factory=list)  # leavers' devices kept offline
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    changes: list[asyncio.Task[None]] = field(default_factory=list)
    sending: bool = True
    finished: bool = False
    send_errors: int = 0

    async def setup(
        self, names: list[str], count: int, size: int, rng: random.Random, prefix: str
    ) -> None:
        """``count`` groups of ``size`` members, a leaver in each and a joiner outside (as the
        demo's, before any kill: REST and the database are spared anyway)."""
        plans = await make_groups(self.fleet, names, names, count, size, rng, prefix)
        self.groups = [Group(p) for p in plans]
        for g in self.groups:
            self.ledger.members[g.plan.conv_id] = set(g.plan.members)

    def start(
        self, rate: float, seconds: float, rng: random.Random, flapper: Flapper[IMClient] | None
    ) -> None:
        """Group chats at ``rate`` a second in all; each group's change within the middle of
        the ``seconds`` of chaos (none when 0)."""
        self.flapper = flapper
        if not self.groups:
            return
        per_group = rate / len(self.groups)
        for g in self.groups:
            seed = rng.getrandbits(32)
            self.tasks.append(asyncio.create_task(self._traffic(g, per_group, seed)))
            if seconds > 0:
                at = rng.uniform(*CHANGE_WINDOW) * seconds
                crng = random.Random(rng.getrandbits(32))
                self.changes.append(asyncio.create_task(self._change(g, at, crng)))
                self.ledger.changes_planned += 1

    async def _traffic(self, g: Group, rate: float, seed: int) -> None:
        rng = random.Random(seed)
        k = 0
        while self.sending:
            await asyncio.sleep(rng.expovariate(rate) if rate > 0 else 1.0)
            if not self.sending or rate <= 0:
                continue
            async with g.lock:
                senders = [m for m in g.plan.members if m not in g.paused]
                if not senders:
                    continue
                name = rng.choice(senders)
                devs = [d for d in self.fleet.clients[name] if d not in self.held]
                if not devs:
                    continue
                k += 1
                try:
                    msg_id = await rng.choice(devs).send_group_text(
                        g.plan.group_id, f"{g.plan.conv_id} {name} #{k}"
                    )
                except RestError as exc:  # no key: REST did not answer; nothing went out
                    if exc.status and exc.status < 500 and exc.status != 429:
                        self.ledger.key_refusals += 1  # a member told it may not post
                    self.send_errors += 1
                    continue
                except (IMError, OSError):  # a member holding no current key: a bug
                    self.ledger.key_refusals += 1
                    self.send_errors += 1
                    continue
                self.ledger.record_send(name, g.plan.conv_id, msg_id)

    async def _change(self, g: Group, at: float, rng: random.Random) -> None:
        """The leaver out and the joiner in at a quiet moment for the leaver (module docstring)."""
        await asyncio.sleep(at)
        p, led = g.plan, self.ledger
        g.paused.add(p.leaver)
        async with g.lock:  # a post of the leaver's under way is made and recorded first
            pass
        deadline = time.monotonic() + QUIET_TIMEOUT
        while led.pending(p.leaver, p.conv_id):
            if time.monotonic() > deadline:
                led.change_failures.append(
                    f"{p.conv_id}: {led.pending(p.leaver, p.conv_id)} chats of {p.leaver}"
                    f" not SENT after {QUIET_TIMEOUT:g}s: no change"
                )
                g.paused.discard(p.leaver)
                return
            await asyncio.sleep(0.1)
        dev = await self._hold(p.leaver)
        leaver = self.fleet.primary(p.leaver)
        await _rest(lambda: leaver.rest.groups.remove(p.group_id, leaver.user_id), gone_ok=True)
        p.members.remove(p.leaver)
        owner, joiner = self.fleet.primary(p.owner), self.fleet.primary(p.joiner)
        await _rest(lambda: owner.rest.groups.invite(p.group_id, joiner.user_id))
        await _rest(lambda: joiner.rest.groups.join(p.group_id, joiner.user_id))
        p.members.append(p.joiner)
        led.members[p.conv_id] = set(p.members)
        led.changes += 1
        if dev is not None:  # away a little longer, then back: it must stop at the LEFT
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            await self._release(dev)

    async def _hold(self, user: str) -> IMClient | None:
        """One device of ``user`` offline and out of the flapper's hands (none: all away)."""
        for dev in reversed(self.fleet.clients[user]):
            if self.flapper is not None and id(dev) in self.flapper.offline:
                continue
            if self.flapper is not None:
                self.flapper.held.add(id(dev))
            self.held.append(dev)
            self.ledger.held += 1
            await dev.disconnect()
            return dev
        return None

    async def _release(self, dev: IMClient) -> None:
        if dev in self.held:
            self.held.remove(dev)
            try:
                await self.reconnect(dev)
            finally:
                if self.flapper is not None:
                    self.flapper.held.discard(id(dev))

    async def finish(self, timeout: float) -> None:
        """No more group posts; the changes done (or given up after ``timeout``); every held
        device back. Once: later calls return at once."""
        if self.finished:
            return
        self.finished = True
        if self.changes:
            _, late = await asyncio.wait(self.changes, timeout=timeout)
            for t in late:
                t.cancel()
            await asyncio.gather(*self.changes, return_exceptions=True)
            for t in self.changes:
                if not t.cancelled() and t.exception() is not None:
                    self.ledger.change_failures.append(f"change failed: {t.exception()!r}")
            if late:
                self.ledger.change_failures.append(f"{len(late)} changes not done in time")
        self.sending = False
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for t in self.tasks:
            if not t.cancelled() and t.exception() is not None:
                self.ledger.change_failures.append(f"group traffic failed: {t.exception()!r}")
        for dev in list(self.held):
            with contextlib.suppress(IMError, OSError, TimeoutError):
                await self._release(dev)

    async def close(self) -> None:
        self.sending = False
        for t in [*self.tasks, *self.changes]:
            t.cancel()
        await asyncio.gather(*self.tasks, *self.changes, return_exceptions=True)


async def _rest(
    call: Callable[[], Awaitable[object]], *, gone_ok: bool = False, delay: float = 0.2
) -> None:
    """A membership call, again while REST gives no answer (status 0, 5xx, 429)."""
    for attempt in range(20):
        try:
            await call()
            return
        except RestError as exc:
            if gone_ok and attempt and exc.status == 404:
                return  # the first try took effect; its answer was what got lost
            if exc.status and exc.status < 500 and exc.status != 429:
                raise
            if attempt == 19:
                raise
        except (OSError, TimeoutError):
            if attempt == 19:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def group_report(
    logs: Iterable[DeviceLog], led: GroupLedger, devices: int
) -> tuple[dict[str, object], list[str]]:
    """The group keys of the chaos report and a few samples of what went wrong."""
    logs = list(logs)
    convs = set(led.members)
    rep = check_groups(logs, convs, devices)
    events = group_events(logs, convs)
    mismatch = 0
    samples = list(rep.samples)
    for conv, planned in sorted(led.members.items()):
        seen = final_members(events.get(conv, {}))
        mismatch += len(seen ^ planned)
        if seen != planned:
            samples.append(f"{conv}: members by events {sorted(seen)}, planned {sorted(planned)}")
    outsiders = nonmember_posts(logs, convs)
    acked = {k for k in led.acked if k in led.sent}
    out: dict[str, object] = {
        "groups": len(convs),
        "group_changes": led.changes,
        "group_changes_planned": led.changes_planned,
        "group_sent": len(led.sent) - len(led.resealed),  # a re-sealed chat is one chat
        "group_acked": len(acked),
        "group_not_acked": sum(1 for k in led.sent if not led.done(k)),
        "group_refused": len(led.refused.keys() & led.sent.keys()) + led.key_refusals,
        "group_resealed": len(led.resealed),
        "group_held_offline": led.held,
        **rep.as_dict(),
        "group_out_of_order": group_disorder(logs, convs),
        "group_receipts_duplicated": sum(n - 1 for n in led.acked.values() if n > 1),
        "group_nonmember_posts": len(outsiders),
        "group_membership_mismatch": mismatch,
        "group_stray": sum(1 for k in led.acked if k not in led.sent),
    }
    samples += outsiders + led.change_failures
    return out, samples[:10]


def group_settled(logs: Iterable[DeviceLog], led: GroupLedger, devices: int) -> bool:
    """Every group chat SENT or refused, and every device holding what its spans cover."""
    if led.pending():
        return False
    rep = check_groups(logs, set(led.members), devices)
    return rep.group_missing == 0 and rep.group_deliveries == rep.group_deliveries_expected
