"""Async intake and replay end to end: real RabbitMQ, real demo shop, real gateway and consumer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from typing import Any

import pytest

from asyncgate.store import create_store
from asyncgate.transport import Outgoing
from demo.payloads import SEED_CUSTOMER
from tests.e2e.conftest import AUTH, Stack, customer

CANNOT = {"message": "Specified request cannot be processed."}


@pytest.fixture(params=["rabbitmq", "sqlite"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs on RabbitMQ and on the embedded SQLite transport."""
    return str(request.param)


async def test_seed_walkthrough_single_operation_is_replayed_as_the_sync_call(
    make_stack: Any,
) -> None:
    stack: Stack = await make_stack()
    code, body = await stack.post("/rest/all/async/V1/customers", SEED_CUSTOMER)
    assert code == 202
    assert set(body) == {"bulk_uuid", "request_items", "errors"}
    assert body["errors"] is False
    sent = json.dumps(SEED_CUSTOMER).encode()
    assert body["request_items"] == [
        {"id": 0, "data_hash": hashlib.sha256(sent).hexdigest(), "status": "accepted"}
    ]
    await stack.wait_for(lambda: len(stack.shop.applied) == 1)
    applied = stack.shop.applied[0]
    assert (applied.method, applied.path, applied.store) == (
        "POST",
        "/rest/all/V1/customers",
        "all",
    )
    assert applied.body_sha256 == hashlib.sha256(sent).hexdigest()
    assert applied.headers_snapshot["Authorization"] == AUTH["Authorization"]
    assert applied.request_id is not None
    status = await stack.bulk_done(body["bulk_uuid"])
    op = status["operations_list"][0]
    assert op["status"] == 1
    assert op["result_message"] == "200 OK"
    assert json.loads(op["result_serialized_data"])["email"] == "async-jdoe1@example.com"


@pytest.mark.parametrize(
    ("path", "replayed"),
    [
        ("/rest/async/V1/customers", "/rest/V1/customers"),
        ("/rest/default/async/V1/customers", "/rest/default/V1/customers"),
        ("/rest/fr_store/async/V1/customers", "/rest/fr_store/V1/customers"),
    ],
)
async def test_store_code_is_carried_to_the_replay(
    make_stack: Any, path: str, replayed: str
) -> None:
    stack: Stack = await make_stack()
    code, _ = await stack.post(path, SEED_CUSTOMER)
    assert code == 202
    await stack.wait_for(lambda: len(stack.shop.applied) == 1)
    assert stack.shop.applied[0].path == replayed


async def test_bulk_by_param_substitution_and_item_rejection(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    items = [
        {"sku": "24-MB 01", "product": {"name": "Bag", "price": 10}},  # top-level: removed
        {"product": {"sku": "24-MB02", "name": "Other"}},  # inside the entity: kept
        {"product": {"name": "no sku"}},  # unresolvable: rejected on its own
        {"sku": {"not": "scalar"}, "product": {}},
    ]
    code, body = await stack.post("/rest/default/async/bulk/V1/products/bySku", items, method="PUT")
    assert code == 202
    assert body["errors"] is True
    statuses = [i["status"] for i in body["request_items"]]
    assert statuses == ["accepted", "accepted", "rejected", "rejected"]
    rejected = body["request_items"][2]
    assert rejected["error_code"] == 400 and "sku" in rejected["error_message"]
    await stack.wait_for(lambda: len(stack.shop.applied) == 2)
    by_path = {a.path: a for a in stack.shop.applied}
    assert set(by_path) == {
        "/rest/default/V1/products/24-MB 01",
        "/rest/default/V1/products/24-MB02",
    }
    first = json.dumps({"product": {"name": "Bag", "price": 10}}, separators=(",", ":")).encode()
    assert (
        by_path["/rest/default/V1/products/24-MB 01"].body_sha256
        == hashlib.sha256(first).hexdigest()
    )
    assert body["request_items"][0]["data_hash"] == hashlib.sha256(first).hexdigest()
    assert stack.shop.products["24-MB02"]["sku"] == "24-MB02"
    status = await stack.bulk_done(body["bulk_uuid"])
    assert [op["status"] for op in status["operations_list"]] == [1, 1, 5, 5]


async def test_converted_sync_route_answers_202_and_is_replayed(make_stack: Any) -> None:
    stack: Stack = await make_stack(
        routes=[
            {
                "name": "customers-create",
                "match": "POST /rest/{store}/V1/customers",
                "convert_sync": True,
                "queue": "customers",
            }
        ]
    )
    code, body = await stack.post("/rest/all/V1/customers", SEED_CUSTOMER)
    assert code == 202 and "bulk_uuid" in body
    await stack.wait_for(lambda: len(stack.shop.applied) == 1)
    assert stack.shop.applied[0].path == "/rest/all/V1/customers"
    # Other sync routes still pass straight through.
    code, product = await stack.post("/rest/all/V1/products/X1", {"product": {}}, method="PUT")
    assert code == 200 and product["sku"] == "X1"


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_read_methods_on_async_paths_are_refused(make_stack: Any, method: str) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    async with stack.http.request(method, stack.gateway / "rest/all/async/V1/customers") as r:
        assert r.status == 400
        if method != "HEAD":
            assert await r.json() == CANNOT


@pytest.mark.parametrize(
    "path",
    [
        "/rest/all/async/V1/carts/mine/items",
        "/rest/async/V1/customers/me",
        "/rest/all/async/V1/integration/admin/token",
    ],
)
async def test_self_and_token_routes_are_never_queued(make_stack: Any, path: str) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    code, body = await stack.post(path, {"x": 1})
    assert (code, body) == (400, CANNOT)
    assert await stack.depth("work") == 0


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/rest/all/async/V1/customers", b'{"customer": '),
        ("/rest/all/async/V1/customers", b"\xff\xfe not utf-8"),
        ("/rest/all/async/bulk/V1/customers", b'{"not": "an array"}'),
        ("/rest/all/async/bulk/V1/customers", b"[]"),
    ],
)
async def test_bad_bodies_get_400_and_nothing_is_queued(
    make_stack: Any, path: str, payload: bytes
) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    async with stack.http.post(
        stack.gateway.with_path(path),
        data=payload,
        headers={**AUTH, "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400
        assert set(await r.json()) == {"message"}
    assert await stack.depth("work") == 0


async def test_bulk_size_and_body_limits(make_stack: Any) -> None:
    stack: Stack = await make_stack(
        with_consumer=False, intake={"max_bulk_items": 3, "max_body_bytes": 2000}
    )
    code, body = await stack.post(
        "/rest/all/async/bulk/V1/customers", [customer(i) for i in range(4)]
    )
    assert code in (400, 413) and "message" in body
    code, body = await stack.post("/rest/all/async/V1/customers", {"pad": "x" * 5000})
    assert code == 413
    assert await stack.depth("work") == 0


async def test_transient_failures_are_retried_until_success_on_attempt_three(
    make_stack: Any,
) -> None:
    stack: Stack = await make_stack()
    async with stack.http.post(
        stack.shop_url / "_shop/fail",
        json={"status": 503, "count": 2, "path_prefix": "/rest/all/V1/customers"},
    ) as r:
        assert r.status == 200
    code, body = await stack.post("/rest/all/async/V1/customers", SEED_CUSTOMER)
    assert code == 202
    status = await stack.bulk_done(body["bulk_uuid"], final=frozenset({1, 3}))
    assert status["operations_list"][0]["status"] == 1
    assert len(stack.shop.applied) == 1
    store = create_store(stack.settings.store.url)
    await store.open()
    try:
        ops = await store.operations(body["bulk_uuid"])
    finally:
        await store.close()
    assert ops[0].attempts == 3
    assert ops[0].http_status == 200


async def test_permanent_failure_is_not_retried_and_is_dead_lettered(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    code, first = await stack.post("/rest/all/async/V1/customers", SEED_CUSTOMER)
    await stack.bulk_done(first["bulk_uuid"])
    code, second = await stack.post("/rest/all/async/V1/customers", SEED_CUSTOMER)
    assert code == 202
    status = await stack.bulk_done(second["bulk_uuid"])
    op = status["operations_list"][0]
    assert op["status"] == 3
    assert op["result_message"] == (
        "A customer with the same email address already exists in an associated website."
    )
    assert op["error_code"] == 400

    async def parked() -> bool:
        return await stack.depth("dead") == 1

    await stack.wait_for(parked)
    assert len(stack.shop.applied) == 1


async def test_exhausted_retries_are_dead_lettered_with_the_reason(make_stack: Any) -> None:
    stack: Stack = await make_stack(retry={"max_attempts": 2})
    async with stack.http.post(
        stack.shop_url / "_shop/fail", json={"status": 503, "count": 50}
    ) as r:
        assert r.status == 200
    code, body = await stack.post("/rest/all/async/V1/customers", SEED_CUSTOMER)
    assert code == 202

    async def parked() -> bool:
        return await stack.depth("dead") == 1

    await stack.wait_for(parked)
    status = await stack.bulk_done(body["bulk_uuid"])
    op = status["operations_list"][0]
    assert op["status"] == 2
    assert "after 2 attempts" in op["result_message"]
    [letter] = await (await stack.inspector()).dead_letters(10)
    assert letter.headers["x-asyncgate-reason"] == "dead_lettered"
    assert letter.headers["x-asyncgate-last-status"] == "503"
    assert json.loads(letter.body)["bulk_uuid"] == body["bulk_uuid"]
    await letter.requeue()


async def test_unreachable_broker_gives_503_and_nothing_is_accepted(
    make_stack: Any, make_settings: Any, start_gateway: Any
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        settings = make_settings(
            broker={"url": f"amqp://guest:guest@127.0.0.1:{port}/", "confirm_timeout": 0.5}
        )
        gateway = await start_gateway(settings)
        stack: Stack = await make_stack(with_consumer=False)
        async with stack.http.post(
            gateway / "rest/all/async/V1/customers", json=SEED_CUSTOMER, headers=AUTH
        ) as r:
            assert r.status == 503
            assert r.headers["Retry-After"].isdigit()
            assert "message" in await r.json()
    store = create_store(settings.store.url)
    await store.open()
    try:
        assert (
            await store.search(
                "token:" + hashlib.sha256(AUTH["Authorization"].encode()).hexdigest(), [], 10, 1
            )
        )[1] == 0
    finally:
        await store.close()


async def test_concurrency_cap_holds_under_a_burst_of_500(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False, consumer={"concurrency": 8})
    await stack.set_latency(0.005, 0.02)
    code, body = await stack.post(
        "/rest/all/async/bulk/V1/customers", [customer(i) for i in range(500)]
    )
    assert code == 202 and not body["errors"]
    await stack.start_consumer()
    await stack.wait_for(lambda: len(stack.shop.customers) == 500, within=60)
    assert 1 < stack.shop.max_in_flight <= 8
    await asyncio.sleep(0.2)
    assert len(stack.shop.applied) == 500


async def test_poison_messages_are_parked_and_the_queue_keeps_flowing(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    inspector = await stack.inspector()
    await inspector.publish(
        [
            Outgoing("default", b"not json at all", "poison-1"),
            Outgoing("default", b'{"v": 99, "operation_id": "x"}', "poison-2"),
        ]
    )
    code, _ = await stack.post("/rest/all/async/V1/customers", SEED_CUSTOMER)
    assert code == 202
    await stack.wait_for(lambda: len(stack.shop.applied) == 1)

    async def parked() -> bool:
        return await stack.depth("dead") == 2

    await stack.wait_for(parked)
    letters = await inspector.dead_letters(10)
    assert {d.headers["x-asyncgate-reason"] for d in letters} == {"poison"}
    assert any("unknown envelope version 99" in d.headers["x-asyncgate-error"] for d in letters)
    for letter in letters:
        await letter.ack()
