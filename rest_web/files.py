"""File upload and download over REST: the bytes of FILE messages never touch the chat socket.

Rules:
- ``POST /files`` streams the request body to the blob store chunk by chunk; a declared length
  over the limit is refused (413) before a byte is read, a streamed one as soon as it passes the
  limit; anything but a finished upload (too big, client gone, storage error) leaves no file and
  no record behind;
- the record (owner, size, SHA-256) is written before the bytes are committed under their id, so
  a crash between the two leaves a record without bytes, never bytes nobody knows of; the
  janitor removes such a record like any other orphan;
- ``GET /files/{id}`` is for the uploader and the users the file was sent to (grants written by
  the connector when it accepted the message), and, for a file sent in a group, for whoever was
  a member at that message's seq (a span of theirs covers it: not a later joiner, not a member
  removed before it, and a refused chat that never got a seq lets nobody in); anyone else gets
  the same 404 as for a file that does not exist; one byte range per request (206), so a broken
  download resumes;
- the janitor deletes uploads never sent within ``IM_FILE_ORPHAN_TTL`` and partial uploads idle
  that long; files that were sent are kept.

No ``from __future__ import annotations``: FastAPI reads the endpoint annotations, and the auth
dependency they name is a local of :func:`add_routes`.
"""

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from common.config import Settings
from common.db import Database
from common.errors import IMError
from common.files import FILE_ID_PATTERN, FileMeta, FileStore, new_file_id
from common.tokens import Claims
from rest_web.blobs import BlobStore, blob_store_for
from timeline.store import TimelineStore

log = logging.getLogger(__name__)

FileId = Annotated[str, Path(pattern=FILE_ID_PATTERN, description="id from POST /files")]
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class FileOut(BaseModel):
    file_id: str
    size: int = Field(description="stored size in bytes")
    checksum: str = Field(description="SHA-256 of the stored bytes, lowercase hex")


class RangeError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) for a ``Range`` header, None for no header.

    One ``bytes=`` range only. Malformed or several ranges: :class:`RangeError` 400; well-formed
    but outside the file: 416.
    """
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        raise RangeError(400, "Range must be one 'bytes=start-end' range")
    first, last = m.group(1), m.group(2)
    if not first and not last:
        raise RangeError(400, "Range needs a start or a suffix length")
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeError(416, "empty suffix range")
        return max(0, size - n), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        raise RangeError(400, "Range end before its start")
    if start >= size:
        raise RangeError(416, f"range starts past the end ({size} bytes)")
    return start, min(end, size)


class FileService:
    """Uploads, downloads and orphan cleaning over a :class:`FileStore` and a blob store."""

    def __init__(
        self,
        files: FileStore,
        blobs: BlobStore,
        *,
        max_size: int,
        orphan_ttl: float,
        sweep_interval: float,
    ) -> None:
        self.files = files
        self.blobs = blobs
        self.max_size = max_size
        self.orphan_ttl = orphan_ttl
        self.sweep_interval = sweep_interval

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> "FileService":
        return cls(
            FileStore(db),
            blob_store_for(settings.file_root()),
            max_size=settings.max_file_size,
            orphan_ttl=settings.file_orphan_ttl,
            sweep_interval=settings.file_sweep_interval,
        )

    async def migrate(self) -> None:
        await self.files.migrate()

    async def check_schema(self) -> None:
        await self.files.check_schema()

    async def sweep(self, now: float | None = None) -> int:
        """Delete orphans older than the TTL (record, then bytes); return how many."""
        now = time.time() if now is None else now
        cutoff = int(now - self.orphan_ttl)
        removed = 0
        while True:
            batch = await self.files.orphans(cutoff)
            for file_id in batch:
                if await self.files.delete_orphan(file_id, cutoff):
                    await self.blobs.delete(file_id)
                    removed += 1
            if len(batch) < 500:
                break
        partials = await self.blobs.sweep_partials(now - self.orphan_ttl)
        if removed or partials:
            log.info(
                "file janitor: %d orphaned uploads, %d partial uploads removed", removed, partials
            )
        return removed

    async def janitor(self) -> None:
        """Sweep every ``sweep_interval`` seconds until cancelled; a failed sweep is retried at
        the next turn."""
        while True:
            try:
                await self.sweep()
            except (IMError, OSError) as exc:
                log.warning("file janitor: sweep failed: %s", exc)
            await asyncio.sleep(self.sweep_interval)


async def readable(
    files: FileStore, timeline: TimelineStore | None, file_id: str, user_id: str
) -> FileMeta | None:
    """The file if ``user_id`` may download it (module docstring), else None. A group's
    grant names its message: the timeline says at which seq it was committed (by its
    sender, the file's owner) and whether a span of the user's covers that seq."""
    meta = await files.readable(file_id, user_id)
    if meta is not None or timeline is None:
        return meta
    meta = await files.get(file_id)
    if meta is None:
        return None
    for conv_id, msg_id in await files.group_grants(file_id):
        entry = await timeline.get(meta.owner, msg_id)
        if entry is None or entry.conv_id != conv_id:
            continue  # refused at commit (not a member, a stale key): it has no seq
        if any(span.covers(entry.seq) for span in await timeline.spans(conv_id, user_id)):
            return meta
    return None


def add_routes(
    app: FastAPI,
    caller: Callable[..., Awaitable[Claims]],
    service: FileService,
    timeline: TimelineStore | None = None,
) -> None:
    """Mount ``POST /files`` and ``GET /files/{file_id}``; ``caller`` is the app's bearer-token
    dependency; ``timeline`` answers who was a member at a group message's seq (None: files
    sent in groups are for their owner only)."""
    Caller = Annotated[Claims, Depends(caller)]
    limit = service.max_size

    def too_large() -> HTTPException:
        return HTTPException(
            413,
            f"file over {limit} bytes",
            headers={"Connection": "close"},
        )

    @app.post(
        "/files",
        status_code=status.HTTP_201_CREATED,
        tags=["files"],
        responses={
            400: {"description": "empty body or bad Content-Length"},
            401: {"description": "missing, bad, expired or revoked token"},
            413: {"description": "over IM_MAX_FILE_SIZE"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def upload(request: Request, me: Caller) -> FileOut:
        """Store the request body (the client's already encrypted file) and return its id."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPException(status.HTTP_400_BAD_REQUEST, "bad Content-Length")
            if int(declared) > limit:
                raise too_large()
        writer = await service.blobs.begin()
        try:
            digest = hashlib.sha256()
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large()
                digest.update(chunk)
                await writer.write(chunk)
            if size == 0:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, "empty upload")
            file_id, checksum = new_file_id(), digest.hexdigest()
            await service.files.create(file_id, me.user_id, size, checksum)
            try:
                await writer.commit(file_id)
            except BaseException:
                # failing that too leaves a record without bytes: the janitor removes it
                with contextlib.suppress(IMError):
                    await service.files.delete(file_id)
                raise
        except ClientDisconnect:
            writer.abort()
            log.info("upload by %s interrupted: nothing kept", me.user_id)
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "upload interrupted") from None
        except BaseException:
            writer.abort()
            raise
        log.info("upload %s by %s: %d bytes", file_id, me.user_id, size)
        return FileOut(file_id=file_id, size=size, checksum=checksum)

    @app.get(
        "/files/{file_id}",
        tags=["files"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the file"},
            206: {"content": {"application/octet-stream": {}}, "description": "the range"},
            400: {"description": "malformed Range"},
            401: {"description": "missing, bad, expired or revoked token"},
            404: {"description": "no such file, or not yours to read"},
            416: {"description": "range outside the file"},
        },
    )
    async def download(
        me: Caller,
        file_id: FileId,
        range_header: Annotated[str | None, Header(alias="range")] = None,
    ) -> StreamingResponse:
        """The stored bytes, whole or one range (resume with ``Range: bytes=N-``)."""
        meta = await readable(service.files, timeline, file_id, me.user_id)
        if meta is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
        if not await service.blobs.exists(file_id):
            log.error("file %s has a record but no bytes", file_id)
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
        try:
            span = parse_range(range_header, meta.size)
        except RangeError as exc:
            headers = {"Content-Range": f"bytes */{meta.size}"} if exc.code == 416 else None
            raise HTTPException(exc.code, exc.detail, headers=headers) from None
        start, end = span if span is not None else (0, meta.size)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Length": str(end - start),
            "ETag": f'"{meta.checksum}"',
            "X-Checksum-SHA256": meta.checksum,
        }
        code = status.HTTP_200_OK
        if span is not None:
            code = status.HTTP_206_PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{meta.size}"
        return StreamingResponse(
            service.blobs.read(file_id, start, end),
            status_code=code,
            headers=headers,
            media_type="application/octet-stream",
        )
