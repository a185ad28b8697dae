"""One framed, windowed connection: the thin asyncio shell around the codec and the windows.

Used on every hop (client <-> connector, connector <-> transfer) by both ends. Rules it keeps:

- one reader loop: read under the idle timeout, decode, release windowed frames in sequence to
  the handler one at a time (so a handler sees a conversation in order), then send one cumulative
  ``LinkAck`` for everything the read released;
- writes are coalesced: frames queued in one loop turn go out in one ``write``; a sender waits
  for ``drain`` above a high-water mark, and a peer that stops reading is disconnected once its
  backlog passes a hard limit, never buffered without bound;
- windowed sends wait for window room (back-pressure), are retransmitted by one timer, and after
  the retry limit the link closes and hands its unacked frames to the handler;
- that timer is shared: one task per event loop and tick length walks every open link for
  retransmits, heartbeats and the idle timeout, so an idle link costs no task and no timer
  handle of its own, and a read costs no timeout context;
- a ``ProtocolError`` from the handler becomes an ERROR frame; a fatal one also closes the link.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import ClassVar, Protocol

from common.codec import DEFAULT_MAX_FRAME, FrameDecoder, encode
from common.config import Settings
from common.errors import FrameError, IMError, ProtocolError
from common.window import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_WINDOW,
    RecvWindow,
    SendWindow,
)
from proto import im_pb2

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
# Above this much unsent data a sender awaits drain(); above the hard limit the peer is too slow
# and is disconnected. The hard limit leaves room for a full window of maximum-size frames.
HIGH_WATER = 256 * 1024
HARD_LIMIT = 16 * 1024 * 1024


# Bodies that travel in the window (numbered, acked, retransmitted); all others are control frames.
WINDOWED = frozenset({"chat", "ack", "drain", "bounce"})


class LinkClosed(IMError):
    """The link is closed; nothing more can be sent on it."""


@dataclass(slots=True)
class LinkConfig:
    max_frame: int = DEFAULT_MAX_FRAME
    window: int = DEFAULT_WINDOW
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    heartbeat: float = 15.0  # send a PING when nothing was sent for this long
    idle_timeout: float = 60.0  # close when nothing was received for this long
    # Link-level frames (PING, PONG, LinkAck) allowed per second, in a bucket of control_burst
    # (0: no limit). They cost us work and an answer but pass no rate limit of the handler's;
    # beyond this a peer is flooding, and is closed with RATE_LIMITED.
    control_rate: float = 0.0
    control_burst: int = 0

    @classmethod
    def from_settings(cls, s: Settings, *, node: bool = False) -> LinkConfig:
        """Client links (``node=False``) or connector <-> transfer links, which keep alive
        more often so that a dead peer is noticed within seconds."""
        return cls(
            max_frame=s.max_frame,
            window=s.window,
            retry_timeout=s.retry_timeout,
            max_retries=s.max_retries,
            heartbeat=s.node_heartbeat if node else s.heartbeat,
            idle_timeout=s.node_idle_timeout if node else s.idle_timeout,
        )


class LinkHandler(Protocol):
    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        """A windowed frame (in sequence) or a GREET / WELCOME / ERROR control frame."""
        ...

    def on_acked(self, link: Link, acked: list[tuple[int, im_pb2.Envelope]]) -> None:
        """The peer acknowledged these windowed frames (seq, envelope), oldest first."""
        ...

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        """Called once when the link is gone, with every frame the peer never acknowledged."""
        ...


class Link:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: LinkHandler,
        config: LinkConfig,
        name: str = "",
    ) -> None:
        self.name = name or _peer_name(writer)
        self.config = config
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._decoder = FrameDecoder(config.max_frame)
        self._send_win: SendWindow[im_pb2.Envelope] = SendWindow(
            config.window, config.retry_timeout, config.max_retries
        )
        self._recv_win: RecvWindow[im_pb2.Envelope] = RecvWindow(config.window)
        # made only when first needed: an idle link holds neither (each Event is ~0.8 KB)
        self._room: asyncio.Event | None = None  # set when the window has room again
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self._last_received = self._last_sent
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._ended = False
        self.close_error: ProtocolError | None = None
        self.errors_sent = 0
        self._control_tokens = float(config.control_burst)
        self._control_stamp = self._loop.time()

    def __repr__(self) -> str:
        return f"<Link {self.name} {'closed' if self._closing else 'open'}>"

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def unacked(self) -> int:
        return len(self._send_win)

    @property
    def window_full(self) -> bool:
        """A windowed send would wait for room now."""
        return self._send_win.full

    # -- sending ----------------------------------------------------------------------------

    async def send(self, env: im_pb2.Envelope) -> int:
        """Send a windowed frame, waiting for window room; returns its link sequence."""
        while self._send_win.full and not self._closing:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if self._closing:
            raise LinkClosed(f"{self.name} is closed")
        env.seq = self._send_win.push(env, self._loop.time())
        self._queue(encode(env))
        if self._writer.transport.get_write_buffer_size() > HIGH_WATER:
            await self._drain()
        return env.seq

    def send_control(self, env: im_pb2.Envelope) -> None:
        """Send a frame outside the window (seq 0): link acks, errors, pings, greet/welcome."""
        if self._closing:
            return
        env.seq = 0
        self._queue(encode(env))

    def send_error(self, err: ProtocolError, ref_seq: int = 0, ref_msg_id: int = 0) -> None:
        self.errors_sent += 1
        self.send_control(
            im_pb2.Envelope(
                error=im_pb2.Error(
                    code=err.code,  # type: ignore[arg-type]
                    detail=err.detail[:200],
                    ref_seq=ref_seq,
                    ref_msg_id=ref_msg_id,
                )
            )
        )

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        transport = self._writer.transport
        if transport.is_closing():
            return
        self._writer.write(data)
        self._last_sent = self._loop.time()
        if transport.get_write_buffer_size() > HARD_LIMIT:
            log.warning(
                "%s: peer is not reading (%d bytes queued): closing",
                self.name,
                transport.get_write_buffer_size(),
            )
            transport.abort()

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise LinkClosed(f"{self.name}: {exc}") from None

    # -- lifecycle --------------------------------------------------------------------------

    def close(self, error: ProtocolError | None = None) -> None:
        """Start closing: optional ERROR to the peer, flush, close the socket. Idempotent."""
        if self._closing:
            return
        if error is not None:
            self.close_error = error
            self.send_error(error)
        self._flush()
        self._closing = True
        if self._room is not None:
            self._room.set()
        self._writer.close()

    async def wait_closed(self) -> None:
        if self._ended:
            return
        if self._closed is None:
            self._closed = asyncio.Event()
        await self._closed.wait()

    async def run(self) -> None:
        """Read until the link ends; then hand unacked frames to the handler. Never raises
        for peer misbehaviour (that closes the link); CancelledError propagates."""
        ticker = _Ticker.of(self._loop, _tick_of(self.config))
        ticker.add(self)
        try:
            await self._read_loop()
        except ProtocolError as err:
            log.info("%s: closing on %s: %s", self.name, err.code_name, err.detail)
            self.close(err)
        except (ConnectionError, OSError) as exc:
            log.debug("%s: connection error: %s", self.name, exc)
        finally:
            ticker.discard(self)
            self.close()
            unacked = self._send_win.take_unacked()
            try:
                await self._handler.on_closed(self, unacked)
            finally:
                self._ended = True
                if self._closed is not None:
                    self._closed.set()

    async def _read_loop(self) -> None:
        reader = self._reader
        while not self._closing:
            data = await reader.read(READ_CHUNK)  # the ticker closes us when idle too long
            if not data:
                return
            self._last_received = self._loop.time()
            try:
                envs = self._decoder.feed(data)
            except FrameError:
                raise
            released = False
            for env in envs:
                if self._closing:
                    return
                kind = env.WhichOneof("body")
                if kind is None:
                    raise ProtocolError(
                        "envelope without a body", code=im_pb2.UNKNOWN_TYPE, fatal=True
                    )
                if (env.seq != 0) != (kind in WINDOWED):
                    raise ProtocolError(
                        f"{kind} with link seq {env.seq}: chat, ack, drain "
                        "and bounce are windowed (seq > 0), every other body has seq 0",
                        code=im_pb2.BAD_MESSAGE,
                        fatal=True,
                    )
                if env.seq == 0:
                    await self._control(env)
                    continue
                batch = self._recv_win.offer(env.seq, env)
                released = True
                if batch:
                    for item in batch:
                        await self._dispatch(item)
            if released and not self._closing:
                self.send_control(im_pb2.Envelope(link_ack=im_pb2.LinkAck(seq=self._recv_win.last)))

    def _take_control_token(self) -> None:
        cfg = self.config
        now = self._loop.time()
        elapsed, self._control_stamp = now - self._control_stamp, now
        self._control_tokens = min(
            cfg.control_burst, self._control_tokens + elapsed * cfg.control_rate
        )
        if self._control_tokens < 1:
            raise ProtocolError("too many control frames", code=im_pb2.RATE_LIMITED, fatal=True)
        self._control_tokens -= 1

    async def _control(self, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if self.config.control_rate and kind in ("link_ack", "ping", "pong"):
            self._take_control_token()
        if kind == "link_ack":
            acked = self._send_win.ack(env.link_ack.seq)
            if acked:
                if self._room is not None:
                    self._room.set()
                self._handler.on_acked(self, acked)
        elif kind == "ping":
            self.send_control(im_pb2.Envelope(pong=im_pb2.Pong(nonce=env.ping.nonce)))
        elif kind == "pong":
            pass
        else:
            await self._dispatch(env)

    async def _dispatch(self, env: im_pb2.Envelope) -> None:
        try:
            await self._handler.on_frame(self, env)
        except ProtocolError as err:
            if err.fatal:
                raise
            ref = _msg_id(env)
            log.debug("%s: refused frame %d: %s %s", self.name, env.seq, err.code_name, err.detail)
            self.send_error(err, ref_seq=env.seq, ref_msg_id=ref)
        except (LinkClosed, asyncio.CancelledError):
            raise
        except IMError as exc:
            # a backend that is down (BackendError, ...): the peer may retry, the link stays
            log.warning("%s: frame %d not handled: %s", self.name, env.seq, exc)
            self.send_error(
                ProtocolError("temporarily unavailable, retry", code=im_pb2.INTERNAL),
                ref_seq=env.seq,
                ref_msg_id=_msg_id(env),
            )
        except Exception:
            log.exception("%s: handler failed on frame %d", self.name, env.seq)
            self.send_error(
                ProtocolError("internal error", code=im_pb2.INTERNAL),
                ref_seq=env.seq,
                ref_msg_id=_msg_id(env),
            )

    def _tick(self, now: float) -> None:
        """The shared timer's visit: idle timeout, retransmits, heartbeat."""
        if self._closing:
            return
        cfg = self.config
        if now - self._last_received >= cfg.idle_timeout:
            err = ProtocolError(
                f"nothing received for {cfg.idle_timeout:g}s", code=im_pb2.IDLE_TIMEOUT, fatal=True
            )
            log.info("%s: closing on %s: %s", self.name, err.code_name, err.detail)
            self.close(err)
            return
        try:
            for _seq, env in self._send_win.due(now):
                self._queue(encode(env))
        except ProtocolError as err:
            log.info("%s: %s", self.name, err.detail)
            self.close(err)
            return
        if now - self._last_sent >= cfg.heartbeat:
            self.send_control(im_pb2.Envelope(ping=im_pb2.Ping(nonce=int(time.time()))))


def _tick_of(cfg: LinkConfig) -> float:
    """How often a link's timers are looked at: a quarter of the shortest, 50 ms to 1 s."""
    return max(0.05, min(cfg.retry_timeout / 4, cfg.heartbeat / 4, cfg.idle_timeout / 4, 1.0))


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
    """A copy of ``env`` to send on another link (link sequences are per link)."""
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


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def open_link(
    host: str,
    port: int,
    handler: LinkHandler,
    config: LinkConfig,
    *,
    timeout: float = 5.0,
    name: str = "",
    tls: ssl.SSLContext | None = None,
) -> Link:
    """Connect and wrap in a :class:`Link` (not yet running: call ``run()`` in a task). With
    ``tls``, the TLS handshake (and the context's certificate checks) is part of connecting."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=READ_CHUNK, ssl=tls)
    return Link(reader, writer, handler, config, name or f"{host}:{port}")
