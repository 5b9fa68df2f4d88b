"""A fast upstream for the benchmarks: answers everything at once, counts the writes.

``python -m bench.upstream --listen 127.0.0.1:PORT``.  GET answers a small JSON
document; any other method reads the whole body and answers ``{"ok": true}``;
``GET /_stats`` gives the number of writes so far.  uvloop, no middleware, no
logging: it must never be the thing the benchmark measures.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

SMALL = b'{"id":1,"sku":"24-MB01","name":"Joust Duffle Bag","price":34,"status":1}'
WRITTEN = b'{"ok":true}'
WRITES = web.AppKey("writes", list[int])


async def handle(request: web.Request) -> web.Response:
    if request.method == "GET":
        if request.path == "/_stats":
            return web.json_response({"writes": request.app[WRITES][0]})
        return web.Response(body=SMALL, content_type="application/json")
    await request.read()
    request.app[WRITES][0] += 1
    return web.Response(body=WRITTEN, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[WRITES] = [0]
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8081", help="host:port")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    web.run_app(
        create_app(),
        host=host,
        port=int(port),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
