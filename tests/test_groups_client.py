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
    await c.send_group_text(GID, "before")
    keys.rotate(K2, 3)
    rotated = system_chat(1, im_pb2.SystemBody.KEY_ROTATED, "", "", key_id=2)
    await feed(c, im_pb2.Envelope(chat=rotated))
    await c.send_group_text(GID, "after")
    assert [ch.key_id for ch in link.kinds("chat")] == [1, 2]


def test_recipes_are_bounded_and_reseal_at_most_once() -> None:
    r = Recipes(2)

    def seal(key: str, key_id: int, msg_id: int) -> im_pb2.ChatMsg:
        return im_pb2.ChatMsg(id=msg_id)

    for msg_id in (1, 2, 3):
        r.add(msg_id, Recipe(GID, seal))
    assert len(r) == 2
    assert r.stale(1) == (None, False), "the oldest was dropped"
    again, show = r.stale(2)
    assert again is not None and again.reseals == 1 and not show
    r.add(4, again)
    assert r.stale(4) == (None, True)


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
