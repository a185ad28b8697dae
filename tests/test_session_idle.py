"""An idle client session holds nothing it does not need (issue 17: at most 4 KB of connector
RSS an idle connection), and what it makes when work comes keeps the old rules: frames to a
device go out in the order they were queued, each waiting for the link's window, a listing
waits for outbox room, the periodic listing comes, and at most SNAPSHOTS presence snapshots are
read at once, in the order the devices came.

The session runs against the fakes of tests/test_session_fuzz.py (its link and its host).
"""

from __future__ import annotations

import asyncio

import pytest
from test_session_fuzz import CONV, FRIEND, USER, FakeLink, greeted, settle

from connector import session as session_rules
from connector.clientsession import ClientSession
from connector.refresh import GRAIN, RefreshWheel
from connector.signals import SNAPSHOTS, PresenceShell
from proto import im_pb2
from user_status.presence import Presence, Seen


class GatedLink(FakeLink):
    """A device whose window is full while ``open`` is clear: windowed sends wait."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.open.set()

    async def send(self, env: im_pb2.Envelope) -> int:
        await self.open.wait()
        return await super().send(env)


def chat_fanout(seq: int) -> im_pb2.Fanout:
    chat = im_pb2.ChatMsg(
        id=1000 + seq, from_id=FRIEND, dest_id=USER, dest_type=im_pb2.SINGLE, conv_id=CONV, seq=seq
    )
    return im_pb2.Fanout(users=[USER], chat=chat)


def kinds(link: FakeLink) -> list[str]:
    return [str(e.WhichOneof("body")) for e in link.sent]


def chat_seqs(link: FakeLink) -> list[int]:
    return [e.chat.seq for e in link.sent if e.WhichOneof("body") == "chat"]


def holds_nothing(session: ClientSession) -> bool:
    """No pump task, no Event, no running task or semaphore, no queue storage."""
    return (
        session._pump is None
        and session._room is None
        and session._tasks is None
        and session._sync_reads is None
        and session.outbox._items is None
    )


def test_an_idle_session_holds_no_task_event_set_or_queue() -> None:
    async def run() -> None:
        link = FakeLink()
        _, session = await greeted(link)
        await settle(session)
        assert kinds(link)[-1] == "caught_up"  # the listing at GREET is done
        assert holds_nothing(session)
        assert not hasattr(session, "__dict__") and not hasattr(session.rules, "__dict__")
        assert session._refresh, "the periodic listing waits in the shared wheel"
        loop = asyncio.get_running_loop()
        assert len(RefreshWheel.of(loop)) == 1
        session.deliver(chat_fanout(31))
        await settle(session)
        assert chat_seqs(link) == [31] and holds_nothing(session)
        await session.on_closed(link, [])
        assert session._refresh == 0 and id(loop) not in RefreshWheel._all

    asyncio.run(run())


def test_pushes_keep_their_order_and_wait_for_the_window_across_pump_restarts() -> None:
    async def run() -> None:
        link = GatedLink()
        _, session = await greeted(link)
        await settle(session)
        link.open.clear()  # the device stops acking: its window is full
        for seq in (1, 2, 3):
            session.deliver(chat_fanout(seq))
        await settle(session)
        assert chat_seqs(link) == [] and len(session.outbox) == 3
        assert session._pump is not None, "one pump waits on the window with the frames"
        link.open.set()
        await settle(session)
        assert chat_seqs(link) == [1, 2, 3] and holds_nothing(session)
        session.deliver(chat_fanout(4))  # a new pump, after the old one ended
        session.deliver(chat_fanout(5))
        await settle(session)
        assert chat_seqs(link) == [1, 2, 3, 4, 5] and holds_nothing(session)
        await session.on_closed(link, [])

    asyncio.run(run())


def test_a_listing_waits_for_outbox_room_behind_the_live_pushes() -> None:
    async def run() -> None:
        link = GatedLink()
        _, session = await greeted(link, queue=8)  # listings wait at 4 queued
        await settle(session)
        link.open.clear()
        for seq in (1, 2, 3, 4):
            session.deliver(chat_fanout(seq))
        session.request_relist()
        await settle(session)
        assert session.rules.listing and session._room is not None, "waiting for room"
        assert len(session.outbox) == 4
        link.open.set()
        for _ in range(50):
            await settle(session)
            if not session.rules.listing:
                break
        after = kinds(link)[kinds(link).index("caught_up") + 1 :]
        assert after == ["chat"] * 4 + ["conv_state", "caught_up"]
        assert holds_nothing(session)
        await session.on_closed(link, [])

    asyncio.run(run())


def test_the_periodic_listing_comes_from_the_shared_wheel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session_rules, "RELIST_AFTER", 600.0)  # only the periodic one
    monkeypatch.setattr(session_rules, "RELIST_EVERY", 0.3)

    async def run() -> None:
        link = FakeLink()
        _, session = await greeted(link)
        await settle(session)
        assert kinds(link).count("caught_up") == 1
        for _ in range(int((0.3 * 1.2 + 2 * GRAIN) / 0.05)):
            await asyncio.sleep(0.05)
            if kinds(link).count("caught_up") >= 2:
                break
        assert kinds(link).count("caught_up") >= 2, "no periodic listing"
        await session.on_closed(link, [])

    asyncio.run(run())


def test_the_wheel_fires_in_time_order_after_each_due_time_and_forgets_cancelled() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []

        class Item:
            def __init__(self, name: str) -> None:
                self.name = name

            def refresh_due(self) -> None:
                fired.append((self.name, loop.time()))

        wheel = RefreshWheel.of(loop)
        now = loop.time()
        due = {"late": now + 1.2, "soon": now + 0.1, "gone": now + 0.1}
        items = {name: Item(name) for name in due}
        slots = {name: wheel.add(items[name], when) for name, when in due.items()}
        RefreshWheel.cancel(loop, items["gone"], slots["gone"])
        await asyncio.sleep(1.2 + 2 * GRAIN)
        assert [name for name, _ in fired] == ["soon", "late"]
        for name, at in fired:
            assert due[name] - 0.02 <= at <= due[name] + GRAIN + 0.5
        assert id(loop) not in RefreshWheel._all, "an empty wheel keeps no timer"

    asyncio.run(run())


class SlowPresence(Presence):
    """Friends' presence that takes until ``release`` is set; records how many at once."""

    def __init__(self) -> None:  # none of Presence's backends: only of_friends is used
        self.release = asyncio.Event()
        self.reading = 0
        self.most = 0
        self.order: list[str] = []

    async def of_friends(self, user_id: str) -> list[Seen]:
        self.order.append(user_id)
        self.reading += 1
        self.most = max(self.most, self.reading)
        try:
            await self.release.wait()
        finally:
            self.reading -= 1
        return [Seen(f"friend-of-{user_id}", True, 0)]


class Device:
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.heard: list[im_pb2.Fanout] = []

    def deliver(self, fanout: im_pb2.Fanout) -> bool:
        self.heard.append(fanout)
        return False


def test_greet_snapshots_are_read_a_few_at_a_time_in_order_without_a_task_each() -> None:
    async def run() -> None:
        presence = SlowPresence()
        shell = PresenceShell(presence, lambda user: [])
        devices = [Device(f"u{i:03d}") for i in range(10 * SNAPSHOTS)]
        before = len(asyncio.all_tasks())
        for d in devices:
            shell.greet(d)
        await asyncio.sleep(0.01)
        assert presence.reading == SNAPSHOTS
        assert len(asyncio.all_tasks()) - before == SNAPSHOTS, "a reader each, not a device each"
        presence.release.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if all(d.heard for d in devices):
                break
        assert presence.order == [d.user_id for d in devices]
        assert presence.most == SNAPSHOTS
        for d in devices:
            assert [f.presence.user_id for f in d.heard] == [f"friend-of-{d.user_id}"]
        await asyncio.sleep(0.01)
        assert len(asyncio.all_tasks()) == before, "the readers end with the queue"

    asyncio.run(run())
