"""A TCP proxy for fault tests: put it between a process and a real service, then cut it.

``cut()`` closes every proxied connection and refuses new ones (the service looks dead to the
client, while the service itself keeps running for everyone else); ``restore()`` accepts again.
``delay`` adds that many seconds to every chunk, in order (a slow network); ``stall()`` stops
forwarding while keeping the sockets open (a hung peer, a black hole), ``resume()`` goes on.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> TcpProxy:
        await self._listen(0)
        return self

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)
        for p in pumps:
            p.cancel()
            self._tasks.discard(p)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()

    def stall(self) -> None:
        """Forward nothing more, close nothing: to both ends the other just went silent."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            transport = w.transport
            if transport is not None:
                transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Accept again, on the same port."""
        if self._server is None:
            await self._listen(self.port)

    async def close(self) -> None:
        self.resume()
        await self.cut()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
