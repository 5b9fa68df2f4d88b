"""Security at the edge: OAuth 1.0a verified on intake and signed anew on replay."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from oauthlib.oauth1 import Client
from yarl import URL

from asyncgate import oauth1
from asyncgate.settings import IntegrationSettings, Secret
from demo.payloads import seed_customer
from tests.e2e.conftest import Stack

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
