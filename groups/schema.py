"""The group tables, as migration steps per dialect (component ``groups``).

- ``im_group``: one row per group: its name, owner, creation, dissolution (0 while it lives)
  and current key id. The group's conversation (``g:<group id>``: head, spans, cursors) is the
  timeline's (timeline/schema.py); a group's changes lock that conversation's row first.
- ``im_group_member``: members and pending invitations, with role, state, mute and who
  invited; ``(user_id, group_id)`` lists a user's groups. A member who leaves loses this row;
  what they may still read is in their spans.
- ``im_group_key``: every key the group had, with the first seq it seals (``from_seq``): a
  past message keeps its key, and a member is handed the keys of the seqs they may read.
"""

from __future__ import annotations

from common.errors import ConfigError

COMPONENT = "groups"

_MYSQL_TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
_ID = "VARCHAR(64)"

_GROUP = (
    "CREATE TABLE IF NOT EXISTS im_group ("
    f" group_id {_ID} NOT NULL PRIMARY KEY,"
    " name VARCHAR(128) NOT NULL,"
    f" owner {_ID} NOT NULL,"
    " created BIGINT NOT NULL,"
    " dissolved BIGINT NOT NULL DEFAULT 0,"
    " key_id BIGINT NOT NULL)"
)
_MEMBER = (
    "CREATE TABLE IF NOT EXISTS im_group_member ("
    f" group_id {_ID} NOT NULL,"
    f" user_id {_ID} NOT NULL,"
    " role VARCHAR(8) NOT NULL,"
    " state VARCHAR(8) NOT NULL,"
    " muted_until BIGINT NOT NULL DEFAULT 0,"
    f" invited_by {_ID} NOT NULL DEFAULT '',"
    " changed BIGINT NOT NULL,"
    " PRIMARY KEY (group_id, user_id)"
)
_KEY = (
    "CREATE TABLE IF NOT EXISTS im_group_key ("
    f" group_id {_ID} NOT NULL,"
    " key_id BIGINT NOT NULL,"
    " group_key VARCHAR(64) NOT NULL,"
    " from_seq BIGINT NOT NULL,"
    " PRIMARY KEY (group_id, key_id))"
)

_STEPS: dict[str, list[list[str]]] = {
    "sqlite": [
        [
            _GROUP,
            _MEMBER + ")",
            "CREATE INDEX IF NOT EXISTS idx_group_member_user"
            " ON im_group_member (user_id, group_id)",
            _KEY,
        ]
    ],
    "mysql": [
        [
            _GROUP + _MYSQL_TABLE,
            _MEMBER + ", KEY idx_group_member_user (user_id, group_id))" + _MYSQL_TABLE,
            _KEY + _MYSQL_TABLE,
        ]
    ],
}


def migrations(dialect: str) -> list[list[str]]:
    try:
        return _STEPS[dialect]
    except KeyError:
        raise ConfigError(f"group store: unsupported SQL dialect {dialect!r}") from None
