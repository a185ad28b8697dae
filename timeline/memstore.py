"""The timeline store in memory: the same rules as the SQL store, for fast tests of the layers
above it (nothing is kept across a restart, and nothing bounds it but its callers)."""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from proto import im_pb2
from timeline.groupsql import Head, MemberSnapshot, count_receipts, system_content, system_sender
from timeline.model import (
    GROUP,
    SINGLE,
    UNREAD_CAP,
    AppendResult,
    ConvSummary,
    CursorMove,
    CursorResult,
    Entry,
    NewMessage,
    Receipts,
    Span,
    conv_ref,
    parse_conv_id,
    resend_outcome,
    stamp,
)
from timeline.sqlrows import visible_bounds
from timeline.store import (
    MAX_CONVERSATIONS,
    check_batch,
    check_cursor,
    check_move,
    check_page,
    follows,
    is_group,
    now_ms,
    post_refusal,
    unstored,
)


@dataclass
class _Member:
    read_seq: int = 0
    delivered_seq: int = 0
    changed: int = 0
    devices: dict[str, int] = field(default_factory=dict)


@dataclass
class _Conv:
    dest_type: int
    last_seq: int = 0
    last_time: int = 0
    seqs: list[int] = field(default_factory=list)  # ascending; retention removes a prefix
    entries: dict[int, Entry] = field(default_factory=dict)
    members: dict[str, _Member] = field(default_factory=dict)
    # groups: the spans each user may read ([from, to, muted until], to 0 while a member)
    spans: dict[str, list[list[int]]] = field(default_factory=dict)
    closed_seq: int = 0
    key_id: int = 0

    def open_span(self, user: str) -> list[int] | None:
        spans = self.spans.get(user)
        return spans[-1] if spans and spans[-1][1] == 0 else None


class MemoryTimelineStore:
    """:class:`timeline.store.TimelineStore` in dictionaries."""

    def __init__(self) -> None:
        self._convs: dict[str, _Conv] = {}
        self._ids: dict[tuple[str, int], tuple[Entry, bytes]] = {}

    async def migrate(self) -> None:
        return None

    async def append(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        check_batch(batch)  # before any change: a refused batch stores nothing
        now = now_ms()
        results: list[AppendResult] = []
        for m in batch:
            known = self._ids.get((m.sender, m.msg_id))
            if known is not None:
                entry, digest = known
                results.append(AppendResult(entry, resend_outcome(digest, m.digest)))
                continue
            ref = parse_conv_id(m.conv_id)
            if ref.dest_type == GROUP:
                group = self._convs.get(m.conv_id)
                span = None if group is None else group.open_span(m.sender)
                refusal = post_refusal(
                    m,
                    None if group is None else (group.closed_seq, group.key_id),
                    None if span is None else span[2],
                    now,
                )
                if refusal is not None:
                    results.append(AppendResult(unstored(m), refusal))
                    continue
            if m.after_id and not follows(m, self._ids.get((m.sender, m.after_id))):
                results.append(AppendResult(unstored(m), "out_of_order"))
                continue
            conv = self._convs.setdefault(m.conv_id, _Conv(ref.dest_type))
            seq = conv.last_seq + 1
            server_time = max(now, conv.last_time)
            entry = Entry(
                m.conv_id,
                seq,
                m.sender,
                m.msg_id,
                server_time,
                stamp(m.content, m.conv_id, seq, server_time, bare=m.bare),
            )
            conv.last_seq, conv.last_time = seq, server_time
            conv.seqs.append(seq)
            conv.entries[seq] = entry
            for user in ref.members:
                member = conv.members.setdefault(user, _Member())
                member.changed = max(member.changed, server_time)
            self._ids[(m.sender, m.msg_id)] = (entry, m.digest)
            results.append(AppendResult(entry, "committed"))
        return results

    async def page(
        self,
        conv_id: str,
        *,
        after: int = 0,
        before: int = 0,
        limit: int,
        reader: str | None = None,
    ) -> list[Entry]:
        limit = check_page(after, before, limit)
        if is_group(conv_id) and reader is None:
            raise ValueError("a group's timeline is paged for one reader")
        conv = self._convs.get(conv_id)
        if conv is None:
            return []
        lo = bisect.bisect_right(conv.seqs, after)
        hi = bisect.bisect_left(conv.seqs, before) if before else len(conv.seqs)
        seqs = conv.seqs[lo:hi]
        if reader is not None and conv.dest_type == GROUP:
            spans = self._spans(conv, reader)
            seqs = [s for s in seqs if any(span.covers(s) for span in spans)]
        if before and not after:
            seqs = seqs[-limit:]
        return [conv.entries[s] for s in seqs[:limit]]

    @staticmethod
    def _spans(conv: _Conv, user_id: str) -> list[Span]:
        return [Span(f, t) for f, t, _ in conv.spans.get(user_id, [])]

    async def spans(self, conv_id: str, user_id: str) -> list[Span]:
        conv = self._convs.get(conv_id)
        return [] if conv is None else self._spans(conv, user_id)

    async def poster(self, conv_id: str, user_id: str) -> int | None:
        conv = self._convs.get(conv_id)
        span = None if conv is None else conv.open_span(user_id)
        return None if span is None else span[2]

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None:
        conv = self._convs.get(conv_id)
        if conv is None or conv.dest_type != GROUP:
            return None
        spans = {u: tuple(self._spans(conv, u)) for u in conv.spans}
        return MemberSnapshot(conv.last_seq, spans)

    async def receipts(self, conv_id: str, seq: int, limit: int) -> Receipts | None:
        conv = self._convs.get(conv_id)
        if conv is None or not 1 <= seq <= conv.last_seq:
            return None
        entry = conv.entries.get(seq)
        sender = "" if entry is None else entry.sender
        covered = sorted(
            user
            for user in conv.spans
            if user != sender and any(span.covers(seq) for span in self._spans(conv, user))
        )
        read = [u for u in covered if conv.members[u].read_seq >= seq]
        got = [u for u in covered if conv.members[u].delivered_seq >= seq]
        return Receipts(seq, len(covered), len(read), len(got), read[:limit], got[:limit])

    async def receipt_counts(
        self, conv_id: str, messages: Sequence[tuple[int, str]]
    ) -> list[tuple[int, int, int]]:
        conv = self._convs.get(conv_id)
        if conv is None:
            return [(0, 0, 0) for _ in messages]
        cursors = [
            (
                user,
                span.from_seq,
                span.to_seq,
                conv.members[user].read_seq,
                conv.members[user].delivered_seq,
            )
            for user in conv.spans
            for span in self._spans(conv, user)
            if user in conv.members
        ]
        return count_receipts(cursors, messages)

    # --- membership (the group store's; docs/groups.md) --------------------------------------

    def group_head(self, conv_id: str) -> Head | None:
        conv = self._convs.get(conv_id)
        if conv is None:
            return None
        return Head(conv.last_seq, conv.last_time, conv.closed_seq, conv.key_id)

    def create_group(self, conv_id: str, key_id: int) -> None:
        if conv_id in self._convs:
            raise ValueError(f"{conv_id} exists")
        self._convs[conv_id] = _Conv(GROUP, key_id=key_id)

    def append_system(
        self, conv_id: str, bodies: Sequence[im_pb2.SystemBody], now: int
    ) -> list[Entry]:
        """As timeline.groupsql.append_system: the caller holds the loop (no await between
        its reads and this), which is this store's lock."""
        conv = self._convs[conv_id]
        group_id = parse_conv_id(conv_id).group_id
        sender = system_sender(group_id)
        out: list[Entry] = []
        for body in bodies:
            seq, server_time = conv.last_seq + 1, max(now, conv.last_time)
            content = system_content(group_id, seq, server_time, body)
            entry = Entry(conv_id, seq, sender, seq, server_time, content)
            conv.last_seq, conv.last_time = seq, server_time
            conv.seqs.append(seq)
            conv.entries[seq] = entry
            self._ids[(sender, seq)] = (entry, b"")
            out.append(entry)
            event = body.event
            if event in (im_pb2.SystemBody.CREATED, im_pb2.SystemBody.JOINED):
                user = body.actor if event == im_pb2.SystemBody.CREATED else body.target
                if conv.open_span(user) is None:
                    conv.spans.setdefault(user, []).append([seq, 0, 0])
                member = conv.members.setdefault(user, _Member())
                member.read_seq = max(member.read_seq, seq)
                member.changed = max(member.changed, server_time)
            elif event in (im_pb2.SystemBody.LEFT, im_pb2.SystemBody.REMOVED):
                span = conv.open_span(body.target)
                if span is not None:
                    span[1] = seq
                if body.target in conv.members:
                    target = conv.members[body.target]
                    target.changed = max(target.changed, server_time)
            elif event == im_pb2.SystemBody.MUTED:
                span = conv.open_span(body.target)
                if span is not None:
                    span[2] = body.until
            elif event == im_pb2.SystemBody.DISSOLVED:
                conv.closed_seq = seq
            elif event == im_pb2.SystemBody.KEY_ROTATED:
                conv.key_id = body.key_id
        return out

    async def get(self, sender: str, msg_id: int) -> Entry | None:
        known = self._ids.get((sender, msg_id))
        return None if known is None else known[0]

    async def conversations(
        self,
        user_id: str,
        *,
        since_ms: int = 0,
        device_id: str = "",
        limit: int = 500,
        after: tuple[int, str] | None = None,
    ) -> list[ConvSummary]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        mine = [
            (self._changed(conv, user_id), conv_id)
            for conv_id, conv in self._convs.items()
            if user_id in conv.members and self._changed(conv, user_id) >= since_ms
        ]
        if after is None:
            mine.sort(reverse=True)
        else:
            mine = sorted(key for key in mine if key > after)
        out = [
            self._summary(conv_id, user_id, device_id)
            for _, conv_id in mine[: min(limit, MAX_CONVERSATIONS)]
        ]
        if after is not None:  # as the SQL store: a listing page carries no last message
            out = [dataclasses.replace(c, last=None) for c in out]
        return out

    @staticmethod
    def _changed(conv: _Conv, user_id: str) -> int:
        """A group member's conversation changes with its head: no row is bumped per message."""
        changed = conv.members[user_id].changed
        if conv.open_span(user_id) is not None:
            changed = max(changed, conv.last_time)
        return changed

    def _summary(self, conv_id: str, user_id: str, device_id: str) -> ConvSummary:
        conv = self._convs[conv_id]
        me = conv.members[user_id]
        peer_id = parse_conv_id(conv_id).peer_of(user_id)
        peer = conv.members.get(peer_id) if conv.dest_type == SINGLE else None
        first, last_seen = 1, 0
        if conv.dest_type == GROUP:
            first, last_seen = visible_bounds(self._spans(conv, user_id), conv.last_seq)
        upto = last_seen or conv.last_seq
        lo = bisect.bisect_right(conv.seqs, me.read_seq)
        unread = 0
        for seq in conv.seqs[lo:]:
            if seq > upto:
                break
            if conv.entries[seq].sender != user_id:
                unread += 1
                if unread == UNREAD_CAP:
                    break
        return ConvSummary(
            conv_id=conv_id,
            dest_type=conv.dest_type,
            peer_id=peer_id,
            last_seq=upto,
            last=conv.entries.get(upto),
            read_seq=me.read_seq,
            delivered_seq=me.devices.get(device_id, 0) if device_id else 0,
            peer_read_seq=peer.read_seq if peer else 0,
            peer_delivered_seq=peer.delivered_seq if peer else 0,
            unread=unread,
            changed=self._changed(conv, user_id),
            min_seq=max(first, conv.seqs[0] if conv.seqs else conv.last_seq + 1),
            max_seq=last_seen,
        )

    async def head(self, conv_id: str) -> int:
        conv = self._convs.get(conv_id)
        return 0 if conv is None else conv.last_seq

    async def merge_cursors(self, moves: Sequence[CursorMove]) -> list[CursorResult]:
        for move in moves:
            check_move(move)  # before any change, as the SQL store's transaction
        return [self._merge(m) for m in moves]

    def _merge(self, m: CursorMove) -> CursorResult:
        ref = conv_ref(m.conv_id)
        conv = self._convs.get(m.conv_id)
        if ref is None or conv is None or m.user_id not in conv.members:
            member = ref is not None and ref.dest_type == SINGLE and m.user_id in ref.members
            return CursorResult(0, False, member)
        me = conv.members[m.user_id]
        single = conv.dest_type == SINGLE
        target = min(m.seq, conv.last_seq)
        if conv.dest_type == GROUP:
            _, last_seen = visible_bounds(self._spans(conv, m.user_id), conv.last_seq)
            target = min(target, last_seen or target)
        if m.kind == im_pb2.READ:
            moved = target > me.read_seq
            if moved:
                me.read_seq = target
                self._bump(conv, m.user_id, single)
            return CursorResult(me.read_seq, moved, True)
        device = me.devices.get(m.device_id, 0)
        moved = False
        if target > device:
            me.devices[m.device_id] = device = target
            moved = target > me.delivered_seq
            me.delivered_seq = max(me.delivered_seq, target)
            self._bump(conv, m.user_id, single and moved)
        return CursorResult(me.delivered_seq, moved, True, device)

    def _bump(self, conv: _Conv, user_id: str, peers: bool) -> None:
        now = now_ms()
        for user, member in conv.members.items():
            if peers or user == user_id:
                member.changed = max(member.changed, now)

    async def set_read(self, conv_id: str, user_id: str, seq: int) -> int:
        check_cursor(seq)
        return self._merge(CursorMove(conv_id, user_id, im_pb2.READ, seq)).seq

    async def set_delivered(self, conv_id: str, user_id: str, device_id: str, seq: int) -> int:
        check_cursor(seq, device_id)
        move = CursorMove(conv_id, user_id, im_pb2.DELIVERED, seq, device_id)
        return self._merge(move).device_seq

    async def is_member(self, conv_id: str, user_id: str) -> bool:
        try:
            ref = parse_conv_id(conv_id)
        except ValueError:
            return False
        if ref.dest_type == SINGLE:
            return user_id in ref.members
        conv = self._convs.get(conv_id)
        return conv is not None and bool(conv.spans.get(user_id))

    async def purge(self, older_than_ms: int) -> int:
        removed = 0
        for conv in self._convs.values():
            cut = 0
            while cut < len(conv.seqs) and conv.entries[conv.seqs[cut]].server_time < older_than_ms:
                cut += 1
            for seq in conv.seqs[:cut]:
                entry = conv.entries.pop(seq)
                self._ids.pop((entry.sender, entry.msg_id), None)
            del conv.seqs[:cut]
            removed += cut
        return removed
