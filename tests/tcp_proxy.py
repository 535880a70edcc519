"""A TCP proxy on loopback that a test cuts and mends: a partition between one client
(an S-CSCF instance and its Redis) and the server, the others still reaching it."""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    """Listens on a free loopback port (`port`) and relays each connection to
    `target`; `cut()` closes every connection and stops listening (the client's
    reconnects are refused), `mend()` listens again on the same port; `freeze()`
    relays nothing more, its connections left open (a peer that stops answering
    without closing: a partition that drops packets), until `thaw()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)  # (a cut while this waits or connects closes it too)
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        if writer.is_closing():
            up_writer.close()
            return
        pair = {writer, up_writer}
        self._writers |= pair

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._writers -= pair

    async def cut(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        await server.wait_closed()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def mend(self) -> None:
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self.thaw()
        await self.cut()


def redis_target(url: str) -> tuple[tuple[str, int], int]:
    """((host, port), db) of a ``redis://`` URL."""
    from redis.asyncio.connection import parse_url

    parts = parse_url(url)
    return (parts.get("host", "127.0.0.1"), int(parts.get("port", 6379))), int(parts.get("db", 0))
