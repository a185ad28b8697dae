"""``im demo``: N simulated users chat through a running server and every count is checked.

Registers the users (idempotent), makes them friends, keeps K of them offline while M messages go
between random friends, brings those K online (their messages come from the offline store),
has every recipient send READ, and waits until every sender holds SENT, DELIVERED and READ for
every message. The check is strict: each message surfaced once, in per-conversation order (ids
increase per sender), one receipt of each kind. Exit status 0 only when all of that holds.

With ``files`` > 0, that many of the messages are files of random sizes up to 1 MiB: each is
encrypted and uploaded by its sender, sent, received, downloaded and verified by its recipient
(checksum and authentication by the client library, then byte for byte against the original).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from client.core import IMClient, Message, Receipt, ServerError, befriend
from client.rest import RestError
from common.errors import IMError

PASSWORD = "demo-password-1"
# Up to this many users everyone befriends everyone; above it, a ring of neighbours.
FULL_MESH_MAX = 64
RING_NEIGHBOURS = 8
MAX_FILE = 1024 * 1024
DOWNLOADS_AT_ONCE = 8


@dataclass
class Tally:
    sent_ids: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    receipts: dict[str, set[tuple[str, int]]] = field(
        default_factory=lambda: {"SENT": set(), "DELIVERED": set(), "READ": set()}
    )
    receipt_dups: int = 0
    received: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    file_sums: dict[str, bytes] = field(default_factory=dict)  # file name -> SHA-256
    files_ok: int = 0
    files_failed: int = 0

    def expected(self) -> int:
        return sum(len(v) for v in self.sent_ids.values())


def _friends_of(i: int, n: int) -> list[int]:
    if n <= FULL_MESH_MAX:
        return [j for j in range(n) if j != i]
    ks = range(1, RING_NEIGHBOURS // 2 + 1)
    return sorted({(i + k) % n for k in ks} | {(i - k) % n for k in ks})


async def _fetch(
    c: IMClient, msg: Message, tally: Tally, into: Path, sem: asyncio.Semaphore
) -> None:
    """Download, verify and compare one received file."""
    async with sem:
        # message ids are unique per sender only: two senders can pick the same one
        dest = into / f"{c.user_id}-{msg.from_id}-{msg.msg_id}.bin"
        try:
            await c.download(msg, dest)
            digest = await asyncio.to_thread(lambda: hashlib.sha256(dest.read_bytes()).digest())
        except (IMError, OSError) as exc:
            tally.files_failed += 1
            tally.errors.append(f"{c.user_id}: download of {msg.text}: {exc}")
            return
        finally:
            dest.unlink(missing_ok=True)
        if tally.file_sums.get(msg.text) == digest:
            tally.files_ok += 1
        else:
            tally.files_failed += 1
            tally.errors.append(f"{c.user_id}: {msg.text} differs from what was sent")


async def _consume(
    c: IMClient,
    tally: Tally,
    into: Path,
    sem: asyncio.Semaphore,
    downloads: list[asyncio.Task[None]],
) -> None:
    async for ev in c.events():
        if isinstance(ev, Message):
            key = (ev.from_id, c.user_id)
            if ev.msg_id in tally.received[key]:
                tally.duplicates += 1
                continue
            tally.received[key].append(ev.msg_id)
            if ev.file is not None:
                downloads.append(asyncio.create_task(_fetch(c, ev, tally, into, sem)))
            await c.send_read(ev)
        elif isinstance(ev, Receipt):
            bucket = tally.receipts.get(ev.kind)
            if bucket is None:
                continue
            item = (c.user_id, ev.msg_id)
            if item in bucket:
                tally.receipt_dups += 1
            bucket.add(item)
        elif isinstance(ev, ServerError):
            tally.errors.append(f"{c.user_id}: {ev.code} {ev.detail}")


async def run_demo(
    rest: str,
    users: int,
    messages: int,
    offline: int,
    *,
    files: int = 0,
    prefix: str = "demo",
    timeout: float = 120.0,
    progress: bool = True,
) -> dict[str, object]:
    if users < 2:
        raise IMError("need at least 2 users")
    offline = max(0, min(offline, users - 2))
    files = max(0, min(files, messages))
    workdir = tempfile.TemporaryDirectory(prefix="im-demo-")
    outbox, inbox = Path(workdir.name, "out"), Path(workdir.name, "in")
    await asyncio.to_thread(outbox.mkdir)
    await asyncio.to_thread(inbox.mkdir)
    downloads: list[asyncio.Task[None]] = []
    download_slots = asyncio.Semaphore(DOWNLOADS_AT_ONCE)
    started = time.monotonic()
    names = [f"{prefix}-{i:04d}" for i in range(users)]
    clients = [IMClient(rest, n, PASSWORD, device_id="demo") for n in names]
    tally = Tally()
    tasks: list[asyncio.Task[None]] = []

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    try:
        sem = asyncio.Semaphore(16)

        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout

        async def register(c: IMClient) -> None:
            async with sem:
                while True:
                    try:
                        await c.register()
                        break
                    except RestError as exc:
                        # the server's registration limit per address: wait as it says, within
                        # the demo's own time (a fresh `im up` allows 20 a minute)
                        wait = exc.retry_after or 1.0
                        if exc.status != 429 or loop.time() + wait > give_up:
                            raise
                        say(f"registration limited; waiting {wait:.0f} s")
                        await asyncio.sleep(wait)
                await c.login()

        async def make_friends(i: int) -> None:
            async with sem:
                c = clients[i]
                for j in _friends_of(i, users):
                    if j > i and names[j] not in c.friends:
                        await befriend(c, clients[j])  # asked, then accepted

        await asyncio.gather(*(register(c) for c in clients))
        await asyncio.gather(*(make_friends(i) for i in range(users)))
        await asyncio.gather(*(c.refresh_friends() for c in clients))
        say(f"{users} users registered and befriended")

        async def connect(i: int) -> None:
            async with sem:
                await clients[i].connect()
                consumer = _consume(clients[i], tally, inbox, download_slots, downloads)
                tasks.append(asyncio.create_task(consumer))

        offline_set = set(range(offline))
        online = [i for i in range(users) if i not in offline_set]
        await asyncio.gather(*(connect(i) for i in online))
        say(f"{len(online)} online, {offline} offline; sending {messages} messages")

        rng = random.Random(users * 7919 + messages)
        as_file = set(rng.sample(range(messages), files))
        plan: dict[int, list[tuple[str, Path | None]]] = defaultdict(list)
        for k in range(messages):
            i = rng.choice(online)
            attachment = None
            if k in as_file:
                attachment = outbox / f"{prefix}-{k:06d}.bin"
                data = rng.randbytes(rng.randint(1, MAX_FILE))
                await asyncio.to_thread(attachment.write_bytes, data)
                tally.file_sums[attachment.name] = hashlib.sha256(data).digest()
            plan[i].append((names[rng.choice(_friends_of(i, users))], attachment))

        async def send_all(i: int) -> None:
            c = clients[i]
            for n, (dest, attachment) in enumerate(plan[i]):
                if attachment is None:
                    msg_id = await c.send_text(dest, f"message {n} from {c.user_id}")
                else:
                    msg_id = await c.send_file(dest, attachment)
                tally.sent_ids[(c.user_id, dest)].append(msg_id)

        await asyncio.gather(*(send_all(i) for i in plan))

        async def wait_for(what: str, cond: object) -> None:
            assert callable(cond)
            while not cond():
                if time.monotonic() - started > timeout:
                    raise TimeoutError(what)
                await asyncio.sleep(0.05)

        # Offline recipients' messages must be stored (SENT) before they come online.
        await wait_for("SENT", lambda: len(tally.receipts["SENT"]) >= messages)
        say(f"all {messages} SENT; bringing {offline} users online")
        await asyncio.gather(*(connect(i) for i in offline_set))
        await wait_for(
            "receipts",
            lambda: (
                len(tally.receipts["READ"]) >= messages
                and len(tally.receipts["DELIVERED"]) >= messages
            ),
        )
        await wait_for("downloads", lambda: tally.files_ok + tally.files_failed >= files)
        await asyncio.sleep(0.2)  # let any stray duplicate arrive before counting
    except TimeoutError as exc:
        tally.errors.append(f"timed out waiting for {exc}")
    except (IMError, OSError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        for t in tasks + downloads:
            t.cancel()
        await asyncio.gather(*tasks, *downloads, return_exceptions=True)
        workdir.cleanup()
        connectors = {c.node_id for c in clients if c.node_id}
        dups_dropped = sum(c.duplicates_dropped for c in clients)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    out_of_order = 0
    for key, ids in tally.received.items():
        expected_order = [i for i in tally.sent_ids.get(key, []) if i in set(ids)]
        out_of_order += sum(1 for a, b in zip(ids, expected_order, strict=False) if a != b)
    received = sum(len(v) for v in tally.received.values())
    return {
        "users": users,
        "messages": messages,
        "offline_users": offline,
        "sent": len(tally.receipts["SENT"]),
        "delivered": len(tally.receipts["DELIVERED"]),
        "read": len(tally.receipts["READ"]),
        "received": received,
        "duplicates": tally.duplicates + tally.receipt_dups,
        "duplicates_dropped_by_client": dups_dropped,
        "out_of_order": out_of_order,
        "errors": len(tally.errors),
        "error_samples": tally.errors[:5],
        "files": files,
        "files_ok": tally.files_ok,
        "seconds": round(time.monotonic() - started, 3),
        "connectors_used": len(connectors),
    }


def ok(report: dict[str, object]) -> bool:
    m = report["messages"]
    return (
        all(report[k] == m for k in ("sent", "delivered", "read", "received"))
        and report["duplicates"] == 0
        and report["out_of_order"] == 0
        and report["errors"] == 0
        and report.get("files_ok", 0) == report.get("files", 0)
    )


def main(
    rest: str,
    users: int,
    messages: int,
    offline: int,
    as_json: bool,
    timeout: float,
    files: int = 0,
) -> int:
    prefix = f"demo{users}"
    report = asyncio.run(
        run_demo(
            rest,
            users,
            messages,
            offline,
            files=files,
            prefix=prefix,
            timeout=timeout,
            progress=not as_json,
        )
    )
    good = ok(report)
    if as_json:
        print(json.dumps(report))
    else:
        print(
            f"{report['messages']} messages between {report['users']} users "
            f"({report['offline_users']} offline at first) in {report['seconds']} s\n"
            f"  sent {report['sent']}  delivered {report['delivered']}  read {report['read']}  "
            f"received {report['received']}\n"
            f"  files {report['files']}  verified {report['files_ok']}\n"
            f"  duplicates {report['duplicates']}  out of order {report['out_of_order']}  "
            f"errors {report['errors']}  connectors used {report['connectors_used']}\n"
            f"  {'OK' if good else 'FAILED'}"
        )
        for e in report["error_samples"]:  # type: ignore[attr-defined]
            print(f"  error: {e}")
    return 0 if good else 1
