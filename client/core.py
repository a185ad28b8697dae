"""The client's chat link: GREET, send sealed chats and READs, surface events once each.

Rules it keeps:
- bodies are sealed with the pair key before they leave (common.crypto); a body that fails to
  open is reported as a ServerError-like event with code ``UNREADABLE``, never shown;
- each message and each receipt is surfaced once: dedupe by (from_id, message id) and by
  (peer, message id, receipt type), in bounded memory;
- events wait in a bounded queue: an application that stops reading stops the link, and the
  server then treats this device as slow instead of us buffering without bound;
- TLS to the connector when the login answer says so (or when asked), verifying the server's
  certificate and host name by default;
- a READ carries the read tag the connector stamped on the message, its proof of receipt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from client.rest import LoginAnswer, RestClient
from common.crypto import SealError, open_sealed, seal
from common.errors import IMError, ProtocolError
from common.ids import MessageIdGen
from common.link import Link, LinkConfig, open_link
from common.tls import client_context
from proto import im_pb2

# Remember this many surfaced ids per kind: far more than can be in flight or drained at once.
DEDUPE_MEMORY = 100_000


@dataclass(frozen=True, slots=True)
class Message:
    msg_id: int
    from_id: str
    dest_id: str
    text: str
    msg_type: int
    create_time: int
    read_tag: bytes = b""  # the connector's proof that we were given it; echoed in the READ


@dataclass(frozen=True, slots=True)
class Receipt:
    kind: str  # "SENT" | "DELIVERED" | "READ"
    peer: str  # the other side of the conversation
    msg_id: int  # the acknowledged message


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str
    detail: str
    msg_id: int


Event = Message | Receipt | ServerError


class _Seen:
    """A bounded set: remembers the newest ``cap`` keys."""

    def __init__(self, cap: int = DEDUPE_MEMORY) -> None:
        self._keys: OrderedDict[object, None] = OrderedDict()
        self._cap = cap

    def add(self, key: object) -> bool:
        """True if ``key`` is new."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._cap:
            self._keys.popitem(last=False)
        return True


class IMClient:
    def __init__(
        self,
        rest_url: str,
        user_id: str,
        password: str,
        *,
        device_id: str = "default",
        link_config: LinkConfig | None = None,
        queue_size: int = 10_000,
        connector: tuple[str, int] | None = None,
        tls: ssl.SSLContext | bool | None = None,
    ) -> None:
        """``tls``: None follows the login answer, True uses TLS with the system's trust store,
        an ``SSLContext`` is used as given (e.g. ``common.tls.client_context(cafile)``), False
        never uses TLS."""
        self.user_id = user_id
        self.device_id = device_id
        self.rest = RestClient(rest_url)
        self.friends: dict[str, str] = {}
        self.node_id = ""  # the connector we are on, from its WELCOME
        self.duplicates_dropped = 0
        self._password = password
        self._connector_override = connector
        self._tls = tls
        self._login: LoginAnswer | None = None
        self._config = link_config or LinkConfig()
        self._ids = MessageIdGen()
        self._events: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._seen_msgs = _Seen()
        self._seen_receipts = _Seen()
        self._link: Link | None = None
        self._run: asyncio.Task[None] | None = None
        self._welcome: asyncio.Future[im_pb2.Welcome] | None = None

    async def __aenter__(self) -> IMClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- REST --------------------------------------------------------------------------------

    async def register(self, display_name: str = "") -> bool:
        return await self.rest.register(self.user_id, self._password, display_name)

    async def login(self) -> LoginAnswer:
        self._login = await self.rest.login(self.user_id, self._password, self.device_id)
        self.friends = dict(self._login.friends)
        return self._login

    async def add_friend(self, friend_id: str) -> None:
        self.friends[friend_id] = await self.rest.add_friend(friend_id)

    async def change_password(self, new_password: str) -> None:
        """Change the password: every other session of this user ends within seconds; this
        client keeps going with the fresh token (used at the next connect)."""
        token = await self.rest.change_password(self._password, new_password)
        self._password = new_password
        if self._login is not None:
            self._login = dataclasses.replace(self._login, token=token)

    async def refresh_friends(self) -> None:
        self.friends = await self.rest.friends()

    # -- link --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closing

    async def connect(self, timeout: float = 10.0) -> None:
        """Log in if needed, open the link, GREET and wait for WELCOME."""
        login = self._login or await self.login()
        host, port = self._connector_override or login.connector
        self._welcome = asyncio.get_running_loop().create_future()
        tls = self._tls if self._tls is not None else login.tls
        context = client_context() if tls is True else (tls or None)
        link = await open_link(
            host, port, self, self._config, name=f"{self.user_id}->{host}", tls=context
        )
        self._link = link
        self._run = asyncio.create_task(link.run(), name=f"link {self.user_id}")
        link.send_control(
            im_pb2.Envelope(greet=im_pb2.Greet(token=login.token, device_id=self.device_id))
        )
        closed = asyncio.ensure_future(link.wait_closed())
        waits: list[asyncio.Future[Any]] = [self._welcome, closed]
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if self._welcome not in done or self._welcome.cancelled():
            err = link.close_error
            link.close()
            raise IMError(f"GREET refused: {err.detail if err else 'connection closed'}")
        self.node_id = self._welcome.result().node_id

    async def close(self) -> None:
        if self._link is not None:
            self._link.close()
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)
        await self.rest.close()

    async def _send(self, env: im_pb2.Envelope) -> None:
        if self._link is None:
            raise IMError("not connected")
        await self._link.send(env)

    async def send_text(self, to: str, text: str) -> int:
        """Seal and send; returns the message id that receipts will name."""
        key = self.friends.get(to)
        if key is None:
            raise IMError(f"{to!r} is not a friend (no pair key)")
        msg_id = self._ids()
        body = seal(key, msg_id, self.user_id, to, text.encode())
        chat = im_pb2.ChatMsg(
            id=msg_id,
            from_id=self.user_id,
            dest_id=to,
            dest_type=im_pb2.SINGLE,
            msg_type=im_pb2.TEXT,
            body=body,
            create_time=int(time.time() * 1000),
        )
        await self._send(im_pb2.Envelope(chat=chat))
        return msg_id

    async def send_read(self, msg: Message) -> None:
        ack = im_pb2.AckMsg(
            id=self._ids(),
            from_id=self.user_id,
            dest_id=msg.from_id,
            ack_type=im_pb2.READ,
            ack_msg_id=msg.msg_id,
            read_tag=msg.read_tag,
        )
        await self._send(im_pb2.Envelope(ack=ack))

    # -- events ------------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event:
        async with asyncio.timeout(timeout):
            return await self._events.get()

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._events.get()

    # -- LinkHandler -------------------------------------------------------------------------

    async def on_frame(self, link: Link, env: im_pb2.Envelope) -> None:
        kind = env.WhichOneof("body")
        if kind == "welcome":
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(env.welcome)
        elif kind == "error":
            e = env.error
            await self._events.put(
                ServerError(im_pb2.ErrorCode.Name(e.code), e.detail, e.ref_msg_id)
            )
        elif kind == "chat":
            await self._on_chat(env.chat)
        elif kind == "ack":
            a = env.ack
            if self._seen_receipts.add((a.from_id, a.ack_msg_id, a.ack_type)):
                await self._events.put(
                    Receipt(im_pb2.AckType.Name(a.ack_type), a.from_id, a.ack_msg_id)
                )
            else:
                self.duplicates_dropped += 1
        else:
            raise ProtocolError(f"unexpected {kind} from the server", code=im_pb2.UNKNOWN_TYPE)

    async def _on_chat(self, chat: im_pb2.ChatMsg) -> None:
        if not self._seen_msgs.add((chat.from_id, chat.id)):
            self.duplicates_dropped += 1
            return
        key = self.friends.get(chat.from_id)
        if key is None:
            await self.refresh_friends()
            key = self.friends.get(chat.from_id)
        try:
            if key is None:
                raise SealError(f"no pair key for {chat.from_id}")
            text = open_sealed(key, chat.id, chat.from_id, chat.dest_id, chat.body).decode()
        except (SealError, UnicodeDecodeError) as exc:
            await self._events.put(ServerError("UNREADABLE", str(exc), chat.id))
            return
        await self._events.put(
            Message(
                chat.id,
                chat.from_id,
                chat.dest_id,
                text,
                chat.msg_type,
                chat.create_time,
                chat.read_tag,
            )
        )

    def on_acked(self, link: Link, acked: list[tuple[int, im_pb2.Envelope]]) -> None:
        pass

    async def on_closed(self, link: Link, unacked: list[im_pb2.Envelope]) -> None:
        if self._welcome is not None and not self._welcome.done():
            self._welcome.cancel()
