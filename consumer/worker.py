"""Consume operations and settle each one: replay, then record, retry or dead-letter, then ack.

Order of the settle steps is what makes delivery at-least-once:

1. publish the follow-up first (retry to a delay tier, or the dead letter), confirmed;
2. then record the outcome in the store;
3. then ack.

A crash between any two steps leaves the message unacked, so RabbitMQ delivers it
again.  A redelivered message whose attempt the store already recorded is acked
without replaying (its follow-up was published before the record), and so is an
operation already complete.  The one duplicate left is a crash after the upstream
answered and before the record: that attempt is replayed once more.

An operation with an ordering key is replayed only in its turn (``consumer/turns.py``):
once every earlier operation with its key is settled.  Until then it waits briefly,
then goes back through a delay queue (publish, then ack, as a retry does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from asyncgate import metrics
from asyncgate.backoff import patiently
from asyncgate.crypto import CredentialCipher
from asyncgate.envelope import Envelope, EnvelopeError
from asyncgate.logs import get_logger
from asyncgate.ratelimit import RateLimiter
from asyncgate.settings import RouteSettings, Settings
from asyncgate.store.base import OperationOutcome, OperationStatus, Store, Turn, TurnState
from asyncgate.transport import Delivery, Outgoing, Transport
from consumer.replay import Attempt, UnsupportedAuth, replay
from consumer.retry import Decision, RetryPolicy, Verdict, judge
from consumer.turns import Turns, lease_seconds, pause

log = get_logger("asyncgate.consumer")

# A bulk still pending this long after it started was never answered 202 (its
# gateway died between publishing and accepting): its messages are dropped.
PENDING_GIVE_UP = timedelta(minutes=5)
PENDING_RECHECK_DELAY = 1.0
# A delivery whose handling failed (the store or the broker link down) is requeued
# after a pause that doubles with each failure here, from 0.5 s up to 30 s: a tight
# requeue loop would run through the quorum queue's delivery limit (100) within a
# short outage, and RabbitMQ would park a healthy message as poison.
HANDLING_BACKOFF = (0.5, 30.0)
_FAILURES_REMEMBERED = 10_000
# Recording an outcome is retried this long before the delivery goes back: once the
# upstream has answered, a requeue would replay the operation a second time.
RECORD_PATIENCE = 60.0

_STATUS_OF = {
    Verdict.SUCCESS: OperationStatus.COMPLETE,
    Verdict.RETRY: OperationStatus.RETRIABLY_FAILED,
    Verdict.EXHAUSTED: OperationStatus.RETRIABLY_FAILED,
    Verdict.PERMANENT: OperationStatus.NOT_RETRIABLY_FAILED,
}


@dataclass(frozen=True)
class Claim:
    """This delivery's turn on an ordering key, under its own token."""

    key: str
    token: str


class Worker:
    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        store: Store,
        session: aiohttp.ClientSession,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._store = store
        self._session = session
        self._slots = asyncio.Semaphore(settings.consumer.concurrency)
        self._limiter = RateLimiter(settings.consumer.rate_limit)
        self._policies = {r.name: r for r in settings.routes}
        self._integrations = {i.name: i for i in settings.integrations}
        keys = settings.security.cipher_keys()
        self._cipher = CredentialCipher(keys) if keys else None
        self._turns = Turns(store, lease_seconds(settings))
        self._inflight: set[asyncio.Task[object]] = set()
        self._failures: dict[str, int] = {}  # message id -> handling failures, oldest first
        # Settle steps run as their own tasks so that cancelling a handler never cuts
        # them in half; shutdown waits for them before the connection closes.
        self._settling: dict[Delivery, asyncio.Task[None]] = {}
        metrics.CONSUMER_UPSTREAM_CONCURRENCY_LIMIT.set(settings.consumer.concurrency)

    async def start(self) -> None:
        await self._transport.consume(
            self._settings.queues, self._settings.consumer.concurrency, self.handle
        )

    async def drain(self, grace: float) -> None:
        """Stop taking work, give in-flight replays ``grace`` seconds, then requeue the rest."""
        await self._transport.stop_consuming()
        pending = set(self._inflight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
                log.warning("shutdown_requeued", operations=len(late))
        if self._settling:
            await asyncio.wait(list(self._settling.values()))

    async def handle(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        metrics.CONSUMER_IN_FLIGHT.inc()
        try:
            await self._process(delivery)
        except asyncio.CancelledError:
            # Before the upstream answered: give the message back now.  After it, the
            # settle task finishes on its own and answers the delivery itself.
            if delivery not in self._settling:
                await asyncio.shield(delivery.requeue())
            raise
        except Exception as exc:
            # The store or the publishing link failed mid-way: hand the message back, or
            # it would hold a prefetch slot until the consumer restarts; but not at once
            # (see HANDLING_BACKOFF).  Holding it meanwhile also slows intake of more.
            failures = self._failures.pop(delivery.message_id, 0) + 1
            self._failures[delivery.message_id] = failures
            while len(self._failures) > _FAILURES_REMEMBERED:
                del self._failures[next(iter(self._failures))]
            delay = min(HANDLING_BACKOFF[1], HANDLING_BACKOFF[0] * 2 ** (failures - 1))
            log.error(
                "operation_handling_failed",
                message_id=delivery.message_id,
                error=repr(exc),
                failures=failures,
                requeue_in=delay,
            )
            try:
                await asyncio.sleep(delay)
            finally:
                await asyncio.shield(delivery.requeue())
        else:
            self._failures.pop(delivery.message_id, None)
        finally:
            self._inflight.discard(task)
            metrics.CONSUMER_IN_FLIGHT.dec()

    async def _process(self, delivery: Delivery) -> None:
        try:
            env = Envelope.from_bytes(delivery.body)
        except EnvelopeError as exc:
            await self._park_poison(delivery, str(exc))
            return
        state = await self._store.operation_state(env.bulk_uuid, env.index)
        if state is None:
            log.info("operation_withdrawn", operation_id=env.operation_id, bulk_uuid=env.bulk_uuid)
            await delivery.ack()
            return
        if not state.bulk_accepted:
            await self._wait_for_acceptance(delivery, env, state.bulk_start_time)
            return
        if state.status == OperationStatus.COMPLETE or state.attempts >= env.attempt:
            await self._skip_duplicate(delivery, env, state.status)
            return
        claim: Claim | None = None
        if state.ordering_key is not None:
            turn, token = await self._turns.take(env, state.ordering_key)
            if turn.state is TurnState.SETTLED:
                await self._skip_duplicate(delivery, env, state.status)
                return
            if turn.state is TurnState.WAIT:
                await self._defer(delivery, env, turn)
                return
            claim = Claim(state.ordering_key, token)
        route = self._policies.get(env.route)
        sent = False
        try:
            async with self._slots:
                await self._limiter.acquire()
                started = time.monotonic()
                sent = True
                with metrics.CONSUMER_UPSTREAM_CONCURRENCY.track_inprogress():
                    attempt = await self._replay(env)
        except asyncio.CancelledError:
            if claim is not None and not sent:
                # Nothing went upstream: the next copy may go now, not after the lease.
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self._store.release_claim(env.bulk_uuid, env.index, claim.token)
                    )
            raise
        duration = time.monotonic() - started
        metrics.CONSUMER_REPLAY_SECONDS.labels(env.route).observe(duration)
        # Once the upstream has answered, the outcome must be recorded even if we are
        # being cancelled: settle in a task of its own.
        settle = asyncio.create_task(
            self._settle(delivery, env, route, attempt, duration, claim),
            name=f"settle-{env.operation_id}",
        )
        self._settling[delivery] = settle
        settle.add_done_callback(lambda _: self._settling.pop(delivery, None))
        await asyncio.shield(settle)

    async def _replay(self, env: Envelope) -> Attempt:
        try:
            return await replay(
                self._session, self._settings.upstream.url, env, self._integrations, self._cipher
            )
        except UnsupportedAuth as exc:
            return Attempt(status=None, reason="", body="", error=str(exc))

    async def _settle(
        self,
        delivery: Delivery,
        env: Envelope,
        route: RouteSettings | None,
        attempt: Attempt,
        duration: float,
        claim: Claim | None,
    ) -> None:
        if claim is not None and not await self._store.renew_claim(
            env.bulk_uuid, env.index, claim.token, self._turns.lease
        ):
            # This copy's claim expired and another copy of the operation took over: its
            # outcome is the one to keep, so publish and record nothing.
            log.warning("claim_lost", operation_id=env.operation_id, bulk_uuid=env.bulk_uuid)
            await delivery.ack()
            return
        policy = RetryPolicy.for_route(self._settings.retry, route)
        decision = judge(attempt, env.attempts_in_budget, policy)
        retry_at: datetime | None = None  # while set, later operations with the key wait
        if decision.verdict is Verdict.RETRY:
            used = await self._transport.publish_delayed(
                Outgoing(env.queue, env.next_attempt().to_bytes(), env.operation_id),
                decision.delay,
            )
            decision = Decision(decision.verdict, used, decision.message)
            retry_at = datetime.now(UTC) + timedelta(seconds=used)
        elif decision.verdict in (Verdict.EXHAUSTED, Verdict.PERMANENT):
            await self._transport.dead_letter(
                Outgoing(env.queue, env.to_bytes(), env.operation_id, _reasons(decision, attempt))
            )
        outcome = OperationOutcome(
            status=_STATUS_OF[decision.verdict],
            attempts=env.attempt,
            http_status=attempt.status,
            result_message=decision.message,
            result_serialized_data=attempt.body if decision.verdict is Verdict.SUCCESS else None,
            error_code=attempt.status if decision.verdict is not Verdict.SUCCESS else None,
            retry_at=retry_at,
        )
        token = None if claim is None else claim.token
        recorded = await patiently(
            lambda: self._store.record_outcome(env.bulk_uuid, env.index, outcome, claim=token),
            RECORD_PATIENCE,
            "record_outcome",
        )
        if claim is not None:
            if not recorded:
                log.warning("claim_lost", operation_id=env.operation_id, bulk_uuid=env.bulk_uuid)
            self._turns.settled(claim.key)
        await delivery.ack()
        metrics.CONSUMER_OPERATIONS.labels(env.route, decision.verdict.value).inc()
        metrics.CONSUMER_ATTEMPTS.labels(env.route).observe(env.attempt)
        if decision.verdict is Verdict.SUCCESS:
            metrics.CONSUMER_LAST_SUCCESS.set(time.time())
        log.info(
            "operation_replayed",
            operation_id=env.operation_id,
            bulk_uuid=env.bulk_uuid,
            route=env.route,
            method=env.method,
            attempt=env.attempt,
            upstream_status=attempt.status,
            outcome=decision.verdict.value,
            retry_in=round(decision.delay, 3) if decision.verdict is Verdict.RETRY else None,
            duration=round(duration, 4),
            error=attempt.error,
        )

    async def _skip_duplicate(
        self, delivery: Delivery, env: Envelope, status: OperationStatus
    ) -> None:
        log.info(
            "duplicate_skipped",
            operation_id=env.operation_id,
            bulk_uuid=env.bulk_uuid,
            attempt=env.attempt,
            status=int(status),
        )
        await delivery.ack()

    async def _defer(self, delivery: Delivery, env: Envelope, turn: Turn) -> None:
        """Not its turn yet: back through a delay queue, so no delivery is held for long."""
        used = await self._transport.publish_delayed(
            Outgoing(env.queue, delivery.body, env.operation_id),
            pause(turn, self._settings.retry.delay_tiers),
        )
        await delivery.ack()
        metrics.ORDERING_DEFERRED.labels(env.route).inc()
        log.info(
            "operation_deferred",
            operation_id=env.operation_id,
            bulk_uuid=env.bulk_uuid,
            ahead=turn.ahead,
            retry_in=round(used, 3),
        )

    async def _wait_for_acceptance(
        self, delivery: Delivery, env: Envelope, started: datetime
    ) -> None:
        """The gateway has not yet had every confirm of this bulk: check back shortly."""
        if datetime.now(UTC) - started > PENDING_GIVE_UP:
            log.warning(
                "operation_never_accepted", operation_id=env.operation_id, bulk_uuid=env.bulk_uuid
            )
            await self._store.withdraw_bulk(env.bulk_uuid)
            await delivery.ack()
            return
        await self._transport.publish_delayed(
            Outgoing(env.queue, delivery.body, env.operation_id), PENDING_RECHECK_DELAY
        )
        await delivery.ack()

    async def _park_poison(self, delivery: Delivery, reason: str) -> None:
        log.error("poison_message", message_id=delivery.message_id, reason=reason)
        await self._transport.dead_letter(
            Outgoing(
                delivery.headers.get("asyncgate-queue", "default"),
                delivery.body,
                delivery.message_id,
                {"x-asyncgate-reason": "poison", "x-asyncgate-error": reason[:500]},
            )
        )
        await delivery.ack()


def _reasons(decision: Decision, attempt: Attempt) -> dict[str, str]:
    headers = {
        "x-asyncgate-reason": decision.verdict.value,
        "x-asyncgate-error": decision.message[:500],
    }
    if attempt.status is not None:
        headers["x-asyncgate-last-status"] = str(attempt.status)
    return headers
