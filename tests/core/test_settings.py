"""Config: interpolation, every problem reported with its key path, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asyncgate.errors import ConfigError
from asyncgate.settings import HostPort, load_settings, settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_with_defaults() -> None:
    settings = load_settings(ROOT / "config/routes.yaml", env={})
    assert settings.gateway.listen == HostPort("127.0.0.1", 8080)
    assert settings.upstream.url == "http://127.0.0.1:8081"
    assert settings.broker.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.store.url.startswith("sqlite:///")


def test_shipped_config_honours_environment() -> None:
    env = {
        "ASYNCGATE_LISTEN": "0.0.0.0:9000",
        "ASYNCGATE_UPSTREAM": "https://shop.example",
        "ASYNCGATE_BROKER": "amqp://u:p@broker:5672/vh",
        "ASYNCGATE_STORE": "postgresql://db/asyncgate",
    }
    settings = load_settings(ROOT / "config/routes.yaml", env=env)
    assert settings.gateway.listen == HostPort("0.0.0.0", 9000)
    assert settings.upstream.url == "https://shop.example"
    assert settings.broker.url == "amqp://u:p@broker:5672/vh"
    assert settings.store.url == "postgresql://db/asyncgate"


def test_interpolation_types_a_whole_value_and_fills_defaults() -> None:
    raw = {"consumer": {"concurrency": "${CONC}", "rate_limit": "${RATE:-2.5}"}}
    settings = settings_from_mapping(raw, {"CONC": "7"})
    assert settings.consumer.concurrency == 7
    assert settings.consumer.rate_limit == 2.5


def test_every_problem_is_reported_with_key_path_and_value() -> None:
    raw = {
        "gateway": {"listen": "nowhere", "trusted_proxies": ["not-a-cidr"], "colour": "blue"},
        "upstream": {"url": "ftp://x", "max_connections": "lots"},
        "consumer": {"concurrency": 0},
        "routes": [{"name": "a", "match": "GET /V1/x"}, {"name": "a", "match": "/nope"}],
        "extra": 1,
    }
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    text = "\n".join(info.value.problems)
    for expected in (
        "gateway.listen: expected host:port, got 'nowhere'",
        "gateway.trusted_proxies[0]: not a CIDR network, got 'not-a-cidr'",
        "gateway.colour: unknown key (value 'blue')",
        "upstream.url: must be a URL with scheme http or https (value 'ftp://x')",
        "upstream.max_connections: expected int, got 'lots'",
        "consumer.concurrency: must be positive (value 0)",
        "extra: unknown key (value 1)",
    ):
        assert expected in text, expected
    assert len(info.value.problems) >= 7


def test_route_patterns_are_checked_after_types() -> None:
    raw = {"routes": [{"name": "a", "match": "GET /V1/x"}, {"name": "a", "match": "/nope"}]}
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    text = "\n".join(info.value.problems)
    assert "routes[0].match: methods must be among DELETE, PATCH, POST, PUT" in text
    assert "routes[1].name: duplicate route name (value 'a')" in text
    assert "routes[1].match: path must start with /V1/" in text


def test_missing_variable_without_default_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"upstream": {"url": "${NOPE}"}}, {})
    assert info.value.problems == ["environment variable NOPE is not set"]


@pytest.mark.parametrize("module", ["gateway", "consumer"])
def test_check_config_exit_status(module: str, tmp_path: Path) -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            "--config",
            str(ROOT / "config/routes.yaml"),
            "--check-config",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  listen: 99999\n  bogus: true\n")
    result = subprocess.run(
        [sys.executable, "-m", module, "--config", str(bad), "--check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "gateway.listen" in result.stderr and "gateway.bogus: unknown key" in result.stderr


def test_encryption_keys_are_optional_validated_and_hidden() -> None:
    settings = load_settings(ROOT / "config/routes.yaml", env={})
    assert settings.security.cipher_keys() == []
    key = "k" * 43 + "="
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"security": {"encryption_key": "not-a-fernet-key"}}, {})
    assert "not a Fernet key" in "\n".join(info.value.problems)
    assert "not-a-fernet-key" not in "\n".join(info.value.problems)
    settings = settings_from_mapping({"security": {"encryption_key": "${K}"}}, {"K": key})
    assert settings.security.cipher_keys() == [key]
    assert key not in repr(settings)
