"""Ordering keys: which operations must be applied one at a time, in acceptance order.

An ordering key names the resource an operation writes.  Operations with the same
key are never replayed at the same time, and they are replayed in the order the
gateway accepted them (the consumer enforces it through the store; see
``consumer/turns.py``).  A route's ``ordering`` rule says how the key is made:

- ``auto`` (the default): PUT, PATCH and DELETE by their resource path; a POST is
  unordered, since a create names no resource yet.
- ``path``: every method by its resource path.
- ``body.<field>``: by that field of the item's JSON body, e.g. ``body.customer.email``
  for creates; an item without a scalar value there is unordered.
- ``none``: never ordered.

The resource path is the replayed ``/V1/...`` path after ``by<Param>`` substitution,
without the store code and the query: ``/rest/all/V1/products/X`` and
``/rest/default/V1/products/X`` write the same product.

Keys are normalised so that one resource does not get two keys: percent-decoded,
without a trailing slash, case-folded (Magento looks SKUs and e-mails up without
regard to case), and a whole number is the same key as ``5`` or ``5.0``.  Two
resources sharing a key only costs concurrency, never order.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import unquote

from asyncgate.jsonutil import loads

ORDERED_BY_DEFAULT = frozenset({"PUT", "PATCH", "DELETE"})
_BODY = "body."


def is_ordering_rule(rule: object) -> bool:
    if not isinstance(rule, str):
        return False
    if rule.startswith(_BODY):
        return all(rule[len(_BODY) :].split("."))
    return rule in ("auto", "path", "none")


def ordering_key(rule: str, method: str, v1_path: str, body: str) -> str | None:
    """The key of one operation (readable text), or None when it is unordered."""
    if rule == "none":
        return None
    if rule == "auto":
        return _normal_path(v1_path) if method in ORDERED_BY_DEFAULT else None
    if rule == "path":
        return _normal_path(v1_path)
    field = rule[len(_BODY) :]
    value = _field(body, field.split("."))
    return None if value is None else f"{_normal_path(v1_path)} {field}={value}"


def digest(key: str) -> str:
    """What the store keeps: fixed width for its index, and no customer data in clear."""
    return hashlib.sha256(key.encode()).hexdigest()


def _field(body: str, names: list[str]) -> str | None:
    try:
        value: Any = loads(body)
    except (ValueError, RecursionError):
        return None
    for name in names:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).casefold()


def _normal_path(v1_path: str) -> str:
    return (unquote(v1_path).rstrip("/") or "/").casefold()
