"""Bulk status end to end, on both store backends: shapes, transitions, redelivery, operator CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asyncgate.envelope import Envelope, operation_id
from asyncgate.transport import Outgoing
from demo.payloads import seed_customer
from tests.e2e.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]
SHORT_OPERATION = {"id", "status", "result_message", "error_code"}


@pytest.fixture(params=["rabbitmq", "sqlite"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on RabbitMQ and on the embedded SQLite transport."""
    return str(request.param)


DETAILED_OPERATION = SHORT_OPERATION | {
    "bulk_uuid",
    "topic_name",
    "serialized_data",
    "result_serialized_data",
}
BULK = {
    "bulk_id",
    "description",
    "operation_count",
    "start_time",
    "user_type",
    "user_id",
    "operations_list",
}


async def test_every_status_and_magento_shapes(make_stack: Any, store_url: str) -> None:
    stack: Stack = await make_stack(store={"url": store_url}, retry={"max_attempts": 1})
    code, first = await stack.post("/rest/all/async/V1/customers", seed_customer(1))
    assert code == 202
    await stack.bulk_done(first["bulk_uuid"])
    async with stack.http.post(
        stack.shop_url / "_shop/fail",
        json={"status": 503, "count": 1, "path_prefix": "/rest/all/V1/customers"},
    ) as r:
        assert r.status == 200
    items = [seed_customer(2), seed_customer(1), "not an object"]
    code, bulk = await stack.post("/rest/all/async/bulk/V1/customers/byCustomerId", items)
    assert code == 202  # no item carries customerId: all rejected
    # One attempt allowed and the shop answers 503: retriably failed (2).
    code, failing = await stack.post("/rest/all/async/bulk/V1/customers", [seed_customer(3)])
    assert code == 202
    status = await stack.bulk_done(failing["bulk_uuid"])
    assert set(status) == BULK
    assert status["operation_count"] == 1 and status["user_type"] == 2
    op = status["operations_list"][0]
    assert set(op) == DETAILED_OPERATION
    assert (op["status"], op["error_code"]) == (2, 503)
    assert json.loads(op["serialized_data"])["customer"]["email"] == "async-jdoe3@example.com"
    # A duplicate email: the shop's 400 makes it not retriably failed (3).
    code, duplicate = await stack.post("/rest/all/async/bulk/V1/customers", [seed_customer(1)])
    status = await stack.bulk_done(duplicate["bulk_uuid"])
    assert status["operations_list"][0]["status"] == 3
    code, short = await stack.get(f"/rest/all/V1/bulk/{duplicate['bulk_uuid']}/status")
    assert code == 200 and all(set(op) == SHORT_OPERATION for op in short["operations_list"])
    for n in (1, 2, 3, 4, 5):
        code, count = await stack.get(f"/rest/V1/bulk/{failing['bulk_uuid']}/operation-status/{n}")
        assert code == 200 and count == (1 if n == 2 else 0)
    rejected = await stack.bulk_done(bulk["bulk_uuid"])
    assert [op["status"] for op in rejected["operations_list"]] == [5, 5, 5]
    done = await stack.bulk_done(first["bulk_uuid"])
    assert done["operations_list"][0]["status"] == 1

    query = (
        "/rest/V1/bulk?searchCriteria[filterGroups][0][filters][0][field]=status"
        "&searchCriteria[filterGroups][0][filters][0][value]=5"
        "&searchCriteria[filterGroups][0][filters][0][conditionType]=eq"
        "&searchCriteria[pageSize]=10&searchCriteria[currentPage]=1"
    )
    code, found = await stack.get(query)
    assert code == 200 and found["total_count"] == 1
    assert found["items"][0]["bulk_id"] == bulk["bulk_uuid"]
    assert set(found) == {"items", "search_criteria", "total_count"}


async def test_unknown_uuid_passes_through_to_the_shop(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    code, body = await stack.get("/rest/V1/bulk/00000000-0000-4000-8000-000000000000/status")
    assert (code, body) == (404, {"message": "Request does not match any route."})


async def test_redelivery_of_a_completed_operation_is_not_replayed(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    code, body = await stack.post("/rest/all/async/V1/customers", seed_customer(1))
    assert code == 202
    await stack.bulk_done(body["bulk_uuid"])
    # The same operation delivered again, as after a consumer died before its ack.
    op_id = operation_id(body["bulk_uuid"], 0)
    again = Envelope(
        operation_id=op_id,
        bulk_uuid=body["bulk_uuid"],
        index=0,
        route="async",
        queue="default",
        method="POST",
        path="/rest/all/V1/customers",
        query="",
        headers=(("Authorization", "Bearer admin-token"),),
        body=json.dumps(seed_customer(1)),
        client="127.0.0.1",
        received_at=time.time(),
    )
    await (await stack.inspector()).publish([Outgoing("default", again.to_bytes(), op_id)])

    async def drained() -> bool:
        return await stack.depth("work") == 0

    await stack.wait_for(drained)
    await asyncio.sleep(0.3)
    assert len(stack.shop.applied) == 1


async def test_cli_bulk_retry_and_dead_letter_requeue(
    make_stack: Any, write_config: Any, store_url: str
) -> None:
    stack: Stack = await make_stack(store={"url": store_url}, retry={"max_attempts": 1})
    async with stack.http.post(
        stack.shop_url / "_shop/fail", json={"status": 503, "count": 2}
    ) as r:
        assert r.status == 200
    code, body = await stack.post(
        "/rest/all/async/bulk/V1/customers", [seed_customer(1), seed_customer(2)]
    )
    assert code == 202
    status = await stack.bulk_done(body["bulk_uuid"])
    assert [op["status"] for op in status["operations_list"]] == [2, 2]

    async def parked(n: int) -> bool:
        return await stack.depth("dead") == n

    await stack.wait_for(lambda: parked(2))
    config = write_config(
        stack.shop_url,
        broker={"exchange": stack.settings.broker.exchange, "url": stack.settings.broker.url},
        store={"url": store_url},
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "consumer", "--config", str(config), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = await asyncio.to_thread(cli, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["bulk_uuid"] for r in rows} == {body["bulk_uuid"]}
    assert {r["reason"] for r in rows} == {"dead_lettered"}
    assert await stack.depth("dead") == 2  # listing gives them back

    retried = await asyncio.to_thread(cli, "bulk", "retry", body["bulk_uuid"])
    assert retried.returncode == 0, retried.stderr
    assert "requeued 2" in retried.stderr
    done = await stack.bulk_done(body["bulk_uuid"], final=frozenset({1}))
    assert [op["status"] for op in done["operations_list"]] == [1, 1]
    assert len(stack.shop.customers) == 2
    assert await stack.depth("dead") == 0
