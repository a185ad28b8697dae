"""The ``writes`` scenario of ``im bench``: the durable write path alone, at its own limit.

What it measures: how many chats per second the timeline's write path commits, from the queue
in (RabbitMQ, persistent messages, publisher confirms) through the writer into MySQL and the
writer's answer back, when the senders are not the limit. The bench process plays the part of
the transfers: it submits records the way a transfer does (``transfer.commits.CommitBatcher``,
the records of one loop turn in one submit), for ``conversations`` pair conversations with
``window`` chats in flight in each, and a chat is done when the writer's answer is back, the
moment a transfer would fan it out and the sender get its SENT.

Why not through the connectors: on this two-core machine the end-to-end path is limited by the
per-message work of the connectors and the transfer long before the writer (see
docs/performance.md); this scenario isolates the part that has to be durable. The chats are the
protocol's own: ids in a device slot, sealed-size bodies, ``after_id`` naming the newest earlier
chat of the conversation still without an answer (as the client library sets it), so the writer
does every check it does for a real sender. A chat refused or left without an answer is an
error: nothing is resent, so any loss shows.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from common.convid import pair_conv_id
from common.ids import MessageIdGen
from proto import im_pb2
from timeline.amqpqueue import AmqpTimelineQueue
from transfer.commits import CommitBatcher
from workload.benchload import Flow, Probe, SendFn, Stats, drive

BODY = bytes(52)  # what a sealed 24-character text is on the wire (nonce + tag + text)
SLOT = 7  # the id slot of the one device each sender stands for


def _conversation(
    batcher: CommitBatcher, flow: Flow, sender: str, receiver: str, ids: Callable[[], int]
) -> SendFn:
    """One conversation's sender: each call submits the next chat, naming its predecessor."""
    conv = pair_conv_id(sender, receiver)
    unanswered: list[int] = []  # in send order; at most the window

    def answered(msg_id: int) -> Callable[[object], None]:
        def done(future: object) -> None:
            unanswered.remove(msg_id)
            got = future.result()  # type: ignore[attr-defined]
            if got is None:
                flow.stats.error("no answer from the write path")
            elif got.refused:
                flow.stats.error(f"refused: {im_pb2.ErrorCode.Name(got.refused)}")
            else:
                flow.receipt("SENT", msg_id)

        return done

    async def send() -> int:
        msg_id = ids()
        chat = im_pb2.ChatMsg(
            id=msg_id, from_id=sender, dest_id=receiver, dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT, body=BODY, create_time=1, conv_id=conv,
            after_id=unanswered[-1] if unanswered else 0,
        )  # fmt: skip
        unanswered.append(msg_id)
        batcher.add(im_pb2.TimelineRecord(origin="bench", chat=chat)).add_done_callback(
            answered(msg_id)
        )
        return msg_id

    return send


async def writes(
    amqp_url: str,
    queue_name: str,
    shards: int,
    prefix: str,
    *,
    conversations: int,
    window: int,
    warmup: float,
    duration: float,
    progress: bool,
    probe: Probe | None = None,
) -> dict[str, object]:
    """``conversations`` senders, ``window`` chats in flight each, into the target's queue."""
    queue = await AmqpTimelineQueue.connect(amqp_url, name=queue_name, shards=shards)
    try:
        batcher = CommitBatcher(queue, "bench writes")
        stats = Stats(final="SENT")
        run = f"{prefix}{os.getpid() % 1000:03d}"
        load: list[tuple[Flow, Callable[[], Awaitable[int]]]] = []
        for i in range(conversations):
            flow = Flow(stats)
            ids = MessageIdGen(SLOT)
            load.append(
                (flow, _conversation(batcher, flow, f"{run}-w{i:05d}", f"{run}-v{i:05d}", ids))
            )
        result = await drive(
            load, window=window, rate=0.0, warmup=warmup, duration=duration,
            settle=max(10.0, 2 * warmup), label="writes", progress=progress, probe=probe,
        )  # fmt: skip
        batches = batcher.batches
        await batcher.close()
    finally:
        await queue.close()
    config = {
        "conversations": conversations,
        "window": window,
        "shards": shards,
        "submits": batches,
        "path": "RabbitMQ (persistent, confirmed) -> writer -> MySQL -> answer",
    }
    return {"scenario": "writes", "mode": "closed", **result, "config": config}
