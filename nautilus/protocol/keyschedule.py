"""The key schedule (docs/protocol.md, section 5): TLS 1.3's, with our own labels.

All secrets are SHA-256 sized (32 bytes). Every traffic secret is bound to the
hash of the transcript up to the point where it is derived. HKDF runs in the C
core (csrc/nt_schedule.c), which also keys the record layer straight from a
traffic secret (``RecordSealer._from_secret``): a handshake makes some forty
derivations, and through Python objects each cost twice as much. The stages
(the binder, the handshake secrets, the application secrets, a Finished MAC)
are one C call each: a call through cffi costs about as much as the HMAC it
makes, and a stage makes two to six.
"""

from __future__ import annotations

import hashlib
import hmac

from nautilus import _bindings as _b
from nautilus.exceptions import SessionKeyDerivationFailed
from nautilus.record import IV_SIZE, key_size

HASH_SIZE: int = _b.KDF_HASH_BYTES
MAX_LABEL: int = _b.KDF_MAX_LABEL  # longest label after the prefix
LABEL_PREFIX = b"nautilus1 "  # applied in C; here for the documentation and tests
ZEROS = bytes(HASH_SIZE)
EMPTY_HASH = hashlib.sha256(b"").digest()


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with the ``nautilus1 `` prefix (RFC 8446 section 7.1 form).

    Raises:
        ValueError: a 32-byte secret, a label of at most 245 bytes, a context of
            at most 255 and a length in 1..8160 are required.
    """
    try:
        return _b.expand_label(secret, label, context, length)
    except ValueError:
        raise ValueError(
            f"expand_label takes a {HASH_SIZE}-byte secret, a label of at most {MAX_LABEL} "
            f"bytes, a context of at most 255 bytes and a length in 1..{255 * HASH_SIZE}; "
            f"got {len(secret)}, {len(label)}, {len(context)} and {length}"
        ) from None


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256.

    Raises:
        ValueError: a salt longer than 64 bytes.
    """
    return _b.hkdf_extract(salt, ikm)


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
    """verify_data of a Finished message: HMAC(Expand-Label(base_secret,
    "finished", "", 32), transcript_hash)."""
    return _b.ks_finished(base_secret, transcript_hash)


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
        self._early = hkdf_extract(ZEROS, psk or ZEROS)
        self.handshake_secret = b""
        self.client_hs = self.server_hs = b""
        self.master = b""
        self.client_app = self.server_app = self.exporter = self.resumption = b""

    def binder(self, transcript_hash: bytes) -> bytes:
        """The PSK binder over the transcript through the ClientHello with its
        binder zeroed (proves the client holds the ticket's secret)."""
        return _b.ks_binder(self._early, transcript_hash)  # Derive-Secret, then Finished

    def early_traffic(self, transcript_hash: bytes) -> bytes:
        """The client's early (0-RTT) traffic secret (transcript: the ClientHello)."""
        return derive_secret(self._early, b"c e traffic", transcript_hash)

    def handshake(self, shared_secret: bytes, transcript_hash: bytes) -> None:
        """Mix in the key exchange's secret; derive the handshake traffic secrets."""
        # handshake_secret = Extract(Derive-Secret(early, "derived", ""), shared);
        # client_hs, server_hs = Derive-Secret(handshake_secret, "c hs traffic" /
        # "s hs traffic", transcript); master = Extract(Derive-Secret(
        # handshake_secret, "derived", ""), 0): one C call.
        try:
            out = _b.ks_handshake(self._early, shared_secret, transcript_hash)
        except Exception as exc:  # pragma: no cover - only on an internal failure
            raise SessionKeyDerivationFailed(f"handshake key derivation failed: {exc}") from None
        self.handshake_secret, self.client_hs = out[:32], out[32:64]
        self.server_hs, self.master = out[64:96], out[96:]

    def application(self, transcript_hash: bytes) -> None:
        """Derive application and exporter secrets (transcript through server Finished)."""
        # Derive-Secret(master, "c ap traffic" / "s ap traffic" / "exp master", transcript)
        out = _b.ks_application(self.master, transcript_hash)
        self.client_app, self.server_app, self.exporter = out[:32], out[32:64], out[64:]

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

    def update_traffic(self, client: bool) -> bytes:
        """A key update: ratchet the client's (``client``) or the server's
        application traffic secret and return the new one. The old secret is
        dropped, so that it cannot be derived again from what is kept here."""
        if client:
            self.client_app = secret = next_traffic_secret(self.client_app)
        else:
            self.server_app = secret = next_traffic_secret(self.server_app)
        return secret

    def wipe_handshake(self) -> None:
        """Drop secrets no longer needed once the handshake is over.

        Kept: the current application traffic secrets (replaced at each key
        update), the exporter and the resumption secrets (a client turns
        NewSessionTickets into PSKs while connected); :meth:`wipe` drops them.
        """
        self._early = self.handshake_secret = self.master = b""
        self.client_hs = self.server_hs = b""

    def keep_for_tickets(self) -> None:
        """Drop every secret but the server's application traffic secret and
        the resumption secret: what a closed client needs to read the
        server's session tickets still on their way (and its key updates)."""
        self.wipe_handshake()
        self.client_app = self.exporter = b""

    def wipe(self) -> None:
        """Drop every secret (the connection is closed). Python bytes cannot be
        overwritten in place: the references go, the record layer's keys are
        cleansed in C when their direction closes."""
        self.wipe_handshake()
        self.client_app = self.server_app = self.exporter = self.resumption = b""
