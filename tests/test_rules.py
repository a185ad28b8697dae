"""The client connection state machine and the field checks: every (state, body kind) pair and
every hostile field has a defined, coded answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ProtocolError
from connector import rules
from connector.rules import SYNC_PAGE, State, SyncRange
from proto import im_pb2

KINDS = [f.name for f in im_pb2.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields] + [None]
CONV = "p:alice:bob"


@given(st.sampled_from(list(State)), st.sampled_from(KINDS))
def test_every_pair_is_allowed_or_refused_with_a_code(state: State, kind: str | None) -> None:
    try:
        rules.check(state, kind)
    except ProtocolError as err:
        assert err.code != im_pb2.ERROR_CODE_UNSPECIFIED
        if state is not State.AUTHENTICATED:
            assert err.fatal  # before GREET the stream can't be trusted; closing is closing
    else:
        assert kind in rules.ALLOWED and state in rules.ALLOWED[kind]


def test_chat_before_greet_is_fatal_not_authenticated() -> None:
    for kind in ("chat", "cursor", "sync"):
        with pytest.raises(ProtocolError) as exc:
            rules.check(State.CONNECTED, kind)
        assert exc.value.code == im_pb2.NOT_AUTHENTICATED and exc.value.fatal


def test_second_greet_is_refused_but_not_fatal() -> None:
    with pytest.raises(ProtocolError) as exc:
        rules.check(State.AUTHENTICATED, "greet")
    assert exc.value.code == im_pb2.ALREADY_GREETED and not exc.value.fatal


def test_greeted_clients_send_chat_cursor_sync_typing_and_keep_alives() -> None:
    for kind in ("chat", "cursor", "sync", "typing", "ping", "pong", "link_ack"):
        rules.check(State.AUTHENTICATED, kind)


def test_typing_before_greet_is_not_authenticated_and_fatal() -> None:
    with pytest.raises(ProtocolError) as exc:
        rules.check(State.CONNECTED, "typing")
    assert exc.value.code == im_pb2.NOT_AUTHENTICATED and exc.value.fatal


@pytest.mark.parametrize(
    "kind",
    ["ack", "welcome", "error", "fanout", "record", "sync_done", "conv_state", "presence", None],
)
def test_server_bodies_and_acks_are_unknown_and_not_fatal_once_greeted(
    kind: str | None,
) -> None:
    with pytest.raises(ProtocolError) as exc:
        rules.check(State.AUTHENTICATED, kind)
    assert exc.value.code == im_pb2.UNKNOWN_TYPE and not exc.value.fatal


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
        ({"dest_id": "a:b"}, im_pb2.BAD_MESSAGE),
        ({"dest_id": "x" * 65}, im_pb2.BAD_MESSAGE),
        ({"dest_type": 7}, im_pb2.BAD_MESSAGE),
        ({"dest_type": im_pb2.GROUP, "dest_id": "a:b"}, im_pb2.BAD_MESSAGE),
        # no file reference
        ({"dest_type": im_pb2.GROUP, "msg_type": im_pb2.FILE}, im_pb2.BAD_MESSAGE),
        ({"msg_type": im_pb2.SYSTEM}, im_pb2.BAD_MESSAGE),
        ({"msg_type": im_pb2.FILE}, im_pb2.BAD_MESSAGE),  # no file reference
        ({"body": b"x" * 101}, im_pb2.TOO_LARGE),
        ({"after_id": (1 << 64) - 1}, im_pb2.BAD_MESSAGE),  # not an earlier chat's id
    ],
)
def test_chat_field_checks(fields: dict[str, object], code: int) -> None:
    with pytest.raises(ProtocolError) as exc:
        rules.check_chat("alice", _chat(**fields), max_body=100)
    assert exc.value.code == code and not exc.value.fatal


def test_a_file_chat_in_a_group_passes_the_field_checks() -> None:
    ref = im_pb2.FileRef(id="F" * 22, size=10, checksum="a" * 64)
    chat = _chat(dest_type=im_pb2.GROUP, dest_id="00aa11bb22cc33dd", msg_type=im_pb2.FILE)
    chat.file.CopyFrom(ref)
    rules.check_chat("alice", chat, max_body=100)


def test_a_body_of_exactly_the_limit_passes_and_stamps_are_cleared() -> None:
    chat = _chat(body=b"x" * 100, conv_id="p:alice:zed", seq=9, server_time=5)
    rules.check_chat("alice", chat, max_body=100)
    rules.clear_stamps(chat)
    assert (chat.conv_id, chat.seq, chat.server_time) == ("", 0, 0)


def test_a_cursor_comes_back_with_the_session_user_filled_in() -> None:
    for user_id in ("", "alice"):
        c = im_pb2.Cursor(conv_id=CONV, user_id=user_id, type=im_pb2.READ, seq=7)
        assert rules.check_cursor("alice", c) == im_pb2.Cursor(
            conv_id=CONV, user_id="alice", type=im_pb2.READ, seq=7
        )
    c = im_pb2.Cursor(conv_id=CONV, type=im_pb2.DELIVERED, seq=2**64 - 1)
    assert rules.check_cursor("bob", c).user_id == "bob"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"user_id": "bob"}, im_pb2.SPOOFED_SENDER),
        ({"seq": 0}, im_pb2.BAD_MESSAGE),
        ({"type": im_pb2.SENT}, im_pb2.BAD_MESSAGE),
        ({"type": im_pb2.ACK_TYPE_UNSPECIFIED}, im_pb2.BAD_MESSAGE),
        ({"conv_id": "p:bob:carol"}, im_pb2.NOT_MEMBER),
        ({"conv_id": "p:bob:alice"}, im_pb2.NOT_MEMBER),  # not in order: not a conversation
        ({"conv_id": "g:a:b"}, im_pb2.NOT_MEMBER),  # a group's membership: the shell's
        ({"conv_id": ""}, im_pb2.NOT_MEMBER),
        ({"conv_id": "x" * 500}, im_pb2.NOT_MEMBER),
    ],
)
def test_cursor_checks(fields: dict[str, object], code: int) -> None:
    base: dict[str, object] = dict(conv_id=CONV, type=im_pb2.READ, seq=3)
    base.update(fields)
    with pytest.raises(ProtocolError) as exc:
        rules.check_cursor("alice", im_pb2.Cursor(**base))  # type: ignore[arg-type]
    assert exc.value.code == code and not exc.value.fatal


def test_a_sync_range_is_made_explicit() -> None:
    def sync(**kw: int) -> SyncRange:
        return rules.check_sync("alice", im_pb2.Sync(conv_id=CONV, **kw))

    assert sync() == SyncRange(CONV, 1, 0, SYNC_PAGE)  # from 0 is from 1, limit 0 is the cap
    assert sync(from_seq=5, to_seq=9, limit=3) == SyncRange(CONV, 5, 9, 3)
    assert sync(from_seq=5, to_seq=5, limit=10_000) == SyncRange(CONV, 5, 5, SYNC_PAGE)
    assert sync(limit=SYNC_PAGE) == SyncRange(CONV, 1, 0, SYNC_PAGE)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"conv_id": "p:bob:carol"}, im_pb2.NOT_MEMBER),
        ({"conv_id": "nonsense"}, im_pb2.NOT_MEMBER),
        ({"from_seq": 9, "to_seq": 3}, im_pb2.BAD_MESSAGE),
    ],
)
def test_sync_checks(fields: dict[str, object], code: int) -> None:
    base: dict[str, object] = dict(conv_id=CONV)
    base.update(fields)
    with pytest.raises(ProtocolError) as exc:
        rules.check_sync("alice", im_pb2.Sync(**base))  # type: ignore[arg-type]
    assert exc.value.code == code and not exc.value.fatal
