"""Operator commands: retry a bulk's failed operations, and list, requeue or purge dead letters.

Dead letters keep their whole envelope, so a requeue goes back through the normal
path: the operation is reopened (status 4) first, then republished with a fresh
retry budget, and only then is the dead letter acked.

An ordered operation that a later update of the same resource has overtaken (it
completed while this one was failing) is not requeued unless forced: replaying it
would put the older write over the newer one.
"""

from __future__ import annotations

import sys
from typing import TextIO

from asyncgate.envelope import Envelope, EnvelopeError
from asyncgate.jsonutil import dumps
from asyncgate.logs import get_logger
from asyncgate.store.base import OperationStatus, Store
from asyncgate.transport import Delivery, Outgoing, Transport

log = get_logger("asyncgate.operator")


def _describe(delivery: Delivery, env: Envelope | None) -> dict[str, object]:
    out: dict[str, object] = {
        "message_id": delivery.message_id,
        "reason": delivery.headers.get("x-asyncgate-reason"),
        "error": delivery.headers.get("x-asyncgate-error"),
        "last_status": delivery.headers.get("x-asyncgate-last-status"),
    }
    if env is not None:
        out |= {
            "bulk_uuid": env.bulk_uuid,
            "index": env.index,
            "route": env.route,
            "method": env.method,
            "path": env.path,
            "attempt": env.attempt,
        }
    return out


def _parse(delivery: Delivery) -> Envelope | None:
    try:
        return Envelope.from_bytes(delivery.body)
    except EnvelopeError:
        return None


async def dead_letters(
    transport: Transport,
    store: Store,
    action: str,
    bulk_uuid: str | None,
    limit: int,
    # Never a completed operation: its dead letter can be stale (the consumer died
    # after parking it and before recording, then a redelivery succeeded).
    statuses: frozenset[OperationStatus] = frozenset(OperationStatus) - {OperationStatus.COMPLETE},
    out: TextIO = sys.stdout,
    force: bool = False,
) -> int:
    """Apply ``action`` (list, requeue, purge) to dead letters; return how many it touched.

    Messages not selected are given back untouched when the command ends.
    """
    deliveries = await transport.dead_letters(limit)
    answered: set[int] = set()
    touched = 0
    try:
        for delivery in deliveries:
            env = _parse(delivery)
            if bulk_uuid is not None and (env is None or env.bulk_uuid != bulk_uuid):
                continue
            if action == "list":
                out.write(dumps(_describe(delivery, env)).decode() + "\n")
            elif action == "purge":
                await delivery.ack()
                answered.add(id(delivery))
            elif action == "requeue" and env is not None:
                state = await store.operation_state(env.bulk_uuid, env.index)
                if state is None or state.status not in statuses:
                    continue
                if not await store.reopen(env.bulk_uuid, env.index, force):
                    log.warning(
                        "requeue_skipped_superseded",
                        bulk_uuid=env.bulk_uuid,
                        index=env.index,
                        hint="a later update of the same resource was replayed; --force replays it",
                    )
                    continue
                await transport.publish(
                    [
                        Outgoing(
                            env.queue,
                            env.restarted(state.attempts + 1).to_bytes(),
                            env.operation_id,
                        )
                    ]
                )
                await delivery.ack()
                answered.add(id(delivery))
            else:
                continue
            touched += 1
    finally:
        for delivery in deliveries:
            if id(delivery) not in answered:
                await delivery.requeue()
    return touched
