"""Nautilus's exceptions: one root, :class:`NautilusError`.

Errors about bad arguments are also :class:`TypeError` or :class:`ValueError`,
so code that catches the builtins keeps working.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "CertificateExpired",
    "ClosedError",
    "ConnectionLost",
    "CryptoFailure",
    "HandshakeError",
    "HandshakeTimeout",
    "IdentityFileError",
    "IntegrityError",
    "InvalidKey",
    "KeyAgreementFailed",
    "MessageTooLarge",
    "NautilusError",
    "NegotiationFailed",
    "ProtocolViolation",
    "RecordFormatError",
    "RecordLimitReached",
    "SessionKeyDerivationFailed",
    "WantReadError",
    "WantWriteError",
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


class IdentityFileError(NautilusError, ValueError):
    """An identity, known-peers, session cache or ticket secret file is
    unreadable, corrupt, of the wrong kind, or has permissions that let other
    users read it."""


class MessageTooLarge(NautilusError, ValueError):
    """A message is larger than the context's ``max_message_size``; nothing was sent."""


class UnreadLimitReached(NautilusError, BufferError):
    """A blocking socket holds as much unread data of the *other* kind as it
    may (messages while ``recv()`` waits for stream data, or stream data while
    ``recv_message()`` waits for a message), so it reads no more from the
    peer: read that kind first. Nothing was lost; the socket stays usable."""


class WantReadError(NautilusError, BlockingIOError):
    """Non-blocking socket: the operation needs more data from the peer first
    (wait until the socket is readable and retry), like ``ssl.SSLWantReadError``."""


class WantWriteError(NautilusError, BlockingIOError):
    """Non-blocking socket: the operation must write to the peer first (wait
    until the socket is writable and retry), like ``ssl.SSLWantWriteError``."""


class ConnectionLost(NautilusError, ConnectionError):
    """The connection ended without a clean close (no close_notify): the data
    received may have been truncated by an attacker."""


class RecordTimeout(ConnectionLost, TimeoutError):
    """The peer left a record (or a message) incomplete for longer than the
    context's ``record_timeout`` (asyncio and blocking sockets): the
    connection was closed with a record_timeout alert. The side that stalled
    gets it too, from the alert."""


class HandshakeError(NautilusError):
    """The handshake failed. Subclasses say what went wrong; the connection is
    closed, and an alert was sent to the peer where that was safe."""


class NegotiationFailed(HandshakeError):
    """No common version, group, cipher, namespace or required handshake step."""


class AuthenticationFailed(HandshakeError):
    """The peer's identity is not trusted, or its proof of it (signature,
    certificate, Finished MAC) did not verify."""


class CertificateExpired(AuthenticationFailed):
    """The peer's certificate is outside its validity period (expired, or not yet valid)."""


class KeyAgreementFailed(HandshakeError):
    """The key exchange failed (malformed or invalid key share)."""


class SessionKeyDerivationFailed(HandshakeError):
    """Traffic keys could not be derived from the handshake secrets."""


class HandshakeTimeout(HandshakeError, TimeoutError):
    """The handshake did not complete within the context's handshake_timeout."""


class ProtocolViolation(HandshakeError):
    """The peer sent something the protocol does not allow: garbage, a message
    out of order, an oversized message, a stale timestamp."""
