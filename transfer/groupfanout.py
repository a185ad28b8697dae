"""A committed group chat to every device of the members at its seq, one Fanout per
connector (split so a frame stays bounded), none to anyone else.

Why it is built so:
- exact: the members are those whose spans cover the chat's seq (transfer/members.py), so a
  removed member gets nothing past the removal and a new one everything from the join;
- one copy per connector: the members' devices are looked up in one batched read
  (user_status's RouteCache.lookup_many, a Redis pipeline per 500 users) and each connector
  is sent the chat naming its users, in frames of at most :data:`CHUNK_USERS` users and of
  what the node link's frame limit leaves after the chat; the origin connector always gets
  one naming the sender (its device waits for SENT);
- not held up: it runs in the conversation's own serial lane, so other conversations go on,
  and that lane waits for no connector. It reads the members and their devices, then offers
  each connector its frames through that connector's own bounded outbox
  (transfer/outbox.py), drained by a task per connector on that link's window. A connector
  that cannot keep up falls behind per conversation: it is sent only the newest chat of each
  once it has room, and its devices Sync the seqs in between from the timeline (every chat
  in it is committed before any fan-out). Nothing a slow link does reaches the lane, the
  other connectors or the transfer's serial budget.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from common.errors import IMError
from proto import im_pb2
from transfer.members import MemberCache
from transfer.outbox import (
    MAX_BEHIND,
    MAX_BEHIND_BYTES,
    MAX_BYTES,
    MAX_FRAMES,
    ConnectorOutbox,
    FanoutLink,
)

log = logging.getLogger(__name__)

__all__ = ["CHUNK_USERS", "FRAME_SLACK", "FanoutLink", "GroupFanout", "chunks"]

CHUNK_USERS = 500  # users named in one Fanout frame at most
FRAME_SLACK = 512  # bytes left for the envelope, the link's header and varints


Lookup = Callable[[Sequence[str]], Awaitable[Mapping[str, Mapping[str, str]]]]


def chunks(users: Sequence[str], budget: int, most: int = CHUNK_USERS) -> list[list[str]]:
    """``users`` in runs of at most ``most``, each naming at most ``budget`` bytes of ids
    (a repeated string field costs its length plus a tag and a length varint)."""
    out: list[list[str]] = []
    run: list[str] = []
    size = 0
    for user in users:
        cost = len(user.encode()) + 3
        if run and (len(run) >= most or size + cost > budget):
            out.append(run)
            run, size = [], 0
        run.append(user)
        size += cost
    if run:
        out.append(run)
    return out


class GroupFanout:
    """Fans committed group chats out; one per transfer."""

    def __init__(
        self,
        members: MemberCache,
        lookup: Lookup,
        links: Mapping[str, FanoutLink],
        max_frame: int,
        *,
        max_frames: int = MAX_FRAMES,
        max_bytes: int = MAX_BYTES,
        max_behind: int = MAX_BEHIND,
        max_behind_bytes: int = MAX_BEHIND_BYTES,
    ) -> None:
        self.members = members
        self._lookup = lookup
        self._links = links
        self._max_frame = max_frame
        self._limits = (max_frames, max_bytes, max_behind, max_behind_bytes)
        # one per connector with frames waiting or conversations behind; an idle one is
        # dropped at the next offer, so there are at most as many as linked connectors
        self._outboxes: dict[str, ConnectorOutbox] = {}
        self.frames = 0  # Fanout frames offered to the outboxes (for tests and logs)

    def outbox(self, node: str) -> ConnectorOutbox | None:
        return self._outboxes.get(node)

    async def fan_out(self, chat: im_pb2.ChatMsg, origin: str) -> None:
        """Offer the committed (stamped) ``chat`` to its members' connectors."""
        members = await self.members.members_at(chat.conv_id, chat.seq)
        by_node: dict[str, list[str]] = {}
        try:
            devices = await self._lookup(members) if members else {}
        except IMError as exc:
            log.warning("group fanout of %s/%d: lookups failed: %s", chat.conv_id, chat.seq, exc)
            devices = {}
        for user in members:
            for node in dict.fromkeys(devices.get(user, {}).values()):
                by_node.setdefault(node, []).append(user)
        if origin:
            here = by_node.setdefault(origin, [])
            if chat.from_id not in here:
                here.append(chat.from_id)
        self.send(im_pb2.Fanout(chat=chat), by_node, origin=origin)

    def send(
        self, body: im_pb2.Fanout, by_node: Mapping[str, list[str]], *, origin: str = ""
    ) -> None:
        """``body`` to each linked connector, naming its users, in bounded frames, through
        that connector's outbox; waits for none of them."""
        budget = max(256, self._max_frame - body.ByteSize() - FRAME_SLACK)
        for node in [n for n, box in self._outboxes.items() if box.idle and n not in by_node]:
            del self._outboxes[node]
        for node, users in by_node.items():
            if node not in self._links or not users:
                continue  # not linked to us: it lists its sessions again when it links
            box = self._outboxes.get(node)
            if box is None:
                frames, size, behind, behind_size = self._limits
                box = self._outboxes[node] = ConnectorOutbox(
                    node,
                    self._links,
                    max_frames=frames,
                    max_bytes=size,
                    max_behind=behind,
                    max_behind_bytes=behind_size,
                )
            runs = chunks(users, budget)
            self.frames += len(runs)
            box.offer(body, runs, sender=body.chat.from_id if node == origin else "")

    async def close(self) -> None:
        """Stop every connector's sending (the transfer is stopping)."""
        boxes = list(self._outboxes.values())
        self._outboxes.clear()
        for box in boxes:
            await box.close()
