"""Merging a batch of cursors into the SQL timeline store in one transaction
(:meth:`timeline.store.SQLTimelineStore.merge_cursors`).

A device coming back sends one DELIVERED cursor per conversation it caught up on, and every
member's read moves a READ one: a writer batch is mostly cursors of distinct conversations. Per
cursor, a transaction and its four or five statements cost ~1 ms each on MariaDB; here a batch
is three chunked lookups and two multi-row upserts, whatever its size (measured with
``python -m timeline.cursor_bench``: 2000 DELIVERED cursors 2.3 s -> 0.13 s).

The rules are the store's: cursors only move forward, never past the conversation's head; a
DELIVERED cursor is the device's, and the member's ``delivered_seq`` is the best of its devices;
a move bumps the member's ``changed``, and the peer's in a 1-1 conversation when the member's
cursor moved (it is the peer's receipt); a group's former member's cursors stop at the last
seq of their spans.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.db import Row, Session
from proto import im_pb2
from timeline.model import GROUP, SINGLE, ConvRef, CursorMove, CursorResult, conv_ref

CHUNK = 500  # keys per lookup

_SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        "for_update": "",
        "by_primary": "",
        "upsert_device": "ON CONFLICT (conv_id, user_id, device_id) DO UPDATE SET"
        " delivered_seq = MAX(delivered_seq, excluded.delivered_seq), changed = excluded.changed",
        "upsert_member": "ON CONFLICT (conv_id, user_id) DO UPDATE SET"
        " read_seq = MAX(read_seq, excluded.read_seq),"
        " delivered_seq = MAX(delivered_seq, excluded.delivered_seq),"
        " changed = MAX(changed, excluded.changed)",
    },
    "mysql": {
        "for_update": " FOR UPDATE",
        # a row IN list of 500 (conv_id, user_id) keys: left to itself, MariaDB weighs the
        # (user_id, ...) index too and spends ~80 ms planning; on the key alone, ~3 ms
        "by_primary": " FORCE INDEX (PRIMARY)",
        "upsert_device": "ON DUPLICATE KEY UPDATE"
        " delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq)),"
        " changed = VALUES(changed)",
        "upsert_member": "ON DUPLICATE KEY UPDATE"
        " read_seq = GREATEST(read_seq, VALUES(read_seq)),"
        " delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq)),"
        " changed = GREATEST(changed, VALUES(changed))",
    },
}


async def merge(
    tx: Session, dialect: str, moves: Sequence[CursorMove], now: int
) -> list[CursorResult]:
    """Read every row the batch touches (members' and devices' locked, in key order, as
    an append locks member rows), work the moves out in Python, write the changed rows
    back in two multi-row upserts: a fixed number of round trips per 500 cursors."""
    refs = {c: conv_ref(c) for c in {m.conv_id for m in moves}}
    heads: dict[str, int] = {}
    for row in await lookup(
        tx,
        dialect,
        "SELECT conv_id, last_seq FROM im_tl_conv",
        ("conv_id",),
        sorted((c,) for c, ref in refs.items() if ref is not None),
        lock=False,
    ):
        heads[str(row[0])] = int(row[1])
    member_keys: set[tuple[str, str]] = set()
    for m in moves:
        ref = refs[m.conv_id]
        if ref is None or m.conv_id not in heads:
            continue
        member_keys.add((m.conv_id, m.user_id))
        if ref.dest_type == SINGLE and m.user_id in ref.members:
            member_keys.add((m.conv_id, ref.peer_of(m.user_id)))
    members: dict[tuple[str, str], list[int]] = {}  # -> [read_seq, delivered_seq]
    for row in await lookup(
        tx,
        dialect,
        "SELECT conv_id, user_id, read_seq, delivered_seq FROM im_tl_member"
        + _SQL[dialect]["by_primary"],
        ("conv_id", "user_id"),
        sorted(member_keys),
        lock=True,
    ):
        members[(str(row[0]), str(row[1]))] = [int(row[2]), int(row[3])]
    device_keys = sorted(
        {
            (m.conv_id, m.user_id, m.device_id)
            for m in moves
            if m.kind == im_pb2.DELIVERED and (m.conv_id, m.user_id) in members
        }
    )
    devices: dict[tuple[str, str, str], int] = {}
    for row in await lookup(
        tx,
        dialect,
        "SELECT conv_id, user_id, device_id, delivered_seq FROM im_tl_device",
        ("conv_id", "user_id", "device_id"),
        device_keys,
        lock=True,
    ):
        devices[(str(row[0]), str(row[1]), str(row[2]))] = int(row[3])

    # a group's former member: no cursor past the last seq they may read (it would tell them
    # how far the group went on without them); 0 for a member now: no cap but the head
    spans: dict[tuple[str, str], list[int]] = {}
    groups = [k for k in sorted(members) if _is_group(refs[k[0]])]
    for row in await lookup(
        tx,
        dialect,
        "SELECT conv_id, user_id, to_seq FROM im_tl_span",
        ("conv_id", "user_id"),
        groups,
        lock=False,
    ):
        spans.setdefault((str(row[0]), str(row[1])), []).append(int(row[2]))
    ends = {k: 0 if 0 in v else max(v) for k, v in spans.items()}
    results: list[CursorResult] = []
    bumped: set[tuple[str, str]] = set()
    moved_devices: set[tuple[str, str, str]] = set()
    for m in moves:
        ref = refs[m.conv_id]
        key = (m.conv_id, m.user_id)
        state = members.get(key)
        if ref is None or state is None:
            member = ref is not None and ref.dest_type == SINGLE and m.user_id in ref.members
            results.append(CursorResult(0, False, member))
            continue
        single = ref.dest_type == SINGLE
        peer = (m.conv_id, ref.peer_of(m.user_id)) if single else None
        target = min(m.seq, heads[m.conv_id], ends.get(key) or heads[m.conv_id])
        if m.kind == im_pb2.READ:
            moved = target > state[0]
            if moved:
                state[0] = target
                bumped.add(key)
            results.append(CursorResult(state[0], moved, True))
        else:
            dkey = (m.conv_id, m.user_id, m.device_id)
            device = devices.get(dkey, 0)
            moved = False
            if target > device:
                devices[dkey] = device = target
                moved_devices.add(dkey)
                bumped.add(key)
                moved = target > state[1]
                state[1] = max(state[1], target)
            results.append(CursorResult(state[1], moved, True, device))
        if moved and peer is not None and peer in members:
            bumped.add(peer)  # the move is the peer's receipt
    if moved_devices:
        await tx.executemany(
            "INSERT INTO im_tl_device (conv_id, user_id, device_id, delivered_seq, changed)"
            " VALUES (?, ?, ?, ?, ?) " + _SQL[dialect]["upsert_device"],
            [(*k, devices[k], now) for k in sorted(moved_devices)],
        )
    if bumped:
        await tx.executemany(
            "INSERT INTO im_tl_member (conv_id, user_id, read_seq, delivered_seq, changed)"
            " VALUES (?, ?, ?, ?, ?) " + _SQL[dialect]["upsert_member"],
            [(*k, *members[k], now) for k in sorted(bumped)],
        )
    return results


def _is_group(ref: ConvRef | None) -> bool:
    return ref is not None and ref.dest_type == GROUP


async def lookup(
    tx: Session,
    dialect: str,
    select: str,
    columns: tuple[str, ...],
    keys: Sequence[tuple[object, ...]],
    *,
    lock: bool,
    extra: str = "",
) -> list[Row]:
    """``select`` for the rows whose ``columns`` are one of ``keys``, in chunks; MySQL
    takes a row IN list (one range scan of the key), SQLite ORs of the key's terms."""
    out: list[Row] = []
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        if len(columns) == 1:
            where = f"{columns[0]} IN (" + ", ".join("?" for _ in chunk) + ")"
        elif dialect == "mysql":
            one = "(" + ", ".join("?" for _ in columns) + ")"
            where = f"({', '.join(columns)}) IN (" + ", ".join(one for _ in chunk) + ")"
        else:
            one = "(" + " AND ".join(f"{c} = ?" for c in columns) + ")"
            where = " OR ".join(one for _ in chunk)
        params = [v for key in chunk for v in key]
        lock_sql = _SQL[dialect]["for_update"] if lock else ""
        also = f" AND {extra}" if extra else ""
        out += await tx.fetchall(f"{select} WHERE ({where}){also}{lock_sql}", params)
    return out
