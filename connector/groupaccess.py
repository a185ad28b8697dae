"""Who may post in or read a group, as the connector sees it: a small, short-lived cache over
the timeline store's spans.

The connector checks a group chat before forwarding it (so a stranger's chats cost no commit)
and a group cursor before it reaches a transfer. The answer may be up to :data:`TTL` seconds
old, and that is safe: the writer checks every group chat again at commit, inside the append's
transaction (timeline/store.py ``post_refusal``), and the store clips cursors to the user's
spans. A stale "yes" costs the sender a refusal from the writer, never a message where it
must not go; a stale "no" costs a retry a second later. Bounded: at most :data:`SIZE` entries,
least recently used out first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from common.errors import IMError, ProtocolError
from proto import im_pb2

TTL = 1.0  # seconds an answer is reused
SIZE = 50_000  # (group, user) answers kept


class SpanReader(Protocol):
    """The reads this needs of the timeline store (timeline.store.TimelineStore)."""

    async def poster(self, conv_id: str, user_id: str) -> int | None: ...

    async def is_member(self, conv_id: str, user_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Answer:
    until: float  # monotonic time the answer expires
    muted_until: int | None  # the open span's mute (ms); None: no open span
    reader: bool  # has any span (may read, move cursors)


class GroupAccess:
    """Cached answers to "may this user post / read in this group now"."""

    def __init__(
        self,
        store: SpanReader,
        *,
        ttl: float = TTL,
        size: int = SIZE,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._size = max(1, size)
        self._clock = clock
        self._wall_ms = wall_ms
        self._answers: OrderedDict[tuple[str, str], _Answer] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._answers)

    def forget_group(self, conv_id: str) -> None:
        """A membership change in ``conv_id`` (a notice): its cached answers go, so a user just
        let in or unmuted is not refused for good on a cached "no" (the library takes
        NOT_MEMBER and MUTED as final). Rare, so a scan of the bounded cache is fine."""
        for key in [k for k in self._answers if k[0] == conv_id]:
            del self._answers[key]

    async def _answer(self, conv_id: str, user_id: str) -> _Answer:
        key = (conv_id, user_id)
        now = self._clock()
        held = self._answers.get(key)
        if held is not None and held.until > now:
            self._answers.move_to_end(key)
            self.hits += 1
            return held
        self.misses += 1
        try:
            muted = await self._store.poster(conv_id, user_id)
            reader = muted is not None or await self._store.is_member(conv_id, user_id)
        except IMError as exc:
            raise ProtocolError(
                f"group membership unavailable, retry later ({exc})", code=im_pb2.INTERNAL
            ) from None
        answer = _Answer(now + self._ttl, muted, reader)
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)
        return answer

    async def check_post(self, conv_id: str, user_id: str) -> None:
        """NOT_MEMBER without an open span, MUTED while the mute runs (both not fatal)."""
        answer = await self._answer(conv_id, user_id)
        if answer.muted_until is None:
            raise ProtocolError(f"you are not a member of {conv_id}", code=im_pb2.NOT_MEMBER)
        if answer.muted_until > self._wall_ms():
            raise ProtocolError(f"you are muted in {conv_id}", code=im_pb2.MUTED)

    async def check_reader(self, conv_id: str, user_id: str) -> None:
        """NOT_MEMBER for a user with no span at all (members now or once may read)."""
        if not (await self._answer(conv_id, user_id)).reader:
            raise ProtocolError(f"you are not in {conv_id}", code=im_pb2.NOT_MEMBER)


def is_group_conv(conv_id: str) -> bool:
    return conv_id.startswith("g:")
