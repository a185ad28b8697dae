"""What every device of every user saw, and the verdicts over it: pure functions, no I/O.

A user may hold several devices; each must end up with the same conversations as the others,
message for message at the same places (seq), in the same order, read up to the same point.
The workloads (``im demo``, ``im chaos``) write one :class:`DeviceLog` per device as events
surface and hand the logs to the functions here once the run has settled, so that the rules
can be tested on logs made by hand (tests/test_devices.py) instead of only under a cluster.

The truth is what the servers committed: a chat is at (conv_id, seq) once its sender got SENT
for it (:func:`committed`). Then, for every device of every member of a conversation:

- *missing*: a committed (conv_id, seq) the device never surfaced, nor got SENT for;
- *duplicates*: a (conv_id, seq) surfaced more than once by one device (a Message twice, or a
  Message for a chat this very device sent: the library must never show its own chat back);
- *order mismatch*: the devices of one user disagree on a conversation: a seq holding another
  message than the committed one, or a device surfacing a conversation's chats out of seq
  order (then it shows another order than its siblings);
- *read divergence*: the read cursors the devices of one user end with differ for a
  conversation (each device learns its own user's READ from the others' Cursor pushes).

Messages outside the committed set (an earlier run's history of reused users) are not
expected, but a device still must not show them twice or out of order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from common.convid import parse_conv_id
from common.ids import slot_of

Key = tuple[str, int]  # (sender, message id): ids are unique per sender only
Place = tuple[str, int]  # (conv_id, seq)


@dataclass
class DeviceLog:
    """One device's record: what it surfaced, what it was told it sent, where it read to."""

    user: str
    device: str
    surfaced: list[tuple[str, int, Key]] = field(default_factory=list)  # in surfacing order
    sent: dict[Place, Key] = field(default_factory=dict)  # from the SENT of its own chats
    read: dict[str, int] = field(default_factory=dict)  # conv_id -> read cursor it knows
    # a group's SYSTEM messages it surfaced (also in ``surfaced``): place -> (event, actor,
    # target), what workload/groupcheck.py derives membership per seq from
    system: dict[Place, tuple[str, str, str]] = field(default_factory=dict)

    def message(self, conv_id: str, seq: int, key: Key) -> None:
        self.surfaced.append((conv_id, seq, key))

    def system_event(self, conv_id: str, seq: int, event: str, actor: str, target: str) -> None:
        self.system[(conv_id, seq)] = (event, actor, target)

    def own_sent(self, conv_id: str, seq: int, key: Key) -> None:
        self.sent[(conv_id, seq)] = key

    def read_cursor(self, conv_id: str, seq: int) -> None:
        """Cursors only move forward: a stale push never takes one back."""
        if seq > self.read.get(conv_id, 0):
            self.read[conv_id] = seq

    def places(self) -> Counter[Place]:
        """How often each (conv_id, seq) was surfaced as a Message."""
        return Counter((conv, seq) for conv, seq, _ in self.surfaced)


def committed(logs: Iterable[DeviceLog]) -> tuple[dict[Place, Key], int]:
    """Every chat the servers committed in this run, from the senders' SENT: place -> message,
    and how many places two SENTs claimed for different messages (a server fault)."""
    out: dict[Place, Key] = {}
    clashes = 0
    for log in logs:
        for place, key in log.sent.items():
            old = out.setdefault(place, key)
            if old != key:
                clashes += 1
    return out, clashes


def sender_disorder(truth: Mapping[Place, Key]) -> int:
    """I3 on the committed truth: within a conversation, each sending device's messages must
    take seqs in the order it made them. A device's message ids grow with the time it made
    them (common/ids.py: milliseconds, then its slot, then a counter), so per (conversation,
    sender, slot) the ids must grow with the seq; this counts the messages that break that."""
    top: dict[tuple[str, str, int], int] = {}
    bad = 0
    for (conv, _seq), (sender, msg_id) in sorted(truth.items()):
        key = (conv, sender, slot_of(msg_id))
        if msg_id < top.get(key, 0):
            bad += 1
        top[key] = max(msg_id, top.get(key, 0))
    return bad


def members(conv_id: str) -> tuple[str, ...]:
    """The users of a pair conversation (a group's change with the seq: workload/groupcheck.py)."""
    try:
        return parse_conv_id(conv_id).members
    except ValueError:
        return ()


def expected_places(truth: Mapping[Place, Key], user: str) -> set[Place]:
    """The committed places every device of ``user`` must end up with."""
    return {place for place in truth if user in members(place[0])}


@dataclass
class DeviceReport:
    """The verdicts, summed over devices (the JSON keys of ``im demo`` / ``im chaos``)."""

    devices: int = 0
    device_deliveries: int = 0
    device_deliveries_expected: int = 0
    device_missing: int = 0
    device_duplicates: int = 0
    device_order_mismatch: int = 0
    missing_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "devices": self.devices,
            "device_deliveries": self.device_deliveries,
            "device_deliveries_expected": self.device_deliveries_expected,
            "device_missing": self.device_missing,
            "device_duplicates": self.device_duplicates,
            "device_order_mismatch": self.device_order_mismatch,
        }

    def ok(self) -> bool:
        return (
            self.device_missing == 0
            and self.device_duplicates == 0
            and self.device_order_mismatch == 0
            and self.device_deliveries == self.device_deliveries_expected
        )


def disorder(log: DeviceLog) -> int:
    """Messages this device surfaced below a seq it had already surfaced in the conversation."""
    top: dict[str, int] = {}
    bad = 0
    for conv, seq, _ in log.surfaced:
        if seq < top.get(conv, 0):
            bad += 1
        top[conv] = max(seq, top.get(conv, 0))
    return bad


def check_devices(logs: Iterable[DeviceLog], devices_per_user: int = 0) -> DeviceReport:
    """Every device against the committed truth and against its siblings (module docstring).

    ``devices_per_user``: how many devices each user should have: a user with fewer logs counts
    every place of the missing devices as missing (0: as many as there are logs)."""
    logs = list(logs)
    truth, clashes = committed(logs)
    rep = DeviceReport(devices=len(logs), device_order_mismatch=clashes)
    by_user: dict[str, list[DeviceLog]] = defaultdict(list)
    for log in logs:
        by_user[log.user].append(log)
    users = set(by_user) | {u for place in truth for u in members(place[0])}
    for user in sorted(users):
        want = expected_places(truth, user)
        mine = by_user.get(user, [])
        absent = max(0, devices_per_user - len(mine))
        rep.device_deliveries_expected += len(want) * (len(mine) + absent)
        rep.device_missing += len(want) * absent
        for log in mine:
            _check_one(log, want, truth, rep)
        rep.device_order_mismatch += _sibling_mismatch(mine, truth)
    return rep


def _check_one(
    log: DeviceLog, want: set[Place], truth: Mapping[Place, Key], rep: DeviceReport
) -> None:
    counts = log.places()
    rep.device_duplicates += sum(n - 1 for n in counts.values() if n > 1)
    rep.device_duplicates += sum(1 for place in log.sent if place in counts)
    rep.device_order_mismatch += disorder(log)
    for conv, seq, key in log.surfaced:
        known = truth.get((conv, seq))
        if known is not None and known != key:
            rep.device_order_mismatch += 1
    have = set(counts) | set(log.sent)
    got = want & have
    rep.device_deliveries += len(got)
    lacking = want - have
    rep.device_missing += len(lacking)
    for conv, seq in sorted(lacking)[: max(0, 5 - len(rep.missing_samples))]:
        rep.missing_samples.append(f"{log.user}/{log.device} lacks {conv}#{seq}")


def _sibling_mismatch(logs: list[DeviceLog], truth: Mapping[Place, Key]) -> int:
    """Places outside the committed truth (that is checked against each device already) where
    two devices of one user hold different messages, each device against the first that saw
    the place: the same conversation shown in two orders."""
    first: dict[Place, Key] = {}
    bad = 0
    for log in logs:
        seen: dict[Place, Key] = {}
        for conv, seq, key in log.surfaced:
            seen.setdefault((conv, seq), key)
        for place, key in seen.items():
            if place not in truth and first.setdefault(place, key) != key:
                bad += 1
    return bad


def read_divergent(logs: Iterable[DeviceLog]) -> int:
    """(user, conversation) pairs whose devices do not all end at the same read cursor (a
    device that never learnt any READ of a conversation its siblings read counts as at 0)."""
    by_user: dict[str, list[DeviceLog]] = defaultdict(list)
    for log in logs:
        by_user[log.user].append(log)
    bad = 0
    for mine in by_user.values():
        convs = {conv for log in mine for conv in log.read}
        for conv in convs:
            if len({log.read.get(conv, 0) for log in mine}) > 1:
                bad += 1
    return bad


def history_missing(
    truth: Mapping[Place, Key], user: str, history: Mapping[Place, Key]
) -> tuple[int, int]:
    """A fresh device's paged history of ``user`` against the committed truth: (checked,
    missing), where a place holding another message counts as missing."""
    want = expected_places(truth, user)
    missing = sum(1 for place in want if history.get(place) != truth[place])
    return len(want), missing
