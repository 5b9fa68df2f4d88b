"""Security at the edge: OAuth 1.0a verified on intake and signed anew on replay."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from oauthlib.oauth1 import Client
from pamqp.commands import Basic
from yarl import URL

from asyncgate import oauth1
from asyncgate.settings import IntegrationSettings, Secret
from demo.payloads import seed_customer
from tests.conftest import StartServer
from tests.e2e.conftest import Stack, spawn

INTEGRATION = {
    "name": "erp",
    "consumer_key": "ck-erp-0123456789",
    "consumer_secret": "cs-very-secret-1",
    "access_token": "at-erp-0123456789",
    "access_token_secret": "ats-very-secret-2",
}
SECRETS = (INTEGRATION["consumer_secret"], INTEGRATION["access_token_secret"])


def signed(method: str, url: URL, signature_method: str = "HMAC-SHA256") -> dict[str, str]:
    """An Authorization header as Postman or a PHP integration would make it (oauthlib)."""
    client = Client(
        INTEGRATION["consumer_key"],
        client_secret=INTEGRATION["consumer_secret"],
        resource_owner_key=INTEGRATION["access_token"],
        resource_owner_secret=INTEGRATION["access_token_secret"],
        signature_method=signature_method,
    )
    _, headers, _ = client.sign(str(url), http_method=method)
    return {"Authorization": headers["Authorization"], "Content-Type": "application/json"}


class MagentoLikeOAuthShop:
    """An upstream enforcing Magento's OAuth rules: full URL signed, nonce once, time window."""

    def __init__(self) -> None:
        self.integration = IntegrationSettings(
            name="erp",
            consumer_key=INTEGRATION["consumer_key"],
            consumer_secret=Secret(INTEGRATION["consumer_secret"]),
            access_token=INTEGRATION["access_token"],
            access_token_secret=Secret(INTEGRATION["access_token_secret"]),
        )
        self.nonces: list[str] = []
        self.accepted: list[str] = []
        self.fail_next = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        url = f"http://{request.host}{request.raw_path}"
        try:
            verified = oauth1.verify(
                request.method,
                url,
                request.headers.get("Authorization"),
                await request.read(),
                request.headers.get("Content-Type"),
                {self.integration.consumer_key: self.integration},
                now=time.time(),
            )
        except oauth1.OAuthError as exc:
            return web.json_response({"message": exc.message}, status=401)
        if verified.nonce in self.nonces:
            return web.json_response({"message": "nonce reused"}, status=401)
        self.nonces.append(verified.nonce)
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"message": "try later"}, status=503)
        self.accepted.append(request.path)
        return web.json_response({"id": len(self.accepted)})


async def test_oauth_request_signed_by_oauthlib_is_verified_and_replayed_signed_anew(
    make_stack: Any,
) -> None:
    shop = MagentoLikeOAuthShop()
    shop.fail_next = 1  # the first replay gets 503: the retry must carry a new nonce
    stack: Stack = await make_stack(upstream=shop.app, integrations=[INTEGRATION])
    url = stack.gateway / "rest/all/async/V1/customers"
    for method in ("HMAC-SHA1", "HMAC-SHA256"):
        code, body = await stack.post(
            url.path, seed_customer(1), headers=signed("POST", url, method)
        )
        assert code == 202, body
    await stack.wait_for(lambda: len(shop.accepted) == 2, within=20)
    assert shop.accepted == ["/rest/all/V1/customers"] * 2
    assert len(set(shop.nonces)) == len(shop.nonces) == 3  # 503 + retry + second request


async def test_forged_or_replayed_oauth_requests_get_401_and_queue_nothing(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False, integrations=[INTEGRATION])
    url = stack.gateway / "rest/all/async/V1/customers"
    good = signed("POST", url)
    tampered = {
        **good,
        "Authorization": good["Authorization"].replace('oauth_signature="', 'oauth_signature="x'),
    }
    wrong_url = signed("POST", stack.gateway / "rest/all/V1/customers")
    cases = [
        tampered,
        wrong_url,
        {"Content-Type": "application/json"},
        {"Authorization": "Bearer abc"},
    ]
    for headers in cases:
        code, body = await stack.post(url.path, seed_customer(1), headers=headers)
        assert code == 401 and "message" in body, headers
    code, _ = await stack.post(url.path, seed_customer(1), headers=good)
    assert code == 202
    code, body = await stack.post(url.path, seed_customer(1), headers=good)  # same nonce again
    assert code == 401 and "nonce" in body["message"]
    assert await stack.depth("work") == 1


async def test_no_credentials_are_refused_unless_the_route_allows_guests(make_stack: Any) -> None:
    stack: Stack = await make_stack(
        with_consumer=False,
        routes=[{"name": "guest-carts", "match": "/V1/guest-carts/**", "auth": "guest"}],
    )
    code, body = await stack.post("/rest/all/async/V1/customers", seed_customer(1), headers={})
    assert code == 401 and "message" in body
    code, _ = await stack.post(
        "/rest/all/async/V1/guest-carts/abc/items", {"cartItem": {}}, headers={}
    )
    assert code == 202
    assert await stack.depth("work") == 1


async def test_status_is_visible_only_to_its_creator(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    code, body = await stack.post(
        "/rest/all/async/V1/customers", seed_customer(1), headers={"Authorization": "Bearer alice"}
    )
    assert code == 202
    uuid = body["bulk_uuid"]
    code, status = await stack.get(
        f"/rest/V1/bulk/{uuid}/status", headers={"Authorization": "Bearer alice"}
    )
    assert code == 200 and status["bulk_id"] == uuid
    assert "Bearer alice" not in str(status)
    # Another caller is passed through to the shop, which has never heard of the uuid.
    code, other = await stack.get(
        f"/rest/V1/bulk/{uuid}/status", headers={"Authorization": "Bearer bob"}
    )
    assert code == 404 and other == {"message": "Request does not match any route."}


async def test_per_caller_rate_limit_answers_429_with_retry_after(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False, intake={"rate_limit": 1, "rate_burst": 3})
    alice = {"Authorization": "Bearer alice"}
    codes = []
    for i in range(4):
        code, _ = await stack.post("/rest/all/async/V1/customers", seed_customer(i), headers=alice)
        codes.append(code)
    assert codes == [202, 202, 202, 429]
    async with stack.http.post(
        stack.gateway / "rest/all/async/V1/customers", json=seed_customer(9), headers=alice
    ) as r:
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert "message" in await r.json()
    # Another caller has a bucket of its own.
    code, _ = await stack.post(
        "/rest/all/async/V1/customers", seed_customer(5), headers={"Authorization": "Bearer bob"}
    )
    assert code == 202
    assert await stack.depth("work") == 4


async def test_full_work_queue_answers_503_never_a_silent_drop(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False, broker={"max_queue_length": 3})
    code, _ = await stack.post(
        "/rest/all/async/bulk/V1/customers", [seed_customer(i) for i in range(3)]
    )
    assert code == 202
    answers = []
    for i in range(3):
        async with stack.http.post(
            stack.gateway / "rest/all/async/V1/customers",
            json=seed_customer(10 + i),
            headers={"Authorization": "Bearer alice"},
        ) as r:
            answers.append(r.status)
            if r.status == 503:
                assert r.headers["Retry-After"]
    # A quorum queue checks its limit before taking a message, so it admits one past it.
    assert answers == [202, 503, 503]
    assert await stack.depth("work") == 4
    code, listed = await stack.get(
        "/rest/V1/bulk?searchCriteria[pageSize]=10", headers={"Authorization": "Bearer alice"}
    )
    assert code == 200 and listed["total_count"] == 1  # refused bulks leave no trace


async def test_no_secret_reaches_any_log_line(
    make_stack: Any,
    write_config: Any,
    start_server: StartServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERP_CONSUMER_SECRET", INTEGRATION["consumer_secret"])
    monkeypatch.setenv("ERP_TOKEN_SECRET", INTEGRATION["access_token_secret"])
    shop = MagentoLikeOAuthShop()
    shop_url = await start_server(shop.app)
    stack: Stack = await make_stack(with_consumer=False)
    port = free_port()
    config = write_config(
        shop_url,
        broker={"exchange": stack.settings.broker.exchange},
        store={"url": stack.settings.store.url},
        gateway={"listen": f"127.0.0.1:{port}"},
        integrations=[
            {
                **INTEGRATION,
                "consumer_secret": "${ERP_CONSUMER_SECRET}",
                "access_token_secret": "${ERP_TOKEN_SECRET}",
            }
        ],
    )
    logs = [tmp_path / "gateway.log", tmp_path / "consumer.log"]
    procs = [
        spawn(role, config, log) for role, log in zip(("gateway", "consumer"), logs, strict=True)
    ]
    try:
        gateway = URL(f"http://127.0.0.1:{port}")
        await stack.wait_for(lambda: _listening(port), within=20)
        url = gateway / "rest/all/async/V1/customers"
        headers = signed("POST", url)
        async with stack.http.post(url, json=seed_customer(1), headers=headers) as r:
            assert r.status == 202
        async with stack.http.post(url, json=seed_customer(2), headers=headers) as r:
            assert r.status == 401  # the same nonce again
        bearer = {"Authorization": "Bearer top-secret-bearer", "Cookie": "PHPSESSID=cookie-secret"}
        async with stack.http.post(url, json=seed_customer(3), headers=bearer) as r:
            assert r.status == 401  # integrations configured: OAuth required
        async with stack.http.get(gateway / "rest/V1/customers/1", headers=bearer) as r:
            await r.read()
        await stack.wait_for(lambda: len(shop.accepted) == 1, within=20)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert await asyncio.to_thread(proc.wait, 30) == 0
    text = "".join(log.read_text() for log in logs)
    assert "operation_replayed" in text and "bulk_accepted" in text
    oauth_signature = headers["Authorization"].split('oauth_signature="')[1].split('"')[0]
    for secret in (*SECRETS, "top-secret-bearer", "cookie-secret", oauth_signature):
        assert secret not in text, secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_credentials_are_sealed_in_the_queue_and_open_after_a_key_rotation(
    make_stack: Any, make_settings: Any
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    stack: Stack = await make_stack(with_consumer=False, security={"encryption_key": old})
    bearer = {"Authorization": "Bearer alice-secret-token"}
    code, _ = await stack.post("/rest/all/async/V1/customers", seed_customer(1), headers=bearer)
    assert code == 202
    message = await stack.broker.basic_get(stack.queue("work"), no_ack=False)
    assert isinstance(message.delivery, Basic.GetOk)
    assert b"alice-secret-token" not in message.body and b"enc:fernet:" in message.body
    await stack.broker.basic_nack(message.delivery.delivery_tag, requeue=True)
    # The key was rotated before the consumer got to it: the previous key still opens it.
    rotated = dataclasses.replace(
        stack.settings,
        security=dataclasses.replace(
            stack.settings.security,
            encryption_key=Secret(new),
            previous_encryption_key=Secret(old),
        ),
    )
    await stack.start_consumer(rotated)
    await stack.wait_for(lambda: len(stack.shop.applied) == 1)
    assert stack.shop.applied[0].headers_snapshot["Authorization"] == bearer["Authorization"]
