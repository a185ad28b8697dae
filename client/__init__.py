"""Asyncio client library: REST login, friends, blocks; one link to a connector; sealed bodies;
every conversation kept up by seq (sync by cursor).

    async with IMClient("http://127.0.0.1:8082", "alice", "password") as alice:
        await alice.connect()
        await alice.caught_up.wait()  # everything that was there is here
        msg_id = await alice.send_text("bob", "hello")
        async for event in alice.events():
            ...  # Message, Receipt, GroupReceipt, ServerError, Typing, Presence

Imports only ``proto`` and ``common`` so it can ship alone (DESIGN.md §2).
"""

from client.core import IMClient, befriend
from client.events import Event, GroupReceipt, Message, Presence, Receipt, ServerError, Typing
from client.files import FileCheckError, FileInfo
from client.history import Conversation, ConversationInfo
from client.rest import FriendRequests, RestClient, RestError

__all__ = [
    "Conversation",
    "ConversationInfo",
    "Event",
    "FileCheckError",
    "FileInfo",
    "FriendRequests",
    "GroupReceipt",
    "IMClient",
    "Message",
    "Presence",
    "Receipt",
    "RestClient",
    "RestError",
    "ServerError",
    "Typing",
    "befriend",
]
