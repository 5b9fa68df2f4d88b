"""The deployment files: systemd units, Prometheus rules, Grafana dashboard, Dockerfile.

Each file is checked by the tool that consumes it where one runs here (systemd-analyze,
promtool), and every metric name they use is checked against asyncgate/metrics.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from asyncgate import metrics

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "asyncgate.json"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.prefix) / "bin"
INSTALLED_BIN = "/opt/asyncgate/.venv/bin/"

UNITS = [
    "asyncgate-gateway.service",
    "asyncgate-consumer.service",
    "asyncgate-consumer-restart.service",
    "asyncgate-consumer-restart.timer",
]
PROCESSES = ["asyncgate-gateway", "asyncgate-consumer"]
METRIC = re.compile(r"\basyncgate_[a-z0-9_]+")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed (Debian package prometheus). `make test` runs "
            "scripts/ensure-services.sh, which installs it when called with 'promtool'; "
            "run `bash scripts/ensure-services.sh promtool` once."
        )
    return path


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed: install Debian's systemd package.")
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def run_with_env(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def unit_settings(text: str) -> list[tuple[str, str]]:
    """(key, value) for each setting of a unit file, continuation lines joined."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def exported_names() -> set[str]:
    """Every sample name asyncgate/metrics.py exports, with the suffixes of its type."""
    suffixes = {Counter: ("_total",), Gauge: ("",), Histogram: ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        (family,) = collector.describe()
        names.update(family.name + suffix for suffix in suffixes[type(collector)])
    return names


# --- systemd ---------------------------------------------------------------------------


def test_systemd_analyze_verify_passes_on_all_units(tmp_path: Path) -> None:
    """The units as shipped, with only the venv prefix pointed at this checkout's venv.

    systemd-analyze verify refuses an ExecStart whose binary does not exist, and
    /opt/asyncgate is not installed here; the same entry points exist in this checkout's
    venv (pip installs both console scripts), so the copies verify the real commands.
    """
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED_BIN, f"{VENV_BIN}/"))
    for process in PROCESSES:
        assert (VENV_BIN / process).is_file(), f"{process} is not installed in {VENV_BIN}"
    result = run(
        systemd_analyze(), "verify", "--man=no", "--recursive-errors=no", *UNITS, cwd=tmp_path
    )
    output = result.stdout + result.stderr
    # verify exits 0 on parse warnings (unknown key, bad value: "..., ignoring"), so any
    # line about these units fails too; lines about the host's own units are not ours.
    ours = [line for line in output.splitlines() if "asyncgate" in line]
    assert result.returncode == 0 and not ours, output


@pytest.mark.parametrize("process", PROCESSES)
def test_service_unit_runs_its_process_hardened(process: str) -> None:
    settings = unit_settings((SYSTEMD / f"{process}.service").read_text())
    config = dict(settings)
    command = f"{INSTALLED_BIN}{process} --config /etc/asyncgate/routes.yaml"
    assert config["ExecStart"] == command
    assert config["ExecStartPre"] == f"{command} --check-config"
    expected = {
        "Restart": "always",
        "EnvironmentFile": "/etc/asyncgate/asyncgate.env",
        "DynamicUser": "yes",
        "User": "asyncgate",
        "StateDirectory": "asyncgate",
        "TimeoutStopSec": "45",
        "KillSignal": "SIGTERM",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    assert {key: config.get(key) for key in expected} == expected


@pytest.mark.parametrize("process", PROCESSES)
def test_exec_start_pre_accepts_the_shipped_config(process: str) -> None:
    """The unit's --check-config command, run on config/routes.yaml with the example env."""
    config = dict(unit_settings((SYSTEMD / f"{process}.service").read_text()))
    argv = config["ExecStartPre"].replace(INSTALLED_BIN, f"{VENV_BIN}/").split()
    argv[argv.index("--config") + 1] = str(ROOT / "config" / "routes.yaml")
    env = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "asyncgate.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    result = run_with_env(argv, env)
    assert result.returncode == 0, result.stderr


def test_env_example_sets_every_documented_variable() -> None:
    lines = (SYSTEMD / "asyncgate.env.example").read_text().splitlines()
    names = {m.group(1) for line in lines if (m := re.match(r"^#?(ASYNCGATE_\w+)=", line))}
    shipped = (SYSTEMD.parents[1] / "config" / "routes.yaml").read_text()
    # Every variable the shipped config honours is in the example, set or commented out.
    assert names == set(re.findall(r"\$\{(ASYNCGATE_\w+)", shipped))
    assert {"ASYNCGATE_LISTEN", "ASYNCGATE_UPSTREAM", "ASYNCGATE_BROKER"} <= names


def test_nightly_restart_timer_try_restarts_the_consumer() -> None:
    timer = dict(unit_settings((SYSTEMD / "asyncgate-consumer-restart.timer").read_text()))
    assert timer["OnCalendar"] == "*-*-* 00:01:00"
    assert timer["Persistent"] == "true"
    assert (SYSTEMD / timer["Unit"]).is_file()
    service = dict(unit_settings((SYSTEMD / timer["Unit"]).read_text()))
    assert service["Type"] == "oneshot"
    assert service["ExecStart"] == "/bin/systemctl try-restart asyncgate-consumer.service"


# --- Prometheus ------------------------------------------------------------------------


def test_promtool_check_rules_passes() -> None:
    result = run(promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_passes() -> None:
    result = run(promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_jobs_are_the_ones_the_alerts_name() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "asyncgate-gateway": ["127.0.0.1:9180"],
        "asyncgate-consumer": ["127.0.0.1:9181"],
    }
    alerts = (PROMETHEUS / "alerts.yml").read_text()
    assert set(re.findall(r'job="([^"]+)"', alerts)) == set(targets)


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'asyncgate_queue_messages_ready{{queue="asyncgate.work.default",kind="work"}}'
        values: '0+10x60'
      - series: 'asyncgate_queue_messages_ready{{queue="asyncgate.work.calm",kind="work"}}'
        values: '5x60'
      - series: 'asyncgate_queue_messages_ready{{queue="asyncgate.work.bulk",kind="work"}}'
        values: '20000x60'
      - series: 'asyncgate_queue_messages_ready{{queue="asyncgate.dead",kind="dead"}}'
        values: '0x10 3x50'
      - series: 'up{{job="asyncgate-consumer",instance="c1"}}'
        values: '1x10 0x50'
      - series: 'up{{job="asyncgate-gateway",instance="g1"}}'
        values: '1x60'
      - series: 'asyncgate_broker_connected{{role="gateway",link="publish"}}'
        values: '1x10 0x50'
      - series: 'asyncgate_consumer_last_success_timestamp_seconds'
        values: '0 60 120 180 240 300 300x54'
      - series: 'asyncgate_ordering_oldest_waiting_age_seconds'
        values: '0+240x60'
    alert_rule_test:
      - eval_time: 50m
        alertname: AsyncgateWorkQueueGrowing
        exp_alerts:
          - exp_labels: {{severity: warning, queue: asyncgate.work.default}}
      - eval_time: 20m
        alertname: AsyncgateWorkQueueGrowing
        exp_alerts: []
      - eval_time: 20m
        alertname: AsyncgateWorkQueueBacklog
        exp_alerts:
          - exp_labels: {{severity: warning, queue: asyncgate.work.bulk}}
      - eval_time: 5m
        alertname: AsyncgateWorkQueueBacklog
        exp_alerts: []
      - eval_time: 20m
        alertname: AsyncgateDeadLetters
        exp_alerts:
          - exp_labels: {{severity: warning, queue: asyncgate.dead}}
      - eval_time: 9m
        alertname: AsyncgateDeadLetters
        exp_alerts: []
      - eval_time: 15m
        alertname: AsyncgateConsumerDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: asyncgate-consumer, instance: c1}}
      - eval_time: 15m
        alertname: AsyncgateGatewayDown
        exp_alerts: []
      - eval_time: 15m
        alertname: AsyncgateBrokerDisconnected
        exp_alerts:
          - exp_labels: {{severity: critical, role: gateway, link: publish}}
      - eval_time: 15m
        alertname: AsyncgateReplayStalled
        exp_alerts: []
      - eval_time: 30m
        alertname: AsyncgateReplayStalled
        exp_alerts:
          - exp_labels: {{severity: critical}}
      - eval_time: 30m
        alertname: AsyncgateOrderingStalled
        exp_alerts: []
      - eval_time: 40m
        alertname: AsyncgateOrderingStalled
        exp_alerts:
          - exp_labels: {{severity: warning}}
  - interval: 1m
    input_series: []
    alert_rule_test:
      - eval_time: 5m
        alertname: AsyncgateConsumerDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: asyncgate-consumer}}
"""


def test_alerts_fire_on_their_scenarios(tmp_path: Path) -> None:
    """promtool's rule unit tests: each alert fires when it should, and not before."""
    # promtool compares annotations too; the scenarios are about when and with which
    # labels an alert fires, so they run on a copy without the annotations.
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=json.dumps(str(tmp_path / "alerts.yml"))))
    result = run(promtool(), "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


# --- metric names ----------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_dashboard_parses_and_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    used |= set(METRIC.findall(json.dumps(dashboard["templating"])))
    assert used, "the dashboard names no asyncgate metric"
    assert used <= exported_names(), f"not in asyncgate/metrics.py: {used - exported_names()}"


def test_dashboard_has_the_panels_operators_need() -> None:
    used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    assert {
        "asyncgate_gateway_requests_total",
        "asyncgate_gateway_operations_total",
        "asyncgate_gateway_broker_confirm_duration_seconds_bucket",
        "asyncgate_consumer_operations_total",
        "asyncgate_consumer_replay_duration_seconds_bucket",
        "asyncgate_consumer_upstream_concurrency",
        "asyncgate_consumer_upstream_concurrency_limit",
        "asyncgate_queue_messages_ready",
        "asyncgate_broker_connected",
    } <= used


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query, as a recording rule, with Grafana's variables set."""
    grafana_vars = {"$__rate_interval": "5m", "$route": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool(), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_name_only_exported_metrics() -> None:
    used = set(METRIC.findall((PROMETHEUS / "alerts.yml").read_text()))
    assert used, "the alerts name no asyncgate metric"
    assert used <= exported_names(), f"not in asyncgate/metrics.py: {used - exported_names()}"


# --- Docker ----------------------------------------------------------------------------


def test_dockerfile_names_both_entry_points_and_the_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    instructions = re.sub(r"\s*\\\n\s*", " ", text)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", instructions, re.M)
    cmd = re.findall(r"^CMD (\[.*\])$", instructions, re.M)
    assert cmd and json.loads(cmd[-1])[0] == "asyncgate-gateway", "the gateway is not the default"
    assert "asyncgate-consumer" in text
    healthcheck = re.search(r"^HEALTHCHECK .*CMD (.*)$", instructions, re.M)
    assert healthcheck, "no HEALTHCHECK"
    assert "urllib" in healthcheck.group(1) and "ASYNCGATE_HEALTH_URL" in healthcheck.group(1)
    default_url = "ASYNCGATE_HEALTH_URL=http://127.0.0.1:9180/healthz"
    assert re.search(rf"^ENV .*{re.escape(default_url)}", instructions, re.M)
    assert re.search(r"^EXPOSE 8080 9180 9181$", instructions, re.M)
    user = re.findall(r"^USER (\S+)$", instructions, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the image must run as non-root"
    # Both entry points exist as console scripts in the installed package.
    for process in PROCESSES:
        assert (VENV_BIN / process).is_file()


def test_healthcheck_command_succeeds_on_200_and_fails_otherwise(tmp_path: Path) -> None:
    """Run the HEALTHCHECK's python command against a tiny server: 0 on 200, else non-zero."""
    instructions = re.sub(r"\s*\\\n\s*", " ", DOCKERFILE.read_text())
    match = re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", instructions, re.M)
    assert match
    argv = json.loads(match.group(1))
    assert argv[0] == "/opt/asyncgate/.venv/bin/python"
    argv[0] = sys.executable
    with subprocess.Popen(
        [sys.executable, "-c", HEALTH_SERVER], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None
            base = f"http://127.0.0.1:{server.stdout.readline().strip()}"
            ok = run_with_env(argv, {"ASYNCGATE_HEALTH_URL": f"{base}/healthz"})
            bad = run_with_env(argv, {"ASYNCGATE_HEALTH_URL": f"{base}/broken"})
        finally:
            server.terminate()
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode != 0


HEALTH_SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""
