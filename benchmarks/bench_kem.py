"""KEM benchmarks: Nautilus against ``cryptography`` on the same operations.

ML-KEM-768/1024 keygen, encapsulation and decapsulation, and the hybrids
X25519+ML-KEM-768/1024. ``cryptography`` has no hybrid KEM, so its side is
composed the way Nautilus composes it (see ``nautilus.kem``): ML-KEM part
first, then X25519; encapsulation makes an ephemeral X25519 key whose public
key is the X25519 part of the ciphertext; the shared secret is ML-KEM secret
|| X25519 secret.

Keygen on both sides includes producing the raw public key bytes, since
Nautilus's ``generate()`` does. Every benchmarked result is checked once,
outside the timing, against the other library.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from nautilus import kem

X25519_BYTES = 32


class Algo(NamedTuple):
    group: str
    nautilus: type[kem.KEMPrivateKey]
    crypto_private: Any  # cryptography's ML-KEM private key class
    crypto_public: Any  # and its public key class
    hybrid: bool


ALGOS = [
    Algo(
        "mlkem768",
        kem.MLKEM768PrivateKey,
        mlkem.MLKEM768PrivateKey,
        mlkem.MLKEM768PublicKey,
        False,
    ),
    Algo(
        "mlkem1024",
        kem.MLKEM1024PrivateKey,
        mlkem.MLKEM1024PrivateKey,
        mlkem.MLKEM1024PublicKey,
        False,
    ),
    Algo(
        "x25519-mlkem768",
        kem.X25519MLKEM768PrivateKey,
        mlkem.MLKEM768PrivateKey,
        mlkem.MLKEM768PublicKey,
        True,
    ),
    Algo(
        "x25519-mlkem1024",
        kem.X25519MLKEM1024PrivateKey,
        mlkem.MLKEM1024PrivateKey,
        mlkem.MLKEM1024PublicKey,
        True,
    ),
]
OPS = ("keygen", "encaps", "decaps")


class CryptoKEM:
    """The baseline: one algorithm done with ``cryptography``'s primitives."""

    def __init__(self, algo: Algo) -> None:
        self.algo = algo
        self.ciphertext_length = algo.nautilus.PUBLIC_KEY_CLASS.ciphertext_length()
        self.mlkem_ciphertext = self.ciphertext_length - (X25519_BYTES if algo.hybrid else 0)

    def keygen(self) -> tuple[Any, bytes]:
        """A private key (for a hybrid, a pair of them) and the raw public key."""
        priv = self.algo.crypto_private.generate()
        pub = priv.public_key().public_bytes_raw()
        if not self.algo.hybrid:
            return priv, pub
        xpriv = x25519.X25519PrivateKey.generate()
        return (priv, xpriv), pub + xpriv.public_key().public_bytes_raw()

    def load_public(self, raw: bytes) -> Any:
        """A public key (for a hybrid, a pair) from Nautilus's encoding."""
        if not self.algo.hybrid:
            return self.algo.crypto_public.from_public_bytes(raw)
        return (
            self.algo.crypto_public.from_public_bytes(raw[:-X25519_BYTES]),
            x25519.X25519PublicKey.from_public_bytes(raw[-X25519_BYTES:]),
        )

    def encaps(self, pub: Any) -> tuple[bytes, bytes]:
        """(shared secret, ciphertext)."""
        if not self.algo.hybrid:
            shared, ct = pub.encapsulate()
            return shared, ct
        mpub, xpub = pub
        shared, ct = mpub.encapsulate()
        eph = x25519.X25519PrivateKey.generate()
        return shared + eph.exchange(xpub), ct + eph.public_key().public_bytes_raw()

    def decaps(self, priv: Any, ct: bytes) -> bytes:
        if not self.algo.hybrid:
            return bytes(priv.decapsulate(ct))
        mpriv, xpriv = priv
        split = self.mlkem_ciphertext
        peer = x25519.X25519PublicKey.from_public_bytes(ct[split:])
        return mpriv.decapsulate(ct[:split]) + xpriv.exchange(peer)


def _setup(benchmark: Any, algo: Algo, op: str, impl: str) -> None:
    benchmark.group = f"kem {algo.group} {op}"
    benchmark.extra_info.update({"kind": "kem", "alg": algo.group, "op": op, "impl": impl})


params = pytest.mark.parametrize(
    ("algo", "op"),
    [(a, op) for a in ALGOS for op in OPS],
    ids=[f"{a.group}-{op}" for a in ALGOS for op in OPS],
)


@params
def test_kem_nautilus(benchmark: Any, algo: Algo, op: str) -> None:
    _setup(benchmark, algo, op, "nautilus")
    crypto = CryptoKEM(algo)
    priv = algo.nautilus.generate()
    pub = priv.public_key()
    if op == "keygen":
        new = benchmark(algo.nautilus.generate)
        # The new key decapsulates what cryptography encapsulates to its public key.
        shared, ct = crypto.encaps(crypto.load_public(new.public_key().public_bytes_raw()))
        assert new.decapsulate(ct) == shared
    elif op == "encaps":
        shared, ct = benchmark(pub.encapsulate)
        assert len(ct) == crypto.ciphertext_length
        assert priv.decapsulate(ct) == shared
    else:
        shared, ct = crypto.encaps(crypto.load_public(pub.public_bytes_raw()))
        assert benchmark(priv.decapsulate, ct) == shared


@params
def test_kem_cryptography(benchmark: Any, algo: Algo, op: str) -> None:
    _setup(benchmark, algo, op, "cryptography")
    crypto = CryptoKEM(algo)
    npub_cls = algo.nautilus.PUBLIC_KEY_CLASS
    priv, raw = crypto.keygen()
    pub = crypto.load_public(raw)
    if op == "keygen":
        new_priv, new_raw = benchmark(crypto.keygen)
        # cryptography's new key decapsulates what Nautilus encapsulates to it.
        shared, ct = npub_cls.from_public_bytes(new_raw).encapsulate()
        assert crypto.decaps(new_priv, ct) == shared
    elif op == "encaps":
        shared, ct = benchmark(crypto.encaps, pub)
        assert len(ct) == crypto.ciphertext_length
        assert crypto.decaps(priv, ct) == shared
    else:
        shared, ct = npub_cls.from_public_bytes(raw).encapsulate()
        assert benchmark(crypto.decaps, priv, ct) == shared
