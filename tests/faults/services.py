"""Private RabbitMQ and PostgreSQL instances the fault suite may stop and restart.

The shared broker (5672) and database (5432) serve other engineers' tests at the same
time: restart scenarios never touch them.  Each instance lives in a temporary
directory on free ports and is always stopped (and its directory removed) afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
RABBIT_HOME = "/var/lib/rabbitmq"  # its .erlang.cookie lets rabbitmqctl talk to our node
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class PrivateRabbit:
    """A RabbitMQ node of our own (``agfaults-<id>@localhost``), run as the rabbitmq user."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agfaults-rmq-"))
        self.node = f"agfaults-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self._proc: subprocess.Popen[bytes] | None = None

    def _as_rabbit(self, *argv: str, **env: str) -> list[str]:
        return ["runuser", "-u", "rabbitmq", "--", "env", f"HOME={RABBIT_HOME}"] + [
            f"{k}={v}" for k, v in env.items()
        ] + list(argv)  # fmt: skip

    def ctl(self, *args: str, timeout: float = 60) -> None:
        done = _run(
            self._as_rabbit(str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, "-q", *args), timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        (self.dir / "enabled_plugins").write_text("[].\n")
        # guest may connect from 127.0.0.1 only by default, which is where we are.
        (self.dir / "rabbitmq.conf").write_text("log.console = false\n")
        shutil.chown(self.dir, "rabbitmq")
        for child in self.dir.iterdir():
            shutil.chown(child, "rabbitmq")
        env = {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        with (self.dir / "server.out").open("wb") as out:
            self._proc = subprocess.Popen(
                self._as_rabbit(str(RABBIT_BIN / "rabbitmq-server"), **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        self.ctl("wait", "--timeout", "90", str(self.dir / "pid"), timeout=100)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60", timeout=70)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=60)
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(30)
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, 9)  # our own session only
        # beam may outlive the wrapper briefly; give it a moment before removing its files.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _node_alive(self.node):
            time.sleep(0.3)
        shutil.rmtree(self.dir, ignore_errors=True)


def _node_alive(node: str) -> bool:
    done = _run(["pgrep", "-f", node], 10)
    return done.returncode == 0 and bool(done.stdout.strip())


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own (initdb in a temporary directory, trust auth)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agfaults-pg-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *argv: str, timeout: float = 120) -> None:
        done = _run(["runuser", "-u", "postgres", "--", *argv], timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{argv}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        shutil.chown(self.dir, "postgres")
        data = self.dir / "data"
        self._pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        self.restart_stopped()

    def restart_stopped(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg(
            str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
            "-o", opts, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pg(
                str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w",
                "stop",
            )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_rabbit() -> Iterator[PrivateRabbit]:
    node = PrivateRabbit()
    try:
        node.start()
        yield node
    finally:
        node.close()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
