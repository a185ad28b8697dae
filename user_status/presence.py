"""Presence: whether a user is online (any device), or when the last device left, told to the
user's friends only, never across a block, and not at all for a user who hides it.

Why it is built so:
- the truth is the device table (``user_status``: user -> {device: connector}); presence is only
  "that table has a device of the user". What this adds is the last state told, per user, so a
  change is told once however many devices come and go: ``{prefix}presence:{user}`` in Redis
  (``1`` online, ``0:<ms>`` offline since ms; 30 days, then unknown), a dict in ``im up``. The
  swap is one Lua call, so two devices coming up at once on two connectors tell it once;
- a change is published once, by the process that saw it, with its audience already worked out
  from the database (friends, minus blocks either way), on one pub/sub channel
  ``{prefix}presence`` (in-process for ``im up``); every connector pushes it to the devices it
  holds of the users named, so no connector asks the database for someone else's change;
- hiding is the user's setting (``im_user.presence``, written by REST: rest_web/privacy.py):
  hidden looks exactly like offline with no last seen, to everyone; switching it is told like
  a change;
- bounded: an audience is at most :data:`MAX_AUDIENCE` friends, sent in messages of at most
  :data:`CHUNK` of them; the in-process bus drops a slow follower's oldest messages past
  :data:`FOLLOWER_QUEUE`; the in-memory states keep :data:`MAX_STATES` users.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from common.db import Database
from common.errors import BackendError
from common.redisconn import REDIS_ERRORS, connect
from user_status.channel import RedisChannel

log = logging.getLogger(__name__)

HIDDEN = "hidden"
FRIENDS = "friends"
SETTINGS = (FRIENDS, HIDDEN)
MAX_AUDIENCE = 10_000  # friends told of one change at most
CHUNK = 1000  # audience ids per published message
FOLLOWER_QUEUE = 10_000  # messages waiting per in-process follower
MAX_STATES = 1_000_000  # users whose last told state the in-memory store keeps
STATE_TTL = 30 * 86400  # seconds a state (and so a last seen) is kept in Redis


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Change:
    """``user_id`` is online (``last_seen`` 0) or offline since ``last_seen`` (0: unknown or
    hidden); tell the devices of ``audience``."""

    user_id: str
    online: bool
    last_seen: int
    audience: tuple[str, ...]

    def encode(self) -> str:
        return json.dumps(
            {"u": self.user_id, "o": self.online, "t": self.last_seen, "a": list(self.audience)},
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | bytes) -> Change:
        """The inverse of :meth:`encode`; ``ValueError`` for anything else."""
        try:
            raw = json.loads(text)
            audience = raw["a"]
            if not isinstance(audience, list):
                raise TypeError("audience is not a list")
            return cls(str(raw["u"]), bool(raw["o"]), int(raw["t"]), tuple(map(str, audience)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a presence change: {exc}") from None


# -- the bus -------------------------------------------------------------------------------------


class PresenceBus(Protocol):
    async def publish(self, change: Change) -> None:
        """Tell every follower now; :class:`BackendError` if that cannot be done."""
        ...

    def follow(self) -> AsyncGenerator[Change, None]:
        """Changes as published, from the moment of subscribing."""
        ...

    async def close(self) -> None: ...


class MemoryPresenceBus:
    """:class:`PresenceBus` within one process (``im up``)."""

    def __init__(self) -> None:
        self._followers: set[asyncio.Queue[Change]] = set()

    async def publish(self, change: Change) -> None:
        for q in self._followers:
            if q.full():
                log.warning("presence follower %d behind: dropping its oldest", q.qsize())
                q.get_nowait()
            q.put_nowait(change)

    async def follow(self) -> AsyncGenerator[Change, None]:
        q: asyncio.Queue[Change] = asyncio.Queue(FOLLOWER_QUEUE)
        self._followers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._followers.discard(q)

    async def close(self) -> None:
        self._followers.clear()


class RedisPresenceBus:
    """:class:`PresenceBus` on the channel ``{prefix}presence``. Owns ``client``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "im:") -> None:
        self._channel = RedisChannel(client, f"{prefix}presence", "presence", Change.decode)

    async def publish(self, change: Change) -> None:
        await self._channel.publish(change.encode())

    async def follow(self) -> AsyncGenerator[Change, None]:
        # a change published while resubscribing is lost: the next change, or the device's
        # next GREET (which lists every friend's presence), puts it right
        async for change in self._channel.follow():
            if change is not None:
                yield change

    async def close(self) -> None:
        await self._channel.close()


# -- the last state told -------------------------------------------------------------------------


class PresenceStates(Protocol):
    async def swap(self, user_id: str, online: bool, at_ms: int) -> bool:
        """Record the user's state; True when it differs from the one recorded (a change to
        tell). Going offline records ``at_ms`` as the last seen; staying offline keeps it."""
        ...

    async def last_seen(self, users: Sequence[str]) -> dict[str, int]:
        """The last seen (ms) of those of ``users`` recorded offline with one."""
        ...

    async def close(self) -> None: ...


class MemoryPresenceStates:
    """:class:`PresenceStates` in this process: at most ``limit`` users, oldest out first."""

    def __init__(self, limit: int = MAX_STATES) -> None:
        self._limit = max(1, limit)
        self._states: OrderedDict[str, int] = OrderedDict()  # user -> 0 online, else last seen

    async def swap(self, user_id: str, online: bool, at_ms: int) -> bool:
        prev = self._states.pop(user_id, None)
        if online:
            self._put(user_id, 0)
            return prev != 0
        if prev is not None and prev != 0:
            self._put(user_id, prev)
            return False
        self._put(user_id, max(1, at_ms))
        return True

    def _put(self, user_id: str, value: int) -> None:
        self._states[user_id] = value
        while len(self._states) > self._limit:
            self._states.popitem(last=False)

    async def last_seen(self, users: Sequence[str]) -> dict[str, int]:
        return {u: v for u in users if (v := self._states.get(u, 0))}

    async def close(self) -> None:
        self._states.clear()


# KEYS[1] the user's state; ARGV: "1" or "0", now ms, ttl s -> 1 when it changed
_SWAP_LUA = """
local prev = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
    redis.call('SET', KEYS[1], '1', 'EX', ARGV[3])
    if prev == '1' then return 0 end
    return 1
end
if prev and prev ~= '1' then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    return 0
end
redis.call('SET', KEYS[1], '0:' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


class RedisPresenceStates:
    """:class:`PresenceStates` in Redis, ``{prefix}presence:{user}``. Owns ``client``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "im:") -> None:
        self._client = client
        self._prefix = f"{prefix}presence:"
        self._swap = client.register_script(_SWAP_LUA)

    async def swap(self, user_id: str, online: bool, at_ms: int) -> bool:
        try:
            changed = await self._swap(
                keys=[self._prefix + user_id], args=["1" if online else "0", at_ms, STATE_TTL]
            )
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"presence swap: {exc}") from exc
        return bool(changed)

    async def last_seen(self, users: Sequence[str]) -> dict[str, int]:
        if not users:
            return {}
        try:
            values = await self._client.mget([self._prefix + u for u in users])
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"presence read: {exc}") from exc
        out: dict[str, int] = {}
        for user, raw in zip(users, values, strict=True):
            text = raw.decode() if isinstance(raw, bytes) else raw
            if isinstance(text, str) and text.startswith("0:") and text[2:].isdigit():
                out[user] = int(text[2:])
        return out

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except REDIS_ERRORS as exc:
            raise BackendError("redis", f"close: {exc}") from exc


# -- who may see it ------------------------------------------------------------------------------

_FRIENDS_SQL = (
    "SELECT r.f, u.presence FROM"
    " (SELECT user_id2 AS f FROM im_relation WHERE user_id1 = ?"
    " UNION ALL SELECT user_id1 AS f FROM im_relation WHERE user_id2 = ?) r"
    " LEFT JOIN im_user u ON u.user_id = r.f"
    " WHERE NOT EXISTS (SELECT 1 FROM im_block b WHERE"
    " (b.user_id = ? AND b.blocked_id = r.f) OR (b.user_id = r.f AND b.blocked_id = ?))"
    " ORDER BY r.f LIMIT ?"
)


class Audience:
    """The database's word on who sees whose presence (im_relation, im_block, im_user)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def friends(self, user_id: str) -> list[tuple[str, bool]]:
        """``(friend, hides presence)`` for the user's friends that neither side blocked (a
        block ends the friendship, but the two writes are not one transaction: checked here
        too), at most :data:`MAX_AUDIENCE`."""
        rows = await self._db.fetchall(
            _FRIENDS_SQL, (user_id, user_id, user_id, user_id, MAX_AUDIENCE)
        )
        return [(str(f), p == HIDDEN) for f, p in rows]

    async def hides(self, user_id: str) -> bool:
        row = await self._db.fetchone("SELECT presence FROM im_user WHERE user_id = ?", (user_id,))
        return row is not None and row[0] == HIDDEN


# -- the service ---------------------------------------------------------------------------------


class DeviceTable(Protocol):
    """What this reads of user_status (user_status.base.UserStatusService)."""

    async def lookup(self, user_id: str) -> dict[str, str]: ...

    async def lookup_many(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]: ...


@dataclass(frozen=True, slots=True)
class Seen:
    """One friend's presence as a device is told it."""

    user_id: str
    online: bool
    last_seen: int


class Presence:
    """Works out and publishes changes; answers a GREET's "where are my friends"."""

    def __init__(
        self, devices: DeviceTable, states: PresenceStates, bus: PresenceBus, db: Database
    ) -> None:
        self.devices = devices
        self.states = states
        self.bus = bus
        self.audience = Audience(db)
        self.published = 0  # changes published (for tests and logs)

    async def changed(self, user_id: str) -> bool:
        """A device of the user came or went: tell the friends if the user's state changed.
        The state is read again after the swap, so a device that came up elsewhere while this
        one went is not told as offline for good."""
        if await self.audience.hides(user_id):
            # nothing recorded while hidden: unhiding later (announce) must not tell when the
            # devices came and went meanwhile, only the state at the switch
            return False
        told = False
        for _ in range(2):
            online = bool(await self.devices.lookup(user_id))
            at = now_ms()
            if not await self.states.swap(user_id, online, at):
                break
            told = True
            await self._publish(user_id, online, 0 if online else at, switch=False)
        return told

    async def announce(self, user_id: str) -> None:
        """Tell the friends the user's state now, changed or not (a privacy switch, a new
        friendship)."""
        online = bool(await self.devices.lookup(user_id))
        at = now_ms()
        await self.states.swap(user_id, online, at)
        last = 0 if online else (await self.states.last_seen([user_id])).get(user_id, at)
        await self._publish(user_id, online, last, switch=True)

    async def tell(self, user_id: str, to: Sequence[str]) -> None:
        """Tell ``to`` (users who just became the user's friends) the user's state now."""
        if not to or await self.audience.hides(user_id):
            return
        online = bool(await self.devices.lookup(user_id))
        last = 0 if online else (await self.states.last_seen([user_id])).get(user_id, 0)
        await self.bus.publish(Change(user_id, online, last, tuple(to)))

    async def _publish(self, user_id: str, online: bool, last_seen: int, *, switch: bool) -> None:
        """To the friends; a user who hides is told only at the switch (as offline, no last
        seen), never at a device's coming or going, which would give away when it happens."""
        if await self.audience.hides(user_id):
            if not switch:
                return
            online, last_seen = False, 0
        friends = [f for f, _ in await self.audience.friends(user_id)]
        if not friends:
            return
        for i in range(0, len(friends), CHUNK):
            chunk = tuple(friends[i : i + CHUNK])
            await self.bus.publish(Change(user_id, online, last_seen, chunk))
        self.published += 1

    async def of_friends(self, user_id: str) -> list[Seen]:
        """The presence of the user's friends for a device that just came online: online ones
        first, then those offline with a last seen, newest first (a friend not listed is
        offline with no last seen: hidden, blocked away, or never seen)."""
        friends = await self.audience.friends(user_id)
        visible = [f for f, hidden in friends if not hidden]
        online = await self.devices.lookup_many(visible) if visible else {}
        away = [f for f in visible if not online.get(f)]
        seen = await self.states.last_seen(away)
        out = [Seen(f, True, 0) for f in visible if online.get(f)]
        later = sorted(seen.items(), key=lambda kv: -kv[1])
        out.extend(Seen(f, False, t) for f, t in later)
        return out

    def follow(self) -> AsyncGenerator[Change, None]:
        return self.bus.follow()

    async def close(self) -> None:
        for part in (self.bus, self.states):
            try:
                await part.close()
            except BackendError as exc:
                log.warning("presence: %s", exc)


async def create_presence(
    devices: DeviceTable, db: Database, redis_url: str, prefix: str = "im:"
) -> Presence:
    """On Redis when ``redis_url`` is set (the bus and the states each on a client of their
    own, pinged once here), else in-process."""
    if not redis_url:
        return Presence(devices, MemoryPresenceStates(), MemoryPresenceBus(), db)
    bus = RedisPresenceBus(await connect(redis_url), prefix)
    states = RedisPresenceStates(await connect(redis_url), prefix)
    return Presence(devices, states, bus, db)
