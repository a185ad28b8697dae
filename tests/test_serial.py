"""KeyedSerial: one key's jobs in order, keys in parallel, a bound on what waits in all."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import IMError
from transfer.serial import Job, KeyedSerial

pytestmark = pytest.mark.asyncio


async def test_one_key_in_order_keys_in_parallel() -> None:
    serial = KeyedSerial()
    ran: list[tuple[str, int]] = []
    gate = asyncio.Event()

    def job(key: str, i: int, wait: bool = False) -> Job:
        async def run() -> None:
            if wait:
                await gate.wait()
            ran.append((key, i))

        return run

    await serial.submit("a", job("a", 1, wait=True))
    for i in range(2, 6):
        await serial.submit("a", job("a", i))
    await serial.submit("b", job("b", 1))
    await asyncio.sleep(0.01)
    assert ran == [("b", 1)]  # b is not held up behind a's first job
    gate.set()
    await serial.close()
    assert [i for k, i in ran if k == "a"] == [1, 2, 3, 4, 5]
    assert serial.queued == 0


async def test_submit_waits_while_the_bound_is_reached() -> None:
    serial = KeyedSerial(limit=3)
    gate = asyncio.Event()

    async def held() -> None:
        await gate.wait()

    for key in ("a", "b", "c"):
        await serial.submit(key, held)
    fourth = asyncio.create_task(serial.submit("d", held))
    await asyncio.sleep(0.01)
    assert not fourth.done() and serial.queued == 3
    gate.set()
    await asyncio.wait_for(fourth, 1)
    await serial.close()
    assert serial.queued == 0


async def test_a_failing_job_does_not_stop_its_key() -> None:
    serial = KeyedSerial()
    ran: list[int] = []

    async def boom() -> None:
        raise IMError("lost")

    async def bug() -> None:
        raise RuntimeError("bug")

    async def ok() -> None:
        ran.append(1)

    for job in (boom, bug, ok):
        await serial.submit("k", job)
    await serial.close()
    assert ran == [1] and serial.queued == 0


async def test_close_cancels_what_is_left_and_frees_its_places() -> None:
    serial = KeyedSerial(limit=10)

    async def forever() -> None:
        await asyncio.sleep(3600)

    for _ in range(4):
        await serial.submit("k", forever)
    await serial.close(grace=0.05)
    assert serial.queued == 0
    await serial.submit("k", forever)  # usable again: the count did not leak
    assert serial.queued == 1
    await serial.close(grace=0.01)


@pytest.mark.parametrize("n", [1000])
async def test_many_keys_all_run(n: int) -> None:
    serial = KeyedSerial(limit=50)
    seen: set[int] = set()

    def job(i: int) -> Job:
        async def run() -> None:
            await asyncio.sleep(0)
            seen.add(i)

        return run

    for i in range(n):
        await serial.submit(f"k{i % 37}", job(i))
    await serial.close()
    assert seen == set(range(n))


async def test_close_right_after_submit_frees_the_places() -> None:
    """A worker cancelled before it ever ran still gives its jobs' places back."""
    serial = KeyedSerial(limit=5)

    async def job() -> None:
        pass

    for key in ("a", "b"):
        await serial.submit(key, job)
    await serial.close(grace=0)  # the workers have not run yet
    assert serial.queued == 0
