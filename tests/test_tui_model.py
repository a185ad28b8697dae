"""The terminal's model (tui/model.py) without a terminal or a server: unread counts, lines in
seq order and once, receipts moving a message of mine along, typing that expires, bounds."""

from __future__ import annotations

import pytest

from client.events import Message, Receipt, ServerError, SystemInfo
from client.history import Conversation, ConversationInfo
from proto import im_pb2
from tui.model import MAX_TYPING, TYPING_TTL, Model, typing_text
from tui.screens import conv_prompt, line_text, printable
from tui.session import is_typing_refusal

CONV = "p:alice:bob"


def msg(seq: int, sender: str = "bob", text: str = "", conv: str = CONV, t: int = 0) -> Message:
    dest = "alice" if sender == "bob" else "bob"
    return Message(
        msg_id=1000 + seq,
        from_id=sender,
        dest_id=dest,
        text=text or f"m{seq}",
        msg_type=im_pb2.TEXT,
        create_time=t,
        conv_id=conv,
        seq=seq,
        server_time=t,
    )


def listing(
    conv: str = CONV, *, last: int, unread: int, read: int, peer_read: int = 0, changed: int = 0
) -> Conversation:
    info = ConversationInfo(
        conv_id=conv,
        type="GROUP" if conv.startswith("g:") else "SINGLE",
        peer_id=conv.split(":")[-1],
        last_seq=last,
        unread=unread,
        read_seq=read,
        delivered_seq=0,
        peer_read_seq=peer_read,
        peer_delivered_seq=peer_read,
        changed=changed,
        last=None,
    )
    return Conversation(info, None)


def test_unread_starts_from_the_listing_and_counts_what_comes_after() -> None:
    m = Model("alice")
    m.load([listing(last=5, unread=2, read=3)])
    c = m.pair("bob")
    assert c.unread() == 2  # nothing held yet: the listing's word
    m.add(msg(6))
    assert c.unread() == 3
    m.add(msg(6))  # the same seq again (history and sync overlap): counted once
    m.add(msg(7, sender="alice"))  # mine never counts
    assert c.unread() == 3
    m.set_read(CONV, 5)  # another device of mine read up to the listing's head
    assert c.unread() == 1
    assert m.mark_read(CONV) == 7 and c.unread() == 0
    assert m.mark_read(CONV) == 0  # nothing new: no cursor to send


def test_the_list_shows_unread_counts_and_the_last_message() -> None:
    m = Model("alice")
    m.add(msg(1, text="one"))
    m.add(msg(2, text="two"))
    assert conv_prompt(m.pair("bob")).plain == "bob (2)\n  bob: two"
    m.mark_read(CONV)
    assert conv_prompt(m.pair("bob")).plain == "bob\n  bob: two"


def test_unread_is_exact_once_every_seq_above_the_cursor_is_held() -> None:
    m = Model("alice")
    m.load([listing(last=5, unread=9, read=2)])  # a capped or stale count
    for seq, sender in ((1, "bob"), (2, "bob"), (3, "alice"), (4, "bob"), (5, "bob")):
        m.add(msg(seq, sender))
    c = m.pair("bob")
    assert c.unread() == 2  # 4 and 5: bob's, above my cursor
    m.set_read(CONV, 4)
    assert c.unread() == 1
    assert m.total_unread() == 1


def test_lines_are_in_seq_order_each_once_and_unsent_ones_last() -> None:
    m = Model("alice")
    for seq in (3, 1, 2, 1):
        m.add(msg(seq))
    m.local_send(CONV, 77, "on its way", now_ms=5)
    c = m.pair("bob")
    assert [(ln.seq, ln.text) for ln in c.ordered()] == [
        (1, "m1"),
        (2, "m2"),
        (3, "m3"),
        (0, "on its way"),
    ]
    assert c.last_text == "me: on its way"


def test_receipts_move_a_message_of_mine_from_sending_to_read() -> None:
    m = Model("alice")
    m.add(msg(1))
    a = m.local_send(CONV, 50, "first", now_ms=1)
    b = m.local_send(CONV, 51, "second", now_ms=2)
    c = m.pair("bob")
    assert c.state(a) == c.state(b) == "sending"
    m.on_receipt(Receipt("SENT", "bob", 50, 2, CONV))
    m.on_receipt(Receipt("SENT", "bob", 51, 3, CONV))
    assert (a.seq, b.seq) == (2, 3) and c.state(a) == "sent"
    assert [ln.seq for ln in c.ordered()] == [1, 2, 3]
    m.on_receipt(Receipt("DELIVERED", "bob", 50, 2, CONV))
    assert (c.state(a), c.state(b)) == ("delivered", "sent")
    m.on_receipt(Receipt("READ", "bob", 51, 3, CONV))  # a READ of the later one covers both
    assert (c.state(a), c.state(b)) == ("read", "read")
    assert c.state(c.lines[1]) == ""  # bob's own line has no receipt state
    m.add(msg(3, sender="alice"))  # my message met again through the sync: still one line
    assert len(c.ordered()) == 3


def test_a_refused_message_is_marked_failed_and_a_resealed_one_follows_its_new_id() -> None:
    m = Model("alice")
    line = m.local_send(CONV, 60, "nope", now_ms=1)
    m.on_error(ServerError("NOT_FRIEND", "not a friend", 60))
    assert m.pair("bob").state(line) == "failed: NOT_FRIEND"
    g = "g:team"
    other = m.local_send(g, 61, "group hi", now_ms=1)
    m.on_receipt(Receipt("RESEALED", "team", 61, 0, g, new_msg_id=62))
    m.on_receipt(Receipt("SENT", "team", 62, 9, g))
    assert other.seq == 9 and m.conv(g).state(other) == "sent"


def test_a_group_message_of_mine_shows_read_by_counts() -> None:
    m = Model("alice")
    m.set_groups({"team": "The Team"})
    g = m.conv("g:team")
    assert g.group and g.title == "#The Team"
    m.add(msg(4, sender="alice", conv="g:team"))
    line = g.lines[4]
    assert g.state(line) == "sent"
    m.set_read_by("g:team", 4, 2, 3)
    assert g.state(line) == "read by 2 of 3"
    system = Message(
        5, "#team", "team", "bob joined", im_pb2.SYSTEM, 0, conv_id="g:team", seq=5,
        system=SystemInfo("JOINED", "bob", "bob"),
    )  # fmt: skip
    m.add(system)
    assert g.unread() == 0 and g.state(g.lines[5]) == ""  # a notice is nobody's to read


def test_typing_expires_and_stops_and_mine_is_ignored() -> None:
    m = Model("alice")
    m.pair("bob")
    assert m.on_typing(CONV, "alice", True, 0.0) is None
    m.on_typing(CONV, "bob", True, 100.0)
    assert m.typing_in(CONV, 100.0 + TYPING_TTL - 0.1) == ["bob"]
    assert m.typing_in(CONV, 100.0 + TYPING_TTL) == []
    m.on_typing(CONV, "bob", True, 200.0)
    m.on_typing(CONV, "bob", False, 201.0)
    assert m.typing_in(CONV, 201.0) == []
    assert m.on_typing("p:bob:carol", "bob", True, 0.0) is None  # not a conversation shown
    for i in range(MAX_TYPING + 5):
        m.on_typing(CONV, f"u{i}", True, float(i))
    assert len(m.typing_in(CONV, 0.0)) == MAX_TYPING
    assert typing_text(["bob"]) == "bob is typing…"
    assert typing_text(["bob", "carol"]) == "bob, carol are typing…"


def test_lines_are_bounded_and_history_may_hold_twice_that_until_follow() -> None:
    m = Model("alice", max_lines=10)
    for seq in range(11, 31):
        m.add(msg(seq))
    c = m.pair("bob")
    assert sorted(c.lines) == list(range(21, 31))  # the newest ten
    page = [msg(s) for s in range(11, 21)]
    assert m.add_history(CONV, page, limit=10) == 10
    assert len(c.lines) == 20 and c.history_done  # twice the cap: no more paging for now
    assert m.add_history(CONV, [msg(s) for s in range(1, 11)], limit=10) == 0
    m.follow(CONV)
    assert sorted(c.lines) == list(range(21, 31)) and not c.history_done
    assert m.add_history(CONV, [msg(s) for s in range(15, 21)], limit=10) == 6
    assert c.history_done  # a short page: the start was reached


def test_conversations_order_by_recent_activity_and_foreign_ids_are_ignored() -> None:
    m = Model("alice")
    m.set_friends(["bob", "carol", "dave", "alice"])
    assert "p:alice:alice" not in m.convs and len(m.convs) == 3
    m.add(msg(1, t=1000))
    m.add(msg(1, sender="carol", conv="p:alice:carol", t=2000))
    assert [c.peer for c in m.ordered()] == ["carol", "bob", "dave"]
    assert m.add(msg(1, conv="p:bob:carol")) is None  # not mine
    assert m.add(msg(1, conv="nonsense")) is None
    m.load([listing("p:bob:carol", last=3, unread=3, read=0)])
    assert "p:bob:carol" not in m.convs
    assert m.set_requests(["erin"], []) and not m.set_requests(["erin"], [])


def test_unreadable_messages_hold_their_seq() -> None:
    m = Model("alice")
    m.add_unreadable(ServerError("UNREADABLE", "bad seal", 5, 2, CONV))
    m.add(msg(1))
    c = m.pair("bob")
    assert [ln.text for ln in c.ordered()] == ["m1", "(unreadable message)"]
    assert m.add_unreadable(ServerError("UNREADABLE", "no place", 6)) is None


@pytest.mark.parametrize("hostile", ["\x1b[2J\x1b[31mred", "[bold red]x[/]", "a\x07b\x9bc"])
def test_network_text_is_drawn_as_plain_text(hostile: str) -> None:
    m = Model("alice")
    c = m.add(msg(1, text=hostile))
    assert c is not None
    shown = line_text(c, c.lines[1]).plain
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert printable(hostile) in shown  # markup is not interpreted: its brackets stay
    assert printable("ok\n\ttab") == "ok\n\ttab"


def test_only_a_refused_typing_turns_typing_off() -> None:
    refused = im_pb2.Error(code=im_pb2.UNKNOWN_TYPE, detail="typing is not supported yet")
    assert is_typing_refusal(refused)
    other = im_pb2.Error(code=im_pb2.UNKNOWN_TYPE, detail="ack is not for a client to send")
    assert not is_typing_refusal(other)
    chat = im_pb2.Error(code=im_pb2.UNKNOWN_TYPE, detail="typing", ref_msg_id=5)
    assert not is_typing_refusal(chat)
