"""nautilus.kem: round trips, byte layouts, cross-checks and error handling."""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus import ClosedError, InvalidKey
from nautilus.kem import (
    GROUPS,
    KEMPrivateKey,
    KEMPublicKey,
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
    MLKEM1024PrivateKey,
    MLKEM1024PublicKey,
    X25519KEMPrivateKey,
    X25519KEMPublicKey,
    X25519MLKEM768PrivateKey,
    X25519MLKEM768PublicKey,
    X25519MLKEM1024PrivateKey,
    X25519MLKEM1024PublicKey,
)

pytestmark = pytest.mark.native

# group: (public, ciphertext, shared secret, seed, entropy) lengths in bytes
SIZES = {
    "mlkem768": (1184, 1088, 32, 64, 32),
    "mlkem1024": (1568, 1568, 32, 64, 32),
    "x25519": (32, 32, 32, 32, 32),
    "x25519-mlkem768": (1216, 1120, 64, 96, 64),
    "x25519-mlkem1024": (1600, 1600, 64, 96, 64),
}
ALL = pytest.mark.parametrize("cls", list(GROUPS.values()), ids=list(GROUPS))
MLKEM = pytest.mark.parametrize(
    "cls", [MLKEM768PrivateKey, MLKEM1024PrivateKey], ids=["mlkem768", "mlkem1024"]
)
HYBRID = pytest.mark.parametrize(
    ("cls", "mlkem_cls"),
    [
        (X25519MLKEM768PrivateKey, MLKEM768PrivateKey),
        (X25519MLKEM1024PrivateKey, MLKEM1024PrivateKey),
    ],
    ids=["x25519-mlkem768", "x25519-mlkem1024"],
)
# Every class that has an ML-KEM part, with the length of that part of the public key.
WITH_MLKEM = pytest.mark.parametrize(
    "cls",
    [MLKEM768PrivateKey, MLKEM1024PrivateKey, X25519MLKEM768PrivateKey, X25519MLKEM1024PrivateKey],
    ids=["mlkem768", "mlkem1024", "x25519-mlkem768", "x25519-mlkem1024"],
)
MLKEM_PUBLIC_LEN = {"mlkem768": 1184, "mlkem1024": 1568}
MLKEM_CT_LEN = {"mlkem768": 1088, "mlkem1024": 1568}


def _mlkem_part(group: str) -> str:
    return group.removeprefix("x25519-")


def _seed(cls: type[KEMPrivateKey], tag: int) -> bytes:
    """A fixed, distinct seed for ``cls``."""
    return bytes((tag * 7 + i) % 256 for i in range(cls.seed_length()))


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _x25519_raw(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _rejection_key(seed: bytes, ciphertext: bytes) -> bytes:
    """FIPS 203 implicit rejection: K-bar = J(z || c) = SHAKE256(z || c, 32), z = seed[32:64]."""
    return hashlib.shake_256(seed[32:64] + ciphertext).digest(32)


# --- registry and sizes ------------------------------------------------------------


def test_groups_registry() -> None:
    assert list(GROUPS) == [
        "x25519-mlkem768",
        "x25519-mlkem1024",
        "mlkem1024",
        "mlkem768",
        "x25519",
    ]
    for name, cls in GROUPS.items():
        assert name == cls.GROUP
        assert name == cls.PUBLIC_KEY_CLASS.GROUP
        assert issubclass(cls, KEMPrivateKey)


@ALL
def test_sizes(cls: type[KEMPrivateKey]) -> None:
    public, ciphertext, shared, seed, _ = SIZES[cls.GROUP]
    assert cls.seed_length() == seed
    assert cls.PUBLIC_KEY_CLASS.public_bytes_length() == public
    assert cls.PUBLIC_KEY_CLASS.ciphertext_length() == ciphertext
    key = cls.generate()
    got_shared, got_ct = key.public_key().encapsulate()
    assert len(key.public_key().public_bytes_raw()) == public
    assert len(got_ct) == ciphertext
    assert len(got_shared) == shared
    assert len(key.private_bytes_raw()) == seed


# --- round trips ---------------------------------------------------------------


@ALL
def test_round_trip(cls: type[KEMPrivateKey]) -> None:
    key = cls.generate()
    shared, ciphertext = key.public_key().encapsulate()
    assert key.decapsulate(ciphertext) == shared
    assert key.decapsulate(bytearray(ciphertext)) == shared
    assert key.decapsulate(memoryview(ciphertext)) == shared
    # Through the wire form of the public key.
    public = cls.PUBLIC_KEY_CLASS.from_public_bytes(key.public_key().public_bytes_raw())
    assert type(public) is cls.PUBLIC_KEY_CLASS
    shared2, ciphertext2 = public.encapsulate()
    assert key.decapsulate(ciphertext2) == shared2
    # Fresh randomness each time.
    assert ciphertext2 != ciphertext
    assert shared2 != shared


@ALL
def test_a_private_keys_public_key_holds_none_of_its_material(cls: type[KEMPrivateKey]) -> None:
    """The public key of a private key used to share the private key's C
    handle: kept (in a cache, say), it kept the private key alive, seed
    included, after the private key object was gone."""
    import gc

    from nautilus import _bindings as _b

    key = cls.generate()
    public = key.public_key()
    shared, ciphertext = public.encapsulate()
    assert key.decapsulate(ciphertext) == shared
    assert public._handle is not key._handle
    if _b.KEM_SIZES[cls.GROUP].seed:
        assert len(_b.kem_seed_bytes(key._handle)) == cls.seed_length()
    del key
    gc.collect()
    with pytest.raises(ClosedError, match="lacks the data"):
        _b.kem_seed_bytes(public._handle)


@ALL
def test_generate_is_random(cls: type[KEMPrivateKey]) -> None:
    a, b = cls.generate(), cls.generate()
    assert a.public_key() != b.public_key()
    assert a.private_bytes_raw() != b.private_bytes_raw()
    shared, ciphertext = a.public_key().encapsulate()
    assert b.decapsulate(ciphertext) != shared


@ALL
def test_seed_reproduces_key(cls: type[KEMPrivateKey]) -> None:
    key = cls.generate()
    seed = key.private_bytes_raw()
    again = cls.from_seed_bytes(seed)
    assert again.public_key() == key.public_key()
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    assert again.private_bytes_raw() == seed
    shared, ciphertext = key.public_key().encapsulate()
    assert again.decapsulate(ciphertext) == shared


@ALL
def test_fixed_seed_is_deterministic(cls: type[KEMPrivateKey]) -> None:
    seed = _seed(cls, 1)
    a = cls.from_seed_bytes(seed)
    b = cls.from_seed_bytes(bytearray(seed))
    assert a.public_key().public_bytes_raw() == b.public_key().public_bytes_raw()
    assert a.private_bytes_raw() == seed
    other = cls.from_seed_bytes(_seed(cls, 2))
    assert other.public_key() != a.public_key()


@ALL
def test_encapsulate_with_entropy_is_deterministic(cls: type[KEMPrivateKey]) -> None:
    key = cls.from_seed_bytes(_seed(cls, 3))
    entropy_len = SIZES[cls.GROUP][4]
    entropy = bytes(range(1, entropy_len + 1))
    first = key.public_key()._encapsulate_with_entropy(entropy)
    assert key.public_key()._encapsulate_with_entropy(entropy) == first
    assert key.decapsulate(first[1]) == first[0]
    other = key.public_key()._encapsulate_with_entropy(_flip(entropy, 5))
    assert other[1] != first[1]
    assert key.decapsulate(other[1]) == other[0]


@MLKEM
def test_expanded_form_round_trip(cls: Any) -> None:
    key = cls.from_seed_bytes(_seed(cls, 4))
    dk = key.private_bytes_expanded()
    assert len(dk) == {"mlkem768": 2400, "mlkem1024": 3168}[cls.GROUP]
    loaded = cls.from_expanded_bytes(dk)
    assert loaded.private_bytes_expanded() == dk
    assert loaded.public_key() == key.public_key()
    shared, ciphertext = key.public_key().encapsulate()
    assert loaded.decapsulate(ciphertext) == shared
    # Implicit rejection behaves the same (z is carried in dk).
    bad = _flip(ciphertext, 10)
    assert loaded.decapsulate(bad) == key.decapsulate(bad)


@MLKEM
def test_expanded_key_has_no_seed(cls: Any) -> None:
    loaded = cls.from_expanded_bytes(cls.generate().private_bytes_expanded())
    with pytest.raises(ClosedError):
        loaded.private_bytes_raw()


# --- hybrid and X25519 byte layout ------------------------------------------------------


@HYBRID
def test_hybrid_layout(cls: Any, mlkem_cls: Any) -> None:
    seed = _seed(cls, 5)
    key = cls.from_seed_bytes(seed)
    mlkem = mlkem_cls.from_seed_bytes(seed[:64])
    x25519 = X25519PrivateKey.from_private_bytes(seed[64:])
    assert key.private_bytes_raw() == seed

    public = key.public_key().public_bytes_raw()
    assert public == mlkem.public_key().public_bytes_raw() + _x25519_raw(x25519)

    shared, ciphertext = key.public_key().encapsulate()
    assert len(shared) == 64
    mlkem_ct_len = MLKEM_CT_LEN[mlkem_cls.GROUP]
    assert len(ciphertext) == mlkem_ct_len + 32
    assert shared[:32] == mlkem.decapsulate(ciphertext[:mlkem_ct_len])
    peer = X25519PublicKey.from_public_bytes(ciphertext[mlkem_ct_len:])
    assert shared[32:] == x25519.exchange(peer)


@HYBRID
def test_hybrid_encapsulation_layout(cls: Any, mlkem_cls: Any) -> None:
    seed = _seed(cls, 6)
    key = cls.from_seed_bytes(seed)
    x25519 = X25519PrivateKey.from_private_bytes(seed[64:])
    m = bytes(range(32))
    ephemeral = bytes(range(100, 132))

    shared, ciphertext = key.public_key()._encapsulate_with_entropy(m + ephemeral)
    mlkem_public = mlkem_cls.from_seed_bytes(seed[:64]).public_key()
    mlkem_shared, mlkem_ct = mlkem_public._encapsulate_with_entropy(m)
    eph = X25519PrivateKey.from_private_bytes(ephemeral)
    assert ciphertext == mlkem_ct + _x25519_raw(eph)
    assert shared == mlkem_shared + eph.exchange(x25519.public_key())
    assert key.decapsulate(ciphertext) == shared


@HYBRID
def test_hybrid_decapsulates_assembled_ciphertext(cls: Any, mlkem_cls: Any) -> None:
    """A ciphertext built from independent parts decapsulates to the two secrets."""
    seed = _seed(cls, 7)
    key = cls.from_seed_bytes(seed)
    mlkem_shared, mlkem_ct = mlkem_cls.from_seed_bytes(seed[:64]).public_key().encapsulate()
    eph = X25519PrivateKey.generate()
    x_shared = eph.exchange(X25519PrivateKey.from_private_bytes(seed[64:]).public_key())
    assert key.decapsulate(mlkem_ct + _x25519_raw(eph)) == mlkem_shared + x_shared


@HYBRID
def test_hybrid_public_key_from_parts(cls: Any, mlkem_cls: Any) -> None:
    mlkem = mlkem_cls.generate()
    x25519 = X25519PrivateKey.generate()
    public = cls.PUBLIC_KEY_CLASS.from_public_bytes(
        mlkem.public_key().public_bytes_raw() + _x25519_raw(x25519)
    )
    shared, ciphertext = public.encapsulate()
    split = MLKEM_CT_LEN[mlkem_cls.GROUP]
    assert shared[:32] == mlkem.decapsulate(ciphertext[:split])
    assert shared[32:] == x25519.exchange(X25519PublicKey.from_public_bytes(ciphertext[split:]))


@HYBRID
def test_hybrid_tampered_mlkem_part(cls: Any, mlkem_cls: Any) -> None:
    seed = _seed(cls, 8)
    key = cls.from_seed_bytes(seed)
    shared, ciphertext = key.public_key().encapsulate()
    bad = _flip(ciphertext, 0)
    got = key.decapsulate(bad)
    split = MLKEM_CT_LEN[mlkem_cls.GROUP]
    assert got[:32] == _rejection_key(seed, bad[:split])
    assert got[:32] != shared[:32]
    assert got[32:] == shared[32:]


def test_x25519_unclamped_scalar_round_trips() -> None:
    scalar = b"\xff" * 32  # clamping would change the first and last bytes
    key = X25519KEMPrivateKey.from_seed_bytes(scalar)
    assert key.private_bytes_raw() == scalar
    again = X25519KEMPrivateKey.from_seed_bytes(key.private_bytes_raw())
    assert again.public_key() == key.public_key()
    assert key.public_key().public_bytes_raw() == _x25519_raw(
        X25519PrivateKey.from_private_bytes(scalar)
    )


def test_x25519_kem_matches_cryptography() -> None:
    scalar = bytes(range(40, 72))
    key = X25519KEMPrivateKey.from_seed_bytes(scalar)
    reference = X25519PrivateKey.from_private_bytes(scalar)
    assert key.private_bytes_raw() == scalar
    assert key.public_key().public_bytes_raw() == _x25519_raw(reference)

    shared, ciphertext = key.public_key().encapsulate()
    assert shared == reference.exchange(X25519PublicKey.from_public_bytes(ciphertext))

    ephemeral = bytes(range(200, 232))
    shared, ciphertext = key.public_key()._encapsulate_with_entropy(ephemeral)
    eph = X25519PrivateKey.from_private_bytes(ephemeral)
    assert ciphertext == _x25519_raw(eph)
    assert shared == eph.exchange(reference.public_key())

    peer = X25519PrivateKey.generate()
    assert key.decapsulate(_x25519_raw(peer)) == peer.exchange(reference.public_key())


# --- cross-checks with cryptography's ML-KEM ------------------------------------------


def _cryptography_mlkem() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import mlkem
    except ImportError:
        pytest.skip("this cryptography has no hazmat.primitives.asymmetric.mlkem (needs >= 47)")
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        mlkem.MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm:
        pytest.skip("cryptography's OpenSSL backend does not support ML-KEM")
    return mlkem


CROSS = pytest.mark.parametrize(
    ("ours", "their_name"),
    [(MLKEM768PrivateKey, "MLKEM768"), (MLKEM1024PrivateKey, "MLKEM1024")],
    ids=["mlkem768", "mlkem1024"],
)


@CROSS
def test_cryptography_same_key_from_seed(ours: Any, their_name: str) -> None:
    mlkem = _cryptography_mlkem()
    theirs_cls = getattr(mlkem, f"{their_name}PrivateKey")
    key = ours.generate()
    theirs = theirs_cls.from_seed_bytes(key.private_bytes_raw())
    assert theirs.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    # And the other way: their seed, our key.
    theirs = theirs_cls.generate()
    key = ours.from_seed_bytes(theirs.private_bytes_raw())
    assert key.public_key().public_bytes_raw() == theirs.public_key().public_bytes_raw()


@CROSS
def test_encapsulate_here_decapsulate_there(ours: Any, their_name: str) -> None:
    mlkem = _cryptography_mlkem()
    theirs = getattr(mlkem, f"{their_name}PrivateKey").generate()
    public = ours.PUBLIC_KEY_CLASS.from_public_bytes(theirs.public_key().public_bytes_raw())
    for _ in range(3):
        shared, ciphertext = public.encapsulate()
        assert theirs.decapsulate(ciphertext) == shared


@CROSS
def test_encapsulate_there_decapsulate_here(ours: Any, their_name: str) -> None:
    mlkem = _cryptography_mlkem()
    key = ours.generate()
    public = getattr(mlkem, f"{their_name}PublicKey").from_public_bytes(
        key.public_key().public_bytes_raw()
    )
    for _ in range(3):
        shared, ciphertext = public.encapsulate()
        assert key.decapsulate(ciphertext) == shared


@CROSS
def test_implicit_rejection_agrees_with_cryptography(ours: Any, their_name: str) -> None:
    mlkem = _cryptography_mlkem()
    key = ours.generate()
    theirs = getattr(mlkem, f"{their_name}PrivateKey").from_seed_bytes(key.private_bytes_raw())
    _, ciphertext = key.public_key().encapsulate()
    bad = _flip(ciphertext, len(ciphertext) - 1, 7)
    assert key.decapsulate(bad) == theirs.decapsulate(bad)


# --- errors ----------------------------------------------------------------------------


BAD_TYPES = pytest.mark.parametrize("bad", ["x" * 32, 32, None, [0] * 32], ids=type)


@ALL
@BAD_TYPES
def test_wrong_types(cls: type[KEMPrivateKey], bad: Any) -> None:
    key = cls.generate()
    with pytest.raises(TypeError):
        cls.from_seed_bytes(bad)
    with pytest.raises(TypeError):
        cls.PUBLIC_KEY_CLASS.from_public_bytes(bad)
    with pytest.raises(TypeError):
        key.decapsulate(bad)
    with pytest.raises(TypeError):
        key.public_key()._encapsulate_with_entropy(bad)


@MLKEM
@BAD_TYPES
def test_wrong_type_expanded(cls: Any, bad: Any) -> None:
    with pytest.raises(TypeError):
        cls.from_expanded_bytes(bad)


def _wrong_lengths(n: int) -> list[int]:
    return [0, 1, n - 1, n + 1, 2 * n]


@ALL
def test_wrong_lengths(cls: type[KEMPrivateKey]) -> None:
    public_len, ct_len, _, seed_len, entropy_len = SIZES[cls.GROUP]
    key = cls.generate()
    for n in _wrong_lengths(seed_len):
        with pytest.raises(ValueError, match=str(seed_len)):
            cls.from_seed_bytes(bytes(n))
    for n in _wrong_lengths(public_len):
        with pytest.raises(ValueError, match=str(public_len)):
            cls.PUBLIC_KEY_CLASS.from_public_bytes(bytes(n))
    for n in _wrong_lengths(ct_len):
        with pytest.raises(ValueError, match=str(ct_len)):
            key.decapsulate(bytes(n))
    for n in _wrong_lengths(entropy_len):
        with pytest.raises(ValueError, match=str(entropy_len)):
            key.public_key()._encapsulate_with_entropy(bytes(n))


@MLKEM
def test_wrong_length_expanded(cls: Any) -> None:
    dk = cls.generate().private_bytes_expanded()
    for bad in (dk[:-1], dk + b"\x00", b"", dk + dk):
        with pytest.raises(ValueError, match=str(len(dk))):
            cls.from_expanded_bytes(bad)


def _set_coefficient(public: bytes, index: int, value: int) -> bytes:
    """Set 12-bit coefficient ``index`` of an ML-KEM encapsulation key's t-hat."""
    out = bytearray(public)
    pos = 3 * (index // 2)
    packed = out[pos] | out[pos + 1] << 8 | out[pos + 2] << 16
    shift = 12 * (index % 2)
    packed = (packed & ~(0xFFF << shift)) | (value << shift)
    out[pos : pos + 3] = packed.to_bytes(3, "little")
    return bytes(out)


@WITH_MLKEM
@pytest.mark.parametrize("value", [3329, 4095])
@pytest.mark.parametrize("where", ["first", "last"])
def test_unreduced_public_key(cls: type[KEMPrivateKey], value: int, where: str) -> None:
    public = cls.generate().public_key().public_bytes_raw()
    mlkem_len = MLKEM_PUBLIC_LEN[_mlkem_part(cls.GROUP)]
    count = (mlkem_len - 32) * 2 // 3  # 256 coefficients per polynomial, 12 bits each
    index = 0 if where == "first" else count - 1
    bad = _set_coefficient(public, index, value)
    assert bad != public
    with pytest.raises(InvalidKey):
        cls.PUBLIC_KEY_CLASS.from_public_bytes(bad)


def test_unreduced_first_bytes_literally() -> None:
    """The first coefficient 0xFFF, by editing the first two bytes directly."""
    public = bytearray(MLKEM768PrivateKey.generate().public_key().public_bytes_raw())
    public[0] = 0xFF
    public[1] |= 0x0F
    with pytest.raises(InvalidKey) as info:
        MLKEM768PublicKey.from_public_bytes(bytes(public))
    assert isinstance(info.value, ValueError)


@WITH_MLKEM
def test_largest_reduced_coefficient_is_accepted(cls: type[KEMPrivateKey]) -> None:
    public = cls.generate().public_key().public_bytes_raw()
    edited = _set_coefficient(_set_coefficient(public, 0, 3328), 1, 0)
    loaded = cls.PUBLIC_KEY_CLASS.from_public_bytes(edited)
    assert loaded.public_bytes_raw() == edited
    shared, ciphertext = loaded.encapsulate()
    assert len(shared) == SIZES[cls.GROUP][2]
    assert len(ciphertext) == SIZES[cls.GROUP][1]


@MLKEM
@pytest.mark.parametrize("region", ["ek coefficient", "rho", "H(ek)"], ids=["ek", "rho", "hash"])
def test_expanded_key_check(cls: Any, region: str) -> None:
    dk = cls.generate().private_bytes_expanded()
    k = {"mlkem768": 3, "mlkem1024": 4}[cls.GROUP]
    ek_start = 384 * k
    index = {
        "ek coefficient": ek_start + 5,
        "rho": ek_start + 384 * k + 3,
        "H(ek)": len(dk) - 64,
    }[region]
    with pytest.raises(InvalidKey):
        cls.from_expanded_bytes(_flip(dk, index))


@MLKEM
def test_expanded_key_z_is_not_checked(cls: Any) -> None:
    """z (the last 32 bytes) only feeds implicit rejection."""
    key = cls.generate()
    seed = key.private_bytes_raw()
    dk = _flip(key.private_bytes_expanded(), -1)
    loaded = cls.from_expanded_bytes(dk)
    shared, ciphertext = key.public_key().encapsulate()
    assert loaded.decapsulate(ciphertext) == shared
    bad = _flip(ciphertext, 3)
    changed_z = _flip(seed, 63)
    assert loaded.decapsulate(bad) == _rejection_key(changed_z, bad)


@MLKEM
def test_implicit_rejection(cls: Any) -> None:
    key = cls.from_seed_bytes(_seed(cls, 9))
    seed = key.private_bytes_raw()
    shared, ciphertext = key.public_key().encapsulate()
    for index, bit in ((0, 0), (len(ciphertext) // 2, 3), (len(ciphertext) - 1, 7)):
        bad = _flip(ciphertext, index, bit)
        got = key.decapsulate(bad)
        assert len(got) == 32
        assert got != shared
        assert got == _rejection_key(seed, bad)
        assert key.decapsulate(bad) == got
    assert key.decapsulate(ciphertext) == shared


# --- X25519 low-order points ------------------------------------------------------------

# u-coordinates of points of small order (and non-canonical encodings of them).
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ((1 << 255) - 19 - 1).to_bytes(32, "little"),  # p - 1
    ((1 << 255) - 19).to_bytes(32, "little"),  # p, i.e. 0
    ((1 << 255) - 19 + 1).to_bytes(32, "little"),  # p + 1, i.e. 1
]


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p[:4].hex())
def test_x25519_low_order_decapsulate(point: bytes) -> None:
    key = X25519KEMPrivateKey.generate()
    with pytest.raises(InvalidKey):
        key.decapsulate(point)


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p[:4].hex())
def test_x25519_low_order_encapsulate(point: bytes) -> None:
    public = X25519KEMPublicKey.from_public_bytes(point)
    with pytest.raises(InvalidKey):
        public.encapsulate()
    with pytest.raises(InvalidKey):
        public._encapsulate_with_entropy(bytes(range(32)))


@HYBRID
def test_hybrid_low_order_x25519_part(cls: Any, mlkem_cls: Any) -> None:
    key = cls.generate()
    _, ciphertext = key.public_key().encapsulate()
    with pytest.raises(InvalidKey):
        key.decapsulate(ciphertext[:-32] + bytes(32))
    public = cls.PUBLIC_KEY_CLASS.from_public_bytes(
        key.public_key().public_bytes_raw()[:-32] + bytes(32)
    )
    with pytest.raises(InvalidKey):
        public.encapsulate()


# --- object behaviour ----------------------------------------------------------------


@ALL
def test_repr_has_no_secrets(cls: type[KEMPrivateKey]) -> None:
    key = cls.generate()
    seed = key.private_bytes_raw()
    texts = [repr(key), str(key), repr(key.public_key())]
    secrets = [seed]
    if hasattr(key, "private_bytes_expanded"):
        secrets.append(key.private_bytes_expanded()[:32])
    for text in texts:
        assert cls.__name__.removesuffix("PrivateKey") in text
        for secret in secrets:
            for start in range(0, len(secret) - 4, 4):
                assert secret[start : start + 4].hex() not in text.lower()
    # The public prefix is what repr shows.
    assert key.public_key().public_bytes_raw()[:4].hex() in repr(key)


@ALL
def test_private_key_cannot_be_pickled(cls: type[KEMPrivateKey]) -> None:
    key = cls.generate()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps(key, protocol=protocol)
    for duplicate in (copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            duplicate(key)


@ALL
def test_public_key_copies_and_pickles_by_its_encoding(cls: type[KEMPrivateKey]) -> None:
    key = cls.generate()
    public = key.public_key()
    assert copy.copy(public) is public  # immutable
    assert copy.deepcopy(public) is public
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        loaded = pickle.loads(pickle.dumps(public, protocol=protocol))
        assert type(loaded) is type(public)
        assert loaded == public
        assert loaded._handle is not public._handle
        shared, ciphertext = loaded.encapsulate()
        assert key.decapsulate(ciphertext) == shared


@ALL
def test_constructors_are_not_public(cls: type[KEMPrivateKey]) -> None:
    key = cls.generate()
    raw = key.public_key().public_bytes_raw()
    ways = "from_expanded_bytes" if cls in (MLKEM768PrivateKey, MLKEM1024PrivateKey) else "seed"
    for args in ((), (bytes(cls.seed_length()),), (key._handle,), (None, b"")):
        with pytest.raises(TypeError, match=rf"use {cls.__name__}\.generate\(\).*{ways}"):
            cls(*args)
        with pytest.raises(
            TypeError, match=rf"use {cls.PUBLIC_KEY_CLASS.__name__}\.from_public_bytes"
        ):
            cls.PUBLIC_KEY_CLASS(*args)
    with pytest.raises(TypeError, match="from_public_bytes"):
        cls.PUBLIC_KEY_CLASS(raw, raw)
    with pytest.raises(TypeError, match="from_public_bytes"):
        cls.PUBLIC_KEY_CLASS(key._handle, raw)


@ALL
def test_public_key_equality_and_hash(cls: type[KEMPrivateKey]) -> None:
    key = cls.generate()
    public = key.public_key()
    loaded = cls.PUBLIC_KEY_CLASS.from_public_bytes(public.public_bytes_raw())
    assert public == loaded
    assert not public != loaded  # noqa: SIM202 - exercising __ne__
    assert hash(public) == hash(loaded)
    assert len({public, loaded}) == 1
    other = cls.generate().public_key()
    assert public != other
    assert len({public, loaded, other}) == 2
    assert public != public.public_bytes_raw()
    assert public != object()


def test_public_keys_of_different_groups_differ() -> None:
    x = X25519KEMPrivateKey.generate().public_key()
    m768 = MLKEM768PrivateKey.generate().public_key()
    m1024 = MLKEM1024PrivateKey.generate().public_key()
    h768 = X25519MLKEM768PublicKey.from_public_bytes(m768.public_bytes_raw() + x.public_bytes_raw())
    h1024 = X25519MLKEM1024PublicKey.from_public_bytes(
        m1024.public_bytes_raw() + x.public_bytes_raw()
    )
    keys = [x, m768, m1024, h768, h1024]
    assert len(set(keys)) == 5
    for a in keys:
        for b in keys:
            assert (a == b) is (a is b)
    assert isinstance(m768, MLKEM768PublicKey)
    assert isinstance(m1024, MLKEM1024PublicKey)


# --- properties -----------------------------------------------------------------------

MLKEM_PAIRS = [(MLKEM768PrivateKey, 1088), (MLKEM1024PrivateKey, 1568)]


@settings(max_examples=40)
@given(seed=st.binary(min_size=64, max_size=64), which=st.sampled_from(MLKEM_PAIRS))
def test_any_seed_gives_working_mlkem_pair(seed: bytes, which: tuple[Any, int]) -> None:
    cls, _ = which
    key = cls.from_seed_bytes(seed)
    assert key.private_bytes_raw() == seed
    shared, ciphertext = key.public_key().encapsulate()
    assert key.decapsulate(ciphertext) == shared
    assert cls.from_expanded_bytes(key.private_bytes_expanded()).decapsulate(ciphertext) == shared


@settings(max_examples=40)
@given(data=st.data(), which=st.sampled_from(MLKEM_PAIRS))
def test_any_ciphertext_decapsulates(data: st.DataObject, which: tuple[Any, int]) -> None:
    cls, ct_len = which
    seed = bytes(range(64))
    key = cls.from_seed_bytes(seed)
    ciphertext = data.draw(st.binary(min_size=ct_len, max_size=ct_len), label="ciphertext")
    got = key.decapsulate(ciphertext)
    # A ciphertext not made by encapsulation is (overwhelmingly likely) rejected implicitly.
    assert got == _rejection_key(seed, ciphertext)


@settings(max_examples=40)
@given(scalar=st.binary(min_size=32, max_size=32), peer=st.binary(min_size=32, max_size=32))
def test_x25519_kem_agrees_with_cryptography(scalar: bytes, peer: bytes) -> None:
    key = X25519KEMPrivateKey.from_seed_bytes(scalar)
    reference = X25519PrivateKey.from_private_bytes(scalar)
    assert key.private_bytes_raw() == scalar  # stored as given, not clamped
    assert key.public_key().public_bytes_raw() == _x25519_raw(reference)
    try:
        expected: bytes | None = reference.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # cryptography rejects the all-zero result too
        expected = None
    if expected is None or expected == bytes(32):
        with pytest.raises(InvalidKey):
            key.decapsulate(peer)
    else:
        assert key.decapsulate(peer) == expected


@settings(max_examples=25)
@given(
    seed=st.binary(min_size=96, max_size=96),
    entropy=st.binary(min_size=64, max_size=64),
    cls=st.sampled_from([X25519MLKEM768PrivateKey, X25519MLKEM1024PrivateKey]),
)
def test_hybrid_entropy_round_trip(seed: bytes, entropy: bytes, cls: Any) -> None:
    key = cls.from_seed_bytes(seed)
    shared, ciphertext = key.public_key()._encapsulate_with_entropy(entropy)
    assert key.decapsulate(ciphertext) == shared
    eph = X25519PrivateKey.from_private_bytes(entropy[32:])
    assert ciphertext[-32:] == _x25519_raw(eph)
    assert shared[32:] == eph.exchange(X25519PrivateKey.from_private_bytes(seed[64:]).public_key())


@pytest.mark.parametrize(
    "call",
    [
        lambda: KEMPrivateKey.generate(),
        lambda: KEMPrivateKey.from_seed_bytes(bytes(64)),
        lambda: KEMPrivateKey.seed_length(),
        lambda: KEMPublicKey.from_public_bytes(bytes(32)),
        lambda: KEMPublicKey.public_bytes_length(),
        lambda: KEMPublicKey.ciphertext_length(),
    ],
)
def test_the_base_classes_refuse_to_make_keys_naming_a_concrete_class(
    call: Callable[[], object],
) -> None:
    with pytest.raises(TypeError, match=r"KEM(Private|Public)Key is a base class .* MLKEM768"):
        call()


# --- the C calls' own checks ---------------------------------------------------------
# The key classes check lengths and kinds before calling C; the binding layer
# is called here directly, so that each check of csrc/nt_kem.c holds by itself.


@ALL
def test_c_refuses_every_wrong_length_as_a_length_error(cls: type[KEMPrivateKey]) -> None:
    from nautilus import _bindings as _b

    group, sizes = cls.GROUP, _b.KEM_SIZES[cls.GROUP]
    key = cls.generate()
    public = key.public_key().public_bytes_raw()
    shared, ciphertext = key.public_key().encapsulate()
    for delta in (-1, 1):
        with pytest.raises(ValueError, match="wrong length"):
            _b.kem_from_public(group, public + b"\x00" if delta > 0 else public[:-1])
        with pytest.raises(ValueError, match="wrong length"):
            _b.kem_generate(group, bytes(sizes.seed + delta))
        with pytest.raises(ValueError, match="wrong length"):
            _b.kem_encapsulate(group, key.public_key()._live(), bytes(sizes.entropy + delta))
        with pytest.raises(ValueError, match="wrong length"):
            _b.kem_decapsulate(
                group, key._handle, ciphertext + b"\x00" if delta > 0 else ciphertext[:-1]
            )
        if sizes.private:  # (pure ML-KEM: the expanded form, not the seed)
            dk = key.private_bytes_expanded()
            with pytest.raises(ValueError, match="wrong length"):
                _b.kem_from_private(group, dk + b"\x00" if delta > 0 else dk[:-1])
    assert key.decapsulate(ciphertext) == shared


@ALL
def test_c_refuses_ciphertext_and_shared_secret_buffers_one_byte_short(
    cls: type[KEMPrivateKey],
) -> None:
    """The binding layer always passes buffers of the right size: C's own
    checks of their capacities are asked here, and nothing is written."""
    from nautilus._bindings import KEM_SIZES, ffi, lib

    sizes = KEM_SIZES[cls.GROUP]
    key = cls.generate()
    public = key.public_key()
    shared, ciphertext = public.encapsulate()
    ct = bytearray(b"\xaa" * sizes.ciphertext)
    ss = bytearray(b"\xaa" * sizes.shared)
    ct_buf, ss_buf = ffi.from_buffer(ct), ffi.from_buffer(ss)
    for ct_cap, ss_cap in (
        (sizes.ciphertext - 1, sizes.shared),
        (sizes.ciphertext, sizes.shared - 1),
    ):
        rc = lib.nt_kem_encapsulate(public._live(), ffi.NULL, 0, ct_buf, ct_cap, ss_buf, ss_cap)
        assert rc == lib.NT_ERR_BUFFER
    rc = lib.nt_kem_decapsulate(key._handle, ciphertext, len(ciphertext), ss_buf, sizes.shared - 1)
    assert rc == lib.NT_ERR_BUFFER
    assert (ct, ss) == (b"\xaa" * sizes.ciphertext, b"\xaa" * sizes.shared)
    rc = lib.nt_kem_decapsulate(key._handle, ciphertext, len(ciphertext), ss_buf, sizes.shared)
    assert (rc, bytes(ss)) == (lib.NT_OK, shared)


@pytest.mark.parametrize("group", ["x25519", "x25519-mlkem768", "x25519-mlkem1024"])
def test_c_has_no_expanded_private_form_without_pure_mlkem(group: str) -> None:
    from nautilus import _bindings as _b

    out = _b.ffi.new("nt_key **")
    for length in (0, 32, 2400, 3168):
        rc = _b.lib.nt_key_from_private(_b.KEM_IDS[group], bytes(max(length, 1)), length, out)
        assert rc == _b.lib.NT_ERR_ARG
        assert out[0] == _b.ffi.NULL


@ALL
def test_c_public_bytes_refuses_a_short_buffer(cls: type[KEMPrivateKey]) -> None:
    from nautilus._bindings import ffi, lib

    key = cls.generate()
    size = len(key.public_key().public_bytes_raw())
    buf = bytearray(b"\xaa" * size)
    written = ffi.new("size_t *")
    rc = lib.nt_key_public_bytes(key._handle, ffi.from_buffer(buf), size - 1, written)
    assert rc == lib.NT_ERR_BUFFER
    assert written[0] == 0
    assert buf == b"\xaa" * size
    assert lib.nt_key_public_bytes(key._handle, ffi.from_buffer(buf), size, written) == lib.NT_OK
    assert bytes(buf) == key.public_key().public_bytes_raw()


@pytest.mark.parametrize("group", ["x25519-mlkem768", "x25519-mlkem1024"])
def test_c_encapsulation_with_an_ephemeral_takes_only_an_x25519_private_key(group: str) -> None:
    from nautilus import _bindings as _b

    public = GROUPS[group].generate().public_key()
    wrong = (
        GROUPS[group].generate()._handle,  # an X25519 part, but a hybrid key
        X25519KEMPrivateKey.generate().public_key()._live(),  # no private part
    )
    for ephemeral in wrong:
        with pytest.raises(ClosedError, match="lacks the data"):
            _b.kem_encapsulate(group, public._live(), None, ephemeral)


@ALL
def test_c_decapsulation_needs_a_private_key(cls: type[KEMPrivateKey]) -> None:
    from nautilus import _bindings as _b

    public = cls.generate().public_key()
    _shared, ciphertext = public.encapsulate()
    with pytest.raises(ClosedError, match="lacks the data"):
        _b.kem_decapsulate(cls.GROUP, public._live(), ciphertext)


@HYBRID
def test_c_a_hybrid_failing_on_its_x25519_part_leaves_no_shared_secret(
    cls: Any, mlkem_cls: Any
) -> None:
    """The ML-KEM part is computed first: when the X25519 part then fails, C
    must wipe what the ML-KEM part wrote into the caller's buffer."""
    from nautilus import _bindings as _b

    sizes = _b.KEM_SIZES[cls.GROUP]
    key = cls.generate()
    _, ciphertext = key.public_key().encapsulate()
    bad_public = _b.kem_from_public(
        cls.GROUP, key.public_key().public_bytes_raw()[:-32] + bytes(32)
    )
    ct = _b.ffi.new("uint8_t[]", sizes.ciphertext)
    shared = _b.ffi.new("uint8_t[]", sizes.shared)
    for call in (
        lambda: _b.lib.nt_kem_encapsulate(
            bad_public, _b.ffi.NULL, 0, ct, sizes.ciphertext, shared, sizes.shared
        ),
        lambda: _b.lib.nt_kem_decapsulate(
            key._handle, ciphertext[:-32] + bytes(32), sizes.ciphertext, shared, sizes.shared
        ),
    ):
        _b.ffi.memmove(shared, b"\xaa" * sizes.shared, sizes.shared)
        assert call() == _b.lib.NT_ERR_ZERO_SECRET
        assert bytes(_b.ffi.buffer(shared)) == bytes(sizes.shared)
