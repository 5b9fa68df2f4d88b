"""Envelope -> the synchronous upstream request, and what came back.

Authentication of the replay is decided by the envelope's ``auth`` field, never
guessed: ``forward`` sends the forwarded credentials unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from asyncgate import oauth1
from asyncgate.crypto import CredentialCipher, CredentialError, open_headers
from asyncgate.envelope import Envelope
from asyncgate.settings import IntegrationSettings, Settings

# Upstream answers longer than this are cut in the store (the status API is no file server).
MAX_STORED_BODY = 1024 * 1024


@dataclass(frozen=True)
class Attempt:
    """One replay's result: an HTTP answer, or a transport error (status None)."""

    status: int | None
    reason: str
    body: str
    retry_after: float | None = None
    error: str | None = None


class UnsupportedAuth(ValueError):
    """The envelope asks for an auth mode this consumer does not speak."""


def upstream_session(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.consumer.concurrency),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
        timeout=aiohttp.ClientTimeout(
            total=settings.consumer.request_timeout, connect=settings.upstream.connect_timeout
        ),
    )


def request_headers(
    env: Envelope,
    url: str,
    integrations: Mapping[str, IntegrationSettings],
    cipher: CredentialCipher | None,
) -> CIMultiDict[str]:
    """Forwarded headers, plus the replay's own: ids, and a fresh OAuth signature if due."""
    try:
        headers: CIMultiDict[str] = CIMultiDict(open_headers(env.headers, cipher))
    except CredentialError as exc:
        raise UnsupportedAuth(str(exc)) from None
    kind, _, rest = env.auth.partition(":")
    if kind == "oauth1":
        name, _, method = rest.rpartition(":")
        integration = integrations.get(name)
        if integration is None:
            raise UnsupportedAuth(f"integration {name!r} is not configured")
        content_type = headers.get("Content-Type")
        # Signed anew for the sync URL on every attempt: fresh nonce, fresh timestamp.
        headers["Authorization"] = oauth1.sign(
            env.method, url, integration, method, env.body.encode(), content_type
        )
    elif env.auth != "forward":
        raise UnsupportedAuth(f"unknown replay auth mode {env.auth!r}")
    headers["X-Request-Id"] = env.operation_id
    headers["Idempotency-Key"] = env.operation_id
    if env.body and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    return headers


async def replay(
    session: aiohttp.ClientSession,
    upstream: str,
    env: Envelope,
    integrations: Mapping[str, IntegrationSettings],
    cipher: CredentialCipher | None = None,
) -> Attempt:
    """Send the operation upstream once; never raises for network trouble."""
    text = upstream.rstrip("/") + env.path + (f"?{env.query}" if env.query else "")
    try:
        async with session.request(
            env.method,
            URL(text, encoded=True),
            headers=request_headers(env, text, integrations, cipher),
            data=env.body.encode() if env.body else None,
            allow_redirects=False,
        ) as response:
            body = await response.content.read(MAX_STORED_BODY)
            return Attempt(
                status=response.status,
                reason=response.reason or "",
                body=body.decode("utf-8", errors="replace"),
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return Attempt(status=None, reason="", body="", error=repr(exc) or type(exc).__name__)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; the backoff alone decides
