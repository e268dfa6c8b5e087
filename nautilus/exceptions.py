"""Nautilus's exceptions: one root, :class:`NautilusError`.

Errors about bad arguments are also :class:`TypeError` or :class:`ValueError`,
so code that catches the builtins keeps working.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "CryptoFailure",
    "IntegrityError",
    "InvalidKey",
    "NautilusError",
    "RecordFormatError",
    "RecordLimitReached",
]


class NautilusError(Exception):
    """Root of every error that Nautilus raises on purpose."""


class InvalidKey(NautilusError, ValueError):
    """A key is malformed, unreduced (FIPS 203 checks), or gives a degenerate secret."""


class IntegrityError(NautilusError):
    """Authenticated decryption failed: the data was altered, reordered or replayed.

    No byte of the failing record is released. ``records`` holds the records
    that verified before it in the same call, and ``consumed`` how many input
    bytes they took.
    """

    def __init__(self, message: str, records: list[object] | None = None, consumed: int = 0):
        super().__init__(message)
        self.records = records if records is not None else []
        self.consumed = consumed


class RecordFormatError(IntegrityError, ValueError):
    """A record is malformed: wrong header, impossible length, or no inner type."""


class RecordLimitReached(NautilusError):
    """The key has sealed (or opened) as many records as it may: rekey first.

    Raised instead of ever reusing a nonce; nothing was written.
    """


class ClosedError(NautilusError, ValueError):
    """The object was closed, or failed before, and cannot be used any more."""


class CryptoFailure(NautilusError):
    """OpenSSL reported an unexpected failure (out of memory, broken build)."""
