"""Magento-compatible bulk status, answered from the store: the shop never saw our uuids.

``GET .../V1/bulk/{uuid}/status``, ``/detailed-status``, ``/operation-status/{n}``
and ``GET .../V1/bulk?searchCriteria...``.  A bulk is shown only to the caller
that created it; an unknown uuid, or one the caller does not own, is passed
through to the upstream, which may own it (Magento's admin creates bulks too).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web

from asyncgate.jsonutil import dumps
from asyncgate.routes import BulkStatusQuery
from asyncgate.store.base import BulkFilter, BulkView, OperationView
from gateway.errors import magento_error
from gateway.forwarding import client_info
from gateway.identity import AuthFailed, authenticate
from gateway.keys import SETTINGS, STORE

_CRITERION = re.compile(r"^searchCriteria\[filterGroups\]\[(\d+)\]\[filters\]\[(\d+)\]\[(\w+)\]$")
MAX_PAGE_SIZE = 1000


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _summary(bulk: BulkView) -> dict[str, Any]:
    return {
        "bulk_id": bulk.bulk_uuid,
        "description": bulk.description,
        "operation_count": bulk.operation_count,
        "start_time": _time(bulk.start_time),
        "user_type": int(bulk.user_type),
        "user_id": None,
    }


def _operation(op: OperationView, bulk_uuid: str, detailed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": op.index,
        "status": int(op.status),
        "result_message": op.result_message,
        "error_code": op.error_code,
    }
    if detailed:
        out |= {
            "bulk_uuid": bulk_uuid,
            "topic_name": op.topic,
            "serialized_data": op.serialized_data,
            "result_serialized_data": op.result_serialized_data,
        }
    return out


def _json(value: Any) -> web.Response:
    return web.Response(body=dumps(value), content_type="application/json")


async def handle(request: web.Request, query: BulkStatusQuery | None) -> web.Response | None:
    """The status answer, or None to pass the request through to the upstream."""
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    try:
        caller = await authenticate(
            request, settings, client_info(request, settings.gateway), store, b"", "guest"
        )
    except AuthFailed as exc:
        return magento_error(401, exc.message, exc.parameters)
    if query is None:
        return await _search(request, caller.owner)
    bulk = await store.bulk(query.uuid)
    if bulk is None or bulk.owner != caller.owner:
        return None
    if query.what == "operation-status":
        assert query.status is not None
        return _json(await store.count_status(query.uuid, query.status))
    detailed = query.what == "detailed-status"
    operations = await store.operations(query.uuid)
    return _json(
        _summary(bulk)
        | {"operations_list": [_operation(op, bulk.bulk_uuid, detailed) for op in operations]}
    )


async def _search(request: web.Request, owner: str) -> web.Response:
    groups: dict[int, dict[int, dict[str, str]]] = {}
    for key, value in request.rel_url.query.items():
        m = _CRITERION.match(key)
        if m:
            groups.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), {})[m.group(3)] = (
                value
            )
    try:
        filters = [
            [
                BulkFilter(f["field"], f.get("conditionType", "eq"), f.get("value", ""))
                for _, f in sorted(group.items())
            ]
            for _, group in sorted(groups.items())
        ]
        page_size = int(request.rel_url.query.get("searchCriteria[pageSize]", "20"))
        current_page = int(request.rel_url.query.get("searchCriteria[currentPage]", "1"))
    except (KeyError, ValueError):
        return magento_error(400, "Invalid searchCriteria: every filter needs a field and a value.")
    if not 0 < page_size <= MAX_PAGE_SIZE or current_page < 1:
        return magento_error(
            400, f"pageSize must be 1..{MAX_PAGE_SIZE} and currentPage at least 1."
        )
    try:
        items, total = await request.app[STORE].search(owner, filters, page_size, current_page)
    except ValueError as exc:
        return magento_error(400, str(exc))
    criteria = {
        "filter_groups": [
            {
                "filters": [
                    {"field": f.field, "value": f.value, "condition_type": f.condition} for f in g
                ]
            }
            for g in filters
        ],
        "page_size": page_size,
        "current_page": current_page,
    }
    return _json(
        {"items": [_summary(b) for b in items], "search_criteria": criteria, "total_count": total}
    )
