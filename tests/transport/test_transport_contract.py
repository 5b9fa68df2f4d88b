"""The Transport contract: the same tests against RabbitMQ and the embedded SQLite queue.

RabbitMQ is the server at 127.0.0.1:5672, with the test's own exchange (see conftest); the
SQLite queue is a file in tmp_path.  Each transport a test opens stands for a process of its
own; where a process must die mid-way, it is a real subprocess killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncgate.settings import Settings
from asyncgate.transport import Delivery, Outgoing, Transport, create_transport
from asyncgate.transport.amqp import QUEUE_HEADER, AmqpTransport
from asyncgate.transport.base import Handler
from asyncgate.transport.sqlite import SqliteTransport

ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0

# A process of the project that publishes, or takes a message and never answers it, then
# waits to be killed.  It says what it did on stdout.
CHILD = """
import asyncio, json, sys
from asyncgate.settings import settings_from_mapping
from asyncgate.transport import Outgoing, create_transport

async def main(action, raw, n):
    transport = create_transport(settings_from_mapping(json.loads(raw)), "test-child")
    await transport.start()
    if action == "publish":  # concurrently, as the gateway's requests do
        await asyncio.gather(*(
            transport.publish([Outgoing("default", b"%d" % i, "m%d" % i, {"i": str(i)})])
            for i in range(int(n))
        ))
        print("published", flush=True)
    else:
        async def hold(delivery):
            print("holding", delivery.message_id, flush=True)
        await transport.consume(["default"], 1, hold)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""

Opener = Callable[[Settings], Awaitable[Transport]]
Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture(params=["amqp", "sqlite"])
def settings_for(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path
) -> Callable[..., Settings]:
    """Settings for the transport under test; keyword arguments go to the broker section."""

    def make(**broker: Any) -> Settings:
        if request.param == "sqlite":
            broker = {"url": f"sqlite:///{tmp_path}/queue.db", **broker}
        return make_settings(broker=broker)

    return make


@pytest.fixture
async def open_transport() -> AsyncIterator[Opener]:
    opened: list[Transport] = []

    async def opener(settings: Settings) -> Transport:
        transport = create_transport(settings, "test")
        await transport.start()
        opened.append(transport)
        return transport

    yield opener
    for transport in reversed(opened):
        await transport.close()


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    children: list[asyncio.subprocess.Process] = []

    async def start(action: str, settings: Settings, n: int = 0) -> asyncio.subprocess.Process:
        raw = {
            "broker": {
                "url": settings.broker.url,
                "exchange": settings.broker.exchange,
                "lease_seconds": settings.broker.lease_seconds,
            },
            "retry": {"delay_tiers": list(settings.retry.delay_tiers)},
        }
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            action,
            json.dumps(raw),
            str(n),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        await kill(child)


async def kill(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()  # SIGKILL: no cleanup of any kind
    await child.communicate()


async def read_until(child: asyncio.subprocess.Process, prefix: str) -> str:
    async def read() -> str:
        assert child.stdout is not None
        while line := (await child.stdout.readline()).decode():
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"the child ended before printing {prefix!r}")

    return await asyncio.wait_for(read(), 2 * WAIT)


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], within: float = WAIT) -> None:
    """Poll ``condition`` (plain or async) until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def recorder(got: list[Delivery], ack: bool = True) -> Handler:
    async def handle(delivery: Delivery) -> None:
        got.append(delivery)
        if ack:
            await delivery.ack()

    return handle


async def ready_by_kind(transport: Transport) -> dict[str, int]:
    out: dict[str, int] = {}
    for depth in await transport.depth():
        out[depth.kind] = out.get(depth.kind, 0) + depth.ready
    return out


async def test_publish_then_consume_delivers_body_id_and_headers(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()
    gateway = await open_transport(settings)
    consumer = await open_transport(settings)
    await gateway.publish([Outgoing("default", b'{"a": 1}', "op-1", {"x-trace": "t-1"})])
    got: list[Delivery] = []
    await consumer.consume(["default"], 4, recorder(got))
    await wait_until(lambda: len(got) == 1)
    delivery = got[0]
    assert (delivery.body, delivery.message_id, delivery.redelivered) == (
        b'{"a": 1}',
        "op-1",
        False,
    )
    assert delivery.headers["x-trace"] == "t-1"
    assert delivery.headers[QUEUE_HEADER] == "default"
    await asyncio.sleep(0.2)
    assert len(got) == 1  # acked: not delivered again


async def test_fifo_order_within_a_queue(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()
    gateway = await open_transport(settings)
    for start in range(0, 50, 10):
        await gateway.publish(
            [Outgoing("default", b"%d" % i, f"m{i}") for i in range(start, start + 10)]
        )
    consumer = await open_transport(settings)
    got: list[Delivery] = []
    await consumer.consume(["default"], 8, recorder(got))
    await wait_until(lambda: len(got) == 50)
    assert [d.message_id for d in got] == [f"m{i}" for i in range(50)]


async def test_a_confirmed_publish_survives_a_killed_publisher(
    settings_for: Callable[..., Settings], open_transport: Opener, spawn: Spawn
) -> None:
    settings = settings_for()
    child = await spawn("publish", settings, 40)
    await read_until(child, "published")
    await kill(child)
    consumer = await open_transport(settings)
    got: list[Delivery] = []
    await consumer.consume(["default"], 16, recorder(got))
    await wait_until(lambda: len(got) == 40)
    assert sorted(d.message_id for d in got) == sorted(f"m{i}" for i in range(40))
    assert all(d.body == d.message_id[1:].encode() for d in got)
    assert all(d.headers["i"] == d.message_id[1:] for d in got)


async def test_requeue_gives_the_message_back_at_once(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()
    transport = await open_transport(settings)
    await transport.publish([Outgoing("default", b"x", "op-1")])
    got: list[Delivery] = []

    async def requeue_first(delivery: Delivery) -> None:
        got.append(delivery)
        await (delivery.requeue() if len(got) == 1 else delivery.ack())

    await transport.consume(["default"], 1, requeue_first)
    await wait_until(lambda: len(got) == 2)
    assert [d.message_id for d in got] == ["op-1", "op-1"]
    assert [d.redelivered for d in got] == [False, True]


async def test_an_unacked_message_comes_back_when_its_consumer_closes(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()
    gateway = await open_transport(settings)
    await gateway.publish([Outgoing("default", b"x", "op-1")])
    first = await open_transport(settings)
    held: list[Delivery] = []
    await first.consume(["default"], 1, recorder(held, ack=False))
    await wait_until(lambda: len(held) == 1)
    assert not held[0].redelivered
    await first.close()  # RabbitMQ requeues a closed connection's unacked messages
    second = await open_transport(settings)
    got: list[Delivery] = []
    started = time.monotonic()
    await second.consume(["default"], 1, recorder(got))
    await wait_until(lambda: len(got) == 1)
    assert time.monotonic() - started < 1.0  # at once, not after a lease ran out
    assert (got[0].message_id, got[0].redelivered) == ("op-1", True)


async def test_an_unacked_message_comes_back_when_its_consumer_is_killed(
    settings_for: Callable[..., Settings], open_transport: Opener, spawn: Spawn
) -> None:
    settings = settings_for(lease_seconds=1)
    gateway = await open_transport(settings)
    await gateway.publish([Outgoing("default", b"x", "op-1")])
    child = await spawn("hold", settings)
    assert await read_until(child, "holding") == "holding op-1"
    await kill(child)
    consumer = await open_transport(settings)
    got: list[Delivery] = []
    await consumer.consume(["default"], 1, recorder(got))
    await wait_until(lambda: len(got) == 1)
    assert (got[0].message_id, got[0].redelivered) == ("op-1", True)


async def test_a_slow_handler_keeps_its_message(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    """A lease is renewed while its consumer lives: a replay longer than it is not doubled."""
    settings = settings_for(lease_seconds=1)
    slow = await open_transport(settings)
    release = asyncio.Event()
    held: list[Delivery] = []

    async def hold_then_ack(delivery: Delivery) -> None:
        held.append(delivery)
        await release.wait()
        await delivery.ack()

    await slow.consume(["default"], 1, hold_then_ack)
    gateway = await open_transport(settings)
    await gateway.publish([Outgoing("default", b"x", "op-1")])
    await wait_until(lambda: len(held) == 1)
    other = await open_transport(settings)
    got: list[Delivery] = []
    await other.consume(["default"], 1, recorder(got))
    await asyncio.sleep(2.5)
    release.set()
    await asyncio.sleep(0.3)
    assert got == []
    assert len(held) == 1


async def test_a_delayed_message_arrives_after_its_tier(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()  # delay tiers 1 s and 2 s
    transport = await open_transport(settings)
    sent = time.monotonic()
    assert await transport.publish_delayed(Outgoing("default", b"a", "op-a"), 0.5) == 1.0
    assert await transport.publish_delayed(Outgoing("default", b"b", "op-b"), 1.5) == 2.0
    assert await transport.publish_delayed(Outgoing("default", b"c", "op-c"), 30) == 2.0
    arrived: dict[str, float] = {}

    async def note(delivery: Delivery) -> None:
        arrived[delivery.message_id] = time.monotonic() - sent
        assert not delivery.redelivered
        await delivery.ack()

    await transport.consume(["default"], 4, note)
    await wait_until(lambda: len(arrived) == 3)
    assert 0.9 <= arrived["op-a"] < 1.9
    assert 1.9 <= arrived["op-b"] < 3.5
    assert 1.9 <= arrived["op-c"] < 3.5


async def test_dead_letters_keep_their_headers_until_acked(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()
    consumer = await open_transport(settings)
    reason = {"x-asyncgate-reason": "permanent", "x-asyncgate-error": "HTTP 400"}
    await consumer.dead_letter(Outgoing("default", b"x", "op-x", reason))
    await consumer.dead_letter(Outgoing("default", b"y", "op-y", reason))
    operator = await open_transport(settings)
    letters = await asyncio.wait_for(operator.dead_letters(10), WAIT)
    assert [(d.message_id, d.body) for d in letters] == [("op-x", b"x"), ("op-y", b"y")]
    assert {k: letters[0].headers[k] for k in reason} == reason
    assert letters[0].headers[QUEUE_HEADER] == "default"
    await letters[0].ack()
    await letters[1].requeue()
    again = await asyncio.wait_for(operator.dead_letters(10), WAIT)
    assert [d.message_id for d in again] == ["op-y"]
    await again[0].ack()
    assert await asyncio.wait_for(operator.dead_letters(10), WAIT) == []


async def test_depth_counts_ready_delayed_dead_and_consumers(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()
    x = settings.broker.exchange
    transport = await open_transport(settings)
    await transport.publish([Outgoing("default", b"%d" % i, f"m{i}") for i in range(3)])
    await transport.publish_delayed(Outgoing("default", b"d", "op-d"), 2)
    await transport.dead_letter(Outgoing("default", b"x", "op-x"))
    depths = await transport.depth()
    assert await ready_by_kind(transport) == {"work": 3, "delay": 1, "dead": 1}
    delay_queue = f"{x}.delay" if isinstance(transport, SqliteTransport) else f"{x}.delay.2s"
    assert [d.queue for d in depths if d.kind == "delay" and d.ready] == [delay_queue]
    assert [(d.queue, d.consumers) for d in depths if d.kind == "work"] == [
        (f"{x}.work.default", 0)
    ]
    assert [d.queue for d in depths if d.kind == "dead"] == [f"{x}.dead"]

    consumer = await open_transport(settings)
    await consumer.consume(["default"], 4, recorder([]))

    async def work_queue_is(ready: int, consumers: int) -> bool:
        [work] = [d for d in await transport.depth() if d.kind == "work"]
        return (work.ready, work.consumers) == (ready, consumers)

    await wait_until(lambda: work_queue_is(0, 1))
    await consumer.stop_consuming()
    await wait_until(lambda: work_queue_is(0, 0))


async def test_prefetch_caps_unacked_deliveries(
    settings_for: Callable[..., Settings], open_transport: Opener
) -> None:
    settings = settings_for()
    transport = await open_transport(settings)
    await transport.publish([Outgoing("default", b"%d" % i, f"m{i}") for i in range(10)])
    release = asyncio.Event()
    running = peak = 0
    done: list[Delivery] = []

    async def block(delivery: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1  # before the ack: the slot stays taken until the ack
        await delivery.ack()
        done.append(delivery)

    await transport.consume(["default"], 3, block)
    await wait_until(lambda: running == 3)
    await asyncio.sleep(0.3)
    assert (running, peak) == (3, 3)
    release.set()
    await wait_until(lambda: len(done) == 10)
    assert peak == 3


async def test_create_transport_picks_by_url(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(create_transport(make_settings(), "test"), AmqpTransport)
    # As the store's: everything after sqlite:/// is the path, relative or (/...) absolute.
    monkeypatch.chdir(tmp_path)
    for url, path in [
        ("sqlite:///relative/queue.db", tmp_path / "relative/queue.db"),
        (f"sqlite:///{tmp_path}/absolute/queue.db", tmp_path / "absolute/queue.db"),
    ]:
        transport = create_transport(make_settings(broker={"url": url}), "test")
        assert isinstance(transport, SqliteTransport)
        await transport.start()
        assert transport.connected
        await transport.close()
        assert not transport.connected
        assert path.exists()
