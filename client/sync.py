"""Per-device sync by cursor, sans-IO: what to surface, what to ask for, which cursors to send.

Why a state machine without sockets: every rule of keeping up with timelines (gaps, holes,
duplicates, receipts, coalescing) lives here and is tested by feeding frames and times, never by
racing a server. The caller (client/core.py) feeds it what the connector pushed and sends or
surfaces the effects it returns, in order.

Rules (docs: the briefing's "Client library semantics"):
- per conversation, ``have`` is the highest seq this device holds with nothing missing below
  it. A chat at have+1 is surfaced and advances it; one below or at it, or already buffered, is
  a duplicate; one above waits in a bounded buffer while a Sync asks for the gap;
- a SyncDone closes the range it covers: a seq in it that never came does not exist for this
  user (before joining, removed by retention), so ``have`` moves past it;
- a ConvState naming a head above ``have`` (or a buffered chat past a gap) asks for the rest,
  one Sync per conversation at a time, at most ``max_syncing`` conversations at once, in pages;
  a listing's ConvState also carries the server's cursors (what it has less of than this
  device is sent again); a ``head_only`` one (a group's membership notice) carries none, and
  the cursors stay as they are (else every member's device would send its cursors again);
- a chat this library sent holds its seq once SENT (or once it comes back in a Sync), so the
  device's own messages never look like gaps; a chat of this user from another device is
  surfaced with ``own=True``;
- receipts: SENT once per message id; DELIVERED and READ once per message sent here, when the
  peer's cursor reaches its seq (a READ implies DELIVERED);
- a group (``g:<id>``) is a timeline like a pair's, with one difference: it has many peers, so
  no one member's cursor is a receipt. Group chats get SENT here; their DELIVERED and READ are
  counts (GroupReceipt pushes, ``IMClient.read_by``), and nothing waits for them here. The
  user's own READ cursor (``mark_read``) works as in a pair;
- cursors are coalesced: DELIVERED (up to ``have``) and READ (what the app marked) go at most
  every ``cursor_every`` seconds per conversation, plus the DELIVERED at the end of each page;
- ``caught_up``: the first CaughtUp after the link came up has arrived and every conversation it
  listed is held up to the head the listing named.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field

from common.convid import parse_conv_id
from proto import im_pb2

SYNC_PAGE = 200  # the connector's cap on one Sync's answer
MAX_SYNCING = 8  # conversations with a Sync outstanding at once (the connector allows 16)
MAX_BUFFER = 1000  # live chats past a gap kept per conversation; more are fetched again later
CURSOR_EVERY = 0.1  # seconds between two cursors of one kind for one conversation
SYNC_RETRY = 10.0  # a Sync unanswered this long is asked again
RETRY_LATER = 1.0  # a Sync refused for a while (RATE_LIMITED) is asked again after this
ID_MEMORY = 100_000  # message ids of this library's chats remembered (own-echo, SENT once)
# chats sent here still waiting for their DELIVERED (and READ), per conversation: past this the
# oldest is forgotten, so a peer that never reads costs bounded memory (its receipt never shows)
WAIT_MEMORY = 100_000

DELIVERED = int(im_pb2.DELIVERED)
READ = int(im_pb2.READ)


@dataclass(frozen=True, slots=True)
class Surface:
    """Hand this chat to the application (opened by the caller)."""

    chat: im_pb2.ChatMsg
    own: bool  # sent by another device of this user


@dataclass(frozen=True, slots=True)
class SendSync:
    conv_id: str
    from_seq: int
    to_seq: int  # 0: up to the head
    limit: int


@dataclass(frozen=True, slots=True)
class SendCursor:
    conv_id: str
    type: int  # DELIVERED or READ
    seq: int


@dataclass(frozen=True, slots=True)
class SurfaceReceipt:
    kind: str  # SENT, DELIVERED or READ
    conv_id: str
    peer: str
    msg_id: int
    seq: int


Effect = Surface | SendSync | SendCursor | SurfaceReceipt


@dataclass(slots=True)
class _Conv:
    conv_id: str
    peer: str  # a pair's other user; a group's id
    group: bool = False  # its peers' cursors are not receipts (module docstring)
    have: int = 0
    head: int = 0
    # seq -> chat past a gap; None marks a seq held by a chat this library sent
    buffer: dict[int, im_pb2.ChatMsg | None] = field(default_factory=dict)
    syncing: int = 0  # from_seq of the outstanding Sync (0: none)
    sync_end: int = 0  # its to_seq (0: the head)
    sync_at: float = 0.0
    delivered_sent: int = 0  # the DELIVERED cursor the server has (or has been sent)
    delivered_at: float = -1e9
    read_want: int = 0
    read_sent: int = 0
    read_at: float = -1e9
    peer_delivered: int = 0
    peer_read: int = 0
    # (seq, msg id) of chats sent here whose DELIVERED / READ has not been surfaced
    wait_delivered: list[tuple[int, int]] = field(default_factory=list)
    wait_read: list[tuple[int, int]] = field(default_factory=list)


def _wait(waiting: list[tuple[int, int]], seq: int, msg_id: int) -> None:
    bisect.insort(waiting, (seq, msg_id))
    if len(waiting) > WAIT_MEMORY:
        del waiting[0]


def _peer_of(conv_id: str, me: str) -> tuple[str, bool]:
    """The other side of ``conv_id`` for ``me`` and whether it is a group."""
    try:
        ref = parse_conv_id(conv_id)
        return ref.peer_of(me), ref.dest_type == im_pb2.GROUP
    except ValueError:
        return "", False


class SyncMachine:
    """One device's view of its timelines; see the module docstring for the rules."""

    def __init__(
        self,
        me: str,
        *,
        page: int = SYNC_PAGE,
        max_syncing: int = MAX_SYNCING,
        max_buffer: int = MAX_BUFFER,
        cursor_every: float = CURSOR_EVERY,
        sync_retry: float = SYNC_RETRY,
    ) -> None:
        self.me = me
        self.page = page
        self.max_syncing = max_syncing
        self.max_buffer = max_buffer
        self.cursor_every = cursor_every
        self.sync_retry = sync_retry
        self.since = 0  # of the last CaughtUp: goes in the next Greet
        self.online = False
        self._convs: dict[str, _Conv] = {}
        self._want: OrderedDict[str, None] = OrderedDict()  # conversations waiting to Sync
        self._later: dict[str, float] = {}  # conversation -> when to ask again
        self._active: set[str] = set()  # conversations with a Sync outstanding
        self._dirty: set[str] = set()  # conversations with a cursor to send
        self._mine: OrderedDict[int, None] = OrderedDict()  # ids of chats sent here
        self._sent: OrderedDict[int, None] = OrderedDict()  # ids whose SENT was surfaced
        self._listing = False
        self._listed: dict[str, int] = {}  # conversation -> head named by this link's listing
        self._behind: set[str] = set()  # listed conversations not yet held up to that head
        self._caught = False
        self._got_caught_up = False  # this link's listing has ended
        self.stats: dict[str, int] = {
            "duplicates": 0,
            "buffered": 0,
            "dropped": 0,
            "holes_skipped": 0,
            "syncs": 0,
        }

    # -- queries -----------------------------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self._caught

    def have(self, conv_id: str) -> int:
        c = self._convs.get(conv_id)
        return 0 if c is None else c.have

    def read_cursors(self) -> dict[str, int]:
        """Per conversation, how far this user has read as this device knows it: its own
        marks, the READ of the user's other devices, the listing's; whichever is highest."""
        return {conv_id: c.read_want for conv_id, c in self._convs.items()}

    def head(self, conv_id: str) -> int:
        c = self._convs.get(conv_id)
        return 0 if c is None else c.head

    def conversations(self) -> list[str]:
        return list(self._convs)

    @property
    def syncing(self) -> int:
        return len(self._active)

    # -- the link ----------------------------------------------------------------------------

    def link_up(self, now: float) -> list[Effect]:
        """A fresh link (after WELCOME): a new listing follows; resume what was missing."""
        self.online = True
        self._listing, self._caught, self._got_caught_up = True, False, False
        self._listed.clear()
        self._behind.clear()
        out: list[Effect] = []
        for c in self._convs.values():
            c.syncing = 0
            if c.have < c.head or c.buffer:
                self._want[c.conv_id] = None
            if c.have > c.delivered_sent or c.read_want > c.read_sent:
                self._dirty.add(c.conv_id)
        self._active.clear()
        self._later.clear()
        self._pump(now, out)
        self._flush_dirty(now, out)
        return out

    def link_down(self) -> None:
        """The link is gone: every outstanding Sync is lost with it."""
        self.online = False
        for conv_id in self._active:
            self._convs[conv_id].syncing = 0
            self._want[conv_id] = None
        self._active.clear()

    def cursor_unsent(self, conv_id: str, type_: int, seq: int) -> None:
        """A cursor that may never have reached the server: send it again."""
        c = self._conv(conv_id)
        if type_ == DELIVERED:
            c.delivered_sent = min(c.delivered_sent, seq - 1)
        else:
            c.read_sent = min(c.read_sent, seq - 1)
        self._dirty.add(conv_id)

    def sync_failed(self, conv_id: str, now: float, *, retry: bool) -> list[Effect]:
        """The server refused a Sync: ask again later (``retry``), or stop (not a member)."""
        c = self._conv(conv_id)
        c.syncing = 0
        self._active.discard(conv_id)
        if retry:
            self._later[conv_id] = now + RETRY_LATER
        else:
            self._want.pop(conv_id, None)
            self._behind.discard(conv_id)
            c.buffer.clear()
            c.head = c.have
        out: list[Effect] = []
        self._pump(now, out)
        self._check_caught()
        return out

    # -- frames ------------------------------------------------------------------------------

    def local_sent(self, msg_id: int) -> None:
        """This library made chat ``msg_id`` (before sending it)."""
        _remember(self._mine, msg_id)

    def on_chat(self, chat: im_pb2.ChatMsg, now: float) -> list[Effect]:
        out: list[Effect] = []
        mine = chat.from_id == self.me
        if mine and chat.id in self._mine:  # our own, back through a Sync: it was committed
            return self.on_sent(chat.id, chat.conv_id, chat.seq, chat.dest_id, now)
        if not chat.conv_id or not chat.seq:  # not in a timeline: nothing to order by
            out.append(Surface(chat, mine))
            return out
        c = self._conv(chat.conv_id)
        self._place(c, chat.seq, chat, now, out)
        return out

    def on_sent(self, msg_id: int, conv_id: str, seq: int, peer: str, now: float) -> list[Effect]:
        """Chat ``msg_id`` of this library is committed at ``seq`` (SENT, or its echo)."""
        out: list[Effect] = []
        if not conv_id or not seq:
            if _remember(self._sent, msg_id):
                out.append(SurfaceReceipt("SENT", conv_id, peer, msg_id, seq))
            return out
        c = self._conv(conv_id)
        if peer and not c.peer:
            c.peer = peer
        if _remember(self._sent, msg_id):
            out.append(SurfaceReceipt("SENT", conv_id, c.peer, msg_id, seq))
            if not c.group:  # a group's read-by is a count: GroupReceipt, IMClient.read_by
                self._await_peer(c, seq, msg_id, out)
        self._place(c, seq, None, now, out)
        return out

    def _await_peer(self, c: _Conv, seq: int, msg_id: int, out: list[Effect]) -> None:
        """A pair's chat of ours at ``seq``: its DELIVERED and READ now, or once the peer's
        cursor gets there."""
        if c.peer_delivered >= seq:
            out.append(SurfaceReceipt("DELIVERED", c.conv_id, c.peer, msg_id, seq))
        else:
            _wait(c.wait_delivered, seq, msg_id)
        if c.peer_read >= seq:
            out.append(SurfaceReceipt("READ", c.conv_id, c.peer, msg_id, seq))
        else:
            _wait(c.wait_read, seq, msg_id)

    def on_sync_done(self, done: im_pb2.SyncDone, now: float) -> list[Effect]:
        out: list[Effect] = []
        c = self._conv(done.conv_id)
        c.head = max(c.head, done.last_seq)
        if done.from_seq <= c.have + 1 and done.to_seq > c.have:
            self._advance_to(c, done.to_seq, out)
        if c.syncing and c.syncing == done.from_seq:
            c.syncing = 0
            self._active.discard(c.conv_id)
        if (c.have < c.head or c.buffer) and not c.syncing:
            self._want[c.conv_id] = None
        self._flush_cursors(c, now, out, force=True)
        self._pump(now, out)
        self._check_caught()
        return out

    def on_conv_state(self, cs: im_pb2.ConvState, now: float) -> list[Effect]:
        out: list[Effect] = []
        c = self._conv(cs.conv_id)
        if cs.peer_id and not c.peer:
            c.peer = cs.peer_id
        c.head = max(c.head, cs.last_seq)
        if self._listing:
            self._listed[c.conv_id] = max(self._listed.get(c.conv_id, 0), cs.last_seq)
            if c.have < self._listed[c.conv_id]:
                self._behind.add(c.conv_id)
        if not cs.head_only:  # a membership notice knows no cursors: keep ours as they are
            self._take_cursors(c, cs, out)
        if (c.have < c.head or c.buffer) and not c.syncing:
            self._want[c.conv_id] = None
        self._pump(now, out)
        return out

    def _take_cursors(self, c: _Conv, cs: im_pb2.ConvState, out: list[Effect]) -> None:
        """A listing's cursors: the peer's are receipts, ours are the server's word (what it
        has less of than we hold is sent again)."""
        if not c.group:
            self._peer_cursor(c, DELIVERED, cs.peer_delivered_seq, out)
            self._peer_cursor(c, READ, cs.peer_read_seq, out)
        c.delivered_sent = cs.device_seq
        c.read_sent = cs.read_seq
        c.read_want = max(c.read_want, cs.read_seq)
        if c.have > c.delivered_sent or c.read_want > c.read_sent:
            self._dirty.add(c.conv_id)

    def on_caught_up(self, since: int, now: float) -> list[Effect]:
        self.since = max(self.since, since)
        if self._listing:
            self._listing, self._got_caught_up = False, True
        self._check_caught()
        return []

    def on_cursor(self, cur: im_pb2.Cursor, now: float) -> list[Effect]:
        out: list[Effect] = []
        c = self._conv(cur.conv_id)
        if cur.user_id in ("", self.me):
            # our own, from another device: a READ there is a READ here
            if cur.type == READ:
                c.read_sent = max(c.read_sent, cur.seq)
                c.read_want = max(c.read_want, cur.seq)
            return out
        if not c.group:  # one member's cursor is not a group message's receipt
            self._peer_cursor(c, cur.type, cur.seq, out)
        return out

    def mark_read(self, conv_id: str, seq: int, now: float) -> list[Effect]:
        out: list[Effect] = []
        c = self._conv(conv_id)
        if seq > c.read_want:
            c.read_want = seq
            self._flush_cursors(c, now, out)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Time passed: coalesced cursors are due, lost Syncs are asked again."""
        out: list[Effect] = []
        if not self.online:
            return out
        for conv_id, at in list(self._later.items()):
            if at <= now:
                del self._later[conv_id]
                self._want[conv_id] = None
        for conv_id in list(self._active):
            c = self._convs[conv_id]
            if now - c.sync_at >= self.sync_retry:
                c.syncing = 0
                self._active.discard(conv_id)
                self._want[conv_id] = None
        self._pump(now, out)
        self._flush_dirty(now, out)
        return out

    # -- internals ---------------------------------------------------------------------------

    def _conv(self, conv_id: str) -> _Conv:
        c = self._convs.get(conv_id)
        if c is None:
            peer, group = _peer_of(conv_id, self.me)
            c = self._convs[conv_id] = _Conv(conv_id, peer, group)
        return c

    def _place(
        self, c: _Conv, seq: int, item: im_pb2.ChatMsg | None, now: float, out: list[Effect]
    ) -> None:
        """The chat (None: one of ours) at ``seq`` arrived."""
        c.head = max(c.head, seq)
        if seq <= c.have or seq in c.buffer:
            if item is not None:
                self.stats["duplicates"] += 1
            return
        if seq == c.have + 1:
            self._emit(c, item, out)
            c.have = seq
            self._drain(c, out)
            self._flush_cursors(c, now, out)
            self._check_caught()
            return
        # past a gap: a chat a Sync brought is always kept (its range is being closed)
        in_sync = c.syncing and (not c.sync_end or seq <= c.sync_end)
        if in_sync or item is None or len(c.buffer) < self.max_buffer:
            c.buffer[seq] = item
            self.stats["buffered"] += 1
        else:
            self.stats["dropped"] += 1  # fetched again: head is past it
        if not c.syncing:
            self._want[c.conv_id] = None
            self._pump(now, out)

    def _emit(self, c: _Conv, item: im_pb2.ChatMsg | None, out: list[Effect]) -> None:
        if item is not None:
            out.append(Surface(item, item.from_id == self.me))

    def _drain(self, c: _Conv, out: list[Effect]) -> None:
        while c.have + 1 in c.buffer:
            c.have += 1
            self._emit(c, c.buffer.pop(c.have), out)

    def _advance_to(self, c: _Conv, upto: int, out: list[Effect]) -> None:
        """Everything up to ``upto`` has come that will come: surface what waits, skip holes."""
        waiting = sorted(s for s in c.buffer if s <= upto)
        for seq in waiting:
            self._emit(c, c.buffer.pop(seq), out)
        self.stats["holes_skipped"] += upto - c.have - len(waiting)
        c.have = upto
        self._drain(c, out)

    def _pump(self, now: float, out: list[Effect]) -> None:
        """Start Syncs while there is room."""
        if not self.online:
            return
        while self._want and len(self._active) < self.max_syncing:
            conv_id, _ = self._want.popitem(last=False)
            c = self._convs[conv_id]
            if c.syncing or conv_id in self._later:
                continue
            start = c.have + 1
            if c.buffer:
                end = min(c.buffer) - 1
            elif c.have < c.head:
                end = 0
            else:
                continue
            c.syncing, c.sync_end, c.sync_at = start, end, now
            self._active.add(conv_id)
            self.stats["syncs"] += 1
            out.append(SendSync(conv_id, start, end, self.page))

    def _peer_cursor(self, c: _Conv, type_: int, seq: int, out: list[Effect]) -> None:
        if type_ == READ:
            self._peer_cursor(c, DELIVERED, seq, out)  # what is read was delivered
            if seq > c.peer_read:
                c.peer_read = seq
                _pass(c.wait_read, seq, "READ", c, out)
        elif type_ == DELIVERED and seq > c.peer_delivered:
            c.peer_delivered = seq
            _pass(c.wait_delivered, seq, "DELIVERED", c, out)

    def _flush_cursors(self, c: _Conv, now: float, out: list[Effect], force: bool = False) -> None:
        if not self.online:
            if c.have > c.delivered_sent or c.read_want > c.read_sent:
                self._dirty.add(c.conv_id)
            return
        later = False
        if c.have > c.delivered_sent:
            if force or now - c.delivered_at >= self.cursor_every:
                out.append(SendCursor(c.conv_id, DELIVERED, c.have))
                c.delivered_sent, c.delivered_at = c.have, now
            else:
                later = True
        if c.read_want > c.read_sent:
            if force or now - c.read_at >= self.cursor_every:
                out.append(SendCursor(c.conv_id, READ, c.read_want))
                c.read_sent, c.read_at = c.read_want, now
            else:
                later = True
        if later:
            self._dirty.add(c.conv_id)
        else:
            self._dirty.discard(c.conv_id)

    def _flush_dirty(self, now: float, out: list[Effect]) -> None:
        for conv_id in list(self._dirty):
            self._flush_cursors(self._convs[conv_id], now, out)

    def _check_caught(self) -> None:
        if self._caught or not self._got_caught_up:
            return
        for conv_id in list(self._behind):
            if self._convs[conv_id].have >= self._listed[conv_id]:
                self._behind.discard(conv_id)
        if not self._behind:
            self._caught = True


def _pass(waiting: list[tuple[int, int]], seq: int, kind: str, c: _Conv, out: list[Effect]) -> None:
    """Surface ``kind`` for every waiting message at or below ``seq``."""
    cut = bisect.bisect_right(waiting, (seq, 1 << 64))
    for s, msg_id in waiting[:cut]:
        out.append(SurfaceReceipt(kind, c.conv_id, c.peer, msg_id, s))
    del waiting[:cut]


def _remember(memory: OrderedDict[int, None], key: int) -> bool:
    """Add ``key`` to a bounded memory; True if it is new."""
    if key in memory:
        return False
    memory[key] = None
    if len(memory) > ID_MEMORY:
        memory.popitem(last=False)
    return True
