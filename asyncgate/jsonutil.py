"""JSON in one place, so the encoder can be swapped for speed without touching callers."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the replay and the status endpoints send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError on malformed input or invalid UTF-8."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(data)
