"""The timeline tables, as migration steps per dialect (component ``timeline``).

- ``im_tl_conv``: one row per conversation. ``last_seq`` is the head: the seq of its newest
  message, 0 before the first; ``last_time`` that message's ``server_time``, so times never go
  back within a conversation even when the clock does (retention then removes a prefix).
- ``im_tl_message``: the messages, keyed ``(conv_id, seq)``; ``(sender, msg_id)`` unique, the
  identity a resend is recognised by; ``digest`` tells a resend from a reused id; ``content``
  is the stamped ChatMsg. ``(conv_id, seq, sender)`` covers unread counting (a range scan that
  never reads content); ``server_time`` serves retention.
- ``im_tl_member``: one row per conversation and member: ``read_seq`` (shared by the member's
  devices), ``delivered_seq`` (the highest of its devices') and ``changed``, the time of the
  last message or cursor move the member should hear about; ``(user_id, changed, conv_id)``
  lists a user's conversations newest change first.
- ``im_tl_device``: each device's DELIVERED cursor, per conversation and member.
- step 2 (groups, docs/groups.md): ``im_tl_span``, the stretches of a group's timeline each
  user may read, from the seq of the event that let them in to the one that let them out
  (``to_seq`` 0 while a member), with the member's mute; ``im_tl_conv`` gains ``closed_seq``
  (a dissolved group's DISSOLVED event: no posts after it) and ``key_id`` (the group's current
  key, which a chat must be sealed with). ``(user_id, to_seq, conv_id)`` lists a user's groups.

msg ids are uint64 on the wire and stored as the signed BIGINT with the same 64 bits, as the
offline store does. MySQL tables use the binary collation, so ids compare as in Python.
"""

from __future__ import annotations

from common.errors import ConfigError

COMPONENT = "timeline"

_MYSQL_TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
_CONV = "VARCHAR(131)"  # model.CONV_ID_MAX_LEN
_ID = "VARCHAR(64)"

_CONV_TABLE = (
    "CREATE TABLE IF NOT EXISTS im_tl_conv ("
    f" conv_id {_CONV} NOT NULL PRIMARY KEY,"
    " dest_type TINYINT NOT NULL,"
    " last_seq BIGINT NOT NULL,"
    " last_time BIGINT NOT NULL,"
    " created BIGINT NOT NULL)"
)
_MESSAGE_COLUMNS = (
    f" conv_id {_CONV} NOT NULL,"
    " seq BIGINT NOT NULL,"
    f" sender {_ID} NOT NULL,"
    " msg_id BIGINT NOT NULL,"
    " server_time BIGINT NOT NULL,"
    " digest VARBINARY(32) NOT NULL,"
)
_MEMBER_TABLE = (
    "CREATE TABLE IF NOT EXISTS im_tl_member ("
    f" conv_id {_CONV} NOT NULL,"
    f" user_id {_ID} NOT NULL,"
    " read_seq BIGINT NOT NULL DEFAULT 0,"
    " delivered_seq BIGINT NOT NULL DEFAULT 0,"
    " changed BIGINT NOT NULL,"
    " PRIMARY KEY (conv_id, user_id)"
)
_DEVICE_TABLE = (
    "CREATE TABLE IF NOT EXISTS im_tl_device ("
    f" conv_id {_CONV} NOT NULL,"
    f" user_id {_ID} NOT NULL,"
    f" device_id {_ID} NOT NULL,"
    " delivered_seq BIGINT NOT NULL,"
    " changed BIGINT NOT NULL,"
    " PRIMARY KEY (conv_id, user_id, device_id))"
)

_SPAN_COLUMNS = (
    "CREATE TABLE IF NOT EXISTS im_tl_span ("
    f" conv_id {_CONV} NOT NULL,"
    f" user_id {_ID} NOT NULL,"
    " from_seq BIGINT NOT NULL,"
    " to_seq BIGINT NOT NULL DEFAULT 0,"
    " muted_until BIGINT NOT NULL DEFAULT 0,"
    " PRIMARY KEY (conv_id, user_id, from_seq)"
)
_CONV_COLUMNS = (
    "ADD COLUMN closed_seq BIGINT NOT NULL DEFAULT 0",
    "ADD COLUMN key_id BIGINT NOT NULL DEFAULT 0",
)

_STEPS: dict[str, list[list[str]]] = {
    "sqlite": [
        [
            _CONV_TABLE,
            "CREATE TABLE IF NOT EXISTS im_tl_message ("
            + _MESSAGE_COLUMNS
            + " content BLOB NOT NULL,"
            " PRIMARY KEY (conv_id, seq),"
            " UNIQUE (sender, msg_id))",
            "CREATE INDEX IF NOT EXISTS idx_tl_message_unread"
            " ON im_tl_message (conv_id, seq, sender)",
            "CREATE INDEX IF NOT EXISTS idx_tl_message_time ON im_tl_message (server_time)",
            _MEMBER_TABLE + ")",
            "CREATE INDEX IF NOT EXISTS idx_tl_member_changed"
            " ON im_tl_member (user_id, changed, conv_id)",
            _DEVICE_TABLE,
        ],
        [
            *(f"ALTER TABLE im_tl_conv {c}" for c in _CONV_COLUMNS),
            _SPAN_COLUMNS + ")",
            "CREATE INDEX IF NOT EXISTS idx_tl_span_user ON im_tl_span (user_id, to_seq, conv_id)",
        ],
    ],
    # MySQL has no CREATE INDEX IF NOT EXISTS (MariaDB does): indexes go inline instead.
    "mysql": [
        [
            _CONV_TABLE + _MYSQL_TABLE,
            "CREATE TABLE IF NOT EXISTS im_tl_message ("
            + _MESSAGE_COLUMNS
            + " content MEDIUMBLOB NOT NULL,"
            " PRIMARY KEY (conv_id, seq),"
            " UNIQUE KEY uq_tl_message_id (sender, msg_id),"
            " KEY idx_tl_message_unread (conv_id, seq, sender),"
            " KEY idx_tl_message_time (server_time))" + _MYSQL_TABLE,
            _MEMBER_TABLE
            + ", KEY idx_tl_member_changed (user_id, changed, conv_id))"
            + _MYSQL_TABLE,
            _DEVICE_TABLE + _MYSQL_TABLE,
        ],
        [
            "ALTER TABLE im_tl_conv " + ", ".join(_CONV_COLUMNS),
            _SPAN_COLUMNS + ", KEY idx_tl_span_user (user_id, to_seq, conv_id))" + _MYSQL_TABLE,
        ],
    ],
}


def migrations(dialect: str) -> list[list[str]]:
    """The migration steps of the timeline tables for ``dialect``, oldest first."""
    try:
        return _STEPS[dialect]
    except KeyError:
        raise ConfigError(f"timeline store: unsupported SQL dialect {dialect!r}") from None
