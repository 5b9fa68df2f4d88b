"""``python -m gateway --config FILE``: load settings once, then run the app until SIGTERM."""

from __future__ import annotations

from aiohttp import web

from asyncgate.cli import base_parser, new_event_loop, settings_or_exit
from asyncgate.logs import configure_logging, get_logger
from gateway.app import create_app


def main() -> None:
    args = base_parser("asyncgate-gateway", "asyncgate's public gateway").parse_args()
    settings = settings_or_exit(args)
    configure_logging()
    listen = settings.gateway.listen
    get_logger("asyncgate.gateway").info("gateway_starting", listen=str(listen))
    web.run_app(
        create_app(settings),
        host=listen.host,
        port=listen.port,
        # A client that goes away cancels its upstream request instead of leaving it running.
        handler_cancellation=True,
        shutdown_timeout=settings.gateway.shutdown_grace,
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )


if __name__ == "__main__":
    main()
