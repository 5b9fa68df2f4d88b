"""The admin listener both roles run beside their work: /metrics, /healthz, /readyz.

It binds its own address (never the public port), so a shop's internet-facing
port neither exposes it nor has one of its URLs shadowed by it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from asyncgate.settings import HostPort

# Returns the reasons the process is not ready; empty means ready.
ReadinessCheck = Callable[[], Awaitable[list[str]]]


def create_admin_app(ready: ReadinessCheck) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        problems = await ready()
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_admin(listen: HostPort, ready: ReadinessCheck) -> tuple[web.AppRunner, str]:
    """Start the admin listener; return its runner and its base URL (port 0 = any free one)."""
    runner = web.AppRunner(create_admin_app(ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, listen.host, listen.port).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"
