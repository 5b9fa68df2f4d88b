"""create_app: the gateway's one aiohttp application and the lifecycle of its resources.

Every request lands in ``dispatch``, which decides by path alone where it goes:
``/rest/.../async/...`` and converted sync routes to ``intake``, ``GET .../V1/bulk/...``
to ``status``, everything else to ``proxy``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from asyncgate.logs import get_logger
from asyncgate.routes import find_route, parse_bulk_status, parse_rest_path
from asyncgate.settings import Settings
from asyncgate.store import create_store
from asyncgate.transport import create_transport
from gateway import intake, status
from gateway.forwarding import client_info
from gateway.keys import SESSION, SETTINGS, STORE, TRANSPORT
from gateway.proxy import new_upstream_session, pass_through

log = get_logger("asyncgate.gateway")


async def dispatch(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    client = client_info(request, settings.gateway)
    path = request.raw_path.partition("?")[0]
    rest = parse_rest_path(path)
    if rest is not None:
        if rest.is_async:
            return await intake.handle(request, settings, client, rest, explicit=True)
        if request.method == "GET":
            query = parse_bulk_status(rest.v1_path)
            if query is not None or rest.v1_path == "/V1/bulk":
                answer = await status.handle(request, query)
                if answer is not None:
                    return answer
        elif find_route(settings.converted_routes, request.method, rest.v1_path) is not None:
            return await intake.handle(request, settings, client, rest, explicit=False)
    return await pass_through(request, request.app[SESSION], settings, client)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """The process's long-lived resources: upstream session, store, broker link."""
    settings = app[SETTINGS]
    app[SESSION] = new_upstream_session(settings)
    app[STORE] = create_store(settings.store.url)
    await app[STORE].open()
    app[TRANSPORT] = create_transport(settings, "gateway")
    await app[TRANSPORT].start()
    yield
    await app[TRANSPORT].close()
    await app[STORE].close()
    await app[SESSION].close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(handler_args={"max_field_size": 16384})
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
