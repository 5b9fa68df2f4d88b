"""Retrying a step that fails while something it needs restarts (a database, a lock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asyncgate.logs import get_logger

T = TypeVar("T")
log = get_logger("asyncgate.backoff")


async def patiently(step: Callable[[], Awaitable[T]], within: float, what: str) -> T:
    """``step()``, retried with backoff (0.25 s, doubling up to 5 s) for ``within``
    seconds; each failure is logged, and the last one is raised."""
    deadline = time.monotonic() + within
    delay = 0.25
    while True:
        try:
            return await step()
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("step_retried", step=what, error=repr(exc), retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
