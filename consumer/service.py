"""The consumer's resources in one place: store, broker link, upstream session, worker.

``python -m consumer`` and the end-to-end tests start the consumer the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from asyncgate.settings import Settings
from asyncgate.store import create_store
from asyncgate.transport import create_transport
from consumer.replay import upstream_session
from consumer.worker import Worker, purge_periodically


@contextlib.asynccontextmanager
async def running_consumer(settings: Settings) -> AsyncIterator[Worker]:
    """Consume until the block exits, then drain gracefully and close everything."""
    store = create_store(settings.store.url)
    await store.open()
    transport = create_transport(settings, "consumer")
    session = upstream_session(settings)
    purger: asyncio.Task[None] | None = None
    try:
        await transport.start()
        worker = Worker(settings, transport, store, session)
        purger = asyncio.create_task(
            purge_periodically(store, settings.store.bulk_lifetime_days), name="retention-purge"
        )
        await worker.start()
        try:
            yield worker
        finally:
            await worker.drain(settings.consumer.shutdown_grace)
    finally:
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
        await session.close()
        await transport.close()
        await store.close()
