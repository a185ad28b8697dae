"""Offline seams: the item, the store, the queue.

An :class:`OfflineItem` is one chat or receipt waiting for a user who is offline. Its identity is
``(to_user_id, from_id, msg_id, kind)``; the store keeps one row per identity, so a queue message
delivered twice is stored once (DESIGN.md §7). ``content`` is the serialized ``ChatMsg`` or
``AckMsg`` as it came off the wire: the body inside is sealed, the store never opens it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proto import im_pb2

# kind: 0 for a chat, else the AckType of a receipt (1 SENT, 2 DELIVERED, 3 READ)
KIND_CHAT = 0


@dataclass(frozen=True, slots=True)
class OfflineItem:
    to_user_id: str
    from_id: str
    msg_id: int  # the chat's id, or for a receipt the id of the message it acknowledges
    kind: int
    content: bytes
    # True when a connector hands back a message it could not deliver: if the row exists and was
    # already claimed by a drain, it is armed again instead of being ignored as a duplicate.
    rearm: bool = False
    # the store's row, for items a drain returned: what mark_delivered names
    row_id: int = field(default=0, compare=False)

    @classmethod
    def of_chat(cls, chat: im_pb2.ChatMsg, *, rearm: bool = False) -> OfflineItem:
        return cls(chat.dest_id, chat.from_id, chat.id, KIND_CHAT, chat.SerializeToString(), rearm)

    @classmethod
    def of_ack(cls, ack: im_pb2.AckMsg, *, rearm: bool = False) -> OfflineItem:
        return cls(
            ack.dest_id,
            ack.from_id,
            ack.ack_msg_id,
            int(ack.ack_type),
            ack.SerializeToString(),
            rearm,
        )

    def envelope(self) -> im_pb2.Envelope:
        """The item as a windowed frame body, ready to push to a device."""
        env = im_pb2.Envelope()
        if self.kind == KIND_CHAT:
            env.chat.ParseFromString(self.content)
        else:
            env.ack.ParseFromString(self.content)
        return env


class OfflineStore(Protocol):
    async def migrate(self) -> None:
        """Create or upgrade the ``im_offline`` table; safe to run twice."""
        ...

    async def save(self, items: Sequence[OfflineItem]) -> Sequence[OfflineItem]:
        """Store items in one transaction; an identity already stored is not stored again.
        Returns the chats refused because their identity holds another message (same sender
        and id, other content): a reused id, which must not be answered SENT."""
        ...

    async def drain(
        self,
        user_id: str,
        limit: int = 1000,
        *,
        device: str = "",
        session: str = "",
        lease: float = 0.0,
    ) -> list[OfflineItem]:
        """Claim and return the user's unread items, oldest first.

        Each row is claimed with the has_read CAS (``UPDATE ... SET has_read=1 WHERE id=? AND
        has_read=0``): when two devices drain at once, each row goes to exactly one of them.
        Returns at most ``limit`` items; call again until it returns fewer.
        """
        ...

    async def mark_delivered(self, row_ids: Sequence[int]) -> None:
        """These drained rows reached a device (its link ack): never push them again."""
        ...

    async def count_unread(self, user_id: str) -> int: ...


class Delivery(Protocol):
    """One queue message handed to the writer; ack only after the rows are committed."""

    items: Sequence[OfflineItem]

    async def ack(self) -> None: ...

    async def reject(self, reason: str) -> None:
        """The message can't be stored (unparseable): drop it from the queue, tell the sender."""
        ...


class OfflineQueue(Protocol):
    # True when publish returns only after the writer committed the rows (in-process queue);
    # False when the broker's confirm comes first and the writer asks for drains itself after
    # its commit (a drain asked for at publish time would find nothing yet)
    stored_on_publish: bool

    async def publish(self, items: Sequence[OfflineItem]) -> None:
        """Return once the items are durable (queue confirm, or committed by the writer)."""
        ...

    def deliveries(self, max_batch: int) -> AsyncIterator[list[Delivery]]:
        """Batches of up to ``max_batch`` waiting deliveries, for the writer."""
        ...

    async def close(self) -> None: ...
