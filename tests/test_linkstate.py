"""The sans-IO link rules (common/linkstate.py): two states driven against each other through a
lossy channel, then one test per rule, all without sockets or clocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.codec import Skipped, peek_seq
from common.linkstate import PREAUTH_MAX_FRAME, LinkConfig, LinkState
from proto import im_pb2


def chat(n: int, body: bytes = b"") -> im_pb2.Envelope:
    return im_pb2.Envelope(chat=im_pb2.ChatMsg(id=n, from_id="a", dest_id="b", body=body))


def parse(payload: bytes) -> im_pb2.Envelope:
    return im_pb2.Envelope.FromString(payload)


def errors(payloads: list[bytes]) -> list[tuple[str, int]]:
    out = []
    for p in payloads:
        env = parse(p)
        if env.WhichOneof("body") == "error":
            out.append((im_pb2.ErrorCode.Name(env.error.code), env.error.ref_seq))
    return out


def kinds(payloads: list[bytes]) -> list[str | None]:
    return [parse(p).WhichOneof("body") for p in payloads]


# -- two states against each other ----------------------------------------------------------


@dataclass
class Side:
    state: LinkState
    wire: list[bytes] = field(default_factory=list)  # in flight towards the other side
    sent: list[int] = field(default_factory=list)  # chat ids, in send order
    got: list[int] = field(default_factory=list)  # chat ids handed to the handler


def pump(side: Side) -> None:
    side.wire.extend(side.state.take_output())


def handle(side: Side) -> None:
    st_ = side.state
    while (item := st_.pop_frame()) is not None:
        seq, env = item
        if env is not None and env.WhichOneof("body") == "chat":
            side.got.append(env.chat.id)
        if seq:
            st_.handled(seq)
    st_.ack_handled()


ops = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "deliver", "deliver", "drop", "dup", "handle", "tick"]),
        st.booleans(),  # which side
        st.integers(min_value=0, max_value=1000),  # which packet in flight, or how long a tick
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, window=st.integers(min_value=1, max_value=8))
# the last ack is lost: only a re-ack of the retransmitted duplicate saves the link
@example(
    ops=[("send", True, 0), ("deliver", True, 0), ("handle", True, 0), ("drop", False, 0)], window=1
)
def test_two_links_through_a_lossy_channel_deliver_once_in_order_or_give_up(
    ops: list[tuple[str, bool, int]], window: int
) -> None:
    """Loss, duplication, reordering and delay: each side's handler gets the other's chats
    exactly once and in order; or a side gives up with RETRY_LIMIT, having handed over a
    prefix of them exactly once."""
    cfg = LinkConfig(window=window, retry_timeout=1.0, max_retries=3, heartbeat=2.5)
    cfg.idle_timeout = 1e9  # here the retry limit decides; the idle rule has its own test
    now = 0.0
    sides = (Side(LinkState(cfg, now)), Side(LinkState(cfg, now)))
    counter = 0

    def deliver(src: Side, dst: Side, i: int) -> None:
        if src.wire:
            dst.state.receive(src.wire.pop(i % len(src.wire)), now)

    for op, which, n in ops:
        src, dst = (sides[0], sides[1]) if which else (sides[1], sides[0])
        if op == "send" and not src.state.window_full and not src.state.closing:
            counter += 1
            src.state.send(chat(counter), now)
            src.sent.append(counter)
        elif op == "deliver":
            deliver(src, dst, n)
        elif op == "drop" and src.wire:
            src.wire.pop(n % len(src.wire))
        elif op == "dup" and src.wire:
            src.wire.append(src.wire[n % len(src.wire)])
        elif op == "handle":
            handle(dst)
        elif op == "tick":
            now += n / 400  # up to 2.5 s: several retransmit timeouts
            for s in sides:
                s.state.timer(now)
        for s in sides:
            pump(s)
    # a side may give up only on a frame that has used every retransmit by the time the
    # network heals: after that, each frame needs at most one more to get through
    spent = {
        id(s.state)
        for s in sides
        if any(p.retries >= cfg.max_retries for p in s.state._send._pending.values())
    }
    # then the network heals: everything in flight arrives, in order, until nothing is left
    for _ in range(200):
        for s, other in ((sides[0], sides[1]), (sides[1], sides[0])):
            while s.wire:
                other.state.receive(s.wire.pop(0), now)
            handle(other)
        for s in sides:
            pump(s)
        if all(not s.wire for s in sides) and all(
            s.state.unacked == 0 or s.state.closing for s in sides
        ):
            break
        now += 0.5
        for s in sides:
            s.state.timer(now)
            pump(s)
    closed = [s.state.close_error for s in sides if s.state.closing]
    for s in sides:
        assert not s.state.closing or id(s.state) in spent, "gave up on a healthy network"
    for s, other in ((sides[0], sides[1]), (sides[1], sides[0])):
        assert other.got == s.sent[: len(other.got)], "not exactly once in order"
        if not closed:
            assert other.got == s.sent and s.state.unacked == 0
    for err in closed:
        assert err is not None and err.code == im_pb2.RETRY_LIMIT, err


# -- one rule at a time ---------------------------------------------------------------------


def windowed(seq: int, n: int = 1, body: bytes = b"") -> bytes:
    env = chat(n, body)
    env.seq = seq
    return env.SerializeToString()


def control(**body: object) -> bytes:
    return im_pb2.Envelope(**body).SerializeToString()  # type: ignore[arg-type]


def test_windowed_body_with_seq_0_and_control_body_with_a_seq_are_fatal() -> None:
    for payload in (chat(1).SerializeToString(), control(ping=im_pb2.Ping(), seq=3)):
        s = LinkState(LinkConfig(), 0.0)
        s.receive(payload, 0.0)
        assert s.closing and s.close_error is not None
        assert s.close_error.code == im_pb2.BAD_MESSAGE
        assert errors(s.take_output()) == [("BAD_MESSAGE", 0)]


def test_gaps_wait_duplicates_are_reacked_and_acks_follow_the_handler() -> None:
    s = LinkState(LinkConfig(window=64), 0.0)
    s.receive(windowed(2, 2), 0.0)
    assert s.pop_frame() is None  # parked until 1 arrives
    s.receive(windowed(1, 1), 0.0)
    assert [s.pop_frame(), s.pop_frame()] == [(1, chat(1)), (2, chat(2))]  # seq cleared
    assert s.take_output() == []  # nothing acked before the handler is done
    s.handled(2)
    s.ack_handled()
    assert kinds(s.take_output()) == ["link_ack"]
    s.receive(windowed(1, 1), 0.0)  # a duplicate: not handed over again, acked again
    assert s.pop_frame() is None
    out = s.take_output()
    assert [parse(p).link_ack.seq for p in out] == [2]


def test_a_frame_beyond_the_window_is_fatal() -> None:
    s = LinkState(LinkConfig(window=4), 0.0)
    s.receive(windowed(6), 0.0)
    assert s.close_error is not None and s.close_error.code == im_pb2.WINDOW_FULL


def test_a_link_ack_for_a_frame_never_sent_is_fatal() -> None:
    s = LinkState(LinkConfig(), 0.0)
    s.receive(control(link_ack=im_pb2.LinkAck(seq=1)), 0.0)
    assert s.close_error is not None and s.close_error.code == im_pb2.BAD_MESSAGE


def test_acks_release_the_window_and_are_reported() -> None:
    s = LinkState(LinkConfig(window=2), 0.0)
    assert [s.send(chat(1), 0.0), s.send(chat(2), 0.0)] == [1, 2]
    assert s.window_full
    s.receive(control(link_ack=im_pb2.LinkAck(seq=1)), 0.0)
    assert s.acked == 1 and s.unacked == 1 and not s.window_full


def test_retransmits_then_retry_limit() -> None:
    s = LinkState(LinkConfig(retry_timeout=1.0, max_retries=2, heartbeat=100), 0.0)
    s.send(chat(1), 0.0)
    first = s.take_output()
    for t in (1.0, 2.0):
        s.timer(t)
        assert s.take_output() == first  # the same bytes, the same seq
    s.timer(3.0)
    assert s.close_error is not None and s.close_error.code == im_pb2.RETRY_LIMIT
    assert [parse(p) for p in s.take_unacked()] == [parse(first[0])]


def test_heartbeat_idle_timeout_and_next_deadline() -> None:
    s = LinkState(LinkConfig(heartbeat=1.0, idle_timeout=3.0), 0.0)
    assert s.next_deadline() == 1.0
    s.timer(1.0)
    assert kinds(s.take_output()) == ["ping"]
    s.data_arrived(1.5)  # any bytes reset the idle timer
    s.timer(4.0)
    assert not s.closing
    s.timer(4.5)
    assert s.close_error is not None and s.close_error.code == im_pb2.IDLE_TIMEOUT


def test_pings_are_answered_and_control_frames_rate_limited() -> None:
    s = LinkState(LinkConfig(control_rate=1.0, control_burst=3), 0.0)
    for _ in range(3):
        s.receive(control(ping=im_pb2.Ping(nonce=7)), 0.0)
    assert [parse(p).pong.nonce for p in s.take_output()] == [7, 7, 7]
    s.receive(control(ping=im_pb2.Ping(nonce=7)), 0.0)
    assert s.close_error is not None and s.close_error.code == im_pb2.RATE_LIMITED


def test_before_authentication_only_greet_and_keepalives_are_taken() -> None:
    s = LinkState(LinkConfig(), 0.0, authenticated=False)
    assert s.frame_limit == PREAUTH_MAX_FRAME
    s.receive(control(ping=im_pb2.Ping(nonce=1)), 0.0)
    assert kinds(s.take_output()) == ["pong"]
    s.receive(windowed(2, body=b"x" * 100), 0.0)  # not 1: it would be parked if allowed in
    assert s.close_error is not None and s.close_error.code == im_pb2.NOT_AUTHENTICATED
    assert s._recv.parked == 0 and s.pop_frame() is None
    for body in ({"welcome": im_pb2.Welcome()}, {"error": im_pb2.Error()}):
        s = LinkState(LinkConfig(), 0.0, authenticated=False)
        s.receive(control(**body), 0.0)
        assert s.close_error is not None and s.close_error.code == im_pb2.NOT_AUTHENTICATED


def test_a_greet_stops_the_intake_until_the_handler_decides() -> None:
    s = LinkState(LinkConfig(max_frame=65536), 0.0, authenticated=False)
    s.receive(control(greet=im_pb2.Greet(token="t")), 0.0)
    assert not s.reading
    assert s.pop_frame() == (0, im_pb2.Envelope(greet=im_pb2.Greet(token="t")))
    s.authenticate()
    s.verdict_done()
    assert s.reading and s.frame_limit == 65536
    s.receive(windowed(1), 0.0)
    assert s.pop_frame() == (1, chat(1))


def test_greet_deadline() -> None:
    s = LinkState(LinkConfig(greet_timeout=2.0), 0.0, authenticated=False)
    s.receive(control(ping=im_pb2.Ping()), 1.9)  # keep-alives do not extend it
    s.timer(2.0)
    assert s.close_error is not None and s.close_error.code == im_pb2.GREET_TIMEOUT
    s = LinkState(LinkConfig(greet_timeout=2.0), 0.0, authenticated=True)
    s.timer(2.0)
    assert not s.closing


def test_a_bad_frame_closes_a_client_link_but_is_refused_alone_on_a_node_link() -> None:
    junk = b"\x08\x05\xff\xff\xff"  # seq 5, then bytes that are not protobuf
    client = LinkState(LinkConfig(), 0.0)
    client.receive(junk, 0.0)
    assert client.close_error is not None and client.close_error.code == im_pb2.BAD_FRAME
    node = LinkState(LinkConfig(node=True, window=16), 0.0)
    for seq in (1, 2, 3, 4):
        node.receive(windowed(seq, seq), 0.0)
    node.receive(junk, 0.0)
    node.refuse_frame(Skipped(70_000, windowed(6)[:11]))  # over the limit, skipped unread
    node.receive(windowed(7, 7), 0.0)
    assert not node.closing and node.bad_frames == 2
    got = []
    while (item := node.pop_frame()) is not None:
        got.append((item[0], item[1].chat.id if item[1] is not None else None))
        node.handled(item[0])
    assert got == [(1, 1), (2, 2), (3, 3), (4, 4), (5, None), (6, None), (7, 7)]
    node.ack_handled()
    out = node.take_output()
    assert errors(out) == [("BAD_FRAME", 5), ("BAD_FRAME", 6)]
    assert parse(out[-1]).link_ack.seq == 7  # the sender's window moves past both


def test_unknown_fields_are_dropped_when_asked() -> None:
    payload = windowed(1, 1) + b"\xa2\x06\x03abc"  # field 100, length-delimited
    kept = LinkState(LinkConfig(), 0.0)
    kept.receive(payload, 0.0)
    dropped = LinkState(LinkConfig(discard_unknown=True), 0.0)
    dropped.receive(payload, 0.0)
    k, d = kept.pop_frame(), dropped.pop_frame()
    assert k is not None and d is not None and k[1] is not None and d[1] is not None
    assert b"abc" in k[1].SerializeToString()
    assert d[1].SerializeToString() == chat(1).SerializeToString()


def test_payloads_start_with_their_seq_and_send_body_matches_send() -> None:
    a, b = LinkState(LinkConfig(), 0.0), LinkState(LinkConfig(), 0.0)
    env = chat(9, b"hi")
    env.seq = 77  # a seq from another link is not sent on, and the envelope is left as it was
    a.send(env, 0.0)
    b.send_body("chat", env.chat.SerializeToString(), 0.0)
    pa, pb = a.take_output(), b.take_output()
    assert pa == pb and peek_seq(pa[0]) == 1 and env.seq == 77
    assert parse(pa[0]) == im_pb2.Envelope(seq=1, chat=chat(9, b"hi").chat)


def test_a_fatal_frame_closes_the_link_only_after_the_frames_before_it() -> None:
    s = LinkState(LinkConfig(), 0.0)
    s.receive(windowed(1, 1), 0.0)
    s.receive(chat(2).SerializeToString(), 0.0)  # seq 0 on a chat: fatal
    s.receive(windowed(2, 3), 0.0)  # after the breach: not taken
    assert not s.closing and not s.reading
    assert s.pop_frame() == (1, chat(1))
    s.handled(1)
    assert s.pop_frame() is None and s.closing
    assert s.close_error is not None and s.close_error.code == im_pb2.BAD_MESSAGE
    assert kinds(s.take_output()) == ["link_ack", "error"]


def test_a_refused_frame_out_of_order_keeps_its_place() -> None:
    node = LinkState(LinkConfig(node=True), 0.0)
    node.refuse_frame(Skipped(90_000, windowed(2)[:11]))  # ahead of a gap: parked as nothing
    node.receive(windowed(3, 3), 0.0)
    assert node.pop_frame() is None
    node.receive(windowed(1, 1), 0.0)
    got = []
    while (item := node.pop_frame()) is not None:
        got.append((item[0], None if item[1] is None else item[1].chat.id))
    assert got == [(1, 1), (2, None), (3, 3)]
