"""Signed webhook POSTs to ``IM_WEBHOOK_URL``, off the chat path.

Rules kept here:
- :meth:`Webhooks.emit` never waits and never fails: it puts the event in a bounded queue and
  returns. A receiver that is slow, failing or gone costs the chat path nothing but that call;
- the queue holds at most ``queue_size`` events; when it is full the **oldest** is dropped (and
  counted, ``im_webhook_deliveries_total{outcome="dropped"}``). Why the oldest: the queue only
  fills while the receiver is failing, and what matters most when it is back is what is
  happening now (a push notification for a message sent a minute ago is still useful; one from
  an hour ago mostly is not, and its recipient has likely been online since). Dropping the new
  ones would deliver an hour-old backlog first and the present not at all;
- :data:`WORKERS` deliveries at once, each retried on a network error, a timeout, 408, 429 or a
  5xx, up to ``retries`` times, waiting ``base * 2**n`` seconds (at most ``cap``, +-20% jitter
  so that many processes do not retry in step; a ``Retry-After`` is honoured up to ``cap``);
  any other answer but 2xx is final (``rejected``): resending the same body cannot fix it;
- every attempt is signed afresh (hooks/signing.py) and carries the same delivery id.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

import httpx

from common import metrics
from common.config import Settings
from common.errors import ConfigError
from hooks import events, signing

log = logging.getLogger(__name__)

WORKERS = 4  # deliveries in flight per process: a receiver sees at most this many at once
BACKOFF_BASE = 0.5  # seconds before the first retry
BACKOFF_CAP = 30.0  # longest wait between two attempts
CLOSE_GRACE = 2.0  # seconds a stopping process gives the deliveries in flight
USER_AGENT = "im-cluster-webhooks/1"
MIN_SECRET = 16  # characters, as for IM_SECRET


def retry_delay(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry ``attempt`` (1 for the first): ``base * 2**(attempt-1)``,
    at most ``cap``, times a jitter factor in [0.8, 1.2] drawn from ``rand()`` in [0, 1)."""
    return float(min(cap, base * 2 ** (attempt - 1)) * (0.8 + 0.4 * rand()))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str
    body: bytes
    delivery_id: str


class Webhooks:
    """The webhook sender of one process. ``url`` empty: :meth:`emit` does nothing."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        node: str = "",
        timeout: float = 5.0,
        retries: int = 6,
        queue_size: int = 10_000,
        only: Collection[str] = (),
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        workers: int = WORKERS,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if url and len(secret) < MIN_SECRET:
            raise ConfigError(
                f"IM_WEBHOOK_SECRET must be set, {MIN_SECRET}+ characters, with IM_WEBHOOK_URL"
            )
        unknown = set(only) - events.EVENTS
        if unknown:
            raise ConfigError(f"IM_WEBHOOK_EVENTS: unknown events {sorted(unknown)}")
        self.url = url
        self._secret = secret.encode()
        self.node = node
        self._timeout = timeout
        self._retries = retries
        self._only = frozenset(only)
        self._base, self._cap = backoff_base, backoff_cap
        self._rand = rand
        self._workers = workers
        self._queue: deque[_Event] = deque()
        self._queue_size = queue_size
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._closing = False
        self.dropped = 0
        metrics.queue_depth_source("webhook", self, lambda w: len(w._queue))

    @classmethod
    def from_settings(cls, settings: Settings, node: str = "") -> Webhooks:
        only = [e.strip() for e in settings.webhook_events.split(",") if e.strip()]
        return cls(
            settings.webhook_url,
            settings.webhook_secret,
            node=node,
            timeout=settings.webhook_timeout,
            retries=settings.webhook_retries,
            queue_size=settings.webhook_queue,
            only=only,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def wants(self, event: str) -> bool:
        """``event`` would be sent: a caller on a hot path asks once, and builds no payload
        for an event nobody receives."""
        return bool(self.url) and (not self._only or event in self._only)

    @property
    def depth(self) -> int:
        """Events waiting (not counting those being delivered)."""
        return len(self._queue)

    def emit(self, event: str, data: events.Data) -> None:
        """Queue ``event`` for delivery; returns at once, whatever the receiver is doing."""
        if not self.url or self._closing or (self._only and event not in self._only):
            return
        if len(self._queue) >= self._queue_size:
            old = self._queue.popleft()
            self.dropped += 1
            metrics.webhook("dropped")
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "webhook queue full (%d): dropped %s %s (%d dropped so far)",
                    self._queue_size,
                    old.kind,
                    old.delivery_id,
                    self.dropped,
                )
        delivery_id = events.new_delivery_id()
        body = events.envelope(event, data, self.node, delivery_id)
        self._queue.append(_Event(event, body, delivery_id))
        self._wake.set()

    async def start(self) -> None:
        if not self.url or self._tasks:
            return
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=self._workers),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )
        self._tasks = [
            asyncio.create_task(self._work(), name=f"webhook-{i}") for i in range(self._workers)
        ]

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop taking events; give the queue ``grace`` seconds, then drop what is left."""
        self._closing = True
        if self._tasks:
            self._wake.set()  # idle workers see the flag and return once the queue is empty
            await asyncio.wait(self._tasks, timeout=grace)
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._queue:
            log.warning("webhooks: %d events not delivered at shutdown", len(self._queue))
            self._queue.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _work(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            await self._deliver(self._queue.popleft())

    async def _deliver(self, event: _Event) -> None:
        assert self._client is not None
        for attempt in range(self._retries + 1):
            wait: float | None = None
            try:
                response = await self._client.post(
                    self.url,
                    content=event.body,
                    headers={
                        signing.HEADER: signing.sign(self._secret, int(time.time()), event.body),
                        signing.EVENT_HEADER: event.kind,
                        signing.DELIVERY_HEADER: event.delivery_id,
                    },
                )
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                code = response.status_code
                if 200 <= code < 300:
                    metrics.webhook("delivered")
                    return
                if code not in (408, 429) and code < 500:
                    metrics.webhook("rejected")
                    log.warning(
                        "webhook %s %s refused with %d: not retried",
                        event.kind,
                        event.delivery_id,
                        code,
                    )
                    return
                problem = f"HTTP {code}"
                wait = _retry_after(response)
            if attempt == self._retries:
                metrics.webhook("failed")
                log.warning(
                    "webhook %s %s given up after %d attempts: %s",
                    event.kind,
                    event.delivery_id,
                    attempt + 1,
                    problem,
                )
                return
            metrics.webhook("retried")
            delay = retry_delay(attempt + 1, self._base, self._cap, self._rand)
            if wait is not None:
                delay = min(self._cap, max(delay, wait))
            log.debug("webhook %s attempt %d: %s", event.delivery_id, attempt + 1, problem)
            await asyncio.sleep(delay)
