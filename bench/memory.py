"""Memory: gateway and consumer RSS after 10k and after 100k operations.

Both run as they would in production (RabbitMQ, SQLite store) against the fast
upstream; operations go in as bulks of 1,000 items so that 100k fit the time
budget.  RSS is read once each batch has been replayed in full.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.common import (
    Procs,
    Row,
    delete_topology,
    feed,
    make_stack,
    rss_bytes,
    start_upstream,
    writes_at,
)
from demo.experiment import wait_until

BULK = 1000


async def run(workdir: Path, quick: bool) -> list[Row]:
    first, second = (2_000, 10_000) if quick else (10_000, 100_000)
    procs = Procs(workdir)
    stack = None
    rss: dict[str, list[int]] = {"gateway": [], "consumer": []}
    try:
        upstream = await start_upstream(procs)
        stack = make_stack(procs, "memory", upstream)
        await stack.start_gateway()
        await stack.start_consumer()
        done = 0
        for upto in (first, second):
            await feed(stack.gateway_url, done, upto - done, BULK, "mem")
            done = upto

            async def replayed(n: int = upto) -> bool:
                return await writes_at(upstream + "/_stats") >= n

            await wait_until(replayed, 300, f"{upto} replays not done")
            await asyncio.sleep(1)  # let the last settles and the store writer finish
            rss["gateway"].append(await rss_bytes(stack.gateway_admin))
            rss["consumer"].append(await rss_bytes(stack.consumer_admin))
    finally:
        procs.stop_all()
        if stack is not None:
            await delete_topology(stack.exchange)
    rows = []
    for role, (a, b) in ((k, v) for k, v in rss.items()):
        growth = (b - a) / a * 100
        rows.append(
            Row(
                name=f"Memory, {role} RSS",
                load="asyncio bulk feeder (bulks of 1,000), consumer draining meanwhile",
                figure=(
                    f"{a / 2**20:.1f} MiB after {first // 1000}k ops, {b / 2**20:.1f} MiB after"
                    f" {second // 1000}k"
                ),
                ratio=f"growth {growth:+.1f}%",
                target="≤ 5% growth",
                met=growth <= 5,
                command="python -m bench --only memory",
            )
        )
    return rows
