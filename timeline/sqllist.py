"""A user's conversations from the SQL timeline store: the REST list and the connector's
listing (:meth:`timeline.store.SQLTimelineStore.conversations`).

Two disjoint sets are read, each in the order of its own ``changed``, and merged: the member
rows (1-1 conversations, and groups the user has left), by the ``(user_id, changed,
conv_id)`` index; and the groups the user is in now, whose ``changed`` is the larger of their
row's and the head's time, read from their open spans joined with ``im_tl_conv``: a group
message bumps no member row (read diffusion). A former member sees the group as it was when
they left: ``last_seq`` and ``max_seq`` at their span's end, the last message there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.db import Database, Row
from timeline import groupsql, sqlcursors
from timeline.model import GROUP, SINGLE, UNREAD_CAP, ConvSummary, Entry, parse_conv_id
from timeline.sqlrows import ENTRY, entry_of, visible_bounds

_UNREAD_CHUNK = 100  # conversations per unread count
_GREATEST = {"sqlite": "MAX", "mysql": "GREATEST"}


async def conversations(
    db: Database,
    user_id: str,
    since_ms: int,
    device_id: str,
    limit: int,
    after: tuple[int, str] | None,
) -> list[ConvSummary]:
    """:meth:`timeline.store.TimelineStore.conversations`, its arguments checked."""
    # Two disjoint sets, each read in the order of its own `changed`, then merged:
    # the member rows (pairs, and groups the user has left), by the indexed m.changed;
    # and the groups the user is in now, whose `changed` is also their head's time (a
    # group message bumps no member row: read diffusion), a scan of the user's groups.
    rows = await _summary_rows(db, user_id, since_ms, device_id, limit, after, groups=False)
    rows += await _summary_rows(db, user_id, since_ms, device_id, limit, after, groups=True)
    rows.sort(key=lambda r: (int(r[4]), str(r[0])), reverse=after is None)
    rows = rows[:limit]
    group_ids = [str(r[0]) for r in rows if int(r[1]) == GROUP]
    spans = await groupsql.spans_of(db, user_id, group_ids) if group_ids else {}
    heads = {str(r[0]): int(r[2]) for r in rows}
    bounds = {c: visible_bounds(s, heads[c]) for c, s in spans.items()}
    # a member who left sees the conversation as it was when they left
    ended = sorted((c, b[1]) for c, b in bounds.items() if b[1])
    lasts = await _entries_at(db, ended) if ended and after is None else {}
    pending: list[tuple[str, int, int]] = []
    for r in rows:
        conv_id = str(r[0])
        upto = bounds[conv_id][1] or int(r[2]) if conv_id in bounds else int(r[2])
        if upto > int(r[3]):
            pending.append((conv_id, int(r[3]), upto))
    unread = await _unread(db, user_id, pending)
    out: list[ConvSummary] = []
    for r in rows:
        conv_id = str(r[0])
        ref = parse_conv_id(conv_id)
        first, last_seen = bounds.get(conv_id, (1, 0))
        stored_min = int(r[2]) + 1 if r[15] is None else int(r[15])
        last = None if r[9] is None else entry_of(r[9:15])
        if last_seen:
            last = lasts.get(conv_id)
        out.append(
            ConvSummary(
                conv_id=conv_id,
                dest_type=int(r[1]),
                peer_id=ref.peer_of(user_id),
                last_seq=last_seen or int(r[2]),
                last=last,
                read_seq=int(r[3]),
                delivered_seq=int(r[8]) if device_id else 0,
                peer_read_seq=int(r[6]),
                peer_delivered_seq=int(r[7]),
                unread=unread.get(conv_id, 0),
                changed=int(r[4]),
                min_seq=max(stored_min, first),
                max_seq=last_seen,
            )
        )
    return out


async def _summary_rows(
    db: Database,
    user_id: str,
    since_ms: int,
    device_id: str,
    limit: int,
    after: tuple[int, str] | None,
    *,
    groups: bool,
) -> list[Row]:
    if groups:
        changed = f"{_GREATEST[db.dialect]}(m.changed, c.last_time)"
        source = (
            " FROM im_tl_span s JOIN im_tl_member m"
            "  ON m.conv_id = s.conv_id AND m.user_id = s.user_id"
            " JOIN im_tl_conv c ON c.conv_id = m.conv_id"
        )
        mine = " WHERE s.user_id = ? AND s.to_seq = 0"
    else:
        changed = "m.changed"
        source = " FROM im_tl_member m JOIN im_tl_conv c ON c.conv_id = m.conv_id"
        mine = (
            " WHERE m.user_id = ? AND NOT EXISTS (SELECT 1 FROM im_tl_span o"
            "  WHERE o.conv_id = m.conv_id AND o.user_id = m.user_id AND o.to_seq = 0)"
        )
    if after is None:
        where = f"{mine} AND {changed} >= ? ORDER BY {changed} DESC, m.conv_id DESC"
        keys: tuple[object, ...] = (user_id, since_ms)
    else:
        # keyset paging (on the (user_id, changed, conv_id) index for member rows)
        where = (
            f"{mine} AND {changed} >= ?"
            f" AND ({changed} > ? OR ({changed} = ? AND m.conv_id > ?))"
            f" ORDER BY {changed} ASC, m.conv_id ASC"
        )
        keys = (user_id, since_ms, after[0], after[0], after[1])
    # the last message (up to 64 KiB each) only for the REST list; the listing pages by key
    # and tells devices heads and cursors, not bodies
    last_cols = " l.conv_id, l.seq, l.sender, l.msg_id, l.server_time, l.content,"
    last_join = " LEFT JOIN im_tl_message l ON l.conv_id = m.conv_id AND l.seq = c.last_seq"
    if after is not None:
        last_cols, last_join = " NULL, NULL, NULL, NULL, NULL, NULL,", ""
    return await db.fetchall(
        f"SELECT m.conv_id, c.dest_type, c.last_seq, m.read_seq, {changed},"
        " p.user_id, COALESCE(p.read_seq, 0), COALESCE(p.delivered_seq, 0),"
        " COALESCE(d.delivered_seq, 0),"
        + last_cols
        # the first seq still stored: the first key of the conversation's primary key range
        + " (SELECT MIN(f.seq) FROM im_tl_message f WHERE f.conv_id = m.conv_id)"
        + source
        + " LEFT JOIN im_tl_member p"
        "  ON p.conv_id = m.conv_id AND p.user_id <> m.user_id AND c.dest_type = ?"
        " LEFT JOIN im_tl_device d"
        "  ON d.conv_id = m.conv_id AND d.user_id = m.user_id AND d.device_id = ?"
        + last_join
        + where
        + " LIMIT ?",
        (SINGLE, device_id, *keys, limit),
    )


async def _entries_at(db: Database, keys: Sequence[tuple[str, int]]) -> dict[str, Entry]:
    rows = await sqlcursors.lookup(
        db,
        db.dialect,
        f"SELECT {ENTRY} FROM im_tl_message",
        ("conv_id", "seq"),
        keys,
        lock=False,
    )
    return {str(r[0]): entry_of(r) for r in rows}


async def _unread(
    db: Database, user_id: str, pending: list[tuple[str, int, int]]
) -> dict[str, int]:
    """Messages from others after each read cursor (up to the last seq the user may
    read), counted up to the cap: one statement per chunk of conversations, each count a
    bounded range scan of an index."""
    out: dict[str, int] = {}
    for start in range(0, len(pending), _UNREAD_CHUNK):
        chunk = pending[start : start + _UNREAD_CHUNK]
        parts: list[str] = []
        params: list[Any] = []
        for i, (conv_id, read_seq, upto) in enumerate(chunk):
            parts.append(
                f"SELECT {i}, COUNT(*) FROM (SELECT 1 AS one FROM im_tl_message"
                " WHERE conv_id = ? AND seq > ? AND seq <= ? AND sender <> ?"
                f" LIMIT {UNREAD_CAP}) AS t{i}"
            )
            params += [conv_id, read_seq, upto, user_id]
        for i, count in await db.fetchall(" UNION ALL ".join(parts), params):
            out[chunk[int(i)][0]] = int(count)
    return out
