"""Where a request goes: pass-through, async intake, or a refusal.

Patterns from the config are compiled here once, at load time; a request only
runs a few precompiled regular expressions.  Paths are matched in their raw,
percent-encoded form, because that is the form replayed upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncgate.settings import RouteSettings

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# /rest[/<store>][/async[/bulk]]/V1/<path>; a store code is never "async" or "V1".
_REST = re.compile(
    r"^/rest(?:/(?P<store>(?!async/|V1/|V1$)[^/]+))?/(?P<kind>async/bulk/|async/)?(?P<v1>V1(?:/.*)?)$"
)
_BULK_STATUS = re.compile(
    r"^/V1/bulk/(?P<uuid>[0-9a-fA-F-]{36})/(?P<what>status|detailed-status|operation-status/(?P<status>[0-9]+))$"
)


@dataclass(frozen=True)
class RouteSpec:
    """A compiled ``[METHODS] /V1/path`` pattern and the route policy it selects."""

    methods: frozenset[str]
    regex: re.Pattern[str]
    policy: RouteSettings | None

    @classmethod
    def parse(cls, text: str, policy: RouteSettings | None) -> RouteSpec:
        """Compile e.g. ``POST /rest/{store}/V1/customers`` or ``/V1/integration/**``.

        ``*`` and ``{name}`` match one path segment, a final ``**`` matches the rest.
        Without methods the pattern applies to every write method.
        """
        parts = text.split()
        if len(parts) == 2:
            methods = frozenset(m.upper() for m in parts[0].split(","))
            if not methods <= WRITE_METHODS:
                raise ValueError(f"methods must be among {', '.join(sorted(WRITE_METHODS))}")
            path = parts[1]
        elif len(parts) == 1:
            methods, path = WRITE_METHODS, parts[0]
        else:
            raise ValueError("expected '[METHOD[,METHOD]] /V1/path'")
        if path.startswith("/rest/{store}/"):
            path = path[len("/rest/{store}") :]
        if not path.startswith("/V1/"):
            raise ValueError("path must start with /V1/ or /rest/{store}/V1/")
        segments = path.strip("/").split("/")
        regex = ""
        for i, seg in enumerate(segments):
            if seg == "**":
                if i != len(segments) - 1:
                    raise ValueError("'**' may only end a pattern")
                regex += "(?:/.*)?"
            elif seg == "*" or re.fullmatch(r"\{[A-Za-z_][A-Za-z0-9_]*\}", seg):
                regex += "/[^/]+"
            elif "*" in seg or "{" in seg or "}" in seg:
                raise ValueError(f"segment {seg!r} mixes a wildcard with text")
            else:
                regex += "/" + re.escape(seg)
        return cls(methods, re.compile(f"^{regex}$"), policy)

    def matches(self, method: str, v1_path: str) -> bool:
        return method in self.methods and self.regex.match(v1_path) is not None


@dataclass(frozen=True)
class RestPath:
    """A ``/rest/...`` path taken apart."""

    store: str | None
    is_async: bool
    is_bulk: bool
    v1_path: str  # "/V1/...", raw

    def replay_path(self, v1_path: str | None = None) -> str:
        """The synchronous URL path: ``/rest/<store>/V1/...`` with the store unchanged."""
        prefix = f"/rest/{self.store}" if self.store is not None else "/rest"
        return prefix + (v1_path if v1_path is not None else self.v1_path)


def parse_rest_path(raw_path: str) -> RestPath | None:
    m = _REST.match(raw_path)
    if m is None:
        return None
    kind = m.group("kind") or ""
    return RestPath(
        store=m.group("store"),
        is_async=bool(kind),
        is_bulk=kind == "async/bulk/",
        v1_path="/" + m.group("v1"),
    )


@dataclass(frozen=True)
class BulkStatusQuery:
    uuid: str
    what: str  # "status", "detailed-status" or "operation-status"
    status: int | None


def parse_bulk_status(v1_path: str) -> BulkStatusQuery | None:
    m = _BULK_STATUS.match(v1_path)
    if m is None:
        return None
    what = m.group("what")
    status = m.group("status")
    return BulkStatusQuery(
        uuid=m.group("uuid").lower(),
        what="operation-status" if status is not None else what,
        status=int(status) if status is not None else None,
    )


def find_route(routes: tuple[RouteSpec, ...], method: str, v1_path: str) -> RouteSpec | None:
    for route in routes:
        if route.matches(method, v1_path):
            return route
    return None
