"""RabbitMQ transport on aiormq: quorum queues, publisher confirms, TTL delay tiers.

Topology (declared idempotently by both roles at every (re)connect)::

    exchange <x> (direct) --routing key = queue name--> <x>.work.<queue>  (quorum)
    default exchange --> <x>.delay.<N>s (quorum, TTL N s) --dead-letter-->
        exchange <x>.requeue (headers, match asyncgate-queue) --> <x>.work.<queue>
    <x>.dead (quorum): the parking lot; also where a work queue sends a message
        past its delivery limit (a poison message that kills consumers).

Delay tiers are one queue per delay, because a per-message TTL only expires at
the head of a queue and mixed delays would block each other.  Delay and work
queues dead-letter *at-least-once* (which needs ``x-overflow: reject-publish``),
so a message moving between them is never dropped.

Each role keeps its connections alive itself: aiormq does not reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from asyncgate import metrics
from asyncgate.errors import PublishError
from asyncgate.logs import get_logger
from asyncgate.settings import Settings
from asyncgate.transport.base import Delivery, Handler, Outgoing, QueueDepth, Transport

log = get_logger("asyncgate.transport")

QUEUE_HEADER = "asyncgate-queue"
# Redeliveries before RabbitMQ parks a message that keeps killing its consumer.
DELIVERY_LIMIT = 100
_AMQP_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)


def _with_heartbeat(url: str, name: str) -> str:
    """Heartbeats detect a blackholed broker; without them a dead link looks alive."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", "10")
    query.setdefault("name", name)
    return urlunsplit(parts._replace(query=urlencode(query)))


_OPEN_TIMEOUT = 15.0  # seconds to connect, open the channel and declare the topology


class _Link:
    """One connection with one channel, reopened with backoff whenever it is lost."""

    def __init__(
        self,
        url: str,
        role: str,
        purpose: str,
        on_open: Callable[[aiormq.abc.AbstractChannel], Awaitable[None]],
    ) -> None:
        name = f"asyncgate-{role}-{purpose}"
        self._url = _with_heartbeat(url, name)
        self._name = name
        self._connected_gauge = metrics.BROKER_CONNECTED.labels(role, purpose)
        self._connected_gauge.set(0)
        self._on_open = on_open
        self._ready = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None

    @property
    def up(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"amqp-link-{self._name}")

    async def wait(self, within: float) -> aiormq.abc.AbstractChannel:
        if self._ready.is_set() and self.channel is not None:
            return self.channel  # the usual case: no timer, no task per publish
        try:
            await asyncio.wait_for(self._ready.wait(), within)
        except TimeoutError:
            raise PublishError("the broker is not connected") from None
        assert self.channel is not None
        return self.channel

    async def drop(self) -> None:
        """Close the current connection; the link reconnects (used on consumer cancel)."""
        if self.connection is not None:
            await self.connection.close()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.connection is not None:
            with contextlib.suppress(*_AMQP_ERRORS):
                await self.connection.close()

    async def _run(self) -> None:
        backoff = 0.2
        while not self._closed:
            try:
                # Bounded: a peer that accepts and then never answers (a blackholed or
                # half-open broker) would otherwise hold the reconnect here for good.
                async with asyncio.timeout(_OPEN_TIMEOUT):
                    self.connection = await aiormq.connect(self._url)
                    self.channel = await self.connection.channel(publisher_confirms=True)
                    await self._on_open(self.channel)
                self._ready.set()
                self._connected_gauge.set(1)
                log.info("broker_connected", link=self._name)
                backoff = 0.2
                closing = [self.connection.closing, self.channel.closing]
                await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
                log.warning("broker_connection_lost", link=self._name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure to (re)connect is retried
                log.warning("broker_connect_failed", link=self._name, error=repr(exc))
            finally:
                self._ready.clear()
                self._connected_gauge.set(0)
                self.channel = None
            if self.connection is not None and not self._closed:
                with contextlib.suppress(*_AMQP_ERRORS):
                    await self.connection.close()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 10.0)


class AmqpDelivery(Delivery):
    def __init__(self, channel: aiormq.abc.AbstractChannel, msg: aiormq.abc.DeliveredMessage):
        props = msg.header.properties
        frame = msg.delivery
        assert isinstance(frame, Basic.Deliver | Basic.GetOk)
        self._channel = channel
        self._tag: int = frame.delivery_tag or 0
        self._answered = False
        self.body = msg.body
        self.message_id = props.message_id or ""
        self.redelivered = bool(frame.redelivered)
        self.headers = {str(k): str(v) for k, v in (props.headers or {}).items() if k != "x-death"}

    async def ack(self) -> None:
        # Answer once: a second answer to a tag makes RabbitMQ close the whole channel.
        if self._answered:
            return
        self._answered = True
        # A channel lost since delivery means the broker requeued it already.
        with contextlib.suppress(*_AMQP_ERRORS):
            await self._channel.basic_ack(self._tag)

    async def requeue(self) -> None:
        if self._answered:
            return
        self._answered = True
        with contextlib.suppress(*_AMQP_ERRORS):
            await self._channel.basic_nack(self._tag, requeue=True)


class AmqpTransport(Transport):
    def __init__(self, settings: Settings, role: str) -> None:
        self._settings = settings
        self._role = role
        self._x = settings.broker.exchange
        self._tiers = settings.retry.delay_tiers
        self._publisher = _Link(settings.broker.url, role, "publish", self._declare)
        self._consumer: _Link | None = None
        self._consuming = False

    # --- names ------------------------------------------------------------------------
    def work_queue(self, queue: str) -> str:
        return f"{self._x}.work.{queue}"

    def delay_queue(self, tier: int) -> str:
        return f"{self._x}.delay.{tier}s"

    @property
    def dead_queue(self) -> str:
        return f"{self._x}.dead"

    # --- lifecycle --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._publisher.up and (self._consumer is None or self._consumer.up)

    async def start(self) -> None:
        self._publisher.start()
        # Start-up waits for the first connection, so a misconfigured URL shows at once
        # in the logs; afterwards the link keeps retrying on its own.
        with contextlib.suppress(PublishError):
            await self._publisher.wait(self._settings.broker.confirm_timeout)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.close()
        await self._publisher.close()

    async def _declare(self, ch: aiormq.abc.AbstractChannel) -> None:
        max_len = self._settings.broker.max_queue_length
        await ch.exchange_declare(self._x, exchange_type="direct", durable=True)
        await ch.exchange_declare(f"{self._x}.requeue", exchange_type="headers", durable=True)
        await ch.queue_declare(self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"})
        for queue in self._settings.queues:
            name = self.work_queue(queue)
            args: dict[str, Any] = {
                "x-queue-type": "quorum",
                "x-overflow": "reject-publish",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead_queue,
                "x-dead-letter-strategy": "at-least-once",
            }
            if max_len:
                args["x-max-length"] = max_len
            await ch.queue_declare(name, durable=True, arguments=args)
            await ch.queue_bind(name, self._x, routing_key=queue)
            await ch.queue_bind(
                name,
                f"{self._x}.requeue",
                routing_key="",
                arguments={"x-match": "all", QUEUE_HEADER: queue},
            )
        for tier in self._tiers:
            await ch.queue_declare(
                self.delay_queue(tier),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": tier * 1000,
                    "x-overflow": "reject-publish",
                    "x-dead-letter-exchange": f"{self._x}.requeue",
                    "x-dead-letter-strategy": "at-least-once",
                },
            )

    # --- publishing -------------------------------------------------------------------
    async def _publish_one(
        self, ch: aiormq.abc.AbstractChannel, exchange: str, routing_key: str, msg: Outgoing
    ) -> None:
        await ch.basic_publish(
            msg.body,
            exchange=exchange,
            routing_key=routing_key,
            properties=Basic.Properties(
                delivery_mode=2,
                message_id=msg.message_id,
                content_type="application/json",
                headers={QUEUE_HEADER: msg.queue, **msg.headers},
            ),
            mandatory=True,
            timeout=self._settings.broker.confirm_timeout,
        )

    async def _publish_all(self, routes: Sequence[tuple[str, str, Outgoing]]) -> None:
        ch = await self._publisher.wait(self._settings.broker.confirm_timeout)
        if len(routes) == 1:  # one message needs no gather (and no task) around it
            x, key, msg = routes[0]
            try:
                await self._publish_one(ch, x, key, msg)
            except (*_AMQP_ERRORS, PublishError) as exc:
                raise PublishError(f"1 of 1 not confirmed: {exc!r}") from exc
            return
        # Confirms pipeline: every publish is on the wire before the first confirm is awaited.
        # Across requests too: each request's publishes share the channel with the others'.
        results = await asyncio.gather(
            *(self._publish_one(ch, x, key, msg) for x, key, msg in routes),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, (*_AMQP_ERRORS, PublishError)):
                raise failure
        if failures:
            raise PublishError(f"{len(failures)} of {len(routes)} not confirmed: {failures[0]!r}")

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        await self._publish_all([(self._x, m.queue, m) for m in messages])

    def tier_for(self, delay: float) -> int:
        for tier in self._tiers:
            if tier >= delay:
                return tier
        return self._tiers[-1]

    async def publish_delayed(self, message: Outgoing, delay: float) -> float:
        tier = self.tier_for(delay)
        await self._publish_all([("", self.delay_queue(tier), message)])
        return float(tier)

    async def dead_letter(self, message: Outgoing) -> None:
        await self._publish_all([("", self.dead_queue, message)])

    # --- consuming --------------------------------------------------------------------
    async def consume(self, queues: Sequence[str], prefetch: int, handler: Handler) -> None:
        async def on_open(ch: aiormq.abc.AbstractChannel) -> None:
            await self._declare(ch)
            await ch.basic_qos(prefetch_count=prefetch)
            ch.on_consumer_cancel_callbacks.add(self._on_cancel)

            async def deliver(msg: aiormq.abc.DeliveredMessage) -> None:
                await handler(AmqpDelivery(ch, msg))

            for queue in queues:
                await ch.basic_consume(self.work_queue(queue), deliver, no_ack=False)

        self._consumer = _Link(self._settings.broker.url, self._role, "consume", on_open)
        self._consuming = True
        self._consumer.start()
        with contextlib.suppress(PublishError):
            await self._consumer.wait(self._settings.broker.confirm_timeout)

    async def _on_cancel(self, frame: Any) -> None:
        # A broker-side cancel (queue deleted, node lost) would otherwise leave us idle.
        log.warning("consumer_cancelled_by_broker", consumer_tag=getattr(frame, "consumer_tag", ""))
        if self._consumer is not None:
            await self._consumer.drop()

    async def stop_consuming(self) -> None:
        self._consuming = False
        if self._consumer is None or self._consumer.channel is None:
            return
        ch = self._consumer.channel
        for tag in list(getattr(ch, "consumers", {})):
            with contextlib.suppress(*_AMQP_ERRORS):
                await ch.basic_cancel(tag)

    @property
    def consuming(self) -> bool:
        return self._consuming and self._consumer is not None and self._consumer.up

    # --- operator views ---------------------------------------------------------------
    async def depth(self) -> list[QueueDepth]:
        conn = self._publisher.connection
        if not self._publisher.up or conn is None:
            return []
        names = [(self.work_queue(q), "work") for q in self._settings.queues]
        names += [(self.delay_queue(t), "delay") for t in self._tiers]
        names.append((self.dead_queue, "dead"))
        out: list[QueueDepth] = []
        ch: aiormq.abc.AbstractChannel | None = None
        for name, kind in names:
            try:
                # A passive declare of a missing queue closes its channel: use a
                # disposable one, never the publishing channel.
                if ch is None or ch.is_closed:
                    ch = await conn.channel(publisher_confirms=False)
                ok = await ch.queue_declare(name, passive=True, timeout=5)
                out.append(QueueDepth(name, kind, ok.message_count or 0, ok.consumer_count or 0))
            except _AMQP_ERRORS:
                continue
        if ch is not None and not ch.is_closed:
            with contextlib.suppress(*_AMQP_ERRORS):
                await ch.close()
        return out

    async def dead_letters(self, limit: int) -> list[Delivery]:
        ch = await self._publisher.wait(self._settings.broker.confirm_timeout)
        out: list[Delivery] = []
        for _ in range(limit):
            msg = await ch.basic_get(self.dead_queue, no_ack=False)
            if msg.delivery is None or not isinstance(msg.delivery, Basic.GetOk):
                break
            out.append(AmqpDelivery(ch, msg))
        return out
