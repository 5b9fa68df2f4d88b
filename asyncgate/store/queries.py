"""SQL that both backends share: the read column lists and Magento's searchCriteria on bulks.

The text uses ``?`` placeholders; the PostgreSQL backend numbers them. What differs between
the two databases (timestamp parameters, case-insensitive LIKE, how a time prints) is a
:class:`Dialect`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from asyncgate.store.base import BulkFilter

# Columns of a BulkView, in its field order; "b" is bulks.
BULK_COLUMNS = (
    "b.bulk_uuid, b.description, b.owner, b.user_type, b.start_time,"
    " (SELECT COUNT(*) FROM operations o WHERE o.bulk_uuid = b.bulk_uuid)"
)
# Columns of an OperationView, in its field order; "o" is operations.
OPERATION_COLUMNS = (
    "o.idx, o.topic, o.status, o.serialized_data, o.result_message,"
    " o.result_serialized_data, o.error_code, o.attempts, o.http_status, o.updated_at"
)


# An operation that still holds back later operations with its ordering key: open (queued,
# in flight, or in a bulk not yet accepted) or waiting for a scheduled retry.  The index's
# predicate is the same text, so that both databases use the index for these queries.
def _unsettled(alias: str) -> str:
    return f"({alias}status = 4 OR ({alias}status = 2 AND {alias}retry_at IS NOT NULL))"


# Migration step shared by both databases (types filled in): the ordering columns.
ORDERING_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE operations ADD COLUMN ordering_key {text}",
    "ALTER TABLE operations ADD COLUMN ordering_seq {bigint}",
    "ALTER TABLE operations ADD COLUMN retry_at {timestamp}",
    # A claim: the copy holding ``claim_token`` may replay until ``claimed_until``.
    "ALTER TABLE operations ADD COLUMN claimed_until {timestamp}",
    "ALTER TABLE operations ADD COLUMN claim_token {text}",
    "CREATE INDEX operations_by_key ON operations (ordering_key, ordering_seq)"
    " WHERE ordering_key IS NOT NULL",
    "CREATE INDEX operations_unsettled_by_key ON operations (ordering_key, ordering_seq)"
    f" WHERE ordering_key IS NOT NULL AND {_unsettled('')}",
    # Claims end when the outcome is recorded: this index holds only the live ones.
    "CREATE INDEX operations_claimed_by_key ON operations (ordering_key)"
    " WHERE claimed_until IS NOT NULL",
)

# Earlier unsettled operations with the key of the operation (?, ?) = (bulk_uuid, idx):
# how many, and the earliest retry scheduled among them.
AHEAD_SQL = (
    "SELECT COUNT(*), MIN(p.retry_at) FROM operations o JOIN operations p"
    " ON p.ordering_key = o.ordering_key AND p.ordering_seq < o.ordering_seq"
    f" WHERE o.bulk_uuid = ? AND o.idx = ? AND p.ordering_key IS NOT NULL AND {_unsettled('p.')}"
)

# Other operations with the key of (?, ?) that hold a live claim (``{now}``: the clock).
# Earlier ones are unsettled anyway; a later one is in flight only after an operator
# forced an old update back in, which must then wait for it.
BUSY_SQL = (
    "SELECT COUNT(*) FROM operations o JOIN operations p ON p.ordering_key = o.ordering_key"
    " WHERE o.bulk_uuid = ? AND o.idx = ? AND p.claimed_until IS NOT NULL"
    " AND p.claimed_until > {now} AND NOT (p.bulk_uuid = o.bulk_uuid AND p.idx = o.idx)"
)

# Later operations with the key of (?, ?) already replayed, being replayed or complete:
# replaying this one again would put an older write over a newer one.
SUPERSEDED_SQL = (
    "SELECT COUNT(*) FROM operations o JOIN operations p ON p.ordering_key = o.ordering_key"
    " AND p.ordering_seq > o.ordering_seq WHERE o.bulk_uuid = ? AND o.idx = ?"
    " AND p.ordering_key IS NOT NULL"
    " AND (p.status = 1 OR p.attempts > 0 OR p.claimed_until IS NOT NULL)"
)

# Unsettled ordered operations of accepted bulks that wait behind an earlier one.
BACKLOG_SQL = (
    "SELECT COUNT(*), COUNT(DISTINCT o.ordering_key), MIN(b.start_time)"
    " FROM operations o JOIN bulks b ON b.bulk_uuid = o.bulk_uuid"
    f" WHERE o.ordering_key IS NOT NULL AND {_unsettled('o.')} AND b.accepted"
    " AND EXISTS (SELECT 1 FROM operations p WHERE p.ordering_key = o.ordering_key"
    f" AND p.ordering_seq < o.ordering_seq AND p.ordering_key IS NOT NULL AND {_unsettled('p.')})"
)


_COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<="}
_LISTS = {"in": "IN", "nin": "NOT IN"}
_CONDITIONS = ", ".join([*_COMPARISONS, *_LISTS, "like"])


@dataclass(frozen=True)
class Dialect:
    like: str  # an operator that ignores case on both, as Magento's LIKE on MySQL does
    start_time_text: str  # b.start_time as text 'YYYY-MM-DD HH:MM:SS' (UTC), for LIKE
    timestamp: Callable[[datetime], object]  # a UTC datetime as this database's parameter


@dataclass(frozen=True)
class SearchQuery:
    count_sql: str  # the total count of matching bulks
    count_params: tuple[object, ...]
    page_sql: str  # BULK_COLUMNS of the page's bulks, newest first
    page_params: tuple[object, ...]


def search_query(
    owner: str,
    filters: list[list[BulkFilter]],
    page_size: int,
    current_page: int,
    dialect: Dialect,
) -> SearchQuery:
    """The queries for ``Store.search``.

    Raises ValueError, with a sentence for the client, on a filter or page it cannot run.
    """
    if page_size < 1:
        raise ValueError("searchCriteria[pageSize] must be at least 1.")
    if current_page < 1:
        raise ValueError("searchCriteria[currentPage] must be at least 1.")
    params: list[object] = [owner]
    where = ["b.accepted", "b.owner = ?"]
    for group in filters:
        if group:  # Magento ignores an empty filter group
            where.append("(" + " OR ".join(_condition(f, dialect, params) for f in group) + ")")
    clause = " AND ".join(where)
    return SearchQuery(
        count_sql=f"SELECT COUNT(*) FROM bulks b WHERE {clause}",
        count_params=tuple(params),
        page_sql=(
            f"SELECT {BULK_COLUMNS} FROM bulks b WHERE {clause}"
            # bulk_uuid breaks ties so that pages neither repeat nor skip a bulk
            " ORDER BY b.start_time DESC, b.bulk_uuid DESC LIMIT ? OFFSET ?"
        ),
        page_params=(*params, page_size, (current_page - 1) * page_size),
    )


def _condition(f: BulkFilter, dialect: Dialect, params: list[object]) -> str:
    """One filter as SQL on bulks "b", appending its parameters."""
    parse: Callable[[str], object]
    if f.field == "status":
        column, text, parse = "o.status", "CAST(o.status AS TEXT)", _status
    elif f.field == "bulk_uuid":
        column, text, parse = "b.bulk_uuid", "b.bulk_uuid", str.strip
    elif f.field == "start_time":
        column, text, parse = "b.start_time", dialect.start_time_text, partial(_timestamp, dialect)
    else:
        raise ValueError(
            f"Bulks cannot be filtered by {f.field!r}: use status, bulk_uuid or start_time."
        )
    if f.condition in _COMPARISONS:
        params.append(parse(f.value))
        sql = f"{column} {_COMPARISONS[f.condition]} ?"
    elif f.condition in _LISTS:
        values = [parse(v) for v in f.value.split(",")]
        params.extend(values)
        sql = f"{column} {_LISTS[f.condition]} ({', '.join('?' * len(values))})"
    elif f.condition == "like":
        params.append(f.value)
        sql = f"{text} {dialect.like} ? ESCAPE '\\'"
    else:
        raise ValueError(f"Condition type {f.condition!r} is not supported: use {_CONDITIONS}.")
    if f.field == "status":  # a bulk matches when any of its operations does
        return f"EXISTS (SELECT 1 FROM operations o WHERE o.bulk_uuid = b.bulk_uuid AND {sql})"
    return sql


def _status(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"A status filter needs an integer status, not {value!r}.") from None


def _timestamp(dialect: Dialect, value: str) -> object:
    return dialect.timestamp(_time(value))


def _time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"A start_time filter needs 'YYYY-MM-DD HH:MM:SS' (UTC) or ISO 8601, not {value!r}."
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
