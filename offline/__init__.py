"""Offline messages: the store (save, drain with the has_read CAS of seed §10.2) and the queue
that carries messages for offline users to the writer that stores them.

:func:`create_queue` picks the queue from the settings; the store is
:class:`offline.sqlstore.SQLOfflineStore` on the configured database.
"""

from __future__ import annotations

from common.config import Settings
from offline.amqpqueue import AmqpOfflineQueue
from offline.base import KIND_CHAT, Delivery, OfflineItem, OfflineQueue, OfflineStore
from offline.errors import RejectedError
from offline.memqueue import MemoryOfflineQueue
from offline.sqlstore import SQLOfflineStore
from offline.writer import OfflineWriter

__all__ = [
    "KIND_CHAT",
    "AmqpOfflineQueue",
    "Delivery",
    "MemoryOfflineQueue",
    "OfflineItem",
    "OfflineQueue",
    "OfflineStore",
    "OfflineWriter",
    "RejectedError",
    "SQLOfflineStore",
    "create_queue",
]


async def create_queue(settings: Settings) -> OfflineQueue:
    """RabbitMQ when ``settings.amqp_url`` is set (connected and declared here, so a dead broker
    fails the start with a clear error), else the in-process queue."""
    if settings.amqp_url:
        return await AmqpOfflineQueue.connect(
            settings.amqp_url,
            name=settings.amqp_queue,
            shards=settings.amqp_shards,
            prefetch=settings.amqp_prefetch,
        )
    return MemoryOfflineQueue()
