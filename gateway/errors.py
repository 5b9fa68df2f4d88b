"""Errors the gateway itself produces, in Magento's ``{"message", "parameters"}`` shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from asyncgate.jsonutil import dumps


def magento_error(
    status: int,
    message: str,
    parameters: Mapping[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if parameters is not None:
        body["parameters"] = parameters
    return web.Response(
        status=status, body=dumps(body), content_type="application/json", headers=headers
    )
