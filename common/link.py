"""One framed, windowed connection: a thin asyncio shell around :class:`LinkState`.

Used on every hop (client <-> connector, connector <-> transfer) by both ends. The rules are the
state's (``common/linkstate.py``); this module moves bytes and calls the handler. What it keeps:

- it is an ``asyncio.Protocol``: no reader task, no StreamReader/StreamWriter. ``data_received``
  feeds the framer and the state; frames for the (async) handler wait in the state's small queue
  and are handled, one at a time and in order, by a task that exists only while there is work:
  an idle link has no task at all;
- flow control: above ``INBOX_HIGH`` queued frames (or while a GREET awaits its verdict) the
  transport stops reading, and reads again below ``INBOX_LOW``; the peer then meets TCP's own
  back-pressure;
- writes are coalesced: payloads queued in one loop turn go out in one ``write``; a windowed
  sender waits while the transport's buffer is above ``HIGH_WATER``, and a peer that stops
  reading is cut off once its buffered output passes ``HARD_LIMIT``, never buffered without
  bound;
- windowed sends wait for window room (back-pressure), and after the retry limit the link closes
  and hands its unacked frames (decoded from the bytes the window kept) to the handler;
- one timer for all links: a task per event loop and tick length walks every open link for the
  state's timers (GREET deadline, idle timeout, retransmits, heartbeat);
- a ``ProtocolError`` from the handler becomes an ERROR frame; a fatal one also closes the link.

Servers accept with :func:`serve_links`; clients dial with :func:`open_link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
import struct
from collections.abc import Callable
from typing import ClassVar, Protocol, cast

from common.admission import PreAuthLimits
from common.codec import HEADER, LengthPrefixFramer, Skipped
from common.errors import FrameError, IMError, ProtocolError
from common.linkstate import WINDOWED, LinkConfig, LinkState
from proto import im_pb2

__all__ = [
    "WINDOWED",
    "Link",
    "LinkClosed",
    "LinkConfig",
    "LinkHandler",
    "fresh",
    "log_peer_error",
    "open_link",
    "serve_links",
]

log = logging.getLogger(__name__)

# Above this much unsent data a windowed sender waits; above the hard limit the peer is too slow
# and is disconnected. The hard limit leaves room for a full window of maximum-size frames.
HIGH_WATER = 256 * 1024
HARD_LIMIT = 16 * 1024 * 1024
# Frames parsed and waiting for the handler: above HIGH the transport stops reading, below LOW it
# reads again. 32 frames are at most 2 MiB at the 64 KiB frame limit and a few KB of chats; the
# handler takes one at a time anyway, so more would only hold memory.
INBOX_HIGH = 32
INBOX_LOW = 8


class LinkClosed(IMError):
    """The link is closed; nothing more can be sent on it."""


class LinkHandler(Protocol):
    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        """A windowed frame (in sequence) or a GREET / WELCOME / ERROR control frame. The
        envelope's ``seq`` is 0: it may be sent on another link as it is."""
        ...

    def on_acked(self, link: Link, upto: int) -> None:
        """The peer acknowledged every windowed frame with seq <= ``upto`` (the seqs ``send``
        returned). Cheap on purpose: a handler that needs per-frame data keeps it by seq."""
        ...

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        """Called once when the link is gone, with every frame the peer never acknowledged."""
        ...


class Wire(Protocol):
    """How payloads travel on one kind of connection (sans-IO, like the state)."""

    def start(self) -> bytes:
        """Bytes to send as soon as connected (a handshake), or b""."""
        ...

    def feed(self, data: bytes, limit: int) -> None:
        """Received bytes; ``limit`` is the largest payload the state takes now."""
        ...

    def next_payload(self, limit: int) -> bytes | Skipped | None:
        """The next payload, a refused one, or None; raises FrameError on a broken stream."""
        ...

    def encode(self, payloads: list[bytes]) -> bytes:
        """The bytes that carry these payloads."""
        ...

    def take_output(self) -> bytes:
        """Bytes the framing itself must send now (handshake answer, pong, close)."""
        ...

    def finish(self, error: ProtocolError | None) -> bytes:
        """Bytes to send before the connection is closed (a close frame), or b""."""
        ...

    @property
    def ended(self) -> bool:
        """The framing is over (the peer closed, a handshake failed): close the link."""
        ...


class _TcpWire:
    """Length-prefixed frames on a byte stream."""

    __slots__ = ("_framer",)

    def __init__(self, skip_oversize: bool) -> None:
        self._framer = LengthPrefixFramer(skip_oversize=skip_oversize)

    def start(self) -> bytes:
        return b""

    def feed(self, data: bytes, limit: int) -> None:
        self._framer.feed(data)

    def take_output(self) -> bytes:
        return b""

    def finish(self, error: ProtocolError | None) -> bytes:
        return b""

    @property
    def ended(self) -> bool:
        return False

    def next_payload(self, limit: int) -> bytes | Skipped | None:
        return self._framer.next_payload(limit)

    def encode(self, payloads: list[bytes]) -> bytes:
        if len(payloads) == 1:
            p = payloads[0]
            return HEADER.pack(len(p)) + p
        parts: list[bytes] = []
        for p in payloads:
            parts.append(HEADER.pack(len(p)))
            parts.append(p)
        return b"".join(parts)


class Link(asyncio.Protocol):
    """One connection: the transport's callbacks in, the handler's calls out."""

    __slots__ = (
        "_address",
        "_admission",
        "_closed",
        "_drained",
        "_ended",
        "_finisher",
        "_flush_scheduled",
        "_handler",
        "_loop",
        "_make_handler",
        "_read_paused",
        "_room",
        "_shut",
        "_state",
        "_transport",
        "_wire",
        "_worker",
        "_write_paused",
        "config",
        "name",
    )

    def __init__(
        self,
        handler: LinkHandler | None,
        config: LinkConfig,
        name: str = "",
        *,
        authenticated: bool = True,
        make_handler: Callable[[Link], LinkHandler] | None = None,
        admission: PreAuthLimits | None = None,
        wire: Wire | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self._make_handler = make_handler
        self._admission = admission
        self._address = ""  # the admission place this link holds ("" = none)
        self._state = LinkState(config, self._loop.time(), authenticated=authenticated)
        self._wire: Wire = wire if wire is not None else _TcpWire(config.node)
        self._transport: asyncio.Transport | None = None
        self._worker: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        # made only when first needed: an idle link holds neither (each Event is ~0.8 KB)
        self._room: asyncio.Event | None = None  # set when the window has room again
        self._closed: asyncio.Event | None = None
        self._drained: asyncio.Future[None] | None = None  # resolved when writing may go on
        self._write_paused = False
        self._read_paused = False
        self._flush_scheduled = False
        self._shut = False
        self._ended = False

    def __repr__(self) -> str:
        return f"<Link {self.name} {'closed' if self._state.closing else 'open'}>"

    # -- what callers read -------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._state.closing

    @property
    def unacked(self) -> int:
        return self._state.unacked

    @property
    def window_full(self) -> bool:
        """A windowed send would wait for room now."""
        return self._state.window_full

    @property
    def close_error(self) -> ProtocolError | None:
        return self._state.close_error

    @property
    def errors_sent(self) -> int:
        return self._state.errors_sent

    @property
    def bad_frames(self) -> int:
        """Frames refused alone (node links)."""
        return self._state.bad_frames

    @property
    def authenticated(self) -> bool:
        return self._state.authenticated

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        """The handler accepted the peer's GREET: full frame size, every body, and the link
        gives back its place among the unauthenticated."""
        if value and not self._state.authenticated:
            self._state.authenticate()
            self._release_admission()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self._transport = cast(asyncio.Transport, transport)
        if not self.name:
            self.name = _peer_name(transport)
        if self._admission is not None:
            address = _peer_host(transport)
            if not self._admission.admit(address, self._loop.time()):
                self._state.close()
                self._shut = self._ended = True
                self._transport.abort()
                return
            self._address = address
        if self._make_handler is not None:
            self._handler = self._make_handler(self)
        self._transport.set_write_buffer_limits(high=HIGH_WATER)
        first = self._wire.start()
        if first:
            self._transport.write(first)
        _Ticker.of(self._loop, _tick_of(self.config)).add(self)

    def data_received(self, data: bytes) -> None:
        st = self._state
        if st.closing:
            return
        st.data_arrived(self._loop.time())
        wire = self._wire
        wire.feed(data, st.frame_limit)
        extra = wire.take_output()
        if extra and self._transport is not None:
            self._transport.write(extra)
        self._intake()
        if wire.ended:
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("%s: connection lost: %s", self.name, exc)
        self._transport = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._ended and self._finisher is None:
            return  # refused at accept: there is no handler to tell
        self._state.close()
        self._shutdown()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- receiving ---------------------------------------------------------------------------

    def _intake(self) -> None:
        """Move complete frames from the framer into the state while it takes them."""
        st = self._state
        wire = self._wire
        now = self._loop.time()
        acked = st.acked
        refused = st.bad_frames
        more = False
        while st.reading:
            if st.pending_frames >= INBOX_HIGH:
                more = True
                break
            try:
                item = wire.next_payload(st.frame_limit)
            except FrameError as err:
                st.fail(err)
                break
            if item is None:
                break
            if type(item) is bytes:
                st.receive(item, now)
            else:
                assert isinstance(item, Skipped)
                st.refuse_frame(item)
        else:
            more = not st.closing  # a GREET awaits its verdict: the rest waits unparsed
        if st.bad_frames != refused:
            log.warning(
                "%s: refused %d bad frame(s), the link stays: %s",
                self.name,
                st.bad_frames - refused,
                st.last_refusal,
            )
        if st.acked != acked:
            if self._room is not None:
                self._room.set()
            if self._handler is not None:
                self._handler.on_acked(self, st.acked)
        t = self._transport
        if t is not None and not st.closing:
            if more and not self._read_paused:
                t.pause_reading()
                self._read_paused = True
            elif not more and self._read_paused:
                t.resume_reading()
                self._read_paused = False
        self._kick()

    def _kick(self) -> None:
        """After any change: close, start the worker, or schedule a flush, as the state says."""
        st = self._state
        if st.closing:
            self._shutdown()
            return
        if st.pending_frames and self._worker is None:
            self._worker = self._loop.create_task(self._work(), name=f"link {self.name}")
        if st.has_output and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def _work(self) -> None:
        """Hand queued frames to the handler one at a time, then end (no idle task)."""
        st = self._state
        try:
            while (item := st.pop_frame()) is not None:
                seq, env = item
                if env is not None:
                    await self._dispatch(seq, env)
                    if st.closing:
                        break
                if seq:
                    st.handled(seq)
                else:
                    st.verdict_done()  # only a GREET stops the intake, and it was this one
                if self._read_paused and st.reading and st.pending_frames <= INBOX_LOW:
                    self._intake()
            st.ack_handled()
        finally:
            self._worker = None
            self._kick()

    async def _dispatch(self, seq: int, env: im_pb2.Envelope) -> None:
        assert self._handler is not None
        try:
            await self._handler.on_frame(self, env)
        except ProtocolError as err:
            if err.fatal:
                self.close(err)
                return
            log.debug("%s: refused frame %d: %s %s", self.name, seq, err.code_name, err.detail)
            self._state.send_error(err, ref_seq=seq, ref_msg_id=_msg_id(env))
        except LinkClosed:
            self.close()
        except asyncio.CancelledError:
            raise
        except IMError as exc:
            # a backend that is down (BackendError, ...): the peer may retry, the link stays
            log.warning("%s: frame %d not handled: %s", self.name, seq, exc)
            self._state.send_error(
                ProtocolError("temporarily unavailable, retry", code=im_pb2.INTERNAL),
                ref_seq=seq,
                ref_msg_id=_msg_id(env),
            )
        except Exception:
            log.exception("%s: handler failed on frame %d", self.name, seq)
            self._state.send_error(
                ProtocolError("internal error", code=im_pb2.INTERNAL),
                ref_seq=seq,
                ref_msg_id=_msg_id(env),
            )

    # -- sending -----------------------------------------------------------------------------

    async def send(self, env: im_pb2.Envelope) -> int:
        """Send a windowed frame, waiting for window room (and for the socket buffer to drain
        below the high-water mark); returns its link sequence. ``env`` is not changed (the seq
        is written into the encoded frame only). Nothing is awaited after the frame is queued,
        so the caller can note the seq before any ack for it can arrive."""
        await self._wait_room()
        seq = self._state.send(env, self._loop.time())
        self._kick()
        return seq

    async def send_body(self, field: str | int, body: bytes) -> int:
        """Send a windowed frame whose body is already encoded (e.g. ``("chat", chat_bytes)``):
        no Envelope is built or copied on this hop."""
        await self._wait_room()
        seq = self._state.send_body(field, body, self._loop.time())
        self._kick()
        return seq

    async def _wait_room(self) -> None:
        st = self._state
        while True:
            if st.closing:
                raise LinkClosed(f"{self.name} is closed")
            if st.window_full:
                if self._room is None:
                    self._room = asyncio.Event()
                self._room.clear()
                await self._room.wait()
            elif self._write_paused and self._transport is not None:
                if self._drained is None:
                    self._drained = self._loop.create_future()
                await asyncio.shield(self._drained)
            else:
                return

    def send_control(self, env: im_pb2.Envelope) -> None:
        """Send a frame outside the window (seq 0): errors, pings, greet/welcome."""
        if self._state.closing:
            return
        self._state.send_control(env, self._loop.time())
        self._kick()

    def send_error(self, err: ProtocolError, ref_seq: int = 0, ref_msg_id: int = 0) -> None:
        if self._state.closing:
            return
        self._state.send_error(err, ref_seq, ref_msg_id)
        self._kick()

    def _flush(self) -> None:
        self._flush_scheduled = False
        st = self._state
        if not st.has_output:
            return
        payloads = st.take_output()
        t = self._transport
        if t is None or t.is_closing():
            return
        t.write(self._wire.encode(payloads))
        if t.get_write_buffer_size() > HARD_LIMIT:
            log.warning(
                "%s: peer is not reading (%d bytes queued): closing",
                self.name,
                t.get_write_buffer_size(),
            )
            t.abort()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, error: ProtocolError | None = None) -> None:
        """Start closing: optional ERROR to the peer, flush, close the socket. Idempotent."""
        self._state.close(error)
        self._shutdown()

    def abort(self) -> None:
        """Close at once with a reset, dropping whatever the kernel still holds to send: for a
        link given up before its WELCOME, whose GREET must not reach the connector later (a
        graceful close keeps retransmitting it through a partition, and a GREET arriving after
        the one of the link that replaced it would push that one out with REPLACED)."""
        self._state.close(None)
        self._shutdown(reset=True)

    def _shutdown(self, reset: bool = False) -> None:
        if self._shut:
            return
        self._shut = True
        err = self._state.close_error
        if err is not None:
            log.info("%s: closing on %s: %s", self.name, err.code_name, err.detail)
        t = self._transport
        if reset:
            if t is not None:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):  # closed already: nothing left to send
                        linger = struct.pack("ii", 1, 0)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                t.abort()
        else:
            self._flush()
            if t is not None:
                tail = self._wire.finish(err)
                if tail and not t.is_closing():
                    t.write(tail)
                if t.get_write_buffer_size() > HIGH_WATER:
                    t.abort()  # a peer this far behind would keep the socket open for ever
                else:
                    t.close()
        if self._room is not None:
            self._room.set()
        self._finisher = self._loop.create_task(self._finish(), name=f"close {self.name}")

    async def _finish(self) -> None:
        _Ticker.of(self._loop, _tick_of(self.config)).discard(self)
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task():
            await asyncio.gather(worker, return_exceptions=True)
        self._release_admission()
        unacked = [im_pb2.Envelope.FromString(p) for p in self._state.take_unacked()]
        try:
            if self._handler is not None:
                await self._handler.on_closed(self, unacked)
        finally:
            self._ended = True
            if self._closed is not None:
                self._closed.set()

    def _release_admission(self) -> None:
        if self._address and self._admission is not None:
            self._admission.release(self._address)
            self._address = ""

    async def wait_closed(self) -> None:
        """Until the link is gone and its handler's ``on_closed`` has returned."""
        if self._ended and (self._finisher is None or self._finisher.done()):
            return
        if self._closed is None:
            self._closed = asyncio.Event()
        await self._closed.wait()

    async def run(self) -> None:
        """Kept for callers of the stream-based link: the link runs by itself from the moment
        it is connected; this waits until it has ended."""
        await self.wait_closed()

    def _tick(self, now: float) -> None:
        """The shared timer's visit."""
        st = self._state
        if st.closing:
            return
        st.timer(now)
        self._kick()


def _tick_of(cfg: LinkConfig) -> float:
    """How often a link's timers are looked at: a quarter of the shortest, 50 ms to 1 s."""
    shortest = min(cfg.retry_timeout, cfg.heartbeat, cfg.idle_timeout)
    if cfg.greet_timeout:
        shortest = min(shortest, cfg.greet_timeout)
    return max(0.05, min(shortest / 4, 1.0))


class _Ticker:
    """The timer of every open link of one event loop with one tick length."""

    _all: ClassVar[dict[tuple[int, float], _Ticker]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self._loop = loop
        self._tick = tick
        self._links: set[Link] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, tick: float) -> _Ticker:
        key = (id(loop), tick)
        ticker = cls._all.get(key)
        if ticker is None or ticker._loop is not loop:
            ticker = cls._all[key] = cls(loop, tick)
        return ticker

    def add(self, link: Link) -> None:
        self._links.add(link)
        if self._task is None:
            self._task = self._loop.create_task(self._run(), name=f"link timer {self._tick:g}s")

    def discard(self, link: Link) -> None:
        self._links.discard(link)

    async def _run(self) -> None:
        try:
            while self._links:
                await asyncio.sleep(self._tick)
                now = self._loop.time()
                for link in list(self._links):
                    try:
                        link._tick(now)
                    except Exception:
                        log.exception("%s: timer failed", link.name)
        finally:
            # no await between the last look at the links and this: an add() that comes
            # later finds no task and starts one
            self._task = None
            if not self._links and _Ticker._all.get((id(self._loop), self._tick)) is self:
                del _Ticker._all[(id(self._loop), self._tick)]


def fresh(env: im_pb2.Envelope) -> im_pb2.Envelope:
    """A copy of ``env`` with seq 0. Only needed by a caller that changes an envelope it also
    sends elsewhere: ``Link.send`` no longer writes the seq into the envelope it is given, and
    received envelopes arrive with seq 0."""
    out = im_pb2.Envelope()
    out.CopyFrom(env)
    out.seq = 0
    return out


def log_peer_error(logger: logging.Logger, link: Link, env: im_pb2.Envelope) -> None:
    """An ERROR from a server peer: nothing to answer, but worth a warning."""
    logger.warning(
        "%s sent error %s: %s", link.name, im_pb2.ErrorCode.Name(env.error.code), env.error.detail
    )


def _msg_id(env: im_pb2.Envelope) -> int:
    kind = env.WhichOneof("body")
    if kind == "chat":
        return env.chat.id
    if kind == "ack":
        return env.ack.ack_msg_id
    return 0


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


async def open_link(
    host: str,
    port: int,
    handler: LinkHandler,
    config: LinkConfig,
    *,
    timeout: float = 5.0,
    name: str = "",
    tls: _ssl.SSLContext | None = None,
) -> Link:
    """Connect and wrap in a :class:`Link`, which runs from then on (``await link.run()``, or
    ``wait_closed()``, waits for its end). With ``tls``, the TLS handshake (and the context's
    certificate checks) is part of connecting. A dialed link is authenticated from the start:
    the pre-authentication rules protect servers from strangers, not clients from servers."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, link = await loop.create_connection(
            lambda: Link(handler, config, name or f"{host}:{port}"), host, port, ssl=tls
        )
    return link


async def serve_links(
    host: str,
    port: int,
    make_handler: Callable[[Link], LinkHandler],
    config: LinkConfig,
    *,
    ssl: _ssl.SSLContext | None = None,
    ssl_handshake_timeout: float | None = None,
    admission: PreAuthLimits | None = None,
    start_serving: bool = True,
) -> asyncio.Server:
    """Listen; every accepted connection becomes an unauthenticated :class:`Link` whose handler
    ``make_handler(link)`` makes (after admission: a connection over the ``admission`` bounds is
    closed at once, and no handler is made). The handler sets ``link.authenticated = True``
    when it accepts the peer's GREET."""
    loop = asyncio.get_running_loop()

    def factory() -> Link:
        return Link(
            None, config, authenticated=False, make_handler=make_handler, admission=admission
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
