"""Memory before login is bounded (issue 12, finding 2), measured on a real ``im up`` process.

- Two connections that never GREET send 1 000 chat frames of 63 KiB each, from seq 2: before,
  every one was parsed and parked in the receive window (127 MiB held until GREET_TIMEOUT);
  now the first one is refused from its length prefix, before its payload is read.
- 1 000 unauthenticated connections from five source addresses (junk, silence, a slow drip, big
  windowed frames before GREET) while two users who logged in earlier keep chatting: the
  excess is refused at accept (``IM_PREAUTH_PER_ADDRESS``), the server's RSS grows by at most
  a fixed bound, and the chat goes on, every message SENT and delivered once.

The server runs as a child process so its RSS can be read from /proc and nothing of the test's
own (the attacking sockets, the client library) is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port
from test_e2e import PW

from client import IMClient, Message, Receipt, befriend
from common.codec import encode
from proto import im_pb2

pytestmark = pytest.mark.slow

PAGE = os.sysconf("SC_PAGE_SIZE")
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 7)]  # five attacker hosts, all loopback
PER_ADDRESS = 64  # IM_PREAUTH_PER_ADDRESS's default


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    rest: str
    port: int

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"im up exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} never opened")


@contextlib.contextmanager
def im_up(tmp_path: Path, **settings: str) -> Iterator[Server]:
    port, rest, transfer = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IM_")}
    env.update(
        IM_DATA_DIR=str(tmp_path),
        IM_SECRET="preauth-test-secret-0123456789",
        IM_CONNECTOR_PORT=str(port),
        IM_TRANSFER_PORT=str(transfer),
        IM_TRANSFER_ADDRS=f"127.0.0.1:{transfer}",
        IM_REST_PORT=str(rest),
        IM_WS_PORT="0",
        IM_GREET_TIMEOUT="6",
        IM_LOG_LEVEL="WARNING",
    )
    env.update(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        _wait_port(rest, proc)
        _wait_port(port, proc)
        yield Server(proc, f"http://127.0.0.1:{rest}", port)
        assert proc.poll() is None, "im up died during the test"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with im_up(tmp_path) as st:
        yield st


def big_chat(seq: int) -> bytes:
    body = b"\x00" * (63 * 1024)
    chat = im_pb2.ChatMsg(id=seq, from_id="x", dest_id="y", dest_type=im_pb2.SINGLE, body=body)
    return encode(im_pb2.Envelope(seq=seq, chat=chat))


async def _pin(port: int) -> int:
    """One connection, no GREET, 1 000 chats of 63 KiB from seq 2: bytes the server took."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        for seq in range(2, 1002):
            writer.write(big_chat(seq))
            await asyncio.wait_for(writer.drain(), 10)
            sent += 1
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
    return sent


async def _sample_peak(server: Server, stop: asyncio.Event) -> int:
    peak = server.rss()
    while not stop.is_set():
        peak = max(peak, server.rss())
        await asyncio.sleep(0.02)
    return peak


def test_frames_before_greet_pin_no_memory(server: Server) -> None:
    """Two connections' 2 000 frames of 63 KiB before any GREET leave the RSS where it was."""

    async def run() -> tuple[int, int, tuple[int, int]]:
        before = server.rss()
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_peak(server, stop))
        sent = await asyncio.gather(_pin(server.port), _pin(server.port))
        await asyncio.sleep(0.5)
        stop.set()
        return before, await sampler, sent

    before, peak, sent = asyncio.run(run())
    growth = (peak - before) / 2**20
    print(f"PINNED_MIB {growth:.1f} (frames taken before the close: {sent})")
    assert growth < 16, f"{growth:.1f} MiB pinned by frames sent before GREET"


async def _attacker(
    address: str, port: int, case: int, rng: random.Random, hold: float
) -> tuple[str, float]:
    """One unauthenticated connection; what became of it and how long it lived."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    except OSError:
        return "refused", 0.0
    try:
        if case == 0:  # junk
            writer.write(rng.randbytes(rng.randint(1, 3000)))
        elif case == 1:  # a big windowed frame before GREET
            writer.write(big_chat(2)[: 40 * 1024])
        elif case == 2:  # a slow drip of a header that promises 4 KiB
            writer.write(struct.pack(">I", 4000)[:3])
        elif case == 3:  # a frame just under the pre-auth limit, cut short
            writer.write(struct.pack(">I", 4000) + b"\x12" * 3000)
        # else: nothing at all
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(hold):
            while await reader.read(65536):
                pass
        return "closed", time.monotonic() - started
    except TimeoutError:
        return "open", time.monotonic() - started
    except ConnectionError:
        return "closed", time.monotonic() - started
    finally:
        writer.close()


async def _users(rest: str) -> tuple[IMClient, IMClient]:
    alice, bob = IMClient(rest, "alice", PW), IMClient(rest, "bob", PW)
    for c in (alice, bob):
        await c.register()
        await c.login()
    await befriend(alice, bob)
    await alice.connect()
    await bob.connect()
    return alice, bob


def test_a_flood_of_unauthenticated_connections_is_bounded_and_chat_goes_on(
    server: Server,
) -> None:
    async def run() -> None:
        alice, bob = await _users(server.rest)
        rng = random.Random(12)
        try:
            # warm: one exchange, so the baseline has the chat path's memory in it
            await alice.send_text("bob", "warm")
            while not isinstance(await bob.next_event(5), Message):
                pass
            await asyncio.sleep(0.5)
            before = server.rss()
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample_peak(server, stop))
            attackers = [
                asyncio.create_task(
                    _attacker(ADDRESSES[i % len(ADDRESSES)], server.port, (i // 5) % 5, rng, 12.0)
                )
                for i in range(1000)
            ]
            sent_ids = []
            for n in range(40):  # the neighbours chat through the flood
                sent_ids.append(await alice.send_text("bob", f"m{n}"))
                await asyncio.sleep(0.1)
            outcomes = list(zip(await asyncio.gather(*attackers), range(1000), strict=True))
            stop.set()
            peak = await sampler
            got: list[int] = []
            sent_ok: set[int] = set()
            deadline = time.monotonic() + 20
            while (len(got) < len(sent_ids) or not set(sent_ids) <= sent_ok) and (
                time.monotonic() < deadline
            ):
                for c in (alice, bob):
                    with contextlib.suppress(TimeoutError):
                        ev = await c.next_event(0.1)
                        if isinstance(ev, Message) and ev.msg_id in sent_ids:
                            got.append(ev.msg_id)
                        elif isinstance(ev, Receipt) and ev.kind == "SENT":
                            sent_ok.add(ev.msg_id)
        finally:
            await alice.close()
            await bob.close()
        kinds = [k for (k, _), _ in outcomes]
        growth = (peak - before) / 2**20
        admitted = len(ADDRESSES) * PER_ADDRESS
        print(
            f"FLOOD growth {growth:.1f} MiB for {admitted} admitted;"
            f" outcomes { {k: kinds.count(k) for k in set(kinds)} }"
        )
        assert got == sent_ids, "the neighbours' chat lost or reordered messages"
        assert set(sent_ids) <= sent_ok, "a neighbour's message never got SENT"
        assert "open" not in kinds, "an unauthenticated connection outlived the GREET deadline"
        longest = max(t for (k, t), _ in outcomes if k == "closed")
        assert longest < 10, longest  # IM_GREET_TIMEOUT 6 s, ticks of a quarter of it
        # the connections that say nothing wrong (cases 2-4: 120 per address) live until the
        # GREET deadline if admitted: at most 64 per address were, the rest closed at accept
        for a, address in enumerate(ADDRESSES):
            slow = [t for (k, t), i in outcomes if i % len(ADDRESSES) == a and (i // 5) % 5 >= 2]
            lived = sum(1 for t in slow if t >= 4.0)
            # (without the bound all 120 would live; how soon a refused one sees its close
            # depends on how busy the machine is, so no time is asserted for those)
            assert len(slow) == 120 and 0 < lived <= PER_ADDRESS, (address, lived)
        # 320 admitted connections cost the server at most ~30 KB each, all in
        assert growth < 10, f"{growth:.1f} MiB for {admitted} unauthenticated connections"

    asyncio.run(run())


def test_what_one_unauthenticated_connection_costs(tmp_path: Path) -> None:
    """2 000 silent connections (the cheapest attack, and the most numerous one the bounds
    allow): the server's RSS per connection, the number docs/security.md gives."""
    n = 2000

    async def run(server: Server) -> float:
        await asyncio.sleep(1.0)
        before = server.rss()
        conns = []
        for i in range(n):
            conns.append(
                await asyncio.open_connection(
                    "127.0.0.1", server.port, local_addr=(ADDRESSES[i % len(ADDRESSES)], 0)
                )
            )
        await asyncio.sleep(1.0)
        after = server.rss()
        for _, w in conns:
            w.close()
        return (after - before) / n

    with im_up(tmp_path, IM_PREAUTH_PER_ADDRESS=str(n), IM_GREET_TIMEOUT="30") as server:
        per_conn = asyncio.run(run(server))
    print(f"PREAUTH_BYTES_PER_CONN {per_conn:.0f}")
    assert per_conn < 16 * 1024
