"""The multi-device verdicts (workload/devices.py) on logs made by hand: each violation is seen
and counted once, and a clean run of several devices per user is clean."""

from __future__ import annotations

from common.ids import MessageIdGen
from workload.devices import (
    DeviceLog,
    check_devices,
    committed,
    disorder,
    history_missing,
    read_divergent,
    sender_disorder,
)

AB = "p:alice:bob"
AC = "p:alice:carol"


def clean(devices: int = 2) -> list[DeviceLog]:
    """alice (device a0) sent 3 chats to bob in AB at seqs 1..3; bob sent 1 at seq 4; every
    device of both saw all four (the sending device by its SENT)."""
    logs = [DeviceLog("alice", f"a{i}") for i in range(devices)]
    logs += [DeviceLog("bob", f"b{i}") for i in range(devices)]
    chats = [(1, ("alice", 11)), (2, ("alice", 12)), (3, ("alice", 13)), (4, ("bob", 21))]
    for seq, key in chats:
        sender = logs[0] if key[0] == "alice" else logs[devices]
        sender.own_sent(AB, seq, key)
        for log in logs:
            if log is not sender:
                log.message(AB, seq, key)
    return logs


def test_a_clean_run_of_several_devices_is_clean() -> None:
    rep = check_devices(clean(3), devices_per_user=3)
    assert rep.ok(), rep
    assert rep.devices == 6
    assert rep.device_deliveries == rep.device_deliveries_expected == 6 * 4


def test_committed_comes_from_sent_and_a_clash_is_an_order_fault() -> None:
    logs = clean()
    truth, clashes = committed(logs)
    assert len(truth) == 4 and clashes == 0
    logs[1].own_sent(AB, 2, ("alice", 99))  # another device claims seq 2 for another chat
    assert committed(logs)[1] == 1
    assert check_devices(logs).device_order_mismatch >= 1


def test_a_place_one_device_never_saw_is_missing() -> None:
    logs = clean()
    logs[3].surfaced = [s for s in logs[3].surfaced if s[1] != 2]
    rep = check_devices(logs)
    assert rep.device_missing == 1 and rep.device_duplicates == 0
    assert rep.device_deliveries == rep.device_deliveries_expected - 1
    assert not rep.ok() and rep.missing_samples == ["bob/b1 lacks p:alice:bob#2"]


def test_a_device_that_never_came_counts_all_it_should_have_seen() -> None:
    logs = [log for log in clean() if log.device != "b1"]
    rep = check_devices(logs, devices_per_user=2)
    assert rep.device_missing == 4 and rep.device_deliveries_expected == 16


def test_a_message_surfaced_twice_is_a_duplicate() -> None:
    logs = clean()
    logs[2].message(AB, 3, ("alice", 13))
    rep = check_devices(logs)
    assert rep.device_duplicates == 1 and rep.device_missing == 0


def test_own_chat_shown_back_to_its_sending_device_is_a_duplicate() -> None:
    logs = clean()
    logs[0].message(AB, 1, ("alice", 11))  # a0 sent it and got SENT: must not show it again
    assert check_devices(logs).device_duplicates == 1


def test_a_device_surfacing_out_of_seq_order_mismatches_its_siblings() -> None:
    logs = clean()
    bob = logs[2]
    bob.surfaced = [bob.surfaced[1], bob.surfaced[0], *bob.surfaced[2:]]
    assert disorder(bob) == 1
    rep = check_devices(logs)
    assert rep.device_order_mismatch == 1 and rep.device_missing == 0


def test_order_is_per_conversation() -> None:
    logs = clean()
    logs[1].message(AC, 1, ("carol", 5))  # a later conversation starts at its own seq 1
    assert disorder(logs[1]) == 0


def test_a_seq_holding_another_message_is_a_mismatch() -> None:
    logs = clean()
    bob = logs[3]
    bob.surfaced[0] = (AB, 1, ("alice", 12))
    assert check_devices(logs).device_order_mismatch >= 1


def test_siblings_disagreeing_on_old_history_mismatch() -> None:
    """Seqs from before the run (no SENT here) are not expected, but siblings must agree."""
    logs = clean()
    old = "p:alice:dave"
    logs[0].message(old, 1, ("dave", 1))
    logs[1].message(old, 1, ("dave", 2))
    rep = check_devices(logs)
    assert rep.device_order_mismatch == 1 and rep.device_missing == 0
    assert rep.device_deliveries == rep.device_deliveries_expected


def test_read_cursors_must_converge_per_user() -> None:
    logs = clean()
    for log in logs:
        log.read_cursor(AB, 4)
    assert read_divergent(logs) == 0
    logs[1].read_cursor(AB, 2)  # a stale push never moves it back
    assert read_divergent(logs) == 0
    logs[3].read = {AB: 3}
    assert read_divergent(logs) == 1
    logs[0].read_cursor(AC, 1)  # a0 read AC, a1 knows nothing of it
    assert read_divergent(logs) == 2


def test_history_of_a_fresh_device() -> None:
    logs = clean()
    truth, _ = committed(logs)
    full = dict(truth)
    assert history_missing(truth, "bob", full) == (4, 0)
    del full[(AB, 3)]
    full[(AB, 2)] = ("alice", 99)
    assert history_missing(truth, "bob", full) == (4, 2)
    assert history_missing(truth, "carol", {}) == (0, 0)


def test_sender_disorder_counts_a_devices_messages_out_of_its_order() -> None:
    """I3: per conversation and sending device (its id slot), ids grow with the seq."""
    gen_a, gen_b = MessageIdGen(1), MessageIdGen(2)
    a1, a2, a3 = gen_a(), gen_a(), gen_a()
    b1 = gen_b()
    good = {(AB, 1): ("alice", a1), (AB, 2): ("bob", b1), (AB, 3): ("alice", a2)}
    assert sender_disorder(good) == 0
    # another device of alice's (slot 2) may interleave freely: its own order is what counts
    other = {(AB, 1): ("alice", a2), (AB, 2): ("alice", b1), (AB, 3): ("alice", a3)}
    assert sender_disorder(other) == 0
    swapped = {(AB, 1): ("alice", a2), (AB, 2): ("alice", a1), (AB, 3): ("alice", a3)}
    assert sender_disorder(swapped) == 1
    # the same device in two conversations: each has its own order
    split = {(AB, 1): ("alice", a2), ("p:alice:carol", 1): ("alice", a1)}
    assert sender_disorder(split) == 0


def test_record_keeps_a_groups_system_messages_beside_the_surfaced_ones() -> None:
    """What workload/groupcheck.py rebuilds membership from: a SYSTEM message is a surfaced
    place like any other (checked for order and duplicates) and its event is kept."""
    from client.events import Message, SystemInfo
    from proto import im_pb2
    from workload.fleet import record

    log = DeviceLog("bob", "b0")
    info = SystemInfo("JOINED", "alice", "bob")
    record(log, Message(3, "#g1", "g1", "bob joined", im_pb2.SYSTEM, 0, conv_id="g:g1", seq=3,
                        system=info))  # fmt: skip
    record(log, Message(9, "alice", "g1", "hi", im_pb2.TEXT, 0, conv_id="g:g1", seq=4))
    assert log.surfaced == [("g:g1", 3, ("#g1", 3)), ("g:g1", 4, ("alice", 9))]
    assert log.system == {("g:g1", 3): ("JOINED", "alice", "bob")}
