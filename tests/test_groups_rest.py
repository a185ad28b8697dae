"""/groups over REST: every role boundary, invitations by consent, history clipped to the
reader's membership, keys, read-by, hostile input, and the webhooks a change emits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from webhook_receiver import Receiver

from common.config import Settings
from common.db import Database, open_database
from common.tokens import TokenSigner
from groups.store import SQLGroupStore
from hooks import Webhooks
from proto import im_pb2
from rest_web.app import create_app
from rest_web.store import UserStore
from timeline.model import new_message
from timeline.store import SQLTimelineStore

SECRET = "groups-rest-secret-0123456789"
PASSWORD = "s3cret-passw0rd"
USERS = ("alice", "bob", "carol", "dave", "erin")


@dataclass
class Api:
    http: httpx.AsyncClient
    timeline: SQLTimelineStore
    tokens: dict[str, dict[str, str]]

    async def call(self, user: str, method: str, path: str, **kw: object) -> httpx.Response:
        return await self.http.request(method, path, headers=self.tokens[user], **kw)  # type: ignore[arg-type]

    async def group(self, owner: str = "alice", members: tuple[str, ...] = ("bob",)) -> str:
        r = await self.call(owner, "POST", "/groups", json={"name": "team", "members": members})
        assert r.status_code == 201, r.text
        gid = str(r.json()["group_id"])
        for user in members:
            r = await self.call(user, "PUT", f"/groups/{gid}/members/{user}")
            assert (r.status_code, r.json()["state"]) == (200, "member"), r.text
        return gid

    async def post(self, sender: str, gid: str, msg_id: int, key_id: int = 1) -> str:
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
        (result,) = await self.timeline.append([new_message(chat)])
        return result.outcome

    async def seqs(self, user: str, gid: str) -> list[int]:
        r = await self.call(user, "GET", f"/conversations/g:{gid}/messages", params={"after": 0})
        assert r.status_code == 200, r.text
        return [m["seq"] for m in r.json()]


async def _app(tmp_path: Path, db: Database, hooks: Webhooks | None = None) -> httpx.AsyncClient:
    users = UserStore(db)
    await users.migrate()
    timeline = SQLTimelineStore(db)
    await timeline.migrate()
    groups = SQLGroupStore(db, timeline, max_size=6)
    await groups.migrate()
    settings = Settings(data_dir=tmp_path, secret=SECRET, connector_addrs="127.0.0.1:9")
    app = create_app(
        settings, users, TokenSigner(SECRET.encode()), timeline=timeline, groups=groups, hooks=hooks
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _login(http: httpx.AsyncClient) -> dict[str, dict[str, str]]:
    tokens: dict[str, dict[str, str]] = {}
    for name in USERS:
        r = await http.post("/users", json={"user_id": name, "password": PASSWORD})
        assert r.status_code == 201, r.text
        r = await http.post("/login", json={"user_id": name, "password": PASSWORD})
        tokens[name] = {"Authorization": f"Bearer {r.json()['token']}"}
    return tokens


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    db = await open_database("sqlite://:memory:")
    http = await _app(tmp_path, db)
    async with http:
        yield Api(http, SQLTimelineStore(db), await _login(http))
    await db.close()


@pytest.mark.asyncio
async def test_create_invite_accept(api: Api) -> None:
    r = await api.call("alice", "POST", "/groups", json={"name": "team", "members": ["Bob"]})
    assert r.status_code == 201
    body = r.json()
    gid = body["group_id"]
    assert body["conv_id"] == f"g:{gid}" and body["owner"] == "alice" and body["size"] == 2
    assert [(m["user_id"], m["role"], m["state"]) for m in body["members"]] == [
        ("alice", "owner", "member"),
        ("bob", "member", "invited"),  # ids are canonical: Bob is bob
    ]
    (mine,) = (await api.call("bob", "GET", "/groups")).json()
    assert (mine["group_id"], mine["state"]) == (gid, "invited")
    # an invitee who has not accepted sees nothing of the group
    assert (await api.call("bob", "GET", f"/groups/{gid}")).status_code == 404
    r = await api.call("bob", "GET", f"/conversations/g:{gid}/messages")
    assert r.status_code == 404
    assert (await api.call("bob", "GET", f"/groups/{gid}/keys")).status_code == 404
    assert await api.post("bob", gid, 1) == "not_member"
    r = await api.call("bob", "PUT", f"/groups/{gid}/members/bob")
    assert (r.status_code, r.json()["state"]) == (200, "member")
    r = await api.call("alice", "PUT", f"/groups/{gid}/members/carol")
    assert (r.status_code, r.json()["state"]) == (202, "invited")
    r = await api.call("carol", "PUT", f"/groups/{gid}/members/dave")  # not in it: nothing
    assert r.status_code == 404
    r = await api.call("dave", "PUT", f"/groups/{gid}/members/dave")  # not invited
    assert r.status_code == 404
    convs = (await api.call("bob", "GET", "/conversations")).json()
    assert [(c["conv_id"], c["type"], c["peer_id"]) for c in convs] == [(f"g:{gid}", "GROUP", gid)]


@pytest.mark.asyncio
async def test_role_boundaries(api: Api) -> None:
    gid = await api.group(members=("bob", "carol", "dave"))
    members = f"/groups/{gid}/members"
    # a member who is no admin can't remove, invite, mute, rename, set roles or dissolve
    for method, path, body in (
        ("DELETE", f"{members}/carol", None),
        ("DELETE", f"{members}/alice", None),
        ("PUT", f"{members}/erin", None),
        ("PUT", f"{members}/carol/mute", {"until": 2**40}),
        ("PUT", f"/groups/{gid}/name", {"name": "mine"}),
        ("PUT", f"{members}/carol/role", {"role": "admin"}),
        ("PUT", f"/groups/{gid}/owner", {"user_id": "bob"}),
        ("DELETE", f"/groups/{gid}", None),
    ):
        r = await api.call("bob", method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
    # a stranger gets 404 for all of it, and for reading
    for method, path in (("DELETE", f"{members}/carol"), ("GET", f"/groups/{gid}")):
        assert (await api.call("erin", method, path)).status_code == 404
    r = await api.call("alice", "PUT", f"{members}/bob/role", json={"role": "admin"})
    assert (r.status_code, r.json()["role"]) == (200, "admin")
    # an admin removes a member, not another admin nor the owner; sets no roles
    r = await api.call("alice", "PUT", f"{members}/carol/role", json={"role": "admin"})
    assert r.status_code == 200
    assert (await api.call("bob", "DELETE", f"{members}/carol")).status_code == 403
    assert (await api.call("bob", "DELETE", f"{members}/alice")).status_code == 409
    r = await api.call("bob", "PUT", f"{members}/dave/role", json={"role": "admin"})
    assert r.status_code == 403
    assert (await api.call("bob", "DELETE", f"{members}/dave")).status_code == 204
    # the owner removes admins; cannot leave before handing over
    assert (await api.call("alice", "DELETE", f"{members}/carol")).status_code == 204
    assert (await api.call("alice", "DELETE", f"{members}/alice")).status_code == 409
    r = await api.call("alice", "PUT", f"/groups/{gid}/owner", json={"user_id": "bob"})
    assert (r.status_code, r.json()["role"]) == (200, "owner")
    assert (await api.call("alice", "DELETE", f"{members}/alice")).status_code == 204
    view = (await api.call("bob", "GET", f"/groups/{gid}")).json()
    assert view["owner"] == "bob" and [m["user_id"] for m in view["members"]] == ["bob"]
    # a former member reads neither the member list nor posts
    assert (await api.call("alice", "GET", f"/groups/{gid}")).status_code == 404
    assert await api.post("alice", gid, 9, key_id=5) == "not_member"


@pytest.mark.asyncio
async def test_history_from_join_and_until_removal(api: Api) -> None:
    gid = await api.group(members=("bob",))  # CREATED 1, JOINED 2
    assert await api.post("alice", gid, 1) == "committed"  # 3
    await api.call("alice", "PUT", f"/groups/{gid}/members/carol")
    await api.call("carol", "PUT", f"/groups/{gid}/members/carol")  # JOINED 4
    assert await api.post("bob", gid, 2) == "committed"  # 5
    assert await api.seqs("carol", gid) == [4, 5]
    assert (await api.call("alice", "DELETE", f"/groups/{gid}/members/carol")).status_code == 204
    assert await api.post("alice", gid, 3, key_id=2) == "committed"  # 8
    assert await api.seqs("carol", gid) == [4, 5, 6]  # up to and with her removal
    assert await api.seqs("alice", gid) == [1, 2, 3, 4, 5, 6, 7, 8]
    r = await api.call("carol", "GET", f"/conversations/g:{gid}/messages")  # newest page
    assert [m["seq"] for m in r.json()] == [4, 5, 6]
    removal = r.json()[-1]
    assert removal["msg_type"] == "SYSTEM" and removal["from_id"] == ""
    assert removal["system"]["event"] == "REMOVED" and removal["system"]["target"] == "carol"
    (conv,) = (await api.call("carol", "GET", "/conversations")).json()
    assert (conv["last_seq"], conv["max_seq"], conv["last_message"]["seq"]) == (6, 6, 6)
    # keys: carol has only the first; the one made at her removal is alice's and bob's
    carol_keys = (await api.call("carol", "GET", f"/groups/{gid}/keys")).json()
    assert [(k["key_id"], k["from_seq"], k["to_seq"]) for k in carol_keys] == [(1, 1, 6)]
    keys = (await api.call("bob", "GET", f"/groups/{gid}/keys")).json()
    assert [(k["key_id"], k["from_seq"], k["to_seq"]) for k in keys] == [(1, 1, 6), (2, 7, 0)]


@pytest.mark.asyncio
async def test_read_by_receipts(api: Api) -> None:
    gid = await api.group(members=("bob", "carol", "dave"))
    assert await api.post("alice", gid, 1) == "committed"  # seq 5
    conv = f"g:{gid}"
    await api.timeline.set_read(conv, "bob", 5)
    await api.timeline.set_delivered(conv, "carol", "c1", 5)
    r = await api.call("alice", "GET", f"/groups/{gid}/messages/5/receipts")
    assert r.status_code == 200
    assert r.json() == {
        "seq": 5,
        "members": 3,
        "read": 1,
        "delivered": 1,
        "read_by": ["bob"],
        "delivered_to": ["carol"],
    }
    r = await api.call("erin", "GET", f"/groups/{gid}/messages/5/receipts")
    assert r.status_code == 404
    r = await api.call("alice", "GET", f"/groups/{gid}/messages/99/receipts")
    assert r.status_code == 404


@pytest.mark.asyncio
async def test_mute_rename_dissolve(api: Api) -> None:
    gid = await api.group(members=("bob",))
    r = await api.call("alice", "PUT", f"/groups/{gid}/members/bob/mute", json={"until": 2**50})
    assert (r.status_code, r.json()["muted_until"]) == (200, 2**50)
    assert await api.post("bob", gid, 1) == "muted"
    r = await api.call("alice", "PUT", f"/groups/{gid}/members/bob/mute", json={"until": 0})
    assert await api.post("bob", gid, 2) == "committed"
    assert (await api.call("alice", "PUT", f"/groups/{gid}/name", json={"name": "new"})).is_success
    assert (await api.call("bob", "GET", f"/groups/{gid}")).json()["name"] == "new"
    assert (await api.call("alice", "DELETE", f"/groups/{gid}")).status_code == 204
    assert await api.post("bob", gid, 3) == "closed"
    assert (await api.call("alice", "PUT", f"/groups/{gid}/members/carol")).status_code == 409
    assert (await api.call("bob", "DELETE", f"/groups/{gid}/members/bob")).status_code == 409
    view = (await api.call("bob", "GET", f"/groups/{gid}")).json()
    assert view["dissolved"] > 0
    events = [
        m.get("system")
        for m in (await api.call("bob", "GET", f"/conversations/g:{gid}/messages")).json()
    ]
    assert [e["event"] for e in events if e] == [
        "JOINED",
        "MUTED",
        "MUTED",
        "RENAMED",
        "DISSOLVED",
    ]  # bob: from his join


@pytest.mark.asyncio
async def test_hostile_input_is_4xx(api: Api) -> None:
    gid = await api.group(members=("bob",))
    long_id = "x" * 65
    for method, path, body in (
        ("POST", "/groups", {"name": "n" * 129}),
        ("POST", "/groups", {"name": ""}),
        ("POST", "/groups", {"name": "   "}),
        ("POST", "/groups", {"name": "a\x00b"}),
        ("POST", "/groups", {"name": "ok", "members": ["bad id!"]}),
        ("POST", "/groups", {"name": "ok", "members": ["u"] * 501}),
        ("POST", "/groups", {"name": "ok", "members": "bob"}),
        ("POST", "/groups", {"name": 5}),
        ("POST", "/groups", {"members": []}),
        ("GET", f"/groups/{long_id}", None),
        ("GET", "/groups/bad%20id", None),
        ("PUT", f"/groups/{gid}/members/{long_id}", None),
        ("PUT", f"/groups/{gid}/members/bob/role", {"role": "owner "}),
        ("PUT", f"/groups/{gid}/members/bob/role", {"role": "god"}),
        ("PUT", f"/groups/{gid}/members/bob/mute", {"until": -1}),
        ("PUT", f"/groups/{gid}/members/bob/mute", {"until": 2**53}),
        ("PUT", f"/groups/{gid}/name", {"name": "x" * 200}),
        ("PUT", f"/groups/{gid}/owner", {"user_id": ""}),
        ("GET", f"/groups/{gid}/messages/0/receipts", None),
        ("GET", f"/groups/{gid}/messages/-1/receipts", None),
        ("GET", f"/groups/{gid}/messages/{2**64}/receipts", None),
        ("GET", f"/groups/{gid}?limit=0", None),
        ("GET", "/groups/nosuchgroup", None),
        ("DELETE", "/groups/nosuchgroup", None),
    ):
        r = await api.call("alice", method, path, json=body)
        assert 400 <= r.status_code < 500, (method, path, body, r.status_code)
    r = await api.call(
        "alice", "POST", "/groups", json={"name": "ok", "members": [f"u{i}" for i in range(6)]}
    )
    assert r.status_code == 409  # past IM_GROUP_MAX_SIZE (6 here) with the owner


@pytest.mark.asyncio
async def test_changes_emit_webhooks(tmp_path: Path) -> None:
    receiver = await Receiver(secret=SECRET).start()
    hooks = Webhooks(
        receiver.url, SECRET, node="test/node", timeout=2.0, retries=3, backoff_base=0.05
    )
    await hooks.start()
    db = await open_database("sqlite://:memory:")
    try:
        async with await _app(tmp_path, db, hooks) as http:
            api = Api(http, SQLTimelineStore(db), await _login(http))
            gid = await api.group(members=("bob",))
            await api.call(
                "alice", "PUT", f"/groups/{gid}/members/bob/role", json={"role": "admin"}
            )
            await api.call("bob", "DELETE", f"/groups/{gid}/members/bob")
            await receiver.wait_for(len(USERS) + 4)
            await asyncio.sleep(0.2)
    finally:
        await hooks.close()
        await receiver.stop()
        await db.close()
    got = [
        (r.json()["type"], r.json()["data"])
        for r in receiver.requests
        if str(r.json()["type"]).startswith("group.")
    ]
    assert got == [
        ("group.created", {"group_id": gid, "user_id": "alice", "by": "alice", "role": "owner"}),
        (
            "group.member_added",
            {"group_id": gid, "user_id": "bob", "by": "alice", "role": "member"},
        ),
        (
            "group.member_role_changed",
            {"group_id": gid, "user_id": "bob", "by": "alice", "role": "admin"},
        ),
        ("group.member_removed", {"group_id": gid, "user_id": "bob", "by": "bob", "role": "admin"}),
    ]


@pytest.mark.asyncio
async def test_client_library_against_a_served_rest(tmp_path: Path) -> None:
    """``rest_web.app.serve`` as `im rest` runs it (the group store wired and migrated there),
    driven through client/groups.py."""
    from client.rest import RestClient, RestError
    from rest_web.app import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = Settings(
        data_dir=tmp_path,
        secret=SECRET,
        connector_addrs="127.0.0.1:9",
        bind_host="127.0.0.1",
        rest_port=port,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    url = f"http://127.0.0.1:{port}"
    clients = {name: RestClient(url) for name in ("alice", "bob")}
    try:
        for _ in range(200):
            try:
                await clients["alice"].register("alice", PASSWORD)
                break
            except RestError:
                await asyncio.sleep(0.05)
        await clients["bob"].register("bob", PASSWORD)
        for name, c in clients.items():
            await c.login(name, PASSWORD)
        alice, bob = clients["alice"].groups, clients["bob"].groups
        made = await alice.create("team", ["bob"])
        gid = made.group_id
        assert [(m.user_id, m.state) for m in made.members] == [
            ("alice", "member"),
            ("bob", "invited"),
        ]
        assert [(g.group_id, g.state) for g in await bob.mine()] == [(gid, "invited")]
        with pytest.raises(RestError) as info:
            await bob.get(gid)
        assert info.value.status == 404
        await bob.join(gid, "bob")
        await alice.set_role(gid, "bob", "admin")
        await alice.mute(gid, "bob", 0)
        await bob.rename(gid, "renamed")
        assert (await bob.get(gid)).name == "renamed"
        await alice.transfer(gid, "bob")
        await alice.remove(gid, "alice")  # leaves: a new key
        keys = await bob.keys(gid)
        assert [k.key_id for k in keys] == [1, 2] and keys[-1].to_seq == 0
        assert [k.key_id for k in await alice.keys(gid)] == [1]
        with pytest.raises(RestError):  # seq 1 was before bob joined: not his to ask about
            await bob.receipts(gid, 1)
        receipts = await bob.receipts(gid, 2)  # bob's JOINED: alice was a member then too
        assert (receipts.members, receipts.read_by) == (2, ["bob"])
        await bob.dissolve(gid)
        assert (await bob.get(gid)).dissolved > 0
    finally:
        for c in clients.values():
            await c.close()
        stop.set()
        await asyncio.wait_for(task, 10)
