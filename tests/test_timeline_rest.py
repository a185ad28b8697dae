"""History over REST and in the client library: GET /conversations and
GET /conversations/{conv_id}/messages, with messages appended through the store directly.
The client library is imported by its own tests only: the REST tests need none of it."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from common.config import Settings
from common.crypto import seal
from common.db import Database, open_database
from common.tokens import TokenSigner
from proto import im_pb2
from rest_web.app import create_app, serve
from rest_web.store import UserStore
from timeline.model import new_message, pair_conv_id
from timeline.store import MAX_PAGE, SQLTimelineStore

SECRET = "timeline-rest-secret-0123456789"
PASSWORD = "s3cret-passw0rd"
AB = "p:alice:bob"


def settings_for(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        secret=SECRET,
        connector_addrs="127.0.0.1:9",
        bind_host="127.0.0.1",
        **extra,  # type: ignore[arg-type]
    )


def sealed_chat(key: str, sender: str, dest: str, msg_id: int, text: str) -> im_pb2.ChatMsg:
    return im_pb2.ChatMsg(
        id=msg_id,
        from_id=sender,
        dest_id=dest,
        dest_type=im_pb2.SINGLE,
        msg_type=im_pb2.TEXT,
        body=seal(key, msg_id, sender, dest, text.encode()),
        create_time=1_700_000_000_000 + msg_id % 1000,
    )


@dataclass
class Api:
    http: httpx.AsyncClient
    timeline: SQLTimelineStore
    tokens: dict[str, dict[str, str]]
    key: str  # alice and bob's pair key
    sent: dict[int, im_pb2.ChatMsg] = field(default_factory=dict)

    async def say(self, sender: str, dest: str, msg_id: int, text: str = "") -> None:
        chat = self.sent[msg_id] = sealed_chat(self.key, sender, dest, msg_id, text or "hi")
        (result,) = await self.timeline.append([new_message(chat)])
        assert result.outcome == "committed"

    async def get(self, user: str, path: str, **params: int | str) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.tokens.get(user, {}))


async def _users(http: httpx.AsyncClient, *names: str) -> dict[str, dict[str, str]]:
    tokens: dict[str, dict[str, str]] = {}
    for name in names:
        r = await http.post("/users", json={"user_id": name, "password": PASSWORD})
        assert r.status_code == 201, r.text
        r = await http.post(
            "/login", json={"user_id": name, "password": PASSWORD, "device_id": f"{name}-phone"}
        )
        assert r.status_code == 200, r.text
        tokens[name] = {"Authorization": f"Bearer {r.json()['token']}"}
    return tokens


@pytest_asyncio.fixture
async def db() -> AsyncIterator[Database]:
    database = await open_database("sqlite://:memory:")
    yield database
    await database.close()


@pytest_asyncio.fixture
async def api(tmp_path: Path, db: Database) -> AsyncIterator[Api]:
    users = UserStore(db)
    await users.migrate()
    timeline = SQLTimelineStore(db)
    await timeline.migrate()
    app = create_app(settings_for(tmp_path), users, TokenSigner(SECRET.encode()), timeline=timeline)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        tokens = await _users(http, "alice", "bob", "carol")
        r = await http.put("/friends/bob", headers=tokens["alice"])  # a request (202)
        assert r.status_code == 202, r.text
        r = await http.put("/friends/alice", headers=tokens["bob"])  # accepted: the key
        yield Api(http, timeline, tokens, r.json()["key"])


# --- GET /conversations -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_conversations_list_last_message_unread_and_cursors(api: Api) -> None:
    r = await api.get("alice", "/conversations")
    assert r.status_code == 200 and r.json() == []
    await api.say("alice", "bob", 1)
    await api.say("bob", "alice", 2)
    await api.say("bob", "alice", (1 << 64) - 1, "last")
    await api.timeline.set_read(AB, "bob", 1)
    await api.timeline.set_delivered(AB, "bob", "bob-phone", 1)
    await api.timeline.set_delivered(AB, "alice", "alice-phone", 2)

    (conv,) = (await api.get("alice", "/conversations")).json()
    assert {k: v for k, v in conv.items() if k not in ("last_message", "changed")} == {
        "conv_id": AB,
        "type": "SINGLE",
        "peer_id": "bob",
        "last_seq": 3,
        "min_seq": 1,
        "unread": 2,
        "read_seq": 0,
        "delivered_seq": 2,  # this token's device, alice-phone
        "peer_read_seq": 1,
        "peer_delivered_seq": 1,
        "max_seq": 0,  # a pair has no membership spans
    }
    last = conv["last_message"]
    assert (last["seq"], last["id"], last["from_id"], last["dest_id"]) == (
        3,
        str((1 << 64) - 1),  # a uint64 as a decimal string: JSON numbers would round it
        "bob",
        "alice",
    )
    assert (last["msg_type"], last["dest_type"], last["file"]) == ("TEXT", "SINGLE", None)
    assert base64.b64decode(last["body"]) == api.sent[(1 << 64) - 1].body  # sealed, as sent
    bob = (await api.get("bob", "/conversations")).json()
    assert [(c["peer_id"], c["unread"], c["read_seq"]) for c in bob] == [("alice", 0, 1)]
    assert (await api.get("carol", "/conversations")).json() == []
    later = (await api.get("alice", "/conversations", since=conv["changed"] + 1)).json()
    assert later == []


@pytest.mark.asyncio
async def test_conversations_need_a_token_and_good_parameters(api: Api) -> None:
    assert (await api.get("nobody", "/conversations")).status_code == 401
    bad: list[dict[str, int | str]] = [{"limit": 0}, {"limit": 1001}, {"since": -1}, {"limit": "x"}]
    for params in bad:
        r = await api.get("alice", "/conversations", **params)
        assert r.status_code == 400, (params, r.text)
        assert isinstance(r.json()["detail"], str)


# --- GET /conversations/{conv_id}/messages ------------------------------------------------------


@pytest.mark.asyncio
async def test_messages_page_through_a_conversation(api: Api) -> None:
    for i in range(1, 121):
        await api.say("alice" if i % 3 else "bob", "bob" if i % 3 else "alice", i)
    path = f"/conversations/{AB}/messages"

    async def seqs(**params: int | str) -> list[int]:
        r = await api.get("bob", path, **params)
        assert r.status_code == 200, r.text
        return [m["seq"] for m in r.json()]

    assert await seqs() == list(range(71, 121))  # default: the newest 50
    assert await seqs(limit=3) == [118, 119, 120]
    assert await seqs(before=71, limit=5) == [66, 67, 68, 69, 70]
    assert await seqs(before=4) == [1, 2, 3]
    assert await seqs(after=0, limit=2) == [1, 2]  # forward from the start
    assert await seqs(after=10, limit=3) == [11, 12, 13]
    assert await seqs(after=10, before=13) == [11, 12]
    assert await seqs(after=120) == []
    assert len(await seqs(after=0, limit=MAX_PAGE)) == 120

    # every page back to the start, as a new device would read history
    got: list[int] = []
    before = 0
    while page := await seqs(limit=40, **({"before": before} if before else {})):
        got[:0] = page
        before = page[0]
    assert got == list(range(1, 121))

    (first,) = (await api.get("alice", path, before=2)).json()
    assert first == {
        "conv_id": AB,
        "seq": 1,
        "server_time": first["server_time"],
        "id": "1",
        "from_id": "alice",
        "dest_id": "bob",
        "dest_type": "SINGLE",
        "msg_type": "TEXT",
        "create_time": 1_700_000_000_001,
        "body": base64.b64encode(api.sent[1].body).decode(),
        "file": None,
        "key_id": 0,  # the pair key
        "system": None,
    }


@pytest.mark.asyncio
async def test_messages_of_another_users_conversation_are_not_found(api: Api) -> None:
    await api.say("alice", "bob", 1)
    path = f"/conversations/{AB}/messages"
    r = await api.get("carol", path)
    assert r.status_code == 404 and r.json() == {"detail": "no such conversation"}
    # the same answer as a conversation that has no messages or no such group
    assert (await api.get("carol", "/conversations/g:team/messages")).status_code == 404
    for other in ("p:bob:carol", "p:bob:alice", "p:alice:alice"):  # p:b:a, p:a:a: none such
        assert (await api.get("alice", f"/conversations/{other}/messages")).status_code == 404
    # a conversation of yours with nothing in it yet is simply empty
    assert (await api.get("carol", "/conversations/p:alice:carol/messages")).json() == []
    assert (await api.get("nobody", path)).status_code == 401


@pytest.mark.asyncio
async def test_messages_bad_parameters_are_400(api: Api) -> None:
    await api.say("alice", "bob", 1)
    good = f"/conversations/{AB}/messages"
    cases: list[tuple[str, dict[str, int | str]]] = [
        (good, {"limit": 0}),
        (good, {"limit": MAX_PAGE + 1}),
        (good, {"limit": "ten"}),
        (good, {"before": -1}),
        (good, {"after": -5}),
        (good, {"after": 1 << 63}),
        (good, {"before": "1.5"}),
        ("/conversations/alice/messages", {}),
        ("/conversations/p:alice:b%20b/messages", {}),
        (f"/conversations/p:alice:{'b' * 65}/messages", {}),
    ]
    for path, params in cases:
        r = await api.get("alice", path, **params)
        assert r.status_code == 400, (path, params, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]


@pytest.mark.asyncio
async def test_without_a_timeline_store_history_is_unavailable(
    tmp_path: Path, db: Database
) -> None:
    users = UserStore(db)
    await users.migrate()
    app = create_app(settings_for(tmp_path), users, TokenSigner(SECRET.encode()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:
        tokens = await _users(h, "alice")
        for path in ("/conversations", f"/conversations/{AB}/messages"):
            assert (await h.get(path, headers=tokens["alice"])).status_code == 503


# --- the client library, against a served REST process ------------------------------------------


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    """``rest_web.app.serve`` on SQLite in tmp_path (as `im rest` runs): its own timeline store,
    migrated with the other tables."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings_for(tmp_path, rest_port=port), stop))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(200):
            try:
                await c.get("/healthz")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    yield url
    stop.set()
    await asyncio.wait_for(task, 10)


@pytest.mark.asyncio
async def test_client_reads_conversations_and_history_opened(tmp_path: Path, served: str) -> None:
    from client.core import IMClient, Message, ServerError, befriend
    from client.rest import RestError

    alice = IMClient(served, "alice", PASSWORD)
    bob = IMClient(served, "bob", PASSWORD)
    carol = IMClient(served, "carol", PASSWORD)
    db = await open_database(f"sqlite:///{tmp_path / 'im.db'}")  # the REST process's database
    try:
        for c in (alice, bob, carol):
            assert await c.register()
            await c.login()
        key = await befriend(alice, bob)
        timeline = SQLTimelineStore(db)
        for i, (frm, to) in enumerate([("alice", "bob"), ("bob", "alice")] * 30, start=1):
            await timeline.append([new_message(sealed_chat(key, frm, to, i, f"message {i}"))])
        forged = sealed_chat("A" * 43, "bob", "alice", 99, "forged")  # sealed with another key
        await timeline.append([new_message(forged)])

        (conv,) = await alice.conversations()
        assert (conv.info.conv_id, conv.info.peer_id, conv.info.last_seq) == (AB, "bob", 61)
        assert conv.info.unread == 31
        assert isinstance(conv.last, ServerError) and conv.last.code == "UNREADABLE"
        assert conv.last.seq == 61

        newest = await bob.history("alice", limit=5)
        assert [e.seq for e in newest] == [57, 58, 59, 60, 61]
        assert isinstance(newest[0], Message)
        assert (newest[0].text, newest[0].from_id, newest[0].conv_id) == ("message 57", "alice", AB)
        assert newest[0].server_time > 0
        everything: list[Message | ServerError] = []
        after = 0
        while page := await alice.history(AB, after=after, limit=25):  # from the start
            everything.extend(page)
            after = page[-1].seq
        texts = [e.text for e in everything if isinstance(e, Message)]
        assert texts == [f"message {i}" for i in range(1, 61)]
        assert [e.msg_id for e in everything if isinstance(e, ServerError)] == [99]

        older = await alice.history("bob", before=3)
        assert [(e.seq, e.msg_id) for e in older] == [(1, 1), (2, 2)]
        with pytest.raises(RestError) as err:
            await carol.history(AB)
        assert err.value.status == 404
        with pytest.raises(RestError) as err:
            await alice.history(AB, limit=MAX_PAGE + 1)
        assert err.value.status == 400
        assert await carol.history("alice") == []
        assert await carol.conversations() == []
    finally:
        await db.close()
        for c in (alice, bob, carol):
            await c.close()


@pytest.mark.asyncio
async def test_rest_client_refuses_a_malformed_answer() -> None:
    from client.rest import RestClient, RestError

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/conversations":
            return httpx.Response(200, json=[{"conv_id": AB}])
        return httpx.Response(200, json=[{"conv_id": AB, "seq": 1, "body": "not base64!"}])

    rest = RestClient("http://t")
    rest._http = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://t")
    try:
        with pytest.raises(RestError, match="malformed"):
            await rest.conversations()
        with pytest.raises(RestError, match="malformed"):
            await rest.messages(pair_conv_id("bob", "alice"))
    finally:
        await rest.close()
