"""Who the caller is, for bulk ownership: never a secret, only a stable fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiohttp import web

from asyncgate.store.base import UserType


@dataclass(frozen=True)
class Caller:
    owner: str  # stored with the bulk; status access compares it
    user_type: UserType
    has_credentials: bool


def caller_of(request: web.Request) -> Caller:
    """Identify by the Authorization header; a bearer token is kept only as a hash.

    The gateway cannot tell an admin token from a customer token (only Magento can),
    so every bearer caller is reported as user type 2.
    """
    auth = request.headers.get("Authorization", "").strip()
    if not auth:
        return Caller("guest", UserType.GUEST, False)
    digest = hashlib.sha256(auth.encode()).hexdigest()
    if auth.lower().startswith("oauth "):
        return Caller(f"oauth:{digest}", UserType.INTEGRATION, True)
    return Caller(f"token:{digest}", UserType.ADMIN, True)
