"""The lean client of ``im bench``: senders and receivers that speak the protocol and nothing more.

Why: the client library (``IMClient``) costs the load generator about 300 µs of CPU per message
(an event queue, the sync machine, the outbox's bookkeeping, bodies opened), on the same two
cores as the servers, so ``online`` measured the bench as much as the servers. A lean device
skips the library's conveniences but keeps every rule the server can see:

- it is a real ``common.link.Link`` (windowed frames, link acks, heartbeats) that GREETs with
  its own token (minted with the target's secret, else a REST login per user) and waits for
  WELCOME and the first CaughtUp (after which the connector routes pushes to it);
- a chat id carries the device's id slot (WELCOME's ``id_slot``; ``common.ids.MessageIdGen``),
  its body is sealed as the library seals it (``client.bodies.text_chat``) with the pair key
  REST gave when the two became friends, and its ``after_id`` names the newest earlier chat of
  the conversation this device still has without SENT (0 if none), as ``client/outbox.py``;
- a sender's flight gets SENT when the server's SENT for that id arrives (it carries the seq),
  DELIVERED (READ) when the peer's DELIVERED (READ) cursor for the conversation reaches that
  seq, as ``client/sync.py`` turns cursors into receipts;
- a receiver takes the pushed chats in seq order per conversation and sends its DELIVERED cursor
  coalesced as ``client/sync.py`` does: at once when the last one went ``CURSOR_EVERY`` (0.1 s)
  ago or more, else from a ticker once that much time has passed, never one per chat.

What it does not do (the library does): Sync a gap, resend, seal again, open bodies. So a run
that loses anything shows it instead of repairing it: a chat without SENT stays in flight and
ends as ``missing``; a push below the conversation's top (``duplicates``, ``disorder``) or past
a gap (``gaps``), and every ERROR frame (``out_of_order`` and ``rate_limited`` counted apart
too), is an error of the run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from client.bodies import text_chat
from client.rest import RestClient
from client.sync import CURSOR_EVERY
from common.convid import pair_conv_id
from common.errors import IMError
from common.ids import MessageIdGen
from common.link import Link, LinkClosed, LinkConfig, open_link
from common.tokens import TokenSigner
from proto import im_pb2
from workload.bench import PASSWORD, TEXT, Target
from workload.benchload import Flow, SendFn, Stats, drive, limited, retried

DEVICE = "lean"
TOKEN_TTL = 3600
REST_AT_ONCE = 16  # registrations and logins are a slow hash each: more only queue in REST
CONNECT_AT_ONCE = 100
CONNECT_TRIES = 3
GREET_WAIT = 30.0
TICK = 0.05  # the library's ticker (client/core.py): coalesced cursors go out from it
DURABLE_PER_RECEIVER = 8  # durable: senders befriending one never-connected receiver
SENT, DELIVERED, READ = int(im_pb2.SENT), int(im_pb2.DELIVERED), int(im_pb2.READ)
OUT_OF_ORDER, RATE_LIMITED = int(im_pb2.OUT_OF_ORDER), int(im_pb2.RATE_LIMITED)


@dataclass
class Counts:
    """What the lean devices saw wrong in one run, besides ``Stats.errors`` (which counts each
    of these too): the result carries them."""

    duplicates: int = 0
    disorder: int = 0
    gaps: int = 0
    out_of_order: int = 0
    rate_limited: int = 0
    links_lost: int = 0


@dataclass
class Run:
    """The run the devices report to now (a scenario runs closed, then maybe open loop)."""

    stats: Stats = field(default_factory=lambda: Stats(final="SENT"))
    counts: Counts = field(default_factory=Counts)


class _Device:
    """What a sender and a receiver share: GREET, WELCOME, CaughtUp, ERROR frames."""

    def __init__(self, user: str, token: str, run: Run) -> None:
        self.user = user
        self.token = token
        self.run = run
        self.link: Link | None = None
        self.closing = False  # closed by us: not a lost link
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[None] = loop.create_future()
        self.caught_up: asyncio.Future[None] = loop.create_future()
        self._refused = ""

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "welcome":
            self.welcomed(env.welcome.id_slot)
            if not self.welcome.done():
                self.welcome.set_result(None)
        elif kind == "caught_up":
            if not self.caught_up.done():
                self.caught_up.set_result(None)
        elif kind == "error":
            self._error(env.error)
        else:
            await self.frame(kind, env)

    def welcomed(self, slot: int) -> None:
        """WELCOME: ``slot`` is the connector's word on the token's id slot."""

    async def frame(self, kind: str | None, env: im_pb2.Envelope) -> None:
        """Any other frame (presence, conv_state, ...: nothing to do)."""

    def _error(self, e: im_pb2.Error) -> None:
        text = f"{self.user}: {im_pb2.ErrorCode.Name(e.code)} {e.detail}"
        if not self.caught_up.done():
            self._refused = text  # GREET refused: the connect says why
            return
        c = self.run.counts
        if e.code == OUT_OF_ORDER:
            c.out_of_order += 1
        elif e.code == RATE_LIMITED:
            c.rate_limited += 1
        self.run.stats.error(text)
        if e.ref_msg_id:
            self.refused(e.ref_msg_id)

    def refused(self, msg_id: int) -> None:
        """The server refused chat ``msg_id``: it will never get SENT (its flight stays open and
        ends the run as ``missing``)."""

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        why = self._refused or "closed"
        for fut in (self.welcome, self.caught_up):
            if not fut.done():
                fut.set_exception(IMError(why))
        if not self.closing and self.caught_up.done():
            self.run.counts.links_lost += 1
            err = link.close_error
            self.run.stats.error(f"{self.user}: link lost: {err.detail if err else 'closed'}")

    def close(self) -> None:
        self.closing = True
        if self.link is not None:
            self.link.close()


class LeanSender(_Device):
    """One user's device chatting with one friend: sealed chats, after_id, receipts timed."""

    def __init__(self, user: str, token: str, run: Run, peer: str, key: str) -> None:
        super().__init__(user, token, run)
        self.peer = peer
        self.key = key
        self.conv_id = pair_conv_id(user, peer)
        self.flow: Flow | None = None
        self.ids = MessageIdGen()
        # ids without SENT, in the order made (ascending): the newest is the next after_id
        self.unsent: OrderedDict[int, None] = OrderedDict()
        # (seq, id) of chats with SENT whose DELIVERED / READ the peer's cursor has not passed
        self.wait_delivered: list[tuple[int, int]] = []
        self.wait_read: list[tuple[int, int]] = []
        self.peer_delivered = 0
        self.peer_read = 0
        self.want_delivered = False
        self.want_read = False

    def welcomed(self, slot: int) -> None:
        self.ids.slot = slot  # every id from now on carries it, and still never goes back

    def refused(self, msg_id: int) -> None:
        # not resent (the run shows the loss): later chats must not wait for it as after_id
        self.unsent.pop(msg_id, None)

    def use(self, flow: Flow) -> None:
        """The flow of the next run, and the receipts it waits for; what the last run left
        without SENT is forgotten (its flights were counted there), so it names no after_id."""
        self.flow = flow
        self.unsent.clear()
        self.wait_delivered.clear()
        self.wait_read.clear()
        self.want_delivered = "DELIVERED" in flow.stats.required
        self.want_read = "READ" in flow.stats.required

    async def send(self) -> int:
        """One sealed chat; its id (the receipts name it). Waits for window room."""
        link = self.link
        if link is None:
            raise LinkClosed(f"{self.user} is not connected")
        msg_id = self.ids()
        chat = text_chat(self.key, msg_id, self.user, self.peer, TEXT)
        if self.unsent:
            chat.after_id = next(reversed(self.unsent))
        self.unsent[msg_id] = None
        await link.send_body("chat", chat.SerializeToString())
        return msg_id

    async def frame(self, kind: str | None, env: im_pb2.Envelope) -> None:
        flow = self.flow
        if kind == "ack":
            a = env.ack
            if a.ack_type != SENT or a.ack_msg_id not in self.unsent:
                return  # a second SENT (for a resend) changes nothing: SENT once per id
            del self.unsent[a.ack_msg_id]
            if flow is None:
                return
            flow.receipt("SENT", a.ack_msg_id)
            if self.want_delivered:
                self._await_peer(a.seq, a.ack_msg_id, flow)
        elif kind == "cursor" and flow is not None:
            c = env.cursor
            if c.conv_id != self.conv_id or c.user_id != self.peer:
                return
            if c.type == READ:
                self._peer_moved(DELIVERED, c.seq, flow)  # what is read was delivered
            self._peer_moved(c.type, c.seq, flow)

    def _await_peer(self, seq: int, msg_id: int, flow: Flow) -> None:
        if self.peer_delivered >= seq:
            flow.receipt("DELIVERED", msg_id)
        else:
            bisect.insort(self.wait_delivered, (seq, msg_id))
        if self.want_read:
            if self.peer_read >= seq:
                flow.receipt("READ", msg_id)
            else:
                bisect.insort(self.wait_read, (seq, msg_id))

    def _peer_moved(self, type_: int, seq: int, flow: Flow) -> None:
        if type_ == DELIVERED and seq > self.peer_delivered:
            self.peer_delivered = seq
            _pass(self.wait_delivered, seq, "DELIVERED", flow)
        elif type_ == READ and seq > self.peer_read:
            self.peer_read = seq
            _pass(self.wait_read, seq, "READ", flow)


def _pass(waiting: list[tuple[int, int]], seq: int, kind: str, flow: Flow) -> None:
    cut = bisect.bisect_right(waiting, (seq, 1 << 64))
    for _, msg_id in waiting[:cut]:
        flow.receipt(kind, msg_id)
    del waiting[:cut]


@dataclass(slots=True)
class _Conv:
    have: int = 0  # every seq up to here came, in order
    top: int = 0  # the highest seq that came
    sent: int = 0  # the DELIVERED cursor sent
    sent_at: float = -1e9


class LeanReceiver(_Device):
    """One user's device taking pushed chats: seq order checked, cursors coalesced."""

    def __init__(self, user: str, token: str, run: Run, *, read: bool = False) -> None:
        super().__init__(user, token, run)
        self.read = read  # READ cursors too, with the DELIVERED ones
        self.convs: dict[str, _Conv] = {}
        self.dirty: set[str] = set()

    async def frame(self, kind: str | None, env: im_pb2.Envelope) -> None:
        if kind != "chat":
            return
        chat = env.chat
        if not chat.conv_id or chat.msg_type == im_pb2.SYSTEM:
            return
        c = self.convs.get(chat.conv_id)
        if c is None:
            c = self.convs[chat.conv_id] = _Conv()
        seq = chat.seq
        if seq <= c.top:
            counts = self.run.counts
            if seq <= c.have:
                counts.duplicates += 1
                what = "duplicate"
            else:
                counts.disorder += 1
                what = "below the top"
            self.run.stats.error(f"{self.user}: {chat.conv_id} seq {seq} {what} ({c.top})")
            return
        if seq == c.have + 1 and c.top == c.have:
            c.have = c.top = seq
            await self.flush(chat.conv_id, c, time.monotonic())
            return
        if c.top == c.have:  # the first chat past a gap: no Sync here, so it stays one
            self.run.counts.gaps += 1
            self.run.stats.error(f"{self.user}: {chat.conv_id} seq {seq} after {c.have}")
        c.top = seq

    async def flush(self, conv_id: str, c: _Conv, now: float) -> None:
        """The DELIVERED cursor up to ``have`` if the last went long enough ago (and the window
        has room: the reader never waits for it), else later from the ticker."""
        link = self.link
        if c.have <= c.sent:
            self.dirty.discard(conv_id)
            return
        if now - c.sent_at < CURSOR_EVERY or link is None or link.window_full:
            self.dirty.add(conv_id)
            return
        self.dirty.discard(conv_id)
        c.sent, c.sent_at = c.have, now
        cur = im_pb2.Cursor(conv_id=conv_id, type=im_pb2.DELIVERED, seq=c.have)
        with contextlib.suppress(LinkClosed):  # its on_closed counts a lost link
            await link.send(im_pb2.Envelope(cursor=cur))
            if self.read:
                cur = im_pb2.Cursor(conv_id=conv_id, type=im_pb2.READ, seq=c.have)
                await link.send(im_pb2.Envelope(cursor=cur))


async def _cursor_ticker(receivers: list[LeanReceiver]) -> None:
    """The cursors that waited for their time, every TICK (the library's ticker)."""
    while True:
        await asyncio.sleep(TICK)
        now = time.monotonic()
        for r in receivers:
            for conv_id in list(r.dirty):
                await r.flush(conv_id, r.convs[conv_id], now)


class LeanScenario:
    """``online`` (each sender with its own receiver, both online) or ``durable`` (receivers
    registered but never connected, so a chat is only a commit to its timeline): users and
    devices are made once, then :meth:`run` as many times as asked (closed, then open loop)."""

    def __init__(
        self,
        target: Target,
        prefix: str,
        *,
        scenario: str,
        senders: int,
        read: bool = False,
        progress: bool = False,
    ) -> None:
        if scenario not in ("online", "durable"):
            raise ValueError(f"no lean scenario {scenario!r}")
        self.target = target
        self.scenario = scenario
        self.online = scenario == "online"
        self.read = read and self.online
        self.progress = progress
        self.sender_names = [f"{prefix}-s{i:05d}" for i in range(senders)]
        per = 1 if self.online else DURABLE_PER_RECEIVER
        self.receiver_names = [f"{prefix}-r{i:05d}" for i in range(-(-senders // per))]
        self.peer_of = {s: self.receiver_names[i // per] for i, s in enumerate(self.sender_names)}
        self.signer = TokenSigner(target.secret.encode()) if target.secret else None
        self.run_now = Run()
        self.senders: list[LeanSender] = []
        self.receivers: list[LeanReceiver] = []
        self.connectors: list[tuple[str, int]] = []
        self.setup_s = 0.0
        self._ticker: asyncio.Task[None] | None = None

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[{self.scenario}] {text}", file=sys.stderr, flush=True)

    async def prepare(self) -> None:
        """Register every user, befriend each sender with its receiver (the pair key is
        REST's answer), connect the devices that are online in this scenario."""
        t0 = time.monotonic()
        names = self.sender_names + self.receiver_names
        tokens = await self._register(names)
        keys = await self._befriend(tokens)
        run = self.run_now
        self.senders = [
            LeanSender(s, tokens[s], run, self.peer_of[s], keys[s]) for s in self.sender_names
        ]
        if self.online:
            self.receivers = [LeanReceiver(r, tokens[r], run, read=self.read)
                              for r in self.receiver_names]  # fmt: skip
        await self._connect([*self.receivers, *self.senders])
        if self.receivers:
            self._ticker = asyncio.create_task(_cursor_ticker(self.receivers))
        self.setup_s = time.monotonic() - t0
        self.say(f"{len(names)} users, {len(self.senders) + len(self.receivers)} devices "
                 f"online after {self.setup_s:.1f} s")  # fmt: skip

    async def _register(self, names: list[str]) -> dict[str, str]:
        """Each user registered, and its token: minted, or a REST login (a second hash)."""
        rest = RestClient(self.target.rest, timeout=60.0)
        tokens: dict[str, str] = {}

        async def register(i: int) -> None:
            name = names[i]
            await rest.register(name, PASSWORD)
            if self.signer is not None:
                tokens[name] = self.signer.issue(name, TOKEN_TTL, device_id=DEVICE)
            else:
                tokens[name] = (await rest.login(name, PASSWORD, DEVICE)).token

        try:
            await limited(REST_AT_ONCE, len(names), register)
            if self.target.connector is not None:
                self.connectors = [self.target.connector]
            else:  # which connectors there are: one login says
                login = await rest.login(names[0], PASSWORD, DEVICE)
                self.connectors = login.connectors or [login.connector]
                tokens[names[0]] = login.token
        finally:
            await rest.close()
        return tokens

    async def _befriend(self, tokens: dict[str, str]) -> dict[str, str]:
        """Sender asks, receiver accepts: the pair key (sender -> key), as the library gets it."""
        keys: dict[str, str] = {}
        todo = iter(self.sender_names)

        async def worker() -> None:  # one REST client each, its token set per call
            r = RestClient(self.target.rest, timeout=60.0)
            try:
                for s in todo:
                    peer = self.peer_of[s]
                    r.token = tokens[s]
                    await r.add_friend(peer)
                    r.token = tokens[peer]
                    key = await r.add_friend(s)
                    if key is None:
                        raise IMError(f"{s} and {peer} did not become friends")
                    keys[s] = key
            finally:
                await r.close()

        await asyncio.gather(*(worker() for _ in range(REST_AT_ONCE)))
        return keys

    async def _connect(self, devices: list[_Device]) -> None:
        config = LinkConfig()  # the library's (client/core.py)

        async def attempt(i: int) -> str:
            """'' once WELCOMEd and caught up (the connector routes to it from then), else
            why not."""
            d = devices[i]
            host, port = self.connectors[i % len(self.connectors)]
            loop = asyncio.get_running_loop()
            d.welcome, d.caught_up = loop.create_future(), loop.create_future()
            try:
                link = await open_link(host, port, d, config, name=f"{DEVICE} {d.user}")
            except (OSError, TimeoutError) as exc:
                return f"connect: {exc}"
            d.link = link
            link.send_control(im_pb2.Envelope(greet=im_pb2.Greet(token=d.token, device_id=DEVICE)))
            try:
                async with asyncio.timeout(GREET_WAIT):
                    await d.welcome
                    await d.caught_up
            except (IMError, TimeoutError) as exc:
                d.link = None
                link.abort()
                await link.wait_closed()
                for fut in (d.welcome, d.caught_up):  # seen here: not "never retrieved"
                    if fut.done() and not fut.cancelled():
                        fut.exception()
                return f"greet: {exc or 'timeout'}"
            return ""

        async def connect(i: int) -> None:
            why = await retried(lambda: attempt(i), CONNECT_TRIES)
            if why:
                raise IMError(f"{devices[i].user}: {why}")

        await limited(CONNECT_AT_ONCE, len(devices), connect)

    async def run(
        self,
        *,
        rate: float,
        window: int,
        warmup: float,
        duration: float,
        probe: Callable[[str], object] | None = None,
    ) -> dict[str, object]:
        if not self.senders:
            await self.prepare()
        if self.online:
            required = {"SENT", "DELIVERED", "READ"} if self.read else {"SENT", "DELIVERED"}
            stats = Stats(final="DELIVERED", required=frozenset(required))
        else:
            stats = Stats(final="SENT")
        self.run_now.stats, self.run_now.counts = stats, Counts()
        load: list[tuple[Flow, SendFn]] = []
        for s in self.senders:
            flow = Flow(stats)
            s.use(flow)
            load.append((flow, s.send))
        result = await drive(
            load, window=window, rate=rate, warmup=warmup, duration=duration,
            settle=max(10.0, 2 * warmup), label=self.scenario, progress=self.progress,
            probe=probe,
        )  # fmt: skip
        counts = self.run_now.counts
        config: dict[str, object] = {"window": window, "rate": rate or None, "client": "lean"}
        if self.online:
            config |= {"pairs": len(self.senders), "read": self.read}
        else:
            config |= {
                "senders": len(self.senders),
                "receivers": len(self.receiver_names),
                "receivers_online": 0,
            }
        config["tokens"] = "minted with the target's secret" if self.signer else "REST login"
        return {
            "scenario": self.scenario,
            "mode": "open" if rate > 0 else "closed",
            **result,
            "duplicates": counts.duplicates,
            "disorder": counts.disorder,
            "gaps": counts.gaps,
            "out_of_order": counts.out_of_order,
            "rate_limited": counts.rate_limited,
            "links_lost": counts.links_lost,
            "users_setup_s": round(self.setup_s, 1),
            "config": config,
        }

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        devices: list[_Device] = [*self.senders, *self.receivers]
        for d in devices:
            d.close()
        await asyncio.gather(
            *(d.link.wait_closed() for d in devices if d.link is not None), return_exceptions=True
        )
