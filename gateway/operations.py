"""Turn an async request body into operations: one per request, or one per bulk item.

Pure functions, no I/O: the parsing rules of Magento's async and bulk APIs live here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from asyncgate.jsonutil import dumps, loads

_BY_PARAM = re.compile(r"^by([A-Z][A-Za-z0-9_]*)$")


class BadRequest(ValueError):
    """The request as a whole is refused with 400; nothing is queued."""


@dataclass(frozen=True)
class Item:
    """One operation to replay, or an item rejected at intake (``error`` set)."""

    index: int
    v1_path: str  # "/V1/..." after by<Param> substitution, raw
    body: str  # as it will be replayed
    error: str | None = None

    @property
    def data_hash(self) -> str:
        return hashlib.sha256(self.body.encode()).hexdigest()


def decode_body(raw: bytes) -> tuple[str, Any]:
    """The body as text and as parsed JSON (None for an empty body)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The request body is not valid UTF-8.") from None
    if not text.strip():
        return text, None
    try:
        return text, loads(text)
    except ValueError as exc:
        raise BadRequest(f"Decoding error: the request body is not valid JSON ({exc}).") from None
    except RecursionError:
        raise BadRequest("Decoding error: the request body is nested too deeply.") from None


def single_item(v1_path: str, text: str) -> list[Item]:
    """An async (non-bulk) request is one operation, replayed with its body unchanged."""
    return [Item(0, v1_path, text)]


def bulk_items(v1_path: str, parsed: Any, max_items: int) -> list[Item]:
    """One operation per array element, with ``by<Param>`` segments filled from the item."""
    if not isinstance(parsed, list):
        raise BadRequest("The body of a bulk request must be a JSON array of items.")
    if not parsed:
        raise BadRequest("The bulk request contains no items.")
    if len(parsed) > max_items:
        raise BadRequest(
            f"The bulk request has {len(parsed)} items; at most {max_items} are accepted."
        )
    segments = v1_path.split("/")
    params = {
        i: _param_name(m.group(1)) for i, s in enumerate(segments) if (m := _BY_PARAM.match(s))
    }
    return [_bulk_item(i, item, segments, params) for i, item in enumerate(parsed)]


def _param_name(suffix: str) -> str:
    return suffix[0].lower() + suffix[1:]


def _bulk_item(index: int, item: Any, segments: list[str], params: dict[int, str]) -> Item:
    if not params:
        return Item(index, "/".join(segments), dumps(item).decode())
    if not isinstance(item, dict):
        return Item(index, "", dumps(item).decode(), "The item must be a JSON object.")
    body = dict(item)
    filled = list(segments)
    for position, name in params.items():
        value, where = _find_param(item, name)
        if value is None:
            return Item(
                index,
                "",
                dumps(item).decode(),
                f'Parameter "{name}" is missing or not a scalar value.',
            )
        if where == "top":
            body.pop(name, None)
        filled[position] = quote(str(value), safe="")
    return Item(index, "/".join(filled), dumps(body).decode())


def _find_param(item: dict[str, Any], name: str) -> tuple[str | int | float | None, str]:
    """Where clients put a by<Param> value: a top-level field, or inside the one entity object."""
    if name in item:
        return (_scalar(item[name]), "top")
    entities = [v for v in item.values() if isinstance(v, dict)]
    if len(entities) == 1 and name in entities[0]:
        return (_scalar(entities[0][name]), "entity")
    return (None, "")


def _scalar(value: Any) -> str | int | float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, str) and not value:
        return None
    return value
