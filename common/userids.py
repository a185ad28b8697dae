"""The one rule for what a user id is and when two spellings are the same account.

Two spellings that a person would read as the same name must not be two accounts: ``Alice``,
``alice`` and the same letters in full width (U+FF21 on) are one user. So every id that enters
the system (registration, login, a friend or block target, an admin lookup, ``IM_ADMINS``)
goes through :func:`canonical_user_id` before it is stored or compared: Unicode NFKC, then case
folding, then NFKC again (folding can undo the normal form, and the result must be a fixed
point). The canonical form must then match :data:`CANONICAL_PATTERN`: 1 to 64 of
``a-z 0-9 _ . -``, which also rules out empty ids, spaces and control characters whatever
their spelling.

Why fold to ASCII rather than allow any letter: ids travel in protocol frames, tokens, log lines
and URLs, and an ASCII id cannot hide a look-alike (Cyrillic a, U+0430, is not folded to Latin
``a`` by NFKC, so it stays refused instead of becoming a second "alice").
"""

from __future__ import annotations

import re
import unicodedata

# ids as clients may type them (either case); what is stored is the lower-case canonical form
INPUT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
CANONICAL_PATTERN = r"^[a-z0-9_.-]{1,64}$"
# bound the normalization work a hostile id can cause: NFKC can grow a string about 18-fold
MAX_RAW_LENGTH = 256

_CANONICAL = re.compile(CANONICAL_PATTERN)


class BadUserId(ValueError):
    """Not a user id in any spelling."""


def canonical_user_id(raw: str) -> str:
    """The canonical form of ``raw``; :class:`BadUserId` when it has none."""
    if not isinstance(raw, str):
        raise BadUserId("a user id is a string")
    if len(raw) > MAX_RAW_LENGTH:
        raise BadUserId(f"a user id is at most 64 characters (got {len(raw)})")
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    if not _CANONICAL.fullmatch(folded):  # not match: "$" would let a final newline in
        raise BadUserId(
            "a user id is 1 to 64 of letters a-z, digits, '_', '.' and '-' (compared ignoring case)"
        )
    return folded


def canonical_or_none(raw: object) -> str | None:
    """The canonical form, or None for anything that is not a user id."""
    if not isinstance(raw, str):
        return None
    try:
        return canonical_user_id(raw)
    except BadUserId:
        return None


def is_canonical(user_id: str) -> bool:
    return canonical_or_none(user_id) == user_id
