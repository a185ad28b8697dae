"""The group store's contract with its timeline, once per implementation: memory, SQLite and
MySQL. Membership changes are SYSTEM messages in the group's timeline, in order with the chats;
each reader sees only their spans; chats are checked at commit (member, mute, dissolved, key);
keys rotate on leave and removal; read-by comes from the members' cursors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from groupstores import Pair, open_pair

from common.db import open_database
from groups.model import Refusal, Refused
from groups.store import SQLGroupStore
from proto import im_pb2
from timeline.model import AppendResult, Entry, new_message
from timeline.store import SQLTimelineStore

Ev = im_pb2.SystemBody


@pytest_asyncio.fixture
async def pair(engine_url: tuple[str, str]) -> AsyncIterator[Pair]:
    async with open_pair(engine_url, max_size=5) as p:
        yield p


def group_chat(sender: str, group_id: str, msg_id: int, key_id: int = 1) -> im_pb2.ChatMsg:
    return im_pb2.ChatMsg(
        id=msg_id,
        from_id=sender,
        dest_id=group_id,
        dest_type=im_pb2.GROUP,
        msg_type=im_pb2.TEXT,
        body=b"sealed-%d" % msg_id,
        create_time=1_700_000_000_000,
        key_id=key_id,
        conv_id=f"g:{group_id}",
    )


async def post(p: Pair, sender: str, group_id: str, msg_id: int, key_id: int = 1) -> AppendResult:
    (result,) = await p.timeline.append([new_message(group_chat(sender, group_id, msg_id, key_id))])
    return result


def event(entry: Entry) -> tuple[int, str, str]:
    chat = im_pb2.ChatMsg()
    chat.ParseFromString(entry.content)
    if chat.msg_type != im_pb2.SYSTEM:
        return (entry.seq, "chat", entry.sender)
    body = Ev()
    body.ParseFromString(chat.body)
    return (entry.seq, Ev.Event.Name(body.event), body.target or body.actor)


async def seen(p: Pair, group_id: str, reader: str) -> list[tuple[int, str, str]]:
    page = await p.timeline.page(f"g:{group_id}", after=0, limit=200, reader=reader)
    return [event(e) for e in page]


async def team(p: Pair, *joiners: str) -> str:
    """A group of alice (owner) with ``joiners`` invited and joined, in order."""
    change = await p.groups.create("alice", "team", list(joiners))
    for user in joiners:
        assert (await p.groups.put_member(change.group_id, user, user)).outcome == "member"
    return change.group_id


@pytest.mark.asyncio
async def test_membership_events_are_ordered_with_messages(pair: Pair) -> None:
    gid = await team(pair, "bob")
    assert (await post(pair, "alice", gid, 1)).entry.seq == 3
    await pair.groups.put_member(gid, "alice", "carol")  # an invitation: no event
    await pair.groups.put_member(gid, "carol", "carol")
    assert (await post(pair, "bob", gid, 2)).entry.seq == 5
    assert await seen(pair, gid, "alice") == [
        (1, "CREATED", "alice"),
        (2, "JOINED", "bob"),
        (3, "chat", "alice"),
        (4, "JOINED", "carol"),
        (5, "chat", "bob"),
    ]


@pytest.mark.asyncio
async def test_new_member_reads_from_their_join(pair: Pair) -> None:
    gid = await team(pair, "bob")
    await post(pair, "alice", gid, 1)
    with pytest.raises(Refused):  # a member who is no admin invites nobody
        await pair.groups.put_member(gid, "bob", "carol")
    await pair.groups.put_member(gid, "alice", "carol")
    assert await seen(pair, gid, "carol") == []  # invited only: nothing
    assert not await pair.timeline.is_member(f"g:{gid}", "carol")
    await pair.groups.put_member(gid, "carol", "carol")
    await post(pair, "bob", gid, 2)
    assert await seen(pair, gid, "carol") == [(4, "JOINED", "carol"), (5, "chat", "bob")]
    (conv,) = await pair.timeline.conversations("carol")
    assert (conv.min_seq, conv.max_seq, conv.last_seq, conv.unread) == (4, 0, 5, 1)


@pytest.mark.asyncio
async def test_removed_member_history_stops_at_removal(pair: Pair) -> None:
    gid = await team(pair, "bob", "carol")
    await post(pair, "carol", gid, 1)
    change = await pair.groups.delete_member(gid, "alice", "carol")
    assert change.outcome == "removed" and len(change.seqs) == 2  # REMOVED, KEY_ROTATED
    removed_at = change.seqs[0]
    assert (await post(pair, "alice", gid, 2, key_id=2)).outcome == "committed"
    assert (await post(pair, "carol", gid, 3, key_id=2)).outcome == "not_member"
    page = await seen(pair, gid, "carol")
    assert page[-1] == (removed_at, "REMOVED", "carol")
    assert all(seq <= removed_at for seq, _, _ in page)
    # newest-first paging, and asking past the end, give nothing after the removal either
    newest = await pair.timeline.page(f"g:{gid}", before=10**9, limit=200, reader="carol")
    assert newest[-1].seq == removed_at
    assert await pair.timeline.page(f"g:{gid}", after=removed_at, limit=5, reader="carol") == []
    (conv,) = await pair.timeline.conversations("carol")
    assert (conv.max_seq, conv.last_seq) == (removed_at, removed_at)
    assert conv.last is not None and conv.last.seq == removed_at
    with pytest.raises(ValueError):
        await pair.timeline.page(f"g:{gid}", after=0, limit=5)  # a group is paged per reader


@pytest.mark.asyncio
async def test_rejoin_makes_two_spans(pair: Pair) -> None:
    gid = await team(pair, "bob")
    await pair.groups.delete_member(gid, "bob", "bob")  # seqs 3, 4
    await post(pair, "alice", gid, 1, key_id=2)  # 5: bob does not see it
    await pair.groups.put_member(gid, "alice", "bob")
    await pair.groups.put_member(gid, "bob", "bob")  # 6
    assert [s for s, _, _ in await seen(pair, gid, "bob")] == [2, 3, 6]
    spans = await pair.timeline.spans(f"g:{gid}", "bob")
    assert [(s.from_seq, s.to_seq) for s in spans] == [(2, 3), (6, 0)]
    keys = await pair.groups.keys(gid, "bob")
    assert keys is not None and [k.key_id for k in keys] == [1, 2]


@pytest.mark.asyncio
async def test_keys_rotate_on_leave(pair: Pair) -> None:
    gid = await team(pair, "bob")
    before = await pair.groups.keys(gid, "bob")
    assert before is not None and [(k.key_id, k.from_seq, k.to_seq) for k in before] == [(1, 1, 0)]
    change = await pair.groups.delete_member(gid, "bob", "bob")
    left, rotated = change.seqs
    assert await pair.groups.keys(gid, "bob") == [before[0].__class__(1, before[0].key, 1, left)]
    keys = await pair.groups.keys(gid, "alice")
    assert keys is not None and [(k.key_id, k.from_seq) for k in keys] == [(1, 1), (2, rotated)]
    assert keys[1].key != keys[0].key
    assert (await pair.groups.group(gid)) is not None
    assert (await post(pair, "alice", gid, 1, key_id=1)).outcome == "stale_key"
    assert (await post(pair, "alice", gid, 2, key_id=2)).outcome == "committed"
    assert await pair.groups.keys(gid, "mallory") is None


@pytest.mark.asyncio
async def test_mute_and_dissolve_refuse_posts_at_commit(pair: Pair) -> None:
    gid = await team(pair, "bob")
    await pair.groups.mute(gid, "alice", "bob", 2**62)
    assert (await post(pair, "bob", gid, 1)).outcome == "muted"
    await pair.groups.mute(gid, "alice", "bob", 0)
    assert (await post(pair, "bob", gid, 2)).outcome == "committed"
    assert (await post(pair, "bob", gid, 2)).outcome == "duplicate"  # a resend, same seq
    await pair.groups.dissolve(gid, "alice")
    assert (await post(pair, "bob", gid, 3)).outcome == "closed"
    with pytest.raises(Refused) as info:
        await pair.groups.put_member(gid, "alice", "dave")
    assert info.value.why is Refusal.DISSOLVED
    assert (await seen(pair, gid, "bob"))[-1][1] == "DISSOLVED"  # history stays readable


@pytest.mark.asyncio
async def test_strangers_and_unknown_groups(pair: Pair) -> None:
    gid = await team(pair)
    assert (await post(pair, "mallory", gid, 1)).outcome == "not_member"
    assert (await post(pair, "alice", "nosuchgroup", 2)).outcome == "not_member"
    for call in (
        pair.groups.put_member(gid, "mallory", "mallory"),
        pair.groups.put_member(gid, "mallory", "eve"),
        pair.groups.delete_member(gid, "mallory", "alice"),
        pair.groups.put_member("nosuchgroup", "alice", "bob"),
        pair.groups.rename("bad id!", "alice", "x"),
    ):
        with pytest.raises(Refused) as info:
            await call
        assert info.value.why is Refusal.NOT_FOUND


@pytest.mark.asyncio
async def test_size_counts_invitations(pair: Pair) -> None:
    with pytest.raises(Refused):
        await pair.groups.create("alice", "big", ["u1", "u2", "u3", "u4", "u5"])  # 6 > 5
    change = await pair.groups.create("alice", "ok", ["u1", "u2", "u3", "alice", "u1"])
    view = await pair.groups.view(change.group_id)
    assert view.size == 4
    await pair.groups.put_member(change.group_id, "alice", "u4")
    with pytest.raises(Refused) as info:
        await pair.groups.put_member(change.group_id, "alice", "u5")
    assert info.value.why is Refusal.FULL


@pytest.mark.asyncio
async def test_read_by_counts_from_cursors(pair: Pair) -> None:
    gid = await team(pair, "bob", "carol", "dave")
    conv = f"g:{gid}"
    seq = (await post(pair, "alice", gid, 1)).entry.seq
    await pair.timeline.set_read(conv, "bob", seq)
    await pair.timeline.set_delivered(conv, "bob", "bob-phone", seq)
    await pair.timeline.set_delivered(conv, "carol", "carol-phone", seq)
    await pair.timeline.set_delivered(conv, "dave", "dave-phone", seq - 1)
    r = await pair.timeline.receipts(conv, seq, 10)
    assert r is not None
    assert (r.members, r.read, r.delivered) == (3, 1, 2)  # the sender is not counted
    assert (r.read_by, r.delivered_to) == (["bob"], ["bob", "carol"])
    short = await pair.timeline.receipts(conv, seq, 1)
    assert short is not None and short.delivered == 2 and short.delivered_to == ["bob"]
    # a member who joins later is not a member at that seq; one removed still was
    await pair.groups.delete_member(gid, "alice", "carol")
    await pair.groups.put_member(gid, "alice", "erin")
    await pair.groups.put_member(gid, "erin", "erin")
    r = await pair.timeline.receipts(conv, seq, 10)
    assert r is not None and (r.members, r.delivered) == (3, 2)
    assert await pair.timeline.receipts(conv, 10**6, 10) is None
    # the pushes' counts (one read for many seqs) are the same as REST's, seq by seq
    later = (await post(pair, "bob", gid, 2, key_id=2)).entry.seq  # carol took key 1 along
    assert later > seq
    await pair.timeline.set_read(conv, "erin", later)
    asked = [(seq, "alice"), (later, "bob"), (later - 1, "#" + gid)]
    counts = await pair.timeline.receipt_counts(conv, asked)
    for (at, _), got in zip(asked[:2], counts, strict=False):
        want = await pair.timeline.receipts(conv, at, 0)
        assert want is not None and got == (want.members, want.read, want.delivered), at
    assert counts[0] == (3, 1, 2) and counts[1][0] == 3  # at `later`: alice, dave, erin
    assert await pair.timeline.receipt_counts(conv, []) == []


@pytest.mark.asyncio
async def test_group_listing_follows_the_head_without_member_rows(pair: Pair) -> None:
    gid = await team(pair, "bob")
    (before,) = await pair.timeline.conversations("bob")
    await asyncio.sleep(0.01)
    await post(pair, "alice", gid, 1)
    (after,) = await pair.timeline.conversations("bob", device_id="bob-phone")
    assert after.changed > before.changed and after.last_seq == 3
    assert after.last is not None and after.last.seq == 3 and after.unread == 1
    listing = await pair.timeline.conversations("bob", after=(0, ""), since_ms=after.changed)
    assert [c.conv_id for c in listing] == [f"g:{gid}"]
    assert await pair.timeline.conversations("bob", since_ms=after.changed + 1) == []


@pytest.mark.asyncio
async def test_roles_transfer_and_rename(pair: Pair) -> None:
    gid = await team(pair, "bob", "carol")
    await pair.groups.set_role(gid, "alice", "bob", "admin")
    with pytest.raises(Refused) as info:
        await pair.groups.delete_member(gid, "carol", "bob")
    assert info.value.why is Refusal.FORBIDDEN
    with pytest.raises(Refused) as info:
        await pair.groups.delete_member(gid, "bob", "alice")
    assert info.value.why is Refusal.OWNER_STAYS
    with pytest.raises(Refused) as info:
        await pair.groups.delete_member(gid, "alice", "alice")
    assert info.value.why is Refusal.OWNER_STAYS
    await pair.groups.rename(gid, "bob", "renamed")
    change = await pair.groups.set_role(gid, "alice", "carol", "owner")
    assert change.outcome == "owner" and len(change.seqs) == 2
    group = await pair.groups.group(gid)
    assert group is not None and (group.owner, group.name) == ("carol", "renamed")
    alice = await pair.groups.member(gid, "alice")
    assert alice is not None and alice.role == "admin"
    assert (await pair.groups.delete_member(gid, "alice", "alice")).outcome == "left"
    mine = await pair.groups.groups_of("carol")
    assert [(g.group.group_id, g.role) for g in mine] == [(gid, "owner")]
    assert await pair.groups.groups_of("alice") == []


@pytest.mark.asyncio
async def test_invitation_declined_and_withdrawn(pair: Pair) -> None:
    gid = await team(pair)
    await pair.groups.put_member(gid, "alice", "bob")
    assert (await pair.groups.put_member(gid, "alice", "bob")).outcome == "invited"
    assert (await pair.groups.delete_member(gid, "bob", "bob")).outcome == "declined"
    await pair.groups.put_member(gid, "alice", "bob")
    assert (await pair.groups.delete_member(gid, "alice", "bob")).outcome == "withdrawn"
    assert await pair.groups.member(gid, "bob") is None
    assert [s for s, _, _ in await seen(pair, gid, "alice")] == [1]  # no events for those


@pytest.mark.asyncio
async def test_posts_racing_a_removal_fall_on_one_side_of_it(
    engine_url: tuple[str, str],
) -> None:
    """Two connection pools: one appends a member's chats while the other removes them. Each
    chat commits at a seq below the REMOVED event or is refused not_member: none lands after."""
    kind, url = engine_url
    if kind != "mysql":
        pytest.skip("two servers' connections at once: MySQL")
    db1, db2 = await open_database(url), await open_database(url)
    try:
        tl1, tl2 = SQLTimelineStore(db1), SQLTimelineStore(db2)
        await tl1.migrate()
        gs = SQLGroupStore(db1, tl1)
        await gs.migrate()
        p = Pair(gs, tl2)
        gid = await team(p, "bob")

        async def chats() -> list[AppendResult]:
            out: list[AppendResult] = []
            for n in range(40):
                out.append(await post(p, "bob", gid, n + 1))
            return out

        task = asyncio.create_task(chats())
        await asyncio.sleep(0.02)
        removal = await gs.delete_member(gid, "alice", "bob")
        results = await task
        removed_at = removal.seqs[0]
        committed = [r.entry.seq for r in results if r.outcome == "committed"]
        assert {r.outcome for r in results} <= {"committed", "not_member"}
        assert all(seq < removed_at for seq in committed)
        assert all(r.outcome == "not_member" for r in results[len(committed) :])
        page = await tl1.page(f"g:{gid}", after=0, limit=200, reader="alice")
        assert [e.seq for e in page] == list(range(1, len(page) + 1))  # no gap, none twice
    finally:
        await db1.close()
        await db2.close()


@pytest.mark.asyncio
async def test_a_former_members_cursors_stop_at_their_removal(pair: Pair) -> None:
    """A cursor answer would tell a removed member how far the group went on: it stops at the
    last seq they may read, while a member's goes up to the head."""
    gid = await team(pair, "bob", "carol")
    conv = f"g:{gid}"
    removed_at = (await pair.groups.delete_member(gid, "alice", "carol")).seqs[0]
    for n in range(3):
        await post(pair, "alice", gid, n + 1, key_id=2)
    head = await pair.timeline.head(conv)
    assert head == removed_at + 4
    assert await pair.timeline.set_read(conv, "carol", 10**6) == removed_at
    assert await pair.timeline.set_delivered(conv, "carol", "c1", 10**6) == removed_at
    assert await pair.timeline.set_read(conv, "bob", 10**6) == head
    assert await pair.timeline.set_read(conv, "mallory", 1) == 0  # no member row: nothing


@pytest.mark.asyncio
async def test_ownership_to_a_muted_member_lifts_the_mute(pair: Pair) -> None:
    """Nobody may mute or unmute an owner, so a mute handed over with the ownership would stay
    for good: the transfer ends it, in the member row and in the span posting checks."""
    gid = await team(pair, "bob")
    await pair.groups.mute(gid, "alice", "bob", (1 << 53) - 1)
    assert await pair.timeline.poster(f"g:{gid}", "bob") == (1 << 53) - 1
    change = await pair.groups.set_role(gid, "alice", "bob", "owner")
    assert change.outcome == "owner" and len(change.seqs) == 3  # ROLE, ROLE, MUTED 0
    bob = await pair.groups.member(gid, "bob")
    assert bob is not None and (bob.role, bob.muted_until) == ("owner", 0)
    assert await pair.timeline.poster(f"g:{gid}", "bob") == 0
