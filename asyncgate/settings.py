"""The typed settings tree, loaded and validated once from ``config/routes.yaml``.

This module is the only place that reads the environment (through ``${VAR}``
interpolation) or raw YAML.  Everything below the entry points receives a frozen
``Settings`` object.  Every problem in a file is collected with its key path and
offending value, so an operator fixes a config in one pass, not one error at a time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from asyncgate.crypto import CredentialCipher
from asyncgate.errors import ConfigError
from asyncgate.ordering import is_ordering_rule
from asyncgate.routes import RouteSpec

_SECRETISH = re.compile(r"secret|password|token", re.I)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Secret:
    """A credential from the environment or a file; never shown by ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class GatewaySettings:
    listen: HostPort = HostPort("127.0.0.1", 8080)
    # Metrics, health and readiness: never on the public port.
    admin_listen: HostPort = HostPort("127.0.0.1", 9180)
    # Peers whose X-Forwarded-*/Forwarded headers are believed (CIDRs).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Which Host the backend sees: the client's (Magento builds URLs from it) or its own.
    upstream_host: str = "client"
    # Pass-through request bodies above this many bytes get 413.
    max_body_bytes: int = 64 * 1024 * 1024
    # Seconds the gateway waits for in-flight requests on SIGTERM.
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class UpstreamSettings:
    url: str = "http://127.0.0.1:8081"
    max_connections: int = 100
    connect_timeout: float = 5.0
    # Longest silence between two reads from the upstream; there is no total timeout,
    # so a long download or upload is never cut.
    read_timeout: float = 60.0


@dataclass(frozen=True)
class BrokerSettings:
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = "asyncgate"
    # Seconds to wait for the broker's confirm before the gateway answers 503.
    confirm_timeout: float = 10.0
    # Ready messages a work queue may hold before publishes are refused (0 = no limit).
    max_queue_length: int = 0
    # Embedded (sqlite) transport: seconds a delivery stays leased to a consumer
    # before it is handed out again (RabbitMQ redelivers on connection loss instead).
    lease_seconds: float = 60.0


@dataclass(frozen=True)
class StoreSettings:
    url: str = "sqlite:////var/lib/asyncgate/asyncgate.db"
    # Bulks older than this many days are purged, as Magento's system/bulk/lifetime.
    bulk_lifetime_days: float = 60.0


@dataclass(frozen=True)
class IntakeSettings:
    max_body_bytes: int = 16 * 1024 * 1024
    max_bulk_items: int = 5000
    # Operations per second one caller may queue (0 = no limit), and the burst it may
    # send at once; past it the gateway answers 429 with Retry-After.
    rate_limit: float = 0.0
    rate_burst: float = 5000.0
    forward_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "Accept",
        "Accept-Language",
    )
    # /V1 paths never queued: "self" routes and token endpoints, as Magento.
    deny: tuple[str, ...] = (
        "/V1/carts/mine",
        "/V1/carts/mine/**",
        "/V1/customers/me",
        "/V1/customers/me/**",
        "/V1/integration/**",
    )


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 12
    base_delay: float = 1.0
    max_delay: float = 1800.0
    # Delay queues, in seconds; a backoff is rounded up to the next tier.
    delay_tiers: tuple[int, ...] = (1, 5, 15, 60, 300, 900, 1800)


@dataclass(frozen=True)
class ConsumerSettings:
    admin_listen: HostPort = HostPort("127.0.0.1", 9181)
    # Seconds between queue-depth probes for the metrics.
    depth_interval: float = 5.0
    # Replays in flight at once, across all queues: the shop's protection.
    concurrency: int = 16
    # Replays started per second (0 = no limit).
    rate_limit: float = 0.0
    request_timeout: float = 60.0
    # Seconds in-flight replays get to finish on SIGTERM before they are requeued.
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class SecuritySettings:
    # Fernet keys (``Fernet.generate_key()``): the current one seals queued credentials,
    # the previous one only opens messages sealed before a rotation.
    encryption_key: Secret | None = None
    previous_encryption_key: Secret | None = None

    def cipher_keys(self) -> list[str]:
        return [k.reveal() for k in (self.encryption_key, self.previous_encryption_key) if k]


@dataclass(frozen=True)
class IntegrationSettings:
    """A Magento integration (System > Integrations): its four OAuth 1.0a credentials."""

    name: str
    consumer_key: str
    consumer_secret: Secret
    access_token: str
    access_token_secret: Secret


@dataclass(frozen=True)
class RouteSettings:
    name: str
    match: str
    convert_sync: bool = False
    queue: str = "default"
    max_attempts: int | None = None
    max_delay: float | None = None
    # "oauth1" (verify on intake, sign anew on replay), "forward" (send credentials as
    # they came) or "guest" (no credentials needed). Default: oauth1 when integrations
    # are configured, else forward.
    auth: str | None = None
    # Which operations are applied one at a time, in acceptance order (asyncgate/ordering.py):
    # "auto" (PUT/PATCH/DELETE by resource path), "path", "none", or "body.<field>"
    # (e.g. "body.customer.email" for a POST that creates by email).
    ordering: str = "auto"


@dataclass(frozen=True)
class Settings:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    consumer: ConsumerSettings = field(default_factory=ConsumerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    integrations: tuple[IntegrationSettings, ...] = ()
    routes: tuple[RouteSettings, ...] = ()
    # Compiled from `routes` and `intake.deny` after validation; not a YAML key.
    compiled_routes: tuple[RouteSpec, ...] = field(default=(), compare=False)
    compiled_deny: tuple[RouteSpec, ...] = field(default=(), compare=False)

    @property
    def converted_routes(self) -> tuple[RouteSpec, ...]:
        """Sync routes the config turns into async intake."""
        return tuple(r for r in self.compiled_routes if r.policy and r.policy.convert_sync)

    @property
    def queues(self) -> tuple[str, ...]:
        """Every work queue name the routes use, "default" first."""
        names = ["default"]
        for route in self.routes:
            if route.queue not in names:
                names.append(route.queue)
        return tuple(names)


_DERIVED = {"compiled_routes", "compiled_deny"}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error."""
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    out = _VAR.sub(sub, text)
    if missing:
        raise ConfigError([f"environment variable {n} is not set" for n in missing])
    return out


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        whole = _VAR.fullmatch(node)
        value = interpolate(node, env)
        # "${PORT}" alone may stand for a number; let YAML type the substituted text.
        return yaml.safe_load(value) if whole and value != "" else value
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    return node


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read, interpolate and validate a config file; raise ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file {path}: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {exc}"]) from exc
    return settings_from_mapping(raw or {}, os.environ if env is None else env)


def settings_from_mapping(raw: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Validate an already-parsed mapping (tests use this directly)."""
    errors: list[str] = []
    tree = _interpolate_tree(raw, env or {})
    settings: Settings = _build(Settings, tree, "", errors)
    if not errors:
        settings = _compile(settings, errors)
    if errors:
        raise ConfigError(errors)
    return settings


def _build(cls: type[Any], raw: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"{path or '<root>'}: expected a mapping, got {raw!r}")
        return cls() if _all_defaulted(cls) else None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _DERIVED}
    for key in raw:
        if key not in fields:
            shown = "[hidden]" if _SECRETISH.search(str(key)) else repr(raw[key])
            errors.append(f"{_join(path, str(key))}: unknown key (value {shown})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], key_path, errors)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{key_path}: required key is missing")
    try:
        obj = cls(**values)
    except TypeError:
        return None
    for problem in _check(obj):
        errors.append(f"{_join(path, problem[0])}: {problem[1]} (value {problem[2]!r})")
    return obj


def _all_defaulted(cls: type[Any]) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = f"{path}: expected {_type_name(tp)}, got {value!r}"
    if set(args) == {ipaddress.IPv4Network, ipaddress.IPv6Network}:
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            errors.append(f"{path}: not a CIDR network, got {value!r}")
            return None
    if origin in (typing.Union, types.UnionType):
        # An optional value left empty by ``${VAR:-}`` is not set.
        if (value is None or value == "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, path, errors)
        for option in inner:
            trial: list[str] = []
            result = _coerce(option, value, path, trial)
            if not trial:
                return result
        errors.append(bad)
        return None
    if origin is tuple:
        if not isinstance(value, list):
            errors.append(bad)
            return ()
        return tuple(_coerce(args[0], v, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and tp is not HostPort:
        return _build(tp, value, path, errors)  # type: ignore[arg-type]
    if tp is HostPort:
        return _parse_host_port(value, path, errors)
    if tp is Secret:
        return _parse_secret(value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(bad)
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        errors.append(bad)
        return None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        errors.append(bad)
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errors.append(bad)
        return None
    raise TypeError(f"settings type {tp!r} is not supported")  # a programming error


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_host_port(value: Any, path: str, errors: list[str]) -> HostPort | None:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        # Port 0 asks the kernel for a free port (tests run many listeners at once).
        if sep and host and port.isdigit() and 0 <= int(port) < 65536:
            return HostPort(host.strip("[]"), int(port))
    errors.append(f"{path}: expected host:port, got {value!r}")
    return None


def _parse_secret(value: Any, path: str, errors: list[str]) -> Secret | None:
    """A secret is ``${VAR}`` text or ``{file: /path}``; never echo its value in an error."""
    if isinstance(value, str) and value:
        return Secret(value)
    if isinstance(value, dict) and set(value) == {"file"} and isinstance(value["file"], str):
        try:
            return Secret(Path(value["file"]).read_text(encoding="utf-8").strip())
        except OSError as exc:
            errors.append(f"{path}: cannot read secret file {value['file']!r}: {exc.strerror}")
            return None
    errors.append(f"{path}: expected a non-empty secret or {{file: PATH}}")
    return None


def _check(obj: Any) -> list[tuple[str, str, Any]]:
    """Value rules beyond the type: (key, what is wrong, value) for each violation."""
    problems: list[tuple[str, str, Any]] = []

    def positive(name: str, allow_zero: bool = False) -> None:
        v = getattr(obj, name)
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            problems.append((name, "must be positive" if not allow_zero else "must be >= 0", v))

    def url(name: str, schemes: tuple[str, ...]) -> None:
        v = getattr(obj, name)
        if v is None:
            return
        parts = urlsplit(v)
        if parts.scheme not in schemes or (not parts.netloc and parts.scheme not in ("sqlite",)):
            problems.append((name, f"must be a URL with scheme {' or '.join(schemes)}", v))

    if isinstance(obj, GatewaySettings):
        if obj.upstream_host not in ("client", "upstream", None):
            problems.append(("upstream_host", "must be 'client' or 'upstream'", obj.upstream_host))
        positive("max_body_bytes")
        positive("shutdown_grace", allow_zero=True)
    elif isinstance(obj, UpstreamSettings):
        url("url", ("http", "https"))
        positive("max_connections")
        positive("connect_timeout")
        positive("read_timeout")
    elif isinstance(obj, BrokerSettings):
        url("url", ("amqp", "amqps", "sqlite"))
        positive("confirm_timeout")
        positive("max_queue_length", allow_zero=True)
        positive("lease_seconds")
    elif isinstance(obj, StoreSettings):
        url("url", ("sqlite", "postgresql", "postgres"))
        positive("bulk_lifetime_days")
    elif isinstance(obj, IntakeSettings):
        positive("max_body_bytes")
        positive("max_bulk_items")
        positive("rate_limit", allow_zero=True)
        positive("rate_burst")
    elif isinstance(obj, RetrySettings):
        positive("max_attempts")
        positive("base_delay")
        positive("max_delay")
        if not obj.delay_tiers or any(t is None or t <= 0 for t in obj.delay_tiers):
            problems.append(
                ("delay_tiers", "must be a non-empty list of positive seconds", obj.delay_tiers)
            )
        elif list(obj.delay_tiers) != sorted(set(obj.delay_tiers)):
            problems.append(("delay_tiers", "must be strictly increasing", obj.delay_tiers))
    elif isinstance(obj, ConsumerSettings):
        positive("depth_interval")
        positive("concurrency")
        positive("rate_limit", allow_zero=True)
        positive("request_timeout")
        positive("shutdown_grace", allow_zero=True)
    elif isinstance(obj, RouteSettings):
        positive("max_attempts")
        positive("max_delay")
        if obj.name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", obj.name):
            problems.append(
                ("name", "must be lower-case letters, digits, '-', '_' or '.'", obj.name)
            )
        if obj.queue is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", obj.queue):
            problems.append(("queue", "must be lower-case letters, digits, '-' or '_'", obj.queue))
        if obj.auth not in (None, "oauth1", "forward", "guest"):
            problems.append(("auth", "must be 'oauth1', 'forward' or 'guest'", obj.auth))
        if not is_ordering_rule(obj.ordering):
            problems.append(
                ("ordering", "must be 'auto', 'path', 'none' or 'body.<field>'", obj.ordering)
            )
    return problems


def _compile(settings: Settings, errors: list[str]) -> Settings:
    routes: list[RouteSpec] = []
    seen: set[str] = set()
    for i, route in enumerate(settings.routes):
        if route.name in seen:
            errors.append(f"routes[{i}].name: duplicate route name (value {route.name!r})")
        seen.add(route.name)
        try:
            routes.append(RouteSpec.parse(route.match, route))
        except ValueError as exc:
            errors.append(f"routes[{i}].match: {exc} (value {route.match!r})")
    if settings.security.cipher_keys():
        try:
            CredentialCipher(settings.security.cipher_keys())
        except ValueError:
            errors.append(
                "security: an encryption key is not a Fernet key (32 url-safe base64 bytes)"
            )
        if settings.security.encryption_key is None:
            errors.append("security.previous_encryption_key: set only with encryption_key")
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for i, integration in enumerate(settings.integrations):
        if integration.name in seen_names:
            errors.append(f"integrations[{i}].name: duplicate name (value {integration.name!r})")
        seen_names.add(integration.name)
        if integration.consumer_key in seen_keys:
            errors.append(f"integrations[{i}].consumer_key: used twice")
        seen_keys.add(integration.consumer_key)
    deny: list[RouteSpec] = []
    for i, pattern in enumerate(settings.intake.deny):
        try:
            deny.append(RouteSpec.parse(pattern, None))
        except ValueError as exc:
            errors.append(f"intake.deny[{i}]: {exc} (value {pattern!r})")
    return dataclasses.replace(settings, compiled_routes=tuple(routes), compiled_deny=tuple(deny))
