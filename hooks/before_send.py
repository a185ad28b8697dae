"""The synchronous ``message.before_send`` hook: an outside service may refuse a message.

The connector calls :meth:`BeforeSend.__call__` for each chat before it forwards it, and answers
a refused one with the wire error REFUSED (nothing is delivered, nothing stored). The request is
the same signed JSON as every webhook (hooks/events.py, hooks/signing.py) with ``type``
``message.before_send``; the hook answers ``200 {"allow": true}`` or ``200 {"allow": false,
"reason": "..."}``.

Rules: the whole call, waiting for a free slot included, takes at most ``timeout`` seconds; at
most :data:`MAX_IN_FLIGHT` calls are open at once per process. Anything but a well-formed 200
answer in time (timeout, refused connection, 5xx, not JSON) is "no answer", and the setting
``IM_WEBHOOK_BEFORE_SEND_FAIL`` decides: ``open`` lets the message through (chat keeps working
while the hook is down), ``closed`` refuses it (nothing passes unchecked). A refusal's reason is
cut to :data:`MAX_REASON` characters before it reaches the sender.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import httpx

from common import metrics
from common.config import Settings
from common.errors import ConfigError
from hooks import events, signing
from hooks.sender import MIN_SECRET, USER_AGENT

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 256  # open hook calls per process; more wait (within their timeout)
MAX_REASON = 200
MAX_ANSWER = 4096  # bytes of the hook's answer read; a longer one is "no answer"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str = ""
    answered: bool = True  # False: the hook did not answer and the fail mode decided


ALLOW = Verdict(True)


class BeforeSend:
    """``await hook(data)`` for ``data`` from :func:`hooks.events.message_data`. With ``url``
    empty every message is allowed at once."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 1.0,
        fail_closed: bool = False,
        node: str = "",
    ) -> None:
        if url and len(secret) < MIN_SECRET:
            raise ConfigError(
                f"IM_WEBHOOK_SECRET must be set, {MIN_SECRET}+ characters, with "
                "IM_WEBHOOK_BEFORE_SEND_URL"
            )
        self.url = url
        self._secret = secret.encode()
        self._timeout = timeout
        self._fail_closed = fail_closed
        self.node = node
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings, node: str = "") -> BeforeSend:
        return cls(
            settings.webhook_before_send_url,
            settings.webhook_secret,
            timeout=settings.webhook_before_send_timeout,
            fail_closed=settings.webhook_before_send_fail == "closed",
            node=node,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    async def __call__(self, data: events.Data) -> Verdict:
        if not self.url:
            return ALLOW
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                limits=httpx.Limits(max_connections=MAX_IN_FLIGHT),
                headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            )
        body = events.envelope(events.MESSAGE_BEFORE_SEND, data, self.node)
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                response = await self._client.post(
                    self.url,
                    content=body,
                    headers={
                        signing.HEADER: signing.sign(self._secret, int(time.time()), body),
                        signing.EVENT_HEADER: events.MESSAGE_BEFORE_SEND,
                    },
                    timeout=self._timeout,
                )
            problem, verdict = _verdict(response)
        except TimeoutError:
            problem, verdict = f"no answer within {self._timeout:g}s", None
        except httpx.HTTPError as exc:
            problem, verdict = f"{type(exc).__name__}: {exc}", None
        if verdict is not None:
            metrics.before_send("allowed" if verdict.allowed else "refused")
            return verdict
        log.warning(
            "message.before_send hook: %s; failing %s",
            problem,
            "closed" if self._fail_closed else "open",
        )
        if self._fail_closed:
            metrics.before_send("error_refused")
            return Verdict(False, "message check unavailable, try again later", answered=False)
        metrics.before_send("error_allowed")
        return Verdict(True, answered=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _verdict(response: httpx.Response) -> tuple[str, Verdict | None]:
    if response.status_code != 200:
        return f"HTTP {response.status_code}", None
    if len(response.content) > MAX_ANSWER:
        return f"answer over {MAX_ANSWER} bytes", None
    try:
        answer = response.json()
    except ValueError:
        return "answer is not JSON", None
    allow = answer.get("allow") if isinstance(answer, dict) else None
    if not isinstance(allow, bool):
        return 'answer has no boolean "allow"', None
    reason = answer.get("reason", "")
    return "", Verdict(allow, str(reason)[:MAX_REASON] if not allow else "")
