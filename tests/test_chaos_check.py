"""The chaos checker's verdicts (workload/traffic.py ``check``, ``check_all``) on ledgers made
by hand: each guarantee's violation is seen and counted, and a clean run is clean, with one
device per user and with several."""

from __future__ import annotations

from cli import chaos
from workload.traffic import KINDS, Ledger, check, check_all

AB = "p:alice:bob"
AC = "p:alice:carol"


def ledger(n: int = 3, devices: int = 1) -> Ledger:
    """alice (device a0) sent n messages to bob (ids 1..n at seqs 1..n), all SENT, surfaced in
    order by every device of bob and every other device of alice, all receipted."""
    led = Ledger(devices=devices)
    sender = led.log("alice", "a0")
    others = [led.log("alice", f"a{k}") for k in range(1, devices)]
    bobs = [led.log("bob", f"b{k}") for k in range(devices)]
    for i in range(1, n + 1):
        led.record_send("alice", "bob", i)
        sender.own_sent(AB, i, ("alice", i))
        for log in others + bobs:
            log.message(AB, i, ("alice", i))
        for kind in KINDS:
            led.receipts[(kind, "alice", i)] += 1
    return led


def test_a_clean_run_has_no_violation() -> None:
    for devices in (1, 3):
        r = check_all(ledger(devices=devices))
        assert r["acked"] == r["delivered"] == r["sent"] == 3
        for key in (
            "lost",
            "duplicates",
            "out_of_order",
            "disorder",
            "receipts_missing",
            "receipts_duplicated",
            "stray",
            "device_missing",
            "device_duplicates",
            "device_order_mismatch",
            "read_cursor_divergent",
        ):
            assert r[key] == 0, key
        assert r["device_deliveries"] == r["device_deliveries_expected"] == 3 * 2 * devices


def test_an_acked_message_never_surfaced_is_lost() -> None:
    led = ledger()
    bob = led.log("bob", "b0")
    bob.surfaced = [s for s in bob.surfaced if s[1] != 2]
    r = check_all(led)
    assert r["lost"] == 1 and r["device_missing"] == 1


def test_one_device_having_it_is_enough_not_to_be_lost_but_the_other_misses_it() -> None:
    led = ledger(devices=2)
    bob = led.log("bob", "b1")
    bob.surfaced = [s for s in bob.surfaced if s[1] != 2]
    r = check_all(led)
    assert r["lost"] == 0 and r["device_missing"] == 1


def test_a_message_never_acked_is_not_lost_but_reported_apart() -> None:
    led = ledger()
    led.record_send("alice", "bob", 4)  # no SENT, never surfaced
    r = check(led)
    assert r["lost"] == 0 and r["not_acked"] == 1


def test_a_message_surfaced_twice_is_a_duplicate() -> None:
    led = ledger()
    led.log("bob", "b0").message(AB, 1, ("alice", 1))
    r = check_all(led)
    assert r["duplicates"] == 1 and r["device_duplicates"] == 1


def test_a_message_below_a_seq_already_shown_is_out_of_order() -> None:
    led = ledger(4)
    bob = led.log("bob", "b0")
    bob.surfaced = [bob.surfaced[i] for i in (0, 2, 1, 3)]
    r = check_all(led)
    assert r["out_of_order"] == r["disorder"] == 1 and r["device_order_mismatch"] == 1


def test_order_is_per_conversation() -> None:
    led = ledger(2)
    led.record_send("carol", "bob", 1)  # carol's ids are her own: 1 again
    led.log("carol", "c0").own_sent("p:bob:carol", 1, ("carol", 1))
    led.log("bob", "b0").surfaced.insert(0, ("p:bob:carol", 1, ("carol", 1)))
    for kind in KINDS:
        led.receipts[(kind, "carol", 1)] += 1
    r = check_all(led)
    assert r["out_of_order"] == 0 and r["device_missing"] == 0


def test_receipts_missing_and_duplicated() -> None:
    led = ledger()
    del led.receipts[("READ", "alice", 3)]
    led.receipts[("DELIVERED", "alice", 1)] += 1
    r = check(led)
    assert r["receipts_missing"] == 1 and r["receipts_duplicated"] == 1


def test_read_cursors_of_one_user_must_agree() -> None:
    led = ledger(devices=2)
    for log in led.logs.values():
        log.read_cursor(AB, 3)
    assert check_all(led)["read_cursor_divergent"] == 0
    led.log("bob", "b1").read = {AB: 2}
    led.log("alice", "a1").read_cursor(AC, 1)
    assert check_all(led)["read_cursor_divergent"] == 2


def test_a_run_that_checked_nothing_does_not_pass() -> None:
    """Every violation 0 is not enough: nothing acked (say every chat refused), no device that
    had anything to hold, or no read cursor compared, and the run proves nothing."""
    base: dict[str, object] = {k: 0 for k in chaos.VIOLATIONS}
    base.update(
        settled=True,
        acked=10,
        device_deliveries=40,
        device_deliveries_expected=40,
        read_cursors_checked=8,
    )
    assert chaos.ok(base)
    for key in ("acked", "device_deliveries_expected", "read_cursors_checked"):
        empty = dict(base, **{key: 0})
        if key == "device_deliveries_expected":
            empty["device_deliveries"] = 0
        assert not chaos.ok(empty), key
    assert not chaos.ok(dict(base, sender_disorder=1))
