"""The SQLite store: one database file that the gateway and consumer processes share.

Every write goes through one writer task that commits all the writes waiting for it in
one transaction (group commit), so a burst of intake requests costs a few commits, not
one each; each caller resumes once its write is committed. Reads use a second
connection: they see committed data only and never wait behind a batch. WAL lets
readers run while either process writes, and busy_timeout makes one process's writer
wait for the other's instead of failing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from asyncgate.sqlite_writer import GroupCommitWriter, migrate, open_connections
from asyncgate.store.base import (
    BulkFilter,
    BulkView,
    NewBulk,
    OperationOutcome,
    OperationState,
    OperationStatus,
    OperationView,
    OrderingBacklog,
    Store,
    Turn,
    TurnState,
    UserType,
)
from asyncgate.store.queries import (
    AHEAD_SQL,
    BACKLOG_SQL,
    BULK_COLUMNS,
    BUSY_SQL,
    OPERATION_COLUMNS,
    ORDERING_MIGRATION,
    SUPERSEDED_SQL,
    Dialect,
    search_query,
)

T = TypeVar("T")

# Expired nonces are deleted at most this often: a sweep per request would double the writes.
_NONCE_SWEEP_SECONDS = 60.0

# Version N is _MIGRATIONS[N - 1]; a step is never edited once released, only appended.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE bulks (
            bulk_uuid TEXT PRIMARY KEY,
            description TEXT NOT NULL,
            owner TEXT NOT NULL,
            user_type INTEGER NOT NULL,
            start_time TEXT NOT NULL,
            accepted BOOLEAN NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX bulks_owner_start_time ON bulks (owner, start_time)",
        "CREATE INDEX bulks_start_time ON bulks (start_time)",
        """CREATE TABLE operations (
            bulk_uuid TEXT NOT NULL REFERENCES bulks (bulk_uuid) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            topic TEXT NOT NULL,
            status INTEGER NOT NULL,
            serialized_data TEXT NOT NULL,
            result_message TEXT,
            result_serialized_data TEXT,
            error_code INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            http_status INTEGER,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (bulk_uuid, idx)
        )""",
        "CREATE INDEX operations_bulk_status ON operations (bulk_uuid, status)",
        """CREATE TABLE nonces (
            consumer_key TEXT NOT NULL,
            nonce TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            PRIMARY KEY (consumer_key, nonce)
        )""",
        "CREATE INDEX nonces_expires_at ON nonces (expires_at)",
    ),
    tuple(
        sql.format(text="TEXT", bigint="INTEGER", timestamp="TEXT") for sql in ORDERING_MIGRATION
    ),
)


def _ts(moment: datetime) -> str:
    """A time as UTC text of fixed width, so that text order is time order (naive = UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(" ", "microseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _now() -> str:
    return _ts(datetime.now(UTC))


def _later(seconds: float) -> str:
    return _ts(datetime.now(UTC) + timedelta(seconds=seconds))


_DIALECT = Dialect(like="LIKE", start_time_text="substr(b.start_time, 1, 19)", timestamp=_ts)


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writes: GroupCommitWriter | None = None
        self._next_nonce_sweep = 0.0

    async def open(self) -> None:
        self._writer, self._reader = await open_connections(self._path, _migrate, foreign_keys=True)
        self._writes = GroupCommitWriter(self._writer, _not_open)

    async def close(self) -> None:
        if self._writes is not None:
            await self._writes.close()
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def ping(self) -> None:
        if self._writes is None or not self._writes.running:
            raise _not_open()
        await self._rows("SELECT 1")

    # --- the writer -------------------------------------------------------------------
    async def _write(self, job: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Queue a write for the next batch; return its result once committed."""
        if self._writes is None:
            raise _not_open()
        return await self._writes.write(job)

    # --- gateway: intake ----------------------------------------------------------------
    async def record_bulk(self, bulk: NewBulk) -> None:
        await self._write(lambda conn: _insert_bulk(conn, bulk, _now()))

    async def accept_bulk(self, bulk_uuid: str) -> None:
        await self._write(lambda conn: _accept(conn, bulk_uuid))

    async def withdraw_bulk(self, bulk_uuid: str) -> None:
        # An accepted bulk stays: its messages are out.
        sql = "DELETE FROM bulks WHERE bulk_uuid = ? AND NOT accepted"
        await self._write(lambda conn: _changed(conn, sql, (bulk_uuid,)))

    # --- consumer: replay ---------------------------------------------------------------
    async def operation_state(self, bulk_uuid: str, index: int) -> OperationState | None:
        rows = await self._rows(
            "SELECT o.status, o.attempts, b.accepted, b.start_time, o.ordering_key"
            " FROM operations o JOIN bulks b ON b.bulk_uuid = o.bulk_uuid"
            " WHERE o.bulk_uuid = ? AND o.idx = ?",
            (bulk_uuid, index),
        )
        if not rows:
            return None
        status, attempts, accepted, start_time, key = rows[0]
        return OperationState(
            OperationStatus(status), attempts, bool(accepted), _dt(start_time), key
        )

    async def record_outcome(
        self, bulk_uuid: str, index: int, outcome: OperationOutcome, claim: str | None = None
    ) -> bool:
        # An operation that is gone (withdrawn, purged) is not recreated.
        sql = (
            "UPDATE operations SET status = :status, attempts = :attempts,"
            " http_status = :http_status, result_message = :result_message,"
            " result_serialized_data = :result_serialized_data, error_code = :error_code,"
            " retry_at = :retry_at, claimed_until = NULL, claim_token = NULL, updated_at = :now"
            " WHERE bulk_uuid = :bulk_uuid AND idx = :index"
            + ("" if claim is None else " AND claim_token = :claim")
        )
        params = dict(vars(outcome), now=_now(), bulk_uuid=bulk_uuid, index=index, claim=claim)
        params["retry_at"] = None if outcome.retry_at is None else _ts(outcome.retry_at)
        return bool(await self._write(lambda conn: _changed(conn, sql, params)))

    async def claim_turn(
        self, bulk_uuid: str, index: int, attempt: int, token: str, lease: float
    ) -> Turn:
        # Earlier operations only ever become settled, so a read that finds some unsettled
        # answers WAIT without taking the writer.  Otherwise one write job checks and
        # claims: the writer runs jobs one at a time, across processes (BEGIN IMMEDIATE).
        (ahead, next_retry), *_ = await self._rows(AHEAD_SQL, (bulk_uuid, index))
        if ahead:
            return Turn(TurnState.WAIT, ahead, None if next_retry is None else _dt(next_retry))
        return await self._write(lambda conn: _claim(conn, bulk_uuid, index, attempt, token, lease))

    async def renew_claim(self, bulk_uuid: str, index: int, token: str, lease: float) -> bool:
        sql = (
            "UPDATE operations SET claimed_until = ?"
            " WHERE bulk_uuid = ? AND idx = ? AND claim_token = ?"
        )
        params = (_later(lease), bulk_uuid, index, token)
        return bool(await self._write(lambda conn: _changed(conn, sql, params)))

    async def release_claim(self, bulk_uuid: str, index: int, token: str) -> None:
        sql = (
            "UPDATE operations SET claimed_until = NULL, claim_token = NULL"
            " WHERE bulk_uuid = ? AND idx = ? AND claim_token = ?"
        )
        await self._write(lambda conn: _changed(conn, sql, (bulk_uuid, index, token)))

    async def ordering_backlog(self) -> OrderingBacklog:
        waiting, keys, oldest = (await self._rows(BACKLOG_SQL))[0]
        return OrderingBacklog(waiting, keys, None if oldest is None else _dt(oldest))

    # --- operator -----------------------------------------------------------------------
    async def reopen_failed(self, bulk_uuid: str) -> list[int]:
        sql = "UPDATE operations SET status = 4 WHERE bulk_uuid = ? AND status = 2 RETURNING idx"
        rows = await self._write(lambda conn: conn.execute_fetchall(sql, (bulk_uuid,)))
        return sorted(idx for (idx,) in rows)

    async def reopen(self, bulk_uuid: str, index: int, force: bool = False) -> bool:
        return await self._write(lambda conn: _reopen(conn, bulk_uuid, index, force))

    async def purge(self, older_than: datetime) -> int:
        sql = "DELETE FROM bulks WHERE start_time < ?"
        return await self._write(lambda conn: _changed(conn, sql, (_ts(older_than),)))

    async def withdraw_stale_pending(self, older_than: datetime) -> int:
        sql = "DELETE FROM bulks WHERE start_time < ? AND NOT accepted"
        return await self._write(lambda conn: _changed(conn, sql, (_ts(older_than),)))

    # --- gateway: status endpoints ------------------------------------------------------
    async def bulk(self, bulk_uuid: str) -> BulkView | None:
        rows = await self._rows(
            f"SELECT {BULK_COLUMNS} FROM bulks b WHERE b.bulk_uuid = ? AND b.accepted",
            (bulk_uuid,),
        )
        return _bulk_view(rows[0]) if rows else None

    async def operations(self, bulk_uuid: str) -> list[OperationView]:
        rows = await self._rows(
            f"SELECT {OPERATION_COLUMNS} FROM operations o JOIN bulks b"
            " ON b.bulk_uuid = o.bulk_uuid WHERE o.bulk_uuid = ? AND b.accepted ORDER BY o.idx",
            (bulk_uuid,),
        )
        return [_operation_view(row) for row in rows]

    async def count_status(self, bulk_uuid: str, status: int) -> int:
        rows = await self._rows(
            "SELECT COUNT(*) FROM operations o JOIN bulks b ON b.bulk_uuid = o.bulk_uuid"
            " WHERE o.bulk_uuid = ? AND o.status = ? AND b.accepted",
            (bulk_uuid, status),
        )
        return int(rows[0][0])

    async def search(
        self,
        owner: str,
        filters: list[list[BulkFilter]],
        page_size: int,
        current_page: int,
    ) -> tuple[list[BulkView], int]:
        query = search_query(owner, filters, page_size, current_page, _DIALECT)
        total = await self._rows(query.count_sql, query.count_params)
        rows = await self._rows(query.page_sql, query.page_params)
        return [_bulk_view(row) for row in rows], int(total[0][0])

    # --- security -----------------------------------------------------------------------
    async def use_nonce(self, consumer_key: str, nonce: str, expires_at: datetime) -> bool:
        return await self._write(
            lambda conn: self._use_nonce(conn, consumer_key, nonce, _ts(expires_at))
        )

    async def _use_nonce(
        self, conn: aiosqlite.Connection, consumer_key: str, nonce: str, expires_at: str
    ) -> bool:
        now = _now()
        if time.monotonic() >= self._next_nonce_sweep:
            self._next_nonce_sweep = time.monotonic() + _NONCE_SWEEP_SECONDS
            await conn.execute_fetchall("DELETE FROM nonces WHERE expires_at <= ?", (now,))
        # Inserts, or revives an expired row; returns no row when the nonce is still live.
        rows = await conn.execute_fetchall(
            "INSERT INTO nonces (consumer_key, nonce, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (consumer_key, nonce) DO UPDATE SET expires_at = excluded.expires_at"
            " WHERE nonces.expires_at <= ? RETURNING 1",
            (consumer_key, nonce, expires_at, now),
        )
        return bool(list(rows))

    async def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        if self._reader is None:
            raise RuntimeError("the SQLite store is not open")
        return list(await self._reader.execute_fetchall(sql, params))


def _not_open() -> RuntimeError:
    return RuntimeError("the SQLite store is not open")


async def _migrate(conn: aiosqlite.Connection) -> None:
    await migrate(conn, "schema_version", _MIGRATIONS, "the database")


async def _insert_bulk(conn: aiosqlite.Connection, bulk: NewBulk, now: str) -> None:
    await conn.execute_fetchall(
        "INSERT INTO bulks (bulk_uuid, description, owner, user_type, start_time)"
        " VALUES (?, ?, ?, ?, ?)",
        (bulk.bulk_uuid, bulk.description, bulk.owner, int(bulk.user_type), _ts(bulk.start_time)),
    )
    # ordering_seq: the key's operations numbered in the order they are recorded (the
    # writer records one bulk at a time, across processes).
    await conn.executemany(
        "INSERT INTO operations (bulk_uuid, idx, topic, status, serialized_data, result_message,"
        " error_code, ordering_key, ordering_seq, created_at, updated_at) VALUES (:bulk_uuid,"
        " :index, :topic, :status, :serialized_data, :result_message, :error_code,"
        " :ordering_key, CASE WHEN :ordering_key IS NULL THEN NULL ELSE (SELECT"
        " COALESCE(MAX(ordering_seq), 0) + 1 FROM operations WHERE ordering_key = :ordering_key"
        " AND ordering_key IS NOT NULL)"
        " END, :now, :now)",
        [dict(vars(op), bulk_uuid=bulk.bulk_uuid, now=now) for op in bulk.operations],
    )


async def _claim(
    conn: aiosqlite.Connection, bulk_uuid: str, index: int, attempt: int, token: str, lease: float
) -> Turn:
    rows = list(
        await conn.execute_fetchall(
            "SELECT status, attempts, claimed_until FROM operations"
            " WHERE bulk_uuid = ? AND idx = ?",
            (bulk_uuid, index),
        )
    )
    if not rows or rows[0][0] == OperationStatus.COMPLETE or rows[0][1] >= attempt:
        return Turn(TurnState.SETTLED)
    (ahead, next_retry), *_ = await conn.execute_fetchall(AHEAD_SQL, (bulk_uuid, index))
    if ahead:
        return Turn(TurnState.WAIT, ahead, None if next_retry is None else _dt(next_retry))
    now = _now()
    (busy,), *_ = await conn.execute_fetchall(BUSY_SQL.format(now="?"), (bulk_uuid, index, now))
    claimed_until = rows[0][2]
    if busy or (claimed_until is not None and claimed_until > now):
        return Turn(TurnState.WAIT)
    await conn.execute_fetchall(
        "UPDATE operations SET claimed_until = ?, claim_token = ? WHERE bulk_uuid = ? AND idx = ?",
        (_later(lease), token, bulk_uuid, index),
    )
    return Turn(TurnState.GRANTED)


async def _reopen(conn: aiosqlite.Connection, bulk_uuid: str, index: int, force: bool) -> bool:
    if not force:
        (overtaken,), *_ = await conn.execute_fetchall(SUPERSEDED_SQL, (bulk_uuid, index))
        if overtaken:
            return False
    sql = "UPDATE operations SET status = 4 WHERE bulk_uuid = ? AND idx = ?"
    return bool(await _changed(conn, sql, (bulk_uuid, index)))


async def _accept(conn: aiosqlite.Connection, bulk_uuid: str) -> None:
    if not await _changed(conn, "UPDATE bulks SET accepted = 1 WHERE bulk_uuid = ?", (bulk_uuid,)):
        raise LookupError(f"bulk {bulk_uuid} is unknown: withdrawn (as stale?) before its accept")


async def _changed(conn: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> int:
    """Run one statement; return how many rows it changed."""
    async with conn.execute(sql, params) as cursor:
        return cursor.rowcount


def _bulk_view(row: sqlite3.Row) -> BulkView:
    uuid, description, owner, user_type, start_time, count = row
    return BulkView(uuid, description, owner, UserType(user_type), _dt(start_time), count)


def _operation_view(row: sqlite3.Row) -> OperationView:
    index, topic, status, data, message, result, error_code, attempts, http, updated_at = row
    return OperationView(
        index, topic, OperationStatus(status), data, message, result, error_code, attempts, http,
        _dt(updated_at),
    )  # fmt: skip
