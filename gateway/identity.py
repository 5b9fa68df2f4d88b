"""Who the caller is: OAuth 1.0a verified here, other credentials fingerprinted.

The identity decides bulk ownership (status access) and how the consumer
authenticates the replay.  Nothing secret is ever kept: a bearer token becomes a
SHA-256 fingerprint, an integration its consumer key and access token.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from asyncgate import oauth1
from asyncgate.settings import Settings
from asyncgate.store.base import Store, UserType
from gateway.forwarding import ClientInfo

NONCE_REUSED = "The nonce is already being used by the consumer with ID %1."
NO_CREDENTIALS = "The consumer isn't authorized to access %resources."
# Nonces are remembered past the timestamp window on both sides, so none can come back.
NONCE_MEMORY_FACTOR = 2


class AuthFailed(Exception):
    """401 in Magento's shape; nothing is queued."""

    def __init__(self, message: str, parameters: dict[str, str] | list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.parameters = parameters


@dataclass(frozen=True)
class Caller:
    owner: str  # stored with the bulk; status access compares it
    user_type: UserType
    replay_auth: str  # the envelope's auth field: "forward" or "oauth1:<integration>:<method>"


def auth_mode(settings: Settings, route_auth: str | None) -> str:
    """A route's auth mode: its own, else oauth1 when integrations exist, else forward."""
    if route_auth is not None:
        return route_auth
    return "oauth1" if settings.integrations else "forward"


async def authenticate(
    request: web.Request,
    settings: Settings,
    client: ClientInfo,
    store: Store,
    body: bytes,
    mode: str,
) -> Caller:
    """The caller of an async request or a status query; raises AuthFailed."""
    header = request.headers.get("Authorization", "").strip()
    if mode == "oauth1" or header.lower().startswith("oauth "):
        return await _verify_oauth(request, settings, client, store, body, header)
    if header:
        # aiohttp keeps undecodable header bytes as surrogates: hash those bytes as sent.
        digest = hashlib.sha256(header.encode("utf-8", "surrogateescape")).hexdigest()
        return Caller(f"token:{digest}", UserType.ADMIN, "forward")
    if mode == "guest":
        return Caller("guest", UserType.GUEST, "forward")
    raise AuthFailed(NO_CREDENTIALS, {"resources": "this resource"})


async def _verify_oauth(
    request: web.Request,
    settings: Settings,
    client: ClientInfo,
    store: Store,
    body: bytes,
    header: str,
) -> Caller:
    integrations = {i.consumer_key: i for i in settings.integrations}
    # The URL exactly as the client requested it, behind any trusted proxy.
    url = f"{client.scheme}://{client.host}{request.raw_path}"
    try:
        verified = oauth1.verify(
            request.method,
            url,
            header or None,
            body,
            request.headers.get("Content-Type"),
            integrations,
            now=time.time(),
        )
    except oauth1.OAuthError as exc:
        raise AuthFailed(exc.message, exc.parameters or None) from None
    except UnicodeError:
        raise AuthFailed(oauth1.INVALID_SIGNATURE) from None
    window = 600.0 * NONCE_MEMORY_FACTOR
    expires = datetime.fromtimestamp(verified.timestamp + window, UTC)
    if not await store.use_nonce(verified.consumer_key, verified.nonce, expires):
        raise AuthFailed(NONCE_REUSED, [verified.consumer_key])
    integration = verified.integration
    return Caller(
        owner=f"oauth:{integration.consumer_key}:{integration.access_token}",
        user_type=UserType.INTEGRATION,
        replay_auth=f"oauth1:{integration.name}:{verified.signature_method}",
    )
