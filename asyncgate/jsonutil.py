"""JSON in one place, so the encoder can be swapped for speed without touching callers.

orjson does the work (several times faster than ``json`` on the intake and replay
paths).  The standard library takes over wherever orjson would accept less or
read differently, so what is accepted and what is replayed stay the same:
integers of 19 digits or more (orjson turns those past 64 bits into floats),
lone surrogates, NaN and out-of-range numbers.  One difference remains: a NaN or
infinity read from a body is written back as ``null`` (``json`` wrote ``NaN``, which
is not JSON and which Magento refuses anyway).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS
# A run of digits this long may be an integer past 64 bits: exact only with ``json``.
_LONG_DIGITS = re.compile(rb"\d{19}")
_LONG_DIGITS_TEXT = re.compile(r"\d{19}")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the replay and the status endpoints send it."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # integers past 64 bits, lone surrogates, non-JSON types
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError on malformed input or invalid UTF-8."""
    digits = (
        _LONG_DIGITS.search(data) if isinstance(data, bytes) else _LONG_DIGITS_TEXT.search(data)
    )
    if digits is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # malformed, or only json's: let json decide and word the error
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(data)
