"""The fault suite's client: continuous async load that records every answer it gets.

Every item is a product with a SKU used once in the whole run, replayed upstream as
``PUT /rest/all/V1/products/<sku>``: the shop's applied log then names, for each write,
the SKU (its path) and the operation (its X-Request-Id), so the reconciliation can
match what the client was told with what the shop did, item by item.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from asyncgate.envelope import operation_id

AUTH = {"Authorization": "Bearer admin-token"}
ANSWER_TIMEOUT = 30.0


@dataclass
class Request:
    skus: list[str]
    status: int | None = None  # None: no HTTP answer (connection refused, reset, timeout)
    error: str = ""
    bulk_uuid: str | None = None
    op_ids: dict[str, str] = field(default_factory=dict)  # sku -> operation id, if accepted


@dataclass
class LoadClient:
    """``gateway()`` gives the current gateway URL (it may move between restarts)."""

    http: aiohttp.ClientSession
    gateway: Callable[[], URL]
    run_id: str
    max_bulk: int = 10
    requests: list[Request] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def _skus(self, n: int) -> list[str]:
        return [f"{self.run_id}-{next(self._serial)}" for _ in range(n)]

    async def send(self, n: int) -> Request:
        """One request of ``n`` items: single when ``n == 1``, a bulk otherwise."""
        req = Request(self._skus(n))
        self.requests.append(req)
        base = self.gateway()
        if n == 1:
            sku = req.skus[0]
            url = URL(f"{base}/rest/all/async/V1/products/{sku}")
            body: object = {"product": {"name": sku, "price": 1}}
        else:
            url = URL(f"{base}/rest/all/async/bulk/V1/products/bySku")
            body = [{"product": {"sku": s, "name": s, "price": 1}} for s in req.skus]
        try:
            async with self.http.put(
                url, json=body, headers=AUTH, timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)
            ) as r:
                answer = await r.json(content_type=None)
                req.status = r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            req.status, req.error = None, type(exc).__name__
            return req
        if req.status == 202:
            req.bulk_uuid = answer["bulk_uuid"]
            for item in answer["request_items"]:
                if item["status"] == "accepted":
                    sku = req.skus[item["id"]]
                    req.op_ids[sku] = operation_id(req.bulk_uuid, item["id"])
        return req

    async def run(self, ops: int, rate: float, workers: int = 8, within: float = 600.0) -> None:
        """Send about ``ops`` items at about ``rate`` items/s from ``workers`` clients.

        Bounded twice: by the item count and by ``within`` seconds.
        """
        started = time.monotonic()
        deadline = started + within
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while sent < ops and time.monotonic() < deadline:
                n = min(random.randint(1, self.max_bulk), ops - sent)
                sent += n
                # Pace: item number ``sent`` is due at ``sent / rate`` seconds from the start.
                due = started + sent / rate
                if (pause := due - time.monotonic()) > 0:
                    await asyncio.sleep(pause)
                req = await self.send(n)
                if req.status is None or req.status >= 500:
                    await asyncio.sleep(0.1)  # as a client honouring Retry-After, briefly

        await asyncio.gather(*(worker() for _ in range(workers)))

    # --- figures ------------------------------------------------------------------------
    @property
    def accepted(self) -> dict[str, str]:
        """sku -> operation id of every item answered 202 "accepted"."""
        return {sku: op for r in self.requests for sku, op in r.op_ids.items()}

    @property
    def refused(self) -> set[str]:
        """SKUs of items that got an answer other than 202 (or were rejected in one)."""
        out: set[str] = set()
        for r in self.requests:
            if r.status is not None:
                out.update(s for s in r.skus if s not in r.op_ids)
        return out

    @property
    def unanswered(self) -> set[str]:
        return {s for r in self.requests if r.status is None for s in r.skus}

    def answers(self) -> Counter[str]:
        return Counter(str(r.status) if r.status is not None else r.error for r in self.requests)
