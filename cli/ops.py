"""The operations side of one ``im`` process: readiness checks, the ops endpoint, webhooks, the
kick bus and the admin store, wired from what the stack started (cli/stack.py calls this).

Kept out of cli/stack.py so the stack only says when (open, start, drain, stop) and this says
what. Rules:
- checks are registered only for what the process uses: the database and its schema always;
  Redis when user status is there; RabbitMQ for a transfer or writer on it; "linked to a
  transfer" for a connector (fed by :data:`common.health.LINKS`, which the connector reports to);
- the ops endpoint runs only for a process with a non-REST role and ``IM_METRICS_PORT`` set;
  REST serves the same paths on its own port;
- stop order: drain (readiness false at once), then the caller stops its services, then
  :meth:`Ops.stop` closes the endpoint, webhooks and buses, before the databases close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from common import health, metrics
from common import log as logsetup
from common.config import Settings
from common.db import Database, MySQLDatabase, SQLiteDatabase
from common.errors import BackendError, IMError
from common.files import FileStore
from common.health import Readiness
from common.opsweb import OpsServer
from common.redact import redact_url
from hooks import BeforeSend, Webhooks
from rest_web.admin import AdminDeps, AdminStatus
from rest_web.admin_store import AdminStore
from rest_web.blobs import BlobStore
from rest_web.store import UserStore
from timeline.store import SQLTimelineStore
from user_status.kick import KickBus, create_kick_bus
from user_status.redis import RedisUserStatus

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9090  # `im up`'s, and the base of `im cluster`'s (cli/cluster.py)
PROBE_INTERVAL = 5.0  # seconds between RabbitMQ queue depth reads
PROBE_TIMEOUT = 2.0
_AMQP_ERRORS = (aiormq.exceptions.AMQPError, RuntimeError, OSError, TimeoutError)


def role_name(roles: frozenset[str]) -> str:
    """The roles as logs and ``im_process_info`` name them: ``connector``, or for ``im up``
    ``connector+rest+transfer+writer``."""
    return "+".join(sorted(roles))


class AmqpProbe:
    """A connection of its own to RabbitMQ, for readiness and queue depths: opened on first use,
    reopened after a loss; each :meth:`check` opens a channel (a round trip), reads every queue's
    depth with a passive declare and closes it."""

    def __init__(self, url: str, queues: list[str]) -> None:
        self._url = url
        self._queues = queues
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self.depth: int | None = None

    async def check(self) -> None:
        async with self._lock:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    if self._conn is None or self._conn.is_closed:
                        self._conn = await aio_pika.connect(self._url, timeout=PROBE_TIMEOUT)
                    channel: AbstractChannel = await self._conn.channel(publisher_confirms=False)
                    try:
                        total = 0
                        for name in self._queues:
                            q = await channel.declare_queue(name, passive=True)
                            total += q.declaration_result.message_count or 0
                    finally:
                        with contextlib.suppress(*_AMQP_ERRORS):
                            await channel.close()
            except _AMQP_ERRORS as exc:
                self.depth = None
                await self._drop()
                raise BackendError("rabbitmq", f"{redact_url(self._url)}: {exc!r}") from exc
            self.depth = total

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_AMQP_ERRORS):
                await conn.close()

    async def follow(self) -> None:
        """Refresh :attr:`depth` every :data:`PROBE_INTERVAL` until cancelled."""
        while True:
            with contextlib.suppress(BackendError):
                await self.check()
            await asyncio.sleep(PROBE_INTERVAL)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


@dataclass
class Ops:
    settings: Settings
    roles: frozenset[str]
    readiness: Readiness = field(default_factory=Readiness)
    hooks: Webhooks = field(init=False)
    before_send: BeforeSend = field(init=False)
    kicks: KickBus | None = None
    admin_store: AdminStore | None = None
    amqp: AmqpProbe | None = None
    _server: OpsServer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_port: int = 0

    def __post_init__(self) -> None:
        node = f"{role_name(self.roles)}/{self.settings.node_id or self.settings.advertised_host()}"
        self.hooks = Webhooks.from_settings(self.settings, node)
        self.before_send = BeforeSend.from_settings(self.settings, node)

    async def open(self, db: Database) -> None:
        """Before the services start: the admin schema, the kick bus, the webhook sender."""
        s = self.settings
        self.admin_store = AdminStore(db, s.admin_ids())
        if db.dialect == "sqlite":
            await self.admin_store.migrate()
        else:
            await self.admin_store.check_schema()
        if self.roles & {"rest", "connector"}:
            self.kicks = await create_kick_bus(s.redis_url, s.redis_prefix)
        if s.amqp_url and self.roles & {"rest", "transfer", "writer"}:
            # the timeline write queue's shards: chats and cursors not yet committed
            queues = [f"{s.timeline_queue()}.{i}" for i in range(s.amqp_shards)]
            self.amqp = AmqpProbe(s.amqp_url, queues)
            metrics.queue_depth_source("timeline", self.amqp, lambda p: p.depth or 0)
        if isinstance(db, MySQLDatabase | SQLiteDatabase):
            metrics.db_pool_source(db, lambda d: d.in_use, lambda d: d.pool_size)

    def message_check(self) -> BeforeSend | None:
        """The connector's ``message.before_send`` hook; None without a URL, so that a chat
        does not even build the hook's payload."""
        return self.before_send if self.before_send.enabled else None

    def admin_deps(self, status: AdminStatus | None, blobs: BlobStore | None) -> AdminDeps:
        assert self.admin_store is not None
        return AdminDeps(
            self.admin_store,
            self.settings,
            kicks=self.kicks,
            status=status,
            blobs=blobs,
            queue_depths=self._queue_depths if self.amqp is not None else None,
        )

    async def _queue_depths(self) -> dict[str, int]:
        assert self.amqp is not None
        await self.amqp.check()
        return {"timeline": self.amqp.depth or 0}

    async def start(
        self, db: Database, status: object | None, node: str, connector_node: str = ""
    ) -> None:
        """Once the services are up (``node``: this process's node id; ``connector_node``: its
        connector's, if it runs one): register the checks, start webhooks and the endpoint."""
        s = self.settings
        r = self.readiness
        r.add("database", _ping(db))
        r.add("schema", _schema(db))
        if isinstance(status, RedisUserStatus):
            r.add("redis", status.ping)
        if self.amqp is not None:
            if self.roles & {"transfer", "writer"}:
                r.add("rabbitmq", self.amqp.check)
            self._tasks.append(asyncio.create_task(self.amqp.follow(), name="amqp-probe"))
        if connector_node:
            r.add("transfer_link", health.LINKS.check(connector_node, "transfer"))
        metrics.set_process(role_name(self.roles), node)
        logsetup.set_process(f"{role_name(self.roles)}/{node}")
        self.hooks.node = self.before_send.node = f"{role_name(self.roles)}/{node}"
        await self.hooks.start()
        if s.metrics_port and self.roles - {"rest"}:
            server = OpsServer(r, s.bind_host, s.metrics_port)
            await server.start()
            self._server = server
            self.metrics_port = server.port

    def drain(self) -> None:
        self.readiness.drain()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hooks.close()
        await self.before_send.close()
        if self.amqp is not None:
            await self.amqp.close()
        if self.kicks is not None:
            try:
                await self.kicks.close()
            except IMError as exc:
                log.warning("kick bus: %s", exc)


def _ping(db: Database) -> health.Check:
    async def ping() -> None:
        await db.fetchone("SELECT 1")

    return ping


def _schema(db: Database) -> health.Check:
    components = (UserStore(db), SQLTimelineStore(db), FileStore(db), AdminStore(db))

    async def current() -> None:
        for component in components:
            await component.check_schema()

    return current
