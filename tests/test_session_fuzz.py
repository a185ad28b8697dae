"""Hypothesis against the client session state machine: any sequence of frames, well-formed
but wrong or not, gets either accepted or a coded ProtocolError, and what reaches a transfer is
only ever what the rules allow (DESIGN.md §4, §6).

The session runs on a fake link (records what it would send) beside a real Connector on the
in-memory backends; ``forward`` is replaced by a recorder, since no transfer is linked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import Settings
from common.errors import ProtocolError
from common.link import Link, LinkClosed
from common.tokens import Revocation, TokenSigner
from connector.rules import ENVELOPE_HEADROOM, State
from connector.server import ClientSession, Connector
from proto import im_pb2
from user_status.memory import MemoryUserStatus

SECRET = b"session-fuzz-secret-0123456789"
USER, FRIEND, STRANGER = "alice", "bob", "mallory"
MAX_FRAME = 4096
CODES = set(im_pb2.ErrorCode.values()) - {im_pb2.ERROR_CODE_UNSPECIFIED}


class FakeLink:
    """What ClientSession uses of a Link: windowed sends, control frames, close."""

    def __init__(self) -> None:
        self.name = "fake"
        self.sent: list[im_pb2.Envelope] = []
        self.controls: list[im_pb2.Envelope] = []
        self.closing = False
        self.close_error: ProtocolError | None = None
        self._seq = 0

    async def send(self, env: im_pb2.Envelope) -> int:
        if self.closing:
            raise LinkClosed("closed")
        self._seq += 1
        env.seq = self._seq
        self.sent.append(env)
        return self._seq

    def send_control(self, env: im_pb2.Envelope) -> None:
        self.controls.append(env)

    def close(self, error: ProtocolError | None = None) -> None:
        if not self.closing:
            self.closing = True
            self.close_error = error


class Friends:
    async def are_friends(self, a: str, b: str) -> bool:
        return {a, b} == {USER, FRIEND}


class NoOffline:
    async def drain(self, user_id: str, limit: int = 1000) -> list[Any]:
        return []


@dataclass
class Run:
    connector: Connector
    signer: TokenSigner
    forwarded: list[im_pb2.Envelope] = field(default_factory=list)


TOKENS = ["valid", "other_device", "expired", "node", "forged", "revoked", "garbage", ""]


def token_of(run: Run, kind: str) -> str:
    signer = run.signer
    if kind == "valid":
        return signer.issue(USER, 60, device_id="d1")
    if kind == "other_device":
        return signer.issue(USER, 60, device_id="d2")
    if kind == "expired":
        return signer.issue(USER, -1, device_id="d1")
    if kind == "node":
        return signer.issue(USER, 60, role="node")
    if kind == "forged":
        return TokenSigner(b"not-the-cluster-secret-42").issue(USER, 60, device_id="d1")
    if kind == "revoked":
        token = signer.issue(USER, 60, device_id="d1")
        claims = signer.verify(token)
        run.connector.revoked.add(Revocation(claims.expires, claims.token_id, USER))
        return token
    return "v1.garbage.x" if kind == "garbage" else ""


# weighted towards frames that pass most checks, so the last check of each rule is reached
senders = st.sampled_from([USER, USER, USER, FRIEND, STRANGER, "", "x" * 65])
dests = st.sampled_from([FRIEND, FRIEND, FRIEND, USER, STRANGER, "", "x" * 65])
ids = st.integers(min_value=0, max_value=2**64 - 1)

greet_op = st.tuples(
    st.just("greet"),
    st.sampled_from(["valid", "valid", "other_device", *TOKENS]),
    st.sampled_from(["", "d1", "d2", "x" * 65]),
)
chat_op = st.tuples(
    st.just("chat"),
    senders,
    dests,
    st.sampled_from([0, 1, 2, 99]),
    st.sampled_from([im_pb2.SINGLE, im_pb2.SINGLE, *im_pb2.DestType.values()]),
    st.sampled_from([im_pb2.TEXT, *im_pb2.MsgType.values(), 7]),
    st.integers(min_value=0, max_value=MAX_FRAME),
)
read_op = st.tuples(
    st.just("ack"),
    senders,
    dests,  # the chat's sender
    st.sampled_from([im_pb2.READ, im_pb2.READ, *im_pb2.AckType.values()]),
    st.one_of(st.sampled_from([0, 1, 2, 99]), ids),
    st.sampled_from(["pushed", "pushed", "random", "empty", "other_user"]),
)
push_op = st.tuples(st.just("push"), st.sampled_from([FRIEND, STRANGER]), st.integers(1, 5))
other_op = st.tuples(st.just("other"), st.sampled_from(["welcome", "drain", "bounce", "error"]))
any_op = st.one_of(greet_op, chat_op, read_op, push_op, other_op)
# half the runs start authenticated, so most of the budget explores the AUTHENTICATED state
ops = st.tuples(st.booleans(), st.lists(any_op, max_size=25)).map(
    lambda t: [("greet", "valid", "d1"), *t[1]] if t[0] else t[1]
)


def envelope(run: Run, op: tuple[Any, ...], pushed: list[im_pb2.ChatMsg]) -> im_pb2.Envelope:
    kind = op[0]
    if kind == "greet":
        return im_pb2.Envelope(greet=im_pb2.Greet(token=token_of(run, op[1]), device_id=op[2]))
    if kind == "chat":
        _, frm, dest, msg_id, dest_type, msg_type, size = op
        chat = im_pb2.ChatMsg(
            id=msg_id, from_id=frm, dest_id=dest, dest_type=dest_type, body=b"s" * size
        )
        chat.msg_type = msg_type  # an unknown enum value is kept, as from the wire
        return im_pb2.Envelope(seq=1, chat=chat)
    if kind == "ack":
        _, frm, dest, ack_type, msg_id, tag_kind = op
        tag = b""
        if tag_kind == "pushed" and pushed:
            chat = pushed[msg_id % len(pushed)]
            dest, msg_id, tag = chat.from_id, chat.id, chat.read_tag
        elif tag_kind == "random":
            tag = bytes(16)
        elif tag_kind == "other_user":
            tag = run.signer.read_tag(STRANGER, dest, msg_id)
        ack = im_pb2.AckMsg(
            id=1, from_id=frm, dest_id=dest, ack_type=ack_type, ack_msg_id=msg_id, read_tag=tag
        )
        return im_pb2.Envelope(seq=1, ack=ack)
    env = im_pb2.Envelope()
    getattr(env, op[1]).SetInParent()
    return env


async def scenario(sequence: list[tuple[Any, ...]]) -> None:
    s = Settings(secret=SECRET.decode(), max_frame=MAX_FRAME, rate_burst=1000)
    signer = TokenSigner(SECRET)
    connector = Connector(s, MemoryUserStatus(), cast(Any, NoOffline()), Friends(), signer)
    run = Run(connector, signer)

    async def record(env: im_pb2.Envelope) -> None:
        run.forwarded.append(env)

    connector.forward = record  # type: ignore[method-assign]
    session = ClientSession(connector)
    link = FakeLink()
    session.link = cast(Link, link)
    pushed: list[im_pb2.ChatMsg] = []
    authenticated = False
    try:
        for op in sequence:
            if op[0] == "push":
                chat = im_pb2.ChatMsg(
                    id=op[2], from_id=op[1], dest_id=USER, dest_type=im_pb2.SINGLE
                )
                session.push(im_pb2.Envelope(chat=chat))
                for _ in range(3):
                    await asyncio.sleep(0)
                pushed = [e.chat for e in link.sent if e.WhichOneof("body") == "chat"]
                continue
            env = envelope(run, op, pushed)
            before = len(run.forwarded)
            try:
                await session.on_frame(cast(Link, link), env)
            except ProtocolError as err:
                assert err.code in CODES, err
                assert len(run.forwarded) == before  # refused means not forwarded
                if not authenticated:
                    assert session.state is State.CONNECTED
                if err.fatal:
                    break
                continue
            if session.state is State.AUTHENTICATED:
                authenticated = True
            if op[0] == "greet":  # only a live token of ours, for the device it names
                device = {"valid": "d1", "other_device": "d2"}[op[1]]
                assert op[2] in ("", device) and session.device_id == device
    finally:
        link.closing = True
        await session.on_closed(cast(Link, link), [])
    # every push carried this user's proof of receipt
    for chat in pushed:
        assert signer.check_read_tag(USER, chat.from_id, chat.id, chat.read_tag)
    given_to_us = {(c.from_id, c.id) for c in pushed}
    for env in run.forwarded:
        assert authenticated
        if env.WhichOneof("body") == "chat":
            c = env.chat
            assert c.from_id == USER and c.dest_id == FRIEND and c.id != 0
            assert c.dest_type == im_pb2.SINGLE and c.msg_type in (im_pb2.TEXT, im_pb2.FILE)
            assert len(c.body) <= MAX_FRAME - ENVELOPE_HEADROOM
        else:
            a = env.ack
            assert a.ack_type in (im_pb2.DELIVERED, im_pb2.READ)
            assert a.from_id == USER and a.dest_id == FRIEND
            assert (a.dest_id, a.ack_msg_id) in given_to_us and a.read_tag == b""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_any_frame_sequence_is_accepted_by_the_rules_or_refused_with_a_code(
    sequence: list[tuple[Any, ...]],
) -> None:
    asyncio.run(scenario(sequence))


def test_the_happy_path_is_reachable() -> None:
    """The generator's ops can drive a full exchange: GREET, chat to a friend, READ."""
    asyncio.run(
        scenario(
            [
                ("greet", "valid", ""),
                ("chat", USER, FRIEND, 1, im_pb2.SINGLE, im_pb2.TEXT, 10),
                ("push", FRIEND, 3),
                ("ack", USER, FRIEND, im_pb2.READ, 0, "pushed"),
            ]
        )
    )
