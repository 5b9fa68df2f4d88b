"""Per-key turns: an ordered operation is replayed only once every earlier one with its key
is settled, and never beside another copy of itself.

The store decides (``Store.claim_turn``), so the rule holds across consumer processes
and hosts that share the store, and on both transports.  This module is how one
consumer waits for a turn without holding a delivery past the broker's ack timeout:

1. claim the turn; granted, the claim lasts ``lease`` seconds, longer than a replay
   and its settling can take, and recording the outcome ends it;
2. not granted: wait here for at most ``PATIENCE`` seconds, woken at once when an
   operation with the same key settles in this process, else asking the store again
   every ``POLL`` seconds;
3. still not granted: the worker hands the message back through a delay queue
   (``pause``), timed for the earlier operation's scheduled retry, or for a pause that
   grows with the number of operations ahead.

A consumer that dies mid-replay leaves its claim: the redelivered copy waits until the
claim expires, so that a request the dead process had sent cannot land after a later
operation.  That wait (up to ``lease``) is the price of a crash on an ordered key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta

from asyncgate import metrics
from asyncgate.envelope import Envelope
from asyncgate.settings import Settings
from asyncgate.store.base import Store, Turn, TurnState

PATIENCE = 2.0  # seconds a delivery waits in the consumer before it goes back to a queue
POLL = 0.25  # seconds between two asks of the store while waiting
PAUSE_PER_OPERATION_AHEAD = 0.5  # seconds of delay-queue pause per operation ahead
MAX_PAUSE = 30.0


def lease_seconds(settings: Settings) -> float:
    """Longer than a claimed operation can take: the rate limiter, the replay, the settle."""
    consumer = settings.consumer
    limiter = consumer.concurrency / consumer.rate_limit if consumer.rate_limit else 0.0
    return limiter + consumer.request_timeout + settings.broker.confirm_timeout + 5.0


class Turns:
    def __init__(self, store: Store, lease: float) -> None:
        self._store = store
        self._lease = timedelta(seconds=lease)
        self._settled: dict[str, asyncio.Event] = {}

    async def take(self, env: Envelope, key: str) -> Turn:
        """GRANTED or SETTLED as soon as the store says so; WAIT after ``PATIENCE``."""
        started = time.monotonic()
        try:
            while True:
                now = datetime.now(UTC)
                turn = await self._store.claim_turn(
                    env.bulk_uuid, env.index, env.attempt, now + self._lease
                )
                waited = time.monotonic() - started
                due_later = turn.next_retry is not None and turn.next_retry - now > timedelta(
                    seconds=PATIENCE - waited
                )
                if turn.state is not TurnState.WAIT or waited >= PATIENCE or due_later:
                    return turn
                event = self._settled.setdefault(key, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(POLL, PATIENCE - waited))
        finally:
            metrics.ORDERING_TURN_WAIT_SECONDS.labels(env.route).observe(time.monotonic() - started)

    def settled(self, key: str) -> None:
        """An operation with ``key`` has its outcome recorded: wake those waiting on it."""
        event = self._settled.pop(key, None)
        if event is not None:
            event.set()


def pause(turn: Turn) -> float:
    """How long a deferred operation stays in a delay queue before it asks again."""
    if turn.next_retry is not None:
        due = (turn.next_retry - datetime.now(UTC)).total_seconds()
        if due > 0:
            return due
    return min(MAX_PAUSE, max(1.0, PAUSE_PER_OPERATION_AHEAD * turn.ahead))


async def refresh_backlog(store: Store) -> None:
    """Export the ordering backlog: how many operations wait behind an earlier one."""
    backlog = await store.ordering_backlog()
    metrics.ORDERING_WAITING.set(backlog.waiting)
    metrics.ORDERING_KEYS_WAITING.set(backlog.keys)
    age = 0.0
    if backlog.oldest_start is not None:
        age = max(0.0, (datetime.now(UTC) - backlog.oldest_start).total_seconds())
    metrics.ORDERING_OLDEST_WAITING_SECONDS.set(age)
