"""Errors of the offline package that callers may want to tell apart."""

from __future__ import annotations

from common.errors import IMError


class RejectedError(IMError):
    """The writer refused the items for good (they can't be stored); resending won't help."""
