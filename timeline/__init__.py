"""Durable per-conversation timelines: messages at server-assigned seqs, members' cursors."""

from timeline.memstore import MemoryTimelineStore
from timeline.model import AppendResult, ConvSummary, Entry, NewMessage
from timeline.store import SQLTimelineStore, TimelineStore

__all__ = [
    "AppendResult",
    "ConvSummary",
    "Entry",
    "MemoryTimelineStore",
    "NewMessage",
    "SQLTimelineStore",
    "TimelineStore",
]
