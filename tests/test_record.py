"""RecordSealer / RecordOpener: wire format, batching, damage, limits and arguments."""

from __future__ import annotations

import copy
import gc
import pickle
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import nautilus
from nautilus import record
from nautilus._bindings import ffi, lib
from nautilus.record import (
    AEAD,
    IV_SIZE,
    REKEY_HISTORY,
    ContentType,
    Record,
    RecordOpener,
    RecordSealer,
    Span,
)

pytestmark = pytest.mark.native

CIPHERS = ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"]
KEY_BYTES = {"aes-128-gcm": 16, "aes-256-gcm": 32, "chacha20-poly1305": 32}
APP = ContentType.APPLICATION_DATA
U64 = (1 << 64) - 1


def key_for(cipher: str, salt: int = 0) -> bytes:
    return bytes((0x40 + 7 * i + salt) % 256 for i in range(KEY_BYTES[cipher]))


def iv_for(salt: int = 0) -> bytes:
    return bytes((0xA0 + 13 * i + salt) % 256 for i in range(12))


def pair(cipher: str, salt: int = 0, **kwargs: Any) -> tuple[RecordSealer, RecordOpener]:
    key, iv = key_for(cipher, salt), iv_for(salt)
    return RecordSealer(cipher, key, iv, **kwargs), RecordOpener(cipher, key, iv, **kwargs)


def reference_aead(cipher: str, key: bytes) -> Any:
    """The same AEAD from `cryptography`, for independent checks."""
    return ChaCha20Poly1305(key) if cipher == "chacha20-poly1305" else AESGCM(key)


def nonce_for(iv: bytes, seq: int) -> bytes:
    return bytes(a ^ b for a, b in zip(iv, bytes(4) + seq.to_bytes(8, "big"), strict=True))


def split_records(wire: bytes) -> list[bytes]:
    """Cut a sealed stream into whole records by their header lengths."""
    out, pos = [], 0
    while pos < len(wire):
        end = pos + 4 + int.from_bytes(wire[pos + 1 : pos + 4], "big")
        assert end <= len(wire)
        out.append(wire[pos:end])
        pos = end
    return out


def craft(cipher: str, key: bytes, iv: bytes, seq: int, inner: bytes) -> bytes:
    """A record built with `cryptography` from the documented wire format."""
    header = bytes([0x17]) + (len(inner) + 16).to_bytes(3, "big")
    return header + reference_aead(cipher, key).encrypt(nonce_for(iv, seq), inner, header)


def marker(n: int, seed: int = 1) -> bytes:
    """Plaintext without zero bytes, so that leaked plaintext is recognisable."""
    return bytes(1 + (seed * 31 + 17 * i) % 255 for i in range(n))


# --- round trip and wire format -------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_round_trip(cipher: str) -> None:
    sealer, opener = pair(cipher)
    messages = [b"hello", b"", marker(1000), b"\x00" * 17, marker(5000, 3)]
    wire = b"".join(sealer.seal(m) for m in messages)
    assert sealer.sequence == len(messages)
    result = opener.open(wire)
    assert result.records == [Record(APP, m) for m in messages]
    assert result.consumed == len(wire)
    assert result.record_count == len(messages)
    assert opener.sequence == len(messages)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_round_trip_bytes_like_inputs(cipher: str) -> None:
    sealer, opener = pair(cipher)
    wire = sealer.seal(bytearray(b"abc")) + sealer.seal(memoryview(b"defg"))
    result = opener.open(memoryview(bytearray(wire)))
    assert [r.data for r in result.records] == [b"abc", b"defg"]


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 300])
def test_wire_layout_matches_reference_aead(cipher: str, length: int) -> None:
    key, iv = key_for(cipher), iv_for()
    sealer = RecordSealer(cipher, key, iv)
    content = marker(length)
    wire = sealer.seal(content, ContentType.HANDSHAKE)
    assert len(wire) == sealer.sealed_size(length) == length + record.RECORD_OVERHEAD
    assert record.RECORD_OVERHEAD == 21
    assert wire[0] == 0x17
    assert int.from_bytes(wire[1:4], "big") == len(wire) - 4 == length + 1 + 16
    inner = reference_aead(cipher, key).decrypt(nonce_for(iv, 0), wire[4:], wire[:4])
    assert inner == content + bytes([ContentType.HANDSHAKE])


@pytest.mark.parametrize("cipher", CIPHERS)
def test_nonce_is_iv_xor_big_endian_sequence(cipher: str) -> None:
    key, iv = key_for(cipher), iv_for()
    sealer = RecordSealer(cipher, key, iv, max_fragment=4, record_limit=U64)
    start = 0x0102030405060708
    sealer._set_sequence(start)
    wire = sealer.seal(b"abcdefghij")  # three records: 4 + 4 + 2
    records = split_records(wire)
    assert len(records) == 3
    ref = reference_aead(cipher, key)
    contents = [b"abcd", b"efgh", b"ij"]
    for i, (rec, content) in enumerate(zip(records, contents, strict=True)):
        inner = ref.decrypt(nonce_for(iv, start + i), rec[4:], rec[:4])
        assert inner == content + bytes([APP])
    assert sealer.sequence == start + 3


@pytest.mark.parametrize("cipher", CIPHERS)
def test_opener_accepts_reference_records(cipher: str) -> None:
    key, iv = key_for(cipher), iv_for()
    wire = craft(cipher, key, iv, 0, b"first\x17") + craft(cipher, key, iv, 1, b"\x16")
    result = RecordOpener(cipher, key, iv).open(wire)
    assert result.records == [Record(APP, b"first"), Record(ContentType.HANDSHAKE, b"")]
    assert result.consumed == len(wire)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_empty_data_makes_one_record(cipher: str) -> None:
    sealer, opener = pair(cipher)
    wire = sealer.seal(b"")
    assert len(wire) == sealer.sealed_size(0) == 21
    assert wire[:4] == b"\x17\x00\x00\x11"
    assert sealer.sequence == 1
    result = opener.open(wire)
    assert result.records == [Record(APP, b"")]
    assert result.consumed == 21


@pytest.mark.parametrize("cipher", CIPHERS)
def test_sealed_size(cipher: str) -> None:
    sealer, _ = pair(cipher, max_fragment=100)
    assert sealer.sealed_size(0) == 21
    assert sealer.sealed_size(1) == 22
    assert sealer.sealed_size(100) == 121
    assert sealer.sealed_size(101) == 101 + 2 * 21
    assert sealer.sealed_size(1000) == 1000 + 10 * 21
    assert sealer.sealed_size(1001) == 1001 + 11 * 21


@pytest.mark.parametrize("cipher", CIPHERS)
def test_large_content_splits_at_max_fragment(cipher: str) -> None:
    sealer, opener = pair(cipher, max_fragment=100)
    content = marker(250)
    wire = sealer.seal(content)
    assert sealer.sequence == 3
    assert len(wire) == sealer.sealed_size(250) == 250 + 3 * 21
    lengths = [int.from_bytes(r[1:4], "big") - 17 for r in split_records(wire)]
    assert lengths == [100, 100, 50]
    result = opener.open(wire)
    assert [r.data for r in result.records] == [content[:100], content[100:200], content[200:]]
    assert result.record_count == 3


@pytest.mark.parametrize("cipher", CIPHERS)
def test_exact_multiple_of_max_fragment(cipher: str) -> None:
    sealer, opener = pair(cipher, max_fragment=100)
    wire = sealer.seal(marker(200))
    assert sealer.sequence == 2
    assert [len(r.data) for r in opener.open(wire).records] == [100, 100]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_default_max_fragment(cipher: str) -> None:
    sealer, opener = pair(cipher)
    assert sealer.max_fragment == opener.max_fragment == record.DEFAULT_MAX_FRAGMENT == 16384
    content = marker(16385)
    wire = sealer.seal(content)
    assert sealer.sequence == 2
    assert [len(r.data) for r in opener.open(wire).records] == [16384, 1]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_largest_max_fragment(cipher: str) -> None:
    sealer, opener = pair(cipher, max_fragment=record.MAX_FRAGMENT)
    assert record.MAX_FRAGMENT == 262144
    content = marker(record.MAX_FRAGMENT)
    wire = sealer.seal(content)
    assert sealer.sequence == 1
    assert int.from_bytes(wire[1:4], "big") == record.MAX_FRAGMENT + 17
    assert opener.open(wire).records == [Record(APP, content)]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_merge_joins_runs_of_one_type(cipher: str) -> None:
    sealer, opener = pair(cipher, max_fragment=4)
    hs = ContentType.HANDSHAKE
    wire = sealer.seal(b"client", hs) + sealer.seal(b"hi", hs) + sealer.seal(b"appdata!", APP)
    # handshake: "clie" "nt" "hi"; application data: "appd" "ata!"
    plain = opener.open(wire, batch_type=hs)
    assert plain.record_count == 4  # stops after the first non-handshake record
    assert plain.records == [
        Record(hs, b"clie"),
        Record(hs, b"nt"),
        Record(hs, b"hi"),
        Record(APP, b"appd"),
    ]
    _, opener2 = pair(cipher, max_fragment=4)
    merged = opener2.open(wire, merge=True, batch_type=hs)
    assert merged.records == [Record(hs, b"clienthi"), Record(APP, b"appd")]
    assert merged.record_count == 4
    assert merged.consumed == plain.consumed
    rest = opener2.open(wire[merged.consumed :], merge=True)
    assert rest.records == [Record(APP, b"ata!")]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_merge_of_application_data(cipher: str) -> None:
    sealer, opener = pair(cipher, max_fragment=10)
    content = marker(95)
    wire = sealer.seal(content[:40]) + sealer.seal(content[40:])
    result = opener.open(wire, merge=True)
    assert result.records == [Record(APP, content)]
    assert result.record_count == 10


@pytest.mark.parametrize("cipher", CIPHERS)
def test_open_stops_after_other_type(cipher: str) -> None:
    sealer, opener = pair(cipher)
    parts = [
        sealer.seal(b"one"),
        sealer.seal(b"two"),
        sealer.seal(b"\x01", ContentType.KEY_UPDATE),
        sealer.seal(b"three"),
        sealer.seal(b"four"),
    ]
    wire = b"".join(parts)
    first = opener.open(wire)
    assert first.records == [
        Record(APP, b"one"),
        Record(APP, b"two"),
        Record(ContentType.KEY_UPDATE, b"\x01"),
    ]
    assert first.consumed == sum(len(p) for p in parts[:3])
    assert opener.sequence == 3
    second = opener.open(wire[first.consumed :])
    assert second.records == [Record(APP, b"three"), Record(APP, b"four")]
    assert second.consumed == len(wire) - first.consumed


@pytest.mark.parametrize("cipher", CIPHERS)
def test_key_update_then_rekey(cipher: str) -> None:
    sealer, opener = pair(cipher)
    wire = sealer.seal(b"old") + sealer.seal(b"", ContentType.KEY_UPDATE)
    new_key, new_iv = key_for(cipher, 99), iv_for(99)
    sealer.rekey(new_key, new_iv)
    wire += sealer.seal(b"new")
    first = opener.open(wire)
    assert first.records[-1].content_type == ContentType.KEY_UPDATE
    opener.rekey(new_key, new_iv)
    assert opener.sequence == 0
    assert opener.open(wire[first.consumed :]).records == [Record(APP, b"new")]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_incomplete_record_waits(cipher: str) -> None:
    sealer, opener = pair(cipher)
    parts = [sealer.seal(b"alpha"), sealer.seal(marker(64)), sealer.seal(b"gamma")]
    wire = b"".join(parts)
    for cut in [0, 1, 3, 4, 10, len(parts[2]) - 1]:
        _, fresh = pair(cipher)
        head = wire[: len(parts[0]) + len(parts[1]) + cut]
        result = fresh.open(head)
        assert result.records == [Record(APP, b"alpha"), Record(APP, marker(64))]
        assert result.consumed == len(parts[0]) + len(parts[1])
        assert fresh.sequence == 2
        later = fresh.open(head[result.consumed :] + wire[len(head) :])
        assert later.records == [Record(APP, b"gamma")]
        assert later.consumed == len(parts[2])
    # An incomplete first record: nothing at all.
    result = opener.open(parts[0][:-1])
    assert result == ([], 0, 0)
    assert opener.sequence == 0


@pytest.mark.parametrize("cipher", CIPHERS)
def test_open_spans_in_place(cipher: str) -> None:
    sealer, opener = pair(cipher)
    contents = [b"first", b"", marker(300)]
    wire = b"".join(sealer.seal(c) for c in contents)
    buf = bytearray(wire + b"\x17\x00")  # plus the start of a header
    spans, consumed = opener.open_spans(buf)
    assert consumed == len(wire)
    assert [s.content_type for s in spans] == [APP] * 3
    assert [bytes(buf[s.offset : s.offset + s.length]) for s in spans] == contents
    # Each span sits just after its record's header.
    assert [s.offset for s in spans] == [4, 4 + 26, 4 + 26 + 21]
    assert all(isinstance(s, Span) for s in spans)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_open_spans_into_buffer(cipher: str) -> None:
    sealer, opener = pair(cipher)
    contents = [b"first", b"", marker(300)]
    wire = bytearray(b"".join(sealer.seal(c) for c in contents))
    original = bytes(wire)
    out = bytearray(400)
    spans, consumed = opener.open_spans(wire, out)
    assert consumed == len(wire)
    assert wire == original  # the input is left alone
    # Packed one after another from the start of out.
    assert [(s.offset, s.length) for s in spans] == [(0, 5), (5, 0), (5, 300)]
    assert bytes(out[:305]) == b"".join(contents)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_open_spans_stops_when_out_is_full(cipher: str) -> None:
    sealer, opener = pair(cipher)
    parts = [sealer.seal(marker(50)), sealer.seal(marker(50, 2))]
    wire = bytearray(b"".join(parts))
    out = bytearray(60)
    spans, consumed = opener.open_spans(wire, out)
    assert len(spans) == 1
    assert consumed == len(parts[0])
    assert bytes(out[:50]) == marker(50)
    spans, consumed = opener.open_spans(wire[consumed:], out)
    assert [bytes(out[s.offset : s.offset + s.length]) for s in spans] == [marker(50, 2)]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_open_spans_out_too_small_for_first_record(cipher: str) -> None:
    sealer, opener = pair(cipher)
    wire = bytearray(sealer.seal(marker(50)))
    with pytest.raises(ValueError, match="too small"):
        opener.open_spans(wire, bytearray(10))
    # Not a failure of the stream: a large enough buffer still works.
    spans, _ = opener.open_spans(wire, bytearray(100))
    assert len(spans) == 1
    assert opener.sequence == 1


def test_open_spans_out_of_exact_content_size() -> None:
    sealer, opener = pair("aes-256-gcm")
    wire = bytearray(sealer.seal(b"hello") + sealer.seal(b"world"))
    out = bytearray(10)  # exactly the two contents
    spans, consumed = opener.open_spans(wire, out)
    assert len(spans) == 2
    assert consumed == len(wire)
    assert bytes(out) == b"helloworld"


# --- damage -----------------------------------------------------------------------------


def damaged_stream(cipher: str) -> tuple[list[bytes], bytes]:
    """Record 0, the target record 1, then enough sealed data that a header
    length made larger by a bit flip still finds a complete record."""
    sealer, _ = pair(cipher)
    parts = [sealer.seal(b"before"), sealer.seal(marker(12)), sealer.seal(marker(40000, 5))]
    return parts, b"".join(parts)


def _bit_positions(parts: list[bytes]) -> list[int]:
    start, end = len(parts[0]), len(parts[0]) + len(parts[1])
    return [8 * start + b for b in range(8 * (end - start))]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_flipped_bit_of_a_record_is_rejected(cipher: str) -> None:
    parts, wire = damaged_stream(cipher)
    start = len(parts[0])
    for bit in _bit_positions(parts):
        bad = bytearray(wire)
        bad[bit // 8] ^= 1 << (bit % 8)
        _, opener = pair(cipher)
        expected = nautilus.RecordFormatError if bit // 8 == start else nautilus.IntegrityError
        with pytest.raises(expected) as info:
            opener.open(bad)
        assert info.value.records == [Record(APP, b"before")], bit
        assert info.value.consumed == start
        with pytest.raises(nautilus.ClosedError):
            opener.open(parts[1])


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("where", ["type", "length", "ciphertext", "inner type", "tag"])
@pytest.mark.parametrize("into_buffer", [False, True], ids=["in-place", "out"])
def test_damage_releases_no_plaintext(cipher: str, where: str, into_buffer: bool) -> None:
    parts, wire = damaged_stream(cipher)
    start = len(parts[0])
    offset = {"type": 0, "length": 3, "ciphertext": 9, "inner type": 16, "tag": 30}[where]
    bad = bytearray(wire)
    bad[start + offset] ^= 0x04
    damaged = bytes(bad)
    _, opener = pair(cipher)
    out = bytearray(len(wire)) if into_buffer else None
    with pytest.raises(nautilus.IntegrityError) as info:
        opener.open_spans(bad, out)
    assert info.value.records == [Span(APP, 0 if into_buffer else 4, 6)]
    assert info.value.consumed == start
    if into_buffer:
        assert bytes(out[:6]) == b"before"
        # out[6] may hold the good record's inner type byte; after it, nothing
        # of the bad record was written out (or it was wiped).
        assert out[6] in (0, APP)
        assert not any(out[7:])
        assert bytes(bad) == damaged
    else:
        assert bytes(bad[4:10]) == b"before"
        # Each byte of the bad record is either wiped or still what was received.
        region = range(start, len(bad))
        assert all(bad[i] in (0, damaged[i]) for i in region)
    assert marker(12) not in bytes(bad)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_opener_fails_for_good(cipher: str) -> None:
    sealer, opener = pair(cipher)
    good = sealer.seal(b"a")
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(nautilus.IntegrityError):
        opener.open(bad)
    assert opener.records_remaining == 0
    for call in (
        lambda: opener.open(good),
        lambda: opener.open(b""),
        lambda: opener.open_spans(bytearray(good)),
    ):
        with pytest.raises(nautilus.ClosedError):
            call()
    # Not even a rekey revives it (docs/record-layer.md, "Failures").
    with pytest.raises(nautilus.ClosedError, match="failed"):
        opener.rekey(key_for(cipher, 5), iv_for(5))
    with pytest.raises(nautilus.ClosedError):
        opener.open(good)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_truncated_record_with_fixed_header_is_rejected(cipher: str) -> None:
    sealer, opener = pair(cipher)
    rec = sealer.seal(b"truncate me")
    body = rec[4:-1]
    forged = b"\x17" + len(body).to_bytes(3, "big") + body
    with pytest.raises(nautilus.IntegrityError):
        opener.open(forged)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_truncated_stream_holds_back_last_record(cipher: str) -> None:
    sealer, opener = pair(cipher)
    wire = sealer.seal(b"kept") + sealer.seal(b"never complete")
    result = opener.open(wire[:-1])
    assert result.records == [Record(APP, b"kept")]
    assert result.consumed == 25


@pytest.mark.parametrize("cipher", CIPHERS)
def test_reordered_records_are_rejected(cipher: str) -> None:
    sealer, opener = pair(cipher)
    r0, r1, r2 = sealer.seal(b"zero"), sealer.seal(b"one"), sealer.seal(b"two")
    with pytest.raises(nautilus.IntegrityError) as info:
        opener.open(r0 + r2 + r1)
    assert info.value.records == [Record(APP, b"zero")]
    _, opener = pair(cipher)
    with pytest.raises(nautilus.IntegrityError) as info:
        opener.open(r1 + r0)
    assert info.value.records == []


@pytest.mark.parametrize("cipher", CIPHERS)
def test_replayed_record_is_rejected(cipher: str) -> None:
    sealer, opener = pair(cipher)
    r0, r1 = sealer.seal(b"zero"), sealer.seal(b"one")
    assert opener.open(r0).records == [Record(APP, b"zero")]
    with pytest.raises(nautilus.IntegrityError):
        opener.open(r0 + r1)
    _, opener = pair(cipher)
    with pytest.raises(nautilus.IntegrityError) as info:
        opener.open(r0 + r0)
    assert info.value.records == [Record(APP, b"zero")]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_dropped_record_is_rejected(cipher: str) -> None:
    sealer, opener = pair(cipher)
    r0, _r1, r2 = sealer.seal(b"zero"), sealer.seal(b"one"), sealer.seal(b"two")
    with pytest.raises(nautilus.IntegrityError):
        opener.open(r0 + r2)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrong_key_or_cipher_is_rejected(cipher: str) -> None:
    sealer, _ = pair(cipher)
    wire = sealer.seal(b"secret")
    with pytest.raises(nautilus.IntegrityError):
        RecordOpener(cipher, key_for(cipher, 1), iv_for()).open(wire)
    with pytest.raises(nautilus.IntegrityError):
        RecordOpener(cipher, key_for(cipher), iv_for(1)).open(wire)
    other = "aes-256-gcm" if cipher == "chacha20-poly1305" else "chacha20-poly1305"
    with pytest.raises(nautilus.IntegrityError):
        RecordOpener(other, key_for(other), iv_for()).open(wire)


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("type_byte", [0x00, 0x14, 0x15, 0x16, 0x18, 0x97, 0xFF])
def test_wrong_header_type(cipher: str, type_byte: int) -> None:
    sealer, opener = pair(cipher)
    wire = bytearray(sealer.seal(b"x"))
    wire[0] = type_byte
    with pytest.raises(nautilus.RecordFormatError) as info:
        opener.open(wire)
    assert isinstance(info.value, nautilus.IntegrityError)
    assert isinstance(info.value, ValueError)
    assert info.value.records == []


@pytest.mark.parametrize("cipher", CIPHERS)
def test_oversize_record(cipher: str) -> None:
    sealer = RecordSealer(cipher, key_for(cipher), iv_for(), max_fragment=200)
    fits = sealer.seal(marker(100))
    too_big = sealer.seal(marker(101))
    opener = RecordOpener(cipher, key_for(cipher), iv_for(), max_fragment=100)
    assert opener.open(fits).records == [Record(APP, marker(100))]
    with pytest.raises(nautilus.RecordFormatError):
        opener.open(too_big)


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("length", [0, 1, 16, 16384 + 18, 0xFFFFFF])
def test_impossible_header_length(cipher: str, length: int) -> None:
    # Body shorter than tag + inner type, or longer than the largest record:
    # refused from the header alone, without waiting for the body.
    _, opener = pair(cipher)
    with pytest.raises(nautilus.RecordFormatError):
        opener.open(b"\x17" + length.to_bytes(3, "big") + bytes(min(length, 64)))


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("inner", [b"content\x00", b"\x00", b"padded\x17\x00\x00"])
def test_inner_type_zero(cipher: str, inner: bytes) -> None:
    key, iv = key_for(cipher), iv_for()
    good = craft(cipher, key, iv, 0, b"ok\x17")
    bad = craft(cipher, key, iv, 1, inner)
    opener = RecordOpener(cipher, key, iv)
    buf = bytearray(good + bad)
    with pytest.raises(nautilus.RecordFormatError) as info:
        opener.open_spans(buf)
    assert info.value.records == [Span(APP, 4, 2)]
    assert not any(buf[len(good) + 4 : len(good) + 4 + len(inner)])


# --- sequence limits --------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_record_limit_near_the_end(cipher: str) -> None:
    sealer, opener = pair(cipher, max_fragment=4, record_limit=10)
    sealer._set_sequence(8)
    assert sealer.records_remaining == 2
    out = bytearray(b"\xaa" * sealer.sealed_size(12))
    with pytest.raises(nautilus.RecordLimitReached):
        sealer.seal_into(b"three recs!!", out)  # 3 records
    assert out == b"\xaa" * len(out)
    assert sealer.sequence == 8
    with pytest.raises(nautilus.RecordLimitReached):
        sealer.seal(b"three recs!!")
    assert sealer.sequence == 8
    wire = sealer.seal(b"two recs")  # 2 records
    assert sealer.sequence == 10
    assert sealer.records_remaining == 0
    with pytest.raises(nautilus.RecordLimitReached):
        sealer.seal(b"")
    opener._set_sequence(8)
    assert [r.data for r in opener.open(wire).records] == [b"two ", b"recs"]

    new_key, new_iv = key_for(cipher, 5), iv_for(5)
    sealer.rekey(new_key, new_iv)
    assert sealer.sequence == 0
    assert sealer.records_remaining == 10
    wire = sealer.seal(b"new!")
    assert sealer.sequence == 1
    opener.rekey(new_key, new_iv)
    assert opener.open(wire).records == [Record(APP, b"new!")]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_sequence_never_wraps(cipher: str) -> None:
    key, iv = key_for(cipher), iv_for()
    sealer = RecordSealer(cipher, key, iv, record_limit=U64, max_fragment=8)
    sealer._set_sequence(U64 - 2)
    with pytest.raises(nautilus.RecordLimitReached):
        sealer.seal(bytes(17))  # three records
    assert sealer.sequence == U64 - 2
    wire = sealer.seal(b"last") + sealer.seal(b"one more")
    assert sealer.sequence == U64
    assert sealer.records_remaining == 0
    for data in (b"", b"x"):
        with pytest.raises(nautilus.RecordLimitReached):
            sealer.seal(data)
    assert sealer.sequence == U64
    # Independent check of the last two nonces.
    ref = reference_aead(cipher, key)
    r0, r1 = split_records(wire)
    assert ref.decrypt(nonce_for(iv, U64 - 2), r0[4:], r0[:4]) == b"last\x17"
    assert ref.decrypt(nonce_for(iv, U64 - 1), r1[4:], r1[:4]) == b"one more\x17"
    opener = RecordOpener(cipher, key, iv, record_limit=U64, max_fragment=8)
    opener._set_sequence(U64 - 2)
    assert [r.data for r in opener.open(wire).records] == [b"last", b"one more"]
    assert opener.sequence == U64
    with pytest.raises(nautilus.RecordLimitReached):
        opener.open(craft(cipher, key, iv, 0, b"wrapped\x17"))


@pytest.mark.parametrize("cipher", CIPHERS)
def test_default_record_limit(cipher: str) -> None:
    sealer, _ = pair(cipher)
    assert record.DEFAULT_RECORD_LIMIT == 2**23
    assert sealer.records_remaining == 2**23
    sealer._set_sequence(2**23 - 1)
    sealer.seal(b"last")
    with pytest.raises(nautilus.RecordLimitReached):
        sealer.seal(b"too many")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_opener_refuses_records_past_its_limit(cipher: str) -> None:
    sealer, _ = pair(cipher)
    _, opener = pair(cipher, record_limit=10)
    sealer._set_sequence(8)
    opener._set_sequence(8)
    wire = sealer.seal(b"eight") + sealer.seal(b"nine")
    assert [r.data for r in opener.open(wire).records] == [b"eight", b"nine"]
    assert opener.records_remaining == 0
    with pytest.raises(nautilus.RecordLimitReached):
        opener.open(sealer.seal(b"ten"))


@pytest.mark.parametrize("cipher", ["aes-256-gcm"])
def test_opener_limit_keeps_records_before_it(cipher: str) -> None:
    sealer, _ = pair(cipher)
    _, opener = pair(cipher, record_limit=10)
    sealer._set_sequence(8)
    opener._set_sequence(8)
    first_two = sealer.seal(b"eight") + sealer.seal(b"nine")
    wire = first_two + sealer.seal(b"ten")
    # Records 8 and 9 verified: they are returned, and the call stops at the limit.
    result = opener.open(wire)
    assert result.records == [Record(APP, b"eight"), Record(APP, b"nine")]
    assert result.consumed == len(first_two)
    assert opener.sequence == 10
    # The next call refuses, without failing the opener: a rekey clears it.
    with pytest.raises(nautilus.RecordLimitReached):
        opener.open(wire[len(first_two) :])
    assert opener.sequence == 10


def test_open_returns_every_complete_record() -> None:
    sealer, opener = pair("aes-128-gcm", max_fragment=1)
    wire = sealer.seal(marker(1500))
    result = opener.open(wire)
    assert result.record_count == 1500
    assert result.consumed == len(wire)


# --- arguments, closing, repr ------------------------------------------------------------


@pytest.mark.parametrize("cls", [RecordSealer, RecordOpener])
@pytest.mark.parametrize("cipher", CIPHERS)
def test_bad_key_and_iv(cls: type, cipher: str) -> None:
    key, iv = key_for(cipher), iv_for()
    for bad in (key[:-1], key + b"\x00", b""):
        with pytest.raises(ValueError, match="key"):
            cls(cipher, bad, iv)
    for bad_iv in (iv[:-1], iv + b"\x00", bytes(16)):
        with pytest.raises(ValueError, match="iv"):
            cls(cipher, key, bad_iv)
    with pytest.raises(TypeError, match="key"):
        cls(cipher, key.hex(), iv)
    with pytest.raises(TypeError, match="iv"):
        cls(cipher, key, None)
    obj = cls(cipher, key, iv)
    with pytest.raises(ValueError, match="key"):
        obj.rekey(key[:-1], iv)
    with pytest.raises(ValueError, match="iv"):
        obj.rekey(key, iv[:-1])


@pytest.mark.parametrize("cls", [RecordSealer, RecordOpener, record.AEAD])
def test_unknown_cipher(cls: type) -> None:
    extra = [] if cls is record.AEAD else [iv_for()]
    with pytest.raises(ValueError, match="cipher"):
        cls("aes-192-gcm", bytes(24), *extra)
    with pytest.raises(ValueError, match="cipher"):
        cls("AES-256-GCM", bytes(32), *extra)
    with pytest.raises(TypeError, match="cipher"):
        cls(b"aes-256-gcm", bytes(32), *extra)
    with pytest.raises(ValueError, match="cipher"):
        record.key_size("des")


def test_key_size() -> None:
    assert {c: record.key_size(c) for c in CIPHERS} == KEY_BYTES
    assert set(record.CIPHERS) == set(CIPHERS)


@pytest.mark.parametrize("cls", [RecordSealer, RecordOpener])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, TypeError),
        (False, TypeError),
        (1.0, TypeError),
        ("16", TypeError),
        (None, TypeError),
        (0, ValueError),
        (-1, ValueError),
        (262145, ValueError),
        (1 << 70, ValueError),
    ],
)
def test_bad_max_fragment(cls: type, value: Any, error: type) -> None:
    with pytest.raises(error, match="max_fragment"):
        cls("aes-128-gcm", bytes(16), bytes(12), max_fragment=value)


@pytest.mark.parametrize("cls", [RecordSealer, RecordOpener])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, TypeError),
        (10.0, TypeError),
        (None, TypeError),
        (0, ValueError),
        (-5, ValueError),
        (1 << 64, ValueError),
    ],
)
def test_bad_record_limit(cls: type, value: Any, error: type) -> None:
    with pytest.raises(error, match="record_limit"):
        cls("aes-128-gcm", bytes(16), bytes(12), record_limit=value)


@pytest.mark.parametrize("cls", [RecordSealer, RecordOpener])
def test_extreme_valid_settings(cls: type) -> None:
    obj = cls("aes-128-gcm", bytes(16), bytes(12), max_fragment=1, record_limit=1)
    assert obj.max_fragment == 1
    assert obj.records_remaining == 1
    obj = cls("aes-128-gcm", bytes(16), bytes(12), max_fragment=262144, record_limit=U64)
    assert obj.max_fragment == 262144
    assert obj.records_remaining == U64


@pytest.mark.parametrize("bad", ["text", 5, None, [1, 2]])
def test_seal_non_bytes(bad: Any) -> None:
    sealer, _ = pair("aes-256-gcm")
    with pytest.raises(TypeError, match="data"):
        sealer.seal(bad)
    with pytest.raises(TypeError, match="data"):
        sealer.seal_into(bad, bytearray(100))
    assert sealer.sequence == 0


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (256, ValueError), (True, TypeError)])
def test_a_bad_batch_type_is_named(bad: Any, error: type) -> None:
    """The three open calls named a bad batch_type "content_type" (their
    records' field), which none of them takes."""
    sealer, opener = pair("aes-256-gcm")
    wire = sealer.seal(b"one")
    with pytest.raises(error, match=r"^batch_type must be"):
        opener.open(wire, batch_type=bad)
    with pytest.raises(error, match=r"^batch_type must be"):
        opener.open_spans(bytearray(wire), None, bad)
    with pytest.raises(error, match=r"^batch_type must be"):
        opener.open_packed(wire, bytearray(100), bad)
    assert opener.sequence == 0


@pytest.mark.parametrize("bad", [None, 1, "no", b""])
def test_open_merge_must_be_a_bool(bad: Any) -> None:
    """merge="no" merged and merge=None did not: any object was taken for its
    truth value. A refused call opens nothing (the next record still opens)."""
    sealer, opener = pair("aes-256-gcm")
    wire = sealer.seal(b"one")
    with pytest.raises(TypeError, match="merge must be a bool"):
        opener.open(wire, merge=bad)
    assert opener.sequence == 0
    assert opener.open(wire).records == [Record(APP, b"one")]


@pytest.mark.parametrize("bad", ["text", 5, None])
def test_open_non_bytes(bad: Any) -> None:
    _, opener = pair("aes-256-gcm")
    with pytest.raises(TypeError, match="data"):
        opener.open(bad)
    with pytest.raises(TypeError, match="data"):
        opener.open_spans(bad)
    with pytest.raises(TypeError, match="data"):
        opener.open_spans(b"\x17\x00\x00\x11")  # immutable bytes cannot be opened in place


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (256, ValueError),
        (-1, ValueError),
        (True, TypeError),
        ("23", TypeError),
        (23.0, TypeError),
    ],
)
def test_bad_content_type(value: Any, error: type) -> None:
    sealer, opener = pair("aes-256-gcm")
    with pytest.raises(error, match="content_type"):
        sealer.seal(b"x", value)
    with pytest.raises(error, match="content_type"):
        sealer.seal_into(b"x", bytearray(64), value)
    assert sealer.sequence == 0
    with pytest.raises(error, match="batch_type"):
        opener.open(b"", batch_type=value)


@pytest.mark.parametrize("content_type", [1, 255])
def test_extreme_content_types(content_type: int) -> None:
    sealer, opener = pair("aes-256-gcm")
    wire = sealer.seal(b"x", content_type)
    assert opener.open(wire).records == [Record(content_type, b"x")]


def test_seal_into_checks_out() -> None:
    sealer, opener = pair("aes-256-gcm")
    with pytest.raises(ValueError, match="too small"):
        sealer.seal_into(b"hello", bytearray(25))
    assert sealer.sequence == 0
    with pytest.raises(TypeError, match="out"):
        sealer.seal_into(b"hello", bytes(26))
    out = bytearray(40)
    assert sealer.seal_into(b"hello", memoryview(out)) == 26
    assert opener.open(out[:26]).records == [Record(APP, b"hello")]


def test_sealed_size_bad_length() -> None:
    sealer, _ = pair("aes-256-gcm")
    with pytest.raises(ValueError, match="length"):
        sealer.sealed_size(-1)
    with pytest.raises(TypeError, match="length"):
        sealer.sealed_size(1.5)


@pytest.mark.parametrize("cls", [RecordSealer, RecordOpener])
def test_set_sequence_range(cls: type) -> None:
    obj = cls("aes-128-gcm", bytes(16), bytes(12))
    with pytest.raises(ValueError, match="sequence"):
        obj._set_sequence(-1)
    with pytest.raises(ValueError, match="sequence"):
        obj._set_sequence(1 << 64)
    obj._set_sequence(U64)
    assert obj.sequence == U64
    assert obj.records_remaining == 0


@pytest.mark.parametrize("cipher", CIPHERS)
def test_closed_sealer(cipher: str) -> None:
    sealer, _ = pair(cipher)
    sealer.seal(b"before")
    sealer.close()
    sealer.close()  # closing twice is harmless
    assert "closed" in repr(sealer)
    calls = [
        lambda: sealer.seal(b"x"),
        lambda: sealer.seal_into(b"x", bytearray(64)),
        lambda: sealer.sealed_size(1),
        lambda: sealer.sequence,
        lambda: sealer.records_remaining,
        lambda: sealer.max_fragment,
        lambda: sealer.rekey(key_for(cipher), iv_for()),
        lambda: sealer._set_sequence(0),
    ]
    for call in calls:
        with pytest.raises(nautilus.ClosedError):
            call()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_closed_opener(cipher: str) -> None:
    sealer, opener = pair(cipher)
    wire = sealer.seal(b"x")
    with opener as same:
        assert same is opener
        assert opener.open(wire).records == [Record(APP, b"x")]
    calls = [
        lambda: opener.open(wire),
        lambda: opener.open_spans(bytearray(wire)),
        lambda: opener.open_spans(bytearray(wire), bytearray(64)),
        lambda: opener.sequence,
        lambda: opener.rekey(key_for(cipher), iv_for()),
    ]
    for call in calls:
        with pytest.raises(nautilus.ClosedError):
            call()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_repr_shows_no_key_material(cipher: str) -> None:
    key = bytes(range(0xC0, 0xC0 + KEY_BYTES[cipher]))
    iv = bytes(range(0xE0, 0xEC))
    objects = [
        RecordSealer(cipher, key, iv),
        RecordOpener(cipher, key, iv),
        record.AEAD(cipher, key),
    ]
    for obj in objects:
        text = repr(obj)
        assert cipher in text
        for secret in (key, iv):
            assert secret.hex() not in text.lower()
            assert repr(secret) not in text
            assert secret[:4].hex() not in text.lower()
    assert "seq=0" in repr(objects[0])


# --- copies, batch boundaries, buffers, rekey, wiping --------------------------------------


def test_record_states_refuse_copy_and_pickle() -> None:
    sealer, opener = pair("aes-256-gcm")
    aead = record.AEAD("aes-256-gcm", key_for("aes-256-gcm"))
    for obj in (sealer, opener, aead):
        for duplicate in (copy.copy, copy.deepcopy):
            with pytest.raises(TypeError, match="cannot be copied or pickled"):
                duplicate(obj)
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError, match="cannot be copied or pickled"):
                pickle.dumps(obj, protocol=protocol)
    # Nothing was shared or consumed: the originals work on.
    assert opener.open(sealer.seal(b"still one")).records == [Record(APP, b"still one")]
    assert sealer.sequence == opener.sequence == 1


BATCH = 1024  # records per C call of open_spans (_bindings._MAX_SPANS)


def limited_opener(limit: int) -> RecordOpener:
    cipher = "aes-128-gcm"
    return RecordOpener(cipher, key_for(cipher), iv_for(), max_fragment=1, record_limit=limit)


@pytest.mark.parametrize("batches", [1, 2])
def test_open_at_the_record_limit_keeps_whole_batches(batches: int) -> None:
    limit = BATCH * batches
    sealer, _ = pair("aes-128-gcm", max_fragment=1)
    opener = limited_opener(limit)
    content = marker(limit + 1)
    wire = sealer.seal(content)
    result = opener.open(wire)
    assert result.record_count == limit
    assert b"".join(r.data for r in result.records) == content[:limit]
    assert result.consumed == limit * (1 + record.RECORD_OVERHEAD)
    assert opener.sequence == limit
    with pytest.raises(nautilus.RecordLimitReached):
        opener.open(wire[result.consumed :])


def test_open_spans_with_out_full_at_a_batch_boundary() -> None:
    sealer, opener = pair("aes-128-gcm", max_fragment=1)
    content = marker(BATCH + 5)
    wire = bytearray(sealer.seal(content))
    out = bytearray(BATCH)  # exactly the contents of one batch
    spans, consumed = opener.open_spans(wire, out)
    assert len(spans) == BATCH
    assert bytes(out) == content[:BATCH]
    assert consumed == BATCH * (1 + record.RECORD_OVERHEAD)
    assert opener.sequence == BATCH
    # The next call with that full buffer says so; with room, it opens the rest.
    rest = wire[consumed:]
    with pytest.raises(ValueError, match="too small"):
        opener.open_spans(rest, bytearray(0))
    spans, consumed = opener.open_spans(rest, out)
    assert bytes(out[:5]) == content[BATCH:]
    assert (len(spans), consumed) == (5, len(rest))


def test_open_spans_at_the_limit_on_a_batch_boundary() -> None:
    sealer, _ = pair("aes-128-gcm", max_fragment=1)
    opener = limited_opener(BATCH)
    wire = bytearray(sealer.seal(marker(BATCH + 1)))
    spans, consumed = opener.open_spans(wire, bytearray(len(wire)))
    assert len(spans) == BATCH
    assert consumed == BATCH * (1 + record.RECORD_OVERHEAD)
    with pytest.raises(nautilus.RecordLimitReached):
        opener.open_spans(wire[consumed:], bytearray(len(wire)))


@pytest.mark.parametrize(
    ("data_at", "out_at"),
    [
        ((0, 11), (0, 64)),  # data at the start of out
        ((40, 51), (0, 64)),  # data later in out
        ((0, 11), (10, 74)),  # out starts on data's last byte
        ((60, 71), (0, 61)),  # out ends on data's first byte
    ],
)
def test_seal_into_refuses_overlapping_buffers(
    data_at: tuple[int, int], out_at: tuple[int, int]
) -> None:
    sealer, opener = pair("aes-256-gcm")
    buf = bytearray(marker(80))
    view = memoryview(buf)
    with pytest.raises(ValueError, match="out must not overlap data"):
        sealer.seal_into(view[data_at[0] : data_at[1]], view[out_at[0] : out_at[1]])
    assert sealer.sequence == 0
    assert buf == marker(80)
    # Adjacent parts of one buffer are fine.
    n = sealer.seal_into(view[:11], view[11:])
    assert opener.open(buf[11 : 11 + n]).records == [Record(APP, marker(11))]


@pytest.mark.parametrize("method", ["open_packed", "open_spans"])
@pytest.mark.parametrize("shift", [0, 8, -8])
def test_open_refuses_out_overlapping_data(method: str, shift: int) -> None:
    sealer, opener = pair("aes-256-gcm")
    wire = sealer.seal(b"A" * 100) + sealer.seal(b"B" * 100)
    buf = bytearray(300) + bytearray(wire) + bytearray(300)
    view = memoryview(buf)
    data = view[300 : 300 + len(wire)]
    out = view[300 + shift : 300 + shift + len(wire)]
    with pytest.raises(ValueError, match="out must not overlap data"):
        getattr(opener, method)(data, out)
    # Refused before opening: the opener did not fail and nothing was consumed.
    assert opener.sequence == 0
    assert bytes(data) == wire
    getattr(opener, method)(data, view[: len(wire)])  # a separate part of the same buffer
    assert bytes(buf[:200]) == b"A" * 100 + b"B" * 100
    assert opener.sequence == 2


def test_bad_buffers_are_type_errors_naming_the_argument() -> None:
    sealer, opener = pair("aes-256-gcm")
    wire = sealer.seal(b"hello")
    read_only = memoryview(bytes(100))
    strided = memoryview(bytearray(200))[::2]
    cases: list[tuple[Any, str]] = [
        (lambda: sealer.seal_into(b"x", read_only), "out must be writable"),
        (lambda: sealer.seal_into(b"x", strided), "out must be C-contiguous"),
        (lambda: sealer.seal_into(b"x", bytes(100)), "out must be a bytearray"),
        (lambda: opener.open_spans(bytearray(wire), bytes(100)), "out must be a bytearray"),
        (lambda: opener.open_spans(bytearray(wire), "x" * 100), "out must be a bytearray"),
        (lambda: opener.open_spans(bytearray(wire), [0] * 100), "out must be a bytearray"),
        (lambda: opener.open_spans(bytearray(wire), read_only), "out must be writable"),
        (lambda: opener.open_spans(bytearray(wire), strided), "out must be C-contiguous"),
        (lambda: opener.open_spans(memoryview(wire)), "data must be writable"),
        (lambda: opener.open_spans(memoryview(bytearray(wire * 2))[::2]), "data must be C-"),
        (lambda: opener.open_packed(wire, read_only), "out must be writable"),
        (lambda: opener.open_packed(wire, strided), "out must be C-contiguous"),
    ]
    for call, message in cases:
        with pytest.raises(TypeError, match=message):
            call()
    assert sealer.sequence == 1
    assert opener.open(wire).records == [Record(APP, b"hello")]


def test_non_contiguous_input_is_copied() -> None:
    sealer, opener = pair("aes-256-gcm")
    reference, _ = pair("aes-256-gcm")
    strided = memoryview(bytearray(b"h-e-l-l-o-"))[::2]
    wire = sealer.seal(strided)
    assert wire == reference.seal(b"hello")
    out = bytearray(64)
    n = sealer.seal_into(strided, out)
    assert out[:n] == reference.seal(b"hello")
    doubled = bytearray(2 * len(wire + out[:n]))
    doubled[::2] = wire + out[:n]
    opened = opener.open_packed(memoryview(doubled)[::2], bytearray(64))
    assert (opened.records, opened.written) == (2, 10)


@pytest.mark.parametrize("damage", ["tag", "header"])
def test_rekey_refuses_a_failed_opener(damage: str) -> None:
    sealer, opener = pair("aes-256-gcm")
    bad = bytearray(sealer.seal(b"x"))
    bad[-1 if damage == "tag" else 0] ^= 1
    error = nautilus.IntegrityError if damage == "tag" else nautilus.RecordFormatError
    with pytest.raises(error):
        opener.open(bad)
    with pytest.raises(nautilus.ClosedError, match="failed"):
        opener.rekey(key_for("aes-256-gcm", 3), iv_for(3))
    with pytest.raises(nautilus.ClosedError, match="failed"):
        opener._rekey_from_secret(bytes(32))
    opener.close()
    with pytest.raises(nautilus.ClosedError, match="closed"):
        opener.rekey(key_for("aes-256-gcm", 3), iv_for(3))


@pytest.mark.parametrize("cls", [RecordSealer, RecordOpener])
def test_rekey_refuses_a_key_in_use_or_used_before_under_any_iv(cls: type) -> None:
    cipher = "chacha20-poly1305"
    obj = cls(cipher, key_for(cipher), iv_for())
    obj._set_sequence(5)
    for iv in (iv_for(), iv_for(1), bytes(IV_SIZE)):  # another IV too: see below
        with pytest.raises(ValueError, match="in use or was used before"):
            obj.rekey(key_for(cipher), iv)
    with pytest.raises(ValueError, match="in use or was used before"):
        obj.rekey(bytearray(key_for(cipher)), memoryview(iv_for()))
    assert obj.sequence == 5  # not restarted
    obj.rekey(key_for(cipher, 1), iv_for(1))  # a new key
    assert obj.sequence == 0
    obj._set_sequence(7)
    for k, i in ((0, 0), (0, 1), (1, 2)):  # going back (A, B, A) would reuse A's nonces
        with pytest.raises(ValueError, match="in use or was used before"):
            obj.rekey(key_for(cipher, k), iv_for(i))
    assert obj.sequence == 7
    # Only keyed fingerprints are kept, never the key or IV.
    slots = [name for c in type(obj).__mro__ for name in getattr(c, "__slots__", ())]
    held = [getattr(obj, name) for name in slots]
    assert obj._used in held
    assert len(obj._used) == 2
    for value in [*held, *obj._used]:
        if isinstance(value, (bytes, bytearray)):
            assert key_for(cipher, 1)[:8] not in value
            assert iv_for(1)[:8] not in value


def test_rekey_to_the_same_key_under_an_overlapping_iv_is_refused() -> None:
    """Nonces are the IV XOR the sequence number: the same key under the IV
    with its last bit flipped gives, at its record 0, the nonce record 1 had.
    Only (key, IV) pairs were remembered, so this rekey was accepted and two
    records were sealed with one keystream."""
    cipher = "aes-256-gcm"
    sealer = RecordSealer(cipher, key_for(cipher), iv_for())
    sealer.seal(b"record zero")
    sealer.seal(b"record one")
    related = bytes(iv_for()[:-1]) + bytes([iv_for()[-1] ^ 1])
    with pytest.raises(ValueError, match="in use or was used before"):
        sealer.rekey(key_for(cipher), related)
    assert sealer.sequence == 2


def test_a_keyed_sealer_or_opener_cannot_be_initialised_again() -> None:
    """__init__ called again would restart the sequence under the same key."""
    cipher = "aes-256-gcm"
    for cls in (RecordSealer, RecordOpener):
        obj = cls(cipher, key_for(cipher), iv_for())
        with pytest.raises(RuntimeError, match="already keyed"):
            obj.__init__(cipher, key_for(cipher), iv_for())  # type: ignore[misc]


def test_rekey_history_is_bounded() -> None:
    cipher = "aes-256-gcm"
    first = key_for(cipher)
    sealer = RecordSealer(cipher, first, iv_for())
    keys = [n.to_bytes(KEY_BYTES[cipher], "big") for n in range(1, REKEY_HISTORY + 1)]
    for key in keys:
        sealer.rekey(key, iv_for())
    assert len(sealer._used) == REKEY_HISTORY
    with pytest.raises(ValueError, match="used before"):
        sealer.rekey(keys[0], iv_for(1))  # still remembered
    sealer.rekey(first, iv_for(1))  # the first one, out of the history


def test_close_wipes_the_opener_scratch() -> None:
    sealer, opener = pair("aes-256-gcm")
    small, large = marker(40, 2), marker(4000, 3)
    assert opener.open(sealer.seal(small)).records == [Record(APP, small)]
    first = opener._scratch
    assert small in first
    assert opener.open(sealer.seal(large)).records == [Record(APP, large)]
    assert opener._scratch is not first
    assert first == bytes(len(first))  # the replaced buffer was wiped
    second = opener._scratch
    assert large in second
    opener.close()
    assert second == bytes(len(second))
    with pytest.raises(nautilus.ClosedError):
        opener.open(sealer.seal(small))


def test_an_opener_collected_unclosed_wipes_its_scratch() -> None:
    sealer, opener = pair("aes-256-gcm")
    secret = marker(400, 4)
    assert opener.open(sealer.seal(secret)).records == [Record(APP, secret)]
    scratch = opener._scratch
    assert secret in scratch
    del opener
    gc.collect()
    assert scratch == bytes(len(scratch))


def test_one_aead_used_by_several_threads_at_once() -> None:
    """Ticket keys are one AEAD shared by a server's threads: its C cipher
    state must serve one call at a time (the C call releases the GIL)."""
    aead = record.AEAD("aes-256-gcm", bytes(range(32)))
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10_000):
                nonce = n.to_bytes(4, "big") + i.to_bytes(8, "big")
                data = nonce * 20
                sealed = aead.encrypt(nonce, data, b"aad")
                if aead.decrypt(nonce, sealed, b"aad") != data:
                    raise AssertionError("a round trip changed the data")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:3]


# --- the C calls' own checks ---------------------------------------------------------
# RecordSealer and RecordOpener check their arguments before calling C, so the
# checks of csrc/nt_record.c are asked here directly: each must hold by itself.


def _c_seal(handle: Any, data: bytes, content_type: int = APP) -> tuple[int, bytearray]:
    out = bytearray(b"\xaa" * lib.nt_seal_size(handle, len(data)))
    lens = ffi.new("size_t[2]")
    rc = lib.nt_seal(
        handle, content_type, data, len(data), ffi.from_buffer(out), len(out), lens, lens + 1
    )
    return int(rc), out


def _c_open(handle: Any, wire: bytes, max_spans: int = 8) -> tuple[int, int]:
    buf = bytearray(wire)
    spans = ffi.new("nt_span[]", max(max_spans, 1))
    counts = ffi.new("size_t[2]")
    rc = lib.nt_open(
        handle, ffi.from_buffer(buf), len(buf), ffi.NULL, 0, APP, spans, max_spans, counts,
        counts + 1,
    )  # fmt: skip
    return int(rc), int(counts[0])


def test_c_refuses_an_unknown_cipher_a_zero_limit_and_a_zero_max_fragment() -> None:
    key, iv = key_for("aes-256-gcm"), iv_for()
    out = ffi.new("nt_aead **")
    for cipher in (0, 4, -1):
        assert lib.nt_aead_new(cipher, 1, key, len(key), iv, len(iv), out) == lib.NT_ERR_ARG
        assert out[0] == ffi.NULL
    sealer, _ = pair("aes-256-gcm", max_fragment=100, record_limit=10)
    assert lib.nt_aead_set_limit(sealer._live(), 0) == lib.NT_ERR_ARG
    assert lib.nt_aead_set_max_fragment(sealer._live(), 0) == lib.NT_ERR_ARG
    assert (sealer.records_remaining, sealer.max_fragment) == (10, 100)
    assert len(split_records(sealer.seal(bytes(250)))) == 3


def test_c_seal_size_says_zero_when_the_size_would_overflow() -> None:
    sealer, _ = pair("aes-256-gcm")
    handle = sealer._live()
    for n in (U64, U64 - 16384, U64 - (1 << 40)):  # n + 21 bytes per 16 KiB passes 2^64
        assert lib.nt_seal_size(handle, n) == 0
        with pytest.raises(ValueError, match="too much"):
            record._b.seal_size(handle, n)
    assert lib.nt_seal_size(handle, 1 << 62) == (1 << 62) + 21 * (1 << 48)


def test_c_seal_refuses_content_type_zero_and_an_opening_state() -> None:
    sealer, opener = pair("aes-256-gcm")
    rc, out = _c_seal(sealer._live(), b"data", content_type=0)
    assert rc == lib.NT_ERR_ARG
    assert out == b"\xaa" * len(out)
    rc, out = _c_seal(opener._live(), b"data")
    assert rc == lib.NT_ERR_STATE
    assert out == b"\xaa" * len(out)
    assert sealer.sequence == opener.sequence == 0
    assert opener.open(sealer.seal(b"still fine")).records == [Record(APP, b"still fine")]


def test_c_open_refuses_a_sealing_state_and_no_room_for_spans() -> None:
    sealer, opener = pair("aes-256-gcm")
    wire = sealer.seal(b"first")
    assert _c_open(sealer._live(), wire) == (lib.NT_ERR_STATE, 0)
    assert _c_open(opener._live(), wire, max_spans=0) == (lib.NT_ERR_ARG, 0)
    assert (sealer.sequence, opener.sequence) == (1, 0)
    assert opener.open(wire).records == [Record(APP, b"first")]


@pytest.mark.parametrize("cipher", CIPHERS)
def test_a_sequence_set_past_the_limit_seals_and_opens_nothing(cipher: str) -> None:
    sealer, opener = pair(cipher, record_limit=10)
    wire = sealer.seal(b"record zero")
    for holder in (sealer, opener):
        holder._set_sequence(11)
        assert holder.records_remaining == 0
    with pytest.raises(nautilus.RecordLimitReached):
        sealer.seal(b"")
    assert sealer.sequence == 11
    with pytest.raises(nautilus.RecordLimitReached):
        opener.open(wire)
    assert opener.sequence == 11


def test_c_rekey_clears_a_failed_state() -> None:
    """nt_aead_rekey's contract (csrc/nt_record.h): a failed state is cleared.
    (RecordOpener.rekey refuses a failed opener before it gets there.)"""
    sealer, opener = pair("aes-256-gcm")
    bad = bytearray(sealer.seal(b"x"))
    bad[-1] ^= 1
    with pytest.raises(nautilus.IntegrityError):
        opener.open(bad)
    assert record._b.aead_failed(opener._live())
    key, iv = key_for("aes-256-gcm", 9), iv_for(9)
    assert lib.nt_aead_rekey(opener._live(), key, len(key), iv, len(iv)) == lib.NT_OK
    assert not record._b.aead_failed(opener._live())
    assert opener.records_remaining == record.DEFAULT_RECORD_LIMIT
    sealer.rekey(key, iv)
    assert opener.open(sealer.seal(b"again")).records == [Record(APP, b"again")]


def _oneshot_c(
    fn: Any, handle: Any, data: bytes, in_len: int, out: bytearray, nonce: bytes = bytes(12)
) -> int:
    n = len(nonce)
    return int(fn(handle, nonce, n, b"ad", 2, data, in_len, ffi.from_buffer(out), len(out)))


def test_c_oneshot_refuses_short_buffers_and_lengths_without_touching_them() -> None:
    key = key_for("aes-256-gcm")
    aead = AEAD("aes-256-gcm", key)
    handle = aead._handle
    out = bytearray(b"\xaa" * 15)
    assert _oneshot_c(lib.nt_aead_encrypt, handle, b"", 0, out) == lib.NT_ERR_BUFFER
    out = bytearray(b"\xaa" * 20)
    assert _oneshot_c(lib.nt_aead_encrypt, handle, b"12345", 5, out) == lib.NT_ERR_BUFFER
    assert _oneshot_c(lib.nt_aead_decrypt, handle, bytes(15), 15, out) == lib.NT_ERR_LENGTH
    # A length no AEAD call may take (over INT_MAX with the tag) is refused
    # before the input is read: the buffer given is far shorter.
    for fn in (lib.nt_aead_encrypt, lib.nt_aead_decrypt):
        assert _oneshot_c(fn, handle, bytes(32), 1 << 31, out) == lib.NT_ERR_LENGTH
    assert out == b"\xaa" * 20
    assert aead.decrypt(bytes(12), aead.encrypt(bytes(12), b"ok", b"ad"), b"ad") == b"ok"


@pytest.mark.parametrize("cipher", CIPHERS)
def test_c_refuses_a_key_an_iv_or_a_nonce_one_byte_off(cipher: str) -> None:
    """RecordSealer, RecordOpener and AEAD check the lengths before calling
    C: C's own checks are asked here. A refused rekey leaves the keys as
    they were."""
    key, iv = key_for(cipher), iv_for()
    cid = record._b.AEAD_IDS[cipher]
    wrong = ((key + b"\x00", iv), (key[:-1], iv), (key, iv + b"\x00"), (key, iv[:-1]))
    out = ffi.new("nt_aead **")
    sealer, opener = pair(cipher)
    for k, i in wrong:
        assert lib.nt_aead_new(cid, 1, k, len(k), i, len(i), out) == lib.NT_ERR_LENGTH
        assert out[0] == ffi.NULL
        assert lib.nt_aead_rekey(sealer._live(), k, len(k), i, len(i)) == lib.NT_ERR_LENGTH
    assert [bytes(r.data) for r in opener.open(sealer.seal(b"same keys")).records] == [b"same keys"]
    aead = AEAD(cipher, key)
    buf = bytearray(64)
    for nonce in (bytes(11), bytes(13)):
        for fn in (lib.nt_aead_encrypt, lib.nt_aead_decrypt):
            assert _oneshot_c(fn, aead._handle, bytes(20), 20, buf, nonce) == lib.NT_ERR_LENGTH
    assert buf == bytes(64)


def test_c_decrypt_that_fails_leaves_no_plaintext_in_out() -> None:
    key = key_for("chacha20-poly1305")
    aead = AEAD("chacha20-poly1305", key)
    secret = b"attack at dawn, not before"
    sealed = bytearray(aead.encrypt(bytes(12), secret, b"ad"))
    sealed[-1] ^= 1
    out = bytearray(len(secret))
    rc = _oneshot_c(lib.nt_aead_decrypt, aead._handle, bytes(sealed), len(sealed), out)
    assert rc == lib.NT_ERR_AUTH
    assert out == bytes(len(secret))


def test_c_oneshot_refuses_a_failed_state() -> None:
    sealer, opener = pair("aes-256-gcm")
    wire = sealer.seal(b"x")
    bad = bytearray(wire)
    bad[-1] ^= 1
    with pytest.raises(nautilus.IntegrityError):
        opener.open(bad)
    sealed = reference_aead("aes-256-gcm", key_for("aes-256-gcm")).encrypt(
        bytes(12), b"secret", b"ad"
    )
    out = bytearray(len(sealed))
    for fn, data in ((lib.nt_aead_encrypt, b"secret"), (lib.nt_aead_decrypt, sealed)):
        assert _oneshot_c(fn, opener._live(), data, len(data), out) == lib.NT_ERR_STATE
    assert out == bytes(len(out))
