"""The message path's metrics, on ``im up`` in process: a known exchange over raw devices moves
every counter by exactly what it did (accepted, refused, failed; SENT, DELIVERED and READ; the
ERROR frames by code; the three latency hops), the connections gauge follows connections up and
down, the transfer reports its connector links, and a chat is counted once even when its device
left before its SENT and resent it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from rawdevice import RawDevice, until
from test_e2e import PW, conn_addr, make_users, rest_url, stack_settings
from webhook_receiver import Receiver

from cli.stack import Stack
from client.core import IMClient
from common import metrics
from common.convid import pair_conv_id
from common.ids import COUNTER_BITS
from common.link import LinkConfig, open_link
from proto import im_pb2

pytestmark = pytest.mark.asyncio

Key = tuple[str, tuple[tuple[str, str], ...]]
HOOK_SECRET = "hook-secret-0123456789"


def snapshot() -> dict[Key, float]:
    """Every sample of this process's registry, by name and labels."""
    out: dict[Key, float] = {}
    text = metrics.exposition()[0].decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("im_"):
                out[s.name, tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def moved(before: dict[Key, float], after: dict[Key, float], name: str) -> dict[str, float]:
    """The series of ``name`` that changed, by their labels (``k=v,...``), and by how much."""
    out = {}
    for (n, labels), value in after.items():
        if n != name:
            continue
        delta = value - before.get((n, labels), 0.0)
        if delta:
            out[",".join(f"{k}={v}" for k, v in labels if k != "le")] = delta
    return out


def value(name: str, **labels: str) -> float:
    return snapshot().get((name, tuple(sorted(labels.items()))), 0.0)


@pytest_asyncio.fixture
async def up(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


async def test_a_known_exchange_moves_every_message_counter_by_its_count(up: Stack) -> None:
    await make_users(up, "alice", "bob", connect=False)
    stranger = IMClient(rest_url(up), "mallory", PW)
    await stranger.register()
    await stranger.close()
    alice = await RawDevice("alice", "phone").connect(up)
    bob = await RawDevice("bob", "pc").connect(up)
    conv = pair_conv_id("alice", "bob")
    before = snapshot()

    ids = [await alice.send_chat("bob", f"hello {i}".encode()) for i in range(3)]
    await until(lambda: all(alice.sent(i) for i in ids))
    await until(lambda: len(bob.chats) == 3)
    await alice.send_chat("mallory", b"not a friend")  # NOT_FRIEND
    await alice.send_chat("bob", b"reused", msg_id=ids[0])  # same id, other body: ID_REUSED
    other_slot = ids[0] ^ (1 << COUNTER_BITS)  # an id of another device's slot: BAD_MESSAGE
    await alice.send_chat("bob", b"bad slot", msg_id=other_slot)
    await until(lambda: len(alice.errors) == 3)
    assert sorted(alice.codes()) == ["BAD_MESSAGE", "ID_REUSED", "NOT_FRIEND"]
    seqs = [c.seq for c in bob.chats]
    await bob.send_cursor(conv, im_pb2.DELIVERED, seqs[-1])
    await bob.send_cursor(conv, im_pb2.READ, seqs[1])
    await until(lambda: len(alice.cursors) == 2)
    await bob.send_cursor(conv, im_pb2.DELIVERED, seqs[-1])  # a repeat moves nothing
    await bob.send_cursor(conv, im_pb2.DELIVERED, seqs[0])  # nor does a lower one
    await asyncio.sleep(0.5)
    after = snapshot()

    assert moved(before, after, "im_messages_total") == {
        "kind=text,outcome=accepted": 3,
        "kind=text,outcome=refused": 3,
    }
    assert moved(before, after, "im_receipts_total") == {
        "type=sent": 3,
        "type=delivered": 1,
        "type=read": 1,
    }
    assert moved(before, after, "im_frame_errors_total") == {
        "code=NOT_FRIEND": 1,
        "code=ID_REUSED": 1,
        "code=BAD_MESSAGE": 1,
    }
    # three commits and one refusal came back from the queue; three went out as SENT
    assert moved(before, after, "im_send_latency_seconds_count") == {
        "hop=store": 4,
        "hop=transfer": 3,
        "hop=connector": 3,
    }
    # each chat's time at the transfer is inside its time at the connector
    sums = moved(before, after, "im_send_latency_seconds_sum")
    assert 0 < sums["hop=transfer"] < sums["hop=connector"]
    await alice.close()
    await bob.close()


async def test_a_chat_no_transfer_takes_is_failed_and_answered_internal(up: Stack) -> None:
    await make_users(up, "alice", "bob", connect=False)
    alice = await RawDevice("alice", "phone").connect(up)
    assert up.transfer is not None
    await up.transfer.stop()
    await until(lambda: up.connector is not None and not up.connector.transfers.ready())
    before = snapshot()
    await alice.send_chat("bob", b"nobody takes this")
    await until(lambda: alice.errors, timeout=10)  # after the connector's 5 s wait
    after = snapshot()
    assert alice.codes() == ["INTERNAL"]
    assert moved(before, after, "im_messages_total") == {"kind=text,outcome=failed": 1}
    assert moved(before, after, "im_frame_errors_total") == {"code=INTERNAL": 1}
    up.transfer = None  # stopped already
    await alice.close()


async def test_connections_gauge_follows_connections_up_and_down(up: Stack) -> None:
    await make_users(up, "alice", connect=False)
    unauth = value("im_connections", state="unauthenticated")
    auth = value("im_connections", state="authenticated")
    raw = await open_link(*conn_addr(up), RawDevice("x", "y"), LinkConfig(), name="no greet")
    await until(lambda: value("im_connections", state="unauthenticated") == unauth + 1)
    phone = await RawDevice("alice", "phone").connect(up)
    laptop = await RawDevice("alice", "laptop").connect(up)
    await until(lambda: value("im_connections", state="authenticated") == auth + 2)
    assert value("im_connections", state="unauthenticated") == unauth + 1
    errors = value("im_frame_errors_total", code="NOT_AUTHENTICATED")
    # a chat before GREET: fatal, one ERROR frame, and the connection is gone
    await raw.send(im_pb2.Envelope(chat=im_pb2.ChatMsg(id=1, from_id="x", dest_id="y")))
    await raw.wait_closed()
    await until(lambda: value("im_connections", state="unauthenticated") == unauth)
    assert value("im_frame_errors_total", code="NOT_AUTHENTICATED") == errors + 1
    await phone.close()
    await until(lambda: value("im_connections", state="authenticated") == auth + 1)
    await laptop.close()
    await until(lambda: value("im_connections", state="authenticated") == auth)


async def test_the_transfer_reports_its_connector_links(up: Stack) -> None:
    assert up.transfer is not None and up.connector is not None
    links = value("im_node_links", peer="connector")
    assert links >= 1  # this stack's connector, linked to its transfer
    await up.connector.stop()
    await until(lambda: value("im_node_links", peer="connector") == links - 1)
    up.connector = None  # stopped already


async def test_a_chat_whose_device_left_before_its_sent_counts_once(tmp_path: Path) -> None:
    """The device is gone when the commit comes back (a slow hook holds the chat meanwhile):
    the chat counts once, when the writer commits it; the resend after reconnecting is SENT
    (the same seq), which counts a SENT receipt and not the message again."""
    hook = await Receiver(secret=HOOK_SECRET, answer=b'{"allow": true}', delay=0.5).start()
    st = Stack(
        stack_settings(tmp_path, webhook_secret=HOOK_SECRET, webhook_before_send_url=hook.url)
    )
    await st.start()
    try:
        await make_users(st, "alice", "bob", connect=False)
        alice = await RawDevice("alice", "phone").connect(st)
        before = snapshot()
        msg = await alice.send_chat("bob", b"hello")
        await hook.wait_for(1)
        await alice.close()  # before the hook answers: the chat goes on without its device
        assert st.transfer is not None
        await until(lambda: st.transfer is not None and st.transfer.committed == 1)
        await asyncio.sleep(0.2)
        # committed once: counted once, though its device never saw the SENT
        assert moved(before, snapshot(), "im_messages_total") == {"kind=text,outcome=accepted": 1}
        assert moved(before, snapshot(), "im_receipts_total") == {}
        again = await RawDevice("alice", "phone").connect(st)
        await again.send_chat("bob", b"hello", msg_id=msg)  # the library's resend
        await until(lambda: again.sent(msg))
        assert again.sent(msg)[0].seq == 1
        after = snapshot()
        assert moved(before, after, "im_messages_total") == {"kind=text,outcome=accepted": 1}
        assert moved(before, after, "im_receipts_total") == {"type=sent": 1}
        await again.close()
    finally:
        await st.stop()
        await hook.stop()
