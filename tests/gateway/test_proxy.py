"""Pass-through: the gateway in front of a real upstream on loopback behaves like nginx would."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import StartServer


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Upstream:
    """An upstream that records what it received and answers as the test asks."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.cancelled = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        record = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": list(request.headers.items()),
            "size": size,
            "sha256": digest.hexdigest(),
        }
        self.seen.append(record)
        path = request.path
        if path == "/slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if path == "/status/418":
            return web.json_response({"teapot": True}, status=418)
        if path == "/cookies":
            response = web.Response(text="ok")
            response.headers.add("Set-Cookie", "a=1; Path=/")
            response.headers.add("Set-Cookie", "b=2; Path=/")
            response.headers["Connection"] = "X-Private"
            response.headers["X-Private"] = "secret"
            response.headers["Keep-Alive"] = "timeout=5"
            return response
        if path == "/gzip":
            return web.Response(
                body=gzip.compress(b"hello " * 100),
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )
        if path == "/download":
            response = web.StreamResponse()
            response.content_length = 100 * 1024 * 1024
            await response.prepare(request)
            block = b"x" * (1024 * 1024)
            for _ in range(100):
                await response.write(block)
            await response.write_eof()
            return response
        if path == "/nocontent":
            return web.Response(status=204)
        return web.json_response(record)


@pytest.fixture
async def upstream(start_server: StartServer) -> tuple[Upstream, URL]:
    up = Upstream()
    return up, await start_server(up.app)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def test_method_raw_path_query_and_status_pass_byte_for_byte(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    raw = "/rest/all/V1/products/a%2Fb%20c?searchCriteria[pageSize]=5&q=%C3%A9"
    async with http.request("PATCH", URL(str(gw) + raw, encoded=True), data=b"{}") as r:
        assert r.status == 200
        seen = await r.json()
    assert seen["method"] == "PATCH"
    assert seen["raw_path"] == raw
    async with http.get(gw / "status/418") as r:
        assert r.status == 418
        assert await r.json() == {"teapot": True}


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "DELETE", "PUT"])
async def test_any_method_passes(
    method: str,
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    up, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    async with http.request(method, gw / "anything") as r:
        assert r.status == 200
    assert up.seen[-1]["method"] == method


async def test_no_content_status_is_preserved(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    async with http.get(gw / "nocontent") as r:
        assert r.status == 204
        assert await r.read() == b""


async def test_hop_by_hop_request_headers_dropped_and_forwarding_headers_set(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    headers = {
        "Connection": "keep-alive, X-Custom-Hop, X-Forwarded-For, Via",
        "X-Custom-Hop": "drop me",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic abc",
        "Upgrade": "websocket",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=6.6.6.6",
        "Host": "shop.example",
        "X-End-To-End": "keep me",
    }
    async with http.get(gw / "h", headers=headers) as r:
        seen = await r.json()
    got = {k.lower(): v for k, v in seen["headers"]}
    for name in ("x-custom-hop", "keep-alive", "te", "proxy-authorization", "upgrade", "forwarded"):
        assert name not in got, name
    assert "connection" not in got or got["connection"].lower() in ("keep-alive", "close")
    # An untrusted client's forwarding headers are replaced, and it cannot delete ours.
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "shop.example"
    assert got["host"] == "shop.example"
    assert got["via"] == "1.1 asyncgate"
    assert got["x-end-to-end"] == "keep me"


async def test_trusted_proxy_forwarding_headers_are_extended(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url, gateway={"trusted_proxies": ["127.0.0.0/8"]}))
    headers = {
        "X-Forwarded-For": "203.0.113.7, 10.1.1.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "shop.example",
        "Via": "1.1 lb",
    }
    async with http.get(gw / "h", headers=headers) as r:
        got = {k.lower(): v for k, v in (await r.json())["headers"]}
    assert got["x-forwarded-for"] == "203.0.113.7, 10.1.1.1, 127.0.0.1"
    assert got["x-forwarded-proto"] == "https"
    assert got["x-forwarded-host"] == "shop.example"
    assert got["via"] == "1.1 lb, 1.1 asyncgate"


async def test_host_can_be_the_upstreams(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url, gateway={"upstream_host": "upstream"}))
    async with http.get(gw / "h", headers={"Host": "shop.example"}) as r:
        got = {k.lower(): v for k, v in (await r.json())["headers"]}
    assert got["host"] == f"127.0.0.1:{up_url.port}"
    assert got["x-forwarded-host"] == "shop.example"


async def test_no_automatic_request_headers_added(
    upstream: tuple[Upstream, URL], make_settings: Any, start_gateway: Any
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    writer.write(b"GET /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    names = {k.lower() for k, _ in __import__("json").loads(body)["headers"]}
    assert not names & {"user-agent", "accept", "accept-encoding", "content-type", "cookie"}


async def test_response_headers_repeated_kept_and_hop_by_hop_dropped(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    async with http.get(gw / "cookies") as r:
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert "X-Private" not in r.headers
        assert "Keep-Alive" not in r.headers


async def test_compressed_body_passes_untouched(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    async with http.get(gw / "gzip", headers={"Accept-Encoding": "gzip"}) as r:
        body = await r.read()
        assert r.headers["Content-Encoding"] == "gzip"
        assert int(r.headers["Content-Length"]) == len(body)
    assert gzip.decompress(body) == b"hello " * 100


async def test_100mb_upload_and_download_stream_with_flat_rss(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url, gateway={"max_body_bytes": 200 * 1024 * 1024}))
    block = b"y" * (1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield block

    before = rss_bytes()
    async with http.post(gw / "upload", data=body()) as r:
        assert r.status == 200
        assert (await r.json())["size"] == 100 * 1024 * 1024
    received = 0
    async with http.get(gw / "download") as r:
        async for chunk in r.content.iter_any():
            received += len(chunk)
    assert received == 100 * 1024 * 1024
    # Gateway, upstream and client share this process: had anyone buffered a body,
    # RSS would have grown by 100 MB or more.
    assert rss_bytes() - before < 40 * 1024 * 1024


async def test_upstream_refusing_connections_gives_502(
    make_settings: Any, start_gateway: Any, http: aiohttp.ClientSession
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        gw = await start_gateway(make_settings(f"http://127.0.0.1:{port}"))
        async with http.get(gw / "x") as r:
            assert r.status == 502
            assert (await r.json())["message"] == "The upstream server could not be reached."


async def test_slow_upstream_gives_504_and_client_abort_cancels_upstream(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    up, up_url = upstream
    gw = await start_gateway(make_settings(up_url, upstream={"read_timeout": 0.5}))
    async with http.get(gw / "slow") as r:
        assert r.status == 504
        assert "message" in await r.json()
    up.cancelled.clear()
    gw2 = await start_gateway(make_settings(up_url, upstream={"read_timeout": 30}))
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(gw2 / "slow", timeout=aiohttp.ClientTimeout(total=0.5)):
            pass
    await asyncio.wait_for(up.cancelled.wait(), 5)


async def test_oversized_body_gives_413_declared_or_streamed(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    up, up_url = upstream
    gw = await start_gateway(make_settings(up_url, gateway={"max_body_bytes": 1000}))
    async with http.post(gw / "big", data=b"z" * 2000) as r:
        assert r.status == 413
        assert (await r.json())["message"] == "Request body is too large."
    assert up.seen == []

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"z" * 500

    async with http.post(gw / "big", data=chunked()) as r:
        assert r.status == 413


async def test_garbage_request_gets_400_and_gateway_keeps_serving(
    upstream: tuple[Upstream, URL],
    make_settings: Any,
    start_gateway: Any,
    http: aiohttp.ClientSession,
) -> None:
    _, up_url = upstream
    gw = await start_gateway(make_settings(up_url))
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    writer.write(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
    data = await reader.read(100)
    writer.close()
    assert data.split(b"\r\n", 1)[0].split()[1] == b"400"
    async with http.get(gw / "still-alive") as r:
        assert r.status == 200
