"""Drain: how fast the consumer replays a full queue, and how close it keeps a slow shop
to the shop's own capacity.

Operations are queued first with the consumer stopped; then the consumer starts
and the upstream counts the writes.  The rate is taken between 10% and 90% of
the backlog, so start-up and the last stragglers don't dilute it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from bench.common import (
    AUTH,
    Procs,
    Row,
    delete_topology,
    feed,
    make_stack,
    start_shop,
    start_upstream,
    writes_at,
)

SHOP_SERVICE_TIME = 0.005  # seconds per write behind the demo shop's one lock


async def drain_rate(stats_url: str, total: int, before: int, within: float) -> float:
    """Writes/s between 10% and 90% of ``total`` new writes at ``stats_url``."""
    low, high = before + total // 10, before + total * 9 // 10
    t_low: float | None = None
    w_low = 0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        w = await writes_at(stats_url)
        now = time.monotonic()
        if t_low is None and w >= low:
            t_low, w_low = now, w
        if w >= high and t_low is not None and now > t_low:
            return (w - w_low) / (now - t_low)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"drain of {total} not done within {within:.0f} s")


async def shop_capacity(shop: str, seconds: float, clients: int = 16) -> float:
    """Writes/s the demo shop takes directly, at ``clients`` concurrent writers."""
    from demo.payloads import seed_customer

    before = await writes_at(shop + "/_shop/stats")
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            body = seed_customer(next(counter), "capacity")
            async with http.post(shop + "/rest/all/V1/customers", json=body, headers=AUTH) as r:
                await r.read()

    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    took = time.monotonic() - started
    return (await writes_at(shop + "/_shop/stats") - before) / took


async def _drain(
    procs: Procs, exchanges: list[str], name: str, upstream: str, stats: str, total: int
) -> float:
    """Queue ``total`` operations with no consumer running, then time its drain."""
    stack = make_stack(procs, name, upstream)
    exchanges.append(stack.exchange)
    await stack.start_gateway()
    await feed(stack.gateway_url, 0, total, 500, name)
    before = await writes_at(upstream + stats)
    await stack.start_consumer()
    rate = await drain_rate(upstream + stats, total, before, 120)
    stack.stop()
    return rate


async def run(workdir: Path, quick: bool) -> list[Row]:
    fast_total = 3000 if quick else 10000
    shop_total = 400 if quick else 1000
    procs = Procs(workdir)
    exchanges: list[str] = []
    try:
        upstream = await start_upstream(procs)
        fast = await _drain(procs, exchanges, "drain-fast", upstream, "/_stats", fast_total)
        shop = await start_shop(procs, SHOP_SERVICE_TIME)
        capacity = await shop_capacity(shop, 2 if quick else 4)
        slow = await _drain(procs, exchanges, "drain-shop", shop, "/_shop/stats", shop_total)
    finally:
        procs.stop_all()
        for exchange in exchanges:
            await delete_topology(exchange)
    ratio = slow / capacity
    cmd = "python -m bench --only drain"
    return [
        Row(
            name="Drain, fast upstream (RabbitMQ, SQLite store)",
            load="asyncio bulk feeder, then the consumer alone",
            figure=f"{fast:,.0f} replays/s (backlog {fast_total:,}, consumer concurrency 16)",
            ratio="(the upstream is not the limit here)",
            command=f"{cmd}: {fast_total:,} queued in bulks of 500, bench/upstream.py upstream",
        ),
        Row(
            name="Drain, demo shop as the bottleneck",
            load="asyncio bulk feeder, then the consumer alone; shop capacity by 16 direct clients",
            figure=(
                f"{slow:,.1f} replays/s against a shop capacity of {capacity:,.1f} writes/s"
                f" ({SHOP_SERVICE_TIME * 1000:.0f} ms per write, one lock)"
            ),
            ratio=f"drain / capacity {ratio:.3f}",
            target="≥ 0.95",
            met=ratio >= 0.95,
            command=(
                f"{cmd}: `python -m demo.shop --write-service-time {SHOP_SERVICE_TIME}`,"
                f" {shop_total:,} queued"
            ),
        ),
    ]
