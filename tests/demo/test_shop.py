"""The demo shop behaves like Magento 2's REST API for the endpoints asyncgate exercises."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from demo.payloads import SEED_CUSTOMER
from demo.shop import SHOP_STATE, AppliedWrite, ShopConfig, create_shop_app

SEED = SEED_CUSTOMER

Client = TestClient[Any, Any]


async def make(aiohttp_client: AiohttpClient, **kw: Any) -> Client:
    kw.setdefault("write_service_time", 0.0)
    return await aiohttp_client(create_shop_app(ShopConfig(**kw)))


def customer(email: str) -> dict[str, Any]:
    return {"customer": {"email": email, "firstname": "F", "lastname": "L"}, "password": "P4ss"}


async def test_create_customer_from_seed(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    resp = await client.post("/rest/all/V1/customers", json=SEED)
    assert resp.status == 200
    body = await resp.json()
    assert body["id"] == 1
    assert body["email"] == "async-jdoe1@example.com"
    assert (body["firstname"], body["lastname"]) == ("Jane-async1", "Doe-async1")
    assert body["store_id"] == 0 and body["website_id"] == 1 and body["created_at"]
    assert "password" not in body
    (address,) = body["addresses"]
    assert address["customer_id"] == 1 and address["country_id"] == "US"
    assert address["region"] == {"region_code": "NY", "region": "New York", "region_id": 43}
    assert body["default_billing"] == body["default_shipping"] == str(address["id"])
    # Store segment is optional; ids are sequential.
    resp = await client.post("/rest/V1/customers", json=customer("b@example.com"))
    assert (await resp.json())["id"] == 2
    resp = await client.post("/rest/default/V1/customers", json=customer("c@example.com"))
    assert (await resp.json())["store_id"] == 1


async def test_duplicate_and_invalid_bodies(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    assert (await client.post("/rest/all/V1/customers", json=SEED)).status == 200
    resp = await client.post("/rest/V1/customers", json=SEED)
    assert resp.status == 400
    assert await resp.json() == {
        "message": "A customer with the same email address already exists in an associated website."
    }
    for data in (b"{not json", b"", b"[]", b'{"customer": {}}', b'{"customer": {"email": ""}}'):
        resp = await client.post("/rest/V1/customers", data=data)
        assert resp.status == 400, data
        assert isinstance((await resp.json())["message"], str)
    stats = await (await client.get("/_shop/stats")).json()
    assert stats["customers"] == 1 and stats["writes"] == 1


async def test_get_customer(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    created = await (await client.post("/rest/all/V1/customers", json=SEED)).json()
    for path in ("/rest/all/V1/customers/1", "/rest/V1/customers/1"):
        resp = await client.get(path)
        assert resp.status == 200 and await resp.json() == created
    resp = await client.get("/rest/all/V1/customers/42")
    assert resp.status == 404
    assert await resp.json() == {
        "message": "No such entity with %fieldName = %fieldValue",
        "parameters": {"fieldName": "customerId", "fieldValue": 42},
    }


async def test_search_customers(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    for email in ("ann@example.com", "bob@example.com", "ann@other.org"):
        assert (await client.post("/rest/V1/customers", json=customer(email))).status == 200
    f = "searchCriteria[filterGroups][0][filters][0]"

    async def search(params: dict[str, str]) -> dict[str, Any]:
        resp = await client.get("/rest/all/V1/customers/search", params=params)
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result

    everyone = await search({})
    assert everyone["total_count"] == 3 and [c["id"] for c in everyone["items"]] == [1, 2, 3]
    eq = {f"{f}[field]": "email", f"{f}[value]": "BOB@example.com", f"{f}[conditionType]": "eq"}
    found = await search(eq)
    assert found["total_count"] == 1 and found["items"][0]["email"] == "bob@example.com"
    assert found["search_criteria"] == {
        "filter_groups": [
            {"filters": [{"condition_type": "eq", "field": "email", "value": "BOB@example.com"}]}
        ]
    }
    like = {f"{f}[field]": "email", f"{f}[value]": "ann@%", f"{f}[conditionType]": "like"}
    assert {c["email"] for c in (await search(like))["items"]} == {
        "ann@example.com",
        "ann@other.org",
    }
    none = await search({**eq, f"{f}[value]": "nobody@example.com"})
    assert none == {**none, "items": [], "total_count": 0}
    resp = await client.get(
        "/rest/V1/customers/search", params={**eq, f"{f}[conditionType]": "regexp"}
    )
    assert resp.status == 400


async def test_product_upsert(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    resp = await client.put(
        "/rest/all/V1/products/24-MB01",
        json={"product": {"sku": "ignored", "name": "Joust Duffle Bag", "price": 34}},
    )
    assert resp.status == 200
    first = await resp.json()
    assert (first["sku"], first["name"], first["price"]) == ("24-MB01", "Joust Duffle Bag", 34)
    resp = await client.put("/rest/V1/products/24-MB01", json={"product": {"price": 40}})
    second = await resp.json()
    assert (second["id"], second["name"], second["price"]) == (first["id"], first["name"], 40)
    assert (await client.put("/rest/V1/products/x", json={"nope": 1})).status == 400
    stats = await (await client.get("/_shop/stats")).json()
    assert stats == {"customers": 0, "products": 1, "writes": 2, "max_in_flight": 1}


async def test_auth_required(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client, bearer_tokens=frozenset({"t0ken"}))
    denied = {
        "message": "The consumer isn't authorized to access %resources.",
        "parameters": {"resources": "Magento_Customer::manage"},
    }
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "OAuth x=1"}):
        resp = await client.post("/rest/V1/customers", json=SEED, headers=headers)
        assert resp.status == 401 and await resp.json() == denied
        assert (await client.get("/rest/V1/customers/1", headers=headers)).status == 401
    good = {"Authorization": "Bearer t0ken"}
    assert (await client.post("/rest/V1/customers", json=SEED, headers=good)).status == 200
    assert (await client.get("/rest/V1/customers/1", headers=good)).status == 200
    assert (await client.get("/_shop/stats")).status == 200  # control endpoints are open

    client = await make(aiohttp_client, require_auth=True)  # any credentials will do
    assert (await client.get("/rest/V1/customers/search")).status == 401
    resp = await client.get("/rest/V1/customers/search", headers={"Authorization": "OAuth a=b"})
    assert resp.status == 200


async def test_fail_injection(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    rule = {"status": 503, "count": 2, "path_prefix": "/rest/all/V1/customers"}
    assert (await client.post("/_shop/fail", json=rule)).status == 200
    # Writes elsewhere are not affected and don't use up the rule.
    assert (await client.put("/rest/all/V1/products/s", json={"product": {}})).status == 200
    for _ in range(2):
        resp = await client.post("/rest/all/V1/customers", json=SEED)
        assert resp.status == 503 and "message" in await resp.json()
    assert (await client.post("/rest/all/V1/customers", json=SEED)).status == 200
    stats = await (await client.get("/_shop/stats")).json()
    assert (stats["customers"], stats["writes"]) == (1, 2)
    assert (await client.post("/_shop/fail", json={"status": 200})).status == 400
    assert (await client.post("/_shop/fail", data=b"nope")).status == 400


async def test_write_lock_serialises_writes(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client, write_service_time=0.05)
    started = time.monotonic()
    writes = [client.post("/rest/V1/customers", json=customer(f"c{i}@x.io")) for i in range(5)]

    async def read_during_writes() -> float:
        await asyncio.sleep(0.06)
        t0 = time.monotonic()
        assert (await client.get("/rest/V1/customers/search")).status == 200
        return time.monotonic() - t0

    reader = asyncio.create_task(read_during_writes())
    responses = await asyncio.gather(*writes)
    read_time = await reader
    elapsed = time.monotonic() - started
    assert all(r.status == 200 for r in responses)
    assert elapsed >= 0.25
    assert read_time < 0.15  # reads don't wait for the write lock
    stats = await (await client.get("/_shop/stats")).json()
    assert stats["max_in_flight"] == 5 and stats["writes"] == 5
    assert sorted(c["id"] for c in client.app[SHOP_STATE].customers.values()) == [1, 2, 3, 4, 5]


async def test_latency_injection(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    assert (await client.post("/_shop/latency", json={"min": 0.1, "max": 0.0})).status == 400
    assert (await client.post("/_shop/latency", json={"min": 0.05, "max": 0.06})).status == 200
    started = time.monotonic()
    assert (await client.post("/rest/V1/customers", json=SEED)).status == 200
    assert time.monotonic() - started >= 0.05


async def test_applied_log(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    raw = json.dumps(SEED).encode()
    headers = {
        "Authorization": "Bearer abc",
        "X-Request-Id": "req-1",
        "Idempotency-Key": "idem-1",
        "Content-Type": "application/json",
        "X-Other": "not kept",
    }
    assert (await client.post("/rest/all/V1/customers", data=raw, headers=headers)).status == 200
    assert (await client.post("/rest/V1/customers", data=raw)).status == 400  # not applied
    product = {"product": {"name": "n"}}
    assert (await client.put("/rest/V1/products/a%2Fb", json=product)).status == 200
    applied = await (await client.get("/_shop/applied")).json()
    assert len(applied) == 2
    first, second = applied
    assert first["method"] == "POST" and first["path"] == "/rest/all/V1/customers"
    assert first["store"] == "all" and first["request_id"] == "req-1"
    assert first["body_sha256"] == hashlib.sha256(raw).hexdigest()
    assert first["headers_snapshot"] == {k: v for k, v in headers.items() if k != "X-Other"}
    assert isinstance(first["at"], float) and first["at"] <= second["at"]
    assert (second["method"], second["store"], second["request_id"]) == ("PUT", None, None)
    assert isinstance(client.app[SHOP_STATE].applied[0], AppliedWrite)
    assert "a/b" in client.app[SHOP_STATE].products


async def test_unknown_routes(aiohttp_client: AiohttpClient) -> None:
    client = await make(aiohttp_client)
    no_route = {"message": "Request does not match any route."}
    for method, path in (
        ("GET", "/rest/V1/nothing"),
        ("DELETE", "/rest/V1/customers"),
        ("POST", "/rest/all/async/V1/customers"),
        ("POST", "/rest/async/V1/customers"),
        ("GET", "/"),
    ):
        resp = await client.request(method, path, json=SEED)
        assert resp.status == 404 and await resp.json() == no_route, (method, path)
    assert client.app[SHOP_STATE].applied == []


async def test_oauth_is_checked_like_magento(aiohttp_client: AiohttpClient) -> None:
    from oauthlib.oauth1 import Client as OAuthClient

    from asyncgate.settings import IntegrationSettings, Secret

    erp = IntegrationSettings("erp", "ck-erp", Secret("cs"), "at-erp", Secret("ats"))
    client = await make(aiohttp_client, integrations=(erp,))
    url = str(client.make_url("/rest/all/V1/customers"))
    signer = OAuthClient(
        "ck-erp", client_secret="cs", resource_owner_key="at-erp", resource_owner_secret="ats"
    )
    _, headers, _ = signer.sign(url, http_method="POST")
    response = await client.post("/rest/all/V1/customers", json=SEED, headers=headers)
    assert response.status == 200
    again = await client.post("/rest/all/V1/customers", json=SEED, headers=headers)
    assert again.status == 401  # the nonce was used
    _, other, _ = signer.sign(url.replace("/V1/", "/async/V1/"), http_method="POST")
    wrong_url = await client.post("/rest/all/V1/customers", json=SEED, headers=other)
    assert wrong_url.status == 401
    assert (await wrong_url.json())["message"] == "The signature is invalid. Verify and try again."
