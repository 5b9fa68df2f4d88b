"""``python -m bench`` (``make bench``): run every section and write BENCHMARKS.md.

``--only SECTION`` (repeatable) runs a subset and prints its rows without touching
BENCHMARKS.md unless ``--output`` is given; ``--quick`` shortens every run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import drain, intake, memory, passthrough, seed
from bench.common import ROOT, Row
from bench.report import machine, render

Section = Callable[[Path, bool], Awaitable[list[Row]]]
SECTIONS: dict[str, Section] = {
    "passthrough": passthrough.run,
    "intake": intake.run,
    "drain": drain.run,
    "memory": memory.run,
    "seed": seed.run,
}


async def run(names: list[str], quick: bool, workdir: Path) -> tuple[list[Row], float]:
    started = time.monotonic()
    rows: list[Row] = []
    for name in names:
        t0 = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            section_dir = workdir / name
            section_dir.mkdir()
            got = await SECTIONS[name](section_dir, quick)
        except Exception as exc:
            traceback.print_exc()
            got = [Row(name=f"{name}: failed", load="", figure=f"{exc!r}", met=False)]
        for row in got:
            print(f"  {row.name}: {row.figure} | {row.ratio} | met={row.met}", file=sys.stderr)
        rows += got
        print(f"bench: {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", choices=list(SECTIONS), default=[])
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    parser.add_argument("--output", type=Path, default=None, help="default: BENCHMARKS.md")
    args = parser.parse_args()
    names = args.only or list(SECTIONS)
    output = args.output or (None if args.only else ROOT / "BENCHMARKS.md")
    with tempfile.TemporaryDirectory(prefix="asyncgate-bench-") as tmp:
        rows, took = asyncio.run(run(names, args.quick, Path(tmp)))
    text = render(rows, machine(), took, quick=args.quick)
    if output is not None:
        output.write_text(text)
        print(f"bench: wrote {output} in {took:.0f} s", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
