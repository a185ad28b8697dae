"""Typing and presence across a cluster-like deployment on the real services (MySQL, Redis,
RabbitMQ; writer, transfer, two connectors and REST each their own stack, as `im cluster` runs
them): typing goes connector -> transfer -> the other connector, presence through Redis (the
states and the pub/sub bus), a privacy switch made in the REST process reaches the friends'
devices on both connectors."""

from __future__ import annotations

import time

import httpx
import pytest
from rawdevice import RawDevice, settle, until
from test_e2e import make_users, rest_url
from test_groups_wire import Groups
from test_groups_wire_cluster import Cluster, cluster, connect
from test_signals import presences, send_typing, typings

from common.convid import pair_conv_id
from proto import im_pb2

pytestmark = pytest.mark.asyncio

__all__ = ["cluster"]  # the fixture, used by name


async def test_typing_crosses_connectors_to_the_friend_only(cluster: Cluster) -> None:
    for c in await make_users(cluster.rest, "alice", "bob", "carol", connect=False):
        await c.close()
    for c in await make_users(cluster.rest, "mallory", connect=False):
        await c.close()
    a = await connect(RawDevice("alice", "a"), cluster, 0)
    b = await connect(RawDevice("bob", "b"), cluster, 1)
    b0 = await connect(RawDevice("bob", "b0"), cluster, 0)
    m = await connect(RawDevice("mallory", "m"), cluster, 1)
    conv = pair_conv_id("alice", "bob")
    send_typing(a, conv, True)
    await until(lambda: typings(b) and typings(b0), 10)
    assert [(t.conv_id, t.user_id, t.typing) for t in typings(b)] == [(conv, "alice", True)]
    # a group of three: carol on connector 1 hears bob's typing from connector 0
    carol = await connect(RawDevice("carol", "c"), cluster, 1)
    rest = Groups(rest_url(cluster.rest))
    try:
        gid = await rest.create(a, b, carol)
    finally:
        await rest.close()
    send_typing(b0, f"g:{gid}", True)
    await until(lambda: [t for t in typings(carol) if t.conv_id == f"g:{gid}"], 10)
    await settle(0.5)
    assert typings(m) == [], "a stranger on the same connector hears nothing"
    assert [t.user_id for t in typings(a) if t.conv_id == f"g:{gid}"] == ["bob"]
    assert all(t.user_id != "bob" for t in typings(b)), "bob's own typing not echoed"


async def test_presence_online_offline_last_seen_and_hidden_across_connectors(
    cluster: Cluster,
) -> None:
    for c in await make_users(cluster.rest, "alice", "bob", connect=False):
        await c.close()
    b = await connect(RawDevice("bob", "b"), cluster, 1)
    b0 = await connect(RawDevice("bob", "b0"), cluster, 0)
    a = await connect(RawDevice("alice", "a"), cluster, 0)
    await until(lambda: presences(b, "alice") and presences(b0, "alice"), 10)
    assert presences(b, "alice")[0].state == im_pb2.ONLINE
    assert presences(a, "bob")[0].state == im_pb2.ONLINE  # her GREET: bob is online
    # a second device of alice's on the other connector is no change
    a1 = await connect(RawDevice("alice", "a1"), cluster, 1)
    await a.close()
    await settle(0.5)
    assert len(presences(b, "alice")) == 1
    before = int(time.time() * 1000)
    await a1.close()
    await until(lambda: len(presences(b, "alice")) == 2 and len(presences(b0, "alice")) == 2, 10)
    gone = presences(b, "alice")[1]
    assert gone.state == im_pb2.OFFLINE
    assert before <= gone.last_seen <= int(time.time() * 1000)
    assert presences(b0, "alice")[1] == gone
    # hidden, switched in the REST process: both of bob's connectors hear offline, no last seen
    a = await connect(RawDevice("alice", "a"), cluster, 0)
    await until(lambda: len(presences(b, "alice")) == 3, 10)
    async with httpx.AsyncClient(base_url=rest_url(cluster.rest), timeout=10) as http:
        r = await http.put(
            "/me/privacy",
            headers={"Authorization": f"Bearer {a.token}"},
            json={"presence": "hidden"},
        )
        assert r.status_code == 200, r.text
    await until(lambda: len(presences(b, "alice")) == 4 and len(presences(b0, "alice")) == 4, 10)
    for dev in (b, b0):
        p = presences(dev, "alice")[3]
        assert (p.state, p.last_seen) == (im_pb2.OFFLINE, 0)
