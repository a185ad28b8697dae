"""The device's link to a connector: dial (TLS if asked), GREET with ``since``, WELCOME, and
reconnect with back-off until closed.

Why a module of its own: getting a link up (which connector, which token, TLS, back-off, when to
stop trying) has nothing to do with what travels on it. The owner (IMClient) is told when a link
is welcomed, hands every later frame over, and hears when a link is gone; frames of a link that
is no longer the current one are dropped, so nothing of an old link can touch the new state.

Rules:
- GREET carries the token of the latest login and the owner's ``since``;
- a lost link is reconnected with back-off (0.2 s doubling to 5 s, jittered), asking REST for a
  live connector first and falling back on the connectors the last login listed;
- a login refused (401/403: password changed, account gone) and REPLACED (a newer connection of
  this device took over) end the reconnecting: retrying could only fight the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from client.rest import LoginAnswer, RestError
from common.errors import IMError
from common.link import Link, LinkConfig, open_link
from common.tls import client_context
from proto import im_pb2

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0


class LinkOwner(Protocol):
    def welcomed(self, link: Link, welcome: im_pb2.Welcome) -> None:
        """A link is up; called before any later frame of it is handed over."""
        ...

    async def on_envelope(self, env: im_pb2.Envelope) -> None:
        """A frame of the current link (after WELCOME)."""
        ...

    async def link_lost(self, unacked: list[im_pb2.Envelope]) -> None:
        """The current link is gone, with the frames the connector never acknowledged."""
        ...

    async def login_refused(self, exc: RestError) -> None: ...


class Connection:
    def __init__(
        self,
        owner: LinkOwner,
        login: Callable[[], Awaitable[LoginAnswer]],
        since: Callable[[], int],
        *,
        name: str,
        device_id: str,
        config: LinkConfig,
        tls: ssl.SSLContext | bool | None,
        connector: tuple[str, int] | None,
        reconnect: bool,
    ) -> None:
        self._owner = owner
        self._login = login
        self._since = since
        self._name = name
        self.device_id = device_id
        self._config = config
        self._tls = tls
        self._override = connector
        self._auto = reconnect
        self.link: Link | None = None
        self.node_id = ""
        self.last_login: LoginAnswer | None = None
        self.reconnects = 0
        self.wanted = False
        self._run: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._welcome: asyncio.Future[im_pb2.Welcome] | None = None

    @property
    def up(self) -> bool:
        return self.link is not None and not self.link.closing and bool(self.node_id)

    async def start(self, login: LoginAnswer, timeout: float) -> None:
        """Open a link now (raises if none comes up), then keep one until :meth:`stop`."""
        self.last_login = login
        await self._open(self._override or login.connector, login, timeout)
        self.wanted = True
        if self._auto and self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name=f"keep {self._name}")

    async def stop(self) -> None:
        self.wanted = False
        self._lost.set()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self.link is not None:
            self.link.close()
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)

    async def _open(self, addr: tuple[str, int], login: LoginAnswer, timeout: float) -> None:
        host, port = addr
        self._welcome = asyncio.get_running_loop().create_future()
        tls = self._tls if self._tls is not None else login.tls
        context = client_context() if tls is True else (tls or None)
        link = await open_link(
            host, port, self, self._config, name=f"{self._name}->{host}", tls=context
        )
        self.link = link
        self._lost.clear()
        self._run = asyncio.create_task(link.run(), name=f"link {self._name}")
        greet = im_pb2.Greet(token=login.token, device_id=self.device_id, since=self._since())
        link.send_control(im_pb2.Envelope(greet=greet))
        closed = asyncio.ensure_future(link.wait_closed())
        waits: list[asyncio.Future[Any]] = [self._welcome, closed]
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if self._welcome not in done or self._welcome.cancelled():
            err = link.close_error
            link.abort()  # not a late GREET after the next link's: common/link.py
            raise IMError(f"GREET refused: {err.detail if err else 'connection closed'}")

    async def _keep(self) -> None:
        delay = BACKOFF_FIRST
        while self.wanted:
            await self._lost.wait()
            if not self.wanted:
                return
            try:
                await self._reconnect_once()
            except (IMError, OSError, TimeoutError) as exc:
                log.debug("%s: reconnect failed: %s", self._name, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.reconnects += 1
            delay = BACKOFF_FIRST

    async def _reconnect_once(self) -> None:
        """A fresh login when REST answers (a live connector, a token that is still good),
        else the connectors the last login listed, one after the other."""
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)
        try:
            login = await self._login()
            self.last_login = login
            candidates = [login.connector, *(c for c in login.connectors if c != login.connector)]
        except RestError as exc:
            if exc.status in (401, 403):
                self.wanted = False
                await self._owner.login_refused(exc)
                raise IMError(f"login refused: {exc}") from exc
            login, candidates = self._fallback(exc)
        except (OSError, IMError) as exc:
            login, candidates = self._fallback(exc)
        if self._override is not None:
            candidates = [self._override]
        last: Exception | None = None
        for addr in candidates:
            if not self.wanted:
                return
            try:
                await self._open(addr, login, 10.0)
                return
            except (IMError, OSError, TimeoutError) as exc:
                last = exc
        raise IMError(f"no connector took us: {last}")

    def _fallback(self, exc: Exception) -> tuple[LoginAnswer, list[tuple[str, int]]]:
        if self.last_login is None:
            raise IMError(f"no login: {exc}") from exc
        candidates = list(self.last_login.connectors) or [self.last_login.connector]
        random.shuffle(candidates)
        return self.last_login, candidates

    # -- LinkHandler -------------------------------------------------------------------------

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        if link is not self.link:
            return
        kind = env.WhichOneof("body")
        if kind == "welcome":
            if self._welcome is not None and not self._welcome.done():
                self.node_id = env.welcome.node_id
                self._owner.welcomed(link, env.welcome)
                self._welcome.set_result(env.welcome)
            return
        if kind == "error" and env.error.code == im_pb2.REPLACED:
            # another connection of this device took over: reconnecting would take it back,
            # and the two would push each other out for ever
            self.wanted = False
            self._lost.set()
        await self._owner.on_envelope(env)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if self._welcome is not None and not self._welcome.done():
            self._welcome.cancel()
        if link is self.link:
            self.node_id = ""
            self._lost.set()
            with contextlib.suppress(IMError):
                await self._owner.link_lost(unacked)
