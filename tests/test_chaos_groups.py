"""The group verdicts of ``im chaos`` (workload/chaosgroups.py, the additions to
workload/groupcheck.py, the group part of cli/chaos.py ``ok``) on device logs made by hand: a
group where carol leaves and dave joins, each violation seen and counted, a clean run clean,
and the 1-1 verdicts blind to group traffic."""

from __future__ import annotations

import pytest

from cli import chaos
from client.events import Receipt, ServerError
from client.rest import RestError
from common.errors import IMError
from workload import chaosgroups
from workload.chaosgroups import GroupLedger, group_report, group_settled
from workload.groupcheck import final_members, group_disorder, nonmember_posts
from workload.traffic import Ledger, check_all

G = "g:00000000000000aa"
AB = "p:alice:bob"
SYS = "#00000000000000aa"
# seq -> (event, actor, target): alice creates, bob and carol join, carol leaves at 6 (key
# rotated at 7), dave joins at 8
EVENTS = {
    1: ("CREATED", "alice", ""),
    2: ("JOINED", "bob", ""),
    3: ("JOINED", "carol", ""),
    6: ("LEFT", "carol", ""),
    7: ("KEY_ROTATED", SYS, ""),
    8: ("JOINED", "dave", ""),
}
CHATS = {4: ("alice", 101), 5: ("bob", 201), 9: ("bob", 202), 10: ("dave", 401)}
SPANS = {"alice": (1, 99), "bob": (2, 99), "carol": (3, 6), "dave": (8, 99)}


def world(devices: int = 2) -> tuple[Ledger, GroupLedger]:
    """Every device of every user surfaced exactly its span of the group, in order; the
    senders' devices got SENT; every chat SENT once."""
    led = Ledger(devices=devices)
    gl = led.group
    gl.members[G] = {"alice", "bob", "dave"}
    gl.changes_planned = gl.changes = 1
    for user, (lo, hi) in SPANS.items():
        for d in range(devices):
            log = led.log(user, f"{user[0]}{d}")
            for seq in range(lo, hi + 1):
                if seq in EVENTS:
                    log.message(G, seq, (SYS, seq))
                    log.system_event(G, seq, *EVENTS[seq])
                elif seq in CHATS:
                    sender, msg_id = CHATS[seq]
                    if sender == user and d == 0:
                        log.own_sent(G, seq, (sender, msg_id))
                    else:
                        log.message(G, seq, (sender, msg_id))
    for sender, msg_id in CHATS.values():
        gl.record_send(sender, G, msg_id)
        gl.receipt(sender, Receipt("SENT", G[2:], msg_id, 0, G))
    return led, gl


def report(led: Ledger) -> dict[str, object]:
    return group_report(led.logs.values(), led.group, led.devices)[0]


VIOLATIONS = (
    "group_missing",
    "group_duplicates",
    "group_leaks",
    "group_out_of_order",
    "group_refused",
    "group_receipts_duplicated",
    "group_nonmember_posts",
    "group_membership_mismatch",
    "group_stray",
    "group_not_acked",
)


def test_a_clean_group_run_has_no_violation() -> None:
    for devices in (1, 2):
        led, _ = world(devices)
        r = report(led)
        assert all(r[k] == 0 for k in VIOLATIONS), r
        assert r["group_messages"] == r["group_acked"] == 4
        # seq 4: alice bob carol; 5: the same; 9 and 10: alice bob dave
        assert r["group_deliveries"] == r["group_deliveries_expected"] == 12 * devices
        assert group_settled(led.logs.values(), led.group, devices)


def test_group_traffic_does_not_touch_the_one_to_one_verdicts() -> None:
    """Group chats, their SYSTEM events and receipts are not 1-1 messages: nothing stray,
    lost or missing on the 1-1 side, and the group keys ride along in check_all."""
    led, _ = world()
    led.record_send("alice", "bob", 7)
    led.log("alice", "a0").own_sent(AB, 1, ("alice", 7))
    for log in (led.log("bob", "b0"), led.log("bob", "b1"), led.log("alice", "a1")):
        log.message(AB, 1, ("alice", 7))
    for kind in ("SENT", "DELIVERED", "READ"):
        led.receipts[(kind, "alice", 7)] += 1
    r = check_all(led)
    assert (r["sent"], r["acked"], r["delivered"], r["stray"]) == (1, 1, 1, 0)
    assert r["lost"] == r["device_missing"] == r["device_duplicates"] == 0
    assert r["device_deliveries"] == r["device_deliveries_expected"] == 4  # 2 users x 2
    assert r["group_messages"] == 4 and r["group_missing"] == 0


def test_a_member_device_lacking_a_group_chat_is_missing() -> None:
    led, _ = world()
    dave = led.log("dave", "d1")
    dave.surfaced = [s for s in dave.surfaced if s[1] != 9]
    r = report(led)
    assert r["group_missing"] == 1 and r["group_deliveries"] == 23
    assert not group_settled(led.logs.values(), led.group, 2)


def test_what_a_leaver_sees_past_the_left_is_a_leak_and_so_is_a_joiner_seeing_before() -> None:
    led, _ = world()
    led.log("carol", "c1").message(G, 9, ("bob", 202))  # past her LEFT at 6
    led.log("dave", "d0").message(G, 7, (SYS, 7))  # the rotation before his JOINED at 8
    r = report(led)
    assert r["group_leaks"] == 2


def test_a_group_place_shown_twice_or_own_chat_shown_back_is_a_duplicate() -> None:
    led, _ = world()
    led.log("bob", "b1").message(G, 4, ("alice", 101))
    led.log("alice", "a0").message(G, 4, ("alice", 101))  # alice's own, SENT on this device
    assert report(led)["group_duplicates"] == 2


def test_group_disorder_counts_late_seqs_wrong_messages_and_siblings_apart() -> None:
    led, _ = world()
    logs = list(led.logs.values())
    assert group_disorder(logs, {G}) == 0
    bob = led.log("bob", "b1")
    i = next(k for k, s in enumerate(bob.surfaced) if s[1] == 5)
    bob.surfaced[i], bob.surfaced[i + 1] = bob.surfaced[i + 1], bob.surfaced[i]
    assert group_disorder(logs, {G}) == 1  # seq 5 after 6
    led.log("dave", "d1").surfaced.append((G, 10, ("bob", 999)))  # not what dave sent there
    assert group_disorder(logs, {G}) == 2  # at its seq, not below it: a wrong message only
    # a SYSTEM place (outside the committed truth) alice's two devices hold apart, shown late
    led.log("alice", "a1").surfaced.append((G, 8, ("#other", 8)))
    assert group_disorder(logs, {G}) == 4
    # pairs are not the group verdict's
    led.log("bob", "b0").surfaced.append((AB, 2, ("alice", 2)))
    led.log("bob", "b0").surfaced.append((AB, 1, ("alice", 1)))
    assert group_disorder(logs, {G}) == 4


def test_a_post_committed_outside_the_senders_span_is_counted() -> None:
    led, _ = world()
    assert nonmember_posts(led.logs.values(), {G}) == []
    # carol "posted" at 11, after her LEFT: the server should have refused it at commit
    led.log("carol", "c0").own_sent(G, 11, ("carol", 301))
    found = nonmember_posts(led.logs.values(), {G})
    assert len(found) == 1 and "carol" in found[0]
    assert report(led)["group_nonmember_posts"] == 1


def test_the_members_the_events_leave_must_be_the_planned_ones() -> None:
    led, gl = world()
    assert final_members(EVENTS) == {"alice", "bob", "dave"}
    gl.members[G] = {"alice", "bob", "carol", "dave"}  # as if carol had not left
    r = report(led)
    assert r["group_membership_mismatch"] == 1


def test_the_ledger_follows_reseals_refusals_and_early_receipts() -> None:
    gl = GroupLedger()
    gl.receipt("bob", Receipt("SENT", "x", 5, 3, G))  # SENT before the send was recorded
    gl.record_send("bob", G, 5)
    gl.record_send("bob", G, 6)
    assert gl.pending("bob", G) == 1
    gl.receipt("bob", Receipt("RESEALED", "x", 6, 0, G, new_msg_id=9))
    assert gl.pending("bob", G) == 1  # the new id now
    gl.receipt("bob", Receipt("SENT", "x", 9, 4, G))
    assert gl.pending() == 0
    gl.record_send("carol", G, 7)
    gl.error("carol", ServerError("RATE_LIMITED", "", 7))  # not final: still pending
    assert gl.pending("carol") == 1
    gl.error("carol", ServerError("NOT_MEMBER", "", 7))
    assert gl.pending("carol") == 0 and gl.refused == {("carol", 7): "NOT_MEMBER"}
    gl.receipt("bob", Receipt("SENT", "x", 5, 3, G))  # twice
    gl.receipt("dave", Receipt("SENT", "x", 1, 3, G))  # a SENT for nothing sent
    r = group_report([], gl, 1)[0]
    assert r["group_sent"] == 3 and r["group_resealed"] == 1 and r["group_refused"] == 1
    assert r["group_receipts_duplicated"] == 1 and r["group_stray"] == 1


def _ok_report(**over: object) -> dict[str, object]:
    base: dict[str, object] = {k: 0 for k in chaos.VIOLATIONS}
    base.update(
        settled=True,
        acked=10,
        device_deliveries=40,
        device_deliveries_expected=40,
        read_cursors_checked=8,
        groups=2,
        group_messages=5,
        group_deliveries=30,
        group_deliveries_expected=30,
        group_changes=2,
        group_changes_planned=2,
    )
    base.update(over)
    return base


def test_ok_requires_the_group_verdicts() -> None:
    assert chaos.ok(_ok_report())
    for key in ("group_missing", "group_duplicates", "group_leaks", "group_out_of_order"):
        assert not chaos.ok(_ok_report(**{key: 1})), key
    assert not chaos.ok(_ok_report(group_deliveries=29))
    assert not chaos.ok(_ok_report(group_changes=1))  # a change that did not happen
    assert not chaos.ok(_ok_report(group_messages=0, group_deliveries=0))
    assert not chaos.ok(_ok_report(group_deliveries_expected=0, group_deliveries=0))
    # without groups, the group counts are zero and that is fine
    assert chaos.ok(
        _ok_report(
            groups=0,
            group_messages=0,
            group_deliveries=0,
            group_deliveries_expected=0,
            group_changes=0,
            group_changes_planned=0,
        )
    )
    # a report that lacks the group keys altogether is not a pass
    lacking = _ok_report()
    del lacking["group_leaks"]
    assert not chaos.ok(lacking)


def test_group_size_is_bounded_by_the_users() -> None:
    assert chaos.Options(users=20, group_size=6).sized_groups() == 6
    assert chaos.Options(users=5, group_size=6).sized_groups() == 4
    assert chaos.Options(users=3, groups=0).sized_groups() == 2
    with pytest.raises(IMError, match="groups"):
        chaos.Options(users=3, groups=2).sized_groups()


@pytest.mark.asyncio
async def test_membership_calls_are_tried_again_only_when_rest_did_not_answer() -> None:
    answers: list[Exception | None] = [RestError(0, "down"), RestError(503, "busy"), None]
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        exc = answers.pop(0)
        if exc is not None:
            raise exc

    await chaosgroups._rest(call, delay=0)
    assert calls == 3
    # a leave whose first answer was lost: its retry finds the leaver gone
    answers[:] = [RestError(0, "down"), RestError(404, "no such group")]
    await chaosgroups._rest(call, gone_ok=True, delay=0)
    assert not answers
    # a refusal on the first try is a refusal
    for refusal in (RestError(404, "no such group"), RestError(403, "not an admin")):
        answers[:] = [refusal]
        with pytest.raises(RestError):
            await chaosgroups._rest(call, gone_ok=True, delay=0)
