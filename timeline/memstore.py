"""The timeline store in memory: the same rules as the SQL store, for fast tests of the layers
above it (nothing is kept across a restart, and nothing bounds it but its callers)."""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from proto import im_pb2
from timeline.model import (
    SINGLE,
    UNREAD_CAP,
    AppendResult,
    ConvSummary,
    CursorMove,
    CursorResult,
    Entry,
    NewMessage,
    conv_ref,
    parse_conv_id,
    resend_outcome,
    stamp,
)
from timeline.store import (
    MAX_CONVERSATIONS,
    check_batch,
    check_cursor,
    check_move,
    check_page,
    now_ms,
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
            conv = self._convs.setdefault(m.conv_id, _Conv(ref.dest_type))
            seq = conv.last_seq + 1
            server_time = max(now, conv.last_time)
            entry = Entry(
                m.conv_id,
                seq,
                m.sender,
                m.msg_id,
                server_time,
                stamp(m.content, m.conv_id, seq, server_time),
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
        self, conv_id: str, *, after: int = 0, before: int = 0, limit: int
    ) -> list[Entry]:
        limit = check_page(after, before, limit)
        conv = self._convs.get(conv_id)
        if conv is None:
            return []
        lo = bisect.bisect_right(conv.seqs, after)
        hi = bisect.bisect_left(conv.seqs, before) if before else len(conv.seqs)
        if before and not after:
            lo = max(lo, hi - limit)
        return [conv.entries[s] for s in conv.seqs[lo:hi][:limit]]

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
            (conv.members[user_id].changed, conv_id)
            for conv_id, conv in self._convs.items()
            if user_id in conv.members and conv.members[user_id].changed >= since_ms
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

    def _summary(self, conv_id: str, user_id: str, device_id: str) -> ConvSummary:
        conv = self._convs[conv_id]
        me = conv.members[user_id]
        peer_id = parse_conv_id(conv_id).peer_of(user_id)
        peer = conv.members.get(peer_id) if conv.dest_type == SINGLE else None
        lo = bisect.bisect_right(conv.seqs, me.read_seq)
        unread = 0
        for seq in conv.seqs[lo:]:
            if conv.entries[seq].sender != user_id:
                unread += 1
                if unread == UNREAD_CAP:
                    break
        return ConvSummary(
            conv_id=conv_id,
            dest_type=conv.dest_type,
            peer_id=peer_id,
            last_seq=conv.last_seq,
            last=conv.entries.get(conv.last_seq),
            read_seq=me.read_seq,
            delivered_seq=me.devices.get(device_id, 0) if device_id else 0,
            peer_read_seq=peer.read_seq if peer else 0,
            peer_delivered_seq=peer.delivered_seq if peer else 0,
            unread=unread,
            changed=me.changed,
            min_seq=conv.seqs[0] if conv.seqs else conv.last_seq + 1,
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
        return conv is not None and user_id in conv.members

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
