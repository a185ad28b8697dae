"""The client library's group rules without a server: sealing with the current group key,
opening by ``key_id`` (fetching keys on a miss), SYSTEM chats surfaced as membership events,
a STALE_KEY refusal sealed again once under a new id, group timelines in the sync machine
(no member's cursor taken for a receipt; the user's READ works), the key cache's bounds."""

from __future__ import annotations

import asyncio

import pytest
from test_client_outbox import FakeLink, attach, drain_events, feed

from client import sync as S
from client.bodies import describe, open_chat, text_chat
from client.core import IMClient
from client.events import Message, Receipt, ServerError, SystemInfo
from client.groupkeys import GroupKeyRing
from client.groups import GroupKeyInfo
from client.groupsend import Recipe, Recipes
from client.history import stored_chat
from common.crypto import new_pair_key
from common.errors import IMError
from proto import im_pb2

GID = "00aa11bb22cc33dd"
CONV = f"g:{GID}"
K1, K2 = new_pair_key(), new_pair_key()


class FakeKeys:
    """GET /groups/{id}/keys as a list the test changes (a rotation appends a key)."""

    def __init__(self) -> None:
        self.keys = [GroupKeyInfo(1, K1, 1, 0)]
        self.calls = 0

    def rotate(self, key: str, from_seq: int) -> None:
        last = self.keys[-1]
        self.keys[-1] = GroupKeyInfo(last.key_id, last.key, last.from_seq, from_seq - 1)
        self.keys.append(GroupKeyInfo(last.key_id + 1, key, from_seq, 0))

    async def __call__(self, group_id: str) -> list[GroupKeyInfo]:
        self.calls += 1
        if group_id != GID:
            return []
        return list(self.keys)


def group_client() -> tuple[IMClient, FakeLink, FakeKeys]:
    c = IMClient("http://127.0.0.1:1", "alice", "pw", reconnect=False)
    keys = FakeKeys()
    c.group_keys = GroupKeyRing(keys)
    link = FakeLink()
    attach(c, link)
    return c, link, keys


def group_chat(frm: str, msg_id: int, text: str, seq: int, key: str, key_id: int) -> im_pb2.ChatMsg:
    chat = text_chat(key, msg_id, frm, GID, text, group_key_id=key_id)
    chat.conv_id, chat.seq = CONV, seq
    return chat


def system_chat(seq: int, event: int, actor: str, target: str, key_id: int = 0) -> im_pb2.ChatMsg:
    body = im_pb2.SystemBody(event=event, actor=actor, target=target, key_id=key_id)  # type: ignore[arg-type]
    return im_pb2.ChatMsg(
        id=seq,
        from_id=f"#{GID}",
        dest_id=GID,
        dest_type=im_pb2.GROUP,
        msg_type=im_pb2.SYSTEM,
        body=body.SerializeToString(),
        conv_id=CONV,
        seq=seq,
    )


def sent(msg_id: int, seq: int) -> im_pb2.Envelope:
    ack = im_pb2.AckMsg(
        from_id=GID, dest_id="alice", ack_type=im_pb2.SENT, ack_msg_id=msg_id, conv_id=CONV, seq=seq
    )
    return im_pb2.Envelope(ack=ack)


def stale(msg_id: int) -> im_pb2.Envelope:
    err = im_pb2.Error(code=im_pb2.STALE_KEY, detail="stale key", ref_msg_id=msg_id)
    return im_pb2.Envelope(error=err)


async def settle(c: IMClient) -> None:
    while c._chores:
        await asyncio.gather(*list(c._chores))


# -- sealing and opening -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_group_text_is_sealed_with_the_current_key_and_addressed_to_the_group() -> None:
    c, link, keys = group_client()
    keys.rotate(K2, 5)
    msg_id = await c.send_group_text(GID, "hello group")
    (chat,) = link.kinds("chat")
    assert (chat.id, chat.dest_id, chat.dest_type, chat.key_id) == (msg_id, GID, im_pb2.GROUP, 2)
    opened = open_chat(chat, K2)
    assert isinstance(opened, Message) and opened.text == "hello group"
    assert isinstance(open_chat(chat, K1), ServerError), "an old key does not open it"
    await c.send_group_text(GID, "again")
    assert keys.calls == 1, "the keys are cached"


@pytest.mark.asyncio
async def test_a_former_member_cannot_send_and_nothing_goes_out() -> None:
    c, link, keys = group_client()
    keys.keys = [GroupKeyInfo(1, K1, 1, 9)]  # the range of what they saw: no current key
    with pytest.raises(IMError):
        await c.send_group_text(GID, "let me in")
    assert link.kinds("chat") == [] and c.pending == 0


@pytest.mark.asyncio
async def test_a_pushed_group_chat_opens_with_the_key_its_key_id_names_fetched_on_a_miss() -> None:
    c, _, keys = group_client()
    await feed(c, im_pb2.Envelope(chat=group_chat("bob", 7, "one", 1, K1, 1)))
    keys.rotate(K2, 3)  # the client has not heard of key 2 yet
    await feed(c, im_pb2.Envelope(chat=group_chat("bob", 8, "two", 2, K2, 2)))
    first, second = await drain_events(c)
    assert isinstance(first, Message) and first.text == "one" and first.conv_id == CONV
    assert isinstance(second, Message) and second.text == "two" and second.seq == 2
    assert keys.calls == 2, "the miss above the highest key fetched once more"


@pytest.mark.asyncio
async def test_an_unknown_older_key_id_is_unreadable_without_a_fetch_per_chat() -> None:
    c, _, keys = group_client()
    keys.keys = [GroupKeyInfo(3, K2, 10, 0)]  # joined late: keys 1 and 2 are not ours
    for seq in (1, 2):  # a server handing out what the key ranges say we cannot read
        await feed(c, im_pb2.Envelope(chat=group_chat("bob", seq, "old", seq, K1, 1)))
    events = await drain_events(c)
    assert [type(e) for e in events] == [ServerError, ServerError]
    assert all(isinstance(e, ServerError) and e.code == "UNREADABLE" for e in events)
    assert keys.calls == 1


@pytest.mark.asyncio
async def test_a_group_body_moved_to_another_group_does_not_open() -> None:
    c, _, _ = group_client()
    chat = text_chat(K1, 5, "bob", "ffffffffffffffff", "elsewhere", group_key_id=1)
    chat.conv_id, chat.seq = CONV, 1
    await feed(c, im_pb2.Envelope(chat=chat))
    (ev,) = await drain_events(c)
    assert isinstance(ev, ServerError) and ev.code == "UNREADABLE"


@pytest.mark.asyncio
async def test_system_chats_surface_as_membership_events_in_order_with_the_messages() -> None:
    c, _, _ = group_client()
    await feed(c, im_pb2.Envelope(chat=system_chat(1, im_pb2.SystemBody.CREATED, "alice", "")))
    await feed(c, im_pb2.Envelope(chat=group_chat("alice", 9, "hi", 2, K1, 1)))
    await feed(c, im_pb2.Envelope(chat=system_chat(3, im_pb2.SystemBody.JOINED, "alice", "bob")))
    a, b, d = await drain_events(c)
    assert isinstance(a, Message) and a.system == SystemInfo("CREATED", "alice", "")
    assert isinstance(b, Message) and b.system is None and b.own
    assert isinstance(d, Message) and d.system is not None and d.text == "bob joined"
    assert (d.seq, d.from_id, d.msg_id) == (3, f"#{GID}", 3)


def test_describe_says_what_happened() -> None:
    assert describe(SystemInfo("LEFT", "carol", "carol")) == "carol left"
    assert describe(SystemInfo("REMOVED", "alice", "bob")) == "alice removed bob"
    assert describe(SystemInfo("MUTED", "alice", "bob", until=0)) == "alice unmuted bob"


def test_a_stored_system_message_from_rest_opens_like_a_pushed_one() -> None:
    data = {
        "conv_id": CONV,
        "seq": 4,
        "server_time": 1,
        "id": "4",
        "from_id": "",
        "dest_id": GID,
        "dest_type": "GROUP",
        "msg_type": "SYSTEM",
        "create_time": 1,
        "body": "",
        "key_id": 0,
        "system": {"event": "LEFT", "actor": "bob", "target": "bob", "text": "", "key_id": 0},
    }
    chat = stored_chat(data).chat
    assert chat.from_id == f"#{GID}" and chat.msg_type == im_pb2.SYSTEM
    opened = open_chat(chat, None)
    assert isinstance(opened, Message) and opened.system == SystemInfo("LEFT", "bob", "bob")


# -- STALE_KEY -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stale_key_seals_again_with_the_new_key_under_a_new_id_once() -> None:
    c, link, keys = group_client()
    old = await c.send_group_text(GID, "racing the rotation")
    keys.rotate(K2, 4)
    await feed(c, stale(old))
    await settle(c)
    first, again = link.kinds("chat")
    assert first.id == old and again.id != old and again.id > old
    assert again.key_id == 2 and c.pending == 1
    opened = open_chat(again, K2)
    assert isinstance(opened, Message) and opened.text == "racing the rotation"
    (ev,) = await drain_events(c)
    assert ev == Receipt("RESEALED", GID, old, 0, CONV, new_msg_id=again.id)
    await feed(c, stale(old))  # a resend's second refusal: already handled, nothing shows
    assert await drain_events(c) == [] and len(link.kinds("chat")) == 2
    keys.rotate(new_pair_key(), 6)
    await feed(c, stale(again.id))  # refused again: shown, not looped
    await settle(c)
    (err,) = await drain_events(c)
    assert isinstance(err, ServerError) and (err.code, err.msg_id) == ("STALE_KEY", again.id)
    assert c.pending == 0 and len(link.kinds("chat")) == 2


@pytest.mark.asyncio
async def test_a_key_rotated_event_makes_the_next_send_fetch_keys_first() -> None:
    c, link, keys = group_client()
    before = await c.send_group_text(GID, "before")
    keys.rotate(K2, 3)
    rotated = system_chat(1, im_pb2.SystemBody.KEY_ROTATED, "", "", key_id=2)
    await feed(c, im_pb2.Envelope(chat=rotated))
    await c.send_group_text(GID, "after")
    assert c.pending == 2
    # sealed with key 2, it waits at the gate while "before" (key 1) may still be refused
    assert [ch.key_id for ch in link.kinds("chat")] == [1]
    await feed(c, sent(before, 2))
    await c._send_chats()
    assert [ch.key_id for ch in link.kinds("chat")] == [1, 2]


class Writer:
    """The timeline's side of one group for a test: commits the chats the fake link carried, in
    the order they went out, refusing those sealed with another than the current key."""

    def __init__(self, c: IMClient, link: FakeLink) -> None:
        self.c, self.link = c, link
        self.key_id = 1
        self.seen = 0  # chats of the link already answered
        self.committed: list[tuple[str, int]] = []  # (text, msg id), in seq order

    async def answer(self) -> None:
        chats = list(self.link.kinds("chat"))
        while self.seen < len(chats):
            chat = chats[self.seen]
            self.seen += 1
            if chat.key_id != self.key_id:
                await feed(self.c, stale(chat.id))
                continue
            opened = open_chat(chat, K1 if chat.key_id == 1 else K2)
            assert isinstance(opened, Message)
            self.committed.append((opened.text, chat.id))
            await feed(self.c, sent(chat.id, len(self.committed)))

    async def run(self) -> None:
        """Answer until the client has nothing left to send."""
        for _ in range(50):
            await self.answer()
            await settle(self.c)
            await self.c._send_chats()
            if not self.c.pending:
                return
        raise AssertionError(f"still {self.c.pending} pending")

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.committed]


@pytest.mark.asyncio
async def test_chats_in_flight_across_a_rotation_commit_in_the_order_they_were_made() -> None:
    """Three chats on the wire with key 1 when the group rotates; the device hears of the
    rotation and makes two more with key 2 before the first refusal comes back. Without the
    gate the key-2 chats went at once and committed ahead of the re-sealed ones."""
    c, link, keys = group_client()
    w = Writer(c, link)
    made = [await c.send_group_text(GID, f"m{i}") for i in (1, 2, 3)]
    keys.rotate(K2, 4)
    w.key_id = 2
    rotated = system_chat(1, im_pb2.SystemBody.KEY_ROTATED, "", "", key_id=2)
    await feed(c, im_pb2.Envelope(chat=rotated))
    made += [await c.send_group_text(GID, f"m{i}") for i in (4, 5)]
    assert c.group_keys.held(GID).keys() == {1, 2}, "m4 and m5 were sealed with key 2"
    await w.run()
    assert w.texts == ["m1", "m2", "m3", "m4", "m5"]
    ids = [msg_id for _, msg_id in w.committed]
    assert ids == sorted(ids), "ids grow with the seq (I3)"
    events = await drain_events(c)
    resealed = [e for e in events if isinstance(e, Receipt) and e.kind == "RESEALED"]
    assert [e.msg_id for e in resealed] == made, "each old id is told its new one, in order"
    assert [e.new_msg_id for e in resealed] == ids
    assert not [e for e in events if isinstance(e, ServerError)]


@pytest.mark.asyncio
async def test_a_chat_made_while_the_group_is_held_goes_after_the_resealed_ones() -> None:
    c, link, keys = group_client()
    w = Writer(c, link)
    await c.send_group_text(GID, "m1")
    keys.rotate(K2, 3)
    w.key_id = 2
    await w.answer()  # m1 refused: the group is held until the re-seal is in the outbox
    assert c._recipes.held(GID)
    await c.send_group_text(GID, "m2")  # made meanwhile, sealed with the old key 1
    await w.run()
    assert w.texts == ["m1", "m2"]


@pytest.mark.asyncio
async def test_a_pair_chat_is_not_taken_along_by_a_groups_reseal() -> None:
    c, link, keys = group_client()
    c.friends = {"bob": K1}
    g1 = await c.send_group_text(GID, "g1")
    p1 = await c.send_text("bob", "p1")
    keys.rotate(K2, 3)
    await feed(c, stale(g1))
    await settle(c)
    assert p1 in c._outbox and g1 not in c._outbox and c.pending == 2
    assert [ch.id for ch in link.kinds("chat")][:2] == [g1, p1]


def test_recipes_are_bounded_gate_newer_keys_and_take_later_chats_along() -> None:
    r = Recipes(3)

    def seal(key: str, key_id: int, msg_id: int) -> im_pb2.ChatMsg:
        return im_pb2.ChatMsg(id=msg_id)

    for msg_id in (1, 2, 3, 4):
        r.add(msg_id, Recipe(GID, seal, 0, 1))
    assert len(r) == 3 and r.get(1) is None, "the oldest was dropped"
    r.add(5, Recipe(GID, seal, 0, 2))
    assert r.get(2) is None
    assert r.may_send(3) and r.may_send(4) and not r.may_send(5), "key 2 waits behind key 1"
    assert r.may_send(99), "not a group chat"
    assert r.hold(GID, 4) and not r.hold(GID, 3), "one re-seal at a time, from the oldest"
    assert not r.may_send(3), "nothing of a held group goes"
    assert r.release(GID) == 3 and not r.held(GID)
    assert [i for i, _ in r.take_from(4)] == [4, 5] and r.get(3) is not None
    assert r.take_from(4) == []
    r.done(3)
    assert len(r) == 0


@pytest.mark.asyncio
async def test_the_key_ring_forgets_the_least_recently_used_group() -> None:
    keys = FakeKeys()
    ring = GroupKeyRing(keys, max_groups=1)
    assert await ring.current(GID) == (1, K1)
    with pytest.raises(IMError):
        await ring.current("0000000000000001")  # not ours: no keys
    assert ring.held(GID) == {}, "dropped for the newer group"


# -- the sync machine ----------------------------------------------------------------------


def test_a_group_chat_gets_sent_but_no_member_cursor_is_taken_for_its_receipts() -> None:
    sm = S.SyncMachine("alice")
    sm.link_up(0.0)
    sm.local_sent(5)
    out = sm.on_sent(5, CONV, 1, GID, 1.0)
    assert [e for e in out if isinstance(e, S.SurfaceReceipt)] == [
        S.SurfaceReceipt("SENT", CONV, GID, 5, 1)
    ]
    cur = im_pb2.Cursor(conv_id=CONV, user_id="bob", type=im_pb2.READ, seq=1)
    assert sm.on_cursor(cur, 2.0) == []
    cs = im_pb2.ConvState(conv_id=CONV, type=im_pb2.GROUP, peer_id=GID, last_seq=1, peer_read_seq=1)
    assert [e for e in sm.on_conv_state(cs, 3.0) if isinstance(e, S.SurfaceReceipt)] == []
    assert sm._convs[CONV].wait_read == [] and sm._convs[CONV].wait_delivered == []


def test_a_group_timeline_fills_gaps_skips_what_is_outside_the_spans_and_takes_reads() -> None:
    sm = S.SyncMachine("alice")
    sm.link_up(0.0)
    cs = im_pb2.ConvState(conv_id=CONV, type=im_pb2.GROUP, peer_id=GID, last_seq=12)
    (sync,) = [e for e in sm.on_conv_state(cs, 0.0) if isinstance(e, S.SendSync)]
    assert (sync.conv_id, sync.from_seq) == (CONV, 1)
    # joined at 10: the sync answers 10..12 and closes 1..12
    surfaced = []
    for seq in (10, 11, 12):
        surfaced += sm.on_chat(group_chat("bob", 100 + seq, "x", seq, K1, 1), 0.1)
    assert surfaced == [], "past a gap until the SyncDone closes it"
    done = im_pb2.SyncDone(conv_id=CONV, from_seq=1, to_seq=12, last_seq=12)
    out = sm.on_sync_done(done, 0.2)
    assert [e.chat.seq for e in out if isinstance(e, S.Surface)] == [10, 11, 12]
    assert sm.have(CONV) == 12 and sm.stats["holes_skipped"] == 9
    reads = [e for e in sm.mark_read(CONV, 12, 1.0) if isinstance(e, S.SendCursor)]
    assert reads == [S.SendCursor(CONV, S.READ, 12)]
    mine = im_pb2.Cursor(conv_id=CONV, user_id="alice", type=im_pb2.READ, seq=12)
    sm.on_cursor(mine, 1.1)
    assert sm.read_cursors()[CONV] == 12


def test_a_membership_notice_moves_the_head_and_sends_no_cursor_again() -> None:
    """A notice's ConvState (connector/groupnotices.py) has no cursors: taken as the server's
    word, its zeros made every member's device send its cursors again at each change."""
    sm = S.SyncMachine("alice", cursor_every=0.0)
    sm.link_up(0.0)
    listing = im_pb2.ConvState(conv_id=CONV, type=im_pb2.GROUP, peer_id=GID, last_seq=5)
    sm.on_conv_state(listing, 0.0)
    done = im_pb2.SyncDone(conv_id=CONV, from_seq=1, to_seq=5, last_seq=5)
    sent = [e for e in sm.on_sync_done(done, 0.1) if isinstance(e, S.SendCursor)]
    assert sent == [S.SendCursor(CONV, S.DELIVERED, 5)]
    sm.mark_read(CONV, 5, 0.2)
    notice = im_pb2.ConvState(
        conv_id=CONV, type=im_pb2.GROUP, peer_id=GID, last_seq=7, min_seq=1, head_only=True
    )
    out = sm.on_conv_state(notice, 0.3) + sm.tick(1.0)
    assert [e for e in out if isinstance(e, S.SendCursor)] == [], "no cursor storm"
    assert [(e.from_seq, e.to_seq) for e in out if isinstance(e, S.SendSync)] == [(6, 0)]
    assert sm.head(CONV) == 7 and sm.read_cursors()[CONV] == 5
    # a listing that says the server has less than this device still gets them sent again
    relisted = im_pb2.ConvState(conv_id=CONV, type=im_pb2.GROUP, peer_id=GID, last_seq=7)
    out = sm.on_conv_state(relisted, 2.0) + sm.tick(3.0)
    assert sorted((e.type, e.seq) for e in out if isinstance(e, S.SendCursor)) == [
        (S.DELIVERED, 5),
        (S.READ, 5),
    ]
