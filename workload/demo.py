"""``im demo``: N simulated users, D devices each, chat through a running server; every count
is checked.

Registers the users (idempotent), makes them friends, keeps K of them offline (all their
devices) while M messages go between random friends, each sent from a random device of its
sender, while some devices of the online users go away and come back at random
(workload/fleet.py). Once everything is SENT the K users come online and catch up from their
timelines. Every device marks what it shows read, and the run waits until every sender holds
SENT, DELIVERED and READ for every message and every device of every user holds every message
of its conversations. Then a brand-new device per user pages the full history over REST.

The check is strict (workload/devices.py): each device shows each message once, at the seq
the server committed it at, in seq order, and all devices of a user agree; one receipt of each
kind per message; the history holds every message. Exit status 0 only when all of that holds.

With ``groups`` > 0 (``im demo --groups G --group-size S``), G groups of S members among the
users carry group traffic mixed with the 1-1 traffic, one member leaving and one joining in
each mid-run (workload/demogroups.py), and the JSON adds the group counts of
workload/groupcheck.py, ``read_by_exact`` (the server's read-by of a sample of group messages
equals what the members' READ cursors say) and ``read_by_checked`` (the sample's size).

With ``files`` > 0, that many of the messages are files of random sizes up to 1 MiB: each is
encrypted and uploaded by its sender, sent, received, downloaded (once per recipient, by the
first of its devices that shows it) and verified byte for byte against the original.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.core import IMClient, befriend
from client.events import Message, Receipt, ServerError
from client.rest import RestError
from common.errors import IMError
from workload.demogroups import (
    GroupPlan,
    GroupTally,
    ReadByResult,
    check_read_by,
    group_traffic,
    make_groups,
)
from workload.devices import (
    DeviceLog,
    check_devices,
    committed,
    disorder,
    history_missing,
    sender_disorder,
)
from workload.fleet import Flapper, Fleet, record
from workload.groupcheck import GroupReport, check_groups

PASSWORD = "demo-password-1"
# Up to this many users everyone befriends everyone; above it, a ring of neighbours.
FULL_MESH_MAX = 64
RING_NEIGHBOURS = 8
MAX_FILE = 1024 * 1024
DOWNLOADS_AT_ONCE = 8
HISTORY_PAGE = 200


@dataclass
class Tally:
    sent: dict[tuple[str, int], str] = field(default_factory=dict)  # (sender, id) -> dest
    receipts: dict[str, set[tuple[str, int]]] = field(
        default_factory=lambda: {"SENT": set(), "DELIVERED": set(), "READ": set()}
    )
    receipt_dups: int = 0
    logs: dict[int, DeviceLog] = field(default_factory=dict)  # id(client) -> its log
    errors: list[str] = field(default_factory=list)
    file_sums: dict[str, bytes] = field(default_factory=dict)  # file name -> SHA-256
    fetched: set[tuple[str, str, int]] = field(default_factory=set)  # (recipient, sender, id)
    files_ok: int = 0
    files_failed: int = 0
    groups: GroupTally = field(default_factory=GroupTally)


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
    log = tally.logs[id(c)]
    async for ev in c.events():
        record(log, ev)
        if isinstance(ev, Message):
            first = (c.user_id, ev.from_id, ev.msg_id)
            if ev.file is not None and not ev.own and first not in tally.fetched:
                tally.fetched.add(first)
                downloads.append(asyncio.create_task(_fetch(c, ev, tally, into, sem)))
            if ev.conv_id and ev.seq:
                await c.mark_read(ev.conv_id, ev.seq)
        elif isinstance(ev, Receipt) and ev.conv_id.startswith("g:"):
            if ev.kind == "SENT":
                tally.groups.sent.add((c.user_id, ev.msg_id))
            elif ev.kind == "RESEALED":
                tally.groups.resealed += 1
        elif isinstance(ev, Receipt):
            bucket = tally.receipts.get(ev.kind)
            if bucket is None:
                continue
            item = (c.user_id, ev.msg_id)
            if item in bucket:
                tally.receipt_dups += 1
            bucket.add(item)
        elif isinstance(ev, ServerError):
            tally.errors.append(f"{c.user_id}/{c.device_id}: {ev.code} {ev.detail}")


async def _history(c: IMClient, tally: Tally) -> dict[tuple[str, int], tuple[str, int]]:
    """Every message of every conversation of ``c``'s user, paged over REST, by place."""
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for conv in await c.conversations():
        after = 0
        while True:
            page = await c.history(conv.info.conv_id, after=after, limit=HISTORY_PAGE)
            for item in page:
                if isinstance(item, Message):
                    out[(conv.info.conv_id, item.seq)] = (item.from_id, item.msg_id)
                else:
                    tally.errors.append(f"{c.user_id} history: {item.code} {item.detail}")
                after = max(after, item.seq)
            if not page:  # the server may cap a page below what we asked: read to the end
                break
    return out


async def run_demo(
    rest: str,
    users: int,
    messages: int,
    offline: int,
    *,
    devices: int = 1,
    files: int = 0,
    prefix: str = "demo",
    timeout: float = 120.0,
    progress: bool = True,
    groups: int = 0,
    group_size: int = 0,
    group_messages: int = 0,
) -> dict[str, object]:
    if users < 2:
        raise IMError("need at least 2 users")
    if groups and not 3 <= group_size < users:
        raise IMError("--group-size must be at least 3 and below --users (a joiner is outside)")
    if devices < 1:
        raise IMError("need at least 1 device per user")
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

    def make(user: str, device: str) -> IMClient:
        return IMClient(rest, user, PASSWORD, device_id=device)

    fleet = Fleet(names, devices, make, tag="demo")
    tally = Tally()
    for c in fleet.all():
        tally.logs[id(c)] = DeviceLog(c.user_id, c.device_id)
    tasks: list[asyncio.Task[None]] = []
    flapper: Flapper[IMClient] | None = None
    fresh: list[IMClient] = []
    history_checked = history_lacking = 0
    plans: list[GroupPlan] = []
    group_rep = GroupReport()
    read_by = ReadByResult()
    group_rng = random.Random(users * 104729 + messages + groups)

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    try:
        sem = asyncio.Semaphore(16)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout

        async def register(name: str) -> None:
            async with sem:
                while True:
                    try:
                        await fleet.primary(name).register()
                        break
                    except RestError as exc:
                        # the server's registration limit per address: wait as it says, within
                        # the demo's own time (a fresh `im up` allows 20 a minute)
                        wait = exc.retry_after or 1.0
                        if exc.status != 429 or loop.time() + wait > give_up:
                            raise
                        say(f"registration limited; waiting {wait:.0f} s")
                        await asyncio.sleep(wait)

        async def login(c: IMClient) -> None:
            async with sem:
                await c.login()

        async def make_friends(i: int) -> None:
            async with sem:
                c = fleet.primary(names[i])
                for j in _friends_of(i, users):
                    if j > i and names[j] not in c.friends:
                        await befriend(c, fleet.primary(names[j]))  # asked, then accepted

        await asyncio.gather(*(register(n) for n in names))
        await asyncio.gather(*(login(c) for c in fleet.all()))
        await asyncio.gather(*(make_friends(i) for i in range(users)))
        await asyncio.gather(*(c.refresh_friends() for c in fleet.all()))
        say(f"{users} users with {devices} device(s) each registered and befriended")

        async def connect(c: IMClient) -> None:
            async with sem:
                await c.connect()

        offline_names = names[:offline]
        online_names = names[offline:]
        if groups:
            plans = await make_groups(
                fleet, names, online_names, groups, group_size, group_rng, prefix
            )
            say(f"{groups} groups of {group_size} made")
        for c in fleet.all():
            consumer = _consume(c, tally, inbox, download_slots, downloads)
            tasks.append(asyncio.create_task(consumer, name=f"demo {c.user_id}/{c.device_id}"))
        await asyncio.gather(*(connect(c) for c in fleet.of(online_names)))
        if devices > 1:
            pool = fleet.of(online_names)
            flapper = Flapper(pool, max_offline=max(1, len(pool) // 5), every=0.1, away=(0.2, 2.0))
            flapper.start(random.Random(users * 31 + messages))
        say(f"{len(online_names)} online, {offline} offline; sending {messages} messages")

        rng = random.Random(users * 7919 + messages)
        as_file = set(rng.sample(range(messages), files))
        plan: dict[str, list[tuple[int, str, Path | None]]] = {n: [] for n in online_names}
        for k in range(messages):
            i = rng.randrange(offline, users)
            attachment = None
            if k in as_file:
                attachment = outbox / f"{prefix}-{k:06d}.bin"
                data = rng.randbytes(rng.randint(1, MAX_FILE))
                await asyncio.to_thread(attachment.write_bytes, data)
                tally.file_sums[attachment.name] = hashlib.sha256(data).digest()
            dest = names[rng.choice(_friends_of(i, users))]
            plan[names[i]].append((rng.randrange(devices), dest, attachment))

        async def send_all(name: str) -> None:
            for n, (k, dest, attachment) in enumerate(plan[name]):
                c = fleet.clients[name][k]
                if attachment is None:
                    msg_id = await c.send_text(dest, f"message {n} from {c.user_id}")
                else:
                    msg_id = await c.send_file(dest, attachment)
                tally.sent[(c.user_id, msg_id)] = dest

        async def wait_for(what: str, cond: Callable[[], bool]) -> None:
            while not cond():
                if time.monotonic() - started > timeout:
                    raise TimeoutError(what)
                await asyncio.sleep(0.05)

        async def hold(dev: IMClient) -> bool:
            """Take ``dev`` offline and keep the flapper off it (not one away already)."""
            if not dev.connected or (flapper is not None and id(dev) in flapper.offline):
                return False
            if flapper is not None:
                flapper.held.add(id(dev))
            await dev.disconnect()
            return True

        traffic = [send_all(n) for n in plan]
        if groups:
            per_group = group_messages or max(2, messages // (4 * groups))
            online = set(online_names)
            traffic.append(
                group_traffic(
                    fleet, plans, per_group, online, group_rng, tally.groups, hold, wait_for
                )
            )
        await asyncio.gather(*traffic)
        if tally.groups.held:  # the leavers' devices come back: nothing past their LEFT
            await asyncio.gather(*(connect(c) for c in tally.groups.held))

        # Offline recipients' messages must be committed (SENT) before they come online.
        await wait_for("SENT", lambda: len(tally.receipts["SENT"]) >= messages)
        say(f"all {messages} SENT; bringing {offline} users online")
        await asyncio.gather(*(connect(c) for c in fleet.of(offline_names)))
        await wait_for(
            "receipts",
            lambda: (
                len(tally.receipts["READ"]) >= messages
                and len(tally.receipts["DELIVERED"]) >= messages
            ),
        )
        await wait_for("downloads", lambda: tally.files_ok + tally.files_failed >= files)
        if flapper is not None:  # flapping until here: devices away while receipts flow too
            await flapper.stop()

        def every_device_has_all() -> bool:
            rep = check_devices(tally.logs.values(), devices)
            return rep.device_deliveries >= rep.device_deliveries_expected

        await wait_for("every device", every_device_has_all)
        if groups:
            convs = {p.conv_id for p in plans}

            judged = [0.0]

            def groups_settled() -> bool:
                """Judged at most every half second: the logs are large by now."""
                if time.monotonic() - judged[0] < 0.5:
                    return False
                judged[0] = time.monotonic()
                rep = check_groups(tally.logs.values(), convs, devices)
                return rep.group_deliveries >= rep.group_deliveries_expected

            await wait_for("every group device", groups_settled)
            read_by = await check_read_by(fleet, plans, tally.logs, group_rng, 20.0)
        await asyncio.sleep(0.2)  # let any stray duplicate arrive before counting
        say("every device holds every message; paging history on a new device per user")
        truth, _ = committed(tally.logs.values())
        fresh = [fleet.fresh(n) for n in names]
        await asyncio.gather(*(login(c) for c in fresh))
        for c in fresh:
            checked, lacking = history_missing(truth, c.user_id, await _history(c, tally))
            history_checked += checked
            history_lacking += lacking
    except TimeoutError as exc:
        tally.errors.append(f"timed out waiting for {exc}")
    except (IMError, OSError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if flapper is not None:
            await flapper.stop()
            tally.errors.extend(flapper.failures)
        for t in tasks + downloads:
            t.cancel()
        await asyncio.gather(*tasks, *downloads, return_exceptions=True)
        workdir.cleanup()
        everyone = [*fleet.all(), *fresh]
        connectors = {c.node_id for c in everyone if c.node_id}
        await asyncio.gather(*(c.close() for c in everyone), return_exceptions=True)

    logs = list(tally.logs.values())
    rep = check_devices(logs, devices)
    truth, _ = committed(logs)
    # a message reached its recipient once any device of theirs showed it
    received = {
        (conv, seq)
        for log in logs
        for conv, seq, key in log.surfaced
        if key[0] != log.user and (conv, seq) in truth and not conv.startswith("g:")
    }
    extra: dict[str, object] = {}
    if groups:
        group_rep = check_groups(logs, {p.conv_id for p in plans}, devices)
        extra = {
            "groups": groups,
            "group_size": group_size,
            "group_planned": tally.groups.planned,
            **group_rep.as_dict(),
            "read_by_exact": read_by.exact,
            "read_by_checked": read_by.checked,
            "group_resealed": tally.groups.resealed,
        }
        tally.errors.extend(group_rep.samples + read_by.samples)
    out_of_order = sum(disorder(log) for log in logs)
    return {
        "users": users,
        "messages": messages,
        "offline_users": offline,
        "sent": len(tally.receipts["SENT"]),
        "delivered": len(tally.receipts["DELIVERED"]),
        "read": len(tally.receipts["READ"]),
        "received": len(received),
        "duplicates": rep.device_duplicates + tally.receipt_dups,
        "out_of_order": out_of_order,
        "sender_disorder": sender_disorder(truth),
        "errors": len(tally.errors),
        "error_samples": (tally.errors + rep.missing_samples)[:5],
        "files": files,
        "files_ok": tally.files_ok,
        "seconds": round(time.monotonic() - started, 3),
        "connectors_used": len(connectors),
        **rep.as_dict(),
        "devices": devices,  # per user, as asked; the device_* counts sum over all of them
        "flaps": flapper.flaps if flapper is not None else 0,
        "history_checked": history_checked,
        "history_missing": history_lacking,
        **extra,
    }


def ok(report: dict[str, object]) -> bool:
    m = report["messages"]
    devices = report.get("devices", 0)
    return (
        all(report[k] == m for k in ("sent", "delivered", "read", "received"))
        and report["duplicates"] == 0
        and report["out_of_order"] == 0
        and report.get("sender_disorder") == 0
        and report["errors"] == 0
        and report.get("files_ok", 0) == report.get("files", 0)
        and report["device_deliveries"] == report["device_deliveries_expected"]
        and all(
            report[k] == 0 for k in ("device_missing", "device_duplicates", "device_order_mismatch")
        )
        and report["history_missing"] == 0
        # each message is in the history of two users
        and isinstance(m, int)
        and report["history_checked"] == 2 * m
        and devices != 0
        and (not report.get("groups") or groups_ok(report))
    )


def groups_ok(report: dict[str, object]) -> bool:
    """Every group count exact, no leak, read-by agreeing with the cursors."""
    return (
        report["group_messages"] == report["group_planned"]
        and report["group_deliveries"] == report["group_deliveries_expected"]
        and report["group_missing"] == 0
        and report["group_duplicates"] == 0
        and report["group_leaks"] == 0
        and report["read_by_exact"] is True
        and isinstance(report["read_by_checked"], int)
        and report["read_by_checked"] > 0
    )


def main(
    rest: str,
    users: int,
    messages: int,
    offline: int,
    as_json: bool,
    timeout: float,
    files: int = 0,
    devices: int = 1,
    groups: int = 0,
    group_size: int = 0,
    group_messages: int = 0,
) -> int:
    prefix = f"demo{users}"
    report = asyncio.run(
        run_demo(
            rest,
            users,
            messages,
            offline,
            devices=devices,
            files=files,
            prefix=prefix,
            timeout=timeout,
            progress=not as_json,
            groups=groups,
            group_size=group_size,
            group_messages=group_messages,
        )
    )
    good = ok(report)
    if as_json:
        print(json.dumps(report))
    else:
        print(
            f"{report['messages']} messages between {report['users']} users "
            f"({report['offline_users']} offline at first), {report['devices']} devices "
            f"in {report['seconds']} s\n"
            f"  sent {report['sent']}  delivered {report['delivered']}  read {report['read']}  "
            f"received {report['received']}\n"
            f"  device deliveries {report['device_deliveries']} of "
            f"{report['device_deliveries_expected']}  missing {report['device_missing']}  "
            f"duplicates {report['device_duplicates']}  order mismatch "
            f"{report['device_order_mismatch']}  flaps {report['flaps']}\n"
            f"  history checked {report['history_checked']}  missing "
            f"{report['history_missing']}\n"
            f"  files {report['files']}  verified {report['files_ok']}\n"
            f"  duplicates {report['duplicates']}  out of order {report['out_of_order']}  "
            f"errors {report['errors']}  connectors used {report['connectors_used']}\n"
            + (
                f"  groups {report['groups']} of {report['group_size']}: "
                f"{report['group_messages']} of {report['group_planned']} messages, "
                f"deliveries {report['group_deliveries']} of "
                f"{report['group_deliveries_expected']}  missing {report['group_missing']}  "
                f"duplicates {report['group_duplicates']}  leaks {report['group_leaks']}  "
                f"read-by exact {report['read_by_exact']} ({report['read_by_checked']} checked)"
                f"  resealed {report['group_resealed']}\n"
                if report.get("groups")
                else ""
            )
            + f"  {'OK' if good else 'FAILED'}"
        )
        for e in report["error_samples"]:  # type: ignore[attr-defined]
            print(f"  error: {e}")
    return 0 if good else 1
