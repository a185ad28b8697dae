"""Password hashing: round trip, refusal, salting, malformed stored hashes."""

from __future__ import annotations

import pytest

from rest_web.passwords import hash_password, verify_password


@pytest.mark.asyncio
async def test_round_trip() -> None:
    encoded = await hash_password("correct horse battery staple")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert await verify_password("correct horse battery staple", encoded)


@pytest.mark.asyncio
async def test_wrong_password_fails() -> None:
    encoded = await hash_password("correct horse battery staple")
    assert not await verify_password("correct horse battery stapler", encoded)
    assert not await verify_password("", encoded)


@pytest.mark.asyncio
async def test_same_password_hashes_differ() -> None:
    first = await hash_password("same password")
    second = await hash_password("same password")
    assert first != second
    assert first.split("$")[4] != second.split("$")[4]  # salts differ
    assert await verify_password("same password", first)
    assert await verify_password("same password", second)


@pytest.mark.asyncio
async def test_unicode_normalized() -> None:
    composed, decomposed = "caf\u00e9-p\u00e4ss", "cafe\u0301-pa\u0308ss"
    assert await verify_password(decomposed, await hash_password(composed))


@pytest.mark.asyncio
async def test_no_user_is_false() -> None:
    assert not await verify_password("whatever", None)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        # would need 128 GiB: refused before any work
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$8$1$not base64!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$",
        "scrypt$x$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ],
)
async def test_malformed_hash_never_verifies(encoded: str) -> None:
    assert not await verify_password("password", encoded)
