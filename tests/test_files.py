"""File upload and download over REST, on a real HTTP server: streaming limits, Range, access,
leftovers after refused or broken uploads, and the orphan janitor. The chat side of files (the
connector's check and grant, the client library) is in test_e2e_files.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from conftest import free_port

from cli.stack import Stack
from common.config import Settings
from common.db import open_database
from common.files import FileStore, ddl
from rest_web.blobs import LocalBlobStore
from rest_web.files import parse_range

PW = "password-123"
LIMIT = 256 * 1024


def rest_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        data_dir=tmp_path,
        rest_port=free_port(),
        connector_port=0,
        secret="test-secret-0123456789",
        max_file_size=LIMIT,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def rest(tmp_path: Path) -> AsyncIterator[Stack]:
    st = Stack(rest_settings(tmp_path), roles=frozenset({"rest"}))
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


@pytest_asyncio.fixture
async def http(rest: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest.rest_port}") as c:
        yield c


async def user(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    await http.post("/users", json={"user_id": name, "password": PW})
    r = await http.post("/login", json={"user_id": name, "password": PW})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def files_of(st: Stack) -> FileStore:
    assert st.db is not None
    return FileStore(st.db)


async def leftovers(st: Stack) -> tuple[list[str], int]:
    """Every file under the file directory, and the number of upload records."""
    root = st.settings.file_root()
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert st.db is not None
    row = await st.db.fetchone("SELECT COUNT(*) FROM im_file")
    assert row is not None
    return names, int(row[0])


async def eventually(cond: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until ``cond()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def nothing_left(st: Stack) -> bool:
    return await leftovers(st) == ([], 0)


async def upload(http: httpx.AsyncClient, who: dict[str, str], data: bytes) -> dict[str, object]:
    r = await http.post("/files", content=data, headers=who)
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


# -- upload and download --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_upload_answers_id_size_checksum_and_stores_the_bytes(
    rest: Stack, http: httpx.AsyncClient
) -> None:
    alice = await user(http, "alice")
    data = os.urandom(200_000)
    up = await upload(http, alice, data)
    assert up["size"] == len(data)
    assert up["checksum"] == hashlib.sha256(data).hexdigest()
    stored = LocalBlobStore(rest.settings.file_root()).path_of(str(up["file_id"]))
    assert stored.read_bytes() == data
    meta = await files_of(rest).get(str(up["file_id"]))
    assert meta is not None and meta.owner == "alice" and meta.size == len(data)

    r = await http.get(f"/files/{up['file_id']}", headers=alice)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["x-checksum-sha256"] == up["checksum"]


@pytest.mark.asyncio
async def test_upload_limit_is_exact(rest: Stack, http: httpx.AsyncClient) -> None:
    alice = await user(http, "alice")
    up = await upload(http, alice, os.urandom(LIMIT))
    assert up["size"] == LIMIT
    r = await http.post("/files", content=os.urandom(LIMIT + 1), headers=alice)
    assert r.status_code == 413


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=10-19", (10, 20)),
        ("bytes=1000-", (1000, 5000)),
        ("bytes=4990-99999", (4990, 5000)),
        ("bytes=-100", (4900, 5000)),
        ("bytes=-99999", (0, 5000)),
        ("bytes=4999-4999", (4999, 5000)),
    ],
)
async def test_range_requests(
    rest: Stack, http: httpx.AsyncClient, header: str, span: tuple[int, int]
) -> None:
    alice = await user(http, "alice")
    data = os.urandom(5000)
    up = await upload(http, alice, data)
    r = await http.get(f"/files/{up['file_id']}", headers={**alice, "Range": header})
    assert r.status_code == 206
    start, end = span
    assert r.content == data[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/5000"
    assert r.headers["content-length"] == str(end - start)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("bytes=5000-", 416),
        ("bytes=9000-9999", 416),
        ("bytes=-0", 416),
        ("bytes=abc", 400),
        ("bytes=-", 400),
        ("bytes=20-10", 400),
        ("bytes=0-1,5-6", 400),
        ("items=0-1", 400),
        ("0-1", 400),
    ],
)
async def test_bad_ranges_are_refused(
    rest: Stack, http: httpx.AsyncClient, header: str, code: int
) -> None:
    alice = await user(http, "alice")
    up = await upload(http, alice, os.urandom(5000))
    r = await http.get(f"/files/{up['file_id']}", headers={**alice, "Range": header})
    assert r.status_code == code, r.text
    if code == 416:
        assert r.headers["content-range"] == "bytes */5000"


def test_parse_range_without_header_is_the_whole_file() -> None:
    assert parse_range(None, 10) is None


@pytest.mark.asyncio
async def test_only_the_uploader_and_recipients_may_download(
    rest: Stack, http: httpx.AsyncClient
) -> None:
    alice, bob, carol = [await user(http, n) for n in ("alice", "bob", "carol")]
    data = os.urandom(1000)
    up = await upload(http, alice, data)
    url = f"/files/{up['file_id']}"
    # before it is sent, only alice
    assert (await http.get(url, headers=bob)).status_code == 404
    granted = await files_of(rest).grant(
        str(up["file_id"]), "alice", len(data), str(up["checksum"]), "bob"
    )
    assert granted
    assert (await http.get(url, headers=bob)).content == data
    # carol was sent nothing: the same 404 as for a file that does not exist
    r = await http.get(url, headers=carol)
    assert r.status_code == 404
    missing = await http.get("/files/" + "A" * 22, headers=carol)
    assert (missing.status_code, missing.json()) == (404, r.json())
    assert (await http.get(url, headers={**carol, "Range": "bytes=0-9"})).status_code == 404
    # no token, a malformed id
    assert (await http.get(url)).status_code == 401
    for bad in ("short", "A" * 23, "A" * 21 + "%25", "A" * 21 + "%00", "..%2F..%2Fsecret%2Fxxxxxx"):
        assert (await http.get(f"/files/{bad}", headers=alice)).status_code in (404, 422)


@pytest.mark.asyncio
async def test_upload_needs_a_token_and_a_body(rest: Stack, http: httpx.AsyncClient) -> None:
    alice = await user(http, "alice")
    assert (await http.post("/files", content=b"x")).status_code == 401
    assert (await http.post("/files", content=b"", headers=alice)).status_code == 400
    assert await leftovers(rest) == ([], 0)


# -- refused and broken uploads leave nothing -------------------------------------------------


async def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read(65536)
    finally:
        writer.close()


def upload_head(token_header: dict[str, str], length: int | None) -> bytes:
    lines = [
        "POST /files HTTP/1.1",
        "Host: t",
        f"Authorization: {token_header['Authorization']}",
        "Content-Type: application/octet-stream",
    ]
    if length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.asyncio
async def test_declared_oversize_is_refused_before_the_body_is_sent(
    rest: Stack, http: httpx.AsyncClient
) -> None:
    alice = await user(http, "alice")
    answer = await raw_request(rest.rest_port, upload_head(alice, 100 * 1024 * 1024))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert await leftovers(rest) == ([], 0)


@pytest.mark.asyncio
async def test_streamed_oversize_is_refused_and_leaves_nothing(
    rest: Stack, http: httpx.AsyncClient
) -> None:
    """No Content-Length (chunked): the server counts, and answers 413 once past the limit
    while the body is still open: it never waits for the end of an oversize upload."""
    alice = await user(http, "alice")
    reader, writer = await asyncio.open_connection("127.0.0.1", rest.rest_port)
    writer.write(upload_head(alice, None))
    piece = os.urandom(16 * 1024)
    for _ in range(LIMIT // len(piece) + 1):  # one piece past the limit, no final chunk
        writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read(65536)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    await eventually(lambda: nothing_left(rest))


@pytest.mark.asyncio
async def test_interrupted_upload_leaves_nothing(rest: Stack, http: httpx.AsyncClient) -> None:
    alice = await user(http, "alice")
    _, writer = await asyncio.open_connection("127.0.0.1", rest.rest_port)
    writer.write(upload_head(alice, LIMIT))
    writer.write(os.urandom(LIMIT // 2))
    await writer.drain()
    partials = rest.settings.file_root() / ".partial"

    async def under_way() -> bool:  # its partial file exists
        return partials.exists() and any(partials.iterdir())

    await eventually(under_way)
    writer.close()  # the client goes away mid-body
    await eventually(lambda: nothing_left(rest))
    # and the server still takes uploads
    assert (await upload(http, alice, b"after"))["size"] == 5


# -- orphans ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_janitor_removes_unsent_uploads_after_the_ttl_and_keeps_sent_ones(
    tmp_path: Path,
) -> None:
    st = Stack(
        rest_settings(tmp_path, file_orphan_ttl=1.0, file_sweep_interval=0.2),
        roles=frozenset({"rest"}),
    )
    await st.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.rest_port}") as http:
            alice = await user(http, "alice")
            kept = await upload(http, alice, b"sent to bob")
            orphan = await upload(http, alice, b"never sent")
            assert await files_of(st).grant(
                str(kept["file_id"]), "alice", 11, str(kept["checksum"]), "bob"
            )
            blobs = LocalBlobStore(st.settings.file_root())
            gone = blobs.path_of(str(orphan["file_id"]))
            assert gone.exists()

            async def swept() -> bool:
                return not gone.exists()

            await eventually(swept, 10)
            assert (await http.get(f"/files/{orphan['file_id']}", headers=alice)).status_code == 404
            assert await files_of(st).get(str(orphan["file_id"])) is None
            r = await http.get(f"/files/{kept['file_id']}", headers=alice)
            assert r.content == b"sent to bob"
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_sweep_keeps_young_orphans_and_removes_stale_partials(tmp_path: Path) -> None:
    from rest_web.files import FileService

    db = await open_database("sqlite://:memory:")
    try:
        service = FileService(
            FileStore(db),
            LocalBlobStore(tmp_path),
            max_size=LIMIT,
            orphan_ttl=3600,
            sweep_interval=60,
        )
        await service.migrate()
        now = time.time()
        for file_id, age in (("A" * 22, 7200), ("B" * 22, 60)):
            writer = await service.blobs.begin()
            await writer.write(b"data")
            await service.files.create(file_id, "alice", 4, "0" * 64, int(now - age))
            await writer.commit(file_id)
        stale = await service.blobs.begin()
        await stale.write(b"half an upload")
        partial = next((tmp_path / ".partial").iterdir())
        os.utime(partial, (now - 7200, now - 7200))
        fresh = await service.blobs.begin()  # one still under way
        await fresh.write(b"in flight")

        assert await service.sweep(now) == 1
        assert await service.files.get("A" * 22) is None
        assert not await service.blobs.exists("A" * 22)
        assert await service.files.get("B" * 22) is not None  # younger than the TTL
        assert await service.blobs.exists("B" * 22)
        assert not partial.exists()
        assert len(list((tmp_path / ".partial").iterdir())) == 1
        fresh.abort()
        stale.abort()
    finally:
        await db.close()


# -- the metadata store ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_grant_checks_owner_size_and_checksum_and_is_idempotent() -> None:
    db = await open_database("sqlite://:memory:")
    try:
        files = FileStore(db)
        await files.migrate()
        await files.migrate()  # twice is fine
        fid, sum_ = "F" * 22, "a" * 64
        await files.create(fid, "alice", 100, sum_)
        assert not await files.grant(fid, "mallory", 100, sum_, "bob")  # not the owner
        assert not await files.grant(fid, "alice", 101, sum_, "bob")  # size differs
        assert not await files.grant(fid, "alice", 100, "b" * 64, "bob")  # checksum differs
        assert not await files.grant("G" * 22, "alice", 100, sum_, "bob")  # no such file
        assert await files.readable(fid, "bob") is None
        assert await files.grant(fid, "alice", 100, sum_, "bob")
        assert await files.grant(fid, "alice", 100, sum_, "bob")  # a resent message
        assert await files.readable(fid, "bob") is not None
        assert await files.readable(fid, "alice") is not None
        assert await files.readable(fid, "carol") is None
        assert await files.orphans(int(time.time()) + 10) == []  # it was sent
    finally:
        await db.close()


def test_mysql_ddl_shape() -> None:
    stmts = ddl("mysql")
    assert all("COLLATE=utf8mb4_bin" in s and "ENGINE=InnoDB" in s for s in stmts)
    assert not any("IF NOT EXISTS idx" in s for s in stmts)  # MySQL has no CREATE INDEX IF...
    assert "PRIMARY KEY (file_id, user_id)" in stmts[1]
    with pytest.raises(ValueError):
        ddl("oracle")
