"""Durable per-conversation timelines (issue 13): messages at server-assigned seqs, members'
cursors; the store, the write queue, the writer."""

from __future__ import annotations

from common.config import Settings
from timeline.amqpqueue import AmqpTimelineQueue
from timeline.memqueue import MemoryTimelineQueue
from timeline.memstore import MemoryTimelineStore
from timeline.model import (
    AppendResult,
    ConvSummary,
    CursorMove,
    CursorResult,
    Entry,
    NewMessage,
)
from timeline.queue import TimelineQueue
from timeline.store import SQLTimelineStore, TimelineStore
from timeline.writer import TimelineWriter

__all__ = [
    "AmqpTimelineQueue",
    "AppendResult",
    "ConvSummary",
    "CursorMove",
    "CursorResult",
    "Entry",
    "MemoryTimelineQueue",
    "MemoryTimelineStore",
    "NewMessage",
    "SQLTimelineStore",
    "TimelineQueue",
    "TimelineStore",
    "TimelineWriter",
    "create_queue",
]


async def create_queue(settings: Settings) -> TimelineQueue:
    """RabbitMQ when ``settings.amqp_url`` is set (connected and declared here, so a dead broker
    fails the start with a clear error), else the in-process queue."""
    if settings.amqp_url:
        return await AmqpTimelineQueue.connect(
            settings.amqp_url,
            name=settings.timeline_queue(),
            shards=settings.amqp_shards,
            prefetch=settings.amqp_prefetch,
        )
    return MemoryTimelineQueue()
