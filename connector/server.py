"""The connector: holds client sockets, authenticates GREET, forwards chats and cursors to the
transfers, and pushes their fanouts to the devices here.

Rules it keeps (the sessions' own are in connector/session.py):
- nothing from a client is trusted before a GREET whose token verifies locally, is for the
  device it names and is not revoked (the database is asked at GREET; revocations published
  later close the sessions they cover); a user has at most ``max_devices`` devices online,
  counted across the cluster;
- a SINGLE chat goes only to a friend; a GROUP chat only from a member who is not muted
  (connector/groupaccess.py: a 1 s cache, the writer checks again at commit); a FILE chat
  only with the sender's own upload, and accepting it records the recipient's right to
  download it before the chat goes on (in a group: the message's, for its members at its seq);
- a committed chat reaches every device here of the users its fanout lists: the device that sent
  it gets SENT instead, and a refusal reaches that device only. Nothing is stored here: every
  chat is in its conversation's timeline before anyone hears of it, so a device that misses a
  push (slow, reconnecting, a transfer link lost) learns the head from a listing and Syncs;
- when the registry had lost this connector, or a transfer link came or went, every session
  lists again;
- typing goes only to a conversation the user may post in (a friend's pair, a group where the
  user is a member and not muted), with the same checks and caches as a chat, on to the
  conversation's transfer as a control frame; a session that ends with starts still live has
  their stops sent for it. Presence (connector/signals.py, user_status/presence.py): a device
  that comes online hears its friends' presence, and each device coming or going here has its
  user's presence worked out and, when it changed, published to the friends' connectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from typing import Any, Protocol

from common.admission import PreAuthLimits
from common.config import Settings
from common.convid import GROUP, group_conv_id, parse_conv_id
from common.errors import BackendError, IMError, ProtocolError
from common.files import group_recipient
from common.link import Link, LinkConfig, serve_links
from common.tls import server_context
from common.tokens import Claims, RevokedSet, TokenSigner
from common.wslink import serve_ws_links
from connector.catchup import StoreReader
from connector.clientsession import ClientSession, Counters
from connector.groupaccess import GroupAccess, is_group_conv
from connector.groupnotices import NoticeFollower
from connector.signals import PresenceShell
from connector.transfers import TransferLinks, TransferSource, static_transfers
from hooks import Verdict, events
from proto import im_pb2
from user_status.groupnotice import GroupNoticeBus
from user_status.heartbeat import keep_alive
from user_status.kick import KickBus
from user_status.presence import Presence
from user_status.revocation import RevocationBus

log = logging.getLogger(__name__)

# a transfer link came or went: sessions list again, spread over this many seconds so a
# connector with many sessions does not ask the timeline store for all of them at once
RELIST_SPREAD = 2.0


class ConnectorStatus(Protocol):
    """What the connector uses of user_status (see user_status.base.StatusBackend)."""

    async def online(self, user_id: str, device_id: str, connector_id: str) -> None: ...

    async def offline(self, user_id: str, device_id: str, connector_id: str) -> None: ...

    async def lookup(self, user_id: str) -> dict[str, str]: ...

    async def beat(self, kind: str, node_id: str, addr: str, ttl: float) -> bool: ...

    async def leave(self, kind: str, node_id: str) -> None: ...

    async def live(self, kind: str) -> dict[str, str]: ...


class FriendCheck(Protocol):
    """The relation lookup the connector needs (see user_status.relations)."""

    async def are_friends(self, a: str, b: str) -> bool: ...


class FileGrants(Protocol):
    """The file check the connector needs for FILE chats (see common.files.FileStore)."""

    async def grant(
        self, file_id: str, owner: str, size: int, checksum: str, recipient: str
    ) -> bool: ...


class MessageCheck(Protocol):
    """The operator's ``message.before_send`` hook (see hooks.before_send.BeforeSend)."""

    async def __call__(self, data: events.Data) -> Verdict: ...


class RevocationCheck(Protocol):
    """The database's word on a token (see user_status.revocation.RevocationReader)."""

    async def revoked(self, claims: Claims) -> bool: ...


class Connector:
    def __init__(
        self,
        settings: Settings,
        status: ConnectorStatus,
        timeline_reader: StoreReader,
        friends: FriendCheck,
        signer: TokenSigner,
        transfer_source: TransferSource | None = None,
        *,
        files: FileGrants | None = None,
        revocations: RevocationBus | None = None,
        revocation_check: RevocationCheck | None = None,
        kicks: KickBus | None = None,
        group_notices: GroupNoticeBus | None = None,
        before_send: MessageCheck | None = None,
        presence: Presence | None = None,
    ) -> None:
        self.settings = settings
        self.status = status
        self.reader = timeline_reader
        self.friends = friends
        self.signer = signer
        self.files = files  # None: every FILE chat is refused with NO_SUCH_FILE
        self.groups = GroupAccess(timeline_reader)  # who may post in / read a group
        self.node_id = settings.name(settings.connector_port)
        self.counters = Counters()
        # clients are untrusted: control frames rate limited, unknown fields dropped, a GREET
        # deadline, and a place among the unauthenticated until the GREET is accepted
        self.client_link_config = LinkConfig.from_settings(settings)
        self.preauth = PreAuthLimits(settings.preauth_per_address, settings.preauth_max)
        self.revocations = revocations  # None: no revocations reach this connector
        self.revocation_check = revocation_check
        self.kicks = kicks  # None: no admin API reaches this connector
        self.group_notices = group_notices  # None: members hear of changes by listings
        self.notices: NoticeFollower | None = None
        # None: no hook is configured, and a chat pays nothing for it
        self.before_send = before_send
        self.revoked = RevokedSet()
        # None: no presence is told (typing needs nothing more than the transfers)
        self.presence = (
            None if presence is None else PresenceShell(presence, self.sessions_of, self._spawn)
        )
        self._sessions: dict[str, dict[str, ClientSession]] = {}
        self.transfers = TransferLinks(
            settings,
            self.node_id,
            signer,
            transfer_source or static_transfers(settings),
            self.fanout,
            self.relist_all,
        )
        self._server: asyncio.Server | None = None
        self._ws_server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.port = settings.connector_port
        self.ws_port = 0  # the WebSocket port once listening (0: off)
        self.address = ""

    # -- routing table ---------------------------------------------------------------------------

    def register(self, s: ClientSession) -> None:
        devices = self._sessions.setdefault(s.user_id, {})
        old = devices.get(s.device_id)
        devices[s.device_id] = s
        if old is not None:
            old.close(ProtocolError("signed in again elsewhere", code=im_pb2.REPLACED, fatal=True))

    def unregister(self, s: ClientSession) -> bool:
        """Remove ``s`` if it is still the device's session; False if a newer one replaced it.
        Either way the stops of its typing starts that still last go out."""
        stops = s.rules.typing_stops(asyncio.get_running_loop().time())
        if stops:
            self._spawn(self._send_stops(stops))
        devices = self._sessions.get(s.user_id)
        if devices is None or devices.get(s.device_id) is not s:
            return False
        del devices[s.device_id]
        if not devices:
            del self._sessions[s.user_id]
        return True

    def sessions_of(self, user_id: str) -> list[ClientSession]:
        return list(self._sessions.get(user_id, {}).values())

    def all_sessions(self) -> list[ClientSession]:
        return [s for devices in self._sessions.values() for s in devices.values()]

    @property
    def online_sessions(self) -> int:
        return sum(len(d) for d in self._sessions.values())

    def fanout(self, fanout: im_pb2.Fanout) -> bool:
        """A transfer's fanout: every device here of the users it lists hears it (the session's
        rules pick SENT, the chat, or the refusal). True when a device here got its SENT."""
        if fanout.refused and fanout.WhichOneof("body") == "chat":
            self.counters.refused += 1
        given = False
        for user in dict.fromkeys(fanout.users):
            for s in self.sessions_of(user):
                given = s.deliver(fanout) or given
        return given

    def relist_all(self) -> None:
        """A transfer link came or went: fanouts may have been lost, every session lists."""
        for s in self.all_sessions():
            s.request_relist(random.uniform(0.0, RELIST_SPREAD))

    # -- what sessions ask of the connector ------------------------------------------------------

    async def admit(self, claims: Claims, device_id: str) -> None:
        if await self.is_revoked(claims):
            raise ProtocolError("token revoked", code=im_pb2.BAD_TOKEN, fatal=True)
        await self.check_devices(claims.user_id, device_id)
        # a revocation that arrived while we asked the database is in the set now
        if self.revoked.covers(claims):
            raise ProtocolError("token revoked", code=im_pb2.BAD_TOKEN, fatal=True)

    async def online(self, s: ClientSession) -> None:
        """A device came online here: route to it, tell it its friends' presence, and work out
        its user's."""
        await self.status.online(s.user_id, s.device_id, self.node_id)
        if self.presence is not None:
            self.presence.moved(s.user_id)
            self.presence.greet(s)

    async def offline(self, s: ClientSession) -> None:
        await self.status.offline(s.user_id, s.device_id, self.node_id)
        if self.presence is not None:
            self.presence.moved(s.user_id)

    async def check_chat(self, user_id: str, chat: im_pb2.ChatMsg) -> None:
        if chat.dest_type == im_pb2.GROUP:
            await self.groups.check_post(group_conv_id(chat.dest_id), user_id)
        else:
            await self._check_friends(user_id, chat.dest_id)
        if self.before_send is not None:
            # awaited in the session's frame handling: its later chats wait behind this one
            # (sender order), other sessions do not; before the file grant, so a refused chat
            # grants nothing
            verdict = await self.before_send(events.message_data(chat))
            if not verdict.allowed:
                raise ProtocolError(verdict.reason or "refused", code=im_pb2.REFUSED)
        if chat.msg_type == im_pb2.FILE:
            await self._grant_file(user_id, chat)

    async def _check_friends(self, user_id: str, peer: str) -> None:
        try:
            friends = await self.friends.are_friends(user_id, peer)
        except IMError as exc:
            log.error("friend check failed: %s", exc)
            raise ProtocolError(
                "relations unavailable, retry later", code=im_pb2.INTERNAL
            ) from None
        if not friends:
            raise ProtocolError(f"{peer!r} is not your friend", code=im_pb2.NOT_FRIEND)

    async def _grant_file(self, user_id: str, chat: im_pb2.ChatMsg) -> None:
        f = chat.file
        granted = False
        recipient = chat.dest_id
        if chat.dest_type == im_pb2.GROUP:  # the members at its seq, decided at download
            recipient = group_recipient(group_conv_id(chat.dest_id), chat.id)
        if self.files is not None:
            try:
                granted = await self.files.grant(f.id, user_id, f.size, f.checksum, recipient)
            except IMError as exc:
                log.error("file grant failed: %s", exc)
                raise ProtocolError(
                    "file store unavailable, retry later", code=im_pb2.INTERNAL
                ) from None
        if not granted:
            raise ProtocolError(
                f"no upload {f.id!r} of yours with that size and checksum",
                code=im_pb2.NO_SUCH_FILE,
            )

    async def forward(self, env: im_pb2.Envelope, key: str) -> None:
        if env.WhichOneof("body") == "typing":
            await self._check_typing(env.typing)
            self._send_typing(env)
            return
        if env.WhichOneof("body") == "record" and is_group_conv(env.record.cursor.conv_id):
            cursor = env.record.cursor  # filled in by the rules: the session's own user
            await self.groups.check_reader(cursor.conv_id, cursor.user_id)
        await self.transfers.forward(env, key)

    async def _check_typing(self, typing: im_pb2.Typing) -> None:
        """Typing only where the user may post: a friend's pair, a group it is in unmuted."""
        ref = parse_conv_id(typing.conv_id)  # the rules let only conversation ids through
        if ref.dest_type == GROUP:
            await self.groups.check_post(typing.conv_id, typing.user_id)
        else:
            await self._check_friends(typing.user_id, ref.peer_of(typing.user_id))

    async def _send_stops(self, stops: list[im_pb2.Envelope]) -> None:
        """A closed session's stops, checked like its starts were (a start that was refused,
        to a stranger, leaves a stop that must be refused too)."""
        for env in stops:
            # refused, or no transfer: nothing to stop, or the receiver's TTL clears it
            with contextlib.suppress(ProtocolError):
                await self._check_typing(env.typing)
                self._send_typing(env)

    def _send_typing(self, env: im_pb2.Envelope) -> None:
        """Typing to its conversation's transfer as a control frame, now or never (a typing
        notice that waited for a link would be stale when it came)."""
        handler = self.transfers.pick_handler(env.typing.conv_id)
        link = None if handler is None else handler.link
        if link is None or link.closing:
            raise ProtocolError("no transfer available, retry later", code=im_pb2.INTERNAL)
        link.send_control(env)

    async def is_revoked(self, claims: Claims) -> bool:
        """Revoked as far as we know: published to us, or in the database. A database that does
        not answer is logged and passed over (fail open): the published revocations still
        apply, and refusing every login during an outage would be worse."""
        if self.revoked.covers(claims):
            return True
        if self.revocation_check is None:
            return False
        try:
            return await self.revocation_check.revoked(claims)
        except BackendError as exc:
            log.warning("revocation check skipped for %s: %s", claims.user_id, exc)
            self.counters.error("REVOCATION_UNCHECKED")
            return False

    async def check_devices(self, user_id: str, device: str) -> None:
        """Refuse one more device when the user already has ``max_devices`` online, here or on
        another connector (``user_status``); a reconnecting device does not count twice."""
        limit = self.settings.max_devices
        try:
            elsewhere = set(await self.status.lookup(user_id))
        except IMError as exc:
            log.warning("device count of %s from this connector only: %s", user_id, exc)
            elsewhere = set()
        devices = elsewhere | set(self._sessions.get(user_id, {}))
        devices.discard(device)
        if len(devices) >= limit:
            raise ProtocolError(
                f"{len(devices)} devices online already, the limit is {limit}",
                code=im_pb2.TOO_MANY_DEVICES,
                fatal=True,
            )

    # -- buses -----------------------------------------------------------------------------------

    async def _follow_revocations(self, bus: RevocationBus) -> None:
        async for rev in bus.follow():
            if rev is None:
                # (re)subscribed: whatever was published meanwhile is only in the database
                for session in self.all_sessions():
                    if session.claims is not None and await self.is_revoked(session.claims):
                        _revoke(session)
                continue
            self.revoked.add(rev)
            for session in self.sessions_of(rev.user_id):
                if session.claims is not None and rev.covers(session.claims):
                    _revoke(session)

    async def _follow_kicks(self, bus: KickBus) -> None:
        """An admin kicked a device (user_status/kick.py): close its session if it is here.
        REPLACED, so the client library does not reconnect by itself."""
        async for kick in bus.follow():
            for session in self.sessions_of(kick.user_id):
                if kick.matches(session.user_id, session.device_id):
                    log.info("%s: kicked (%s)", session, kick.reason)
                    session.close(ProtocolError(kick.reason, code=im_pb2.REPLACED, fatal=True))

    async def _announce(self) -> None:
        """The registry had lost this connector (first beat, lapse, Redis restarted empty):
        record every session again; fanouts meant for them went nowhere meanwhile, so list."""
        for session in self.all_sessions():
            await self.status.online(session.user_id, session.device_id, self.node_id)
            if self.presence is not None:
                self.presence.moved(session.user_id)
            session.request_relist(random.uniform(0.0, RELIST_SPREAD))

    # -- lifecycle -------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, *, wait_transfers: float = 5.0) -> None:
        s = self.settings
        tls = server_context(s.tls_cert, s.tls_key) if s.tls_enabled() else None
        handshake = s.greet_timeout if tls is not None else None  # a stalled one: like no GREET
        self._server = await serve_links(
            s.bind_host,
            s.connector_port,
            self._on_client,
            self.client_link_config,
            start_serving=False,
            ssl=tls,
            ssl_handshake_timeout=handshake,
            admission=self.preauth,
        )
        if s.ws_port:
            # browsers: the same sessions, limits and admission bounds over WebSocket
            self._ws_server = await serve_ws_links(
                s.bind_host,
                s.ws_port,
                self._on_client,
                self.client_link_config,
                start_serving=False,
                ssl=tls,
                ssl_handshake_timeout=handshake,
                admission=self.preauth,
            )
            self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        self.port = self._server.sockets[0].getsockname()[1]
        if not s.node_id and s.connector_port == 0:
            self.node_id = s.name(self.port)
            self.transfers.node_id = self.node_id
        self.address = f"{s.advertised_host()}:{self.port}"
        # live in the registry before the first client registers: lookups forget devices on
        # connectors they don't know
        await self.status.beat("connector", self.node_id, self.address, s.node_ttl)
        self._spawn(
            keep_alive(
                self.status, "connector", self.node_id, self.address, s.node_ttl, self._announce
            )
        )
        if self.revocations is not None:
            self._spawn(self._follow_revocations(self.revocations))
        if self.kicks is not None:
            self._spawn(self._follow_kicks(self.kicks))
        if self.group_notices is not None:
            self.notices = NoticeFollower(
                self.group_notices, self.reader, self.sessions_of, self.groups.forget_group
            )
            self._spawn(self.notices.run())
        self._spawn(self.transfers.watch())
        if self.presence is not None:
            self._spawn(self.presence.work())
            self._spawn(self.presence.follow())
        # serve once a transfer link is up: transfers started beside us may not be in the
        # registry at the first look, so keep looking (the watcher adds them) for a while
        for _ in range(max(1, int(wait_transfers / 0.05))):
            if self.transfers.ready():
                break
            await asyncio.sleep(0.05)
        else:
            log.warning("no transfer reachable yet; clients will get errors until one is")
        await self._server.start_serving()
        if self._ws_server is not None:
            await self._ws_server.start_serving()

    def _on_client(self, link: Link) -> ClientSession:
        """A client connection was accepted (the GREET deadline is the link's own)."""
        self.counters.connections += 1
        session = ClientSession(self, link)
        if self._stopping:
            link.close()
        return session

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close sessions, leave the registry, then drop transfer links (once
        what they hold was acknowledged, or ``grace`` ran out)."""
        self._stopping = True
        for server in (self._server, self._ws_server):
            if server is not None:
                server.close()
        sessions = self.all_sessions()
        stopping = ProtocolError("server stopping", code=im_pb2.SHUTTING_DOWN, fatal=True)
        for s in sessions:
            s.close(stopping)
        links = [s.link for s in sessions if isinstance(s.link, Link)]
        waits = [asyncio.ensure_future(link.wait_closed()) for link in links]
        if waits:
            await asyncio.wait(waits, timeout=grace)
        if self.presence is not None:
            await self.presence.drain(min(grace, 2.0))
        try:
            await self.status.leave("connector", self.node_id)
        except IMError as exc:
            log.warning("could not leave the registry: %s", exc)
        for _ in range(int(min(grace, 3.0) / 0.02)):
            if not self.transfers.busy():
                break
            await asyncio.sleep(0.02)
        await self.transfers.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in (self._server, self._ws_server):
            if server is not None:
                await server.wait_closed()


def _revoke(session: ClientSession) -> None:
    log.info("%s: token revoked, closing", session)
    session.close(ProtocolError("token revoked", code=im_pb2.BAD_TOKEN, fatal=True))
