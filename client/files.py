"""File transfer for the client: encrypt while uploading, download with resume, verify, decrypt.

Rules it keeps:
- a file is encrypted on the way out with a fresh key of its own (common/filecrypt.py); the
  server is sent and stores ciphertext only, and the key goes to the recipient inside the
  message's sealed body;
- nothing is held whole in memory: disk reads and writes go one chunk at a time, in a thread;
- a download lands in ``<dest>.part`` (ciphertext) and resumes from its length with an HTTP
  Range request; only once the whole ciphertext matches the message's SHA-256 is it decrypted
  into ``dest`` (via ``<dest>.tmp``, renamed at the end), and every chunk's GCM tag and the
  plaintext SHA-256 are checked on the way. A file that fails any check is not left at ``dest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from client.rest import RestClient, UploadAnswer
from common.crypto import SealError
from common.errors import IMError
from common.filecrypt import FileDecryptor, FileEncryptor, ciphertext_size, new_file_key

CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a FILE message says about its file; ``key`` decrypts it and is never printed."""

    file_id: str
    size: int  # stored (encrypted) bytes
    checksum: str  # SHA-256 of the stored bytes, hex
    name: str
    plain_size: int
    sha256: bytes = field(repr=False)  # of the plaintext
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SealedUpload:
    """An upload done: where the server put it and what the recipient needs to open it."""

    ref: UploadAnswer
    key: bytes
    plain_size: int
    sha256: bytes


class FileCheckError(IMError):
    """A downloaded file does not match its message (size, checksum or authentication)."""


async def upload_file(rest: RestClient, path: Path) -> SealedUpload:
    """Encrypt ``path`` with a fresh key while streaming it to ``POST /files``."""
    plain_size = (await asyncio.to_thread(path.stat)).st_size
    key = new_file_key()
    enc = FileEncryptor(key)
    plain_sha = hashlib.sha256()
    cipher_sha = hashlib.sha256()
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            out = enc.header()
            cipher_sha.update(out)
            yield out
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                read += len(chunk)
                if read > plain_size:
                    raise IMError(f"{path} grew while it was being sent")
                plain_sha.update(chunk)
                out = enc.feed(chunk)
                if out:
                    cipher_sha.update(out)
                    yield out
            out = enc.finish()
            cipher_sha.update(out)
            yield out
        finally:
            fh.close()

    length = ciphertext_size(plain_size)
    ref = await rest.upload(body(), length)
    if read != plain_size:
        raise IMError(f"{path} changed size while it was being sent")
    if ref.size != length or ref.checksum != cipher_sha.hexdigest():
        raise IMError(f"the server stored {ref.size} bytes that do not match what was sent")
    return SealedUpload(ref, key, plain_size, plain_sha.digest())


async def _hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    size = 0
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            digest.update(chunk)
            size += len(chunk)
    finally:
        fh.close()
    return digest, size


async def download_file(rest: RestClient, info: FileInfo, dest: Path) -> int:
    """Fetch, verify and decrypt ``info``'s file into ``dest``; the bytes fetched this time
    (less than the file's size when an earlier, broken download was resumed)."""
    part = dest.with_name(dest.name + ".part")
    digest, have = await _hash_file(part) if part.exists() else (hashlib.sha256(), 0)
    if have > info.size:  # not ours, or from another file: start over
        digest, have = hashlib.sha256(), 0
    fetched = 0
    if have < info.size:
        async with rest.download(info.file_id, have) as resp:
            if resp.status_code == 200 and have:  # the server sent the whole file after all
                digest, have = hashlib.sha256(), 0
            fh = await asyncio.to_thread(open, part, "ab" if have else "wb")
            try:
                async for chunk in resp.aiter_bytes(CHUNK):
                    digest.update(chunk)
                    await asyncio.to_thread(fh.write, chunk)
                    have += len(chunk)
                    fetched += len(chunk)
                    if have > info.size:
                        break
            finally:
                fh.close()
    if have != info.size or digest.hexdigest() != info.checksum:
        part.unlink(missing_ok=True)
        raise FileCheckError(f"file {info.file_id}: downloaded bytes do not match the message")
    await _decrypt(part, info, dest)
    part.unlink(missing_ok=True)
    return fetched


async def _decrypt(part: Path, info: FileInfo, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    dec = FileDecryptor(info.key)
    plain_sha = hashlib.sha256()
    size = 0
    src = await asyncio.to_thread(open, part, "rb")
    out = await asyncio.to_thread(open, tmp, "wb")
    try:
        try:
            while chunk := await asyncio.to_thread(src.read, CHUNK):
                plain = dec.feed(chunk)
                plain_sha.update(plain)
                size += len(plain)
                await asyncio.to_thread(out.write, plain)
            plain = dec.finish()
            plain_sha.update(plain)
            size += len(plain)
            await asyncio.to_thread(out.write, plain)
        except SealError as exc:
            raise FileCheckError(f"file {info.file_id}: {exc}") from None
        finally:
            src.close()
            out.close()
        if size != info.plain_size or plain_sha.digest() != info.sha256:
            raise FileCheckError(f"file {info.file_id}: content does not match the message")
        await asyncio.to_thread(os.replace, tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
