"""Fixtures of the fault suite: the form (short in ``make test``, long in ``make faults``),
private RabbitMQ and PostgreSQL instances to restart, fault proxies, the stack, the report.

``ASYNCGATE_FAULTS=long`` selects the long form, which also writes ``FAULTS.md``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.shop import SHOP_STATE, ShopConfig, create_shop_app
from tests.conftest import BROKER_URL, StartServer
from tests.faults.faultproxy import FaultProxy
from tests.faults.harness import FaultStack, Figures
from tests.faults.load import LoadClient
from tests.faults.report import write_report
from tests.faults.services import PrivatePostgres, PrivateRabbit, private_postgres, private_rabbit

LONG = os.environ.get("ASYNCGATE_FAULTS", "short") == "long"
ROOT = Path(__file__).resolve().parents[2]


def by_form(short: Any, long: Any) -> Any:
    return long if LONG else short


@pytest.fixture(scope="session")
def figures() -> Iterator[list[Figures]]:
    collected: list[Figures] = []
    yield collected
    if collected:
        target = ROOT / "FAULTS.md" if LONG else ROOT / ".pytest_cache" / "FAULTS.short.md"
        target.parent.mkdir(exist_ok=True)
        write_report(target, collected, "long" if LONG else "short")


@pytest.fixture(scope="session")
def rabbit() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the suite's own: restarting it disturbs nobody."""
    with private_rabbit() as node:
        yield node


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as cluster:
        yield cluster


@dataclass
class Rig:
    """What a scenario builds its stack from."""

    make: Callable[..., Awaitable[FaultStack]]
    proxy: Callable[[str, int], Awaitable[FaultProxy]]
    load: Callable[[FaultStack], LoadClient]
    figures: list[Figures]


@pytest.fixture
async def rig(
    tmp_path: Path,
    write_config: Callable[..., Path],
    start_server: StartServer,
    figures: list[Figures],
) -> AsyncIterator[Rig]:
    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        )

        async def proxy(host: str, port: int) -> FaultProxy:
            p = FaultProxy(host, port)
            await p.start()
            exits.push_async_callback(p.close)
            return p

        async def make(
            transport: str = "rabbitmq",
            broker_url: str = BROKER_URL,
            store_url: str | None = None,
            shop_latency: tuple[float, float] = (0.005, 0.02),
            upstream_via: FaultProxy | None = None,
            consumer: dict[str, Any] | None = None,
            start: bool = True,
            **sections: Any,
        ) -> FaultStack:
            app = create_shop_app(ShopConfig(write_service_time=0.0))
            app[SHOP_STATE].latency = shop_latency
            shop_url = await start_server(app)
            if upstream_via is not None:
                upstream_via.target = (shop_url.host or "127.0.0.1", shop_url.port or 80)
                shop_url = shop_url.with_port(upstream_via.port)
            if transport == "sqlite":
                broker_url = f"sqlite:///{tmp_path}/queue.db"
            stack = FaultStack(
                tmp=tmp_path,
                http=http,
                shop=app[SHOP_STATE],
                shop_url=shop_url,
                write_config=write_config,
                broker_url=broker_url,
                store_url=store_url or f"sqlite:///{tmp_path}/store.db",
                transport=transport,
                # A short request timeout also keeps a killed consumer's ordering claims short.
                consumer_sections={"concurrency": 16, "request_timeout": 5, **(consumer or {})},
                extra_sections=sections,
            )
            stack.make_config()
            exits.push_async_callback(stack.close)
            if start:
                await stack.start_gateway()
                await stack.start_consumer()
            return stack

        def load(stack: FaultStack) -> LoadClient:
            return LoadClient(http, lambda: stack.gateway, uuid.uuid4().hex[:8])

        yield Rig(make, proxy, load, figures)
