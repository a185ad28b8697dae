"""The chaos checker's verdicts (client/traffic.py ``check``) on ledgers made by hand: each
guarantee's violation is seen and counted, and a clean run is clean."""

from __future__ import annotations

from client.traffic import KINDS, Ledger, check


def ledger(n: int = 3) -> Ledger:
    """alice sent n messages to bob (ids 1..n), all SENT, surfaced in order, all receipted."""
    led = Ledger()
    for i in range(1, n + 1):
        led.record_send("alice", "bob", i)
        led.surfaced["bob"].append(("alice", i))
        for kind in KINDS:
            led.receipts[(kind, "alice", i)] += 1
    return led


def test_a_clean_run_has_no_violation() -> None:
    r = check(ledger())
    assert r["acked"] == r["delivered"] == r["sent"] == 3
    for key in ("lost", "duplicates", "out_of_order", "receipts_missing", "receipts_duplicated"):
        assert r[key] == 0, key


def test_an_acked_message_never_surfaced_is_lost() -> None:
    led = ledger()
    led.surfaced["bob"].remove(("alice", 2))
    assert check(led)["lost"] == 1


def test_a_message_never_acked_is_not_lost_but_reported_apart() -> None:
    led = ledger()
    led.record_send("alice", "bob", 4)  # no SENT, never surfaced
    r = check(led)
    assert r["lost"] == 0 and r["not_acked"] == 1


def test_a_message_surfaced_twice_is_a_duplicate() -> None:
    led = ledger()
    led.surfaced["bob"].append(("alice", 1))
    assert check(led)["duplicates"] == 1


def test_a_message_after_a_later_one_is_out_of_order() -> None:
    led = ledger(4)
    led.surfaced["bob"] = [("alice", 1), ("alice", 3), ("alice", 2), ("alice", 4)]
    assert check(led)["out_of_order"] == 1


def test_order_is_per_conversation() -> None:
    led = ledger(2)
    led.record_send("carol", "bob", 1)  # carol's ids are her own: 1 again
    led.surfaced["bob"].insert(0, ("carol", 1))
    for kind in KINDS:
        led.receipts[(kind, "carol", 1)] += 1
    assert check(led)["out_of_order"] == 0


def test_receipts_missing_and_duplicated() -> None:
    led = ledger()
    del led.receipts[("READ", "alice", 3)]
    led.receipts[("DELIVERED", "alice", 1)] += 1
    r = check(led)
    assert r["receipts_missing"] == 1 and r["receipts_duplicated"] == 1
