"""A group's membership in its timeline, on SQL: the statements the group store runs inside its
own transaction, and the reads that clip a group's timeline to what one user may see.

Rules (docs/groups.md, "Membership in the timeline"):
- a membership change is a SYSTEM message at the group's next seq, appended in the caller's
  transaction after the caller took the conversation row's lock (:func:`lock_head`), the same
  lock a chat's append takes: changes and chats are ordered in one sequence, and a chat
  appended after a REMOVED event sees the removal;
- the events move the spans (``im_tl_span``): CREATED and JOINED open one at their seq, LEFT
  and REMOVED close it at theirs (included: the leaver sees their own leaving), MUTED sets the
  open span's mute, DISSOLVED closes the group to posts, KEY_ROTATED makes the group's current
  key the new one; ROLE and RENAMED change nothing here;
- a join creates (or lifts) the member's ``im_tl_member`` row with its READ cursor at the
  join (the member's own event), so nothing before it is ever unread; a leave bumps the
  leaver's ``changed`` so their devices hear of it. Nobody else's row is written: members
  find new group messages from the conversation's head (read diffusion), never from a row
  per member per message;
- a system message's sender is ``#<group id>`` (no user id has a ``#``) and its id its seq, so
  its identity can never be a user's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.db import Database, Session
from proto import im_pb2
from timeline.model import GROUP, Entry, Receipts, Span, chat_digest, parse_conv_id, stamp

RECEIPT_LIST_MAX = 1000  # names per list in a receipt answer; the counts are always whole
_OPENS = (im_pb2.SystemBody.CREATED, im_pb2.SystemBody.JOINED)
_CLOSES = (im_pb2.SystemBody.LEFT, im_pb2.SystemBody.REMOVED)

_SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        "for_update": "",
        "for_share": "",
        "greatest": "MAX",
        "join_member": "ON CONFLICT (conv_id, user_id) DO UPDATE SET"
        " read_seq = MAX(read_seq, excluded.read_seq), changed = MAX(changed, excluded.changed)",
    },
    "mysql": {
        "for_update": " FOR UPDATE",
        "for_share": " LOCK IN SHARE MODE",
        "greatest": "GREATEST",
        "join_member": "ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq)),"
        " changed = GREATEST(changed, VALUES(changed))",
    },
}


@dataclass(frozen=True, slots=True)
class Head:
    """A group conversation's row as its lock read it."""

    last_seq: int
    last_time: int
    closed_seq: int  # the DISSOLVED event's seq; 0 while open
    key_id: int  # the key chats must be sealed with now


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """A group's head and every user's spans as of that head, read together: who may see
    which seq up to ``head`` is exactly this (the transfer's member cache starts from it)."""

    head: int
    spans: dict[str, tuple[Span, ...]]


def system_sender(group_id: str) -> str:
    return "#" + group_id


def system_content(group_id: str, seq: int, server_time: int, body: im_pb2.SystemBody) -> bytes:
    """The stored bytes of a SYSTEM chat: its body in the clear, stamped like any chat."""
    chat = im_pb2.ChatMsg(
        id=seq,
        dest_id=group_id,
        dest_type=im_pb2.GROUP,
        msg_type=im_pb2.SYSTEM,
        body=body.SerializeToString(),
        create_time=server_time,
    )
    return stamp(chat.SerializeToString(), f"g:{group_id}", seq, server_time)


async def lock_head(tx: Session, dialect: str, conv_id: str) -> Head | None:
    """Lock the conversation's row (the lock appends take) and read it; None for no group."""
    row = await tx.fetchone(
        "SELECT last_seq, last_time, closed_seq, key_id FROM im_tl_conv WHERE conv_id = ?"
        + _SQL[dialect]["for_update"],
        (conv_id,),
    )
    if row is None:
        return None
    return Head(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


async def create(tx: Session, conv_id: str, now: int, key_id: int) -> Head:
    """The row of a new group conversation (locked, as an insert's row is, until commit); a
    conversation that exists already fails the insert (the group ids are random)."""
    await tx.execute(
        "INSERT INTO im_tl_conv (conv_id, dest_type, last_seq, last_time, created, closed_seq,"
        " key_id) VALUES (?, ?, 0, 0, ?, 0, ?)",
        (conv_id, GROUP, now, key_id),
    )
    return Head(0, 0, 0, key_id)


async def append_system(
    tx: Session,
    dialect: str,
    conv_id: str,
    head: Head,
    bodies: Sequence[im_pb2.SystemBody],
    now: int,
) -> list[Entry]:
    """Append ``bodies`` at the seqs after ``head`` (which the caller locked in ``tx``) and
    apply what each does to the spans, cursors and the group's row."""
    group_id = parse_conv_id(conv_id).group_id
    sender = system_sender(group_id)
    sql = _SQL[dialect]
    seq, server_time = head.last_seq, max(now, head.last_time)
    closed, key_id = head.closed_seq, head.key_id
    entries: list[Entry] = []
    for body in bodies:
        seq += 1
        content = system_content(group_id, seq, server_time, body)
        chat = im_pb2.ChatMsg()
        chat.ParseFromString(content)
        await tx.execute(
            "INSERT INTO im_tl_message (conv_id, seq, sender, msg_id, server_time, digest,"
            " content) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conv_id, seq, sender, seq, server_time, chat_digest(chat), content),
        )
        entries.append(Entry(conv_id, seq, sender, seq, server_time, content))
        if body.event in _OPENS:
            user = body.actor if body.event == im_pb2.SystemBody.CREATED else body.target
            open_span = await tx.fetchone(
                "SELECT 1 FROM im_tl_span WHERE conv_id = ? AND user_id = ? AND to_seq = 0",
                (conv_id, user),
            )
            if open_span is None:
                await tx.execute(
                    "INSERT INTO im_tl_span (conv_id, user_id, from_seq, to_seq, muted_until)"
                    " VALUES (?, ?, ?, 0, 0)",
                    (conv_id, user, seq),
                )
            await tx.execute(
                "INSERT INTO im_tl_member (conv_id, user_id, read_seq, delivered_seq, changed)"
                " VALUES (?, ?, ?, 0, ?) " + sql["join_member"],
                (conv_id, user, seq, server_time),
            )
        elif body.event in _CLOSES:
            await tx.execute(
                "UPDATE im_tl_span SET to_seq = ? WHERE conv_id = ? AND user_id = ? AND to_seq = 0",
                (seq, conv_id, body.target),
            )
            await tx.execute(
                f"UPDATE im_tl_member SET changed = {sql['greatest']}(changed, ?)"
                " WHERE conv_id = ? AND user_id = ?",
                (server_time, conv_id, body.target),
            )
        elif body.event == im_pb2.SystemBody.MUTED:
            await tx.execute(
                "UPDATE im_tl_span SET muted_until = ?"
                " WHERE conv_id = ? AND user_id = ? AND to_seq = 0",
                (body.until, conv_id, body.target),
            )
        elif body.event == im_pb2.SystemBody.DISSOLVED:
            closed = seq
        elif body.event == im_pb2.SystemBody.KEY_ROTATED:
            key_id = body.key_id
    if entries:
        await tx.execute(
            "UPDATE im_tl_conv SET last_seq = ?, last_time = ?, closed_seq = ?, key_id = ?"
            " WHERE conv_id = ?",
            (seq, server_time, closed, key_id, conv_id),
        )
    return entries


async def spans(db: Database | Session, conv_id: str, user_id: str) -> list[Span]:
    rows = await db.fetchall(
        "SELECT from_seq, to_seq FROM im_tl_span WHERE conv_id = ? AND user_id = ?"
        " ORDER BY from_seq",
        (conv_id, user_id),
    )
    return [Span(int(f), int(t)) for f, t in rows]


async def spans_of(db: Database, user_id: str, conv_ids: Sequence[str]) -> dict[str, list[Span]]:
    """Each of ``conv_ids``' spans of ``user_id``, ascending."""
    out: dict[str, list[Span]] = {c: [] for c in conv_ids}
    for start in range(0, len(conv_ids), 500):
        chunk = list(conv_ids[start : start + 500])
        marks = ", ".join("?" for _ in chunk)
        rows = await db.fetchall(
            "SELECT conv_id, from_seq, to_seq FROM im_tl_span"
            f" WHERE user_id = ? AND conv_id IN ({marks}) ORDER BY conv_id, from_seq",
            (user_id, *chunk),
        )
        for c, f, t in rows:
            out[str(c)].append(Span(int(f), int(t)))
    return out


async def receipts(
    db: Database, conv_id: str, seq: int, sender: str, limit: int = RECEIPT_LIST_MAX
) -> Receipts:
    """Counts and (bounded) lists from the members' cursors: no row per message exists."""
    cover = (
        " FROM im_tl_span s JOIN im_tl_member m ON m.conv_id = s.conv_id AND m.user_id = s.user_id"
        " WHERE s.conv_id = ? AND s.from_seq <= ? AND (s.to_seq = 0 OR s.to_seq >= ?)"
        " AND s.user_id <> ?"
    )
    params = (conv_id, seq, seq, sender)
    row = await db.fetchone(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN m.read_seq >= ? THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN m.delivered_seq >= ? THEN 1 ELSE 0 END), 0)" + cover,
        (seq, seq, *params),
    )
    total, read, delivered = (0, 0, 0) if row is None else (int(v) for v in row)
    lists: dict[str, list[str]] = {}
    for column in ("read_seq", "delivered_seq"):
        rows = await db.fetchall(
            f"SELECT s.user_id{cover} AND m.{column} >= ? ORDER BY s.user_id LIMIT ?",
            (*params, seq, limit),
        )
        lists[column] = [str(r[0]) for r in rows]
    return Receipts(seq, total, read, delivered, lists["read_seq"], lists["delivered_seq"])


async def receipt_counts(
    db: Database, conv_id: str, messages: Sequence[tuple[int, str]]
) -> list[tuple[int, int, int]]:
    """:func:`receipts`' counts for several ``(seq, sender)`` at once: the spans that reach
    into their range with their members' cursors, read once and counted here."""
    seqs = [seq for seq, _ in messages]
    rows = await db.fetchall(
        "SELECT s.user_id, s.from_seq, s.to_seq, m.read_seq, m.delivered_seq"
        " FROM im_tl_span s JOIN im_tl_member m ON m.conv_id = s.conv_id AND m.user_id = s.user_id"
        " WHERE s.conv_id = ? AND s.from_seq <= ? AND (s.to_seq = 0 OR s.to_seq >= ?)",
        (conv_id, max(seqs), min(seqs)),
    )
    cursors = [(str(u), int(f), int(t), int(r), int(d)) for u, f, t, r, d in rows]
    return count_receipts(cursors, messages)


def count_receipts(
    cursors: Sequence[tuple[str, int, int, int, int]], messages: Sequence[tuple[int, str]]
) -> list[tuple[int, int, int]]:
    """Per ``(seq, sender)``: the users with a span ``(from, to)`` covering seq (to 0: open),
    the sender left out, and how many of them read and received it. A user with two spans over
    one seq can't happen (spans do not overlap), so each counts once."""
    out: list[tuple[int, int, int]] = []
    for seq, sender in messages:
        members = read = delivered = 0
        for user, from_seq, to_seq, read_seq, delivered_seq in cursors:
            if user == sender or from_seq > seq or (to_seq and to_seq < seq):
                continue
            members += 1
            read += read_seq >= seq
            delivered += delivered_seq >= seq
        out.append((members, read, delivered))
    return out


async def poster(db: Database, conv_id: str, user_id: str) -> int | None:
    """The mute (ms, 0: none) of ``user_id``'s open span in the group; None without one."""
    row = await db.fetchone(
        "SELECT muted_until FROM im_tl_span WHERE conv_id = ? AND user_id = ? AND to_seq = 0"
        " ORDER BY from_seq DESC LIMIT 1",
        (conv_id, user_id),
    )
    return None if row is None else int(row[0])


async def members_snapshot(db: Database, conv_id: str) -> MemberSnapshot | None:
    """The group's head and spans in one consistent read (None: no such group). The head is
    read with a shared lock on the conversation row, which every append and membership change
    holds exclusively until it commits: while we hold it, no change is half done, so the
    spans read next are those of exactly that head (MySQL runs READ COMMITTED, which would
    otherwise let a change land between the two statements)."""

    async def read(tx: Session) -> MemberSnapshot | None:
        row = await tx.fetchone(
            "SELECT last_seq FROM im_tl_conv WHERE conv_id = ?" + _SQL[db.dialect]["for_share"],
            (conv_id,),
        )
        if row is None:
            return None
        rows = await tx.fetchall(
            "SELECT user_id, from_seq, to_seq FROM im_tl_span WHERE conv_id = ?"
            " ORDER BY user_id, from_seq",
            (conv_id,),
        )
        out: dict[str, list[Span]] = {}
        for user, f, t in rows:
            out.setdefault(str(user), []).append(Span(int(f), int(t)))
        return MemberSnapshot(int(row[0]), {u: tuple(v) for u, v in out.items()})

    return await db.transaction(read)
