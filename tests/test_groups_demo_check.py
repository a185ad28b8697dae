"""The group verdicts of ``im demo --groups`` (workload/groupcheck.py) on logs made by hand:
membership per seq rebuilt from the SYSTEM events, each fault (missing, duplicate, leak) seen
and counted, read-by derived from the spans and the READ cursors, and a clean run clean."""

from __future__ import annotations

from workload.devices import DeviceLog
from workload.groupcheck import (
    check_groups,
    members_at,
    read_by_expected,
    spans_from_events,
    user_reads,
)

G = "g:00aa11bb22cc33dd"
SYS = "#00aa11bb22cc33dd"
# alice creates (1); bob (2) and carol (3) join; chats at 4 (alice) and 5 (bob); carol leaves
# (6) and the key rotates (7); dave joins (8); bob's chat at 9
EVENTS = {
    1: ("CREATED", "alice", ""),
    2: ("JOINED", "alice", "bob"),
    3: ("JOINED", "alice", "carol"),
    6: ("LEFT", "carol", "carol"),
    7: ("KEY_ROTATED", "carol", ""),
    8: ("JOINED", "alice", "dave"),
}
CHATS = {4: ("alice", 41), 5: ("bob", 51), 9: ("bob", 91)}
SPANS = {"alice": [(1, 0)], "bob": [(2, 0)], "carol": [(3, 6)], "dave": [(8, 0)]}


def clean(devices: int = 2) -> list[DeviceLog]:
    """Every device of every user surfaced what its user's span covers, in seq order; the
    sender's first device holds its chats by SENT."""
    logs = [DeviceLog(u, f"{u}{i}") for u in SPANS for i in range(devices)]
    for log in logs:
        for seq in range(1, 10):
            if not any(lo <= seq and (hi == 0 or seq <= hi) for lo, hi in SPANS[log.user]):
                continue
            if seq in EVENTS:
                ev = EVENTS[seq]
                log.message(G, seq, (SYS, seq))
                log.system_event(G, seq, *ev)
            elif seq in CHATS:
                key = CHATS[seq]
                if key[0] == log.user and log.device.endswith("0"):
                    log.own_sent(G, seq, key)
                else:
                    log.message(G, seq, key)
    return logs


def test_spans_come_from_the_events_and_a_rejoin_opens_a_second_span() -> None:
    assert spans_from_events(EVENTS) == SPANS
    again = {**EVENTS, 10: ("JOINED", "alice", "carol"), 12: ("REMOVED", "alice", "carol")}
    assert spans_from_events(again)["carol"] == [(3, 6), (10, 12)]
    assert members_at(SPANS, 6) == {"alice", "bob", "carol"}, "the leaver sees their leaving"
    assert members_at(SPANS, 7) == {"alice", "bob"}


def test_a_clean_group_run_is_clean() -> None:
    rep = check_groups(clean(), {G}, devices_per_user=2)
    assert rep.ok(), rep
    assert rep.group_messages == 3
    # 4 and 5: alice, bob, carol; 9: alice, bob, dave; two devices each
    assert rep.group_deliveries == rep.group_deliveries_expected == 18


def test_a_message_after_the_leave_on_the_leavers_device_is_a_leak() -> None:
    logs = clean()
    carol = next(log for log in logs if log.user == "carol")
    carol.message(G, 9, CHATS[9])
    rep = check_groups(logs, {G}, 2)
    assert rep.group_leaks == 1 and not rep.ok()
    assert "carol" in rep.samples[0]


def test_a_message_before_the_join_on_the_joiners_device_is_a_leak() -> None:
    logs = clean()
    dave = next(log for log in logs if log.user == "dave")
    dave.message(G, 5, CHATS[5])
    dave.message(G, 3, (SYS, 3))
    assert check_groups(logs, {G}, 2).group_leaks == 2


def test_a_member_device_lacking_a_message_is_missing_and_an_absent_one_lacks_all() -> None:
    logs = clean()
    bob1 = next(log for log in logs if log.device == "bob1")
    bob1.surfaced = [s for s in bob1.surfaced if s[1] != 9]
    rep = check_groups(logs, {G}, 2)
    assert (rep.group_missing, rep.group_deliveries) == (1, 17)
    logs = [log for log in clean() if log.device != "dave1"]
    rep = check_groups(logs, {G}, 2)
    assert rep.group_missing == 1 and rep.group_deliveries_expected == 18


def test_a_group_message_twice_or_back_to_its_sender_is_a_duplicate() -> None:
    logs = clean()
    logs[0].message(G, 5, CHATS[5])  # alice0 again
    alice0 = logs[0]
    alice0.message(G, 4, CHATS[4])  # its own chat, shown back
    assert check_groups(logs, {G}, 2).group_duplicates == 2


def test_groups_outside_the_run_are_not_judged() -> None:
    logs = clean()
    logs[0].message("g:ffffffffffffffff", 3, ("x", 1))
    assert check_groups(logs, {G}, 2).ok()


def test_read_by_counts_the_members_at_the_seq_but_the_sender_by_their_cursors() -> None:
    logs = clean()
    for log in logs:
        log.read_cursor(G, 9 if log.user != "carol" else 6)
    logs[0].read = {G: 3}  # alice0 is behind; alice1 read to 9: alice read to 9
    bob1 = next(log for log in logs if log.device == "bob1")
    reads = user_reads(logs)
    assert reads["alice"][G] == 9 and reads["carol"][G] == 6
    assert read_by_expected(SPANS, G, 5, "bob", reads) == (2, {"alice", "carol"})
    assert read_by_expected(SPANS, G, 9, "bob", reads) == (2, {"alice", "dave"})
    reads["dave"][G] = 8
    assert read_by_expected(SPANS, G, 9, "bob", reads) == (2, {"alice"})
    assert bob1.read[G] == 9


def test_im_demo_takes_the_group_options_and_leaves_them_off_by_default() -> None:
    from cli.main import build_parser

    args = build_parser().parse_args(["demo", "--groups", "4", "--group-size", "30"])
    assert (args.groups, args.group_size, args.group_messages) == (4, 30, 0)
    assert build_parser().parse_args(["demo"]).groups == 0


def test_a_report_without_exact_group_counts_fails() -> None:
    from workload.demo import groups_ok

    good: dict[str, object] = {
        "group_planned": 10,
        "group_messages": 10,
        "group_deliveries": 80,
        "group_deliveries_expected": 80,
        "group_missing": 0,
        "group_duplicates": 0,
        "group_leaks": 0,
        "read_by_exact": True,
        "read_by_checked": 10,
    }
    assert groups_ok(good)
    for key, bad in (
        ("group_messages", 9),
        ("group_deliveries", 79),
        ("group_leaks", 1),
        ("read_by_exact", False),
        ("read_by_checked", 0),
    ):
        assert not groups_ok({**good, key: bad}), key
