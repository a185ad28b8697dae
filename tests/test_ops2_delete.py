"""Deleting an account through the admin API, on ``im up`` with real chats: the messages it sent
stay in their timelines at their seqs (sync stays gap-free), from a deleted user, with their body
(``anonymize``) or as a server SYSTEM tombstone with none (``delete``); its cursors go; and a new
account of the same id is the author of none of them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from rawdevice import RawDevice, until
from test_e2e import PW, make_users, rest_url, stack_settings
from test_groups_wire import Groups

from cli.stack import Stack
from common.convid import pair_conv_id
from proto import im_pb2
from rest_web.admin_store import DELETED_USER

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("mode", ["anonymize", "delete"])
async def test_a_deleted_accounts_messages_stay_at_their_seqs(tmp_path: Path, mode: str) -> None:
    st = Stack(stack_settings(tmp_path, admins="root", delete_messages=mode))
    await st.start()
    try:
        await make_users(st, "alice", "bob", connect=False)
        alice = await RawDevice("alice", "phone").connect(st)
        bob = await RawDevice("bob", "pc").connect(st)
        conv = pair_conv_id("alice", "bob")
        sent = [await bob.send_chat("alice", b"sealed one"), await bob.send_chat("alice", b"two")]
        mine = await alice.send_chat("bob", b"from alice")
        await until(lambda: all(bob.sent(i) for i in sent) and alice.sent(mine))
        await bob.send_cursor(conv, im_pb2.READ, 3)
        await until(lambda: alice.cursors)
        async with httpx.AsyncClient(base_url=rest_url(st), timeout=10) as http:
            await http.post("/users", json={"user_id": "root", "password": PW})
            r = await http.post("/login", json={"user_id": "root", "password": PW})
            root = {"Authorization": f"Bearer {r.json()['token']}"}
            r = await http.delete("/admin/users/bob", headers=root)
            assert r.status_code == 200, r.text
            done = "anonymized (kept, from a deleted user)" if mode == "anonymize" else "deleted"
            assert r.json()["messages"] == f"2 {done}"
            await until(lambda: bob.closed.is_set())
            # the id is free again: the new account is the author of nothing old
            r = await http.post("/users", json={"user_id": "bob", "password": PW})
            assert r.status_code == 201, r.text
        assert st.db is not None
        left = await st.db.fetchone("SELECT COUNT(*) FROM im_tl_message WHERE sender = ?", ("bob",))
        assert left is not None and left[0] == 0
        rows = await st.db.fetchone("SELECT COUNT(*) FROM im_tl_member WHERE user_id = ?", ("bob",))
        assert rows is not None and rows[0] == 0  # its cursors went

        alice.clear()
        await alice.send_sync(conv, 1)
        await until(lambda: alice.sync_dones)
        chats = alice.chats
        assert [c.seq for c in chats] == [1, 2, 3]  # gap-free: every seq still answers
        assert chats[2].from_id == "alice" and chats[2].body == b"from alice"
        for c, msg_id in zip(chats[:2], sent, strict=True):
            assert (c.from_id, c.id, c.conv_id) == (DELETED_USER, msg_id, conv)
            if mode == "anonymize":
                assert c.msg_type == im_pb2.TEXT and c.body in (b"sealed one", b"two")
            else:
                assert c.msg_type == im_pb2.SYSTEM
                body = im_pb2.SystemBody.FromString(c.body)
                assert body.event == im_pb2.SystemBody.WITHHELD
                assert b"sealed" not in c.body and b"two" not in c.body
        await alice.close()
    finally:
        await st.stop()


async def test_a_new_account_of_a_deleted_id_inherits_no_group(tmp_path: Path) -> None:
    """Bob owns one group and is a member of another when his account is deleted: he leaves
    both as a user would (ownership goes to the other admin first, the key turns), and the
    account registered next under "bob" is in no group, holds no key and reads no history."""

    st = Stack(stack_settings(tmp_path, admins="root"))
    await st.start()
    groups = Groups(rest_url(st))
    try:
        await make_users(st, "alice", "bob", "carol", connect=False)
        alice, bob, carol = [await RawDevice(u, "d").connect(st) for u in ("alice", "bob", "carol")]
        owned = await groups.create(bob, alice, carol)
        r = await groups.call(
            bob, "PUT", f"/groups/{owned}/members/carol/role", json={"role": "admin"}
        )
        assert r.status_code == 200, r.text
        joined = await groups.create(alice, bob)
        async with httpx.AsyncClient(base_url=rest_url(st), timeout=10) as http:
            await http.post("/users", json={"user_id": "root", "password": PW})
            r = await http.post("/login", json={"user_id": "root", "password": PW})
            root = {"Authorization": f"Bearer {r.json()['token']}"}
            r = await http.delete("/admin/users/bob", headers=root)
            assert r.status_code == 200, r.text
            r = await http.post("/users", json={"user_id": "bob", "password": PW})
            assert r.status_code == 201, r.text
        r = await groups.call(carol, "GET", f"/groups/{owned}")
        assert r.status_code == 200, r.text
        roles = {m["user_id"]: m["role"] for m in r.json()["members"]}
        assert roles == {"carol": "owner", "alice": "member"}, roles
        newbob = await RawDevice("bob", "d2").connect(st)
        r = await groups.call(newbob, "GET", "/groups")
        assert (r.status_code, r.json()) == (200, []), r.text
        for gid in (owned, joined):
            r = await groups.call(newbob, "GET", f"/groups/{gid}/keys")
            assert r.status_code == 404, r.text
            r = await groups.call(newbob, "GET", f"/conversations/g:{gid}/messages")
            assert r.status_code in (403, 404), r.text
        assert st.db is not None
        spans = await st.db.fetchone("SELECT COUNT(*) FROM im_tl_span WHERE user_id = ?", ("bob",))
        assert spans is not None and spans[0] == 0
        for dev in (alice, carol, newbob):
            await dev.close()
    finally:
        await groups.close()
        await st.stop()
