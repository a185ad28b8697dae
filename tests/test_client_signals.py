"""The library's side of typing and presence: pushed frames become ``Typing`` / ``Presence``
events (an own echo and a notice the app has no room for are dropped, never waited on), and
``send_typing`` says False while there is no link to send it on."""

from __future__ import annotations

import asyncio

from client import IMClient, Presence, Typing
from proto import im_pb2


def _typing(user: str, on: bool = True) -> im_pb2.Envelope:
    return im_pb2.Envelope(typing=im_pb2.Typing(conv_id="p:alice:bob", user_id=user, typing=on))


def test_typing_and_presence_become_events() -> None:
    async def go() -> None:
        c = IMClient("http://127.0.0.1:1", "alice", "pw")
        try:
            assert c.send_typing("p:alice:bob") is False  # offline: nobody to tell
            await c.on_envelope(_typing("alice"))  # an echo of our own: nothing
            await c.on_envelope(_typing("bob"))
            await c.on_envelope(_typing("bob", False))
            on = im_pb2.Presence(user_id="bob", state=im_pb2.ONLINE, last_seen=5)
            off = im_pb2.Presence(user_id="bob", state=im_pb2.OFFLINE, last_seen=1234)
            await c.on_envelope(im_pb2.Envelope(presence=on))
            await c.on_envelope(im_pb2.Envelope(presence=off))
            got = [await c.next_event(timeout=1) for _ in range(4)]
            assert got == [
                Typing("p:alice:bob", "bob", True),
                Typing("p:alice:bob", "bob", False),
                Presence("bob", True, 0),
                Presence("bob", False, 1234),
            ]
        finally:
            await c.close()

    asyncio.run(go())


def test_typing_is_dropped_when_the_app_is_behind() -> None:
    async def go() -> None:
        c = IMClient("http://127.0.0.1:1", "alice", "pw", queue_size=2)
        try:
            for _ in range(5):  # would block the reader if it waited for room
                await asyncio.wait_for(c.on_envelope(_typing("bob")), 1)
            assert c._events.qsize() == 2
        finally:
            await c.close()

    asyncio.run(go())
