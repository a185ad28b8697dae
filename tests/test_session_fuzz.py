"""Hypothesis against a client session: any sequence of frames and fanouts, well-formed but
wrong or not, gets either accepted or a coded ProtocolError; what reaches a transfer is only
ever what the rules allow; every accepted Sync is answered with its SyncDone and every listing
ends in CaughtUp.

The session (connector/clientsession.py) runs against fakes of its link and its host that
satisfy the Protocols it is typed against, and a timeline reader holding one conversation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import Settings
from common.errors import ProtocolError
from common.ids import MessageIdGen
from common.link import LinkClosed
from common.tokens import Claims, Revocation, RevokedSet, TokenSigner
from connector.clientsession import ClientSession, Counters
from connector.rules import ENVELOPE_HEADROOM, State
from connector.session import MAX_SYNCS
from proto import im_pb2
from timeline.model import ConvSummary, Entry

SECRET = b"session-fuzz-secret-0123456789"
USER, FRIEND, STRANGER = "alice", "bob", "mallory"
CONV = "p:alice:bob"
SLOT = 5
HEAD = 30
MAX_FRAME = 4096
CODES = set(im_pb2.ErrorCode.values()) - {im_pb2.ERROR_CODE_UNSPECIFIED}


class FakeLink:
    """What a session uses of a Link: windowed sends, control frames, errors, close."""

    def __init__(self) -> None:
        self.name = "fake"
        self.authenticated = False
        self.sent: list[im_pb2.Envelope] = []
        self.controls: list[im_pb2.Envelope] = []
        self.errors: list[tuple[str, int]] = []
        self.closing = False
        self.close_error: ProtocolError | None = None

    async def send(self, env: im_pb2.Envelope) -> int:
        if self.closing:
            raise LinkClosed("closed")
        self.sent.append(env)
        return len(self.sent)

    async def send_body(self, field: str | int, body: bytes) -> int:
        assert field == "chat"
        return await self.send(im_pb2.Envelope(chat=im_pb2.ChatMsg.FromString(body)))

    def send_control(self, env: im_pb2.Envelope) -> None:
        self.controls.append(env)

    def send_error(self, err: ProtocolError, ref_seq: int = 0, ref_msg_id: int = 0) -> None:
        self.errors.append((err.code_name, ref_msg_id))

    def close(self, error: ProtocolError | None = None) -> None:
        if not self.closing:
            self.closing = True
            self.close_error = error


def _entry(seq: int) -> Entry:
    chat = im_pb2.ChatMsg(
        id=seq, from_id=FRIEND, dest_id=USER, dest_type=im_pb2.SINGLE, conv_id=CONV, seq=seq
    )
    return Entry(CONV, seq, FRIEND, seq, 0, chat.SerializeToString())


class Reader:
    """One conversation of HEAD messages (the first two removed by retention)."""

    async def conversations(
        self,
        user_id: str,
        *,
        since_ms: int = 0,
        device_id: str = "",
        limit: int = 500,
        after: tuple[int, str] | None = None,
    ) -> list[ConvSummary]:
        if user_id != USER:
            return []
        # changed "now and always": every listing, whatever its since, lists it
        conv = ConvSummary(CONV, im_pb2.SINGLE, FRIEND, HEAD, None, 0, 0, 0, 0, HEAD, 1 << 62)
        if after is not None and (conv.changed, conv.conv_id) <= after:
            return []
        return [conv]

    async def page(
        self, conv_id: str, *, after: int = 0, before: int = 0, limit: int
    ) -> list[Entry]:
        if conv_id != CONV:
            return []
        return [_entry(s) for s in range(max(after + 1, 3), HEAD + 1)][:limit]

    async def head(self, conv_id: str) -> int:
        return HEAD if conv_id == CONV else 0


@dataclass
class Host:
    """The connector as a session sees it; what it forwards is recorded."""

    settings: Settings
    signer: TokenSigner
    node_id: str = "conn-fuzz"
    counters: Counters = field(default_factory=Counters)
    reader: Reader = field(default_factory=Reader)
    revoked: RevokedSet = field(default_factory=RevokedSet)
    forwarded: list[im_pb2.Envelope] = field(default_factory=list)
    registered: list[ClientSession] = field(default_factory=list)
    online_now: set[str] = field(default_factory=set)

    async def admit(self, claims: Claims, device_id: str) -> None:
        if self.revoked.covers(claims):
            raise ProtocolError("token revoked", code=im_pb2.BAD_TOKEN, fatal=True)

    def register(self, s: ClientSession) -> None:
        self.registered.append(s)

    def unregister(self, s: ClientSession) -> bool:
        self.registered.remove(s)
        return True

    async def online(self, s: ClientSession) -> None:
        self.online_now.add(s.device_id)

    async def offline(self, s: ClientSession) -> None:
        self.online_now.discard(s.device_id)

    async def check_chat(self, user_id: str, chat: im_pb2.ChatMsg) -> None:
        if chat.dest_type == im_pb2.GROUP:  # no group has this user (the connector's answer)
            raise ProtocolError("not a member", code=im_pb2.NOT_MEMBER)
        if {user_id, chat.dest_id} != {USER, FRIEND}:
            raise ProtocolError("not a friend", code=im_pb2.NOT_FRIEND)

    async def forward(self, env: im_pb2.Envelope, key: str) -> None:
        if env.WhichOneof("body") == "record" and env.record.cursor.conv_id.startswith("g:"):
            raise ProtocolError("not a member", code=im_pb2.NOT_MEMBER)
        self.forwarded.append(env)


def unslotted_token() -> str:
    """A genuine token of the days before id slots (no ``s`` claim)."""
    claims = {"u": USER, "d": "d1", "e": int(time.time()) + 60, "j": "old", "r": "user"}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    signed = f"v1.{payload}"
    sig = hmac.new(SECRET, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


TOKENS = ["valid", "other_device", "expired", "node", "forged", "revoked", "no_slot", "garbage"]


def token_of(host: Host, kind: str) -> str:
    signer = host.signer
    if kind == "valid":
        return signer.issue(USER, 60, device_id="d1", slot=SLOT)
    if kind == "other_device":
        return signer.issue(USER, 60, device_id="d2", slot=SLOT + 1)
    if kind == "expired":
        return signer.issue(USER, -1, device_id="d1", slot=SLOT)
    if kind == "node":
        return signer.issue(USER, 60, role="node")
    if kind == "forged":
        return TokenSigner(b"not-the-cluster-secret-42").issue(USER, 60, device_id="d1")
    if kind == "revoked":
        token = signer.issue(USER, 60, device_id="d1", slot=SLOT)
        claims = signer.verify(token)
        host.revoked.add(Revocation(claims.expires, claims.token_id, USER))
        return token
    if kind == "no_slot":  # a token made before id slots: no "s" claim
        return unslotted_token()
    return "v1.garbage.x"


users = st.sampled_from([USER, USER, USER, FRIEND, STRANGER, "", "x" * 65])
convs = st.sampled_from([CONV, CONV, CONV, "p:bob:mallory", "p:bob:alice", "g:team", "", "x:y"])
seqs = st.one_of(st.sampled_from([0, 1, 2, 29, 30, 31]), st.integers(0, 2**64 - 1))

greet_op = st.tuples(
    st.just("greet"),
    st.sampled_from(["valid", "valid", "other_device", *TOKENS]),
    st.sampled_from(["", "d1", "d2", "x" * 65]),
    st.sampled_from([0, 0, 1, 10**12]),
)
chat_op = st.tuples(
    st.just("chat"),
    users,
    st.sampled_from([FRIEND, FRIEND, FRIEND, USER, STRANGER, "", "x" * 65, "a:b"]),
    st.sampled_from(["ours", "ours", "ours", "other_slot", "zero"]),
    st.sampled_from([im_pb2.SINGLE, im_pb2.SINGLE, *im_pb2.DestType.values()]),
    st.sampled_from([im_pb2.TEXT, im_pb2.TEXT, *im_pb2.MsgType.values(), 7]),
    st.integers(min_value=0, max_value=MAX_FRAME),
)
cursor_op = st.tuples(
    st.just("cursor"),
    convs,
    st.sampled_from(["", "", USER, FRIEND]),
    st.sampled_from([im_pb2.READ, im_pb2.DELIVERED, *im_pb2.AckType.values(), 9]),
    seqs,
)
sync_op = st.tuples(st.just("sync"), convs, seqs, seqs, st.sampled_from([0, 1, 5, 200, 10**6]))
fanout_op = st.tuples(
    st.just("fanout"),
    st.sampled_from([USER, FRIEND]),  # the chat's sender
    st.sampled_from(["ours", "other_slot"]),
    st.sampled_from([0, 0, im_pb2.ID_REUSED]),
)
other_op = st.tuples(
    st.just("other"), st.sampled_from(["welcome", "ack", "typing", "error", "record", "fanout"])
)
any_op = st.one_of(greet_op, chat_op, cursor_op, sync_op, fanout_op, other_op)
# half the runs start greeted, so most of the budget explores the AUTHENTICATED state
ops = st.tuples(st.booleans(), st.lists(any_op, max_size=25)).map(
    lambda t: [("greet", "valid", "d1", 0), *t[1]] if t[0] else t[1]
)


def msg_id(kind: str) -> int:
    if kind == "zero":
        return 0
    return MessageIdGen(SLOT if kind == "ours" else SLOT + 1)()


def envelope(host: Host, op: tuple[Any, ...]) -> im_pb2.Envelope:
    kind = op[0]
    if kind == "greet":
        _, token, device, since = op
        greet = im_pb2.Greet(token=token_of(host, token), device_id=device, since=since)
        return im_pb2.Envelope(greet=greet)
    if kind == "chat":
        _, frm, dest, id_kind, dest_type, msg_type, size = op
        chat = im_pb2.ChatMsg(
            id=msg_id(id_kind), from_id=frm, dest_id=dest, dest_type=dest_type, body=b"s" * size
        )
        chat.msg_type = msg_type  # an unknown enum value is kept, as from the wire
        chat.seq = 99  # a server stamp: never survives the edge
        return im_pb2.Envelope(chat=chat)
    if kind == "cursor":
        _, conv, user, ack_type, seq = op
        cursor = im_pb2.Cursor(conv_id=conv, user_id=user, seq=seq)
        cursor.type = ack_type
        return im_pb2.Envelope(cursor=cursor)
    if kind == "sync":
        _, conv, from_seq, to_seq, limit = op
        return im_pb2.Envelope(
            sync=im_pb2.Sync(conv_id=conv, from_seq=from_seq, to_seq=to_seq, limit=limit)
        )
    env = im_pb2.Envelope()
    getattr(env, op[1]).SetInParent()
    return env


def fanout_of(op: tuple[Any, ...]) -> im_pb2.Fanout:
    _, sender, id_kind, refused = op
    dest = FRIEND if sender == USER else USER
    chat = im_pb2.ChatMsg(
        id=msg_id(id_kind), from_id=sender, dest_id=dest, conv_id=CONV, seq=HEAD, server_time=1
    )
    return im_pb2.Fanout(users=[USER], chat=chat, refused=refused)


async def settle(session: ClientSession) -> None:
    for _ in range(200):
        if not session.rules.syncs and not session.rules.listing:
            break
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)


async def scenario(sequence: list[tuple[Any, ...]]) -> None:
    s = Settings(secret=SECRET.decode(), max_frame=MAX_FRAME, rate_burst=1000)
    host = Host(s, TokenSigner(SECRET))
    link = FakeLink()
    session = ClientSession(host, link)
    authenticated = False
    syncs = 0
    fanouts: list[im_pb2.Fanout] = []
    try:
        for op in sequence:
            if op[0] == "fanout":
                fanout = fanout_of(op)
                if session.state is State.AUTHENTICATED:  # before WELCOME it hears nothing
                    fanouts.append(fanout)
                session.deliver(fanout)
                await settle(session)
                continue
            env = envelope(host, op)
            before = len(host.forwarded)
            try:
                await session.on_frame(link, env)
            except ProtocolError as err:
                assert err.code in CODES, err
                assert len(host.forwarded) == before  # refused means not forwarded
                assert err.fatal or session.state is State.AUTHENTICATED
                if not authenticated:
                    assert session.state is State.CONNECTED and not link.authenticated
                if err.fatal:
                    break
                continue
            finally:
                assert session.rules.syncs <= MAX_SYNCS
            # a group's sync is the shell's to check (this reader has no groups: NOT_MEMBER)
            syncs += op[0] == "sync" and not op[1].startswith("g:")
            if session.state is State.AUTHENTICATED:
                authenticated = True
            if op[0] == "greet":  # only a live token of ours, for the device it names
                device = {"valid": "d1", "other_device": "d2"}[op[1]]
                assert op[2] in ("", device) and session.device_id == device
                assert link.authenticated and host.online_now == {device}
            await settle(session)
        await settle(session)
    finally:
        link.closing = True
        await session.on_closed(link, [])
    assert host.registered == [] and host.online_now == set()
    for env in host.forwarded:
        assert authenticated
        if env.WhichOneof("body") == "chat":
            c = env.chat
            assert c.from_id == USER and c.dest_id == FRIEND and c.id != 0 and c.seq == 0
            assert c.dest_type == im_pb2.SINGLE and c.msg_type in (im_pb2.TEXT, im_pb2.FILE)
            assert len(c.body) <= MAX_FRAME - ENVELOPE_HEADROOM
        else:
            rec = env.record
            assert (rec.device_id, rec.origin) == (session.device_id, host.node_id)
            assert rec.cursor.user_id == USER and rec.cursor.conv_id == CONV
            assert rec.cursor.type in (im_pb2.DELIVERED, im_pb2.READ) and rec.cursor.seq > 0
    kinds = [e.WhichOneof("body") for e in link.sent]
    if not authenticated:
        assert kinds == []
        return
    assert kinds.count("sync_done") == syncs  # every accepted sync was answered
    assert "caught_up" in kinds
    for env in link.sent:
        if env.WhichOneof("body") == "sync_done":
            d = env.sync_done
            assert d.last_seq == HEAD
            assert d.to_seq == d.from_seq - 1 or d.from_seq <= d.to_seq <= HEAD
        elif env.WhichOneof("body") == "ack":  # SENT only for what this device sent
            assert env.ack.ack_type == im_pb2.SENT and env.ack.dest_id == USER
    refused = [e for e in link.errors if e[0] == "ID_REUSED"]
    expected = [f for f in fanouts if f.refused and session.rules.is_sender_of(f.chat)]
    assert len(refused) == len(expected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_any_frame_sequence_is_accepted_by_the_rules_or_refused_with_a_code(
    sequence: list[tuple[Any, ...]],
) -> None:
    asyncio.run(scenario(sequence))


def test_the_happy_path_is_reachable() -> None:
    """The generator's ops can drive a full exchange: GREET, chat, cursor, sync, fanouts."""
    asyncio.run(
        scenario(
            [
                ("greet", "valid", "", 0),
                ("chat", USER, FRIEND, "ours", im_pb2.SINGLE, im_pb2.TEXT, 10),
                ("cursor", CONV, "", im_pb2.READ, 4),
                ("sync", CONV, 0, 0, 0),
                ("fanout", USER, "ours", 0),
                ("fanout", FRIEND, "ours", 0),
                ("fanout", USER, "ours", im_pb2.ID_REUSED),
            ]
        )
    )


class StuckLink(FakeLink):
    """A device that never acks: its window stays full, so sends wait for ever."""

    async def send(self, env: im_pb2.Envelope) -> int:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def greeted(link: FakeLink, queue: int = 4096) -> tuple[Host, ClientSession]:
    s = Settings(secret=SECRET.decode(), max_frame=MAX_FRAME, session_queue=queue)
    host = Host(s, TokenSigner(SECRET))
    session = ClientSession(host, link)
    token = host.signer.issue(USER, 60, device_id="d1", slot=SLOT)
    await session.on_frame(link, im_pb2.Envelope(greet=im_pb2.Greet(token=token)))
    return host, session


def test_a_device_too_slow_for_its_live_pushes_is_closed_not_buffered() -> None:
    async def run() -> None:
        link = StuckLink()
        host, session = await greeted(link, queue=8)
        await settle(session)  # the listing waits below half the outbox: nothing is closed
        assert not link.closing
        for _ in range(8):
            session.deliver(fanout_of(("fanout", FRIEND, "ours", 0)))
        assert link.closing and link.close_error is not None
        assert link.close_error.code_name == "WINDOW_FULL"
        await session.on_closed(link, [])
        assert len(session.outbox) == 0 and host.registered == []

    asyncio.run(run())


def test_a_relist_lists_again_and_the_second_caught_up_is_later() -> None:
    async def run() -> None:
        link = FakeLink()
        _, session = await greeted(link)
        await settle(session)
        session.request_relist()
        session.request_relist()  # while one runs: coalesced into one more
        await settle(session)
        await settle(session)
        caught = [e.caught_up.since for e in link.sent if e.WhichOneof("body") == "caught_up"]
        states = [e for e in link.sent if e.WhichOneof("body") == "conv_state"]
        assert len(caught) == 3 and caught == sorted(caught) and len(states) == 3
        welcome = link.controls[0].welcome
        assert welcome.max_body_bytes == MAX_FRAME - ENVELOPE_HEADROOM
        await session.on_closed(link, [])

    asyncio.run(run())


def test_a_link_gone_while_its_greet_was_admitted_is_not_registered() -> None:
    """A client that gave up on a link (no WELCOME in time) has moved on to a newer one; if
    this one's GREET is still being admitted when it closes, registering it would push the
    device's newer session out with REPLACED (connector/server.py, ``register``)."""

    class SlowHost(Host):
        gate: asyncio.Event | None = None

        async def admit(self, claims: Claims, device_id: str) -> None:
            assert self.gate is not None
            await self.gate.wait()

    async def run() -> None:
        s = Settings(secret=SECRET.decode(), max_frame=MAX_FRAME)
        host = SlowHost(s, TokenSigner(SECRET))
        host.gate = asyncio.Event()
        link = FakeLink()
        session = ClientSession(host, link)
        token = host.signer.issue(USER, 60, device_id="d1", slot=SLOT)
        greet = asyncio.ensure_future(
            session.on_frame(link, im_pb2.Envelope(greet=im_pb2.Greet(token=token)))
        )
        await asyncio.sleep(0)
        link.close()  # the client's reset arrives while the connector still admits
        host.gate.set()
        await greet
        assert host.registered == [] and not link.authenticated
        assert host.online_now == set(), "nothing recorded for a session that never was"

    asyncio.run(run())
