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
- not held up: it runs in the conversation's own serial lane, so other conversations go on;
  the connectors are sent to at once, each send waiting on that link's window (its
  back-pressure) for at most :data:`SEND_WAIT` seconds. A connector that takes longer misses
  the rest of this chat: its devices hear of it by their next listing and Sync (nothing is
  buffered here for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from common.errors import IMError
from common.link import LinkClosed
from proto import im_pb2
from transfer.members import MemberCache

log = logging.getLogger(__name__)

CHUNK_USERS = 500  # users named in one Fanout frame at most
SEND_WAIT = 5.0  # seconds one frame may wait for a connector link's window
FRAME_SLACK = 512  # bytes left for the envelope, the link's header and varints


class FanoutLink(Protocol):
    """What this sends on (common.link.Link)."""

    async def send(self, env: im_pb2.Envelope) -> int: ...


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
        send_wait: float = SEND_WAIT,
    ) -> None:
        self.members = members
        self._lookup = lookup
        self._links = links
        self._max_frame = max_frame
        self._send_wait = send_wait
        self.frames = 0  # Fanout frames sent (for tests and logs)
        self.late = 0  # frames given up on a link that did not take them in time

    async def fan_out(self, chat: im_pb2.ChatMsg, origin: str) -> None:
        """Send the committed (stamped) ``chat`` to its members' connectors."""
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
        await self.send(im_pb2.Fanout(chat=chat), by_node)

    async def send(self, body: im_pb2.Fanout, by_node: Mapping[str, list[str]]) -> None:
        """``body`` to each connector, naming its users, in bounded frames, all at once."""
        budget = max(256, self._max_frame - body.ByteSize() - FRAME_SLACK)
        jobs = []
        for node, users in by_node.items():
            link = self._links.get(node)
            if link is not None and users:
                jobs.append(self._send_to(node, link, body, chunks(users, budget)))
        if jobs:
            await asyncio.gather(*jobs)

    async def _send_to(
        self, node: str, link: FanoutLink, body: im_pb2.Fanout, runs: list[list[str]]
    ) -> None:
        for i, users in enumerate(runs):
            out = im_pb2.Envelope()
            out.fanout.CopyFrom(body)
            out.fanout.users[:] = users
            try:
                await asyncio.wait_for(link.send(out), self._send_wait)
            except LinkClosed:
                return  # that connector re-lists its sessions when it links again
            except TimeoutError:
                self.late += len(runs) - i
                log.warning(
                    "connector %s took no group fanout for %.1fs: %d frames left to its listings",
                    node,
                    self._send_wait,
                    len(runs) - i,
                )
                return
            self.frames += 1
