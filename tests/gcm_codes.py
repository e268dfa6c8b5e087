"""Which AES-GCM code the keys made in a block use (nautilus._bindings.aes_gcm_code):
Nautilus's own (csrc/nt_gcm.c, on CPUs with VAES and VPCLMULQDQ) or OpenSSL's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from nautilus import _bindings as _b

OWN, OPENSSL = _b.AES_GCM_CODES


def _own_available() -> bool:
    before = _b.aes_gcm_code()
    try:
        return _b.aes_gcm_code(OWN) == OWN
    finally:
        _b.aes_gcm_code(before)


OWN_AVAILABLE = _own_available()
# The codes this CPU can run, for parametrizing.
AVAILABLE = (OWN, OPENSSL) if OWN_AVAILABLE else (OPENSSL,)
NO_OWN = "this CPU lacks VAES or VPCLMULQDQ: AES-GCM runs on OpenSSL's code only"


@contextmanager
def using(code: str) -> Iterator[None]:
    """AES-GCM keys set inside the block use ``code`` (skips the test if the CPU cannot)."""
    before = _b.aes_gcm_code()
    try:
        if _b.aes_gcm_code(code) != code:
            pytest.skip(NO_OWN)
        yield
    finally:
        _b.aes_gcm_code(before)
