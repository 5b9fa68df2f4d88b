"""The transport interface both roles program against.

"Confirmed" means the broker has the message durably: ``publish`` returns only
then, and raises ``PublishError`` otherwise.  Consumers get ``Delivery`` objects
and must ack each exactly once; unacked deliveries come back after a crash.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outgoing:
    queue: str  # work queue name from the config, e.g. "default"
    body: bytes
    message_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueDepth:
    queue: str  # the broker's queue name
    kind: str  # "work", "delay" or "dead"
    ready: int
    consumers: int


class Delivery(abc.ABC):
    """One received message; answer it with exactly one of ack or requeue."""

    body: bytes
    message_id: str
    redelivered: bool
    headers: Mapping[str, str]

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def requeue(self) -> None:
        """Give the message back now (graceful shutdown), not after a broker timeout."""


Handler = Callable[[Delivery], Awaitable[None]]


class Transport(abc.ABC):
    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @property
    def consuming(self) -> bool:
        """True while deliveries can arrive (readiness of a consumer)."""
        return self.connected

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare the topology (idempotent); keeps reconnecting after losses."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish to work queues; return once every message is confirmed, pipelined."""

    @abc.abstractmethod
    async def publish_delayed(self, message: Outgoing, delay: float) -> float:
        """Publish to come back to its work queue after about ``delay`` seconds.

        Returns the delay actually used (rounded up to a delay tier).
        """

    @abc.abstractmethod
    async def dead_letter(self, message: Outgoing) -> None:
        """Publish to the dead-letter queue, confirmed."""

    @abc.abstractmethod
    async def consume(self, queues: Sequence[str], prefetch: int, handler: Handler) -> None:
        """Start delivering messages of ``queues`` to ``handler``, at most ``prefetch``
        unacked at once; survives reconnects until ``stop_consuming``."""

    @abc.abstractmethod
    async def stop_consuming(self) -> None:
        """Stop taking new deliveries; in-flight ones may still be acked or requeued."""

    @abc.abstractmethod
    async def depth(self) -> list[QueueDepth]: ...

    @abc.abstractmethod
    async def dead_letters(self, limit: int) -> list[Delivery]:
        """Fetch up to ``limit`` dead letters for an operator (unacked until answered)."""
