"""Wycheproof known-answer tests for the one-shot AEAD (record.AEAD).

AES-GCM with 128- and 256-bit keys (on Nautilus's own AES-GCM code where the
CPU can run it, and on OpenSSL's) and ChaCha20-Poly1305. Nautilus only takes
96-bit nonces, so every case with another IV size must be refused with
ValueError, valid or not; AES-192 is not offered at all.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import gcm_codes
import pytest
from vectors_loader import cases, params, unhex

import nautilus
from nautilus import record
from nautilus.record import AEAD

pytestmark = pytest.mark.native

AES_GCM = "wycheproof/aes_gcm_test.json"
CHACHA = "wycheproof/chacha20_poly1305_test.json"

AES_NAMES = {128: "aes-128-gcm", 256: "aes-256-gcm"}

AES_PARAMS = params(AES_GCM, keySize=128) + params(AES_GCM, keySize=256)
CHACHA_PARAMS = params(CHACHA)


def _tally(relpath: str, **group_filter: Any) -> Counter[tuple[bool, str]]:
    """(96-bit IV?, result) -> number of cases."""
    return Counter(
        (group["ivSize"] == 96, test["result"]) for group, test in cases(relpath, **group_filter)
    )


def test_aes_gcm_case_counts() -> None:
    # 316 cases in the file: 108 with 128-bit keys, 105 with 256-bit keys, and
    # 103 with 192-bit keys, which Nautilus does not offer.
    assert len(AES_PARAMS) == 213
    assert sum(1 for _ in cases(AES_GCM)) == 316
    assert sum(1 for _ in cases(AES_GCM, keySize=192)) == 103
    tally = _tally(AES_GCM, keySize=128) + _tally(AES_GCM, keySize=256)
    assert tally == {
        (True, "valid"): 79,
        (True, "invalid"): 54,
        (False, "valid"): 76,
        (False, "invalid"): 4,
    }


def test_chacha20_poly1305_case_counts() -> None:
    assert len(CHACHA_PARAMS) == 325
    assert _tally(CHACHA) == {
        (True, "valid"): 256,
        (True, "invalid"): 60,
        (False, "invalid"): 9,
    }


@pytest.mark.parametrize("cipher", ["aes-128-gcm", "aes-256-gcm"])
def test_aes_192_key_is_refused(cipher: str) -> None:
    _group, test = next(iter(cases(AES_GCM, keySize=192)))
    key = unhex(test["key"])
    assert len(key) == 24
    with pytest.raises(ValueError, match="key"):
        AEAD(cipher, key)


def test_no_aes_192_cipher_name() -> None:
    assert not any("192" in name for name in record.CIPHERS)
    with pytest.raises(ValueError, match="unknown cipher"):
        AEAD("aes-192-gcm", bytes(24))


def _check_case(cipher: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    key = unhex(test["key"])
    iv = unhex(test["iv"])
    aad = unhex(test["aad"])
    msg = unhex(test["msg"])
    sealed = unhex(test["ct"]) + unhex(test["tag"])
    assert group["tagSize"] == 128
    assert len(iv) * 8 == group["ivSize"]
    aead = AEAD(cipher, key)

    if group["ivSize"] != 96:
        # Valid GCM or not, Nautilus refuses nonces that are not 12 bytes.
        with pytest.raises(ValueError, match="nonce"):
            aead.encrypt(iv, msg, aad)
        with pytest.raises(ValueError, match="nonce"):
            aead.decrypt(iv, sealed, aad)
        return

    if test["result"] == "valid":
        assert aead.encrypt(iv, msg, aad) == sealed
        assert aead.decrypt(iv, sealed, aad) == msg
    elif test["result"] == "invalid":
        with pytest.raises(nautilus.IntegrityError):
            aead.decrypt(iv, sealed, aad)
        # Sealing the message again gives the true tag, not the damaged one.
        assert aead.encrypt(iv, msg, aad) != sealed
    else:  # pragma: no cover - the AEAD files have no "acceptable" cases
        pytest.fail(f"unexpected result {test['result']!r}")


@pytest.mark.parametrize("code", gcm_codes.AVAILABLE)
@pytest.mark.parametrize(("group", "test"), AES_PARAMS)
def test_aes_gcm(code: str, group: dict[str, Any], test: dict[str, Any]) -> None:
    with gcm_codes.using(code):  # Nautilus's own AES-GCM (if this CPU can) and OpenSSL's
        _check_case(AES_NAMES[group["keySize"]], group, test)


@pytest.mark.parametrize(("group", "test"), CHACHA_PARAMS)
def test_chacha20_poly1305(group: dict[str, Any], test: dict[str, Any]) -> None:
    assert group["keySize"] == 256
    _check_case("chacha20-poly1305", group, test)


@pytest.mark.parametrize("cipher", ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"])
def test_decrypt_shorter_than_tag(cipher: str) -> None:
    aead = AEAD(cipher, bytes(record.key_size(cipher)))
    with pytest.raises(nautilus.IntegrityError):
        aead.decrypt(bytes(12), bytes(15))
