"""Typing and presence (issue 16) on the embedded stack (``im up``'s, in-process bus and states),
seen from raw devices: typing reaches the friend's devices as a control frame with the server's
user id, never a stranger's nor the typist's own; a group's only from an unmuted member; the
rate limit; the stop a closing session owes; presence to friends at GREET and at each change,
hidden by the privacy setting, and nothing across a block; hostile typing answered with its
code while the other sessions go on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from rawdevice import RawDevice, settle, until
from test_e2e import conn_addr, make_users, rest_url, stack_settings
from test_groups_wire import Groups

from cli.stack import Stack
from common.convid import pair_conv_id
from common.link import LinkConfig, open_link
from connector.signals import CONV_BURST
from proto import im_pb2

pytestmark = pytest.mark.asyncio

AB = pair_conv_id("alice", "bob")


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


@pytest_asyncio.fixture
async def rest(stack: Stack) -> AsyncIterator[Groups]:
    r = Groups(rest_url(stack))
    try:
        yield r
    finally:
        await r.close()


async def users(st: Stack, *names: str) -> None:
    """Registered, and each pair of the first names friends (make_users befriends them all)."""
    for c in await make_users(st, *names, connect=False):
        await c.close()


def typing_env(conv: str, on: bool = True, user: str = "") -> im_pb2.Envelope:
    return im_pb2.Envelope(typing=im_pb2.Typing(conv_id=conv, user_id=user, typing=on))


def send_typing(dev: RawDevice, conv: str, on: bool = True, user: str = "") -> None:
    assert dev.link is not None
    dev.link.send_control(typing_env(conv, on, user))


def typings(dev: RawDevice) -> list[im_pb2.Typing]:
    return dev.of("typing")  # type: ignore[return-value]


def presences(dev: RawDevice, user: str) -> list[im_pb2.Presence]:
    found: list[im_pb2.Presence] = dev.of("presence")  # type: ignore[assignment]
    return [p for p in found if p.user_id == user]


async def test_typing_reaches_the_friends_devices_only_with_the_servers_user_id(
    stack: Stack,
) -> None:
    await users(stack, "alice", "bob")
    await users(stack, "mallory")  # registered, nobody's friend
    a1 = await RawDevice("alice", "a1").connect(stack)
    a2 = await RawDevice("alice", "a2").connect(stack)
    b1 = await RawDevice("bob", "b1").connect(stack)
    b2 = await RawDevice("bob", "b2").connect(stack)
    m1 = await RawDevice("mallory", "m1").connect(stack)
    send_typing(a1, AB, True)
    await until(lambda: typings(b1) and typings(b2))
    for dev in (b1, b2):
        (t,) = typings(dev)
        assert (t.conv_id, t.user_id, t.typing) == (AB, "alice", True)
    # a control frame: no link seq, so nothing the link would retransmit after a loss
    assert all(e.seq == 0 for e in b1.frames if e.WhichOneof("body") == "typing")
    send_typing(a1, AB, False)
    await until(lambda: len(typings(b1)) == 2)
    assert [t.typing for t in typings(b1)] == [True, False]
    await settle(0.3)
    assert typings(a1) == [] and typings(a2) == [], "the typist's own devices show nothing"
    assert typings(m1) == []
    # a stranger typing "to" alice: mallory has no pair with alice, so not even the id passes
    send_typing(m1, pair_conv_id("alice", "mallory"))
    await until(lambda: m1.errors)
    assert m1.codes() == ["NOT_FRIEND"] and not m1.closed.is_set()
    await m1.close()  # its refused start leaves no stop to send for it either
    await settle(0.3)
    assert all(t.user_id != "mallory" for t in typings(a1) + typings(a2))


async def test_typing_rate_limit_drops_the_excess_silently_and_stops_need_a_start(
    stack: Stack,
) -> None:
    await users(stack, "alice", "bob")
    a = await RawDevice("alice", "a").connect(stack)
    b = await RawDevice("bob", "b").connect(stack)
    send_typing(a, AB, False)  # a stop with no start: nothing to stop, dropped
    for _ in range(20):
        send_typing(a, AB, True)
    await until(lambda: len(typings(b)) >= CONV_BURST)
    await settle(0.5)
    # the burst, and at most one more refilled while the 20 went (1 a second)
    assert CONV_BURST <= len(typings(b)) <= CONV_BURST + 1
    assert all(t.typing for t in typings(b))
    assert a.errors == [] and not a.closed.is_set(), "dropped without an ERROR"
    connector = stack.connector
    assert connector is not None
    (session,) = connector.sessions_of("alice")
    assert session.rules.typing.dropped >= 20 - CONV_BURST - 1


async def test_a_session_that_closes_while_typing_sends_its_stop(stack: Stack) -> None:
    await users(stack, "alice", "bob")
    a = await RawDevice("alice", "a").connect(stack)
    b = await RawDevice("bob", "b").connect(stack)
    send_typing(a, AB, True)
    await until(lambda: typings(b))
    await a.close()
    await until(lambda: len(typings(b)) == 2)
    stop = typings(b)[1]
    assert (stop.conv_id, stop.user_id, stop.typing) == (AB, "alice", False)


async def test_group_typing_from_members_only_and_not_while_muted(
    stack: Stack, rest: Groups
) -> None:
    await users(stack, "alice", "bob", "carol")
    await users(stack, "dave")
    a = await RawDevice("alice", "a").connect(stack)
    b = await RawDevice("bob", "b").connect(stack)
    c = await RawDevice("carol", "c").connect(stack)
    d = await RawDevice("dave", "d").connect(stack)
    gid = await rest.create(a, b, c)
    conv = f"g:{gid}"
    send_typing(b, conv, True)
    await until(lambda: typings(a) and typings(c))
    assert [(t.conv_id, t.user_id) for t in typings(a)] == [(conv, "bob")]
    send_typing(d, conv, True)  # not a member
    await until(lambda: d.errors)
    assert d.codes() == ["NOT_MEMBER"] and not d.closed.is_set()
    await rest.mute(gid, a, "carol", int(time.time() * 1000) + 60_000)
    await settle(1.2)  # the connector's membership answers live 1 s
    send_typing(c, conv, True)
    await until(lambda: c.errors)
    assert c.codes() == ["MUTED"]
    await settle(0.3)
    assert all(t.user_id == "bob" for t in typings(a)), "neither dave's nor carol's came"
    assert typings(b) == [] and typings(d) == []


@pytest.mark.parametrize(
    ("env", "code"),
    [
        (typing_env("p:alice:zed"), "NOT_FRIEND"),  # a pair of alice's with nobody she knows
        (typing_env("p:bob:carol"), "NOT_MEMBER"),  # someone else's pair
        (typing_env("nonsense"), "NOT_MEMBER"),
        (typing_env("p:" + "x" * 30_000 + ":y"), "NOT_MEMBER"),  # huge
        (typing_env("g:" + "9" * 64), "NOT_MEMBER"),  # no such group
        (typing_env(AB, user="bob"), "SPOOFED_SENDER"),
    ],
)
async def test_hostile_typing_gets_its_code_and_the_others_go_on(
    stack: Stack, env: im_pb2.Envelope, code: str
) -> None:
    await users(stack, "alice", "bob")
    a = await RawDevice("alice", "a").connect(stack)
    b = await RawDevice("bob", "b").connect(stack)
    assert a.link is not None
    a.link.send_control(env)
    await until(lambda: a.errors)
    (err,) = a.errors
    assert im_pb2.ErrorCode.Name(err.code) == code and err.ref_seq == 0
    assert not a.closed.is_set()
    send_typing(a, AB, True)  # the same link still works, and bob heard nothing else
    await until(lambda: typings(b))
    assert [t.user_id for t in typings(b)] == ["alice"]


async def test_typing_before_greet_closes_that_connection_only(stack: Stack) -> None:
    await users(stack, "alice", "bob")
    a = await RawDevice("alice", "a").connect(stack)
    b = await RawDevice("bob", "b").connect(stack)
    stranger = RawDevice("nobody", "x")
    link = await open_link(*conn_addr(stack), stranger, LinkConfig(), name="x")
    link.send_control(typing_env(AB))
    await until(lambda: stranger.closed.is_set())
    assert stranger.codes() == ["NOT_AUTHENTICATED"]
    send_typing(a, AB, True)
    await until(lambda: typings(b))


async def test_presence_to_friends_at_greet_and_at_each_change(stack: Stack) -> None:
    await users(stack, "alice", "bob")
    await users(stack, "carol")
    b = await RawDevice("bob", "b").connect(stack)
    c = await RawDevice("carol", "c").connect(stack)
    before = int(time.time() * 1000)
    a1 = await RawDevice("alice", "a1").connect(stack)
    await until(lambda: presences(b, "alice"))
    assert [p.state for p in presences(b, "alice")] == [im_pb2.ONLINE]
    await until(lambda: presences(a1, "bob"))  # alice's GREET: bob is online
    assert presences(a1, "bob")[0].state == im_pb2.ONLINE
    a2 = await RawDevice("alice", "a2").connect(stack)
    await a1.close()
    await settle(0.5)
    assert len(presences(b, "alice")) == 1, "a second device, or one of two leaving, is no change"
    await a2.close()
    await until(lambda: len(presences(b, "alice")) == 2)
    gone = presences(b, "alice")[1]
    assert gone.state == im_pb2.OFFLINE
    assert before <= gone.last_seen <= int(time.time() * 1000)
    assert presences(c, "alice") == [] and presences(c, "bob") == [], "carol is nobody's friend"
    # bob's next device hears alice offline with that last seen
    b2 = await RawDevice("bob", "b2").connect(stack)
    await until(lambda: presences(b2, "alice"))
    assert (presences(b2, "alice")[0].state, presences(b2, "alice")[0].last_seen) == (
        im_pb2.OFFLINE,
        gone.last_seen,
    )


async def privacy(st: Stack, dev: RawDevice, value: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {dev.token}"}
    async with httpx.AsyncClient(base_url=rest_url(st), timeout=10) as http:
        if value is None:
            return await http.get("/me/privacy", headers=headers)
        return await http.put("/me/privacy", headers=headers, json={"presence": value})


async def test_hidden_presence_is_offline_with_no_last_seen_to_everyone(stack: Stack) -> None:
    await users(stack, "alice", "bob")
    b = await RawDevice("bob", "b").connect(stack)
    a = await RawDevice("alice", "a").connect(stack)
    await until(lambda: presences(b, "alice"))
    assert (await privacy(stack, a)).json() == {"presence": "friends"}
    r = await privacy(stack, a, "hidden")
    assert (r.status_code, r.json()) == (200, {"presence": "hidden"})
    assert (await privacy(stack, a)).json() == {"presence": "hidden"}
    await until(lambda: len(presences(b, "alice")) == 2)
    hidden = presences(b, "alice")[1]
    assert (hidden.state, hidden.last_seen) == (im_pb2.OFFLINE, 0)
    # a device of bob's coming now hears nothing of alice (offline, no last seen), and alice
    # going and coming tells bob nothing more
    b2 = await RawDevice("bob", "b2").connect(stack)
    await until(lambda: presences(b2, "bob") == [] and len(b2.caught_ups) >= 1)
    await a.close()
    a = await RawDevice("alice", "a").connect(stack)
    await settle(0.5)
    assert presences(b2, "alice") == [] and len(presences(b, "alice")) == 2
    # back to friends: online again, at once
    assert (await privacy(stack, a, "friends")).status_code == 200
    await until(lambda: len(presences(b, "alice")) == 3)
    assert presences(b, "alice")[2].state == im_pb2.ONLINE
    bad = await privacy(stack, a, "everyone")
    assert bad.status_code == 422
    assert (await privacy(stack, a)).json() == {"presence": "friends"}


async def test_unhiding_tells_nothing_of_what_the_devices_did_while_hidden(stack: Stack) -> None:
    """Alice hides, her last device goes, and a second later she unhides while offline: bob
    hears her offline as of the switch, not as of the disconnect (that would tell him when
    she was around while hidden)."""
    await users(stack, "alice", "bob")
    b = await RawDevice("bob", "b").connect(stack)
    a = await RawDevice("alice", "a").connect(stack)
    await until(lambda: presences(b, "alice"))
    assert (await privacy(stack, a, "hidden")).status_code == 200
    await until(lambda: len(presences(b, "alice")) == 2)
    await a.close()  # while hidden
    await settle(1.0)
    switched = int(time.time() * 1000)
    assert (await privacy(stack, a, "friends")).status_code == 200
    await until(lambda: len(presences(b, "alice")) == 3)
    told = presences(b, "alice")[2]
    assert told.state == im_pb2.OFFLINE
    assert told.last_seen >= switched, "the disconnect while hidden must not show"


async def test_a_block_either_way_means_no_presence_either_way(stack: Stack) -> None:
    await users(stack, "alice", "bob")
    a = await RawDevice("alice", "a").connect(stack)
    b = await RawDevice("bob", "b").connect(stack)
    await until(lambda: presences(a, "bob"))
    headers = {"Authorization": f"Bearer {a.token}"}
    async with httpx.AsyncClient(base_url=rest_url(stack), timeout=10) as http:
        r = await http.put("/blocks/bob", headers=headers)
        assert r.status_code == 204
    # the block ended the friendship; put the relation row back as if the block had not
    # finished yet (its two writes are not one transaction): the block alone must be enough
    assert stack.db is not None
    await stack.db.execute(
        "INSERT INTO im_relation (user_id1, user_id2, encrypt_key, created) VALUES (?, ?, ?, ?)",
        ("alice", "bob", "k" * 43, 0),
    )
    await a.close()
    await b.close()
    a = await RawDevice("alice", "a").connect(stack)  # its GREET: bob's presence, if any
    b = await RawDevice("bob", "b").connect(stack)  # a change of bob's, told to friends
    await until(lambda: a.caught_ups and b.caught_ups)
    await settle(0.5)
    assert presences(a, "bob") == [], "the blocker hears nothing of the blocked"
    assert presences(b, "alice") == [], "the blocked hears nothing of the blocker"


async def test_new_friends_hear_each_others_presence_at_once(stack: Stack) -> None:
    await users(stack, "alice")
    await users(stack, "bob")
    a = await RawDevice("alice", "a").connect(stack)
    b = await RawDevice("bob", "b").connect(stack)
    async with httpx.AsyncClient(base_url=rest_url(stack), timeout=10) as http:
        r = await http.put("/friends/bob", headers={"Authorization": f"Bearer {a.token}"})
        assert r.status_code == 202
        await settle(0.2)
        assert presences(a, "bob") == [] and presences(b, "alice") == []
        r = await http.put("/friends/alice", headers={"Authorization": f"Bearer {b.token}"})
        assert r.status_code == 200
    await until(lambda: presences(a, "bob") and presences(b, "alice"))
    assert presences(a, "bob")[0].state == presences(b, "alice")[0].state == im_pb2.ONLINE
