"""Rows of the SQL timeline store as Python values, shared by its modules: entries, the
signed BIGINT form of uint64 ids, and what a user's spans let them see."""

from __future__ import annotations

from collections.abc import Sequence

from common.db import Row
from timeline.model import Entry, Span

U64 = 1 << 64
I64_MAX = (1 << 63) - 1


def to_db_id(msg_id: int) -> int:
    return msg_id - U64 if msg_id > I64_MAX else msg_id


def from_db_id(value: int) -> int:
    return value + U64 if value < 0 else value


def visible_bounds(spans: Sequence[Span], head: int) -> tuple[int, int]:
    """(first seq the user may read, last seq if they are no member now else 0); a user with
    no span reads nothing: (head + 1, head)."""
    if not spans:
        return head + 1, head
    return spans[0].from_seq, spans[-1].to_seq


ENTRY = "conv_id, seq, sender, msg_id, server_time, content"


def entry_of(row: Row) -> Entry:
    conv_id, seq, sender, msg_id, server_time, content = row[:6]
    return Entry(
        str(conv_id),
        int(seq),
        str(sender),
        from_db_id(int(msg_id)),
        int(server_time),
        bytes(content),
    )
