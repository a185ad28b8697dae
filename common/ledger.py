"""The message ledger: what the cluster already accepted from a sender, by message id.

Two questions every chat and receipt passes before it counts (docs/security.md, "Ids"):

- :meth:`MessageLedger.claim`, by the connector before a client's chat is forwarded: is this
  id new for its sender, a resend of the same message, or a reuse for other content? The content
  is a digest of the fields that make the message (:func:`chat_digest`); a reuse is refused with
  ``ID_REUSED`` and never SENT. A resend whose SENT was already issued is answered SENT at once
  and goes no further; one still in flight is forwarded again (downstream is idempotent: the
  offline store keeps one row per identity, receipts are deduped below, the receiving library
  drops a copy), so a first copy lost with a crashed server is never SENT and dropped.
- :meth:`MessageLedger.first_receipt`, by the transfer before it routes a SENT, DELIVERED or
  READ: has this receipt of this message already gone to the sender? A repeat (a second
  recipient device, a replayed READ) is dropped there.

One record per message, kept ``ttl`` seconds after its last write (``IM_ID_LEDGER_TTL``, 7 days):
the message's digest and the receipts forwarded. Redis (``{prefix}mid:{sender}:{id}``, a hash:
``h`` the digest, ``r:{recipient}:{type}`` per receipt) for a cluster; in memory, capped at
``IM_ID_LEDGER_MEMORY`` messages (oldest forgotten first), for the embedded mode. Each call is
one Redis round trip (a pipeline without MULTI: every command in it is atomic on its own, and
HSETNX decides the race).
"""

from __future__ import annotations

import enum
import hashlib
import struct
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.config import Settings
from common.errors import BackendError
from common.redisconn import connect
from proto import im_pb2

DEFAULT_TTL = 7 * 24 * 3600.0
DEFAULT_MEMORY = 200_000


class Verdict(enum.Enum):
    NEW = "new"  # first time: forward it
    RESEND = "resend"  # same message, its SENT not issued yet: forward it again
    DONE = "done"  # same message, SENT already issued: answer SENT, go no further
    REUSED = "reused"  # the id names another message of this sender: refuse


def chat_digest(chat: im_pb2.ChatMsg) -> bytes:
    """16 bytes naming what a chat says and to whom: destination, types, body and file
    reference. Not the stream fields (a resend carries a newer floor) nor server stamps."""
    h = hashlib.blake2b(digest_size=16, person=b"im chat v1")
    for part in (
        chat.dest_id.encode(),
        struct.pack(">IIQ", chat.dest_type, chat.msg_type, chat.file.size),
        chat.file.id.encode(),
        chat.file.checksum.encode(),
        bytes(chat.body),
    ):
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    return h.digest()


class MessageLedger(Protocol):
    async def claim(self, sender: str, msg_id: int, dest: str, digest: bytes) -> Verdict:
        """Record ``digest`` for ``(sender, msg_id)`` if the id is new; the verdict either way.
        ``dest``: the chat's recipient, whose SENT makes a resend :attr:`Verdict.DONE`."""
        ...

    async def first_receipt(self, sender: str, msg_id: int, recipient: str, kind: int) -> bool:
        """True (and recorded) if no ``kind`` receipt of ``recipient`` for this message went
        to ``sender`` before."""
        ...

    async def close(self) -> None: ...


class MemoryLedger:
    """:class:`MessageLedger` in this process: one dict, bounded and expiring."""

    def __init__(self, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MEMORY) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("the ledger needs a positive ttl and room for one entry")
        self._ttl = ttl
        self._cap = max_entries
        # (sender, id) -> (expiry on the monotonic clock, digest or b"" if only receipts came,
        # receipts forwarded); insertion order is age order
        self._entries: OrderedDict[tuple[str, int], tuple[float, bytes, set[tuple[str, int]]]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key: tuple[str, int], now: float) -> tuple[bytes, set[tuple[str, int]]]:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return b"", set()
        return entry[1], entry[2]

    def _put(self, key: tuple[str, int], digest: bytes, receipts: set[tuple[str, int]]) -> None:
        now = time.monotonic()
        self._entries[key] = (now + self._ttl, digest, receipts)
        self._entries.move_to_end(key)
        while self._entries:
            first, (expiry, _, _) = next(iter(self._entries.items()))
            if expiry > now and len(self._entries) <= self._cap:
                break
            del self._entries[first]

    async def claim(self, sender: str, msg_id: int, dest: str, digest: bytes) -> Verdict:
        key = (sender, msg_id)
        stored, receipts = self._get(key, time.monotonic())
        if not stored:
            self._put(key, digest, receipts)
            return Verdict.NEW
        if stored != digest:
            return Verdict.REUSED
        return Verdict.DONE if (dest, im_pb2.SENT) in receipts else Verdict.RESEND

    async def first_receipt(self, sender: str, msg_id: int, recipient: str, kind: int) -> bool:
        key = (sender, msg_id)
        stored, receipts = self._get(key, time.monotonic())
        if (recipient, kind) in receipts:
            return False
        self._put(key, stored, {*receipts, (recipient, kind)})
        return True

    async def close(self) -> None:
        self._entries.clear()


class RedisLedger:
    """:class:`MessageLedger` on Redis, shared by every connector and transfer. Owns
    ``client``: :meth:`close` closes it."""

    def __init__(self, client: aioredis.Redis, prefix: str = "im:", ttl: float = DEFAULT_TTL):
        self._r = client
        self._prefix = prefix
        self._ttl = max(1, int(ttl))

    def _key(self, sender: str, msg_id: int) -> str:
        return f"{self._prefix}mid:{sender}:{msg_id}"

    async def claim(self, sender: str, msg_id: int, dest: str, digest: bytes) -> Verdict:
        key = self._key(sender, msg_id)
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.hsetnx(key, "h", digest)
            pipe.hget(key, "h")
            pipe.hexists(key, f"r:{dest}:{im_pb2.SENT}")
            pipe.expire(key, self._ttl)
            created, stored, sent, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"message ledger: {exc}") from exc
        if created:
            return Verdict.NEW
        if stored is None:  # expired between the two commands: forwarding again is safe
            return Verdict.RESEND
        if stored != digest:
            return Verdict.REUSED
        return Verdict.DONE if sent else Verdict.RESEND

    async def first_receipt(self, sender: str, msg_id: int, recipient: str, kind: int) -> bool:
        key = self._key(sender, msg_id)
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.hsetnx(key, f"r:{recipient}:{kind}", 1)
            pipe.expire(key, self._ttl)
            first, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"message ledger: {exc}") from exc
        return bool(first)

    async def close(self) -> None:
        await self._r.aclose()


async def open_ledger(settings: Settings) -> MessageLedger:
    """Redis when ``settings.redis_url`` is set (pinged once here), else in memory."""
    if not settings.redis_url:
        return MemoryLedger(settings.id_ledger_ttl, settings.id_ledger_memory)
    client = await connect(settings.redis_url)
    return RedisLedger(client, settings.redis_prefix, settings.id_ledger_ttl)
