"""Turns in one consumer: who waits here, who goes round a delay queue, and no leftovers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asyncgate.envelope import Envelope
from asyncgate.store import NewBulk, NewOperation, OperationOutcome, OperationStatus, SQLiteStore
from asyncgate.store.base import Turn, TurnState, UserType
from consumer.turns import PATIENCE, Turns, pause

TIERS = (1, 5, 15, 60, 300)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    yield store
    await store.close()


async def record(store: SQLiteStore, uuid: str, keys: list[str]) -> None:
    ops = tuple(
        NewOperation(i, "t", OperationStatus.OPEN, "{}", ordering_key=k) for i, k in enumerate(keys)
    )
    bulk = NewBulk(uuid, "d", "o", UserType.ADMIN, datetime.now(UTC), ops)
    await store.record_bulk(bulk)
    await store.accept_bulk(uuid)


def envelope(uuid: str, index: int) -> Envelope:
    return Envelope(
        f"{uuid}-{index}", uuid, index, "r", "default", "PUT", "/p", "", (), "{}", "c", 0.0
    )


DONE = OperationOutcome(OperationStatus.COMPLETE, 1, 200, "200 OK")


async def test_the_next_in_line_is_woken_when_the_earlier_one_settles(store: SQLiteStore) -> None:
    await record(store, "b", ["k", "k"])
    turns = Turns(store, lease=60)
    first, token = await turns.take(envelope("b", 0), "k")
    assert first.state is TurnState.GRANTED
    second = asyncio.create_task(turns.take(envelope("b", 1), "k"))
    await asyncio.sleep(0.1)
    assert not second.done()  # next in line: it waits here
    assert await store.record_outcome("b", 0, DONE, claim=token)
    turns.settled("k")
    turn, _ = await asyncio.wait_for(second, PATIENCE)
    assert turn.state is TurnState.GRANTED
    assert not turns._settled and not turns._waiters


async def test_those_further_back_do_not_wait_here(store: SQLiteStore) -> None:
    await record(store, "b", ["k", "k", "k"])
    turns = Turns(store, lease=60)
    assert (await turns.take(envelope("b", 0), "k"))[0].state is TurnState.GRANTED
    third, _ = await asyncio.wait_for(turns.take(envelope("b", 2), "k"), 0.5)
    assert third == Turn(TurnState.WAIT, ahead=2)


async def test_waiters_that_give_up_leave_nothing_behind(store: SQLiteStore) -> None:
    keys = [f"k{i}" for i in range(20)]
    await record(store, "b", keys + keys)
    turns = Turns(store, lease=60)
    for i, key in enumerate(keys):
        assert (await turns.take(envelope("b", i), key))[0].state is TurnState.GRANTED
    waits = await asyncio.gather(
        *(turns.take(envelope("b", 20 + i), k) for i, k in enumerate(keys))
    )
    assert {turn.state for turn, _ in waits} == {TurnState.WAIT}
    assert not turns._settled and not turns._waiters


def test_pause_rounds_down_to_a_delay_tier() -> None:
    """A tier late leaves the key idle; a little early costs one more round."""
    now = datetime.now(UTC)
    assert pause(Turn(TurnState.WAIT, ahead=1), TIERS) == 1
    assert pause(Turn(TurnState.WAIT, ahead=100), TIERS) == 15  # 30 s wanted
    retry = dataclasses.replace(Turn(TurnState.WAIT, 1), next_retry=now + timedelta(seconds=70))
    assert pause(retry, TIERS) == 60
    assert pause(retry, (5, 15)) == 15
    assert pause(Turn(TurnState.WAIT), (5,)) == 5  # never below the smallest tier
