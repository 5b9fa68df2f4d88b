"""Hostile input: whatever a client sends, intake answers 2xx or 4xx in Magento's shape,
never 5xx, and a refused request leaves nothing in the queue. The pass-through never
forwards an ambiguous request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import AUTH, Stack

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
BODIES = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.lists(
        st.dictionaries(st.sampled_from(["sku", "product", "pageId"]), JSON, max_size=3), max_size=6
    ).map(lambda v: json.dumps(v).encode()),
    st.just(b'{"a": 1, "a": 2}'),
)
PATHS = st.sampled_from(
    [
        "/rest/all/async/V1/customers",
        "/rest/async/bulk/V1/products/bySku",
        "/rest/default/async/bulk/V1/cmsPage/byPageId",
        "/rest/all/async/bulk/V1/products/bySku/media/byEntryId",
        "/rest/all/async/V1/carts/mine/items",
        "/rest/x/async/bulk/V1/customers",
    ]
)
METHODS = st.sampled_from(["POST", "PUT", "PATCH", "DELETE", "GET"])


async def test_intake_never_answers_5xx_and_refusals_queue_nothing(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    loop = asyncio.get_running_loop()
    accepted = 0
    seen: list[int] = []

    async def one(method: str, path: str, body: bytes) -> None:
        nonlocal accepted
        before = await stack.depth("work")
        headers = {**AUTH, "Content-Type": "application/json"}
        async with stack.http.request(
            method, stack.gateway.with_path(path), data=body, headers=headers
        ) as r:
            answer = await r.json(content_type=None)
            seen.append(r.status)
            assert r.status < 500, (method, path, body[:80], answer)
            if r.status == 202:
                queued = sum(1 for item in answer["request_items"] if item["status"] == "accepted")
                accepted += queued
                assert await stack.depth("work") == before + queued
            else:
                assert set(answer) <= {"message", "parameters"} and "message" in answer
                assert await stack.depth("work") == before

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(METHODS, PATHS, BODIES)
    def check(method: str, path: str, body: bytes) -> None:
        asyncio.run_coroutine_threadsafe(one(method, path, body), loop).result(30)

    await asyncio.to_thread(check)
    assert 202 in seen and 400 in seen


async def test_pass_through_refuses_ambiguous_requests(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    smuggling = [
        b"POST /rest/V1/customers HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /rest/V1/customers HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Content-Length: 40\r\n\r\nabcd",
        b"POST /rest/V1/customers HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked, identity\r\n\r\n",
        b"GET /rest/V1/x HTTP/1.1\r\nHost: x\r\nX-Injected: a\rb\r\n\r\n",
    ]
    for raw in smuggling:
        reader, writer = await asyncio.open_connection(stack.gateway.host, stack.gateway.port)
        writer.write(raw)
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"400", (raw, status_line)
    # Nothing of it reached the shop, and the gateway still serves.
    assert stack.shop.applied == []
    async with stack.http.get(stack.gateway / "rest/V1/customers/1") as r:
        assert r.status == 404


async def test_undecodable_text_gets_400_or_401_never_500(make_stack: Any) -> None:
    """Regressions: a lone surrogate in a bulk item, non-UTF-8 bytes in Authorization/Cookie."""
    stack: Stack = await make_stack(with_consumer=False)
    async with stack.http.post(
        stack.gateway / "rest/all/async/bulk/V1/products",
        data=b'[{"product": {"name": "\\ud800"}}]',
        headers={**AUTH, "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400
    for header in (b"Authorization: Bearer \xff\xfe", b'Authorization: OAuth oauth_token="\xff"'):
        for extra in (b"", b"Cookie: a=\xff\r\n"):
            reader, writer = await asyncio.open_connection(stack.gateway.host, stack.gateway.port)
            writer.write(
                b"POST /rest/all/async/V1/customers HTTP/1.1\r\nHost: x\r\n"
                + header
                + b"\r\n"
                + extra
                + b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                + b"Connection: close\r\n\r\n{}"
            )
            status_line = await reader.readline()
            writer.close()
            assert int(status_line.split()[1]) in (202, 400, 401), (header, extra, status_line)
    assert await stack.depth("work") <= 2
