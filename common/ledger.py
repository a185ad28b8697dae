"""The message ledger: what the cluster already accepted from a sender, by message id.

Two questions every chat and receipt passes before it counts (docs/security.md, "Ids"):

- :meth:`MessageLedger.claim`, by the connector before a client's chat is forwarded: is this
  id new for its sender, a resend of the same message, or a reuse for other content? The content
  is a digest of the fields that make the message (:func:`chat_digest`); a reuse is refused with
  ``ID_REUSED`` and never SENT. A resend whose SENT was already issued is answered SENT at once
  and goes no further; one still in flight is forwarded again (downstream is idempotent: the
  offline store keeps one row per identity, receipts are deduped below, the receiving library
  drops a copy), so a first copy lost with a crashed server is never SENT and dropped.
- :meth:`MessageLedger.receipt_fate`, by the transfer before it routes a SENT, DELIVERED or
  READ: may this copy go to the sender? A repeat (a second recipient device, a replayed READ) is
  dropped there, but only while an earlier copy is known to have arrived or is still young.
- :meth:`MessageLedger.receipts_arrived`, by the sender's connector when the sender's device
  acked a pushed receipt: from then on every repeat of it is dropped.

Why a receipt is not simply "forwarded once": the first copy can be lost after the transfer let
it go (the link to the sender's connector cut with it unacked and the row stranded in the
store, a bounce with no transfer to take it, a server crash). Recording it as "gone to the
sender" at that point would make every repeat a drop, and the sender would get none at all, so a
record is only "in flight" (with the time it left) until the sender's device acks it, and a
copy that finds it older than ``grace`` seconds goes through (and restarts the clock). The cost
of the rule is a second copy when the first was only slow: the client library drops it. The
grace is below the client library's resend interval, so the first retry after a loss passes.

One record per message, kept ``ttl`` seconds after its last write (``IM_ID_LEDGER_TTL``, 7 days):
the message's digest and the state of each receipt. Redis (``{prefix}mid:{sender}:{id}``, a
hash: ``h`` the digest, ``r:{recipient}:{type}`` per receipt, ``a`` once it arrived, else the
Redis clock when it left) for a cluster; in memory, capped at ``IM_ID_LEDGER_MEMORY`` messages
(oldest forgotten first), for the embedded mode. Each call is one Redis round trip (a pipeline
without MULTI, every command atomic on its own, HSETNX deciding the race; a receipt's fate is
one script, so two copies never both pass). Ledgers that are not shared (a connector and a
transfer each with its own memory) only ever let more copies through, never fewer.
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.config import Settings
from common.errors import BackendError
from common.redisconn import connect
from proto import im_pb2

DEFAULT_TTL = 7 * 24 * 3600.0
DEFAULT_MEMORY = 200_000
DEFAULT_GRACE = 5.0  # below the client library's resend interval (client/core.py, 8 s)


class Verdict(enum.Enum):
    NEW = "new"  # first time: forward it
    RESEND = "resend"  # same message, its SENT not issued yet: forward it again
    DONE = "done"  # same message, SENT already issued: answer SENT, go no further
    REUSED = "reused"  # the id names another message of this sender: refuse


class Fate(enum.Enum):
    FORWARD = "forward"  # the first copy, or the earlier one is overdue: let it go to the sender
    IN_FLIGHT = "in flight"  # an earlier copy left less than ``grace`` ago: drop this one
    ARRIVED = "arrived"  # an earlier copy reached a device of the sender: drop this one


class ReceiptKey(NamedTuple):
    """One receipt of one message: ``recipient``'s ``kind`` of ``sender``'s ``msg_id``."""

    sender: str
    msg_id: int
    recipient: str
    kind: int


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

    async def receipt_fate(self, sender: str, msg_id: int, recipient: str, kind: int) -> Fate:
        """May this copy of ``recipient``'s ``kind`` receipt go to ``sender``? When the answer
        is :attr:`Fate.FORWARD` it is recorded as in flight, from now."""
        ...

    async def receipts_arrived(self, keys: Sequence[ReceiptKey]) -> None:
        """A device of each key's sender acked these receipts: drop their repeats for good."""
        ...

    async def close(self) -> None: ...


Receipts = dict[tuple[str, int], float]


class MemoryLedger:
    """:class:`MessageLedger` in this process: one dict, bounded and expiring."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MEMORY,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if max_entries < 1 or ttl <= 0 or grace < 0:
            raise ValueError("the ledger needs a positive ttl, room for one entry, a grace >= 0")
        self._ttl = ttl
        self._cap = max_entries
        self._grace = grace
        # (sender, id) -> (expiry on the monotonic clock, digest or b"" if only receipts came,
        # (recipient, kind) -> when its last copy left, inf once it arrived); insertion order
        # is age order
        self._entries: OrderedDict[tuple[str, int], tuple[float, bytes, Receipts]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key: tuple[str, int], now: float) -> tuple[bytes, Receipts]:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return b"", {}
        return entry[1], entry[2]

    def _put(self, key: tuple[str, int], digest: bytes, receipts: Receipts) -> None:
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

    async def receipt_fate(self, sender: str, msg_id: int, recipient: str, kind: int) -> Fate:
        key = (sender, msg_id)
        now = time.monotonic()
        stored, receipts = self._get(key, now)
        left = receipts.get((recipient, kind))
        if left is not None:
            if left == math.inf:
                return Fate.ARRIVED
            if now - left < self._grace:
                return Fate.IN_FLIGHT
        self._put(key, stored, {**receipts, (recipient, kind): now})
        return Fate.FORWARD

    async def receipts_arrived(self, keys: Sequence[ReceiptKey]) -> None:
        now = time.monotonic()
        for k in keys:
            key = (k.sender, k.msg_id)
            stored, receipts = self._get(key, now)
            self._put(key, stored, {**receipts, (k.recipient, k.kind): math.inf})

    async def close(self) -> None:
        self._entries.clear()


# A receipt's fate in one step (two copies at once: one passes). KEYS[1] the message's hash;
# ARGV: the receipt's field, the grace in seconds, the ttl. The clock is Redis's own, so
# transfers with skewed clocks agree. A field from before the grace rule ("1") counts as overdue.
_FATE = """
local left = redis.call('HGET', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local fate = 'forward'
if left == 'a' then
  fate = 'arrived'
elseif left and tonumber(left) and now - tonumber(left) < tonumber(ARGV[2]) then
  fate = 'in flight'
end
if fate == 'forward' then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.6f', now))
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return fate
"""


class RedisLedger:
    """:class:`MessageLedger` on Redis, shared by every connector and transfer. Owns
    ``client``: :meth:`close` closes it."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "im:",
        ttl: float = DEFAULT_TTL,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._ttl = max(1, int(ttl))
        self._grace = grace
        self._fate = client.register_script(_FATE)

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

    async def receipt_fate(self, sender: str, msg_id: int, recipient: str, kind: int) -> Fate:
        key = self._key(sender, msg_id)
        try:
            fate = await self._fate(
                keys=[key], args=[f"r:{recipient}:{kind}", self._grace, self._ttl]
            )
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"message ledger: {exc}") from exc
        return Fate(fate.decode() if isinstance(fate, bytes) else fate)

    async def receipts_arrived(self, keys: Sequence[ReceiptKey]) -> None:
        if not keys:
            return
        try:
            pipe = self._r.pipeline(transaction=False)
            for k in keys:
                key = self._key(k.sender, k.msg_id)
                pipe.hset(key, f"r:{k.recipient}:{k.kind}", "a")
                pipe.expire(key, self._ttl)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError("redis", f"message ledger: {exc}") from exc

    async def close(self) -> None:
        await self._r.aclose()


async def open_ledger(settings: Settings) -> MessageLedger:
    """Redis when ``settings.redis_url`` is set (pinged once here), else in memory."""
    if not settings.redis_url:
        return memory_ledger(settings)
    client = await connect(settings.redis_url)
    return RedisLedger(
        client, settings.redis_prefix, settings.id_ledger_ttl, settings.receipt_grace
    )


def memory_ledger(settings: Settings) -> MemoryLedger:
    """A ledger of this process only, sized by ``settings``."""
    return MemoryLedger(settings.id_ledger_ttl, settings.id_ledger_memory, settings.receipt_grace)
