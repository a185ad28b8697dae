"""The state every part of IMClient shares, and the two helpers they all use.

Why a base: IMClient is cut by responsibility (client/account.py, client/sending.py,
client/receiving.py, client/core.py), and the parts work on one device's state: the outbox,
the sync machine, the event queue, the link. They are declared here once, with their types,
and set by ``IMClient.__init__`` (client/core.py); a part never builds state of its own.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Coroutine

from client import sync as S
from client.connection import Connection
from client.events import Event
from client.groupkeys import GroupKeyRing
from client.groupsend import Recipes
from client.outbox import Outbox
from client.rest import LoginAnswer, RestClient
from common.ids import MessageIdGen
from common.link import LinkClosed
from proto import im_pb2


class ClientBase:
    """One device's shared state (see the module docstring)."""

    user_id: str
    device_id: str
    rest: RestClient
    friends: dict[str, str]  # friend -> pair key
    bytes_downloaded: int
    resent: int
    out_of_order: int  # chats refused OUT_OF_ORDER, whose conversation went again
    group_keys: GroupKeyRing
    _password: str
    _login: LoginAnswer | None
    _ids: MessageIdGen
    _events: asyncio.Queue[Event]
    _outbox: Outbox
    _recipes: Recipes  # group chats in the outbox: how to seal again
    _sync: S.SyncMachine
    _conn: Connection
    _deferred: deque[im_pb2.Envelope]  # for the ticker: no room at once
    _sync_seqs: OrderedDict[int, str]  # link seq -> conv of a Sync
    _chores: set[asyncio.Task[None]]  # background sends, kept referenced
    _chat_lock: asyncio.Lock  # one task sends chats at a time (their order)
    _caught_up: asyncio.Event  # IMClient.caught_up

    async def _send(self, env: im_pb2.Envelope, *, may_wait: bool) -> int:
        """Send on the current link: its link seq, or 0 (kept for the ticker, or offline)."""
        link = self._conn.link
        if link is None or not self._conn.up:
            if env.WhichOneof("body") == "cursor":
                c = env.cursor
                self._sync.cursor_unsent(c.conv_id, c.type, c.seq)
            return 0
        if not may_wait and (link.window_full or self._deferred):
            self._deferred.append(env)
            return 0
        try:
            return await link.send(env)
        except LinkClosed:
            return 0

    def _chore(self, coro: Coroutine[None, None, None]) -> None:
        """Run ``coro`` in the background (the reader must not wait on it), kept referenced
        until done and cancelled by ``close``."""
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
