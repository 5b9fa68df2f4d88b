"""The PostgreSQL store: a small asyncpg pool, one short transaction per write.

Concurrent intake needs no batching here: PostgreSQL commits concurrent transactions
together by itself, and each record_bulk sends its operations in one executemany.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg

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

# Held while migrating, so that two processes starting at once migrate one after the other.
_MIGRATION_LOCK = 0x6173796E63676174  # "asyncgat"
# Expired nonces are deleted at most this often: a sweep per request would double the writes.
_NONCE_SWEEP_SECONDS = 60.0

# Version N is _MIGRATIONS[N - 1]; a step is never edited once released, only appended.
# bulk_uuid sorts by bytes ("C"), as in SQLite, whatever the database's locale.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE bulks (
            bulk_uuid text COLLATE "C" PRIMARY KEY,
            description text NOT NULL,
            owner text NOT NULL,
            user_type integer NOT NULL,
            start_time timestamptz NOT NULL,
            accepted boolean NOT NULL DEFAULT false
        )""",
        "CREATE INDEX bulks_owner_start_time ON bulks (owner, start_time)",
        "CREATE INDEX bulks_start_time ON bulks (start_time)",
        """CREATE TABLE operations (
            bulk_uuid text COLLATE "C" NOT NULL REFERENCES bulks ON DELETE CASCADE,
            idx integer NOT NULL,
            topic text NOT NULL,
            status integer NOT NULL,
            serialized_data text NOT NULL,
            result_message text,
            result_serialized_data text,
            error_code integer,
            attempts integer NOT NULL DEFAULT 0,
            http_status integer,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            PRIMARY KEY (bulk_uuid, idx)
        )""",
        "CREATE INDEX operations_bulk_status ON operations (bulk_uuid, status)",
        """CREATE TABLE nonces (
            consumer_key text NOT NULL,
            nonce text NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (consumer_key, nonce)
        )""",
        "CREATE INDEX nonces_expires_at ON nonces (expires_at)",
    ),
    (
        # Each key's last sequence number; its row lock orders concurrent bulks of a key.
        "CREATE TABLE ordering_keys (key text PRIMARY KEY, last_seq bigint NOT NULL)",
        *(
            sql.format(text="text", bigint="bigint", timestamp="timestamptz")
            for sql in ORDERING_MIGRATION
        ),
    ),
)


def _utc(moment: datetime) -> datetime:
    """A time as an aware UTC datetime (naive = UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _numbered(sql: str) -> str:
    """Shared SQL's ``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _changed(status: str) -> int:
    """Rows changed, from a command status such as "UPDATE 3"."""
    return int(status.rsplit(" ", 1)[-1])


_DIALECT = Dialect(
    like="ILIKE",
    start_time_text="to_char(b.start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
    timestamp=_utc,
)


class PostgresStore(Store):
    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 5) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: Any = None  # asyncpg.Pool once open
        self._next_nonce_sweep = 0.0

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=self._min_size, max_size=self._max_size
        )
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        await self._p.fetchval("SELECT 1")

    @property
    def _p(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL store is not open")
        return self._pool

    async def _migrate(self) -> None:
        async with self._p.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            if current > len(_MIGRATIONS):
                raise RuntimeError(
                    f"the database has schema version {current}; this program knows up to"
                    f" {len(_MIGRATIONS)}: upgrade it"
                )
            for version, steps in enumerate(_MIGRATIONS[current:], start=current + 1):
                for sql in steps:
                    await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    # --- gateway: intake ----------------------------------------------------------------
    async def record_bulk(self, bulk: NewBulk) -> None:
        now = datetime.now(UTC)
        counts = Counter(op.ordering_key for op in bulk.operations if op.ordering_key)
        async with self._p.acquire() as conn, conn.transaction():
            next_seq = await _reserve_sequence_numbers(conn, counts)
            await conn.execute(
                "INSERT INTO bulks (bulk_uuid, description, owner, user_type, start_time)"
                " VALUES ($1, $2, $3, $4, $5)",
                bulk.bulk_uuid,
                bulk.description,
                bulk.owner,
                int(bulk.user_type),
                _utc(bulk.start_time),
            )
            rows = []
            for op in bulk.operations:
                seq = None
                if op.ordering_key:
                    seq = next_seq[op.ordering_key]
                    next_seq[op.ordering_key] = seq + 1
                rows.append(
                    (
                        bulk.bulk_uuid,
                        op.index,
                        op.topic,
                        int(op.status),
                        op.serialized_data,
                        op.result_message,
                        op.error_code,
                        now,
                        op.ordering_key,
                        seq,
                    )
                )
            await conn.executemany(
                "INSERT INTO operations (bulk_uuid, idx, topic, status, serialized_data,"
                " result_message, error_code, ordering_key, ordering_seq, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10, $8, $8)",
                rows,
            )

    async def accept_bulk(self, bulk_uuid: str) -> None:
        status = await self._p.execute(
            "UPDATE bulks SET accepted = true WHERE bulk_uuid = $1", bulk_uuid
        )
        if not _changed(status):
            raise LookupError(
                f"bulk {bulk_uuid} is unknown: withdrawn (as stale?) before its accept"
            )

    async def withdraw_bulk(self, bulk_uuid: str) -> None:
        # An accepted bulk stays: its messages are out.
        await self._p.execute("DELETE FROM bulks WHERE bulk_uuid = $1 AND NOT accepted", bulk_uuid)

    # --- consumer: replay ---------------------------------------------------------------
    async def operation_state(self, bulk_uuid: str, index: int) -> OperationState | None:
        row = await self._p.fetchrow(
            "SELECT o.status, o.attempts, b.accepted, b.start_time, o.ordering_key"
            " FROM operations o JOIN bulks b ON b.bulk_uuid = o.bulk_uuid"
            " WHERE o.bulk_uuid = $1 AND o.idx = $2",
            bulk_uuid,
            index,
        )
        if row is None:
            return None
        return OperationState(OperationStatus(row[0]), row[1], row[2], row[3], row[4])

    async def record_outcome(
        self, bulk_uuid: str, index: int, outcome: OperationOutcome, claim: str | None = None
    ) -> bool:
        # An operation that is gone (withdrawn, purged) is not recreated.
        status = await self._p.execute(
            "UPDATE operations SET status = $3, attempts = $4, http_status = $5,"
            " result_message = $6, result_serialized_data = $7, error_code = $8,"
            " updated_at = $9, retry_at = $10, claimed_until = NULL, claim_token = NULL"
            " WHERE bulk_uuid = $1 AND idx = $2 AND ($11::text IS NULL OR claim_token = $11)",
            bulk_uuid,
            index,
            int(outcome.status),
            outcome.attempts,
            outcome.http_status,
            outcome.result_message,
            outcome.result_serialized_data,
            outcome.error_code,
            datetime.now(UTC),
            None if outcome.retry_at is None else _utc(outcome.retry_at),
            claim,
        )
        return bool(_changed(status))

    async def claim_turn(
        self, bulk_uuid: str, index: int, attempt: int, token: str, lease: float
    ) -> Turn:
        # Claims are timed by the database's clock, so consumer hosts need not agree.
        async with self._p.acquire() as conn, conn.transaction():
            # The row lock makes two copies of one operation claim one after the other.
            row = await conn.fetchrow(
                "SELECT status, attempts, claimed_until > clock_timestamp() FROM operations"
                " WHERE bulk_uuid = $1 AND idx = $2 FOR UPDATE",
                bulk_uuid,
                index,
            )
            if row is None or row[0] == OperationStatus.COMPLETE or row[1] >= attempt:
                return Turn(TurnState.SETTLED)
            ahead, next_retry = await conn.fetchrow(_numbered(AHEAD_SQL), bulk_uuid, index)
            if ahead:
                return Turn(TurnState.WAIT, ahead, next_retry)
            busy = await conn.fetchval(
                _numbered(BUSY_SQL.format(now="clock_timestamp()")), bulk_uuid, index
            )
            if busy or row[2]:
                return Turn(TurnState.WAIT)
            await conn.execute(
                "UPDATE operations SET claim_token = $4,"
                " claimed_until = clock_timestamp() + $3 * interval '1 second'"
                " WHERE bulk_uuid = $1 AND idx = $2",
                bulk_uuid,
                index,
                lease,
                token,
            )
        return Turn(TurnState.GRANTED)

    async def renew_claim(self, bulk_uuid: str, index: int, token: str, lease: float) -> bool:
        status = await self._p.execute(
            "UPDATE operations SET claimed_until = clock_timestamp() + $4 * interval '1 second'"
            " WHERE bulk_uuid = $1 AND idx = $2 AND claim_token = $3",
            bulk_uuid,
            index,
            token,
            lease,
        )
        return bool(_changed(status))

    async def release_claim(self, bulk_uuid: str, index: int, token: str) -> None:
        await self._p.execute(
            "UPDATE operations SET claimed_until = NULL, claim_token = NULL"
            " WHERE bulk_uuid = $1 AND idx = $2 AND claim_token = $3",
            bulk_uuid,
            index,
            token,
        )

    async def ordering_backlog(self) -> OrderingBacklog:
        waiting, keys, oldest = await self._p.fetchrow(BACKLOG_SQL)
        return OrderingBacklog(waiting, keys, oldest)

    # --- operator -----------------------------------------------------------------------
    async def reopen_failed(self, bulk_uuid: str) -> list[int]:
        rows = await self._p.fetch(
            "UPDATE operations SET status = 4 WHERE bulk_uuid = $1 AND status = 2 RETURNING idx",
            bulk_uuid,
        )
        return sorted(row[0] for row in rows)

    async def reopen(self, bulk_uuid: str, index: int, force: bool = False) -> bool:
        async with self._p.acquire() as conn, conn.transaction():
            if not force:
                # Lock the key's later operations: none can be claimed between the check
                # and the reopen (a claim updates its row), and once reopened, this one
                # is unsettled and holds them back.
                await conn.execute(
                    "SELECT 1 FROM operations p JOIN operations o"
                    " ON p.ordering_key = o.ordering_key AND p.ordering_seq > o.ordering_seq"
                    " WHERE o.bulk_uuid = $1 AND o.idx = $2 AND p.ordering_key IS NOT NULL"
                    " FOR UPDATE OF p",
                    bulk_uuid,
                    index,
                )
                if await conn.fetchval(_numbered(SUPERSEDED_SQL), bulk_uuid, index):
                    return False
            status = await conn.execute(
                "UPDATE operations SET status = 4 WHERE bulk_uuid = $1 AND idx = $2",
                bulk_uuid,
                index,
            )
        return bool(_changed(status))

    async def purge(self, older_than: datetime) -> int:
        status = await self._p.execute("DELETE FROM bulks WHERE start_time < $1", _utc(older_than))
        return _changed(status)

    async def withdraw_stale_pending(self, older_than: datetime) -> int:
        status = await self._p.execute(
            "DELETE FROM bulks WHERE start_time < $1 AND NOT accepted", _utc(older_than)
        )
        return _changed(status)

    # --- gateway: status endpoints ------------------------------------------------------
    async def bulk(self, bulk_uuid: str) -> BulkView | None:
        row = await self._p.fetchrow(
            f"SELECT {BULK_COLUMNS} FROM bulks b WHERE b.bulk_uuid = $1 AND b.accepted",
            bulk_uuid,
        )
        return None if row is None else _bulk_view(row)

    async def operations(self, bulk_uuid: str) -> list[OperationView]:
        rows = await self._p.fetch(
            f"SELECT {OPERATION_COLUMNS} FROM operations o JOIN bulks b"
            " ON b.bulk_uuid = o.bulk_uuid WHERE o.bulk_uuid = $1 AND b.accepted ORDER BY o.idx",
            bulk_uuid,
        )
        return [_operation_view(row) for row in rows]

    async def count_status(self, bulk_uuid: str, status: int) -> int:
        count = await self._p.fetchval(
            "SELECT COUNT(*) FROM operations o JOIN bulks b ON b.bulk_uuid = o.bulk_uuid"
            " WHERE o.bulk_uuid = $1 AND o.status = $2 AND b.accepted",
            bulk_uuid,
            status,
        )
        return int(count)

    async def search(
        self,
        owner: str,
        filters: list[list[BulkFilter]],
        page_size: int,
        current_page: int,
    ) -> tuple[list[BulkView], int]:
        query = search_query(owner, filters, page_size, current_page, _DIALECT)
        # One snapshot for both, so that the total agrees with the page.
        async with (
            self._p.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            total = await conn.fetchval(_numbered(query.count_sql), *query.count_params)
            rows = await conn.fetch(_numbered(query.page_sql), *query.page_params)
        return [_bulk_view(row) for row in rows], int(total)

    # --- security -----------------------------------------------------------------------
    async def use_nonce(self, consumer_key: str, nonce: str, expires_at: datetime) -> bool:
        now = datetime.now(UTC)
        async with self._p.acquire() as conn, conn.transaction():
            if time.monotonic() >= self._next_nonce_sweep:
                self._next_nonce_sweep = time.monotonic() + _NONCE_SWEEP_SECONDS
                await conn.execute("DELETE FROM nonces WHERE expires_at <= $1", now)
            # Inserts, or revives an expired row; returns no row when the nonce is still live.
            used = await conn.fetchval(
                "INSERT INTO nonces (consumer_key, nonce, expires_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (consumer_key, nonce) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE nonces.expires_at <= $4 RETURNING true",
                consumer_key,
                nonce,
                _utc(expires_at),
                now,
            )
        return used is not None


async def _reserve_sequence_numbers(conn: Any, counts: Counter[str]) -> dict[str, int]:
    """The first of ``counts[key]`` new sequence numbers of each key, in this transaction.

    The upsert locks each key's row until the commit, so a key's numbers commit in the
    order they were handed out: a consumer never sees a later operation of a key before
    an earlier one.  Keys go in sorted order, so two bulks never wait on each other.
    Row locks, unlike advisory locks, do not fill the server's shared lock table.
    """
    if not counts:
        return {}
    keys = sorted(counts)
    rows = await conn.fetch(
        "INSERT INTO ordering_keys (key, last_seq)"
        " SELECT k, n FROM unnest($1::text[], $2::bigint[]) AS t (k, n) ORDER BY k"
        " ON CONFLICT (key) DO UPDATE SET last_seq = ordering_keys.last_seq + excluded.last_seq"
        " RETURNING key, last_seq",
        keys,
        [counts[k] for k in keys],
    )
    return {row[0]: row[1] - counts[row[0]] + 1 for row in rows}


def _bulk_view(row: Any) -> BulkView:
    uuid, description, owner, user_type, start_time, count = row
    return BulkView(uuid, description, owner, UserType(user_type), start_time, count)


def _operation_view(row: Any) -> OperationView:
    index, topic, status, data, message, result, error_code, attempts, http, updated_at = row
    return OperationView(
        index, topic, OperationStatus(status), data, message, result, error_code, attempts, http,
        updated_at,
    )  # fmt: skip
