"""The seed experiment, exactly as ``make demo`` runs it (N = 1,000)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bench.common import PY, ROOT, Row

N = 1000
_ROW = re.compile(
    r"^\|\s*(sync|async)\s*\|\s*([\d.]+) s\s*\|\s*([\d.]+) ms\s*\|\s*([\d.]+) ms\s*\|"
    r"\s*([\d.]+) s\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|",
    re.M,
)


async def run(workdir: Path, quick: bool) -> list[Row]:
    n = 200 if quick else N
    argv = [PY, "-m", "demo.experiment", "--n", str(n)]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    text = out.decode()
    (workdir / "experiment.txt").write_text(text)
    found = {m.group(1): m.groups()[1:] for m in _ROW.finditer(text)}
    if set(found) != {"sync", "async"}:
        raise RuntimeError(f"demo.experiment exited {proc.returncode}:\n{text}")
    sync_wall, asy_wall = float(found["sync"][0]), float(found["async"][0])
    applied = float(found["async"][3])
    created, failures, dups = (int(x) for x in found["async"][4:7])
    ratio = sync_wall / asy_wall
    exactly_once = created == n and failures == 0 and dups == 0
    return [
        Row(
            name=f"Seed experiment, N = {n:,}",
            load="demo.experiment's asyncio client (32 clients), as `make demo`",
            figure=(
                f"sync client {sync_wall:.2f} s, async client {asy_wall:.2f} s"
                f" (p50 {found['async'][1]} ms); all applied {applied:.1f} s after the first"
                f" async request (sync: {found['sync'][3]} s); created {created},"
                f" failures {failures}, duplicates {dups}"
            ),
            ratio=f"async/sync client wall: {ratio:.0f}x faster",
            target="≥ 20x faster, every customer applied exactly once",
            met=ratio >= 20 and exactly_once,
            command=" ".join(["python", *argv[1:]]) + "  (= make demo)",
        )
    ]
