"""The rules of one link, sans-IO: frame payloads and the time in, things to do out.

Every hop (client <-> connector, connector <-> transfer) runs one :class:`LinkState` per
connection, fed by a transport (``common/link.py`` for TCP, ``common/wslink.py`` for WebSocket)
that owns the socket and the framing. The state never touches a socket, a task or a clock:

- in: :meth:`LinkState.receive` (one frame payload), :meth:`LinkState.refuse_frame` (one the
  framer threw away), :meth:`LinkState.handled` (the handler is done with a frame),
  :meth:`LinkState.timer`, and the send calls;
- out: frames for the handler in order (:meth:`LinkState.pop_frame`), payloads to write
  (:meth:`LinkState.take_output`), how far the peer acknowledged (``acked``), the close decision
  (``closing``, ``close_error``), and :meth:`LinkState.next_deadline`.

Rules it keeps:
- windowed bodies (chat, ack, drain, bounce, fanout) carry a link sequence >= 1 and go through the
  receive window (in order, duplicates re-acked, a bounded reorder span); every other body has
  seq 0 and is handled once, outside it; a frame that breaks this is fatal ``BAD_MESSAGE``;
- a LinkAck is sent only for frames the handler has finished with (``handled``), cumulatively,
  at the end of a run of frames or every quarter window, so a slow handler slows its sender;
- before the link is authenticated (the handler says so after a GREET it accepted) only GREET,
  PING, PONG and LinkAck are taken, under a small frame limit: a windowed frame is fatal
  ``NOT_AUTHENTICATED`` and never reaches the receive window; once a GREET is in, nothing more
  is taken until the handler has decided on it (``verdict_done``);
- on node links (``config.node``) one bad frame (over the limit, undecodable) is refused alone:
  an ERROR ``BAD_FRAME`` naming its seq, counted, and its seq treated as handled so the sender's
  window moves on; on other links it closes the link;
- control frames are rate limited when ``config.control_rate`` is set (client links);
- timers: GREET deadline before authentication, idle timeout, retransmits with a retry limit
  (``RETRY_LIMIT``), a PING when nothing was sent for ``heartbeat``.

Payloads this state produces start with the link sequence (field 1) when it is not 0, so a
receiver can name a frame it could not parse (``common.codec.peek_seq``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from common.codec import DEFAULT_MAX_FRAME, SEQ_HEAD, Skipped, peek_seq
from common.config import Settings
from common.errors import FrameError, ProtocolError, WindowError
from common.window import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_WINDOW,
    RecvWindow,
    SendWindow,
)
from proto import im_pb2

# Bodies that travel in the window (numbered, acked, retransmitted); all others are control frames.
WINDOWED = frozenset(
    {
        "chat",
        "ack",
        "cursor",
        "sync",
        "sync_done",
        "conv_state",
        "caught_up",
        "presence",
        "group_receipt",
        "fanout",
        "record",
    }
)
# What an unauthenticated peer may send; anything else is fatal NOT_AUTHENTICATED.
PREAUTH_KINDS = frozenset({"greet", "ping", "pong", "link_ack"})
BODY_FIELDS: dict[str, int] = {
    f.name: f.number for f in im_pb2.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields
}
_WINDOWED_FIELDS = frozenset(BODY_FIELDS[k] for k in WINDOWED)

# The largest frame before authentication. A GREET is the only body that needs room: a token of
# at most 1024 chars (common/tokens.py refuses longer), a device_id of at most 64, a node id and
# the tags and lengths come to under 1.2 KiB; 4 KiB leaves room for that to grow and is 1/16 of
# what an authenticated client may send.
PREAUTH_MAX_FRAME = 4 * 1024


@dataclass(slots=True)
class LinkConfig:
    max_frame: int = DEFAULT_MAX_FRAME
    window: int = DEFAULT_WINDOW
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    heartbeat: float = 15.0  # send a PING when nothing was sent for this long
    idle_timeout: float = 60.0  # close when nothing was received for this long
    # Control frames (seq 0: PING, PONG, LinkAck, GREET, ...) allowed per second, in a bucket of
    # control_burst (0: no limit). They cost us work and an answer but pass no rate limit of the
    # handler's; beyond this a peer is flooding, and is closed with RATE_LIMITED.
    control_rate: float = 0.0
    control_burst: int = 0
    # an unauthenticated link must be authenticated within this long (0: no deadline)
    greet_timeout: float = 0.0
    preauth_max_frame: int = PREAUTH_MAX_FRAME
    node: bool = False  # a link between our own processes: a bad frame is refused alone
    discard_unknown: bool = False  # drop unknown protobuf fields on arrival (client links)

    @classmethod
    def from_settings(cls, s: Settings, *, node: bool = False) -> LinkConfig:
        """Client links (``node=False``, as a server holds them: unknown fields dropped at the
        edge, control frames rate limited) or connector <-> transfer links, which keep alive
        more often so that a dead peer is noticed within seconds and carry larger frames."""
        if node:
            return cls(
                max_frame=s.node_frame_limit(),
                window=s.window,
                retry_timeout=s.retry_timeout,
                max_retries=s.max_retries,
                heartbeat=s.node_heartbeat,
                idle_timeout=s.node_idle_timeout,
                greet_timeout=s.greet_timeout,
                node=True,
            )
        return cls(
            max_frame=s.max_frame,
            window=s.window,
            retry_timeout=s.retry_timeout,
            max_retries=s.max_retries,
            heartbeat=s.heartbeat,
            idle_timeout=s.idle_timeout,
            control_rate=s.rate_limit,
            control_burst=s.rate_burst,
            greet_timeout=s.greet_timeout,
            discard_unknown=True,
        )


_SMALL = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _body_bytes(env: im_pb2.Envelope) -> bytes:
    """``env`` serialized without its link sequence (which is the sending link's to set)."""
    seq = env.seq
    if not seq:
        return env.SerializeToString()
    env.seq = 0
    try:
        return env.SerializeToString()
    finally:
        env.seq = seq


Frame = tuple[int, "im_pb2.Envelope | None"]


class LinkState:
    """One link's protocol state (see the module docstring for its rules)."""

    __slots__ = (
        "_ack_every",
        "_ack_sent",
        "_clock",
        "_fail_after",
        "_handled",
        "_inbox",
        "_last_received",
        "_last_sent",
        "_opened",
        "_out",
        "_recv",
        "_send",
        "_stamp",
        "_tokens",
        "_verdict",
        "acked",
        "authenticated",
        "bad_frames",
        "close_error",
        "closing",
        "config",
        "errors_sent",
        "last_refusal",
    )

    def __init__(self, config: LinkConfig, now: float, *, authenticated: bool = True) -> None:
        self.config = config
        self.authenticated = authenticated
        self.closing = False
        self.close_error: ProtocolError | None = None
        self.errors_sent = 0
        self.bad_frames = 0  # node links: frames refused alone
        self.last_refusal = ""  # why the last of them was refused, for the transport's log
        self.acked = 0  # highest link sequence the peer acknowledged
        self._send: SendWindow[bytes] = SendWindow(
            config.window, config.retry_timeout, config.max_retries
        )
        self._recv: RecvWindow[im_pb2.Envelope | None] = RecvWindow(config.window)
        self._inbox: deque[Frame] | None = None  # made when first needed, dropped when empty
        self._out: list[bytes] | None = None  # made when there is output, taken whole
        self._handled = 0
        self._ack_sent = 0
        self._ack_every = max(1, config.window // 4)
        self._verdict = False  # a GREET is with the handler
        self._fail_after: ProtocolError | None = None  # close once the queued frames are handled
        self._opened = self._clock = self._last_sent = self._last_received = now
        self._tokens = float(config.control_burst)
        self._stamp = now

    def __repr__(self) -> str:
        flags = "closing" if self.closing else "open"
        auth = "authenticated" if self.authenticated else "unauthenticated"
        return f"<LinkState {flags} {auth} unacked={len(self._send)} acked={self.acked}>"

    # -- what the transport asks -------------------------------------------------------------

    @property
    def frame_limit(self) -> int:
        """The largest payload to take now."""
        if self.authenticated:
            return self.config.max_frame
        return min(self.config.preauth_max_frame, self.config.max_frame)

    @property
    def reading(self) -> bool:
        """Whether the transport should hand over more payloads now."""
        return not self.closing and not self._verdict and self._fail_after is None

    @property
    def pending_frames(self) -> int:
        return len(self._inbox) if self._inbox is not None else 0

    @property
    def unacked(self) -> int:
        return len(self._send)

    @property
    def window_full(self) -> bool:
        return self._send.full

    @property
    def has_output(self) -> bool:
        return self._out is not None

    def pop_frame(self) -> Frame | None:
        """The next frame for the handler: (seq, envelope) for a windowed frame, (0, envelope)
        for a control frame, (seq, None) for a refused one (nothing to handle, but mark it
        handled)."""
        inbox = self._inbox
        if not inbox:
            if self._fail_after is not None and not self.closing:
                self.ack_handled()
                self.close(self._fail_after)
            return None
        item = inbox.popleft()
        if not inbox:
            self._inbox = None
        return item

    def take_output(self) -> list[bytes]:
        """Payloads to write, in order."""
        out, self._out = self._out, None
        return out if out is not None else []

    def take_unacked(self) -> list[bytes]:
        """Empty the send window: the payloads the peer never acknowledged, oldest first."""
        return self._send.take_unacked()

    # -- receiving ---------------------------------------------------------------------------

    def data_arrived(self, now: float) -> None:
        """Any bytes at all: the peer is alive (a partial frame counts)."""
        self._last_received = self._clock = now

    def receive(self, payload: bytes, now: float) -> None:
        """One frame payload, as the framer cut it."""
        if self.closing or self._fail_after is not None:
            return
        self._last_received = self._clock = now
        env = im_pb2.Envelope()
        try:
            env.ParseFromString(payload)
        except DecodeError as exc:
            self._bad_frame(payload[:SEQ_HEAD], f"undecodable envelope: {exc}")
            return
        if self.config.discard_unknown:
            env.DiscardUnknownFields()
        kind = env.WhichOneof("body")
        if kind is None:
            self.fail(
                ProtocolError("envelope without a body", code=im_pb2.UNKNOWN_TYPE, fatal=True)
            )
            return
        seq = env.seq
        if (seq != 0) != (kind in WINDOWED):
            self.fail(
                ProtocolError(
                    f"{kind} with link seq {seq}: chat, ack, drain "
                    "and bounce are windowed (seq > 0), every other body has seq 0",
                    code=im_pb2.BAD_MESSAGE,
                    fatal=True,
                )
            )
            return
        if not self.authenticated and kind not in PREAUTH_KINDS:
            self.fail(
                ProtocolError(f"{kind} before GREET", code=im_pb2.NOT_AUTHENTICATED, fatal=True)
            )
            return
        if seq:
            env.seq = 0  # a link sequence means nothing beyond its link: the handler may send it on
            self._windowed(seq, env)
        else:
            self._control(kind, env, now)

    def refuse_frame(self, skipped: Skipped) -> None:
        """The framer threw a frame away (length 0 or over ``frame_limit``)."""
        if self.closing or self._fail_after is not None:
            return
        self._bad_frame(
            skipped.head, f"frame length {skipped.length} outside 1..{self.frame_limit}"
        )

    def _bad_frame(self, head: bytes, detail: str) -> None:
        if not self.config.node:
            self.fail(FrameError(detail))
            return
        self.bad_frames += 1
        self.last_refusal = detail
        seq = peek_seq(head)
        self.send_error(FrameError(detail), ref_seq=seq)
        last = self._recv.last
        if last < seq <= last + self._recv.capacity:
            self._windowed(seq, None)  # handled as nothing: the sender's window moves past it

    def _windowed(self, seq: int, env: im_pb2.Envelope | None) -> None:
        try:
            batch = self._recv.offer(seq, env)
        except WindowError as err:
            self.fail(err)
            return
        if batch is None:  # a duplicate: the sender missed our ack, or resent early
            if self._handled:
                self._emit_ack()
            return
        if not batch:
            return
        if self._inbox is None:
            self._inbox = deque()
        first = self._recv.last - len(batch) + 1
        self._inbox.extend(zip(range(first, first + len(batch)), batch, strict=True))

    def _control(self, kind: str, env: im_pb2.Envelope, now: float) -> None:
        if self.config.control_rate and not self._take_token(now):
            self.fail(
                ProtocolError("too many control frames", code=im_pb2.RATE_LIMITED, fatal=True)
            )
            return
        if kind == "link_ack":
            try:
                n = self._send.release(env.link_ack.seq)
            except ProtocolError as err:
                self.fail(err)
                return
            if n:
                self.acked = env.link_ack.seq
        elif kind == "ping":
            self._emit(im_pb2.Envelope(pong=im_pb2.Pong(nonce=env.ping.nonce)))
        elif kind == "pong":
            pass
        else:
            if kind == "greet" and not self.authenticated:
                self._verdict = True
            if self._inbox is None:
                self._inbox = deque()
            self._inbox.append((0, env))

    def fail(self, err: ProtocolError) -> None:
        """A fatal breach in what was received: the frames before it are still handled (and
        acked), in order, then the link closes; nothing after it is taken."""
        if self._inbox and self.authenticated:
            if self._fail_after is None:
                self._fail_after = err
        else:
            self.close(err)

    def _take_token(self, now: float) -> bool:
        cfg = self.config
        elapsed, self._stamp = now - self._stamp, now
        self._tokens = min(cfg.control_burst, self._tokens + elapsed * cfg.control_rate)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    # -- the handler's answers ---------------------------------------------------------------

    def handled(self, seq: int) -> None:
        """The handler is done with windowed frame ``seq`` (and so with every one before it)."""
        self._handled = seq
        if seq - self._ack_sent >= self._ack_every:
            self._emit_ack()

    def ack_handled(self) -> None:
        """A run of frames ended: acknowledge what was handled and not yet acked."""
        if self._handled > self._ack_sent and not self.closing:
            self._emit_ack()

    def authenticate(self) -> None:
        """The handler accepted the peer: lift the pre-authentication rules."""
        self.authenticated = True

    def verdict_done(self) -> None:
        """The handler has finished with a GREET (accepted or not): take frames again."""
        self._verdict = False

    def _emit_ack(self) -> None:
        self._ack_sent = self._handled
        self._emit(im_pb2.Envelope(link_ack=im_pb2.LinkAck(seq=self._handled)))

    # -- sending -----------------------------------------------------------------------------

    def send(self, env: im_pb2.Envelope, now: float) -> int:
        """Queue a windowed frame (the window must have room); returns its link sequence.
        ``env`` is not changed."""
        return self._push(_body_bytes(env), now)

    def send_body(self, field: str | int, body: bytes, now: float) -> int:
        """Queue a windowed frame whose body (``chat``, ``ack``, ...) is already encoded: no
        Envelope is built or copied."""
        num = BODY_FIELDS[field] if isinstance(field, str) else field
        if num not in _WINDOWED_FIELDS:
            raise ValueError(f"body field {field!r} is not a windowed body")
        return self._push(varint(num << 3 | 2) + varint(len(body)) + body, now)

    def _push(self, rest: bytes, now: float) -> int:
        if self._send.full:
            raise WindowError(f"send window full ({self._send.capacity} unacked)")
        seq = self._send.next_seq
        payload = b"\x08" + varint(seq) + rest
        self._send.push(payload, now)
        self._output(payload)
        self._last_sent = self._clock = now
        return seq

    def send_control(self, env: im_pb2.Envelope, now: float | None = None) -> None:
        """Queue a frame outside the window (seq 0)."""
        if self.closing:
            return
        if now is not None:
            self._clock = now
        self._emit(env)

    def send_error(self, err: ProtocolError, ref_seq: int = 0, ref_msg_id: int = 0) -> None:
        self.errors_sent += 1
        self._emit(
            im_pb2.Envelope(
                error=im_pb2.Error(
                    code=err.code,  # type: ignore[arg-type]
                    detail=err.detail[:200],
                    ref_seq=ref_seq,
                    ref_msg_id=ref_msg_id,
                )
            )
        )

    def _emit(self, env: im_pb2.Envelope) -> None:
        self._output(_body_bytes(env))
        self._last_sent = self._clock

    def _output(self, payload: bytes) -> None:
        if self._out is None:
            self._out = [payload]
        else:
            self._out.append(payload)

    def close(self, error: ProtocolError | None = None) -> None:
        """Decide to close; with ``error``, an ERROR goes out first. Idempotent."""
        if self.closing:
            return
        if error is not None:
            self.close_error = error
            self.send_error(error)
        self.closing = True
        self._inbox = None  # not handled, so not acked: the sender still has them

    # -- time --------------------------------------------------------------------------------

    def timer(self, now: float) -> None:
        """GREET deadline, idle timeout, retransmits, heartbeat."""
        if self.closing:
            return
        self._clock = now
        cfg = self.config
        if not self.authenticated and cfg.greet_timeout and now - self._opened >= cfg.greet_timeout:
            self.close(ProtocolError("no GREET in time", code=im_pb2.GREET_TIMEOUT, fatal=True))
            return
        if now - self._last_received >= cfg.idle_timeout:
            self.close(
                ProtocolError(
                    f"nothing received for {cfg.idle_timeout:g}s",
                    code=im_pb2.IDLE_TIMEOUT,
                    fatal=True,
                )
            )
            return
        try:
            due = self._send.due(now)
        except ProtocolError as err:
            self.close(err)
            return
        for _seq, payload in due:
            self._output(payload)
            self._last_sent = now
        if now - self._last_sent >= cfg.heartbeat:
            self._emit(im_pb2.Envelope(ping=im_pb2.Ping(nonce=int(now * 1000))))

    def next_deadline(self) -> float:
        """When :meth:`timer` next has something to do (at the latest)."""
        cfg = self.config
        times = [self._last_received + cfg.idle_timeout, self._last_sent + cfg.heartbeat]
        if not self.authenticated and cfg.greet_timeout:
            times.append(self._opened + cfg.greet_timeout)
        retransmit = self._send.next_deadline()
        if retransmit is not None:
            times.append(retransmit)
        return min(times)
