"""Group chat across a cluster-like deployment on the real services: MySQL, Redis and
RabbitMQ, with the writer, the transfer, two connectors and REST each their own stack (as
`im cluster` runs them as processes). A group's chat reaches every other device of every
member once, whichever connector holds it (one Fanout per connector), SENT reaches the
sender's device, a removed member hears nothing after the removal, and a new member hears
everything from the join."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import pytest
import pytest_asyncio
from conftest import MYSQL_URL, REDIS_URL, drop_namespace, require_service
from rawdevice import RawDevice, settle, until
from test_e2e import PW, make_users, rest_url
from test_groups_wire import USERS, Groups, chats_of, group_chat

from cli.migrate import run_migrate
from cli.stack import Stack
from client.rest import RestClient
from common.config import Settings
from common.db import MySQLParams, create_database
from common.link import LinkConfig, open_link
from proto import im_pb2

pytestmark = pytest.mark.asyncio

AMQP_URL = os.environ.get("IM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass
class Cluster:
    rest: Stack
    connectors: list[Stack]
    transfer: Stack


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    tag = uuid.uuid4().hex[:10]
    params = MySQLParams.from_url(MYSQL_URL)
    auth = (params.user or "root") + (f":{params.password}" if params.password else "")
    database = f"{params.database}_g{tag}"
    db_url = f"mysql://{auth}@{params.host}:{params.port}/{database}"
    try:
        await create_database(db_url)
    except Exception as exc:
        require_service("mysql", str(exc))
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
        await conn.close()
    except Exception as exc:
        require_service("rabbitmq", f"no answer at {AMQP_URL} ({exc})")
    settings = Settings(
        database_url=db_url,
        redis_url=REDIS_URL,
        redis_prefix=f"imtest:{tag}:",
        amqp_url=AMQP_URL,
        amqp_queue=f"imtest.{tag}",
        amqp_shards=1,
        secret="groups-cluster-secret-0123456789",
        connector_port=0,
        transfer_port=0,
        rest_port=0,
        ws_port=0,
        node_ttl=2.0,
        node_id="",
    )
    await run_migrate(settings)
    started: list[Stack] = []
    try:
        for roles in ({"writer"}, {"transfer"}, {"connector"}, {"connector"}, {"rest"}):
            st = Stack(settings, roles=frozenset(roles))
            await st.start()
            started.append(st)
        yield Cluster(started[4], started[2:4], started[1])
    finally:
        for st in reversed(started):
            await st.stop()
        await drop_namespace(REDIS_URL, tag, AMQP_URL, database)


async def connect(dev: RawDevice, c: Cluster, i: int) -> RawDevice:
    """``dev`` logged in over the cluster's REST and linked to connector ``i``."""
    rest = RestClient(rest_url(c.rest))
    try:
        login = await rest.login(dev.user, PW, dev.device)
    finally:
        await rest.close()
    dev.token, dev.slot = login.token, login.slot
    dev.ids.slot = login.slot
    dev.welcome = asyncio.get_running_loop().create_future()
    connector = c.connectors[i].connector
    assert connector is not None
    dev.link = await open_link("127.0.0.1", connector.port, dev, LinkConfig(), name=dev.device)
    greet = im_pb2.Greet(token=dev.token, device_id=dev.device)
    dev.link.send_control(im_pb2.Envelope(greet=greet))
    await asyncio.wait_for(dev.welcome, 5)
    await until(lambda: dev.caught_ups)
    return dev


async def test_group_chat_across_two_connectors(cluster: Cluster) -> None:
    for c in await make_users(cluster.rest, *USERS, connect=False):
        await c.close()
    places = [("alice", "pc", 0), ("alice", "phone", 1), ("bob", "pc", 0), ("bob", "phone", 1)]
    places += [("carol", "pc", 1), ("dave", "pc", 0)]
    devs = [await connect(RawDevice(u, d), cluster, i) for u, d, i in places]
    a_pc, a_phone, b_pc, b_phone, carol, dave = devs
    # past the second listing (2 s after WELCOME): the next is a minute away, so what the
    # devices hear of membership below comes from the notices
    await until(lambda: all(len(d.caught_ups) >= 2 for d in devs), 10)
    rest = Groups(rest_url(cluster.rest))
    try:
        gid = await rest.create(a_pc, b_pc, carol)
        conv = f"g:{gid}"
        first = [await group_chat(a_pc, gid, b"one"), await group_chat(b_phone, gid, b"two")]
        senders = [a_pc, b_phone]
        await until(lambda: a_pc.sent(first[0]) and b_phone.sent(first[1]), 15)
        members = [a_pc, a_phone, b_pc, b_phone, carol]
        for dev in members:
            n = len([s for s in senders if s is not dev])
            await until(lambda dev=dev, n=n: len(chats_of(dev, conv)) >= n, 15)  # type: ignore[misc]
        await settle(0.5)
        # two senders on two connectors: which commits first is the transfer's arrival order,
        # so every device must see them in their seq order, whichever that is
        seq_of = {m: s.sent(m)[0].seq for s, m in zip(senders, first, strict=True)}
        in_seq = sorted(zip(senders, first, strict=True), key=lambda sm: seq_of[sm[1]])
        for dev in members:
            want = [(s.user, m) for s, m in in_seq if s is not dev]
            assert chats_of(dev, conv) == want, f"{dev.user}/{dev.device}"
        assert chats_of(dave, conv) == []
        transfer = cluster.transfer.transfer
        assert transfer is not None and transfer.groups.frames >= 4, "a frame per connector"
        # carol is removed, dave joins: exactly the members at each seq hear of it
        await rest.remove(gid, a_pc, "carol")
        await rest.invite(gid, a_pc, "dave")
        await rest.join(gid, dave)
        # the members' online devices hear of it through Redis, on both connectors
        reader = cluster.connectors[0].connector
        assert reader is not None
        head = await reader.reader.head(conv)

        def told(dev: RawDevice, upto: int) -> bool:
            return any(s.conv_id == conv and s.last_seq == upto for s in dev.conv_states)

        await until(lambda: told(b_phone, head) and told(a_pc, head) and told(dave, head), 10)
        assert not told(carol, head), "the removed member is told where she stopped, no more"
        key = await rest.key(gid, a_pc)
        later = await group_chat(a_pc, gid, b"three", key_id=key)
        await until(lambda: a_pc.sent(later) and ("alice", later) in chats_of(dave, conv), 15)
        await until(lambda: ("alice", later) in chats_of(b_phone, conv), 15)
        await settle(0.5)
        assert chats_of(dave, conv) == [("alice", later)]
        assert [m for _, m in chats_of(carol, conv)] == [m for _, m in in_seq], "nothing after"
        assert chats_of(a_phone, conv)[-1] == ("alice", later)
        assert len([m for _, m in chats_of(b_pc, conv) if m == later]) == 1
    finally:
        await rest.close()
        for d in devs:
            await d.close()
