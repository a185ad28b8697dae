"""The session rules, sans-IO: frames, verdicts and fanouts in, effects out; no socket, no loop,
no clock (connector/session.py)."""

from __future__ import annotations

import pytest

from common.errors import ProtocolError
from common.ids import MessageIdGen
from common.tokens import TokenSigner
from connector.clientsession import BULK_BYTES, Outbox
from connector.rules import SYNC_PAGE, State, SyncRange
from connector.session import (
    LISTING_SLACK_MS,
    MAX_SYNCS,
    RELIST_AFTER,
    RELIST_EVERY,
    SINCE_MAX,
    SYNC_RATE_FACTOR,
    Admit,
    Effect,
    Forward,
    ForwardChat,
    Limits,
    Push,
    Register,
    ScheduleRefresh,
    ScheduleRelist,
    SendControl,
    SendError,
    SessionRules,
    StartListing,
    StartSync,
)
from proto import im_pb2

SECRET = b"session-rules-secret-0123456789"
SIGNER = TokenSigner(SECRET)
LIMITS = Limits(heartbeat_ms=15_000, max_frame=4096, window=64, rate=10, burst=5, max_body=3072)
CONV = "p:alice:bob"
SLOT = 3


def machine() -> SessionRules:
    return SessionRules("conn-1", LIMITS, SIGNER.verify, now=0.0)


def greet(since: int = 0, device: str = "", token: str | None = None) -> im_pb2.Envelope:
    if token is None:
        token = SIGNER.issue("alice", 86_400, device_id="d1", slot=SLOT)  # made at collection
    return im_pb2.Envelope(greet=im_pb2.Greet(token=token, device_id=device, since=since))


def greeted(since: int = 0) -> tuple[SessionRules, list[Effect]]:
    m = machine()
    (admit,) = m.frame(greet(since), 0.0)
    assert isinstance(admit, Admit)
    return m, m.admitted(admit.claims, admit.device_id, admit.since)


def chat_env(msg_id: int, **kw: object) -> im_pb2.Envelope:
    base: dict[str, object] = dict(
        id=msg_id, from_id="alice", dest_id="bob", dest_type=im_pb2.SINGLE, msg_type=im_pb2.TEXT
    )
    base.update(kw)
    return im_pb2.Envelope(chat=im_pb2.ChatMsg(**base))  # type: ignore[arg-type]


def state_of(m: SessionRules) -> State:
    return m.state


def code_of(m: SessionRules, env: im_pb2.Envelope, now: float = 0.0) -> tuple[str, bool]:
    with pytest.raises(ProtocolError) as exc:
        m.frame(env, now)
    return exc.value.code_name, exc.value.fatal


def test_greet_asks_for_admission_then_welcomes_registers_lists_and_lists_again() -> None:
    m = machine()
    (admit,) = m.frame(greet(since=1_000_000), 0.0)
    assert isinstance(admit, Admit) and admit.device_id == "d1" and admit.since == 1_000_000
    assert state_of(m) is State.CONNECTED  # not before the database said yes
    effects = m.admitted(admit.claims, admit.device_id, admit.since)
    assert state_of(m) is State.AUTHENTICATED and (m.user_id, m.device_id) == ("alice", "d1")
    welcome, register, listing, relist = effects
    assert isinstance(welcome, SendControl) and isinstance(register, Register)
    w = welcome.env.welcome
    assert (w.user_id, w.node_id, w.id_slot, w.max_body_bytes) == ("alice", "conn-1", SLOT, 3072)
    assert (w.max_frame_bytes, w.window, w.heartbeat_ms) == (4096, 64, 15_000)
    assert listing == StartListing(1_000_000 - LISTING_SLACK_MS)
    assert relist == ScheduleRelist(RELIST_AFTER)


def test_a_new_device_lists_everything() -> None:
    _, effects = greeted(since=0)
    assert StartListing(0) in effects
    _, effects = greeted(since=5)  # slack below zero is zero
    assert StartListing(0) in effects
    _, effects = greeted(since=(1 << 64) - 1)  # a hostile since stays a number stores hold
    assert StartListing(SINCE_MAX - LISTING_SLACK_MS) in effects


@pytest.mark.parametrize(
    ("env", "code"),
    [
        (greet(token="v1.forged.x"), "BAD_TOKEN"),
        (greet(token=SIGNER.issue("alice", -1, device_id="d1")), "BAD_TOKEN"),
        (greet(token=SIGNER.issue("alice", 60, role="node")), "BAD_TOKEN"),
        (greet(device="d2"), "BAD_TOKEN"),  # the token is d1's
        (greet(device="x" * 65), "BAD_MESSAGE"),
        (chat_env(1), "NOT_AUTHENTICATED"),
        (im_pb2.Envelope(sync=im_pb2.Sync(conv_id=CONV)), "NOT_AUTHENTICATED"),
        (im_pb2.Envelope(typing=im_pb2.Typing(conv_id=CONV)), "NOT_AUTHENTICATED"),
        (im_pb2.Envelope(), "UNKNOWN_TYPE"),
    ],
)
def test_before_greet_every_refusal_is_fatal(env: im_pb2.Envelope, code: str) -> None:
    m = machine()
    assert code_of(m, env) == (code, True)
    assert m.state is State.CONNECTED


def test_keep_alives_do_nothing() -> None:
    m = machine()
    assert m.frame(im_pb2.Envelope(ping=im_pb2.Ping(nonce=1)), 0.0) == []
    m, _ = greeted()
    assert m.frame(im_pb2.Envelope(pong=im_pb2.Pong(nonce=1)), 0.0) == []


def test_a_chat_is_checked_stamps_cleared_and_forwarded_by_conversation() -> None:
    m, _ = greeted()
    msg_id = MessageIdGen(SLOT)()
    (eff,) = m.frame(chat_env(msg_id, body=b"hi", conv_id="p:x:y", seq=4, server_time=9), 0.0)
    assert isinstance(eff, ForwardChat)
    assert eff.chat.id == msg_id and eff.chat.body == b"hi"
    assert (eff.chat.conv_id, eff.chat.seq, eff.chat.server_time) == ("", 0, 0)
    assert eff.key == "alice\x00bob"
    assert eff.env.chat == eff.chat and eff.env.chat.seq == 0  # the stamps cleared in it too


def test_chat_refusals_are_not_fatal() -> None:
    m, _ = greeted()
    ids = MessageIdGen(SLOT)
    assert code_of(m, chat_env(MessageIdGen(SLOT + 1)())) == ("BAD_MESSAGE", False)  # slot
    assert code_of(m, chat_env(ids(), from_id="bob")) == ("SPOOFED_SENDER", False)
    assert code_of(m, chat_env(ids(), body=b"x" * 3073)) == ("TOO_LARGE", False)
    assert code_of(m, greet()) == ("ALREADY_GREETED", False)
    spoofed = im_pb2.Typing(conv_id=CONV, user_id="bob", typing=True)
    assert code_of(m, im_pb2.Envelope(typing=spoofed)) == ("SPOOFED_SENDER", False)
    ack = im_pb2.AckMsg(ack_type=im_pb2.READ, ack_msg_id=1)
    assert code_of(m, im_pb2.Envelope(ack=ack)) == ("UNKNOWN_TYPE", False)


def test_chats_are_rate_limited_and_the_bucket_refills() -> None:
    m, _ = greeted()
    ids = MessageIdGen(SLOT)
    for _ in range(LIMITS.burst):
        m.frame(chat_env(ids()), 1.0)
    assert code_of(m, chat_env(ids()), 1.0) == ("RATE_LIMITED", False)
    assert m.frame(chat_env(ids()), 1.2)  # 10 per second: two more after 0.2 s


def cursor_env(**kw: object) -> im_pb2.Envelope:
    base: dict[str, object] = dict(conv_id=CONV, type=im_pb2.READ, seq=4)
    base.update(kw)
    return im_pb2.Envelope(cursor=im_pb2.Cursor(**base))  # type: ignore[arg-type]


def test_a_cursor_goes_to_a_transfer_as_a_record_with_user_device_and_origin() -> None:
    m, _ = greeted()
    (eff,) = m.frame(cursor_env(type=im_pb2.DELIVERED, seq=9), 0.0)
    assert isinstance(eff, Forward) and eff.key == CONV
    rec = eff.env.record
    assert (rec.device_id, rec.origin) == ("d1", "conn-1")
    assert rec.cursor == im_pb2.Cursor(conv_id=CONV, user_id="alice", type=im_pb2.DELIVERED, seq=9)


def test_cursors_have_their_own_bucket_four_times_the_chat_rate() -> None:
    m, _ = greeted()
    ids = MessageIdGen(SLOT)
    for _ in range(LIMITS.burst):
        m.frame(chat_env(ids()), 0.0)
    for _ in range(4 * LIMITS.burst):  # chats used up theirs: cursors still pass
        m.frame(cursor_env(), 0.0)
    assert code_of(m, cursor_env(), 0.0) == ("RATE_LIMITED", False)
    assert code_of(m, cursor_env(user_id="bob")) == ("SPOOFED_SENDER", False)
    assert code_of(m, cursor_env(conv_id="p:bob:carol")) == ("NOT_MEMBER", False)


def test_at_most_sixteen_syncs_run_at_once() -> None:
    m, _ = greeted()
    sync = im_pb2.Envelope(sync=im_pb2.Sync(conv_id=CONV, from_seq=0, limit=5000))
    for _ in range(MAX_SYNCS):
        assert m.frame(sync, 0.0) == [StartSync(SyncRange(CONV, 1, 0, SYNC_PAGE))]
    assert code_of(m, sync) == ("RATE_LIMITED", False)
    m.sync_done()
    assert m.frame(sync, 0.0)
    bad = im_pb2.Envelope(sync=im_pb2.Sync(conv_id="p:bob:carol"))
    assert code_of(m, bad) == ("NOT_MEMBER", False)


def test_syncs_have_a_rate_of_their_own() -> None:
    """Past MAX_SYNCS at once, a device answered fast could still ask without end: its own
    bucket (SYNC_RATE_FACTOR x the chat rate) refuses the excess, and it refills with time."""
    m, _ = greeted()
    sync = im_pb2.Envelope(sync=im_pb2.Sync(conv_id=CONV))
    allowed = 0
    while True:
        try:
            m.frame(sync, 0.0)
        except ProtocolError as err:
            assert err.code_name == "RATE_LIMITED" and not err.fatal
            break
        m.sync_done()
        allowed += 1
        assert allowed < 10**6
    assert allowed == LIMITS.burst * SYNC_RATE_FACTOR
    assert m.frame(sync, 1.0)  # a second later there is room again


def test_relists_run_one_at_a_time_each_from_the_last_listings_start() -> None:
    m, _ = greeted(since=500_000)
    assert m.listing
    assert m.relist() == []  # the timer fired while the first listing runs: wanted
    refresh = ScheduleRefresh(RELIST_EVERY)  # every listing re-arms the periodic one
    assert m.listing_done(started_ms=900_000) == [
        refresh,
        StartListing(900_000 - LISTING_SLACK_MS),
    ]
    assert m.listing_done(started_ms=950_000) == [refresh]
    assert m.relist() == [StartListing(950_000 - LISTING_SLACK_MS)]
    assert m.listing_failed() == [ScheduleRelist(2.0)]  # and from the same place again
    assert m.relist() == [StartListing(950_000 - LISTING_SLACK_MS)]
    m.closing()
    assert m.relist() == []


def committed(msg_id: int, sender: str = "alice", **kw: object) -> im_pb2.ChatMsg:
    dest = "bob" if sender == "alice" else "alice"
    base: dict[str, object] = dict(
        id=msg_id, from_id=sender, dest_id=dest, dest_type=im_pb2.SINGLE, conv_id=CONV, seq=7
    )
    base.update(kw)
    return im_pb2.ChatMsg(**base)  # type: ignore[arg-type]


def test_the_sending_device_gets_sent_every_other_device_the_chat() -> None:
    m, _ = greeted()
    mine = committed(MessageIdGen(SLOT)())
    (eff,) = m.deliver(im_pb2.Fanout(users=["alice", "bob"], chat=mine))
    assert isinstance(eff, Push)
    ack = eff.env.ack
    assert (ack.ack_type, ack.ack_msg_id, ack.conv_id, ack.seq) == (im_pb2.SENT, mine.id, CONV, 7)
    assert (ack.from_id, ack.dest_id) == ("bob", "alice")
    other_device = committed(MessageIdGen(SLOT + 1)())  # alice's, from another of her devices
    assert m.deliver(im_pb2.Fanout(users=["alice"], chat=other_device)) == [
        Push(im_pb2.Envelope(chat=other_device))
    ]
    peers = committed(MessageIdGen(SLOT)(), sender="bob")  # bob's, even with our slot
    assert m.deliver(im_pb2.Fanout(users=["alice"], chat=peers)) == [
        Push(im_pb2.Envelope(chat=peers))
    ]


def test_a_refusal_reaches_only_the_sending_device() -> None:
    m, _ = greeted()
    mine = committed(MessageIdGen(SLOT)())
    (eff,) = m.deliver(im_pb2.Fanout(users=["alice"], chat=mine, refused=im_pb2.ID_REUSED))
    assert isinstance(eff, SendError)
    assert (eff.error.code_name, eff.ref_msg_id) == ("ID_REUSED", mine.id)
    other = committed(MessageIdGen(SLOT + 1)())
    assert m.deliver(im_pb2.Fanout(users=["alice"], chat=other, refused=im_pb2.ID_REUSED)) == []


def test_cursors_are_pushed_and_nothing_reaches_a_session_not_greeted() -> None:
    cursor = im_pb2.Cursor(conv_id=CONV, user_id="bob", type=im_pb2.READ, seq=3)
    fanout = im_pb2.Fanout(users=["alice"], cursor=cursor)
    assert machine().deliver(fanout) == []
    m, _ = greeted()
    assert m.deliver(fanout) == [Push(im_pb2.Envelope(cursor=cursor))]
    typing = im_pb2.Typing(conv_id=CONV, user_id="bob", typing=True)
    # a peer's typing is a control frame (never retransmitted); the user's own is not shown
    (eff,) = m.deliver(im_pb2.Fanout(users=["alice"], typing=typing))
    assert isinstance(eff, SendControl) and eff.env.typing == typing
    own = im_pb2.Typing(conv_id=CONV, user_id="alice", typing=True)
    assert m.deliver(im_pb2.Fanout(users=["alice"], typing=own)) == []


def test_the_outbox_bounds_live_pushes_and_keeps_half_for_them() -> None:
    box = Outbox(8)
    for i in range(4):
        assert box.bulk_room
        assert box.put(im_pb2.Envelope(caught_up=im_pb2.CaughtUp(since=i)))
    assert not box.bulk_room  # listings and syncs wait here; live pushes go on
    for _ in range(4):
        assert box.put(b"chat")
    assert not box.put(b"one too many")  # the shell closes the session: WINDOW_FULL
    assert len(box) == 8
    first = box.peek()
    assert isinstance(first, im_pb2.Envelope) and first.caught_up.since == 0
    box.pop()
    assert len(box) == 7


def test_stored_chats_waiting_for_a_device_are_bounded_in_bytes_too() -> None:
    box = Outbox(1000)
    big = b"x" * (BULK_BYTES // 2)
    assert box.put(big) and box.bulk_room
    assert box.put(big) and not box.bulk_room and box.chat_bytes == BULK_BYTES
    box.pop()
    assert box.bulk_room and box.chat_bytes == BULK_BYTES // 2
