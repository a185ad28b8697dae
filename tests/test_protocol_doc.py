"""docs/protocol.md's error table names every ErrorCode with its number, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from proto import im_pb2

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_error_table_matches_the_schema() -> None:
    rows = set(re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", DOC, flags=re.MULTILINE))
    codes = {(str(v), k) for k, v in im_pb2.ErrorCode.items() if v}
    assert rows == codes
