"""The few exceptions a caller acts on; everything else is a built-in."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class PublishError(Exception):
    """The broker did not confirm a message: unreachable, nack, return or timeout."""


class TransportClosed(Exception):
    """The transport has no live connection right now."""
