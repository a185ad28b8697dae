"""The timeline write queue against a three-node RabbitMQ cluster in test hosts, through a node
kill.

From the ``client`` host, submitters (as transfers) and a consumer that answers every record (as
a writer) use ``IM_AMQP_URL``'s list form (:mod:`common.amqpconn`) on the app's quorum queues.
The node both are connected to is SIGKILLed mid-stream: every record whose submit was answered
was consumed, every record submitted again after a failure (as a client resends until SENT) is
answered in the end, both sides carry on through another node, and a process that starts while
the first node of its list is down connects to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable

import pytest

from common import amqpconn
from common.errors import BackendError
from proto import im_pb2
from testbed.netns import Testbed
from testbed.rabbit import RabbitCluster
from timeline.amqpqueue import AmqpTimelineQueue

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

PUBLISHERS = 4
BEFORE, AFTER = 150, 150  # answered records before the kill, and after it
PACE = 0.005  # seconds between one publisher's messages: the stream must outlast the failover


async def poll(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not done within {timeout:g} s"
        await asyncio.sleep(0.02)


def node_of(queue: AmqpTimelineQueue) -> str | None:
    """The address of the node the queue's connection is on now."""
    connection = queue._connection
    assert isinstance(connection, amqpconn.NodeRingConnection)
    return connection.url.host


def chat(msg_id: int) -> im_pb2.TimelineRecord:
    dest = f"bob{msg_id % 7}"
    return im_pb2.TimelineRecord(
        chat=im_pb2.ChatMsg(
            id=msg_id,
            from_id="alice",
            dest_id=dest,
            body=b"s",
            msg_type=im_pb2.TEXT,
            conv_id=f"p:alice:{dest}",
        )
    )


async def test_no_confirmed_message_is_lost_when_a_node_dies(
    bed: Testbed, rabbit: RabbitCluster
) -> None:
    name = f"imtest.{secrets.token_hex(4)}"
    url = rabbit.url()  # app1 first: both sides start on app1, the node that will die
    victim = "app1"
    confirmed: set[int] = set()
    consumed: list[int] = []
    errors = {"publish": 0, "ack": 0}
    confirmed_at: dict[int, float] = {}
    consumed_at: list[float] = []
    stop = asyncio.Event()
    try:
        with bed.inside("client"):
            pub = await AmqpTimelineQueue.connect(url, name=name, shards=2, prefetch=32)
            sub = await AmqpTimelineQueue.connect(url, name=name, shards=2, prefetch=32)
            members = await asyncio.to_thread(rabbit.quorum_members, "app2", f"{name}.0")
            assert members == ["app1", "app2", "app3"], members
            assert node_of(pub) == node_of(sub) == bed[victim].addr
            ids = iter(range(1, 1_000_000))

            async def publisher() -> None:
                while not stop.is_set():
                    msg_id = next(ids)
                    while True:  # as a client resends until SENT: same id, again
                        try:
                            (answer,) = await pub.submit([chat(msg_id)], timeout=5.0)
                            assert answer.chat.id == msg_id
                            break
                        except BackendError:
                            errors["publish"] += 1
                            await asyncio.sleep(0.1)
                    confirmed.add(msg_id)
                    confirmed_at[msg_id] = time.monotonic()
                    await asyncio.sleep(PACE)

            async def consumer() -> None:
                async for batch in sub.deliveries(64):
                    for delivery in batch:
                        consumed.extend(r.chat.id for r in delivery.records)
                        consumed_at.append(time.monotonic())
                        answers = [im_pb2.Committed(chat=r.chat) for r in delivery.records]
                        try:
                            await delivery.answer(answers)
                        except BackendError:
                            errors["ack"] += 1  # its channel died: it will be redelivered

            def confirmed_since(t: float) -> int:
                return sum(1 for when in confirmed_at.values() if when > t)

            consuming = asyncio.create_task(consumer())
            publishing = [asyncio.create_task(publisher()) for _ in range(PUBLISHERS)]
            try:
                await poll(lambda: len(confirmed) >= BEFORE, 30, "submitting")
                await asyncio.to_thread(rabbit.kill, victim)
                dead_at = time.monotonic()
                await poll(lambda: confirmed_since(dead_at) >= AFTER, 60, "submitting again")
                stop.set()
                await asyncio.wait_for(asyncio.gather(*publishing), 30)
                assert confirmed <= set(consumed), "answered but never consumed"
            finally:
                stop.set()
                consuming.cancel()
                for task in publishing:
                    task.cancel()
                await asyncio.gather(consuming, *publishing, return_exceptions=True)
                # both moved off the dead node, to a live one
                assert node_of(pub) != bed[victim].addr
                assert node_of(sub) != bed[victim].addr
                await pub.close()
                await sub.close()
            assert errors["publish"] > 0, "the kill never reached the submitters"
            # a process starting now, with the first node of its list down, takes the next
            late = await amqpconn.connect(url)
            try:
                assert isinstance(late, amqpconn.NodeRingConnection)
                assert late.url.host == bed["app2"].addr
            finally:
                await late.close()
            duplicates = len(consumed) - len(set(consumed))
            publish_back = min(t for t in confirmed_at.values() if t > dead_at) - dead_at
            consume_back = min(t for t in consumed_at if t > dead_at) - dead_at
            print(
                f"rabbitmq node kill: answers back after {publish_back:.1f} s, consuming after "
                f"{consume_back:.1f} s; {len(confirmed)} answered, all consumed; "
                f"{errors['publish']} submit errors, {errors['ack']} lost answers, "
                f"{duplicates} redelivered"
            )
    finally:
        with bed.inside("client"), contextlib.suppress(BackendError, *amqpconn._ERRORS):
            conn = await amqpconn.connect(rabbit.url(["app2", "app3", "app1"]))
            channel = await conn.channel()
            for suffix in ("0", "1", "dead"):
                await channel.queue_delete(f"{name}.{suffix}")
            await conn.close()
        await asyncio.to_thread(rabbit.ensure_up)


async def test_first_connect_names_every_node_when_none_answers(bed: Testbed) -> None:
    with bed.inside("client"):
        dead = ",".join(f"amqp://im:x@{bed[h].addr}:5999/" for h in ("app1", "app2"))
        with pytest.raises(BackendError) as err:
            await amqpconn.connect(dead, timeout=2)
    assert err.value.service == "rabbitmq"
    assert bed["app1"].addr in str(err.value) and bed["app2"].addr in str(err.value)
