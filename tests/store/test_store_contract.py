"""The Store contract: the same tests against SQLite and PostgreSQL, on real databases.

PostgreSQL is the server at ASYNCGATE_TEST_POSTGRES_URL (default: the local one, trust
auth); each test gets a database of its own, created and dropped around it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import aiosqlite
import asyncpg
import pytest

from asyncgate.store import (
    BulkFilter,
    NewBulk,
    NewOperation,
    OperationOutcome,
    OperationStatus,
    PostgresStore,
    SQLiteStore,
    Store,
    UserType,
    create_store,
    open_patiently,
)
from asyncgate.store.base import Turn, TurnState

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
OPEN, REJECTED = OperationStatus.OPEN, OperationStatus.REJECTED

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture
def url(store_url: str) -> str:
    """A URL of an empty database of the backend under test (SQLite, then PostgreSQL)."""
    return store_url


@pytest.fixture
async def open_store(url: str) -> AsyncIterator[Opener]:
    """Opens stores on the test's database (like separate processes); closes them after."""
    stores: list[Store] = []

    async def opener() -> Store:
        store = create_store(url)
        await store.open()
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.close()


@pytest.fixture
async def store(open_store: Opener) -> Store:
    return await open_store()


async def _raw(url: str, sql: str) -> list[tuple[object, ...]]:
    """Run one statement past the store (and commit it), for what the interface does not show."""
    if url.startswith("sqlite:///"):
        async with aiosqlite.connect(url[len("sqlite:///") :]) as conn:
            rows = [tuple(row) for row in await conn.execute_fetchall(sql)]
            await conn.commit()
            return rows
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


def new_bulk(
    uuid: str,
    *,
    owner: str = "alice",
    start: datetime = T0,
    statuses: tuple[OperationStatus, ...] = (OPEN, OPEN),
) -> NewBulk:
    return NewBulk(
        bulk_uuid=uuid,
        description="customers-create POST /V1/customers",
        owner=owner,
        user_type=UserType.INTEGRATION,
        start_time=start,
        operations=tuple(
            NewOperation(
                index=i,
                topic="async.V1.customers.POST",
                status=status,
                serialized_data=f'{{"customer": {{"id": {i}}}}}',
                result_message="rejected at intake" if status == REJECTED else None,
                error_code=400 if status == REJECTED else None,
            )
            for i, status in enumerate(statuses)
        ),
    )


async def accepted(store: Store, bulk: NewBulk) -> NewBulk:
    await store.record_bulk(bulk)
    await store.accept_bulk(bulk.bulk_uuid)
    return bulk


def outcome(status: OperationStatus, attempts: int = 1, http: int | None = 201) -> OperationOutcome:
    return OperationOutcome(
        status=status,
        attempts=attempts,
        http_status=http,
        result_message=f"{http} from upstream",
        result_serialized_data='{"id": 7}',
        error_code=None if status == OperationStatus.COMPLETE else 500,
    )


async def statuses(store: Store, uuid: str) -> list[OperationStatus]:
    return [op.status for op in await store.operations(uuid)]


# --- lifecycle: pending, accepted, withdrawn ----------------------------------------------


async def test_a_pending_bulk_is_visible_to_the_consumer_only(store: Store) -> None:
    await store.record_bulk(new_bulk("b1", statuses=(OPEN, REJECTED)))

    assert await store.bulk("b1") is None
    assert await store.operations("b1") == []
    assert await store.count_status("b1", OPEN) == 0
    assert await store.search("alice", [], 10, 1) == ([], 0)
    state = await store.operation_state("b1", 1)
    assert state is not None
    assert (state.status, state.attempts, state.bulk_accepted) == (REJECTED, 0, False)
    assert state.bulk_start_time == T0


async def test_an_accepted_bulk_shows_everywhere(store: Store) -> None:
    bulk = await accepted(store, new_bulk("b1", statuses=(OPEN, REJECTED)))

    view = await store.bulk("b1")
    assert view is not None
    assert (view.bulk_uuid, view.description, view.owner) == ("b1", bulk.description, "alice")
    assert (view.user_type, view.operation_count) == (UserType.INTEGRATION, 2)
    assert view.start_time == T0 and view.start_time.utcoffset() == timedelta(0)
    ops = await store.operations("b1")
    assert [(op.index, op.status) for op in ops] == [(0, OPEN), (1, REJECTED)]
    assert ops[1].topic == "async.V1.customers.POST"
    assert ops[1].serialized_data == '{"customer": {"id": 1}}'
    assert (ops[1].result_message, ops[1].error_code) == ("rejected at intake", 400)
    assert (ops[0].result_message, ops[0].result_serialized_data, ops[0].http_status) == (
        None,
        None,
        None,
    )
    assert ops[0].attempts == 0
    assert ops[0].updated_at.tzinfo is not None
    assert abs(ops[0].updated_at - datetime.now(UTC)) < timedelta(minutes=1)
    state = await store.operation_state("b1", 0)
    assert state is not None and state.bulk_accepted


async def test_unknown_bulks_and_operations_have_no_state(store: Store) -> None:
    await accepted(store, new_bulk("b1"))
    assert await store.operation_state("nope", 0) is None
    assert await store.operation_state("b1", 99) is None
    assert await store.bulk("nope") is None
    assert await store.operations("nope") == []


async def test_accepting_an_unknown_bulk_raises(store: Store) -> None:
    with pytest.raises(LookupError, match="unknown"):
        await store.accept_bulk("nope")


async def test_withdraw_deletes_a_pending_bulk_with_its_operations(store: Store) -> None:
    await store.record_bulk(new_bulk("b1"))
    await store.withdraw_bulk("b1")

    assert await store.operation_state("b1", 0) is None
    with pytest.raises(LookupError):
        await store.accept_bulk("b1")
    await store.record_bulk(new_bulk("b1"))  # nothing of it was left behind


async def test_withdraw_leaves_an_accepted_bulk(store: Store) -> None:
    await accepted(store, new_bulk("b1"))
    await store.withdraw_bulk("b1")
    assert await store.bulk("b1") is not None


async def test_a_duplicate_bulk_fails_alone(store: Store) -> None:
    await store.record_bulk(new_bulk("dup"))
    results = await asyncio.gather(
        *(store.record_bulk(new_bulk(f"ok{i}")) for i in range(5)),
        store.record_bulk(new_bulk("dup")),
        *(store.record_bulk(new_bulk(f"ok{i}")) for i in range(5, 10)),
        return_exceptions=True,
    )
    assert [r is None for r in results] == [True] * 5 + [False] + [True] * 5
    assert "unique" in str(results[5]).lower()
    for i in range(10):
        assert await store.operation_state(f"ok{i}", 0) is not None


# --- the consumer's outcomes and the operator's reopens ----------------------------------


async def test_record_outcome_sets_the_attempt_without_counting(store: Store) -> None:
    await accepted(store, new_bulk("b1"))
    before = (await store.operations("b1"))[0].updated_at

    await store.record_outcome("b1", 0, outcome(OperationStatus.RETRIABLY_FAILED, 3, 503))

    op = (await store.operations("b1"))[0]
    assert (op.status, op.attempts, op.http_status) == (OperationStatus.RETRIABLY_FAILED, 3, 503)
    assert (op.result_message, op.result_serialized_data, op.error_code) == (
        "503 from upstream",
        '{"id": 7}',
        500,
    )
    assert op.updated_at > before
    state = await store.operation_state("b1", 0)
    assert state is not None and (state.status, state.attempts) == (op.status, 3)
    assert (await store.operations("b1"))[1].status == OPEN  # the other is untouched


async def test_every_status_transition(store: Store) -> None:
    complete, retriable = OperationStatus.COMPLETE, OperationStatus.RETRIABLY_FAILED
    failed = OperationStatus.NOT_RETRIABLY_FAILED
    await accepted(store, new_bulk("b1", statuses=(OPEN, OPEN, OPEN, REJECTED)))

    await store.record_outcome("b1", 0, outcome(complete))  # 4 -> 1
    await store.record_outcome("b1", 1, outcome(retriable, http=None))  # 4 -> 2
    await store.record_outcome("b1", 2, outcome(failed, http=400))  # 4 -> 3
    assert await statuses(store, "b1") == [complete, retriable, failed, REJECTED]

    assert await store.reopen_failed("b1") == [1]  # 2 -> 4
    assert await statuses(store, "b1") == [complete, OPEN, failed, REJECTED]
    await store.record_outcome("b1", 1, outcome(complete, attempts=2))  # 4 -> 1 on retry
    await store.reopen("b1", 2)  # 3 -> 4: a dead letter requeued
    await store.record_outcome("b1", 2, outcome(retriable, attempts=2, http=502))
    await store.record_outcome("b1", 2, outcome(failed, attempts=3, http=502))  # 2 -> 3
    assert await statuses(store, "b1") == [complete, complete, failed, REJECTED]
    assert [op.attempts for op in await store.operations("b1")] == [1, 2, 3, 0]


async def test_reopen_failed_changes_only_retriably_failed_operations(store: Store) -> None:
    retriable = OperationStatus.RETRIABLY_FAILED
    await accepted(store, new_bulk("b1", statuses=(OPEN,) * 5))
    await accepted(store, new_bulk("b2", statuses=(OPEN,)))
    for index in (3, 0, 4):
        await store.record_outcome("b1", index, outcome(retriable, attempts=2, http=503))
    await store.record_outcome("b1", 1, outcome(OperationStatus.NOT_RETRIABLY_FAILED))
    await store.record_outcome("b2", 0, outcome(retriable))
    before = await store.operations("b1")

    assert await store.reopen_failed("b1") == [0, 3, 4]

    after = await store.operations("b1")
    for old, new in zip(before, after, strict=True):
        expected = OPEN if old.status == retriable else old.status
        assert new == dataclasses.replace(old, status=expected)
    assert await statuses(store, "b2") == [retriable]
    assert await store.reopen_failed("b1") == []
    assert await store.reopen_failed("nope") == []


async def test_an_outcome_for_a_withdrawn_bulk_is_dropped(store: Store) -> None:
    await store.record_bulk(new_bulk("b1"))
    await store.withdraw_bulk("b1")
    await store.record_outcome("b1", 0, outcome(OperationStatus.COMPLETE))
    assert await store.operation_state("b1", 0) is None


async def test_count_status(store: Store) -> None:
    await accepted(store, new_bulk("b1", statuses=(OPEN, OPEN, REJECTED, OPEN)))
    await accepted(store, new_bulk("b2", statuses=(OPEN,)))
    await store.record_outcome("b1", 0, outcome(OperationStatus.COMPLETE))

    assert await store.count_status("b1", OPEN) == 2
    assert await store.count_status("b1", REJECTED) == 1
    assert await store.count_status("b1", OperationStatus.COMPLETE) == 1
    assert await store.count_status("b1", OperationStatus.RETRIABLY_FAILED) == 0
    assert await store.count_status("nope", OPEN) == 0


# --- cleanup ------------------------------------------------------------------------------


async def test_purge_deletes_old_bulks_pending_or_not(store: Store, url: str) -> None:
    await accepted(store, new_bulk("old", start=T0 - timedelta(days=61)))
    await store.record_bulk(new_bulk("old-pending", start=T0 - timedelta(days=70)))
    await accepted(store, new_bulk("new", start=T0))

    assert await store.purge(T0 - timedelta(days=60)) == 2

    assert await store.operation_state("old", 0) is None
    assert await store.operation_state("old-pending", 0) is None
    assert await store.bulk("new") is not None
    assert await _raw(url, "SELECT COUNT(*) FROM operations") == [(2,)]  # cascaded
    assert await store.purge(T0 - timedelta(days=60)) == 0


async def test_withdraw_stale_pending_deletes_only_old_pending_bulks(store: Store) -> None:
    await store.record_bulk(new_bulk("stale", start=T0 - timedelta(minutes=10)))
    await store.record_bulk(new_bulk("fresh", start=T0))
    await accepted(store, new_bulk("old-accepted", start=T0 - timedelta(minutes=10)))

    assert await store.withdraw_stale_pending(T0 - timedelta(minutes=5)) == 1

    assert await store.operation_state("stale", 0) is None
    assert await store.operation_state("fresh", 0) is not None
    assert await store.bulk("old-accepted") is not None


# --- search -------------------------------------------------------------------------------


@pytest.fixture
async def searchable(store: Store) -> Store:
    """Five accepted bulks of alice an hour apart (b0 oldest), one of bob, one pending."""
    for i in range(5):
        await accepted(store, new_bulk(f"b{i}", start=T0 + timedelta(hours=i)))
    await store.record_outcome("b1", 0, outcome(OperationStatus.COMPLETE))
    await store.record_outcome("b3", 1, outcome(OperationStatus.RETRIABLY_FAILED))
    await accepted(store, new_bulk("bob1", owner="bob"))
    await store.record_bulk(new_bulk("pending", start=T0 + timedelta(days=1)))
    return store


async def found(store: Store, *groups: list[tuple[str, str, str]]) -> list[str]:
    filters = [[BulkFilter(*f) for f in group] for group in groups]
    items, total = await store.search("alice", filters, 100, 1)
    assert total == len(items)
    return [item.bulk_uuid for item in items]


async def test_search_returns_accepted_bulks_of_the_owner_newest_first(searchable: Store) -> None:
    assert await found(searchable) == ["b4", "b3", "b2", "b1", "b0"]
    items, total = await searchable.search("bob", [], 10, 1)
    assert ([i.bulk_uuid for i in items], total) == (["bob1"], 1)
    assert items[0].operation_count == 2 and items[0].start_time.tzinfo is not None


async def test_search_pages(searchable: Store) -> None:
    pages = [await searchable.search("alice", [], 2, page) for page in (1, 2, 3, 4)]
    assert [([i.bulk_uuid for i in items], total) for items, total in pages] == [
        (["b4", "b3"], 5),
        (["b2", "b1"], 5),
        (["b0"], 5),
        ([], 5),
    ]


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ("eq", "1", ["b1"]),
        ("neq", "4", ["b3", "b1"]),  # some operation is not open
        ("gt", "1", ["b4", "b3", "b2", "b1", "b0"]),
        ("gteq", "2", ["b4", "b3", "b2", "b1", "b0"]),
        ("lt", "2", ["b1"]),
        ("lteq", "2", ["b3", "b1"]),
        ("in", "1, 2", ["b3", "b1"]),
        ("nin", "4,5", ["b3", "b1"]),
        ("like", "2%", ["b3"]),
    ],
)
async def test_search_on_status(
    searchable: Store, condition: str, value: str, expected: list[str]
) -> None:
    assert await found(searchable, [("status", condition, value)]) == expected


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ("eq", "b2", ["b2"]),
        ("neq", "b2", ["b4", "b3", "b1", "b0"]),
        ("gt", "b2", ["b4", "b3"]),
        ("gteq", "b2", ["b4", "b3", "b2"]),
        ("lt", "b2", ["b1", "b0"]),
        ("lteq", "b2", ["b2", "b1", "b0"]),
        ("in", "b0,b3, nope", ["b3", "b0"]),
        ("nin", "b0,b3", ["b4", "b2", "b1"]),
        ("like", "B%", ["b4", "b3", "b2", "b1", "b0"]),  # LIKE ignores case, as Magento's
        ("like", "%3", ["b3"]),
    ],
)
async def test_search_on_bulk_uuid(
    searchable: Store, condition: str, value: str, expected: list[str]
) -> None:
    assert await found(searchable, [("bulk_uuid", condition, value)]) == expected


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ("eq", "2024-05-01 14:00:00", ["b2"]),
        ("neq", "2024-05-01 14:00:00", ["b4", "b3", "b1", "b0"]),
        ("gt", "2024-05-01T14:00:00Z", ["b4", "b3"]),
        ("gteq", "2024-05-01T16:00:00+02:00", ["b4", "b3", "b2"]),
        ("lt", "2024-05-01 13:00:00", ["b0"]),
        ("lteq", "2024-05-01 13:00:00", ["b1", "b0"]),
        ("in", "2024-05-01 12:00:00,2024-05-01 16:00:00", ["b4", "b0"]),
        ("nin", "2024-05-01 12:00:00,2024-05-01 16:00:00", ["b3", "b2", "b1"]),
        ("like", "2024-05-01 1%", ["b4", "b3", "b2", "b1", "b0"]),
        ("like", "%15:00:00", ["b3"]),
    ],
)
async def test_search_on_start_time(
    searchable: Store, condition: str, value: str, expected: list[str]
) -> None:
    assert await found(searchable, [("start_time", condition, value)]) == expected


async def test_search_ors_within_a_group_and_ands_between_groups(searchable: Store) -> None:
    either = [("status", "eq", "1"), ("bulk_uuid", "eq", "b4")]
    assert await found(searchable, either) == ["b4", "b1"]
    assert await found(searchable, either, [("start_time", "lt", "2024-05-01 15:00:00")]) == ["b1"]
    assert await found(searchable, [], [("bulk_uuid", "like", "b%")]) == [
        "b4",
        "b3",
        "b2",
        "b1",
        "b0",
    ]


async def test_search_counts_all_matches_while_paging(searchable: Store) -> None:
    filters = [[BulkFilter("bulk_uuid", "neq", "b4")]]
    items, total = await searchable.search("alice", filters, 3, 2)
    assert ([i.bulk_uuid for i in items], total) == (["b0"], 4)


@pytest.mark.parametrize(
    ("field", "condition", "value", "message"),
    [
        ("owner", "eq", "bob", "cannot be filtered by 'owner'"),
        ("status", "finset", "1", "Condition type 'finset' is not supported"),
        ("status", "eq", "open", "integer status"),
        ("status", "in", "1,x", "integer status"),
        ("start_time", "gt", "yesterday", "YYYY-MM-DD HH:MM:SS"),
    ],
)
async def test_search_rejects_what_it_cannot_run(
    store: Store, field: str, condition: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await store.search("alice", [[BulkFilter(field, condition, value)]], 10, 1)


@pytest.mark.parametrize(("size", "page"), [(0, 1), (10, 0)])
async def test_search_rejects_a_page_before_the_first(store: Store, size: int, page: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await store.search("alice", [], size, page)


# --- nonces -------------------------------------------------------------------------------


async def test_a_nonce_is_used_once_until_it_expires(store: Store, url: str) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=5)
    past = datetime.now(UTC) - timedelta(seconds=1)

    assert await store.use_nonce("key1", "n1", soon)
    assert not await store.use_nonce("key1", "n1", soon)
    assert await store.use_nonce("key2", "n1", soon)  # nonces are per consumer key
    assert await store.use_nonce("key1", "n2", past)
    assert await store.use_nonce("key1", "n2", soon)  # expired: it may be used again
    assert not await store.use_nonce("key1", "n2", soon)
    results = await asyncio.gather(*(store.use_nonce("key1", "race", soon) for _ in range(20)))
    assert results.count(True) == 1
    assert await _raw(url, "SELECT COUNT(*) FROM nonces") == [(4,)]


async def test_expired_nonces_are_deleted(open_store: Opener, url: str) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    first = await open_store()
    for i in range(3):
        assert await first.use_nonce("key1", f"n{i}", past)

    second = await open_store()  # a fresh store sweeps on its first use
    assert await second.use_nonce("key1", "live", datetime.now(UTC) + timedelta(minutes=5))
    assert await _raw(url, "SELECT nonce FROM nonces") == [("live",)]


# --- concurrency and schema ---------------------------------------------------------------


async def test_concurrent_record_bulk_all_commit(store: Store) -> None:
    await asyncio.gather(*(store.record_bulk(new_bulk(f"c{i:03}")) for i in range(200)))
    await asyncio.gather(*(store.accept_bulk(f"c{i:03}") for i in range(200)))
    items, total = await store.search("alice", [], 500, 1)
    assert total == 200
    assert sorted(item.bulk_uuid for item in items) == [f"c{i:03}" for i in range(200)]
    assert all(item.operation_count == 2 for item in items)


async def test_migrating_twice_changes_nothing(open_store: Opener, url: str) -> None:
    first = await open_store()
    await accepted(first, new_bulk("b1"))
    await first.close()

    again = await open_store()
    assert await again.bulk("b1") is not None
    assert [row[0] for row in await _raw(url, "SELECT version FROM schema_version")] == [1, 2]


async def test_a_newer_schema_is_refused(open_store: Opener, url: str) -> None:
    store = await open_store()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.ping()
    await _raw(url, "INSERT INTO schema_version (version, applied_at) VALUES (3, '2030-01-01')")
    with pytest.raises(RuntimeError, match="schema version 3"):
        await open_store()


async def test_two_stores_migrate_one_database_at_once(open_store: Opener, url: str) -> None:
    first, second = await asyncio.gather(open_store(), open_store())
    await accepted(first, new_bulk("b1"))
    assert await second.bulk("b1") is not None
    await second.ping()
    assert [row[0] for row in await _raw(url, "SELECT version FROM schema_version")] == [1, 2]


async def test_two_sqlite_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    gateway, consumer = SQLiteStore(tmp_path / "shared.db"), SQLiteStore(tmp_path / "shared.db")
    await asyncio.gather(gateway.open(), consumer.open())
    try:
        await accepted(gateway, new_bulk("b1"))
        await consumer.record_outcome("b1", 0, outcome(OperationStatus.COMPLETE))
        assert await statuses(gateway, "b1") == [OperationStatus.COMPLETE, OPEN]

        # Both write at once, as the two processes do: each waits for the other's lock.
        await asyncio.gather(
            *(gateway.record_bulk(new_bulk(f"g{i}")) for i in range(50)),
            *(consumer.record_outcome("b1", 1, outcome(OPEN, attempts=i)) for i in range(50)),
            *(consumer.record_bulk(new_bulk(f"c{i}")) for i in range(50)),
        )
        for reader, uuid in ((consumer, "g49"), (gateway, "c49")):
            state = await reader.operation_state(uuid, 1)
            assert state is not None and not state.bulk_accepted
    finally:
        await gateway.close()
        await consumer.close()


# --- choosing a backend -------------------------------------------------------------------


async def test_a_sqlite_url_names_a_path_relative_or_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for url, path in [
        ("sqlite:///var/lib/asyncgate.db", tmp_path / "var/lib/asyncgate.db"),
        (f"sqlite:///{tmp_path}/abs/dir/store.db", tmp_path / "abs/dir/store.db"),
    ]:
        store = create_store(url)
        assert isinstance(store, SQLiteStore)
        await store.open()
        await store.close()
        assert path.is_file()


def test_a_postgres_url_makes_a_postgres_store() -> None:
    assert isinstance(create_store("postgresql://u@db:5432/asyncgate"), PostgresStore)
    assert isinstance(create_store("postgres://u@db/asyncgate"), PostgresStore)


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite://relative.db", "sqlite:///", "x.db"])
def test_an_unknown_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        create_store(url)


# --- ordering: turns ------------------------------------------------------------------------

GRANTED, WAIT, SETTLED = TurnState.GRANTED, TurnState.WAIT, TurnState.SETTLED
LATER = datetime.now(UTC) + timedelta(minutes=5)
EXPIRE_CLAIMS = "UPDATE operations SET claimed_until = '2000-01-01 00:00:00+00'"


def keyed(uuid: str, *keys: str | None, start: datetime = T0) -> NewBulk:
    """A bulk whose operation i has ordering key keys[i]."""
    bulk = new_bulk(uuid, start=start, statuses=(OPEN,) * len(keys))
    ops = tuple(
        dataclasses.replace(op, ordering_key=k) for op, k in zip(bulk.operations, keys, strict=True)
    )
    return dataclasses.replace(bulk, operations=ops)


async def claim(
    store: Store, uuid: str, index: int, attempt: int = 1, token: str | None = None
) -> Turn:
    return await store.claim_turn(uuid, index, attempt, token or uuid4().hex, 300.0)


async def test_a_keys_operations_take_turns_in_record_order(store: Store) -> None:
    await accepted(store, keyed("b1", "k", "other", "k"))
    await accepted(store, keyed("b2", "k", None))
    assert (await claim(store, "b2", 0)) == Turn(WAIT, ahead=2)
    assert (await claim(store, "b1", 2)) == Turn(WAIT, ahead=1)
    assert (await claim(store, "b1", 1)).state is GRANTED  # another key: its own turn
    assert (await claim(store, "b1", 0)).state is GRANTED
    await store.record_outcome("b1", 0, outcome(OperationStatus.COMPLETE))
    assert (await claim(store, "b2", 0)) == Turn(WAIT, ahead=1)
    assert (await claim(store, "b1", 2)).state is GRANTED
    state = await store.operation_state("b1", 2)
    assert state is not None and state.ordering_key == "k"


async def test_a_claimed_operation_waits_for_its_claim_to_end(store: Store, url: str) -> None:
    await accepted(store, keyed("b1", "k", "k"))
    assert (await claim(store, "b1", 0)).state is GRANTED
    # A second copy of the same operation (a redelivery while the first is in flight).
    assert (await claim(store, "b1", 0)) == Turn(WAIT)
    # Its consumer died: once the claim expires, the copy may go.
    await _raw(url, EXPIRE_CLAIMS)
    assert (await claim(store, "b1", 0)).state is GRANTED
    # Recording the outcome ends the claim: a retry of it may claim at once.
    await store.record_outcome("b1", 0, retry_at(datetime.now(UTC)))
    assert (await claim(store, "b1", 0, attempt=2)).state is GRANTED


def retry_at(moment: datetime | None, attempts: int = 1) -> OperationOutcome:
    failed = outcome(OperationStatus.RETRIABLY_FAILED, attempts=attempts, http=503)
    return dataclasses.replace(failed, retry_at=moment)


async def test_a_scheduled_retry_holds_back_later_operations(store: Store) -> None:
    await accepted(store, keyed("b1", "k", "k"))
    assert (await claim(store, "b1", 0)).state is GRANTED
    comeback = T0 + timedelta(seconds=30)
    await store.record_outcome("b1", 0, retry_at(comeback))
    turn = await claim(store, "b1", 1)
    assert turn.state is WAIT and turn.ahead == 1 and turn.next_retry == comeback
    # Retries exhausted (dead-lettered, no retry scheduled): it no longer holds the key.
    await store.record_outcome("b1", 0, retry_at(None, attempts=2))
    assert (await claim(store, "b1", 1)).state is GRANTED


async def test_settled_operations_are_not_claimed_again(store: Store) -> None:
    await accepted(store, keyed("b1", "k", "k"))
    await store.record_outcome("b1", 0, outcome(OperationStatus.COMPLETE))
    assert (await claim(store, "b1", 0, attempt=2)).state is SETTLED
    await store.record_outcome("b1", 1, retry_at(LATER, attempts=1))
    assert (await claim(store, "b1", 1, attempt=1)).state is SETTLED  # attempt 1 recorded
    assert (await claim(store, "b1", 1, attempt=2)).state is GRANTED
    assert (await claim(store, "gone", 0)).state is SETTLED


async def test_a_pending_bulk_holds_its_key_until_withdrawn(store: Store) -> None:
    await store.record_bulk(keyed("pending", "k"))
    await accepted(store, keyed("b2", "k"))
    assert (await claim(store, "b2", 0)) == Turn(WAIT, ahead=1)
    await store.withdraw_bulk("pending")
    assert (await claim(store, "b2", 0)).state is GRANTED


async def test_a_permanent_failure_or_rejection_does_not_hold_the_key(store: Store) -> None:
    bulk = keyed("b1", "k", "k", "k")
    rejected = dataclasses.replace(bulk.operations[0], status=REJECTED)
    await accepted(store, dataclasses.replace(bulk, operations=(rejected, *bulk.operations[1:])))
    failed = outcome(OperationStatus.NOT_RETRIABLY_FAILED, http=400)
    await store.record_outcome("b1", 1, failed)
    assert (await claim(store, "b1", 2)).state is GRANTED


async def test_concurrent_claims_grant_one_turn(open_store: Opener) -> None:
    first, second = await open_store(), await open_store()
    await accepted(first, keyed("b1", "k"))
    turns = await asyncio.gather(*(claim(s, "b1", 0) for s in (first, second) * 10))
    assert sum(t.state is GRANTED for t in turns) == 1


async def test_ordering_backlog_counts_operations_waiting_behind_another(store: Store) -> None:
    empty = await store.ordering_backlog()
    assert (empty.waiting, empty.keys, empty.oldest_start) == (0, 0, None)
    await accepted(store, keyed("b1", "k", "k", "j", None, start=T0))
    await accepted(store, keyed("b2", "j", "k", start=T0 + timedelta(minutes=1)))
    await store.record_bulk(keyed("pending", "j"))  # not accepted: not counted
    backlog = await store.ordering_backlog()
    assert (backlog.waiting, backlog.keys, backlog.oldest_start) == (3, 2, T0)


async def test_a_copy_whose_claim_was_taken_over_can_neither_renew_nor_record(
    store: Store, url: str
) -> None:
    """The stale copy's late outcome must not undo the copy that took over."""
    await accepted(store, keyed("b1", "k", "k"))
    assert (await claim(store, "b1", 0, token="first")).state is GRANTED
    await _raw(url, EXPIRE_CLAIMS)  # the first copy stalled past its lease
    assert (await claim(store, "b1", 0, token="second")).state is GRANTED
    assert not await store.renew_claim("b1", 0, "first", 300.0)
    assert not await store.record_outcome("b1", 0, retry_at(LATER), claim="first")
    assert await store.renew_claim("b1", 0, "second", 300.0)
    assert (await claim(store, "b1", 1)) == Turn(WAIT, ahead=1)
    assert await store.record_outcome("b1", 0, outcome(OperationStatus.COMPLETE), claim="second")
    assert (await claim(store, "b1", 1)).state is GRANTED


async def test_a_released_claim_lets_another_copy_go_at_once(store: Store) -> None:
    await accepted(store, keyed("b1", "k"))
    assert (await claim(store, "b1", 0, token="first")).state is GRANTED
    await store.release_claim("b1", 0, "someone-else")  # not its claim: nothing happens
    assert (await claim(store, "b1", 0)).state is WAIT
    await store.release_claim("b1", 0, "first")
    assert (await claim(store, "b1", 0)).state is GRANTED


async def test_reopen_refuses_an_update_a_later_one_has_overtaken(store: Store) -> None:
    await accepted(store, keyed("b1", "k", "k", "k", None))
    failed = outcome(OperationStatus.NOT_RETRIABLY_FAILED, http=400)
    await store.record_outcome("b1", 0, failed)
    assert await store.reopen("b1", 0)  # nothing later has run: it may go first again
    await store.record_outcome("b1", 0, failed)
    assert (await claim(store, "b1", 1)).state is GRANTED  # a later one is in flight
    assert not await store.reopen("b1", 0)
    await store.record_outcome("b1", 1, retry_at(None))  # ...and failed for good
    assert not await store.reopen("b1", 0)  # it still may have been applied
    assert await store.reopen("b1", 3)  # unordered: nothing to overtake it
    assert await store.reopen("b1", 0, force=True)


async def test_a_forced_old_update_waits_for_a_later_one_in_flight(store: Store) -> None:
    await accepted(store, keyed("b1", "k", "k"))
    await store.record_outcome("b1", 0, outcome(OperationStatus.NOT_RETRIABLY_FAILED, http=400))
    assert (await claim(store, "b1", 1)).state is GRANTED
    assert await store.reopen("b1", 0, force=True)
    assert (await claim(store, "b1", 0, attempt=2)).state is WAIT  # never beside it
    await store.record_outcome("b1", 1, outcome(OperationStatus.COMPLETE))
    assert (await claim(store, "b1", 0, attempt=2)).state is GRANTED


async def test_concurrent_bulks_number_a_keys_operations_without_gaps(store: Store) -> None:
    """Many keys per bulk (5000 is Magento's bulk limit), bulks sharing keys at once."""
    keys = [f"k{i}" for i in range(2000)]
    await asyncio.gather(*(accepted(store, keyed(f"b{n}", *keys)) for n in range(4)))
    for key in ("k0", "k1999"):
        waiting = [await claim(store, f"b{n}", keys.index(key)) for n in range(4)]
        assert sorted(t.ahead for t in waiting) == [0, 1, 2, 3]


async def test_a_store_locked_at_start_up_is_opened_once_the_lock_goes(tmp_path: Path) -> None:
    """Another process holds the write lock past busy_timeout: start-up waits, not exits."""
    path = tmp_path / "locked.db"
    first = SQLiteStore(path)
    await first.open()
    await first.close()
    holder = await aiosqlite.connect(path)
    await holder.execute("BEGIN EXCLUSIVE")
    release = asyncio.get_running_loop().call_later(
        7, lambda: asyncio.ensure_future(holder.commit())
    )
    store = SQLiteStore(path)
    try:
        await open_patiently(store, within=30)
        await accepted(store, new_bulk("b1"))
    finally:
        release.cancel()
        await store.close()
        await holder.close()
