"""FILE messages end to end on the ``im up`` stack: the client library encrypts and uploads, the
connector checks the upload and grants the recipient, the recipient downloads, verifies and
decrypts. Also: the server holds only ciphertext, a cut download resumes, access stays with the
two users, and a FILE chat naming a file that is not the sender's is refused and not delivered."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from test_e2e import PW, expect, make_users, raw_chat, receipts, rest_url, stack_settings

from cli.stack import Stack
from client import FileCheckError, IMClient, Message, ServerError, befriend
from common.errors import IMError
from proto import im_pb2
from rest_web.blobs import LocalBlobStore


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(stack_settings(tmp_path / "server"))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def file_message(c: IMClient) -> Message:
    msg = await expect(c, Message)
    assert isinstance(msg, Message) and msg.file is not None
    return msg


@pytest.mark.asyncio
async def test_file_message_is_delivered_downloaded_verified_and_receipted(
    stack: Stack, tmp_path: Path
) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        data = make_file(tmp_path / "report.pdf", 300_000)
        mid = await alice.send_file("bob", tmp_path / "report.pdf")
        msg = await file_message(bob)
        assert (msg.msg_id, msg.from_id, msg.msg_type) == (mid, "alice", im_pb2.FILE)
        assert msg.text == "report.pdf"
        assert msg.file is not None and msg.file.plain_size == len(data)
        out = await bob.download(msg, tmp_path / "got.pdf")
        assert out.read_bytes() == data
        assert not (tmp_path / "got.pdf.part").exists()
        await bob.send_read(msg)
        assert await receipts(alice, 3) == {("SENT", mid), ("DELIVERED", mid), ("READ", mid)}
        # text still flows beside files
        tid = await alice.send_text("bob", "did you get it?")
        assert (await expect(bob, Message)).msg_id == tid  # type: ignore[attr-defined]
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_server_stores_only_ciphertext(stack: Stack, tmp_path: Path) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        data = b"the quarterly numbers, in plain text\n" * 5000
        (tmp_path / "plain.txt").write_bytes(data)
        await alice.send_file("bob", tmp_path / "plain.txt")
        msg = await file_message(bob)
        assert msg.file is not None
        stored = LocalBlobStore(stack.settings.file_root()).path_of(msg.file.file_id)
        blob = stored.read_bytes()
        assert b"quarterly" not in blob
        assert hashlib.sha256(blob).hexdigest() == msg.file.checksum
        assert len(blob) == msg.file.size > len(data)
        # neither the name nor the key is anywhere the server keeps or sees
        assert stack.db is not None
        rows = await stack.db.fetchall("SELECT * FROM im_file")
        assert "plain.txt" not in repr(rows) and msg.file.key.hex() not in repr(rows)
        assert b"plain.txt" not in blob and msg.file.key not in blob
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_a_cut_download_resumes_where_it_stopped(stack: Stack, tmp_path: Path) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        data = make_file(tmp_path / "big.bin", 700_000)
        await alice.send_file("bob", tmp_path / "big.bin")
        msg = await file_message(bob)
        assert msg.file is not None
        # a download that broke after 250 000 bytes: the client read the stream, then stopped
        got = bytearray()
        async with bob.rest.download(msg.file.file_id) as resp:
            async for chunk in resp.aiter_bytes(50_000):
                got += chunk
                if len(got) >= 250_000:
                    break
        cut = len(got)
        (tmp_path / "big.out.part").write_bytes(got)
        out = await bob.download(msg, tmp_path / "big.out")
        assert out.read_bytes() == data
        assert bob.bytes_downloaded == msg.file.size - cut  # only the rest was fetched
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_only_sender_and_recipient_can_download(stack: Stack, tmp_path: Path) -> None:
    alice, bob, carol = await make_users(stack, "alice", "bob", "carol")
    try:
        make_file(tmp_path / "f", 1000)
        await alice.send_file("bob", tmp_path / "f")
        msg = await file_message(bob)
        assert msg.file is not None
        url = f"/files/{msg.file.file_id}"
        async with httpx.AsyncClient(base_url=rest_url(stack)) as http:
            for who, code in ((alice, 200), (bob, 200), (carol, 404)):
                r = await http.get(url, headers={"Authorization": f"Bearer {who.rest.token}"})
                assert r.status_code == code, who.user_id
        with pytest.raises(IMError, match="404"):
            await carol.download(msg, tmp_path / "stolen")
        assert not (tmp_path / "stolen").exists()
    finally:
        for c in (alice, bob, carol):
            await c.close()


@pytest.mark.asyncio
async def test_offline_recipient_gets_the_file_on_login(stack: Stack, tmp_path: Path) -> None:
    alice, bob = await make_users(stack, "alice", "bob", connect=False)
    await alice.connect()
    try:
        data = make_file(tmp_path / "later.bin", 50_000)
        mid = await alice.send_file("bob", tmp_path / "later.bin")
        assert await receipts(alice, 1) == {("SENT", mid)}  # in the timeline
        await bob.connect()
        msg = await file_message(bob)
        assert (await bob.download(msg, tmp_path / "out")).read_bytes() == data
        assert await receipts(alice, 1) == {("DELIVERED", mid)}
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_a_tampered_stored_file_fails_verification_and_leaves_no_output(
    stack: Stack, tmp_path: Path
) -> None:
    alice, bob = await make_users(stack, "alice", "bob")
    try:
        make_file(tmp_path / "f", 10_000)
        await alice.send_file("bob", tmp_path / "f")
        msg = await file_message(bob)
        assert msg.file is not None
        stored = LocalBlobStore(stack.settings.file_root()).path_of(msg.file.file_id)
        blob = bytearray(stored.read_bytes())
        blob[100] ^= 1
        stored.write_bytes(blob)
        with pytest.raises(FileCheckError):
            await bob.download(msg, tmp_path / "out")
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()
    finally:
        await alice.close()
        await bob.close()


def file_chat(
    msg_id: int, ref: im_pb2.FileRef | None, msg_type: int = im_pb2.FILE
) -> im_pb2.Envelope:
    env = raw_chat(msg_id, "alice", "bob")
    env.chat.msg_type = msg_type  # type: ignore[assignment]
    if ref is not None:
        env.chat.file.CopyFrom(ref)
    return env


@pytest.mark.asyncio
async def test_file_chats_naming_files_not_the_senders_are_refused_and_not_delivered(
    stack: Stack, tmp_path: Path
) -> None:
    alice, bob, carol = await make_users(stack, "alice", "bob", "carol")
    try:
        make_file(tmp_path / "carols", 1000)
        up = await carol.rest.upload(_body((tmp_path / "carols").read_bytes()), 1000)
        make_file(tmp_path / "alices", 1000)
        own = await alice.rest.upload(_body((tmp_path / "alices").read_bytes()), 1000)
        cases = {
            51: (im_pb2.FileRef(id="Z" * 22, size=1000, checksum="0" * 64), "NO_SUCH_FILE"),
            52: (
                im_pb2.FileRef(id=up.file_id, size=up.size, checksum=up.checksum),
                "NO_SUCH_FILE",
            ),
            53: (
                im_pb2.FileRef(id=own.file_id, size=own.size + 1, checksum=own.checksum),
                "NO_SUCH_FILE",
            ),
            54: (im_pb2.FileRef(id=own.file_id, size=own.size, checksum="f" * 64), "NO_SUCH_FILE"),
            55: (im_pb2.FileRef(id="../../etc/passwd", size=1, checksum="0" * 64), "BAD_MESSAGE"),
            56: (None, "BAD_MESSAGE"),
        }
        link = alice._conn.link
        assert link is not None
        for mid, (ref, code) in cases.items():
            await link.send(file_chat(mid, ref))
            err = await expect(alice, ServerError)
            assert (err.code, err.msg_id) == (code, mid)  # type: ignore[attr-defined]
        # a TEXT chat may not carry a file reference
        ref = im_pb2.FileRef(id=own.file_id, size=own.size, checksum=own.checksum)
        await link.send(file_chat(57, ref, im_pb2.TEXT))
        err = await expect(alice, ServerError)
        assert (err.code, err.msg_id) == ("BAD_MESSAGE", 57)  # type: ignore[attr-defined]
        assert alice.connected
        # bob got none of them, and may not download carol's file
        async with httpx.AsyncClient(base_url=rest_url(stack)) as http:
            auth = {"Authorization": f"Bearer {bob.rest.token}"}
            assert (await http.get(f"/files/{up.file_id}", headers=auth)).status_code == 404
            assert (await http.get(f"/files/{own.file_id}", headers=auth)).status_code == 404
        mid = await alice.send_text("bob", "only this one")
        msg = await expect(bob, Message)
        assert msg.msg_id == mid  # type: ignore[attr-defined]
        assert stack.connector is not None
        assert stack.connector.counters.errors["NO_SUCH_FILE"] == 4
    finally:
        for c in (alice, bob, carol):
            await c.close()


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.asyncio
async def test_demo_with_files(stack: Stack) -> None:
    from workload.demo import ok, run_demo

    report = await run_demo(
        rest_url(stack), 5, 40, 2, files=6, prefix="f", progress=False, timeout=60
    )
    assert ok(report), report
    assert (report["files"], report["files_ok"]) == (6, 6)


@pytest.mark.asyncio
async def test_send_file_refuses_a_non_friend_and_a_missing_path(
    stack: Stack, tmp_path: Path
) -> None:
    (alice,) = await make_users(stack, "alice")
    try:
        (tmp_path / "f").write_bytes(b"x")
        with pytest.raises(IMError, match="not a friend"):
            await alice.send_file("nobody", tmp_path / "f")
        bob = IMClient(rest_url(stack), "bob", PW)
        await bob.register()
        await bob.login()
        await befriend(alice, bob)
        with pytest.raises(FileNotFoundError):
            await alice.send_file("bob", tmp_path / "missing")
        await bob.close()
    finally:
        await alice.close()


@pytest.mark.asyncio
async def test_send_file_over_the_limit_fails_cleanly(tmp_path: Path) -> None:
    st = Stack(stack_settings(tmp_path / "server", max_file_size=100_000))
    await st.start()
    alice, bob = await make_users(st, "alice", "bob")
    try:
        make_file(tmp_path / "big", 200_000)
        with pytest.raises(IMError):
            await alice.send_file("bob", tmp_path / "big")
        root = st.settings.file_root()
        assert [p for p in root.rglob("*") if p.is_file()] == []
        make_file(tmp_path / "small", 50_000)  # under the limit, on the same client
        mid = await alice.send_file("bob", tmp_path / "small")
        assert (await file_message(bob)).msg_id == mid
    finally:
        await alice.close()
        await bob.close()
        await st.stop()
