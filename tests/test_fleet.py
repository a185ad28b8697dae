"""The device fleet (workload/fleet.py): D devices per user with distinct ids, and a flapper
that keeps within its bounds and always brings a device back, as the same object."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, poll_until

from workload.fleet import Flapper, Fleet

pytestmark = pytest.mark.asyncio


@dataclass(eq=False)
class FakeDevice:
    """Only what the fleet touches: connect and disconnect, counted."""

    user_id: str
    device_id: str
    online: bool = True
    connects: int = 0
    closes: int = 0
    fail: bool = False

    async def connect(self) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise OSError("connector gone")
        self.connects += 1
        self.online = True

    async def disconnect(self) -> None:
        self.closes += 1
        self.online = False


def fleet(users: int = 4, devices: int = 3) -> Fleet[FakeDevice]:
    return Fleet([f"u{i}" for i in range(users)], devices, FakeDevice, tag="t")


async def test_every_user_gets_distinct_devices_and_a_fresh_one_is_new() -> None:
    f = fleet()
    assert len(list(f.all())) == 12
    for name, devs in f.clients.items():
        assert [d.device_id for d in devs] == ["t-0", "t-1", "t-2"]
        assert all(d.user_id == name for d in devs) and f.primary(name) is devs[0]
    new = f.fresh("u1")
    assert new.user_id == "u1" and new.device_id not in {d.device_id for d in f.clients["u1"]}
    assert f.fresh("u1").device_id != new.device_id
    assert len(f.of(["u0", "u3"])) == 6
    with pytest.raises(ValueError):
        Fleet(["x"], 0, FakeDevice)


async def test_flaps_stay_bounded_and_every_device_comes_back() -> None:
    f = fleet()
    pool = list(f.all())
    peak = 0
    flap = Flapper(pool, max_offline=2, every=0.005, away=(0.005, 0.03), max_flaps=40)

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sum(1 for d in pool if not d.online))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    flap.start(random.Random(7))
    for _ in range(400):
        if flap.flaps >= 40:
            break
        await asyncio.sleep(0.01)
    await flap.stop()
    watcher.cancel()
    assert flap.flaps == 40
    assert 1 <= peak <= 2
    assert all(d.online for d in pool) and not flap.offline
    assert sum(d.closes for d in pool) == 40 == sum(d.connects for d in pool)
    assert flap.failures == []


async def test_stop_brings_back_at_once_and_held_devices_are_left_alone() -> None:
    f = fleet(2, 2)
    pool = list(f.all())
    held = pool[0]
    held.online = False
    flap = Flapper(pool, max_offline=3, every=0.001, away=(30.0, 60.0), held={id(held)})
    flap.start(random.Random(1))
    assert await poll_until(lambda: flap.flaps >= 3, 5.0, 0.005)
    async with asyncio.timeout(5):  # the away time is 30 s or more: stop must not wait it out
        await flap.stop()
    assert held.closes == 0 and held.connects == 0 and not held.online
    assert all(d.online for d in pool[1:])


async def test_a_device_that_cannot_come_back_is_reported() -> None:
    dev = FakeDevice("u", "d", fail=True)
    calls: list[str] = []

    async def reconnect(d: FakeDevice) -> None:
        calls.append(d.device_id)
        await d.connect()

    flap = Flapper([dev], max_offline=1, every=0.001, away=(0.0, 0.001), max_flaps=1,
                   reconnect=reconnect)  # fmt: skip
    flap.start(random.Random(3))
    assert await poll_until(lambda: flap.flaps >= 1, 5.0, 0.001)
    await flap.stop()
    assert calls == ["d"] and len(flap.failures) == 1 and "connector gone" in flap.failures[0]
    assert not flap.offline


async def test_demo_on_several_devices_per_user_is_exact(tmp_path: Path) -> None:
    """The fleet under ``im demo`` against a real embedded stack (``im up``): 3 devices per
    user, some flapping, a user offline at first; twice, so the second run's devices also
    catch up the first run's history. Every count is exact and every contract key is there."""
    from cli.stack import Stack
    from common.config import Settings
    from workload.demo import ok, run_demo

    settings = Settings(
        data_dir=tmp_path,
        connector_port=0,
        transfer_port=0,
        rest_port=free_port(),
        ws_port=0,
        secret="test-secret-0123456789",
    )
    st = Stack(settings)
    await st.start()
    try:
        for _ in range(2):
            report = await run_demo(
                f"http://127.0.0.1:{st.rest_port}", 5, 150, 1, devices=3, prefix="fl",
                progress=False, timeout=60,
            )  # fmt: skip
            assert ok(report), report
            assert report["devices"] == 3
            assert report["device_deliveries"] == report["device_deliveries_expected"] == 900
            for key in ("device_missing", "device_duplicates", "device_order_mismatch"):
                assert report[key] == 0, key
            assert report["history_checked"] == 300 and report["history_missing"] == 0
    finally:
        await st.stop()
