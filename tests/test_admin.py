"""The admin API (rest_web/admin.py): every endpoint refuses non-admins (403), callers without a
valid token (401) and disabled users' tokens (401); what each endpoint does; the audit log;
``im admin grant|revoke|list``. The REST app runs in process on SQLite (ASGI transport)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from common.config import Settings
from common.db import Database, open_database
from common.tokens import Revocation, TokenSigner
from groups.store import SQLGroupStore
from rest_web.admin import AdminDeps
from rest_web.admin_store import AdminStore
from rest_web.app import create_app
from rest_web.files import FileService
from rest_web.store import UserStore
from timeline.store import SQLTimelineStore
from user_status import MemoryUserStatus
from user_status.kick import Kick, MemoryKickBus

SECRET = "admin-test-secret-0123456789"
PW = "password-123"

# a valid body for every admin endpoint that takes one: a new endpoint must be added here, so
# the authorization tests below cover it
BODIES: dict[tuple[str, str], dict[str, object]] = {
    ("POST", "/admin/users/{user_id}/kick"): {"device_id": "phone"},
    ("POST", "/admin/users/{user_id}/disable"): {"reason": "spam"},
    ("POST", "/admin/notices"): {"user_id": "bob", "text": "maintenance at noon"},
}


@dataclass
class Api:
    http: httpx.AsyncClient
    app: FastAPI
    db: Database
    admins: AdminStore
    status: MemoryUserStatus
    kicks: MemoryKickBus
    files: FileService
    published: list[Revocation]

    async def user(self, user_id: str, device: str = "") -> dict[str, str]:
        r = await self.http.post("/users", json={"user_id": user_id, "password": PW})
        assert r.status_code in (201, 409), r.text
        return await self.login(user_id, device)

    async def login(self, user_id: str, device: str = "") -> dict[str, str]:
        r = await self.http.post(
            "/login", json={"user_id": user_id, "password": PW, "device_id": device}
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    db = await open_database(f"sqlite:///{tmp_path / 'im.db'}")
    users = UserStore(db)
    await users.migrate()
    settings = Settings(
        data_dir=tmp_path, secret=SECRET, connector_addrs="127.0.0.1:9", admins="root"
    )
    files = FileService.from_settings(settings, db)
    await files.migrate()
    admins = AdminStore(db, settings.admin_ids())
    await admins.migrate()
    timeline = SQLTimelineStore(db)
    await timeline.migrate()  # a deleted account's messages are rewritten there
    await SQLGroupStore(db, timeline).migrate()  # and its groups' rows go
    status, kicks = MemoryUserStatus(), MemoryKickBus()
    published: list[Revocation] = []

    async def publish(rev: Revocation) -> None:
        published.append(rev)

    deps = AdminDeps(admins, settings, kicks=kicks, status=status, blobs=files.blobs)
    app = create_app(
        settings,
        users,
        TokenSigner(SECRET.encode()),
        files=files,
        revocations=publish,
        admin=deps,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield Api(http, app, db, admins, status, kicks, files, published)
    await db.close()


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) under /admin, as the app itself documents them."""
    out = [
        (method.upper(), path)
        for path, ops in app.openapi()["paths"].items()
        if path.startswith("/admin")
        for method in ops
    ]
    assert len(out) >= 9, out
    return sorted(out)


async def call(
    api: Api, method: str, path: str, headers: dict[str, str], target: str = "bob"
) -> httpx.Response:
    url = path.replace("{user_id}", target)
    body = BODIES.get((method, path))
    return await api.http.request(method, url, headers=headers, json=body)


@pytest.mark.asyncio
async def test_every_admin_endpoint_needs_an_admin_token(api: Api) -> None:
    alice = await api.user("alice")
    await api.user("bob")
    for method, path in admin_routes(api.app):
        assert (await call(api, method, path, {})).status_code == 401, (method, path)
        bad = {"Authorization": "Bearer v1.garbage.sig"}
        assert (await call(api, method, path, bad)).status_code == 401, (method, path)
        r = await call(api, method, path, alice)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json() == {"detail": "admin role required"}
    # nothing happened: bob is neither disabled nor deleted, nobody was kicked or cut off
    assert not await api.admins.is_disabled("bob")
    assert api.published == []
    await api.login("bob")


@pytest.mark.asyncio
async def test_refused_calls_are_audited_too(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    alice = await api.user("alice")
    with caplog.at_level(logging.INFO, logger="im.audit"):
        r = await api.http.post("/admin/users/bob/disable", headers=alice, json={"reason": "x"})
    assert r.status_code == 403
    entries = await api.admins.audit_log()
    assert [(e.actor, e.action, e.target, e.status) for e in entries] == [
        ("alice", "disable", "bob", 403)
    ]
    assert any(
        "actor=alice action=disable target=bob status=403" in rec.getMessage()
        for rec in caplog.records
    )
    # an anonymous call is logged but leaves no row: no one fills the table without a token
    await api.http.post("/admin/users/bob/disable", json={})
    assert len(await api.admins.audit_log()) == 1


@pytest.mark.asyncio
async def test_admin_by_setting_and_by_grant_and_revoke(api: Api) -> None:
    root = await api.user("root")  # IM_ADMINS=root
    carol = await api.user("carol")
    assert (await api.http.get("/admin/stats", headers=root)).status_code == 200
    assert (await api.http.get("/admin/stats", headers=carol)).status_code == 403
    assert await api.admins.grant("carol", "test")
    assert (await api.http.get("/admin/stats", headers=carol)).status_code == 200
    assert await api.admins.revoke("carol")
    assert (await api.http.get("/admin/stats", headers=carol)).status_code == 403  # at once
    assert not await api.admins.revoke("root")  # IM_ADMINS is not a grant


@pytest.mark.asyncio
async def test_disable_logs_out_everywhere_refuses_login_and_every_admin_endpoint(
    api: Api,
) -> None:
    root = await api.user("root")
    await api.admins.grant("dave", "test")
    dave_phone = await api.user("dave", "phone")
    dave_laptop = await api.login("dave", "laptop")
    assert (await api.http.get("/admin/stats", headers=dave_phone)).status_code == 200
    r = await api.http.post("/admin/users/dave/disable", headers=root, json={"reason": "left"})
    assert r.json() == {"user_id": "dave", "disabled": True, "changed": True}
    # the cutoff was published for connectors, covering every token dave had
    rev = api.published[-1]
    assert rev.user_id == "dave" and not rev.token_id
    for token in (dave_phone, dave_laptop):
        assert (await api.http.get("/friends", headers=token)).status_code == 401
        for method, path in admin_routes(api.app):
            r = await call(api, method, path, token)
            assert r.status_code == 401, (method, path)
    r = await api.http.post("/login", json={"user_id": "dave", "password": PW})
    assert r.status_code == 403 and r.json() == {"detail": "account disabled"}
    again = await api.http.post("/admin/users/dave/disable", headers=root, json={})
    assert again.json()["changed"] is False
    r = await api.http.post("/admin/users/dave/enable", headers=root)
    assert r.json() == {"user_id": "dave", "disabled": False, "changed": True}
    fresh = await api.login("dave")
    assert (await api.http.get("/friends", headers=fresh)).status_code == 200
    assert (await api.http.get("/friends", headers=dave_phone)).status_code == 401  # stays dead


@pytest.mark.asyncio
async def test_an_admin_cannot_disable_or_delete_themselves(api: Api) -> None:
    root = await api.user("root")
    r = await api.http.post("/admin/users/root/disable", headers=root, json={})
    assert r.status_code == 400
    assert (await api.http.delete("/admin/users/root", headers=root)).status_code == 400
    assert (await api.http.get("/admin/stats", headers=root)).status_code == 200


@pytest.mark.asyncio
async def test_unknown_users_are_404(api: Api) -> None:
    root = await api.user("root")
    for method, url in (
        ("POST", "/admin/users/nobody/disable"),
        ("POST", "/admin/users/nobody/enable"),
        ("DELETE", "/admin/users/nobody"),
    ):
        r = await api.http.request(method, url, headers=root, json={})
        assert r.status_code == 404, (method, url)
    state = (await api.http.get("/admin/users/nobody", headers=root)).json()
    assert state["exists"] is False


@pytest.mark.asyncio
async def test_delete_erases_the_account_and_its_data(api: Api) -> None:
    root = await api.user("root")
    alice = await api.user("alice")
    bob = await api.user("bob")
    assert (await api.http.put("/friends/alice", headers=bob)).status_code == 202
    assert (await api.http.put("/friends/bob", headers=alice)).status_code == 200
    carol = await api.user("carol")
    assert (await api.http.put("/friends/carol", headers=bob)).status_code == 202  # pending
    assert (await api.http.put("/blocks/bob", headers=carol)).status_code == 204
    up = await api.http.post(
        "/files", headers={**bob, "Content-Type": "application/octet-stream"}, content=b"x" * 100
    )
    file_id = up.json()["file_id"]
    r = await api.http.delete("/admin/users/bob", headers=root)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["relations"], body["files"], body["grants"]) == (1, 1, 0)
    assert body["messages"] == "0 anonymized (kept, from a deleted user)"  # it sent none
    assert (await api.http.get("/friends", headers=alice)).json() == []
    assert (await api.http.get("/friends", headers=bob)).status_code == 401
    # its requests and the blocks of it went too: a new "bob" inherits neither
    r = await api.http.get("/friends/requests", headers=carol)
    assert r.json() == {"incoming": [], "outgoing": []}
    assert (await api.http.get("/blocks", headers=carol)).json() == []
    assert not await api.files.blobs.exists(file_id)
    assert await api.files.files.get(file_id) is None
    r = await api.http.post("/login", json={"user_id": "bob", "password": PW})
    assert r.status_code == 401
    assert (await api.http.delete("/admin/users/bob", headers=root)).status_code == 404
    # the id is free again; the new account's tokens are not caught by the old cutoff
    await asyncio.sleep(0.01)
    new_bob = await api.user("bob")
    assert (await api.http.get("/friends", headers=new_bob)).status_code == 200


@pytest.mark.asyncio
async def test_kick_publishes_on_the_bus(api: Api) -> None:
    root = await api.user("root")
    follower = api.kicks.follow()
    pending = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)
    r = await api.http.post("/admin/users/bob/kick", headers=root, json={"device_id": "phone"})
    assert r.status_code == 202
    assert await asyncio.wait_for(pending, 2) == Kick("bob", "phone")
    r = await api.http.post("/admin/users/bob/kick", headers=root, json={})
    assert await asyncio.wait_for(anext(follower), 2) == Kick("bob", "")
    bad = await api.http.post("/admin/users/bob/kick", headers=root, json={"device_id": "a b"})
    assert bad.status_code == 422
    await follower.aclose()


@pytest.mark.asyncio
async def test_online_users_paged_and_cluster_stats(api: Api) -> None:
    root = await api.user("root")
    for node in ("connector-1", "connector-2"):
        await api.status.beat("connector", node, f"{node}:9081", 60)
    await api.status.beat("transfer", "transfer-1", "transfer-1:9082", 60)
    for i in range(5):
        await api.status.online(f"u{i}", "phone", "connector-1")
    await api.status.online("u0", "laptop", "connector-2")
    r = await api.http.get("/admin/users/online", headers=root, params={"limit": 2})
    page = r.json()
    assert [u["user_id"] for u in page["users"]] == ["u0", "u1"] and page["next_cursor"]
    assert page["users"][0]["devices"] == [
        {"device_id": "laptop", "connector": "connector-2"},
        {"device_id": "phone", "connector": "connector-1"},
    ]
    seen = [u["user_id"] for u in page["users"]]
    while page["next_cursor"]:
        r = await api.http.get(
            "/admin/users/online",
            headers=root,
            params={"limit": 2, "cursor": page["next_cursor"]},
        )
        page = r.json()
        seen += [u["user_id"] for u in page["users"]]
    assert seen == [f"u{i}" for i in range(5)]
    stats = (await api.http.get("/admin/stats", headers=root)).json()
    assert stats == {
        "connectors": [
            {"node_id": "connector-1", "address": "connector-1:9081", "connections": 5},
            {"node_id": "connector-2", "address": "connector-2:9081", "connections": 1},
        ],
        "transfers": [{"node_id": "transfer-1", "address": "transfer-1:9082", "connections": None}],
        "online_users": 5,
        "online_devices": 6,
        "counted_all": True,
        "queues": {},
    }
    state = (await api.http.get("/admin/users/u0", headers=root)).json()
    assert state == {
        "user_id": "u0",
        "exists": False,
        "disabled": False,
        "admin": False,
        "devices": [
            {"device_id": "laptop", "connector": "connector-2"},
            {"device_id": "phone", "connector": "connector-1"},
        ],
    }


@pytest.mark.asyncio
async def test_notices_are_defined_but_not_delivered_yet(api: Api) -> None:
    root = await api.user("root")
    r = await api.http.post("/admin/notices", headers=root, json={"user_id": "bob", "text": "hi"})
    assert r.status_code == 501 and "timeline" in r.json()["detail"]
    for body in ({"text": "hi"}, {"user_id": "a", "group_id": "g", "text": "hi"}, {"user_id": "a"}):
        r = await api.http.post("/admin/notices", headers=root, json=body)
        assert r.status_code == 422, body
    entries = await api.admins.audit_log(limit=10)
    assert entries[-1].action == "send_notice" and entries[-1].status == 501
    assert entries[-1].detail == "user=bob chars=2"


@pytest.mark.asyncio
async def test_audit_log_reads_newest_first(api: Api) -> None:
    root = await api.user("root")
    await api.user("bob")
    await api.http.post("/admin/users/bob/kick", headers=root, json={"device_id": "tab"})
    await api.http.post("/admin/users/bob/disable", headers=root, json={"reason": "spam"})
    await api.http.post("/admin/users/bob/enable", headers=root)
    log = (await api.http.get("/admin/audit", headers=root)).json()
    assert [(e["action"], e["target"], e["detail"], e["status"]) for e in log[:3]] == [
        ("enable", "bob", "", 200),
        ("disable", "bob", "reason=spam", 200),
        ("kick", "bob", "device=tab", 202),
    ]
    assert all(e["actor"] == "root" for e in log)
    older = await api.http.get(
        "/admin/audit", headers=root, params={"before_ms": log[1]["at_ms"], "limit": 1}
    )
    assert len(older.json()) <= 1


@pytest.mark.asyncio
async def test_openapi_documents_the_admin_answers(api: Api) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    for method, path in admin_routes(api.app):
        op = spec["paths"][path][method.lower()]
        assert {"401", "403"} <= set(op["responses"]), (method, path)
        assert op["tags"] == ["admin"]
        assert op["security"] == [{"HTTPBearer": []}], (method, path)


@pytest.mark.asyncio
async def test_audit_is_bounded_by_age(tmp_path: Path) -> None:
    from rest_web.admin_store import AuditEntry

    db = await open_database(f"sqlite:///{tmp_path / 'a.db'}")
    store = AdminStore(db, keep_days=1)
    await store.migrate()
    day = 86_400_000
    await store.audit(AuditEntry(1_000 * day, "root", "stats", "", "", 200))
    await store.audit(AuditEntry(1_000 * day + day // 2, "root", "stats", "", "", 200))
    assert len(await store.audit_log()) == 2
    await store.audit(AuditEntry(1_002 * day, "root", "stats", "", "", 200))
    assert len(await store.audit_log()) == 1  # the two older than a day are gone
    await db.close()


def test_im_admin_grant_revoke_list(tmp_path: Path) -> None:
    def im(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "admin", *args],
            env={"IM_DATA_DIR": str(tmp_path), "IM_ADMINS": "ops", "PATH": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = im("grant", "carol")
    assert done.returncode == 1 and "no such user: carol" in done.stderr

    async def make_carol() -> None:
        db = await open_database(f"sqlite:///{tmp_path / 'im.db'}")
        await UserStore(db).migrate()
        await UserStore(db).create_user("carol", "x")
        await db.close()

    asyncio.run(make_carol())
    assert im("grant", "carol").stdout.strip() == "carol is an admin"
    assert im("grant", "carol").stdout.strip() == "carol is an admin (already was)"
    assert im("list").stdout.split("\n")[:2] == ["carol (im admin grant)", "ops (IM_ADMINS)"]
    assert im("revoke", "carol").stdout.strip() == "carol is no longer an admin"
    assert "still an admin through IM_ADMINS" in im("revoke", "ops").stdout
    assert im("grant").returncode == 2
