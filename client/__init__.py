"""Asyncio client library: REST login, friends, blocks; one TCP link to a connector; sealed bodies.

    async with IMClient("http://127.0.0.1:8082", "alice", "password") as alice:
        await alice.connect()
        msg_id = await alice.send_text("bob", "hello")
        async for event in alice.events():
            ...  # Message, Receipt or ServerError

Imports only ``proto`` and ``common`` so it can ship alone (DESIGN.md §2).
"""

from client.core import IMClient, Message, Receipt, ServerError, befriend
from client.files import FileCheckError, FileInfo
from client.history import Conversation, ConversationInfo
from client.rest import FriendRequests, RestClient, RestError

__all__ = [
    "Conversation",
    "ConversationInfo",
    "FileCheckError",
    "FileInfo",
    "FriendRequests",
    "IMClient",
    "Message",
    "Receipt",
    "RestClient",
    "RestError",
    "ServerError",
    "befriend",
]
