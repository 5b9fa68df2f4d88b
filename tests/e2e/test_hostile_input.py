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


async def _raw(stack: Stack, request: bytes) -> int:
    """Send bytes as they are; the status of the answer (0 if the connection just closed)."""
    reader, writer = await asyncio.open_connection(stack.gateway.host, stack.gateway.port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(line.split()[1]) if line else 0


async def test_deep_nesting_and_huge_arrays_never_5xx(make_stack: Any) -> None:
    """Bodies past the parser's recursion limit, or large, are refused or queued whole."""
    stack: Stack = await make_stack(with_consumer=False)
    huge_inside = json.dumps({"product": {"sku": "big", "tags": list(range(100_000))}}).encode()
    cases = [
        ("/rest/all/async/V1/customers", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {400}),
        ("/rest/all/async/bulk/V1/customers", b"[" * 200_000 + b"]" * 200_000, {400}),
        ("/rest/all/async/bulk/V1/customers", json.dumps([{}] * 5001).encode(), {400}),
        ("/rest/all/async/bulk/V1/customers", json.dumps([[[[[[[[[[[]]]]]]]]]]] * 3).encode(),
         {202, 400}),
        ("/rest/all/async/bulk/V1/products/bySku", b"[" + huge_inside + b"]", {202}),
    ]  # fmt: skip
    for path, body, expected in cases:
        before = await stack.depth("work")
        async with stack.http.post(
            stack.gateway.with_path(path),
            data=body,
            headers={**AUTH, "Content-Type": "application/json"},
        ) as r:
            answer = await r.json(content_type=None)
            assert r.status in expected, (path, body[:40], r.status, answer)
            queued = (
                sum(i["status"] == "accepted" for i in answer["request_items"])
                if r.status == 202
                else 0
            )
            if r.status != 202:
                assert set(answer) <= {"message", "parameters"}
        assert await stack.depth("work") == before + queued


async def test_by_param_missing_or_not_scalar_rejects_only_that_item(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    items: list[Any] = [
        {"product": {"sku": "ok-1", "name": "fine"}},
        {"product": {"name": "no sku"}},
        {"sku": ["a", "b"], "product": {"name": "list"}},
        {"sku": {"x": 1}, "product": {"name": "object"}},
        {"sku": None, "product": {"name": "null"}},
        {"product": {"sku": {"nested": "x"}}},
        {"product": {"sku": ""}},
        "not an object",
        {"sku": "ok-2", "product": {"name": "top-level sku"}},
    ]
    code, body = await stack.post("/rest/all/async/bulk/V1/products/bySku", items, method="PUT")
    assert code == 202, body
    statuses = [i["status"] for i in body["request_items"]]
    assert statuses[0] == statuses[-1] == "accepted"
    assert all(s == "rejected" for s in statuses[1:-1]), statuses
    assert body["errors"] is True
    assert await stack.depth("work") == 2


async def test_duplicate_keys_replay_what_the_path_says(make_stack: Any) -> None:
    """The last duplicate wins, in the by<Param> path and in the replayed body alike."""
    stack: Stack = await make_stack()
    code, body = await stack.post(
        "/rest/all/async/bulk/V1/products/bySku",
        None,
        method="PUT",
        data=b'[{"product": {"sku": "dup-a", "name": "n", "sku": "dup-b"}}]',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert code == 202 and body["request_items"][0]["status"] == "accepted", body
    await stack.wait_for(lambda: len(stack.shop.applied) == 1)
    assert set(stack.shop.products) == {"dup-b"}
    assert stack.shop.products["dup-b"]["sku"] == "dup-b"


async def test_header_injection_and_oversized_headers_are_refused(make_stack: Any) -> None:
    """CR/LF smuggled into a forwarded value never reaches the replay; huge headers: 4xx."""
    stack: Stack = await make_stack()
    body = b'{"product": {"name": "x"}}'
    head = b"PUT /rest/all/async/V1/products/inj HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    tail = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    attempts = [
        b"Authorization: Bearer a\rX-Injected: 1\r\n",  # bare CR
        b"Authorization: Bearer a\nX-Injected: 1\r\n",  # bare LF: a second header to some
        b"Authorization: Bearer a\r\n X-Injected: 1\r\n",  # obs-fold continuation
        b"Authorization: Bearer a\x00X-Injected: 1\r\n",  # NUL
        b"Accept-Language: en\r\nAuthorization: Bearer " + b"a" * 20_000 + b"\r\n",  # oversized
        b"Authorization: Bearer a\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)),
        b"Authorization: Bearer a\r\nContent-Length: 5\r\n",  # conflicting lengths
        b"Authorization: Bearer a\r\nTransfer-Encoding: chunked\r\n",  # CL and TE
    ]
    for extra in attempts:
        status = await _raw(stack, head + extra + tail)
        assert status in (202, 400, 401, 413, 431) or status == 0, (extra[:60], status)
    # And through the by<Param> value, percent-encoding keeps CR/LF out of the request line.
    code, answer = await stack.post(
        "/rest/all/async/bulk/V1/products/bySku",
        [{"product": {"sku": "evil\r\nX-Injected: 1", "name": "x"}}],
        method="PUT",
    )
    assert code == 202, answer
    await asyncio.sleep(1.0)
    await stack.wait_for(lambda: len(stack.shop.applied) >= 1)
    for write in stack.shop.applied:
        assert "Injected" not in " ".join(
            [*write.headers_snapshot, *write.headers_snapshot.values()]
        )
        assert all("\r" not in v and "\n" not in v for v in write.headers_snapshot.values())
        assert "\r" not in write.path.split("/products/")[0]
    assert await stack.depth("work") == 0
