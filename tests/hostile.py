"""Hostile clients: many connections sending random, truncated, over-size and well-formed-but-
wrong frames to a connector, each one waiting for the server to close it.

Used by tests/test_fuzz_live.py, and by hand against a running ``im up`` (on this machine only):

    python tests/hostile.py --port 9081 --rest http://127.0.0.1:8082 --connections 300

prints one JSON object: how many connections were opened, how many the server closed and how
long the slowest took, which ERROR codes came back, and any that were still open at the end.
With ``--rest``, some attackers register an account of their own first and misbehave after a
valid GREET (spoofed senders, strangers, cursors and syncs of other people's conversations,
bad sequences, then silence).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.codec import FrameDecoder, encode
from common.errors import FrameError
from proto import im_pb2

BODY_KINDS = [f.name for f in im_pb2.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields]


@dataclass
class Report:
    opened: int = 0
    closed_by_server: int = 0
    still_open: int = 0
    refused_connect: int = 0
    max_close_seconds: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "opened": self.opened,
            "closed_by_server": self.closed_by_server,
            "still_open": self.still_open,
            "refused_connect": self.refused_connect,
            "max_close_seconds": round(self.max_close_seconds, 2),
            "codes": dict(sorted(self.codes.items())),
        }


def random_envelope(rng: random.Random) -> im_pb2.Envelope:
    """A parseable envelope with a random body and random field values."""
    env = im_pb2.Envelope(seq=rng.choice([0, 1, 2, rng.getrandbits(64)]))
    kind = rng.choice(BODY_KINDS)
    body = getattr(env, kind)
    body.SetInParent()
    for f in body.DESCRIPTOR.fields:
        if f.message_type is not None or f.is_repeated:
            continue
        if f.type == f.TYPE_STRING:
            setattr(body, f.name, rng.choice(["", "alice", "x" * rng.randint(0, 300)]))
        elif f.type == f.TYPE_BYTES:
            setattr(body, f.name, rng.randbytes(rng.randint(0, 200)))
        elif f.type == f.TYPE_ENUM:
            setattr(body, f.name, rng.randint(0, 20))
        elif f.type == f.TYPE_BOOL:
            setattr(body, f.name, rng.random() < 0.5)
        elif f.type in (f.TYPE_UINT64, f.TYPE_UINT32):
            setattr(body, f.name, rng.getrandbits(32 if f.type == f.TYPE_UINT32 else 64))
        else:
            setattr(body, f.name, rng.randint(-(2**31), 2**31 - 1))
    return env


# PINGs, 64 KiB of them: a flood that asks for as many PONGs
_PING = encode(im_pb2.Envelope(ping=im_pb2.Ping(nonce=1)))
FLOOD_CHUNK = _PING * (64 * 1024 // len(_PING))
FLOOD_BYTES = 2 * 1024 * 1024


def unauthenticated_payload(rng: random.Random, max_frame: int) -> list[bytes]:
    """What one attacker without an account sends, as a list of writes."""
    case = rng.randrange(11)
    if case == 0:  # noise
        return [rng.randbytes(rng.randint(1, 4000))]
    if case == 1:  # a frame cut short, then nothing
        n = rng.randint(10, max_frame)
        return [struct.pack(">I", n) + rng.randbytes(rng.randint(0, n - 1))]
    if case == 2:  # a length beyond the limit, up to 4 GiB
        return [struct.pack(">I", rng.randint(max_frame + 1, 2**32 - 1)) + b"\x00" * 64]
    if case == 3:  # zero length, or half a header
        return [rng.choice([b"\x00\x00\x00\x00", b"\x00\x01"])]
    if case == 4:  # framed garbage
        junk = rng.randbytes(rng.randint(1, 500))
        return [struct.pack(">I", len(junk)) + junk]
    if case == 5:  # well-formed, random bodies
        return [b"".join(encode(random_envelope(rng)) for _ in range(rng.randint(1, 20)))]
    if case == 6:  # a forged GREET
        token = "v1." + rng.randbytes(30).hex() + "." + rng.randbytes(32).hex()
        return [encode(im_pb2.Envelope(greet=im_pb2.Greet(token=token, device_id="d")))]
    if case == 7:  # keep-alives only: they must not hold the connection past the deadline
        return [encode(im_pb2.Envelope(ping=im_pb2.Ping(nonce=i))) for i in range(5)]
    if case == 8:  # slow drip of a valid-looking frame
        frame = encode(im_pb2.Envelope(greet=im_pb2.Greet(token="x" * 500)))
        return [frame[i : i + 1] for i in range(min(len(frame), 40))]
    if case == 9:  # a flood of PINGs, never reading the PONGs until the end
        return [FLOOD_CHUNK] * (FLOOD_BYTES // len(FLOOD_CHUNK))
    return [b""]  # silence


def authenticated_payload(rng: random.Random, user: str, token: str) -> list[bytes]:
    """A GREET with a real token, then frames that are well-formed but wrong."""
    frames = [encode(im_pb2.Envelope(greet=im_pb2.Greet(token=token)))]
    seq = 0  # windowed frames must come in sequence, or they wait in the reorder buffer

    def windowed(**body: object) -> bytes:
        nonlocal seq
        seq += 1
        return encode(im_pb2.Envelope(seq=seq, **body))  # type: ignore[arg-type]

    for _ in range(rng.randint(1, 30)):
        case = rng.randrange(6)
        if case == 0:  # someone else's name
            c = im_pb2.ChatMsg(id=seq + 1, from_id="victim", dest_id=user, dest_type=im_pb2.SINGLE)
            frames.append(windowed(chat=c))
        elif case == 1:  # a stranger
            c = im_pb2.ChatMsg(
                id=seq + 1,
                from_id=user,
                dest_id="stranger",
                dest_type=im_pb2.SINGLE,
                msg_type=im_pb2.TEXT,
            )
            frames.append(windowed(chat=c))
        elif case == 2:  # a cursor in someone else's conversation, or in someone's name
            cursor = rng.choice(
                [
                    im_pb2.Cursor(conv_id="p:stranger:victim", type=im_pb2.READ, seq=9),
                    im_pb2.Cursor(
                        conv_id=_pair(user, "victim"), user_id="victim", type=im_pb2.READ, seq=9
                    ),
                    im_pb2.Cursor(conv_id=_pair(user, "victim"), type=im_pb2.SENT, seq=9),
                ]
            )
            frames.append(windowed(cursor=cursor))
        elif case == 3:  # a sync of someone else's conversation, or a receipt from a client
            if rng.random() < 0.5:
                frames.append(windowed(sync=im_pb2.Sync(conv_id="p:stranger:victim")))
            else:
                a = im_pb2.AckMsg(id=seq + 1, from_id=user, dest_id="victim", ack_type=im_pb2.SENT)
                frames.append(windowed(ack=a))
        elif case == 4:  # a second GREET, or a body only servers send
            kind = rng.choice(["greet", "welcome", "error"])
            env = im_pb2.Envelope()
            getattr(env, kind).SetInParent()
            frames.append(encode(env))
        else:  # anything at all: may well end the connection
            frames.append(encode(random_envelope(rng)))
    # and finally a breach the server must close on: a chat outside the window (seq 0). One that
    # stopped short of it would be an idle client, closed at the idle timeout like any other.
    frames.append(encode(im_pb2.Envelope(chat=im_pb2.ChatMsg(id=1, from_id=user))))
    return [b"".join(frames)]


def _pair(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"p:{low}:{high}"


async def attack(
    host: str,
    port: int,
    writes: list[bytes],
    report: Report,
    max_wait: float,
    rng: random.Random,
) -> None:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        report.refused_connect += 1
        return
    report.opened += 1
    decoder = FrameDecoder(2**31)
    try:
        flood = writes[0] is FLOOD_CHUNK
        for data in writes:
            writer.write(data)
            if flood:  # as fast as the server takes it; a server that stopped reading stops us
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    report.codes["<flood paused>"] += 1
                    break
            elif len(writes) > 1:
                await asyncio.sleep(rng.uniform(0.05, 0.3))
        async with asyncio.timeout(max_wait):
            while chunk := await reader.read(65536):
                try:
                    for env in decoder.feed(chunk):
                        if env.WhichOneof("body") == "error":
                            report.codes[im_pb2.ErrorCode.Name(env.error.code)] += 1
                except FrameError:
                    report.codes["<undecodable>"] += 1
        report.closed_by_server += 1
        report.max_close_seconds = max(report.max_close_seconds, time.monotonic() - started)
    except TimeoutError:
        report.still_open += 1
    except OSError:  # reset by the server: closed too
        report.closed_by_server += 1
        report.max_close_seconds = max(report.max_close_seconds, time.monotonic() - started)
    finally:
        writer.close()


async def accounts(rest: str, n: int, devices: int, seed: int) -> list[tuple[str, str]]:
    """Register (or reuse) ``n`` attacker accounts; a token for each of their ``devices``."""
    import httpx

    out = []
    async with httpx.AsyncClient(base_url=rest, timeout=30) as http:
        for i in range(n):
            user, password = f"hostile-{seed}-{i}", "hostile-password-1"
            await http.post("/users", json={"user_id": user, "password": password})
            for d in range(devices):
                body = {"user_id": user, "password": password, "device_id": f"d{d}"}
                r = await http.post("/login", json=body)
                r.raise_for_status()
                out.append((user, r.json()["token"]))
    return out


async def run(
    host: str,
    port: int,
    connections: int,
    concurrency: int,
    *,
    rest: str = "",
    seed: int = 1,
    max_frame: int = 64 * 1024,
    max_wait: float = 25.0,
) -> Report:
    rng = random.Random(seed)
    report = Report()
    users = await accounts(rest, 4, 4, seed) if rest else []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        r = random.Random(rng.getrandbits(64))
        if users and r.random() < 0.3:
            user, token = users[i % len(users)]
            writes = authenticated_payload(r, user, token)
        else:
            writes = unauthenticated_payload(r, max_frame)
        async with sem:
            await attack(host, port, writes, report, max_wait, r)

    await asyncio.gather(*(one(i) for i in range(connections)))
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9081)
    p.add_argument("--rest", default="", help="REST URL: also attack with accounts of our own")
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-wait", type=float, default=25.0)
    a = p.parse_args()
    if not a.host.startswith("127.") and a.host not in ("localhost", "::1"):
        p.error("only a server on this machine may be attacked")
    report = asyncio.run(
        run(
            a.host,
            a.port,
            a.connections,
            a.concurrency,
            rest=a.rest,
            seed=a.seed,
            max_wait=a.max_wait,
        )
    )
    print(json.dumps(report.as_dict()))
    return 0 if report.still_open == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
