"""IMClient's account calls over REST: registering, logging in, friends, blocks, the password.

Why apart: none of them touches the link or the timelines; each is a REST call and what it
changes in the device's view of its friends (their pair keys) and its login (the token, the
id slot its message ids carry).
"""

from __future__ import annotations

import dataclasses

from client.base import ClientBase
from client.rest import FriendRequests, LoginAnswer
from common.userids import canonical_or_none


class AccountCalls(ClientBase):
    async def register(self, display_name: str = "") -> bool:
        return await self.rest.register(self.user_id, self._password, display_name)

    async def login(self) -> LoginAnswer:
        self._login = await self.rest.login(self.user_id, self._password, self.device_id)
        if self._login.user_id != self.user_id:
            self.user_id = self._sync.me = self._login.user_id
        self._ids.slot = self._login.slot  # ids from now on carry this device's slot
        self.friends = dict(self._login.friends)
        return self._login

    async def add_friend(self, friend_id: str) -> str | None:
        """Ask for ``friend_id``'s friendship or accept their request: the pair key once both
        have said yes, None while it waits for them (see :func:`client.core.befriend`)."""
        friend_id = canonical_or_none(friend_id) or friend_id
        key = await self.rest.add_friend(friend_id)
        if key is not None:
            self.friends[friend_id] = key
        return key

    async def remove_friend(self, friend_id: str) -> None:
        friend_id = canonical_or_none(friend_id) or friend_id
        await self.rest.remove_friend(friend_id)
        self.friends.pop(friend_id, None)

    async def friend_requests(self) -> FriendRequests:
        return await self.rest.friend_requests()

    async def block(self, user_id: str) -> None:
        user_id = canonical_or_none(user_id) or user_id
        await self.rest.block(user_id)
        self.friends.pop(user_id, None)

    async def unblock(self, user_id: str) -> None:
        await self.rest.unblock(canonical_or_none(user_id) or user_id)

    async def blocks(self) -> list[str]:
        return await self.rest.blocks()

    async def change_password(self, new_password: str) -> None:
        """Every other session of this user ends within seconds; this client keeps going with
        the fresh token (used at the next connect)."""
        token = await self.rest.change_password(self._password, new_password)
        self._password = new_password
        if self._login is not None:
            self._login = dataclasses.replace(self._login, token=token)

    async def refresh_friends(self) -> None:
        self.friends = await self.rest.friends()
