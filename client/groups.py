"""The /groups calls of the REST API (docs/groups.md), on a :class:`client.rest.RestClient`'s
token: create, list, invite and accept, leave and remove, roles, mute, rename, dissolve, the
group's keys and read-by. A refusal is a :class:`client.rest.RestError` with the status the
API documents (403 your role, 404 not yours, 409 the group's state)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from client.rest import RestClient


@dataclass(frozen=True, slots=True)
class GroupMember:
    user_id: str
    role: str  # owner, admin, member
    state: str  # member, invited
    muted_until: int
    invited_by: str


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: str
    conv_id: str
    name: str
    owner: str
    dissolved: int
    key_id: int
    size: int
    members: list[GroupMember]


@dataclass(frozen=True, slots=True)
class MyGroup:
    group_id: str
    name: str
    role: str
    state: str  # member, or invited: accept with join()
    dissolved: int


@dataclass(frozen=True, slots=True)
class GroupKeyInfo:
    key_id: int
    key: str
    from_seq: int
    to_seq: int  # 0: the current key


@dataclass(frozen=True, slots=True)
class ReadBy:
    seq: int
    members: int
    read: int
    delivered: int
    read_by: list[str]
    delivered_to: list[str]


def _member(m: dict[str, Any]) -> GroupMember:
    return GroupMember(
        str(m["user_id"]),
        str(m["role"]),
        str(m["state"]),
        int(m["muted_until"]),
        str(m["invited_by"]),
    )


def _group(d: dict[str, Any]) -> GroupInfo:
    return GroupInfo(
        group_id=str(d["group_id"]),
        conv_id=str(d["conv_id"]),
        name=str(d["name"]),
        owner=str(d["owner"]),
        dissolved=int(d["dissolved"]),
        key_id=int(d["key_id"]),
        size=int(d["size"]),
        members=[_member(m) for m in d["members"]],
    )


class RestGroups:
    def __init__(self, rest: RestClient) -> None:
        self._rest = rest

    @staticmethod
    def _path(group_id: str, *rest: str) -> str:
        return "/groups/" + "/".join(quote(p, safe="") for p in (group_id, *rest))

    async def create(self, name: str, members: list[str] | None = None) -> GroupInfo:
        """A new group with you as owner; ``members`` are invited (they accept with join)."""
        _, data = await self._rest.request_json(
            "POST", "/groups", 201, json={"name": name, "members": members or []}
        )
        return _group(data)

    async def mine(self) -> list[MyGroup]:
        _, data = await self._rest.request_json("GET", "/groups", 200)
        return [
            MyGroup(
                str(g["group_id"]),
                str(g["name"]),
                str(g["role"]),
                str(g["state"]),
                int(g["dissolved"]),
            )
            for g in data
        ]

    async def get(self, group_id: str, *, after: str = "", limit: int = 1000) -> GroupInfo:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        _, data = await self._rest.request_json("GET", self._path(group_id), 200, params=params)
        return _group(data)

    async def invite(self, group_id: str, user_id: str) -> str:
        """An admin invites ``user_id``: ``invited``, or ``member`` if they are in already."""
        _, data = await self._rest.request_json(
            "PUT", self._path(group_id, "members", user_id), 200, 202
        )
        return str(data["state"])

    async def join(self, group_id: str, me: str) -> None:
        """Accept your invitation (``me``: your own user id)."""
        await self._rest.request_json("PUT", self._path(group_id, "members", me), 200)

    async def remove(self, group_id: str, user_id: str) -> None:
        """Remove a member or withdraw an invitation; your own id leaves (or declines)."""
        await self._rest.request_json("DELETE", self._path(group_id, "members", user_id), 204)

    async def set_role(self, group_id: str, user_id: str, role: str) -> None:
        await self._rest.request_json(
            "PUT", self._path(group_id, "members", user_id, "role"), 200, json={"role": role}
        )

    async def transfer(self, group_id: str, user_id: str) -> None:
        """Hand ownership to ``user_id``; you stay on as an admin."""
        await self._rest.request_json(
            "PUT", self._path(group_id, "owner"), 200, json={"user_id": user_id}
        )

    async def mute(self, group_id: str, user_id: str, until_ms: int) -> None:
        """Mute until ``until_ms`` (ms since the epoch); 0 lifts it."""
        await self._rest.request_json(
            "PUT", self._path(group_id, "members", user_id, "mute"), 200, json={"until": until_ms}
        )

    async def rename(self, group_id: str, name: str) -> None:
        await self._rest.request_json("PUT", self._path(group_id, "name"), 200, json={"name": name})

    async def dissolve(self, group_id: str) -> None:
        await self._rest.request_json("DELETE", self._path(group_id), 204)

    async def keys(self, group_id: str) -> list[GroupKeyInfo]:
        """The keys of what you may read, oldest first; the last is the one to seal with."""
        _, data = await self._rest.request_json("GET", self._path(group_id, "keys"), 200)
        return [
            GroupKeyInfo(int(k["key_id"]), str(k["key"]), int(k["from_seq"]), int(k["to_seq"]))
            for k in data
        ]

    async def receipts(self, group_id: str, seq: int, *, limit: int = 100) -> ReadBy:
        """Read by N of M, and who (up to ``limit`` names each)."""
        _, d = await self._rest.request_json(
            "GET",
            self._path(group_id, "messages", str(seq), "receipts"),
            200,
            params={"limit": limit},
        )
        return ReadBy(
            int(d["seq"]),
            int(d["members"]),
            int(d["read"]),
            int(d["delivered"]),
            [str(u) for u in d["read_by"]],
            [str(u) for u in d["delivered_to"]],
        )
