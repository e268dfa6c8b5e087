"""Nautilus: post-quantum secure transport for Python.

The primitives live in :mod:`nautilus.kem` (ML-KEM, X25519 and hybrid KEMs),
:mod:`nautilus.record` (batched AEAD record sealing) and :mod:`nautilus.kdf`.
"""

from nautilus._version import __version__
from nautilus.exceptions import (
    AuthenticationFailed,
    ClosedError,
    ConnectionLost,
    CryptoFailure,
    HandshakeError,
    HandshakeTimeout,
    IdentityFileError,
    IntegrityError,
    InvalidKey,
    KeyAgreementFailed,
    NautilusError,
    NegotiationFailed,
    ProtocolViolation,
    RecordFormatError,
    RecordLimitReached,
    SessionKeyDerivationFailed,
)

__all__ = [
    "AuthenticationFailed",
    "ClosedError",
    "ConnectionLost",
    "CryptoFailure",
    "HandshakeError",
    "HandshakeTimeout",
    "IdentityFileError",
    "IntegrityError",
    "InvalidKey",
    "KeyAgreementFailed",
    "NautilusError",
    "NegotiationFailed",
    "ProtocolViolation",
    "RecordFormatError",
    "RecordLimitReached",
    "SessionKeyDerivationFailed",
    "__version__",
]
