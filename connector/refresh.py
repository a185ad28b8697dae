"""One loop timer for the periodic listings of every session on an event loop.

Every session lists again about once a minute (connector/session.py, ``RELIST_EVERY``). A loop
timer each would cost an idle connection some 550 bytes (with uvloop, a TimerHandle and its
libuv timer) for something that fires once a minute. The wheel keeps, per session, a place in
the table of the sessions due in the same second, and one loop timer for the earliest second:
a listing starts up to a second after its time, against the 20 % the rules spread them by.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, Protocol

log = logging.getLogger(__name__)

GRAIN = 1.0  # seconds: sessions due within one grain fire together, at its end


class Due(Protocol):
    def refresh_due(self) -> None:
        """Its time came (it is no longer in the wheel)."""
        ...


class RefreshWheel:
    """The due times of one event loop's sessions, to a :data:`GRAIN`."""

    _all: ClassVar[dict[int, RefreshWheel]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # slot -> the items due by slot * GRAIN (a dict for its order and O(1) removal)
        self._due: dict[int, dict[Due, None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the slot the timer is set for

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> RefreshWheel:
        wheel = cls._all.get(id(loop))
        if wheel is None or wheel._loop is not loop:
            wheel = cls._all[id(loop)] = cls(loop)
        return wheel

    @classmethod
    def cancel(cls, loop: asyncio.AbstractEventLoop, item: Due, slot: int) -> None:
        """Take ``item`` out of ``slot`` (what :meth:`add` returned), if it is still there."""
        wheel = cls._all.get(id(loop))
        if wheel is None or wheel._loop is not loop:
            return
        items = wheel._due.get(slot)
        if items is None:
            return
        items.pop(item, None)
        if not items:
            del wheel._due[slot]
            if not wheel._due:
                wheel._close()

    def add(self, item: Due, when: float) -> int:
        """``item.refresh_due()`` at loop time ``when`` (at most a grain later); returns the
        slot to :meth:`cancel` it with (never 0)."""
        slot = max(1, int(when // GRAIN) + 1)
        items = self._due.get(slot)
        if items is None:
            self._due[slot] = {item: None}
        else:
            items[item] = None
        if self._timer is None or slot < self._armed:
            self._arm(slot)
        return slot

    def __len__(self) -> int:
        return sum(len(items) for items in self._due.values())

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = self._loop.call_at(slot * GRAIN, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # a loop timer may fire a hair early: what is due within a hundredth of a grain is due
        now = self._loop.time() + GRAIN / 100
        for slot in sorted(s for s in self._due if s * GRAIN <= now):
            for item in self._due.pop(slot):
                try:
                    item.refresh_due()
                except Exception:
                    log.exception("%r: periodic listing failed to start", item)
        if self._due:
            self._arm(min(self._due))  # items added meanwhile may have armed a later slot
        else:
            self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if RefreshWheel._all.get(id(self._loop)) is self:
            del RefreshWheel._all[id(self._loop)]
