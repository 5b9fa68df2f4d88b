"""Operations: admin listeners, metrics that move, broker restarts, SIGTERM, JSON logs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.keys import ADMIN_URL
from tests.e2e.conftest import Stack, customer, spawn


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted(p for p in (m.group(2) or "").split(",") if p))
            if got == want:
                return float(m.group(3))
    return 0.0


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def test_admin_endpoints_and_metrics_move_with_traffic(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    admin = stack.gateway_admin
    assert (await fetch(admin + "/healthz"))[0] == 200
    assert (await fetch(admin + "/readyz"))[0] == 200
    # The admin paths are not on the public port: there they pass through to the shop.
    async with stack.http.get(stack.gateway / "metrics") as r:
        assert r.status == 404
    code, _ = await stack.post(
        "/rest/all/async/bulk/V1/customers", [customer(i) for i in range(20)]
    )
    assert code == 202
    _, text = await fetch(admin + "/metrics")
    assert (
        metric(text, "asyncgate_gateway_operations_total", route="async", result="accepted") >= 20
    )
    assert metric(text, "asyncgate_gateway_broker_confirm_duration_seconds_count") >= 1

    work = stack.queue("work")
    consumer = await stack.start_consumer()

    async def depth_exported(value: float) -> bool:
        _, text = await fetch(consumer.admin_url + "/metrics")
        return metric(text, "asyncgate_queue_messages_ready", queue=work, kind="work") == value

    await stack.wait_for(lambda: len(stack.shop.applied) == 20)
    await stack.wait_for(lambda: depth_exported(0))
    _, text = await fetch(consumer.admin_url + "/metrics")
    assert (
        metric(text, "asyncgate_consumer_operations_total", route="async", outcome="success") >= 20
    )
    assert metric(text, "asyncgate_broker_connected", role="consumer", link="consume") == 1
    assert metric(text, "asyncgate_consumer_last_success_timestamp_seconds") > 0
    assert (await fetch(consumer.admin_url + "/readyz"))[0] == 200


async def test_queue_depth_rises_while_consumer_is_stopped(make_stack: Any) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    await stack.start_consumer()
    work = stack.queue("work")
    await stack.stop_consumer()
    code, _ = await stack.post("/rest/all/async/bulk/V1/customers", [customer(i) for i in range(7)])
    assert code == 202
    assert await stack.depth("work") == 7
    consumer = await stack.start_consumer()
    await stack.wait_for(lambda: len(stack.shop.applied) == 7)
    assert await stack.depth("work") == 0

    async def exported_zero() -> bool:
        _, text = await fetch(consumer.admin_url + "/metrics")
        return metric(text, "asyncgate_queue_messages_ready", queue=work, kind="work") == 0

    await stack.wait_for(exported_zero)


async def test_readiness_fails_without_broker(make_settings: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the broker is unreachable
        settings = make_settings(
            broker={"url": f"amqp://guest:guest@127.0.0.1:{port}/", "confirm_timeout": 0.3}
        )
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            code, body = await fetch(app[ADMIN_URL] + "/readyz")
            assert code == 503
            assert "broker not connected" in body
            assert (await fetch(app[ADMIN_URL] + "/healthz"))[0] == 200
        finally:
            await runner.cleanup()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="never: make test installs promtool")
async def test_promtool_accepts_both_metrics_outputs(make_stack: Any, tmp_path: Path) -> None:
    stack: Stack = await make_stack()
    code, _ = await stack.post("/rest/all/async/V1/customers", customer(1))
    assert code == 202
    await stack.wait_for(lambda: len(stack.shop.applied) == 1)
    assert stack.consumer is not None
    for url in (stack.gateway_admin, stack.consumer.admin_url):
        _, text = await fetch(url + "/metrics")
        check = await asyncio.to_thread(
            subprocess.run,
            ["promtool", "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr


async def _rabbit(action: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", action, stdout=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_broker_restart_gives_503_then_recovers_and_delivers_everything(
    make_stack: Any,
) -> None:
    stack: Stack = await make_stack(with_consumer=False, broker={"confirm_timeout": 1})
    code, before = await stack.post(
        "/rest/all/async/bulk/V1/customers", [customer(i) for i in range(30)]
    )
    assert code == 202
    await _rabbit("stop_app")
    try:
        code, body = await stack.post("/rest/all/async/V1/customers", customer(100))
        assert code == 503 and "message" in body
    finally:
        await _rabbit("start_app")

    async def accepted_again() -> bool:
        code, _ = await stack.post("/rest/all/async/V1/customers", customer(101))
        return code == 202

    await stack.wait_for(accepted_again, within=60)
    await stack.start_consumer()
    await stack.wait_for(lambda: len(stack.shop.customers) == 31, within=60)
    emails = {c["email"] for c in stack.shop.customers.values()}
    assert "async-jdoe100@example.com" not in emails  # the 503 was not queued
    assert {f"async-jdoe{i}@example.com" for i in range(30)} <= emails
    assert before["errors"] is False


async def test_consumer_survives_broker_restart_mid_drain(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    await stack.set_latency(0.01, 0.03)
    code, _ = await stack.post(
        "/rest/all/async/bulk/V1/customers", [customer(i) for i in range(200)]
    )
    assert code == 202
    await stack.wait_for(lambda: len(stack.shop.customers) >= 20)
    await _rabbit("stop_app")
    await asyncio.sleep(1)
    await _rabbit("start_app")
    await stack.wait_for(lambda: len(stack.shop.customers) == 200, within=90)
    # Duplicates are bounded: at most the replays that were in flight when the link dropped.
    assert len(stack.shop.applied) == 200
    assert stack.consumer is not None
    await stack.wait_for(lambda: _ready(stack.consumer.admin_url), within=30)


async def _ready(admin_url: str) -> bool:
    return (await fetch(admin_url + "/readyz"))[0] == 200


async def test_sigterm_during_a_burst_loses_nothing_and_exits_zero(
    make_stack: Any, write_config: Any, tmp_path: Path
) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    await stack.set_latency(0.02, 0.05)
    config = write_config(
        stack.shop_url,
        broker={"exchange": stack.settings.broker.exchange},
        store={"url": stack.settings.store.url},
        consumer={"concurrency": 16, "shutdown_grace": 5},
    )
    code, _ = await stack.post(
        "/rest/all/async/bulk/V1/customers", [customer(i) for i in range(300)]
    )
    assert code == 202
    log = tmp_path / "consumer.log"
    proc = spawn("consumer", config, log)
    try:
        await stack.wait_for(lambda: len(stack.shop.customers) >= 30, within=30)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    applied_at_stop = len(stack.shop.customers)
    assert applied_at_stop < 300, "the burst finished before SIGTERM; nothing was tested"
    proc = spawn("consumer", config, tmp_path / "consumer2.log")
    try:
        await stack.wait_for(lambda: len(stack.shop.customers) == 300, within=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert len(stack.shop.applied) <= 300 + 16  # at most one duplicate per in-flight replay
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    events = {line["event"] for line in lines}
    assert {"consumer_started", "consumer_stopping", "consumer_stopped"} <= events
    replayed = [x for x in lines if x["event"] == "operation_replayed"]
    assert replayed and all(x["bulk_uuid"] and x["operation_id"] for x in replayed)


async def test_gateway_logs_are_json_with_bound_ids(
    make_stack: Any, write_config: Any, tmp_path: Path
) -> None:
    stack: Stack = await make_stack(with_consumer=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(
        stack.shop_url,
        broker={"exchange": stack.settings.broker.exchange},
        store={"url": stack.settings.store.url},
        gateway={"listen": f"127.0.0.1:{port}"},
    )
    log = tmp_path / "gateway.log"
    proc = spawn("gateway", config, log)
    try:

        async def up() -> bool:
            try:
                async with stack.http.get(f"http://127.0.0.1:{port}/rest/V1/customers/1") as r:
                    return r.status in (200, 404)
            except aiohttp.ClientError:
                return False

        await stack.wait_for(up, within=20)
        async with stack.http.post(
            f"http://127.0.0.1:{port}/rest/all/async/V1/customers",
            json=customer(1),
            headers={"Authorization": "Bearer very-secret-token", "X-Request-Id": "req-42"},
        ) as r:
            assert r.status == 202
            bulk_uuid = (await r.json())["bulk_uuid"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    text = log.read_text()
    assert "very-secret-token" not in text
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    accepted = [x for x in lines if x["event"] == "bulk_accepted"]
    assert accepted[0]["bulk_uuid"] == bulk_uuid and accepted[0]["request_id"] == "req-42"
    requests = [x for x in lines if x["event"] == "request" and x["mode"] == "async"]
    assert requests[0]["request_id"] == "req-42" and requests[0]["status"] == 202


async def test_consumer_killed_with_sigkill_mid_drain_loses_nothing(
    make_stack: Any, write_config: Any, tmp_path: Path
) -> None:
    """At-least-once, proven by killing: every 202'd operation is applied, duplicates bounded."""
    stack: Stack = await make_stack(with_consumer=False)
    await stack.set_latency(0.01, 0.04)
    concurrency, kills, total = 16, 3, 300
    config = write_config(
        stack.shop_url,
        broker={"exchange": stack.settings.broker.exchange},
        store={"url": stack.settings.store.url},
        consumer={"concurrency": concurrency},
    )
    code, body = await stack.post(
        "/rest/all/async/bulk/V1/customers", [customer(i) for i in range(total)]
    )
    assert code == 202 and not body["errors"]
    for k in range(kills):
        proc = spawn("consumer", config, tmp_path / f"consumer{k}.log")
        try:
            target = (k + 1) * total // (kills + 2)
            await stack.wait_for(lambda t=target: len(stack.shop.customers) >= t, within=60)
        finally:
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 30)
    assert len(stack.shop.customers) < total, "the drain finished before the last kill"
    proc = spawn("consumer", config, tmp_path / "consumer-final.log")
    try:
        await stack.wait_for(lambda: len(stack.shop.customers) == total, within=90)
        status = await stack.bulk_done(body["bulk_uuid"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    # Reconcile against the shop's own record: every accepted customer exists, and a
    # write was repeated only when a kill caught it in flight.
    emails = {c["email"] for c in stack.shop.customers.values()}
    assert emails == {customer(i)["customer"]["email"] for i in range(total)}
    writes_per_operation: dict[str | None, int] = {}
    for write in stack.shop.applied:
        writes_per_operation[write.request_id] = writes_per_operation.get(write.request_id, 0) + 1
    assert len(writes_per_operation) == total
    assert len(stack.shop.applied) - total <= kills * concurrency
    # A create replayed again after a kill meets "already exists" (400): the status then
    # says 3 although the customer exists. Bounded by the replays a kill caught in flight.
    statuses = [op["status"] for op in status["operations_list"]]
    assert set(statuses) <= {1, 3}
    assert statuses.count(3) <= kills * concurrency
