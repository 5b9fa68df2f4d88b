"""The store of bulks and operations: its interface (``base``) and the backend a URL selects."""

from __future__ import annotations

from urllib.parse import urlsplit

from asyncgate.backoff import patiently
from asyncgate.store.base import (
    BulkFilter,
    BulkView,
    NewBulk,
    NewOperation,
    OperationOutcome,
    OperationState,
    OperationStatus,
    OperationView,
    Store,
    UserType,
)
from asyncgate.store.postgres import PostgresStore
from asyncgate.store.sqlite import SQLiteStore

__all__ = [
    "BulkFilter",
    "BulkView",
    "NewBulk",
    "NewOperation",
    "OperationOutcome",
    "OperationState",
    "OperationStatus",
    "OperationView",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "UserType",
    "create_store",
    "open_patiently",
]

_SQLITE_PREFIX = "sqlite:///"


def create_store(url: str) -> Store:
    """The store for ``url``, not yet opened.

    ``sqlite:///`` is followed by the file's path: ``sqlite:///var/asyncgate.db`` is relative
    to the working directory, ``sqlite:////var/lib/asyncgate.db`` absolute. Missing parent
    directories are created at ``open()``. ``postgresql://`` and ``postgres://`` URLs go to
    asyncpg as they are.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len(_SQLITE_PREFIX) :] if url.startswith(_SQLITE_PREFIX) else ""
        if not path:
            raise ValueError(f"a SQLite store URL is sqlite:///<path to the file>, not {url!r}")
        return SQLiteStore(path)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ValueError(
        f"a store URL starts with sqlite:///, postgresql:// or postgres://, not {url!r}"
    )


async def open_patiently(store: Store, within: float = 60.0) -> None:
    """``store.open()``, retried for ``within`` seconds: a database that is restarting, or
    a SQLite file locked by another process's migration, is not a reason to exit at
    start-up."""
    await patiently(store.open, within, "open the store")
