"""HKDF (nautilus.kdf) against Wycheproof, RFC 5869 and its own argument checks."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from typing import Any

import pytest
from vectors_loader import cases, params, unhex

from nautilus import kdf

FILES = {
    "sha256": "wycheproof/hkdf_sha256_test.json",
    "sha384": "wycheproof/hkdf_sha384_test.json",
}
HASH_LEN = {"sha256": 32, "sha384": 48}

WYCHEPROOF = [
    pytest.param(name, *p.values, id=f"{name}-{p.id}")
    for name, relpath in FILES.items()
    for p in params(relpath)
]


@pytest.mark.parametrize(("name", "valid", "invalid"), [("sha256", 83, 3), ("sha384", 80, 3)])
def test_wycheproof_case_counts(name: str, valid: int, invalid: int) -> None:
    tally = Counter(test["result"] for _group, test in cases(FILES[name]))
    assert tally == {"valid": valid, "invalid": invalid}
    assert sum(1 for p in WYCHEPROOF if p.values[0] == name) == valid + invalid


@pytest.mark.parametrize(("name", "group", "test"), WYCHEPROOF)
def test_wycheproof(name: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    ikm, salt, info = unhex(test["ikm"]), unhex(test["salt"]), unhex(test["info"])
    size = test["size"]
    assert len(ikm) * 8 == group["keySize"]
    if test["result"] == "valid":
        okm = kdf.hkdf(name, ikm, salt, info, size)
        assert okm == unhex(test["okm"])
        assert len(okm) == size
        # The two halves give the same answer as the combined call.
        prk = kdf.hkdf_extract(name, salt, ikm)
        assert len(prk) == HASH_LEN[name]
        assert kdf.hkdf_expand(name, prk, info, size) == okm
    else:
        assert test["result"] == "invalid"
        assert "SizeTooLarge" in test["flags"]
        assert size > 255 * HASH_LEN[name]
        with pytest.raises(ValueError, match="length"):
            kdf.hkdf(name, ikm, salt, info, size)


# RFC 5869, Appendix A.1 (Test Case 1), typed in from the RFC text.
RFC5869_TC1_IKM = bytes.fromhex("0b" * 22)
RFC5869_TC1_SALT = bytes.fromhex("000102030405060708090a0b0c")
RFC5869_TC1_INFO = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
RFC5869_TC1_L = 42
RFC5869_TC1_PRK = bytes.fromhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
RFC5869_TC1_OKM = bytes.fromhex(
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
)


def test_rfc5869_test_case_1() -> None:
    assert len(RFC5869_TC1_IKM) == 22
    assert len(RFC5869_TC1_SALT) == 13
    assert len(RFC5869_TC1_INFO) == 10
    prk = kdf.hkdf_extract("sha256", RFC5869_TC1_SALT, RFC5869_TC1_IKM)
    assert prk == RFC5869_TC1_PRK
    assert kdf.hkdf_expand("sha256", prk, RFC5869_TC1_INFO, RFC5869_TC1_L) == RFC5869_TC1_OKM
    okm = kdf.hkdf("sha256", RFC5869_TC1_IKM, RFC5869_TC1_SALT, RFC5869_TC1_INFO, RFC5869_TC1_L)
    assert okm == RFC5869_TC1_OKM


@pytest.mark.parametrize("name", ["sha256", "sha384"])
def test_empty_salt_is_hash_len_zeros(name: str) -> None:
    # RFC 5869 section 2.2: a missing salt is HashLen zero bytes; checked with
    # the standard library's HMAC, independently of the code under test.
    ikm = b"input keying material"
    expected = hmac.new(bytes(HASH_LEN[name]), ikm, getattr(hashlib, name)).digest()
    assert kdf.hkdf_extract(name, b"", ikm) == expected
    assert kdf.hkdf_extract(name, bytes(HASH_LEN[name]), ikm) == expected


@pytest.mark.parametrize("name", ["sha256", "sha384"])
def test_bytes_like_inputs_accepted(name: str) -> None:
    expected = kdf.hkdf(name, b"ikm", b"salt", b"info", 20)
    got = kdf.hkdf(name, bytearray(b"ikm"), memoryview(b"salt"), bytearray(b"info"), 20)
    assert got == expected


@pytest.mark.parametrize("name", ["sha256", "sha384"])
def test_length_bounds(name: str) -> None:
    top = 255 * HASH_LEN[name]
    assert len(kdf.hkdf(name, b"k", b"s", b"i", 1)) == 1
    assert len(kdf.hkdf(name, b"k", b"s", b"i", top)) == top
    with pytest.raises(ValueError, match="length"):
        kdf.hkdf(name, b"k", b"s", b"i", top + 1)


@pytest.mark.parametrize("length", [0, -1])
def test_length_not_positive(length: int) -> None:
    with pytest.raises(ValueError, match="length"):
        kdf.hkdf("sha256", b"k", b"s", b"i", length)
    with pytest.raises(ValueError, match="length"):
        kdf.hkdf_expand("sha256", bytes(32), b"i", length)


@pytest.mark.parametrize("length", [True, 32.0, "32", None])
def test_length_wrong_type(length: Any) -> None:
    with pytest.raises(TypeError, match="length"):
        kdf.hkdf("sha256", b"k", b"s", b"i", length)


@pytest.mark.parametrize("algorithm", ["sha512", "SHA256", "sha-256", ""])
def test_unknown_hash(algorithm: Any) -> None:
    with pytest.raises(ValueError, match="unknown hash"):
        kdf.hkdf(algorithm, b"k", b"s", b"i", 32)
    with pytest.raises(ValueError, match="unknown hash"):
        kdf.hkdf_extract(algorithm, b"s", b"k")
    with pytest.raises(ValueError, match="unknown hash"):
        kdf.hkdf_expand(algorithm, bytes(32), b"i", 32)


@pytest.mark.parametrize("algorithm", [None, 256, ["sha256"], b"sha256"])
def test_hash_name_not_a_str(algorithm: Any) -> None:
    for call in (
        lambda: kdf.hkdf(algorithm, b"k", b"s", b"i", 32),
        lambda: kdf.hkdf_extract(algorithm, b"s", b"k"),
        lambda: kdf.hkdf_expand(algorithm, bytes(32), b"i", 32),
    ):
        with pytest.raises(TypeError, match="algorithm must be a str"):
            call()


@pytest.mark.parametrize("name", ["sha256", "sha384"])
def test_expand_needs_a_prk_of_hash_length(name: str) -> None:
    size = HASH_LEN[name]
    for short in (b"", bytes(1), bytes(size - 1)):
        with pytest.raises(ValueError, match=f"prk must be at least {size} bytes"):
            kdf.hkdf_expand(name, short, b"i", 32)
    assert len(kdf.hkdf_expand(name, bytes(size), b"i", 32)) == 32
    assert len(kdf.hkdf_expand(name, bytearray(size + 1), b"i", 32)) == 32


@pytest.mark.parametrize("bad", ["text", None, 7, [1, 2]])
@pytest.mark.parametrize("argument", ["ikm", "salt", "info"])
def test_non_bytes_input(argument: str, bad: Any) -> None:
    args = {"ikm": b"k", "salt": b"s", "info": b"i"}
    args[argument] = bad
    with pytest.raises(TypeError, match=argument):
        kdf.hkdf("sha256", args["ikm"], args["salt"], args["info"], 32)


@pytest.mark.parametrize("bad", ["text", None, 7])
def test_non_bytes_prk(bad: Any) -> None:
    with pytest.raises(TypeError, match="prk"):
        kdf.hkdf_expand("sha256", bad, b"i", 32)


def test_outputs_depend_on_every_input() -> None:
    base = kdf.hkdf("sha256", b"k", b"s", b"i", 32)
    assert kdf.hkdf("sha384", b"k", b"s", b"i", 32) != base
    assert kdf.hkdf("sha256", b"K", b"s", b"i", 32) != base
    assert kdf.hkdf("sha256", b"k", b"S", b"i", 32) != base
    assert kdf.hkdf("sha256", b"k", b"s", b"I", 32) != base
    # A shorter output is a prefix of a longer one (HKDF-Expand's T(1) || T(2) ...).
    assert kdf.hkdf("sha256", b"k", b"s", b"i", 80)[:32] == base
