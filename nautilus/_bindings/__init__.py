"""The only importer of the compiled ``nautilus._native`` module.

Everything that crosses into C goes through here: argument checks happen
before every call, sizes come from the C constants, and C error codes become
Nautilus exceptions. Public modules (``nautilus.kem``, ``nautilus.record``) use
these helpers and never see cffi objects except opaque handles.
"""

from __future__ import annotations

import os
from array import array
from itertools import chain
from struct import Struct
from typing import Any, NamedTuple

from nautilus._version import __version__
from nautilus.exceptions import (
    ClosedError,
    CryptoFailure,
    IntegrityError,
    InvalidKey,
    RecordFormatError,
    RecordLimitReached,
)

try:
    from nautilus._native import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "nautilus's C core (nautilus._native) is not built: run `make build` "
        f"(or `pip install .`) in the source tree ({exc})"
    ) from exc

_native_version = ffi.string(lib.nt_version()).decode()
if _native_version != __version__:  # pragma: no cover - a stale build
    raise ImportError(
        f"nautilus._native was built for version {_native_version}, but the Python "
        f"package is {__version__}: rebuild it (`make build`)"
    )
if lib.nt_openssl_version_num() < 0x30500000:  # pragma: no cover - depends on the build
    raise ImportError(
        "nautilus._native is linked to "
        f"{ffi.string(lib.nt_openssl_version_text()).decode()}; it needs OpenSSL >= 3.5"
    )

OPENSSL_VERSION = ffi.string(lib.nt_openssl_version_text()).decode()

AES_GCM_CODES = ("vaes-avx2", "openssl")


def aes_gcm_code(choice: str | None = None) -> str:
    """Which code runs AES-GCM for keys set from now on: "vaes-avx2" (csrc/nt_gcm.c,
    on CPUs with VAES and VPCLMULQDQ) or "openssl" (its EVP code). ``choice``
    changes it; "vaes-avx2" applies only where the CPU can run it."""
    if choice is None:
        return AES_GCM_CODES[0] if lib.nt_aead_own_gcm(-1) else AES_GCM_CODES[1]
    if choice not in AES_GCM_CODES:
        raise ValueError(f"AES-GCM code must be one of {AES_GCM_CODES}, not {choice!r}")
    lib.nt_aead_own_gcm(1 if choice == AES_GCM_CODES[0] else 0)
    return aes_gcm_code()


_env_choice = os.environ.get("NAUTILUS_AES_GCM", "auto")
if _env_choice == "openssl":
    aes_gcm_code("openssl")
elif _env_choice != "auto":  # pragma: no cover - checked by a subprocess test
    raise ImportError(f"NAUTILUS_AES_GCM must be 'auto' or 'openssl', not {_env_choice!r}")


def _fail(rc: int, what: str) -> Exception:
    if rc == lib.NT_ERR_INVALID_KEY:
        return InvalidKey(f"{what}: the key is malformed or fails the FIPS 203 checks")
    if rc == lib.NT_ERR_ZERO_SECRET:
        return InvalidKey(f"{what}: X25519 gave the all-zero shared secret (low-order point)")
    if rc == lib.NT_ERR_LENGTH:
        return ValueError(f"{what}: an input has the wrong length")
    if rc == lib.NT_ERR_AUTH:
        return IntegrityError(f"{what}: authentication tag did not verify")
    if rc == lib.NT_ERR_FORMAT:
        return RecordFormatError(f"{what}: malformed record")
    if rc == lib.NT_ERR_LIMIT:
        return RecordLimitReached(f"{what}: record limit for this key reached; rekey first")
    if rc == lib.NT_ERR_STATE:
        return ClosedError(f"{what}: the object failed before or lacks the data asked for")
    if rc == lib.NT_ERR_BUFFER:
        return ValueError(f"{what}: output buffer too small")
    if rc == lib.NT_ERR_NOMEM:
        return MemoryError(f"{what}: out of memory")
    if rc == lib.NT_ERR_ARG:
        return ValueError(f"{what}: invalid argument")
    return CryptoFailure(f"{what}: OpenSSL failure (code {rc})")


def check(rc: int, what: str) -> None:
    """Raise the exception for C return code ``rc`` (nothing for NT_OK)."""
    if rc != lib.NT_OK:
        raise _fail(rc, what)


def as_bytes(name: str, value: object, length: int | None = None) -> bytes:
    """Return ``value`` as bytes, or raise TypeError / ValueError naming ``name``."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
    else:
        raise TypeError(f"{name} must be bytes-like, not {type(value).__name__}")
    if length is not None and len(data) != length:
        raise ValueError(f"{name} must be {length} bytes long, got {len(data)}")
    return data


def input_buffer(name: str, value: object) -> bytes | bytearray | memoryview:
    """``value`` if it is a C-contiguous bytes-like object, a bytes copy of a
    non-contiguous memoryview (read-only inputs are copied, as :func:`as_bytes`
    does), or TypeError naming ``name``."""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, memoryview):
        return value if value.c_contiguous else value.tobytes()
    raise TypeError(f"{name} must be bytes-like, not {type(value).__name__}")


def output_buffer(name: str, value: object) -> bytearray | memoryview:
    """``value`` if C can write into it (a bytearray, or a writable C-contiguous
    memoryview); TypeError naming ``name`` otherwise."""
    if isinstance(value, bytearray):
        return value
    if isinstance(value, memoryview):
        if value.readonly:
            raise TypeError(f"{name} must be writable: a read-only memoryview was given")
        if not value.c_contiguous:
            raise TypeError(f"{name} must be C-contiguous: a strided memoryview was given")
        return value
    raise TypeError(
        f"{name} must be a bytearray or writable memoryview, not {type(value).__name__}"
    )


def _overlap(a: Any, b: Any) -> bool:
    """True if the cffi buffers ``a`` and ``b`` share a byte."""
    a_start, b_start = int(ffi.cast("uintptr_t", a)), int(ffi.cast("uintptr_t", b))
    if len(a) == 0 or len(b) == 0:
        return False
    return a_start < b_start + len(b) and b_start < a_start + len(a)


def check_disjoint(name: str, data: Any, out_name: str, out: Any) -> None:
    """ValueError if the buffers ``data`` and ``out`` overlap (C reads one while
    writing the other: an overlap would corrupt the result)."""
    with ffi.from_buffer(data) as a, ffi.from_buffer(out) as b:
        if _overlap(a, b):
            raise ValueError(f"{out_name} must not overlap {name}: pass separate buffers")


# --- KEMs --------------------------------------------------------------------


class KemSizes(NamedTuple):
    public: int
    ciphertext: int
    shared: int
    seed: int
    private: int
    entropy: int


KEM_IDS = {
    "mlkem768": lib.NT_KEM_MLKEM768,
    "mlkem1024": lib.NT_KEM_MLKEM1024,
    "x25519": lib.NT_KEM_X25519,
    "x25519-mlkem768": lib.NT_KEM_X25519_MLKEM768,
    "x25519-mlkem1024": lib.NT_KEM_X25519_MLKEM1024,
}


def _kem_sizes(alg: int) -> KemSizes:
    out = ffi.new("size_t[6]")
    check(lib.nt_kem_sizes(alg, out, out + 1, out + 2, out + 3, out + 4, out + 5), "kem sizes")
    return KemSizes(*(int(x) for x in out))


KEM_SIZES = {name: _kem_sizes(alg) for name, alg in KEM_IDS.items()}


def _key_handle(ptr: Any) -> Any:
    return ffi.gc(ptr[0], lib.nt_key_free)


def kem_generate(alg: str, seed: bytes | None) -> Any:
    out = ffi.new("nt_key **")
    if seed is None:
        check(lib.nt_key_generate(KEM_IDS[alg], ffi.NULL, 0, out), f"{alg} key generation")
    else:
        check(lib.nt_key_generate(KEM_IDS[alg], seed, len(seed), out), f"{alg} key from seed")
    return _key_handle(out)


def kem_from_public(alg: str, data: bytes) -> Any:
    out = ffi.new("nt_key **")
    check(lib.nt_key_from_public(KEM_IDS[alg], data, len(data), out), f"{alg} public key")
    return _key_handle(out)


def kem_from_private(alg: str, data: bytes) -> Any:
    out = ffi.new("nt_key **")
    check(lib.nt_key_from_private(KEM_IDS[alg], data, len(data), out), f"{alg} private key")
    return _key_handle(out)


def _key_bytes(fn: Any, handle: Any, cap: int, what: str) -> bytes:
    buf = ffi.new("uint8_t[]", cap)
    n = ffi.new("size_t *")
    try:
        check(fn(handle, buf, cap, n), what)
        return bytes(ffi.buffer(buf, n[0]))
    finally:
        ffi.memmove(buf, b"\x00" * cap, cap)


def kem_public_bytes(handle: Any) -> bytes:
    return _key_bytes(lib.nt_key_public_bytes, handle, lib.NT_KEM_MAX_PUBLIC_BYTES, "public key")


def kem_seed_bytes(handle: Any) -> bytes:
    return _key_bytes(lib.nt_key_seed_bytes, handle, lib.NT_KEM_MAX_SEED_BYTES, "private seed")


def kem_private_bytes(handle: Any) -> bytes:
    return _key_bytes(
        lib.nt_key_private_bytes, handle, lib.NT_KEM_MAX_PRIVATE_BYTES, "expanded private key"
    )


def kem_encapsulate(
    alg: str, handle: Any, entropy: bytes | None, ephemeral: Any = None
) -> tuple[bytes, bytes]:
    """``(shared, ciphertext)``; ``ephemeral``: a prepared X25519 key handle
    for the X25519 part (used once), or None for a fresh one."""
    sizes = KEM_SIZES[alg]
    ct = ffi.new("uint8_t[]", sizes.ciphertext)
    ss = ffi.new("uint8_t[]", sizes.shared)
    if ephemeral is not None:
        rc = lib.nt_kem_encapsulate_with(handle, ephemeral, ct, sizes.ciphertext, ss, sizes.shared)
    elif entropy is None:
        rc = lib.nt_kem_encapsulate(handle, ffi.NULL, 0, ct, sizes.ciphertext, ss, sizes.shared)
    else:
        rc = lib.nt_kem_encapsulate(
            handle, entropy, len(entropy), ct, sizes.ciphertext, ss, sizes.shared
        )
    check(rc, f"{alg} encapsulation")
    shared = bytes(ffi.buffer(ss))
    ffi.memmove(ss, b"\x00" * sizes.shared, sizes.shared)
    return shared, bytes(ffi.buffer(ct))


def kem_decapsulate(alg: str, handle: Any, ciphertext: bytes) -> bytes:
    sizes = KEM_SIZES[alg]
    ss = ffi.new("uint8_t[]", sizes.shared)
    check(
        lib.nt_kem_decapsulate(handle, ciphertext, len(ciphertext), ss, sizes.shared),
        f"{alg} decapsulation",
    )
    shared = bytes(ffi.buffer(ss))
    ffi.memmove(ss, b"\x00" * sizes.shared, sizes.shared)
    return shared


# --- AEAD records --------------------------------------------------------------

AEAD_IDS = {
    "aes-256-gcm": lib.NT_AEAD_AES_256_GCM,
    "aes-128-gcm": lib.NT_AEAD_AES_128_GCM,
    "chacha20-poly1305": lib.NT_AEAD_CHACHA20_POLY1305,
}


def _aead_key_bytes(cipher: int) -> int:
    out = ffi.new("size_t *")
    check(lib.nt_aead_key_bytes(cipher, out), "cipher key size")
    return int(out[0])


AEAD_KEY_BYTES = {name: _aead_key_bytes(cid) for name, cid in AEAD_IDS.items()}
RECORD_HEADER_BYTES: int = lib.NT_RECORD_HEADER_BYTES
RECORD_TAG_BYTES: int = lib.NT_RECORD_TAG_BYTES
RECORD_IV_BYTES: int = lib.NT_RECORD_IV_BYTES
RECORD_OVERHEAD: int = lib.NT_RECORD_OVERHEAD
RECORD_SEALED_TYPE: int = lib.NT_RECORD_SEALED_TYPE
RECORD_MAX_FRAGMENT: int = lib.NT_RECORD_MAX_FRAGMENT
RECORD_DEFAULT_FRAGMENT: int = lib.NT_RECORD_DEFAULT_FRAGMENT
RECORD_DEFAULT_LIMIT: int = lib.NT_RECORD_DEFAULT_LIMIT
UINT64_MAX = (1 << 64) - 1


def aead_new(cipher: str, encrypt: bool, key: bytes, iv: bytes) -> Any:
    out = ffi.new("nt_aead **")
    check(
        lib.nt_aead_new(AEAD_IDS[cipher], int(encrypt), key, len(key), iv, len(iv), out),
        f"{cipher} key setup",
    )
    return ffi.gc(out[0], lib.nt_aead_free)


def aead_new_from_secret(cipher: str, encrypt: bool, secret: bytes) -> Any:
    """An AEAD state keyed from a traffic secret (key and IV derived in C)."""
    out = ffi.new("nt_aead **")
    check(
        lib.nt_aead_new_from_secret(AEAD_IDS[cipher], int(encrypt), secret, len(secret), out),
        f"{cipher} key setup",
    )
    return ffi.gc(out[0], lib.nt_aead_free)


def aead_rekey_from_secret(handle: Any, secret: bytes) -> None:
    check(lib.nt_aead_rekey_from_secret(handle, secret, len(secret)), "rekey")


def aead_free(handle: Any) -> None:
    """Wipe and free now (rather than at garbage collection)."""
    ffi.release(handle)


def aead_failed(handle: Any) -> bool:
    """True if the opening state ``handle`` failed for good (a record failed to
    authenticate or was malformed). Asks C by opening nothing, which has no
    effect but reports a failed state."""
    spans = ffi.new("nt_span[1]")
    counts = ffi.new("size_t[2]")
    rc = lib.nt_open(handle, ffi.NULL, 0, ffi.NULL, 0, 1, spans, 1, counts, counts + 1)
    return bool(rc == lib.NT_ERR_STATE)


def aead_rekey(handle: Any, key: bytes, iv: bytes) -> None:
    check(lib.nt_aead_rekey(handle, key, len(key), iv, len(iv)), "rekey")


def aead_set_limit(handle: Any, records: int) -> None:
    check(lib.nt_aead_set_limit(handle, records), "record limit")


def aead_set_max_fragment(handle: Any, size: int) -> None:
    check(lib.nt_aead_set_max_fragment(handle, size), "maximum record size")


def aead_set_sequence(handle: Any, seq: int) -> None:
    check(lib.nt_aead_set_sequence(handle, seq), "sequence number")


def aead_sequence(handle: Any) -> int:
    return int(lib.nt_aead_sequence(handle))


def aead_remaining(handle: Any) -> int:
    return int(lib.nt_aead_remaining(handle))


def aead_max_fragment(handle: Any) -> int:
    return int(lib.nt_aead_max_fragment(handle))


def seal_size(handle: Any, n: int) -> int:
    size = int(lib.nt_seal_size(handle, n))
    if size == 0:
        raise ValueError(f"{n} bytes is too much to seal in one call")
    return size


def seal_into(handle: Any, content_type: int, data: Any, out: Any) -> tuple[int, int]:
    """Seal ``data`` into writable buffer ``out``; return (bytes written, records)."""
    out_len = ffi.new("size_t[2]")
    # The buffers are released on exit, even when an exception keeps this frame alive,
    # so that the caller may resize them afterwards.
    with ffi.from_buffer(data) as src, ffi.from_buffer(out, require_writable=True) as dst:
        if _overlap(src, dst):
            raise ValueError("out must not overlap data: pass separate buffers")
        rc = lib.nt_seal(handle, content_type, src, len(src), dst, len(dst), out_len, out_len + 1)
    check(rc, "seal")
    return int(out_len[0]), int(out_len[1])


def new_out_len() -> Any:
    return ffi.new("size_t[2]")


def new_budget() -> Any:
    """An ``nt_budget``: what a sending key may still seal (records, bytes)."""
    return ffi.new("nt_budget *")


# Seal and send in one C call (``nt_seal_send``): NautilusSocket's bulk path
# calls it directly, with the record constants below, because a Python wrapper
# costs about 1% of a 4 KiB ``sendall``. Its result codes: ``NT_OK`` (all
# sent), ``NT_PARTIAL`` (sealed, the socket took part of it), ``NT_DUE`` (a
# key update is due first: nothing sealed); anything else is an error code
# for :func:`check`.
NT_OK: int = lib.NT_OK
NT_PARTIAL: int = lib.NT_PARTIAL
NT_DUE: int = lib.NT_DUE
nt_seal_send: Any = lib.nt_seal_send
from_buffer: Any = ffi.from_buffer
# The message lane (Connection._take_message and _seal_message, for the asyncio
# channels and the blocking sockets' messages) opens or seals one record with
# these directly, for the same reason (csrc/nt_lane.h). nt_open_message returns
# the message's size (>= 0), NT_NOT_ONE_RECORD (nothing done), NT_NOT_ONE_MESSAGE
# (opened: see the summary) or an error code for :func:`open_failure`;
# nt_seal_message NT_OK, NT_DUE, or an error code for :func:`seal_failure`.
NT_NOT_ONE_RECORD: int = lib.NT_NOT_ONE_RECORD
NT_NOT_ONE_MESSAGE: int = lib.NT_NOT_ONE_MESSAGE
nt_open_message: Any = lib.nt_open_message
nt_seal_message: Any = lib.nt_seal_message
# NautilusSocket's recv_into opens the records it holds back straight into the
# caller's buffer with this (result codes: NT_OK, else see :func:`open_failure`).
nt_open_packed: Any = lib.nt_open_packed


def seal_chunk(
    handle: Any, content_type: int, data: Any, out_len: Any, budget: Any = ffi.NULL
) -> Any:
    """The fast path of the connection: seal ``data`` (bytes, or a contiguous
    buffer) into a new bytearray of exactly the sealed size. No argument
    checks: the caller's own data, already validated.

    With ``budget`` (an ``nt_budget``, which shrinks by what is sealed): None,
    nothing sealed, if the records do not fit in it."""
    n = len(data) if type(data) is bytes else memoryview(data).nbytes
    need = lib.nt_seal_size(handle, n)
    if need == 0:
        raise ValueError(f"{n} bytes is too much to seal in one call")
    buf = bytearray(need)
    if type(data) is bytes:
        rc = lib.nt_seal_within(handle, budget, content_type, data, n, ffi.from_buffer(buf),
                                need, out_len, out_len + 1)  # fmt: skip
    else:
        with ffi.from_buffer(data) as src:  # released even if an exception keeps the frame
            rc = lib.nt_seal_within(handle, budget, content_type, src, n, ffi.from_buffer(buf),
                                    need, out_len, out_len + 1)  # fmt: skip
    if rc != lib.NT_OK:
        if rc == lib.NT_DUE:
            return None
        raise seal_failure(rc)
    return buf


def seal_failure(rc: int) -> Exception:
    """The exception for a seal that returned ``rc`` (neither NT_OK nor NT_DUE)."""
    return _fail(rc, "seal")


class Span(NamedTuple):
    """One opened record: its content is ``buffer[offset:offset + length]``."""

    content_type: int
    offset: int
    length: int


_MAX_SPANS = 1024


class OpenFailure(Exception):
    """Internal: carries the spans that verified before a failing record."""

    def __init__(self, error: Exception, spans: list[Span], consumed: int):
        super().__init__(str(error))
        self.error = error
        self.spans = spans
        self.consumed = consumed


def open_spans(handle: Any, data: Any, out: Any, batch_type: int) -> tuple[list[Span], int]:
    """Open the complete records at the start of writable ``data``.

    With ``out`` None, content is decrypted in place in ``data``; otherwise it is
    packed into ``out``. Calls into C as often as needed (each call opens at most
    _MAX_SPANS records) and stops where C stops for a reason other than that
    bound. Returns (spans, bytes consumed); raises OpenFailure.
    """
    src = ffi.from_buffer(data, require_writable=True)
    dst = ffi.NULL if out is None else ffi.from_buffer(out, require_writable=True)
    try:
        if out is not None and _overlap(src, dst):
            raise ValueError("out must not overlap data: pass separate buffers")
        return _open_spans_loop(handle, src, dst, out is not None, batch_type)
    finally:  # release the exports even if an exception keeps this frame alive
        ffi.release(src)
        if out is not None:
            ffi.release(dst)


def _open_spans_loop(
    handle: Any, src: Any, dst: Any, packed: bool, batch_type: int
) -> tuple[list[Span], int]:
    total, cap = len(src), len(dst) if packed else 0
    spans_c = ffi.new("nt_span[]", _MAX_SPANS)
    counts = ffi.new("size_t[2]")
    spans: list[Span] = []
    pos = outpos = 0
    while True:
        out_ptr = dst + outpos if packed else ffi.NULL
        rc = lib.nt_open(
            handle, src + pos, total - pos, out_ptr, cap - outpos, batch_type,
            spans_c, _MAX_SPANS, counts, counts + 1,
        )  # fmt: skip
        n = int(counts[0])
        base = outpos if packed else pos
        for i in range(n):
            s = spans_c[i]
            spans.append(Span(int(s.type), base + int(s.offset), int(s.length)))
        if packed and n:
            outpos += int(spans_c[n - 1].offset) + int(spans_c[n - 1].length)
        pos += int(counts[1])
        if rc != lib.NT_OK:
            if spans and (rc == lib.NT_ERR_LIMIT or rc == lib.NT_ERR_BUFFER):
                # A later call stopped at the record limit or a full ``out``
                # before opening anything: nothing failed, so the records of the
                # earlier calls are returned and the next call reports it (as
                # one C call does).
                return spans, pos
            raise OpenFailure(_fail(rc, "open"), spans, pos)
        if n < _MAX_SPANS or spans[-1].content_type != batch_type:
            return spans, pos


class PackedOpen(NamedTuple):
    """Summary of a packed open: every record but the last is of the batch type,
    so ``out[:written]`` holds their contents back to back, the last one's last."""

    records: int
    consumed: int
    written: int
    last_type: int
    last_length: int


def new_open_summary() -> Any:
    return ffi.new("nt_open_summary *")


def open_packed(
    handle: Any, data: Any, out: Any, batch_type: int, summary: Any, max_records: int = 0
) -> PackedOpen:
    """Open all complete records of ``data`` into ``out``; raises OpenFailure
    (whose ``spans`` is then a one-element list holding the PackedOpen of the
    records that verified)."""
    with (
        ffi.from_buffer(data) as src,  # only read: the contents go to ``out``
        ffi.from_buffer(out, require_writable=True) as dst,
    ):
        rc = lib.nt_open_packed(
            handle, src, len(src), dst, len(dst), batch_type, max_records, summary
        )
    if rc != lib.NT_OK:
        raise open_failure(rc, summary)
    return PackedOpen(  # cffi gives the fields as Python ints
        summary.records, summary.consumed, summary.written, summary.last_type, summary.last_length
    )


def open_failure(rc: int, summary: Any) -> OpenFailure:
    """The OpenFailure of a packed open that returned ``rc`` (not NT_OK)."""
    result = PackedOpen(
        summary.records, summary.consumed, summary.written, summary.last_type, summary.last_length
    )
    return OpenFailure(_fail(rc, "open"), [result], result.consumed)  # type: ignore[list-item]


def aead_oneshot(handle: Any, encrypt: bool, nonce: bytes, aad: bytes, data: bytes) -> bytes:
    if encrypt:
        out_len = len(data) + RECORD_TAG_BYTES
        out = ffi.new("uint8_t[]", out_len)
        rc = lib.nt_aead_encrypt(
            handle, nonce, len(nonce), aad, len(aad), data, len(data), out, out_len
        )
        check(rc, "encrypt")
        return bytes(ffi.buffer(out))
    if len(data) < RECORD_TAG_BYTES:
        raise IntegrityError("decrypt: input shorter than the authentication tag")
    out_len = len(data) - RECORD_TAG_BYTES
    out = ffi.new("uint8_t[]", max(out_len, 1))
    rc = lib.nt_aead_decrypt(
        handle, nonce, len(nonce), aad, len(aad), data, len(data), out, out_len
    )
    check(rc, "decrypt")
    return bytes(ffi.buffer(out, out_len))


# --- message framing (the message API's stream) --------------------------------

FRAME_PREFIX_BYTES: int = lib.NT_FRAME_PREFIX_BYTES
_LAYOUT_CAP = 4096  # bytes of struct format per C call (at least ~300 frames)
_LAYOUTS_KEPT = 32
_layouts: dict[bytes, Struct] = {}
"""Compiled Structs by format. A steady stream of like-sized messages makes
a few formats over and over (one per count of whole frames a read holds:
22 in a run of make bench's one-way scenario), and compiling one costs as
much as cutting with it. Emptied when full (at most _LAYOUTS_KEPT of them,
about 40 KiB each at most)."""
if array("Q").itemsize != 8:  # pragma: no cover - the lengths go to C as uint64_t
    raise ImportError("nautilus needs array typecode 'Q' to be 8 bytes")


_BYTE_STRINGS = frozenset((bytes, bytearray))


def frames_pack(
    messages: list[Any] | tuple[Any, ...], limit: int
) -> bytes | bytearray | int | None:
    """The ``messages`` framed back to back (for each, its 4-byte length, then
    it), if none is over ``limit``; else the index of the first that is.
    None if they are not all bytes or bytearray objects (the caller's general
    path frames the others by their byte counts, or says what is wrong).

    Only those: ``len()`` is the byte count of every bytes and bytearray, not
    of every buffer (a memoryview of another format or shape, an array), and
    the checks in C (the lengths add up to the joined bytes) cannot see two
    wrong lengths whose errors cancel out."""
    if not _BYTE_STRINGS.issuperset(map(type, messages)):
        return None
    sizes = list(map(len, messages))
    first = sizes[0] if sizes else 0
    if sizes.count(first) == len(sizes) and 0 < first <= limit:
        # All of one size (fixed-size records, say): each frame's length
        # prefix is the same bytes, so one join puts them between the messages.
        prefix = first.to_bytes(FRAME_PREFIX_BYTES, "big")
        return prefix + prefix.join(messages)
    body = b"".join(messages)
    lens = array("Q", sizes)
    n = len(lens)
    out = bytearray(len(body) + FRAME_PREFIX_BYTES * n)
    over = ffi.new("size_t *")
    rc = lib.nt_frames_pack(
        body, len(body), ffi.from_buffer("uint64_t[]", lens), n, limit,
        ffi.from_buffer(out), len(out), over,
    )  # fmt: skip
    if rc == lib.NT_ERR_LENGTH:  # a len() that is not a byte count
        return None
    check(rc, "frame the messages")
    return out if over[0] == n else int(over[0])


def frames_cut(
    data: bytes | bytearray, start: int, end: int, limit: int
) -> tuple[tuple[bytes, ...], int]:
    """Cut the whole frames at the start of ``data[start:end]``, stopping
    before an incomplete one or one whose length is over ``limit`` (the
    caller reads that length and refuses it): their contents (one bytes
    object each), and where in ``data`` the first frame not taken starts.

    C describes the frames as a struct format, so that ``struct`` makes the
    bytes objects in one call: no Python step per message.
    """
    if not 0 <= start <= end <= len(data):  # (C is told ``end`` as the length)
        raise ValueError(f"frames_cut: bad range {start}..{end} of {len(data)} bytes")
    cap = min(_LAYOUT_CAP, 2 + 14 * ((end - start) // FRAME_PREFIX_BYTES))
    fmt = ffi.new("char[]", cap)
    result = ffi.new("size_t[4]")
    cuts: list[tuple[bytes, ...]] = []  # one tuple per C call (usually one call)
    pos = start
    while True:
        rc = lib.nt_frames_layout(ffi.from_buffer(data), end, pos, limit, fmt, cap, end, result)
        check(rc, "cut the messages")
        if result[0]:
            layout = ffi.buffer(fmt, result[2])[:]
            cutter = _layouts.get(layout)
            if cutter is None:
                if len(_layouts) >= _LAYOUTS_KEPT:
                    _layouts.clear()
                cutter = _layouts[layout] = Struct(layout)
            cuts.append(cutter.unpack_from(data, pos))
        pos = result[1]
        if not result[3]:
            if len(cuts) == 1:
                return cuts[0], pos
            if len(cuts) == 2:  # (a large read: tuple + tuple copies pointers, chain steps)
                return cuts[0] + cuts[1], pos
            return tuple(chain.from_iterable(cuts)), pos


# --- key schedule (HKDF on HMAC-SHA-256) ---------------------------------------

KDF_HASH_BYTES: int = lib.NT_KDF_HASH_BYTES
KDF_MAX_LABEL: int = lib.NT_KDF_MAX_LABEL
KDF_MAX_CONTEXT: int = lib.NT_KDF_MAX_CONTEXT
KDF_MAX_OUTPUT: int = lib.NT_KDF_MAX_OUTPUT
KDF_MAX_SHARED: int = lib.NT_KDF_MAX_SHARED


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (the caller checks types; salt of at most 64 bytes)."""
    out = ffi.new("uint8_t[]", KDF_HASH_BYTES)
    check(lib.nt_hkdf_extract(salt, len(salt), ikm, len(ikm), out, KDF_HASH_BYTES), "HKDF-Extract")
    return ffi.buffer(out)[:]


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with the protocol's label prefix (the caller checks types)."""
    out = ffi.new("uint8_t[]", length)
    rc = lib.nt_hkdf_expand_label(
        secret, len(secret), label, len(label), context, len(context), out, length
    )
    check(rc, "HKDF-Expand-Label")
    return ffi.buffer(out)[:]


def ks_binder(early: bytes, transcript_hash: bytes) -> bytes:
    """The PSK binder: Finished-MAC(Derive-Secret(early, "res binder", ""), hash)."""
    out = ffi.new("uint8_t[]", KDF_HASH_BYTES)
    rc = lib.nt_ks_binder(early, len(early), transcript_hash, len(transcript_hash), out, len(out))
    check(rc, "binder")
    return ffi.buffer(out)[:]


def ks_finished(base: bytes, transcript_hash: bytes) -> bytes:
    """A Finished MAC: HMAC(Expand-Label(base, "finished", "", 32), hash)."""
    out = ffi.new("uint8_t[]", KDF_HASH_BYTES)
    rc = lib.nt_ks_finished(base, len(base), transcript_hash, len(transcript_hash), out, len(out))
    check(rc, "Finished MAC")
    return ffi.buffer(out)[:]


def ks_handshake(early: bytes, shared: bytes, transcript_hash: bytes) -> bytes:
    """Handshake secret, client and server handshake traffic secrets, master
    secret (32 bytes each, in that order)."""
    out = ffi.new("uint8_t[]", 4 * KDF_HASH_BYTES)
    rc = lib.nt_ks_handshake(
        early, len(early), shared, len(shared), transcript_hash, len(transcript_hash), out, len(out)
    )
    check(rc, "handshake secrets")
    return ffi.buffer(out)[:]


def ks_application(master: bytes, transcript_hash: bytes) -> bytes:
    """Client and server application traffic secrets, exporter secret (32 bytes each)."""
    out = ffi.new("uint8_t[]", 3 * KDF_HASH_BYTES)
    rc = lib.nt_ks_application(
        master, len(master), transcript_hash, len(transcript_hash), out, len(out)
    )
    check(rc, "application secrets")
    return ffi.buffer(out)[:]


# --- Ed25519 verification --------------------------------------------------------

ED25519_PUBLIC_BYTES: int = lib.NT_ED25519_PUBLIC_BYTES
ED25519_SIGNATURE_BYTES: int = lib.NT_ED25519_SIGNATURE_BYTES


def ed25519_verify(public_key: object, signature: object, message: object) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    Accepts and rejects exactly what OpenSSL's Ed25519 verify does (csrc/nt_ed25519.h);
    a malformed key or signature of the right length is simply False.

    Raises:
        TypeError: an argument is not bytes-like.
        ValueError: the key is not 32 bytes or the signature not 64 bytes.
    """
    pub = as_bytes("public_key", public_key, ED25519_PUBLIC_BYTES)
    sig = as_bytes("signature", signature, ED25519_SIGNATURE_BYTES)
    msg = as_bytes("message", message)
    rc = lib.nt_ed25519_verify(pub, len(pub), sig, len(sig), msg, len(msg))
    if rc == lib.NT_ERR_AUTH:
        return False
    check(rc, "Ed25519 verify")
    return True
