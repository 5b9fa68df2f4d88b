"""The stack under fault: demo shop in the test process, gateway and consumer as real
processes (so they can be SIGKILLed), broker and store chosen per scenario, and the
reconciliation of the client's answers against the shop's record and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from asyncgate.settings import Settings, load_settings
from asyncgate.store import OperationStatus, create_store
from asyncgate.transport import Transport, create_transport
from demo.shop import ShopState
from tests.conftest import eventually
from tests.e2e.conftest import spawn
from tests.faults.load import LoadClient
from tests.faults.services import free_port


@dataclass
class Figures:
    """One scenario's reconciliation, as FAULTS.md shows it."""

    scenario: str
    transport: str
    faults: str
    requests: int
    accepted: int
    refused: int
    unanswered: int
    applied_unanswered: int  # no HTTP answer, yet applied: allowed (the client never heard)
    lost: int  # 202'd and never applied
    phantom: int  # applied although answered non-202
    duplicated: int  # writes beyond the first, per operation
    duplicate_bound: int
    bound_reason: str
    status_mismatch: int  # store status not matching what the shop did
    dead_lettered: int
    seconds: float
    answers: str = ""
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.lost == 0, self
        assert self.phantom == 0, self
        assert self.status_mismatch == 0, self
        assert self.duplicated <= self.duplicate_bound, self
        assert self.accepted > 0, self
        assert not any("dead letters" in n for n in self.notes), self


@dataclass
class FaultStack:
    tmp: Path
    http: aiohttp.ClientSession
    shop: ShopState
    shop_url: URL  # where the consumer replays to (maybe through a fault proxy)
    write_config: Callable[..., Path]
    broker_url: str
    store_url: str
    transport: str  # "rabbitmq" or "sqlite"
    consumer_sections: dict[str, Any]
    extra_sections: dict[str, Any]
    gateway_port: int = field(default_factory=free_port)
    gateway_admin_port: int = field(default_factory=free_port)
    consumer_admin_port: int = field(default_factory=free_port)
    gateway_proc: subprocess.Popen[bytes] | None = None
    consumer_proc: subprocess.Popen[bytes] | None = None
    config: Path | None = None
    settings: Settings | None = None
    _inspector: Transport | None = None
    _logs: int = 0
    started: float = field(default_factory=time.monotonic)

    def make_config(self) -> Path:
        extra = dict(self.extra_sections)
        self.config = self.write_config(
            self.shop_url,
            broker={"url": self.broker_url, "confirm_timeout": 3, **extra.pop("broker", {})},
            store={"url": self.store_url},
            gateway={
                "listen": f"127.0.0.1:{self.gateway_port}",
                "admin_listen": f"127.0.0.1:{self.gateway_admin_port}",
            },
            consumer={
                "admin_listen": f"127.0.0.1:{self.consumer_admin_port}",
                "shutdown_grace": 5,
                **self.consumer_sections,
            },
            **extra,
        )
        self.settings = load_settings(self.config)
        return self.config

    @property
    def gateway(self) -> URL:
        return URL(f"http://127.0.0.1:{self.gateway_port}")

    def _log(self, role: str) -> Path:
        self._logs += 1
        return self.tmp / f"{role}-{self._logs}.log"

    # --- processes ------------------------------------------------------------------------
    async def start_gateway(self, within: float = 30) -> None:
        assert self.gateway_proc is None and self.config is not None
        self.gateway_proc = spawn("gateway", self.config, self._log("gateway"))
        await self.wait_for(self._gateway_up, within, "gateway up")

    async def _gateway_up(self) -> bool:
        try:
            async with self.http.get(f"http://127.0.0.1:{self.gateway_admin_port}/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    async def start_consumer(self) -> None:
        assert self.consumer_proc is None and self.config is not None
        self.consumer_proc = spawn("consumer", self.config, self._log("consumer"))

    async def consumer_ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.consumer_admin_port}/readyz"
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    @staticmethod
    async def _kill(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            await asyncio.to_thread(proc.wait, 40)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)

    async def kill_gateway(self) -> None:
        proc, self.gateway_proc = self.gateway_proc, None
        await self._kill(proc, signal.SIGKILL)

    async def kill_consumer(self, sig: int = signal.SIGKILL) -> None:
        proc, self.consumer_proc = self.consumer_proc, None
        await self._kill(proc, sig)

    async def close(self) -> None:
        await self.kill_consumer(signal.SIGTERM)
        await self.kill_gateway()
        if self._inspector is not None:
            with contextlib.suppress(Exception):
                await self._inspector.close()

    # --- looking ----------------------------------------------------------------------------
    async def inspector(self) -> Transport:
        if self._inspector is None:
            assert self.settings is not None
            self._inspector = create_transport(self.settings, "inspector")
            await self._inspector.start()
        return self._inspector

    async def depth(self, kind: str) -> int:
        return sum(d.ready for d in await (await self.inspector()).depth() if d.kind == kind)

    @staticmethod
    async def wait_for(check: Callable[[], Any], within: float, what: str) -> None:
        await eventually(check, within, what)

    def applied_by_sku(self) -> dict[str, list[str | None]]:
        """sku -> X-Request-Id of every write the shop applied to it."""
        out: dict[str, list[str | None]] = {}
        for write in self.shop.applied:
            out.setdefault(write.path.rsplit("/", 1)[-1], []).append(write.request_id)
        return out

    async def drained(self, load: LoadClient, within: float) -> None:
        """Wait until every accepted item was applied (the consumer may still be settling)."""
        wanted = set(load.accepted)
        # A drain that never ends shows as lost operations in the figures, not as a timeout.
        with contextlib.suppress(AssertionError):
            await self.wait_for(lambda: wanted <= set(self.applied_by_sku()), within, "drain")

    async def store_statuses(self, load: LoadClient, within: float = 30) -> dict[str, int]:
        """sku -> final store status of every accepted item, once none is open any more."""
        store = create_store(self.store_url)
        await store.open()
        bulks: dict[str, list[tuple[int, str]]] = {}
        for req in load.requests:
            if req.bulk_uuid:
                bulks[req.bulk_uuid] = [(req.skus.index(s), s) for s in req.op_ids]
        out: dict[str, int] = {}
        try:
            deadline = time.monotonic() + within
            while True:
                out.clear()
                for bulk_uuid, items in bulks.items():
                    ops = {op.index: op for op in await store.operations(bulk_uuid)}
                    for index, sku in items:
                        op = ops.get(index)
                        out[sku] = int(op.status) if op is not None else 0
                settled = all(s in (1, 3) for s in out.values())
                if settled or time.monotonic() > deadline:
                    return out
                await asyncio.sleep(0.5)
        finally:
            await store.close()

    async def reconcile(
        self,
        scenario: str,
        faults: str,
        load: LoadClient,
        duplicate_bound: int,
        bound_reason: str,
        drain_within: float = 120,
        dead_expected: int = 0,
    ) -> Figures:
        await self.drained(load, drain_within)
        statuses = await self.store_statuses(load)
        applied = self.applied_by_sku()
        accepted = load.accepted
        lost = [s for s in accepted if s not in applied]
        phantom = [s for s in load.refused if s in applied]
        wrong_id = [s for s, op in accepted.items() if any(rid != op for rid in applied.get(s, []))]
        mismatch = [s for s, st in statuses.items() if st != OperationStatus.COMPLETE]
        duplicated = sum(len(ids) - 1 for s, ids in applied.items() if s in accepted)
        duplicated += sum(len(ids) - 1 for s, ids in applied.items() if s in load.unanswered)
        dead = await self.depth("dead")
        figures = Figures(
            scenario=scenario,
            transport=self.transport,
            faults=faults,
            requests=len(load.requests),
            accepted=len(accepted),
            refused=len(load.refused),
            unanswered=len(load.unanswered),
            applied_unanswered=sum(1 for s in load.unanswered if s in applied),
            lost=len(lost),
            phantom=len(phantom) + len(wrong_id),
            duplicated=duplicated,
            duplicate_bound=duplicate_bound,
            bound_reason=bound_reason,
            status_mismatch=len(mismatch),
            dead_lettered=dead,
            seconds=round(time.monotonic() - self.started, 1),
            answers=", ".join(f"{k}: {v}" for k, v in sorted(load.answers().items())),
        )
        if dead != dead_expected:
            figures.notes.append(f"{dead} dead letters, {dead_expected} expected")
        if lost or phantom or wrong_id or mismatch:
            figures.notes.append(
                f"lost {lost[:5]} phantom {phantom[:5]} wrong id {wrong_id[:5]}"
                f" mismatch {[(s, statuses[s]) for s in mismatch[:5]]}"
            )
        return figures
