"""Async intake: request -> operations -> store (pending) -> publish (confirmed) -> 202.

The gateway answers 202 only once the broker has confirmed every message of the
request; any failure withdraws the bulk from the store and answers 503, so a
non-202 answer leaves nothing that will ever be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from datetime import UTC, datetime

from aiohttp import web

from asyncgate import metrics
from asyncgate.crypto import seal_headers
from asyncgate.envelope import Envelope, operation_id
from asyncgate.jsonutil import dumps
from asyncgate.logs import get_logger
from asyncgate.ordering import digest, ordering_key
from asyncgate.routes import WRITE_METHODS, RestPath, RouteSpec, find_route
from asyncgate.settings import Settings
from asyncgate.store.base import NewBulk, NewOperation, OperationStatus, Store
from asyncgate.transport import Outgoing, Transport
from gateway.errors import magento_error
from gateway.forwarding import ClientInfo
from gateway.identity import AuthFailed, auth_mode, authenticate
from gateway.keys import CIPHER, INTAKE_LIMIT, STORE, TRANSPORT
from gateway.operations import BadRequest, Item, bulk_items, decode_body, single_item

log = get_logger("asyncgate.intake")

CANNOT_PROCESS = "Specified request cannot be processed."
DEFAULT_ROUTE = "async"
RETRY_AFTER_SECONDS = "5"


def route_name_of(route: RouteSpec | None) -> str:
    """The route's name in the config, for metrics and logs; "async" when none matched."""
    return route.policy.name if route is not None and route.policy is not None else DEFAULT_ROUTE


async def handle(
    request: web.Request,
    settings: Settings,
    client: ClientInfo,
    rest: RestPath,
    route: RouteSpec | None,
    explicit: bool,
) -> web.Response:
    """Take in one async request; ``route`` is the config route it matched, if any."""
    method = request.method
    if method not in WRITE_METHODS:
        return magento_error(400, CANNOT_PROCESS)
    if explicit and find_route(settings.compiled_deny, method, rest.v1_path) is not None:
        return magento_error(400, CANNOT_PROCESS)
    policy = route.policy if route is not None else None
    route_name = route_name_of(route)
    queue = policy.queue if policy is not None else "default"

    try:
        raw = await _read_limited(request, settings.intake.max_body_bytes)
    except _TooLarge:
        response = magento_error(413, "Request body is too large.")
        response.force_close()
        return response
    try:
        text, parsed = decode_body(raw)
        if rest.is_bulk:
            items = bulk_items(rest.v1_path, parsed, settings.intake.max_bulk_items)
        else:
            items = single_item(rest.v1_path, text)
    except BadRequest as exc:
        return magento_error(400, str(exc))
    except UnicodeError:  # e.g. a lone surrogate escaped in the JSON
        return magento_error(400, "The request body is not valid UTF-8.")

    store = request.app[STORE]
    mode = auth_mode(settings, policy.auth if policy is not None else None)
    try:
        caller = await authenticate(request, settings, client, store, raw, mode)
    except AuthFailed as exc:
        log.info("async_refused", route=route_name, status=401, reason=exc.message)
        return magento_error(401, exc.message, exc.parameters)
    wait = request.app[INTAKE_LIMIT].take(caller.owner, len(items))
    if wait > 0:
        log.info("async_refused", route=route_name, status=429, reason="rate limit")
        return magento_error(
            429,
            "Too many requests. Try again later.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    bulk_uuid = str(uuid.uuid4())
    now = time.time()
    query = request.raw_path.partition("?")[2]
    # A client's OAuth header is only good for the URL it signed: never carry it.
    skip = {"authorization"} if caller.replay_auth != "forward" else set()
    headers = seal_headers(
        [
            (name, value)
            for name in settings.intake.forward_headers
            if name.lower() not in skip
            for value in request.headers.getall(name, [])
        ],
        request.app[CIPHER],
    )
    topic = f"async{rest.v1_path.replace('/', '.')}.{method}"
    ordering = policy.ordering if policy is not None else "auto"
    bulk = NewBulk(
        bulk_uuid=bulk_uuid,
        description=f"{route_name}: {method} {rest.v1_path}",
        owner=caller.owner,
        user_type=caller.user_type,
        start_time=datetime.fromtimestamp(now, UTC),
        operations=tuple(_new_operation(item, topic, method, ordering) for item in items),
    )

    def message(item: Item) -> Outgoing:
        op_id = operation_id(bulk_uuid, item.index)
        envelope = Envelope(
            operation_id=op_id,
            bulk_uuid=bulk_uuid,
            index=item.index,
            route=route_name,
            queue=queue,
            method=method,
            path=rest.replay_path(item.v1_path),
            query=query,
            headers=headers,
            body=item.body,
            client=client.address,
            received_at=now,
            auth=caller.replay_auth,
        )
        return Outgoing(queue=queue, message_id=op_id, body=envelope.to_bytes())

    try:
        messages = [message(item) for item in items if item.error is None]
    except UnicodeError:  # a forwarded header carried bytes that are not UTF-8
        return magento_error(400, "A request header is not valid UTF-8.")
    try:
        await store.record_bulk(bulk)
    except Exception as exc:  # the store is down or locked: refuse, nothing queued
        log.error("store_record_failed", bulk_uuid=bulk_uuid, error=repr(exc))
        return _unavailable("The operation store is unavailable. Try again later.")
    # Shielded: a client that hangs up mid-publish must not leave its bulk half-decided.
    problem = await asyncio.shield(
        _publish_and_accept(request.app[TRANSPORT], store, bulk_uuid, messages, route_name)
    )
    if problem is not None:
        return _unavailable(problem)
    metrics.GATEWAY_OPERATIONS.labels(route_name, "accepted").inc(len(messages))
    if len(items) > len(messages):
        metrics.GATEWAY_OPERATIONS.labels(route_name, "rejected").inc(len(items) - len(messages))
    log.info(
        "bulk_accepted",
        bulk_uuid=bulk_uuid,
        route=route_name,
        method=method,
        operations=len(messages),
        rejected=len(items) - len(messages),
    )
    return web.Response(
        status=202,
        body=dumps(
            {
                "bulk_uuid": bulk_uuid,
                "request_items": [_request_item(item) for item in items],
                "errors": any(item.error is not None for item in items),
            }
        ),
        content_type="application/json",
    )


async def _publish_and_accept(
    transport: Transport, store: Store, bulk_uuid: str, messages: list[Outgoing], route: str
) -> str | None:
    """Publish confirmed, then accept; on any failure withdraw. Returns why it failed."""
    try:
        if messages:
            with metrics.GATEWAY_CONFIRM_SECONDS.time():
                await transport.publish(messages)
    except Exception as exc:  # PublishError, or anything else: never a 202 unconfirmed
        log.warning("publish_failed", bulk_uuid=bulk_uuid, route=route, error=repr(exc))
        with contextlib.suppress(Exception):
            await store.withdraw_bulk(bulk_uuid)
        return "The message queue is unavailable. Try again later."
    try:
        await store.accept_bulk(bulk_uuid)
    except Exception as exc:
        # Unaccepted, the published messages are dropped by the consumer: a 503 is true.
        log.error("store_accept_failed", bulk_uuid=bulk_uuid, error=repr(exc))
        with contextlib.suppress(Exception):
            await store.withdraw_bulk(bulk_uuid)
        return "The operation store is unavailable. Try again later."
    return None


def _new_operation(item: Item, topic: str, method: str, ordering: str) -> NewOperation:
    if item.error is not None:
        return NewOperation(item.index, topic, OperationStatus.REJECTED, item.body, item.error, 400)
    key = ordering_key(ordering, method, item.v1_path, item.body)
    return NewOperation(
        item.index,
        topic,
        OperationStatus.OPEN,
        item.body,
        ordering_key=None if key is None else digest(key),
    )


def _request_item(item: Item) -> dict[str, object]:
    out: dict[str, object] = {
        "id": item.index,
        "data_hash": item.data_hash,
        "status": "accepted" if item.error is None else "rejected",
    }
    if item.error is not None:
        out["error_message"] = item.error
        out["error_code"] = 400
    return out


def _unavailable(message: str) -> web.Response:
    return magento_error(503, message, headers={"Retry-After": RETRY_AFTER_SECONDS})


class _TooLarge(Exception):
    pass


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    seen = 0
    async for chunk in request.content.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)
