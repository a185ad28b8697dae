"""The asyncio shell of a link (common/link.py) over real loopback sockets: no task while idle,
reading paused above the high-water mark, writes coalesced, a peer that stops reading cut off,
pre-encoded bodies, cheap acks, unacked frames handed back decoded, admission at accept."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from test_security import until

from common import link as link_mod
from common.admission import PreAuthLimits
from common.codec import FrameDecoder, encode
from common.link import Link, LinkConfig, open_link, serve_links
from proto import im_pb2

pytestmark = pytest.mark.asyncio


def chat(n: int, body: bytes = b"") -> im_pb2.Envelope:
    return im_pb2.Envelope(chat=im_pb2.ChatMsg(id=n, from_id="a", dest_id="b", body=body))


@dataclass
class Recorder:
    """A handler that records, optionally blocking until released."""

    got: list[im_pb2.Envelope] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    closed: list[list[im_pb2.Envelope]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    auth_on_greet: bool = True

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        if env.WhichOneof("body") == "greet" and self.auth_on_greet:
            link.authenticated = True
        if self.gate is not None:
            await self.gate.wait()
        self.got.append(env)

    def on_acked(self, link: Link, upto: int) -> None:
        self.acked.append(upto)

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        self.closed.append(unacked)


@dataclass
class Server:
    port: int
    links: list[Link]
    handlers: list[Recorder]
    admission: PreAuthLimits


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    links: list[Link] = []
    handlers: list[Recorder] = []

    def make(link: Link) -> Recorder:
        links.append(link)
        handlers.append(Recorder())
        return handlers[-1]

    admission = PreAuthLimits(per_address=3, total=5)
    srv = await serve_links("127.0.0.1", 0, make, LinkConfig(greet_timeout=30), admission=admission)
    try:
        yield Server(srv.sockets[0].getsockname()[1], links, handlers, admission)
    finally:
        for link in links:
            link.close()
        srv.close()
        await srv.wait_closed()


async def greeted(server: Server, handler: Recorder | None = None) -> tuple[Link, Recorder]:
    client_handler = handler or Recorder()
    link = await open_link("127.0.0.1", server.port, client_handler, LinkConfig())
    link.send_control(im_pb2.Envelope(greet=im_pb2.Greet(token="t")))
    await until(lambda: bool(server.links) and server.links[-1].authenticated)
    return link, client_handler


async def test_frames_flow_both_ways_and_an_idle_link_has_no_task(server: Server) -> None:
    client, _ = await greeted(server)
    seqs = [await client.send(chat(i)) for i in range(1, 6)]
    assert seqs == [1, 2, 3, 4, 5]
    await until(lambda: len(server.handlers[0].got) == 6)  # the GREET and five chats
    assert [e.chat.id for e in server.handlers[0].got[1:]] == [1, 2, 3, 4, 5]
    assert all(e.seq == 0 for e in server.handlers[0].got)  # ready to be sent on as they are
    await until(lambda: client.unacked == 0)
    served = server.links[0]
    assert served._worker is None and client._worker is None  # idle: no task
    assert served._room is None and served._closed is None
    client.close()
    await client.wait_closed()


async def test_send_body_and_cheap_acks_and_unacked_handed_back(server: Server) -> None:
    client, handler = await greeted(server)
    seq = await client.send_body("chat", chat(7, b"pre-encoded").chat.SerializeToString())
    await until(lambda: bool(handler.acked) and handler.acked[-1] == seq)
    assert server.handlers[0].got[-1].chat.body == b"pre-encoded"
    server.handlers[0].gate = asyncio.Event()  # stop handling: nothing more gets acked
    await client.send(chat(8))
    await client.send(chat(9))
    await asyncio.sleep(0.1)
    server.links[0].close()
    await client.wait_closed()
    assert [[e.chat.id for e in un] for un in handler.closed] == [[8, 9]]


async def test_reading_pauses_above_the_high_water_mark(server: Server) -> None:
    client, _ = await greeted(server)
    gate = asyncio.Event()
    server.handlers[0].gate = gate
    for i in range(200):
        await client.send(chat(i + 1))
    await asyncio.sleep(0.3)
    served = server.links[0]
    assert served._read_paused
    assert served._state.pending_frames <= link_mod.INBOX_HIGH
    gate.set()
    await until(lambda: len(server.handlers[0].got) == 201)
    assert not served._read_paused
    assert [e.chat.id for e in server.handlers[0].got[1:]] == list(range(1, 201))


async def test_writes_of_one_loop_turn_are_coalesced(server: Server) -> None:
    _client, _ = await greeted(server)
    served = server.links[0]
    assert served._transport is not None
    writes: list[bytes] = []
    real_write = served._transport.write

    def counting(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        real_write(data)

    served._transport.write = counting  # type: ignore[method-assign]
    for i in range(10):
        served.send_control(im_pb2.Envelope(ping=im_pb2.Ping(nonce=i)))
    await asyncio.sleep(0.05)
    assert len(writes) == 1 and len(FrameDecoder().feed(writes[0])) == 10


async def test_a_peer_that_stops_reading_is_cut_off(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_mod, "HARD_LIMIT", 512 * 1024)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(encode(im_pb2.Envelope(greet=im_pb2.Greet(token="t"))))
    await until(lambda: bool(server.links) and server.links[-1].authenticated)
    served = server.links[-1]
    big = im_pb2.Envelope(error=im_pb2.Error(detail="x" * 200))
    sent = 0
    while not served.closing and sent < 200 * 2**20:  # kernel buffers first, then ours
        for _ in range(100):
            served.send_control(big)
        sent += 100 * 210
        await asyncio.sleep(0)
    await until(lambda: bool(server.handlers[-1].closed))
    assert sent < 100 * 2**20
    sock.close()


async def test_unauthenticated_connections_are_bounded_at_accept(server: Server) -> None:
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    await until(lambda: server.admission.refused >= 1)
    assert server.admission.count == 3 and len(server.links) == 3  # no handler for the 4th
    socks[3].settimeout(2)
    assert socks[3].recv(10) == b""  # closed at once
    # a GREET accepted gives the place back
    socks[0].sendall(encode(im_pb2.Envelope(greet=im_pb2.Greet(token="t"))))
    await until(lambda: server.admission.count == 2)
    fifth = socket.create_connection(("127.0.0.1", server.port))
    await until(lambda: server.admission.count == 3)
    for s in [*socks, fifth]:
        s.close()
    await until(lambda: server.admission.count == 0)


async def _raw_session(
    port: int, frames: bytes, wait: float = 1.0
) -> tuple[list[im_pb2.Envelope], bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frames)
    dec = FrameDecoder(1 << 20)
    out: list[im_pb2.Envelope] = []
    closed = False
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out.extend(dec.feed(chunk))
            closed = True
    except TimeoutError:
        pass
    writer.close()
    return out, closed


def _framed_payload(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("node", [True, False])
async def test_one_bad_frame_is_refused_alone_on_a_node_link_only(node: bool) -> None:
    """Over the limit, or not protobuf: on a node link an ERROR naming the frame, which is
    skipped unread and acked so the sender's window moves on, and the link stays for the frames
    after it; on a client link the link closes, as before."""
    handlers: list[Recorder] = []

    def make(link: Link) -> Recorder:
        handlers.append(Recorder())
        return handlers[-1]

    cfg = LinkConfig(max_frame=8 * 1024, node=node)
    srv = await serve_links("127.0.0.1", 0, make, cfg)
    port = srv.sockets[0].getsockname()[1]
    big = chat(2, b"z" * 20_000)
    big.seq = 2
    stream = (
        encode(im_pb2.Envelope(greet=im_pb2.Greet(token="t")))
        + encode(im_pb2.Envelope(seq=1, chat=chat(1).chat))
        + encode(big)  # over the 8 KiB limit
        + _framed_payload(b"\x08\x03\xff\xff\xff")  # seq 3, then not protobuf
        + encode(im_pb2.Envelope(seq=4, chat=chat(4).chat))
    )
    try:
        envs, closed = await _raw_session(port, stream)
    finally:
        srv.close()
        await srv.wait_closed()
    errs = [(im_pb2.ErrorCode.Name(e.error.code), e.error.ref_seq) for e in envs if e.error.code]
    if node:
        assert errs == [("BAD_FRAME", 2), ("BAD_FRAME", 3)] and not closed
        assert [e.chat.id for e in handlers[0].got[1:]] == [1, 4]
        assert max(e.link_ack.seq for e in envs) == 4
    else:
        assert errs == [("BAD_FRAME", 0)] and closed
        assert [e.chat.id for e in handlers[0].got[1:]] == [1]


async def test_node_links_have_headroom_above_the_client_limit() -> None:
    from common.config import Settings

    s = Settings()
    client, node = LinkConfig.from_settings(s), LinkConfig.from_settings(s, node=True)
    assert client.max_frame == 64 * 1024 and node.max_frame == 80 * 1024
    assert node.node and not client.node and client.discard_unknown and not node.discard_unknown
    assert (
        LinkConfig.from_settings(Settings(node_max_frame=100_000), node=True).max_frame == 100_000
    )


async def test_abort_drops_what_the_kernel_still_holds_and_resets() -> None:
    """A link given up before its WELCOME must not deliver its GREET later (client/connection.py):
    abort resets the connection, so bytes the peer has not taken yet never reach it, where a
    close would still deliver them (a partition that heals delivers a retransmitted GREET)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    port = listener.getsockname()[1]
    handler = Recorder()
    link = await open_link("127.0.0.1", port, handler, LinkConfig(greet_timeout=30), name="t")
    peer, _ = await loop.sock_accept(listener)
    body = b"g" * 60_000
    for _ in range(20):  # ~1.2 MB: far more than the peer's buffers take while it does not read
        link.send_control(im_pb2.Envelope(chat=im_pb2.ChatMsg(id=1, body=body)))
    await asyncio.sleep(0.2)
    link.abort()
    await asyncio.wait_for(link.wait_closed(), 5)
    assert handler.closed, "the handler heard of the end"
    got, reset = 0, False
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(peer, 65536), 5)
        except ConnectionResetError:
            reset = True
            break
        if not chunk:
            break
        got += len(chunk)
    peer.close()
    listener.close()
    assert reset, "the peer saw a reset, not an orderly end"
    assert got < 20 * 60_000, f"{got} bytes arrived: nothing queued after the abort may"
