"""``im chaos``: the cluster under SIGKILL, and a check that G1-G4 held (DESIGN §5).

Starts the multi-process cluster (REST, transfers, connectors, timeline writers) on the
configured services, as ``im cluster`` does, but in a database, Redis key prefix and RabbitMQ
queue set of its own, so it can run beside a real deployment and leaves nothing behind. Users
chat without pause through the client library on D devices each, devices going offline and
coming back (workload/traffic.py), while every few seconds a random connector, transfer or
writer is SIGKILLed and started again. Then it stops the killing, brings every device online,
waits for the system to settle and compares what every side recorded. Exit status: 0 only when
nothing acknowledged was lost, nothing was surfaced twice or out of order, every receipt
arrived once, every device of every user holds every message of its conversations in the same
order, the devices of each user agree on where it read to, and no process died by itself.

Groups (``--groups G --group-size S``, on by default) are checked the same way: a share of the
rate goes to group chats, one member leaves and one joins in each group mid-run, under the
kills (workload/chaosgroups.py), and every device of every member must hold every group chat
of its membership span once and in seq order, and nothing past it (``group_leaks``).

REST is not killed: it is stateless, and a login that fails is the client's to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cli.cluster import (
    Child,
    check_services,
    cluster_settings,
    plan,
    spawn,
    stop_gently,
    wait_port,
)
from common.config import Settings
from common.db import MySQLParams, open_database
from common.errors import IMError
from workload.traffic import Users, check, check_all, group_samples

# the timeline writer's role is "writer"; "offline-writer" is its name before the timelines
KILLABLE = ("connector", "transfer", "writer", "offline-writer")
START_ORDER = ("transfer", "writer", "offline-writer", "connector", "rest")
START_TIMEOUT = 30.0


@dataclass
class Options:
    seconds: float = 60.0
    users: int = 20
    rate: float = 40.0  # messages per second, all users together
    kill_every: float = 4.0
    flap_every: float = 2.0  # a user goes offline about this often
    connectors: int = 2
    transfers: int = 2
    writers: int = 2
    quiesce: float = 90.0
    seed: int | None = None
    keep: bool = False
    devices: int = 1  # per user: each is checked on its own, and against its siblings
    groups: int = 2  # groups among the users (0: 1-1 only)
    group_size: int = 6  # members each, at most users - 1 (a joiner stays outside)
    group_share: float = 0.25  # of the rate that goes to group chats

    def sized_groups(self) -> int:
        """The group size this run uses: ``group_size`` bounded by the users; IMError when
        groups were asked for and no group of 3 (owner, leaver, one who stays) fits."""
        size = min(self.group_size, self.users - 1)
        if self.groups and size < 3:
            raise IMError("--groups needs --group-size 3+ and 4+ users (or --groups 0)")
        if not 0 <= self.group_share < 1:
            raise IMError("--group-share must be in [0, 1)")
        return size


@dataclass
class Proc:
    """A child that the killer may take down and bring back, same name, port and node id."""

    child: Child
    log: Path
    port: int
    proc: asyncio.subprocess.Process | None = None
    killed_by_us: bool = False

    async def start(self) -> None:
        proc = await spawn(["-m", "cli.main", self.child.role], self.child.env, self.log)
        # only now: until the new process exists, the old one is still the dead one we killed
        self.proc, self.killed_by_us = proc, False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        if self.proc is not None and self.alive:
            self.killed_by_us = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    async def stop(self, grace: float) -> None:
        if self.proc is not None:
            await stop_gently(self.proc, grace)

    async def wait_ready(self, host: str) -> bool:
        """Until the port accepts (a queue consumer has none: until it has run a moment)."""
        if self.proc is None:
            return False
        if not self.port:
            await asyncio.sleep(0.5)
            return self.alive
        return await wait_port(host, self.port, self.proc, START_TIMEOUT)


@dataclass
class Chaos:
    settings: Settings
    opts: Options
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    crashed: list[str] = field(default_factory=list)
    quiet: bool = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"chaos | {text}", file=sys.stderr, flush=True)

    @property
    def host(self) -> str:
        return self.settings.advertised_host()

    @property
    def rest(self) -> str:
        return f"http://{self.host}:{self.settings.rest_port}"

    async def start_cluster(self) -> None:
        s, o = self.settings, self.opts
        children = plan(s, o.connectors, o.transfers, o.writers)
        for child in children:
            # plan() passes the caller's IM_* through: this run's own namespaces win
            child.env.update(
                {
                    "IM_REDIS_PREFIX": s.redis_prefix,
                    "IM_AMQP_QUEUE": s.amqp_queue,
                    "IM_LOG_LEVEL": s.log_level,
                    # every chaos user registers from this host, --users of them at once
                    "IM_REGISTER_PER_ADDRESS": str(max(s.register_per_address, o.users)),
                }
            )
            port = {
                "rest": s.rest_port,
                "transfer": int(child.env.get("IM_TRANSFER_PORT", 0)),
                "connector": int(child.env.get("IM_CONNECTOR_PORT", 0)),
            }.get(child.role, 0)
            self.procs.append(Proc(child, self.workdir / f"{child.name}.log", port))
        for p in sorted(self.procs, key=lambda p: START_ORDER.index(p.child.role)):
            await p.start()
            if not await p.wait_ready(self.host):
                raise RuntimeError(f"{p.child.name} did not come up (log: {p.log})")
        self.say("cluster up: " + ", ".join(p.child.name for p in self.procs))

    async def watch(self) -> None:
        """A process that died without our SIGKILL crashed: note it, start it again."""
        while True:
            await asyncio.sleep(0.5)
            for p in self.procs:
                if p.proc is not None and not p.alive and not p.killed_by_us:
                    self.crashed.append(f"{p.child.name} exited {p.proc.returncode}")
                    self.say(f"{p.child.name} died by itself ({p.proc.returncode}); restarting")
                    await p.start()

    async def killer(self, until: float, rng: random.Random) -> None:
        victims = [p for p in self.procs if p.child.role in KILLABLE]
        while True:
            pause = rng.uniform(0.5, 1.5) * self.opts.kill_every
            if time.monotonic() + pause >= until:
                return
            await asyncio.sleep(pause)
            victim = rng.choice(victims)
            await victim.kill()
            self.kills[victim.child.role] += 1
            self.say(f"SIGKILL {victim.child.name}")
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            await victim.start()
            if not await victim.wait_ready(self.host):
                self.crashed.append(f"{victim.child.name} did not come back")

    async def stop_cluster(self) -> None:
        for p in reversed(self.procs):
            await p.stop(10.0)


def chaos_settings(settings: Settings, tag: str) -> Settings:
    """The configured services, in namespaces of this run's own."""
    settings, _ = cluster_settings(settings)
    params = MySQLParams.from_url(settings.database_url)
    base = settings.database_url.rsplit("/", 1)[0]
    return settings.model_copy(
        update={
            "database_url": f"{base}/{params.database}_chaos_{tag}",
            "redis_prefix": f"{settings.redis_prefix}chaos:{tag}:",
            "amqp_queue": f"{settings.amqp_queue}.chaos.{tag}",
            "log_level": "WARNING" if settings.log_level == "INFO" else settings.log_level,
        }
    )


async def cleanup(settings: Settings) -> None:
    """Drop this run's database, Redis keys and queues."""
    from common import amqpconn, redisconn

    with contextlib.suppress(Exception):
        r = await redisconn.connect(settings.redis_url)  # one server or Sentinel
        keys = [k async for k in r.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
    with contextlib.suppress(Exception):
        conn = await amqpconn.connect(settings.amqp_url, timeout=5)  # one node or several
        channel = await conn.channel()
        for name in (settings.amqp_queue, settings.timeline_queue()):
            for i in range(settings.amqp_shards):
                await channel.queue_delete(f"{name}.{i}")
            await channel.queue_delete(f"{name}.dead")
        await conn.close()
    with contextlib.suppress(Exception):
        params = MySQLParams.from_url(settings.database_url)
        db = await open_database(settings.database_url.rsplit("/", 1)[0] + "/mysql", pool_size=1)
        try:
            await db.execute(f"DROP DATABASE IF EXISTS `{params.database}`")
        finally:
            await db.close()


async def run_chaos(settings: Settings, opts: Options, *, quiet: bool = False) -> dict[str, object]:
    seed = opts.seed if opts.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    tag = secrets.token_hex(4)
    settings = chaos_settings(settings, tag)
    workdir = Path(tempfile.mkdtemp(prefix=f"im-chaos-{tag}-"))
    chaos = Chaos(settings, opts, workdir, quiet=quiet)
    began = time.monotonic()
    size = opts.sized_groups()
    users = Users.named(
        chaos.rest,
        f"ch{tag}",
        opts.users,
        opts.devices,
        groups=opts.groups,
        group_size=size,
        group_share=opts.group_share,
    )
    report: dict[str, object] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        with contextlib.redirect_stdout(sys.stderr):
            await check_services(settings)
        await chaos.start_cluster()
        await users.setup(random.Random(rng.getrandbits(32)))
        chaos.say(
            f"{opts.users} users online on {opts.devices} device(s) each,"
            f" {opts.groups} groups of {size if opts.groups else 0};"
            f" chaos for {opts.seconds:g}s (seed {seed})"
        )
        tasks.append(asyncio.create_task(chaos.watch()))
        started = time.monotonic()
        until = started + opts.seconds
        users.start(opts.rate, opts.flap_every, rng, opts.seconds)
        killer = asyncio.create_task(chaos.killer(until, rng))
        while time.monotonic() < until:
            await asyncio.sleep(min(5.0, max(0.0, until - time.monotonic())))
            r = check(users.ledger)
            g = users.ledger.group
            chaos.say(
                f"t={time.monotonic() - started:4.0f}s sent {r['sent']} acked {r['acked']}"
                f" group sent {len(g.sent)} acked {len(g.acked)} changes {g.changes}"
                f" kills {sum(chaos.kills.values())} offline {len(users.offline)}"
            )
        await killer
        await users.finish_groups(opts.quiesce)  # a change still waiting for quiet ends
        chaos_seconds = time.monotonic() - started
        for t in tasks:  # the watcher would restart what we restart here: stop it first
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in chaos.procs:
            if not p.alive:
                await p.start()
                await p.wait_ready(chaos.host)
        chaos.say("killing stopped; bringing everyone online and letting it settle")
        await users.everyone_online()
        settled = await users.quiesce(opts.quiesce, chaos.say)
        users.read_cursors()
        report = {
            **check_all(users.ledger),
            "group_size": size if opts.groups else 0,
            "group_samples": group_samples(users.ledger),
            "kills": sum(chaos.kills.values()),
            "kills_by_role": dict(chaos.kills),
            "crashed": len(chaos.crashed),
            "crash_samples": chaos.crashed[:5],
            "seconds": round(chaos_seconds, 1),
            "total_seconds": round(time.monotonic() - began, 1),
            "settled": settled,
            "users": opts.users,
            "went_offline": users.went_offline,
            "seed": seed,
            "errors_seen": dict(users.ledger.errors),
            **users.client_stats(),
        }
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await users.close()
        await chaos.stop_cluster()
        if not opts.keep:
            await cleanup(settings)
    good = ok(report)
    if good and not opts.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report["logs"] = str(workdir)
    return report


VIOLATIONS = (
    "lost",
    "duplicates",
    "out_of_order",
    "receipts_missing",
    "receipts_duplicated",
    "crashed",
    "device_missing",
    "device_duplicates",
    "device_order_mismatch",
    "read_cursor_divergent",
    "sender_disorder",
    "group_missing",
    "group_duplicates",
    "group_leaks",
    "group_out_of_order",
    "group_refused",
    "group_receipts_duplicated",
    "group_nonmember_posts",
    "group_membership_mismatch",
)


def ok(report: dict[str, object]) -> bool:
    """No violation, and the system settled: a message that never got SENT is not lost (its
    sender still has it), but one still unSENT once everything is back up means it is stuck."""

    def positive(key: str) -> bool:
        value = report.get(key)
        return isinstance(value, int) and value > 0

    groups_ok = not report.get("groups") or (
        # with groups: group chats were committed, members had them to hold, and every
        # planned membership change happened
        all(positive(k) for k in ("group_messages", "group_deliveries_expected", "group_changes"))
        and report.get("group_changes") == report.get("group_changes_planned")
    )
    return (
        bool(report)
        and all(report.get(k) == 0 for k in VIOLATIONS)
        and report.get("settled") is True
        and report.get("device_deliveries") == report.get("device_deliveries_expected")
        and report.get("group_deliveries") == report.get("group_deliveries_expected")
        # a run that checked nothing proves nothing: chats went through, devices had them to
        # hold, read cursors were compared
        and all(
            positive(k) for k in ("acked", "device_deliveries_expected", "read_cursors_checked")
        )
        and groups_ok
    )


async def _run_stoppable(settings: Settings, opts: Options) -> dict[str, object]:
    """run_chaos, cancelled by SIGTERM as by Ctrl-C, so its cluster is stopped either way (the
    children run in sessions of their own and would outlive a killed parent)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_chaos(settings, opts, quiet=False)


def _lines(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def main(settings: Settings, opts: Options, as_json: bool) -> int:
    try:
        report = asyncio.run(_run_stoppable(settings, opts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos | stopped before the end: no verdict", file=sys.stderr)
        return 130
    good = ok(report)
    if not as_json:
        print(
            f"chaos for {report.get('seconds')} s, {report.get('kills')} kills"
            f" {report.get('kills_by_role')}, {report.get('users')} users"
            f" ({report.get('went_offline')} times one went offline)\n"
            f"  sent {report.get('sent')}  acked {report.get('acked')}"
            f"  delivered {report.get('delivered')}  not acked {report.get('not_acked')}\n"
            f"  lost {report.get('lost')}  duplicates {report.get('duplicates')}"
            f"  out of order {report.get('out_of_order')}\n"
            f"  receipts missing {report.get('receipts_missing')}"
            f"  duplicated {report.get('receipts_duplicated')}  crashed {report.get('crashed')}\n"
            f"  {report.get('devices')} device(s) per user: deliveries"
            f" {report.get('device_deliveries')} of {report.get('device_deliveries_expected')}"
            f"  missing {report.get('device_missing')}"
            f"  duplicates {report.get('device_duplicates')}"
            f"  order mismatch {report.get('device_order_mismatch')}"
            f"  read cursors apart {report.get('read_cursor_divergent')}\n"
            f"  groups {report.get('groups')} of {report.get('group_size')}"
            f" ({report.get('group_changes')} of {report.get('group_changes_planned')}"
            f" membership changes): {report.get('group_messages')} messages"
            f" ({report.get('group_not_acked')} not acked, {report.get('group_resealed')}"
            f" resealed, {report.get('group_refused')} refused,"
            f" {report.get('group_held_offline')} leavers' devices away), deliveries"
            f" {report.get('group_deliveries')} of {report.get('group_deliveries_expected')}"
            f"  missing {report.get('group_missing')}"
            f"  duplicates {report.get('group_duplicates')}"
            f"  out of order {report.get('group_out_of_order')}"
            f"  leaks {report.get('group_leaks')}\n"
            + "".join(f"    {line}\n" for line in _lines(report.get("group_samples")))
            + f"  client: reconnects {report.get('reconnects')}  resent {report.get('resent')}\n"
            f"  {'OK' if good else 'FAILED'}"
            + (f"  (logs in {report['logs']})" if "logs" in report else "")
        )
    else:
        print(json.dumps(report))
    return 0 if good else 1
