"""The broker edge: publish confirmed, consume with ack, delay, dead-letter, depth."""

from __future__ import annotations

from urllib.parse import urlsplit

from asyncgate.settings import Settings
from asyncgate.transport.base import Delivery, Outgoing, QueueDepth, Transport


def create_transport(settings: Settings, role: str) -> Transport:
    """The transport ``broker.url`` selects; ``role`` names the connection for the broker UI.

    ``sqlite:///<path>`` is the embedded queue in that file (``sqlite:////abs/path`` is
    absolute, as for the store); any other URL is RabbitMQ's.
    """
    if urlsplit(settings.broker.url).scheme == "sqlite":
        from asyncgate.transport.sqlite import SqliteTransport

        return SqliteTransport(settings, role)
    from asyncgate.transport.amqp import AmqpTransport

    return AmqpTransport(settings, role)


__all__ = ["Delivery", "Outgoing", "QueueDepth", "Transport", "create_transport"]
