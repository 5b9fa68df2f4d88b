"""Typed application keys, declared in one place."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from asyncgate.crypto import CredentialCipher
from asyncgate.ratelimit import PerCallerLimit
from asyncgate.settings import Settings
from asyncgate.store.base import Store
from asyncgate.transport.base import Transport

SETTINGS = web.AppKey("settings", Settings)
SESSION = web.AppKey("upstream_session", aiohttp.ClientSession)
TRANSPORT = web.AppKey("transport", Transport)
STORE = web.AppKey("store", Store)
ADMIN_URL = web.AppKey("admin_url", str)
INTAKE_LIMIT = web.AppKey("intake_limit", PerCallerLimit)
CIPHER = web.AppKey[CredentialCipher | None]("cipher")
