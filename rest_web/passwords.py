"""Password hashing: salted scrypt, run off the event loop (DESIGN.md §6).

Encoded form: ``scrypt$n$r$p$salt_b64$hash_b64`` (standard base64), so the cost parameters travel
with each hash and can be raised later without breaking old ones. Rules:
- each hash takes ~16 MiB and tens of milliseconds, so hashing runs on a small pool of its own:
  the event loop never blocks, memory stays bounded under a login flood, and the default executor
  stays free for everything else;
- verification compares in constant time, and a missing user is checked against a dummy hash so
  "no such user" costs the same as "wrong password";
- parameters read from a stored hash are bounded before use, so a corrupt row cannot ask for
  gigabytes; a malformed hash simply fails to verify.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import os
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")

N = 2**14
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_MAX_MEM = 64 * 1024 * 1024  # refuse stored parameters that need more than this

_ZERO_SALT = base64.b64encode(bytes(SALT_BYTES)).decode()
_ZERO_HASH = base64.b64encode(bytes(HASH_BYTES)).decode()
_DUMMY = f"scrypt${N}${R}${P}${_ZERO_SALT}${_ZERO_HASH}"  # verified against when no user

_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="scrypt")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # NFKC: the same password typed on two keyboards may arrive as different code points
    secret = unicodedata.normalize("NFKC", password).encode()
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _hash_sync(password: str) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, N, R, P, HASH_BYTES)
    salt_b64 = base64.b64encode(salt).decode()
    return f"scrypt${N}${R}${P}${salt_b64}${base64.b64encode(digest).decode()}"


def _verify_sync(password: str, encoded: str) -> bool:
    try:
        scheme, n_s, r_s, p_s, salt_b64, hash_b64 = encoded.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    if (
        scheme != "scrypt"
        or n < 2
        or n & (n - 1)
        or not 1 <= r <= 64
        or not 1 <= p <= 16
        or 128 * r * (n + p) > _MAX_MEM
        or not salt
        or not 16 <= len(expected) <= 64
    ):
        return False
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


async def _run(fn: Callable[[], _T]) -> _T:
    return await asyncio.get_running_loop().run_in_executor(_pool, fn)


async def hash_password(password: str) -> str:
    """A fresh salted hash of ``password``, in the encoded form above."""
    return await _run(functools.partial(_hash_sync, password))


async def verify_password(password: str, encoded: str | None) -> bool:
    """True if ``password`` matches ``encoded``; ``None`` (no such user) is False, same cost."""
    if encoded is None:
        await _run(functools.partial(_verify_sync, password, _DUMMY))
        return False
    return await _run(functools.partial(_verify_sync, password, encoded))
