"""What the offline queue and the timeline queue share on RabbitMQ: sharded quorum queues with
one active consumer each and a dead-letter queue, confirmed publishes, acks and dead letters
with the driver's errors turned into ``BackendError("rabbitmq", ...)``.

One place for these rules, so both queues keep them alike:
- a shard is a durable quorum queue with ``x-single-active-consumer`` (one writer at a time
  takes a shard, so its messages are handled in publish order) that dead-letters to
  ``<name>.dead``;
- a publish returns only once the broker confirmed it, within ``PUBLISH_TIMEOUT``; a nack
  renews the channel (it may be stuck), and every failure is a ``BackendError`` the caller
  retries or hands back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from common import amqpconn
from common.errors import BackendError

SERVICE = "rabbitmq"
# a closed channel or connection raises ChannelInvalidStateError / RuntimeError, not AMQPError
AMQP_ERRORS = (aiormq.exceptions.AMQPError, RuntimeError, OSError)
PUBLISH_TIMEOUT = 10.0
_QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}

T = TypeVar("T")


def dead_letter_queue(name: str) -> str:
    return f"{name}.dead"


async def declare_shards(
    channel: AbstractRobustChannel, name: str, shards: int
) -> list[AbstractQueue]:
    """Declare ``<name>.0`` .. ``<name>.<shards-1>`` and ``<name>.dead`` (idempotent)."""
    dead = dead_letter_queue(name)
    await channel.declare_queue(dead, durable=True, arguments=_QUORUM)
    args = {
        **_QUORUM,
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead,
    }
    return [
        await channel.declare_queue(f"{name}.{i}", durable=True, arguments=args)
        for i in range(shards)
    ]


async def publish_confirmed(
    channel: AbstractRobustChannel, message: aio_pika.Message, routing_key: str
) -> None:
    """Publish ``message`` (mandatory: a missing queue is an error) and wait for the confirm."""
    try:
        await asyncio.wait_for(
            channel.default_exchange.publish(message, routing_key=routing_key, mandatory=True),
            PUBLISH_TIMEOUT,
        )
    except TimeoutError:
        raise BackendError(SERVICE, f"no confirm within {PUBLISH_TIMEOUT:.0f}s") from None
    except aio_pika.exceptions.DeliveryError as exc:  # nacked: the channel may be stuck
        await amqpconn.renew_channel(channel)
        raise BackendError(SERVICE, f"publish: {exc}") from exc
    except AMQP_ERRORS as exc:
        raise BackendError(SERVICE, f"publish: {exc}") from exc


async def ack(message: AbstractIncomingMessage) -> None:
    try:
        await message.ack()
    except AMQP_ERRORS as exc:
        raise BackendError(SERVICE, f"ack: {exc}") from exc


async def dead_letter(
    message: AbstractIncomingMessage, reason: str, logger: logging.Logger, what: str
) -> None:
    """Reject without requeue: the message goes to the dead-letter queue, with a log line."""
    logger.error("%s queue message dead-lettered: %s", what, reason)
    try:
        await message.reject(requeue=False)
    except AMQP_ERRORS as exc:
        raise BackendError(SERVICE, f"reject: {exc}") from exc


async def batches(
    inbox: asyncio.Queue[T],
    max_batch: int,
    max_items: int,
    items_of: Callable[[T], int],
    closed: Callable[[], bool],
) -> AsyncIterator[list[T]]:
    """What the consumers put in ``inbox``, in batches for a writer: the first delivery waited
    for, then whatever else has arrived, up to ``max_batch`` deliveries and ``max_items`` items
    (``items_of`` counts a delivery's). Ends once ``closed()`` says so."""
    while not closed():
        first = await inbox.get()
        batch = [first]
        count = items_of(first)
        while not inbox.empty() and len(batch) < max_batch and count < max_items:
            nxt = inbox.get_nowait()
            batch.append(nxt)
            count += items_of(nxt)
        yield batch
