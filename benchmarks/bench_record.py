"""Record benchmarks: AES-256-GCM sealing and opening of 1 MiB of content.

For record sizes of 256 B, 1 KiB and 16 KiB, three ways over the same data:

* ``batched``: Nautilus with ``max_fragment`` = the record size; one
  ``RecordSealer.seal_into`` call seals the whole 1 MiB, and one
  ``RecordOpener.open_packed`` call opens the whole sealed stream into one
  preallocated buffer (the path the protocol's Connection uses).
* ``single``: Nautilus called once per record from a Python loop.
* ``python-loop``: a Python loop over ``cryptography``'s ``AESGCM``
  ``encrypt_into``/``decrypt_into`` building the identical wire format: the
  4-byte header as additional data, content || inner type byte encrypted,
  16-byte tag, nonce = IV XOR sequence. (With a ``cryptography`` lacking the
  ``*_into`` methods it falls back to ``encrypt``/``decrypt``; ``extra_info``
  records which API was used.)

Each benchmark processes 1 MiB of content per call (``extra_info["bytes"]``).
The opener's sequence number is reset to 0 before each pass so that the same
sealed stream can be opened again; the sealer simply keeps counting. Every
benchmarked output is checked once, outside the timing: sealed streams are
opened (the Python loop's by Nautilus, so the formats are known to agree) and
opened content is compared with the original.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nautilus.record import (
    HEADER_SIZE,
    RECORD_OVERHEAD,
    TAG_SIZE,
    ContentType,
    RecordOpener,
    RecordSealer,
)

CIPHER = "aes-256-gcm"
TOTAL = 1 << 20
SIZES = (256, 1024, 16384)
SIZE_IDS = ("256B", "1KiB", "16KiB")
RECORD_LIMIT = (1 << 64) - 1
SEALED_TYPE = 0x17
APP = int(ContentType.APPLICATION_DATA)

KEY = os.urandom(32)
IV = os.urandom(12)
CONTENT = os.urandom(TOTAL)

HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")
BASELINE_API = "encrypt_into/decrypt_into" if HAS_INTO else "encrypt/decrypt (no *_into)"

sizes = pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)


def _setup(benchmark: Any, op: str, impl: str, size: int, **extra: Any) -> None:
    benchmark.group = f"{op} {size} B records, 1 MiB"
    benchmark.extra_info.update(
        {
            "kind": "record",
            "op": op,
            "impl": impl,
            "size": size,
            "bytes": TOTAL,
            "records": TOTAL // size,
            **extra,
        }
    )


def _sealer(size: int) -> RecordSealer:
    return RecordSealer(CIPHER, KEY, IV, max_fragment=size, record_limit=RECORD_LIMIT)


def _opener(size: int, sequence: int = 0) -> RecordOpener:
    opener = RecordOpener(CIPHER, KEY, IV, max_fragment=size)
    opener._set_sequence(sequence)
    return opener


def _sealed_stream(size: int) -> bytearray:
    sealer = _sealer(size)
    out = bytearray(sealer.sealed_size(TOTAL))
    assert sealer.seal_into(CONTENT, out) == len(out)
    return out


def _open_all(opener: RecordOpener, wire: memoryview, out: memoryview, sequence: int = 0) -> int:
    """Open every record of ``wire`` (the first has number ``sequence``) into ``out``
    with as few calls as possible; return the number of records."""
    opener._set_sequence(sequence)
    opened = opener.open_packed(wire, out)
    if opened.consumed != len(wire):
        raise RuntimeError("open_packed did not open the whole stream")
    return opened.records


def _check_opened(out: bytearray, count: int, size: int) -> None:
    assert count == TOTAL // size
    assert out[:TOTAL] == CONTENT


def _check_sealed(wire: bytearray, size: int, first_sequence: int) -> None:
    """Open ``wire`` (records from ``first_sequence`` on) and compare with CONTENT."""
    out = bytearray(TOTAL + 1)
    opener = _opener(size)
    count = _open_all(opener, memoryview(wire), memoryview(out), first_sequence)
    _check_opened(out, count, size)


# -- sealing -----------------------------------------------------------------------------------


@sizes
def test_seal_batched(benchmark: Any, size: int) -> None:
    _setup(benchmark, "seal", "batched", size, calls=1)
    sealer = _sealer(size)
    out = bytearray(sealer.sealed_size(TOTAL))
    written = benchmark(sealer.seal_into, CONTENT, out)
    assert written == len(out) == TOTAL + (TOTAL // size) * RECORD_OVERHEAD
    _check_sealed(out, size, sealer.sequence - TOTAL // size)


@sizes
def test_seal_single(benchmark: Any, size: int) -> None:
    _setup(benchmark, "seal", "single", size, calls=TOTAL // size)
    sealer = _sealer(size)
    out = bytearray(sealer.sealed_size(TOTAL))
    src = memoryview(CONTENT)
    dst = memoryview(out)
    step = size + RECORD_OVERHEAD

    def run() -> int:
        seal_into = sealer.seal_into
        pos = 0
        for off in range(0, TOTAL, size):
            pos += seal_into(src[off : off + size], dst[pos : pos + step])
        return pos

    assert benchmark(run) == len(out)
    _check_sealed(out, size, sealer.sequence - TOTAL // size)


@sizes
def test_seal_python_loop(benchmark: Any, size: int) -> None:
    _setup(benchmark, "seal", "python-loop", size, calls=TOTAL // size, api=BASELINE_API)
    aead = AESGCM(KEY)
    out = bytearray(TOTAL + (TOTAL // size) * RECORD_OVERHEAD)
    src = memoryview(CONTENT)
    dst = memoryview(out)
    iv = int.from_bytes(IV, "big")
    body = size + 1 + TAG_SIZE
    header = bytes([SEALED_TYPE]) + body.to_bytes(3, "big")
    plain = bytearray(size + 1)  # content || inner type, one record at a time
    plain[size] = APP
    staged = memoryview(plain)

    def run_into() -> int:
        encrypt_into = aead.encrypt_into
        pos = 0
        for seq, off in enumerate(range(0, TOTAL, size)):
            staged[:size] = src[off : off + size]
            dst[pos : pos + HEADER_SIZE] = header
            nonce = (iv ^ seq).to_bytes(12, "big")
            encrypt_into(nonce, staged, header, dst[pos + HEADER_SIZE : pos + HEADER_SIZE + body])
            pos += HEADER_SIZE + body
        return pos

    def run_plain() -> int:
        encrypt = aead.encrypt
        pos = 0
        for seq, off in enumerate(range(0, TOTAL, size)):
            staged[:size] = src[off : off + size]
            dst[pos : pos + HEADER_SIZE] = header
            nonce = (iv ^ seq).to_bytes(12, "big")
            dst[pos + HEADER_SIZE : pos + HEADER_SIZE + body] = encrypt(nonce, plain, header)
            pos += HEADER_SIZE + body
        return pos

    assert benchmark(run_into if HAS_INTO else run_plain) == len(out)
    _check_sealed(out, size, 0)


# -- opening -----------------------------------------------------------------------------------


@sizes
def test_open_batched(benchmark: Any, size: int) -> None:
    _setup(benchmark, "open", "batched", size, calls=1)
    opener = _opener(size)
    wire = memoryview(_sealed_stream(size))
    out = bytearray(TOTAL)
    count = benchmark(_open_all, opener, wire, memoryview(out))
    _check_opened(out, count, size)


@sizes
def test_open_single(benchmark: Any, size: int) -> None:
    _setup(benchmark, "open", "single", size, calls=TOTAL // size)
    opener = _opener(size)
    wire = memoryview(_sealed_stream(size))
    out = bytearray(TOTAL + 1)
    dst = memoryview(out)
    step = size + RECORD_OVERHEAD

    def run() -> int:
        open_packed = opener.open_packed
        opener._set_sequence(0)
        outpos = count = 0
        for pos in range(0, len(wire), step):
            opened = open_packed(wire[pos : pos + step], dst[outpos : outpos + size])
            if opened.consumed != step:
                raise RuntimeError("record not opened")
            outpos += opened.written
            count += 1
        return count

    count = benchmark(run)
    _check_opened(out, count, size)


@sizes
def test_open_python_loop(benchmark: Any, size: int) -> None:
    _setup(benchmark, "open", "python-loop", size, calls=TOTAL // size, api=BASELINE_API)
    aead = AESGCM(KEY)
    wire = memoryview(_sealed_stream(size))
    out = bytearray(TOTAL + 1)
    dst = memoryview(out)
    iv = int.from_bytes(IV, "big")
    max_body = size + 1 + TAG_SIZE
    end = len(wire)

    def run_into() -> list[tuple[int, int, int]]:
        """Parse and check each header, decrypt, and record (type, offset, length) spans."""
        decrypt_into = aead.decrypt_into
        spans = []
        pos = outpos = seq = 0
        while pos < end:
            body = int.from_bytes(wire[pos + 1 : pos + HEADER_SIZE], "big")
            if wire[pos] != SEALED_TYPE or not TAG_SIZE < body <= max_body:
                raise ValueError("malformed record")
            ctlen = body - TAG_SIZE
            start = pos + HEADER_SIZE
            nonce = (iv ^ seq).to_bytes(12, "big")
            decrypt_into(
                nonce, wire[start : start + body], wire[pos:start], dst[outpos : outpos + ctlen]
            )
            inner = out[outpos + ctlen - 1]
            if not inner:
                raise ValueError("no inner type")
            spans.append((inner, outpos, ctlen - 1))
            outpos += ctlen - 1
            pos = start + body
            seq += 1
        return spans

    def run_plain() -> list[tuple[int, int, int]]:
        decrypt = aead.decrypt
        spans = []
        pos = outpos = seq = 0
        while pos < end:
            body = int.from_bytes(wire[pos + 1 : pos + HEADER_SIZE], "big")
            if wire[pos] != SEALED_TYPE or not TAG_SIZE < body <= max_body:
                raise ValueError("malformed record")
            ctlen = body - TAG_SIZE
            start = pos + HEADER_SIZE
            nonce = (iv ^ seq).to_bytes(12, "big")
            dst[outpos : outpos + ctlen] = decrypt(
                nonce, wire[start : start + body], wire[pos:start]
            )
            inner = out[outpos + ctlen - 1]
            if not inner:
                raise ValueError("no inner type")
            spans.append((inner, outpos, ctlen - 1))
            outpos += ctlen - 1
            pos = start + body
            seq += 1
        return spans

    spans = benchmark(run_into if HAS_INTO else run_plain)
    assert all(s[0] == APP and s[2] == size for s in spans)
    _check_opened(out, len(spans), size)
