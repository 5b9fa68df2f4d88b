"""The RabbitMQ link against a peer that accepts a connection and never answers."""

from __future__ import annotations

import asyncio

import pytest

from asyncgate.transport import amqp
from asyncgate.transport.amqp import _Link


async def test_a_connect_that_gets_no_answer_is_abandoned_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blackholed or half-open broker at (re)connect time must not hold the link forever:
    the open gives up after its timeout and the link tries again."""
    accepted: list[asyncio.StreamWriter] = []
    retried = asyncio.Event()

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing
        if len(accepted) >= 2:
            retried.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(amqp, "_OPEN_TIMEOUT", 0.5)

    async def declare(_channel: object) -> None:
        raise AssertionError("never reached: the peer never answers")

    link = _Link(f"amqp://guest:guest@127.0.0.1:{port}/", "test", "publish", declare)
    link.start()
    try:
        await asyncio.wait_for(retried.wait(), 10)
        assert not link.up
    finally:
        await link.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
