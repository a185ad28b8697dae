"""Schemathesis against the REST API's own OpenAPI document (DESIGN.md §6: hostile input).

The REST service runs as ``im rest`` does (a real uvicorn on a free port, SQLite, its own event
loop in a thread); schemathesis generates requests from every operation's schema, valid and
invalid, with and without a valid bearer token, and checks that no answer is a 5xx and that
every answer matches the documented status codes, content type and schema. Examples are bounded
per operation so CI stays quick.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import free_port
from hypothesis import HealthCheck, settings
from schemathesis import Case

from cli.stack import Stack
from common.config import Settings
from common.db import open_database
from common.tokens import TokenSigner
from rest_web.admin import AdminDeps
from rest_web.admin_store import AdminStore
from rest_web.app import create_app
from rest_web.store import UserStore

PASSWORD = "schema-password-1"
SECRET = "schemathesis-secret-0123456789"
USERS = itertools.count()
ADMIN_CASE_TOKEN: list[str] = []


class RestInThread:
    """A REST-only stack on its own loop, as a separate process would be."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(
            data_dir=data_dir,
            rest_port=free_port(),
            secret=SECRET,
            connector_addrs="127.0.0.1:9",
            # every generated login with a random password fails: do not lock the test out
            login_failures_per_user=10**6,
            login_failures_per_address=10**6,
            login_failures_per_user_total=10**6,
            register_per_address=10**6,  # a user of its own per /password case
        )
        self.url = f"http://127.0.0.1:{self.settings.rest_port}"
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))
        self._started = threading.Event()
        self.error: BaseException | None = None

    async def _run(self) -> None:
        stack = Stack(self.settings, frozenset({"rest"}))
        try:
            await stack.start()
        except BaseException as exc:
            self.error = exc
            self._started.set()
            raise
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await stack.stop()

    def __enter__(self) -> RestInThread:
        self._thread.start()
        self._started.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestInThread]:
    with RestInThread(tmp_path_factory.mktemp("schemathesis")) as server:
        with httpx.Client(base_url=server.url) as http:
            for user in ("alice", "bob"):
                http.post("/users", json={"user_id": user, "password": PASSWORD})
        yield server


def token(rest: RestInThread, user: str = "alice") -> str:
    """A fresh token of ``user`` (a generated case may log out with it), registered if new."""
    with httpx.Client(base_url=rest.url) as http:
        http.post("/users", json={"user_id": user, "password": PASSWORD})
        r = http.post("/login", json={"user_id": user, "password": PASSWORD})
        r.raise_for_status()
        return str(r.json()["token"])


def openapi_document() -> dict[str, Any]:
    """The document the server serves, made by the same code (the operations must be known
    when pytest collects, before any server runs)."""

    async def build() -> dict[str, Any]:
        db = await open_database("sqlite://:memory:")
        try:
            settings = Settings(secret=SECRET, connector_addrs="127.0.0.1:9")
            admin = AdminDeps(AdminStore(db), settings)  # documented for the admin API too
            app = create_app(settings, UserStore(db), TokenSigner(SECRET.encode()), admin=admin)
            return app.openapi()
        finally:
            await db.close()

    return asyncio.run(build())


schema = schemathesis.openapi.from_dict(openapi_document())


@schema.exclude(path_regex="^/admin").parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: CI is reproducible
)
def test_rest_api_matches_its_schema_and_never_fails(case: Case[Any], rest: RestInThread) -> None:
    headers = {}
    if case.operation.path == "/password":
        # a user of its own each time, since a case may change the password for good
        headers["Authorization"] = f"Bearer {token(rest, f'pw-{next(USERS)}')}"
    elif case.operation.path not in ("/users", "/login", "/healthz", "/readyz", "/metrics"):
        headers["Authorization"] = f"Bearer {token(rest)}"
    case.call_and_validate(base_url=rest.url, headers=headers)


@schema.include(path_regex="^/admin").parametrize()
@settings(
    # the admin endpoints answer a non-admin 403 before reading their input: fewer cases find
    # as much, and nine more operations at 25 each would double this file's time
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_admin_api_matches_its_schema_for_a_non_admin(case: Case[Any], rest: RestInThread) -> None:
    # alice is no admin and no case can revoke her token: one login serves them all
    if not ADMIN_CASE_TOKEN:
        ADMIN_CASE_TOKEN.append(token(rest))
    case.call_and_validate(
        base_url=rest.url, headers={"Authorization": f"Bearer {ADMIN_CASE_TOKEN[0]}"}
    )
