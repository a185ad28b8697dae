"""Where uploaded file bytes live: one small interface, a local-directory implementation.

The interface is shaped like an object store's (S3 and the like): an upload is begun, written
in parts, then committed under its final id or aborted; reads are ranged; deletes are by id.
So a bucket can replace the directory without touching the REST code.

:class:`LocalBlobStore` rules:
- an upload is written to ``<root>/.partial/<random>`` and only renamed to its final path at
  commit, after an fsync: a half-written file never has an id, and a crash leaves only a partial
  that :meth:`LocalBlobStore.sweep_partials` removes later;
- final paths are ``<root>/<id[:2]>/<id>``, so no directory holds millions of entries;
- disk I/O runs in worker threads (``asyncio.to_thread``) one chunk at a time: the event loop
  never blocks and memory per transfer is one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

from common.files import valid_file_id

READ_CHUNK = 64 * 1024


class BlobWriter(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def commit(self, file_id: str) -> None:
        """Make the written bytes readable under ``file_id``."""
        ...

    def abort(self) -> None:
        """Throw the written bytes away. Synchronous and cheap, so it also runs while the
        request is being cancelled."""
        ...


class BlobStore(Protocol):
    async def begin(self) -> BlobWriter: ...

    def read(self, file_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of ``file_id``, in chunks."""
        ...

    async def exists(self, file_id: str) -> bool: ...

    async def delete(self, file_id: str) -> None:
        """Remove ``file_id``; no error if it is already gone."""
        ...

    async def sweep_partials(self, older_than: float) -> int:
        """Remove uploads begun before ``older_than`` (unix s) and never committed."""
        ...


class _LocalWriter:
    def __init__(self, store: LocalBlobStore, path: Path, fh: BinaryIO) -> None:
        self._store = store
        self._path = path
        self._fh = fh
        self._open = True

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._fh.write, data)

    async def commit(self, file_id: str) -> None:
        final = self._store.path_of(file_id)

        def finish() -> None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._path, final)

        try:
            await asyncio.to_thread(finish)
        except BaseException:
            self.abort()
            raise
        self._open = False

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class LocalBlobStore:
    """Blobs as files under ``root`` (embedded mode, or a volume shared by REST processes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partials = root / ".partial"

    def path_of(self, file_id: str) -> Path:
        if not valid_file_id(file_id):  # ids become paths: never let one climb out of root
            raise ValueError(f"bad file id {file_id!r}")
        return self.root / file_id[:2] / file_id

    async def begin(self) -> _LocalWriter:
        def create() -> tuple[Path, BinaryIO]:
            self.partials.mkdir(parents=True, exist_ok=True)
            path = self.partials / secrets.token_hex(16)
            return path, open(path, "xb")  # closed by commit or abort

        path, fh = await asyncio.to_thread(create)
        return _LocalWriter(self, path, fh)

    async def read(self, file_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(open, self.path_of(file_id), "rb")
        try:
            await asyncio.to_thread(fh.seek, start)
            left = end - start
            while left > 0:
                chunk = await asyncio.to_thread(fh.read, min(READ_CHUNK, left))
                if not chunk:
                    raise OSError(f"file {file_id} is shorter than its record")
                left -= len(chunk)
                yield chunk
        finally:
            fh.close()

    async def exists(self, file_id: str) -> bool:
        return await asyncio.to_thread(self.path_of(file_id).is_file)

    async def delete(self, file_id: str) -> None:
        def unlink() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.path_of(file_id).unlink()

        await asyncio.to_thread(unlink)

    async def sweep_partials(self, older_than: float) -> int:
        def sweep() -> int:
            removed = 0
            try:
                entries = list(os.scandir(self.partials))
            except FileNotFoundError:
                return 0
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < older_than:
                        os.unlink(entry.path)
                        removed += 1
            return removed

        return await asyncio.to_thread(sweep)


def blob_store_for(root: Path) -> BlobStore:
    """The configured blob store (today only a local directory)."""
    return LocalBlobStore(root)
