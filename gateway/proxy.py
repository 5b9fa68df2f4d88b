"""Streaming pass-through: every request the gateway does not claim goes to the upstream.

Bodies are streamed both ways and never held whole in memory.  The method, raw
path and query go out byte for byte; hop-by-hop headers are dropped in both
directions; repeated response headers and compressed bytes pass untouched.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from asyncgate import metrics
from asyncgate.logs import get_logger
from asyncgate.settings import Settings
from gateway.errors import magento_error
from gateway.forwarding import ClientInfo, end_to_end, upstream_request_headers

log = get_logger("asyncgate.proxy")

_NO_BODY_STATUSES = frozenset({204, 304})
# Answers up to this size are read whole and sent in one write; larger ones stream.
SMALL_BODY_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    pass


class _CountedBody:
    """Streams the client's body upstream, refusing it past ``limit`` bytes."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.too_large = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.request.content.iter_any():
            seen += len(chunk)
            if seen > self.limit:
                self.too_large = True
                raise BodyTooLarge
            yield chunk


@functools.lru_cache(maxsize=8)
def _upstream_of(url: str) -> tuple[str, str]:
    """The upstream's base (no trailing slash) and authority, parsed once, not per request."""
    return url.rstrip("/"), URL(url).raw_authority


def new_upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The one pooled client session of the process.

    No cookie jar (one user's cookies must never reach the next), no automatic
    decompression (bytes pass untouched under their Content-Encoding) and no
    automatic request headers.  No total timeout: long streams are legitimate.
    """
    up = settings.upstream
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=up.max_connections, ttl_dns_cache=60),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=up.connect_timeout, sock_read=up.read_timeout
        ),
    )


async def pass_through(
    request: web.Request,
    session: aiohttp.ClientSession,
    settings: Settings,
    client: ClientInfo,
) -> web.StreamResponse:
    """Forward ``request`` to the upstream and stream its answer back."""
    limit = settings.gateway.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _refuse(request, 413, "Request body is too large.")
    base, authority = _upstream_of(settings.upstream.url)
    upstream_url = URL(base + request.raw_path, encoded=True)
    headers = upstream_request_headers(
        request, client, None if settings.gateway.upstream_host == "client" else authority
    )
    body = _CountedBody(request, limit) if request.body_exists else None
    started = time.monotonic()
    try:
        with metrics.GATEWAY_UPSTREAM_SECONDS.time():
            upstream = await session.request(
                request.method,
                upstream_url,
                headers=headers,
                data=body.__aiter__() if body is not None else None,
                allow_redirects=False,
            )
    except (TimeoutError, BodyTooLarge, aiohttp.ClientError) as exc:
        if body is not None and body.too_large:
            return _refuse(request, 413, "Request body is too large.")
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            waited = round(time.monotonic() - started, 3)
            log.warning("upstream_timeout", path=request.path, waited=waited)
            return magento_error(504, "The upstream server did not answer in time.")
        log.warning("upstream_unreachable", path=request.path, error=repr(exc))
        return magento_error(502, "The upstream server could not be reached.")
    try:
        return await _relay(request, upstream)
    except (TimeoutError, aiohttp.ClientError) as exc:
        # The answer has begun: the only honest move is to cut the client's connection.
        log.warning("upstream_stream_broken", path=request.path, error=repr(exc))
        raise
    finally:
        upstream.release()


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    headers = end_to_end(upstream.headers)
    length = upstream.headers.get("Content-Length")
    size = int(length) if length is not None and length.isdigit() else None
    has_body = request.method != "HEAD" and upstream.status not in _NO_BODY_STATUSES
    if has_body and size is not None and size <= SMALL_BODY_BYTES:
        # A small answer goes out whole: headers and body in one write, not three.
        try:
            body = await upstream.read()
        except aiohttp.ClientPayloadError as exc:  # nothing sent yet: a clean 502
            log.warning("upstream_stream_broken", path=request.path, error=repr(exc))
            return magento_error(502, "The upstream server could not be reached.")
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(headers)
    if size is not None:
        response.content_length = size
    await response.prepare(request)
    if has_body:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    await response.write_eof()
    return response


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    log.info("request_refused", path=request.path, status=status, reason=message)
    response = magento_error(status, message)
    # The unread body makes the connection unusable for a next request.
    response.force_close()
    return response
