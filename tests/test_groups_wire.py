"""Group chat on the wire (issue 14, step 2), seen from raw devices on the embedded stack: the
connector's membership and mute checks, the transfer's fan-out to exactly the members at a
message's seq (every other device once, SENT to the sender's), syncs and cursors of a group,
the listing's ConvState, and hostile group chats that are refused without closing the link.
Membership changes go through REST, as a client's would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from rawdevice import RawDevice, settle, until
from test_e2e import make_users, rest_url, stack_settings

from cli.stack import Stack
from proto import im_pb2

pytestmark = pytest.mark.asyncio

USERS = ("alice", "bob", "carol", "dave", "erin")


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


class Groups:
    """The REST calls of a group's life, each as the device's user."""

    def __init__(self, base: str) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=10)

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, dev: RawDevice, method: str, path: str, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {dev.token}"}
        return await self.http.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]

    async def create(self, owner: RawDevice, *members: RawDevice) -> str:
        names = sorted({m.user for m in members})
        r = await self.call(owner, "POST", "/groups", json={"name": "team", "members": names})
        assert r.status_code == 201, r.text
        gid = str(r.json()["group_id"])
        for m in {m.user: m for m in members}.values():
            await self.join(gid, m)
        return gid

    async def invite(self, gid: str, admin: RawDevice, user: str) -> None:
        r = await self.call(admin, "PUT", f"/groups/{gid}/members/{user}")
        assert r.status_code == 202, r.text

    async def join(self, gid: str, dev: RawDevice) -> None:
        r = await self.call(dev, "PUT", f"/groups/{gid}/members/{dev.user}")
        assert (r.status_code, r.json()["state"]) == (200, "member"), r.text

    async def remove(self, gid: str, admin: RawDevice, user: str) -> None:
        r = await self.call(admin, "DELETE", f"/groups/{gid}/members/{user}")
        assert r.status_code == 204, r.text

    async def mute(self, gid: str, admin: RawDevice, user: str, until_ms: int) -> None:
        r = await self.call(
            admin, "PUT", f"/groups/{gid}/members/{user}/mute", json={"until": until_ms}
        )
        assert r.status_code == 200, r.text

    async def key(self, gid: str, dev: RawDevice) -> int:
        r = await self.call(dev, "GET", f"/groups/{gid}/keys")
        assert r.status_code == 200, r.text
        return max(int(k["key_id"]) for k in r.json())


async def group_chat(
    dev: RawDevice, gid: str, body: bytes, key_id: int = 1, extra: dict[str, object] | None = None
) -> int:
    chat = im_pb2.ChatMsg(
        id=dev.ids(),
        from_id=dev.user,
        dest_id=gid,
        dest_type=im_pb2.GROUP,
        msg_type=im_pb2.TEXT,
        body=body,
        key_id=key_id,
    )
    for name, value in (extra or {}).items():
        setattr(chat, name, value)
    await dev.send(im_pb2.Envelope(chat=chat))
    return chat.id


def chats_of(dev: RawDevice, conv: str) -> list[tuple[str, int]]:
    """(sender, id) of the user chats ``dev`` got live in ``conv``, in order."""
    return [
        (c.from_id, c.id) for c in dev.chats if c.conv_id == conv and c.msg_type != im_pb2.SYSTEM
    ]


async def make(st: Stack) -> None:
    for c in await make_users(st, *USERS, connect=False):
        await c.close()


async def devices(st: Stack, *names: str) -> list[RawDevice]:
    """Connected raw devices, named ``user/device``; each waits for its first CaughtUp."""
    out = []
    for name in names:
        user, device = name.split("/")
        dev = await RawDevice(user, device).connect(st)
        await until(lambda dev=dev: dev.caught_ups)  # type: ignore[misc]
        out.append(dev)
    return out


async def close_all(devs: list[RawDevice]) -> None:
    for d in devs:
        await d.close()


@pytest_asyncio.fixture
async def rest(stack: Stack) -> AsyncIterator[Groups]:
    await make(stack)
    g = Groups(rest_url(stack))
    try:
        yield g
    finally:
        await g.close()


async def test_a_group_chat_reaches_every_other_device_once_and_sent_the_sender(
    stack: Stack, rest: Groups
) -> None:
    devs = await devices(stack, "alice/pc", "alice/phone", "bob/pc", "bob/phone", "carol/pc")
    a_pc, _, b_pc, _, c_pc = devs
    try:
        gid = await rest.create(a_pc, b_pc, c_pc)
        conv = f"g:{gid}"
        sent = []
        for i in range(5):
            sender = devs[i % len(devs)]
            sent.append((sender, await group_chat(sender, gid, b"m%d" % i)))
        await until(lambda: all(dev.sent(mid) for dev, mid in sent))
        for dev in devs:
            n = len([s for s, _ in sent if s is not dev])
            await until(lambda dev=dev, n=n: len(chats_of(dev, conv)) >= n)  # type: ignore[misc]
        await settle(0.5)
        seqs: dict[tuple[str, int], int] = {}
        for dev in devs:
            expected = [(s.user, mid) for s, mid in sent if s is not dev]
            assert chats_of(dev, conv) == expected, dev.device
            for s, mid in sent:  # ids are unique per user: other users' may coincide
                if s.user == dev.user:
                    assert len(dev.sent(mid)) == (1 if s is dev else 0)
            for c in dev.chats:
                seqs.setdefault((c.from_id, c.id), c.seq)
        for dev, mid in sent:
            (ack,) = dev.sent(mid)
            assert (ack.conv_id, ack.from_id, ack.dest_id) == (conv, gid, dev.user)
            assert seqs.get((dev.user, mid), ack.seq) == ack.seq
        acked = [dev.sent(mid)[0].seq for dev, mid in sent]
        assert acked == sorted(acked) and len(set(acked)) == 5, "one order, in the group's seqs"
    finally:
        await close_all(devs)


async def test_a_removed_member_gets_nothing_after_the_removal_online_or_by_sync(
    stack: Stack, rest: Groups
) -> None:
    devs = await devices(stack, "alice/pc", "bob/pc", "carol/pc")
    alice, bob, carol = devs
    try:
        gid = await rest.create(alice, bob, carol)
        conv = f"g:{gid}"
        before = await group_chat(alice, gid, b"before")
        await until(lambda: alice.sent(before) and chats_of(carol, conv))
        await rest.remove(gid, alice, "carol")
        key = await rest.key(gid, alice)
        assert key == 2, "a removal rotates the key"
        after = [await group_chat(alice, gid, b"after%d" % i, key_id=key) for i in range(3)]
        await until(lambda: all(alice.sent(m) for m in after) and len(chats_of(bob, conv)) == 4)
        await settle(0.5)
        assert chats_of(carol, conv) == [("alice", before)], "nothing past the removal"
        removed_at = max(alice.sent(before)[0].seq + 1, 1)
        # carol's other device, offline meanwhile, learns nothing past the removal either
        laptop = RawDevice("carol", "laptop")
        await laptop.connect(stack)
        devs.append(laptop)
        await until(lambda: laptop.caught_ups)
        (cs,) = [s for s in laptop.conv_states if s.conv_id == conv]
        assert (cs.type, cs.peer_id) == (im_pb2.GROUP, gid)
        laptop.clear()
        await laptop.send_sync(conv, 1)
        await until(lambda: laptop.sync_dones)
        (done,) = laptop.sync_dones
        assert done.last_seq == cs.last_seq and done.to_seq == cs.last_seq
        got = laptop.chats
        assert all(c.seq <= cs.last_seq for c in got)
        assert [c.id for c in got if c.msg_type != im_pb2.SYSTEM] == [before]
        removal = [c for c in got if c.msg_type == im_pb2.SYSTEM][-1]
        body = im_pb2.SystemBody.FromString(removal.body)
        assert (body.event, body.target, removal.seq) == (
            im_pb2.SystemBody.REMOVED,
            "carol",
            cs.last_seq,
        )
        assert cs.last_seq >= removed_at
        # a sync past the removal names nothing and no later head
        laptop.clear()
        await laptop.send_sync(conv, cs.last_seq + 1)
        await until(lambda: laptop.sync_dones)
        assert laptop.chats == [] and laptop.sync_dones[0].last_seq == cs.last_seq
        # and carol may no longer post
        refused = await group_chat(carol, gid, b"let me in", key_id=key)
        await until(lambda: carol.errors)
        assert carol.codes() == ["NOT_MEMBER"] and carol.errors[0].ref_msg_id == refused
        assert carol.link is not None and not carol.link.closing
    finally:
        await close_all(devs)


async def test_a_new_member_gets_the_messages_from_the_join(stack: Stack, rest: Groups) -> None:
    devs = await devices(stack, "alice/pc", "bob/pc", "dave/pc")
    alice, bob, dave = devs
    try:
        gid = await rest.create(alice, bob)
        conv = f"g:{gid}"
        early = await group_chat(alice, gid, b"before dave")
        await until(lambda: alice.sent(early))
        await rest.invite(gid, alice, "dave")
        await settle(0.3)
        assert chats_of(dave, conv) == [], "an invitee is not a member yet"
        await rest.join(gid, dave)
        late = await group_chat(bob, gid, b"welcome dave")
        await until(lambda: chats_of(dave, conv))
        assert chats_of(dave, conv) == [("bob", late)]
        mine = await group_chat(dave, gid, b"hello all")
        await until(lambda: dave.sent(mine) and ("dave", mine) in chats_of(alice, conv))
        dave.clear()
        await dave.send_sync(conv, 1)
        await until(lambda: dave.sync_dones)
        ids = [c.id for c in dave.chats if c.msg_type != im_pb2.SYSTEM]
        assert ids == [late, mine], "history starts at the join"
        first = dave.chats[0]
        assert first.msg_type == im_pb2.SYSTEM
        assert im_pb2.SystemBody.FromString(first.body).event == im_pb2.SystemBody.JOINED
    finally:
        await close_all(devs)


async def test_not_member_and_muted_are_answered_and_not_fatal(stack: Stack, rest: Groups) -> None:
    devs = await devices(stack, "alice/pc", "bob/pc", "erin/pc")
    alice, bob, erin = devs
    try:
        gid = await rest.create(alice, bob)
        stranger = await group_chat(erin, gid, b"hi")
        await until(lambda: erin.errors)
        assert erin.codes() == ["NOT_MEMBER"] and erin.errors[0].ref_msg_id == stranger
        await rest.mute(gid, alice, "bob", int(time.time() * 1000) + 60_000)
        muted = await group_chat(bob, gid, b"shh")
        await until(lambda: bob.errors)
        assert bob.codes() == ["MUTED"] and bob.errors[0].ref_msg_id == muted
        await settle(0.3)
        assert chats_of(alice, f"g:{gid}") == [], "nothing refused reaches anyone"
        await rest.mute(gid, alice, "bob", 0)
        await settle(1.2)  # the connector's answer is reused for up to a second
        ok = await group_chat(bob, gid, b"unmuted")
        await until(lambda: bob.sent(ok) and chats_of(alice, f"g:{gid}"))
        for dev in devs:
            assert dev.link is not None and not dev.link.closing
    finally:
        await close_all(devs)


async def test_hostile_group_chats_are_refused_and_the_link_stays(
    stack: Stack, rest: Groups
) -> None:
    devs = await devices(stack, "alice/pc", "bob/pc")
    alice, bob = devs
    try:
        gid = await rest.create(alice, bob)
        other = await rest.create(bob)  # a group alice is not in
        cases: list[tuple[str, dict[str, object], str]] = [
            ("bad id", {"dest_id": "no such group!"}, "BAD_MESSAGE"),
            ("huge id", {"dest_id": "g" * 10_000}, "BAD_MESSAGE"),
            ("empty id", {"dest_id": ""}, "BAD_MESSAGE"),
            ("system", {"msg_type": im_pb2.SYSTEM}, "BAD_MESSAGE"),
            ("file", {"msg_type": im_pb2.FILE}, "BAD_MESSAGE"),
            ("unknown dest type", {"dest_type": 7}, "BAD_MESSAGE"),
            ("not mine", {"dest_id": other}, "NOT_MEMBER"),
            ("unknown group", {"dest_id": "0123456789abcdef"}, "NOT_MEMBER"),
        ]
        for i, (what, fields, code) in enumerate(cases):
            mid = await group_chat(alice, gid, b"x", extra=fields)
            await until(lambda n=i + 1: len(alice.errors) == n)  # type: ignore[misc]
            err = alice.errors[-1]
            assert (im_pb2.ErrorCode.Name(err.code), err.ref_msg_id) == (code, mid), what
        assert alice.link is not None and not alice.link.closing
        ok = await group_chat(alice, gid, b"still here")
        await until(lambda: alice.sent(ok) and chats_of(bob, f"g:{gid}"))
        assert chats_of(bob, f"g:{gid}") == [("alice", ok)]
    finally:
        await close_all(devs)


async def test_group_cursors_and_syncs_are_for_members(stack: Stack, rest: Groups) -> None:
    devs = await devices(stack, "alice/pc", "bob/pc", "bob/phone", "erin/pc")
    alice, b_pc, b_phone, erin = devs
    try:
        gid = await rest.create(alice, b_pc)
        conv = f"g:{gid}"
        mids = [await group_chat(alice, gid, b"m%d" % i) for i in range(2)]
        await until(lambda: all(alice.sent(m) for m in mids) and len(chats_of(b_phone, conv)) == 2)
        last = alice.sent(mids[-1])[0].seq
        await b_pc.send_cursor(conv, im_pb2.READ, last)
        await until(lambda: b_phone.cursors)
        assert [(c.conv_id, c.user_id, c.type, c.seq) for c in b_phone.cursors] == [
            (conv, "bob", im_pb2.READ, last)
        ]
        await settle(0.3)
        assert alice.cursors == [], "read-by stays on REST in this step"
        await erin.send_cursor(conv, im_pb2.READ, 1)
        await erin.send_sync(conv, 1)
        await until(lambda: len(erin.errors) == 2)
        assert erin.codes() == ["NOT_MEMBER", "NOT_MEMBER"]
        assert erin.chats == [] and erin.sync_dones == []
        # the listing names the group with its head, its peer the group
        fresh = await RawDevice("bob", "tablet").connect(stack)
        devs.append(fresh)
        await until(lambda: fresh.caught_ups)
        (cs,) = [s for s in fresh.conv_states if s.conv_id == conv]
        assert (cs.type, cs.peer_id, cs.last_seq, cs.read_seq) == (im_pb2.GROUP, gid, last, last)
        for dev in devs:
            assert dev.link is not None and not dev.link.closing
    finally:
        await close_all(devs)


async def test_membership_changes_reach_online_devices_as_conv_states(
    stack: Stack, rest: Groups
) -> None:
    devs = await devices(stack, "alice/pc", "bob/pc", "carol/pc", "erin/pc")
    alice, bob, carol, erin = devs
    # past the second listing (2 s after WELCOME): the next is a minute away, so what the
    # devices hear of membership below comes from the notices
    await until(lambda: all(len(d.caught_ups) >= 2 for d in devs), 10)
    try:
        gid = await rest.create(alice, bob, carol)
        conv = f"g:{gid}"

        def states(dev: RawDevice) -> list[im_pb2.ConvState]:
            return [s for s in dev.conv_states if s.conv_id == conv]

        await until(lambda: states(carol) and states(bob))
        joined = states(carol)[-1]
        assert (joined.type, joined.peer_id, joined.head_only) == (im_pb2.GROUP, gid, True)
        assert joined.min_seq >= 1 and joined.last_seq >= joined.min_seq
        await rest.remove(gid, alice, "carol")
        head = await stack_head(stack, conv)
        await until(lambda: states(bob) and states(bob)[-1].last_seq == head)
        await until(lambda: states(carol)[-1].last_seq > joined.last_seq)
        gone = states(carol)[-1]
        assert gone.last_seq == head - 1, "the removal (the key's rotation follows, unseen)"
        carol.clear()
        await carol.send_sync(conv, joined.last_seq + 1)
        await until(lambda: carol.sync_dones)
        (removal,) = carol.chats
        event = im_pb2.SystemBody.FromString(removal.body)
        assert (event.event, event.target) == (im_pb2.SystemBody.REMOVED, "carol")
        # the rest of the group's life is not carol's business
        carol.clear()
        await rest.invite(gid, alice, "erin")
        await rest.join(gid, erin)
        await until(lambda: states(erin) and states(bob)[-1].last_seq == head + 1)
        await settle(0.3)
        assert states(carol) == []
        assert stack.connector is not None and stack.connector.notices is not None
        assert stack.connector.notices.dropped == 0
    finally:
        await close_all(devs)


async def stack_head(st: Stack, conv: str) -> int:
    assert st.connector is not None
    return await st.connector.reader.head(conv)
