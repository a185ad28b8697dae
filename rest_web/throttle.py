"""Login throttling that slows a password guesser without handing it a way to lock others out.

A throttle keyed on the user id alone is a weapon (five wrong guesses from anywhere lock the
owner out); one keyed on the address alone locks out everyone behind a NAT or proxy when one of
them misbehaves. So three counters, each aimed at one attack (DESIGN.md §6, docs/security.md):

- per (user id, address), with back-off: ``per_user`` failures are free, then each further one
  doubles a wait (2 s, 4 s, ... up to ``max_backoff``). One host guessing at one account gets a
  handful of tries, then about one per ``max_backoff``; the owner elsewhere is not affected. The
  count is forgotten after a quiet ``window`` past the last wait, and by a success;
- per address, distinct user ids that failed in a ``window``: past ``per_address`` the address is
  spraying guesses across accounts, and further attempts from it are refused for the rest of the
  window;
- per user id, failures from every address in a ``window``: past ``per_user_total`` someone is
  guessing at the account from many hosts, and attempts from addresses it has not logged in
  from are refused for the rest of the window.

The last two spare the user ids that logged in successfully from that address lately (within
:data:`KNOWN_FOR`): a spraying neighbour behind the same NAT does not lock out those who use it
every day, and a botnet guessing at an account does not lock its owner out of their usual
places. Nothing here depends on whether the account exists (a success is the only thing only a
real account can produce, and the attacker does not have one), so 429 tells nothing about which
accounts exist.

Everything is in memory and bounded (at most ``max_keys`` entries per table, oldest dropped
first); each REST process counts on its own, so N processes behind a balancer are N times as
loose (docs/security.md).

:class:`LoginThrottleMiddleware` applies it to ``POST /login`` without touching the endpoint:
it reads the (already size-capped) body for the user id and learns the outcome from the status
of the answer (401 failed, 2xx succeeded).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import metrics
from common.userids import canonical_or_none
from rest_web.proxies import TrustedProxies

MAX_KEYS = 100_000
# addresses tracked for spraying; each holds up to per_address ids, so this bounds the memory
MAX_ADDRESSES = 10_000
KNOWN_FOR = 30 * 24 * 3600.0
FIRST_WAIT = 2.0


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    users: set[str] = field(default_factory=set)


V = TypeVar("V")


def _put(table: OrderedDict[str, V], key: str, value: V, cap: int) -> None:
    table.pop(key, None)
    table[key] = value
    while len(table) > cap:
        table.popitem(last=False)


class LoginThrottle:
    def __init__(
        self,
        per_user: int,
        per_address: int,
        window: float,
        *,
        per_user_total: int = 50,
        max_backoff: float = 900.0,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.per_user_total = per_user_total
        self.window = window
        self.max_backoff = max_backoff
        self.max_keys = max_keys
        self.refused = 0  # answers 429 given, for tests and logs
        # "user|address" -> (failures, time of the last one)
        self._pairs: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._addresses: OrderedDict[str, _Window] = OrderedDict()
        self._users: OrderedDict[str, _Window] = OrderedDict()
        self._known: OrderedDict[str, float] = OrderedDict()  # "user|address" -> expiry

    def _wait_of(self, failures: int) -> float:
        if failures < self.per_user:
            return 0.0
        return float(min(self.max_backoff, FIRST_WAIT * 2 ** min(failures - self.per_user, 30)))

    def _known_pair(self, pair: str, now: float) -> bool:
        expiry = self._known.get(pair)
        return expiry is not None and now < expiry

    def retry_after(
        self, user_id: str | None, address: str | None, now: float | None = None
    ) -> float:
        """Seconds until this user id may try again from this address; 0 when it may now."""
        t = time.monotonic() if now is None else now
        user = user_id or ""
        addr = address or ""
        pair = f"{user}|{addr}"
        wait = 0.0
        entry = self._pairs.get(pair)
        if entry is not None:
            failures, last = entry
            wait = max(wait, last + self._wait_of(failures) - t)
        if self._known_pair(pair, t):
            return max(0.0, wait)
        spray = self._addresses.get(addr)
        if spray and t - spray.start < self.window and len(spray.users) >= self.per_address:
            wait = max(wait, spray.start + self.window - t)  # spraying from here
        total = self._users.get(user)
        if user and total and t - total.start < self.window and total.count >= self.per_user_total:
            wait = max(wait, total.start + self.window - t)  # guessed at from everywhere
        return max(0.0, wait)

    def failed(self, user_id: str | None, address: str | None, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        user = user_id or ""
        addr = address or ""
        pair = f"{user}|{addr}"
        failures, last = self._pairs.get(pair, (0, t))
        if t - last >= self._wait_of(failures) + self.window:
            failures = 0  # quiet for a window after the last wait: start afresh
        _put(self._pairs, pair, (failures + 1, t), self.max_keys)
        spray = self._addresses.get(addr)
        if spray is None or t - spray.start >= self.window:
            spray = _Window(t)
        if len(spray.users) < self.per_address:
            spray.users.add(user)
        _put(self._addresses, addr, spray, min(self.max_keys, MAX_ADDRESSES))
        if user:
            total = self._users.get(user)
            if total is None or t - total.start >= self.window:
                total = _Window(t)
            total.count += 1
            _put(self._users, user, total, self.max_keys)

    def succeeded(self, user_id: str, address: str | None, now: float | None = None) -> None:
        """The owner got in from here: their back-off here ends, and this address stays open
        to them while others spray from it or guess at their account from elsewhere."""
        t = time.monotonic() if now is None else now
        pair = f"{user_id}|{address or ''}"
        self._pairs.pop(pair, None)
        _put(self._known, pair, t + KNOWN_FOR, self.max_keys)

    def __len__(self) -> int:
        return len(self._pairs) + len(self._addresses) + len(self._users) + len(self._known)


class AddressLimit:
    """At most ``limit`` events per address per fixed ``window`` (accounts created): a host may
    not mint accounts in bulk. Bounded like the login throttle."""

    def __init__(self, limit: int, window: float, *, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def take(self, address: str | None, now: float | None = None) -> float:
        """Count one event if allowed (0 returned), else the seconds until the window ends.
        Counted before the work it guards, so a burst of concurrent requests cannot all pass."""
        t = time.monotonic() if now is None else now
        key = address or ""
        entry = self._windows.get(key)
        if entry is None or t - entry.start >= self.window:
            entry = _Window(t)
        if entry.count >= self.limit:
            return entry.start + self.window - t
        entry.count += 1
        _put(self._windows, key, entry, self.max_keys)
        return 0.0

    def give_back(self, address: str | None) -> None:
        """The event counted by :meth:`take` did not happen after all."""
        entry = self._windows.get(address or "")
        if entry is not None and entry.count > 0:
            entry.count -= 1

    def __len__(self) -> int:
        return len(self._windows)


def too_many(retry_after: float) -> JSONResponse:
    seconds = max(1, math.ceil(retry_after))
    return JSONResponse(
        {"detail": f"too many failed attempts, retry in {seconds} s"},
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


class LoginThrottleMiddleware:
    """ASGI middleware applying :class:`LoginThrottle` to ``POST {path}``."""

    def __init__(
        self,
        app: ASGIApp,
        throttle: LoginThrottle,
        proxies: TrustedProxies,
        path: str = "/login",
    ) -> None:
        self.app = app
        self.throttle = throttle
        self.proxies = proxies
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # the body is capped by the BodyLimit middleware outside this one
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        user_id = _user_id_of(body)
        address = self.proxies.client_of(scope)
        wait = self.throttle.retry_after(user_id, address)
        if wait > 0:
            self.throttle.refused += 1
            metrics.login("throttled")
            await too_many(wait)(scope, _no_receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status == 401:
                    self.throttle.failed(user_id, address)
                elif 200 <= status < 300 and user_id:
                    self.throttle.succeeded(user_id, address)
            await send(message)

        await self.app(scope, replay, watch)


def _user_id_of(body: bytes) -> str | None:
    """The canonical ``user_id`` a login body names, or None (the endpoint then refuses it).
    A body nested past the parser's depth is no login at all: the endpoint answers it 400."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = data.get("user_id") if isinstance(data, dict) else None
    return canonical_or_none(value)


async def _no_receive() -> Message:  # pragma: no cover - JSONResponse never reads
    return {"type": "http.disconnect"}
