"""The consumer's periodic chores, beside the delivery path: metrics that need asking
for (queue depth, the ordering backlog), retention, and withdrawing bulks that were
never accepted.  Each runs in its own task until cancelled; a failed round is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from asyncgate import metrics
from asyncgate.logs import get_logger
from asyncgate.store.base import Store
from asyncgate.transport import Transport
from consumer.worker import PENDING_GIVE_UP

log = get_logger("asyncgate.consumer")


async def _every(seconds: float, step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``step`` every ``seconds`` until cancelled; a failed step is logged, not fatal."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("periodic_task_failed", task=what, error=repr(exc))
        task = asyncio.current_task()
        # aiormq can swallow a cancellation that lands inside one of its calls; stop anyway.
        if task is not None and task.cancelling():
            return
        await asyncio.sleep(seconds)


async def refresh_depth(transport: Transport, every: float) -> None:
    """Export queue depth: the RabbitMQ GUI's numbers, where Prometheus can see them."""

    async def step() -> None:
        for depth in await transport.depth():
            metrics.QUEUE_READY.labels(depth.queue, depth.kind).set(depth.ready)
            metrics.QUEUE_CONSUMERS.labels(depth.queue, depth.kind).set(depth.consumers)

    await _every(every, step, "queue-depth")


async def refresh_ordering_backlog(store: Store, every: float) -> None:
    """Export how many operations wait behind an earlier one with their ordering key."""
    await _every(every, lambda: _export_backlog(store), "ordering-backlog")


async def purge_periodically(store: Store, lifetime_days: float, every: float = 3600.0) -> None:
    """Retention: bulks older than the lifetime go, as Magento's system/bulk/lifetime."""

    async def step() -> None:
        removed = await store.purge(datetime.now(UTC) - timedelta(days=lifetime_days))
        if removed:
            log.info("bulks_purged", expired=removed)

    await _every(every, step, "retention-purge")


async def withdraw_stale_periodically(store: Store, every: float = 60.0) -> None:
    """Bulks never accepted (their gateway died mid-intake) go soon: their operations
    would hold back later operations with the same ordering keys."""

    async def step() -> None:
        stale = await store.withdraw_stale_pending(datetime.now(UTC) - PENDING_GIVE_UP)
        if stale:
            log.info("bulks_purged", never_accepted=stale)

    await _every(every, step, "stale-pending")


async def _export_backlog(store: Store) -> None:
    """Export the ordering backlog: how many operations wait behind an earlier one."""
    backlog = await store.ordering_backlog()
    metrics.ORDERING_WAITING.set(backlog.waiting)
    metrics.ORDERING_KEYS_WAITING.set(backlog.keys)
    age = 0.0
    if backlog.oldest_start is not None:
        age = max(0.0, (datetime.now(UTC) - backlog.oldest_start).total_seconds())
    metrics.ORDERING_OLDEST_WAITING_SECONDS.set(age)
