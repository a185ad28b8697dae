"""The asyncio glue between the client library and the terminal: events in, model updated,
the screen told; the user's actions out as library calls.

Typing: the library sends it (``IMClient.send_typing``) and surfaces the other side's as
``Typing`` events; :class:`TypingClient` only adds that a connector which refuses a Typing
(UNKNOWN_TYPE, an older server) turns typing off for that link, silently, and a new link
tries again.

Friend requests and group membership have no push: they are polled every ``poll_every``
seconds (one small REST call each), as are group read-by counts of the open group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from client import IMClient, Message, Presence, Receipt, RestError, Typing
from client.events import GroupReceipt
from common.errors import IMError
from common.link import Link
from proto import im_pb2
from tui.model import MAX_LINES, Model

log = logging.getLogger(__name__)

TYPING_EVERY = 3.0  # seconds between two typing starts while the user keeps typing
HISTORY_PAGE = 50
READ_BY_LINES = 10  # own lines of the open group whose read-by is polled


class TypingClient(IMClient):
    """An IMClient that stops sending Typing to a connector that refuses it (module
    docstring)."""

    typing_ok = True  # False once this link's connector refused a Typing

    def welcomed(self, link: Link, welcome: im_pb2.Welcome) -> None:
        self.typing_ok = True
        super().welcomed(link, welcome)

    async def on_envelope(self, env: im_pb2.Envelope) -> None:
        if env.WhichOneof("body") == "error" and is_typing_refusal(env.error):
            self.typing_ok = False
            return
        await super().on_envelope(env)

    def send_typing(self, conv_id: str, typing: bool = True) -> bool:
        """The library's, unless this link's connector refused a Typing already."""
        return self.typing_ok and super().send_typing(conv_id, typing)


def is_typing_refusal(err: im_pb2.Error) -> bool:
    return err.code == im_pb2.UNKNOWN_TYPE and not err.ref_msg_id and "typing" in err.detail


@dataclass(frozen=True, slots=True)
class Options:
    rest_url: str
    user: str
    password: str
    device_id: str = "tui"
    register: bool = False
    poll_every: float = 3.0
    max_lines: int = MAX_LINES


class Session:
    """One logged-in user: the client, the model, and the tasks that keep the model current.
    ``changed(conv_id)`` is called after each update ("" for the list or the requests)."""

    def __init__(self, opts: Options, changed: Callable[[str], None]) -> None:
        self.opts = opts
        self.client = TypingClient(
            opts.rest_url, opts.user, opts.password, device_id=opts.device_id
        )
        self.model = Model(self.client.user_id, max_lines=opts.max_lines)
        self.changed = changed
        self.open_conv = ""
        self.note = ""  # the last thing worth telling the user (an error, a request sent)
        self._tasks: list[asyncio.Task[None]] = []
        self._typing_sent: dict[str, float] = {}  # conv -> when the last start went

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        """Register if asked, log in, load what REST knows, connect, start following. On
        failure the caller still calls :meth:`close`."""
        c = self.client
        if self.opts.register:
            await c.register()
        await c.login()
        self.model.me = c.user_id
        await self._refresh()
        with contextlib.suppress(RestError):
            self.model.load(await c.conversations())
        await c.connect()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pump(), name="tui events"),
            loop.create_task(self._poll(), name="tui poll"),
        ]
        self.changed("")

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    # -- following ---------------------------------------------------------------------------

    async def _pump(self) -> None:
        m = self.model
        async for ev in self.client.events():
            conv = None
            if isinstance(ev, Message):
                conv = m.add(ev)
                if conv is not None and conv.conv_id == self.open_conv:
                    await self._mark_read(conv.conv_id)
            elif isinstance(ev, Receipt):
                conv = m.on_receipt(ev)
            elif isinstance(ev, GroupReceipt):
                conv = m.on_group_receipt(ev)
            elif isinstance(ev, Typing):
                self._typing(ev.conv_id, ev.user_id, ev.typing)
                continue
            elif isinstance(ev, Presence):
                continue  # the list shows no presence yet
            elif ev.code == "UNREADABLE":
                conv = m.add_unreadable(ev)
            else:
                conv = m.on_error(ev)
                self.note = f"{ev.code}: {ev.detail}"
            self.changed(conv.conv_id if conv is not None else "")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.opts.poll_every)
            for conv_id, seq in self.client.read_cursors().items():  # my other devices' reads
                self.model.set_read(conv_id, seq)
            try:
                await self._refresh()
                await self._poll_read_by()
            except (RestError, OSError) as exc:
                log.info("poll failed: %s", exc)
            self.changed("")

    async def _refresh(self) -> None:
        """Friends, requests and groups as REST has them now."""
        c, m = self.client, self.model
        reqs = await c.friend_requests()
        if m.set_requests(reqs.incoming, reqs.outgoing) or not c.friends:
            await c.refresh_friends()
        m.set_friends(list(c.friends))
        groups = await c.rest.groups.mine()
        live = [g for g in groups if not g.dissolved]
        m.set_groups({g.group_id: g.name for g in live if g.state == "member"})
        m.set_invites({g.group_id: g.name for g in live if g.state == "invited"})

    async def _poll_read_by(self) -> None:
        conv = self.model.convs.get(self.open_conv)
        if conv is None or not conv.group:
            return
        mine = [ln.seq for ln in conv.ordered() if ln.mine and ln.seq and not ln.system]
        for seq in mine[-READ_BY_LINES:]:
            rb = await self.client.read_by(conv.peer, seq, limit=1)
            self.model.set_read_by(conv.conv_id, seq, rb.read, rb.members)

    def _typing(self, conv_id: str, user: str, on: bool) -> None:
        if self.model.on_typing(conv_id, user, on, time.monotonic()) is not None:
            self.changed(conv_id)

    # -- actions -----------------------------------------------------------------------------

    async def open(self, conv_id: str) -> None:
        """Show ``conv_id``: read up to what is held; page history in if nothing is."""
        if self.open_conv and self.open_conv != conv_id:
            self.model.follow(self.open_conv)
        self.open_conv = conv_id
        conv = self.model.conv(conv_id)
        if not conv.lines and not conv.history_done:
            await self.older(conv_id)
        await self._mark_read(conv_id)
        with contextlib.suppress(RestError, OSError):
            await self._poll_read_by()
        self.changed(conv_id)

    async def older(self, conv_id: str) -> int:
        """One page of history below the oldest line held: how many lines it added."""
        conv = self.model.conv(conv_id)
        if not conv.more_above:
            return 0
        try:
            page = await self.client.history(conv_id, before=conv.oldest, limit=HISTORY_PAGE)
        except RestError as exc:
            if exc.status == 404:  # no message yet: nothing to page
                conv.history_done = True
                return 0
            self.note = f"history: {exc.detail}"
            return 0
        added = self.model.add_history(conv_id, page, HISTORY_PAGE)
        self.changed(conv_id)
        return added

    async def _mark_read(self, conv_id: str) -> None:
        seq = self.model.mark_read(conv_id)
        if seq:
            await self.client.mark_read(conv_id, seq)

    async def send(self, conv_id: str, text: str) -> None:
        conv = self.model.conv(conv_id)
        try:
            if conv.group:
                msg_id = await self.client.send_group_text(conv.peer, text)
            else:
                msg_id = await self.client.send_text(conv.peer, text)
        except (IMError, ValueError, OSError) as exc:
            self.note = f"not sent: {exc}"
            self.changed(conv_id)
            return
        if conv_id in self._typing_sent:
            del self._typing_sent[conv_id]
            self.client.send_typing(conv_id, False)
        self.model.local_send(conv_id, msg_id, text, int(time.time() * 1000))
        self.changed(conv_id)

    def typed(self, conv_id: str) -> None:
        """A key in the composer: a typing start, at most every ``TYPING_EVERY`` seconds."""
        now = time.monotonic()
        if now - self._typing_sent.get(conv_id, -TYPING_EVERY) < TYPING_EVERY:
            return
        if self.client.send_typing(conv_id, True):
            self._typing_sent.pop(conv_id, None)
            self._typing_sent[conv_id] = now
            while len(self._typing_sent) > 64:
                del self._typing_sent[next(iter(self._typing_sent))]

    async def befriend(self, user: str) -> None:
        """Ask ``user`` for friendship, or accept their request."""
        try:
            key = await self.client.add_friend(user)
        except (RestError, OSError) as exc:
            self.note = f"friend {user}: {exc}"
            self.changed("")
            return
        self.note = f"{user} is a friend" if key else f"request sent to {user}"
        await self._refresh()
        self.changed("")

    async def decline(self, user: str) -> None:
        """Decline a friend request, or withdraw mine."""
        try:
            await self.client.remove_friend(user)
            self.note = f"declined {user}"
            await self._refresh()
        except (RestError, OSError) as exc:
            self.note = f"decline {user}: {exc}"
        self.changed("")

    async def join(self, group_id: str, accept: bool = True) -> None:
        """Accept (or decline) a group's invitation."""
        groups = self.client.rest.groups
        name = self.model.invites.get(group_id) or group_id
        try:
            if accept:
                await groups.join(group_id, self.client.user_id)
            else:
                await groups.remove(group_id, self.client.user_id)
            self.note = f"{'joined' if accept else 'declined'} #{name}"
            await self._refresh()
        except (RestError, OSError) as exc:
            self.note = f"group {group_id}: {exc}"
        self.changed("")
