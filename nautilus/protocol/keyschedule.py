"""The key schedule (docs/protocol.md, section 5): TLS 1.3's, with our own labels.

All secrets are SHA-256 sized (32 bytes). Every traffic secret is bound to the
hash of the transcript up to the point where it is derived.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from nautilus.exceptions import SessionKeyDerivationFailed
from nautilus.kdf import hkdf_extract
from nautilus.record import IV_SIZE, key_size

HASH_SIZE = 32
LABEL_PREFIX = b"nautilus1 "
ZEROS = bytes(HASH_SIZE)
EMPTY_HASH = hashlib.sha256(b"").digest()


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with the ``nautilus1 `` prefix (RFC 8446 section 7.1 form)."""
    full = LABEL_PREFIX + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """Derive-Secret, given the transcript hash directly."""
    return expand_label(secret, label, transcript_hash, HASH_SIZE)


def traffic_keys(secret: bytes, cipher: str) -> tuple[bytes, bytes]:
    """(key, iv) for a traffic secret.

    Raises:
        SessionKeyDerivationFailed: the derivation failed.
    """
    try:
        return (
            expand_label(secret, b"key", b"", key_size(cipher)),
            expand_label(secret, b"iv", b"", IV_SIZE),
        )
    except Exception as exc:  # pragma: no cover - only on an internal failure
        raise SessionKeyDerivationFailed(f"traffic key derivation failed: {exc}") from None


def next_traffic_secret(secret: bytes) -> bytes:
    """The secret after a key update."""
    return expand_label(secret, b"traffic upd", b"", HASH_SIZE)


def finished_mac(base_secret: bytes, transcript_hash: bytes) -> bytes:
    """verify_data of a Finished message."""
    key = expand_label(base_secret, b"finished", b"", HASH_SIZE)
    return hmac.new(key, transcript_hash, hashlib.sha256).digest()


def finished_ok(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison of Finished MACs."""
    return hmac.compare_digest(expected, received)


class KeySchedule:
    """Holds the secrets of one handshake, in the order they are derived."""

    __slots__ = (
        "_early",
        "client_app",
        "client_hs",
        "exporter",
        "handshake_secret",
        "master",
        "resumption",
        "server_app",
        "server_hs",
    )

    def __init__(self, psk: bytes | None = None) -> None:
        self._early = hkdf_extract("sha256", ZEROS, psk or ZEROS)
        self.handshake_secret = b""
        self.client_hs = self.server_hs = b""
        self.master = b""
        self.client_app = self.server_app = self.exporter = self.resumption = b""

    def binder(self, transcript_hash: bytes) -> bytes:
        """The PSK binder over the transcript through the ClientHello with its
        binder zeroed (proves the client holds the ticket's secret)."""
        binder_key = derive_secret(self._early, b"res binder", EMPTY_HASH)
        return finished_mac(binder_key, transcript_hash)

    def early_traffic(self, transcript_hash: bytes) -> bytes:
        """The client's early (0-RTT) traffic secret (transcript: the ClientHello)."""
        return derive_secret(self._early, b"c e traffic", transcript_hash)

    def handshake(self, shared_secret: bytes, transcript_hash: bytes) -> None:
        """Mix in the key exchange's secret; derive the handshake traffic secrets."""
        try:
            salt = derive_secret(self._early, b"derived", EMPTY_HASH)
            self.handshake_secret = hkdf_extract("sha256", salt, shared_secret)
            self.client_hs = derive_secret(self.handshake_secret, b"c hs traffic", transcript_hash)
            self.server_hs = derive_secret(self.handshake_secret, b"s hs traffic", transcript_hash)
            salt = derive_secret(self.handshake_secret, b"derived", EMPTY_HASH)
            self.master = hkdf_extract("sha256", salt, ZEROS)
        except Exception as exc:  # pragma: no cover - only on an internal failure
            raise SessionKeyDerivationFailed(f"handshake key derivation failed: {exc}") from None

    def application(self, transcript_hash: bytes) -> None:
        """Derive application and exporter secrets (transcript through server Finished)."""
        self.client_app = derive_secret(self.master, b"c ap traffic", transcript_hash)
        self.server_app = derive_secret(self.master, b"s ap traffic", transcript_hash)
        self.exporter = derive_secret(self.master, b"exp master", transcript_hash)

    def resumption_secret(self, transcript_hash: bytes) -> None:
        """Derive the resumption secret (transcript through client Finished)."""
        self.resumption = derive_secret(self.master, b"res master", transcript_hash)

    def ticket_psk(self, nonce: bytes) -> bytes:
        """The PSK of the ticket with ``nonce`` (needs the resumption secret)."""
        return expand_label(self.resumption, b"resumption", nonce, HASH_SIZE)

    def export(self, label: bytes, context: bytes, length: int) -> bytes:
        """Keying material for channel binding (RFC 8446 section 7.5 form)."""
        secret = derive_secret(self.exporter, label, EMPTY_HASH)
        return expand_label(secret, b"exporter", hashlib.sha256(context).digest(), length)

    def wipe_handshake(self) -> None:
        """Drop secrets no longer needed once the handshake is over."""
        self._early = self.handshake_secret = self.master = b""
        self.client_hs = self.server_hs = b""
