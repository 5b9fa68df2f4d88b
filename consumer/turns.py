"""Per-key turns: an ordered operation is replayed only once every earlier one with its key
is settled, and never beside another operation of its key or another copy of itself.

The store decides (``Store.claim_turn``), so the rule holds across consumer processes
and hosts that share the store, and on both transports.  This module is how one
consumer waits for a turn without holding a delivery for long:

1. claim the turn under a token of this delivery's own; the claim lasts ``lease``
   seconds, longer than the rate limiter, the replay and the follow-up publish can
   take; the worker renews it before settling and records the outcome *with the
   token*, so a copy whose claim expired and was taken over by another copy can
   neither publish a follow-up nor record (it would undo the newer copy's work);
2. not granted and next in line: wait here for at most ``PATIENCE`` seconds, woken
   at once when an operation with the same key settles in this process, else asking
   the store again every ``POLL`` seconds;
3. otherwise: the worker hands the message back through a delay queue (``pause``),
   timed for the earlier operation's scheduled retry, or for a pause that grows with
   the number of operations ahead, so waiting deliveries do not hold prefetch slots.

A consumer that dies mid-replay leaves its claim: the redelivered copy waits until the
claim expires, so that a request the dead process had sent cannot land after a later
operation.  That wait (up to ``lease``) is the price of a crash on an ordered key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
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
    """Longer than a claimed operation can take to reach its settle: the rate limiter,
    the replay, and the follow-up publish (a link wait and a confirm wait)."""
    consumer = settings.consumer
    limiter = consumer.concurrency / consumer.rate_limit if consumer.rate_limit else 0.0
    return limiter + consumer.request_timeout + 2 * settings.broker.confirm_timeout + 10.0


class Turns:
    def __init__(self, store: Store, lease: float) -> None:
        self._store = store
        self.lease = lease
        self._settled: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}

    async def take(self, env: Envelope, key: str) -> tuple[Turn, str]:
        """GRANTED or SETTLED as soon as the store says so; WAIT when it is not worth
        waiting here.  Returns the turn and the claim token it was asked under."""
        token = uuid.uuid4().hex
        started = time.monotonic()
        try:
            while True:
                turn = await self._store.claim_turn(
                    env.bulk_uuid, env.index, env.attempt, token, self.lease
                )
                if turn.state is not TurnState.WAIT or not self._worth_waiting(turn, started):
                    return turn, token
                await self._until_settled(key, min(POLL, PATIENCE - (time.monotonic() - started)))
        finally:
            metrics.ORDERING_TURN_WAIT_SECONDS.labels(env.route).observe(time.monotonic() - started)

    def settled(self, key: str) -> None:
        """An operation with ``key`` has its outcome recorded: wake those waiting on it."""
        event = self._settled.pop(key, None)
        if event is not None:
            event.set()

    @staticmethod
    def _worth_waiting(turn: Turn, started: float) -> bool:
        """Only the next in line waits here, and only briefly: the rest go round a queue."""
        left = PATIENCE - (time.monotonic() - started)
        if turn.ahead > 1 or left <= 0:
            return False
        return turn.next_retry is None or turn.next_retry - datetime.now(UTC) < timedelta(
            seconds=left
        )

    async def _until_settled(self, key: str, within: float) -> None:
        event = self._settled.setdefault(key, asyncio.Event())
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), within)
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:  # the last waiter of the key: nothing left to wake
                del self._waiters[key]
                if self._settled.get(key) is event:
                    del self._settled[key]


def pause(turn: Turn, tiers: Sequence[int]) -> float:
    """How long a deferred operation stays in a delay queue before it asks again.

    Rounded *down* to a delay tier (the transport rounds up): coming back a little
    early costs one more round, coming back a tier late leaves the key idle.
    """
    wanted = min(MAX_PAUSE, max(1.0, PAUSE_PER_OPERATION_AHEAD * turn.ahead))
    if turn.next_retry is not None:
        due = (turn.next_retry - datetime.now(UTC)).total_seconds()
        wanted = max(wanted, due)
    return float(max([t for t in tiers if t <= wanted], default=min(tiers)))
