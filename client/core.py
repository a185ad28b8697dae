"""IMClient: one device of one user, the facade over REST, the link, the outbox and the sync.

Who does what (each module says why):
- client/rest.py: login, friends, blocks, files and history over HTTP;
- client/connection.py: the link to a connector, GREET with ``since``, reconnects;
- client/outbox.py: chats until SENT, resent with the same id;
- client/sync.py: the timelines, sans-IO: what to surface, which Syncs and cursors to send;
- client/bodies.py: sealing and opening bodies with the pair key (UNREADABLE when it fails);
- client/groupkeys.py, client/groupsend.py: group keys, cached; a group chat refused
  STALE_KEY sealed again, with the group's later chats, in their order.

IMClient itself is cut by responsibility, each part a class of its own module over the state
of client/base.py: client/account.py (the REST account calls), client/sending.py (chats made,
sent in order, resealed), client/receiving.py (frames in, effects out, opening, history), and
this module: the state, the link's life and the ticker. Rules it keeps itself:
- the ticker sends what waited for window room, coalesced cursors, chats that waited at a
  group's gate, and resends; the reader never waits for window room;
- a device that comes back (this IMClient reconnecting) greets with the ``since`` of its last
  CaughtUp and resumes from what it holds; a new IMClient is a new device (since 0) and is
  given every conversation, so either ends with every message exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict, deque
from types import TracebackType

from client import sync as S
from client.connection import Connection
from client.events import Event, GroupReceipt, Message, Receipt, ServerError
from client.groupkeys import GroupKeyRing
from client.groupsend import Recipes
from client.outbox import OUTBOX_SIZE, RESEND_AFTER, Outbox
from client.receiving import FINAL_ERRORS, SYNC_MEMORY, Receiving
from client.rest import RestClient, RestError
from common.errors import IMError
from common.ids import MessageIdGen
from common.link import Link, LinkConfig
from common.userids import canonical_or_none
from proto import im_pb2

__all__ = [
    "FINAL_ERRORS",
    "SYNC_MEMORY",
    "TICK",
    "Event",
    "GroupReceipt",
    "IMClient",
    "Message",
    "Receipt",
    "ServerError",
    "befriend",
]

log = logging.getLogger(__name__)

TICK = 0.05  # seconds between ticks: coalesced cursors, resends, deferred frames


class IMClient(Receiving):
    def __init__(
        self,
        rest_url: str,
        user_id: str,
        password: str,
        *,
        device_id: str = "default",
        link_config: LinkConfig | None = None,
        queue_size: int = 10_000,
        connector: tuple[str, int] | None = None,
        reconnect: bool = True,
        outbox_size: int = OUTBOX_SIZE,
        resend_after: float = RESEND_AFTER,
        tls: ssl.SSLContext | bool | None = None,
    ) -> None:
        """``tls``: None follows the login answer, True uses TLS with the system's trust store,
        an ``SSLContext`` is used as given (e.g. ``common.tls.client_context(cafile)``), False
        never uses TLS. ``connector`` pins the connector instead of the one REST names."""
        self.user_id = canonical_or_none(user_id) or user_id  # the id the server knows
        self.device_id = device_id
        self.rest = RestClient(rest_url)
        self.friends = {}
        self.bytes_downloaded = 0  # over the network, so a resumed download shows what it saved
        self.resent = 0
        self.out_of_order = 0
        self._password = password
        self._login = None
        self._ids = MessageIdGen()
        self._events = asyncio.Queue(queue_size)
        self._outbox = Outbox(outbox_size, resend_after)
        self.group_keys = GroupKeyRing(lambda group_id: self.rest.groups.keys(group_id))
        self._recipes = Recipes(outbox_size)
        self._sync = S.SyncMachine(self.user_id)
        self._conn = Connection(
            self,
            self.login,
            lambda: self._sync.since,
            name=self.user_id,
            device_id=device_id,
            config=link_config or LinkConfig(),
            tls=tls,
            connector=connector,
            reconnect=reconnect,
        )
        self._deferred = deque()
        self._sync_seqs = OrderedDict()
        self._ticker: asyncio.Task[None] | None = None
        self._chores = set()
        self._chat_lock = asyncio.Lock()
        self._caught_up = asyncio.Event()

    async def __aenter__(self) -> IMClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn.up

    @property
    def link(self) -> Link | None:
        """The current link (None before the first connect): for tests that send raw frames."""
        return self._conn.link

    _link = link  # the name tests used before the split

    @property
    def node_id(self) -> str:
        """The connector we are on, from its WELCOME ("" while offline)."""
        return self._conn.node_id

    @property
    def reconnects(self) -> int:
        return self._conn.reconnects

    @property
    def pending(self) -> int:
        """Chats in the outbox: not yet SENT."""
        return len(self._outbox)

    @property
    def since(self) -> int:
        """The ``since`` of the last CaughtUp: what the next GREET says."""
        return self._sync.since

    @property
    def caught_up(self) -> asyncio.Event:
        """Set once the first CaughtUp of the current link has come and every conversation it
        listed is held up to the head it named; cleared when a new link comes up."""
        return self._caught_up

    def have(self, conv_id: str) -> int:
        """The highest seq of ``conv_id`` held with nothing missing below it."""
        return self._sync.have(conv_id)

    def read_cursors(self) -> dict[str, int]:
        """Per conversation, the user's READ cursor as this device knows it (its own marks and
        the other devices' READ cursors): what an app's unread counts start from."""
        return self._sync.read_cursors()

    @property
    def duplicates_dropped(self) -> int:
        return self._sync.stats["duplicates"]

    @property
    def order_stats(self) -> dict[str, int]:
        """The sync's counters: duplicates, buffered (past a gap), dropped (buffer full, fetched
        again), holes_skipped (seqs that do not exist for us), syncs."""
        return dict(self._sync.stats)

    # -- link --------------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Log in if needed, open the link, GREET, wait for WELCOME; the outbox goes again and
        the listing and Syncs follow. A lost link is reconnected in the background (unless
        ``reconnect=False``) until :meth:`close`. Await ``caught_up.wait()`` to know the device
        holds everything that was there when it connected."""
        login = self._login or await self.login()
        await self._conn.start(login, timeout)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name=f"tick {self.user_id}")

    async def disconnect(self) -> None:
        """Go offline but keep the outbox and what the device holds: :meth:`connect` resumes."""
        await self._conn.stop()

    async def close(self) -> None:
        await self.disconnect()
        for task in list(self._chores):
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        await self.rest.close()

    def welcomed(self, link: Link, welcome: im_pb2.Welcome) -> None:
        self._ids.slot = welcome.id_slot  # the connector's word on our token's slot
        self._outbox.new_link()
        self._deferred.clear()
        self._sync_seqs.clear()
        self._caught_up.clear()
        # sent once the WELCOME is handled, before any frame after it, from the ticker's side
        effects = self._sync.link_up(time.monotonic())
        self._chore(self._after_welcome(effects))

    async def _after_welcome(self, effects: list[S.Effect]) -> None:
        try:
            await self._send_chats()
            await self._apply(effects, may_wait=True)
        except (IMError, OSError) as exc:  # the link went again: the next WELCOME redoes it
            log.debug("%s: after welcome: %s", self.user_id, exc)

    async def link_lost(self, unacked: list[im_pb2.Envelope]) -> None:
        self._sync.link_down()
        for env in [*unacked, *self._deferred]:
            if env.WhichOneof("body") == "cursor":
                self._sync.cursor_unsent(env.cursor.conv_id, env.cursor.type, env.cursor.seq)
        self._deferred.clear()

    async def login_refused(self, exc: RestError) -> None:
        await self._events.put(ServerError("LOGIN_REFUSED", str(exc), 0))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                while self._deferred and self._conn.up:
                    await self._send(self._deferred.popleft(), may_wait=True)
                await self._apply(self._sync.tick(time.monotonic()), may_wait=True)
                await self._send_chats()
                await self._resend_stale()
            except (IMError, OSError) as exc:
                log.debug("%s: tick: %s", self.user_id, exc)


async def befriend(a: IMClient, b: IMClient) -> str:
    """Make ``a`` and ``b`` friends the only way there is, both saying yes: ``a`` asks, ``b``
    accepts. Both know the pair key afterwards, which is returned. Both must be logged in."""
    await a.add_friend(b.user_id)
    key = await b.add_friend(a.user_id)
    if key is None:  # b's yes found no request of a's: a blocked b, or a lost the request
        raise IMError(f"{a.user_id!r} and {b.user_id!r} did not become friends")
    a.friends[b.user_id] = key
    return key
