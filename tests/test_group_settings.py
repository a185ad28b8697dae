"""``IM_GROUP_MAX_SIZE`` is a setting like the others: read and validated by
:class:`common.config.Settings` (a bad value stops the process with a clear error instead of
quietly becoming the default), and the REST app built from a Settings enforces that value."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from common.config import Settings
from rest_web.app import build

SECRET = "group-settings-secret-0123456789"
PASSWORD = "password-123"


def test_the_default_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IM_GROUP_MAX_SIZE", raising=False)
    assert Settings().group_max_size == 10_000
    monkeypatch.setenv("IM_GROUP_MAX_SIZE", "250")
    assert Settings().group_max_size == 250


@pytest.mark.parametrize("bad", ["1", "0", "-5", "many", "2.5", "100001"])
def test_a_bad_value_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("IM_GROUP_MAX_SIZE", bad)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert "group_max_size" in str(err.value)


@pytest.mark.asyncio
async def test_rest_enforces_the_settings_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size comes from the Settings the app is built with, not from the environment."""
    monkeypatch.delenv("IM_GROUP_MAX_SIZE", raising=False)
    settings = Settings(
        data_dir=tmp_path, secret=SECRET, connector_addrs="127.0.0.1:9", group_max_size=3
    )
    app, db, _files, login = await build(settings)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            r = await http.post("/users", json={"user_id": "alice", "password": PASSWORD})
            assert r.status_code == 201, r.text
            r = await http.post("/login", json={"user_id": "alice", "password": PASSWORD})
            auth = {"Authorization": f"Bearer {r.json()['token']}"}
            three = {"name": "team", "members": ["bob", "carol", "dave"]}
            r = await http.post("/groups", json=three, headers=auth)
            assert r.status_code == 409, r.text  # the owner and three: past 3
            two = {"name": "team", "members": ["bob", "carol"]}
            r = await http.post("/groups", json=two, headers=auth)
            assert r.status_code == 201, r.text
            assert r.json()["size"] == 3
    finally:
        await login.close()
        await db.close()
