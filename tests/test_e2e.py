"""End to end over real TCP in one process: client -> connector -> transfer -> connector -> client.

The stack is the one ``im up`` runs (embedded backends), on free ports in a temporary directory.
Hostile-input tests speak raw bytes and check three things: the answer (an ERROR with its code),
whether the connection was closed, and that a normal conversation beside it is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import free_port

from cli.stack import Stack
from client import IMClient, Message, Receipt, ServerError, befriend
from common.codec import FrameDecoder, encode
from common.config import Settings
from common.convid import pair_conv_id
from common.tokens import TokenSigner
from proto import im_pb2

PW = "password-123"


def stack_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """``im up``'s settings on free ports in ``tmp_path``."""
    base: dict[str, Any] = dict(
        data_dir=tmp_path,
        connector_port=0,
        transfer_port=0,
        rest_port=free_port(),
        ws_port=0,  # off unless a test asks: 9083 is the machine's, not a test's
        secret="test-secret-0123456789",
    )
    return Settings(**{**base, **overrides})


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path, greet_timeout=1.0))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


def rest_url(st: Stack) -> str:
    return f"http://127.0.0.1:{st.rest_port}"


def conn_addr(st: Stack) -> tuple[str, int]:
    assert st.connector is not None
    return "127.0.0.1", st.connector.port


async def make_users(st: Stack, *names: str, connect: bool = True) -> list[IMClient]:
    clients = [IMClient(rest_url(st), n, PW) for n in names]
    for c in clients:
        await c.register()
        await c.login()
    for i, c in enumerate(clients):
        for other in clients[i + 1 :]:
            await befriend(c, other)  # c asks, other accepts
    for c in clients:
        await c.refresh_friends()
        if connect:
            await c.connect()
    return clients


async def expect(c: IMClient, kind: type, timeout: float = 5.0) -> object:
    while True:
        ev = await c.next_event(timeout)
        if isinstance(ev, kind):
            return ev


async def receipts(c: IMClient, n: int, timeout: float = 5.0) -> set[tuple[str, int]]:
    got: set[tuple[str, int]] = set()
    while len(got) < n:
        ev = await c.next_event(timeout)
        if isinstance(ev, Receipt):
            got.add((ev.kind, ev.msg_id))
    return got


async def messages(c: IMClient, n: int, timeout: float = 10.0) -> list[Message]:
    """The next ``n`` messages ``c`` surfaces (other events skipped)."""
    got: list[Message] = []
    while len(got) < n:
        ev = await c.next_event(timeout)
        if isinstance(ev, Message):
            got.append(ev)
    return got


async def quiet(c: IMClient, seconds: float = 0.5) -> list[object]:
    """Whatever ``c`` surfaces within ``seconds`` (to check nothing more comes)."""
    out: list[object] = []
    with contextlib.suppress(TimeoutError):
        while True:
            out.append(await c.next_event(seconds))
    return out


@pytest.mark.asyncio
async def test_chat_with_sent_delivered_read(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        mid = await alice.send_text("bob", "hello")
        msg = await expect(bob, Message)
        assert isinstance(msg, Message)
        assert (msg.from_id, msg.text, msg.msg_id) == ("alice", "hello", mid)
        assert (msg.conv_id, msg.seq, msg.own) == ("p:alice:bob", 1, False)
        await bob.send_read(msg)
        assert await receipts(alice, 3) == {("SENT", mid), ("DELIVERED", mid), ("READ", mid)}
        assert alice.have("p:alice:bob") == 1 and bob.have("p:alice:bob") == 1
        assert [e for e in await quiet(alice) if isinstance(e, Receipt)] == []
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_offline_recipient_gets_messages_in_order_on_login(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob", connect=False)
    await alice.connect()
    try:
        ids = [await alice.send_text("bob", f"m{i}") for i in range(50)]
        # SENT means committed to the timeline: all 50 before bob exists on any socket
        assert {m for k, m in await receipts(alice, 50) if k == "SENT"} == set(ids)
        await bob.connect()
        got = await messages(bob, 50)
        assert [m.msg_id for m in got] == ids
        assert [m.seq for m in got] == list(range(1, 51))
        await asyncio.wait_for(bob.caught_up.wait(), 5)
        delivered = await receipts(alice, 50)
        assert delivered == {("DELIVERED", i) for i in ids}
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_messages_sent_during_the_login_sync_are_not_lost_or_reordered(
    stack: Stack,
) -> None:
    """Live pushes interleave with the listing and the Syncs: still each once, in seq order."""
    alice, bob = await make_users(stack, "alice", "bob", connect=False)
    await alice.connect()
    try:
        before = [await alice.send_text("bob", f"old{i}") for i in range(300)]
        await receipts(alice, 300)
        during: list[int] = []

        async def keep_sending() -> None:
            for i in range(300):
                during.append(await alice.send_text("bob", f"new{i}"))
                if i % 10 == 0:
                    await asyncio.sleep(0)

        racer = asyncio.create_task(keep_sending())
        await bob.connect()
        await racer
        got = await messages(bob, 600)
        assert [m.seq for m in got] == list(range(1, 601))
        assert [m.msg_id for m in got] == before + during
        assert await quiet(bob) == []
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_a_device_that_comes_back_resumes_from_its_since(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        first = [await alice.send_text("bob", f"a{i}") for i in range(5)]
        assert [m.msg_id for m in await messages(bob, 5)] == first
        await asyncio.wait_for(bob.caught_up.wait(), 5)
        since = bob.since
        assert since > 0
        await bob.disconnect()
        later = [await alice.send_text("bob", f"b{i}") for i in range(20)]
        await receipts(alice, 25)  # all SENT
        await bob.connect()
        got = await messages(bob, 20)
        assert [m.msg_id for m in got] == later and [m.seq for m in got] == list(range(6, 26))
        await asyncio.wait_for(bob.caught_up.wait(), 5)
        assert bob.since >= since and bob.have("p:alice:bob") == 25
        assert [e for e in await quiet(bob) if isinstance(e, Message)] == []
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_a_new_device_gets_every_conversation_once_own_messages_marked(
    stack: Stack,
) -> None:
    alice, bob, carol = await make_users(stack, "alice", "bob", "carol")
    try:
        sent: dict[str, list[int]] = {"p:alice:bob": [], "p:bob:carol": []}
        for i in range(30):
            sent["p:alice:bob"].append(await alice.send_text("bob", f"ab{i}"))
            sent["p:alice:bob"].append(await bob.send_text("alice", f"ba{i}"))
            sent["p:bob:carol"].append(await carol.send_text("bob", f"cb{i}"))
        await receipts(carol, 30)
        await messages(alice, 30)
        await bob.close()
        fresh = IMClient(rest_url(stack), "bob", PW, device_id="laptop")
        try:
            await fresh.connect()
            await asyncio.wait_for(fresh.caught_up.wait(), 10)
            got = await messages(fresh, 90)
            by_conv: dict[str, list[Message]] = {}
            for m in got:
                by_conv.setdefault(m.conv_id, []).append(m)
            for conv, ids in sent.items():
                assert sorted(m.msg_id for m in by_conv[conv]) == sorted(ids)
                assert [m.seq for m in by_conv[conv]] == list(range(1, len(ids) + 1))
            own = [m for m in by_conv["p:alice:bob"] if m.own]
            assert [m.msg_id for m in own] == sent["p:alice:bob"][1::2]  # one device: in order
            assert all(m.text.startswith("ba") for m in own)
            assert await quiet(fresh) == []
        finally:
            await fresh.close()
    finally:
        await alice.close()
        await carol.close()


@pytest.mark.asyncio
async def test_another_device_of_the_sender_sees_the_message_as_own(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    phone = IMClient(rest_url(stack), "alice", PW, device_id="phone")
    try:
        await phone.connect()
        await asyncio.wait_for(phone.caught_up.wait(), 5)
        mid = await alice.send_text("bob", "from the laptop")
        (mine,) = await messages(phone, 1)
        assert (mine.msg_id, mine.own, mine.text, mine.seq) == (mid, True, "from the laptop", 1)
        (theirs,) = await messages(bob, 1)
        await bob.mark_read(theirs.conv_id, theirs.seq)
        # the receipts are for the device that sent it
        assert await receipts(alice, 3) == {("SENT", mid), ("DELIVERED", mid), ("READ", mid)}
        assert [e for e in await quiet(phone) if isinstance(e, Receipt)] == []
        assert [e for e in await quiet(alice) if isinstance(e, Message)] == []
    finally:
        for c in (alice, bob, phone):
            await c.close()


@pytest.mark.asyncio
async def test_caught_up_covers_more_conversations_than_sync_at_once(stack: Stack) -> None:
    names = [f"u{i}" for i in range(12)]
    hub, *others = await make_users(stack, "hub", *names, connect=False)
    try:
        for c in others:
            await c.connect()
            for i in range(3):
                await c.send_text("hub", f"{c.user_id} {i}")
        for c in others:
            await receipts(c, 3)
        await hub.connect()
        await asyncio.wait_for(hub.caught_up.wait(), 10)
        for c in others:
            assert hub.have(pair_conv_id("hub", c.user_id)) == 3
        assert len(await messages(hub, 36)) == 36
    finally:
        for c in (hub, *others):
            await c.close()


@pytest.mark.asyncio
async def test_demo_runs_clean_twice(stack: Stack) -> None:
    from workload.demo import ok, run_demo

    for _ in range(2):
        report = await run_demo(rest_url(stack), 6, 120, 2, prefix="t", progress=False, timeout=30)
        assert ok(report), report
        assert report["received"] == 120 and report["connectors_used"] == 1


# -- hostile input --------------------------------------------------------------------------


async def raw(stack: Stack, data: bytes, wait: float = 3.0) -> tuple[list[im_pb2.Envelope], bool]:
    """Send raw bytes; collect frames until the server closes or ``wait`` passes."""
    reader, writer = await asyncio.open_connection(*conn_addr(stack))
    writer.write(data)
    await writer.drain()
    dec = FrameDecoder()
    out: list[im_pb2.Envelope] = []
    closed = False
    try:
        async with asyncio.timeout(wait):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                out.extend(dec.feed(chunk))
    except TimeoutError:
        pass
    writer.close()
    return out, closed


def codes(envs: list[im_pb2.Envelope]) -> list[str]:
    return [im_pb2.ErrorCode.Name(e.error.code) for e in envs if e.WhichOneof("body") == "error"]


def raw_chat(msg_id: int, from_id: str, dest_id: str, body: bytes = b"x") -> im_pb2.Envelope:
    """A chat built by hand, bypassing the client library's checks and sealing."""
    return im_pb2.Envelope(
        chat=im_pb2.ChatMsg(
            id=msg_id,
            from_id=from_id,
            dest_id=dest_id,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=body,
        )
    )


def greet(token: str, device_id: str = "") -> bytes:
    """A GREET; no device_id means the device the token was issued for."""
    return encode(im_pb2.Envelope(greet=im_pb2.Greet(token=token, device_id=device_id)))


HOSTILE = {
    "garbage": (b"\x00\x00\x00\x05\xff\xff\xff\xff\xff", "BAD_FRAME", True),
    "zero_length": (b"\x00\x00\x00\x00", "BAD_FRAME", True),
    "oversize_length": (struct.pack(">I", 10_000_000), "BAD_FRAME", True),
    "empty_envelope": (struct.pack(">I", 2) + b"\x08\x01", "UNKNOWN_TYPE", True),
    "chat_before_greet": (
        encode(im_pb2.Envelope(seq=1, chat=im_pb2.ChatMsg(id=1, from_id="a", dest_id="b"))),
        "NOT_AUTHENTICATED",
        True,
    ),
    "bad_token": (greet("v1.forged.token"), "BAD_TOKEN", True),
    "chat_outside_window": (
        encode(im_pb2.Envelope(chat=im_pb2.ChatMsg(id=1, from_id="a", dest_id="b"))),
        "BAD_MESSAGE",
        True,
    ),
    "silence": (b"", "GREET_TIMEOUT", True),
    "truncated_frame": (struct.pack(">I", 100) + b"\x12\x00", "GREET_TIMEOUT", True),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_connection_is_answered_and_closed_others_unaffected(
    stack: Stack, case: str
) -> None:
    data, code, closes = HOSTILE[case]
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        envs, closed = await raw(stack, data)
        assert code in codes(envs)
        assert closed is closes
        mid = await alice.send_text("bob", "still here")
        msg = await expect(bob, Message)
        assert msg.msg_id == mid  # type: ignore[attr-defined]
        assert stack.connector is not None
        assert stack.connector.counters.errors.get(code, 0) >= 1  # every breach is counted
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_expired_token_is_refused(stack: Stack) -> None:
    await make_users(stack, "alice", connect=False)
    token = TokenSigner(stack.settings.signing_secret()).issue("alice", -10)
    envs, closed = await raw(stack, greet(token))
    assert codes(envs) == ["BAD_TOKEN"] and closed


@pytest.mark.asyncio
async def test_spoofed_sender_and_non_friend_are_refused_not_delivered(stack: Stack) -> None:
    alice, bob, carol = await make_users(stack, "alice", "bob", "carol")
    try:
        mallory = IMClient(rest_url(stack), "mallory", PW)
        await mallory.register()
        await mallory.login()
        await mallory.connect()
        link = mallory._conn.link
        assert link is not None
        await link.send(raw_chat(99, "alice", "bob"))  # claims to be alice
        err = await expect(mallory, ServerError)
        assert err.code == "SPOOFED_SENDER" and err.msg_id == 99  # type: ignore[attr-defined]
        await link.send(raw_chat(60, "mallory", "bob"))  # not a friend of bob
        err = await expect(mallory, ServerError)
        assert err.code == "NOT_FRIEND" and err.msg_id == 60  # type: ignore[attr-defined]
        assert mallory.connected  # refused, not disconnected
        # bob got nothing from either, and a real message still flows
        mid = await carol.send_text("bob", "real")
        msg = await expect(bob, Message)
        assert (msg.from_id, msg.msg_id) == ("carol", mid)  # type: ignore[attr-defined]
        await mallory.close()
    finally:
        for c in (alice, bob, carol):
            await c.close()


@pytest.mark.asyncio
async def test_device_that_never_acks_is_closed_and_syncs_later(tmp_path: Path) -> None:
    """After the retry limit the connector closes the device; the chat is in the timeline
    already (SENT), so the user's next device has it."""
    st = Stack(stack_settings(tmp_path, retry_timeout=0.2, max_retries=2))
    await st.start()
    alice, bob = await make_users(st, "alice", "bob", connect=False)
    try:
        await alice.connect()
        login = await bob.login()
        reader, writer = await asyncio.open_connection(*conn_addr(st))
        writer.write(greet(login.token))
        mid = await alice.send_text("bob", "are you there?")
        dec = FrameDecoder()
        frames: list[im_pb2.Envelope] = []
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):  # never ack: read until the server closes
                frames.extend(dec.feed(chunk))
        writer.close()
        chats = [f for f in frames if f.WhichOneof("body") == "chat"]
        assert len(chats) == 1 + 2  # first push and two retransmits, same link seq
        assert {f.seq for f in chats} == {chats[0].seq}
        assert "RETRY_LIMIT" in codes(frames)
        # committed, so alice hears SENT; then bob comes back with a real client and gets it
        assert await receipts(alice, 1) == {("SENT", mid)}
        await bob.connect()
        msg = await expect(bob, Message)
        assert msg.msg_id == mid  # type: ignore[attr-defined]
        assert await receipts(alice, 1) == {("DELIVERED", mid)}
    finally:
        await alice.close()
        await bob.close()
        await st.stop()


@pytest.mark.asyncio
async def test_oversize_body_is_refused_without_closing(stack: Stack) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        link = alice._conn.link
        assert link is not None
        big = b"x" * (stack.settings.max_frame - 200)  # fits a frame, not the body limit
        await link.send(raw_chat(7, "alice", "bob", big))
        err = await expect(alice, ServerError)
        assert (err.code, err.msg_id) == ("TOO_LARGE", 7)  # type: ignore[attr-defined]
        mid = await alice.send_text("bob", "small")
        assert (await expect(bob, Message)).msg_id == mid  # type: ignore[attr-defined]
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_reconnecting_device_on_the_same_connector_stays_routable(stack: Stack) -> None:
    """The old session's clean-up must not take the new session of the same device offline."""
    alice, bob = await make_users(stack, "alice", "bob")
    bob2 = IMClient(rest_url(stack), "bob", PW)  # same device id "default"
    try:
        await bob2.connect()
        await asyncio.sleep(0.3)  # the replaced session finishes closing
        assert stack.status is not None
        assert await stack.status.lookup("bob") == {"default": stack.connector.node_id}  # type: ignore[union-attr]
        mid = await alice.send_text("bob", "to the new session")
        assert (await expect(bob2, Message)).msg_id == mid  # type: ignore[attr-defined]
    finally:
        for c in (alice, bob, bob2):
            await c.close()


@pytest.mark.asyncio
async def test_transfer_refuses_silent_and_impersonating_connectors(stack: Stack) -> None:
    assert stack.transfer is not None and stack.connector is not None
    port = stack.transfer.port
    signer = TokenSigner(stack.settings.signing_secret())
    # a node token for "evil" claiming to be the real connector
    forged = encode(
        im_pb2.Envelope(
            greet=im_pb2.Greet(
                token=signer.issue("evil", 60, role="node"), node_id=stack.connector.node_id
            )
        )
    )
    # a user token is not a node token
    user = encode(im_pb2.Envelope(greet=im_pb2.Greet(token=signer.issue("alice", 60))))
    for data, code in ((forged, "BAD_TOKEN"), (user, "BAD_TOKEN"), (b"", "GREET_TIMEOUT")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        dec = FrameDecoder()
        frames: list[im_pb2.Envelope] = []
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                frames.extend(dec.feed(chunk))
        writer.close()
        assert codes(frames) == [code]
    # the real connector's link survived all of it
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        mid = await alice.send_text("bob", "still routed")
        assert (await expect(bob, Message)).msg_id == mid  # type: ignore[attr-defined]
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_demo_waits_out_the_registration_limit(tmp_path: Path) -> None:
    """More demo users than one address may register per window: the demo waits as the 429's
    Retry-After says and comes out exact, instead of failing (README's newcomer path runs
    demos of 20 and then more users against a fresh `im up`)."""
    from workload.demo import ok, run_demo

    st = Stack(stack_settings(tmp_path, register_per_address=4, register_window=1.0))
    await st.start()
    try:
        report = await run_demo(rest_url(st), 9, 60, 1, prefix="lim", progress=False, timeout=60)
        assert ok(report), report
        assert report["received"] == 60
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_a_link_lost_in_the_middle_of_the_sync_loses_and_repeats_nothing(
    stack: Stack,
) -> None:
    alice, first = await make_users(stack, "alice", "bob", connect=False)
    await first.close()
    # a small event queue: the reader stops while the app does not read, so the cut below
    # comes while most of the conversation is still to be synced
    bob = IMClient(rest_url(stack), "bob", PW, queue_size=20)
    await alice.connect()
    try:
        ids = [await alice.send_text("bob", f"m{i}") for i in range(500)]
        await receipts(alice, 500)
        await bob.connect()
        got = await messages(bob, 120)
        assert bob.have("p:alice:bob") < 400
        link = bob._conn.link
        assert link is not None
        link.close()  # as a network that drops: the client reconnects by itself
        got += await messages(bob, 380, timeout=15)
        assert [m.seq for m in got] == list(range(1, 501))
        assert [m.msg_id for m in got] == ids
        await asyncio.wait_for(bob.caught_up.wait(), 10)
        assert bob.reconnects >= 1
        assert [e for e in await quiet(bob) if isinstance(e, Message)] == []
    finally:
        await alice.close()
        await bob.close()
