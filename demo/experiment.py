"""``make demo``: the seed's experiment, run. Create N customers the sync way, then the async way.

It starts the demo shop (in this process, so its state can be checked directly),
the gateway and the consumer (as real subprocesses, on the embedded SQLite
transport and store unless ``ASYNCGATE_BROKER`` names RabbitMQ), drives both
paths from a concurrent client, and prints what each cost. It trusts neither
path: success is counted in the shop's own records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from demo.payloads import seed_customer
from demo.shop import SHOP_STATE, ShopConfig, ShopState, create_shop_app

TOKEN = "demo-admin-token"
OPEN_BULKS = (
    "/rest/V1/bulk?searchCriteria[filterGroups][0][filters][0][field]=status"
    "&searchCriteria[filterGroups][0][filters][0][value]=4,2"
    "&searchCriteria[filterGroups][0][filters][0][conditionType]=in"
    "&searchCriteria[pageSize]=1"
)


@dataclass
class Result:
    mode: str
    wall: float
    latencies: list[float]
    failures: int
    applied_after: float  # seconds from the first request until all N exist in the shop
    created: int
    duplicates: int

    def row(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"| {self.mode:5} | {self.wall:8.2f} s | {p50 * 1000:8.1f} ms | {p99 * 1000:8.1f} ms"
            f" | {self.applied_after:8.2f} s | {self.created:7} | {self.failures:8} |"
            f" {self.duplicates:10} |"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def progress(label: str, done: int, total: int) -> None:
    if done % max(1, total // 50) and done != total:
        return
    width = 30
    filled = width * done // total
    bar = "#" * filled + "." * (width - filled)
    print(f"\r  {label:6} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr)


async def drive(
    http: aiohttp.ClientSession, url: str, n: int, mode: str, concurrency: int
) -> tuple[float, list[float], int]:
    """POST N seed customers with ``concurrency`` clients; return wall time, latencies, failures."""
    latencies: list[float] = []
    failures = 0
    todo = iter(range(1, n + 1))
    expected = 202 if mode == "async" else 200

    async def client() -> None:
        nonlocal failures
        for i in todo:
            started = time.monotonic()
            try:
                async with http.post(
                    url, json=seed_customer(i, mode), headers={"Authorization": f"Bearer {TOKEN}"}
                ) as r:
                    await r.read()
                    ok = r.status == expected
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.monotonic() - started)
            failures += not ok
            progress(mode, len(latencies), n)

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.monotonic() - started, latencies, failures


def count(shop: ShopState, mode: str) -> tuple[int, int]:
    """Customers of this mode in the shop, and writes applied more than once."""
    emails = Counter(
        c["email"] for c in shop.customers.values() if c["email"].startswith(f"{mode}-")
    )
    per_body = Counter(w.request_id for w in shop.applied if w.request_id and mode == "async")
    duplicates = sum(n - 1 for n in per_body.values() if n > 1)
    return len(emails), duplicates


async def wait_until(
    check: Callable[[], Awaitable[bool]], limit: float, what: str = "not done"
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} within {limit:.0f} s")


def write_config(workdir: Path, shop_port: int, gateway_port: int) -> Path:
    broker = os.environ.get("ASYNCGATE_BROKER") or f"sqlite:///{workdir}/queue.db"
    config = {
        "gateway": {"listen": f"127.0.0.1:{gateway_port}", "admin_listen": "127.0.0.1:0"},
        "upstream": {"url": f"http://127.0.0.1:{shop_port}"},
        "broker": {"url": broker, "exchange": f"asyncgate-demo-{gateway_port}"},
        "store": {"url": f"sqlite:///{workdir}/store.db"},
        "consumer": {"admin_listen": "127.0.0.1:0", "concurrency": 8},
    }
    path = workdir / "routes.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def spawn(role: str, config: Path, workdir: Path) -> subprocess.Popen[bytes]:
    with (workdir / f"{role}.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", role, "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def run(n: int, service_time: float, concurrency: int) -> list[Result]:
    shop_app = create_shop_app(ShopConfig(write_service_time=service_time))
    runner = web.AppRunner(shop_app, access_log=None)
    await runner.setup()
    shop_port, gateway_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", shop_port).start()
    shop = shop_app[SHOP_STATE]
    gateway = f"http://127.0.0.1:{gateway_port}"
    with tempfile.TemporaryDirectory(prefix="asyncgate-demo-") as tmp:
        workdir = Path(tmp)
        config = write_config(workdir, shop_port, gateway_port)
        procs = [spawn(role, config, workdir) for role in ("gateway", "consumer")]
        try:
            async with aiohttp.ClientSession() as http:
                await wait_until(lambda: _up(http, gateway), 30)
                results = []
                for mode, path in (
                    ("sync", "/rest/all/V1/customers"),
                    ("async", "/rest/all/async/V1/customers"),
                ):
                    started = time.monotonic()
                    wall, latencies, failures = await drive(
                        http, gateway + path, n, mode, concurrency
                    )

                    async def all_applied(mode: str = mode, failures: int = failures) -> bool:
                        return count(shop, mode)[0] >= n - failures and (
                            mode == "sync" or await _no_open_bulks(http, gateway)
                        )

                    await wait_until(all_applied, 60 + n * service_time * 3)
                    created, duplicates = count(shop, mode)
                    applied_after = time.monotonic() - started
                    results.append(
                        Result(mode, wall, latencies, failures, applied_after, created, duplicates)
                    )
                return results
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            await runner.cleanup()


async def _up(http: aiohttp.ClientSession, gateway: str) -> bool:
    try:
        async with http.get(gateway + "/rest/V1/customers/0") as r:
            return r.status == 404
    except aiohttp.ClientError:
        return False


async def _no_open_bulks(http: aiohttp.ClientSession, gateway: str) -> bool:
    async with http.get(gateway + OPEN_BULKS, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status == 200 and (await r.json())["total_count"] == 0


def report(results: list[Result], n: int, service_time: float) -> str:
    sync, asynchronous = results
    lines = [
        f"Creating {n} customers, shop write time {service_time * 1000:.0f} ms (one write lock)",
        "",
        "| mode  | client wall |   p50      |   p99      | all applied | created | failures |"
        " duplicates |",
        "|-------|-------------|------------|------------|-------------|---------|----------|"
        "------------|",
        sync.row(),
        asynchronous.row(),
        "",
        f"The async client finished {sync.wall / max(asynchronous.wall, 1e-9):.1f}x faster; "
        f"the shop had every customer after {asynchronous.applied_after:.1f} s "
        f"(sync: {sync.applied_after:.1f} s).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.experiment", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="customers per mode")
    parser.add_argument("--service-time", type=float, default=0.1, help="seconds per shop write")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.n, args.service_time, args.concurrency))
    print(report(results, args.n, args.service_time))
    ok = all(r.failures == 0 and r.created == args.n and r.duplicates == 0 for r in results)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
