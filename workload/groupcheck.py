"""The group verdicts of ``im demo --groups``: pure functions over the device logs, no I/O.

Who may hold a group message depends on its seq: a member reads from the seq of the event that
let them in (CREATED, JOINED) to the seq of their LEFT / REMOVED, inclusive (docs/groups.md,
Visibility). The workload does not take the server's word for that: it rebuilds each user's
spans from the SYSTEM messages the devices surfaced (:func:`spans_from_events`; the owner never
leaves in the demo, so its devices see every event, and the union over all devices is used),
then judges every device against them:

- *expected*: for each group chat committed in this run (its sender holds SENT for it), every
  device of every user whose span covers its seq; *deliveries* are those the device surfaced
  (or, for the sending device, got SENT for); *missing* the rest;
- *duplicates*: a group place surfaced twice by one device, or shown back to its sender;
- *leaks*: a group place (chat or SYSTEM) a device surfaced at a seq its user's spans do not
  cover: a message seen by someone who was not a member then;
- *read-by*: for a message at seq by sender, the members are the users whose spans cover seq
  but the sender; those who read it are the members whose READ cursor (the highest any of
  their devices knows) is at or past seq. The server's ``GET .../receipts`` must say the same
  count of members, the same count of readers and the same names (:func:`read_by_expected`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from workload.devices import DeviceLog, Place, committed

Span = tuple[int, int]  # (from_seq, to_seq); to_seq 0 while still a member
Event = tuple[str, str, str]  # (event, actor, target) of a SYSTEM message
OPENS = frozenset({"CREATED", "JOINED"})
CLOSES = frozenset({"LEFT", "REMOVED"})


def group_events(logs: Iterable[DeviceLog], convs: set[str]) -> dict[str, dict[int, Event]]:
    """Per group conversation of ``convs``, the SYSTEM events any device surfaced, by seq."""
    out: dict[str, dict[int, Event]] = defaultdict(dict)
    for log in logs:
        for (conv, seq), ev in log.system.items():
            if conv in convs:
                out[conv][seq] = ev
    return dict(out)


def spans_from_events(events: Mapping[int, Event]) -> dict[str, list[Span]]:
    """Each user's spans, from a group's membership events in seq order."""
    spans: dict[str, list[Span]] = defaultdict(list)
    for seq in sorted(events):
        event, actor, target = events[seq]
        user = target or actor
        mine = spans[user]
        if event in OPENS and not (mine and mine[-1][1] == 0):
            mine.append((seq, 0))
        elif event in CLOSES and mine and mine[-1][1] == 0:
            mine[-1] = (mine[-1][0], seq)
    return dict(spans)


def covers(spans: Iterable[Span], seq: int) -> bool:
    return any(lo <= seq and (hi == 0 or seq <= hi) for lo, hi in spans)


def members_at(spans: Mapping[str, list[Span]], seq: int) -> set[str]:
    return {user for user, mine in spans.items() if covers(mine, seq)}


@dataclass
class GroupReport:
    """The group counts of the ``im demo`` JSON (names as the issue gives them)."""

    group_messages: int = 0
    group_deliveries: int = 0
    group_deliveries_expected: int = 0
    group_missing: int = 0
    group_duplicates: int = 0
    group_leaks: int = 0
    samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "group_messages": self.group_messages,
            "group_deliveries": self.group_deliveries,
            "group_deliveries_expected": self.group_deliveries_expected,
            "group_missing": self.group_missing,
            "group_duplicates": self.group_duplicates,
            "group_leaks": self.group_leaks,
        }

    def ok(self) -> bool:
        return (
            self.group_deliveries == self.group_deliveries_expected
            and self.group_missing == 0
            and self.group_duplicates == 0
            and self.group_leaks == 0
        )

    def _sample(self, text: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(text)


def check_groups(
    logs: Iterable[DeviceLog], convs: set[str], devices_per_user: int = 0
) -> GroupReport:
    """Every device against the spans of the groups ``convs`` (module docstring).
    ``devices_per_user``: a user with fewer logs counts the missing devices' places missing."""
    logs = list(logs)
    truth, _ = committed(logs)
    spans = {conv: spans_from_events(evs) for conv, evs in group_events(logs, convs).items()}
    by_user: dict[str, list[DeviceLog]] = defaultdict(list)
    for log in logs:
        by_user[log.user].append(log)
    rep = GroupReport()
    held: dict[int, set[Place]] = {}
    for log in logs:
        counts = Counter((c, s) for c, s, _ in log.surfaced if c in convs)
        rep.group_duplicates += sum(n - 1 for n in counts.values() if n > 1)
        rep.group_duplicates += sum(1 for place in log.sent if place in counts)
        held[id(log)] = set(counts) | {p for p in log.sent if p[0] in convs}
        for conv, seq in sorted(counts):
            if not covers(spans.get(conv, {}).get(log.user, []), seq):
                rep.group_leaks += 1
                rep._sample(f"{log.user}/{log.device} saw {conv}#{seq} as a non-member")
    for conv, seq in sorted(truth):
        if conv not in convs:
            continue
        rep.group_messages += 1
        for user in sorted(members_at(spans.get(conv, {}), seq)):
            devs = by_user.get(user, [])
            absent = max(0, devices_per_user - len(devs))
            rep.group_deliveries_expected += len(devs) + absent
            rep.group_missing += absent
            for log in devs:
                if (conv, seq) in held[id(log)]:
                    rep.group_deliveries += 1
                else:
                    rep.group_missing += 1
                    rep._sample(f"{log.user}/{log.device} lacks {conv}#{seq}")
    return rep


def user_reads(logs: Iterable[DeviceLog]) -> dict[str, dict[str, int]]:
    """Per user, per conversation, the highest READ cursor any of their devices knows."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for log in logs:
        mine = out[log.user]
        for conv, seq in log.read.items():
            mine[conv] = max(mine.get(conv, 0), seq)
    return dict(out)


def read_by_expected(
    spans: Mapping[str, list[Span]],
    conv_id: str,
    seq: int,
    sender: str,
    reads: Mapping[str, Mapping[str, int]],
) -> tuple[int, set[str]]:
    """(how many members the message at ``seq`` has, who of them has read it), from the spans
    and the members' READ cursors: what ``GET .../messages/{seq}/receipts`` must answer."""
    members = members_at(spans, seq) - {sender}
    read = {u for u in members if reads.get(u, {}).get(conv_id, 0) >= seq}
    return len(members), read


# -- additions for ``im chaos`` (the demo's verdicts above are unchanged) ----------------------


def group_disorder(logs: Iterable[DeviceLog], convs: set[str]) -> int:
    """G3 in the groups ``convs``: per device, a group place surfaced below a seq it had
    already shown in that group; a place holding another message than its sender's SENT says;
    and two devices of one user holding different messages at a place outside the committed
    truth (SYSTEM events among them). Any of these means the devices show the group in
    different orders."""
    logs = list(logs)
    truth, _ = committed(logs)
    bad = _clashes(logs, convs)
    first: dict[tuple[str, Place], tuple[str, int]] = {}
    for log in logs:
        top: dict[str, int] = {}
        for conv, seq, key in log.surfaced:
            if conv not in convs:
                continue
            if seq < top.get(conv, 0):
                bad += 1
            top[conv] = max(seq, top.get(conv, 0))
            known = truth.get((conv, seq))
            if known is not None:
                bad += known != key
            elif first.setdefault((log.user, (conv, seq)), key) != key:
                bad += 1
    return bad


def _clashes(logs: list[DeviceLog], convs: set[str]) -> int:
    """Group places two SENTs claimed for different messages (a server fault)."""
    seen: dict[Place, tuple[str, int]] = {}
    bad = 0
    for log in logs:
        for place, key in log.sent.items():
            if place[0] in convs and seen.setdefault(place, key) != key:
                bad += 1
    return bad


def nonmember_posts(logs: Iterable[DeviceLog], convs: set[str]) -> list[str]:
    """Committed group chats whose sender was not a member at their seq (by the spans the
    devices' SYSTEM events give): the server took a post it must refuse at commit, or the
    devices missed the event that let the sender in."""
    logs = list(logs)
    truth, _ = committed(logs)
    spans = {conv: spans_from_events(evs) for conv, evs in group_events(logs, convs).items()}
    out: list[str] = []
    for (conv, seq), (sender, msg_id) in sorted(truth.items()):
        if conv in convs and not covers(spans.get(conv, {}).get(sender, []), seq):
            out.append(f"{sender} posted {conv}#{seq} (id {msg_id}) as a non-member")
    return out


def final_members(events: Mapping[int, Event]) -> set[str]:
    """Who is a member after a group's last event (an open span)."""
    return {user for user, mine in spans_from_events(events).items() if mine and not mine[-1][1]}
