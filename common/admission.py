"""Admission of connections that have not authenticated yet (issue 12, finding 2).

Anyone can open a TCP connection and say nothing, or send junk slowly; each such connection
costs the server a socket, a transport and a link state until the GREET deadline ends it. This
counter bounds how many may exist at once, per source address and in all. A link takes a place
when it is accepted and gives it back when it authenticates or closes; a connection that finds
no place is closed at accept, before any byte of it is read.

Sans-IO: the time is passed in (only to rate-limit the log line about refusals).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# one log line about refused connections per this many seconds at most: a flood must not
# become a log flood
LOG_EVERY = 10.0


class PreAuthLimits:
    """Places for unauthenticated connections: ``per_address`` per source, ``total`` in all."""

    __slots__ = (
        "_by_address",
        "_logged",
        "_refused_since_log",
        "count",
        "per_address",
        "refused",
        "total",
    )

    def __init__(self, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        self.count = 0
        self.refused = 0
        # at most ``total`` keys: an address is here only while it holds a place
        self._by_address: dict[str, int] = {}
        self._logged = float("-inf")
        self._refused_since_log = 0

    def admit(self, address: str, now: float) -> bool:
        """Take a place for a new connection from ``address``; False: close it."""
        held = self._by_address.get(address, 0)
        if self.count >= self.total or held >= self.per_address:
            self.refused += 1
            self._refused_since_log += 1
            if now - self._logged >= LOG_EVERY:
                log.warning(
                    "refused %d unauthenticated connections (now %s holds %d of %d per address,"
                    " %d of %d in all)",
                    self._refused_since_log,
                    address,
                    held,
                    self.per_address,
                    self.count,
                    self.total,
                )
                self._logged, self._refused_since_log = now, 0
            return False
        self._by_address[address] = held + 1
        self.count += 1
        return True

    def release(self, address: str) -> None:
        """Give back the place ``address`` took (it authenticated, or closed)."""
        held = self._by_address.get(address, 0)
        if held <= 1:
            self._by_address.pop(address, None)
        else:
            self._by_address[address] = held - 1
        if held:
            self.count -= 1

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)
