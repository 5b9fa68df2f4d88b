"""The broker edge: publish confirmed, consume with ack, delay, dead-letter, depth."""

from __future__ import annotations

from asyncgate.settings import Settings
from asyncgate.transport.base import Delivery, Outgoing, QueueDepth, Transport


def create_transport(settings: Settings, role: str) -> Transport:
    """The transport ``broker.url`` selects; ``role`` names the connection for the broker UI."""
    from asyncgate.transport.amqp import AmqpTransport

    return AmqpTransport(settings, role)


__all__ = ["Delivery", "Outgoing", "QueueDepth", "Transport", "create_transport"]
