"""Nautilus's own AES-GCM (csrc/nt_gcm.c, for CPUs with VAES and VPCLMULQDQ but
no AVX-512) against OpenSSL's EVP AES-GCM, through the same record layer, and
against `cryptography`'s AESGCM (its own OpenSSL). The Wycheproof vectors run
through both codes in test_aead_wycheproof.py; `make test` runs the record
tests a second time on OpenSSL's code.

On a CPU without VAES the tests that need the own code are skipped: records
there always use OpenSSL's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gcm_codes import AVAILABLE, NO_OWN, OPENSSL, OWN, OWN_AVAILABLE, using
from hypothesis import example, given, settings
from hypothesis import strategies as st

import nautilus
from nautilus import _bindings as _b
from nautilus.record import AEAD, ContentType, RecordOpener, RecordSealer

pytestmark = pytest.mark.native

AES = ("aes-128-gcm", "aes-256-gcm")
KEY = {"aes-128-gcm": 16, "aes-256-gcm": 32}
# Around the bulk loop's 256-byte steps and its 16-byte blocks, and record sizes.
EDGES = (0, 1, 15, 16, 17, 255, 256, 257, 271, 272, 511, 512, 513, 4095, 4096, 4097, 16384)


needs_own = pytest.mark.skipif(not OWN_AVAILABLE, reason=NO_OWN)


@pytest.fixture(params=[OWN, OPENSSL])
def code(request: pytest.FixtureRequest) -> Iterator[str]:
    with using(request.param):
        yield request.param


def _aead(cipher: str, key: bytes, code: str) -> AEAD:
    with using(code):
        return AEAD(cipher, key)


def _uses_own(obj: AEAD | RecordSealer | RecordOpener) -> bool:
    return bool(_b.lib.nt_aead_uses_own_gcm(obj._handle))


@needs_own
@settings(max_examples=300, deadline=None)
@given(
    cipher=st.sampled_from(AES),
    data=st.data(),
    size=st.one_of(st.integers(0, 1200), st.sampled_from(EDGES)),
    aad_size=st.one_of(st.integers(0, 40), st.sampled_from((0, 5, 16, 17, 300))),
)
def test_own_code_matches_cryptography(
    cipher: str, data: st.DataObject, size: int, aad_size: int
) -> None:
    key = data.draw(st.binary(min_size=KEY[cipher], max_size=KEY[cipher]), "key")
    nonce = data.draw(st.binary(min_size=12, max_size=12), "nonce")
    message, aad = os.urandom(size), os.urandom(aad_size)
    expected = AESGCM(key).encrypt(nonce, message, aad)
    own = _aead(cipher, key, OWN)
    assert _uses_own(own)
    assert own.encrypt(nonce, message, aad) == expected
    assert own.decrypt(nonce, expected, aad) == message


@pytest.mark.parametrize("cipher", AES)
@pytest.mark.parametrize("size", [*EDGES, 65536 + 33, 200_000])
def test_both_codes_agree_on_large_and_edge_sizes(cipher: str, size: int) -> None:
    key, nonce, aad = os.urandom(KEY[cipher]), os.urandom(12), os.urandom(5)
    message = os.urandom(size)
    expected = AESGCM(key).encrypt(nonce, message, aad)
    for code in AVAILABLE:
        aead = _aead(cipher, key, code)
        assert _uses_own(aead) == (code == OWN)
        assert aead.encrypt(nonce, message, aad) == expected, code
        assert aead.decrypt(nonce, expected, aad) == message, code


def _pieces(sizes: list[int], total: int) -> list[int]:
    """``total`` cut into pieces of the drawn sizes (the last one takes the rest)."""
    cuts, done = [], 0
    for size in sizes:
        size = min(size, total - done)
        cuts.append(size)
        done += size
    return [*cuts, total - done]


def _stream(
    key: Any, enc: int, nonce: bytes, aad: bytes, data: bytes, pieces: list[int], in_place: bool
) -> tuple[bytes, Any]:
    """nt_gcm_start, one nt_gcm_update per piece, in place or into an exact-size buffer."""
    lib, ffi = _b.lib, _b.ffi
    run = ffi.new("nt_gcm_run *")
    src = ffi.new("uint8_t[]", data) if data else ffi.NULL
    dst = src if in_place else (ffi.new("uint8_t[]", len(data)) if data else ffi.NULL)
    lib.nt_gcm_start(key, run, nonce, aad, len(aad))
    off = 0
    for piece in pieces:
        lib.nt_gcm_update(
            key, run, enc, src + off if data else src, dst + off if data else dst, piece
        )
        off += piece
    return (bytes(ffi.buffer(dst, len(data))) if data else b""), run


@needs_own
@settings(max_examples=300, deadline=None)
@given(
    key_size=st.sampled_from((16, 32)),
    size=st.one_of(st.integers(0, 1200), st.integers(1200, 3000), st.sampled_from(EDGES)),
    aad_size=st.one_of(st.integers(0, 70), st.sampled_from((255, 256, 257, 600))),
    enc_cuts=st.lists(st.integers(0, 600), max_size=8),
    dec_cuts=st.lists(st.integers(0, 600), max_size=8),
    in_place=st.booleans(),
)
# A block finished by a later call, then a shorter last one (its padding); in place.
@example(key_size=16, size=19, aad_size=0, enc_cuts=[5], dec_cuts=[5], in_place=True)
# Whole blocks, then the 16-block steps resuming at counter 3.
@example(key_size=32, size=16 + 256 + 7, aad_size=5, enc_cuts=[16], dec_cuts=[16], in_place=False)
def test_the_streaming_calls_give_cryptographys_bytes_for_any_split(
    key_size: int,
    size: int,
    aad_size: int,
    enc_cuts: list[int],
    dec_cuts: list[int],
    in_place: bool,
) -> None:
    # Records make two calls (the content, then the type byte); nt_gcm.h promises
    # any sequence of updates, in place or not: a block in progress carried from
    # one call to the next, counters and GHASH resumed mid-message.
    lib, ffi = _b.lib, _b.ffi
    raw, nonce = os.urandom(key_size), os.urandom(12)
    message, aad = os.urandom(size), os.urandom(aad_size)
    expected = AESGCM(raw).encrypt(nonce, message, aad)
    key = ffi.new("nt_gcm_key *")
    assert lib.nt_gcm_set_key(key, raw, key_size) == lib.NT_OK
    sealed, run = _stream(key, 1, nonce, aad, message, _pieces(enc_cuts, size), in_place)
    tag = ffi.new("uint8_t[16]")
    lib.nt_gcm_tag(key, run, tag)
    assert sealed + bytes(tag) == expected
    wiped = bytes(ffi.sizeof("nt_gcm_run"))
    assert ffi.buffer(run)[:] == wiped  # the tag wipes the run (keystream of a partial block)
    opened, run = _stream(key, 0, nonce, aad, sealed, _pieces(dec_cuts, size), in_place)
    assert lib.nt_gcm_check(key, run, expected[-16:]) == lib.NT_OK
    assert ffi.buffer(run)[:] == wiped
    assert opened == message
    bad = bytearray(expected[-16:])
    bad[size % 16] ^= 0x80
    _, run = _stream(key, 0, nonce, aad, sealed, _pieces(dec_cuts, size), in_place)
    assert lib.nt_gcm_check(key, run, bytes(bad)) == lib.NT_ERR_AUTH


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo in bytes (0 where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@needs_own
@pytest.mark.skipif(
    _available_memory() < 2 << 30, reason="needs 2 GiB of available memory (writes 0.5 GiB)"
)
def test_bit_lengths_past_32_bits_in_the_lengths_block() -> None:
    # GCM's last GHASH block holds len(A) and len(C) in bits, 64 each: past
    # 2^29 bytes they no longer fit 32 bits. (About 3 s, 0.5 GiB.)
    n, aad_len = (1 << 29) + 17, (1 << 29) + 5
    key, nonce = os.urandom(16), os.urandom(12)
    aad = bytes(aad_len)  # (zero pages: no memory until written)
    reference = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    reference.authenticate_additional_data(aad)
    aead = _aead("aes-128-gcm", key, OWN)
    assert _uses_own(aead)
    buf = bytearray(n + 16)  # zeros: the ciphertext is the keystream
    with _b.ffi.from_buffer(buf) as p:
        rc = _b.lib.nt_aead_encrypt(aead._handle, nonce, 12, aad, aad_len, p, n, p, n + 16)
    assert rc == _b.lib.NT_OK
    view, chunk = memoryview(buf), 1 << 24
    for off in range(0, n, chunk):
        part = min(chunk, n - off)
        assert view[off : off + part] == reference.update(bytes(part)), off
    assert reference.finalize() == b""
    assert bytes(view[n:]) == reference.tag
    with _b.ffi.from_buffer(buf) as p:
        rc = _b.lib.nt_aead_decrypt(aead._handle, nonce, 12, aad, aad_len, p, n + 16, p, n)
    assert rc == _b.lib.NT_OK
    assert buf.count(0, 0, n) == n
    del view, buf


@needs_own
@pytest.mark.parametrize("cipher", AES)
def test_records_sealed_by_one_code_open_with_the_other(cipher: str) -> None:
    key, iv = os.urandom(KEY[cipher]), os.urandom(12)
    contents = [os.urandom(n) for n in (*EDGES, 16385, 40_000)]
    for seal_code, open_code in ((OWN, OPENSSL), (OPENSSL, OWN)):
        with using(seal_code):
            sealer = RecordSealer(cipher, key, iv, max_fragment=16384)
        with using(open_code):
            opener = RecordOpener(cipher, key, iv, max_fragment=16384)
        assert _uses_own(sealer) == (seal_code == OWN)
        assert _uses_own(opener) == (open_code == OWN)
        for content in contents:
            wire = sealer.seal(content, ContentType.HANDSHAKE)
            # In place (the content type byte stays in the record) and into a buffer.
            work = bytearray(wire)
            spans, consumed = opener.open_spans(work, None, ContentType.HANDSHAKE)
            assert consumed == len(wire)
            assert b"".join(work[s.offset : s.offset + s.length] for s in spans) == content
            assert {s.content_type for s in spans} == {ContentType.HANDSHAKE}
        again = [sealer.seal(c) for c in contents]
        for wire, content in zip(again, contents, strict=True):
            out = bytearray(len(content) + 1)
            spans, _ = opener.open_spans(bytearray(wire), out)
            assert b"".join(out[s.offset : s.offset + s.length] for s in spans) == content


@needs_own
@pytest.mark.parametrize("cipher", AES)
def test_own_code_refuses_every_altered_bit(cipher: str) -> None:
    key, nonce, aad = os.urandom(KEY[cipher]), os.urandom(12), os.urandom(5)
    aead = _aead(cipher, key, OWN)
    sealed = aead.encrypt(nonce, b"sixteen byte msg" + b"!" * 7, aad)
    for i in range(len(sealed) * 8):
        bad = bytearray(sealed)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(nautilus.IntegrityError):
            aead.decrypt(nonce, bytes(bad), aad)
    for i in range(len(aad) * 8):
        bad_aad = bytearray(aad)
        bad_aad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(nautilus.IntegrityError):
            aead.decrypt(nonce, sealed, bytes(bad_aad))
    with pytest.raises(nautilus.IntegrityError):
        aead.decrypt(bytes(12), sealed, aad)
    assert aead.decrypt(nonce, sealed, aad) == b"sixteen byte msg" + b"!" * 7


@needs_own
def test_a_record_altered_under_the_own_code_releases_nothing() -> None:
    key, iv = os.urandom(32), os.urandom(12)
    with using(OWN):
        sealer, opener = RecordSealer("aes-256-gcm", key, iv), RecordOpener("aes-256-gcm", key, iv)
    wire = bytearray(sealer.seal(b"secret!" * 100))
    wire[200] ^= 0x01
    work = bytearray(wire)
    with pytest.raises(nautilus.IntegrityError):
        opener.open_spans(work)
    assert work[5 : 5 + 700] == bytes(700)  # the (decrypted) content was wiped


def test_chacha20_never_uses_the_own_code(code: str) -> None:
    assert not _uses_own(AEAD("chacha20-poly1305", bytes(32)))
    aead = AEAD("aes-256-gcm", bytes(32))
    assert _uses_own(aead) == (code == OWN)


@needs_own
def test_a_rekey_takes_the_code_chosen_at_that_time() -> None:
    key, iv = os.urandom(32), os.urandom(12)
    with using(OWN):
        sealer = RecordSealer("aes-256-gcm", key, iv)
    assert _uses_own(sealer)
    key2, key3 = os.urandom(32), os.urandom(32)  # (a rekey needs a key not used before)
    with using(OPENSSL):
        sealer.rekey(key2, iv)
        opener = RecordOpener("aes-256-gcm", key2, iv)
    assert not _uses_own(sealer)
    assert opener.open(sealer.seal(b"after the rekey")).records[0].data == b"after the rekey"
    with using(OWN):
        sealer.rekey(key3, iv)
        opener.rekey(key3, iv)
    assert _uses_own(sealer)
    assert _uses_own(opener)
    assert opener.open(sealer.seal(b"and back")).records[0].data == b"and back"


def test_aes_gcm_code_checks_its_argument() -> None:
    with pytest.raises(ValueError, match="AES-GCM code must be one of"):
        _b.aes_gcm_code("aesni")
    assert _b.aes_gcm_code() in _b.AES_GCM_CODES


@pytest.mark.parametrize(
    ("value", "expected"),
    [("openssl", OPENSSL), ("auto", OWN if OWN_AVAILABLE else OPENSSL)],
)
def test_the_environment_variable_chooses_the_code(value: str, expected: str) -> None:
    script = "import nautilus._bindings as b; print(b.aes_gcm_code())"
    env = {**os.environ, "NAUTILUS_AES_GCM": value}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_a_bad_environment_variable_is_refused_at_import() -> None:
    env = {**os.environ, "NAUTILUS_AES_GCM": "fast"}
    out = subprocess.run(
        [sys.executable, "-c", "import nautilus"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "NAUTILUS_AES_GCM must be 'auto' or 'openssl', not 'fast'" in out.stderr
