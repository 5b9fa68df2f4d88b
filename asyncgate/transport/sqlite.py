"""Embedded durable queue: the broker as tables in one SQLite file, for one host without RabbitMQ.

Selected by ``broker.url: sqlite:///path`` (``sqlite:////abs/path`` is absolute, as for the
store); the gateway and the consumer are processes sharing the file.  It owns the ``queue_*``
tables, so the file may also be the store's.

- A message is a row of ``queue_messages``, ready once ``available_at`` has passed; FIFO is by
  autoincrement id among ready rows.  A delay and a lease (a delivery in flight) both just move
  ``available_at`` on, so a killed consumer's messages come back when their lease runs out.
- A lease carries a token: only its holder can ack (delete) or requeue the row.  A live consumer
  renews its leases, so a slow replay is not handed out twice; ``close`` gives them back, as a
  RabbitMQ connection close requeues.  Dead letters (``queue_dead``) are leased the same way.
- Consumers renew a row per queue in ``queue_consumers``: ``depth`` counts every process's.
- Writes go through one writer task that commits all waiting writes at once (group commit, as
  the store does); reads use a second connection.  Consumers poll every 25 ms, and at once
  when this process published or freed a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from asyncgate import metrics
from asyncgate.errors import PublishError
from asyncgate.logs import get_logger
from asyncgate.settings import Settings
from asyncgate.sqlite_writer import GroupCommitWriter, migrate, open_connections
from asyncgate.transport.amqp import DELIVERY_LIMIT, QUEUE_HEADER
from asyncgate.transport.base import Delivery, Handler, Outgoing, QueueDepth, Transport

log = get_logger("asyncgate.transport")

T = TypeVar("T")

_PREFIX = "sqlite:///"
# Short enough that a message published by the other process waits no longer than a
# RabbitMQ round trip would add; each poll is one indexed read on the reader connection.
_POLL_SECONDS = 0.025
_WORK, _DEAD = "queue_messages", "queue_dead"
_COLUMNS = "id, queue, message_id, headers, body, deliveries"
# available_at 0: ready now, whatever the clocks of the processes say.
_RELEASE = "UPDATE {table} SET lease = NULL, available_at = 0 WHERE id = ? AND lease = ?"

_TABLE = """CREATE TABLE {table} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: (id, lease) names one lease forever
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    headers TEXT NOT NULL,  -- a JSON object of strings
    body BLOB NOT NULL,
    available_at REAL NOT NULL,  -- Unix time from which it is ready (again)
    lease TEXT,  -- the token of the delivery holding it
    deliveries INTEGER NOT NULL DEFAULT 0
)"""
# Version N is _MIGRATIONS[N - 1]; a step is never edited once released, only appended.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        _TABLE.format(table=_WORK),
        f"CREATE INDEX queue_messages_ready ON {_WORK} (queue, available_at)",
        _TABLE.format(table=_DEAD),
        """CREATE TABLE queue_consumers (
            consumer TEXT NOT NULL,
            queue TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (consumer, queue)
        )""",
    ),
)


class SqliteDelivery(Delivery):
    def __init__(self, transport: SqliteTransport, table: str, token: str, row: Any) -> None:
        row_id, queue, message_id, headers, body, deliveries = row
        self._transport = transport
        self.table = table
        self.row_id: int = row_id
        self.token = token
        self.body = bytes(body)
        self.message_id = message_id
        self.redelivered = deliveries > 1
        self.headers = {QUEUE_HEADER: queue, **json.loads(headers)}

    async def ack(self) -> None:
        await self._transport._answer(self, f"DELETE FROM {self.table} WHERE id = ? AND lease = ?")

    async def requeue(self) -> None:
        await self._transport._answer(self, _RELEASE.format(table=self.table))


class SqliteTransport(Transport):
    def __init__(self, settings: Settings, role: str) -> None:
        url = settings.broker.url
        path = url[len(_PREFIX) :] if url.startswith(_PREFIX) else ""
        if not path:
            raise ValueError(f"a SQLite broker URL is sqlite:///<path to the file>, not {url!r}")
        self._path = Path(path)
        self._settings = settings
        self._lease_seconds = settings.broker.lease_seconds
        # Names this process's rows in queue_consumers, for whoever inspects the file.
        self._name = f"{role}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._role = role
        # As for the amqp links, but a "link" is up while the file is open.
        self._gauges = [metrics.BROKER_CONNECTED.labels(role, "publish")]
        self._gauges[0].set(0)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writes: GroupCommitWriter | None = None
        self._wake = asyncio.Event()
        self._lease_lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._queues = "[]"  # the consumed queues, as JSON for json_each()
        self._consuming = False
        self._closing = False
        self._handlers: set[asyncio.Task[None]] = set()
        self._held: set[SqliteDelivery] = set()  # leased and not yet answered

    # --- lifecycle --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._writes is not None and self._writes.running

    @property
    def consuming(self) -> bool:
        return self._consuming and self.connected

    async def start(self) -> None:
        if self._writes is not None:
            return
        self._writer, self._reader = await open_connections(self._path, _migrate)
        self._writes = GroupCommitWriter(self._writer, _not_open)
        self._gauges[0].set(1)

    async def close(self) -> None:
        await self.stop_consuming()
        self._closing = True
        self._wake.set()
        if self._keeper is not None:
            keeper, self._keeper = self._keeper, None
            await keeper
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._held:
            # Ready again now, as RabbitMQ requeues a closed connection's unacked messages.
            held, self._held = list(self._held), set()
            with contextlib.suppress(PublishError, sqlite3.Error):
                await self._write(lambda conn: _release(conn, held))
        if self._writes is not None:
            await self._writes.close()
        for gauge in self._gauges:
            gauge.set(0)
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    # --- the writer -------------------------------------------------------------------
    async def _write(
        self, job: Callable[[aiosqlite.Connection], Awaitable[T]], durable: bool = False
    ) -> T:
        """Queue a write for the next batch; return its result once committed.

        A batch that confirms a message is ``durable`` (synchronous=FULL, one fsync per
        batch), as RabbitMQ fsyncs before it confirms. Losing a lease, ack or requeue
        to a power loss only delivers a message again, which at-least-once allows.
        """
        if self._writes is None:
            raise _not_open()
        return await self._writes.write(job, durable)

    # --- publishing -------------------------------------------------------------------
    async def _insert(
        self, table: str, messages: Sequence[Outgoing], available_at: float, capped: bool
    ) -> None:
        rows = [
            (m.queue, m.message_id, json.dumps(dict(m.headers)), m.body, available_at)
            for m in messages
        ]
        cap = self._settings.broker.max_queue_length if capped else 0
        adding = Counter(m.queue for m in messages)

        async def job(conn: aiosqlite.Connection) -> list[str]:
            if cap:  # as x-overflow reject-publish, but all or nothing
                ready = await conn.execute_fetchall(
                    f"SELECT queue, COUNT(*) FROM {_WORK} WHERE available_at <= ?"
                    " AND queue IN (SELECT value FROM json_each(?)) GROUP BY queue",
                    (time.time(), json.dumps(list(adding))),
                )
                if full := [q for q, count in ready if count + adding[q] > cap]:
                    return full
            await conn.executemany(
                f"INSERT INTO {table} (queue, message_id, headers, body, available_at)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            return []

        try:
            full = await self._write(job, durable=True)
        except sqlite3.Error as exc:
            raise PublishError(f"{len(rows)} not committed: {exc!r}") from exc
        if full:
            raise PublishError(f"queue {', '.join(full)} is at max_queue_length ({cap})")

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if messages:
            await self._insert(_WORK, messages, 0, capped=True)
            self._wake.set()

    async def publish_delayed(self, message: Outgoing, delay: float) -> float:
        tiers = self._settings.retry.delay_tiers
        tier = next((t for t in tiers if t >= delay), tiers[-1])  # as the amqp delay queues
        await self._insert(_WORK, [message], time.time() + tier, capped=False)
        return float(tier)

    async def dead_letter(self, message: Outgoing) -> None:
        await self._insert(_DEAD, [message], 0, capped=False)

    # --- consuming --------------------------------------------------------------------
    async def consume(self, queues: Sequence[str], prefetch: int, handler: Handler) -> None:
        if self._keeper is not None:
            raise RuntimeError("this transport is consuming already")
        self._queues = json.dumps(list(queues))
        self._consuming = True
        self._keeper = asyncio.create_task(self._keep(prefetch, handler), name="sqlite-consume")
        self._gauges.append(metrics.BROKER_CONNECTED.labels(self._role, "consume"))
        self._gauges[-1].set(1)

    async def stop_consuming(self) -> None:
        if not self._consuming:
            return
        self._consuming = False
        async with self._lease_lock:  # a lease under way hands its messages out first
            pass
        sql = "DELETE FROM queue_consumers WHERE consumer = ?"  # depth stops counting it
        with contextlib.suppress(PublishError, sqlite3.Error):
            await self._write(lambda conn: conn.execute_fetchall(sql, (self._name,)))

    async def _keep(self, prefetch: int, handler: Handler) -> None:
        """Lease while consuming, and renew the leases held until close."""
        next_renewal = 0.0
        while not self._closing:
            self._wake.clear()
            pause = _POLL_SECONDS
            try:
                if time.monotonic() >= next_renewal:
                    await self._write(self._renew)
                    next_renewal = time.monotonic() + self._lease_seconds / 3
                async with self._lease_lock:
                    if self._consuming:
                        await self._take(prefetch, handler)
            except Exception as exc:  # locked past busy_timeout, disk full: try again later
                log.warning("sqlite_queue_poll_failed", error=repr(exc))
                pause = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    async def _take(self, prefetch: int, handler: Handler) -> None:
        room = prefetch - sum(d.table == _WORK for d in self._held)
        if room <= 0 or not await self._read(
            f"SELECT 1 FROM {_WORK} WHERE queue IN (SELECT value FROM json_each(?))"
            " AND available_at <= ? LIMIT 1",
            (self._queues, time.time()),
        ):
            return  # checked on the reader: an idle poll never takes the write lock
        for delivery in await self._lease(_WORK, room):
            task = asyncio.create_task(self._handle(handler, delivery))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, handler: Handler, delivery: SqliteDelivery) -> None:
        try:
            await handler(delivery)
        except Exception as exc:
            # As on RabbitMQ, an unanswered delivery stays with this consumer until close.
            log.error("consumer_handler_failed", message_id=delivery.message_id, error=repr(exc))

    async def _lease(self, table: str, limit: int) -> list[SqliteDelivery]:
        token = uuid.uuid4().hex
        match = "queue IN (SELECT value FROM json_each(?)) AND" if table == _WORK else ""
        sql = (
            f"UPDATE {table} SET lease = ?, available_at = ?, deliveries = deliveries + 1"
            f" WHERE id IN (SELECT id FROM {table} WHERE {match} available_at <= ?"
            f" ORDER BY id LIMIT ?) RETURNING {_COLUMNS}"
        )

        async def job(conn: aiosqlite.Connection) -> list[Any]:
            now = time.time()
            scope = (self._queues,) if table == _WORK else ()
            until = now + self._lease_seconds
            rows = await conn.execute_fetchall(sql, (token, until, *scope, now, limit))
            rows = sorted(rows, key=lambda row: row[0])  # RETURNING has no set order
            poison = [row for row in rows if table == _WORK and row[5] > DELIVERY_LIMIT]
            if poison:  # as x-delivery-limit: park a message that keeps killing consumers
                await conn.executemany(
                    f"INSERT INTO {_DEAD} (queue, message_id, headers, body, available_at)"
                    " VALUES (?, ?, ?, ?, 0)",
                    [row[1:5] for row in poison],
                )
                await conn.executemany(
                    f"DELETE FROM {_WORK} WHERE id = ?", [(row[0],) for row in poison]
                )
                log.error("poison_message_parked", message_ids=[row[2] for row in poison])
            parked = {row[0] for row in poison}
            return [row for row in rows if row[0] not in parked]

        deliveries = [SqliteDelivery(self, table, token, row) for row in await self._write(job)]
        self._held.update(deliveries)
        return deliveries

    async def _renew(self, conn: aiosqlite.Connection) -> None:
        now = time.time()
        until = now + self._lease_seconds
        for d in list(self._held):  # answers may change the set meanwhile
            await conn.execute_fetchall(
                f"UPDATE {d.table} SET available_at = ? WHERE id = ? AND lease = ?",
                (until, d.row_id, d.token),
            )
        if self._consuming:
            await conn.executemany(
                "INSERT OR REPLACE INTO queue_consumers (consumer, queue, expires_at)"
                " VALUES (?, ?, ?)",
                [(self._name, queue, until) for queue in json.loads(self._queues)],
            )
        # A killed consumer never deletes its rows: forget them once they expire.
        await conn.execute_fetchall("DELETE FROM queue_consumers WHERE expires_at <= ?", (now,))

    async def _answer(self, delivery: SqliteDelivery, sql: str) -> None:
        """Ack or requeue: a row whose lease is no longer this delivery's is left alone."""
        params = (delivery.row_id, delivery.token)
        try:
            await self._write(lambda conn: conn.execute_fetchall(sql, params))
        except (PublishError, sqlite3.Error) as exc:
            # Unanswered, it comes back when its lease runs out, as RabbitMQ redelivers
            # what a lost channel had not acked.
            log.warning(
                "sqlite_queue_answer_failed", message_id=delivery.message_id, error=repr(exc)
            )
        finally:
            self._held.discard(delivery)
            self._wake.set()  # a prefetch slot is free

    # --- operator views ---------------------------------------------------------------
    async def depth(self) -> list[QueueDepth]:
        if self._reader is None:
            return []
        rows = await self._read(
            f"SELECT 'work', queue, COUNT(*) FROM {_WORK} WHERE available_at <= :now"
            " GROUP BY queue UNION ALL SELECT 'consumers', queue, COUNT(*) FROM queue_consumers"
            " WHERE expires_at > :now GROUP BY queue UNION ALL SELECT 'delay', '', COUNT(*)"
            f" FROM {_WORK} WHERE available_at > :now AND lease IS NULL"
            f" UNION ALL SELECT 'dead', '', COUNT(*) FROM {_DEAD} WHERE available_at <= :now",
            {"now": time.time()},
        )
        n = {(kind, queue): count for kind, queue, count in rows}
        x = self._settings.broker.exchange
        return [
            *(
                QueueDepth(
                    f"{x}.work.{q}", "work", n.get(("work", q), 0), n.get(("consumers", q), 0)
                )
                for q in self._settings.queues
            ),
            QueueDepth(f"{x}.delay", "delay", n[("delay", "")], 0),
            QueueDepth(f"{x}.dead", "dead", n[("dead", "")], 0),
        ]

    async def dead_letters(self, limit: int) -> list[Delivery]:
        return list(await self._lease(_DEAD, limit))

    async def _read(self, sql: str, params: Iterable[Any] | dict[str, Any]) -> list[Any]:
        if self._reader is None:
            raise PublishError("the SQLite queue is not open")
        return list(await self._reader.execute_fetchall(sql, params))


def _not_open() -> PublishError:
    return PublishError("the SQLite queue is not open")


async def _release(conn: aiosqlite.Connection, held: list[SqliteDelivery]) -> None:
    for d in held:
        await conn.execute_fetchall(_RELEASE.format(table=d.table), (d.row_id, d.token))


async def _migrate(conn: aiosqlite.Connection) -> None:
    await migrate(conn, "queue_schema_version", _MIGRATIONS, "the queue tables")
