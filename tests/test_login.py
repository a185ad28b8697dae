"""Login providers: the built-in password store, LDAP against a real slapd started here, and an
operator's own class by dotted path. Wrong password, unknown user and an unreachable or silent
directory each give a clear answer, and REST stays up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from conftest import free_port
from ldap_server import PASSWORDS, PEOPLE, SERVICE_DN, Slapd, start_slapd
from test_e2e import expect, stack_settings

from cli.stack import Stack
from client import IMClient, Message, befriend
from common.config import Settings
from common.db import open_database
from common.errors import ConfigError
from rest_web.login import (
    BuiltinLogin,
    Identity,
    LdapLogin,
    Login,
    LoginUnavailable,
    load_provider,
)
from rest_web.store import UserStore

pytestmark = pytest.mark.ldap


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    try:
        yield server
    finally:
        server.stop()


def ldap_settings(url: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        login_provider="ldap",
        ldap_url=url,
        ldap_bind_dn=SERVICE_DN,
        ldap_bind_password=PASSWORDS["im-service"],
        ldap_search_base=PEOPLE,
        ldap_filter="(&(objectClass=inetOrgPerson)(!(employeeType=former)))",
        ldap_timeout=2.0,
    )
    values.update(overrides)
    return values


@pytest_asyncio.fixture
async def ldap(slapd: Slapd) -> AsyncIterator[LdapLogin]:
    provider = LdapLogin(Settings(**ldap_settings(slapd.url)))
    try:
        yield provider
    finally:
        await provider.close()


# -- LDAP provider against slapd --------------------------------------------------------------


@pytest.mark.asyncio
async def test_ldap_good_password_gives_the_directory_identity(ldap: LdapLogin) -> None:
    who = await ldap.authenticate("alice", PASSWORDS["alice"])
    assert who == Identity("alice", "Alice Liddell", "alice@example.org")
    # the directory matches case-insensitively; the IM id is the directory's spelling
    assert await ldap.authenticate("ALICE", PASSWORDS["alice"]) == who


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "wrong-password"),  # wrong password
        ("alice", PASSWORDS["bob"]),  # someone else's password
        ("nobody", "whatever-pw"),  # unknown user
        ("dave", PASSWORDS["dave"]),  # exists, outside the search base
        ("erin", PASSWORDS["erin"]),  # exists, excluded by the filter
        ("alice", ""),  # empty password: an unauthenticated bind would "succeed"
        ("al*", PASSWORDS["alice"]),  # a wildcard is a literal, not a filter
        ("alice)(uid=*", PASSWORDS["alice"]),  # filter injection
    ],
)
async def test_ldap_refusals(ldap: LdapLogin, user: str, password: str) -> None:
    assert await ldap.authenticate(user, password) is None


@pytest.mark.asyncio
async def test_ldap_wrong_service_password_is_unavailable_not_refused(slapd: Slapd) -> None:
    provider = LdapLogin(Settings(**ldap_settings(slapd.url, ldap_bind_password="not-it")))
    try:
        with pytest.raises(LoginUnavailable, match="service bind refused"):
            await provider.authenticate("alice", PASSWORDS["alice"])
    finally:
        await provider.close()


@pytest.mark.asyncio
async def test_ldap_unreachable_server_is_unavailable_at_once() -> None:
    provider = LdapLogin(Settings(**ldap_settings(f"ldap://127.0.0.1:{free_port()}")))
    try:
        started = time.monotonic()
        with pytest.raises(LoginUnavailable):
            await provider.authenticate("alice", PASSWORDS["alice"])
        assert time.monotonic() - started < 3
    finally:
        await provider.close()


@pytest.mark.asyncio
async def test_ldap_server_that_never_answers_times_out() -> None:
    """Accepts the connection, then says nothing: the receive timeout ends the wait."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = LdapLogin(Settings(**ldap_settings(f"ldap://127.0.0.1:{port}", ldap_timeout=0.5)))
    try:
        started = time.monotonic()
        with pytest.raises(LoginUnavailable):
            await provider.authenticate("alice", PASSWORDS["alice"])
        assert time.monotonic() - started < 5
    finally:
        await provider.close()
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


def test_ldap_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="IM_LDAP_URL"):
        LdapLogin(Settings(login_provider="ldap"))
    with pytest.raises(ConfigError, match="IM_LDAP_FILTER"):
        LdapLogin(Settings(**ldap_settings("ldap://127.0.0.1:1", ldap_filter="uid=x")))
    with pytest.raises(ConfigError, match="IM_LDAP_POOL"):
        LdapLogin(Settings(**ldap_settings("ldap://127.0.0.1:1", ldap_pool=0)))


# -- through REST -------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def ldap_rest(tmp_path: Path, slapd: Slapd) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    st = Stack(stack_settings(tmp_path, **ldap_settings(slapd.url)), roles=frozenset({"rest"}))
    await st.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.rest_port}") as http:
            yield st, http
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_ldap_user_gets_an_account_on_first_login(
    ldap_rest: tuple[Stack, httpx.AsyncClient],
) -> None:
    st, http = ldap_rest
    assert st.db is not None
    users = UserStore(st.db)
    assert not await users.user_exists("alice")
    r = await http.post("/login", json={"user_id": "Alice", "password": PASSWORDS["alice"]})
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == "alice"
    assert await users.user_exists("alice")
    row = await st.db.fetchone("SELECT display_name FROM im_user WHERE user_id = 'alice'")
    assert row == ("Alice Liddell",)
    profile = await st.db.fetchone("SELECT provider, email FROM im_user_profile")
    assert profile == ("ldap", "alice@example.org")
    # the token works, and a second login finds the same account
    token = r.json()["token"]
    me = await http.get("/friends", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    again = await http.post("/login", json={"user_id": "alice", "password": PASSWORDS["alice"]})
    assert again.status_code == 200
    # the built-in store cannot be used to log in as a directory user
    assert await users.get_password_hash("alice") == "!external"


@pytest.mark.asyncio
async def test_ldap_refusals_over_rest(ldap_rest: tuple[Stack, httpx.AsyncClient]) -> None:
    st, http = ldap_rest
    wrong = await http.post("/login", json={"user_id": "alice", "password": "wrong-password"})
    unknown = await http.post("/login", json={"user_id": "nobody", "password": "some-pw"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    # accounts come from the directory: no self-registration
    r = await http.post("/users", json={"user_id": "mallory", "password": "mallory-pw"})
    assert r.status_code == 403
    assert st.db is not None
    assert await st.db.fetchall("SELECT user_id FROM im_user") == []


@pytest.mark.asyncio
async def test_unreachable_ldap_gives_503_and_rest_stays_up(tmp_path: Path) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    st = Stack(stack_settings(tmp_path, **ldap_settings(dead)), roles=frozenset({"rest"}))
    await st.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.rest_port}") as http:
            for _ in range(3):
                r = await http.post("/login", json={"user_id": "alice", "password": "pw-123456"})
                assert r.status_code == 503
                assert r.json() == {"detail": "login service unavailable, try again later"}
            assert (await http.get("/healthz")).json() == {"status": "ok"}
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_ldap_users_chat_end_to_end(tmp_path: Path, slapd: Slapd) -> None:
    st = Stack(stack_settings(tmp_path, **ldap_settings(slapd.url)))
    await st.start()
    rest = f"http://127.0.0.1:{st.rest_port}"
    alice = IMClient(rest, "alice", PASSWORDS["alice"])
    bob = IMClient(rest, "bob", PASSWORDS["bob"])
    try:
        await bob.login()  # bob's account exists from here on
        await alice.login()
        await befriend(alice, bob)
        await alice.connect()
        await bob.connect()
        mid = await alice.send_text("bob", "hello from the directory")
        msg = await expect(bob, Message)
        assert isinstance(msg, Message) and (msg.msg_id, msg.text) == (
            mid,
            "hello from the directory",
        )
    finally:
        await alice.close()
        await bob.close()
        await st.stop()


# -- an operator's own provider ---------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["login_plugin.TableLogin", "login_plugin:TableLogin"])
async def test_custom_provider_by_dotted_path(tmp_path: Path, path: str) -> None:
    st = Stack(stack_settings(tmp_path, login_provider=path), roles=frozenset({"rest"}))
    await st.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.rest_port}") as http:
            r = await http.post("/login", json={"user_id": "Zed", "password": "zed-password-1"})
            assert r.status_code == 200, r.text
            assert r.json()["user_id"] == "zed"
            bad = await http.post("/login", json={"user_id": "zed", "password": "nope-nope"})
            assert bad.status_code == 401
            other = await http.post("/login", json={"user_id": "amy", "password": "whatever"})
            assert other.status_code == 401
            reg = await http.post("/users", json={"user_id": "amy", "password": "amy-password"})
            assert reg.status_code == 403  # TableLogin does not say it allows registration
        assert st.db is not None
        assert await st.db.fetchone("SELECT display_name FROM im_user") == ("Zed Zimmer",)
        assert await st.db.fetchone("SELECT provider, email FROM im_user_profile") == (
            path,
            "zed@corp.example",
        )
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_failing_custom_provider_gives_503_and_rest_stays_up(tmp_path: Path) -> None:
    s = stack_settings(tmp_path, login_provider="login_plugin.BrokenLogin")
    st = Stack(s, roles=frozenset({"rest"}))
    await st.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.rest_port}") as http:
            r = await http.post("/login", json={"user_id": "zed", "password": "zed-password-1"})
            assert r.status_code == 503
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await st.stop()


@pytest.mark.asyncio
async def test_provider_returning_an_invalid_user_id_is_refused() -> None:
    db = await open_database("sqlite://:memory:")
    try:
        store = UserStore(db)
        await store.migrate()
        provider = load_provider(Settings(login_provider="login_plugin.BadIdLogin"), store)
        login = Login(provider, store, db, "login_plugin.BadIdLogin")
        assert await login.login("anyone", "any-password") is None
        assert await db.fetchall("SELECT user_id FROM im_user") == []
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("login_plugin.Missing", "has no attribute"),
        ("no_such_module.Thing", "No module named"),
        ("login_plugin.NOT_A_CLASS", "not a class"),
        ("login_plugin.NotAProvider", "async def authenticate"),
        ("kerberos", "dotted path"),
    ],
)
def test_bad_provider_paths_stop_the_start(path: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_provider(Settings(login_provider=path), None)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_builtin_is_the_default_and_refuses_empty_passwords() -> None:
    db = await open_database("sqlite://:memory:")
    try:
        store = UserStore(db)
        await store.migrate()
        provider = load_provider(Settings(), store)
        assert isinstance(provider, BuiltinLogin)
        login = Login(provider, store)
        assert login.allows_registration and not login.external
        from rest_web.passwords import hash_password

        await store.create_user("amy", await hash_password("amy-password"))
        assert await login.login("amy", "amy-password") == "amy"
        assert await login.login("amy", "") is None
        assert await login.login("amy", "wrong-password") is None
        assert await login.login("nobody", "amy-password") is None
    finally:
        await db.close()
