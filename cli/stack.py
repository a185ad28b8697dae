"""Wires services into one process: all of them for ``im up``, one for ``im connector`` etc.

The only module that imports several services (DESIGN.md §2). Start order: storage and brokers,
then the timeline writer, transfer, connector, REST; stop order is the reverse, so chats a
connector passed on before it stopped are still committed and fanned out, and the databases and
brokers close last. The connector lists and syncs conversations from the timeline store the
writer appends to (one SQL database: SQLite embedded, MySQL in a cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import uvicorn

import timeline
import user_status
from cli.ops import Ops
from common.config import Settings
from common.db import Database, open_database
from common.files import FileStore
from common.redact import redact_url
from common.tokens import TokenSigner
from connector.server import Connector
from groups.store import SQLGroupStore
from rest_web.app import create_app
from rest_web.devices import DeviceSlots
from rest_web.files import FileService
from rest_web.login import Login, open_login
from rest_web.store import UserStore
from timeline import TimelineQueue, TimelineWriter
from timeline.store import SQLTimelineStore
from timeline.writer import keep_retention
from transfer.server import Transfer
from user_status.base import StatusBackend
from user_status.groupnotice import GroupNoticeBus, create_notice_bus
from user_status.heartbeat import LiveNodes
from user_status.presence import Presence, create_presence
from user_status.relations import RelationReader
from user_status.revocation import RevocationBus, RevocationReader, create_bus

log = logging.getLogger(__name__)

ALL_ROLES = frozenset({"rest", "transfer", "connector", "writer"})


class _GuestServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the stack owns SIGINT/SIGTERM."""

    def install_signal_handlers(self) -> None:
        pass

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@dataclass
class Stack:
    settings: Settings
    roles: frozenset[str] = ALL_ROLES
    db: Database | None = None
    status: StatusBackend | None = None
    timeline: TimelineQueue | None = None
    transfer: Transfer | None = None
    connector: Connector | None = None
    revocations: RevocationBus | None = None
    group_notices: GroupNoticeBus | None = None
    presence: Presence | None = None
    rest_port: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _rest: uvicorn.Server | None = None
    _rest_task: asyncio.Task[None] | None = None
    _login: Login | None = None
    ops: Ops | None = None

    async def start(self) -> None:
        s = self.settings
        signer = TokenSigner(s.signing_secret())
        self.db = await open_database(s.db_url(), pool_size=s.db_pool)
        users = UserStore(self.db)
        files = FileStore(self.db)  # REST writes uploads, the connector checks and grants them
        devices = DeviceSlots(self.db)  # message id slots, handed out at REST login
        timeline_store = SQLTimelineStore(self.db)
        if self.db.dialect == "sqlite":
            # the embedded file is this deployment's own: bring it up to date
            for component in (users, files, devices, timeline_store):
                await component.migrate()
        else:
            # a shared server is migrated by the operator (`im migrate`), once per release
            for component in (users, files, devices, timeline_store):
                await component.check_schema()
        self.ops = Ops(s, self.roles)
        await self.ops.open(self.db)  # admin schema, kick bus, webhooks (cli/ops.py)
        # REST needs the registry to hand out live connectors, and for the admin API
        needs_status = bool(self.roles & {"transfer", "connector"}) or bool(s.redis_url)
        if needs_status:
            self.status = await user_status.create(s)
        if self.roles & {"transfer", "writer"}:
            self.timeline = await timeline.create_queue(s)
        if self.roles & {"rest", "connector"}:
            # REST publishes logouts and password changes, connectors close what they cover:
            # on Redis across the cluster, in-process when both run here
            self.revocations = await create_bus(s.redis_url, s.redis_prefix)
            # REST nudges connectors after a group's membership changes (the same way)
            self.group_notices = await create_notice_bus(s.redis_url, s.redis_prefix)
        if self.status is not None and self.roles & {"rest", "connector"}:
            # friends' presence: connectors tell it, REST tells a privacy switch (Redis or here)
            self.presence = await create_presence(self.status, self.db, s.redis_url, s.redis_prefix)
        if "writer" in self.roles and self.timeline is not None:
            appender = TimelineWriter(self.timeline, timeline_store)
            self._tasks.append(asyncio.create_task(appender.run(), name="timeline-writer"))
            if s.timeline_retention_days > 0:
                purge = keep_retention(timeline_store, s.timeline_retention_days)
                self._tasks.append(asyncio.create_task(purge, name="timeline-retention"))
        if "transfer" in self.roles:
            assert self.status is not None and self.timeline is not None
            # message.sent and message.offline: the transfer knows the commit and the routes
            self.transfer = Transfer(
                s, self.status, signer, self.timeline, timeline_store, hooks=self.ops.hooks
            )
            await self.transfer.start()
        if "connector" in self.roles:
            assert self.status is not None
            source = None
            if s.redis_url or self.transfer is not None:
                # transfers found in the registry (shared Redis, or this process's own)
                source = functools.partial(self.status.live, "transfer")
            self.connector = Connector(
                s,
                self.status,
                timeline_store,
                RelationReader(self.db),
                signer,
                source,
                files=files,
                revocations=self.revocations,
                revocation_check=RevocationReader(self.db),
                kicks=self.ops.kicks,
                group_notices=self.group_notices,
                before_send=self.ops.message_check(),
                presence=self.presence,
            )
            await self.connector.start()
        if "rest" in self.roles:
            connectors = None
            if not s.connector_addrs and self.status is not None:
                live = LiveNodes(self.status, "connector")
                connectors = functools.partial(_addresses, live)
            file_service = FileService.from_settings(s, self.db)
            self._login = await open_login(s, users, self.db)
            # the group store for REST (issue 14), on the timeline tables it shares
            group_store = SQLGroupStore(self.db, timeline_store, s.group_max_size)
            await (
                group_store.migrate() if self.db.dialect == "sqlite" else group_store.check_schema()
            )
            app = create_app(
                s,
                users,
                signer,
                connectors,
                files=file_service,
                logins=self._login,
                revocations=self.revocations.publish if self.revocations is not None else None,
                readiness=self.ops.readiness,
                hooks=self.ops.hooks,
                admin=self.ops.admin_deps(self.status, file_service.blobs),
                devices=devices,
                timeline=timeline_store,
                groups=group_store,
            )
            app.state.group_notices = self.group_notices  # rest_web/group_routes.py
            app.state.presence = self.presence  # rest_web/privacy.py
            self._tasks.append(asyncio.create_task(file_service.janitor(), name="file-janitor"))
            config = uvicorn.Config(
                app,
                host=s.bind_host,
                port=s.rest_port,
                log_level="warning",
                log_config=None,
                lifespan="off",
                server_header=False,
                # uvicorn would believe X-Forwarded-For from loopback; rest_web/proxies.py decides
                proxy_headers=False,
                # longer than clients' pauses between calls under load, so a kept-alive
                # connection is rarely closed just as a client reuses it
                timeout_keep_alive=30,
            )
            self._rest = _GuestServer(config)
            task = self._rest_task = asyncio.create_task(self._rest.serve(), name="rest")
            self._tasks.append(task)
            while not self._rest.started:
                if task.done():
                    task.result()
                    raise RuntimeError("REST server stopped at start")
                await asyncio.sleep(0.01)
            self.rest_port = self._rest.servers[0].sockets[0].getsockname()[1]
        node = self.connector or self.transfer
        await self.ops.start(
            self.db,
            self.status,
            node.node_id if node is not None else s.name(self.rest_port),
            self.connector.node_id if self.connector is not None else "",
        )

    def describe(self) -> list[str]:
        s = self.settings
        lines = []
        if self.connector is not None:
            lines.append(f"connector  {s.bind_host}:{self.connector.port}  (clients, TCP)")
        if self.transfer is not None:
            lines.append(f"transfer   {s.bind_host}:{self.transfer.port}  (connectors, TCP)")
        if self._rest is not None:
            lines.append(f"rest       http://{s.bind_host}:{self.rest_port}  (docs at /docs)")
        if "writer" in self.roles:
            lines.append("writer     timeline queue -> " + redact_url(s.db_url()))
        if self.ops is not None and self.ops.metrics_port:
            where = f"http://{s.bind_host}:{self.ops.metrics_port}"
            lines.append(f"metrics    {where}/metrics  (/healthz, /readyz)")
        return lines

    async def stop(self) -> None:
        """Stop every part, in order. Each step is bounded (:data:`STOP_STEP`): a backend that
        stopped answering mid-close (a half-dead socket) costs a logged line, not a stop that
        never ends."""
        if self.ops is not None:
            self.ops.drain()  # not ready from now on, while the services below stop
        if self._rest is not None:
            self._rest.should_exit = True
        if self.connector is not None:
            await _step("connector", self.connector.stop())
        if self.transfer is not None:
            await _step("transfer", self.transfer.stop())
        if self._rest_task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._rest_task), 5)
        if self.timeline is not None:
            await _step("timeline queue", self.timeline.close())
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            ended, stuck = await asyncio.wait(self._tasks, timeout=STOP_STEP)
            for t in ended:
                if not t.cancelled():
                    t.exception()  # retrieved: a task's failure was logged where it happened
            for t in stuck:
                log.warning("stop: task %s did not end within %.0fs", t.get_name(), STOP_STEP)
        closers = [
            ("ops", self.ops and self.ops.stop),
            ("login", self._login and self._login.close),
            ("user status", self.status and self.status.close),
            ("revocations", self.revocations and self.revocations.close),
            ("group notices", self.group_notices and self.group_notices.close),
            ("presence", self.presence and self.presence.close),
            ("database", self.db and self.db.close),
        ]
        for name, close in closers:
            if close:
                await _step(name, close())


STOP_STEP = 15.0  # seconds one step of Stack.stop may take


async def _step(name: str, work: Coroutine[Any, Any, object]) -> None:
    try:
        await asyncio.wait_for(work, STOP_STEP)
    except TimeoutError:
        log.warning("stop: %s did not close within %.0fs; going on", name, STOP_STEP)


async def _addresses(live: LiveNodes) -> list[str]:
    return list((await live.get()).values())
