"""FILE chats in groups (issue 14 follow-up): the connector takes them, the grant names the
message, and ``GET /files/{id}`` lets in whoever was a member at that message's seq: the
members, not a stranger, not a member who joined after it, not a member removed before a later
one (who still has the files they saw). On the ``im up`` stack through the client library, and
the store's part on both engines."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from test_e2e import make_users, stack_settings

from cli.stack import Stack
from client import IMClient, Message, Presence, Receipt, RestError, Typing
from client.files import upload_file
from common.db import Database
from common.files import FileStore, group_recipient, parse_group_recipient
from groups.store import SQLGroupStore
from proto import im_pb2
from rest_web.files import readable
from timeline.model import new_message
from timeline.store import SQLTimelineStore

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path / "server"))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


async def file_in(c: IMClient, conv_id: str, timeout: float = 10.0) -> Message:
    """The next FILE message ``c`` is shown in ``conv_id`` (membership events pass by)."""
    while True:
        ev = await c.next_event(timeout)
        if isinstance(ev, Message) and ev.conv_id == conv_id and ev.file is not None:
            return ev


async def sent_of(c: IMClient, msg_id: int, timeout: float = 10.0) -> int:
    """The id that got SENT for ``msg_id`` (itself, or the id a RESEALED names)."""
    while True:
        ev = await c.next_event(timeout)
        if isinstance(ev, Receipt) and ev.kind == "RESEALED" and ev.msg_id == msg_id:
            msg_id = ev.new_msg_id
        elif isinstance(ev, Receipt) and ev.kind == "SENT" and ev.msg_id == msg_id:
            return msg_id


async def refused(c: IMClient, msg: Message, dest: Path) -> bool:
    try:
        await c.download(msg, dest)
    except RestError as exc:
        assert exc.status == 404, exc
        return True
    return False


async def test_a_group_file_is_for_the_members_at_its_seq(stack: Stack, tmp_path: Path) -> None:
    alice, bob, carol, dave = await make_users(stack, "alice", "bob", "carol", "dave")
    try:
        made = await alice.rest.groups.create("team", ["bob", "carol"])
        gid, conv = made.group_id, made.conv_id
        await bob.rest.groups.join(gid, "bob")
        await carol.rest.groups.join(gid, "carol")
        first = os.urandom(70_000)
        (tmp_path / "plan.bin").write_bytes(first)
        mid = await alice.send_group_file(gid, tmp_path / "plan.bin")
        await sent_of(alice, mid)
        got = await file_in(bob, conv)
        assert (got.from_id, got.msg_type, got.text) == ("alice", im_pb2.FILE, "plan.bin")
        assert (await bob.download(got, tmp_path / "bob1")).read_bytes() == first
        seen = await file_in(carol, conv)
        assert (await carol.download(seen, tmp_path / "carol1")).read_bytes() == first
        assert await refused(dave, got, tmp_path / "dave1"), "not a member"

        await alice.rest.groups.invite(gid, "dave")
        await dave.rest.groups.join(gid, "dave")
        assert await refused(dave, got, tmp_path / "dave1"), "joined after the message"

        await alice.rest.groups.remove(gid, "carol")  # the key rotates: a re-seal may follow
        second = os.urandom(5_000)
        (tmp_path / "later.bin").write_bytes(second)
        mid2 = await alice.send_group_file(gid, tmp_path / "later.bin", name="later")
        await sent_of(alice, mid2)
        later = await file_in(bob, conv)
        assert later.text == "later"
        assert (await bob.download(later, tmp_path / "bob2")).read_bytes() == second
        shown = await file_in(dave, conv)
        assert (await dave.download(shown, tmp_path / "dave2")).read_bytes() == second
        assert await refused(carol, later, tmp_path / "carol2"), "removed before it"
        again = await carol.download(seen, tmp_path / "carol1-again")
        assert again.read_bytes() == first, "what a former member saw stays theirs"
    finally:
        for c in (alice, bob, carol, dave):
            await c.close()


async def test_a_group_file_of_someone_elses_upload_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        made = await alice.rest.groups.create("team", ["bob"])
        await bob.rest.groups.join(made.group_id, "bob")
        (tmp_path / "x").write_bytes(b"bob's")
        up = (await upload_file(bob.rest, tmp_path / "x")).ref  # bob's, named in alice's chat
        chat = im_pb2.ChatMsg(
            id=alice._ids(),
            from_id="alice",
            dest_id=made.group_id,
            dest_type=im_pb2.GROUP,
            msg_type=im_pb2.FILE,
            body=b"sealed",
            key_id=1,
            file=im_pb2.FileRef(id=up.file_id, size=up.size, checksum=up.checksum),
        )
        assert alice.link is not None
        await alice.link.send(im_pb2.Envelope(chat=chat))
        while True:
            ev = await alice.next_event(10)
            if not isinstance(ev, (Message, Presence, Typing)):
                break
        assert (getattr(ev, "code", ""), getattr(ev, "msg_id", 0)) == ("NO_SUCH_FILE", chat.id)
    finally:
        await alice.close()
        await bob.close()


async def test_group_grants_name_the_message_on_both_engines(db: Database) -> None:
    files = FileStore(db)
    await files.migrate()
    fid, sum_ = "F" * 22, "a" * 64
    await files.create(fid, "alice", 100, sum_)
    conv = "g:00aa11bb22cc33dd"
    recipient = group_recipient(conv, 2**64 - 1)
    assert parse_group_recipient(recipient) == (conv, 2**64 - 1)
    assert parse_group_recipient("bob") is None and parse_group_recipient("g:x#y") is None
    assert not await files.grant(fid, "mallory", 100, sum_, recipient), "not the owner's"
    assert await files.grant(fid, "alice", 100, sum_, recipient)
    assert await files.grant(fid, "alice", 100, sum_, group_recipient(conv, 7))
    assert await files.grant(fid, "alice", 100, sum_, "bob")
    assert sorted(await files.group_grants(fid)) == [(conv, 7), (conv, 2**64 - 1)]
    assert len(await files.group_grants(fid, limit=1)) == 1
    assert await files.readable(fid, recipient) is not None  # a row, not a user: harmless
    assert await files.readable(fid, "carol") is None, "a group grant names no user"
    assert await files.orphans(2**40) == [], "sent to a group: not an orphan"


async def test_who_may_download_is_read_from_the_spans_on_both_engines(db: Database) -> None:
    timeline = SQLTimelineStore(db)
    await timeline.migrate()
    groups = SQLGroupStore(db, timeline, max_size=10)
    await groups.migrate()
    files = FileStore(db)
    await files.migrate()
    gid = (await groups.create("alice", "team", ["bob", "carol"])).group_id
    conv = f"g:{gid}"
    for user in ("bob", "carol"):
        await groups.put_member(gid, user, user)
    key_id = 1

    async def post(msg_id: int, fid: str, sum_: str) -> str:
        """alice's FILE chat as the connector grants it and the writer commits it."""
        if await files.get(fid) is None:
            await files.create(fid, "alice", 10, sum_)
        assert await files.grant(fid, "alice", 10, sum_, group_recipient(conv, msg_id))
        chat = im_pb2.ChatMsg(
            id=msg_id,
            from_id="alice",
            dest_id=gid,
            dest_type=im_pb2.GROUP,
            msg_type=im_pb2.FILE,
            body=b"sealed",
            key_id=key_id,
            file=im_pb2.FileRef(id=fid, size=10, checksum=sum_),
        )
        (result,) = await timeline.append([new_message(chat)])
        return result.outcome

    async def who(fid: str) -> set[str]:
        users = ("alice", "bob", "carol", "dave", "erin")
        return {u for u in users if await readable(files, timeline, fid, u) is not None}

    f1, f2, f3, s = "A" * 22, "B" * 22, "C" * 22, "a" * 64
    assert await post(11, f1, s) == "committed"
    assert await who(f1) == {"alice", "bob", "carol"}, "the members at its seq"
    await groups.put_member(gid, "alice", "dave")
    await groups.put_member(gid, "dave", "dave")
    assert await who(f1) == {"alice", "bob", "carol"}, "dave joined after it"
    await groups.delete_member(gid, "alice", "carol")  # removed: key 2 from here
    assert await post(12, f2, s) == "stale_key", "refused at commit: no seq"
    assert await who(f2) == {"alice"}, "a refused chat lets nobody in"
    key_id = 2
    assert await post(13, f2, s) == "committed"  # its re-seal: a new id, granted again
    assert await who(f2) == {"alice", "bob", "dave"}, "carol was removed before it"
    assert await who(f1) == {"alice", "bob", "carol"}, "carol keeps what she saw"
    assert await post(14, f3, s) == "committed"
    assert await readable(files, None, f3, "bob") is None, "no timeline: owner only"
