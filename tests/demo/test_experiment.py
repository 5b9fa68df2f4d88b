"""`make demo` in small: every customer created exactly once on both paths, no failures."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_demo_experiment_checks_its_own_table() -> None:
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "demo.experiment", "--n", "60", "--service-time", "0.005"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {
        m.group(1): m.group(2).split("|")
        for m in re.finditer(r"^\| (sync|async) *\|(.*)\|$", run.stdout, re.M)
    }
    assert set(rows) == {"sync", "async"}
    for cells in rows.values():
        created, failures, duplicates = (int(c.strip()) for c in cells[-3:])
        assert (created, failures, duplicates) == (60, 0, 0)
    assert "faster" in run.stdout
