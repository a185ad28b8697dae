"""``/me/privacy``: who sees the caller's presence, and presence told on a new friendship.

- ``GET /me/privacy`` answers ``{"presence": "friends" | "hidden"}``; ``PUT /me/privacy`` with
  the same body sets it (kept in ``im_user.presence``, rest_web/store.py). ``hidden``: the user
  looks offline with no last seen to everyone, from the moment the PUT answers (the switch is
  published to the friends' devices like a change of state, user_status/presence.py);
  ``friends``: friends who are not blocked either way see online, or offline and last seen;
- a friendship accepted here makes each side's devices hear the other's presence at once
  (else they would only at the next change or their next GREET). That rides the
  ``friend.accepted`` event: :func:`add_routes` returns the event sink to give the routes that
  emit it.

The presence service is read from ``app.state.presence`` when a request needs it (None: no
connector can be told, e.g. a REST process with no Redis; the setting is still stored).

No ``from __future__ import annotations``: FastAPI reads the endpoint annotations.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, status
from pydantic import BaseModel, Field

from common.errors import IMError
from common.tokens import Claims
from hooks import events
from rest_web.store import UserStore
from user_status.presence import Presence

log = logging.getLogger(__name__)

Emit = Callable[[str, events.Data], None]
MAX_TELLING = 256  # presence announcements in flight from this process; beyond, skipped


class PrivacyIn(BaseModel):
    presence: Literal["friends", "hidden"] = Field(
        description="friends: your friends see online / last seen; hidden: offline to everyone"
    )


class PrivacyOut(BaseModel):
    presence: Literal["friends", "hidden"]


class _Teller:
    """Presence announcements that must not hold up the request that caused them."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def presence(self) -> Presence | None:
        found: Presence | None = getattr(self._app.state, "presence", None)
        return found

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if len(self._tasks) >= MAX_TELLING:
            coro.close()
            log.warning("presence: %d announcements in flight, one skipped", len(self._tasks))
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def befriended(self, a: str, b: str) -> None:
        p = self.presence
        if p is None:
            return
        try:
            await p.tell(a, [b])
            await p.tell(b, [a])
        except IMError as exc:
            log.warning("presence of new friends %s and %s not told: %s", a, b, exc)


def add_routes(app: FastAPI, caller: Callable[..., Any], store: UserStore, emit: Emit) -> Emit:
    """Add the routes; returns ``emit`` wrapped to tell new friends each other's presence."""
    Caller = Annotated[Claims, Depends(caller)]
    teller = _Teller(app)
    unauthorized: dict[int | str, dict[str, Any]] = {
        401: {"description": "missing, bad, expired or revoked token"}
    }

    @app.get("/me/privacy", tags=["users"], responses=unauthorized)
    async def get_privacy(me: Caller) -> PrivacyOut:
        setting = await store.presence_setting(me.user_id)
        if setting is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
        return PrivacyOut(presence="hidden" if setting == "hidden" else "friends")

    @app.put("/me/privacy", tags=["users"], responses=unauthorized)
    async def put_privacy(me: Caller, body: PrivacyIn) -> PrivacyOut:
        """Set who sees your presence; your friends' devices are told at once."""
        before = await store.presence_setting(me.user_id)
        if before is None or not await store.set_presence_setting(me.user_id, body.presence):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such user")
        presence = teller.presence
        if presence is not None and before != body.presence:
            try:
                await presence.announce(me.user_id)
            except IMError as exc:  # stored; friends see it at their next GREET
                log.warning("presence of %s not announced: %s", me.user_id, exc)
        return PrivacyOut(presence=body.presence)

    def wrapped(event: str, data: events.Data) -> None:
        emit(event, data)
        if event == events.FRIEND_ACCEPTED and teller.presence is not None:
            teller.spawn(teller.befriended(str(data["user_id"]), str(data["friend_id"])))

    return wrapped
