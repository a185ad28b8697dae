"""What the terminal shows, sans-IO: conversations, their lines, unread counts, receipts, typing.

Why no I/O here: every rule about what a user sees (a message once, in seq order; how many are
unread; whether a message of mine is sent, delivered or read; who is typing) is decided by
feeding this model the client library's events and REST answers, so it is tested without a
terminal or a server (tests/test_tui_model.py). The screens only draw it; tui/session.py feeds it.

Rules:
- a line is keyed by its seq, so a message the sync surfaces and the same one a history page
  brings show once; lines of mine not yet SENT wait in ``pending`` (send order) below them;
- unread: messages from others above my READ cursor. The listing's count covers what it saw up
  to its ``last_seq``; what came later is counted from the lines held. Once every seq between
  the cursor and that head is held, the count is exact from the lines alone;
- a message of mine in a pair is read once the peer's READ cursor reaches its seq, delivered
  once their DELIVERED does (a READ implies DELIVERED); in a group it is "read by N of M" when
  a count is known, else "sent";
- a typing start lasts ``TYPING_TTL`` seconds unless repeated (proto/im.proto Typing);
- bounded: ``max_lines`` lines per conversation, the oldest dropped first. Paging history in
  (the user scrolled up) lets one conversation hold up to twice that, until :meth:`Model.follow`
  (the user is back at the bottom, or left) trims it again; ``max_pending`` unsent lines and
  ``MAX_TYPING`` typists per conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from client.events import GroupReceipt, Message, Receipt, ServerError
from client.history import Conversation
from common.convid import parse_conv_id
from proto import im_pb2

MAX_LINES = 2000  # per conversation; older ones are paged in again from REST when wanted
MAX_PENDING = 500  # lines of mine without a seq yet, per conversation (the outbox is bounded too)
MAX_TYPING = 32
TYPING_TTL = 6.0  # seconds a typing start lasts unless repeated


@dataclass(slots=True)
class Line:
    seq: int  # 0: mine, not SENT yet
    msg_id: int
    sender: str
    text: str
    mine: bool
    time_ms: int
    system: bool = False
    failed: str = ""  # an error code: this message of mine will not be delivered


@dataclass(slots=True)
class Conv:
    conv_id: str
    peer: str  # the friend, or the group id
    group: bool
    title: str
    lines: dict[int, Line] = field(default_factory=dict)  # seq -> line
    pending: dict[int, Line] = field(default_factory=dict)  # msg id -> mine, not SENT yet
    others: set[int] = field(default_factory=set)  # seqs of held lines that others sent
    last_seq: int = 0
    last_text: str = ""
    last_time: int = 0  # ms: orders the conversation list
    read_seq: int = 0  # my READ cursor (any device of mine)
    peer_read: int = 0  # a pair: the peer's cursors
    peer_delivered: int = 0
    base_last: int = 0  # the listing's head, and the unread count it gave up to it
    base_unread: int = 0
    history_done: bool = False  # the oldest message has been paged in (or the cap reached)
    limit: int = MAX_LINES  # lines held at most now (raised while history is paged in)
    read_by: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (read, members)
    typing: dict[str, float] = field(default_factory=dict)  # user -> when the start expires

    @property
    def more_above(self) -> bool:
        """History may hold older lines than these (seq 1 held: the start is here)."""
        return not self.history_done and 1 not in self.lines

    @property
    def oldest(self) -> int:
        """The lowest seq held (0: none): a history page asks for what is below it."""
        return min(self.lines) if self.lines else 0

    def ordered(self) -> list[Line]:
        """Lines in seq order, then mine not yet SENT in the order they were sent."""
        return [self.lines[s] for s in sorted(self.lines)] + list(self.pending.values())

    def unread(self) -> int:
        r = self.read_seq
        live = sum(1 for s in self.others if s > max(r, self.base_last))
        if r >= self.base_last:
            return live
        span = self.base_last - r
        if span <= len(self.lines) and all(s in self.lines for s in range(r + 1, r + span + 1)):
            return live + sum(1 for s in self.others if r < s <= self.base_last)
        return live + min(self.base_unread, self.base_last - r)

    def state(self, line: Line) -> str:
        """What a line of mine says of its delivery ("" for others' lines)."""
        if not line.mine or line.system:
            return ""
        if line.failed:
            return f"failed: {line.failed}"
        if not line.seq:
            return "sending"
        if self.group:
            counts = self.read_by.get(line.seq)
            return f"read by {counts[0]} of {counts[1]}" if counts else "sent"
        if line.seq <= self.peer_read:
            return "read"
        if line.seq <= self.peer_delivered:
            return "delivered"
        return "sent"


class Model:
    def __init__(self, me: str, *, max_lines: int = MAX_LINES, max_pending: int = MAX_PENDING):
        self.me = me
        self.max_lines = max_lines
        self.max_pending = max_pending
        self.convs: dict[str, Conv] = {}
        self.incoming: list[str] = []  # friend requests to me
        self.outgoing: list[str] = []  # mine, waiting
        self.group_names: dict[str, str] = {}
        self.invites: dict[str, str] = {}  # groups inviting me: id -> name

    # -- conversations -----------------------------------------------------------------------

    def conv(self, conv_id: str) -> Conv:
        """The conversation ``conv_id`` names, made on first sight (ValueError if it is not a
        conversation id, or not one of mine)."""
        c = self.convs.get(conv_id)
        if c is None:
            ref = parse_conv_id(conv_id)
            peer = ref.peer_of(self.me)
            group = ref.dest_type == im_pb2.GROUP
            title = "#" + self.group_names.get(peer, peer) if group else peer
            c = self.convs[conv_id] = Conv(conv_id, peer, group, title, limit=self.max_lines)
        return c

    def pair(self, friend: str) -> Conv:
        low, high = sorted((self.me, friend))
        return self.conv(f"p:{low}:{high}")

    def set_friends(self, friends: list[str]) -> None:
        """Every friend has a conversation to open, messages or not."""
        for f in friends:
            if f != self.me:
                self.pair(f)

    def set_groups(self, groups: dict[str, str]) -> None:
        """Groups I am a member of (id -> name), each with a conversation."""
        self.group_names.update(groups)
        for gid, name in groups.items():
            self.conv(f"g:{gid}").title = "#" + (name or gid)

    def load(self, listing: list[Conversation]) -> None:
        """``GET /conversations`` (opened): heads, cursors, unread counts, last messages."""
        for item in listing:
            info = item.info
            try:
                c = self.conv(info.conv_id)
            except ValueError:
                continue  # not one this user can be in: nothing to show
            c.read_seq = max(c.read_seq, info.read_seq)
            c.peer_read = max(c.peer_read, info.peer_read_seq)
            c.peer_delivered = max(c.peer_delivered, info.peer_delivered_seq, c.peer_read)
            c.base_last, c.base_unread = info.last_seq, info.unread
            c.last_seq = max(c.last_seq, info.last_seq)
            if isinstance(item.last, Message):
                self.add(item.last)
            elif isinstance(item.last, ServerError):
                self.add_unreadable(item.last)
            c.last_time = max(c.last_time, info.changed)

    def ordered(self) -> list[Conv]:
        """Most recent activity first; conversations without any, by title."""
        return sorted(self.convs.values(), key=lambda c: (-c.last_time, c.title))

    def total_unread(self) -> int:
        return sum(c.unread() for c in self.convs.values())

    # -- lines -------------------------------------------------------------------------------

    def add(self, msg: Message) -> Conv | None:
        """A message surfaced or paged in; None if it names no conversation of mine. A seq
        already held is not added again."""
        try:
            c = self.conv(msg.conv_id)
        except ValueError:
            return None
        if not msg.seq or msg.seq in c.lines:
            return c
        mine = msg.from_id == self.me
        line = Line(
            msg.seq,
            msg.msg_id,
            msg.from_id,
            msg.text,
            mine,
            msg.server_time or msg.create_time,
            system=msg.system is not None,
        )
        if mine:
            c.pending.pop(msg.msg_id, None)  # ours, met again through the sync or history
        self._put(c, line)
        return c

    def add_unreadable(self, err: ServerError) -> Conv | None:
        """A message whose body did not open: it holds its seq, with a note instead of text."""
        if not err.conv_id or not err.seq:
            return None
        try:
            c = self.conv(err.conv_id)
        except ValueError:
            return None
        if err.seq not in c.lines:
            self._put(c, Line(err.seq, err.msg_id, "?", "(unreadable message)", False, 0))
        return c

    def _put(self, c: Conv, line: Line) -> None:
        c.lines[line.seq] = line
        if not line.mine and not line.system:
            c.others.add(line.seq)
        if line.seq >= c.last_seq:
            c.last_seq = line.seq
            c.last_text = f"{'me' if line.mine else line.sender}: {line.text}"
            c.last_time = max(c.last_time, line.time_ms)
        self._trim(c)

    def _trim(self, c: Conv) -> None:
        while len(c.lines) > c.limit:
            drop = min(c.lines)
            del c.lines[drop]
            c.others.discard(drop)
            c.history_done = False

    def follow(self, conv_id: str) -> None:
        """The user is back at the newest lines (or left): paged-in history may go again."""
        c = self.convs.get(conv_id)
        if c is not None and c.limit != self.max_lines:
            c.limit = self.max_lines
            self._trim(c)

    def add_history(self, conv_id: str, page: Sequence[Message | ServerError], limit: int) -> int:
        """An older page (oldest first, ``limit`` asked): how many lines it added. A short
        page means the start was reached; a conversation holds at most twice ``max_lines``
        while history is paged in, and a page that would pass that stops there."""
        c = self.conv(conv_id)
        room = 2 * self.max_lines - len(c.lines)
        c.limit = max(c.limit, min(2 * self.max_lines, len(c.lines) + len(page)))
        added = 0
        for item in reversed(page):  # newest first, so a cut keeps the nearest ones
            if room <= 0:
                break
            seq = item.seq
            if not seq or seq in c.lines:
                continue
            if isinstance(item, Message):
                self.add(item)
            else:
                self.add_unreadable(item)
            added += 1
            room -= 1
        if len(page) < limit or room <= 0:
            c.history_done = True
        return added

    def local_send(self, conv_id: str, msg_id: int, text: str, now_ms: int) -> Line:
        """A message I just sent: shown at once as "sending" until its SENT gives it a seq."""
        c = self.conv(conv_id)
        line = Line(0, msg_id, self.me, text, True, now_ms)
        c.pending[msg_id] = line
        while len(c.pending) > self.max_pending:
            del c.pending[next(iter(c.pending))]
        c.last_text, c.last_time = f"me: {text}", max(c.last_time, now_ms)
        return line

    # -- receipts, cursors, errors -----------------------------------------------------------

    def on_receipt(self, r: Receipt) -> Conv | None:
        c = self.convs.get(r.conv_id)
        if c is None:
            return None
        if r.kind == "SENT":
            line = c.pending.pop(r.msg_id, None)
            if line is not None and r.seq and r.seq not in c.lines:
                line.seq = r.seq
                self._put(c, line)
        elif r.kind == "RESEALED":
            line = c.pending.pop(r.msg_id, None)
            if line is not None:
                line.msg_id = r.new_msg_id
                c.pending[r.new_msg_id] = line
        elif r.kind == "DELIVERED":
            c.peer_delivered = max(c.peer_delivered, r.seq)
        elif r.kind == "READ":
            c.peer_read = max(c.peer_read, r.seq)
            c.peer_delivered = max(c.peer_delivered, r.seq)
        return c

    def on_group_receipt(self, g: GroupReceipt) -> Conv | None:
        c = self.convs.get(g.conv_id)
        if c is not None:
            self.set_read_by(g.conv_id, g.seq, g.read, g.members)
        return c

    def set_read_by(self, conv_id: str, seq: int, read: int, members: int) -> None:
        c = self.conv(conv_id)
        c.read_by[seq] = (read, members)
        while len(c.read_by) > self.max_lines:
            del c.read_by[min(c.read_by)]

    def on_error(self, err: ServerError) -> Conv | None:
        """A refusal naming a message of mine that waits for SENT marks it failed."""
        for c in self.convs.values():
            line = c.pending.get(err.msg_id)
            if line is not None and err.msg_id:
                line.failed = err.code
                return c
        return None

    def set_read(self, conv_id: str, seq: int) -> None:
        """My READ cursor, as any of my devices moved it."""
        c = self.convs.get(conv_id)
        if c is not None:
            c.read_seq = max(c.read_seq, seq)

    def mark_read(self, conv_id: str) -> int:
        """I looked at ``conv_id``: the seq to send as my READ cursor (0: nothing new)."""
        c = self.conv(conv_id)
        top = max(c.lines, default=0)
        if top <= c.read_seq:
            return 0
        c.read_seq = top
        return top

    # -- typing ------------------------------------------------------------------------------

    def on_typing(self, conv_id: str, user: str, on: bool, now: float) -> Conv | None:
        c = self.convs.get(conv_id)
        if c is None or user == self.me:
            return None
        if on:
            c.typing[user] = now + TYPING_TTL
            while len(c.typing) > MAX_TYPING:
                del c.typing[min(c.typing, key=c.typing.__getitem__)]
        else:
            c.typing.pop(user, None)
        return c

    def typing_in(self, conv_id: str, now: float) -> list[str]:
        """Who is typing in ``conv_id`` now (expired starts are forgotten)."""
        c = self.convs.get(conv_id)
        if c is None:
            return []
        for user in [u for u, until in c.typing.items() if until <= now]:
            del c.typing[user]
        return sorted(c.typing)

    # -- friend requests ---------------------------------------------------------------------

    def set_invites(self, invites: dict[str, str]) -> None:
        self.invites = dict(invites)

    def set_requests(self, incoming: list[str], outgoing: list[str]) -> bool:
        """The server's pending requests; True if they changed."""
        changed = (incoming, outgoing) != (self.incoming, self.outgoing)
        self.incoming, self.outgoing = list(incoming), list(outgoing)
        return changed


def typing_text(who: list[str]) -> str:
    if not who:
        return ""
    if len(who) == 1:
        return f"{who[0]} is typing…"
    return f"{', '.join(who)} are typing…"
