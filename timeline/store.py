"""The timeline store: durable per-conversation timelines with server-assigned seqs.

Rules kept here, whatever the caller (docs/timeline.md explains why they hold):
- seqs are assigned in :meth:`TimelineStore.append`'s own transaction, from the conversation
  row's ``last_seq``, and nowhere else (no counter in Redis or in memory): a seq exists exactly
  when its message committed, so seqs are 1, 2, 3, ... with no gaps and none given twice, across
  any crash. Two writers on one conversation take turns on its row (``SELECT ... FOR UPDATE``
  on MySQL, in conversation id order so they never deadlock each other; SQLite has one writer);
  the primary key ``(conv_id, seq)`` refuses an overlap anyway, and an append that meets one
  (two writers creating the same conversation) is rolled back whole and run again;
- within a batch each conversation's messages get seqs in batch order;
- ``(sender, msg_id)`` is a message's identity: a resend with the same digest gets the entry
  stored first (``duplicate``, same seq), another digest is ``reused`` and stores nothing; a
  repeat inside one batch is treated the same way;
- cursors (READ per member, DELIVERED per device) only move forward, never past ``last_seq``;
  moving one bumps the member's ``changed`` (and, in a 1-1 conversation, the peer's when the
  member's cursor moved: the move is its receipt). :meth:`TimelineStore.merge_cursors` merges
  a writer's whole batch in one transaction: a reconnecting device sends one DELIVERED cursor
  per conversation, and a transaction (and its round trips) per cursor was most of its cost;
- retention deletes whole prefixes of timelines (server times never decrease within one).

Tables: timeline/schema.py; the batched cursor merge: timeline/sqlcursors.py; a user's
conversations: timeline/sqllist.py; groups' membership in the timeline: timeline/groupsql.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from common.db import Database, Session, apply_migrations, require_schema
from common.errors import BackendError
from proto import im_pb2
from timeline import groupsql, schema, sqlcursors, sqllist
from timeline.groupsql import MemberSnapshot
from timeline.model import (
    GROUP,
    SINGLE,
    AppendResult,
    ConvSummary,
    CursorMove,
    CursorResult,
    Entry,
    NewMessage,
    Outcome,
    Receipts,
    Span,
    message_problem,
    parse_conv_id,
    resend_outcome,
    stamp,
)
from timeline.sqlrows import ENTRY, I64_MAX, U64, entry_of, to_db_id

MAX_PAGE = 200  # messages per page
MAX_CONVERSATIONS = 1000  # summaries per call
PURGE_CHUNK = 5000  # rows per DELETE: a purge never holds locks on a whole table
APPEND_TRIES = 5  # an append that met a concurrent writer's seqs runs again this often
_DEDUPE_CHUNK = 200  # (sender, msg_id) pairs per lookup
_U64 = U64
_I64_MAX = I64_MAX
DEVICE_ID_MAX = 64


class TimelineStore(Protocol):
    """Timelines, their members' cursors and retention."""

    async def migrate(self) -> None: ...

    async def append(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        """Append ``batch`` in one transaction: one result per message, in order. A message
        :func:`timeline.model.message_problem` refuses makes the whole call a ValueError."""
        ...

    async def page(
        self,
        conv_id: str,
        *,
        after: int = 0,
        before: int = 0,
        limit: int,
        reader: str | None = None,
    ) -> list[Entry]:
        """Entries with ``after < seq < before`` (0: unbounded), ascending, at most ``limit``
        (capped at :data:`MAX_PAGE`); the oldest such, or with ``before`` alone the newest.
        A group's page is for one ``reader`` (required: ValueError without) and holds only
        seqs inside the reader's spans; the seqs it skips do not exist for that reader, which
        :meth:`spans` tells a sync that must say what range it covered."""
        ...

    async def spans(self, conv_id: str, user_id: str) -> list[Span]:
        """The stretches of a group's timeline ``user_id`` may read, ascending (none for a
        pair: its two users read all of it)."""
        ...

    async def poster(self, conv_id: str, user_id: str) -> int | None:
        """Whether ``user_id`` may post in the group now, as far as membership goes: the mute
        (ms, 0: none) of their open span, None without one. A hint for the connector; the
        append's own check (:func:`post_refusal`) is the word that counts."""
        ...

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None:
        """A group's head and every user's spans, read as of one instant (None: no group)."""
        ...

    async def receipts(self, conv_id: str, seq: int, limit: int) -> Receipts | None:
        """Read-by and delivered-to of a group's ``seq`` from the members' cursors (lists up
        to ``limit`` names); None for a seq the group has not reached."""
        ...

    async def receipt_counts(
        self, conv_id: str, messages: Sequence[tuple[int, str]]
    ) -> list[tuple[int, int, int]]:
        """``(members, read, delivered)`` for each ``(seq, sender)`` of a group, counted as
        :meth:`receipts` counts, in one read of the members' cursors (the live GroupReceipt
        pushes: transfer/groupreceipts.py)."""
        ...

    async def get(self, sender: str, msg_id: int) -> Entry | None: ...

    async def conversations(
        self,
        user_id: str,
        *,
        since_ms: int = 0,
        device_id: str = "",
        limit: int = 500,
        after: tuple[int, str] | None = None,
    ) -> list[ConvSummary]:
        """The conversations of ``user_id`` whose ``changed >= since_ms``, newest change
        first; ``delivered_seq`` is ``device_id``'s (0 without one). With ``after`` =
        (changed, conv_id): oldest change first, those after that key only, so a caller pages
        through any number of them (the connector's listing does), and without ``last``."""
        ...

    async def head(self, conv_id: str) -> int:
        """The conversation's last_seq: 0 before its first message (or for no conversation)."""
        ...

    async def merge_cursors(self, moves: Sequence[CursorMove]) -> list[CursorResult]:
        """Merge ``moves`` in one transaction, in order (a later move of the same cursor sees
        the earlier one): one result per move. Each cursor only moves forward and never past
        the head; a user who is not a member stores nothing (``member`` False); a member of a
        conversation with no message yet stores nothing either. A move
        :func:`check_move` refuses makes the whole call a ValueError."""
        ...

    async def set_read(self, conv_id: str, user_id: str, seq: int) -> int:
        """Move the member's READ cursor up to ``seq`` (never back, never past the head); the
        cursor after. 0 for a user with no member row (stores nothing)."""
        ...

    async def set_delivered(self, conv_id: str, user_id: str, device_id: str, seq: int) -> int:
        """Move the device's DELIVERED cursor likewise; the device's cursor after."""
        ...

    async def is_member(self, conv_id: str, user_id: str) -> bool: ...

    async def purge(self, older_than_ms: int) -> int:
        """Delete messages committed before ``older_than_ms``; how many went."""
        ...


def check_batch(batch: Sequence[NewMessage]) -> None:
    for m in batch:
        problem = message_problem(m)
        if problem is not None:
            raise ValueError(f"cannot append message {m.msg_id} of {m.sender!r}: {problem}")


def check_page(after: int, before: int, limit: int) -> int:
    """The effective limit; ValueError for bounds no page can have."""
    if after < 0 or before < 0:
        raise ValueError("seq bounds must not be negative")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return min(limit, MAX_PAGE)


def check_cursor(seq: int, device_id: str | None = None) -> None:
    if seq < 0:
        raise ValueError("a cursor is not negative")
    if device_id is not None and len(device_id) > DEVICE_ID_MAX:
        raise ValueError(f"device id over {DEVICE_ID_MAX} characters")


def check_move(move: CursorMove) -> None:
    if move.kind not in (im_pb2.READ, im_pb2.DELIVERED):
        raise ValueError(f"a cursor is READ or DELIVERED, not {move.kind}")
    check_cursor(move.seq, move.device_id if move.kind == im_pb2.DELIVERED else None)


def post_refusal(
    m: NewMessage, gate: tuple[int, int] | None, muted_until: int | None, now: int
) -> Outcome | None:
    """Why a group refuses this chat now, from what the append's transaction read: no group
    or no membership, a dissolved group, a mute still running, or a key the group replaced."""
    if gate is None or muted_until is None:
        return "not_member"
    closed_seq, key_id = gate
    if closed_seq:
        return "closed"
    if muted_until > now:
        return "muted"
    if m.key_id != key_id:
        return "stale_key"
    return None


def is_group(conv_id: str) -> bool:
    return conv_id.startswith("g:")


def clip(bounds: tuple[int, int], spans: Sequence[Span]) -> list[tuple[int, int]]:
    """The parts of the seq range ``bounds`` (inclusive) inside ``spans``, ascending."""
    lo, hi = bounds
    out: list[tuple[int, int]] = []
    for span in spans:
        a, b = max(lo, span.from_seq), min(hi, span.to_seq or _I64_MAX)
        if a <= b:
            out.append((a, b))
    return out


def follows(m: NewMessage, before: tuple[Entry, bytes] | None) -> bool:
    """Whether ``before`` (the stored message ``m.after_id`` names) is in ``m``'s timeline, so
    ``m`` may take a seq after it."""
    return before is not None and before[0].conv_id == m.conv_id and before[0].seq > 0


def unstored(m: NewMessage) -> Entry:
    """The entry of a chat a group refused: no seq, no stamps."""
    return Entry(m.conv_id, 0, m.sender, m.msg_id, 0, m.content)


def now_ms() -> int:
    return int(time.time() * 1000)


class _Overlap(Exception):
    """Another writer took seqs this append computed (a conversation both created at once):
    roll back and run again."""


_DIALECT: dict[str, dict[str, str]] = {
    "sqlite": {
        "for_update": "",
        "insert_message": "ON CONFLICT DO NOTHING",
        "upsert_conv": "ON CONFLICT (conv_id) DO UPDATE SET"
        " last_seq = MAX(last_seq, excluded.last_seq),"
        " last_time = MAX(last_time, excluded.last_time)",
        "upsert_member": "ON CONFLICT (conv_id, user_id) DO UPDATE SET"
        " changed = MAX(changed, excluded.changed)",
        "purge": "DELETE FROM im_tl_message WHERE rowid IN"
        " (SELECT rowid FROM im_tl_message WHERE server_time < ? LIMIT ?)",
    },
    "mysql": {
        "for_update": " FOR UPDATE",
        # a no-op update counts 0 rows, so a refused row shows in the count (never ignored
        # silently: INSERT IGNORE would also swallow data errors)
        "insert_message": "ON DUPLICATE KEY UPDATE seq = seq",
        "upsert_conv": "ON DUPLICATE KEY UPDATE"
        " last_seq = GREATEST(last_seq, VALUES(last_seq)),"
        " last_time = GREATEST(last_time, VALUES(last_time))",
        "upsert_member": "ON DUPLICATE KEY UPDATE changed = GREATEST(changed, VALUES(changed))",
        "purge": "DELETE FROM im_tl_message WHERE server_time < ? LIMIT ?",
    },
}


class SQLTimelineStore:
    """:class:`TimelineStore` on a :class:`common.db.Database` (SQLite or MySQL/MariaDB)."""

    def __init__(self, db: Database) -> None:
        self._steps = schema.migrations(db.dialect)
        self._db = db
        self._sql = _DIALECT[db.dialect]

    async def migrate(self) -> None:
        """Create or upgrade the timeline tables; safe to run twice, and from two processes."""
        await apply_migrations(self._db, schema.COMPONENT, self._steps)

    async def check_schema(self) -> None:
        await require_schema(self._db, schema.COMPONENT, len(self._steps))

    # --- append ---------------------------------------------------------------------------------

    async def append(self, batch: Sequence[NewMessage]) -> list[AppendResult]:
        if not batch:
            return []
        check_batch(batch)
        for _ in range(APPEND_TRIES):
            try:
                return await self._db.transaction(lambda tx: self._append(tx, batch))
            except _Overlap:
                continue
        raise BackendError("timeline", f"append lost to concurrent writers {APPEND_TRIES} times")

    async def _append(self, tx: Session, batch: Sequence[NewMessage]) -> list[AppendResult]:
        convs = sorted({m.conv_id for m in batch})
        marks = ", ".join("?" for _ in convs)
        heads: dict[str, tuple[int, int]] = {}
        gates: dict[str, tuple[int, int]] = {}  # group conv -> (closed_seq, key_id)
        rows = await tx.fetchall(
            "SELECT conv_id, last_seq, last_time, closed_seq, key_id FROM im_tl_conv"
            f" WHERE conv_id IN ({marks}) ORDER BY conv_id" + self._sql["for_update"],
            convs,
        )
        for conv_id, last_seq, last_time, closed_seq, key_id in rows:
            heads[str(conv_id)] = (int(last_seq), int(last_time))
            gates[str(conv_id)] = (int(closed_seq), int(key_id))
        stored = await self._stored(tx, batch)
        now = now_ms()
        posters = await self._posters(tx, batch)
        results: list[AppendResult] = []
        inserts: list[tuple[Any, ...]] = []
        fresh: dict[tuple[str, int], tuple[Entry, bytes]] = {}
        moved: dict[str, tuple[int, int, int]] = {}  # conv -> (dest type, last seq, last time)
        for m in batch:
            key = (m.sender, m.msg_id)
            known = stored.get(key) or fresh.get(key)
            if known is not None:
                entry, digest = known
                results.append(AppendResult(entry, resend_outcome(digest, m.digest)))
                continue
            if m.dest_type == GROUP:
                refusal = post_refusal(m, gates.get(m.conv_id), posters.get(key), now)
                if refusal is not None:
                    results.append(AppendResult(unstored(m), refusal))
                    continue
            after = (m.sender, m.after_id)
            if m.after_id and not follows(m, stored.get(after) or fresh.get(after)):
                results.append(AppendResult(unstored(m), "out_of_order"))
                continue
            last_seq, last_time = heads.get(m.conv_id, (0, 0))
            seq, server_time = last_seq + 1, max(now, last_time)
            heads[m.conv_id] = (seq, server_time)
            moved[m.conv_id] = (m.dest_type, seq, server_time)
            content = stamp(m.content, m.conv_id, seq, server_time, bare=m.bare)
            entry = Entry(m.conv_id, seq, m.sender, m.msg_id, server_time, content)
            fresh[key] = (entry, m.digest)
            results.append(AppendResult(entry, "committed"))
            inserts.append(
                (m.conv_id, seq, m.sender, to_db_id(m.msg_id), server_time, m.digest, content)
            )
        if not inserts:
            return results
        inserts.sort(key=lambda r: (r[0], r[1]))  # one lock order for every writer
        added = await tx.executemany(
            "INSERT INTO im_tl_message (conv_id, seq, sender, msg_id, server_time, digest,"
            " content) VALUES (?, ?, ?, ?, ?, ?, ?) " + self._sql["insert_message"],
            inserts,
        )
        if added != len(inserts):
            raise _Overlap
        await tx.executemany(
            "INSERT INTO im_tl_conv (conv_id, dest_type, last_seq, last_time, created)"
            " VALUES (?, ?, ?, ?, ?) " + self._sql["upsert_conv"],
            [(c, t, s, st, now) for c, (t, s, st) in sorted(moved.items())],
        )
        members = sorted(
            (conv_id, user, 0, 0, server_time)
            for conv_id, (_, _, server_time) in moved.items()
            for user in parse_conv_id(conv_id).members
        )
        if members:
            # placeholders only in VALUES: the MySQL driver then sends one multi-row statement
            await tx.executemany(
                "INSERT INTO im_tl_member (conv_id, user_id, read_seq, delivered_seq, changed)"
                " VALUES (?, ?, ?, ?, ?) " + self._sql["upsert_member"],
                members,
            )
        return results

    async def _posters(
        self, tx: Session, batch: Sequence[NewMessage]
    ) -> dict[tuple[str, int], int]:
        """The group chats' senders who are members now: (sender, msg_id) -> muted until."""
        keys = sorted({(m.conv_id, m.sender) for m in batch if m.dest_type == GROUP})
        if not keys:
            return {}
        rows = await sqlcursors.lookup(
            tx,
            self._db.dialect,
            "SELECT conv_id, user_id, muted_until FROM im_tl_span",
            ("conv_id", "user_id"),
            keys,
            lock=False,
            extra="to_seq = 0",
        )
        muted = {(str(c), str(u)): int(t) for c, u, t in rows}
        return {
            (m.sender, m.msg_id): muted[(m.conv_id, m.sender)]
            for m in batch
            if (m.conv_id, m.sender) in muted
        }

    async def _stored(
        self, tx: Session, batch: Sequence[NewMessage]
    ) -> dict[tuple[str, int], tuple[Entry, bytes]]:
        """The stored messages with the identities of ``batch``, with their digests."""
        keys = sorted(
            {(m.sender, m.msg_id) for m in batch}
            | {(m.sender, m.after_id) for m in batch if m.after_id}
        )
        out: dict[tuple[str, int], tuple[Entry, bytes]] = {}
        for start in range(0, len(keys), _DEDUPE_CHUNK):
            chunk = keys[start : start + _DEDUPE_CHUNK]
            if self._db.dialect == "mysql":  # a row IN list: one range scan of the key
                where = "(sender, msg_id) IN (" + ", ".join("(?, ?)" for _ in chunk) + ")"
            else:  # SQLite takes a row IN only from a subquery; ORs use the key per term
                where = " OR ".join("(sender = ? AND msg_id = ?)" for _ in chunk)
            params = [v for sender, msg_id in chunk for v in (sender, to_db_id(msg_id))]
            rows = await tx.fetchall(
                f"SELECT {ENTRY}, digest FROM im_tl_message WHERE {where}", params
            )
            for row in rows:
                entry = entry_of(row)
                out[(entry.sender, entry.msg_id)] = (entry, bytes(row[6]))
        return out

    # --- reading --------------------------------------------------------------------------------

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
        after, before = min(after, _I64_MAX), min(before, _I64_MAX)
        if after == _I64_MAX:
            return []
        ranges = [(after + 1, before - 1 if before else _I64_MAX)]
        if is_group(conv_id):
            if reader is None:
                raise ValueError("a group's timeline is paged for one reader")
            ranges = clip(ranges[0], await self.spans(conv_id, reader))
        newest = bool(before) and after == 0
        out: list[Entry] = []
        for lo, hi in reversed(ranges) if newest else ranges:
            rows = await self._db.fetchall(
                f"SELECT {ENTRY} FROM im_tl_message WHERE conv_id = ? AND seq >= ? AND seq <= ?"
                f" ORDER BY seq {'DESC' if newest else 'ASC'} LIMIT ?",
                (conv_id, lo, hi, limit - len(out)),
            )
            out += [entry_of(r) for r in rows]
            if len(out) >= limit:
                break
        if newest:
            out.reverse()
        return out

    async def spans(self, conv_id: str, user_id: str) -> list[Span]:
        return await groupsql.spans(self._db, conv_id, user_id)

    async def poster(self, conv_id: str, user_id: str) -> int | None:
        return await groupsql.poster(self._db, conv_id, user_id)

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None:
        if not is_group(conv_id):
            return None
        return await groupsql.members_snapshot(self._db, conv_id)

    async def receipts(self, conv_id: str, seq: int, limit: int) -> Receipts | None:
        if not 1 <= seq <= min(await self.head(conv_id), _I64_MAX):
            return None
        row = await self._db.fetchone(
            "SELECT sender FROM im_tl_message WHERE conv_id = ? AND seq = ?", (conv_id, seq)
        )
        sender = "" if row is None else str(row[0])
        return await groupsql.receipts(self._db, conv_id, seq, sender, limit)

    async def receipt_counts(
        self, conv_id: str, messages: Sequence[tuple[int, str]]
    ) -> list[tuple[int, int, int]]:
        if not messages:
            return []
        return await groupsql.receipt_counts(self._db, conv_id, messages)

    async def get(self, sender: str, msg_id: int) -> Entry | None:
        if not 0 <= msg_id < _U64:
            return None
        row = await self._db.fetchone(
            f"SELECT {ENTRY} FROM im_tl_message WHERE sender = ? AND msg_id = ?",
            (sender, to_db_id(msg_id)),
        )
        return None if row is None else entry_of(row)

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
        return await sqllist.conversations(
            self._db, user_id, max(since_ms, 0), device_id, min(limit, MAX_CONVERSATIONS), after
        )

    async def is_member(self, conv_id: str, user_id: str) -> bool:
        """A pair's two users; a group's users with a span (members now, or once: they may
        read what they saw while they were)."""
        try:
            ref = parse_conv_id(conv_id)
        except ValueError:
            return False
        if ref.dest_type == SINGLE:
            return user_id in ref.members
        row = await self._db.fetchone(
            "SELECT 1 FROM im_tl_span WHERE conv_id = ? AND user_id = ? LIMIT 1",
            (conv_id, user_id),
        )
        return row is not None

    # --- cursors --------------------------------------------------------------------------------

    async def head(self, conv_id: str) -> int:
        row = await self._db.fetchone(
            "SELECT last_seq FROM im_tl_conv WHERE conv_id = ?", (conv_id,)
        )
        return 0 if row is None else int(row[0])

    async def merge_cursors(self, moves: Sequence[CursorMove]) -> list[CursorResult]:
        if not moves:
            return []
        for move in moves:
            check_move(move)
        dialect = self._db.dialect
        return await self._db.transaction(lambda tx: sqlcursors.merge(tx, dialect, moves, now_ms()))

    async def set_read(self, conv_id: str, user_id: str, seq: int) -> int:
        check_cursor(seq)
        (result,) = await self.merge_cursors([CursorMove(conv_id, user_id, im_pb2.READ, seq)])
        return result.seq

    async def set_delivered(self, conv_id: str, user_id: str, device_id: str, seq: int) -> int:
        check_cursor(seq, device_id)
        move = CursorMove(conv_id, user_id, im_pb2.DELIVERED, seq, device_id)
        (result,) = await self.merge_cursors([move])
        return result.device_seq

    # --- retention ------------------------------------------------------------------------------

    async def purge(self, older_than_ms: int) -> int:
        removed = 0
        while True:
            n = await self._db.execute(self._sql["purge"], (older_than_ms, PURGE_CHUNK))
            removed += n
            if n < PURGE_CHUNK:
                return removed
