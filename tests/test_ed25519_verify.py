"""Our C Ed25519 verifier (csrc/nt_ed25519.c) against RFC 8032 and OpenSSL.

The verifier must accept and reject exactly what OpenSSL's Ed25519 verify does
(through ``cryptography``), malformed keys and signatures included. Inputs for
the edge cases are crafted with a small pure-Python model of edwards25519 below.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus._bindings import ED25519_PUBLIC_BYTES, ED25519_SIGNATURE_BYTES, ed25519_verify

# --------------------------------------------------------------------------- model
# Curve constants from RFC 8032 section 5.1.
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int]  # affine (x, y)


def _add(p: tuple[int, int, int, int], q: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Extended-coordinate addition (complete for edwards25519)."""
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(k: int, pt: Point) -> Point:
    q: tuple[int, ...] = (pt[0], pt[1], 1, pt[0] * pt[1] % P)
    r: tuple[int, ...] = (0, 1, 1, 0)
    while k:
        if k & 1:
            r = _add(r, q)  # type: ignore[arg-type]
        q = _add(q, q)  # type: ignore[arg-type]
        k >>= 1
    zi = pow(r[2], P - 2, P)
    return (r[0] * zi % P, r[1] * zi % P)


def add(p: Point, q: Point) -> Point:
    s = _add((p[0], p[1], 1, p[0] * p[1] % P), (q[0], q[1], 1, q[0] * q[1] % P))
    zi = pow(s[2], P - 2, P)
    return (s[0] * zi % P, s[1] * zi % P)


def recover_x(y: int, sign: int) -> int | None:
    y %= P
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return (-x) % P if (x & 1) != sign else x


def encode(pt: Point) -> bytes:
    return (pt[1] | ((pt[0] & 1) << 255)).to_bytes(32, "little")


def le(v: int) -> bytes:
    return v.to_bytes(32, "little")


BASE_Y = 4 * pow(5, P - 2, P) % P
BASE = (recover_x(BASE_Y, 0) or 0, BASE_Y)


def _torsion() -> list[Point]:
    """The 8 points of order dividing 8 (multiples of L times a curve point)."""
    y = 2
    while recover_x(y, 0) is None or mul(4 * L, (recover_x(y, 0) or 0, y)) == (0, 1):
        y += 1
    gen = mul(L, (recover_x(y, 0) or 0, y))
    pts, cur = [], (0, 1)
    for _ in range(8):
        pts.append(cur)
        cur = add(cur, gen)
    return pts


TORSION = _torsion()
TORSION_ENCODINGS = [encode(t) for t in TORSION]
# Every kind of malformed or special point encoding: the 8 torsion points, the
# same with the sign bit flipped (x = 0 with the sign bit set for (0, 1) and
# (0, -1)), y = p + k (non-canonical, k < 19) with either sign bit, and y values
# with no point on the curve.
SPECIAL_ENCODINGS = (
    TORSION_ENCODINGS
    + [e[:31] + bytes([e[31] ^ 0x80]) for e in TORSION_ENCODINGS]
    + [le(P + k) for k in range(19)]
    + [le((P + k) | (1 << 255)) for k in range(19)]
    + [le(2**255 - 1), le(2**256 - 1)]
    + [le(y) for y in range(2, 40) if recover_x(y, 0) is None][:6]
)
SPECIAL_SCALARS = [0, 1, L - 1, L, L + 1, L + 7, 2 * L, 2**253 - 1, 2**255, 2**256 - 1]


def openssl_accepts(pub: bytes, sig: bytes, msg: bytes) -> bool:
    key = ed25519.Ed25519PublicKey.from_public_bytes(pub)  # loads any 32 bytes
    try:
        key.verify(sig, msg)
    except InvalidSignature:
        return False
    return True


def same(pub: bytes, sig: bytes, msg: bytes) -> bool:
    """Assert our verdict equals OpenSSL's and return it."""
    ours = ed25519_verify(pub, sig, msg)
    theirs = openssl_accepts(pub, sig, msg)
    assert ours is theirs, (pub.hex(), sig.hex(), msg.hex(), ours, theirs)
    return ours


def challenge(r: bytes, pub: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + pub + msg).digest(), "little") % L


# --------------------------------------------------------------------------- RFC 8032
# RFC 8032 section 7.1, "Test Vectors for Ed25519": TEST 1, TEST 2, TEST 3
# (secret key, public key, message, signature), copied from the RFC.
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    pub, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert sk.public_key().public_bytes_raw() == pub  # the vector is what we think it is
    assert sk.sign(msg) == sig
    assert ed25519_verify(pub, sig, msg) is True
    assert ed25519_verify(pub, sig, msg + b"\x00") is False
    bad = bytearray(sig)
    bad[0] ^= 1
    assert ed25519_verify(pub, bytes(bad), msg) is False


def test_model_matches_rfc() -> None:
    """The test model itself: B encodes as in RFC 8032, torsion points have order | 8."""
    assert encode(BASE).hex() == "58" + "66" * 31
    assert mul(L, BASE) == (0, 1)
    assert len(set(TORSION)) == 8
    assert all(mul(8, t) == (0, 1) for t in TORSION)
    assert sum(1 for t in TORSION if mul(4, t) != (0, 1)) == 4  # four of order exactly 8


# --------------------------------------------------------------------------- differential
@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=300))
def test_valid_signatures_verify(seed: bytes, msg: bytes) -> None:
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pub = sk.public_key().public_bytes_raw()
    assert same(pub, sk.sign(msg), msg) is True


@given(
    seed=st.binary(min_size=32, max_size=32),
    msg=st.binary(min_size=1, max_size=100),
    where=st.sampled_from(["signature", "message", "key"]),
    bit=st.integers(min_value=0, max_value=8 * 64 - 1),
)
def test_bit_flips_match_openssl(seed: bytes, msg: bytes, where: str, bit: int) -> None:
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pub, sig = sk.public_key().public_bytes_raw(), sk.sign(msg)
    target = bytearray({"signature": sig, "message": msg, "key": pub}[where])
    bit %= 8 * len(target)
    target[bit // 8] ^= 1 << (bit % 8)
    flipped = bytes(target)
    args = {"signature": (pub, flipped, msg), "message": (pub, sig, flipped)}
    assert same(*args.get(where, (flipped, sig, msg))) is False


def test_scalar_range_matches_openssl() -> None:
    """S >= L is rejected, S < L accepted, however the high bits are set."""
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = sk.public_key().public_bytes_raw()
    for i in range(40):
        msg = bytes([i]) * i
        sig = sk.sign(msg)
        s = int.from_bytes(sig[32:], "little")
        assert same(pub, sig, msg) is True
        for bad in (s + L, s + 2 * L, s + 15 * L, s | (1 << 255), s | (1 << 253)):
            if bad < 2**256:
                assert same(pub, sig[:32] + le(bad), msg) is False
    for s in SPECIAL_SCALARS:  # identity key: any S < L verifies with R = [S]B
        sig = encode(mul(s % L, BASE)) + le(s)
        assert same(le(1), sig, b"m") is (s < L)


def test_special_keys_and_r_exhaustive() -> None:
    """Every special encoding as A against every one as R, with S = 0: R' = -[h]A."""
    accepted = 0
    for pub, r in itertools.product(SPECIAL_ENCODINGS, repeat=2):
        for msg in (b"", b"a", b"bc"):
            accepted += same(pub, r + le(0), msg)
    assert accepted > 50  # small-order keys do accept forged signatures, as in OpenSSL


def test_noncanonical_key_accepted_like_openssl() -> None:
    """y = p + 1 (the identity, non-canonically) and x = 0 with the sign bit set
    are keys OpenSSL accepts; a non-canonical R never verifies."""
    s = 12345
    r = encode(mul(s, BASE))
    for pub in (le(P + 1), le(1 | (1 << 255)), le((P + 1) | (1 << 255)), le(1)):
        assert same(pub, r + le(s), b"anything") is True
    ident_r_noncanonical = [le(P + 1), le(1 | (1 << 255))]
    for r_bad in ident_r_noncanonical:
        assert same(le(1), r_bad + le(0), b"x") is False
    assert same(le(1), le(1) + le(0), b"x") is True


@given(
    pub=st.sampled_from(SPECIAL_ENCODINGS),
    r=st.sampled_from(SPECIAL_ENCODINGS),
    s=st.one_of(st.sampled_from(SPECIAL_SCALARS), st.integers(0, 2**256 - 1)),
    msg=st.binary(max_size=16),
)
def test_crafted_special_inputs(pub: bytes, r: bytes, s: int, msg: bytes) -> None:
    same(pub, r + le(s), msg)


@given(
    a=st.integers(1, L - 1),
    nonce=st.integers(0, L - 1),
    torsion=st.sampled_from(TORSION),
    msg=st.binary(max_size=32),
)
def test_mixed_order_keys(a: int, nonce: int, torsion: Point, msg: bytes) -> None:
    """A = [a]B + T with T of small order: cofactorless verification accepts only
    when [h mod L]T is the identity, so our h must be reduced mod L exactly."""
    pub = encode(add(mul(a, BASE), torsion))
    r = encode(mul(nonce, BASE))
    h = challenge(r, pub, msg)
    sig = r + le((nonce + h * a) % L)
    expected = mul(h, torsion) == (0, 1)
    assert same(pub, sig, msg) is expected


@settings(max_examples=50)
@given(pub=st.binary(min_size=32, max_size=32), sig=st.binary(min_size=64, max_size=64))
def test_random_garbage(pub: bytes, sig: bytes) -> None:
    assert same(pub, sig, b"garbage") is False


def test_random_keys_off_curve_rejected() -> None:
    off = [le(y) for y in range(2, 200) if recover_x(y, 0) is None]
    assert len(off) > 50
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    sig = sk.sign(b"msg")
    for pub in off:
        assert same(pub, sig, b"msg") is False


# --------------------------------------------------------------------------- wrapper
def test_sizes_from_c() -> None:
    assert ED25519_PUBLIC_BYTES == 32
    assert ED25519_SIGNATURE_BYTES == 64


def test_wrapper_accepts_bytes_like() -> None:
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    pub, sig = sk.public_key().public_bytes_raw(), sk.sign(b"hello")
    assert ed25519_verify(bytearray(pub), memoryview(sig), bytearray(b"hello")) is True
    assert ed25519_verify(pub, sig, memoryview(b"hello!")) is False


@pytest.mark.parametrize(
    ("pub", "sig", "msg", "exc", "match"),
    [
        (b"\x00" * 31, b"\x00" * 64, b"", ValueError, "public_key must be 32 bytes"),
        (b"\x00" * 33, b"\x00" * 64, b"", ValueError, "public_key must be 32 bytes"),
        (b"\x00" * 32, b"\x00" * 63, b"", ValueError, "signature must be 64 bytes"),
        (b"\x00" * 32, b"\x00" * 65, b"", ValueError, "signature must be 64 bytes"),
        ("x" * 32, b"\x00" * 64, b"", TypeError, "public_key must be bytes-like"),
        (b"\x00" * 32, None, b"", TypeError, "signature must be bytes-like"),
        (b"\x00" * 32, b"\x00" * 64, "msg", TypeError, "message must be bytes-like"),
    ],
)
def test_wrapper_input_checks(
    pub: object, sig: object, msg: object, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        ed25519_verify(pub, sig, msg)
