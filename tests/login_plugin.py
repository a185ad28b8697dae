"""Login providers loaded by dotted path in test_login.py, the way an operator plugs in their own
company login (``IM_LOGIN_PROVIDER=login_plugin.TableLogin``)."""

from __future__ import annotations

from common.config import Settings
from rest_web.login import Identity

NOT_A_CLASS = "a string"


class TableLogin:
    """A company login system stand-in: a fixed table of users, case-insensitive login ids."""

    USERS = {"zed": ("zed-password-1", "Zed Zimmer", "zed@corp.example")}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def authenticate(self, user_id: str, password: str) -> Identity | None:
        row = self.USERS.get(user_id.lower())
        if row is None or row[0] != password:
            return None
        return Identity(user_id.lower(), row[1], row[2])


class BrokenLogin:
    """A provider whose backend blows up: REST must answer 503 and stay up."""

    def __init__(self, settings: Settings) -> None:
        pass

    async def authenticate(self, user_id: str, password: str) -> Identity | None:
        raise RuntimeError("company SSO is down")


class BadIdLogin:
    """A provider that returns a user id IM cannot use: refused, not stored."""

    def __init__(self, settings: Settings) -> None:
        pass

    async def authenticate(self, user_id: str, password: str) -> Identity | None:
        return Identity("not a valid id!")


class NotAProvider:
    def __init__(self, settings: Settings) -> None:
        pass

    def authenticate(self, user_id: str, password: str) -> Identity | None:  # not async
        return None
