"""A sender's order in a group across a key rotation, on the ``im up`` stack: chats sealed with
the old key still on the wire when a member is removed are refused STALE_KEY and sealed again,
and the chats the device made after them with the new key must not commit ahead of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import poll_until
from test_e2e import make_users, stack_settings

from cli.stack import Stack
from client import Message
from client.groupkeys import GroupKeyRing

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path / "server"))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


class Unaware(GroupKeyRing):
    """A device that has not heard of a rotation yet: KEY_ROTATED events pass it by until
    ``hear`` (a STALE_KEY refusal, key_id 0, still marks the keys stale)."""

    deaf = True

    def rotated(self, group_id: str, key_id: int) -> None:
        if key_id == 0 or not self.deaf:
            super().rotated(group_id, key_id)


async def test_chats_across_a_rotation_commit_in_the_order_they_were_made(stack: Stack) -> None:
    alice, bob, carol = await make_users(stack, "alice", "bob", "carol")
    try:
        ring = Unaware(lambda gid: alice.rest.groups.keys(gid))
        alice.group_keys = ring
        made = await alice.rest.groups.create("team", ["bob", "carol"])
        gid, conv = made.group_id, made.conv_id
        await bob.rest.groups.join(gid, "bob")
        await carol.rest.groups.join(gid, "carol")
        texts = ["m0"]
        await alice.send_group_text(gid, "m0")  # key 1 fetched and cached
        await alice.rest.groups.remove(gid, "carol")  # key 2 from here
        for text in ("m1", "m2", "m3"):  # still sealed with key 1: refused
            await alice.send_group_text(gid, text)
            texts.append(text)
        ring.deaf = False
        ring.rotated(gid, 2)  # the KEY_ROTATED push arrives now
        for text in ("m4", "m5"):  # sealed with key 2
            await alice.send_group_text(gid, text)
            texts.append(text)
        assert sorted(ring.held(gid)) == [1, 2]
        assert await poll_until(lambda: not alice.pending, 20), f"{alice.pending} unsent"
        page = await bob.history(conv, after=0)
        committed = [m for m in page if isinstance(m, Message) and m.system is None]
        assert [m.text for m in committed] == texts
        ids = [m.msg_id for m in committed]
        assert ids == sorted(ids), "ids grow with the seq (I3)"
    finally:
        for c in (alice, bob, carol):
            await c.close()
