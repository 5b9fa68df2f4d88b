"""The consumer's resources in one place: store, broker link, upstream session, worker.

``python -m consumer`` and the end-to-end tests start the consumer the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from asyncgate.admin import start_admin
from asyncgate.settings import Settings
from asyncgate.store import create_store, open_patiently
from asyncgate.transport import create_transport
from consumer.housekeeping import (
    purge_periodically,
    refresh_depth,
    refresh_ordering_backlog,
    withdraw_stale_periodically,
)
from consumer.replay import upstream_session
from consumer.worker import Worker


@dataclass
class RunningConsumer:
    worker: Worker
    admin_url: str


@contextlib.asynccontextmanager
async def running_consumer(settings: Settings) -> AsyncIterator[RunningConsumer]:
    """Consume until the block exits, then drain gracefully and close everything."""
    store = create_store(settings.store.url)
    await open_patiently(store)
    transport = create_transport(settings, "consumer")
    session = upstream_session(settings)
    tasks: list[asyncio.Task[None]] = []
    admin: web.AppRunner | None = None

    async def ready() -> list[str]:
        problems = [] if transport.consuming else ["not consuming (broker link down)"]
        try:
            await store.ping()
        except Exception as exc:
            problems.append(f"store unreachable: {exc!r}")
        return problems

    try:
        await transport.start()
        worker = Worker(settings, transport, store, session)
        tasks.append(
            asyncio.create_task(
                purge_periodically(store, settings.store.bulk_lifetime_days),
                name="retention-purge",
            )
        )
        tasks.append(
            asyncio.create_task(
                refresh_depth(transport, settings.consumer.depth_interval), name="queue-depth"
            )
        )
        tasks.append(asyncio.create_task(withdraw_stale_periodically(store), name="stale-pending"))
        tasks.append(
            asyncio.create_task(
                refresh_ordering_backlog(store, settings.consumer.depth_interval),
                name="ordering-backlog",
            )
        )
        admin, admin_url = await start_admin(settings.consumer.admin_listen, ready)
        await worker.start()
        try:
            yield RunningConsumer(worker, admin_url)
        finally:
            await worker.drain(settings.consumer.shutdown_grace)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if admin is not None:
            await admin.cleanup()
        await session.close()
        await transport.close()
        await store.close()
