"""User ids as REST reads them, in a body or in a path: canonical before any endpoint sees them.

Every endpoint that names a user takes one of these types, so no code path can compare or store
an id in another spelling (common/userids.py has the rule). A spelling with no canonical form is
a 422 like any other invalid field. The documented pattern is the ASCII one clients should send;
other spellings that fold into it (full-width letters, say) are accepted as the same id.
"""

from typing import Annotated, Any

from fastapi import Path
from pydantic import BeforeValidator, Field, WithJsonSchema

from common.userids import INPUT_PATTERN, canonical_user_id

_DESCRIPTION = "a user id; compared and stored case-insensitively (NFKC + case folding)"
_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": INPUT_PATTERN, "examples": ["alice"], "description": _DESCRIPTION}
)


def _canonical(value: Any) -> Any:
    """Strings are folded (a ValueError becomes a 422); anything else is left for pydantic's
    own type error."""
    return canonical_user_id(value) if isinstance(value, str) else value


UserId = Annotated[str, BeforeValidator(_canonical), _SCHEMA, Field(examples=["alice"])]
OptionalUserId = Annotated[str | None, BeforeValidator(_canonical), Field(examples=["alice"])]
UserPath = Annotated[str, BeforeValidator(_canonical), _SCHEMA, Path(description=_DESCRIPTION)]
