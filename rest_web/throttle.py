"""Login throttling: failed password checks per user id and per source address (DESIGN.md §6).

Password guessing is slowed twice: one user id takes at most ``per_user`` failures per window
from anywhere (a distributed guess at one account), one address at most ``per_address`` failures
per window whatever the user ids (one host spraying many accounts). Past either, the answer is
429 with ``Retry-After`` until the window that counted them ends, and the password is not even
checked, so the work an attacker can make us do is bounded too.

Rules:
- an unknown user id is throttled exactly like a known one, so 429 says nothing about which
  accounts exist;
- a success clears that user id's failures (the owner got in) but not the address's;
- fixed windows per key, in memory, at most ``max_keys`` keys (the oldest dropped first): bounded
  whatever ids and addresses arrive. Each REST process counts on its own, so with N processes
  behind a balancer the limits are N times looser (docs/security.md).

:class:`LoginThrottleMiddleware` applies it to ``POST /login`` without touching the endpoint:
it reads the (already size-capped) body for the user id, and learns the outcome from the status
of the answer (401 failed, 2xx succeeded).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import metrics

MAX_KEYS = 100_000


class LoginThrottle:
    def __init__(
        self,
        per_user: int,
        per_address: int,
        window: float,
        *,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self.max_keys = max_keys
        self.refused = 0  # answers 429 given, for tests and logs
        # key -> (window start, failures); insertion order is age order
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    @staticmethod
    def keys(user_id: str | None, address: str | None) -> list[str]:
        out = []
        if user_id:
            out.append("u:" + user_id)
        if address:
            out.append("a:" + address)
        return out

    def _limit(self, key: str) -> int:
        return self.per_user if key.startswith("u:") else self.per_address

    def retry_after(self, keys: Iterable[str], now: float | None = None) -> float:
        """Seconds until these keys may try again; 0 when they may now."""
        t = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            entry = self._counts.get(key)
            if entry is None:
                continue
            start, failures = entry
            if t - start >= self.window:
                continue
            if failures >= self._limit(key):
                wait = max(wait, start + self.window - t)
        return wait

    def failed(self, keys: Iterable[str], now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        for key in keys:
            start, failures = self._counts.pop(key, (t, 0))
            if t - start >= self.window:
                start, failures = t, 0
            self._counts[key] = (start, failures + 1)
        while len(self._counts) > self.max_keys:
            self._counts.popitem(last=False)

    def succeeded(self, user_id: str) -> None:
        self._counts.pop("u:" + user_id, None)

    def __len__(self) -> int:
        return len(self._counts)


def too_many(retry_after: float) -> JSONResponse:
    seconds = max(1, math.ceil(retry_after))
    return JSONResponse(
        {"detail": f"too many failed attempts, retry in {seconds} s"},
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


def client_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class LoginThrottleMiddleware:
    """ASGI middleware applying :class:`LoginThrottle` to ``POST {path}``."""

    def __init__(self, app: ASGIApp, throttle: LoginThrottle, path: str = "/login") -> None:
        self.app = app
        self.throttle = throttle
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
        keys = LoginThrottle.keys(user_id, client_address(scope))
        wait = self.throttle.retry_after(keys)
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
                    self.throttle.failed(keys)
                elif 200 <= status < 300 and user_id:
                    self.throttle.succeeded(user_id)
            await send(message)

        await self.app(scope, replay, watch)


def _user_id_of(body: bytes) -> str | None:
    """The ``user_id`` a login body names, or None (the endpoint then refuses it anyway)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("user_id") if isinstance(data, dict) else None
    return value[:64] if isinstance(value, str) and value else None


async def _no_receive() -> Message:  # pragma: no cover - JSONResponse never reads
    return {"type": "http.disconnect"}
