"""File encryption for FILE messages: AES-256-GCM in chunks, so any size streams (DESIGN.md §6).

A file is sealed by the sending client with a fresh random key of its own before upload; the key
travels inside the message's sealed body, so the server only ever stores ciphertext. Whole-file
GCM would need the whole file in memory to check the tag; chunked GCM (the "STREAM" construction)
authenticates each chunk on its own and still catches every reordering, truncation or extension:

- layout: ``header | chunk_0 | ... | chunk_n-1``, each chunk ``ciphertext + 16-byte tag``;
- header (15 bytes): ``b"IMF" | version (1) | chunk size (uint32 BE) | nonce prefix (7)``, bound
  into every chunk as associated data, so it cannot be altered either;
- nonce of chunk i: ``prefix (7) | i (uint32 BE) | 1 if last else 0 (1)``: a moved chunk fails
  its tag, and only the true last chunk opens with the "last" flag, so a cut file fails to open;
- plaintext chunks are ``chunk size`` bytes except the last, which holds 1..chunk size bytes
  (0 only for an empty file); there is always exactly one last chunk.

Both directions are sans-IO (bytes in, bytes out) and hold at most one chunk.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.crypto import SealError

MAGIC = b"IMF\x01"
HEADER_BYTES = 4 + 4 + 7
TAG_BYTES = 16
KEY_BYTES = 32
# 64 KiB: large enough that the 16-byte tags cost 0.02 %, small enough to stream in small reads.
DEFAULT_CHUNK = 64 * 1024
# A header may not ask a reader to buffer more than this per chunk.
MAX_CHUNK = 4 * 1024 * 1024
_HEADER = struct.Struct(">4sI7s")


def new_file_key() -> bytes:
    """A fresh AES-256 key for one file; never reused for another."""
    return os.urandom(KEY_BYTES)


def ciphertext_size(plain_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    """How many bytes encrypting ``plain_size`` bytes produces (the upload's Content-Length)."""
    chunks = max(1, -(-plain_size // chunk_size))
    return HEADER_BYTES + plain_size + chunks * TAG_BYTES


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 2**32:
        raise SealError("file has too many chunks")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class FileEncryptor:
    """Feed plaintext in any pieces; concatenate ``header()``, every ``feed()`` and ``finish()``."""

    def __init__(self, key: bytes, chunk_size: int = DEFAULT_CHUNK) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("file key must be 32 bytes")
        if not 0 < chunk_size <= MAX_CHUNK:
            raise ValueError("bad chunk size")
        self._aead = AESGCM(key)
        self._chunk = chunk_size
        self._prefix = os.urandom(7)
        self._header = _HEADER.pack(MAGIC, chunk_size, self._prefix)
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def header(self) -> bytes:
        return self._header

    def _seal(self, data: bytes, last: bool) -> bytes:
        nonce = _nonce(self._prefix, self._index, last)
        self._index += 1
        return self._aead.encrypt(nonce, data, self._header)

    def feed(self, data: bytes) -> bytes:
        if self._done:
            raise ValueError("feed after finish")
        self._buf += data
        out = bytearray()
        # keep at least one byte back: the last chunk is only known at finish()
        while len(self._buf) > self._chunk:
            out += self._seal(bytes(self._buf[: self._chunk]), last=False)
            del self._buf[: self._chunk]
        return bytes(out)

    def finish(self) -> bytes:
        if self._done:
            raise ValueError("finish twice")
        self._done = True
        out = self._seal(bytes(self._buf), last=True)
        self._buf.clear()
        return out


class FileDecryptor:
    """Feed ciphertext in any pieces; ``finish()`` raises :class:`SealError` unless the file was
    whole and genuine. Plaintext is returned chunk by chunk, each one already authenticated."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SealError("file key must be 32 bytes")
        self._aead = AESGCM(key)
        self._header: bytes | None = None
        self._prefix = b""
        self._chunk = 0
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def _open(self, data: bytes, last: bool) -> bytes:
        assert self._header is not None
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._index, last), data, self._header)
        except InvalidTag:
            raise SealError(f"file chunk {self._index} failed authentication") from None
        self._index += 1
        return plain

    def feed(self, data: bytes) -> bytes:
        if self._done:
            raise SealError("data after the last chunk")
        self._buf += data
        if self._header is None:
            if len(self._buf) < HEADER_BYTES:
                return b""
            magic, chunk, prefix = _HEADER.unpack(bytes(self._buf[:HEADER_BYTES]))
            if magic != MAGIC:
                raise SealError("not an encrypted file (bad header)")
            if not 0 < chunk <= MAX_CHUNK:
                raise SealError(f"chunk size {chunk} out of range")
            self._header = bytes(self._buf[:HEADER_BYTES])
            self._chunk, self._prefix = chunk, prefix
            del self._buf[:HEADER_BYTES]
        sealed = self._chunk + TAG_BYTES
        out = bytearray()
        while len(self._buf) > sealed:
            out += self._open(bytes(self._buf[:sealed]), last=False)
            del self._buf[:sealed]
        return bytes(out)

    def finish(self) -> bytes:
        if self._done:
            raise SealError("finish twice")
        self._done = True
        if self._header is None:
            raise SealError("file is truncated (no header)")
        if len(self._buf) < TAG_BYTES:
            raise SealError("file is truncated")
        out = self._open(bytes(self._buf), last=True)
        self._buf.clear()
        return out
