"""How long the writer takes to merge a burst of DELIVERED cursors (a device coming back to many
conversations), on a real database: ``python -m timeline.cursor_bench mysql://root@host/db``.

Each of ``--convs`` pair conversations gets one message, then the recipient's device sends one
DELIVERED cursor for each: the first write moves every cursor, the second is all repeats (what a
client that resends its cursors costs). The database's timeline tables are dropped first: point
it at a scratch database only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from common.db import create_database, open_database
from proto import im_pb2
from timeline.model import new_message, pair_conv_id
from timeline.queue import BATCH_ITEMS
from timeline.store import SQLTimelineStore
from timeline.writer import TimelineWriter


class _Delivery:
    """A delivery that keeps its answers (no queue in between: the writer alone is timed)."""

    def __init__(self, records: Sequence[im_pb2.TimelineRecord]) -> None:
        self.records = records
        self.answers: list[im_pb2.Committed] = []

    async def answer(self, answers: Sequence[im_pb2.Committed]) -> None:
        self.answers = list(answers)

    async def reject(self, reason: str) -> None:
        raise AssertionError(reason)


def _cursors(convs: int) -> list[im_pb2.TimelineRecord]:
    return [
        im_pb2.TimelineRecord(
            cursor=im_pb2.Cursor(
                conv_id=pair_conv_id(f"a{i}", f"b{i}"),
                user_id=f"b{i}",
                type=im_pb2.DELIVERED,
                seq=1,
            ),
            device_id="phone",
            origin="bench",
        )
        for i in range(convs)
    ]


async def _write(writer: TimelineWriter, records: list[im_pb2.TimelineRecord]) -> float:
    deliveries = [
        _Delivery(records[i : i + BATCH_ITEMS]) for i in range(0, len(records), BATCH_ITEMS)
    ]
    began = time.perf_counter()
    await writer.write(deliveries)
    took = time.perf_counter() - began
    moved = sum(1 for d in deliveries for a in d.answers if getattr(a, "moved", False))
    refused = sum(1 for d in deliveries for a in d.answers if a.refused)
    print(f"  {len(records)} cursors in {took * 1000:.0f} ms (moved {moved}, refused {refused})")
    return took


async def main(url: str, convs: int) -> None:
    await create_database(url)
    db = await open_database(url)
    try:
        scratch = ("im_tl_device", "im_tl_member", "im_tl_message", "im_tl_conv")
        for table in (*scratch, "im_schema_version"):
            await db.execute(f"DROP TABLE IF EXISTS {table}")
        store = SQLTimelineStore(db)
        await store.migrate()
        chats = [
            new_message(
                im_pb2.ChatMsg(
                    id=i + 1,
                    from_id=f"a{i}",
                    dest_id=f"b{i}",
                    dest_type=im_pb2.SINGLE,
                    msg_type=im_pb2.TEXT,
                    body=b"x",
                )
            )
            for i in range(convs)
        ]
        for i in range(0, convs, BATCH_ITEMS):
            await store.append(chats[i : i + BATCH_ITEMS])
        writer = TimelineWriter(None, store)  # type: ignore[arg-type]  # write() needs no queue
        print(f"{db.label}: {convs} DELIVERED cursors, one per conversation")
        print("first merge (every cursor moves):")
        await _write(writer, _cursors(convs))
        print("again (all repeats):")
        await _write(writer, _cursors(convs))
    finally:
        await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--convs", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.convs))
