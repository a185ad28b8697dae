"""The pure parts of typing and presence: a client's typing checked and limited per session
(connector/signals.py, connector/session.py), the presence states' "changed or not" and the
bus's message format (user_status/presence.py), in memory and on the test Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from test_session_rules import CONV, code_of, greeted

from connector.session import Forward
from connector.signals import (
    CONV_BURST,
    SESSION_BURST,
    TYPING_CONVS,
    TYPING_TTL,
    TypingLimiter,
)
from proto import im_pb2
from user_status.presence import (
    Change,
    MemoryPresenceStates,
    PresenceStates,
    RedisPresenceStates,
)


def typing(conv: str = CONV, on: bool = True, user: str = "") -> im_pb2.Envelope:
    return im_pb2.Envelope(typing=im_pb2.Typing(conv_id=conv, user_id=user, typing=on))


def test_a_typing_goes_on_with_the_sessions_user_and_the_conversation_as_key() -> None:
    m, _ = greeted()
    (fwd,) = m.frame(typing(user=""), 0.0)
    assert isinstance(fwd, Forward) and fwd.key == CONV
    assert (fwd.env.typing.user_id, fwd.env.typing.typing) == ("alice", True)
    assert fwd.env.seq == 0


@pytest.mark.parametrize(
    ("env", "code"),
    [
        (typing(user="bob"), "SPOOFED_SENDER"),
        (typing(conv="p:bob:carol"), "NOT_MEMBER"),
        (typing(conv=""), "NOT_MEMBER"),
        (typing(conv="g:"), "NOT_MEMBER"),
        (typing(conv="p:alice:alice"), "NOT_MEMBER"),
        (typing(conv="x" * 60_000), "NOT_MEMBER"),
    ],
)
def test_hostile_typing_is_refused_and_not_fatal(env: im_pb2.Envelope, code: str) -> None:
    m, _ = greeted()
    assert code_of(m, env) == (code, False)


def test_starts_per_conversation_are_a_burst_then_one_a_second() -> None:
    lim = TypingLimiter(0.0)
    passed = [lim.admit("c", True, 0.0) for _ in range(10)]
    assert passed == [True] * CONV_BURST + [False] * (10 - CONV_BURST)
    assert lim.dropped == 10 - CONV_BURST
    assert lim.admit("c", True, 1.0) and not lim.admit("c", True, 1.0)
    assert lim.admit("other", True, 1.0), "each conversation has its own bucket"


def test_starts_across_conversations_share_the_sessions_bucket() -> None:
    lim = TypingLimiter(0.0)
    passed = sum(lim.admit(f"c{i}", True, 0.0) for i in range(SESSION_BURST + 5))
    assert passed == SESSION_BURST


def test_a_stop_needs_a_live_start_and_ends_it() -> None:
    lim = TypingLimiter(0.0)
    assert not lim.admit("c", False, 0.0)
    assert lim.admit("c", True, 0.0)
    assert lim.live(1.0) == ["c"]
    assert lim.admit("c", False, 1.0)
    assert not lim.admit("c", False, 1.1), "one stop per start"
    assert lim.live(1.1) == []
    lim.admit("c", True, 2.0)
    assert lim.live(2.0 + TYPING_TTL + 0.1) == [], "a start lasts the TTL"
    assert not lim.admit("c", False, 2.0 + TYPING_TTL + 0.1), "nothing left to stop"


def test_the_limiter_keeps_a_bounded_number_of_conversations() -> None:
    lim = TypingLimiter(0.0)
    for i in range(TYPING_CONVS * 3):
        assert lim.admit(f"c{i}", True, i * 0.2)  # the session bucket refills 5 a second
    assert len(lim) == TYPING_CONVS
    newest = {f"c{i}" for i in range(TYPING_CONVS * 2, TYPING_CONVS * 3)}
    live = lim.live(TYPING_CONVS * 0.6)
    assert live and set(live) <= newest, "the most recent ones are kept"


def test_a_closing_session_owes_the_stops_of_its_live_starts() -> None:
    m, _ = greeted()
    m.frame(typing(), 0.0)
    m.frame(typing(conv="p:alice:carol"), 0.0)
    m.frame(typing(conv="p:alice:carol", on=False), 0.5)
    (stop,) = m.typing_stops(1.0)
    assert (stop.typing.conv_id, stop.typing.user_id, stop.typing.typing) == (CONV, "alice", False)
    assert m.typing_stops(TYPING_TTL + 1) == []


def test_presence_changes_survive_the_bus_and_garbage_does_not() -> None:
    change = Change("alice", False, 1_767_000_000_000, ("bob", "carol"))
    assert Change.decode(change.encode()) == change
    for junk in ("", "[]", "{}", '{"u": "a", "o": true, "t": "x", "a": []}', '{"u":1,"o":1,"t":1}'):
        with pytest.raises(ValueError):
            Change.decode(junk)
    with pytest.raises(ValueError):
        Change.decode('{"u": "a", "o": true, "t": 1, "a": "bob"}')


@pytest_asyncio.fixture(params=["memory", "redis"])
async def states(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[PresenceStates]:
    if request.param == "memory":
        yield MemoryPresenceStates()
        return
    from conftest import connect_redis

    client: aioredis.Redis = await connect_redis(redis_url)
    prefix = f"imtest:{uuid.uuid4().hex}:"
    try:
        yield RedisPresenceStates(client, prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.mark.asyncio
async def test_a_state_is_a_change_once_and_offline_keeps_its_first_last_seen(
    states: PresenceStates,
) -> None:
    assert await states.swap("alice", True, 10)
    assert not await states.swap("alice", True, 20), "a second device is no change"
    assert await states.last_seen(["alice"]) == {}
    assert await states.swap("alice", False, 30)
    assert not await states.swap("alice", False, 40), "a late offline moves nothing"
    assert await states.last_seen(["alice", "bob"]) == {"alice": 30}
    assert await states.swap("bob", False, 50), "never seen, now offline: told"
    assert await states.swap("alice", True, 60)
    assert await states.last_seen(["alice", "bob"]) == {"bob": 50}


@pytest.mark.asyncio
async def test_the_memory_states_are_bounded() -> None:
    states = MemoryPresenceStates(limit=3)
    for i in range(10):
        await states.swap(f"u{i}", False, 100 + i)
    assert await states.last_seen([f"u{i}" for i in range(10)]) == {
        "u7": 107,
        "u8": 108,
        "u9": 109,
    }
