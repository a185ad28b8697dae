"""What a device is told to catch up: the listing after WELCOME, and the answers to its Syncs.

Both read the timeline through :class:`TimelineReader` (timeline.store.TimelineStore has these
methods) and return frames for the session's outbox; sending them is the shell's business.

- a listing is one ConvState per conversation whose member row changed since ``since_ms``, read
  in pages, then CaughtUp(``started_ms``): the instant the listing began, taken
  by the caller before it read anything, so a change made while it ran is in the next listing;
- a sync reads the head first, then the page after ``from_seq - 1``, and cuts what lies past
  ``min(to_seq, head)``: a chat committed meanwhile (past the head read) is in no answer's range,
  so the SyncDone never claims a seq it did not look at. A page of ``limit`` rows ends its range
  at its last row (the device asks for the rest); a shorter one covers the range to its end, and
  a seq in it that did not come does not exist (retention, never a gap of the timeline's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from common.errors import ProtocolError
from connector.rules import SyncRange
from proto import im_pb2
from timeline.groupsql import MemberSnapshot
from timeline.model import ConvSummary, Entry, Span

LISTING_PAGE = 500  # ConvStates read from the store at a time
# a sync answer carries at most this many bytes of stored chats (and at least one chat): 200
# maximal chats would be ~13 MB held for one device; a cut page ends at its last chat
SYNC_PAGE_BYTES = 1024 * 1024


class TimelineReader(Protocol):
    """The reads the connector makes of the timeline store (timeline.store.TimelineStore)."""

    async def conversations(
        self,
        user_id: str,
        *,
        since_ms: int = 0,
        device_id: str = "",
        limit: int = 500,
        after: tuple[int, str] | None = None,
    ) -> list[ConvSummary]: ...

    async def page(
        self, conv_id: str, *, after: int = 0, before: int = 0, limit: int
    ) -> list[Entry]: ...

    async def head(self, conv_id: str) -> int:
        """The conversation's last seq (0: none yet)."""
        ...


@runtime_checkable
class GroupReader(Protocol):
    """The reads of a group's timeline the connector makes besides (timeline.store
    .TimelineStore has them): pages clipped to a reader's spans, the spans, who may post, and
    the members as of the head. A reader without them serves no group (NOT_MEMBER)."""

    async def page(
        self,
        conv_id: str,
        *,
        after: int = 0,
        before: int = 0,
        limit: int,
        reader: str | None = None,
    ) -> list[Entry]: ...

    async def head(self, conv_id: str) -> int: ...

    async def spans(self, conv_id: str, user_id: str) -> list[Span]: ...

    async def poster(self, conv_id: str, user_id: str) -> int | None: ...

    async def is_member(self, conv_id: str, user_id: str) -> bool: ...

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None: ...


class StoreReader(TimelineReader, GroupReader, Protocol):
    """Everything the connector reads of the timeline store."""

    async def page(
        self,
        conv_id: str,
        *,
        after: int = 0,
        before: int = 0,
        limit: int,
        reader: str | None = None,
    ) -> list[Entry]: ...


def conv_state(s: ConvSummary) -> im_pb2.ConvState:
    """A conversation as the listing tells it to one device; ``min_seq`` is the first seq
    still stored (retention removes prefixes), so a device does not Sync what is gone."""
    return im_pb2.ConvState(
        conv_id=s.conv_id,
        type=s.dest_type,  # type: ignore[arg-type]
        peer_id=s.peer_id,
        last_seq=s.last_seq,
        min_seq=s.min_seq,
        read_seq=s.read_seq,
        device_seq=s.delivered_seq,
        peer_read_seq=s.peer_read_seq,
        peer_delivered_seq=s.peer_delivered_seq,
        unread=s.unread,
    )


async def listing(
    reader: TimelineReader, user_id: str, device_id: str, since_ms: int, started_ms: int
) -> AsyncIterator[list[im_pb2.Envelope]]:
    """The ConvStates of ``user_id``'s conversations changed since ``since_ms``, oldest change
    first, a page of :data:`LISTING_PAGE` at a time (the caller queues each before the next is
    read), then CaughtUp(``started_ms``) alone. Every such conversation is listed however many
    there are: CaughtUp moves the device's ``since`` past them all, so one left out would never
    be listed again."""
    after = (since_ms - 1, "")
    while True:
        rows = await reader.conversations(
            user_id, since_ms=since_ms, device_id=device_id, limit=LISTING_PAGE, after=after
        )
        if rows:
            yield [im_pb2.Envelope(conv_state=conv_state(s)) for s in rows]
            after = (rows[-1].changed, rows[-1].conv_id)
        # what changed after the listing began is in the next one (CaughtUp says since when):
        # conversations kept busy while we page cannot make this listing run on and on
        if len(rows) < LISTING_PAGE or after[0] > started_ms:
            break
    yield [im_pb2.Envelope(caught_up=im_pb2.CaughtUp(since=started_ms))]


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    """The chats of a sync (their stored bytes, stamps included), then its SyncDone."""

    chats: list[bytes]
    done: im_pb2.SyncDone


async def sync_page(reader: TimelineReader, rng: SyncRange) -> SyncAnswer:
    """Answer one Sync of a 1-1 conversation (``rng`` checked by connector.rules.check_sync)."""
    head = await reader.head(rng.conv_id)
    return await _answer(
        rng, head, lambda: reader.page(rng.conv_id, after=rng.from_seq - 1, limit=rng.limit)
    )


async def group_sync_page(reader: GroupReader, rng: SyncRange, user_id: str) -> SyncAnswer:
    """Answer one Sync of a group for ``user_id``: the page holds only the seqs inside their
    spans (the others do not exist for them, so the SyncDone covers the asked range all the
    same), and a former member's head stops at the end of their last span (no answer tells
    them how far the group went on). A user with no span is NOT_MEMBER."""
    spans = await reader.spans(rng.conv_id, user_id)
    if not spans:
        raise ProtocolError(f"you are not in {rng.conv_id}", code=im_pb2.NOT_MEMBER)
    head = await reader.head(rng.conv_id)
    last = spans[-1].to_seq
    if last:
        head = min(head, last)
    return await _answer(
        rng,
        head,
        lambda: reader.page(rng.conv_id, after=rng.from_seq - 1, limit=rng.limit, reader=user_id),
    )


async def _answer(
    rng: SyncRange, head: int, read: Callable[[], Awaitable[list[Entry]]]
) -> SyncAnswer:
    """The chats up to ``head`` of the page ``read`` gives, and the range they cover."""
    upto = head if rng.to_seq == 0 else min(rng.to_seq, head)
    rows: list[Entry] = []
    full = False
    if upto >= rng.from_seq:
        # no `before`: with after 0 the store would answer the newest rows below it
        rows = await read()
        rows = [r for r in rows if rng.from_seq <= r.seq <= upto][: rng.limit]
        full = len(rows) >= rng.limit
        size = 0
        for i, r in enumerate(rows):
            size += len(r.content)
            if size > SYNC_PAGE_BYTES and i > 0:  # the first row goes whatever its size
                rows, full = rows[:i], True
                break
    covered = rows[-1].seq if full else max(upto, rng.from_seq - 1)
    done = im_pb2.SyncDone(
        conv_id=rng.conv_id, from_seq=rng.from_seq, to_seq=covered, last_seq=head
    )
    return SyncAnswer([r.content for r in rows], done)
