"""Encryption at rest of forwarded credentials inside queued messages.

With ``security.encryption_key`` set, the gateway seals the ``Authorization`` and
``Cookie`` values it queues, and the consumer opens them just before the replay;
the broker (and its disk) only ever holds ciphertext. Fernet (AES-128-CBC with
HMAC-SHA256, from the ``cryptography`` package) does the work; rotation uses two
keys: new messages are sealed with the current key, and messages sealed with
the previous key still open until they have drained.

The store never holds credentials at all: only a SHA-256 fingerprint of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED_HEADERS = frozenset({"authorization", "cookie"})
PREFIX = "enc:fernet:"


class CredentialError(ValueError):
    """A sealed value cannot be opened: no key, or not one of ours."""


class CredentialCipher:
    def __init__(self, keys: Sequence[str]) -> None:
        """``keys[0]`` seals; every key opens. Raises ValueError for a malformed key."""
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def seal(self, value: str) -> str:
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, value: str) -> str:
        if not value.startswith(PREFIX):
            return value  # queued before encryption was turned on
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise CredentialError("a sealed credential matches none of the keys") from None


def seal_headers(
    headers: Sequence[tuple[str, str]], cipher: CredentialCipher | None
) -> tuple[tuple[str, str], ...]:
    if cipher is None:
        return tuple(headers)
    return tuple(
        (name, cipher.seal(value) if name.lower() in SEALED_HEADERS else value)
        for name, value in headers
    )


def open_headers(
    headers: Sequence[tuple[str, str]], cipher: CredentialCipher | None
) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        if value.startswith(PREFIX):
            if cipher is None:
                raise CredentialError("the message holds sealed credentials and no key is set")
            value = cipher.open(value)
        out.append((name, value))
    return out
