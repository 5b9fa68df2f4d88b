"""An asyncgate stack for end-to-end tests: demo shop upstream, gateway, consumer, real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiormq
import pytest
from aiohttp import web
from yarl import URL

from asyncgate.settings import Settings
from asyncgate.transport import Transport, create_transport
from consumer.service import RunningConsumer, running_consumer
from demo.payloads import seed_customer
from demo.shop import SHOP_STATE, ShopConfig, ShopState, create_shop_app
from gateway.app import create_app
from gateway.keys import ADMIN_URL
from tests.conftest import StartServer, eventually

AUTH = {"Authorization": "Bearer admin-token"}


def customer(n: int) -> dict[str, Any]:
    return seed_customer(n)


ROOT = Path(__file__).resolve().parents[2]


def spawn(role: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m gateway|consumer --config CONFIG`` as a real process, output to ``log``."""
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", role, "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@dataclass
class Stack:
    settings: Settings
    gateway: URL
    shop_url: URL
    shop: ShopState
    http: aiohttp.ClientSession
    broker: aiormq.abc.AbstractChannel
    exits: AsyncExitStack
    gateway_admin: str
    consumer: RunningConsumer | None = None
    _consumer_exits: AsyncExitStack | None = None

    async def start_consumer(self, settings: Settings | None = None) -> RunningConsumer:
        assert self._consumer_exits is None, "one consumer at a time"
        self._consumer_exits = AsyncExitStack()
        self.exits.push_async_callback(self.stop_consumer)
        self.consumer = await self._consumer_exits.enter_async_context(
            running_consumer(settings or self.settings)
        )
        return self.consumer

    async def stop_consumer(self) -> None:
        """Graceful stop, as on SIGTERM."""
        if self._consumer_exits is not None:
            exits, self._consumer_exits, self.consumer = self._consumer_exits, None, None
            await exits.aclose()

    _inspector: Transport | None = None

    def queue(self, kind: str, name: str = "default") -> str:
        x = self.settings.broker.exchange
        return {"work": f"{x}.work.{name}", "dead": f"{x}.dead"}[kind]

    async def inspector(self) -> Transport:
        """A transport of the stack's kind, for looking at queues as an operator would."""
        if self._inspector is None:
            self._inspector = create_transport(self.settings, "inspector")
            await self._inspector.start()
            self.exits.push_async_callback(self._inspector.close)
        return self._inspector

    async def depth(self, kind: str, name: str = "default") -> int:
        """Ready messages in the work queue ``name`` or the dead-letter queue."""
        wanted = self.queue(kind, name)
        for depth in await (await self.inspector()).depth():
            if depth.queue == wanted:
                return depth.ready
        raise AssertionError(f"no queue {wanted}")

    async def set_latency(self, low: float, high: float) -> None:
        """Make every shop write take a random extra ``low``..``high`` seconds."""
        async with self.http.post(
            self.shop_url / "_shop/latency", json={"min": low, "max": high}
        ) as r:
            assert r.status == 200

    async def post(self, path: str, body: Any, method: str = "POST", **kw: Any) -> tuple[int, Any]:
        headers = kw.pop("headers", AUTH)
        async with self.http.request(
            method, self.gateway.with_path(path, encoded=True), json=body, headers=headers, **kw
        ) as r:
            return r.status, await r.json(content_type=None)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        url = URL(str(self.gateway) + path, encoded=True)
        async with self.http.get(url, headers=AUTH if headers is None else headers) as r:
            return r.status, await r.json(content_type=None)

    async def wait_for(
        self, check: Callable[[], Awaitable[bool] | bool], within: float = 15.0
    ) -> None:
        await eventually(check, within)

    async def bulk_done(
        self, bulk_uuid: str, final: frozenset[int] = frozenset({1, 2, 3, 5})
    ) -> dict[str, Any]:
        """Poll the status endpoint until every operation's status is in ``final``
        (status 2 also means "retry pending"); return the detailed status."""
        status: dict[str, Any] = {}

        async def done() -> bool:
            nonlocal status
            code, status = await self.get(f"/rest/V1/bulk/{bulk_uuid}/detailed-status")
            return code == 200 and all(op["status"] in final for op in status["operations_list"])

        await self.wait_for(done)
        return status


@pytest.fixture
def transport_kind() -> str:
    """Which transport a stack runs on; a test module overrides it to run on both."""
    return "rabbitmq"


@pytest.fixture
async def make_stack(
    transport_kind: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_server: StartServer,
    broker: aiormq.abc.AbstractChannel,
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(aiohttp.ClientSession())

        async def make(
            with_consumer: bool = True,
            shop: ShopConfig | None = None,
            upstream: web.Application | None = None,
            **sections: Any,
        ) -> Stack:
            """A stack in front of the demo shop, or of ``upstream`` when given."""
            app = upstream or create_shop_app(shop or ShopConfig(write_service_time=0.0))
            shop_url = await start_server(app)
            if transport_kind == "sqlite":
                sections = {"broker": {"url": f"sqlite:///{tmp_path}/queue.db"}} | sections
            settings = make_settings(shop_url, **sections)
            gateway_app = create_app(settings)
            stack = Stack(
                settings=settings,
                gateway=await start_server(gateway_app),
                gateway_admin=gateway_app[ADMIN_URL],
                shop_url=shop_url,
                shop=app.get(SHOP_STATE),  # type: ignore[arg-type]
                http=http,
                broker=broker,
                exits=exits,
            )
            if with_consumer:
                await stack.start_consumer()
            return stack

        yield make
