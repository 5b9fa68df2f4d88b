"""Shared fixtures: real servers on loopback, real RabbitMQ, real stores; nothing mocked.

Each test gets its own exchange name, so its queues are its own and are deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiormq
import asyncpg
import pytest
import yaml
from aiohttp import web
from yarl import URL

from asyncgate.settings import Settings, settings_from_mapping
from gateway.app import create_app

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
PG_URL = os.environ.get("ASYNCGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_url(database: str) -> str:
    return urlsplit(PG_URL)._replace(path=f"/{database}").geturl()


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(_pg_url("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty store database on each backend: SQLite in tmp_path, a fresh PostgreSQL one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    name = f"asyncgate_test_{secrets.token_hex(6)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


StartServer = Callable[[web.Application], Awaitable[URL]]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float, what: str = "condition"
) -> None:
    """Poll ``check`` (plain or async) until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {within}s")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def exchange_name() -> str:
    return f"agtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def made_settings() -> list[Settings]:
    return []


@pytest.fixture
def make_raw_config(tmp_path: Any, exchange_name: str) -> Callable[..., dict[str, Any]]:
    """The YAML mapping of a test's config: its own exchange, an SQLite store in tmp_path."""

    def make(upstream_url: URL | str = "http://127.0.0.1:9", **sections: Any) -> dict[str, Any]:
        raw = {
            "upstream": {"url": str(upstream_url), "connect_timeout": 2, "read_timeout": 5},
            "broker": {"url": BROKER_URL, "exchange": exchange_name, "confirm_timeout": 5},
            "store": {"url": f"sqlite:///{tmp_path}/store.db"},
            "retry": {"base_delay": 1, "max_delay": 2, "delay_tiers": [1, 2]},
            "gateway": {"admin_listen": "127.0.0.1:0"},
            "consumer": {"admin_listen": "127.0.0.1:0", "depth_interval": 0.2},
        }
        return deep_merge(raw, sections)

    return make


@pytest.fixture
def make_settings(
    make_raw_config: Callable[..., dict[str, Any]], made_settings: list[Settings]
) -> Callable[..., Settings]:
    """Settings for a test (see make_raw_config); their queues are deleted afterwards."""

    def make(upstream_url: URL | str = "http://127.0.0.1:9", **sections: Any) -> Settings:
        settings = settings_from_mapping(make_raw_config(upstream_url, **sections))
        made_settings.append(settings)
        return settings

    return make


@pytest.fixture
def write_config(
    tmp_path: Any, make_raw_config: Callable[..., dict[str, Any]], made_settings: list[Settings]
) -> Callable[..., Path]:
    """A config file for a subprocess, e.g. ``python -m consumer --config PATH``."""

    def write(upstream_url: URL | str = "http://127.0.0.1:9", **sections: Any) -> Path:
        raw = make_raw_config(upstream_url, **sections)
        made_settings.append(settings_from_mapping(raw, os.environ))
        path = Path(tmp_path) / f"config-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Run an aiohttp app on a free loopback port, as the real entry point does."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> URL:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return URL(f"http://127.0.0.1:{port}")

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def start_gateway(start_server: StartServer) -> Callable[[Settings], Awaitable[URL]]:
    async def start(settings: Settings) -> URL:
        return await start_server(create_app(settings))

    return start


def queue_names(settings: Settings) -> list[str]:
    x = settings.broker.exchange
    names = [f"{x}.work.{q}" for q in settings.queues]
    names += [f"{x}.delay.{t}s" for t in settings.retry.delay_tiers]
    return [*names, f"{x}.dead"]


@pytest.fixture(autouse=True)
async def broker(made_settings: list[Settings]) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A channel for inspecting this test's queues; deletes them afterwards."""
    conn = await aiormq.connect(BROKER_URL)
    channel = await conn.channel()
    yield channel
    with contextlib.suppress(aiormq.exceptions.AMQPError):
        await conn.close()
    # A test may have restarted RabbitMQ: clean up on a connection of our own.
    conn = await aiormq.connect(BROKER_URL)
    for settings in made_settings:
        for name in queue_names(settings):
            cleanup = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await cleanup.queue_delete(name)
        for suffix in ("", ".requeue"):
            cleanup = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await cleanup.exchange_delete(settings.broker.exchange + suffix)
    await conn.close()


async def queue_ready(channel: aiormq.abc.AbstractChannel, queue: str) -> int:
    ok = await channel.queue_declare(queue, passive=True)
    return int(ok.message_count or 0)
