"""The pieces of group fan-out without sockets: the stores' new reads (one contract, memory,
SQLite and MySQL), the transfer's member cache (exact: a gap reloads, H+1 advances, bounds),
the connector's access cache (TTL, LRU bound), and how a fanout is cut into frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import drop_im_tables

from common.db import Database, open_database
from common.errors import ProtocolError
from common.link import LinkClosed
from connector.groupaccess import GroupAccess
from connector.groupnotices import states_for
from groups.memstore import MemoryGroupStore
from groups.store import GroupStore, SQLGroupStore
from proto import im_pb2
from timeline.groupsql import MemberSnapshot
from timeline.memstore import MemoryTimelineStore
from timeline.model import Span, new_message
from timeline.store import SQLTimelineStore, TimelineStore
from transfer.groupfanout import CHUNK_USERS, FRAME_SLACK, GroupFanout, chunks
from transfer.members import MemberCache
from user_status.groupnotice import Notice

pytestmark = pytest.mark.asyncio


@dataclass
class Pair:
    groups: GroupStore
    timeline: TimelineStore


@pytest.fixture(params=["memory", "sqlite", "mysql"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "memory":
        return "memory", ""
    if request.param == "sqlite":
        return "sqlite", f"sqlite:///{tmp_path / 'im.db'}"
    url: str = request.getfixturevalue("mysql_url")
    asyncio.run(drop_im_tables(url))
    return "mysql", url


@pytest_asyncio.fixture
async def pair(engine_url: tuple[str, str]) -> AsyncIterator[Pair]:
    kind, url = engine_url
    if kind == "memory":
        mem = MemoryTimelineStore()
        yield Pair(MemoryGroupStore(mem), mem)
        return
    db: Database = await open_database(url)
    try:
        tl = SQLTimelineStore(db)
        await tl.migrate()
        gs = SQLGroupStore(db, tl)
        await gs.migrate()
        yield Pair(gs, tl)
    finally:
        await db.close()


async def post(tl: TimelineStore, sender: str, gid: str, msg_id: int, key_id: int = 1) -> int:
    chat = im_pb2.ChatMsg(
        id=msg_id,
        from_id=sender,
        dest_id=gid,
        dest_type=im_pb2.GROUP,
        msg_type=im_pb2.TEXT,
        body=b"sealed",
        key_id=key_id,
        conv_id=f"g:{gid}",
    )
    (res,) = await tl.append([new_message(chat)])
    assert res.outcome == "committed", res.outcome
    return res.entry.seq


async def team(p: Pair, *members: str) -> str:
    gid = (await p.groups.create("alice", "team", list(members))).group_id
    for m in members:
        await p.groups.put_member(gid, m, m)
    return gid


async def test_poster_and_members_snapshot(pair: Pair) -> None:
    gid = await team(pair, "bob", "carol")
    conv = f"g:{gid}"
    tl = pair.timeline
    assert await tl.poster(conv, "alice") == 0
    assert await tl.poster(conv, "erin") is None
    assert await tl.poster("g:nosuchgroup", "alice") is None
    await pair.groups.mute(gid, "alice", "bob", 4_000_000_000_000)
    assert await tl.poster(conv, "bob") == 4_000_000_000_000
    seq = await post(tl, "alice", gid, 1)
    removed = (await pair.groups.delete_member(gid, "alice", "carol")).seqs[0]
    assert await tl.poster(conv, "carol") is None
    snap = await tl.members_snapshot(conv)
    assert snap is not None
    assert snap.head == await tl.head(conv) and snap.head > removed > seq
    assert set(snap.spans) == {"alice", "bob", "carol"}
    assert snap.spans["carol"][-1].to_seq == removed
    assert snap.spans["alice"] == (Span(1, 0),)
    assert await tl.members_snapshot("g:nosuchgroup") is None
    assert await tl.members_snapshot("p:alice:bob") is None


async def test_the_member_cache_on_a_real_store(pair: Pair) -> None:
    """Answers from a snapshot until a gap, then reloads, and is right either side of a
    removal and a join."""
    gid = await team(pair, "bob", "carol")
    conv = f"g:{gid}"
    tl = pair.timeline
    cache = MemberCache(tl)
    s1 = await post(tl, "alice", gid, 1)
    assert await cache.members_at(conv, s1) == ["alice", "bob", "carol"]
    assert cache.loads == 1 and cache.head(conv) == s1
    s2 = await post(tl, "bob", gid, 2)
    assert s2 == s1 + 1
    assert await cache.members_at(conv, s2) == ["alice", "bob", "carol"]
    assert cache.loads == 1 and cache.head(conv) == s2, "H+1 advances without a read"
    removal = await pair.groups.delete_member(gid, "alice", "carol")  # REMOVED, KEY_ROTATED
    await pair.groups.put_member(gid, "alice", "dave")
    await pair.groups.put_member(gid, "dave", "dave")
    s3 = await post(tl, "alice", gid, 3, key_id=2)
    assert await cache.members_at(conv, s3) == ["alice", "bob", "dave"]
    assert cache.loads == 2, "a gap (membership events) reloads"
    # an older seq (a resend's duplicate) is answered as of that seq, from the cache
    assert await cache.members_at(conv, s2) == ["alice", "bob", "carol"]
    assert await cache.members_at(conv, removal.seqs[0]) == ["alice", "bob", "carol"]
    assert cache.loads == 2


class Views:
    """Snapshots a test sets by hand, counting reads (conforms to transfer.members.GroupView)."""

    def __init__(self) -> None:
        self.snaps: dict[str, MemberSnapshot] = {}
        self.reads = 0

    async def members_snapshot(self, conv_id: str) -> MemberSnapshot | None:
        self.reads += 1
        return self.snaps.get(conv_id)


def snap(head: int, **spans: tuple[Span, ...]) -> MemberSnapshot:
    return MemberSnapshot(head, spans)


async def test_the_member_cache_reloads_on_any_gap_and_not_otherwise() -> None:
    views = Views()
    views.snaps["g:a"] = snap(10, u1=(Span(1, 0),), u2=(Span(1, 5), Span(8, 0)))
    cache = MemberCache(views)
    assert await cache.members_at("g:a", 10) == ["u1", "u2"]
    assert await cache.members_at("g:a", 6) == ["u1"], "between u2's spans"
    assert await cache.members_at("g:a", 11) == ["u1", "u2"], "H+1: nothing changed"
    assert views.reads == 1 and cache.head("g:a") == 11
    # another transfer had the conversation (or REST appended): seq 13 is a gap
    views.snaps["g:a"] = snap(13, u1=(Span(1, 12),), u2=(Span(1, 5), Span(8, 0)))
    assert await cache.members_at("g:a", 13) == ["u2"]
    assert views.reads == 2 and cache.head("g:a") == 13
    assert await cache.members_at("g:a", 12) == ["u1", "u2"]
    assert views.reads == 2
    assert await cache.members_at("g:none", 1) == []
    assert cache.head("g:none") is None


async def test_the_member_cache_is_bounded() -> None:
    views = Views()
    for i in range(5):
        views.snaps[f"g:{i}"] = snap(1, **{f"u{j}": (Span(1, 0),) for j in range(3)})
    views.snaps["g:big"] = snap(1, **{f"u{j}": (Span(1, 0),) for j in range(20)})
    cache = MemberCache(views, max_groups=3, max_spans=10)
    for i in range(5):
        assert len(await cache.members_at(f"g:{i}", 1)) == 3
        assert len(cache) <= 3 and cache.spans_held <= 10
    assert len(cache) == 3 and [cache.head(f"g:{i}") for i in range(5)] == [None, None, 1, 1, 1]
    # four groups of 3 spans would be 12 > 10: the least recently used went too
    assert await cache.members_at("g:2", 1)  # used: now the newest
    assert len(await cache.members_at("g:big", 1)) == 20, "too big to keep, still answered"
    assert cache.head("g:big") is None and cache.spans_held <= 10
    reads = views.reads
    assert len(await cache.members_at("g:big", 1)) == 20
    assert views.reads == reads + 1, "an uncached group is read each time"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_access_cache_expires_and_is_bounded(pair: Pair) -> None:
    gid = await team(pair, "bob")
    conv = f"g:{gid}"
    clock = Clock()
    access = GroupAccess(pair.timeline, ttl=1.0, size=2, clock=clock)
    await access.check_post(conv, "bob")
    await pair.groups.mute(gid, "alice", "bob", 4_000_000_000_000)
    await access.check_post(conv, "bob")  # the cached "yes": the writer's check decides
    assert access.hits == 1
    clock.now += 1.01
    with pytest.raises(ProtocolError) as err:
        await access.check_post(conv, "bob")
    assert err.value.code == im_pb2.MUTED and not err.value.fatal
    with pytest.raises(ProtocolError) as err:
        await access.check_post(conv, "erin")
    assert err.value.code == im_pb2.NOT_MEMBER
    with pytest.raises(ProtocolError):
        await access.check_reader(conv, "erin")
    await pair.groups.delete_member(gid, "alice", "bob")
    await access.check_reader(conv, "alice")
    assert len(access) == 2, "at most `size` answers"
    clock.now += 2
    await access.check_reader(conv, "bob")  # a former member still reads their spans
    with pytest.raises(ProtocolError) as err:
        await access.check_post(conv, "bob")
    assert err.value.code == im_pb2.NOT_MEMBER


async def test_a_membership_notice_drops_the_groups_cached_answers(pair: Pair) -> None:
    """A "no" cached just before an unmute would refuse the chat for good (NOT_MEMBER and
    MUTED are final to the library): a notice for the group forgets its answers at once."""
    gid = await team(pair, "bob")
    other = await team(pair, "bob")
    conv = f"g:{gid}"
    access = GroupAccess(pair.timeline, ttl=60.0, clock=Clock())
    await pair.groups.mute(gid, "alice", "bob", 4_000_000_000_000)
    with pytest.raises(ProtocolError):
        await access.check_post(conv, "bob")
    await access.check_post(f"g:{other}", "bob")
    await pair.groups.mute(gid, "alice", "bob", 0)
    with pytest.raises(ProtocolError):
        await access.check_post(conv, "bob")  # still the cached "muted"
    access.forget_group(conv)
    await access.check_post(conv, "bob")
    assert len(access) == 2  # the other group's answer stayed


async def test_chunks_bound_users_and_bytes() -> None:
    users = [f"user{i:04d}" for i in range(1200)]
    runs = chunks(users, budget=10_000_000)
    assert [len(r) for r in runs] == [500, 500, 200]
    assert [u for r in runs for u in r] == users
    small = chunks(users[:100], budget=11 * 10)  # 8-char ids cost 11 bytes each
    assert [len(r) for r in small] == [10] * 10
    assert chunks(["x" * 64], budget=1) == [["x" * 64]], "one user always goes"
    assert chunks([], budget=100) == []


class SlowLink:
    """A connector link whose window never opens (or that closed)."""

    def __init__(self, closed: bool = False) -> None:
        self.closed = closed
        self.sent: list[im_pb2.Envelope] = []

    async def send(self, env: im_pb2.Envelope) -> int:
        if self.closed:
            raise LinkClosed("gone")
        if env.fanout.users and env.fanout.users[0] == "stuck":
            await asyncio.Event().wait()
        self.sent.append(env)
        return len(self.sent)


async def test_a_fanout_per_connector_and_a_slow_one_holds_no_one_up() -> None:
    views = Views()
    members = {f"m{i:05d}": (Span(1, 0),) for i in range(1500)}
    views.snaps["g:big"] = snap(0, stuck=(Span(1, 0),), **members)

    async def lookup(users: object) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {"stuck": {"d": "slow"}}
        for i, u in enumerate(sorted(members)):
            out[u] = {"pc": "c1", "phone": "c1"} if i % 2 else {"pc": "c2"}
        return out

    links = {"c1": SlowLink(), "c2": SlowLink(), "slow": SlowLink(), "gone": SlowLink(True)}
    fan = GroupFanout(MemberCache(views), lookup, links, max_frame=200_000, send_wait=0.2)
    chat = im_pb2.ChatMsg(id=7, from_id="m00000", conv_id="g:big", seq=1, dest_id="big")
    chat.dest_type = im_pb2.GROUP
    # The stuck link never opens: without send_wait this would wait forever. The bound is
    # generous because a loaded CI machine spends over a second on 1 500 members' frames.
    await asyncio.wait_for(fan.fan_out(chat, origin="gone"), timeout=30)
    got = {n: [u for env in links[n].sent for u in env.fanout.users] for n in ("c1", "c2")}
    assert sorted(got["c1"] + got["c2"]) == sorted(members), "every member once"
    assert len(got["c1"]) == len(set(got["c1"])) == 750, "one copy per connector"
    assert [len(e.fanout.users) for e in links["c1"].sent] == [500, 250]
    assert all(e.fanout.chat.id == 7 for n in ("c1", "c2") for e in links[n].sent)
    assert links["slow"].sent == [] and fan.late == 1


async def test_notices_decode_only_what_a_notice_is() -> None:
    n = Notice("g:abc", 7)
    assert Notice.decode(n.encode()) == n and Notice.decode("g:abc 7") == n
    for bad in (
        "",
        "g:abc",
        "g:abc x",
        "g:abc -1",
        "g:abc 0",
        "p:a:b 3",
        "g:a:b 3",
        "g:abc 9" * 30,
    ):
        with pytest.raises(ValueError):
            Notice.decode(bad)


async def test_a_notice_tells_members_and_the_one_who_just_left() -> None:
    spans = {
        "member": (Span(1, 0),),
        "leaver": (Span(1, 9),),  # removed by the event at 9
        "former": (Span(1, 3),),  # left long ago
        "back": (Span(1, 2), Span(6, 0)),
    }
    states = states_for("g:abc", 9, snap(10, **spans), ["member", "leaver", "former", "back", "x"])
    assert set(states) == {"member", "leaver", "back"}
    assert [(s.type, s.peer_id, s.last_seq, s.min_seq) for s in states.values()] == [
        (im_pb2.GROUP, "abc", 10, 1),
        (im_pb2.GROUP, "abc", 9, 1),
        (im_pb2.GROUP, "abc", 10, 1),
    ]


async def test_ten_thousand_members_on_one_connector_are_bounded_frames() -> None:
    views = Views()
    members = {f"member-{i:05d}": (Span(1, 0),) for i in range(10_000)}
    views.snaps["g:huge"] = snap(0, **members)

    async def lookup(users: object) -> dict[str, dict[str, str]]:
        return {u: {"pc": "c1"} for u in members}

    frame = 80 * 1024
    for body in (1_000, 75_000):
        link = SlowLink()
        fan = GroupFanout(MemberCache(views), lookup, {"c1": link}, max_frame=frame)
        chat = im_pb2.ChatMsg(id=1, from_id="member-00000", conv_id="g:huge", seq=1)
        chat.body = b"x" * body
        # each 12-character id costs 15 bytes of what the frame leaves after the chat
        room = frame - im_pb2.Fanout(chat=chat).ByteSize() - FRAME_SLACK
        most = min(CHUNK_USERS, room // 15)
        assert most == (500 if body == 1_000 else 424)
        await fan.fan_out(chat, origin="c1")
        sizes = [len(env.fanout.users) for env in link.sent]
        assert max(sizes) == most and len(sizes) == -(-10_000 // most), body
        assert sorted(u for env in link.sent for u in env.fanout.users) == sorted(members)
        assert all(env.ByteSize() < frame for env in link.sent), "every frame fits the link"
