"""Async intake at 64 concurrent clients, against the one-process raw publish ceiling.

The ceiling is what one Python process gets from RabbitMQ at all: a plain aiormq
loop, 64 concurrent publishers, persistent messages of the size the gateway
publishes, mandatory, with confirms, to a quorum queue declared as asyncgate's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiormq
import uvloop
from pamqp.commands import Basic

from bench.common import (
    BROKER_URL,
    PY,
    ROOT,
    Procs,
    Row,
    WrkResult,
    delete_topology,
    make_stack,
    new_exchange,
    run_wrk,
    start_upstream,
)

INTAKE_LUA = ROOT / "bench" / "wrk" / "intake.lua"
INTAKE_PATH = "/rest/all/async/V1/customers"
BULK_LUA = ROOT / "bench" / "wrk" / "intake_bulk.lua"
BULK_PATH = "/rest/all/async/bulk/V1/customers"
BULK_ITEMS = 100
CLIENTS = 64
# About the size of the envelope the gateway publishes for one seed customer.
MESSAGE = b'{"v":1,"body":"' + b"x" * 1100 + b'"}'


async def raw_ceiling(seconds: float, clients: int = CLIENTS) -> tuple[float, float, float]:
    """Publish with confirms from ``clients`` coroutines for ``seconds``: (msg/s, p50, p99)."""
    exchange = new_exchange()
    queue = f"{exchange}.raw"
    conn = await aiormq.connect(BROKER_URL)
    latencies: list[float] = []
    try:
        ch = await conn.channel(publisher_confirms=True)
        await ch.queue_declare(
            queue,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-overflow": "reject-publish"},
        )
        props = Basic.Properties(delivery_mode=2, content_type="application/json")
        deadline = time.monotonic() + seconds

        async def publisher() -> None:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                await ch.basic_publish(
                    MESSAGE, routing_key=queue, properties=props, mandatory=True, timeout=30
                )
                latencies.append(time.monotonic() - t0)

        started = time.monotonic()
        await asyncio.gather(*(publisher() for _ in range(clients)))
        took = time.monotonic() - started
    finally:
        await conn.close()
        await delete_topology(exchange)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    return len(latencies) / took, statistics.median(latencies) * 1000, p99 * 1000


def _ceiling_main(seconds: float) -> None:
    rate, p50, p99 = uvloop.run(raw_ceiling(seconds))
    print(f"{rate} {p50} {p99}")


async def _ceiling_in_child(seconds: float) -> tuple[float, float, float]:
    """Run the ceiling in a process of its own, as the gateway is one."""
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-c",
        f"from bench.intake import _ceiling_main; _ceiling_main({seconds})",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    rate, p50, p99 = (float(x) for x in out.split())
    return rate, p50, p99


def _accepted(r: WrkResult) -> float:
    return (r.requests - r.non_2xx) / r.seconds


async def run(workdir: Path, quick: bool) -> list[Row]:
    seconds = 4 if quick else 8
    procs = Procs(workdir)
    results: dict[str, WrkResult] = {}
    bulk: WrkResult | None = None
    exchanges: list[str] = []
    try:
        upstream = await start_upstream(procs)
        for kind, broker in (("RabbitMQ", BROKER_URL), ("embedded SQLite", "sqlite")):
            stack = make_stack(procs, f"intake-{kind.split()[-1].lower()}", upstream, broker)
            exchanges.append(stack.exchange)
            await stack.start_gateway()
            await run_wrk(stack.gateway_url + INTAKE_PATH, CLIENTS, 1, INTAKE_LUA)
            results[kind] = await run_wrk(
                stack.gateway_url + INTAKE_PATH, CLIENTS, seconds, INTAKE_LUA
            )
            if kind == "RabbitMQ":
                # A bulk of 100 takes longer than wrk's default 2 s timeout at 64 clients.
                bulk = await run_wrk(
                    stack.gateway_url + BULK_PATH, CLIENTS, seconds, BULK_LUA, reply_timeout=30
                )
            stack.stop()
        ceiling, c50, c99 = await _ceiling_in_child(seconds)
    finally:
        procs.stop_all()
        for exchange in exchanges:
            await delete_topology(exchange)
    rows = []
    for kind, r in results.items():
        rate = _accepted(r)
        ratio = rate / ceiling
        row = Row(
            name=f"Async intake, {kind}",
            load="wrk + Lua body (C, one thread)",
            figure=(
                f"{rate:,.0f} accepted ops/s ({r.non_2xx} non-202), p50 {r.p50_ms:.1f} ms,"
                f" p99 {r.p99_ms:.1f} ms at {CLIENTS} clients"
            ),
            ratio=(
                f"{ratio:.2f}x the raw aiormq ceiling ({ceiling:,.0f} msg/s, p50 {c50:.1f} ms,"
                f" p99 {c99:.1f} ms, one process, {CLIENTS} publishers)"
            ),
            command=r.command,
        )
        if kind == "RabbitMQ":
            row.target = "≥ 3,000 ops/s and ≥ 0.5x the raw ceiling"
            row.met = rate >= 3000 and ratio >= 0.5
        else:
            row.target = "(none; the ceiling is RabbitMQ's, shown for scale)"
        rows.append(row)
    assert bulk is not None
    rate = _accepted(bulk) * BULK_ITEMS
    rows.append(
        Row(
            name=f"Async intake, RabbitMQ, bulks of {BULK_ITEMS}",
            load="wrk + Lua body (C, one thread)",
            figure=(
                f"{rate:,.0f} accepted ops/s ({bulk.non_2xx} non-202 requests), request p50"
                f" {bulk.p50_ms:.1f} ms, p99 {bulk.p99_ms:.1f} ms at {CLIENTS} clients"
            ),
            ratio=f"{rate / ceiling:.2f}x the raw aiormq ceiling",
            target="≥ 3,000 ops/s and ≥ 0.5x the raw ceiling",
            met=rate >= 3000 and rate / ceiling >= 0.5,
            command=bulk.command,
        )
    )
    return rows
