"""``python -m consumer [run]`` replays queued operations until SIGTERM.

Operator commands (like Magento's admin "Retry"):

- ``python -m consumer bulk retry UUID``: requeue the bulk's retriably failed dead letters;
- ``python -m consumer dead-letters list|requeue|purge [--bulk UUID] [--limit N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from asyncgate.cli import base_parser, new_event_loop, settings_or_exit
from asyncgate.logs import configure_logging, get_logger
from asyncgate.settings import Settings
from asyncgate.store import create_store
from asyncgate.store.base import OperationStatus
from asyncgate.transport import create_transport
from consumer.operator import dead_letters
from consumer.service import running_consumer

log = get_logger("asyncgate.consumer")


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_consumer(settings):
        log.info(
            "consumer_started",
            queues=list(settings.queues),
            concurrency=settings.consumer.concurrency,
        )
        await stop.wait()
        log.info("consumer_stopping", grace=settings.consumer.shutdown_grace)
    log.info("consumer_stopped")


async def operate(settings: Settings, args: argparse.Namespace) -> int:
    store = create_store(settings.store.url)
    await store.open()
    transport = create_transport(settings, "operator")
    await transport.start()
    try:
        if args.command == "bulk":
            n = await dead_letters(
                transport,
                store,
                "requeue",
                args.uuid,
                args.limit,
                frozenset({OperationStatus.RETRIABLY_FAILED}),
                force=args.force,
            )
            print(f"requeued {n} operation(s) of bulk {args.uuid}", file=sys.stderr)
        else:
            n = await dead_letters(
                transport, store, args.action, args.bulk, args.limit, force=args.force
            )
            if args.action != "list":
                print(f"{args.action}d {n} dead letter(s)", file=sys.stderr)
    finally:
        await transport.close()
        await store.close()
    return 0


FORCE_HELP = "requeue even an update that a later one of the same resource has overtaken"


def main() -> None:
    parser = base_parser("asyncgate-consumer", "asyncgate's replaying consumer")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="consume and replay (the default)")
    bulk = sub.add_parser("bulk", help="act on one bulk")
    bulk.add_argument("action", choices=["retry"])
    bulk.add_argument("uuid")
    bulk.add_argument("--limit", type=int, default=10000, help="dead letters examined at most")
    bulk.add_argument("--force", action="store_true", help=FORCE_HELP)
    dead = sub.add_parser("dead-letters", help="list, requeue or purge dead letters")
    dead.add_argument("action", choices=["list", "requeue", "purge"])
    dead.add_argument("--bulk", default=None, help="only this bulk's dead letters")
    dead.add_argument("--limit", type=int, default=10000, help="dead letters examined at most")
    dead.add_argument("--force", action="store_true", help=FORCE_HELP)
    args = parser.parse_args()
    settings = settings_or_exit(args)
    operating = args.command not in (None, "run")
    # An operator command's stdout is its answer (e.g. JSON lines): logs go to stderr.
    configure_logging(stream=sys.stderr if operating else None)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        if not operating:
            runner.run(run(settings))
        else:
            raise SystemExit(runner.run(operate(settings, args)))


if __name__ == "__main__":
    main()
