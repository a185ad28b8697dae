"""Chunked AES-256-GCM for files: round trips at every size edge and any feed split, and every
kind of tampering (cut, reordered, altered, extended, other key) is refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.crypto import SealError
from common.filecrypt import (
    HEADER_BYTES,
    TAG_BYTES,
    FileDecryptor,
    FileEncryptor,
    ciphertext_size,
    new_file_key,
)

CHUNK = 64  # tiny chunks so the edges are cheap to reach


def encrypt(key: bytes, data: bytes, pieces: int = 1) -> bytes:
    enc = FileEncryptor(key, CHUNK)
    out = bytearray(enc.header())
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        out += enc.feed(data[i : i + step])
    out += enc.finish()
    return bytes(out)


def decrypt(key: bytes, blob: bytes, step: int = 7) -> bytes:
    dec = FileDecryptor(key)
    out = bytearray()
    for i in range(0, len(blob), step):
        out += dec.feed(blob[i : i + step])
    out += dec.finish()
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip_and_size_at_chunk_edges(size: int) -> None:
    key = new_file_key()
    data = os.urandom(size)
    blob = encrypt(key, data)
    assert len(blob) == ciphertext_size(size, CHUNK)
    assert decrypt(key, blob) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5 * CHUNK), pieces=st.integers(1, 9), step=st.integers(1, 200))
def test_any_split_of_input_gives_the_same_plaintext(data: bytes, pieces: int, step: int) -> None:
    key = new_file_key()
    assert decrypt(key, encrypt(key, data, pieces), step) == data


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    key = new_file_key()
    data = b"secret line\n" * 100
    blob = encrypt(key, data)
    assert b"secret line" not in blob
    # a fresh nonce prefix per file: the same file and key never encrypt the same way twice
    assert encrypt(key, data) != blob


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    body = blob[HEADER_BYTES:]
    n = CHUNK + TAG_BYTES
    return blob[:HEADER_BYTES], [body[i : i + n] for i in range(0, len(body), n)]


def test_truncation_at_a_chunk_boundary_is_refused() -> None:
    key = new_file_key()
    header, chunks = chunks_of(encrypt(key, os.urandom(3 * CHUNK)))
    assert len(chunks) == 3
    with pytest.raises(SealError):
        decrypt(key, header + b"".join(chunks[:2]))


def test_reordered_chunks_are_refused() -> None:
    key = new_file_key()
    header, chunks = chunks_of(encrypt(key, os.urandom(3 * CHUNK)))
    with pytest.raises(SealError):
        decrypt(key, header + chunks[1] + chunks[0] + chunks[2])


def test_a_flipped_bit_anywhere_is_refused() -> None:
    key = new_file_key()
    blob = bytearray(encrypt(key, os.urandom(2 * CHUNK + 10)))
    for pos in (0, 5, HEADER_BYTES - 1, HEADER_BYTES, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 1
        with pytest.raises(SealError):
            decrypt(key, bytes(bad))


def test_extra_bytes_wrong_key_and_empty_input_are_refused() -> None:
    key = new_file_key()
    blob = encrypt(key, b"hello")
    with pytest.raises(SealError):
        decrypt(key, blob + b"x")
    with pytest.raises(SealError):
        decrypt(new_file_key(), blob)
    with pytest.raises(SealError):
        decrypt(key, b"")
    with pytest.raises(SealError):
        decrypt(key, blob[: HEADER_BYTES + TAG_BYTES - 1])


def test_header_asking_for_huge_chunks_is_refused_before_buffering() -> None:
    key = new_file_key()
    blob = bytearray(encrypt(key, b"x"))
    blob[4:8] = (2**31).to_bytes(4, "big")
    with pytest.raises(SealError, match="chunk size"):
        FileDecryptor(key).feed(bytes(blob))
