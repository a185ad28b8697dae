"""Links over WebSocket (issue 16): the same LinkState and Link, another framing.

A browser cannot open a raw TCP socket, so the connector also listens for WebSocket on
``IM_WS_PORT`` at path ``/ws``. Everything above the framing is the TCP link's: the same state
(windows, acks, keep-alives, pre-auth rules and limits), the same handler, the same admission
bounds. The WebSocket protocol itself is the ``websockets`` package's sans-IO core
(``ServerProtocol`` / ``ClientProtocol``), driven from the link's ``asyncio.Protocol``: no
handshake or frame parser of our own. Its rules apply to what is WebSocket's: it answers pings
with pongs, it closes on a broken frame, it refuses a message over ``max_size`` (close 1009)
before reading its payload.

Rules this module adds:
- one binary message carries one Envelope, nothing else (no length prefix); a text message is
  refused with ``ERROR BAD_FRAME`` and close code 1003;
- the handshake must ask for ``path`` (else 404) and fit in ``HANDSHAKE_LIMIT`` bytes (else 431),
  so an unauthenticated connection can't make us buffer a megabyte of headers;
- the message size limit follows the state's: small before authentication, ``max_frame`` after.
  A message that arrives in the same read as the GREET is parsed under the small limit (the
  library reads what it is given), so a client waits for WELCOME before sending big frames,
  as the client library does.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections import deque
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from common.admission import PreAuthLimits
from common.codec import Skipped
from common.errors import FrameError, IMError, ProtocolError
from common.link import Link, LinkConfig, LinkHandler
from common.tls import client_context
from proto import im_pb2

WS_PATH = "/ws"
# A browser's opening request is well under 2 KiB (no cookies are set for this port); 16 KiB
# leaves room for long proxy headers and bounds what a client holds before it is even a link.
HANDSHAKE_LIMIT = 16 * 1024
TEXT_REFUSED = "text messages are not accepted: send each Envelope as one binary message"


class WsWire:
    """One WebSocket connection's framing, for :class:`common.link.Link` (a ``Wire``)."""

    __slots__ = ("_eof", "_fragments", "_items", "_received", "_ws", "on_open", "path")

    def __init__(self, ws: ServerProtocol | ClientProtocol, path: str = WS_PATH) -> None:
        self._ws = ws
        self.path = path
        # payloads, or the error that ends the stream after them, in arrival order
        self._items: deque[bytes | str] = deque()
        self._fragments: list[bytes] | None = None  # a binary message still arriving
        self._received = 0  # bytes before the handshake completed
        self._eof = False
        # called once with True when the handshake completes, False when it fails
        self.on_open: Callable[[bool], None] | None = None

    @classmethod
    def server(cls, max_frame: int, path: str = WS_PATH) -> WsWire:
        return cls(ServerProtocol(max_size=max_frame), path)

    @classmethod
    def client(cls, url: str, max_frame: int) -> WsWire:
        return cls(ClientProtocol(parse_uri(url), max_size=max_frame))

    @property
    def is_open(self) -> bool:
        return self._ws.state is State.OPEN

    def start(self) -> bytes:
        ws = self._ws
        if isinstance(ws, ClientProtocol):
            ws.send_request(ws.connect())
        return self.take_output()

    def feed(self, data: bytes, limit: int) -> None:
        ws = self._ws
        if ws.state is State.CONNECTING and isinstance(ws, ServerProtocol):
            self._received += len(data)
            if self._received > HANDSHAKE_LIMIT:
                ws.send_response(ws.reject(431, f"handshake over {HANDSHAKE_LIMIT} bytes\n"))
                self._items.append("WebSocket handshake too long")
                return
        ws.max_message_size = limit
        ws.receive_data(data)
        failed = getattr(ws, "parser_exc", None)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(ws, event)
            elif isinstance(event, Response):
                self._opened(ws.handshake_exc is None and event.status_code == 101)
            else:
                self._frame(event)
        if failed is not None and not self._eof:
            # the library refused a frame (too big, malformed) and is closing: say so in order
            self._items.append(f"WebSocket: {failed}")
        if ws.state is State.CLOSED or (ws.handshake_exc is not None and not self._items):
            self._eof = True

    def _handshake(self, ws: ServerProtocol | ClientProtocol, request: Request) -> None:
        assert isinstance(ws, ServerProtocol)
        if request.path.split("?", 1)[0] != self.path:
            ws.send_response(ws.reject(404, f"this server speaks WebSocket at {self.path}\n"))
            self._items.append(f"WebSocket request for {request.path!r}, not {self.path}")
            return
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            self._items.append(f"WebSocket handshake refused ({response.status_code})")

    def _opened(self, ok: bool) -> None:
        if not ok:
            self._items.append("WebSocket handshake refused")
        if self.on_open is not None:
            self.on_open(ok)
            self.on_open = None

    def _frame(self, frame: Frame) -> None:
        op = frame.opcode
        data = bytes(frame.data)
        if op is Opcode.BINARY:
            if frame.fin:
                self._items.append(data)
            else:
                self._fragments = [data]
        elif op is Opcode.CONT and self._fragments is not None:
            self._fragments.append(data)
            if frame.fin:
                self._items.append(b"".join(self._fragments))
                self._fragments = None
        elif op is Opcode.TEXT or op is Opcode.CONT:
            self._items.append(TEXT_REFUSED)
        # PING (the library answered it), PONG, CLOSE (the library answers and ends): nothing

    def next_payload(self, limit: int) -> bytes | Skipped | None:
        if not self._items:
            return None
        item = self._items.popleft()
        if isinstance(item, str):
            self._items.clear()
            raise FrameError(item)
        if not item or len(item) > limit:
            raise FrameError(f"message length {len(item)} outside 1..{limit}")
        return item

    def encode(self, payloads: list[bytes]) -> bytes:
        ws = self._ws
        if ws.state is not State.OPEN:
            return b""  # before the handshake, or closing: nothing of ours can go
        for p in payloads:
            ws.send_binary(p)
        return self.take_output()

    def take_output(self) -> bytes:
        out = self._ws.data_to_send()
        if not out:
            return b""
        if out[-1] == b"":  # the library's way of saying: close the TCP connection now
            self._eof = True
        return b"".join(out)

    def finish(self, error: ProtocolError | None) -> bytes:
        ws = self._ws
        if ws.state is not State.OPEN:
            return self.take_output()
        if error is None:
            ws.send_close(CloseCode.NORMAL_CLOSURE)
        elif error.detail == TEXT_REFUSED:
            ws.send_close(CloseCode.UNSUPPORTED_DATA, "binary messages only")
        elif error.code == im_pb2.SHUTTING_DOWN:
            ws.send_close(CloseCode.GOING_AWAY, error.code_name)
        else:
            ws.send_close(CloseCode.POLICY_VIOLATION, error.code_name)
        return self.take_output()

    @property
    def ended(self) -> bool:
        return self._eof and not self._items


async def serve_ws_links(
    host: str,
    port: int,
    make_handler: Callable[[Link], LinkHandler],
    config: LinkConfig,
    *,
    ssl: _ssl.SSLContext | None = None,
    ssl_handshake_timeout: float | None = None,
    admission: PreAuthLimits | None = None,
    path: str = WS_PATH,
    start_serving: bool = True,
) -> asyncio.Server:
    """:func:`common.link.serve_links` for WebSocket clients at ``ws(s)://host:port{path}``."""
    loop = asyncio.get_running_loop()

    def factory() -> Link:
        return Link(
            None,
            config,
            authenticated=False,
            make_handler=make_handler,
            admission=admission,
            wire=WsWire.server(config.preauth_max_frame, path),
        )

    return await loop.create_server(
        factory,
        host,
        port,
        ssl=ssl,
        ssl_handshake_timeout=ssl_handshake_timeout if ssl is not None else None,
        start_serving=start_serving,
        backlog=1024,
    )


async def open_ws_link(
    url: str,
    handler: LinkHandler,
    config: LinkConfig,
    *,
    timeout: float = 5.0,
    name: str = "",
    tls: _ssl.SSLContext | None = None,
) -> Link:
    """Connect to ``ws://`` or ``wss://`` ``url`` and complete the WebSocket handshake; the
    :class:`Link` runs from then on, as :func:`common.link.open_link`'s does. ``wss`` without
    ``tls`` verifies against the system's trust store."""
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    wire = WsWire.client(url, config.max_frame)
    opened: asyncio.Future[bool] = loop.create_future()

    def on_open(ok: bool) -> None:
        if not opened.done():
            opened.set_result(ok)

    wire.on_open = on_open
    context = tls if tls is not None else (client_context() if uri.secure else None)
    async with asyncio.timeout(timeout):
        _, link = await loop.create_connection(
            lambda: Link(handler, config, name or url, wire=wire),
            uri.host,
            uri.port,
            ssl=context,
        )
        closed: asyncio.Future[None] = asyncio.ensure_future(link.wait_closed())
        waits: list[asyncio.Future[object]] = [opened, closed]  # type: ignore[list-item]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
    if not opened.done() or not opened.result():
        link.close()
        raise IMError(f"WebSocket handshake with {url} failed")
    return link
