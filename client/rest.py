"""The REST half of the client: register, login, friends and blocks, logout, file upload
and download, conversations and their history (groups: client/groups.py, ``RestClient.groups``)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from client.history import (
    ConversationInfo,
    MalformedAnswer,
    StoredChat,
    conversation_info,
    stored_chat,
)
from common.errors import IMError

if TYPE_CHECKING:
    from client.groups import RestGroups


class RestError(IMError):
    """An answer that is not the expected one; ``status`` 0: REST did not answer at all."""

    def __init__(self, status: int, detail: str, retry_after: float = 0.0) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after  # a 429's Retry-After, seconds (0: none given)


@dataclass(frozen=True, slots=True)
class LoginAnswer:
    user_id: str
    token: str
    connector: tuple[str, int]
    friends: dict[str, str]  # friend id -> pair key
    connectors: list[tuple[str, int]]  # every live connector, to fall back on
    tls: bool = False  # the connectors speak TLS
    slot: int = 0  # this device's message id slot (common/ids.py)


@dataclass(frozen=True, slots=True)
class FriendRequests:
    incoming: list[str]  # who asked us, newest first
    outgoing: list[str]  # whom we asked, newest first


@dataclass(frozen=True, slots=True)
class UploadAnswer:
    file_id: str
    size: int
    checksum: str


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _retry_after(resp: httpx.Response) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "0")))
    except ValueError:  # an HTTP date, or nonsense: no hint
        return 0.0


class RestClient:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.token = ""

    async def close(self) -> None:
        await self._http.aclose()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """One request; a connection that fails is a RestError (status 0), like any answer
        we did not want, so callers handle one exception."""
        try:
            try:
                return await self._http.request(method, url, **kw)
            except httpx.RemoteProtocolError:
                # a kept-alive connection the server closed as we reused it (its idle timeout
                # raced our request): the request never reached the application; once more,
                # on a fresh connection
                return await self._http.request(method, url, **kw)
        except httpx.TransportError as exc:
            raise RestError(0, f"REST unreachable: {exc!r}") from exc

    @staticmethod
    def _check(resp: httpx.Response, *ok: int) -> Any:
        if resp.status_code not in ok:
            try:
                detail = str(resp.json().get("detail", resp.text))
            except ValueError:
                detail = resp.text
            raise RestError(resp.status_code, detail, _retry_after(resp))
        return resp.json() if resp.content else None

    async def request_json(self, method: str, url: str, *ok: int, **kw: Any) -> tuple[int, Any]:
        """One authenticated call: its status (one of ``ok``, else RestError) and JSON body."""
        resp = await self._call(method, url, headers=self._auth(), **kw)
        return resp.status_code, self._check(resp, *ok)

    @property
    def groups(self) -> RestGroups:
        """The /groups calls on this client's token."""
        from client.groups import RestGroups

        return RestGroups(self)

    async def register(self, user_id: str, password: str, display_name: str = "") -> bool:
        """Create the account; False if it already exists."""
        resp = await self._call(
            "POST",
            "/users",
            json={"user_id": user_id, "password": password, "display_name": display_name or None},
        )
        if resp.status_code == 409:
            return False
        self._check(resp, 201)
        return True

    async def login(self, user_id: str, password: str, device_id: str = "") -> LoginAnswer:
        resp = await self._call(
            "POST",
            "/login",
            json={"user_id": user_id, "password": password, "device_id": device_id},
        )
        data = self._check(resp, 200)
        self.token = data["token"]
        return LoginAnswer(
            user_id=data["user_id"],
            token=data["token"],
            connector=_addr(data["connector"]),
            friends={f["user_id"]: f["key"] for f in data["friends"]},
            connectors=[_addr(c) for c in data.get("connectors", [])],
            tls=bool(data.get("tls", False)),
            slot=int(data.get("slot", 0)),
        )

    async def add_friend(self, friend_id: str) -> str | None:
        """Ask for ``friend_id``'s friendship, or accept theirs: the pair key when the two are
        friends, None while the request waits for the other side (which is also the answer for
        a name nobody holds)."""
        resp = await self._call("PUT", f"/friends/{friend_id}", headers=self._auth())
        data = self._check(resp, 200, 202)
        return str(data["key"]) if resp.status_code == 200 else None

    async def remove_friend(self, friend_id: str) -> None:
        """Unfriend, withdraw a request or decline one."""
        resp = await self._call("DELETE", f"/friends/{friend_id}", headers=self._auth())
        self._check(resp, 204)

    async def friends(self) -> dict[str, str]:
        resp = await self._call("GET", "/friends", headers=self._auth())
        return {f["user_id"]: f["key"] for f in self._check(resp, 200)}

    async def conversations(self, *, since: int = 0, limit: int = 500) -> list[ConversationInfo]:
        """My conversations, most recently changed first (``since``: changed at or after, ms)."""
        params = {"limit": limit, **({"since": since} if since else {})}
        resp = await self._call("GET", "/conversations", params=params, headers=self._auth())
        try:
            return [conversation_info(c) for c in self._check(resp, 200)]
        except (MalformedAnswer, TypeError) as exc:
            raise RestError(resp.status_code, f"malformed answer: {exc}") from None

    async def messages(
        self, conv_id: str, *, before: int = 0, after: int | None = None, limit: int = 50
    ) -> list[StoredChat]:
        """A page of ``conv_id``, oldest first: the first after ``after`` if given (0: from
        the start), else the newest below ``before`` (0: the newest of all)."""
        params = {"limit": limit}
        if before:
            params["before"] = before
        if after is not None:
            params["after"] = after
        resp = await self._call(
            "GET",
            f"/conversations/{quote(conv_id, safe=':')}/messages",
            params=params,
            headers=self._auth(),
        )
        try:
            return [stored_chat(m) for m in self._check(resp, 200)]
        except (MalformedAnswer, TypeError) as exc:
            raise RestError(resp.status_code, f"malformed answer: {exc}") from None

    async def friend_requests(self) -> FriendRequests:
        resp = await self._call("GET", "/friends/requests", headers=self._auth())
        data = self._check(resp, 200)
        return FriendRequests(
            incoming=[str(r["user_id"]) for r in data["incoming"]],
            outgoing=[str(r["user_id"]) for r in data["outgoing"]],
        )

    async def block(self, user_id: str) -> None:
        """Block ``user_id``: a friendship with them ends; they cannot ask or message us."""
        resp = await self._call("PUT", f"/blocks/{user_id}", headers=self._auth())
        self._check(resp, 204)

    async def unblock(self, user_id: str) -> None:
        resp = await self._call("DELETE", f"/blocks/{user_id}", headers=self._auth())
        self._check(resp, 204)

    async def blocks(self) -> list[str]:
        resp = await self._call("GET", "/blocks", headers=self._auth())
        return [str(b["user_id"]) for b in self._check(resp, 200)]

    async def change_password(self, old: str, new: str) -> str:
        """Change the password; every older token of the user is revoked, and the fresh token
        for this device (returned) replaces ours."""
        resp = await self._call(
            "PUT",
            "/password",
            json={"old_password": old, "new_password": new},
            headers=self._auth(),
        )
        self.token = str(self._check(resp, 200)["token"])
        return self.token

    async def logout(self) -> None:
        resp = await self._call("POST", "/logout", headers=self._auth())
        self._check(resp, 204)
        self.token = ""

    async def upload(self, body: AsyncIterable[bytes], length: int) -> UploadAnswer:
        """Stream ``length`` bytes to ``POST /files``; the server's id, size and checksum."""
        headers = {
            **self._auth(),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
        }
        # an upload may take long; only a stalled connection should time out
        timeout = httpx.Timeout(60.0, connect=10.0)
        try:
            resp = await self._http.post("/files", content=body, headers=headers, timeout=timeout)
        except httpx.TransportError as exc:
            # the server refuses an oversize upload (413) before reading it and closes the
            # connection, which httpx, still sending, only sees as a broken connection
            raise IMError(
                f"upload of {length} bytes failed ({type(exc).__name__}): the connection was"
                " closed; the file may be over the server's size limit"
            ) from exc
        data = self._check(resp, 201)
        return UploadAnswer(str(data["file_id"]), int(data["size"]), str(data["checksum"]))

    @asynccontextmanager
    async def download(self, file_id: str, offset: int = 0) -> AsyncIterator[httpx.Response]:
        """``GET /files/{id}`` from byte ``offset`` on (a Range request if not 0); the response
        is open for streaming inside the block and has been checked for success."""
        headers = self._auth()
        if offset:
            headers["Range"] = f"bytes={offset}-"
        timeout = httpx.Timeout(60.0, connect=10.0)
        async with self._http.stream(
            "GET", f"/files/{file_id}", headers=headers, timeout=timeout
        ) as resp:
            if resp.status_code not in (200, 206):
                await resp.aread()
                self._check(resp, 200, 206)
            yield resp
