"""A small TCP fault proxy: put it between a process and the broker or the upstream.

Modes, switched at any moment:

- ``pass``: bytes flow both ways (after ``latency`` seconds per chunk, if set);
- ``blackhole``: connections stay open but every byte is dropped, both ways, and new
  connections are accepted into the same void: a peer that vanished without a FIN;
- ``half_open``: requests still reach the server, answers never come back;
- ``refuse``: new connections are reset at once (a port nobody listens on).

``reset()`` aborts every open connection with an RST.  Leaving ``blackhole`` or
``half_open`` resets the connections that were caught in it, as a peer that timed out
meanwhile would answer the first packet after the network heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

CHUNK = 65536


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.latency = 0.0
        self.port = 0
        self.resets = 0  # connections aborted by reset() or by healing
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tainted: set[asyncio.StreamWriter] = set()  # seen a blackhole or half-open
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url_netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "blackhole", "half_open", "refuse"), mode
        if mode == "pass" and self.mode in ("blackhole", "half_open"):
            for client, upstream in list(self._conns):
                if client in self._tainted:
                    self._abort(client, upstream)
        if mode in ("blackhole", "half_open"):
            self._tainted.update(client for client, _ in self._conns)
        self.mode = mode

    def reset(self) -> None:
        """Abort every open connection with an RST, both sides."""
        for client, upstream in list(self._conns):
            self._abort(client, upstream)

    def _abort(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None) -> None:
        self.resets += 1
        for writer in (client, upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._conns.discard((client, upstream))
        self._tainted.discard(client)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            self._abort(writer, None)
            return
        up_writer: asyncio.StreamWriter | None = None
        if self.mode in ("blackhole", "half_open"):
            self._tainted.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._abort(writer, None)
            return
        pair = (writer, up_writer)
        self._conns.add(pair)
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, writer, upstream=True)),
            asyncio.create_task(self._pump(up_reader, writer, writer, upstream=False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
            if pair in self._conns:
                self._conns.discard(pair)
                self._tainted.discard(writer)
                for w in pair:
                    w.close()

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        """Copy one direction; drop what a blackhole (or half-open, answers) swallows."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await src.read(CHUNK):
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.mode == "blackhole" or (self.mode == "half_open" and not upstream):
                    continue
                if client in self._tainted and self.mode == "pass":
                    continue  # about to be reset by the heal
                dst.write(chunk)
                await dst.drain()
