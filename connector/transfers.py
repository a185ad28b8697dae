"""The connector's links to the transfers: which one takes a frame, and what a link's loss means.

- a conversation keeps one transfer while that transfer lives: rendezvous hashing over the linked
  ones, so a transfer joining or leaving moves only the conversations it wins or held;
- what a lost link never acknowledged (chats, cursor records) goes out again through the others
  before anything newer is forwarded, and so does every chat it did acknowledge whose commit
  has not come back as a fanout yet: a transfer killed between its link-ack and its publish
  would otherwise lose the chat to the client's resend, after chats sent later (sender order,
  I3). The writer keeps one row per message identity and cursors only move forward, so a frame
  that did get through is harmless twice (a chat's resend is SENT again at its first seq);
- a fanout may have been lost with a link, and a transfer that (re)sends WELCOME may have
  missed routes: either way every session lists again (``on_change``) and Syncs what it lacks;
- every live transfer of the registry gets a link kept open, and one that left is unlinked.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable

from common import health, metrics
from common.config import Settings
from common.errors import ConfigError, IMError, ProtocolError
from common.ids import route_key
from common.link import Link, LinkClosed, LinkConfig, log_peer_error, open_link
from common.tokens import TokenSigner
from connector.incommit import CHAT_IN, ChatKey, InCommit
from proto import im_pb2

log = logging.getLogger(__name__)

FORWARD_WAIT = 5.0  # seconds a client's frame may wait for a transfer link
# A conversation whose chats are still in commit through another transfer's link waits this
# long at most before it moves to the transfer it hashes to now (sender order across a
# transfer coming back, or one link dropping while another takes over)
HANDOVER_WAIT = 2.0
TransferSource = Callable[[], Awaitable[dict[str, str]]]
# a fanout for the sessions here; True when a sending device here got its SENT from it
FanoutSink = Callable[[im_pb2.Fanout], object]


def key_of(env: im_pb2.Envelope) -> str | None:
    """The routing key of a frame for a transfer (None: not one we forward)."""
    kind = env.WhichOneof("body")
    if kind == "chat":
        return route_key(env.chat.from_id, env.chat.dest_type, env.chat.dest_id)
    if kind == "record" and env.record.WhichOneof("body") == "cursor":
        return env.record.cursor.conv_id
    return None


def parse_addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def static_transfers(settings: Settings) -> TransferSource:
    """Without a shared registry: the configured transfer addresses, named by address."""
    fixed = {f"{h}:{p}": f"{h}:{p}" for h, p in settings.transfers()}

    async def source() -> dict[str, str]:
        return fixed

    return source


class TransferLinkHandler:
    """The connector's side of its link to one transfer."""

    def __init__(self, links: TransferLinks, node_id: str, addr: tuple[str, int]) -> None:
        self.links = links
        self.node_id = node_id
        self.addr = addr
        self.rank = node_id.encode()
        self.ready = asyncio.Event()
        self.link: Link | None = None
        self.task: asyncio.Task[None] | None = None
        # set as soon as the link is down, before on_closed reroutes what it held: the keeper
        # dials again at once, since that reroute may need this transfer's next link
        self.down = asyncio.Event()
        # chats sent on the current link whose commit has not come back, in send order
        self.in_commit = InCommit()

    def take_in_commit(self, unacked: list[im_pb2.Envelope]) -> list[im_pb2.Envelope]:
        """What a lost link leaves to forward again: its chats not seen committed, in send
        order, then its other unacked frames (cursor records)."""
        chats = self.in_commit.take()
        held = {(e.chat.from_id, e.chat.id) for e in chats}
        rest = [
            e
            for e in unacked
            if e.WhichOneof("body") != "chat" or (e.chat.from_id, e.chat.id) not in held
        ]
        return chats + rest

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "fanout":
            fanout = env.fanout
            if fanout.WhichOneof("body") != "chat":
                self.links.on_fanout(fanout)
                return
            chat = fanout.chat
            came_in = self.links.committed((chat.from_id, chat.id))
            # a SENT given here for a chat that came in here: frame in to SENT out
            if self.links.on_fanout(fanout) is True and came_in is not None:
                metrics.send_latency("connector", time.monotonic() - came_in)
        elif kind == "welcome":
            self.ready.set()
            health.LINKS.up(self.links.node_id, "transfer", self.node_id)
            self.links.on_change()
        elif kind == "error":
            log_peer_error(log, link, env)
        else:
            raise ProtocolError(f"unexpected {kind} from a transfer", code=im_pb2.UNKNOWN_TYPE)

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        was_ready = self.ready.is_set()
        self.ready.clear()
        self.down.set()
        if was_ready:
            health.LINKS.down(self.links.node_id, "transfer", self.node_id)
            self.links.on_change()
        again = self.take_in_commit(unacked)
        if again:
            log.warning(
                "transfer %s gone with %d frames not acked or not seen committed; sending them"
                " through another",
                link.name,
                len(again),
            )
            await self.links.reroute(again)


class TransferLinks:
    """Every link of this connector to a transfer."""

    def __init__(
        self,
        settings: Settings,
        node_id: str,
        signer: TokenSigner,
        source: TransferSource,
        on_fanout: FanoutSink,
        on_change: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.signer = signer
        self.source = source
        self.on_fanout = on_fanout
        self.on_change = on_change
        self.config = LinkConfig.from_settings(settings, node=True)
        self.handlers: dict[str, TransferLinkHandler] = {}
        self.lost = 0  # frames no transfer took back
        self.stopping = False
        self._rerouting = 0
        self._reroute_done = asyncio.Event()
        self._reroute_done.set()

    def ready(self) -> bool:
        return any(h.ready.is_set() for h in self.handlers.values())

    def pick_handler(self, key: str) -> TransferLinkHandler | None:
        best: tuple[int, str] | None = None
        chosen: TransferLinkHandler | None = None
        for node, handler in self.handlers.items():
            cand = handler.link
            if cand is None or cand.closing or not handler.ready.is_set():
                continue
            score = (zlib.crc32(handler.rank + key.encode()), node)
            if best is None or score > best:
                best, chosen = score, handler
        return chosen

    def committed(self, key: ChatKey) -> float | None:
        """A chat's commit came back (its fanout): no link need forward it again. The time it
        came in from its client when a link of ours held it, else None."""
        came_in = None
        for handler in self.handlers.values():
            when = handler.in_commit.forget(key)
            if when is not None:
                came_in = when
        return came_in

    async def send(self, env: im_pb2.Envelope, key: str) -> None:
        """Send on the conversation's transfer's link (LinkClosed: none, or it just went),
        remembering a chat until its commit comes back."""
        handler = self.pick_handler(key)
        if handler is not None and env.WhichOneof("body") == "chat":
            handler = await self._handed_over(handler, key)
        link = None if handler is None else handler.link
        if handler is None or link is None:
            raise LinkClosed("no transfer")
        await link.send(env)
        if env.WhichOneof("body") == "chat" and handler.link is link:
            handler.in_commit.add(env, CHAT_IN.get() or time.monotonic())

    async def _handed_over(
        self, handler: TransferLinkHandler, key: str
    ) -> TransferLinkHandler | None:
        """``handler``, once no other link has a chat of conversation ``key`` in commit (or
        :data:`HANDOVER_WAIT` passed): a conversation that just moved to another transfer
        must not commit a newer chat ahead of older ones still on their way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOVER_WAIT
        while any(h is not handler and h.in_commit.holds(key) for h in self.handlers.values()):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
            again = self.pick_handler(key)
            if again is None:
                return None
            handler = again
        return handler

    async def forward(self, env: im_pb2.Envelope, key: str) -> None:
        """Send to the conversation's transfer. Without one, wait up to :data:`FORWARD_WAIT`
        for a link (the session's next frames wait behind this one, so a device's chats still
        commit in the order it sent them across a short outage); then INTERNAL: the client
        sends it again later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORWARD_WAIT
        while True:
            if self._rerouting:
                await self._reroute_done.wait()
            try:
                await self.send(env, key)
                return
            except LinkClosed:
                pass  # none yet, or what it held is rerouted: this one goes on the next link
            if self.stopping or loop.time() >= deadline:
                raise ProtocolError("no transfer available, retry later", code=im_pb2.INTERNAL)
            await asyncio.sleep(0.05)

    async def reroute(self, unacked: list[im_pb2.Envelope]) -> None:
        self._rerouting += 1
        self._reroute_done.clear()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(5.0, 2 * self.settings.node_ttl)
            for env in unacked:
                key = key_of(env)
                if key is None:
                    continue
                while True:
                    try:
                        await self.send(env, key)
                        break
                    except LinkClosed:
                        if loop.time() > deadline or self.stopping:
                            log.error("no transfer to take %s back", env.WhichOneof("body"))
                            self.lost += 1
                            break
                        await asyncio.sleep(0.1)
        finally:
            self._rerouting -= 1
            if not self._rerouting:
                self._reroute_done.set()

    async def keep(self, handler: TransferLinkHandler) -> None:
        """Hold a link to one transfer open, dialing again whenever it drops."""
        delay = 0.1
        token = self.signer.issue(self.node_id, 3600 * 24 * 365, role="node")
        host, port = handler.addr
        while not self.stopping:
            handler.down.clear()
            try:
                link = await open_link(
                    host, port, handler, self.config, name=f"transfer {handler.node_id}"
                )
            except (OSError, TimeoutError) as exc:
                log.debug("transfer %s at %s:%d unreachable: %s", handler.node_id, host, port, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            handler.link = link
            link.send_control(
                im_pb2.Envelope(greet=im_pb2.Greet(token=token, node_id=self.node_id))
            )
            log.info("linked to transfer %s at %s:%d", handler.node_id, host, port)
            try:
                # not link.run(): that waits for on_closed, whose reroute may wait for a link
                # that only this loop makes (one transfer)
                await handler.down.wait()
            finally:
                handler.link = None
            if not self.stopping:
                log.warning("link to transfer %s lost; reconnecting", handler.node_id)

    async def watch(self) -> None:
        """Link to every live transfer, and drop the links of those that left the registry."""
        interval = max(0.2, self.settings.node_ttl / 3)
        while not self.stopping:
            try:
                live = await self.source()
            except IMError as exc:
                log.warning("transfer list unavailable, keeping the current links: %s", exc)
            else:
                self.reconcile(live)
            await asyncio.sleep(interval)

    def reconcile(self, live: dict[str, str]) -> None:
        for node, handler in list(self.handlers.items()):
            addr = live.get(node)
            if addr is None or not _same(addr, handler.addr):
                log.info("transfer %s left the registry; unlinking", node)
                del self.handlers[node]
                if handler.task is not None:
                    handler.task.cancel()
                if handler.link is not None:
                    handler.link.close()
        for node, addr in live.items():
            if node in self.handlers:
                continue
            try:
                handler = TransferLinkHandler(self, node, parse_addr(addr))
            except ConfigError as exc:
                log.warning("transfer %s has a bad address: %s", node, exc)
                continue
            self.handlers[node] = handler
            handler.task = asyncio.create_task(self.keep(handler), name=f"link {node}")

    def busy(self) -> bool:
        """A link still holds frames the transfer has not acknowledged."""
        return any(
            h.link is not None and not h.link.closing and h.link.unacked
            for h in self.handlers.values()
        )

    async def close(self) -> None:
        self.stopping = True
        tasks = []
        for handler in self.handlers.values():
            if handler.link is not None:
                handler.link.close()
            if handler.task is not None:
                handler.task.cancel()
                tasks.append(handler.task)
        await asyncio.gather(*tasks, return_exceptions=True)


def _same(addr: str, have: tuple[str, int]) -> bool:
    try:
        return parse_addr(addr) == have
    except ConfigError:
        return False
