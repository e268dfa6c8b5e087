"""X25519 (as used by X25519KEMPrivateKey.decapsulate) against Wycheproof.

Policy: an all-zero shared secret is rejected with nautilus.InvalidKey; every
other result must equal Wycheproof's ``shared``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from vectors_loader import cases, load, params, unhex

from nautilus import InvalidKey
from nautilus.kem import X25519KEMPrivateKey

pytestmark = pytest.mark.native

X25519 = "wycheproof/x25519_test.json"
ZERO = bytes(32)
CASES = params(X25519, type="XdhComp", curve="curve25519")


def _must_reject(test: dict[str, Any]) -> bool:
    return "ZeroSharedSecret" in test["flags"] or unhex(test["shared"]) == ZERO


def test_case_counts() -> None:
    assert load(X25519)["numberOfTests"] == 518
    assert len(CASES) == 518
    assert len(list(cases(X25519))) == 518  # the filter above drops nothing
    results = Counter(p.values[1]["result"] for p in CASES)
    assert results == {"valid": 264, "acceptable": 254}
    assert sum(_must_reject(p.values[1]) for p in CASES) == 31
    # No valid case has an all-zero secret, so the policy never rejects one.
    assert not any(_must_reject(p.values[1]) for p in CASES if p.values[1]["result"] == "valid")


@pytest.mark.parametrize(("group", "test"), CASES)
def test_x25519(group: dict[str, Any], test: dict[str, Any]) -> None:
    private = unhex(test["private"])
    public = unhex(test["public"])
    shared = unhex(test["shared"])
    assert len(private) == len(public) == len(shared) == 32
    key = X25519KEMPrivateKey.from_seed_bytes(private)

    if test["result"] == "valid":
        assert key.decapsulate(public) == shared
        return
    assert test["result"] == "acceptable"
    if _must_reject(test):
        with pytest.raises(InvalidKey):
            key.decapsulate(public)
        return
    # Twist points, low-order points with a nonzero result, non-canonical encodings:
    # computing a result is fine if it is the right one; rejecting is not (the result
    # is nonzero, so our policy gives no reason to).
    try:
        got = key.decapsulate(public)
    except InvalidKey:
        assert shared == ZERO, "rejected a public key whose shared secret is not all-zero"
    else:
        assert got == shared
