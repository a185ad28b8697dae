"""The connector's WebSocket port (issue 16): the same protocol as TCP, one Envelope per binary
message, with the same limits, pre-auth rules and hostile-input handling, a TCP user and a
WebSocket user chatting with each other, and TLS on the same switch."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import hostile
import pytest
import pytest_asyncio
import websockets
from conftest import free_port
from test_e2e import PW, expect, make_users, rest_url, stack_settings
from test_security import until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from cli.stack import Stack
from client import IMClient, Message, befriend
from common.crypto import open_sealed, seal
from common.link import Link, LinkConfig
from common.wslink import open_ws_link
from proto import im_pb2

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path, greet_timeout=2.0, ws_port=free_port()))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


def ws_url(st: Stack, path: str = "/ws") -> str:
    assert st.connector is not None
    return f"ws://127.0.0.1:{st.connector.ws_port}{path}"


class Browser:
    """What a browser's client does, on the project's WebSocket link."""

    def __init__(self) -> None:
        self.welcome: asyncio.Future[im_pb2.Welcome] = asyncio.get_running_loop().create_future()
        self.chats: asyncio.Queue[im_pb2.ChatMsg] = asyncio.Queue()
        self.errors: list[str] = []

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "welcome" and not self.welcome.done():
            self.welcome.set_result(env.welcome)
        elif kind == "chat":
            await self.chats.put(env.chat)
        elif kind == "error":
            self.errors.append(im_pb2.ErrorCode.Name(env.error.code))

    def on_acked(self, link: Link, upto: int) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if not self.welcome.done():
            self.welcome.cancel()


async def test_a_websocket_user_and_a_tcp_user_chat(stack: Stack) -> None:
    (bob,) = await make_users(stack, "bob")
    alice = IMClient(rest_url(stack), "alice", PW)
    await alice.register()
    await alice.login()
    await befriend(alice, bob)
    login = await alice.login()
    browser = Browser()
    link = await open_ws_link(ws_url(stack), browser, LinkConfig())
    try:
        link.send_control(im_pb2.Envelope(greet=im_pb2.Greet(token=login.token)))
        welcome = await asyncio.wait_for(browser.welcome, 5)
        assert welcome.user_id == "alice" and welcome.max_frame_bytes == 64 * 1024
        key = login.friends["bob"]
        body = seal(key, 41, "alice", "bob", b"hello from a browser")
        chat = im_pb2.ChatMsg(
            id=41, from_id="alice", dest_id="bob", dest_type=im_pb2.SINGLE, msg_type=im_pb2.TEXT
        )
        chat.body = body
        await link.send(im_pb2.Envelope(chat=chat))
        msg = await expect(bob, Message)
        assert isinstance(msg, Message) and msg.text == "hello from a browser"
        await bob.send_text("alice", "hello from a terminal")
        got = await asyncio.wait_for(browser.chats.get(), 5)
        assert open_sealed(key, got.id, got.from_id, got.dest_id, got.body) == (
            b"hello from a terminal"
        )
        assert got.conv_id == "p:alice:bob" and got.seq == 2  # after the browser's own, seq 1
        await until(lambda: link.unacked == 0)
    finally:
        link.close()
        await link.wait_closed()
        await bob.close()
        await alice.close()


async def _close_of(
    url: str, messages: list[bytes | str], wait: float = 5.0
) -> tuple[int, list[str]]:
    """Send ``messages`` on a fresh WebSocket; the server's close code and ERROR codes."""
    codes: list[str] = []
    async with connect(url, max_size=None, compression=None) as ws:
        for m in messages:
            await ws.send(m)
        try:
            async with asyncio.timeout(wait):
                async for data in ws:
                    assert isinstance(data, bytes)
                    env = im_pb2.Envelope.FromString(data)
                    if env.WhichOneof("body") == "error":
                        codes.append(im_pb2.ErrorCode.Name(env.error.code))
        except ConnectionClosed:
            pass
    assert ws.close_code is not None
    return ws.close_code, codes


def env_of(data: str | bytes) -> im_pb2.Envelope:
    assert isinstance(data, bytes), "the server sends binary messages only"
    return im_pb2.Envelope.FromString(data)


def greet(token: str) -> bytes:
    return im_pb2.Envelope(greet=im_pb2.Greet(token=token)).SerializeToString()


async def test_bad_input_over_websocket_is_refused_clearly(stack: Stack) -> None:
    url = ws_url(stack)
    chat = im_pb2.Envelope(seq=2, chat=im_pb2.ChatMsg(id=1, from_id="a", dest_id="b"))
    cases: list[tuple[list[bytes | str], int, list[str]]] = [
        ([b"\xff\xff\xff\xff"], 1008, ["BAD_FRAME"]),  # not an Envelope
        (["hello"], 1003, ["BAD_FRAME"]),  # text: binary only
        ([chat.SerializeToString()], 1008, ["NOT_AUTHENTICATED"]),
        ([b"\x12" + b"\x00" * 5000], 1009, []),  # over the pre-auth limit: refused unread
        ([greet("v1.forged.token")], 1008, ["BAD_TOKEN"]),
        ([], 1008, ["GREET_TIMEOUT"]),
    ]
    for messages, close_code, codes in cases:
        got = await _close_of(url, messages)
        assert got == (close_code, codes), (messages[:1], got)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(stack, "/elsewhere")):
            pass
    assert refused.value.response.status_code == 404
    assert stack.connector is not None
    errors = stack.connector.counters.errors
    await until(lambda: errors.get("GREET_TIMEOUT", 0) >= 1)
    for code in ("BAD_FRAME", "NOT_AUTHENTICATED", "BAD_TOKEN"):
        assert errors.get(code, 0) >= 1, errors


async def test_after_greet_the_full_frame_size_applies(stack: Stack) -> None:
    (alice,) = await make_users(stack, "alice", connect=False)
    login = await alice.login()
    big = im_pb2.Envelope(
        seq=1,
        chat=im_pb2.ChatMsg(
            id=1, from_id="alice", dest_id="nobody", dest_type=im_pb2.SINGLE, msg_type=im_pb2.TEXT
        ),
    )
    big.chat.body = b"b" * 60_000
    async with connect(ws_url(stack), max_size=None, compression=None) as ws:
        await ws.send(greet(login.token))
        assert env_of(await ws.recv()).WhichOneof("body") == "welcome"
        await ws.send(big.SerializeToString())
        answers: list[im_pb2.Envelope] = []
        while len(answers) < 2:  # the listing's CaughtUp comes too, in any order
            env = env_of(await ws.recv())
            if env.WhichOneof("body") != "caught_up":
                answers.append(env)
        kinds = sorted(str(e.WhichOneof("body")) for e in answers)
        assert kinds == ["error", "link_ack"]  # refused as a chat (NOT_FRIEND), not as a frame
        err = next(e.error for e in answers if e.WhichOneof("body") == "error")
        assert im_pb2.ErrorCode.Name(err.code) == "NOT_FRIEND" and err.ref_seq == 1
        too_big = big.SerializeToString() + b"\x00" * 10_000
        await ws.send(too_big)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1009
    await alice.close()


async def _hostile_ws(url: str, rng: random.Random, source: str) -> str:
    writes = hostile.unauthenticated_payload(rng, 64 * 1024)
    try:
        async with connect(
            url, max_size=None, compression=None, open_timeout=10, local_addr=(source, 0)
        ) as ws:
            for data in writes:
                if data:
                    await ws.send(data)
            if rng.random() < 0.2:
                await ws.send("text")
            async with asyncio.timeout(15):
                async for _ in ws:
                    pass
    except ConnectionClosed:
        pass
    except (InvalidHandshake, OSError):
        return "refused"
    except TimeoutError:
        return "open"
    return "closed"


async def test_hostile_websocket_clients_leave_a_neighbours_chat_untouched(
    stack: Stack,
) -> None:
    """Garbage, oversize, pre-GREET floods and readers that stop, over WebSocket, while two
    users chat over TCP: every hostile connection is closed, the chat is exact."""
    alice, bob = await make_users(stack, "alice", "bob")
    rng = random.Random(16)
    url = ws_url(stack)
    # three source addresses: 150 connections fit their admission places (64 each)
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    attackers = [
        asyncio.create_task(_hostile_ws(url, random.Random(rng.random()), sources[i % 3]))
        for i in range(150)
    ]
    assert stack.connector is not None
    port = stack.connector.ws_port

    async def slow_reader() -> bool:
        """A WebSocket that sends PINGs (each answered with a PONG) and never reads."""
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        ping = im_pb2.Envelope(ping=im_pb2.Ping(nonce=1)).SerializeToString()
        frame = bytes([0x82, 0x80 | len(ping)]) + b"\x00\x00\x00\x00" + ping  # masked, zero mask
        try:
            for _ in range(3000):
                writer.write(frame * 50)
                await asyncio.wait_for(writer.drain(), 2)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        return True

    slow = asyncio.create_task(slow_reader())
    sent = []
    try:
        for n in range(30):
            sent.append(await alice.send_text("bob", f"m{n}"))
            await asyncio.sleep(0.05)
        got: list[int] = []
        while len(got) < len(sent):
            ev = await bob.next_event(10)
            if isinstance(ev, Message):
                got.append(ev.msg_id)
        assert got == sent
        outcomes = await asyncio.gather(*attackers)
        assert outcomes.count("closed") == 150, outcomes
        assert await slow
    finally:
        await alice.close()
        await bob.close()
    assert stack.connector is not None
    await until(lambda: stack.connector is not None and stack.connector.online_sessions == 0, 10)
    assert stack.connector.preauth.count == 0  # every place given back


async def test_tls_uses_the_same_switch(tmp_path: Path) -> None:
    from test_tls import make_certificate

    from common.tls import client_context

    cert, key = make_certificate(tmp_path)
    st = Stack(stack_settings(tmp_path, ws_port=free_port(), tls_cert=str(cert), tls_key=str(key)))
    await st.start()
    try:
        (alice,) = await make_users(st, "alice", connect=False)
        login = await alice.login()
        ctx = client_context(cafile=str(cert))
        assert st.connector is not None
        browser = Browser()
        link = await open_ws_link(
            f"wss://localhost:{st.connector.ws_port}/ws", browser, LinkConfig(), tls=ctx
        )
        link.send_control(im_pb2.Envelope(greet=im_pb2.Greet(token=login.token)))
        assert (await asyncio.wait_for(browser.welcome, 5)).user_id == "alice"
        link.close()
        with pytest.raises((OSError, websockets.exceptions.InvalidMessage, ConnectionError)):
            async with connect(f"ws://127.0.0.1:{st.connector.ws_port}/ws", open_timeout=3):
                pass
        await alice.close()
    finally:
        await st.stop()
