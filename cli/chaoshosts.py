"""``im chaos --hosts N``: the cluster spread over N test hosts, under network and service faults.

What ``im chaos`` does to processes on one machine, this does to machines: N app hosts and a
client host (network namespaces on a private bridge, testbed/), Redis with Sentinel (primary,
replica, three sentinels), a three-node RabbitMQ cluster with quorum queues and a three-node
Galera cluster on the first three app hosts, a transfer and a connector on every app host, two
timeline writers, REST on the first. Users chat from the client host on D devices each
(workload/traffic.py, as ``im chaos`` runs them) while workload/hostfaults.py injects its five
kinds of fault, one at a time, each at least once. Then it settles and checks exactly as ``im
chaos --devices`` does (cli/chaos.py's verdict), with the fault counts beside. Exit status 0 only
when every check passes and every kind of fault was injected.

Needs root, ``ip netns``, nftables and the Debian packages of the three services; a run removes
every host and process it made (``scripts/testbed clean`` for one that was killed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path

from common.ids import slot_of
from testbed.app import AppCluster
from testbed.galera import PROVIDER, GaleraCluster
from testbed.netns import Testbed, TestbedError, unavailable
from testbed.rabbit import RabbitCluster
from testbed.sentinel import SentinelGroup
from workload.devices import DeviceLog, check_devices, committed
from workload.hostfaults import KINDS, Injector, Services

CLUSTER_HOSTS = 3  # the clustered services take the first three app hosts
NEEDED = (
    "/usr/bin/redis-server",
    "/usr/bin/redis-cli",
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/sbin/mariadbd",
    "/usr/bin/mariadb-install-db",
    "/usr/bin/rsync",
    PROVIDER,
)


@dataclass
class HostOptions:
    hosts: int = 3
    seconds: float = 60.0
    users: int = 20
    rate: float = 40.0
    devices: int = 1
    flap_every: float = 2.0
    fault_every: float = 20.0  # pause between the end of one fault and the next, at most
    quiesce: float = 120.0
    seed: int | None = None
    keep: bool = False


def missing() -> str | None:
    """Why the run cannot happen here (no root, no namespaces, a package missing), or None."""
    reason = unavailable()
    if reason is not None:
        return reason
    for path in NEEDED:
        if not Path(path).exists():
            return f"{path} not found (a Debian package missing: see scripts/testbed)"
    return None


def layout(app_hosts: list[str]) -> list[tuple[str, str]]:
    """A transfer and a connector on every app host, writers on the second and third, REST on
    the first: every message crosses the bridge, and no one host holds all the writers."""
    out = [("transfer", h) for h in app_hosts]
    out += [("offline-writer", h) for h in app_hosts[1:3]]
    out += [("connector", h) for h in app_hosts]
    out.append(("rest", app_hosts[0]))
    return out


class Run:
    """One run: the hosts, the services, the users; :meth:`report` once it is over."""

    def __init__(self, opts: HostOptions, quiet: bool = False) -> None:
        self.opts = opts
        self.quiet = quiet
        self.seed = opts.seed if opts.seed is not None else secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self.app_hosts = [f"app{i + 1}" for i in range(opts.hosts)]
        self.workdir = Path(tempfile.mkdtemp(prefix="imtb-chaos-"))
        self.bed = Testbed([*self.app_hosts, "client"], root=self.workdir)
        self.svc: Services | None = None
        self.crashed: list[str] = []

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"chaos --hosts | {text}", file=sys.stderr, flush=True)

    def build(self) -> Services:
        """Hosts, then Redis and Galera in one thread while RabbitMQ (the slowest) boots in
        another, then the ``im`` services."""
        bed = self.bed
        bed.create()
        core = self.app_hosts[:CLUSTER_HOSTS]
        redis = SentinelGroup(bed, primary=core[0], replicas=[core[1]], sentinels=core)
        rabbit = RabbitCluster(bed, core)
        galera = GaleraCluster(bed, core)
        failed: list[BaseException] = []

        def boot_rabbit() -> None:
            try:
                rabbit.start()
            except BaseException as exc:  # re-raised below, in the caller's thread
                failed.append(exc)

        t = threading.Thread(target=boot_rabbit, name="rabbitmq boot")
        t.start()
        try:
            redis.start()
            galera.start()
        finally:
            t.join()
        if failed:
            raise failed[0]
        self.say("redis+sentinel, rabbitmq and galera clusters up")
        app = AppCluster(
            bed,
            database_url=galera.url("im"),
            redis_url=redis.url(),
            amqp_url=rabbit.url(),
            layout=layout(self.app_hosts),
            settings={
                # every user registers from the client host's one address
                "IM_REGISTER_PER_ADDRESS": str(max(20, self.opts.users)),
                # the services' logs (kept when a run fails); INFO to follow sessions and links
                "IM_LOG_LEVEL": os.environ.get("IM_CHAOS_LOG_LEVEL", "WARNING"),
            },
        )
        app.start()
        self.say(f"im services up on {', '.join(self.app_hosts)}; REST at {app.rest_url}")
        self.svc = Services(bed, redis, rabbit, galera, app, self.app_hosts)
        return self.svc

    async def watch(self, svc: Services) -> None:
        """An ``im`` process that died is a crash (the faults kill none of them): note it and
        start it again."""
        while True:
            await asyncio.sleep(1.0)
            for name, code in svc.app.exited().items():
                self.crashed.append(f"{name} exited {code}")
                self.say(f"{name} died by itself ({code}); restarting")
                with contextlib.suppress(TestbedError):
                    await asyncio.to_thread(svc.app.restart, name)

    async def drive(self, svc: Services) -> dict[str, object]:
        """Runs in the client host: the users, the faults, the settling, the checks."""
        from workload.traffic import Users, check, check_all

        o = self.opts
        began = time.monotonic()
        tag = secrets.token_hex(3)
        users = Users.named(svc.app.rest_url, f"ch{tag}", o.users, o.devices)
        inj = Injector(svc, random.Random(self.rng.getrandbits(32)), say=self.say)
        watcher: asyncio.Task[None] | None = None
        try:
            await users.setup()
            self.say(f"{o.users} users on {o.devices} device(s); faults for {o.seconds:g}s")
            watcher = asyncio.create_task(self.watch(svc))
            started, wall0 = time.monotonic(), time.time()
            until = started + o.seconds
            users.start(o.rate, o.flap_every, self.rng)
            # pauses shrink with a short run, so every kind fits in it
            pause = min(o.fault_every, o.seconds / (2 * len(KINDS)))
            while time.monotonic() < until or inj.missing():
                await asyncio.sleep(self.rng.uniform(0.5, 1.0) * pause)
                kind = inj.missing()[0] if time.monotonic() >= until else inj.next_kind()
                await inj.inject(kind, started)
                r = check(users.ledger)
                self.say(
                    f"t={time.monotonic() - started:4.0f}s sent {r['sent']} acked {r['acked']}"
                    f" faults {dict(inj.counts)}"
                )
                if len(inj.errors) > 3 * len(KINDS):
                    break  # the testbed itself is broken: no point going on
            chaos_seconds = time.monotonic() - started
            self.say("faults over; everyone online, settling")
            await users.everyone_online()
            settled = await users.quiesce(o.quiesce, self.say)
            users.read_cursors()
            logs = list(users.ledger.logs.values())
            return {
                **check_all(users.ledger),
                "kills": sum(inj.kills.values()),
                "kills_by_role": dict(inj.kills),
                "crashed": len(self.crashed),
                "crash_samples": self.crashed[:5],
                "seconds": round(chaos_seconds, 1),
                "total_seconds": round(time.monotonic() - began, 1),
                "settled": settled,
                "users": o.users,
                "went_offline": users.went_offline,
                "seed": self.seed,
                "errors_seen": dict(users.ledger.errors),
                **users.client_stats(),
                "hosts": o.hosts,
                "faults": {k: inj.counts[k] for k in KINDS},
                "fault_errors": inj.errors[:10],
                "fault_log": inj.log,
                "disorder_samples": disorder_samples(logs, wall0),
                "missing_samples": check_devices(logs, o.devices).missing_samples,
                # devices still holding chats without SENT: which connector they are on
                "stuck_samples": [
                    f"{c.user_id}/{c.device_id} on {c.node_id or '(offline)'}: {c.pending} unsent"
                    for c in users.all()
                    if c.pending
                ][:10],
                # devices with no link once everyone should be online (REPLACED ends a client's
                # reconnecting: workload/traffic.py's users do not start it again)
                "offline_devices": [
                    f"{c.user_id}/{c.device_id}" for c in users.all() if not c.connected
                ][:10],
            }
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await users.close()

    def teardown(self, keep_logs: bool) -> None:
        if self.svc is not None:
            with contextlib.suppress(TestbedError, OSError):
                self.svc.app.stop()
        self.bed.destroy()  # every process in the hosts, by pid; the namespaces
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif not self.opts.keep:
            # a failed run keeps the logs, not the services' data (some 600 MB a run)
            for data in [
                *self.workdir.glob("mariadb/*/data"),
                *self.workdir.glob("rabbitmq/*/mnesia"),
            ]:
                shutil.rmtree(data, ignore_errors=True)


def disorder_samples(logs: Iterable[DeviceLog], t0: float, limit: int = 10) -> list[str]:
    """Where ``sender_disorder`` comes from: each message committed below an earlier-made one
    of the same sending device, with the times (seconds into the run, from the ids' clocks)
    both were made, to hold against the fault log."""
    truth, _ = committed(logs)
    top: dict[tuple[str, str, int], tuple[int, int]] = {}  # -> (id, seq) of the highest id
    out: list[str] = []
    for (conv, seq), (sender, msg_id) in sorted(truth.items()):
        key = (conv, sender, slot_of(msg_id))
        best = top.get(key)
        if best is not None and msg_id < best[0] and len(out) < limit:
            made = (msg_id >> 12) / 1000 - t0  # an id is milliseconds << 12 (common/ids.py)
            other = (best[0] >> 12) / 1000 - t0
            out.append(
                f"{conv} {sender} slot {key[2]}: seq {seq} made at {made:.1f}s,"
                f" after seq {best[1]} made at {other:.1f}s"
            )
        if best is None or msg_id > best[0]:
            top[key] = (msg_id, seq)
    return out


def ok(report: dict[str, object]) -> bool:
    """``im chaos``'s verdict, every kind of fault injected, and every fault recovered from."""
    from cli.chaos import ok as chaos_ok

    faults = report.get("faults")
    return (
        chaos_ok(report)
        and isinstance(faults, dict)
        and all(isinstance(faults.get(k), int) and faults[k] > 0 for k in KINDS)
        and report.get("fault_errors") == []
    )


def run(opts: HostOptions, quiet: bool = False) -> dict[str, object]:
    """Build, drive from inside the client host, tear down; the report (``logs`` when kept)."""
    r = Run(opts, quiet)
    report: dict[str, object] = {}
    try:
        svc = r.build()
        # the users' sockets, and the worker threads' made from here, belong to the client host
        with r.bed.inside("client"):
            report = asyncio.run(_stoppable(r.drive(svc)))
    finally:
        keep = opts.keep or not ok(report)
        r.teardown(keep_logs=keep)
        report["testbed"] = r.bed.tag  # its namespaces were imtb-<tag>-*
        if keep:
            report["logs"] = str(r.workdir)
    return report


async def _stoppable(work: Coroutine[object, object, dict[str, object]]) -> dict[str, object]:
    """SIGTERM cancels the run like Ctrl-C, so the hosts are removed either way."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await work


def cmd_chaos_hosts(args: argparse.Namespace) -> int:
    opts = HostOptions(
        hosts=args.hosts,
        seconds=args.seconds,
        users=args.users,
        rate=args.rate,
        devices=args.devices,
        fault_every=args.fault_every,
        quiesce=max(args.quiesce, 120.0),
        seed=args.seed,
        keep=args.keep,
    )
    if opts.hosts < CLUSTER_HOSTS or opts.hosts > 9:
        print("im: --hosts takes 3 to 9", file=sys.stderr)
        return 2
    if opts.users < 2 or opts.devices < 1 or opts.seconds <= 0:
        print("im: need 2+ users, 1+ device and some seconds", file=sys.stderr)
        return 2
    reason = missing()
    if reason is not None:
        print(f"im: chaos --hosts cannot run here: {reason}", file=sys.stderr)
        return 2
    try:
        report = run(opts)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos --hosts | stopped before the end: no verdict", file=sys.stderr)
        return 130
    except (TestbedError, OSError) as exc:
        print(f"im: chaos --hosts could not run: {exc}", file=sys.stderr)
        return 2
    good = ok(report)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"chaos over {opts.hosts} hosts for {report.get('seconds')} s,"
            f" faults {report.get('faults')}\n"
            f"  sent {report.get('sent')}  acked {report.get('acked')}"
            f"  delivered {report.get('delivered')}  lost {report.get('lost')}"
            f"  duplicates {report.get('duplicates')}  out of order {report.get('out_of_order')}\n"
            f"  receipts missing {report.get('receipts_missing')}"
            f"  device missing {report.get('device_missing')}"
            f"  read cursors apart {report.get('read_cursor_divergent')}"
            f"  crashed {report.get('crashed')}  fault errors {report.get('fault_errors')}\n"
            f"  {'OK' if good else 'FAILED'}"
            + (f"  (logs in {report['logs']})" if "logs" in report else "")
        )
    return 0 if good else 1
