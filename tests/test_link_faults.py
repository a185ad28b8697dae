"""The connector -> transfer link through a TCP proxy that cuts it, slows it and stalls it,
while a conversation keeps going: nothing is lost, nothing surfaces twice or out of its
timeline's order, and a stalled link (no FIN, no RST: a hung peer) is noticed by the
keep-alives and replaced.

The order is the timeline's (seq), which is the order the chats were committed in: a chat that
found no transfer is resent by its client later, and takes its place after chats sent after it.

Embedded backends in one process: the stack runs REST, the transfer and the writer; the
connector is built here, so that its only road to the transfer is the proxy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import poll_until
from netproxy import TcpProxy
from test_e2e import PW, stack_settings

from cli.stack import Stack
from client.core import IMClient, Message, Receipt, befriend
from common.files import FileStore
from common.tokens import TokenSigner
from connector.server import Connector
from timeline.store import SQLTimelineStore
from user_status.relations import RelationReader

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


@dataclass
class Setup:
    stack: Stack
    connector: Connector
    proxy: TcpProxy

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.stack.rest_port}"


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    settings = stack_settings(tmp_path, node_heartbeat=0.3, node_idle_timeout=1.5, node_ttl=3.0)
    stack = Stack(settings, frozenset({"rest", "transfer", "writer"}))
    await stack.start()
    assert stack.transfer is not None and stack.status is not None and stack.db is not None
    proxy = await TcpProxy("127.0.0.1", stack.transfer.port).start()
    through_proxy = {stack.transfer.node_id: f"127.0.0.1:{proxy.port}"}

    async def transfers() -> dict[str, str]:
        return through_proxy

    connector = Connector(
        settings,
        stack.status,
        SQLTimelineStore(stack.db),
        RelationReader(stack.db),
        TokenSigner(settings.signing_secret()),
        transfers,
        files=FileStore(stack.db),
    )
    await connector.start()
    try:
        yield Setup(stack, connector, proxy)
    finally:
        await connector.stop()
        await proxy.close()
        await stack.stop()


async def chatting_pair(rest: str) -> tuple[IMClient, IMClient]:
    alice = IMClient(rest, "alice", PW, resend_after=2.0)
    bob = IMClient(rest, "bob", PW, resend_after=2.0)
    for c in (alice, bob):
        await c.register()
        await c.login()
    await befriend(alice, bob)
    await alice.connect()
    await bob.connect()
    return alice, bob


async def record(
    c: IMClient, got: list[int], sent: set[int], seqs: list[int] | None = None
) -> None:
    async for ev in c.events():
        if isinstance(ev, Message):
            got.append(ev.msg_id)
            if seqs is not None:
                seqs.append(ev.seq)
            await c.send_read(ev)
        elif isinstance(ev, Receipt) and ev.kind == "SENT":
            sent.add(ev.msg_id)


async def test_cut_slow_and_stalled_transfer_link(setup: Setup) -> None:
    alice, bob = await chatting_pair(setup.rest)
    got: list[int] = []
    seqs: list[int] = []
    sent_ok: set[int] = set()
    ids: list[int] = []
    readers = [
        asyncio.create_task(record(bob, got, set(), seqs)),
        asyncio.create_task(record(alice, [], sent_ok)),
    ]
    stop = asyncio.Event()

    async def talk() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            ids.append(await alice.send_text("bob", f"m{n}"))
            await asyncio.sleep(0.02)

    talker = asyncio.create_task(talk())
    try:
        await asyncio.sleep(0.5)
        links_before = setup.proxy.connections
        await setup.proxy.cut()  # RST both ways: noticed at once
        await asyncio.sleep(0.5)
        await setup.proxy.restore()
        await asyncio.sleep(1.0)
        setup.proxy.delay = 0.2  # slow, but in order
        await asyncio.sleep(1.5)
        setup.proxy.delay = 0.0
        setup.proxy.stall()  # silence, sockets open: only the keep-alives can tell
        stalled_at = time.monotonic()
        await asyncio.sleep(2.5)
        setup.proxy.resume()
        await asyncio.sleep(1.0)
        stop.set()
        await talker
        await poll_until(lambda: not alice.pending and set(ids) <= set(got), 30)
        assert setup.proxy.connections >= links_before + 2, "the stalled link was not replaced"
        assert time.monotonic() - stalled_at < 40
        assert alice.pending == 0, "the outbox never emptied"
        assert set(ids) <= sent_ok, "every message ends SENT"
        assert len(got) == len(set(got)), "a message surfaced twice"
        assert sorted(got) == sorted(ids), "lost"
        assert seqs == list(range(1, len(ids) + 1)), "out of the timeline's order, or a gap"
    finally:
        stop.set()
        for t in (talker, *readers):
            t.cancel()
        await asyncio.gather(talker, *readers, return_exceptions=True)
        await alice.close()
        await bob.close()


async def test_a_link_lost_with_unacked_frames_is_redialed_at_once(setup: Setup) -> None:
    """The connector hands what the lost link held to another transfer; with one transfer that
    is the next link to this one, so dialing it must not wait for that hand-over (it waited for
    its whole deadline, 6 s here, with no transfer link at all)."""
    alice, bob = await chatting_pair(setup.rest)
    (handler,) = setup.connector.transfers.handlers.values()
    try:
        setup.proxy.stall()
        msg_id = await alice.send_text("bob", "held by the link")
        assert handler.link is not None
        link = handler.link
        assert await poll_until(lambda: link.unacked > 0, 5)
        await setup.proxy.cut()  # the link goes with the chat unacked
        setup.proxy.resume()
        await setup.proxy.restore()
        cut_at = time.monotonic()
        assert await poll_until(lambda: setup.proxy.connections >= 2 and handler.ready.is_set(), 10)
        assert time.monotonic() - cut_at < 3.0, "the transfer link was dialed again late"
        sent: set[int] = set()
        while msg_id not in sent:
            ev = await alice.next_event(timeout=15)
            if isinstance(ev, Receipt) and ev.kind == "SENT":
                sent.add(ev.msg_id)
        got = await bob.next_event(timeout=5)
        assert isinstance(got, Message) and got.msg_id == msg_id
    finally:
        await alice.close()
        await bob.close()
