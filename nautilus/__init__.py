"""Nautilus: post-quantum secure transport for Python.

The ways in: :class:`Context` (settings and trust, like ``ssl.SSLContext``),
:class:`Connection` (the sans-IO protocol) and :mod:`nautilus.asyncio`. The
primitives live in :mod:`nautilus.kem` (ML-KEM, X25519 and hybrid KEMs),
:mod:`nautilus.record` (batched AEAD record sealing) and :mod:`nautilus.kdf`.
"""

from nautilus._version import __version__
from nautilus.context import Context
from nautilus.exceptions import (
    AuthenticationFailed,
    CertificateExpired,
    ClosedError,
    ConnectionLost,
    CryptoFailure,
    HandshakeError,
    HandshakeTimeout,
    IdentityFileError,
    IntegrityError,
    InvalidKey,
    KeyAgreementFailed,
    MessageTooLarge,
    NautilusError,
    NegotiationFailed,
    ProtocolViolation,
    RecordFormatError,
    RecordLimitReached,
    RecordTimeout,
    SessionKeyDerivationFailed,
    UnreadLimitReached,
    WantReadError,
    WantWriteError,
)
from nautilus.identity import (
    Certificate,
    Identity,
    InvalidCertificate,
    KnownPeers,
    PeerKey,
    TrustStore,
)
from nautilus.protocol.connection import Connection, ConnectionStats
from nautilus.protocol.events import (
    AlertReceived,
    ConnectionClosed,
    DataReceived,
    EarlyDataReceived,
    EarlyDataRejected,
    Event,
    HandshakeCompleted,
    KeysUpdated,
    MessagesReceived,
    SessionInfo,
)
from nautilus.protocol.state import State
from nautilus.protocol.steps import (
    AuthenticationStep,
    CustomProtocolStep,
    Handshake,
    HandshakeStep,
    StepContext,
)
from nautilus.sessions import SessionCache
from nautilus.sockets import NautilusSocket, create_connection

__all__ = [
    "AlertReceived",
    "AuthenticationFailed",
    "AuthenticationStep",
    "Certificate",
    "CertificateExpired",
    "ClosedError",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionStats",
    "Context",
    "CryptoFailure",
    "CustomProtocolStep",
    "DataReceived",
    "EarlyDataReceived",
    "EarlyDataRejected",
    "Event",
    "Handshake",
    "HandshakeCompleted",
    "HandshakeError",
    "HandshakeStep",
    "HandshakeTimeout",
    "Identity",
    "IdentityFileError",
    "IntegrityError",
    "InvalidCertificate",
    "InvalidKey",
    "KeyAgreementFailed",
    "KeysUpdated",
    "KnownPeers",
    "MessageTooLarge",
    "MessagesReceived",
    "NautilusError",
    "NautilusSocket",
    "NegotiationFailed",
    "PeerKey",
    "ProtocolViolation",
    "RecordFormatError",
    "RecordLimitReached",
    "RecordTimeout",
    "SessionCache",
    "SessionInfo",
    "SessionKeyDerivationFailed",
    "State",
    "StepContext",
    "TrustStore",
    "UnreadLimitReached",
    "WantReadError",
    "WantWriteError",
    "__version__",
    "create_connection",
]
