"""The client connection state machine: every (state, body kind) pair has a defined answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ProtocolError
from connector import rules
from connector.rules import State
from proto import im_pb2

KINDS = [f.name for f in im_pb2.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields] + [None]


@given(st.sampled_from(list(State)), st.sampled_from(KINDS))
def test_every_pair_is_allowed_or_refused_with_a_code(state: State, kind: str | None) -> None:
    try:
        rules.check(state, kind)
    except ProtocolError as err:
        assert err.code != im_pb2.ERROR_CODE_UNSPECIFIED
        if state is State.CONNECTED:
            assert err.fatal  # before GREET the stream can't be trusted
    else:
        assert kind in rules.ALLOWED and state in rules.ALLOWED[kind]


def test_chat_before_greet_is_fatal_not_authenticated() -> None:
    with pytest.raises(ProtocolError) as exc:
        rules.check(State.CONNECTED, "chat")
    assert exc.value.code == im_pb2.NOT_AUTHENTICATED and exc.value.fatal


def test_second_greet_is_refused_but_not_fatal() -> None:
    with pytest.raises(ProtocolError) as exc:
        rules.check(State.AUTHENTICATED, "greet")
    assert exc.value.code == im_pb2.ALREADY_GREETED and not exc.value.fatal


def test_a_client_may_ask_for_a_drain_once_greeted() -> None:
    rules.check(State.AUTHENTICATED, "drain")
    with pytest.raises(ProtocolError) as exc:
        rules.check(State.CONNECTED, "drain")
    assert exc.value.code == im_pb2.NOT_AUTHENTICATED and exc.value.fatal


def test_server_only_bodies_from_a_client_are_unknown() -> None:
    for kind in ("welcome", "bounce", "error"):
        with pytest.raises(ProtocolError) as exc:
            rules.check(State.AUTHENTICATED, kind)
        assert exc.value.code == im_pb2.UNKNOWN_TYPE


def _chat(**kw: object) -> im_pb2.ChatMsg:
    base: dict[str, object] = dict(
        id=1,
        from_id="alice",
        dest_id="bob",
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=b"x",
    )
    base.update(kw)
    return im_pb2.ChatMsg(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"from_id": "mallory"}, im_pb2.SPOOFED_SENDER),
        ({"id": 0}, im_pb2.BAD_MESSAGE),
        ({"dest_id": ""}, im_pb2.BAD_MESSAGE),
        ({"dest_type": im_pb2.GROUP}, im_pb2.BAD_MESSAGE),
        ({"body": b"x" * 101}, im_pb2.BAD_MESSAGE),
    ],
)
def test_chat_field_checks(fields: dict[str, object], code: int) -> None:
    with pytest.raises(ProtocolError) as exc:
        rules.check_chat("alice", _chat(**fields), max_body=100)
    assert exc.value.code == code


def test_clients_may_send_only_delivered_and_read_receipts() -> None:
    ack = im_pb2.AckMsg(id=1, from_id="bob", dest_id="alice", ack_type=im_pb2.SENT, ack_msg_id=7)
    for server_only in (im_pb2.SENT, im_pb2.ACCEPTED, im_pb2.ACK_TYPE_UNSPECIFIED):
        ack.ack_type = server_only
        with pytest.raises(ProtocolError):
            rules.check_receipt("bob", ack)
    for kind in (im_pb2.DELIVERED, im_pb2.READ):
        ack.ack_type = kind
        rules.check_receipt("bob", ack)
    ack.id = 0  # the receipt's own id is what ACCEPTED names: it must be set
    with pytest.raises(ProtocolError):
        rules.check_receipt("bob", ack)
    ack.id = 1
    with pytest.raises(ProtocolError) as exc:
        rules.check_receipt("mallory", ack)
    assert exc.value.code == im_pb2.SPOOFED_SENDER
