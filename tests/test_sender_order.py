"""A device's order when one of its chats is lost between the connector and the writer (a
broker node killed mid-publish, a transfer gone with it): the chats it made after the lost one
must not commit ahead of it. Each chat names the newest earlier one still without SENT
(``after_id``); the writer refuses it OUT_OF_ORDER until that one is in, and the device sends the
conversation's chats again, oldest first. On the ``im up`` stack, with the real writer and store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import poll_until
from test_e2e import make_users, stack_settings

from cli.stack import Stack
from client import Message
from client.outbox import Outbox
from common.errors import BackendError
from proto import im_pb2
from timeline.queue import SUBMIT_TIMEOUT, TimelineDelivery, TimelineQueue


class LosesOne:
    """The stack's timeline queue, except that the first submit with a chat in it once armed
    is lost: it fails as a publish to a dead broker node does (nothing queued, no answer)."""

    def __init__(self, inner: TimelineQueue) -> None:
        self.inner = inner
        self.armed = False
        self.lost: list[int] = []

    async def submit(
        self, records: Sequence[im_pb2.TimelineRecord], *, timeout: float = SUBMIT_TIMEOUT
    ) -> list[im_pb2.Committed]:
        chats = [r.chat.id for r in records if r.WhichOneof("body") == "chat"]
        if self.armed and chats:
            self.armed = False
            self.lost.extend(chats)
            raise BackendError("rabbitmq", "publish: connection lost (test)")
        return await self.inner.submit(records, timeout=timeout)

    def deliveries(self, max_batch: int) -> AsyncIterator[list[TimelineDelivery]]:
        return self.inner.deliveries(max_batch)

    async def close(self) -> None:
        await self.inner.close()


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path / "server"))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_chats_made_after_a_lost_one_wait_for_it(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        # a resend by timeout would come far too late for this test: only OUT_OF_ORDER helps
        alice._outbox.resend_after = 120.0
        await alice.send_text("bob", "m0")
        assert await poll_until(lambda: not alice.pending, 10)
        transfer = stack.transfer
        assert transfer is not None
        flaky = LosesOne(transfer.timeline)
        transfer.timeline = flaky
        flaky.armed = True
        texts = [f"m{i}" for i in range(1, 8)]
        await alice.send_text("bob", texts[0])
        # the transfer submits what one loop turn brings together, and a lost submit loses
        # all of it: the later chats are made once m1's submit is lost, so they go in others
        assert await poll_until(lambda: bool(flaky.lost), 10)
        for text in texts[1:]:
            await alice.send_text("bob", text)  # in flight at once, behind the lost one
        assert await poll_until(lambda: not alice.pending, 20), f"{alice.pending} unsent"
        assert len(flaky.lost) == 1, "one chat was lost on its way to the writer"
        assert alice.out_of_order >= 1, "the writer turned a later chat back"
        history = [m for m in await bob.history("p:alice:bob", after=0) if isinstance(m, Message)]
        assert [m.text for m in history] == ["m0", *texts], "committed in the order made"
        ids = [m.msg_id for m in history]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    finally:
        for c in (alice, bob):
            await c.close()


@pytest.mark.asyncio
async def test_a_forged_after_id_only_refuses_its_own_chat(stack: Stack) -> None:
    """after_id is the sender's word about its own chats: naming one that does not exist (or
    one of its own in another conversation) costs that chat a refusal and nobody anything."""
    alice, bob, carol = await make_users(stack, "alice", "bob", "carol")
    try:
        await alice.send_text("carol", "to carol")
        await bob.send_text("alice", "from bob")
        assert await poll_until(lambda: not alice.pending and not bob.pending, 10)
        sent_to_carol = [
            m for m in await carol.history("p:alice:carol", after=0) if isinstance(m, Message)
        ]
        link = alice._conn.link
        assert link is not None
        ids = alice._ids
        for after in (sent_to_carol[0].msg_id, 5):  # another conversation's; none at all
            forged = im_pb2.ChatMsg(
                id=ids(),
                from_id="alice",
                dest_id="bob",
                dest_type=im_pb2.SINGLE,
                msg_type=im_pb2.TEXT,
                body=b"not even sealed",
                create_time=1,
                after_id=after,
            )
            await link.send(im_pb2.Envelope(chat=forged))
        await alice.send_text("bob", "still fine")
        assert await poll_until(lambda: not alice.pending, 10)
        page = await bob.history("p:alice:bob", after=0)
        assert len(page) == 2, "nothing of the forged chats was stored"
        assert [m.text for m in page if isinstance(m, Message)] == ["from bob", "still fine"]
    finally:
        for c in (alice, bob, carol):
            await c.close()


def test_the_outbox_names_each_chats_predecessor_and_requeues_a_conversation() -> None:
    def chat(msg_id: int, dest: str, kind: im_pb2.DestType = im_pb2.SINGLE) -> im_pb2.ChatMsg:
        return im_pb2.ChatMsg(id=msg_id, from_id="alice", dest_id=dest, dest_type=kind)

    box = Outbox(100)
    made = [chat(1, "bob"), chat(2, "carol"), chat(3, "bob"), chat(4, "bob", im_pb2.GROUP)]
    made.append(chat(5, "bob"))
    for c in made:
        box.add(c)
    assert [box.before(c) for c in made] == [0, 0, 1, 0, 3]
    for c in made:
        pending = box.next_unsent()
        assert pending is not None and pending.chat.id == c.id
        box.sent(pending, c.id, 10.0)
    assert box.next_unsent() is None
    box.confirm(3)  # SENT: a later chat need not wait for it
    assert box.before(made[4]) == 1
    assert box.requeue(made[4], 100.0) == 2  # bob's 1 and 5; carol's and the group's stay sent
    again = []
    while (p := box.next_unsent()) is not None:
        again.append(p.chat.id)
        box.sent(p, 0, 11.0)
    assert again == [1, 5]
    # the refusals of the same round, just behind: nothing goes again; later, it does
    assert box.requeue(made[4], 101.0) == 0 and box.next_unsent() is None
    assert box.requeue(made[4], 102.5) == 2
    while (p := box.next_unsent()) is not None:
        box.sent(p, 0, 103.0)
    box.confirm(1)
    box.confirm(5)
    assert box.before(chat(6, "bob")) == 0 and len(box) == 2
