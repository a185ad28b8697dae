"""Live "read by N of M": as group members' cursors move, the senders of the latest messages get
GroupReceipt pushes with the counts REST gives (transfer/groupreceipts.py). The pacing and
coalescing are checked on a scripted store; the counts end to end on the ``im up`` stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from test_e2e import make_users, stack_settings

from cli.stack import Stack
from client import GroupReceipt, IMClient, Message
from proto import im_pb2
from timeline.model import Entry
from transfer.groupreceipts import GroupReceipts

pytestmark = pytest.mark.asyncio


class Script:
    """A group timeline of ``head`` messages by alternating senders (seq 1 a system event), and
    a record of what was read."""

    def __init__(self, head: int, members: int = 5) -> None:
        self.head = head
        self.members = members
        self.pages: list[tuple[str, int, str | None]] = []
        self.counted: list[list[tuple[int, str]]] = []

    async def page(
        self,
        conv_id: str,
        *,
        after: int = 0,
        before: int = 0,
        limit: int,
        reader: str | None = None,
    ) -> list[Entry]:
        self.pages.append((conv_id, before, reader))
        top = min(before - 1, self.head)
        seqs = range(max(1, top - limit + 1), top + 1)
        system = "#" + conv_id.removeprefix("g:")  # the group's own events (groupsql)
        return [Entry(conv_id, s, system if s == 1 else f"u{s % 2}", s, 0, b"") for s in seqs]

    async def receipt_counts(
        self, conv_id: str, messages: Sequence[tuple[int, str]]
    ) -> list[tuple[int, int, int]]:
        self.counted.append(list(messages))
        return [(self.members, seq % 3, seq % 4) for seq, _ in messages]


async def test_cursors_are_coalesced_per_group_and_paced() -> None:
    pushed: list[tuple[list[str], im_pb2.GroupReceipt]] = []

    async def push(users: list[str], body: im_pb2.Fanout) -> None:
        pushed.append((users, body.group_receipt))

    store = Script(head=30)
    receipts = GroupReceipts(store, push, every=0.3, window=4)
    for seq in (10, 12, 11):  # three cursors before the first turn: one turn, at the highest
        receipts.moved("g:a", f"m{seq}", seq)
    receipts.moved("g:b", "m1", 3)
    await asyncio.sleep(0.1)
    assert sorted(store.pages) == [("g:a", 13, "m12"), ("g:b", 4, "m1")]
    assert [(u, r.conv_id, r.seq, r.members, r.read, r.delivered) for u, r in pushed[:4]] == [
        (["u1"], "g:a", 9, 5, 0, 1),
        (["u0"], "g:a", 10, 5, 1, 2),
        (["u1"], "g:a", 11, 5, 2, 3),
        (["u0"], "g:a", 12, 5, 0, 0),
    ]
    assert [m for m in store.counted[1]] == [(2, "u0"), (3, "u1")], "seq 1 is the group's own"
    # a cursor right after a turn waits out the group's pause, then counts once
    receipts.moved("g:a", "m20", 20)
    receipts.moved("g:a", "m25", 25)
    await asyncio.sleep(0.1)
    assert len(store.pages) == 2, "not yet: the group's turn was under 0.3 s ago"
    await asyncio.sleep(0.4)
    assert store.pages[2] == ("g:a", 26, "m25") and len(store.pages) == 3
    assert receipts.pushed == len(pushed) == 4 + 2 + 4
    await receipts.close()


async def test_marks_are_bounded_and_a_failing_store_skips_a_turn() -> None:
    class Failing(Script):
        async def receipt_counts(
            self, conv_id: str, messages: Sequence[tuple[int, str]]
        ) -> list[tuple[int, int, int]]:
            raise ValueError("the store went away")

    async def push(users: list[str], body: im_pb2.Fanout) -> None:
        raise AssertionError("nothing to push")

    receipts = GroupReceipts(Failing(head=5), push, every=0.05, max_groups=2)
    for i in range(5):
        receipts.moved(f"g:{i}", "m", 3)
    assert receipts.dropped == 3
    await asyncio.sleep(0.2)
    assert receipts.pushed == 0
    receipts.moved("g:9", "m", 3)  # room again once the marks were taken
    assert receipts.dropped == 3
    await receipts.close()


async def test_a_turn_that_breaks_ends_no_other_groups_pushes_and_close_is_final() -> None:
    pushed: list[str] = []

    class Breaks(Script):
        async def page(
            self,
            conv_id: str,
            *,
            after: int = 0,
            before: int = 0,
            limit: int,
            reader: str | None = None,
        ) -> list[Entry]:
            if conv_id == "g:bad":
                raise RuntimeError("a bug in one group's turn")
            return await super().page(conv_id, before=before, limit=limit, reader=reader)

    async def push(users: list[str], body: im_pb2.Fanout) -> None:
        pushed.append(body.group_receipt.conv_id)

    receipts = GroupReceipts(Breaks(head=3), push, every=0.05, window=1)
    receipts.moved("g:bad", "m", 3)
    await asyncio.sleep(0.05)
    receipts.moved("g:ok", "m", 3)
    await asyncio.sleep(0.1)
    assert pushed == ["g:ok"], "the task outlived the broken turn"
    await receipts.close()
    receipts.moved("g:ok", "m", 3)
    await asyncio.sleep(0.1)
    assert pushed == ["g:ok"] and receipts._task is not None and receipts._task.done()


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path / "server"))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


async def receipt_for(c: IMClient, seq: int, read: int, timeout: float = 10.0) -> GroupReceipt:
    while True:
        ev = await c.next_event(timeout)
        if isinstance(ev, GroupReceipt) and ev.seq == seq and ev.read >= read:
            return ev


async def test_the_sender_hears_read_by_n_of_m_as_members_read(stack: Stack) -> None:
    alice, bob, carol = await make_users(stack, "alice", "bob", "carol")
    try:
        made = await alice.rest.groups.create("team", ["bob", "carol"])
        gid, conv = made.group_id, made.conv_id
        await bob.rest.groups.join(gid, "bob")
        await carol.rest.groups.join(gid, "carol")
        await alice.send_group_text(gid, "read me")
        got: list[Message] = []
        while not got:
            ev = await bob.next_event(10)
            if isinstance(ev, Message) and ev.text == "read me":
                got.append(ev)
        seq = got[0].seq
        await bob.mark_read(conv, seq)
        first = await receipt_for(alice, seq, 1)
        assert (first.conv_id, first.members, first.read) == (conv, 2, 1)
        await carol.mark_read(conv, seq)
        second = await receipt_for(alice, seq, 2)
        assert (second.members, second.read) == (2, 2)
        rest = await alice.read_by(gid, seq)
        assert (rest.members, rest.read) == (second.members, second.read)
        assert second.delivered >= 2
    finally:
        for c in (alice, bob, carol):
            await c.close()
