"""A real HTTP receiver for webhook tests: a plain asyncio server speaking just enough HTTP/1.1.

It records every request (time, headers, raw body), checks the signature when given the secret,
and answers as told: a status code, a body, a delay before answering (a slow receiver), or
``stop()`` for one that is down. Fully in the test's hands, no framework between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

from hooks import signing


@dataclass
class Request:
    at: float
    headers: dict[str, str]
    body: bytes
    signed_ok: bool | None = None

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    secret: str = ""
    status: int = 200
    answer: bytes = b"{}"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection: from now on the receiver is down."""
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(time.monotonic(), headers, body)
                if self.secret:
                    req.signed_ok = signing.verify(
                        self.secret.encode(), headers.get("x-im-signature", ""), body, time.time()
                    )
                self.requests.append(req)
                self.arrived.set()
                if self.delay:
                    await asyncio.sleep(self.delay)
                extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(self.answer)}\r\n{extra}\r\n".encode()
                    + self.answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(writer)
            with contextlib.suppress(OSError):
                writer.close()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        """Until ``count`` requests arrived (or ``timeout``): the requests so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.requests) < count and loop.time() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), deadline - loop.time())
        return self.requests
