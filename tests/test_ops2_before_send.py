"""``message.before_send`` on ``im up`` with a real HTTP hook: an allowed chat goes on, a refused
one is answered REFUSED and nothing is committed, a hook that is slow, down or failing lets chat
through (open) or refuses it (closed), a sender's chats keep their order while they wait for the
hook and other senders are not held up; without a URL the connector has no hook at all; and the
lines logged about a chat while it is checked carry its sender and id."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from rawdevice import RawDevice, until
from test_e2e import make_users, rest_url, stack_settings
from test_groups_wire import Groups, group_chat
from test_ops2_metrics import value
from webhook_receiver import Receiver, Request

from cli.stack import Stack
from common.log import current_context
from proto import im_pb2

pytestmark = pytest.mark.asyncio


def data(r: Request) -> dict[str, Any]:
    """The event's ``data`` object."""
    d = r.json()["data"]
    assert isinstance(d, dict)
    return d


SECRET = "hook-secret-0123456789"
ALLOW = b'{"allow": true}'


@pytest_asyncio.fixture
async def hook() -> AsyncIterator[Receiver]:
    r = await Receiver(secret=SECRET, answer=ALLOW).start()
    try:
        yield r
    finally:
        await r.stop()


async def stack_with(tmp_path: Path, url: str, fail: str = "open", timeout: float = 1.0) -> Stack:
    settings = stack_settings(
        tmp_path,
        webhook_secret=SECRET,
        webhook_before_send_url=url,
        webhook_before_send_fail=fail,
        webhook_before_send_timeout=timeout,
    )
    st = Stack(settings)
    await st.start()
    await make_users(st, "alice", "bob", "carol", connect=False)
    return st


async def answered(dev: RawDevice, msg_id: int, timeout: float = 5.0) -> str:
    """SENT, or the ERROR code a chat got."""

    def answer() -> str:
        if dev.sent(msg_id):
            return "SENT"
        for e in dev.errors:
            if e.ref_msg_id == msg_id:
                return im_pb2.ErrorCode.Name(e.code)
        return ""

    await until(answer, timeout)
    return answer()


async def test_no_url_means_no_hook(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    try:
        assert st.connector is not None and st.connector.before_send is None
    finally:
        await st.stop()


async def test_allowed_goes_on_and_refused_is_answered_refused_with_nothing_committed(
    tmp_path: Path, hook: Receiver
) -> None:
    st = await stack_with(tmp_path, hook.url)
    try:
        alice = await RawDevice("alice", "phone").connect(st)
        bob = await RawDevice("bob", "pc").connect(st)
        hook.answer = b'{"allow": false, "reason": "no spam here"}'
        refused = value("im_messages_total", kind="text", outcome="refused")
        no = await alice.send_chat("bob", b"buy now")
        assert await answered(alice, no) == "REFUSED"
        (err,) = alice.errors
        assert "no spam here" in err.detail
        assert value("im_messages_total", kind="text", outcome="refused") == refused + 1
        (req,) = hook.requests
        assert req.signed_ok and req.headers["x-im-event"] == "message.before_send"
        body = req.json()
        assert body["type"] == "message.before_send"
        data = body["data"]
        assert isinstance(data, dict) and data["msg_id"] == str(no) and data["to_id"] == "bob"
        assert b"buy now" not in req.body
        hook.answer = ALLOW
        yes = await alice.send_chat("bob", b"hello")
        assert await answered(alice, yes) == "SENT"
        # the refused chat took no seq: the allowed one is the conversation's first
        assert alice.sent(yes)[0].seq == 1
        await until(lambda: bob.chats)
        assert [c.id for c in bob.chats] == [yes]
        for dev in (alice, bob):
            await dev.close()
    finally:
        await st.stop()


@pytest.mark.parametrize("trouble", ["timeout", "down", "500", "not json"])
@pytest.mark.parametrize("fail", ["open", "closed"])
async def test_a_hook_without_an_answer_fails_open_or_closed(
    tmp_path: Path, hook: Receiver, fail: str, trouble: str
) -> None:
    st = await stack_with(tmp_path, hook.url, fail=fail, timeout=0.5)
    try:
        alice = await RawDevice("alice", "phone").connect(st)
        if trouble == "timeout":
            hook.delay = 3.0
        elif trouble == "down":
            await hook.stop()
        elif trouble == "500":
            hook.status = 500
        else:
            hook.answer = b"yes please"
        verdict = "error_allowed" if fail == "open" else "error_refused"
        before = value("im_before_send_total", verdict=verdict)
        started = time.monotonic()
        msg = await alice.send_chat("bob", b"hi")
        got = await answered(alice, msg)
        assert got == ("SENT" if fail == "open" else "REFUSED")
        assert time.monotonic() - started < 2.5  # the hook's timeout bounds the wait
        assert value("im_before_send_total", verdict=verdict) == before + 1
        await alice.close()
    finally:
        await st.stop()


async def test_a_senders_chats_keep_their_order_and_others_are_not_held_up(
    tmp_path: Path, hook: Receiver
) -> None:
    st = await stack_with(tmp_path, hook.url, timeout=2.0)
    try:
        alice = await RawDevice("alice", "phone").connect(st)
        carol = await RawDevice("carol", "pc").connect(st)
        bob = await RawDevice("bob", "pc").connect(st)
        hook.delay = 0.4
        ids = [await alice.send_chat("bob", f"{i}".encode()) for i in range(4)]
        await asyncio.sleep(0.1)  # alice's first waits for the hook
        started = time.monotonic()
        other = await carol.send_chat("bob", b"me too")
        assert await answered(carol, other) == "SENT"
        carol_s = time.monotonic() - started
        for i in ids:
            assert await answered(alice, i, timeout=10) == "SENT"
        # alice's chats: asked one at a time, committed in the order sent
        assert carol_s < 1.0, carol_s  # not behind alice's four (1.6 s of hook at least)
        assert [alice.sent(i)[0].seq for i in ids] == [1, 2, 3, 4]
        asked = [r for r in hook.requests if data(r)["from_id"] == "alice"]
        assert [data(r)["msg_id"] for r in asked] == [str(i) for i in ids]
        gaps = [b.at - a.at for a, b in itertools.pairwise(asked)]
        assert min(gaps) >= 0.35, gaps  # the next is asked only once the last was answered
        await until(lambda: len(bob.chats) == 5)
        assert [c.id for c in bob.chats if c.from_id == "alice"] == ids
        for dev in (alice, bob, carol):
            await dev.close()
    finally:
        await st.stop()


class ContextRecorder(logging.Handler):
    """Keeps each line with the log context it was written in (common.log)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, dict[str, str]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), current_context()))


async def test_lines_about_a_chat_name_its_sender_and_id(tmp_path: Path, hook: Receiver) -> None:
    st = await stack_with(tmp_path, hook.url, timeout=0.5)
    recorder = ContextRecorder()
    logger = logging.getLogger("hooks.before_send")
    logger.addHandler(recorder)
    try:
        alice = await RawDevice("alice", "phone").connect(st)
        await hook.stop()  # the hook's failure is logged while the chat is handled
        msg = await alice.send_chat("bob", b"hi")
        assert await answered(alice, msg) == "SENT"
        ((line, context),) = [(m, c) for m, c in recorder.lines if "before_send" in m]
        assert context["user"] == "alice" and context["msg_id"] == str(msg), (line, context)
        assert "alice/phone" in context["conn"]
        await alice.close()
    finally:
        logger.removeHandler(recorder)
        await st.stop()


async def test_a_group_chat_goes_through_the_hook_too(tmp_path: Path, hook: Receiver) -> None:
    """A group chat meets the same hook after the membership check: refused, it takes no seq
    in the group's timeline; allowed, it is committed."""
    st = await stack_with(tmp_path, hook.url)
    groups = Groups(rest_url(st))
    try:
        alice = await RawDevice("alice", "phone").connect(st)
        bob = await RawDevice("bob", "pc").connect(st)
        gid = await groups.create(alice, bob)
        key = await groups.key(gid, alice)
        hook.answer = b'{"allow": false, "reason": "not in this group"}'
        no = await group_chat(alice, gid, b"sealed-1", key_id=key)
        assert await answered(alice, no) == "REFUSED"
        (req,) = hook.requests
        assert data(req)["dest_type"] == "group"
        hook.answer = ALLOW
        yes = await group_chat(alice, gid, b"sealed-2", key_id=key)
        assert await answered(alice, yes) == "SENT"
        await until(lambda: any(c.id == yes for c in bob.chats))
        assert not any(c.id == no for c in bob.chats)
        for dev in (alice, bob):
            await dev.close()
    finally:
        await groups.close()
        await st.stop()
