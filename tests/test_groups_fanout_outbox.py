"""Group fan-out through per-connector outboxes (transfer/outbox.py): a slow or stuck
connector link holds back neither the group's lane, nor the members on other connectors, nor
other conversations; what it cannot take is dropped to its conversations' newest chats, in
seq order, and a device that missed seqs Syncs them in order from the timeline."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence

import pytest
from test_groups_wire_members import Views, snap

from client.sync import SendSync, Surface, SyncMachine
from proto import im_pb2
from timeline.model import Span
from transfer.groupfanout import GroupFanout
from transfer.members import MemberCache
from transfer.outbox import ConnectorOutbox
from transfer.serial import KeyedSerial

pytestmark = pytest.mark.asyncio


class GateLink:
    """A connector link whose window opens when the test says (never, by default)."""

    def __init__(self, open_: bool = False) -> None:
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.sent: list[im_pb2.Envelope] = []

    async def send(self, env: im_pb2.Envelope) -> int:
        await self.gate.wait()
        self.sent.append(env)
        return len(self.sent)

    def seqs(self, conv_id: str, user: str | None = None) -> list[int]:
        return [
            e.fanout.chat.seq
            for e in self.sent
            if e.fanout.chat.conv_id == conv_id and (user is None or user in e.fanout.users)
        ]


def chat(conv_id: str, seq: int, sender: str = "s") -> im_pb2.ChatMsg:
    return im_pb2.ChatMsg(
        id=1000 + seq,
        from_id=sender,
        conv_id=conv_id,
        seq=seq,
        dest_id=conv_id[2:],
        dest_type=im_pb2.GROUP,
        msg_type=im_pb2.TEXT,
        body=b"x" * 100,
    )


def setup(
    where: Mapping[str, str], links: Mapping[str, GateLink], **limits: int
) -> tuple[GroupFanout, Views]:
    """Groups g:a and g:b whose members are ``where``'s users (user -> connector)."""
    views = Views()
    for conv in ("g:a", "g:b"):
        views.snaps[conv] = snap(0, **{u: (Span(1, 0),) for u in where})

    async def lookup(users: Sequence[str]) -> dict[str, dict[str, str]]:
        return {u: {"pc": where[u]} for u in users}

    return GroupFanout(MemberCache(views), lookup, links, max_frame=64 * 1024, **limits), views


async def until(cond: object, timeout: float = 5.0) -> None:
    assert callable(cond)
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_a_stuck_connector_holds_up_no_lane_and_no_other_conversation() -> None:
    """Before: each frame for the stuck link waited 5 s in the group's lane, so its chats
    took the whole serial budget and every other conversation's chats waited behind them."""
    fast, stuck = GateLink(open_=True), GateLink()
    fan, _ = setup({"s": "c1", "m1": "c1", "m2": "stuck"}, {"c1": fast, "stuck": stuck})
    serial = KeyedSerial(limit=20)
    other = asyncio.Event()

    async def unrelated() -> None:
        other.set()

    async def submit_all() -> None:
        for seq in range(1, 201):
            await serial.submit("g:a", functools.partial(fan.fan_out, chat("g:a", seq), "c1"))
        await serial.submit("p:x:y", unrelated)

    await asyncio.wait_for(submit_all(), 2.0)
    await asyncio.wait_for(other.wait(), 2.0)
    await until(lambda: len(fast.sent) == 200)
    assert fast.seqs("g:a") == list(range(1, 201)), "every chat, in seq order"
    box = fan.outbox("stuck")
    assert box is not None and len(box) <= 1024 and stuck.sent == []
    await serial.close(1.0)
    await fan.close()


async def test_a_slow_connector_is_dropped_to_the_newest_chat_in_seq_order() -> None:
    fast, slow = GateLink(open_=True), GateLink()
    where = {"s": "c1", "m1": "c1", "m2": "slow", "m3": "slow"}
    fan, _ = setup(where, {"c1": fast, "slow": slow}, max_frames=4, max_bytes=1 << 20)
    for seq in range(1, 51):
        await fan.fan_out(chat("g:a", seq), origin="c1")
        if seq <= 10:
            await fan.fan_out(chat("g:b", seq), origin="c1")
        await asyncio.sleep(0)  # as a lookup's round trip would: c1's outbox drains meanwhile
    box = fan.outbox("slow")
    assert box is not None
    assert len(box) <= 4, "bounded"
    assert box.behind("g:a") == 50 and box.behind("g:b") == 10, "only the newest is held"
    await until(lambda: len(fast.seqs("g:a")) == 50 and len(fast.seqs("g:b")) == 10)
    assert fast.seqs("g:a") == list(range(1, 51)) and fast.seqs("g:b") == list(range(1, 11))
    slow.gate.set()
    await until(lambda: box.idle)
    for conv, head in (("g:a", 50), ("g:b", 10)):
        got = slow.seqs(conv)
        assert got == sorted(set(got)), f"{conv}: never a seq after a higher one: {got}"
        assert got[-1] == head, f"{conv}: the head reaches the connector"
        assert slow.seqs(conv, "m2") == got and slow.seqs(conv, "m3") == got
    assert len(slow.sent) < 60 and box.caught_up == 2
    await fan.close()


async def test_the_senders_sent_goes_out_while_its_conversation_is_behind() -> None:
    origin = GateLink()
    fan, _ = setup({"s": "o", "m": "o"}, {"o": origin}, max_frames=2, max_bytes=1 << 20)
    for seq in range(1, 6):
        await fan.fan_out(chat("g:a", seq), origin="o")
    origin.gate.set()
    box = fan.outbox("o")
    assert box is not None
    await until(lambda: box.idle)
    assert origin.seqs("g:a") == [1, 2, 3, 4, 5]
    assert origin.seqs("g:a", "s") == [1, 2, 3, 4, 5], "every SENT while the allowance lasts"
    assert origin.seqs("g:a", "m") == [1, 2, 5], "the member gets the newest: it Syncs 3-4"
    await fan.close()


async def test_a_device_behind_syncs_the_gap_and_surfaces_in_order() -> None:
    """What the device's library (client/sync.py) does with what a dropped connector got:
    the newest chat past a gap is held while a Sync fetches the seqs in between."""
    slow = GateLink()
    fan, _ = setup({"s": "c1", "m": "slow"}, {"c1": GateLink(True), "slow": slow}, max_frames=2)
    for seq in range(1, 8):
        await fan.fan_out(chat("g:a", seq), origin="c1")
    slow.gate.set()
    box = fan.outbox("slow")
    assert box is not None
    await until(lambda: box.idle)
    device = SyncMachine("m")
    device.link_up(0.0)
    shown: list[int] = []
    syncs: list[SendSync] = []
    for env in slow.sent:
        for eff in device.on_chat(env.fanout.chat, 1.0):
            if isinstance(eff, Surface):
                shown.append(eff.chat.seq)
            elif isinstance(eff, SendSync):
                syncs.append(eff)
    assert shown == [1, 2] and slow.seqs("g:a") == [1, 2, 7]
    assert [(s.conv_id, s.from_seq, s.to_seq) for s in syncs] == [("g:a", 3, 6)]
    for seq in range(3, 7):  # the Sync's answer, from the timeline
        shown += [
            e.chat.seq for e in device.on_chat(chat("g:a", seq), 2.0) if isinstance(e, Surface)
        ]
    assert shown == [1, 2, 3, 4, 5, 6, 7], "every seq, in order"
    await fan.close()


async def test_a_link_that_goes_away_drops_what_waited_for_it() -> None:
    links = {"c1": GateLink()}
    fan, _ = setup({"s": "c1", "m": "c1"}, links, max_frames=2)
    for seq in range(1, 5):
        await fan.fan_out(chat("g:a", seq), origin="c1")
    await asyncio.sleep(0.05)  # the first frame is on its way: waiting for the window
    box = fan.outbox("c1")
    assert box is not None and not box.idle
    stuck = links.pop("c1")  # unlinked (the transfer's on_closed)
    await fan.fan_out(chat("g:a", 5), origin="c1")  # not linked: not offered
    stuck.gate.set()
    await until(lambda: box.idle)
    assert box.lost > 0 and len(stuck.sent) == 1, "only the frame already on its way"
    await fan.close()


async def test_what_is_held_for_a_stuck_connector_is_bounded() -> None:
    """Conversations behind are kept one chat each, within a count and a byte bound, the
    least recently behind forgotten first (those devices learn the head by their listing)."""
    stuck = GateLink()
    box = ConnectorOutbox("c", {"c": stuck}, max_frames=1, max_behind=3, max_behind_bytes=10**6)
    for g in range(6):
        for seq in (1, 2):
            box.offer(im_pb2.Fanout(chat=chat(f"g:{g}", seq)), [["m"]])
    assert len(box) == 1, "g:0's first chat is queued, everything after it held"
    assert [box.behind(f"g:{g}") for g in range(6)] == [0, 0, 0, 2, 2, 2]
    assert box.forgotten == 3
    big = ConnectorOutbox("c", {"c": stuck}, max_frames=1, max_behind_bytes=3_000)
    for g in range(40):
        big.offer(im_pb2.Fanout(chat=chat(f"g:{g}", 1)), [["m"]])
    each = im_pb2.Fanout(chat=chat("g:10", 1)).ByteSize() + len("m") + 3
    held = [g for g in range(40) if big.behind(f"g:{g}")]
    assert held == list(range(40 - 3_000 // each, 40)) and big.behind_bytes <= 3_000
    await box.close()
    await big.close()
