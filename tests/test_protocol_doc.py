"""docs/protocol.md stays true to the schema: its table of Envelope bodies names every body of
proto/im.proto with its field number and whether it is windowed (common.linkstate.WINDOWED),
and its error table names every ErrorCode with its number, none missing and none extra. A
retired kind or code left in the doc, or a new one left out of it, fails here rather than
misleading a client author."""

from __future__ import annotations

import re
from pathlib import Path

from common.linkstate import WINDOWED
from proto import im_pb2

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def table_after(heading: str) -> list[list[str]]:
    """The cells of the first table after the line ``heading``, header and rule rows left out."""
    lines = DOC.splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([cell.strip() for cell in cells])
    assert len(rows) > 2, f"no table after {heading!r}"
    return rows[2:]


def name(cell: str) -> str:
    m = re.fullmatch(r"`([A-Za-z_]+)`", cell)
    assert m, f"not a `name` cell: {cell!r}"
    return m.group(1)


def test_body_table_matches_the_envelope() -> None:
    rows = table_after("## The Envelope and its bodies")
    documented = {(int(r[0]), name(r[1])): r[3] for r in rows}
    fields = im_pb2.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields
    assert set(documented) == {(f.number, f.name) for f in fields}
    for (_, body), kind in documented.items():
        want = "windowed" if body in WINDOWED else "control"
        assert kind == want, f"{body}: the doc says {kind}, common/linkstate.py says {want}"


def test_error_table_matches_the_schema() -> None:
    rows = table_after("## Error codes")
    documented = {(int(r[0]), name(r[1])) for r in rows}
    codes = {(v, k) for k, v in im_pb2.ErrorCode.items() if v}
    assert documented == codes
    assert all(len(r) == 4 and ("yes" in r[3] or "no" in r[3]) for r in rows), "fatal: yes/no"
