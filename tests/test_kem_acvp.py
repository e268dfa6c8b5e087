"""ML-KEM-768 / ML-KEM-1024 against NIST's ACVP known answers (FIPS 203).

The ACVP files also hold ML-KEM-512 groups; Nautilus does not implement
ML-KEM-512, so those groups are filtered out by ``parameterSet`` (and
``test_only_mlkem512_is_left_out`` checks that nothing else is dropped).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from vectors_loader import cases, params, unhex

from nautilus import InvalidKey
from nautilus.kem import (
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
    MLKEM1024PrivateKey,
    MLKEM1024PublicKey,
)

pytestmark = pytest.mark.native

KEYGEN = "nist-acvp/ML-KEM-keyGen-FIPS203/internalProjection.json"
ENCAP_DECAP = "nist-acvp/ML-KEM-encapDecap-FIPS203/internalProjection.json"

PRIVATE = {"ML-KEM-768": MLKEM768PrivateKey, "ML-KEM-1024": MLKEM1024PrivateKey}
PUBLIC = {"ML-KEM-768": MLKEM768PublicKey, "ML-KEM-1024": MLKEM1024PublicKey}
SUPPORTED = tuple(PRIVATE)
UNSUPPORTED = "ML-KEM-512"


def _select(relpath: str, **group_filter: Any) -> list[Any]:
    """Params of every supported parameter set (ML-KEM-512 is never asked for)."""
    out: list[Any] = []
    for parameter_set in SUPPORTED:
        out += params(relpath, parameterSet=parameter_set, **group_filter)
    return out


KEYGEN_CASES = _select(KEYGEN)
ENCAP_CASES = _select(ENCAP_DECAP, function="encapsulation")
DECAP_CASES = _select(ENCAP_DECAP, function="decapsulation")
EK_CHECK_CASES = _select(ENCAP_DECAP, function="encapsulationKeyCheck")
DK_CHECK_CASES = _select(ENCAP_DECAP, function="decapsulationKeyCheck")

# Per supported parameter set; documented in /work/shared/vectors/README.md.
EXPECTED_PER_SET = {
    "keyGen": (KEYGEN_CASES, 25),
    "encapsulation": (ENCAP_CASES, 25),
    "decapsulation": (DECAP_CASES, 10),
    "encapsulationKeyCheck": (EK_CHECK_CASES, 10),
    "decapsulationKeyCheck": (DK_CHECK_CASES, 10),
}


@pytest.mark.parametrize("function", list(EXPECTED_PER_SET))
def test_case_counts(function: str) -> None:
    selected, per_set = EXPECTED_PER_SET[function]
    by_set = Counter(p.values[0]["parameterSet"] for p in selected)
    assert by_set == dict.fromkeys(SUPPORTED, per_set)
    ids = [p.id for p in selected]
    assert len(set(ids)) == len(ids)


def test_only_mlkem512_is_left_out() -> None:
    for relpath, selected, total in (
        (KEYGEN, KEYGEN_CASES, 75),
        (ENCAP_DECAP, ENCAP_CASES + DECAP_CASES + EK_CHECK_CASES + DK_CHECK_CASES, 165),
    ):
        in_file = Counter(g["parameterSet"] for g, _ in cases(relpath))
        kept = Counter(p.values[0]["parameterSet"] for p in selected)
        assert in_file.total() == total
        # Every supported case is kept; what is dropped is ML-KEM-512 and only it.
        assert {s: in_file[s] for s in SUPPORTED} == dict(kept)
        assert set(in_file - kept) == {UNSUPPORTED}


def test_modified_ciphertext_cases_are_present() -> None:
    reasons = Counter((g["parameterSet"], t["reason"]) for g, t in (p.values for p in DECAP_CASES))
    for parameter_set in SUPPORTED:
        assert reasons[parameter_set, "modified ciphertext"] == 5
        assert reasons[parameter_set, "valid decapsulation"] == 5


def test_key_checks_have_both_outcomes() -> None:
    for selected in (EK_CHECK_CASES, DK_CHECK_CASES):
        outcomes = Counter(
            (g["parameterSet"], t["testPassed"]) for g, t in (p.values for p in selected)
        )
        for parameter_set in SUPPORTED:
            assert outcomes[parameter_set, True] == 5
            assert outcomes[parameter_set, False] == 5


@pytest.mark.parametrize(("group", "test"), KEYGEN_CASES)
def test_keygen(group: dict[str, Any], test: dict[str, Any]) -> None:
    seed = unhex(test["d"]) + unhex(test["z"])
    key = PRIVATE[group["parameterSet"]].from_seed_bytes(seed)
    assert key.public_key().public_bytes_raw() == unhex(test["ek"])
    assert key.private_bytes_expanded() == unhex(test["dk"])
    assert key.private_bytes_raw() == seed


@pytest.mark.parametrize(("group", "test"), ENCAP_CASES)
def test_encapsulation(group: dict[str, Any], test: dict[str, Any]) -> None:
    public = PUBLIC[group["parameterSet"]].from_public_bytes(unhex(test["ek"]))
    shared, ciphertext = public._encapsulate_with_entropy(unhex(test["m"]))
    assert ciphertext == unhex(test["c"])
    assert shared == unhex(test["k"])
    # The matching decapsulation key recovers it.
    private = PRIVATE[group["parameterSet"]].from_expanded_bytes(unhex(test["dk"]))
    assert private.decapsulate(ciphertext) == shared


@pytest.mark.parametrize(("group", "test"), DECAP_CASES)
def test_decapsulation(group: dict[str, Any], test: dict[str, Any]) -> None:
    private = PRIVATE[group["parameterSet"]].from_expanded_bytes(unhex(test["dk"]))
    assert private.public_key().public_bytes_raw() == unhex(test["ek"])
    # "modified ciphertext" cases expect the implicit-rejection key, not an error.
    assert private.decapsulate(unhex(test["c"])) == unhex(test["k"])


@pytest.mark.parametrize(("group", "test"), EK_CHECK_CASES)
def test_encapsulation_key_check(group: dict[str, Any], test: dict[str, Any]) -> None:
    ek = unhex(test["ek"])
    cls = PUBLIC[group["parameterSet"]]
    if test["testPassed"]:
        assert cls.from_public_bytes(ek).public_bytes_raw() == ek
    else:
        with pytest.raises(InvalidKey):
            cls.from_public_bytes(ek)


@pytest.mark.parametrize(("group", "test"), DK_CHECK_CASES)
def test_decapsulation_key_check(group: dict[str, Any], test: dict[str, Any]) -> None:
    dk = unhex(test["dk"])
    cls = PRIVATE[group["parameterSet"]]
    if test["testPassed"]:
        key = cls.from_expanded_bytes(dk)
        assert key.private_bytes_expanded() == dk
        assert key.public_key().public_bytes_raw() == unhex(test["ek"])
    else:
        with pytest.raises(InvalidKey):
            cls.from_expanded_bytes(dk)
