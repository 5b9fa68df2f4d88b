"""A Magento 2 look-alike REST shop: a few endpoints, a serialising write lock, an applied log.

Run with ``python -m demo.shop --listen 127.0.0.1:8081 --write-service-time 0.1``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from asyncgate import oauth1
from asyncgate.settings import IntegrationSettings

INTERESTING_HEADERS = ("Authorization", "X-Request-Id", "Idempotency-Key", "Content-Type")
DUPLICATE_EMAIL = "A customer with the same email address already exists in an associated website."
UNAUTHORIZED = "The consumer isn't authorized to access %resources."
PRODUCT_DEFAULTS = {"attribute_set_id": 4, "type_id": "simple", "status": 1, "visibility": 4}
_FILTER_KEY = re.compile(
    r"searchCriteria\[filterGroups\]\[(\d+)\]\[filters\]\[(\d+)\]\[(field|value|conditionType)\]"
)


@dataclass(frozen=True)
class ShopConfig:
    write_service_time: float = 0.1
    bearer_tokens: frozenset[str] = frozenset()
    require_auth: bool = False  # with no bearer_tokens: any Authorization header passes
    # Integrations whose OAuth 1.0a requests are verified as Magento does: the full URL
    # signed, the timestamp within 600 s, each nonce once per consumer key.
    integrations: tuple[IntegrationSettings, ...] = ()


@dataclass(frozen=True)
class AppliedWrite:
    method: str
    path: str
    store: str | None
    body_sha256: str
    request_id: str | None
    headers_snapshot: dict[str, str]
    at: float


@dataclass
class FailRule:
    status: int
    count: int
    path_prefix: str
    message: str


@dataclass
class ShopState:
    config: ShopConfig
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    customers: dict[int, dict[str, Any]] = field(default_factory=dict)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: list[AppliedWrite] = field(default_factory=list)
    fail_rules: list[FailRule] = field(default_factory=list)
    latency: tuple[float, float] = (0.0, 0.0)
    in_flight: int = 0
    max_in_flight: int = 0
    next_ids: dict[str, int] = field(default_factory=dict)
    nonces: set[tuple[str, str]] = field(default_factory=set)

    def new_id(self, kind: str) -> int:
        self.next_ids[kind] = self.next_ids.get(kind, 0) + 1
        return self.next_ids[kind]


SHOP_STATE = web.AppKey("shop_state", ShopState)


class ShopError(Exception):
    """Answered as Magento's ``{"message": ..., "parameters": ...}`` error body."""

    def __init__(self, status: int, message: str, parameters: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message}
        if parameters is not None:
            self.body["parameters"] = parameters


def _required(name: str) -> ShopError:
    return ShopError(400, '"%fieldName" is required. Enter and try again.', {"fieldName": name})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _snake(value: Any) -> Any:
    """Magento accepts camelCase input and answers snake_case."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): _snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


def _check_oauth(request: web.Request, header: str, body: bytes) -> None:
    state = request.app[SHOP_STATE]
    try:
        verified = oauth1.verify(
            request.method,
            f"{request.scheme}://{request.host}{request.raw_path}",
            header,
            body,
            request.headers.get("Content-Type"),
            {i.consumer_key: i for i in state.config.integrations},
            now=time.time(),
        )
    except oauth1.OAuthError as exc:
        raise ShopError(401, exc.message, exc.parameters or None) from None
    if (verified.consumer_key, verified.nonce) in state.nonces:
        raise ShopError(401, "The nonce is already being used by the consumer with ID %1.")
    state.nonces.add((verified.consumer_key, verified.nonce))


def _check_auth(request: web.Request, body: bytes = b"") -> None:
    config = request.app[SHOP_STATE].config
    header = request.headers.get("Authorization", "").strip()
    scheme, _, token = header.partition(" ")
    if config.integrations and scheme.lower() == "oauth":
        _check_oauth(request, header, body)
        return
    if not (config.require_auth or config.bearer_tokens or config.integrations):
        return
    if config.bearer_tokens:
        ok = scheme.lower() == "bearer" and token.strip() in config.bearer_tokens
    else:
        ok = bool(header)
    if not ok:
        raise ShopError(401, UNAUTHORIZED, {"resources": "Magento_Customer::manage"})


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ShopError(400, "Decoding error: Syntax error") from None


async def _control_body(request: web.Request) -> dict[str, Any]:
    body = _decode(await request.read())
    if not isinstance(body, dict):
        raise ShopError(400, "Expected a JSON object.")
    return body


Apply = Callable[[ShopState, web.Request, Any], dict[str, Any]]


async def _write(request: web.Request, apply: Apply) -> web.Response:
    """Shared write path: auth, latency, fail injection, then ONE lock for the service time."""
    raw = await request.read()
    _check_auth(request, raw)
    state = request.app[SHOP_STATE]
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        low, high = state.latency
        if high > 0:
            await asyncio.sleep(random.uniform(low, high))
        rule = next((r for r in state.fail_rules if request.path.startswith(r.path_prefix)), None)
        if rule is not None:
            rule.count -= 1
            if rule.count <= 0:
                state.fail_rules.remove(rule)
            raise ShopError(rule.status, rule.message)
        body = _decode(raw)
        async with state.lock:
            await asyncio.sleep(state.config.write_service_time)
            result = apply(state, request, body)
            hdrs, store = request.headers, request.match_info.get("store")
            snapshot = {h: hdrs[h] for h in INTERESTING_HEADERS if h in hdrs}
            digest, request_id = hashlib.sha256(raw).hexdigest(), hdrs.get("X-Request-Id")
            write = (request.method, request.path, store, digest, request_id, snapshot, time.time())
            state.applied.append(AppliedWrite(*write))
        return web.json_response(result)
    finally:
        state.in_flight -= 1


def _create_customer(state: ShopState, request: web.Request, body: Any) -> dict[str, Any]:
    customer = body.get("customer") if isinstance(body, dict) else None
    if not isinstance(customer, dict):
        raise _required("customer")
    email = customer.get("email")
    if not isinstance(email, str) or not email.strip():
        raise _required("email")
    if any(c["email"].lower() == email.lower() for c in state.customers.values()):
        raise ShopError(400, DUPLICATE_EMAIL)
    data = _snake(customer)
    admin = request.match_info.get("store") == "all"
    cid, now = state.new_id("customer"), _now()
    out: dict[str, Any] = {"group_id": 1, "firstname": "", "lastname": "", "website_id": 1}
    out |= {"store_id": 0 if admin else 1, "created_in": "Admin" if admin else "Default Store View"}
    out |= {**data, "id": cid, "email": email, "created_at": now, "updated_at": now}
    out["addresses"] = []
    for item in data.get("addresses") or []:
        if not isinstance(item, dict):
            continue
        address = {**item, "id": state.new_id("address"), "customer_id": cid}
        if isinstance(address.get("region"), dict) and "region_id" in address["region"]:
            address.setdefault("region_id", address["region"]["region_id"])
        for flag in ("default_billing", "default_shipping"):
            if address.get(flag):
                out[flag] = str(address["id"])
        out["addresses"].append(address)
    state.customers[cid] = out
    return out


def _put_product(state: ShopState, request: web.Request, body: Any) -> dict[str, Any]:
    product = body.get("product") if isinstance(body, dict) else None
    if not isinstance(product, dict):
        raise _required("product")
    sku, now = request.match_info["sku"], _now()
    base = state.products.get(sku)
    if base is None:
        base = {**PRODUCT_DEFAULTS, "id": state.new_id("product"), "created_at": now}
    out = {**base, **_snake(product), "id": base["id"], "sku": sku}
    out.update(created_at=base["created_at"], updated_at=now)
    state.products[sku] = out
    return out


async def create_customer(request: web.Request) -> web.Response:
    return await _write(request, _create_customer)


async def put_product(request: web.Request) -> web.Response:
    return await _write(request, _put_product)


async def get_customer(request: web.Request) -> web.Response:
    _check_auth(request)
    cid = int(request.match_info["id"])
    customer = request.app[SHOP_STATE].customers.get(cid)
    if customer is None:
        params = {"fieldName": "customerId", "fieldValue": cid}
        raise ShopError(404, "No such entity with %fieldName = %fieldValue", params)
    return web.json_response(customer)


def _matches(item: Mapping[str, Any], flt: Mapping[str, str]) -> bool:
    actual, value = item.get(flt["field"]), flt.get("value", "")
    if actual is None:
        return False
    if flt["condition_type"] == "eq":
        return str(actual).lower() == value.lower()
    pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in value)
    return re.fullmatch(pattern, str(actual), re.IGNORECASE | re.DOTALL) is not None


async def search_customers(request: web.Request) -> web.Response:
    _check_auth(request)
    groups: dict[int, dict[int, dict[str, str]]] = {}
    for key, value in request.query.items():
        if m := _FILTER_KEY.fullmatch(key):
            name = "condition_type" if m[3] == "conditionType" else m[3]
            groups.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[name] = value
    filter_groups: list[list[dict[str, str]]] = []
    for _, group in sorted(groups.items()):
        filters = [{"condition_type": "eq", **f} for _, f in sorted(group.items())]
        for f in filters:
            if "field" not in f:
                raise _required("field")
            if f["condition_type"] not in ("eq", "like"):
                raise ShopError(400, 'Condition type "%1" is not supported.', [f["condition_type"]])
        filter_groups.append(filters)
    # Filters within a group are OR-ed, groups are AND-ed (Magento's semantics).
    items = [
        c
        for _, c in sorted(request.app[SHOP_STATE].customers.items())
        if all(any(_matches(c, f) for f in g) for g in filter_groups)
    ]
    criteria = {"filter_groups": [{"filters": g} for g in filter_groups]}
    return web.json_response(
        {"items": items, "search_criteria": criteria, "total_count": len(items)}
    )


async def shop_applied(request: web.Request) -> web.Response:
    return web.json_response([asdict(a) for a in request.app[SHOP_STATE].applied])


async def shop_stats(request: web.Request) -> web.Response:
    state = request.app[SHOP_STATE]
    stats = {"customers": len(state.customers), "products": len(state.products)}
    stats |= {"writes": len(state.applied), "max_in_flight": state.max_in_flight}
    return web.json_response(stats)


async def shop_fail(request: web.Request) -> web.Response:
    body = await _control_body(request)
    status, count = body.get("status", 503), body.get("count", 1)
    prefix = body.get("path_prefix", "")
    message = body.get("message") or f"Injected failure (HTTP {status}). Try again later."
    if not (isinstance(status, int) and 400 <= status <= 599 and isinstance(count, int)):
        raise ShopError(400, "Expected an int status in 400..599 and an int count.")
    if not (isinstance(prefix, str) and isinstance(message, str)):
        raise ShopError(400, "Expected string path_prefix and message.")
    state = request.app[SHOP_STATE]
    if count > 0:
        state.fail_rules.append(FailRule(status, count, prefix, message))
    return web.json_response({"fail_rules": [asdict(r) for r in state.fail_rules]})


async def shop_latency(request: web.Request) -> web.Response:
    body = await _control_body(request)
    try:
        low, high = float(body.get("min", 0.0)), float(body.get("max", 0.0))
    except (TypeError, ValueError):
        raise ShopError(400, "min and max must be numbers.") from None
    if not 0 <= low <= high:
        raise ShopError(400, "Expected 0 <= min <= max.")
    request.app[SHOP_STATE].latency = (low, high)
    return web.json_response({"min": low, "max": high})


@web.middleware
async def _magento_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:  # no route, or no route for this method
        return web.json_response({"message": "Request does not match any route."}, status=404)
    try:
        return await handler(request)
    except ShopError as exc:
        return web.json_response(exc.body, status=exc.status)


def create_shop_app(config: ShopConfig) -> web.Application:
    app = web.Application(middlewares=[_magento_errors])
    app[SHOP_STATE] = ShopState(config)
    # The store segment is optional; "async" is not a store (this shop has no async API).
    for prefix in ("/rest/{store:(?!async/)[A-Za-z0-9_]+}/V1", "/rest/V1"):
        app.router.add_post(f"{prefix}/customers", create_customer)
        app.router.add_get(f"{prefix}/customers/search", search_customers)
        app.router.add_get(prefix + r"/customers/{id:\d+}", get_customer)
        app.router.add_put(f"{prefix}/products/{{sku}}", put_product)
    app.router.add_get("/_shop/applied", shop_applied)
    app.router.add_get("/_shop/stats", shop_stats)
    app.router.add_post("/_shop/fail", shop_fail)
    app.router.add_post("/_shop/latency", shop_latency)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.shop", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8081", help="host:port")
    parser.add_argument("--write-service-time", type=float, default=0.1)
    parser.add_argument("--bearer-token", action="append", default=[], help="repeatable")
    parser.add_argument("--require-auth", action="store_true")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    config = ShopConfig(args.write_service_time, frozenset(args.bearer_token), args.require_auth)
    web.run_app(create_shop_app(config), host=host.strip("[]") or "127.0.0.1", port=int(port))


if __name__ == "__main__":
    main()
