"""nautilus.identity: keys, peer ids, identity files, certificates, TOFU and trust."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import pickle
import stat
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from nautilus import AuthenticationFailed, IdentityFileError, InvalidKey, NautilusError
from nautilus import identity as identity_module
from nautilus.identity import (
    KINDS,
    Certificate,
    Identity,
    InvalidCertificate,
    KnownPeers,
    PeerKey,
    TrustStore,
    parse_peer_id,
)

SIG_LENGTHS = {"ed25519": 64, "ml-dsa-65": 3309, "ed25519+ml-dsa-65": 3373}
KEY_LENGTHS = {"ed25519": 33, "ml-dsa-65": 1953, "ed25519+ml-dsa-65": 1985}
KIND_BYTES = {"ed25519": 1, "ml-dsa-65": 2, "ed25519+ml-dsa-65": 3}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Third-party did:key vectors: (publicKeyBase58, did) from ACA-Py's DID tests.
DID_KEY_VECTORS = [
    (
        "8HH5gYEeNc3z7PYXmd54d4x6qAfCNrqQqEB3nS7Zfu7K",
        "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
    ),
    (
        "3Dn1SJNPaCXcvvJvSbsFWP2xaCjMom3can8CQNhWrTRx",
        "did:key:z6Mkgg342Ycpuk263R9d8Aq6MUaxPn1DDeHyGo38EefXmgDL",
    ),
]
# A JWK private key ("d", base64url) and its did:key, published together.
JWK_D = "2pjRNVcmr80q3r3WqzVjfUJA4zY2KLZ57PE3Z41W08A"
JWK_X = "o66-89hEaBUt3MpZGq1HYnn41MeYj1PqXWRkPiSQAUo"
JWK_DID = "did:key:z6MkqUD3eHHNAqjsobXUGRMvrV6cFVcHQdvhLQedUfMtZSTs"

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58decode(text: str) -> bytes:
    """Independent base58btc decoder for the tests."""
    value = 0
    for char in text:
        value = value * 58 + B58.index(char)
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return b"\x00" * (len(text) - len(text.lstrip("1"))) + body


def b58encode(data: bytes) -> str:
    value = int.from_bytes(data, "big")
    out = ""
    while value:
        value, digit = divmod(value, 58)
        out = B58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def ids() -> dict[str, Identity]:
    return {kind: Identity.generate(kind) for kind in KINDS}


@pytest.fixture(scope="module")
def issuer() -> Identity:
    return Identity.generate("ed25519")


def secrets_of(path: Path) -> list[str]:
    """The base64 private values in a saved identity file."""
    found = []
    for line in path.read_text().splitlines():
        field, _, value = line.partition(": ")
        if field in ("ed25519-private", "ml-dsa-65-seed"):
            found.append(value)
    assert found
    return found


def assert_no_secret(text: str, secret_values: list[str]) -> None:
    for value in secret_values:
        assert value not in text
        assert value[:12] not in text
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        assert raw.hex() not in text
        assert raw.hex()[:16] not in text


# --------------------------------------------------------------------------- kinds, signing


def test_kinds_constant() -> None:
    assert KINDS == ("ed25519", "ml-dsa-65", "ed25519+ml-dsa-65")


@pytest.mark.parametrize("kind", KINDS)
def test_sign_verify(ids: dict[str, Identity], kind: str) -> None:
    ident = ids[kind]
    assert ident.kind == kind == ident.public.kind
    signature = ident.sign(b"message")
    assert len(signature) == SIG_LENGTHS[kind] == ident.public.signature_length
    ident.public.verify(signature, b"message")
    ident.public.verify(bytearray(signature), memoryview(b"message"))
    with pytest.raises(AuthenticationFailed, match="signature did not verify"):
        ident.public.verify(signature, b"messagf")


@pytest.mark.parametrize("kind", KINDS)
def test_signature_by_other_key_fails(ids: dict[str, Identity], kind: str) -> None:
    other = Identity.generate(kind)
    with pytest.raises(AuthenticationFailed, match="did not verify"):
        ids[kind].public.verify(other.sign(b"m"), b"m")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_signature_length(ids: dict[str, Identity], kind: str, delta: int) -> None:
    signature = ids[kind].sign(b"m")
    bad = signature[:-1] if delta < 0 else signature + b"\x00"
    with pytest.raises(AuthenticationFailed, match=r"did not verify.*bytes, expected"):
        ids[kind].public.verify(bad, b"m")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("position", [0, 40, 63, 64, 2000, -1])
def test_any_flipped_byte_fails(ids: dict[str, Identity], kind: str, position: int) -> None:
    signature = bytearray(ids[kind].sign(b"m"))
    if position >= len(signature):
        position = len(signature) - 2
    signature[position] ^= 0x01
    with pytest.raises(AuthenticationFailed):
        ids[kind].public.verify(bytes(signature), b"m")


def test_hybrid_needs_both_halves(ids: dict[str, Identity]) -> None:
    hybrid = ids["ed25519+ml-dsa-65"]
    signature = hybrid.sign(b"both")
    ed_half, ml_half = signature[:64], signature[64:]
    assert len(ml_half) == 3309

    bad_ml = bytearray(ml_half)
    bad_ml[100] ^= 0x80
    with pytest.raises(AuthenticationFailed, match=r"did not verify \(ML-DSA-65 part\)"):
        hybrid.public.verify(ed_half + bytes(bad_ml), b"both")

    bad_ed = bytearray(ed_half)
    bad_ed[10] ^= 0x80
    with pytest.raises(AuthenticationFailed, match=r"did not verify \(Ed25519 part\)"):
        hybrid.public.verify(bytes(bad_ed) + ml_half, b"both")

    # Halves of valid signatures over another message do not help either.
    other = hybrid.sign(b"other")
    with pytest.raises(AuthenticationFailed, match="Ed25519 part"):
        hybrid.public.verify(other[:64] + ml_half, b"both")
    with pytest.raises(AuthenticationFailed, match="ML-DSA-65 part"):
        hybrid.public.verify(ed_half + other[64:], b"both")


def test_hybrid_halves_are_component_signatures(ids: dict[str, Identity]) -> None:
    """The documented layout: Ed25519 signature first, then ML-DSA-65."""
    hybrid = ids["ed25519+ml-dsa-65"]
    raw = hybrid.public.to_bytes()
    signature = hybrid.sign(b"layout")
    ed25519.Ed25519PublicKey.from_public_bytes(raw[1:33]).verify(signature[:64], b"layout")
    from cryptography.hazmat.primitives.asymmetric import mldsa

    mldsa.MLDSA65PublicKey.from_public_bytes(raw[33:]).verify(signature[64:], b"layout")


def test_generate_rejects_bad_kind() -> None:
    with pytest.raises(ValueError, match=r"ed25519, ml-dsa-65, ed25519\+ml-dsa-65"):
        Identity.generate("rsa")
    with pytest.raises(ValueError, match="unknown"):
        Identity.generate("ED25519")
    with pytest.raises(TypeError):
        Identity.generate(1)  # type: ignore[arg-type]
    assert Identity.generate().kind == "ed25519"


def test_sign_and_verify_type_errors(ids: dict[str, Identity]) -> None:
    ident = ids["ed25519"]
    with pytest.raises(TypeError):
        ident.sign("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ident.public.verify("sig", b"m")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ident.public.verify(ident.sign(b"m"), None)  # type: ignore[arg-type]


def test_constructors_are_private() -> None:
    with pytest.raises(TypeError):
        PeerKey()
    with pytest.raises(TypeError):
        Identity()
    with pytest.raises(TypeError):
        Certificate()


# --------------------------------------------------------------------------- peer ids


@pytest.mark.parametrize(("key58", "did"), DID_KEY_VECTORS)
def test_did_key_vectors(key58: str, did: str) -> None:
    raw = b58decode(key58)
    assert len(raw) == 32
    key = PeerKey.from_bytes(b"\x01" + raw)
    assert key.peer_id == did
    assert PeerKey.from_peer_id(did) == key
    assert parse_peer_id(did) == did


def test_did_key_from_private_key_vector() -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(b64url(JWK_D))
    public_raw = private.public_key().public_bytes_raw()
    assert public_raw == b64url(JWK_X)
    assert PeerKey.from_bytes(b"\x01" + public_raw).peer_id == JWK_DID


def test_base58_known_answers() -> None:
    # draft-msporny-base58 examples
    assert identity_module._b58encode(b"Hello World!") == "2NEpo7TZRRrLZSi2U"
    assert identity_module._b58encode(bytes.fromhex("0000287fb4cd")) == "11233QC4"
    assert identity_module._b58decode("11233QC4") == bytes.fromhex("0000287fb4cd")
    for data in (b"", b"\x00", b"\x00\x00\x01", bytes(range(40)), b"\xff" * 33):
        assert identity_module._b58decode(identity_module._b58encode(data)) == data
        assert identity_module._b58encode(data) == b58encode(data)


@pytest.mark.parametrize("kind", KINDS)
def test_peer_id_is_stable(ids: dict[str, Identity], kind: str) -> None:
    key = ids[kind].public
    again = PeerKey.from_bytes(key.to_bytes())
    assert again.peer_id == key.peer_id == ids[kind].peer_id
    assert parse_peer_id(key.peer_id) == key.peer_id
    assert key.peer_id.isascii()


def test_ed25519_peer_id_is_did_key(ids: dict[str, Identity]) -> None:
    key = ids["ed25519"].public
    assert key.peer_id.startswith("did:key:z6Mk")
    payload = b58decode(key.peer_id[len("did:key:z") :])
    assert payload == b"\xed\x01" + key.to_bytes()[1:]
    assert PeerKey.from_peer_id(key.peer_id) == key


@pytest.mark.parametrize("kind", ["ml-dsa-65", "ed25519+ml-dsa-65"])
def test_hash_peer_ids(ids: dict[str, Identity], kind: str) -> None:
    key = ids[kind].public
    prefix = f"nautilus:{kind}:z"
    assert key.peer_id == prefix + b58encode(hashlib.sha256(key.to_bytes()).digest())
    with pytest.raises(InvalidKey, match=r"hash of the key.*full key is needed"):
        PeerKey.from_peer_id(key.peer_id)


def test_peer_ids_differ_between_kinds(ids: dict[str, Identity]) -> None:
    assert len({ident.peer_id for ident in ids.values()}) == 3
    assert len({ident.public.fingerprint for ident in ids.values()}) == 3


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "did:key:",
        "did:key:z",
        "did:key:6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",  # no multibase 'z'
        "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7t0",  # '0' is not base58
        "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7thh",  # too long
        "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7",  # too short
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",  # secp256k1 did:key
        " did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
        "did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th\n",
        "nautilus:ml-dsa-65:z",
        "nautilus:ml-dsa-65:zabc",
        "nautilus:ml-dsa-65:Iabc",
        "nautilus:rsa:z" + "2" * 44,
        "z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th",
        "did:key:z" + "2" * 200,
    ],
)
def test_parse_peer_id_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="peer id") as info:
        parse_peer_id(bad)
    assert isinstance(info.value, InvalidKey)
    with pytest.raises(InvalidKey, match="peer id"):
        PeerKey.from_peer_id(bad)


def test_a_did_key_must_be_an_ed25519_key_of_32_bytes(ids: dict[str, Identity]) -> None:
    """The multicodec and the length are each checked on their own: a did:key
    of another key type with 32 bytes, or an Ed25519 one of 31 or 33 bytes,
    is refused."""
    raw = ids["ed25519"].public.to_bytes()[1:]
    assert parse_peer_id("did:key:z" + b58encode(b"\xed\x01" + raw)) == ids["ed25519"].peer_id
    x25519 = "did:key:z" + b58encode(b"\xec\x01" + raw)  # (multicodec x25519-pub)
    with pytest.raises(InvalidKey, match="only Ed25519"):
        parse_peer_id(x25519)
    for payload in (raw[:31], raw + b"\x01"):
        with pytest.raises(InvalidKey, match="32 bytes"):
            parse_peer_id("did:key:z" + b58encode(b"\xed\x01" + payload))


def test_a_peer_id_over_128_characters_is_refused_before_it_is_decoded() -> None:
    longest = "did:key:z" + "1" * (128 - 9)
    with pytest.raises(InvalidKey, match="only Ed25519"):
        parse_peer_id(longest)  # decoded: 119 zero bytes
    with pytest.raises(InvalidKey, match="longer than 128 characters"):
        parse_peer_id(longest + "1")


def test_parse_peer_id_type() -> None:
    with pytest.raises(TypeError):
        parse_peer_id(b"did:key:z6Mk")  # type: ignore[arg-type]


def test_hash_peer_id_wrong_length(ids: dict[str, Identity]) -> None:
    digest = hashlib.sha256(ids["ml-dsa-65"].public.to_bytes()).digest()
    parse_peer_id("nautilus:ml-dsa-65:z" + b58encode(digest))
    with pytest.raises(InvalidKey, match="32 bytes"):
        parse_peer_id("nautilus:ml-dsa-65:z" + b58encode(digest[:31]))
    with pytest.raises(InvalidKey, match="32 bytes"):
        parse_peer_id("nautilus:ed25519+ml-dsa-65:z" + b58encode(digest + b"\x01"))


# --------------------------------------------------------------------------- PeerKey encoding


@pytest.mark.parametrize("kind", KINDS)
def test_peer_key_round_trip(ids: dict[str, Identity], kind: str) -> None:
    key = ids[kind].public
    raw = key.to_bytes()
    assert len(raw) == KEY_LENGTHS[kind]
    assert raw[0] == KIND_BYTES[kind]
    again = PeerKey.from_bytes(raw)
    assert again == key
    assert hash(again) == hash(key)
    assert again is not key
    assert PeerKey.from_bytes(bytearray(raw)) == key
    assert PeerKey.from_bytes(memoryview(raw)) == key
    assert key.fingerprint == hashlib.sha256(raw).digest()
    assert len(key.fingerprint) == 32
    assert {key, again} == {key}
    assert pickle.loads(pickle.dumps(key)) == key
    assert copy.deepcopy(key) == key


def test_hybrid_encoding_layout(ids: dict[str, Identity]) -> None:
    hybrid = ids["ed25519+ml-dsa-65"].public.to_bytes()
    ed_key = ed25519.Ed25519PublicKey.from_public_bytes(hybrid[1:33])
    ed_key.verify(ids["ed25519+ml-dsa-65"].sign(b"x")[:64], b"x")
    assert len(hybrid[33:]) == 1952


def test_peer_keys_differ(ids: dict[str, Identity]) -> None:
    a = ids["ed25519"].public
    b = Identity.generate("ed25519").public
    assert a != b
    assert not a.matches(b)
    assert not a.matches(b.peer_id)
    assert a != "not a key"


@pytest.mark.parametrize("kind", KINDS)
def test_peer_key_malformed(ids: dict[str, Identity], kind: str) -> None:
    raw = ids[kind].public.to_bytes()
    for bad in (raw[:-1], raw + b"\x00", raw[:1], raw[1:]):
        with pytest.raises(InvalidKey):
            PeerKey.from_bytes(bad)
    with pytest.raises(InvalidKey, match="kind byte 0x09"):
        PeerKey.from_bytes(b"\x09" + raw[1:])
    # a valid length for another kind is still wrong for this kind byte
    other = {1: 2, 2: 3, 3: 1}[raw[0]]
    with pytest.raises(InvalidKey, match="bytes, expected"):
        PeerKey.from_bytes(bytes([other]) + raw[1:])


def test_peer_key_malformed_basics() -> None:
    with pytest.raises(InvalidKey, match="empty"):
        PeerKey.from_bytes(b"")
    with pytest.raises(TypeError):
        PeerKey.from_bytes("01" * 33)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PeerKey.from_bytes(None)  # type: ignore[arg-type]
    err = InvalidKey("x")
    assert isinstance(err, ValueError)
    assert isinstance(err, NautilusError)


SMALL_ORDER_POINTS = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
]


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS)
def test_small_order_ed25519_keys_rejected(point: str) -> None:
    for prefix in (b"\x01", b"\x03"):
        raw = prefix + bytes.fromhex(point) + (b"\x00" * 1952 if prefix == b"\x03" else b"")
        with pytest.raises(InvalidKey, match="small order"):
            PeerKey.from_bytes(raw)


def test_small_order_key_would_verify_anything() -> None:
    """Why small-order keys are refused: OpenSSL accepts (R=identity, S=0)."""
    weak = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(SMALL_ORDER_POINTS[0]))
    weak.verify(bytes.fromhex(SMALL_ORDER_POINTS[0]) + bytes(32), b"anything at all")


@pytest.mark.parametrize(
    ("encoding", "reason"),
    [
        ("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", "non-canonical"),
        ("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", "non-canonical"),
        ("0100000000000000000000000000000000000000000000000000000000000080", "non-canonical"),
        ("0200000000000000000000000000000000000000000000000000000000000000", "not a point"),
    ],
)
def test_invalid_ed25519_encodings_rejected(encoding: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        PeerKey.from_bytes(b"\x01" + bytes.fromhex(encoding))


def test_random_ed25519_keys_accepted() -> None:
    for _ in range(50):
        raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        PeerKey.from_bytes(b"\x01" + raw)


def test_peer_key_is_immutable(ids: dict[str, Identity]) -> None:
    key = ids["ed25519"].public
    with pytest.raises(AttributeError):
        key.kind = "ml-dsa-65"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        key._raw = b"\x01" * 33
    with pytest.raises(AttributeError):
        del key._raw
    assert key.kind == "ed25519"


@pytest.mark.parametrize("kind", KINDS)
def test_matches(ids: dict[str, Identity], kind: str) -> None:
    key = ids[kind].public
    assert key.matches(key)
    assert key.matches(PeerKey.from_bytes(key.to_bytes()))
    assert key.matches(key.peer_id)
    assert not key.matches(key.peer_id + "x")
    assert not key.matches(key.peer_id[:-1])
    assert not key.matches("")
    assert not key.matches("did:key:z6Mkéé")
    with pytest.raises(TypeError):
        key.matches(key.to_bytes())  # type: ignore[arg-type]


def test_peer_key_repr(ids: dict[str, Identity]) -> None:
    key = ids["ed25519"].public
    assert repr(key) == f"<PeerKey {key.peer_id}>"
    assert repr(key).startswith("<PeerKey did:key:z6Mk")


# --------------------------------------------------------------------------- Identity files


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(ids: dict[str, Identity], kind: str, tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ids[kind].save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Identity.load(path)
    assert loaded.kind == kind
    assert loaded.public == ids[kind].public
    assert loaded.peer_id == ids[kind].peer_id
    assert loaded.certificate is None
    ids[kind].public.verify(loaded.sign(b"after load"), b"after load")
    lines = path.read_text().splitlines()
    assert lines[0] == f"nautilus-identity v1 {kind}"
    assert lines[-1] == "end"
    assert f"peer-id: {ids[kind].peer_id}" in lines
    Identity.load(str(path))  # str paths too


def test_saved_seeds_are_the_keys(ids: dict[str, Identity], tmp_path: Path) -> None:
    """The file holds the raw Ed25519 private key and the 32-byte ML-DSA seed."""
    from cryptography.hazmat.primitives.asymmetric import mldsa

    hybrid = ids["ed25519+ml-dsa-65"]
    path = tmp_path / "id.key"
    hybrid.save(path)
    values = dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    ed_raw = base64.b64decode(values["ed25519-private"])
    ml_seed = base64.b64decode(values["ml-dsa-65-seed"])
    assert len(ed_raw) == 32
    assert len(ml_seed) == 32
    ed_pub = ed25519.Ed25519PrivateKey.from_private_bytes(ed_raw).public_key()
    ml_pub = mldsa.MLDSA65PrivateKey.from_seed_bytes(ml_seed).public_key()
    expected = b"\x03" + ed_pub.public_bytes_raw() + ml_pub.public_bytes_raw()
    assert hybrid.public.to_bytes() == expected


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_with_certificate(
    ids: dict[str, Identity], issuer: Identity, kind: str, tmp_path: Path
) -> None:
    cert = Certificate.issue(
        issuer, ids[kind].public, "server.example", not_before=1000.0, not_after=2000.0
    )
    certified = ids[kind].with_certificate(cert)
    path = tmp_path / "id.key"
    certified.save(path)
    loaded = Identity.load(path)
    assert loaded.certificate == cert
    assert loaded.public == ids[kind].public
    loaded.certificate.verify([issuer.public], 1500.0)
    assert "certified" in repr(loaded)


def test_save_uses_exclusive_0600_create(
    ids: dict[str, Identity], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        calls.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    target = tmp_path / "id.key"
    ids["ed25519"].save(target)
    creates = [c for c in calls if c[1] & os.O_CREAT]
    assert creates
    for path, flags, mode in creates:
        assert mode == 0o600
        assert flags & os.O_EXCL
        assert path != str(target)  # written beside it, then renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.key"]


def test_save_mode_ignores_umask(ids: dict[str, Identity], tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ids["ed25519"].save(tmp_path / "a.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600


def test_save_replaces_atomically(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ids["ed25519"].save(path)
    path.chmod(0o644)
    ids["ml-dsa-65"].save(path)
    assert Identity.load(path).public == ids["ml-dsa-65"].public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.key"]


def test_save_without_overwrite_never_replaces(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ids["ed25519"].save(path, overwrite=False)  # a new file: written as usual
    assert Identity.load(path).public == ids["ed25519"].public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        ids["ml-dsa-65"].save(path, overwrite=False)
    assert Identity.load(path).public == ids["ed25519"].public
    dangling = tmp_path / "link.key"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        ids["ml-dsa-65"].save(dangling, overwrite=False)
    assert not (tmp_path / "nowhere").exists()  # the link was not followed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.key", "link.key"]
    with pytest.raises(TypeError, match="overwrite must be a bool"):
        ids["ed25519"].save(path, overwrite=None)  # type: ignore[arg-type]


def test_save_failure_leaves_nothing(ids: dict[str, Identity], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ids["ed25519"].save(tmp_path / "missing-dir" / "id.key")
    target = tmp_path / "dir-target"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        ids["ed25519"].save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-target"]


def test_save_load_type_errors(ids: dict[str, Identity]) -> None:
    with pytest.raises(TypeError):
        ids["ed25519"].save(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ids["ed25519"].save(b"/tmp/x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Identity.load(None)  # type: ignore[arg-type]


@pytest.fixture
def saved(ids: dict[str, Identity], tmp_path: Path) -> tuple[Path, list[str]]:
    """A saved hybrid identity file and its base64 secrets."""
    path = tmp_path / "hybrid.key"
    ids["ed25519+ml-dsa-65"].save(path)
    return path, secrets_of(path)


def load_error(path: Path, secret_values: list[str]) -> str:
    with pytest.raises(IdentityFileError) as info:
        Identity.load(path)
    message = str(info.value)
    assert_no_secret(message, secret_values)
    assert_no_secret(repr(info.value), secret_values)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, NautilusError)
    return message


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o004])
def test_load_refuses_open_permissions(saved: tuple[Path, list[str]], mode: int) -> None:
    path, secret_values = saved
    path.chmod(mode)
    message = load_error(path, secret_values)
    assert f"{stat.S_IMODE(mode):04o}" in message
    assert "chmod 600" in message
    assert str(path) in message


def test_load_accepts_0400(saved: tuple[Path, list[str]]) -> None:
    path, _ = saved
    path.chmod(0o400)
    Identity.load(path)


def test_load_corrupt_base64(saved: tuple[Path, list[str]]) -> None:
    path, secret_values = saved
    text = path.read_text()
    for value in secret_values:
        broken = value[:10] + "!" + value[11:]
        path.write_text(text.replace(value, broken))
        message = load_error(path, [*secret_values, broken])
        assert "line" in message
        assert "base64" in message
        # a valid base64 value of the wrong length
        short = base64.b64encode(base64.b64decode(value)[:31]).decode()
        path.write_text(text.replace(value, short))
        assert "32 bytes" in load_error(path, [*secret_values, short])


def test_load_refuses_base64_that_is_not_canonical(saved: tuple[Path, list[str]]) -> None:
    """Base64 with an unused bit set decodes to the same bytes: it is refused,
    so that one key has one spelling in a file."""
    path, secret_values = saved
    text = path.read_text()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for value in secret_values:
        assert value.endswith("=")  # 32 bytes: 2 unused bits in the last character
        assert not value.endswith("==")
        twin = value[:-2] + alphabet[alphabet.index(value[-2]) ^ 1] + "="
        assert base64.b64decode(twin) == base64.b64decode(value)
        path.write_text(text.replace(value, twin))
        assert "base64" in load_error(path, [*secret_values, twin])


def test_load_swapped_seed_does_not_match_peer_id(
    saved: tuple[Path, list[str]], ids: dict[str, Identity], tmp_path: Path
) -> None:
    path, secret_values = saved
    other_path = tmp_path / "other.key"
    Identity.generate("ed25519+ml-dsa-65").save(other_path)
    other = secrets_of(other_path)
    path.write_text(path.read_text().replace(secret_values[1], other[1]))
    message = load_error(path, secret_values + other)
    assert "peer-id does not match" in message


def test_load_truncated(saved: tuple[Path, list[str]]) -> None:
    path, secret_values = saved
    data = path.read_bytes()
    cuts = {1, 10, len(data) // 3, len(data) // 2, len(data) - 5, len(data) - 4}
    # cut at every line end too: a file cut between lines must not load
    cuts |= {i + 1 for i, byte in enumerate(data[:-1]) if byte == ord("\n")}
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        load_error(path, secret_values)
    path.write_bytes(b"")
    assert "empty" in load_error(path, secret_values)


def test_load_truncated_certificate_line(
    ids: dict[str, Identity], issuer: Identity, tmp_path: Path
) -> None:
    cert = Certificate.issue(issuer, ids["ed25519"].public, "n", not_before=1.0, not_after=2.0)
    path = tmp_path / "id.key"
    ids["ed25519"].with_certificate(cert).save(path)
    secret_values = secrets_of(path)
    lines = path.read_text().splitlines()
    # drop the certificate line: the 'end' line is what reveals it
    path.write_text("\n".join(line for line in lines if not line.startswith("cert")) + "\n")
    Identity.load(path)  # a file without certificate is fine...
    path.write_text("\n".join(lines[:-2]) + "\n")
    load_error(path, secret_values)  # ...but a cut one is not
    bad = [line[:-8] if line.startswith("certificate: ") else line for line in lines]
    path.write_text("\n".join(bad) + "\n")
    assert "certificate" in load_error(path, secret_values)


def test_load_certificate_for_other_key(
    ids: dict[str, Identity], issuer: Identity, tmp_path: Path
) -> None:
    cert = Certificate.issue(issuer, ids["ml-dsa-65"].public, "n", not_before=1.0, not_after=2.0)
    path = tmp_path / "id.key"
    ids["ed25519"].save(path)
    secret_values = secrets_of(path)
    lines = path.read_text().splitlines()
    lines.insert(-1, "certificate: " + base64.b64encode(cert.to_bytes()).decode())
    path.write_text("\n".join(lines) + "\n")
    assert "certificate is for another key" in load_error(path, secret_values)


def test_load_known_peers_file(
    ids: dict[str, Identity], tmp_path: Path, saved: tuple[Path, list[str]]
) -> None:
    path = tmp_path / "known_peers"
    KnownPeers(path).check("alice", ids["ed25519"].public)
    assert "known-peers file, not an identity file" in load_error(path, [])
    # even without the header comment
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[1:]) + "\n")
    assert "known-peers file" in load_error(path, [])
    # or with its header only (every entry deleted)
    path.write_text(lines[0] + "\n")
    assert "known-peers file, not an identity file" in load_error(path, [])


@pytest.mark.parametrize(
    "content",
    [
        "hello world\n",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n",
        "\n\n",
    ],
)
def test_load_random_text(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x"
    path.write_text(content)
    path.chmod(0o600)
    message = load_error(path, ["MC4CAQAwBQYDK2VwBCIEI"])
    assert "not a Nautilus identity file" in message


def test_load_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(bytes(range(256)) * 4)
    path.chmod(0o600)
    assert "not UTF-8" in load_error(path, [])


def test_load_unknown_kind(saved: tuple[Path, list[str]]) -> None:
    path, secret_values = saved
    text = path.read_text()
    path.write_text(text.replace("ed25519+ml-dsa-65\n", "rsa-4096\n", 1))
    message = load_error(path, secret_values)
    assert "unknown kind 'rsa-4096'" in message
    # a header token that could be a secret is not echoed
    path.write_text(text.replace("ed25519+ml-dsa-65\n", secret_values[0] + "\n", 1))
    assert "unknown kind (not shown)" in load_error(path, secret_values)


def test_load_unknown_version(saved: tuple[Path, list[str]]) -> None:
    path, secret_values = saved
    path.write_text(path.read_text().replace(" v1 ", " v2 ", 1))
    assert "unsupported format version 'v2'" in load_error(path, secret_values)


def test_load_refuses_a_header_with_more_than_three_fields(
    saved: tuple[Path, list[str]],
) -> None:
    path, secret_values = saved
    text = path.read_text()
    header = text.split("\n", 1)[0]
    assert len(header.split(" ")) == 3
    path.write_text(text.replace(header, header + " extra", 1))
    assert "malformed header line" in load_error(path, secret_values)


def test_load_refuses_a_file_over_64_kib(saved: tuple[Path, list[str]]) -> None:
    """Even one that would load (a valid identity, then a long comment)."""
    path, secret_values = saved
    text = path.read_text()
    path.write_text(text + "#" * (65536 - len(text.encode()) - 1) + "\n")
    assert path.stat().st_size == 65536
    Identity.load(path)
    path.write_text(text + "#" * (65536 - len(text.encode())) + "\n")
    assert "too large" in load_error(path, secret_values)


def test_load_kind_field_mismatch(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ids["ed25519+ml-dsa-65"].save(path)
    secret_values = secrets_of(path)
    text = path.read_text()
    path.write_text(text.replace("ed25519+ml-dsa-65\n", "ed25519\n", 1))
    assert "'ml-dsa-65-seed' is not used by ed25519" in load_error(path, secret_values)
    path.write_text(text.replace("ed25519+ml-dsa-65\n", "ml-dsa-65\n", 1))
    assert "not used by ml-dsa-65" in load_error(path, secret_values)


def test_load_field_errors(saved: tuple[Path, list[str]]) -> None:
    path, secret_values = saved
    lines = path.read_text().splitlines()
    seed_line = next(i for i, line in enumerate(lines) if line.startswith("ml-dsa"))
    cases = {
        "repeats the field": [*lines[:seed_line], lines[seed_line], *lines[seed_line:]],
        "unknown field": [*lines[:-1], "colour: blue", lines[-1]],
        "expected 'field: value'": [*lines[:-1], secret_values[0], lines[-1]],
        "no 'ml-dsa-65-seed' line": [line for line in lines if not line.startswith("ml-dsa")],
        "no 'peer-id' line": [line for line in lines if not line.startswith("peer-id")],
        "last line must be 'end'": [*lines, "peer-id: x"],
    }
    for expected, content in cases.items():
        path.write_text("\n".join(content) + "\n")
        assert expected in load_error(path, secret_values)


def test_load_tolerates_crlf_and_comments(saved: tuple[Path, list[str]]) -> None:
    path, _ = saved
    lines = path.read_text().splitlines()
    lines.insert(1, "")
    lines.insert(2, "# a comment")
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    Identity.load(path)


def test_load_ignores_blank_lines_and_comments_after_end(saved: tuple[Path, list[str]]) -> None:
    """As after the header (docs/identity.md), an editor's blank line or a
    comment after 'end' is ignored; anything else after it is corruption."""
    path, secret_values = saved
    text = path.read_text()
    for tail in ("\n", "\n\n", "# note\n", "\n# note\n\n"):
        path.write_text(text + tail)
        Identity.load(path)
    path.write_text(text + "peer-id: x\n# note\n")
    assert "last line must be 'end'" in load_error(path, secret_values)


def test_load_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.key", [])
    assert "does not exist" in message
    assert "nope.key" in message


def test_load_directory(tmp_path: Path) -> None:
    assert "not a regular file" in load_error(tmp_path, [])


@pytest.mark.skipif(IS_ROOT, reason="root can read any file")
def test_load_unreadable(saved: tuple[Path, list[str]]) -> None:
    path, secret_values = saved
    path.chmod(0o000)
    try:
        assert "permission denied" in load_error(path, secret_values)
    finally:
        path.chmod(0o600)


def test_load_permission_denied_simulated(
    saved: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, secret_values = saved

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    message = load_error(path, secret_values)
    assert "permission denied" in message
    assert str(path) in message


def test_identity_repr_has_no_secret(ids: dict[str, Identity], tmp_path: Path) -> None:
    for kind, ident in ids.items():
        path = tmp_path / f"{kind}.key"
        ident.save(path)
        secret_values = secrets_of(path)
        for text in (repr(ident), str(ident), repr(Identity.load(path))):
            assert_no_secret(text, secret_values)
            assert ident.peer_id in text
            assert kind in text


def test_identity_refuses_pickling(ids: dict[str, Identity]) -> None:
    for ident in ids.values():
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(ident)
        with pytest.raises(TypeError):
            copy.copy(ident)
    with pytest.raises(AttributeError):
        ids["ed25519"]._ed = None


def test_with_certificate(ids: dict[str, Identity], issuer: Identity) -> None:
    ident = ids["ed25519"]
    cert = Certificate.issue(issuer, ident.public, "me", not_before=0.0, not_after=10.0)
    certified = ident.with_certificate(cert)
    assert certified.certificate is cert
    assert ident.certificate is None
    assert certified.public == ident.public
    ident.public.verify(certified.sign(b"m"), b"m")
    other_cert = Certificate.issue(
        issuer, ids["ml-dsa-65"].public, "me", not_before=0.0, not_after=10.0
    )
    with pytest.raises(ValueError, match="not for this identity"):
        ident.with_certificate(other_cert)
    with pytest.raises(TypeError):
        ident.with_certificate(cert.to_bytes())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- certificates


def encode_cert(
    version: int,
    name: bytes,
    subject: bytes,
    issuer_key: bytes,
    not_before: float,
    not_after: float,
    signature: bytes,
) -> bytes:
    """The documented encoding, written independently of the module."""
    return (
        bytes([version, len(name)])
        + name
        + struct.pack(">H", len(subject))
        + subject
        + struct.pack(">H", len(issuer_key))
        + issuer_key
        + struct.pack(">dd", not_before, not_after)
        + struct.pack(">H", len(signature))
        + signature
    )


def cert_fields(cert: Certificate) -> dict[str, object]:
    return {
        "version": 1,
        "name": cert.subject_name.encode(),
        "subject": cert.subject_key.to_bytes(),
        "issuer_key": cert.issuer_key.to_bytes(),
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "signature": cert.signature,
    }


@pytest.fixture(scope="module")
def cert(ids: dict[str, Identity], issuer: Identity) -> Certificate:
    return Certificate.issue(
        issuer, ids["ed25519"].public, "alice.example", not_before=1000.0, not_after=2000.0
    )


def test_certificate_fields_and_encoding(
    cert: Certificate, ids: dict[str, Identity], issuer: Identity
) -> None:
    assert cert.subject_name == "alice.example"
    assert cert.subject_key == ids["ed25519"].public
    assert cert.issuer_key == issuer.public
    assert (cert.not_before, cert.not_after) == (1000.0, 2000.0)
    assert len(cert.signature) == 64
    raw = cert.to_bytes()
    assert raw == encode_cert(**cert_fields(cert))  # type: ignore[arg-type]
    # the issuer signed the domain-separated encoding of every other field
    tbs = raw[: -(2 + len(cert.signature))]
    issuer.public.verify(cert.signature, b"nautilus certificate v1\x00" + tbs)
    with pytest.raises(AuthenticationFailed):
        issuer.public.verify(cert.signature, tbs)


@pytest.mark.parametrize("issuer_kind", KINDS)
def test_certificate_round_trip_all_kinds(ids: dict[str, Identity], issuer_kind: str) -> None:
    for subject_kind in KINDS:
        c = Certificate.issue(
            ids[issuer_kind], ids[subject_kind].public, "n", not_before=0, not_after=1
        )
        again = Certificate.from_bytes(c.to_bytes())
        assert again == c
        assert hash(again) == hash(c)
        assert again.subject_key == ids[subject_kind].public
        assert len(again.signature) == SIG_LENGTHS[issuer_kind]
        again.verify([ids[issuer_kind].public], 0.5)
        assert pickle.loads(pickle.dumps(c)) == c


def test_certificate_valid(cert: Certificate, issuer: Identity) -> None:
    cert.verify([issuer.public], 1500.0)
    cert.verify([issuer.peer_id], 1500.0)
    cert.verify(iter([Identity.generate().public, issuer.public]), 1500)
    cert.verify([issuer.public], 1000.0)  # both ends are inclusive
    cert.verify([issuer.public], 2000.0)


def test_certificate_expired(cert: Certificate, issuer: Identity) -> None:
    with pytest.raises(
        AuthenticationFailed, match=r"'alice\.example' expired at 1970-01-01T00:33:20Z"
    ):
        cert.verify([issuer.public], 2000.5)


def test_certificate_not_yet_valid(cert: Certificate, issuer: Identity) -> None:
    with pytest.raises(
        AuthenticationFailed, match="not yet valid: valid from 1970-01-01T00:16:40Z"
    ):
        cert.verify([issuer.public], 999.0)


def test_certificate_unknown_issuer(cert: Certificate, issuer: Identity) -> None:
    with pytest.raises(AuthenticationFailed, match=f"unknown issuer {issuer.peer_id}"):
        cert.verify([Identity.generate().public], 1500.0)
    with pytest.raises(AuthenticationFailed, match="unknown issuer"):
        cert.verify([], 1500.0)
    with pytest.raises(AuthenticationFailed, match="unknown issuer"):
        cert.verify([cert.subject_key], 1500.0)


def test_certificate_verify_argument_errors(cert: Certificate, issuer: Identity) -> None:
    with pytest.raises(TypeError, match="trusted_issuers"):
        cert.verify(issuer.peer_id, 1500.0)
    with pytest.raises(TypeError, match="trusted_issuers"):
        cert.verify(issuer.public, 1500.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="peer id"):
        cert.verify(["did:key:nope"], 1500.0)
    with pytest.raises(TypeError, match="now"):
        cert.verify([issuer.public], "1500")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        cert.verify([issuer.public], float("nan"))


def test_certificate_tampered_fields(
    cert: Certificate, issuer: Identity, ids: dict[str, Identity]
) -> None:
    second_issuer = Identity.generate("ed25519")
    trusted = [issuer.public, second_issuer.public]
    fields = cert_fields(cert)
    flipped = bytearray(cert.signature)
    flipped[5] ^= 0x01
    changes: dict[str, object] = {
        "name": b"mallory.example",
        "subject": ids["ml-dsa-65"].public.to_bytes(),
        "issuer_key": second_issuer.public.to_bytes(),
        "not_before": 900.0,
        "not_after": 3000.0,
        "signature": bytes(flipped),
    }
    for field, value in changes.items():
        tampered = Certificate.from_bytes(encode_cert(**{**fields, field: value}))  # type: ignore[arg-type]
        with pytest.raises(AuthenticationFailed, match="bad signature"):
            tampered.verify(trusted, 1500.0)
    # and a one-bit change anywhere in the signed part
    raw = bytearray(cert.to_bytes())
    raw[3] ^= 0x20  # inside the name: 'alice' -> 'aLice'
    with pytest.raises(AuthenticationFailed, match="bad signature"):
        Certificate.from_bytes(bytes(raw)).verify(trusted, 1500.0)


def test_certificate_signature_checked_before_validity(cert: Certificate, issuer: Identity) -> None:
    """An attacker cannot learn about expiry handling by altering the dates."""
    stretched = encode_cert(**{**cert_fields(cert), "not_after": 1e10})  # type: ignore[arg-type]
    with pytest.raises(AuthenticationFailed, match="bad signature"):
        Certificate.from_bytes(stretched).verify([issuer.public], 5000.0)


def test_certificate_from_bytes_malformed(cert: Certificate) -> None:
    raw = cert.to_bytes()
    fields = cert_fields(cert)
    bad_inputs = {
        "truncated": [raw[:cut] for cut in (0, 1, 2, 10, 20, 60, 80, len(raw) - 1)],
        "trailing": [raw + b"\x00"],
        "version": [b"\x02" + raw[1:], b"\x00" + raw[1:]],
        "name": [
            encode_cert(**{**fields, "name": b""}),  # type: ignore[arg-type]
            encode_cert(**{**fields, "name": b"\xff\xfe"}),  # type: ignore[arg-type]
            encode_cert(**{**fields, "name": b"a\nb"}),  # type: ignore[arg-type]
        ],
        "subject key": [
            encode_cert(**{**fields, "subject": b"\x09" * 33}),  # type: ignore[arg-type]
            encode_cert(**{**fields, "subject": b"\x01" + bytes(32)}),  # type: ignore[arg-type]
        ],
        "issuer key": [encode_cert(**{**fields, "issuer_key": b""})],  # type: ignore[arg-type]
        "finite": [
            encode_cert(**{**fields, "not_after": float("inf")}),  # type: ignore[arg-type]
            encode_cert(**{**fields, "not_before": float("nan")}),  # type: ignore[arg-type]
        ],
        "not later": [
            encode_cert(**{**fields, "not_after": 1000.0}),  # type: ignore[arg-type]
            encode_cert(**{**fields, "not_before": 3000.0}),  # type: ignore[arg-type]
        ],
        "signature is": [
            encode_cert(**{**fields, "signature": cert.signature[:-1]}),  # type: ignore[arg-type]
            encode_cert(**{**fields, "signature": b""}),  # type: ignore[arg-type]
        ],
    }
    for reason, inputs in bad_inputs.items():
        for data in inputs:
            with pytest.raises(InvalidCertificate) as info:
                Certificate.from_bytes(data)
            assert isinstance(info.value, ValueError)
            assert isinstance(info.value, NautilusError)
            if reason != "truncated":
                assert reason in str(info.value)
    with pytest.raises(TypeError):
        Certificate.from_bytes(raw.hex())  # type: ignore[arg-type]


def test_certificate_issue_errors(issuer: Identity, ids: dict[str, Identity]) -> None:
    subject = ids["ed25519"].public

    def issue(name: object = "n", nb: object = 1.0, na: object = 2.0) -> Certificate:
        return Certificate.issue(issuer, subject, name, not_before=nb, not_after=na)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="later"):
        issue(nb=2.0, na=2.0)
    with pytest.raises(ValueError, match="later"):
        issue(nb=3.0, na=2.0)
    with pytest.raises(ValueError, match="empty"):
        issue(name="")
    with pytest.raises(ValueError, match="256 bytes"):
        issue(name="a" * 256)
    with pytest.raises(ValueError, match="256 bytes"):
        issue(name="é" * 128)
    assert issue(name="a" * 255).subject_name == "a" * 255
    assert issue(name="Alice Smith ünïcode").subject_name == "Alice Smith ünïcode"
    with pytest.raises(ValueError, match="control"):
        issue(name="a\nb")
    for separator in ("\u2028", "\u2029"):  # (not control characters: Zl and Zp)
        with pytest.raises(ValueError, match="control or format"):
            issue(name=f"a{separator}b")
    with pytest.raises(ValueError, match="finite"):
        issue(na=float("inf"))
    with pytest.raises(TypeError):
        issue(name=b"n")
    with pytest.raises(TypeError):
        issue(nb="1")
    with pytest.raises(TypeError):
        issue(nb=True)
    with pytest.raises(TypeError):
        Certificate.issue(issuer.public, subject, "n", not_before=1, not_after=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Certificate.issue(issuer, ids["ed25519"], "n", not_before=1, not_after=2)  # type: ignore[arg-type]


def test_certificate_immutable_and_repr(cert: Certificate) -> None:
    with pytest.raises(AttributeError):
        cert.not_after = 1e12  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cert._not_after = 1e12
    text = repr(cert)
    assert "'alice.example'" in text
    assert cert.subject_key.peer_id in text
    assert cert.issuer_key.peer_id in text


# --------------------------------------------------------------------------- KnownPeers


def test_known_peers_first_use_then_same(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    known = KnownPeers(path)
    assert not path.exists()
    assert "alice" not in known
    key = ids["ed25519"].public
    assert known.check("alice", key) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "alice" in known
    assert known.check("alice", key) is False
    assert known.check("alice", PeerKey.from_bytes(key.to_bytes())) is False
    lines = path.read_text().splitlines()
    assert lines[0] == "# nautilus-known-peers v1"
    assert lines[1:] == [f"alice {key.peer_id} {base64.b64encode(key.to_bytes()).decode()}"]
    assert known.path == str(path)


def test_known_peers_changed_key(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    known = KnownPeers(path)
    known.check("bob", ids["ed25519"].public)
    known.check("carol", ids["ml-dsa-65"].public)
    with pytest.raises(AuthenticationFailed) as info:
        known.check("carol", ids["ed25519+ml-dsa-65"].public)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert "'carol'" in message
    assert "changed" in message
    assert ids["ml-dsa-65"].peer_id in message
    assert ids["ed25519+ml-dsa-65"].peer_id in message
    # nothing was recorded for the impostor
    assert len(path.read_text().splitlines()) == 3
    assert known.check("carol", ids["ml-dsa-65"].public) is False


def test_known_peers_file_is_parsed_again_only_when_it_changed(
    ids: dict[str, Identity], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check reads the file (another process may have written it) but
    decodes its keys again only if its text changed: a file of thousands of
    peers used to cost a tenth of a second per handshake. An edit in place,
    same size, is seen at once."""
    path = tmp_path / "known_peers"
    known = KnownPeers(path)
    alice, mallory = ids["ed25519"].public, ids["ml-dsa-65"].public
    assert known.check("alice", alice) is True
    parses: list[int] = []
    real_parse = KnownPeers._parse
    monkeypatch.setattr(
        KnownPeers, "_parse", lambda self, text: parses.append(1) or real_parse(self, text)
    )
    for _ in range(5):
        assert known.check("alice", alice) is False
    assert len(parses) <= 1  # (once, if the cache held the text before the append)
    parses.clear()
    text = path.read_text()
    line = f"alice {mallory.peer_id} {base64.b64encode(mallory.to_bytes()).decode()}"
    path.write_text(text.replace(text.splitlines()[1], line))  # another key for alice
    with pytest.raises(AuthenticationFailed, match="changed"):
        known.check("alice", alice)
    assert parses == [1]


def test_known_peers_shared_file(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    first, second = KnownPeers(path), KnownPeers(path)
    assert first.check("dave", ids["ed25519"].public) is True
    assert "dave" in second
    assert second.check("dave", ids["ed25519"].public) is False
    with pytest.raises(AuthenticationFailed, match="changed"):
        second.check("dave", ids["ml-dsa-65"].public)
    assert second.check("erin", ids["ml-dsa-65"].public) is True
    assert first.check("erin", ids["ml-dsa-65"].public) is False
    assert len(path.read_text().splitlines()) == 3


def test_known_peers_concurrent_first_use(ids: dict[str, Identity], tmp_path: Path) -> None:
    """Racing first uses of one name record it exactly once (flock around the append)."""
    path = tmp_path / "known_peers"
    key = ids["ed25519"].public
    for round_ in range(10):
        name = f"frank{round_}"
        results: list[bool] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker(
            name: str = name,
            results: list[bool] = results,
            errors: list[BaseException] = errors,
            barrier: threading.Barrier = barrier,
        ) -> None:
            store = KnownPeers(path)
            barrier.wait()
            try:
                results.append(store.check(name, key))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(results) == [False] * 7 + [True]
        lines = path.read_text().splitlines()
        assert sum(line.startswith(f"{name} ") for line in lines) == 1


def test_known_peers_appends_after_missing_newline(
    ids: dict[str, Identity], tmp_path: Path
) -> None:
    path = tmp_path / "known_peers"
    key = ids["ed25519"].public
    entry = f"gina {key.peer_id} {base64.b64encode(key.to_bytes()).decode()}"
    path.write_text(f"# hand written\n\n{entry}")  # no trailing newline
    path.chmod(0o644)
    known = KnownPeers(path)
    assert known.check("hank", ids["ml-dsa-65"].public) is True
    lines = path.read_text().splitlines()
    assert lines[2] == entry
    assert lines[3].startswith("hank ")
    assert known.check("gina", key) is False


def corrupt_message(path: Path) -> str:
    with pytest.raises(IdentityFileError) as info:
        KnownPeers(path)
    return str(info.value)


def test_known_peers_corrupt_lines(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    known = KnownPeers(path)
    key = ids["ed25519"].public
    known.check("ivan", key)
    good = path.read_text()
    other = ids["ml-dsa-65"].public
    b64 = base64.b64encode(key.to_bytes()).decode()
    cases = {
        "expected 'name peer-id key'": f"judy {key.peer_id}\n",
        "not valid base64": f"judy {key.peer_id} {b64[:-3]}!!!\n",
        "not a valid peer key": f"judy {key.peer_id} {base64.b64encode(b'xx').decode()}\n",
        "peer id does not match": f"judy {other.peer_id} {b64}\n",
        "invalid name": f"ju\x07dy {key.peer_id} {b64}\n",
    }
    for reason, line in cases.items():
        path.write_text(good + line)
        message = corrupt_message(path)
        assert str(path) in message
        assert "line 3" in message
        assert reason in message
        with pytest.raises(IdentityFileError, match="line 3"):
            known.check("ivan", key)
        with pytest.raises(IdentityFileError, match="line 3"):
            "ivan" in known  # noqa: B015
    path.write_bytes(b"\xff\xfe\n")
    assert "not UTF-8" in corrupt_message(path)


def test_known_peers_line_with_more_than_three_fields_is_corrupt(
    ids: dict[str, Identity], tmp_path: Path
) -> None:
    path = tmp_path / "known_peers"
    key = ids["ed25519"].public
    KnownPeers(path).check("ivan", key)
    good = path.read_text()
    b64 = base64.b64encode(key.to_bytes()).decode()
    path.write_text(good + f"judy {key.peer_id} {b64} trailing\n")
    message = corrupt_message(path)
    assert "line 3" in message
    assert "expected 'name peer-id key'" in message


def test_an_empty_known_peers_file_is_made_owner_only_by_its_first_entry(
    ids: dict[str, Identity], tmp_path: Path
) -> None:
    """A new file is made with mode 0600; so is an empty one found in place
    (its group may read it, but not write it: it is accepted)."""
    path = tmp_path / "known_peers"
    path.touch()
    path.chmod(0o640)
    assert KnownPeers(path).check("ivan", ids["ed25519"].public)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_known_peers_name_with_two_keys_trusts_neither(
    ids: dict[str, Identity], tmp_path: Path
) -> None:
    """A name recorded twice with different keys (a second line added by hand,
    or by a tool): every line is checked, so neither key is taken as known."""
    path = tmp_path / "known_peers"
    known = KnownPeers(path)
    first, second = ids["ed25519"].public, ids["ml-dsa-65"].public
    known.check("ivan", first)
    with path.open("a") as fh:
        fh.write(f"ivan {second.peer_id} {base64.b64encode(second.to_bytes()).decode()}\n")
    with pytest.raises(AuthenticationFailed, match="line 3"):
        known.check("ivan", first)
    with pytest.raises(AuthenticationFailed, match="line 2"):
        known.check("ivan", second)


def test_known_peers_refuses_identity_file(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ids["ed25519"].save(path)
    secret_values = secrets_of(path)
    message = corrupt_message(path)
    assert "identity file, not a known-peers file" in message
    assert_no_secret(message, secret_values)


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620])
def test_known_peers_writable_by_others(
    ids: dict[str, Identity], tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "known_peers"
    KnownPeers(path).check("kim", ids["ed25519"].public)
    path.chmod(mode)
    message = corrupt_message(path)
    assert f"{mode:04o}" in message
    assert "chmod go-w" in message
    known = object.__new__(KnownPeers)
    object.__setattr__(known, "_path", str(path))
    with pytest.raises(IdentityFileError, match="permissions"):
        known.check("kim", ids["ed25519"].public)


def test_known_peers_readable_by_others_is_fine(ids: dict[str, Identity], tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    KnownPeers(path).check("lee", ids["ed25519"].public)
    path.chmod(0o644)
    assert KnownPeers(path).check("lee", ids["ed25519"].public) is False


def test_known_peers_bad_names(ids: dict[str, Identity], tmp_path: Path) -> None:
    known = KnownPeers(tmp_path / "known_peers")
    key = ids["ed25519"].public
    bad_names = {
        "": "empty",
        "two words": "whitespace",
        "tab\there": "control",
        "nbsp\u00a0here": "whitespace",
        "#comment": "'#'",
        "x" * 256: "256 bytes",
        "bell\x07": "control",
    }
    for bad, reason in bad_names.items():
        with pytest.raises(ValueError, match=reason):
            known.check(bad, key)
    with pytest.raises(TypeError):
        known.check(b"name", key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        known.check("name", key.peer_id)  # type: ignore[arg-type]
    assert known.check("example.com:443", key) is True
    assert known.check("ünïcode-host", key) is True
    assert 5 not in known
    assert not (tmp_path / "known_peers").read_text().count("\n#comment")


def test_known_peers_other_errors(tmp_path: Path, ids: dict[str, Identity]) -> None:
    with pytest.raises(IdentityFileError, match="not a regular file"):
        KnownPeers(tmp_path)
    with pytest.raises(TypeError):
        KnownPeers(42)  # type: ignore[arg-type]
    with pytest.raises(IdentityFileError, match="directory does not exist"):
        KnownPeers(tmp_path / "missing" / "known_peers").check("x", ids["ed25519"].public)


# --------------------------------------------------------------------------- TrustStore


def test_trust_store_argument_validation(ids: dict[str, Identity], tmp_path: Path) -> None:
    key = ids["ed25519"].public
    with pytest.raises(TypeError, match="trusted_peers"):
        TrustStore(trusted_peers=key.peer_id)
    with pytest.raises(TypeError, match="trusted_peers"):
        TrustStore(trusted_peers=key)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"trusted_peers\[1\]"):
        TrustStore(trusted_peers=[key, 5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="trusted_peers"):
        TrustStore(trusted_peers=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"trusted_peers\[0\].*peer id"):
        TrustStore(trusted_peers=["did:key:zzz"])
    with pytest.raises(TypeError, match="trusted_issuers"):
        TrustStore(trusted_issuers=[key.to_bytes()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="trusted_issuers"):
        TrustStore(trusted_issuers=["nautilus:ml-dsa-65:zz"])
    with pytest.raises(TypeError, match="known_peers_file"):
        TrustStore(known_peers_file=3)  # type: ignore[arg-type]
    store = TrustStore(trusted_peers=(p for p in [key]))
    assert store.trusted_peers == (key,)


def test_trust_store_configured(ids: dict[str, Identity], tmp_path: Path) -> None:
    key = ids["ed25519"].public
    assert not TrustStore().configured
    assert TrustStore(trusted_peers=[key]).configured
    assert TrustStore(trusted_peers=[key.peer_id]).configured
    assert TrustStore(trusted_issuers=[key]).configured
    assert TrustStore(known_peers_file=tmp_path / "kp").configured
    assert TrustStore(known_peers_file=str(tmp_path / "kp")).known_peers is not None


def verify(store: TrustStore, key: PeerKey, **kwargs: object) -> str:
    options: dict[str, object] = {"certificate": None, "name": None, "now": 1500.0}
    options.update(kwargs)
    return store.verify(key, **options)  # type: ignore[arg-type]


def test_trust_store_nothing_configured(ids: dict[str, Identity]) -> None:
    key = ids["ed25519"].public
    with pytest.raises(AuthenticationFailed) as info:
        verify(TrustStore(), key, name="host")
    assert str(info.value) == (
        f"peer {key.peer_id} is not trusted: no trust configured (set trusted_peers, "
        "known_peers_file or trusted_issuers, or pass expected_peer)"
    )


def test_trust_store_expected_peer(ids: dict[str, Identity]) -> None:
    key = ids["ed25519"].public
    other = ids["ml-dsa-65"].public
    store = TrustStore()
    assert verify(store, key, expected_peer=key) == "expected"
    assert verify(store, key, expected_peer=key.peer_id) == "expected"
    assert verify(store, other, expected_peer=other.peer_id) == "expected"
    with pytest.raises(AuthenticationFailed) as info:
        verify(store, other, expected_peer=key)
    assert str(info.value) == f"wrong peer: expected {key.peer_id}, got {other.peer_id}"
    with pytest.raises(AuthenticationFailed, match=f"wrong peer: expected {key.peer_id}"):
        verify(store, other, expected_peer=key.peer_id)
    with pytest.raises(ValueError, match="expected_peer"):
        verify(store, key, expected_peer="did:key:bad")
    with pytest.raises(TypeError, match="expected_peer"):
        verify(store, key, expected_peer=key.to_bytes())


def test_trust_store_expected_peer_beats_pins(ids: dict[str, Identity]) -> None:
    key = ids["ed25519"].public
    other = ids["ml-dsa-65"].public
    store = TrustStore(trusted_peers=[key, other])
    with pytest.raises(AuthenticationFailed, match="wrong peer"):
        verify(store, other, expected_peer=key)


def test_trust_store_pinned(ids: dict[str, Identity], tmp_path: Path) -> None:
    key = ids["ed25519"].public
    hybrid = ids["ed25519+ml-dsa-65"].public
    path = tmp_path / "kp"
    store = TrustStore(trusted_peers=[key, hybrid.peer_id], known_peers_file=path)
    assert verify(store, key, name="a") == "pinned"
    assert verify(store, hybrid, name="a") == "pinned"
    assert not path.exists()  # a pinned peer is not recorded
    with pytest.raises(AuthenticationFailed) as info:
        verify(TrustStore(trusted_peers=[key]), ids["ml-dsa-65"].public)
    assert str(info.value) == (
        f"peer {ids['ml-dsa-65'].peer_id} is not trusted: it is not in trusted_peers"
    )


def test_trust_store_certificate(
    ids: dict[str, Identity], issuer: Identity, cert: Certificate, tmp_path: Path
) -> None:
    key = ids["ed25519"].public
    path = tmp_path / "kp"
    store = TrustStore(trusted_issuers=[issuer.peer_id], known_peers_file=path)
    assert verify(store, key, certificate=cert) == "certificate"
    assert verify(store, key, certificate=cert, name="alice.example") == "certificate"
    assert not path.exists()  # a certified peer is not recorded
    with pytest.raises(AuthenticationFailed, match="expired"):
        verify(store, key, certificate=cert, name="alice.example", now=3000.0)
    with pytest.raises(AuthenticationFailed, match="not yet valid"):
        verify(store, key, certificate=cert, name="alice.example", now=10.0)
    assert not path.exists()  # a failed certificate does not fall back to TOFU
    with pytest.raises(AuthenticationFailed, match=r"not for 'bob\.example'"):
        verify(store, key, certificate=cert, name="bob.example")
    with pytest.raises(AuthenticationFailed, match="unknown issuer"):
        verify(TrustStore(trusted_issuers=[key]), key, certificate=cert)


def test_a_certificate_for_a_host_is_valid_for_any_port_of_it(
    ids: dict[str, Identity], issuer: Identity, cert: Certificate
) -> None:
    """The socket and asyncio APIs name a server "host:port" by default; a
    certificate names the host (valid on any port) or "host:port" (that port
    only). A certificate for "alice.example" used to fail as "not for
    'alice.example:443'" unless server_name was passed."""
    store = TrustStore(trusted_issuers=[issuer.public])
    key = ids["ed25519"].public
    for name in ("alice.example:443", "alice.example:1", "[alice.example]:443"):
        assert verify(store, key, certificate=cert, name=name) == "certificate"
    for name in ("alice.example:", "alice.example:x", "alice.example:443:1", "bob.example:443"):
        with pytest.raises(AuthenticationFailed, match="not for"):
            verify(store, key, certificate=cert, name=name)
    on_a_port = Certificate.issue(issuer, key, "alice.example:443", not_before=1.0, not_after=2e3)
    assert verify(store, key, certificate=on_a_port, name="alice.example:443") == "certificate"
    with pytest.raises(AuthenticationFailed, match=r"not for 'alice\.example:8443'"):
        verify(store, key, certificate=on_a_port, name="alice.example:8443")
    with pytest.raises(AuthenticationFailed, match=r"not for 'alice\.example'"):
        verify(store, key, certificate=on_a_port, name="alice.example")
    # A name whose host part holds a colon outside brackets has no host.
    with pytest.raises(AuthenticationFailed, match=r"not for 'alice\.example:443:1'"):
        verify(store, key, certificate=on_a_port, name="alice.example:443:1")
    # Nor one whose brackets hold a colon but no IPv6 address: the certificate
    # for "alice.example:443" is not for a server named "[alice.example:443]:1".
    for name in ("[alice.example:443]:1", "[alice.example:443]:443"):
        with pytest.raises(AuthenticationFailed, match="not for"):
            verify(store, key, certificate=on_a_port, name=name)
    # A certificate for an IPv6 address is for "[address]:port".
    on_v6 = Certificate.issue(issuer, key, "fe80::1%eth0", not_before=1.0, not_after=2e3)
    for name in ("[fe80::1%eth0]:443", "[FE80::1%eth0]:1"):
        assert verify(store, key, certificate=on_v6, name=name) == "certificate"


def test_host_names_compare_without_regard_to_case(
    ids: dict[str, Identity], issuer: Identity, cert: Certificate, tmp_path: Path
) -> None:
    """Host names are case-insensitive: a certificate for "alice.example" is
    for "ALICE.Example:443", and the default server name of an address is in
    lower case, so "EXAMPLE.com" and "example.com" are one known-peers entry
    (two entries would let a first use under the other spelling be trusted
    anew). An exact name (no port) still compares exactly."""
    from nautilus.asyncio import _default_server_name as asyncio_name
    from nautilus.sockets import _default_server_name as socket_name

    store = TrustStore(trusted_issuers=[issuer.public])
    key = ids["ed25519"].public
    for name in ("ALICE.example:443", "[Alice.Example]:443"):
        assert verify(store, key, certificate=cert, name=name) == "certificate"
    with pytest.raises(AuthenticationFailed, match="not for"):
        verify(store, key, certificate=cert, name="ALICE.example")
    assert socket_name(("Example.COM", 443)) == "example.com:443"
    assert asyncio_name("Example.COM", 443) == "example.com:443"
    assert socket_name(("FE80::A", 443)) == "[fe80::a]:443"
    known = TrustStore(known_peers_file=tmp_path / "known_peers")
    assert verify(known, key, name=socket_name(("Example.COM", 443))) == "first-use"
    other = ids["ml-dsa-65"].public
    with pytest.raises(AuthenticationFailed, match="changed"):
        verify(known, other, name=asyncio_name("example.com", 443))


def test_trust_store_certificate_wrong_subject(
    ids: dict[str, Identity], issuer: Identity, cert: Certificate
) -> None:
    store = TrustStore(trusted_issuers=[issuer.public])
    impostor = ids["ml-dsa-65"].public
    with pytest.raises(AuthenticationFailed) as info:
        verify(store, impostor, certificate=cert)
    message = str(info.value)
    assert "'alice.example'" in message
    assert cert.subject_key.peer_id in message
    assert impostor.peer_id in message


def test_trust_store_certificate_without_issuers(
    ids: dict[str, Identity], cert: Certificate
) -> None:
    key = ids["ed25519"].public
    with pytest.raises(AuthenticationFailed, match="no trust configured"):
        verify(TrustStore(), key, certificate=cert)
    with pytest.raises(AuthenticationFailed, match=r"no trusted_issuers"):
        verify(TrustStore(trusted_peers=[ids["ml-dsa-65"].public]), key, certificate=cert)
    with pytest.raises(AuthenticationFailed, match="presented no certificate"):
        verify(TrustStore(trusted_issuers=[key]), key)


def test_trust_store_known_peers(ids: dict[str, Identity], tmp_path: Path) -> None:
    key = ids["ed25519"].public
    path = tmp_path / "kp"
    store = TrustStore(known_peers_file=path)
    assert verify(store, key, name="server") == "first-use"
    assert verify(store, key, name="server") == "known-peers"
    assert verify(TrustStore(known_peers_file=path), key, name="server") == "known-peers"
    with pytest.raises(AuthenticationFailed, match=r"'server' changed.*line 2"):
        verify(store, ids["ml-dsa-65"].public, name="server")
    with pytest.raises(AuthenticationFailed, match="no peer name"):
        verify(store, key)
    # the name may come from the peer (a server keys clients by certificate name)
    with pytest.raises(AuthenticationFailed, match="'Alice Smith' cannot be looked up"):
        verify(store, key, name="Alice Smith")
    assert "Alice" not in path.read_text()


def test_trust_store_verify_argument_errors(ids: dict[str, Identity]) -> None:
    key = ids["ed25519"].public
    store = TrustStore(trusted_peers=[key])
    with pytest.raises(TypeError, match="key"):
        verify(store, key.peer_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="certificate"):
        verify(store, key, certificate=b"cert")
    with pytest.raises(TypeError, match="name"):
        verify(store, key, name=5)
    with pytest.raises(TypeError, match="now"):
        verify(store, key, now=None)
    with pytest.raises(ValueError, match="finite"):
        verify(store, key, now=float("inf"))


def test_trust_store_known_peers_file_checked_early(tmp_path: Path) -> None:
    path = tmp_path / "kp"
    path.write_text("garbage line here\n")
    with pytest.raises(IdentityFileError, match="line 1"):
        TrustStore(known_peers_file=path)


@pytest.mark.parametrize("huge", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_int_time_beyond_float_range_is_value_error(
    issuer: Identity, ids: dict[str, Identity], huge: int
) -> None:
    key = ids["ed25519"].public
    with pytest.raises(ValueError, match="not_after is too large"):
        Certificate.issue(issuer, key, "n", not_before=0, not_after=huge)
    with pytest.raises(ValueError, match="not_before is too large"):
        Certificate.issue(issuer, key, "n", not_before=huge, not_after=1)
    cert = Certificate.issue(issuer, key, "n", not_before=0, not_after=1)
    with pytest.raises(ValueError, match="now is too large"):
        cert.verify([issuer.public], huge)
    with pytest.raises(ValueError, match="now is too large"):
        verify(TrustStore(trusted_peers=[key]), key, now=huge)
    # The largest int a float holds is still a time (far in the future).
    assert Certificate.issue(issuer, key, "n", not_before=0, not_after=2**1023).not_after > 0


def test_paths_that_cannot_name_a_file_are_refused_by_name(tmp_path: Path) -> None:
    """An empty path, or one with a NUL character, is a ValueError that names
    the argument (it used to be os's bare "embedded null byte", or for an
    empty known-peers path no error at all until the first write)."""
    ident = Identity.generate()
    for bad in ("", "peers\0.txt"):
        with pytest.raises(ValueError, match=r"^path (must not be empty|contains a NUL)"):
            ident.save(bad)
        with pytest.raises(ValueError, match=r"^path (must not be empty|contains a NUL)"):
            Identity.load(bad)
        with pytest.raises(ValueError, match=r"^path (must not be empty|contains a NUL)"):
            KnownPeers(bad)
        with pytest.raises(ValueError, match=r"^known_peers_file (must not be empty|contains)"):
            TrustStore(known_peers_file=bad)


def test_a_relative_known_peers_path_stays_the_same_file_after_chdir(
    ids: dict[str, Identity], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    known = KnownPeers("known_peers")
    assert known.path == str(tmp_path / "a" / "known_peers")
    monkeypatch.chdir(tmp_path / "b")
    assert known.check("alice", ids["ed25519"].public) is True
    assert (tmp_path / "a" / "known_peers").exists()
    assert not (tmp_path / "b" / "known_peers").exists()


def test_paths_through_a_symlink_and_dotdot_name_the_files_the_system_opens(
    ids: dict[str, Identity], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "link/../f" is f next to link's target, as open() resolves it, not the f
    lexically next to link: KnownPeers used to normalise the path first (and
    Identity.save to make its temporary file there)."""
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to(tmp_path / "real" / "inner")
    monkeypatch.chdir(tmp_path / "work")
    known = KnownPeers(os.path.join("link", "..", "known_peers"))
    assert known.check("alice", ids["ed25519"].public) is True
    assert (tmp_path / "real" / "known_peers").exists()
    assert not (tmp_path / "work" / "known_peers").exists()
    monkeypatch.chdir(tmp_path)  # still the same file after chdir
    assert KnownPeers(known.path).check("alice", ids["ed25519"].public) is False  # known
    # Identity.save makes its temporary file in the directory of the result.
    made: list[str] = []
    real_open = os.open

    def watch(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if flags & os.O_CREAT:
            made.append(os.path.realpath(os.path.dirname(path) or "."))
        return real_open(path, flags, mode, **kw)

    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(os, "open", watch)
    ids["ed25519"].save(os.path.join("link", "..", "id.key"))
    monkeypatch.undo()
    assert made == [str((tmp_path / "real").resolve())]
    assert Identity.load(tmp_path / "real" / "id.key").public == ids["ed25519"].public


def test_save_to_a_name_at_the_file_system_limit(ids: dict[str, Identity], tmp_path: Path) -> None:
    """A name of 250 characters leaves no room for the temporary name's prefix
    and suffix (".NAME.<16 hex>.tmp" is over 255): a short one is used then."""
    path = tmp_path / ("k" * 250)
    ids["ed25519"].save(path)
    assert Identity.load(path).public == ids["ed25519"].public
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
