"""The group part of ``im demo --groups G --group-size S``: make the groups, send their traffic
with one member leaving and one joining in each, and check read-by against the cursors.

Why in two phases: a member who leaves must have nothing of theirs still in flight (a chat of
theirs committed after their LEFT would be refused NOT_MEMBER, which is right but is not what
the demo checks). So each group sends its first half from its members, waits until all of it
is SENT, then: one device of the leaver goes offline (it must not get anything past the LEFT
when it comes back, docs/groups.md), the leaver leaves, the owner invites the joiner and the
joiner accepts, and the second half goes from the members then (the joiner among them). The
second half is sealed first with the key the senders cached, so the rotation that followed the
leave is met by STALE_KEY and sealed again (client/groupsend.py): the demo counts those.

The verdicts are workload/groupcheck.py's; this module only drives the clients.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from client.core import IMClient
from client.rest import RestError
from common.errors import IMError
from workload.devices import DeviceLog, committed
from workload.fleet import Fleet
from workload.groupcheck import group_events, read_by_expected, spans_from_events, user_reads

READ_BY_SAMPLE = 40  # group messages whose read-by is compared with the cursors
READ_BY_LIMIT = 1000  # names asked for: a demo group is smaller, so the lists are whole
REST_AT_ONCE = 16


@dataclass
class GroupPlan:
    group_id: str
    conv_id: str
    owner: str
    members: list[str]  # the members now (the leaver out, the joiner in after the change)
    leaver: str
    joiner: str


@dataclass
class GroupTally:
    sent: set[tuple[str, int]] = field(default_factory=set)  # (sender, msg id) SENT in a group
    resealed: int = 0  # chats refused STALE_KEY and sealed again
    planned: int = 0
    held: list[IMClient] = field(default_factory=list)  # leavers' devices kept offline


async def make_groups(
    fleet: Fleet[IMClient],
    names: list[str],
    online: list[str],
    groups: int,
    size: int,
    rng: random.Random,
    prefix: str,
) -> list[GroupPlan]:
    """``groups`` groups of ``size`` members, each owned by an online user, the others invited
    and accepting over REST; each has a leaver among them and a joiner outside."""
    sem = asyncio.Semaphore(REST_AT_ONCE)

    async def join(group_id: str, user: str) -> None:
        async with sem:
            c = fleet.primary(user)
            await c.rest.groups.join(group_id, c.user_id)

    plans: list[GroupPlan] = []
    for g in range(groups):
        owner = rng.choice(online)
        others = rng.sample([n for n in names if n != owner], size)
        joiner = others.pop()
        leaver = rng.choice(others)
        info = await fleet.primary(owner).rest.groups.create(f"{prefix} group {g}", others)
        await asyncio.gather(*(join(info.group_id, m) for m in others))
        plans.append(
            GroupPlan(info.group_id, info.conv_id, owner, [owner, *others], leaver, joiner)
        )
    return plans


async def group_traffic(
    fleet: Fleet[IMClient],
    plans: list[GroupPlan],
    per_group: int,
    online: set[str],
    rng: random.Random,
    tally: GroupTally,
    hold: Callable[[IMClient], Awaitable[bool]],
    wait_for: Callable[[str, Callable[[], bool]], Awaitable[None]],
) -> None:
    """Both phases of every group (module docstring). ``hold(device)``: take it offline and
    keep the flapper off it until the end (False: it is away already)."""

    async def send(plan: GroupPlan, count: int) -> None:
        # a leaver's held device stays away until the traffic is over, so it sends nothing
        # (what it sent would wait for its return, and the traffic for that SENT)
        free = {m: [d for d in fleet.clients[m] if d not in tally.held] for m in plan.members}
        senders = [m for m in plan.members if m in online and free[m]]
        for k in range(count):
            c = rng.choice(free[rng.choice(senders)])
            await c.send_group_text(plan.group_id, f"group message {k} from {c.user_id}")
        tally.planned += count

    first = per_group // 2
    await asyncio.gather(*(send(p, first) for p in plans))
    await wait_for("group SENT", lambda: len(tally.sent) >= tally.planned)
    for p in plans:
        for dev in reversed(fleet.clients[p.leaver]):  # one device away over the change
            if await hold(dev):
                tally.held.append(dev)
                break
        leaver = fleet.primary(p.leaver)
        await leaver.rest.groups.remove(p.group_id, leaver.user_id)
        p.members.remove(p.leaver)
        owner, joiner = fleet.primary(p.owner), fleet.primary(p.joiner)
        await owner.rest.groups.invite(p.group_id, joiner.user_id)
        await joiner.rest.groups.join(p.group_id, joiner.user_id)
        p.members.append(p.joiner)
    await asyncio.gather(*(send(p, per_group - first) for p in plans))
    await wait_for("group SENT", lambda: len(tally.sent) >= tally.planned)


@dataclass
class ReadByResult:
    checked: int = 0
    exact: bool = False
    samples: list[str] = field(default_factory=list)


def load_reads(fleet: Fleet[IMClient], logs: dict[int, DeviceLog]) -> None:
    """Each device's READ cursors (its marks, its siblings' pushes) into its log."""
    for c in fleet.all():
        log = logs[id(c)]
        for conv, seq in c.read_cursors().items():
            log.read_cursor(conv, seq)


async def check_read_by(
    fleet: Fleet[IMClient],
    plans: list[GroupPlan],
    logs: dict[int, DeviceLog],
    rng: random.Random,
    patience: float,
) -> ReadByResult:
    """A sample of this run's group messages: the server's read-by against the members' READ
    cursors (workload/groupcheck.py), asked again until they agree or ``patience`` seconds
    have passed (cursors reach the server a moment after the devices mark them)."""
    by_conv = {p.conv_id: p for p in plans}
    truth, _ = committed(logs.values())
    places = sorted(place for place in truth if place[0] in by_conv)
    sample = rng.sample(places, min(READ_BY_SAMPLE, len(places)))
    res = ReadByResult(checked=len(sample))
    give_up = time.monotonic() + patience
    while True:
        load_reads(fleet, logs)
        reads = user_reads(logs.values())
        events = group_events(logs.values(), set(by_conv))
        bad: list[str] = []
        for conv, seq in sample:
            sender = truth[(conv, seq)][0]
            spans = spans_from_events(events.get(conv, {}))
            members, read = read_by_expected(spans, conv, seq, sender, reads)
            try:
                got = await fleet.primary(sender).read_by(
                    by_conv[conv].group_id, seq, limit=READ_BY_LIMIT
                )
            except (RestError, IMError, OSError) as exc:
                bad.append(f"read-by {conv}#{seq}: {exc}")
                continue
            if (got.members, got.read, set(got.read_by)) != (members, len(read), read):
                bad.append(
                    f"read-by {conv}#{seq}: server {got.read} of {got.members}, "
                    f"cursors {len(read)} of {members}"
                )
        if not bad or time.monotonic() > give_up:
            res.exact, res.samples = not bad, bad[:5]
            return res
        await asyncio.sleep(0.5)
