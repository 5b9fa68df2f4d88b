"""The store of bulks and operations: what the status endpoints answer from.

Lifecycle of a bulk (README "Delivery guarantees"):

1. The gateway calls ``record_bulk`` *before* publishing: the bulk is *pending*
   and its operations have status 4 (open) or 5 (rejected at intake).
2. Once the broker confirmed every message, the gateway calls ``accept_bulk``.
   If publishing failed it calls ``withdraw_bulk`` instead, which deletes it, so
   no orphan stays open and a non-202 answer leaves nothing behind.
3. The consumer reads ``operation_state`` before each replay (a withdrawn or
   completed operation is not replayed) and writes ``record_outcome`` after it.
   An operation with an ordering key first takes its turn (``claim_turn``): every
   earlier operation with its key must be settled, and no copy of it in flight.

Magento's operation statuses are used as they are: 1 complete, 2 retriably
failed, 3 not retriably failed, 4 open, 5 rejected.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from datetime import datetime


class OperationStatus(enum.IntEnum):
    COMPLETE = 1
    RETRIABLY_FAILED = 2
    NOT_RETRIABLY_FAILED = 3
    OPEN = 4
    REJECTED = 5


class UserType(enum.IntEnum):
    INTEGRATION = 1
    ADMIN = 2
    CUSTOMER = 3
    GUEST = 4


@dataclass(frozen=True)
class NewOperation:
    index: int  # the item's index in the request; Magento's operation "id"
    topic: str  # e.g. "async.V1.customers.POST", shown as topic_name
    status: OperationStatus  # OPEN, or REJECTED for an item refused at intake
    serialized_data: str  # the item as it will be replayed (JSON text)
    result_message: str | None = None  # why a rejected item was rejected
    error_code: int | None = None
    # Digest of the ordering key (asyncgate/ordering.py); None when unordered.  The store
    # numbers the key's operations in the order their bulks are recorded.
    ordering_key: str | None = None


@dataclass(frozen=True)
class NewBulk:
    bulk_uuid: str
    description: str  # route name and method, e.g. "customers-create POST /V1/customers"
    owner: str  # caller identity (a hash or key, never a secret); status access compares it
    user_type: UserType
    start_time: datetime  # UTC, timezone-aware
    operations: tuple[NewOperation, ...]


@dataclass(frozen=True)
class OperationOutcome:
    status: OperationStatus  # COMPLETE, RETRIABLY_FAILED or NOT_RETRIABLY_FAILED
    attempts: int  # attempts made so far, including this one
    http_status: int | None  # last upstream status; None for a connection error
    result_message: str  # e.g. "201 Created", or the backend's message
    result_serialized_data: str | None = None  # upstream response body (JSON as returned)
    error_code: int | None = None
    # When the scheduled retry comes back (RETRIABLY_FAILED with a retry); None otherwise.
    # While set, the operation still holds back later operations with its ordering key.
    retry_at: datetime | None = None


@dataclass(frozen=True)
class OperationState:
    """What the consumer needs to decide whether to replay."""

    status: OperationStatus
    attempts: int
    bulk_accepted: bool  # False while the gateway has not yet had every confirm
    bulk_start_time: datetime
    ordering_key: str | None = None


class TurnState(enum.Enum):
    GRANTED = "granted"  # replay it now; the claim lasts until its outcome is recorded
    WAIT = "wait"  # an earlier operation with its key is unsettled, or a copy is in flight
    SETTLED = "settled"  # already complete, or this attempt is recorded: do not replay


@dataclass(frozen=True)
class Turn:
    state: TurnState
    ahead: int = 0  # earlier operations with the key that are not settled yet
    next_retry: datetime | None = None  # the earliest retry scheduled among them


@dataclass(frozen=True)
class OrderingBacklog:
    """Operations waiting behind an earlier one with their key (the metrics' view)."""

    waiting: int
    keys: int  # distinct keys with at least one waiting operation
    oldest_start: datetime | None  # acceptance time of the oldest waiting operation


@dataclass(frozen=True)
class OperationView:
    index: int
    topic: str
    status: OperationStatus
    serialized_data: str
    result_message: str | None
    result_serialized_data: str | None
    error_code: int | None
    attempts: int
    http_status: int | None
    updated_at: datetime


@dataclass(frozen=True)
class BulkView:
    bulk_uuid: str
    description: str
    owner: str
    user_type: UserType
    start_time: datetime
    operation_count: int


@dataclass(frozen=True)
class BulkFilter:
    """One condition of a Magento searchCriteria, on ``status``, ``bulk_uuid`` or ``start_time``.

    ``condition`` is one of eq, neq, gt, gteq, lt, lteq, in, nin, like.  For ``status``
    a bulk matches when any of its operations has that status.
    """

    field: str
    condition: str
    value: str


class Store(abc.ABC):
    """Both backends (SQLite, PostgreSQL) behave the same; the same tests run on both."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema (versioned)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the store is unreachable (readiness)."""

    # --- gateway: intake -------------------------------------------------------------
    @abc.abstractmethod
    async def record_bulk(self, bulk: NewBulk) -> None:
        """Insert a pending bulk with its operations (batched with concurrent callers)."""

    @abc.abstractmethod
    async def accept_bulk(self, bulk_uuid: str) -> None:
        """Mark the bulk accepted: every message of it is confirmed by the broker."""

    @abc.abstractmethod
    async def withdraw_bulk(self, bulk_uuid: str) -> None:
        """Delete a bulk whose publish failed, with its operations."""

    # --- consumer: replay --------------------------------------------------------------
    @abc.abstractmethod
    async def operation_state(self, bulk_uuid: str, index: int) -> OperationState | None:
        """None when the bulk is unknown (withdrawn, purged)."""

    @abc.abstractmethod
    async def record_outcome(
        self, bulk_uuid: str, index: int, outcome: OperationOutcome, claim: str | None = None
    ) -> bool:
        """Write one attempt's outcome; keeps attempts, last upstream status and timestamps.

        For an ordered operation, ``claim`` is the token its turn was granted with: the
        write happens only while that claim is still the operation's (another copy may
        have taken over after it expired), and it ends the claim.  Returns whether the
        outcome was written (False also for an operation that is gone)."""

    @abc.abstractmethod
    async def claim_turn(
        self, bulk_uuid: str, index: int, attempt: int, token: str, lease: float
    ) -> Turn:
        """Atomically: is it this ordered operation's turn?  If so, claim it for ``lease``
        seconds under ``token``.

        Its turn comes when every earlier operation with its key is settled (complete,
        failed for good or rejected: not open and not waiting for a retry), no other
        operation with the key holds a live claim, and no live claim of it is held by
        another copy.  ``attempt`` is the delivery's: an operation already complete, or
        with that attempt recorded, is SETTLED (a duplicate)."""

    @abc.abstractmethod
    async def renew_claim(self, bulk_uuid: str, index: int, token: str, lease: float) -> bool:
        """Extend the claim by ``lease`` seconds from now; False when ``token`` lost it."""

    @abc.abstractmethod
    async def release_claim(self, bulk_uuid: str, index: int, token: str) -> None:
        """End the claim without an outcome (nothing was sent): another copy may go."""

    @abc.abstractmethod
    async def ordering_backlog(self) -> OrderingBacklog: ...

    # --- operator ----------------------------------------------------------------------
    @abc.abstractmethod
    async def reopen_failed(self, bulk_uuid: str) -> list[int]:
        """Set status 2 operations of a bulk back to 4; return their indexes."""

    @abc.abstractmethod
    async def reopen(self, bulk_uuid: str, index: int, force: bool = False) -> bool:
        """Set one operation back to 4 (a dead letter being requeued); True if it was.

        Unless ``force``, an ordered operation that a later one with its key has
        overtaken (replayed, being replayed or complete) is left alone: replaying it
        would put the older write over the newer one.  Checked and set atomically."""

    @abc.abstractmethod
    async def purge(self, older_than: datetime) -> int:
        """Delete bulks started before ``older_than``; return how many."""

    @abc.abstractmethod
    async def withdraw_stale_pending(self, older_than: datetime) -> int:
        """Delete pending (never accepted) bulks started before ``older_than``."""

    # --- gateway: status endpoints -----------------------------------------------------
    @abc.abstractmethod
    async def bulk(self, bulk_uuid: str) -> BulkView | None:
        """An accepted bulk, or None (unknown, withdrawn or still pending)."""

    @abc.abstractmethod
    async def operations(self, bulk_uuid: str) -> list[OperationView]:
        """Operations of a bulk ordered by index."""

    @abc.abstractmethod
    async def count_status(self, bulk_uuid: str, status: int) -> int: ...

    @abc.abstractmethod
    async def search(
        self,
        owner: str,
        filters: list[list[BulkFilter]],
        page_size: int,
        current_page: int,
    ) -> tuple[list[BulkView], int]:
        """Accepted bulks of ``owner`` matching every group (OR within a group, AND
        between groups, as Magento's filterGroups), newest first; and the total count."""

    # --- security (nonce replay protection, several gateways agree) ---------------------
    @abc.abstractmethod
    async def use_nonce(self, consumer_key: str, nonce: str, expires_at: datetime) -> bool:
        """Remember a nonce; False if it was already used and has not expired."""
