"""Identities and trust: who a peer is, and whether to believe it.

* :class:`Identity` is a private signing identity (Ed25519, ML-DSA-65 or the
  hybrid of both), saved to and loaded from a ``0600`` text file.
* :class:`PeerKey` is the public half that a peer presents in the handshake;
  its :attr:`~PeerKey.peer_id` is the stable text form users pin or compare.
* :class:`Certificate` binds a name to a :class:`PeerKey` under an issuer's
  signature (a small fixed binary format, no X.509).
* :class:`KnownPeers` is a trust-on-first-use file, like SSH's ``known_hosts``.
* :class:`TrustStore` combines these into the decision a handshake needs.

The formats and the order of the trust checks are described in
``docs/identity.md``. Nothing in this module puts private key material into an
exception message, a ``repr`` or a log.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import functools
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import stat
import struct
import sys
import unicodedata
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Final, NoReturn, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from nautilus._bindings import ed25519_verify
from nautilus.exceptions import (
    AuthenticationFailed,
    CertificateExpired,
    IdentityFileError,
    InvalidKey,
    NautilusError,
)

if sys.platform == "win32":  # pragma: no cover - no advisory locks; files are not shared

    def _lock(fd: int, *, exclusive: bool) -> None:
        """No-op: Windows has no flock."""

else:
    import fcntl

    def _lock(fd: int, *, exclusive: bool) -> None:
        """Take an advisory lock on ``fd``; it is released when ``fd`` is closed."""
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


__all__ = [
    "KINDS",
    "Certificate",
    "Identity",
    "InvalidCertificate",
    "KnownPeers",
    "PeerKey",
    "TrustStore",
    "parse_peer_id",
]

KINDS: Final = ("ed25519", "ml-dsa-65", "ed25519+ml-dsa-65")
"""Identity kinds: classical, post-quantum, and the hybrid needing both signatures."""


_BytesLike: TypeAlias = bytes | bytearray | memoryview


class InvalidCertificate(NautilusError, ValueError):
    """A certificate encoding is malformed (truncated, wrong version, bad field)."""


# --------------------------------------------------------------------------- sizes

_ED_PUBLIC: Final = 32
_ED_PRIVATE: Final = 32
_ED_SIGNATURE: Final = 64
_ML_PUBLIC: Final = 1952
_ML_SEED: Final = 32
_ML_SIGNATURE: Final = 3309

_KIND_CODES: Final[dict[str, int]] = {"ed25519": 0x01, "ml-dsa-65": 0x02, "ed25519+ml-dsa-65": 0x03}
_KINDS_BY_CODE: Final[dict[int, str]] = {code: kind for kind, code in _KIND_CODES.items()}
_HAS_ED: Final = frozenset({"ed25519", "ed25519+ml-dsa-65"})
_HAS_ML: Final = frozenset({"ml-dsa-65", "ed25519+ml-dsa-65"})
_PUBLIC_LENGTHS: Final[dict[str, int]] = {
    "ed25519": _ED_PUBLIC,
    "ml-dsa-65": _ML_PUBLIC,
    "ed25519+ml-dsa-65": _ED_PUBLIC + _ML_PUBLIC,
}
_SIGNATURE_LENGTHS: Final[dict[str, int]] = {
    "ed25519": _ED_SIGNATURE,
    "ml-dsa-65": _ML_SIGNATURE,
    "ed25519+ml-dsa-65": _ED_SIGNATURE + _ML_SIGNATURE,
}

_DID_KEY_PREFIX: Final = "did:key:z"
_ED25519_MULTICODEC: Final = b"\xed\x01"
_HASH_ID_PREFIXES: Final[dict[str, str]] = {
    "ml-dsa-65": "nautilus:ml-dsa-65:z",
    "ed25519+ml-dsa-65": "nautilus:ed25519+ml-dsa-65:z",
}
_MAX_PEER_ID: Final = 128

_IDENTITY_MAGIC: Final = "nautilus-identity"
_IDENTITY_VERSION: Final = "v1"
_IDENTITY_END: Final = "end"
_KNOWN_PEERS_HEADER: Final = "# nautilus-known-peers v1"
_MAX_IDENTITY_FILE: Final = 1 << 16
_MAX_KNOWN_PEERS_FILE: Final = 1 << 26
_MAX_NAME: Final = 255

_CERT_VERSION: Final = 1
_CERT_DOMAIN: Final = b"nautilus certificate v1\x00"

_POSIX: Final = os.name == "posix"
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)


# --------------------------------------------------------------------------- helpers


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes-like, not {type(value).__name__}")


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, not {type(kind).__name__}")
    if kind not in KINDS:
        raise ValueError(f"unknown identity kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def _check_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number (UNIX seconds), not {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{name} is too large to be a time (UNIX seconds)") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite")
    return result


def _format_time(value: float) -> str:
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{value!r} (UNIX seconds)"


def _check_name(what: str, name: object, *, allow_space: bool) -> str:
    """Validate a peer or certificate name: 1..255 bytes of UTF-8, printable."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None
    if size > _MAX_NAME:
        raise ValueError(f"{what} is {size} bytes of UTF-8; at most {_MAX_NAME} are allowed")
    for char in name:
        category = unicodedata.category(char)
        if category[0] == "C" or category in ("Zl", "Zp"):
            raise ValueError(f"{what} must not contain control or format characters")
        if not allow_space and char.isspace():
            raise ValueError(f"{what} must not contain whitespace")
    if not allow_space and name.startswith("#"):
        raise ValueError(f"{what} must not start with '#'")
    return name


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, length: int | None = None) -> bytes | None:
    """Strict base64: canonical padding, no stray characters; None if invalid."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != text:
        return None
    if length is not None and len(raw) != length:
        return None
    return raw


# --------------------------------------------------------------------------- base58btc

_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_VALUES: Final[dict[str, int]] = {char: i for i, char in enumerate(_B58_ALPHABET)}


def _b58encode(data: bytes) -> str:
    """Bitcoin base58 (the multibase ``z`` alphabet): leading zero bytes become '1'."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_B58_ALPHABET[digit])
    return "1" * zeros + "".join(reversed(digits))


def _b58decode(text: str) -> bytes:
    """Inverse of :func:`_b58encode`. Raises ValueError on a character outside the alphabet."""
    number = 0
    for char in text:
        digit = _B58_VALUES.get(char)
        if digit is None:
            raise ValueError("invalid base58 character")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")


# --------------------------------------------------------------------------- Ed25519 checks
# OpenSSL loads any 32 bytes as an Ed25519 public key, and accepts signatures by a
# small-order key on any message (S = 0, R = identity). Such a key would be an
# identity that anybody can "prove", so it is refused, as are encodings that are
# not a curve point or not canonical (RFC 8032 section 5.1.3).

_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)


def _ed_double(x: int, y: int, z: int) -> tuple[int, int, int]:
    """Point doubling on edwards25519 (a = -1) in projective coordinates: no inversion."""
    a, b = x * x % _P, y * y % _P
    c = 2 * z * z % _P
    e = ((x + y) * (x + y) - a - b) % _P
    g = (b - a) % _P
    f = (g - c) % _P
    h = (-a - b) % _P
    return e * f % _P, g * h % _P, f * g % _P


@functools.lru_cache(maxsize=512)
def _peer_key(raw: bytes) -> PeerKey:
    """PeerKey.from_bytes, remembered: keys are immutable, and a server sees the
    same few client keys (and a client the same server key) on every handshake.
    Failures raise and are not remembered."""
    return PeerKey._decode(raw)


@functools.lru_cache(maxsize=4096)
def _ed25519_public_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not an acceptable Ed25519 public key, or None if it is.

    Costs one modular exponentiation (the square root of decompression); the
    result is cached, as the same peers come back.
    """
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return "non-canonical Ed25519 point encoding"
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 * pow(u * v3 * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P
    check = v * x * x % _P
    if check == (-u) % _P and check != u:
        x = x * _SQRT_M1 % _P
    elif check != u:
        return "not a point on the Ed25519 curve"
    if x == 0 and sign:
        return "non-canonical Ed25519 point encoding"
    px, py, pz = x, y, 1  # the sign of x does not change the order
    for _ in range(3):  # multiply by the cofactor 8
        px, py, pz = _ed_double(px, py, pz)
    if px == 0 and py == pz:
        return "Ed25519 key of small order (it would accept forged signatures)"
    return None


# --------------------------------------------------------------------------- peer ids


def parse_peer_id(s: str) -> str:
    """Check that ``s`` is a well-formed peer id and return it.

    Forms (see ``docs/identity.md``)::

        did:key:z6Mk...                   Ed25519 (W3C did:key, multicodec 0xed01)
        nautilus:ml-dsa-65:z...           base58btc(SHA-256(PeerKey.to_bytes()))
        nautilus:ed25519+ml-dsa-65:z...   likewise, for the hybrid

    Raises:
        TypeError: ``s`` is not a str.
        nautilus.InvalidKey (a ValueError): malformed: unknown prefix, bad
            base58, wrong length, or a did:key that is not an Ed25519 key.
    """
    if not isinstance(s, str):
        raise TypeError(f"peer id must be a str, not {type(s).__name__}")
    if len(s) > _MAX_PEER_ID:
        raise InvalidKey(f"malformed peer id: longer than {_MAX_PEER_ID} characters")
    if s.startswith(_DID_KEY_PREFIX):
        payload = _decode_id_payload(s, _DID_KEY_PREFIX)
        if payload[:2] != _ED25519_MULTICODEC:
            raise InvalidKey(
                "malformed peer id: only Ed25519 did:key ids (z6Mk..., multicodec 0xed01) "
                "are supported"
            )
        if len(payload) != 2 + _ED_PUBLIC:
            raise InvalidKey("malformed peer id: a did:key Ed25519 key must be 32 bytes")
        return s
    for prefix in _HASH_ID_PREFIXES.values():
        if s.startswith(prefix):
            if len(_decode_id_payload(s, prefix)) != hashlib.sha256().digest_size:
                raise InvalidKey("malformed peer id: the key hash must be 32 bytes")
            return s
    raise InvalidKey(
        "malformed peer id: expected 'did:key:z...', 'nautilus:ml-dsa-65:z...' "
        "or 'nautilus:ed25519+ml-dsa-65:z...'"
    )


def _decode_id_payload(s: str, prefix: str) -> bytes:
    body = s[len(prefix) :]
    if not body:
        raise InvalidKey("malformed peer id: nothing after the prefix")
    try:
        payload = _b58decode(body)
    except ValueError:
        raise InvalidKey("malformed peer id: invalid base58btc character") from None
    if _b58encode(payload) != body:  # pragma: no cover - base58 decoding is canonical
        raise InvalidKey("malformed peer id: non-canonical base58btc")
    return payload


def _check_peer_ref(name: str, value: object) -> PeerKey | str:
    """A PeerKey, or a validated peer id string."""
    if isinstance(value, PeerKey):
        return value
    if isinstance(value, str):
        try:
            return parse_peer_id(value)
        except InvalidKey as exc:
            raise InvalidKey(f"{name}: {exc}") from None
    raise TypeError(f"{name} must be a PeerKey or a peer id str, not {type(value).__name__}")


def _peer_ref_list(name: str, values: object) -> tuple[PeerKey | str, ...]:
    if isinstance(values, (str, bytes, bytearray, memoryview, PeerKey)):
        raise TypeError(
            f"{name} must be an iterable of PeerKey or peer id str (a list, not a single "
            f"{type(values).__name__})"
        )
    if not isinstance(values, Iterable):
        raise TypeError(f"{name} must be an iterable, not {type(values).__name__}")
    return tuple(_check_peer_ref(f"{name}[{i}]", item) for i, item in enumerate(values))


def _ref_id(ref: PeerKey | str) -> str:
    return ref.peer_id if isinstance(ref, PeerKey) else ref


# --------------------------------------------------------------------------- PeerKey


class PeerKey:
    """A peer's public identity key. Immutable and hashable; equal by encoding.

    Make one with :meth:`from_bytes` (the handshake's encoding), :meth:`from_peer_id`
    (Ed25519 only), or from an :class:`Identity` (``identity.public``).
    """

    __slots__ = ("_ed", "_fingerprint", "_kind", "_ml", "_peer_id", "_raw")

    _ed: ed25519.Ed25519PublicKey | None
    _ml: mldsa.MLDSA65PublicKey | None
    _kind: str
    _raw: bytes
    _fingerprint: bytes
    _peer_id: str

    def __init__(self) -> None:
        raise TypeError("use PeerKey.from_bytes(), PeerKey.from_peer_id() or Identity.public")

    @classmethod
    def _create(
        cls,
        kind: str,
        ed: ed25519.Ed25519PublicKey | None,
        ml: mldsa.MLDSA65PublicKey | None,
    ) -> PeerKey:
        raw = bytes([_KIND_CODES[kind]])
        if ed is not None:
            raw += ed.public_bytes_raw()
        if ml is not None:
            raw += ml.public_bytes_raw()
        fingerprint = hashlib.sha256(raw).digest()
        if kind == "ed25519":
            assert ed is not None
            peer_id = _DID_KEY_PREFIX + _b58encode(_ED25519_MULTICODEC + ed.public_bytes_raw())
        else:
            peer_id = _HASH_ID_PREFIXES[kind] + _b58encode(fingerprint)
        self = object.__new__(cls)
        for attr, value in (
            ("_kind", kind),
            ("_ed", ed),
            ("_ml", ml),
            ("_raw", raw),
            ("_fingerprint", fingerprint),
            ("_peer_id", peer_id),
        ):
            object.__setattr__(self, attr, value)
        return self

    @classmethod
    def from_bytes(cls, data: _BytesLike) -> PeerKey:
        """Load a key from :meth:`to_bytes`'s encoding.

        Raises:
            TypeError: ``data`` is not bytes-like.
            nautilus.InvalidKey (a ValueError): empty, unknown kind byte, wrong
                length for the kind, or an Ed25519 part that is not a valid,
                canonical point of large order.
        """
        return _peer_key(_as_bytes("data", data))

    @classmethod
    def _decode(cls, raw: bytes) -> PeerKey:
        if not raw:
            raise InvalidKey("peer key encoding is empty")
        kind = _KINDS_BY_CODE.get(raw[0])
        if kind is None:
            raise InvalidKey(f"unknown peer key kind byte 0x{raw[0]:02x}")
        expected = 1 + _PUBLIC_LENGTHS[kind]
        if len(raw) != expected:
            raise InvalidKey(f"{kind} peer key encoding is {len(raw)} bytes, expected {expected}")
        ed = ml = None
        if kind in _HAS_ED:
            ed_raw = raw[1 : 1 + _ED_PUBLIC]
            problem = _ed25519_public_problem(ed_raw)
            if problem is not None:
                raise InvalidKey(f"invalid {kind} peer key: {problem}")
            ed = ed25519.Ed25519PublicKey.from_public_bytes(ed_raw)
        if kind in _HAS_ML:
            try:
                ml = mldsa.MLDSA65PublicKey.from_public_bytes(raw[-_ML_PUBLIC:])
            except ValueError:  # pragma: no cover - OpenSSL accepts any 1952 bytes
                raise InvalidKey(f"invalid {kind} peer key: bad ML-DSA-65 public key") from None
        return cls._create(kind, ed, ml)

    @classmethod
    def from_peer_id(cls, s: str) -> PeerKey:
        """Rebuild the key from an Ed25519 ``did:key`` peer id.

        Raises:
            TypeError: ``s`` is not a str.
            nautilus.InvalidKey (a ValueError): ``s`` is malformed, or is an
                ML-DSA-65 or hybrid id, which is a hash of the key: those keys
                can only be loaded from their full encoding (:meth:`from_bytes`).
        """
        peer_id = parse_peer_id(s)
        if not peer_id.startswith(_DID_KEY_PREFIX):
            raise InvalidKey(
                "this peer id is a hash of the key, not the key: the full key is needed "
                "(PeerKey.from_bytes); only Ed25519 did:key ids can be turned back into keys"
            )
        payload = _b58decode(peer_id[len(_DID_KEY_PREFIX) :])
        return cls.from_bytes(bytes([_KIND_CODES["ed25519"]]) + payload[2:])

    @property
    def kind(self) -> str:
        """One of :data:`KINDS`."""
        return self._kind

    @property
    def peer_id(self) -> str:
        """Stable text form: ``did:key:z6Mk...`` for Ed25519, ``nautilus:<kind>:z...`` else."""
        return self._peer_id

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of :meth:`to_bytes` (32 bytes)."""
        return self._fingerprint

    @property
    def signature_length(self) -> int:
        """Length in bytes of this kind's signatures (64, 3309 or 3373)."""
        return _SIGNATURE_LENGTHS[self._kind]

    def to_bytes(self) -> bytes:
        """Self-describing encoding: kind byte (1, 2, 3) then the raw public key(s).

        The hybrid (kind 3) is the 32-byte Ed25519 key followed by the 1952-byte
        ML-DSA-65 key.
        """
        return self._raw

    def verify(self, signature: _BytesLike, data: _BytesLike) -> None:
        """Check ``signature`` over ``data``.

        A hybrid signature is the 64-byte Ed25519 signature followed by the
        3309-byte ML-DSA-65 signature, and both must verify.

        Raises:
            TypeError: an argument is not bytes-like.
            nautilus.AuthenticationFailed: wrong length, or the signature (either
                half of a hybrid one) did not verify.
        """
        sig = _as_bytes("signature", signature)
        msg = _as_bytes("data", data)
        expected = _SIGNATURE_LENGTHS[self._kind]
        if len(sig) != expected:
            raise AuthenticationFailed(
                f"{self._kind} signature did not verify: it is {len(sig)} bytes, "
                f"expected {expected}"
            )
        failed: list[str] = []
        # Our C verifier (same accept/reject as OpenSSL's, about twice as fast).
        ed_raw = self._raw[1 : 1 + _ED_PUBLIC]
        if self._ed is not None and not ed25519_verify(ed_raw, sig[:_ED_SIGNATURE], msg):
            failed.append("Ed25519")
        if self._ml is not None:
            try:
                self._ml.verify(sig[-_ML_SIGNATURE:], msg)
            except InvalidSignature:
                failed.append("ML-DSA-65")
        if failed:
            detail = f" ({' and '.join(failed)} part)" if self._kind == "ed25519+ml-dsa-65" else ""
            raise AuthenticationFailed(f"{self._kind} signature did not verify{detail}")

    def matches(self, other: PeerKey | str) -> bool:
        """True if ``other`` is this key, or this key's peer id string.

        A string that is not a well-formed peer id simply does not match.

        Raises:
            TypeError: ``other`` is neither a PeerKey nor a str.
        """
        if isinstance(other, PeerKey):
            return hmac.compare_digest(self._raw, other._raw)
        if isinstance(other, str):
            if not other.isascii():
                return False
            return hmac.compare_digest(self._peer_id, other)
        raise TypeError(f"can only match a PeerKey or a peer id str, not {type(other).__name__}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("PeerKey is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("PeerKey is immutable")

    def __reduce__(self) -> tuple[Callable[[bytes], PeerKey], tuple[bytes]]:
        return (PeerKey.from_bytes, (self._raw,))

    def __repr__(self) -> str:
        return f"<PeerKey {self._peer_id}>"


# --------------------------------------------------------------------------- Identity


class Identity:
    """A private signing identity, optionally carrying a :class:`Certificate`.

    Create one with :meth:`generate` or :meth:`load`. It never shows its private
    key in ``repr`` or messages, and refuses to be pickled.
    """

    __slots__ = ("_certificate", "_ed", "_ml", "_public")

    _ed: ed25519.Ed25519PrivateKey | None
    _ml: mldsa.MLDSA65PrivateKey | None
    _public: PeerKey
    _certificate: Certificate | None

    def __init__(self) -> None:
        raise TypeError("use Identity.generate() or Identity.load()")

    @classmethod
    def _create(
        cls,
        ed: ed25519.Ed25519PrivateKey | None,
        ml: mldsa.MLDSA65PrivateKey | None,
        certificate: Certificate | None,
        public: PeerKey | None = None,
    ) -> Identity:
        if public is None:
            if ed is not None and ml is not None:
                kind = "ed25519+ml-dsa-65"
            elif ed is not None:
                kind = "ed25519"
            else:
                kind = "ml-dsa-65"
            public = PeerKey._create(
                kind,
                ed.public_key() if ed is not None else None,
                ml.public_key() if ml is not None else None,
            )
        self = object.__new__(cls)
        for attr, value in (
            ("_ed", ed),
            ("_ml", ml),
            ("_public", public),
            ("_certificate", certificate),
        ):
            object.__setattr__(self, attr, value)
        return self

    @classmethod
    def generate(cls, kind: str = "ed25519") -> Identity:
        """A new random identity of ``kind`` (one of :data:`KINDS`).

        Raises:
            TypeError: ``kind`` is not a str.
            ValueError: unknown kind (the message lists the allowed ones).
        """
        kind = _check_kind(kind)
        ed = ed25519.Ed25519PrivateKey.generate() if kind in _HAS_ED else None
        ml = mldsa.MLDSA65PrivateKey.generate() if kind in _HAS_ML else None
        return cls._create(ed, ml, None)

    @property
    def kind(self) -> str:
        """One of :data:`KINDS`."""
        return self._public.kind

    @property
    def peer_id(self) -> str:
        """The public key's peer id (see :attr:`PeerKey.peer_id`)."""
        return self._public.peer_id

    @property
    def public(self) -> PeerKey:
        """The public key that peers see."""
        return self._public

    @property
    def certificate(self) -> Certificate | None:
        """The certificate this identity presents, if any."""
        return self._certificate

    def with_certificate(self, cert: Certificate) -> Identity:
        """A new Identity with the same key, carrying ``cert``.

        The certificate is not verified here (that needs the verifier's trusted
        issuers); only its subject key is checked.

        Raises:
            TypeError: ``cert`` is not a Certificate.
            ValueError: ``cert`` was issued for another key.
        """
        if not isinstance(cert, Certificate):
            raise TypeError(f"cert must be a Certificate, not {type(cert).__name__}")
        if cert.subject_key != self._public:
            raise ValueError(
                f"the certificate is for {cert.subject_key.peer_id}, not for this identity "
                f"({self.peer_id})"
            )
        return Identity._create(self._ed, self._ml, cert, self._public)

    def sign(self, data: _BytesLike) -> bytes:
        """Sign ``data``; a hybrid signature is Ed25519 (64) || ML-DSA-65 (3309).

        Raises:
            TypeError: ``data`` is not bytes-like.
        """
        msg = _as_bytes("data", data)
        signature = b""
        if self._ed is not None:
            signature += self._ed.sign(msg)
        if self._ml is not None:
            signature += self._ml.sign(msg)
        return signature

    def _file_text(self) -> str:
        lines = [
            f"{_IDENTITY_MAGIC} {_IDENTITY_VERSION} {self.kind}",
            "# Nautilus private identity: keep this file secret (mode 0600). Do not edit.",
            f"peer-id: {self.peer_id}",
        ]
        if self._ed is not None:
            lines.append(f"ed25519-private: {_b64encode(self._ed.private_bytes_raw())}")
        if self._ml is not None:
            lines.append(f"ml-dsa-65-seed: {_b64encode(self._ml.private_bytes_raw())}")
        if self._certificate is not None:
            lines.append(f"certificate: {_b64encode(self._certificate.to_bytes())}")
        lines.append(_IDENTITY_END)
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        """Write the identity (and its certificate) to ``path``, atomically.

        The file is created with mode 0600 (it is never readable by others, even
        briefly) as a temporary file in the same directory, synced, then renamed
        over ``path``, replacing any existing file. With ``overwrite=False`` it
        is linked to ``path`` instead, which fails if anything is there (a
        dangling symbolic link included): whatever another process put there
        meanwhile is never replaced.

        Raises:
            TypeError: ``path`` is not a str or path-like of str, or
                ``overwrite`` is not a bool.
            ValueError: ``path`` is empty or contains a NUL character.
            FileExistsError: ``overwrite`` is False and ``path`` exists.
            OSError: the directory is missing or not writable, disk full, the
                file system has no hard links (``overwrite=False``), etc.
        """
        data = self._file_text().encode("ascii")
        _write_private_file(path, data, overwrite=overwrite, short_name="nautilus-identity")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read an identity file written by :meth:`save`.

        Raises:
            TypeError: ``path`` is not a str or path-like of str.
            ValueError: ``path`` is empty or contains a NUL character.
            nautilus.IdentityFileError (a ValueError): the file is missing or
                unreadable; its permissions let group or others access it
                (``mode & 0o077``; fix with ``chmod 600``); it is not an
                identity file (random text, a known-peers file); its kind or
                version is unknown; or its content is truncated (no final
                ``end`` line) or corrupt (bad base64, wrong lengths, missing or
                repeated fields, a peer-id or certificate that does not match
                the key). Messages never contain key material.
        """
        target = _fspath("path", path)
        where = f"identity file '{target}'"
        fd = _open_checked(target, os.O_RDONLY, where, 0o077, "chmod 600")
        try:
            raw = _read_all(fd, where, _MAX_IDENTITY_FILE)
        finally:
            os.close(fd)
        return _parse_identity(raw, where)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Identity is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Identity is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Identity cannot be pickled (it holds a private key); use save()")

    def __repr__(self) -> str:
        extra = " certified" if self._certificate is not None else ""
        return f"<Identity {self.kind} {self.peer_id}{extra}>"


def _fspath(name: str, path: object) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, not {type(path).__name__}")
    result = os.fspath(path)
    if not isinstance(result, str):
        raise TypeError(f"{name} must be a str path, not bytes")
    if not result:
        raise ValueError(f"{name} must not be empty")
    if "\0" in result:
        raise ValueError(f"{name} contains a NUL character: no file can have that name")
    return result


def _write_private_file(
    path: object, data: bytes | bytearray, *, overwrite: object, short_name: str
) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically: as a temporary
    file in the same directory, synced, then renamed over ``path``
    (``overwrite``), or linked to it, which fails if anything is there, a
    dangling symbolic link included (never followed). ``short_name`` names
    the temporary file when ``path``'s name leaves no room for the usual
    prefix and suffix. The arguments are checked here (the public callers'
    own, with their names). Raises what :meth:`Identity.save` says it does.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, not {type(overwrite).__name__}")
    target = _fspath("path", path)
    # The directory as the system resolves it: "link/../x" is in the
    # parent of link's target, not lexically next to "link".
    directory = os.path.dirname(target) or os.curdir
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC
    temp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp, flags, 0o600)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # A name near the file system's limit leaves no room for the
        # temporary name's prefix and suffix: a short one then.
        temp = os.path.join(directory, f".{short_name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, flags, 0o600)
    try:
        try:
            if _POSIX:
                os.fchmod(fd, 0o600)  # whatever the umask: exactly owner read/write
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temp, target)
        else:
            os.link(temp, target)  # EEXIST if anything is there (never followed)
            os.unlink(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if _POSIX:
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY | _O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _FileMissing(IdentityFileError):
    """The file does not exist (a KnownPeers file may legitimately not exist yet)."""


def _open_checked(path: str, flags: int, where: str, forbidden: int, fix: str) -> int:
    """Open ``path``; refuse non-regular files and modes with ``forbidden`` bits."""
    try:
        fd = os.open(path, flags | _O_CLOEXEC | _O_NONBLOCK, 0o600)
    except FileNotFoundError:
        raise _FileMissing(f"{where} does not exist") from None
    except PermissionError:
        raise IdentityFileError(f"{where} cannot be opened: permission denied") from None
    except OSError as exc:
        raise IdentityFileError(f"{where} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IdentityFileError(f"{where} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if _POSIX and mode & forbidden:
            who = "group or others" if forbidden == 0o077 else "group or others to write it"
            raise IdentityFileError(
                f"{where} has permissions {mode:04o}, which allow {who}; run: {fix} '{path}'"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(fd: int, where: str, limit: int) -> str:
    chunks: list[bytes] = []
    total = 0
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > limit:
                raise IdentityFileError(f"{where} is too large (over {limit} bytes)")
            chunks.append(chunk)
    except OSError as exc:
        raise IdentityFileError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityFileError(f"{where} is corrupt: not UTF-8 text") from None


def _text_lines(text: str) -> list[str]:
    """Split on newlines only (not on the other characters str.splitlines knows)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _safe_token(token: str) -> str:
    """Show a short header token in a message, or hide it if it could be anything."""
    if len(token) <= 24 and all(c.isascii() and (c.isalnum() or c in "+-._") for c in token):
        return repr(token)
    return "(not shown)"


def _looks_like_known_peers(lines: list[str]) -> bool:
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(_KNOWN_PEERS_HEADER):
            return True
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        if len(fields) != 3:
            return False
        try:
            parse_peer_id(fields[1])
        except InvalidKey:
            return False
        return True
    return False


_IDENTITY_FIELDS: Final = ("peer-id", "ed25519-private", "ml-dsa-65-seed", "certificate")


def _parse_identity(text: str, where: str) -> Identity:
    lines = _text_lines(text)
    if not lines:
        raise IdentityFileError(f"{where} is empty: not a Nautilus identity file")
    header = lines[0].split(" ")
    if header[0] != _IDENTITY_MAGIC:
        if _looks_like_known_peers(lines):
            raise IdentityFileError(f"{where} is a known-peers file, not an identity file")
        raise IdentityFileError(
            f"{where} is not a Nautilus identity file (its first line must be "
            f"'{_IDENTITY_MAGIC} {_IDENTITY_VERSION} <kind>')"
        )
    if len(header) != 3:
        raise IdentityFileError(f"{where} is corrupt: malformed header line")
    if header[1] != _IDENTITY_VERSION:
        raise IdentityFileError(
            f"{where} has unsupported format version {_safe_token(header[1])} "
            f"(this Nautilus reads {_IDENTITY_VERSION})"
        )
    kind = header[2]
    if kind not in KINDS:
        raise IdentityFileError(
            f"{where} has unknown kind {_safe_token(kind)} (known: {', '.join(KINDS)})"
        )
    while len(lines) > 1 and (not lines[-1].strip() or lines[-1].startswith("#")):
        lines.pop()  # (blank lines and comments are ignored, after 'end' too)
    if lines[-1] != _IDENTITY_END:
        raise IdentityFileError(f"{where} is truncated or corrupt: its last line must be 'end'")
    fields: dict[str, tuple[int, str]] = {}
    for lineno, line in enumerate(lines[1:-1], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        field, sep, value = line.partition(": ")
        if not sep:
            raise IdentityFileError(f"{where} line {lineno} is corrupt (expected 'field: value')")
        if field not in _IDENTITY_FIELDS:
            raise IdentityFileError(f"{where} line {lineno} is corrupt (unknown field)")
        if field in fields:
            raise IdentityFileError(f"{where} line {lineno} repeats the field '{field}'")
        fields[field] = (lineno, value.strip())
    wanted = {"peer-id"}
    if kind in _HAS_ED:
        wanted.add("ed25519-private")
    if kind in _HAS_ML:
        wanted.add("ml-dsa-65-seed")
    for field in _IDENTITY_FIELDS:
        if field in wanted and field not in fields:
            raise IdentityFileError(f"{where} is corrupt or truncated: no '{field}' line")
        if field not in wanted and field != "certificate" and field in fields:
            raise IdentityFileError(
                f"{where} line {fields[field][0]} is corrupt: '{field}' is not used by {kind}"
            )

    def secret(field: str, length: int) -> bytes:
        lineno, value = fields[field]
        raw = _b64decode(value, length)
        if raw is None:
            raise IdentityFileError(
                f"{where} line {lineno} is corrupt: '{field}' must be base64 of {length} bytes"
            )
        return raw

    ed = ml = None
    if kind in _HAS_ED:
        ed = ed25519.Ed25519PrivateKey.from_private_bytes(secret("ed25519-private", _ED_PRIVATE))
    if kind in _HAS_ML:
        ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(secret("ml-dsa-65-seed", _ML_SEED))
    identity = Identity._create(ed, ml, None)
    lineno, stored_id = fields["peer-id"]
    if not hmac.compare_digest(stored_id.encode("utf-8"), identity.peer_id.encode("utf-8")):
        raise IdentityFileError(
            f"{where} line {lineno} is corrupt: the peer-id does not match the private key"
        )
    if "certificate" in fields:
        lineno, value = fields["certificate"]
        encoded = _b64decode(value)
        if encoded is None:
            raise IdentityFileError(f"{where} line {lineno} is corrupt: bad base64 certificate")
        try:
            cert = Certificate.from_bytes(encoded)
        except InvalidCertificate as exc:
            raise IdentityFileError(f"{where} line {lineno}: corrupt certificate ({exc})") from None
        if cert.subject_key != identity.public:
            raise IdentityFileError(
                f"{where} line {lineno}: the certificate is for another key "
                f"({cert.subject_key.peer_id})"
            )
        identity = Identity._create(ed, ml, cert, identity.public)
    return identity


# --------------------------------------------------------------------------- Certificate


class _Reader:
    __slots__ = ("_data", "pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self._data):
            raise InvalidCertificate(f"certificate is truncated (in the {what})")
        chunk = self._data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def f64(self, what: str) -> float:
        value: float = struct.unpack(">d", self.take(8, what))[0]
        return value

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos


def _encode_tbs(
    name: str, subject: PeerKey, issuer: PeerKey, not_before: float, not_after: float
) -> bytes:
    name_raw = name.encode("utf-8")
    subject_raw = subject.to_bytes()
    issuer_raw = issuer.to_bytes()
    return b"".join(
        (
            bytes([_CERT_VERSION, len(name_raw)]),
            name_raw,
            struct.pack(">H", len(subject_raw)),
            subject_raw,
            struct.pack(">H", len(issuer_raw)),
            issuer_raw,
            struct.pack(">dd", not_before, not_after),
        )
    )


class Certificate:
    """An issuer's signed statement that ``subject_name`` owns ``subject_key``
    between ``not_before`` and ``not_after`` (UNIX seconds).

    Immutable and hashable. The binary encoding is in ``docs/identity.md``; the
    issuer signs ``b"nautilus certificate v1\\x00"`` followed by every field but
    the signature.
    """

    __slots__ = (
        "_issuer_key",
        "_not_after",
        "_not_before",
        "_signature",
        "_subject_key",
        "_subject_name",
        "_tbs",
    )

    _subject_name: str
    _subject_key: PeerKey
    _issuer_key: PeerKey
    _not_before: float
    _not_after: float
    _signature: bytes
    _tbs: bytes

    def __init__(self) -> None:
        raise TypeError("use Certificate.issue() or Certificate.from_bytes()")

    @classmethod
    def _create(
        cls,
        name: str,
        subject: PeerKey,
        issuer: PeerKey,
        not_before: float,
        not_after: float,
        signature: bytes,
        tbs: bytes,
    ) -> Certificate:
        self = object.__new__(cls)
        for attr, value in (
            ("_subject_name", name),
            ("_subject_key", subject),
            ("_issuer_key", issuer),
            ("_not_before", not_before),
            ("_not_after", not_after),
            ("_signature", signature),
            ("_tbs", tbs),
        ):
            object.__setattr__(self, attr, value)
        return self

    @classmethod
    def issue(
        cls,
        issuer: Identity,
        subject: PeerKey,
        name: str,
        *,
        not_before: float,
        not_after: float,
    ) -> Certificate:
        """Sign a certificate for ``subject`` named ``name`` with ``issuer``'s key.

        ``name`` is 1 to 255 bytes of UTF-8 without control characters.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: ``not_after <= not_before``, a time is not finite (or
                an int too large for a float), or ``name`` is empty, too long or
                contains control characters.
        """
        if not isinstance(issuer, Identity):
            raise TypeError(f"issuer must be an Identity, not {type(issuer).__name__}")
        if not isinstance(subject, PeerKey):
            raise TypeError(f"subject must be a PeerKey, not {type(subject).__name__}")
        _check_name("name", name, allow_space=True)
        start = _check_time("not_before", not_before)
        end = _check_time("not_after", not_after)
        if end <= start:
            raise ValueError("not_after must be later than not_before")
        tbs = _encode_tbs(name, subject, issuer.public, start, end)
        signature = issuer.sign(_CERT_DOMAIN + tbs)
        return cls._create(name, subject, issuer.public, start, end, signature, tbs)

    @classmethod
    def from_bytes(cls, data: _BytesLike) -> Certificate:
        """Parse :meth:`to_bytes`'s encoding. The signature is not checked here.

        Raises:
            TypeError: ``data`` is not bytes-like.
            InvalidCertificate (a NautilusError and ValueError): truncated,
                trailing bytes, unknown version, bad name, malformed key,
                impossible validity period, or a signature of the wrong length
                for the issuer's kind.
        """
        raw = _as_bytes("data", data)
        reader = _Reader(raw)
        version = reader.u8("version")
        if version != _CERT_VERSION:
            raise InvalidCertificate(f"unsupported certificate version {version}")
        name_raw = reader.take(reader.u8("name length"), "name")
        try:
            name = _check_name("certificate name", name_raw.decode("utf-8"), allow_space=True)
        except (UnicodeDecodeError, ValueError) as exc:
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            raise InvalidCertificate(f"bad certificate name: {reason}") from None
        keys: list[PeerKey] = []
        for what in ("subject key", "issuer key"):
            key_raw = reader.take(reader.u16(f"{what} length"), what)
            try:
                keys.append(PeerKey.from_bytes(key_raw))
            except InvalidKey as exc:
                raise InvalidCertificate(f"bad certificate {what}: {exc}") from None
        not_before = reader.f64("not_before")
        not_after = reader.f64("not_after")
        if not (math.isfinite(not_before) and math.isfinite(not_after)):
            raise InvalidCertificate("certificate validity times must be finite")
        if not_after <= not_before:
            raise InvalidCertificate("certificate not_after is not later than not_before")
        tbs = raw[: reader.pos]
        signature = reader.take(reader.u16("signature length"), "signature")
        if reader.remaining:
            raise InvalidCertificate(f"certificate has {reader.remaining} trailing bytes")
        subject, issuer = keys
        if len(signature) != issuer.signature_length:
            raise InvalidCertificate(
                f"certificate signature is {len(signature)} bytes; an {issuer.kind} issuer "
                f"signs with {issuer.signature_length}"
            )
        return cls._create(name, subject, issuer, not_before, not_after, signature, tbs)

    def to_bytes(self) -> bytes:
        """Binary encoding: version, name, subject key, issuer key, validity, signature."""
        return self._tbs + struct.pack(">H", len(self._signature)) + self._signature

    @property
    def subject_name(self) -> str:
        """The name the issuer vouches for."""
        return self._subject_name

    @property
    def subject_key(self) -> PeerKey:
        """The key the certificate is for."""
        return self._subject_key

    @property
    def issuer_key(self) -> PeerKey:
        """The key that signed the certificate."""
        return self._issuer_key

    @property
    def not_before(self) -> float:
        """Start of validity, UNIX seconds."""
        return self._not_before

    @property
    def not_after(self) -> float:
        """End of validity (inclusive), UNIX seconds."""
        return self._not_after

    @property
    def signature(self) -> bytes:
        """The issuer's signature."""
        return self._signature

    def verify(self, trusted_issuers: Iterable[PeerKey | str], now: float) -> None:
        """Check that a trusted issuer signed this certificate and that it is valid at ``now``.

        Checks, in order: the issuer is one of ``trusted_issuers`` (keys or peer
        ids), the signature verifies, ``now <= not_after``, ``now >= not_before``.

        Raises:
            TypeError: an argument has the wrong type.
            nautilus.InvalidKey (a ValueError): a peer id in ``trusted_issuers``
                is malformed.
            ValueError: ``now`` is not finite (or an int too large for a float).
            nautilus.AuthenticationFailed: "unknown issuer", "bad signature",
                "expired" or "not yet valid", with the subject name and times.
        """
        issuers = _peer_ref_list("trusted_issuers", trusted_issuers)
        when = _check_time("now", now)
        label = f"certificate for {self._subject_name!r}"
        if not any(self._issuer_key.matches(ref) for ref in issuers):
            raise AuthenticationFailed(
                f"{label}: unknown issuer {self._issuer_key.peer_id} (not in trusted_issuers)"
            )
        try:
            self._issuer_key.verify(self._signature, _CERT_DOMAIN + self._tbs)
        except AuthenticationFailed:
            raise AuthenticationFailed(
                f"{label}: bad signature (it was not signed by issuer "
                f"{self._issuer_key.peer_id}, or was altered)"
            ) from None
        if when > self._not_after:
            raise CertificateExpired(
                f"{label} expired at {_format_time(self._not_after)} (now {_format_time(when)})"
            )
        if when < self._not_before:
            raise CertificateExpired(
                f"{label} is not yet valid: valid from {_format_time(self._not_before)} "
                f"(now {_format_time(when)})"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Certificate):
            return NotImplemented
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Certificate is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("Certificate is immutable")

    def __reduce__(self) -> tuple[Callable[[bytes], Certificate], tuple[bytes]]:
        return (Certificate.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (
            f"<Certificate {self._subject_name!r} subject={self._subject_key.peer_id} "
            f"issuer={self._issuer_key.peer_id} valid {_format_time(self._not_before)}"
            f" to {_format_time(self._not_after)}>"
        )


# --------------------------------------------------------------------------- KnownPeers

_Entries = dict[str, list[tuple[int, PeerKey]]]


class KnownPeers:
    """A trust-on-first-use file of ``name peer_id base64(key)`` lines.

    The first key seen for a name is recorded; later the same name must present
    the same key. The file is re-read on every call, and appends happen under an
    exclusive ``flock``, so several contexts or processes can share one file.
    Blank lines and lines starting with ``#`` are ignored.
    """

    __slots__ = ("_cache", "_path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Use the file at ``path`` (created on the first new entry).

        Raises:
            TypeError: ``path`` is not a str or path-like of str.
            ValueError: ``path`` is empty or contains a NUL character.
            nautilus.IdentityFileError: the file exists but is unreadable,
                corrupt, or writable by group or others.
        """
        # Absolute, so that a later os.chdir() cannot make it another file;
        # not normalised, so that "link/../known" is the file the system
        # opens (next to link's target), not the one lexically next to "link".
        given = _fspath("path", path)
        self._path = given if os.path.isabs(given) else os.path.join(os.getcwd(), given)
        self._cache: tuple[str, _Entries] | None = None  # the text last parsed, its entries
        self._load()

    @property
    def path(self) -> str:
        """The file's path (made absolute when given; ".." kept, for the system to resolve)."""
        return self._path

    @property
    def _where(self) -> str:
        return f"known-peers file '{self._path}'"

    def _load(self) -> _Entries:
        try:
            fd = _open_checked(self._path, os.O_RDONLY, self._where, 0o022, "chmod go-w")
        except _FileMissing:
            return {}
        try:
            _lock(fd, exclusive=False)
            return self._entries(fd)
        finally:
            os.close(fd)

    def _entries(self, fd: int) -> _Entries:
        """The entries of the open (and locked) file, read whole each time but
        parsed again only if its text changed since the last parse (each
        line's key costs a decoding: a file of thousands of peers took a
        tenth of a second per handshake)."""
        text = _read_all(fd, self._where, _MAX_KNOWN_PEERS_FILE)
        cached = self._cache
        if cached is not None and cached[0] == text:
            return cached[1]
        entries = self._parse(text)
        self._cache = (text, entries)
        return entries

    def _parse(self, text: str) -> _Entries:
        entries: _Entries = {}
        for lineno, line in enumerate(_text_lines(text), start=1):
            stripped = line.strip()
            if lineno == 1 and stripped.startswith(_IDENTITY_MAGIC):
                raise IdentityFileError(
                    f"{self._where} is an identity file, not a known-peers file"
                )
            if not stripped or stripped.startswith("#"):
                continue
            fields = stripped.split()
            if len(fields) != 3:
                self._corrupt(lineno, "expected 'name peer-id key'")
            name, peer_id, encoded = fields
            try:
                _check_name("name", name, allow_space=False)
            except ValueError:
                self._corrupt(lineno, "invalid name")
            raw = _b64decode(encoded)
            if raw is None:
                self._corrupt(lineno, "the key is not valid base64")
            try:
                key = PeerKey.from_bytes(raw)
            except InvalidKey:
                self._corrupt(lineno, "the key is not a valid peer key")
            if not hmac.compare_digest(key.peer_id.encode(), peer_id.encode("utf-8")):
                self._corrupt(lineno, "the peer id does not match the key")
            entries.setdefault(name, []).append((lineno, key))
        return entries

    def _corrupt(self, lineno: int, reason: str) -> NoReturn:
        raise IdentityFileError(f"{self._where} line {lineno} is corrupt: {reason}")

    def _lookup(self, entries: _Entries, name: str, key: PeerKey) -> bool | None:
        """False if ``name`` is known with ``key``, None if unknown; raises if changed."""
        if name not in entries:
            return None
        for lineno, known in entries[name]:
            if known != key:
                raise AuthenticationFailed(
                    f"the key of peer {name!r} changed: {self._where} line {lineno} records "
                    f"{known.peer_id}, but the peer presented {key.peer_id}. This may be an "
                    f"attack; if the peer really changed its key, delete line {lineno} of "
                    f"'{self._path}'"
                )
        return False

    def check(self, name: str, key: PeerKey) -> bool:
        """Trust on first use: True if ``name`` was unknown and is now recorded
        with ``key``, False if it is known with ``key``.

        Raises:
            TypeError: ``name`` is not a str or ``key`` not a PeerKey.
            ValueError: ``name`` is empty, over 255 bytes, or contains
                whitespace or control characters, or starts with '#'.
            nautilus.AuthenticationFailed: ``name`` is known with another key;
                the message names the file, the line and the name.
            nautilus.IdentityFileError: the file is unreadable, unwritable,
                corrupt (the message names the line), or writable by group or
                others.
        """
        _check_name("name", name, allow_space=False)
        if not isinstance(key, PeerKey):
            raise TypeError(f"key must be a PeerKey, not {type(key).__name__}")
        known = self._lookup(self._load(), name, key)
        if known is not None:
            return known
        try:
            fd = _open_checked(
                self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, self._where, 0o022, "chmod go-w"
            )
        except _FileMissing:
            raise IdentityFileError(
                f"{self._where} cannot be created: its directory does not exist"
            ) from None
        try:
            _lock(fd, exclusive=True)
            known = self._lookup(self._entries(fd), name, key)
            if known is not None:  # another context recorded it meanwhile
                return known
            size = os.fstat(fd).st_size
            prefix = ""
            if not size:
                prefix = _KNOWN_PEERS_HEADER + "\n"
                if _POSIX:
                    os.fchmod(fd, 0o600)
            else:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":
                    prefix = "\n"
            line = f"{prefix}{name} {key.peer_id} {_b64encode(key.to_bytes())}\n"
            _write_all(fd, line.encode("utf-8"))
            os.fsync(fd)
        except OSError as exc:
            raise IdentityFileError(f"{self._where} cannot be written: {exc.strerror}") from None
        finally:
            os.close(fd)
        return True

    def _known(self, name: str, key: PeerKey) -> bool:
        """True if ``name`` is recorded with ``key``, False if it is not
        recorded; nothing is written. Raises as :meth:`check`."""
        _check_name("name", name, allow_space=False)
        return self._lookup(self._load(), name, key) is False

    def __contains__(self, name: object) -> bool:
        """True if ``name`` has an entry (the file is re-read).

        Raises:
            nautilus.IdentityFileError: as for :meth:`check`.
        """
        return isinstance(name, str) and name in self._load()

    def __repr__(self) -> str:
        return f"<KnownPeers '{self._path}'>"


# --------------------------------------------------------------------------- TrustStore


def _host_of(name: str) -> str | None:
    """The host of a ``host:port`` or ``[host]:port`` name (the default server
    name of the socket and asyncio APIs), else None."""
    head, sep, port = name.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        return None
    if head.startswith("[") and head.endswith("]"):
        head = head[1:-1]
        if ":" in head and not _is_ipv6(head):
            return None  # ("[alice.example:443]:1" is not for "alice.example:443")
    elif ":" in head or "[" in head or "]" in head:
        return None
    return head or None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _names_host(subject: str, name: str) -> bool:
    """Whether a certificate for ``subject`` is for the host of ``name``
    (``host:port``): host names compare without regard to ASCII case, and
    only ASCII case. (``str.lower()`` would map other letters too: KELVIN
    SIGN U+212A to "k", so that a certificate for another name, "\u212aexample",
    would be valid for "kexample:443".)"""
    host = _host_of(name)
    return host is not None and subject.translate(_ASCII_LOWER) == host.translate(_ASCII_LOWER)


_NOTHING_CONFIGURED: Final = (
    "no trust configured (set trusted_peers, known_peers_file or trusted_issuers, "
    "or pass expected_peer)"
)


class TrustStore:
    """Decides whether a peer's key is trusted; see :meth:`verify` for the rules."""

    __slots__ = ("_issuers", "_known_peers", "_pinned", "_record")

    def __init__(
        self,
        trusted_peers: Iterable[PeerKey | str] = (),
        known_peers_file: str | os.PathLike[str] | None = None,
        trusted_issuers: Iterable[PeerKey | str] = (),
    ) -> None:
        """Trust sources: pinned keys or peer ids, a TOFU file, certificate issuers.

        Raises:
            TypeError: an argument has the wrong type (the message names it);
                a single str or PeerKey where an iterable is expected counts.
            nautilus.InvalidKey (a ValueError): a peer id string is malformed.
            ValueError: ``known_peers_file`` is empty or contains a NUL character.
            nautilus.IdentityFileError: the known-peers file exists but is
                unreadable, corrupt, or writable by group or others.
        """
        self._pinned = _peer_ref_list("trusted_peers", trusted_peers)
        self._issuers = _peer_ref_list("trusted_issuers", trusted_issuers)
        if known_peers_file is None:
            self._known_peers: KnownPeers | None = None
        else:
            self._known_peers = KnownPeers(_fspath("known_peers_file", known_peers_file))
        self._record = True  # rule 4 records a first use

    def _lookup_only(self) -> TrustStore:
        """The same trust settings, except that rule 4 records nothing: a name
        the known-peers file does not hold is not trusted. For keys that did
        not prove themselves in this handshake (a cached ticket's)."""
        view = object.__new__(TrustStore)
        view._pinned, view._issuers = self._pinned, self._issuers
        view._known_peers, view._record = self._known_peers, False
        return view

    @property
    def configured(self) -> bool:
        """True if any trust source (pins, known-peers file, issuers) is set."""
        return bool(self._pinned or self._issuers or self._known_peers is not None)

    @property
    def trusted_peers(self) -> tuple[PeerKey | str, ...]:
        """The pinned keys and peer ids."""
        return self._pinned

    @property
    def trusted_issuers(self) -> tuple[PeerKey | str, ...]:
        """The certificate issuers' keys and peer ids."""
        return self._issuers

    @property
    def known_peers(self) -> KnownPeers | None:
        """The trust-on-first-use file, if set."""
        return self._known_peers

    def verify(
        self,
        key: PeerKey,
        *,
        certificate: Certificate | None,
        name: str | None,
        now: float,
        expected_peer: PeerKey | str | None = None,
    ) -> str:
        """Decide whether ``key`` (a peer that proved it holds it) is trusted.

        The first rule that applies decides:

        1. ``expected_peer`` given: ``key`` must be it -> ``"expected"``.
        2. ``key`` is in ``trusted_peers`` -> ``"pinned"``.
        3. a ``certificate`` and ``trusted_issuers``: it must verify at ``now``,
           be for ``key``, and (if ``name`` is given) be for ``name`` ->
           ``"certificate"``.
        4. a known-peers file and ``name``: ``"first-use"`` (now recorded) or
           ``"known-peers"``.

        Returns:
            How the peer was trusted (one of the strings above).

        Raises:
            TypeError: an argument has the wrong type.
            nautilus.InvalidKey (a ValueError): ``expected_peer`` is a malformed
                peer id.
            ValueError: ``now`` is not finite (or an int too large for a float).
            nautilus.AuthenticationFailed: "wrong peer: expected X, got Y";
                the certificate's failure (unknown issuer, bad signature,
                expired, not yet valid, other key, other name); a changed key
                in the known-peers file; a ``name`` that cannot be a known-peers
                name (it may come from the peer); or "peer X is not trusted: ..."
                saying what was missing.
            nautilus.IdentityFileError: the known-peers file is unusable.
        """
        if not isinstance(key, PeerKey):
            raise TypeError(f"key must be a PeerKey, not {type(key).__name__}")
        if certificate is not None and not isinstance(certificate, Certificate):
            raise TypeError(
                f"certificate must be a Certificate or None, not {type(certificate).__name__}"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        when = _check_time("now", now)

        if expected_peer is not None:
            expected = _check_peer_ref("expected_peer", expected_peer)
            if key.matches(expected):
                return "expected"
            raise AuthenticationFailed(
                f"wrong peer: expected {_ref_id(expected)}, got {key.peer_id}"
            )

        if any(key.matches(ref) for ref in self._pinned):
            return "pinned"

        if certificate is not None and self._issuers:
            certificate.verify(self._issuers, when)
            if certificate.subject_key != key:
                raise AuthenticationFailed(
                    f"certificate for {certificate.subject_name!r} is for "
                    f"{certificate.subject_key.peer_id}, not for the peer's key {key.peer_id}"
                )
            subject = certificate.subject_name
            if name is not None and subject != name and not _names_host(subject, name):
                raise AuthenticationFailed(f"certificate is for {subject!r}, not for {name!r}")
            return "certificate"

        if self._known_peers is not None and name is not None:
            try:
                _check_name("name", name, allow_space=False)
            except ValueError as exc:
                raise AuthenticationFailed(
                    f"peer {key.peer_id} is not trusted: its name {name!r} cannot be looked up "
                    f"in the known-peers file ({exc})"
                ) from None
            if self._record:
                return "first-use" if self._known_peers.check(name, key) else "known-peers"
            if self._known_peers._known(name, key):
                return "known-peers"
            raise AuthenticationFailed(
                f"peer {key.peer_id} is not trusted: {name!r} is not in the known-peers file "
                "(and a key that did not prove itself here is not recorded)"
            )

        if not self.configured:
            reason = _NOTHING_CONFIGURED
        else:
            reasons: list[str] = []
            if self._pinned:
                reasons.append("it is not in trusted_peers")
            if self._issuers:
                reasons.append("it presented no certificate")
            elif certificate is not None:
                reasons.append("its certificate cannot be checked (no trusted_issuers)")
            if self._known_peers is not None:
                reasons.append("no peer name was given to look up in the known-peers file")
            reason = "; ".join(reasons)
        raise AuthenticationFailed(f"peer {key.peer_id} is not trusted: {reason}")

    def __repr__(self) -> str:
        known = f" known_peers={self._known_peers.path!r}" if self._known_peers else ""
        return (
            f"<TrustStore trusted_peers={len(self._pinned)} "
            f"trusted_issuers={len(self._issuers)}{known}>"
        )
