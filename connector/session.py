"""The rules of one client session, sans-IO: events in, effects out.

:class:`SessionRules` is fed what happens (a frame from the client, a verdict on its GREET, a
fanout from a transfer, a listing or sync that ended, the clock) and answers with effect
dataclasses for the asyncio shell (connector/client.py) to carry out: frames to send, chats and
records to forward to a transfer, listings and syncs to start. It does no I/O and reads no clock,
so every rule is tested without sockets (tests/test_session_rules.py). Why the rules are these:

- nothing is taken before a GREET whose token verifies, is for the device it names and carries
  an id slot (revocation and the device limit need I/O: the shell asks, then calls
  :meth:`SessionRules.admitted`);
- after WELCOME the device hears, in one outbox, the listing of what changed since its last
  CaughtUp (with slack for clocks) and live pushes; a second listing 2 s later covers fanouts
  sent while a transfer's route cache did not know this device yet, and any later request (a
  transfer link lost, a transfer that came back) lists again from the previous listing's start:
  a device that missed a fanout learns the conversation's head and Syncs;
- a chat's id must carry the device's slot, so the device that sent a chat is known when its
  commit comes back (it gets SENT, every other device the chat);
- each kind of client frame has its own bound: chats a token bucket, cursors one at 4x the rate
  (a device repeats them freely), syncs at most :data:`MAX_SYNCS` at once, typing starts a
  bucket per conversation and one per session (connector/signals.py; excess dropped unsaid);
- typing from the client is checked here (its user, its conversation) and forwarded like a
  cursor, but as a control frame; typing and presence from a transfer or the presence bus go
  to the device: typing as a control frame (never retransmitted: it is stale by then), presence
  through the outbox, and the device never hears its own user's typing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.config import Settings
from common.errors import AuthError, ProtocolError
from common.ids import route_key, slot_of
from common.tokens import NO_SLOT, Claims
from connector import rules
from connector.rules import State, SyncRange
from connector.signals import TypingLimiter, check_typing
from proto import im_pb2

MAX_SYNCS = 16  # syncs one session may have running at once
LISTING_SLACK_MS = 60_000  # clocks of the writers and this connector may disagree this much
RELIST_AFTER = 2.0  # seconds after WELCOME: the second listing
RELIST_RETRY = 2.0  # seconds before a failed listing is tried again
CURSOR_RATE_FACTOR = 4
SYNC_RATE_FACTOR = 4  # syncs have a bucket of their own at this multiple of the chat rate
# a device that stays online and missed a fanout (a route lookup that failed, a commit answered
# after its submit timed out) hears of it by the next listing: one every minute or so
RELIST_EVERY = 60.0


# -- effects -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendControl:
    """A control frame (seq 0) to the device, now: WELCOME."""

    env: im_pb2.Envelope


@dataclass(frozen=True, slots=True)
class Push:
    """A windowed frame for the device, through the outbox; ``sent``: it is a SENT ack."""

    env: im_pb2.Envelope
    sent: bool = False


@dataclass(frozen=True, slots=True)
class SendError:
    """A non-fatal ERROR to the device about one of its chats (the writer refused it)."""

    error: ProtocolError
    ref_msg_id: int


@dataclass(frozen=True, slots=True)
class Admit:
    """Ask the database and the registry about this GREET (revocation, device limit); on
    success call :meth:`SessionRules.admitted` and carry out what it returns."""

    claims: Claims
    device_id: str
    since: int


@dataclass(frozen=True, slots=True)
class Register:
    """Route this device's pushes here, and record it online (in that order)."""


@dataclass(frozen=True, slots=True)
class ForwardChat:
    """Check the friendship (and a FILE chat's upload), then forward the chat to a transfer:
    ``env``, the client's envelope holding ``chat`` (the link writes its own seq)."""

    chat: im_pb2.ChatMsg
    key: str
    env: im_pb2.Envelope


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward an envelope (a cursor record) to the transfer that ``key`` picks."""

    env: im_pb2.Envelope
    key: str


@dataclass(frozen=True, slots=True)
class StartListing:
    """List the conversations changed since ``since_ms``, then CaughtUp; report the end with
    :meth:`SessionRules.listing_done` (or ``listing_failed``)."""

    since_ms: int


@dataclass(frozen=True, slots=True)
class ScheduleRelist:
    """Call :meth:`SessionRules.relist` after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class ScheduleRefresh:
    """List again after ``delay`` seconds; a later ScheduleRefresh replaces this one (one
    periodic listing per session, however many listings ran)."""

    delay: float


@dataclass(frozen=True, slots=True)
class StartSync:
    """Answer a Sync; report its end with :meth:`SessionRules.sync_done`."""

    range: SyncRange


@dataclass(frozen=True, slots=True)
class Close:
    """End the session with this (fatal) error."""

    error: ProtocolError


Effect = (
    SendControl
    | Push
    | SendError
    | Admit
    | Register
    | ForwardChat
    | Forward
    | StartListing
    | ScheduleRelist
    | ScheduleRefresh
    | StartSync
    | Close
)


# -- pure helpers --------------------------------------------------------------------------------


class TokenBucket:
    """``rate`` per second, at most ``burst`` at once; time is passed in."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings a session's rules use."""

    heartbeat_ms: int
    max_frame: int
    window: int
    rate: float
    burst: int
    max_body: int

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(
            heartbeat_ms=int(s.heartbeat * 1000),
            max_frame=s.max_frame,
            window=s.window,
            rate=s.rate_limit,
            burst=s.rate_burst,
            max_body=s.max_frame - rules.ENVELOPE_HEADROOM,
        )


# a `since` from a client is only a hint: one past any real clock (a hostile uint64) lists
# nothing rather than reach the store as a number it cannot hold
SINCE_MAX = 1 << 53


def listing_since(since: int) -> int:
    """Where a listing for a device whose last CaughtUp said ``since`` starts (0: all)."""
    return max(0, min(since, SINCE_MAX) - LISTING_SLACK_MS) if since else 0


def sent_ack(chat: im_pb2.ChatMsg) -> im_pb2.Envelope:
    """SENT for the device that sent ``chat``, naming its place in the timeline."""
    return im_pb2.Envelope(
        ack=im_pb2.AckMsg(
            from_id=chat.dest_id,
            dest_id=chat.from_id,
            ack_type=im_pb2.SENT,
            ack_msg_id=chat.id,
            conv_id=chat.conv_id,
            seq=chat.seq,
        )
    )


# -- the state machine ---------------------------------------------------------------------------

Handler = Callable[["SessionRules", im_pb2.Envelope, float], list[Effect]]


class SessionRules:
    """One client session's state and rules. ``verify`` checks a token (TokenSigner.verify).

    One per connection, so an idle one is kept small: the rate buckets and the typing limiter
    are made at first use (a bucket starts full, so one made then is the one made at GREET)."""

    __slots__ = (
        "_chats",
        "_cursors",
        "_list_from",
        "_relist_wanted",
        "_syncs",
        "_typing",
        "_verify",
        "claims",
        "device_id",
        "limits",
        "listing",
        "node_id",
        "state",
        "syncs",
        "user_id",
    )

    def __init__(
        self, node_id: str, limits: Limits, verify: Callable[[str], Claims], now: float
    ) -> None:
        self.node_id = node_id
        self.limits = limits
        self._verify = verify
        self.state = State.CONNECTED
        self.user_id = ""
        self.device_id = ""
        self.claims: Claims | None = None
        self.syncs = 0  # running
        self._chats: TokenBucket | None = None
        self._cursors: TokenBucket | None = None
        self._syncs: TokenBucket | None = None
        self._typing: TypingLimiter | None = None
        self.listing = False  # a listing is running
        self._relist_wanted = False  # asked for while one ran: list again when it ends
        self._list_from = 0  # the `since` (before slack) of the next listing

    def __repr__(self) -> str:
        return f"<session {self.user_id or '?'}/{self.device_id or '?'} {self.state.name}>"

    @property
    def typing(self) -> TypingLimiter:
        """This session's typing rate and live starts (made at the first typing frame; one
        made earlier would hold full buckets then too, so 0 as its start changes nothing)."""
        if self._typing is None:
            self._typing = TypingLimiter(0.0)
        return self._typing

    @property
    def slot(self) -> int:
        return NO_SLOT if self.claims is None else self.claims.slot

    # -- client frames ---------------------------------------------------------------------------

    def frame(self, env: im_pb2.Envelope, now: float) -> list[Effect]:
        """A frame from the device; raises the ProtocolError it deserves."""
        kind = env.WhichOneof("body")
        rules.check(self.state, kind)
        assert kind is not None  # check() refuses an empty envelope
        return _HANDLERS[kind](self, env, now)

    def _greet(self, env: im_pb2.Envelope, now: float) -> list[Effect]:
        greet = env.greet
        try:
            claims = self._verify(greet.token)
        except AuthError as exc:
            raise ProtocolError(str(exc), code=im_pb2.BAD_TOKEN, fatal=True) from None
        device = greet.device_id or claims.device_id or "default"
        if len(device) > 64:
            raise ProtocolError("device_id too long", code=im_pb2.BAD_MESSAGE, fatal=True)
        bound = claims.device_id or "default"
        if device != bound:
            raise ProtocolError(f"token is for device {bound!r}", code=im_pb2.BAD_TOKEN, fatal=True)
        if claims.slot == NO_SLOT:
            # made before id slots: its device's ids could collide with another's; the client
            # library logs in again after a refused GREET and gets a token with its slot
            raise ProtocolError(
                "token has no message id slot: log in again", code=im_pb2.BAD_TOKEN, fatal=True
            )
        # the claims' own string (the same text): a session keeps one copy of it, not two
        return [Admit(claims, bound, greet.since)]

    def admitted(self, claims: Claims, device: str, since: int) -> list[Effect]:
        """The GREET passed every check: WELCOME, route here, list, and list again soon."""
        self.claims = claims
        self.user_id, self.device_id = claims.user_id, device
        self.state = State.AUTHENTICATED
        self._list_from = since
        lim = self.limits
        welcome = im_pb2.Welcome(
            user_id=self.user_id,
            node_id=self.node_id,
            heartbeat_ms=lim.heartbeat_ms,
            max_frame_bytes=lim.max_frame,
            window=lim.window,
            id_slot=claims.slot,
            max_body_bytes=lim.max_body,
        )
        self.listing = True
        return [
            SendControl(im_pb2.Envelope(welcome=welcome)),
            Register(),
            StartListing(listing_since(since)),
            ScheduleRelist(RELIST_AFTER),
        ]

    def _chat(self, env: im_pb2.Envelope, now: float) -> list[Effect]:
        chat = env.chat  # checked and cleared in place: the envelope goes on as it is, uncopied
        rules.check_chat(self.user_id, chat, self.limits.max_body)
        if slot_of(chat.id) != self.slot:
            raise ProtocolError(
                f"message id {chat.id} is of id slot {slot_of(chat.id)}, "
                f"this device's is {self.slot}"
            )
        rules.clear_stamps(chat)
        if self._chats is None:
            self._chats = TokenBucket(self.limits.rate, self.limits.burst, now)
        if not self._chats.take(now):
            raise ProtocolError("too many messages", code=im_pb2.RATE_LIMITED)
        return [ForwardChat(chat, route_key(chat.from_id, chat.dest_type, chat.dest_id), env)]

    def _cursor(self, env: im_pb2.Envelope, now: float) -> list[Effect]:
        cursor = rules.check_cursor(self.user_id, env.cursor)
        if self._cursors is None:
            lim, factor = self.limits, CURSOR_RATE_FACTOR
            self._cursors = TokenBucket(lim.rate * factor, lim.burst * factor, now)
        if not self._cursors.take(now):
            raise ProtocolError("too many cursors", code=im_pb2.RATE_LIMITED)
        record = im_pb2.TimelineRecord(cursor=cursor, device_id=self.device_id, origin=self.node_id)
        return [Forward(im_pb2.Envelope(record=record), cursor.conv_id)]

    def _sync(self, env: im_pb2.Envelope, now: float) -> list[Effect]:
        rng = rules.check_sync(self.user_id, env.sync)
        if self.syncs >= MAX_SYNCS:
            raise ProtocolError(f"over {MAX_SYNCS} syncs at once", code=im_pb2.RATE_LIMITED)
        if self._syncs is None:
            lim, factor = self.limits, SYNC_RATE_FACTOR
            self._syncs = TokenBucket(lim.rate * factor, lim.burst * factor, now)
        if not self._syncs.take(now):
            raise ProtocolError("too many syncs", code=im_pb2.RATE_LIMITED)
        self.syncs += 1
        return [StartSync(rng)]

    def _typing_frame(self, env: im_pb2.Envelope, now: float) -> list[Effect]:
        typing = check_typing(self.user_id, env.typing)
        if self._typing is None:
            self._typing = TypingLimiter(now)
        if not self._typing.admit(typing.conv_id, typing.typing, now):
            return []  # over the rate, or a stop with no start: a hint, dropped unsaid
        return [Forward(im_pb2.Envelope(typing=typing), typing.conv_id)]

    def typing_stops(self, now: float) -> list[im_pb2.Envelope]:
        """The stops this session owes as it ends: one per conversation its start still lasts
        in, so the other side does not see it typing for the rest of the TTL."""
        if self._typing is None:
            return []
        return [
            im_pb2.Envelope(typing=im_pb2.Typing(conv_id=c, user_id=self.user_id, typing=False))
            for c in self._typing.live(now)
        ]

    # -- work the shell did ----------------------------------------------------------------------

    def sync_done(self) -> None:
        self.syncs = max(0, self.syncs - 1)

    def listing_done(self, started_ms: int) -> list[Effect]:
        """A listing sent its CaughtUp(``started_ms``): the next one starts there."""
        self.listing = False
        self._list_from = started_ms
        refresh: list[Effect] = [ScheduleRefresh(RELIST_EVERY)]
        if self._relist_wanted:
            return refresh + self.relist()
        return refresh

    def listing_failed(self) -> list[Effect]:
        """The timeline did not answer: try again from the same place later."""
        self.listing = False
        return [ScheduleRelist(RELIST_RETRY)]

    def relist(self) -> list[Effect]:
        """List again (the timer after WELCOME, a transfer link lost or back): one at a time."""
        if self.state is not State.AUTHENTICATED:
            return []
        if self.listing:
            self._relist_wanted = True
            return []
        self._relist_wanted = False
        self.listing = True
        return [StartListing(listing_since(self._list_from))]

    def closing(self) -> None:
        self.state = State.CLOSING

    # -- pushes from a transfer ------------------------------------------------------------------

    def is_sender_of(self, chat: im_pb2.ChatMsg) -> bool:
        """This device sent ``chat``: it is the sender's, and the id carries this slot."""
        return chat.from_id == self.user_id and slot_of(chat.id) == self.slot

    def deliver(self, fanout: im_pb2.Fanout) -> list[Effect]:
        """A transfer's fanout for this user: the chat rules (SENT to the device that sent it,
        the chat to every other; a refusal to the sending device only), or a cursor."""
        if self.state is not State.AUTHENTICATED:
            return []
        kind = fanout.WhichOneof("body")
        if kind == "chat":
            chat = fanout.chat
            mine = self.is_sender_of(chat)
            if fanout.refused:
                if not mine:
                    return []
                err = ProtocolError(f"message {chat.id} refused", code=fanout.refused)
                return [SendError(err, chat.id)]
            if mine:
                return [Push(sent_ack(chat), sent=True)]
            return [Push(im_pb2.Envelope(chat=chat))]
        if kind == "cursor":
            return [Push(im_pb2.Envelope(cursor=fanout.cursor))]
        if kind == "typing":
            if fanout.typing.user_id == self.user_id:
                return []  # the user's own typing, on another device: nothing to show
            return [SendControl(im_pb2.Envelope(typing=fanout.typing))]
        if kind == "presence":
            if fanout.presence.user_id == self.user_id:
                return []
            return [Push(im_pb2.Envelope(presence=fanout.presence))]
        if kind == "group_receipt":  # addressed to the message's sender (transfer/groupreceipts.py)
            return [Push(im_pb2.Envelope(group_receipt=fanout.group_receipt))]
        return []


def _nothing(rules: SessionRules, env: im_pb2.Envelope, now: float) -> list[Effect]:
    """Keep-alives and link acks: the link itself handles them."""
    return []


# one table for every session (a dict of bound methods each would be ~600 bytes a connection)
_HANDLERS: dict[str, Handler] = {
    "greet": SessionRules._greet,
    "chat": SessionRules._chat,
    "cursor": SessionRules._cursor,
    "sync": SessionRules._sync,
    "typing": SessionRules._typing_frame,
    "ping": _nothing,
    "pong": _nothing,
    "link_ack": _nothing,
}
