"""SQLite shared by processes: connections set up alike, and one group-commit writer per file.

Both the embedded store and the embedded queue use it. Many concurrent callers
queue their writes; one task commits whatever is waiting in a single
transaction, so an intake burst costs one commit, not one per request.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")

# Another process holding the write lock makes us wait this long before giving up.
BUSY_TIMEOUT_MS = 5000
# Writes per transaction: bounds how long the other process waits for the write lock.
MAX_BATCH = 128


async def connect(path: Path, foreign_keys: bool = False) -> aiosqlite.Connection:
    """A WAL connection with a busy timeout, and no implicit transactions (batches
    ``BEGIN IMMEDIATE`` themselves)."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute_fetchall(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await _enable_wal(conn)
        await conn.execute_fetchall("PRAGMA synchronous = NORMAL")
        if foreign_keys:
            await conn.execute_fetchall("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def open_connections(
    path: Path,
    migrate: Callable[[aiosqlite.Connection], Awaitable[None]],
    foreign_keys: bool = False,
) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """The writer (schema migrated) and a read-only reader of one file; reads never see
    a batch before it commits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = await connect(path, foreign_keys)
    try:
        await migrate(writer)
        reader = await connect(path, foreign_keys)
    except BaseException:
        await writer.close()
        raise
    try:
        await reader.execute_fetchall("PRAGMA query_only = ON")
    except BaseException:
        await reader.close()
        await writer.close()
        raise
    return writer, reader


async def migrate(
    conn: aiosqlite.Connection,
    version_table: str,
    migrations: Sequence[Sequence[str]],
    what: str,
) -> None:
    """Apply the steps of ``migrations`` this file lacks (version N is ``migrations[N - 1]``,
    a step is never edited once released, only appended), recording each version in
    ``version_table``.  BEGIN IMMEDIATE makes a second process starting at once wait."""
    await conn.execute_fetchall("BEGIN IMMEDIATE")
    try:
        await conn.execute_fetchall(
            f"CREATE TABLE IF NOT EXISTS {version_table}"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        rows = await conn.execute_fetchall(f"SELECT COALESCE(MAX(version), 0) FROM {version_table}")
        current = int(next(iter(rows))[0])
        if current > len(migrations):
            raise RuntimeError(
                f"{what} has schema version {current}; this program knows up to"
                f" {len(migrations)}: upgrade it"
            )
        for version, steps in enumerate(migrations[current:], start=current + 1):
            for sql in steps:
                await conn.execute_fetchall(sql)
            await conn.execute_fetchall(
                f"INSERT INTO {version_table} (version, applied_at) VALUES (?, ?)",
                (version, datetime.now(UTC).isoformat(" ", "microseconds")),
            )
        await conn.execute_fetchall("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute_fetchall("ROLLBACK")
        raise


async def _enable_wal(conn: aiosqlite.Connection) -> None:
    """Switching a new file to WAL does not wait on busy_timeout: when two processes
    open it at once, the loser is told "locked" at once, so try again briefly."""
    for _ in range(100):
        try:
            await conn.execute_fetchall("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError:
            await asyncio.sleep(0.05)
    await conn.execute_fetchall("PRAGMA journal_mode = WAL")


@dataclass(frozen=True)
class _Write:
    job: Callable[[aiosqlite.Connection], Awaitable[Any]]
    durable: bool  # committed with synchronous=FULL
    future: asyncio.Future[Any]  # settled after the commit


class GroupCommitWriter:
    """Commits queued writes in batches on one connection; ``close`` commits what is queued."""

    def __init__(self, conn: aiosqlite.Connection, not_open: Callable[[], Exception]) -> None:
        self._conn = conn
        self._not_open = not_open
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._loop())
        self._full_sync = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def write(
        self, job: Callable[[aiosqlite.Connection], Awaitable[T]], durable: bool = False
    ) -> T:
        """Queue ``job`` for the next batch; return its result once committed.

        ``durable`` asks for synchronous=FULL: in WAL mode a NORMAL commit survives a
        process kill but is fsynced only at checkpoints, so a power loss may undo it.
        """
        if self._task is None:
            raise self._not_open()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write(job, durable, future))
        result: T = await future
        return result

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None  # refuse new writes from here on
            self._queue.put_nowait(None)  # the loop commits what is queued before it, then ends
            await task

    async def _loop(self) -> None:
        while (write := await self._queue.get()) is not None:
            batch = [write]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                write = self._queue.get_nowait()
                if write is None:
                    self._queue.put_nowait(None)  # close() is waiting: stop after this batch
                    break
                batch.append(write)
            try:
                await self._flush([w for w in batch if not w.future.cancelled()])
            except Exception as exc:  # even ROLLBACK failed: no caller may wait forever
                for w in batch:
                    _settle(w.future, error=exc)

    async def _flush(self, batch: list[_Write]) -> None:
        if not batch:
            return
        conn = self._conn
        full = any(w.durable for w in batch)
        try:
            if full != self._full_sync:
                await conn.execute_fetchall(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
                self._full_sync = full
            await conn.execute_fetchall("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # still locked after busy_timeout: nothing can be written
            for w in batch:
                _settle(w.future, error=exc)
            return
        try:
            results = [await w.job(conn) for w in batch]
            await conn.execute_fetchall("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                await conn.execute_fetchall("ROLLBACK")
            if len(batch) == 1:
                _settle(batch[0].future, error=exc)
            else:  # alone, a bad write (a duplicate key, say) fails only its own caller
                for w in batch:
                    await self._flush([w])
            return
        for w, result in zip(batch, results, strict=True):
            _settle(w.future, result=result)


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: Exception | None = None
) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
