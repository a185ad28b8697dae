"""Shared test helpers and fixtures."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

REDIS_URL = os.environ.get("IM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_service(name: str, reason: str) -> NoReturn:
    """A backing service the test needs is missing: skip locally, fail in CI (``CI=true``)."""
    message = f"{name} not available: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis: ``IM_TEST_REDIS_URL``, default database 15 on localhost."""
    return REDIS_URL


async def connect_redis(url: str) -> aioredis.Redis:
    """A client on the test Redis, or skip (fail in CI) if it does not answer."""
    client = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        require_service("redis", f"no answer at {url} ({exc}); set IM_TEST_REDIS_URL")
    return client


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the test Redis. Tests share the database: use a unique key prefix and delete
    your keys."""
    client = await connect_redis(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
