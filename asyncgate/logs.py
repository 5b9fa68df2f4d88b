"""One structlog pipeline for both roles: JSON lines unless stdout is a terminal.

Our own events take structlog's native path (no stdlib ``logging`` record per line:
on the request path that was a quarter of the gateway's CPU, see BENCHMARKS.md);
library loggers (aiohttp, aiormq) go through stdlib logging into the same processors
and stream.  Every event passes ``redact`` so credentials never reach a log line.
"""

from __future__ import annotations

import functools
import json as stdjson
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_SECRET_KEYS = re.compile(r"authorization|cookie|password|secret|token|oauth_signature", re.I)
_SECRET_IN_TEXT = re.compile(
    r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer|oauth|basic)?\s*[^\"',}\s][^\"',}]*"
    r"|(amqps?://[^:/@\s]+:)[^@\s]+(@)"
    r"|(oauth_signature=\")[^\"]*(\")"
)


def _redact_text(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return f"{m.group(1)}[redacted]"
        if m.group(3) is not None:
            return f"{m.group(3)}[redacted]{m.group(4)}"
        return f"{m.group(5)}[redacted]{m.group(6)}"

    return _SECRET_IN_TEXT.sub(sub, text)


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEYS.search(key) is not None


def _redact_value(key: str, value: Any) -> Any:
    if _secret_key(key):
        return "[redacted]"
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hide secret-named keys and credentials inside text."""
    for key in list(event):
        event[key] = _redact_value(key, event[key])
    return event


def configure_logging(
    level: str = "INFO", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up structlog and route stdlib logging (aiohttp, aiormq) through it."""
    stream = stream or sys.stdout
    use_json = (not stream.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=structlog.WriteLoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One canonical line per request is ours; aiohttp's access log would double it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _json_line(event: Any, **_: Any) -> str:
    try:
        return orjson.dumps(event, default=str).decode()
    except TypeError:  # what orjson refuses (integers past 64 bits, lone surrogates)
        return stdjson.dumps(event, default=str)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
