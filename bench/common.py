"""What every benchmark section shares: processes on loopback, configs, wrk, RSS, the row.

Every process a section starts is registered in a ``Procs`` and stopped when the
section ends, whatever happens; every exchange and queue it declares on the
shared RabbitMQ carries a unique ``bench-<hex>`` prefix and is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiormq
import yaml

from asyncgate.jsonutil import dumps
from demo.payloads import seed_customer

ROOT = Path(__file__).resolve().parents[1]
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
PY = sys.executable


@dataclass
class Row:
    """One line of the table: a figure, its side-by-side ratio and its target."""

    name: str
    load: str  # which load generator produced it
    figure: str
    ratio: str = ""
    target: str = ""
    met: bool | None = None  # None: no target for this row
    command: str = ""
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_exchange() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


class Procs:
    """Child processes of one section; ``stop_all`` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
        with (self.workdir / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        with contextlib.suppress(ValueError):
            self.children.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.children)):
            self.stop(proc)


async def wait_http(url: str, within: float = 30.0, proc: Any = None) -> None:
    """Wait until ``url`` answers at all (any status)."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
            try:
                async with http.get(url) as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {within:.0f} s")


def write_config(
    workdir: Path,
    name: str,
    *,
    upstream: str,
    broker: str,
    exchange: str,
    listen: str,
    admin: str,
    consumer_admin: str,
    concurrency: int = 16,
) -> Path:
    """A config file for ``python -m gateway|consumer``; SQLite store in ``workdir``."""
    raw: dict[str, Any] = {
        "gateway": {"listen": listen, "admin_listen": admin},
        "upstream": {"url": upstream, "max_connections": 100},
        "broker": {"url": broker, "exchange": exchange, "confirm_timeout": 30},
        "store": {"url": f"sqlite:///{workdir}/{name}-store.db"},
        "intake": {"max_bulk_items": 5000},
        "consumer": {
            "admin_listen": consumer_admin,
            "concurrency": concurrency,
            "depth_interval": 5,
        },
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass
class Stack:
    """A gateway (and, when started, a consumer) as real processes."""

    procs: Procs
    config: Path
    gateway_url: str
    gateway_admin: str
    consumer_admin: str
    exchange: str
    gateway: Any = None
    consumer: Any = None

    async def start_gateway(self) -> None:
        self.gateway = self.procs.spawn(
            "gateway", [PY, "-m", "gateway", "--config", str(self.config)]
        )
        await wait_http(self.gateway_admin + "/healthz", proc=self.gateway)
        await wait_http(self.gateway_url + "/", proc=self.gateway)

    async def start_consumer(self) -> None:
        self.consumer = self.procs.spawn(
            "consumer", [PY, "-m", "consumer", "--config", str(self.config)]
        )
        await wait_http(self.consumer_admin + "/healthz", proc=self.consumer)

    def stop(self) -> None:
        for proc in (self.consumer, self.gateway):
            if proc is not None:
                self.procs.stop(proc)


def make_stack(procs: Procs, name: str, upstream: str, broker: str = BROKER_URL) -> Stack:
    exchange = new_exchange()
    if broker.startswith("sqlite"):
        broker = f"sqlite:///{procs.workdir}/{name}-queue.db"
    listen = f"127.0.0.1:{free_port()}"
    admin = f"127.0.0.1:{free_port()}"
    consumer_admin = f"127.0.0.1:{free_port()}"
    config = write_config(
        procs.workdir,
        name,
        upstream=upstream,
        broker=broker,
        exchange=exchange,
        listen=listen,
        admin=admin,
        consumer_admin=consumer_admin,
    )
    return Stack(
        procs, config, f"http://{listen}", f"http://{admin}", f"http://{consumer_admin}", exchange
    )


async def start_upstream(procs: Procs, name: str = "upstream") -> str:
    """The fast upstream (``python -m bench.upstream``); returns its base URL."""
    url = f"http://127.0.0.1:{free_port()}"
    proc = procs.spawn(name, [PY, "-m", "bench.upstream", "--listen", url.removeprefix("http://")])
    await wait_http(url + "/_stats", proc=proc)
    return url


async def start_shop(procs: Procs, service_time: float) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    proc = procs.spawn(
        "shop",
        [
            PY,
            "-m",
            "demo.shop",
            "--listen",
            url.removeprefix("http://"),
            "--write-service-time",
            str(service_time),
        ],
    )
    await wait_http(url + "/_shop/stats", proc=proc)
    return url


async def rss_bytes(admin_url: str) -> int:
    """``process_resident_memory_bytes`` from an admin /metrics listener."""
    async with aiohttp.ClientSession() as http, http.get(admin_url + "/metrics") as r:
        text = await r.text()
    m = re.search(r"^process_resident_memory_bytes\s+(\S+)$", text, re.M)
    if m is None:
        raise RuntimeError(f"no RSS in {admin_url}/metrics")
    return int(float(m.group(1)))


async def delete_topology(exchange: str) -> None:
    """Delete a bench exchange's queues and exchanges from the shared RabbitMQ."""
    names = [f"{exchange}.work.default", f"{exchange}.dead"]
    names += [f"{exchange}.delay.{t}s" for t in (1, 5, 15, 60, 300, 900, 1800)]
    names += [f"{exchange}.raw"]
    conn = await aiormq.connect(BROKER_URL)
    try:
        for name in names:
            ch = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await ch.queue_delete(name)
        for x in (exchange, f"{exchange}.requeue"):
            ch = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await ch.exchange_delete(x)
    finally:
        await conn.close()


# --- wrk --------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    command: str


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def parse_wrk(out: str, command: str) -> WrkResult:
    def grab(pattern: str, default: str | None = None) -> str:
        m = re.search(pattern, out, re.M)
        if m is None:
            if default is not None:
                return default
            raise RuntimeError(f"wrk output lacks {pattern!r}:\n{out}")
        return m.group(1)

    requests = int(grab(r"^\s*(\d+) requests in"))
    seconds = _ms(grab(r"requests in ([\d.]+(?:us|ms|s|m)),")) / 1000
    errors = sum(
        int(n)
        for n in re.findall(
            r"(?:connect|read|write|timeout) (\d+)", grab(r"Socket errors: (.*)$", "connect 0")
        )
    )
    return WrkResult(
        requests=requests,
        non_2xx=int(grab(r"Non-2xx or 3xx responses: (\d+)", "0")),
        errors=errors,
        seconds=seconds,
        rps=float(grab(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(grab(r"^\s+50%\s+(\S+)")),
        p99_ms=_ms(grab(r"^\s+99%\s+(\S+)")),
        command=command,
    )


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (make bench installs it as root)")
    return path


async def run_wrk(
    url: str,
    connections: int,
    seconds: float,
    script: Path | None = None,
    threads: int = 1,
    reply_timeout: float = 2.0,  # wrk's default; a slower reply counts as a timeout
) -> WrkResult:
    argv = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    argv.append(f"--timeout={reply_timeout:g}s")
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    shown = " ".join(
        str(script.relative_to(ROOT)) if script is not None and a == str(script) else a
        for a in argv[1:]
    )
    return parse_wrk(out.decode(), f"wrk {shown}")


@contextlib.contextmanager
def section_dir(root: Path, name: str) -> Iterator[Procs]:
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir)
    try:
        yield procs
    finally:
        procs.stop_all()


# --- feeding operations -----------------------------------------------------------------

BULK_PATH = "/rest/all/async/bulk/V1/customers"
AUTH = {"Authorization": "Bearer bench-admin-token", "Content-Type": "application/json"}


def _customers(first: int, count: int, tag: str) -> bytes:
    return dumps([seed_customer(i, tag) for i in range(first, first + count)])


async def feed(gateway: str, first: int, total: int, bulk: int, tag: str, clients: int = 4) -> None:
    """Queue ``total`` distinct customers (numbered from ``first``) in bulks of ``bulk``."""
    starts = iter(range(first, first + total, bulk))

    async def client(http: aiohttp.ClientSession) -> None:
        for start in starts:
            count = min(bulk, first + total - start)
            body = _customers(start, count, tag)
            async with http.post(gateway + BULK_PATH, data=body, headers=AUTH) as r:
                answer = await r.read()
                if r.status != 202:
                    raise RuntimeError(f"bulk of {count} refused: {r.status} {answer[:200]!r}")

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


async def writes_at(stats_url: str) -> int:
    """Writes counted by the fast upstream (``/_stats``) or the demo shop (``/_shop/stats``)."""
    async with aiohttp.ClientSession() as http, http.get(stats_url) as r:
        return int((await r.json())["writes"])
