"""IMClient's group calls against the real REST app and timeline store (no connector: the
wire is the other half of step 2): chats sealed by the library with the group key it fetched
open in a member's history by ``key_id`` across a rotation, SYSTEM messages come back as
membership events, a leaver's history stops at their leaving, and read-by is the server's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from test_groups_rest import PASSWORD, _app

from client.bodies import text_chat
from client.core import IMClient
from client.events import Message
from common.db import open_database
from timeline.model import new_message
from timeline.store import SQLTimelineStore

pytestmark = pytest.mark.asyncio


class World:
    def __init__(self, http: httpx.AsyncClient, timeline: SQLTimelineStore) -> None:
        self.http = http
        self.timeline = timeline
        self.clients: dict[str, IMClient] = {}

    async def client(self, name: str) -> IMClient:
        r = await self.http.post("/users", json={"user_id": name, "password": PASSWORD})
        assert r.status_code == 201, r.text
        c = IMClient("http://t", name, PASSWORD, reconnect=False)
        await c.rest._http.aclose()
        c.rest._http = self.http  # the app in process, through its ASGI transport
        await c.login()
        self.clients[name] = c
        return c

    async def post(self, c: IMClient, gid: str, msg_id: int, text: str) -> str:
        """A chat the library sealed with its current key, appended as the writer would."""
        key_id, key = await c.group_keys.current(gid)
        chat = text_chat(key, msg_id, c.user_id, gid, text, group_key_id=key_id)
        chat.conv_id = f"g:{gid}"
        (result,) = await self.timeline.append([new_message(chat)])
        return result.outcome


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = await open_database("sqlite://:memory:")
    http = await _app(tmp_path, db)
    async with http:
        yield World(http, SQLTimelineStore(db))
    await db.close()


def shown(items: Sequence[object]) -> list[str]:
    return [i.text if isinstance(i, Message) else f"! {i}" for i in items]


async def test_group_history_opens_by_key_id_across_a_rotation(world: World) -> None:
    alice, bob, carol = [await world.client(n) for n in ("alice", "bob", "carol")]
    made = await alice.rest.groups.create("team", ["bob", "carol"])
    gid, conv = made.group_id, made.conv_id
    await bob.rest.groups.join(gid, "bob")
    await carol.rest.groups.join(gid, "carol")
    assert await world.post(alice, gid, 11, "hello") == "committed"
    assert await world.post(carol, gid, 12, "from carol") == "committed"
    await carol.rest.groups.remove(gid, "carol")  # leaves: key 2 from here
    assert await world.post(alice, gid, 13, "stale") == "stale_key", "alice's cached key 1"
    alice.group_keys.rotated(gid, 0)  # what a STALE_KEY refusal does
    assert await world.post(alice, gid, 14, "after") == "committed"

    bob_sees = await bob.history(conv, after=0)
    assert shown(bob_sees) == [
        "bob joined",
        "carol joined",
        "hello",
        "from carol",
        "carol left",
        "the group key changed",
        "after",
    ]
    first = bob_sees[0]
    assert isinstance(first, Message) and first.system is not None
    assert (first.system.event, first.system.target, first.from_id) == ("JOINED", "bob", f"#{gid}")
    assert sorted(bob.group_keys.held(gid)) == [1, 2]

    carol_sees = await carol.history(conv, after=0)
    assert shown(carol_sees) == ["carol joined", "hello", "from carol", "carol left"]
    assert sorted(carol.group_keys.held(gid)) == [1], "a leaver gets no key sealed after"

    (listed,) = [x for x in await bob.conversations() if x.info.conv_id == conv]
    assert isinstance(listed.last, Message) and listed.last.text == "after"


async def test_read_by_is_the_servers_count_over_the_members_at_the_seq(world: World) -> None:
    alice, bob, carol = [await world.client(n) for n in ("alice", "bob", "carol")]
    made = await alice.rest.groups.create("team", ["bob", "carol"])
    gid, conv = made.group_id, made.conv_id
    await bob.rest.groups.join(gid, "bob")
    await carol.rest.groups.join(gid, "carol")
    assert await world.post(alice, gid, 21, "read me") == "committed"
    seq = max(m.seq for m in await alice.history(conv, after=0))
    await world.timeline.set_read(conv, "bob", seq)
    got = await alice.read_by(gid, seq)
    assert (got.members, got.read, got.read_by) == (2, 1, ["bob"])
