"""Per-key ordering, end to end: updates to one resource are applied in acceptance order.

The check is the shop's own record: for every product, the prices it applied, in the
order it applied them (a repeat of the same update right after itself is a tolerated
at-least-once duplicate), must be exactly the prices the gateway accepted, in order.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from asyncgate.envelope import operation_id
from asyncgate.store import create_store
from consumer.operator import dead_letters
from tests.e2e.conftest import Stack, spawn
from tests.e2e.test_operations import fetch, metric

KEYS = [f"SKU-{k:02}" for k in range(10)]
PRODUCTS = "/rest/all/V1/products/"


@pytest.fixture(params=["rabbitmq", "sqlite"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def put(stack: Stack, sku: str, price: int) -> Any:
    return stack.post(f"/rest/all/async/V1/products/{sku}", {"product": {"price": price}}, "PUT")


class Accepted:
    """What the gateway accepted: operation id -> (sku, price), and each sku's prices in order."""

    def __init__(self) -> None:
        self.operations: dict[str, tuple[str, int]] = {}
        self.prices: dict[str, list[int]] = {sku: [] for sku in KEYS}
        self.bulks: list[str] = []

    def add(self, body: dict[str, Any], items: list[tuple[str, int]]) -> None:
        self.bulks.append(body["bulk_uuid"])
        for index, (sku, price) in enumerate(items):
            self.operations[operation_id(body["bulk_uuid"], index)] = (sku, price)
            self.prices[sku].append(price)


async def send_updates(stack: Stack, accepted: Accepted, rounds: int) -> None:
    """Two prices per key per round: as two single PUTs, or as one bulk (both in one bulk).

    Each key's updates are sent one after the other (the next after the last 202), the
    keys concurrently: acceptance order per key is then the order of the prices.
    """
    for r in range(rounds):
        if r % 2 == 0:
            for half in (0, 1):
                price = 2 * r + half
                answers = await asyncio.gather(*(put(stack, sku, price) for sku in KEYS))
                for sku, (code, body) in zip(KEYS, answers, strict=True):
                    assert code == 202, body
                    accepted.add(body, [(sku, price)])
        else:
            items = [(sku, 2 * r + half) for half in (0, 1) for sku in KEYS]
            code, body = await stack.post(
                "/rest/all/async/bulk/V1/products/bySku",
                [{"sku": sku, "product": {"price": price}} for sku, price in items],
                "PUT",
            )
            assert code == 202 and not body["errors"], body
            accepted.add(body, items)


def applied_prices(stack: Stack, accepted: Accepted) -> dict[str, list[int]]:
    """Each sku's prices in the order the shop applied them, consecutive repeats collapsed."""
    out: dict[str, list[int]] = {sku: [] for sku in KEYS}
    for write in stack.shop.applied:
        assert write.request_id is not None
        sku, price = accepted.operations[write.request_id]
        if not out[sku] or out[sku][-1] != price:
            out[sku].append(price)
    return out


async def all_complete(stack: Stack, accepted: Accepted, within: float) -> None:
    async def done() -> bool:
        for uuid in accepted.bulks:
            code, status = await stack.get(f"/rest/V1/bulk/{uuid}/detailed-status")
            if code != 200 or any(op["status"] != 1 for op in status["operations_list"]):
                return False
        return True

    await stack.wait_for(done, within=within)


def assert_applied_in_acceptance_order(stack: Stack, accepted: Accepted) -> None:
    assert applied_prices(stack, accepted) == accepted.prices
    for sku in KEYS:
        assert stack.shop.products[sku]["price"] == accepted.prices[sku][-1]


@contextmanager
def consumers(config: Path, logs: Path, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [spawn("consumer", config, logs / f"consumer{i}.log") for i in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) in (0, -signal.SIGKILL)


def consumer_config(stack: Stack, write_config: Any, **consumer: Any) -> Path:
    broker = stack.settings.broker
    path: Path = write_config(
        stack.shop_url,
        # lease_seconds: how soon the embedded transport gives a dead consumer's messages back
        broker={"url": broker.url, "exchange": broker.exchange, "lease_seconds": 5},
        store={"url": stack.settings.store.url},
        consumer={"concurrency": 16, **consumer},
    )
    return path


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
async def test_200_updates_to_10_keys_apply_in_acceptance_order(
    make_stack: Any, write_config: Any, store_url: str, tmp_path: Path, transport_kind: str
) -> None:
    """Two consumer processes at concurrency 16, random shop latency, injected 503s."""
    if transport_kind == "sqlite" and store_url.startswith("postgres"):
        pytest.skip("the embedded transport is for one host: run with its SQLite store")
    stack: Stack = await make_stack(with_consumer=False, store={"url": store_url})
    await stack.set_latency(0.0, 0.03)
    accepted = Accepted()
    with consumers(consumer_config(stack, write_config), tmp_path, 2):
        sender = asyncio.create_task(send_updates(stack, accepted, rounds=10))
        for _ in range(3):  # 503 waves while the updates flow
            await asyncio.sleep(random.uniform(0.2, 0.6))
            async with stack.http.post(
                stack.shop_url / "_shop/fail",
                json={"status": 503, "count": 6, "path_prefix": PRODUCTS},
            ) as r:
                assert r.status == 200
        await sender
        await all_complete(stack, accepted, within=120)
    assert sum(len(p) for p in accepted.prices.values()) == 200
    assert any(w.path.startswith(PRODUCTS) for w in stack.shop.applied)
    assert not stack.shop.fail_rules, "every injected 503 was met by a replay"
    assert_applied_in_acceptance_order(stack, accepted)


async def test_one_key_is_never_in_flight_twice(make_stack: Any) -> None:
    stack: Stack = await make_stack(consumer={"concurrency": 8})
    await stack.set_latency(0.02, 0.05)
    prices = list(range(12))
    items = [{"sku": "ONE", "product": {"price": p}} for p in prices]
    code, body = await stack.post("/rest/all/async/bulk/V1/products/bySku", items, "PUT")
    assert code == 202
    status = await stack.bulk_done(body["bulk_uuid"], final=frozenset({1}))
    assert len(status["operations_list"]) == len(prices)
    assert stack.shop.max_in_flight == 1
    assert stack.shop.products["ONE"]["price"] == prices[-1]


async def test_an_unordered_route_runs_at_full_concurrency(make_stack: Any) -> None:
    route = {"name": "prices", "match": "PUT /V1/products/*", "ordering": "none"}
    stack: Stack = await make_stack(consumer={"concurrency": 8}, routes=[route])
    await stack.set_latency(0.1, 0.15)
    items = [{"sku": "ONE", "product": {"price": p}} for p in range(40)]
    code, body = await stack.post("/rest/all/async/bulk/V1/products/bySku", items, "PUT")
    assert code == 202
    await stack.bulk_done(body["bulk_uuid"], final=frozenset({1}))
    assert stack.shop.max_in_flight == 8


async def test_order_is_kept_when_a_consumer_is_killed_mid_key(
    make_stack: Any, write_config: Any, tmp_path: Path
) -> None:
    """SIGKILL while replays are in flight: their claims hold the keys until they expire,
    so a request the dead consumer sent cannot land after a later update."""
    stack: Stack = await make_stack(with_consumer=False)
    await stack.set_latency(0.05, 0.1)
    accepted = Accepted()
    await send_updates(stack, accepted, rounds=4)  # 80 updates, 8 per key, all queued
    config = consumer_config(stack, write_config, request_timeout=2)
    with consumers(config, tmp_path, 1) as (first,):
        await stack.wait_for(lambda: len(stack.shop.applied) >= 20, within=60)
        first.send_signal(signal.SIGKILL)
    assert len({w.request_id for w in stack.shop.applied}) < 80, "drained before the kill"
    with consumers(config, tmp_path / "..", 1):
        await all_complete(stack, accepted, within=120)
    assert_applied_in_acceptance_order(stack, accepted)


async def test_an_overtaken_dead_letter_is_requeued_only_when_forced(make_stack: Any) -> None:
    """Requeuing an old update after a newer one applied would undo the newer one."""
    stack: Stack = await make_stack()
    async with stack.http.post(
        stack.shop_url / "_shop/fail", json={"status": 400, "count": 1, "path_prefix": PRODUCTS}
    ) as r:
        assert r.status == 200
    items = [{"sku": "ONE", "product": {"price": p}} for p in (1, 2)]
    code, body = await stack.post("/rest/all/async/bulk/V1/products/bySku", items, "PUT")
    assert code == 202
    status = await stack.bulk_done(body["bulk_uuid"])
    assert [op["status"] for op in status["operations_list"]] == [3, 1]
    store = create_store(stack.settings.store.url)
    await store.open()
    try:
        inspector = await stack.inspector()
        assert await dead_letters(inspector, store, "requeue", None, 10) == 0
        assert stack.shop.products["ONE"]["price"] == 2
        assert await dead_letters(inspector, store, "requeue", None, 10, force=True) == 1
    finally:
        await store.close()
    await stack.wait_for(lambda: stack.shop.products["ONE"]["price"] == 1)


async def test_metrics_show_updates_waiting_behind_a_retry(make_stack: Any) -> None:
    stack: Stack = await make_stack(retry={"max_attempts": 6})
    assert stack.consumer is not None
    metrics_url = stack.consumer.admin_url + "/metrics"

    async def scrape(name: str, **labels: str) -> float:
        return metric((await fetch(metrics_url))[1], name, **labels)

    deferred_before = await scrape("asyncgate_ordering_deferred_total", route="async")
    async with stack.http.post(
        stack.shop_url / "_shop/fail", json={"status": 503, "count": 3, "path_prefix": PRODUCTS}
    ) as r:
        assert r.status == 200
    items = [{"sku": "ONE", "product": {"price": p}} for p in range(4)]
    code, body = await stack.post("/rest/all/async/bulk/V1/products/bySku", items, "PUT")
    assert code == 202

    async def three_waiting() -> bool:
        return await scrape("asyncgate_ordering_waiting_operations") == 3

    await stack.wait_for(three_waiting, within=10)  # the first update is backing off
    assert await scrape("asyncgate_ordering_keys_waiting") == 1
    assert await scrape("asyncgate_ordering_oldest_waiting_age_seconds") > 0
    await stack.bulk_done(body["bulk_uuid"], final=frozenset({1}))

    async def none_waiting() -> bool:
        return await scrape("asyncgate_ordering_waiting_operations") == 0

    await stack.wait_for(none_waiting, within=5)
    # Three 503s keep the key busy longer than a delivery waits in the consumer.
    assert await scrape("asyncgate_ordering_deferred_total", route="async") > deferred_before
    assert stack.shop.products["ONE"]["price"] == 3
