"""create_app: the gateway's one aiohttp application and the lifecycle of its resources.

Every request lands in ``dispatch``, which decides by path alone where it goes:
``/rest/.../async/...`` and converted sync routes to ``intake``, ``GET .../V1/bulk/...``
to ``status``, everything else to ``proxy``; and writes the one canonical log line
and the request metrics.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from asyncgate import metrics
from asyncgate.admin import start_admin
from asyncgate.crypto import CredentialCipher
from asyncgate.logs import get_logger
from asyncgate.ratelimit import PerCallerLimit
from asyncgate.routes import find_route, parse_bulk_status, parse_rest_path
from asyncgate.settings import Settings
from asyncgate.store import create_store, open_patiently
from asyncgate.transport import create_transport
from gateway import intake, status
from gateway.forwarding import client_info
from gateway.keys import ADMIN_URL, CIPHER, INTAKE_LIMIT, SESSION, SETTINGS, STORE, TRANSPORT
from gateway.proxy import new_upstream_session, pass_through

log = get_logger("asyncgate.gateway")

PASSTHROUGH = "passthrough"

# Request ids: a random per-process prefix and a counter, 32 hex digits like a uuid4
# but without a system call for every request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


async def dispatch(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    request_id = request.headers.get("X-Request-Id") or _new_request_id()
    # A keep-alive connection serves many requests in one task: start each one clean.
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    mode, route, status_code = PASSTHROUGH, PASSTHROUGH, 500
    try:
        mode, route, response = await _route(request)
        status_code = response.status
        return response
    finally:
        elapsed = time.monotonic() - started
        metrics.GATEWAY_REQUESTS.labels(route, mode, f"{status_code // 100}xx").inc()
        metrics.GATEWAY_REQUEST_SECONDS.labels(route, mode).observe(elapsed)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status_code,
            mode=mode,
            route=route,
            duration=round(elapsed, 4),
        )


async def _route(request: web.Request) -> tuple[str, str, web.StreamResponse]:
    settings = request.app[SETTINGS]
    client = client_info(request, settings.gateway)
    rest = parse_rest_path(request.raw_path.partition("?")[0])
    if rest is not None:
        if rest.is_async:
            spec = find_route(settings.compiled_routes, request.method, rest.v1_path)
            answer = await intake.handle(request, settings, client, rest, spec, explicit=True)
            return "async", intake.route_name_of(spec), answer
        if request.method == "GET":
            query = parse_bulk_status(rest.v1_path)
            if query is not None or rest.v1_path == "/V1/bulk":
                found = await status.handle(request, query)
                if found is not None:
                    return "status", "bulk-status", found
        else:
            spec = find_route(settings.converted_routes, request.method, rest.v1_path)
            if spec is not None:
                answer = await intake.handle(request, settings, client, rest, spec, explicit=False)
                return "async", intake.route_name_of(spec), answer
    response = await pass_through(request, request.app[SESSION], settings, client)
    return PASSTHROUGH, PASSTHROUGH, response


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The process's long-lived resources: upstream session, store, broker link, admin."""
    settings = app[SETTINGS]
    app[SESSION] = new_upstream_session(settings)
    app[STORE] = create_store(settings.store.url)
    await open_patiently(app[STORE])
    app[TRANSPORT] = create_transport(settings, "gateway")
    await app[TRANSPORT].start()

    async def ready() -> list[str]:
        problems = [] if app[TRANSPORT].connected else ["broker not connected"]
        try:
            await app[STORE].ping()
        except Exception as exc:
            problems.append(f"store unreachable: {exc!r}")
        return problems

    admin, app[ADMIN_URL] = await start_admin(settings.gateway.admin_listen, ready)
    yield
    await admin.cleanup()
    await app[TRANSPORT].close()
    await app[STORE].close()
    await app[SESSION].close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(handler_args={"max_field_size": 16384})
    app[SETTINGS] = settings
    app[INTAKE_LIMIT] = PerCallerLimit(settings.intake.rate_limit, settings.intake.rate_burst)
    keys = settings.security.cipher_keys()
    app[CIPHER] = CredentialCipher(keys) if keys else None
    app.cleanup_ctx.append(_resources)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
