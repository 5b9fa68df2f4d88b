"""Pass-through: the upstream directly, through nginx and through asyncgate, side by side.

wrk drives all three the same way.  Throughput is measured saturated (32
connections); the latency a proxy adds is measured at one connection, where
queueing does not hide it (at saturation p50 is just connections / throughput).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.common import (
    ROOT,
    Procs,
    Row,
    WrkResult,
    delete_topology,
    free_port,
    make_stack,
    run_wrk,
    start_upstream,
    wait_http,
)

SMALL_PATH = "/rest/default/V1/products/24-MB01"
LARGE_PATH = "/rest/default/V1/bench/upload"
POST_1MB = ROOT / "bench" / "wrk" / "post_1mb.lua"

# Equivalent to asyncgate's pass-through: pooled keep-alive to the upstream, HTTP/1.1,
# hop-by-hop headers dropped, X-Forwarded-For appended, -Proto/-Host set, Via added,
# bodies streamed both ways (no request or response buffering), one worker process.
NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 64m;
    upstream shop {{
        server {upstream};
        keepalive 100;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://shop;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header Via "$server_protocol nginx";
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""


async def start_nginx(procs: Procs, upstream: str) -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = procs.workdir / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        NGINX_CONF.format(
            user=user, dir=procs.workdir, upstream=upstream.removeprefix("http://"), port=port
        )
    )
    proc = procs.spawn("nginx", [binary, "-c", str(conf), "-p", str(procs.workdir)])
    url = f"http://127.0.0.1:{port}"
    await wait_http(url + "/_stats", proc=proc)
    return url


def _fmt(r: WrkResult) -> str:
    return f"{r.rps:,.0f} rps, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"


async def run(workdir: Path, quick: bool) -> list[Row]:
    seconds = 3 if quick else 6
    procs = Procs(workdir)
    stack = None
    try:
        upstream = await start_upstream(procs)
        nginx = await start_nginx(procs, upstream)
        stack = make_stack(procs, "passthrough", upstream)
        await stack.start_gateway()
        targets = {"direct": upstream, "nginx": nginx, "asyncgate": stack.gateway_url}
        rows = []
        for label, path, script, conns in (
            ("small GET", SMALL_PATH, None, 32),
            ("1 MB POST", LARGE_PATH, POST_1MB, 8),
        ):
            thru: dict[str, WrkResult] = {}
            lat: dict[str, WrkResult] = {}
            for name, base in targets.items():
                await run_wrk(base + path, conns, 1, script)  # warm the pools
                thru[name] = await run_wrk(base + path, conns, seconds, script)
                lat[name] = await run_wrk(base + path, 1, max(2, seconds // 2), script)
            for r in (*thru.values(), *lat.values()):
                if r.non_2xx or r.errors:
                    raise RuntimeError(f"{r.command}: {r.non_2xx} non-2xx, {r.errors} errors")
            ratio = thru["asyncgate"].rps / thru["nginx"].rps
            added = lat["asyncgate"].p50_ms - lat["direct"].p50_ms
            nginx_added = lat["nginx"].p50_ms - lat["direct"].p50_ms
            rows.append(
                Row(
                    name=f"Pass-through, {label}",
                    load="wrk (C, one thread)",
                    figure=(
                        f"{conns} conns: direct {_fmt(thru['direct'])}; "
                        f"nginx {_fmt(thru['nginx'])}; asyncgate {_fmt(thru['asyncgate'])}. "
                        f"1 conn p50: direct {lat['direct'].p50_ms:.3f} ms, "
                        f"nginx {lat['nginx'].p50_ms:.3f} ms, "
                        f"asyncgate {lat['asyncgate'].p50_ms:.3f} ms"
                    ),
                    ratio=(
                        f"asyncgate/nginx rps {ratio:.2f}x; asyncgate adds {added * 1000:+.0f} µs"
                        f" p50 over direct (nginx {nginx_added * 1000:+.0f} µs)"
                    ),
                    target="≥ 0.5x nginx rps and ≤ 1 ms added p50",
                    met=ratio >= 0.5 and added <= 1.0,
                    command=f"{thru['asyncgate'].command} (and the same against direct and"
                    f" nginx; `-c1` for the added latency)",
                )
            )
        return rows
    finally:
        procs.stop_all()
        if stack is not None:
            await delete_topology(stack.exchange)
