"""A fleet of devices: D client objects per user, and a flapper that takes some offline and
brings them back at random, within bounds.

Why a fleet: under the timeline model every device of a user must end with the same
conversations, whether it stayed online, went away mid-run and caught up, or was new. The
workloads (``im demo``, ``im chaos``) need many devices per user going away and coming back
while messages flow; this keeps that part in one place, apart from what they check.

A device that goes away is disconnected (its link closed) and, after a while, connected again:
the *same* object, so it keeps what it remembers (its per-conversation ``have``, its last
``since``, its outbox: what it sends meanwhile waits there) and catches up from there, as a
phone that lost its network does. Bounds: at most ``max_offline`` devices
away at once, each for a time drawn from ``away``, at most ``max_flaps`` flaps in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from client.core import IMClient
from client.events import Event, Message, Receipt
from workload.devices import DeviceLog


class Device(Protocol):
    """What the fleet needs of a client: IMClient has it."""

    user_id: str
    device_id: str

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...


D = TypeVar("D", bound=Device)


@dataclass
class Fleet(Generic[D]):
    """``devices`` clients per user, made by ``make(user, device_id)``; ``tag`` names them.

    The first device of a user is its *primary*: it registers, logs in first and befriends."""

    names: list[str]
    devices: int
    make: Callable[[str, str], D]
    tag: str = "dev"
    clients: dict[str, list[D]] = field(default_factory=dict)
    fresh_made: dict[str, int] = field(default_factory=dict)  # user -> fresh devices made

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("every user needs at least one device")
        for name in self.names:
            self.clients[name] = [self.make(name, f"{self.tag}-{k}") for k in range(self.devices)]

    def primary(self, name: str) -> D:
        return self.clients[name][0]

    def all(self) -> Iterator[D]:
        for devs in self.clients.values():
            yield from devs

    def of(self, names: list[str]) -> list[D]:
        return [d for n in names for d in self.clients[n]]

    def fresh(self, name: str) -> D:
        """A brand-new device of ``name``: a new object (it starts from since 0) with a device
        id none of the fleet's others has. Ids repeat across runs (``{tag}-fresh{k}``): the
        server keeps a message id slot per device id, 64 per user."""
        k = self.fresh_made.get(name, 0)
        self.fresh_made[name] = k + 1
        return self.make(name, f"{self.tag}-fresh{k}")


@dataclass
class Flapper(Generic[D]):
    """Takes devices offline and back at random while :meth:`run` runs.

    ``reconnect`` brings one back (default: its ``connect``; a workload under chaos passes one
    that retries). A device in ``held`` is never touched (a workload keeps it offline itself)."""

    pool: list[D]
    max_offline: int
    every: float = 1.0
    away: tuple[float, float] = (0.5, 3.0)
    max_flaps: int | None = None
    reconnect: Callable[[D], Awaitable[None]] | None = None
    held: set[int] = field(default_factory=set)  # id() of devices left alone
    offline: set[int] = field(default_factory=set)  # id() of devices away now
    flaps: int = 0
    failures: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _running: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)  # set: come back now
    _runner: asyncio.Task[None] | None = None

    def start(self, rng: random.Random) -> None:
        """:meth:`run` in a task of its own, until :meth:`stop`."""
        self._runner = asyncio.create_task(self.run(rng), name="flapper")

    def candidates(self) -> list[D]:
        return [d for d in self.pool if id(d) not in self.offline and id(d) not in self.held]

    def room(self) -> bool:
        if self.max_flaps is not None and self.flaps >= self.max_flaps:
            return False
        return len(self.offline) < self.max_offline

    async def run(self, rng: random.Random) -> None:
        """Flap until :meth:`stop` (or the flap budget is spent)."""
        self._running = True
        while self._running:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * self.every)
            if not self._running:
                return
            if self.max_flaps is not None and self.flaps >= self.max_flaps:
                return
            pool = self.candidates()
            if not pool or not self.room():
                continue
            dev = rng.choice(pool)
            self.offline.add(id(dev))
            self.flaps += 1
            seconds = rng.uniform(*self.away)
            task = asyncio.create_task(self._away(dev, seconds), name=f"away {dev.device_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _away(self, dev: D, seconds: float) -> None:
        try:
            await dev.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
        finally:
            await self._back(dev)

    async def _back(self, dev: D) -> None:
        try:
            if self.reconnect is not None:
                await self.reconnect(dev)
            else:
                await dev.connect()
        except Exception as exc:
            self.failures.append(f"{dev.user_id}/{dev.device_id}: {exc!r}")
        finally:
            self.offline.discard(id(dev))

    async def stop(self) -> None:
        """No more flaps; bring every device taken away back now, and wait until it is back
        (or failed to come)."""
        self._running = False
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        self._wake.set()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def record(log: DeviceLog, ev: Event) -> None:
    """Write what ``ev`` tells about the device's timelines into its log: a surfaced message at
    its place, or the place the server committed one of its own chats at (SENT)."""
    if isinstance(ev, Message) and ev.conv_id and ev.seq:
        log.message(ev.conv_id, ev.seq, (ev.from_id, ev.msg_id))
        if ev.system is not None:
            s = ev.system
            log.system_event(ev.conv_id, ev.seq, s.event, s.actor, s.target)
    elif isinstance(ev, Receipt) and ev.kind == "SENT" and ev.conv_id and ev.seq:
        log.own_sent(ev.conv_id, ev.seq, (log.user, ev.msg_id))


def read_cursors(c: IMClient) -> dict[str, int]:
    """Where this device knows its user read each conversation to: its own marks, the READ of
    the user's other devices (Cursor pushes) and the ConvState listing, whichever is highest."""
    return c.read_cursors()
