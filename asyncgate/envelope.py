"""The versioned message both roles speak: one operation, as the gateway accepted it.

Wire format: a JSON object, ``"v": 1``.  Fields:

- ``operation_id``: UUID of the operation; sent upstream as X-Request-Id and Idempotency-Key.
- ``bulk_uuid``, ``index``: the bulk it belongs to and its item index (Magento's operation id).
- ``route``, ``queue``: the route name from the config (metrics, retry policy) and work queue.
- ``method``, ``path``, ``query``: the synchronous call to replay; ``path`` raw and
  percent-encoded as it goes on the wire, ``query`` without the leading ``?``.
- ``headers``: forwarded request headers as ``[name, value]`` pairs (the intake allowlist).
- ``body``: the request body as replayed (UTF-8 text; JSON for Magento routes).
- ``client``: the client's address; ``received_at``: acceptance time, UNIX seconds.
- ``attempt``: this replay's number over the operation's life (1 for the first);
  each scheduled retry adds one.  ``first_attempt`` is where the current retry
  budget started: 1, or later when an operator requeued a failed operation.
- ``auth``: how the consumer authenticates the replay; ``"forward"`` sends the
  forwarded credentials as they are.

A message that does not parse, or carries another version, is a poison message:
the consumer dead-letters it and keeps flowing.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from asyncgate.jsonutil import dumps, loads

VERSION = 1


class EnvelopeError(ValueError):
    """The message is not a valid envelope of a version we speak."""


@dataclass(frozen=True)
class Envelope:
    operation_id: str
    bulk_uuid: str
    index: int
    route: str
    queue: str
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: str
    client: str
    received_at: float
    attempt: int = 1
    first_attempt: int = 1
    auth: str = "forward"

    def to_bytes(self) -> bytes:
        # Field by field: dataclasses.asdict deep-copies, a measurable cost at intake.
        data: dict[str, Any] = {"v": VERSION}
        for f in _FIELDS:
            data[f] = getattr(self, f)
        data["headers"] = [list(h) for h in self.headers]
        return dumps(data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        try:
            data = loads(raw)
        except ValueError as exc:
            raise EnvelopeError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EnvelopeError("not a JSON object")
        if data.get("v") != VERSION:
            raise EnvelopeError(f"unknown envelope version {data.get('v')!r}")
        try:
            return cls(
                operation_id=_typed(data, "operation_id", str),
                bulk_uuid=_typed(data, "bulk_uuid", str),
                index=_typed(data, "index", int),
                route=_typed(data, "route", str),
                queue=_typed(data, "queue", str),
                method=_typed(data, "method", str),
                path=_typed(data, "path", str),
                query=_typed(data, "query", str),
                headers=tuple((str(k), str(v)) for k, v in _typed(data, "headers", list)),
                body=_typed(data, "body", str),
                client=_typed(data, "client", str),
                received_at=float(_typed(data, "received_at", (int, float))),
                attempt=_typed(data, "attempt", int),
                first_attempt=_typed(data, "first_attempt", int),
                auth=_typed(data, "auth", str),
            )
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(str(exc)) from exc

    def next_attempt(self) -> Envelope:
        return dataclasses.replace(self, attempt=self.attempt + 1)

    def restarted(self, attempt: int) -> Envelope:
        """A fresh retry budget from ``attempt`` on (an operator's requeue)."""
        return dataclasses.replace(self, attempt=attempt, first_attempt=attempt)

    @property
    def attempts_in_budget(self) -> int:
        return self.attempt - self.first_attempt + 1


_FIELDS = tuple(f.name for f in dataclasses.fields(Envelope))


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EnvelopeError(f"field {key!r} is missing or has the wrong type")
    return value


def operation_id(bulk_uuid: str, index: int) -> str:
    """A stable id per (bulk, item): redeliveries and retries keep it."""
    return str(uuid.uuid5(uuid.UUID(bulk_uuid), str(index)))
