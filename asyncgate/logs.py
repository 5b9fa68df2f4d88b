"""One structlog pipeline for both roles: JSON lines unless stdout is a terminal.

Library loggers (aiohttp, aiormq) go through the same pipeline, and every event
passes ``redact`` so credentials never reach a log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

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


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEYS.search(key):
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
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
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


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
