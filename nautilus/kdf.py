"""HKDF (RFC 5869) on ``cryptography``'s HMAC, for the handshake key schedule."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = ["HASHES", "hkdf", "hkdf_expand", "hkdf_extract"]

HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


def _hash(name: str) -> hashes.HashAlgorithm:
    if not isinstance(name, str):
        raise TypeError(f"algorithm must be a str, not {type(name).__name__}")
    try:
        return HASHES[name]()
    except KeyError:
        raise ValueError(f"unknown hash {name!r}; expected one of {', '.join(HASHES)}") from None


def _bytes(name: str, value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes-like, not {type(value).__name__}")


def hkdf_extract(algorithm: str, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract: ``HMAC(salt or zeros, ikm)``.

    Raises:
        TypeError: non-bytes input, or ``algorithm`` not a str.
        ValueError: unknown hash.
    """
    h = _hash(algorithm)
    s = _bytes("salt", salt) or bytes(h.digest_size)
    mac = hmac.HMAC(s, h)
    mac.update(_bytes("ikm", ikm))
    return mac.finalize()


def hkdf_expand(algorithm: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand to ``length`` bytes.

    ``prk`` is a pseudorandom key of at least HashLen bytes (RFC 5869 section
    2.3), usually the output of :func:`hkdf_extract`.

    Raises:
        TypeError: non-bytes input, or ``algorithm`` not a str.
        ValueError: unknown hash, ``prk`` shorter than HashLen, or ``length``
            not in 1..255*HashLen.
    """
    h = _hash(algorithm)
    key = _bytes("prk", prk)
    if len(key) < h.digest_size:
        raise ValueError(
            f"prk must be at least {h.digest_size} bytes (the {algorithm} output size), "
            f"got {len(key)}"
        )
    if not isinstance(length, int) or isinstance(length, bool):
        raise TypeError(f"length must be an int, not {type(length).__name__}")
    if not 1 <= length <= 255 * h.digest_size:
        raise ValueError(f"length must be in 1..{255 * h.digest_size}, got {length}")
    return HKDFExpand(h, length, _bytes("info", info)).derive(key)


def hkdf(algorithm: str, ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Extract then HKDF-Expand (RFC 5869 section 2).

    Raises:
        as :func:`hkdf_extract` and :func:`hkdf_expand`.
    """
    return hkdf_expand(algorithm, hkdf_extract(algorithm, salt, ikm), info, length)
