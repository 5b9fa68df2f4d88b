"""Faults under continuous load, each scenario ending in a reconciliation (see harness.py).

Short form by default (``make test``); ``ASYNCGATE_FAULTS=long`` (``make faults``) runs
the long form and writes FAULTS.md.  Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sqlite3
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from asyncgate.envelope import Envelope
from asyncgate.transport import Outgoing
from demo.shop import FailRule
from tests.faults.conftest import LONG, Rig, by_form
from tests.faults.harness import Figures
from tests.faults.services import PrivatePostgres, PrivateRabbit

pytestmark = [pytest.mark.faults, pytest.mark.timeout(by_form(180, 900))]

CONCURRENCY = 16
# Both transports in the long form; the short form keeps CI time down with RabbitMQ only,
# except for the cheap scenarios.
BOTH = ["rabbitmq", "sqlite"]
LONG_BOTH = BOTH if LONG else ["rabbitmq"]


def record(rig: Rig, figures: Figures) -> None:
    rig.figures.append(figures)
    figures.check()


async def background(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)
    return task


# --- consumer SIGKILL ----------------------------------------------------------------------
@pytest.mark.parametrize("transport", LONG_BOTH)
async def test_consumer_sigkilled_ten_times_during_drain(rig: Rig, transport: str) -> None:
    kills, ops = 10, by_form(800, 4000)
    stack = await rig.make(
        transport,
        start=False,
        shop_latency=(0.05, 0.2),  # about 130 replays/s at concurrency 16
        broker={"lease_seconds": 3},  # the embedded queue hands a dead consumer's work back
    )
    await stack.start_gateway()
    load = rig.load(stack)
    await load.run(ops, rate=2000, workers=8)
    for k in range(kills):
        await stack.start_consumer()
        before = len(stack.shop.applied)
        await stack.wait_for(lambda: len(stack.shop.applied) > before, 60, f"kill {k}")  # noqa: B023
        # A random moment: before a replay, during one, after the answer, before the ack.
        await asyncio.sleep(random.uniform(0.05, 0.5))
        await stack.kill_consumer()
    assert len(stack.shop.applied) < len(load.accepted), "the drain ended before the last kill"
    await stack.start_consumer()
    record(
        rig,
        await stack.reconcile(
            "consumer SIGKILL x10 mid-drain",
            f"{kills} x SIGKILL of the consumer at random moments",
            load,
            duplicate_bound=kills * CONCURRENCY,
            bound_reason=f"kills x concurrency = {kills} x {CONCURRENCY}",
        ),
    )


# --- RabbitMQ restarts ---------------------------------------------------------------------
async def _restart(node: PrivateRabbit, down: float) -> None:
    await asyncio.to_thread(node.stop_app)
    await asyncio.sleep(down)
    await asyncio.to_thread(node.start_app)


async def test_rabbitmq_restarted_during_intake_and_drain(rig: Rig, rabbit: PrivateRabbit) -> None:
    restarts, ops, rate = by_form(2, 3), by_form(400, 3000), by_form(60, 100)
    stack = await rig.make(
        broker_url=rabbit.url,
        shop_latency=(0.02, 0.06),
        # Slower than the intake, so that a backlog is left to drain through restarts.
        consumer={"rate_limit": rate * 2 // 3},
    )
    load = rig.load(stack)
    intake = await background(load.run(ops, rate=rate))
    for _ in range(restarts):  # during intake
        await asyncio.sleep(ops / rate / (restarts + 1))
        await _restart(rabbit, 1.5)
    await intake
    backlog = len(load.accepted) - len(stack.shop.applied)
    assert backlog > 0, "nothing left to drain"
    for _ in range(restarts):  # during the drain
        await _restart(rabbit, 1.5)
        await asyncio.sleep(1)
    record(
        rig,
        await stack.reconcile(
            "RabbitMQ restarted",
            f"{restarts} node restarts (stop_app/start_app, 1.5 s down) during intake,"
            f" {restarts} during the drain (backlog {backlog})",
            load,
            duplicate_bound=2 * restarts * CONCURRENCY,
            bound_reason=f"restarts x concurrency = {2 * restarts} x {CONCURRENCY}",
        ),
    )


# --- gateway SIGKILL -----------------------------------------------------------------------
@pytest.mark.parametrize("transport", LONG_BOTH)
async def test_gateway_sigkilled_during_intake(rig: Rig, transport: str) -> None:
    kills, ops, rate = by_form(3, 8), by_form(600, 3000), by_form(80, 120)
    stack = await rig.make(transport)
    load = rig.load(stack)
    intake = await background(load.run(ops, rate=rate, workers=16))
    for _ in range(kills):
        await asyncio.sleep(random.uniform(0.5, 1.5) * ops / rate / (kills + 1))
        await stack.kill_gateway()
        await asyncio.sleep(0.3)
        await stack.start_gateway()
    await intake
    assert load.unanswered, "no request was caught by a kill"
    record(
        rig,
        await stack.reconcile(
            "gateway SIGKILL during intake",
            f"{kills} x SIGKILL of the gateway mid-request, restarted 0.3 s later",
            load,
            duplicate_bound=0,
            bound_reason="0: the consumer is untouched",
        ),
    )


# --- network faults through the TCP fault proxy ----------------------------------------------
async def test_network_faults_between_processes_broker_and_upstream(rig: Rig) -> None:
    heartbeat = 2
    broker = await rig.proxy("127.0.0.1", 5672)
    upstream = await rig.proxy("127.0.0.1", 9)  # retargeted at the shop by make()
    stack = await rig.make(
        broker_url=f"amqp://guest:guest@127.0.0.1:{broker.port}/?heartbeat={heartbeat}",
        upstream_via=upstream,
        shop_latency=(0.01, 0.03),
        consumer={"request_timeout": 2},
        retry={"base_delay": 1, "max_delay": 2, "delay_tiers": [1, 2], "max_attempts": 30},
    )
    await stack.wait_for(stack.consumer_ready, 30, "consumer ready")
    ops, rate = by_form(600, 2400), 30
    load = rig.load(stack)
    intake = await background(load.run(ops, rate=rate, within=120))
    faults: list[str] = []
    window = by_form(2.0, 6.0)

    broker.latency = upstream.latency = 0.05
    await asyncio.sleep(window)
    broker.latency = upstream.latency = 0.0
    faults.append(f"50 ms latency on both links for {window:g} s")

    for _ in range(2):
        broker.reset()
        await asyncio.sleep(2)
    upstream.reset()
    faults.append("broker connections reset x2, upstream connections reset x1")

    # A blackholed broker: the consumer must notice by missed heartbeats and say so.
    broker.set_mode("blackhole")
    blackholed = time.monotonic()
    await stack.wait_for(lambda: _not(stack.consumer_ready()), 4 * (heartbeat + 1) + 5, "notice")
    noticed = time.monotonic() - blackholed
    await asyncio.sleep(2)
    broker.set_mode("pass")
    await stack.wait_for(stack.consumer_ready, 60, "consumer reconnected")
    faults.append(f"broker blackholed {noticed + 2:.0f} s (noticed after {noticed:.1f} s)")

    broker.set_mode("half_open")
    await asyncio.sleep(window)
    broker.set_mode("pass")
    faults.append(f"broker half-open {window:g} s")

    for mode in ("half_open", "blackhole"):
        upstream.set_mode(mode)
        await asyncio.sleep(window)
        upstream.set_mode("pass")
    faults.append(f"upstream half-open {window:g} s, then blackholed {window:g} s")
    await intake
    per_window = int(window / 2) + 1  # replays of one operation within a window
    bound = CONCURRENCY * (3 + 1 + 1 + 2 * per_window)
    record(
        rig,
        await stack.reconcile(
            "network faults (TCP fault proxy)",
            "; ".join(faults),
            load,
            duplicate_bound=bound,
            bound_reason=(
                f"concurrency x (3 resets + blackhole + half-open broker + 2 upstream windows"
                f" x {per_window} timeouts) = {CONCURRENCY} x {bound // CONCURRENCY}"
            ),
            drain_within=180,
        ),
    )


async def _not(check: Any) -> bool:
    return not await check


# --- upstream down, then back ----------------------------------------------------------------
@pytest.mark.parametrize("transport", LONG_BOTH)
async def test_upstream_down_then_back(rig: Rig, transport: str) -> None:
    outage, ops, rate = by_form(6.0, 25.0), by_form(300, 2000), by_form(40, 60)
    upstream = await rig.proxy("127.0.0.1", 9)
    # Retry horizon 1+2+4x8 = 35 s, longer than the outage: nothing may be dead-lettered.
    retry = {"base_delay": 1, "max_delay": 4, "delay_tiers": [1, 2, 4], "max_attempts": 10}
    stack = await rig.make(transport, upstream_via=upstream, retry=retry)
    load = rig.load(stack)
    intake = await background(load.run(ops, rate=rate))
    await asyncio.sleep(ops / rate / 4)
    upstream.set_mode("refuse")
    upstream.reset()
    await asyncio.sleep(outage / 2)
    # Up again, but answering 503 for a while: the other face of "down".
    stack.shop.fail_rules.append(FailRule(503, 10**9, "", "Service Unavailable"))
    upstream.set_mode("pass")
    await asyncio.sleep(outage / 2)
    stack.shop.fail_rules.clear()
    await intake
    record(
        rig,
        await stack.reconcile(
            "upstream down, then back",
            f"upstream refusing connections {outage / 2:g} s, then answering 503 {outage / 2:g} s"
            " (retry horizon 35 s)",
            load,
            duplicate_bound=CONCURRENCY,
            bound_reason=f"concurrency = {CONCURRENCY}: replays cut by the first reset",
            drain_within=120,
        ),
    )


# --- slow upstream, large backlog --------------------------------------------------------------
async def test_slow_upstream_backlog_holds_concurrency_cap_and_rate_limit(rig: Rig) -> None:
    ops, cap, rate = by_form(1500, 10_000), 8, by_form(150, 250)
    stack = await rig.make(
        shop_latency=(0.02, 0.06), consumer={"concurrency": cap, "rate_limit": rate}
    )
    load = rig.load(stack)
    load.max_bulk = 200
    await load.run(ops, rate=5000, workers=4)
    assert len(load.accepted) == ops
    figures = await stack.reconcile(
        f"slow upstream, backlog of {ops}",
        f"upstream 20-60 ms per write; backlog of {ops} under concurrency {cap},"
        f" rate limit {rate}/s",
        load,
        duplicate_bound=0,
        bound_reason="0: no fault cuts a replay",
        drain_within=ops / rate * 3 + 30,
    )
    times = sorted(w.at for w in stack.shop.applied)
    peak = max(
        sum(1 for t in times[i : i + 4 * rate] if t - times[i] < 2.0)
        for i in range(0, len(times), 50)
    )
    took = times[-1] - times[0]
    figures.notes.append(
        f"max in flight at the shop {stack.shop.max_in_flight} (cap {cap});"
        f" peak {peak} writes in 2 s (limit {rate}/s + burst {rate});"
        f" average {len(times) / took:.0f}/s over {took:.0f} s"
    )
    record(rig, figures)
    assert stack.shop.max_in_flight <= cap
    assert peak <= 2 * rate + rate + cap


# --- poison messages ----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", BOTH)
async def test_poison_messages_are_dead_lettered_and_the_queue_flows(
    rig: Rig, transport: str
) -> None:
    ops, rate, poisons = by_form(300, 2000), by_form(60, 100), by_form(6, 60)
    stack = await rig.make(transport)
    load = rig.load(stack)
    intake = await background(load.run(ops, rate=rate))
    transport_ = await stack.inspector()
    good = json.loads(_sample_envelope())
    bad: list[bytes] = [b"\x00not json", b"[1, 2]", json.dumps({**good, "v": 2}).encode()]
    bad += [json.dumps({k: v for k, v in good.items() if k != "bulk_uuid"}).encode()]
    bad += [json.dumps({**good, "index": "zero"}).encode(), b"{" * 10_000]
    for i in range(poisons):
        await asyncio.sleep(ops / rate / (poisons + 1))
        await transport_.publish([Outgoing("default", bad[i % len(bad)], f"poison-{i}")])
    await intake
    record(
        rig,
        await stack.reconcile(
            "poison messages",
            f"{poisons} poison messages (not JSON, not an object, v=2, missing/mistyped field,"
            " deep nesting) among the load",
            load,
            duplicate_bound=0,
            bound_reason="0: no fault cuts a replay",
            dead_expected=poisons,
        ),
    )


def _sample_envelope() -> str:
    return Envelope(
        operation_id=str(secrets.token_hex(16)), bulk_uuid="00000000-0000-0000-0000-000000000000",
        index=0, route="async", queue="default", method="PUT",
        path="/rest/all/V1/products/poison", query="", headers=(), body="{}",
        client="127.0.0.1", received_at=time.time(),
    ).to_bytes().decode()  # fmt: skip


# --- store faults -------------------------------------------------------------------------------
def _hold_write_lock(path: str, seconds: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_sqlite_store_locked(rig: Rig) -> None:
    locks, held, ops, rate = by_form(1, 3), 7.0, by_form(300, 1500), by_form(40, 40)
    stack = await rig.make(shop_latency=(0.02, 0.06))
    # Locks at runtime: a store locked past busy_timeout while the consumer migrates its
    # schema at start-up makes it exit, for its supervisor (systemd) to restart.
    await stack.wait_for(stack.consumer_ready, 30, "consumer ready")
    load = rig.load(stack)
    intake = await background(load.run(ops, rate=rate))
    path = stack.store_url.removeprefix("sqlite:///")
    for _ in range(locks):
        await asyncio.sleep(max(1.0, ops / rate / (locks + 1) - held / 2))
        await asyncio.to_thread(_hold_write_lock, path, held)
    await intake
    assert any(r.status == 503 for r in load.requests), "no intake met the lock"
    per_lock = int(held / 5) + 1  # busy_timeout is 5 s: a write fails that often
    record(
        rig,
        await stack.reconcile(
            "SQLite store locked",
            f"{locks} x the store's write lock held {held:g} s by another process"
            " (longer than busy_timeout, 5 s)",
            load,
            duplicate_bound=locks * per_lock * CONCURRENCY,
            bound_reason=f"locks x (held / busy_timeout + 1) x concurrency ="
            f" {locks} x {per_lock} x {CONCURRENCY}",
        ),
    )


async def test_postgres_restarted(rig: Rig, postgres: PrivatePostgres) -> None:
    restarts, down, ops, rate = by_form(2, 3), 2.0, by_form(300, 2000), by_form(40, 50)
    name = f"agfaults_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = urlsplit(postgres.url)._replace(path=f"/{name}").geturl()
    stack = await rig.make(store_url=url, shop_latency=(0.02, 0.06))
    # Restarts at runtime: a store down at start-up makes the consumer exit (as above).
    await stack.wait_for(stack.consumer_ready, 30, "consumer ready")
    load = rig.load(stack)
    intake = await background(load.run(ops, rate=rate))
    for _ in range(restarts):
        await asyncio.sleep(max(1.0, ops / rate / (restarts + 1) - down))
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(down)
        await asyncio.to_thread(postgres.restart_stopped)
    await intake
    per_restart = int(down / 0.5) + 2
    record(
        rig,
        await stack.reconcile(
            "PostgreSQL restarted",
            f"{restarts} x PostgreSQL stopped (fast) for {down:g} s and started again",
            load,
            duplicate_bound=restarts * per_restart * CONCURRENCY,
            bound_reason=f"restarts x redeliveries per outage x concurrency ="
            f" {restarts} x {per_restart} x {CONCURRENCY}",
        ),
    )
