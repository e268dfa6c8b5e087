"""nt_open_message and nt_seal_message (csrc/nt_lane.c): the message lane's C calls.

nt_seal_message must seal exactly the record that nt_seal seals for the
framed message, or seal nothing. nt_open_message must return a lone
message's size, or decline having changed nothing (NT_NOT_ONE_RECORD), or
open the record as nt_open_packed does and say it held something else
(NT_NOT_ONE_MESSAGE), or fail as nt_open_packed fails. The Connection
methods on top of them are tested in test_message_lane.py.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nautilus._bindings import ffi, lib
from nautilus.record import RECORD_OVERHEAD, ContentType, RecordOpener, RecordSealer

pytestmark = pytest.mark.native

KEY, IV = bytes(range(32)), bytes(range(12))
MSG, APP = int(ContentType.MESSAGE), int(ContentType.APPLICATION_DATA)
CIPHERS = ["aes-256-gcm", "aes-128-gcm", "chacha20-poly1305"]
NO_LIMIT = 1 << 20


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(m)) + m for m in messages)


def pair(cipher: str = "aes-256-gcm", **kw: int) -> tuple[RecordSealer, RecordOpener]:
    key = KEY[:16] if cipher == "aes-128-gcm" else KEY
    return RecordSealer(cipher, key, IV, **kw), RecordOpener(cipher, key, IV, **kw)


def seal_message(
    sealer: RecordSealer, message: bytes, *, budget: Any = None, cap: int | None = None
) -> tuple[int, bytearray]:
    out = bytearray(len(message) + 4 + RECORD_OVERHEAD if cap is None else cap)
    rc = lib.nt_seal_message(
        sealer._live(),
        ffi.NULL if budget is None else budget,
        MSG,
        message,
        len(message),
        ffi.from_buffer(out),
        len(out),
    )
    return rc, out


def open_message(
    opener: RecordOpener, wire: bytes, *, cap: int = 4096, max_message: int = NO_LIMIT
) -> tuple[int, bytearray, Any]:
    out = bytearray(cap)
    summary = ffi.new("nt_open_summary *")
    rc = lib.nt_open_message(
        opener._live(),
        ffi.from_buffer(wire),
        len(wire),
        ffi.from_buffer(out, require_writable=True) if cap else ffi.NULL,
        cap,
        MSG,
        max_message,
        summary,
    )
    return rc, out, summary


def seq(holder: RecordSealer | RecordOpener) -> int:
    return int(lib.nt_aead_sequence(holder._live()))


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", [0, 1, 255, 1000, 16380])
def test_sealed_as_nt_seal_seals_the_framed_message_and_opened_back(cipher: str, size: int) -> None:
    message = bytes((i * 7) & 0xFF for i in range(size))
    sealer, opener = pair(cipher)
    reference, _ = pair(cipher)
    for _ in range(3):  # the sequence advances as for any record
        rc, out = seal_message(sealer, message)
        assert rc == lib.NT_OK
        assert bytes(out) == reference.seal(framed(message), ContentType.MESSAGE)
        got, plain, _summary = open_message(opener, bytes(out), cap=size + 4)
        assert got == size
        assert bytes(plain[4 : 4 + got]) == message
    assert seq(sealer) == seq(opener) == 3


def test_sealing_refuses_what_is_not_one_record_or_not_its_size() -> None:
    sealer, _ = pair(max_fragment=100)
    assert seal_message(sealer, bytes(96))[0] == lib.NT_OK  # framed: exactly 100
    rc, out = seal_message(sealer, bytes(97))
    assert rc == lib.NT_ERR_LENGTH
    assert out == bytearray(len(out))
    for cap in (97 + 4 + RECORD_OVERHEAD - 1, 97 + 4 + RECORD_OVERHEAD + 1):
        assert seal_message(sealer, bytes(90), cap=cap)[0] == lib.NT_ERR_BUFFER
    assert lib.nt_seal_message(ffi.NULL, ffi.NULL, MSG, b"x", 1, ffi.new("uint8_t[26]"), 26) == (
        lib.NT_ERR_ARG
    )
    assert lib.nt_seal_message(sealer._live(), ffi.NULL, MSG, b"x", 1, ffi.NULL, 26) == (
        lib.NT_ERR_ARG
    )
    assert seq(sealer) == 1  # only the first sealed


def test_a_budget_bounds_and_counts_what_is_sealed() -> None:
    sealer, opener = pair()
    budget = ffi.new("nt_budget *")
    budget.records, budget.bytes = 1, 10_000  # a seal must need fewer records than this
    rc, out = seal_message(sealer, b"secret message", budget=budget)
    assert rc == lib.NT_DUE
    assert out == bytearray(len(out))  # no copy of the message left in the buffer
    assert (budget.records, budget.bytes, seq(sealer)) == (1, 10_000, 0)
    budget.records, budget.bytes = 5, 17
    assert seal_message(sealer, b"fourteen bytes", budget=budget)[0] == lib.NT_DUE  # 18 framed
    budget.bytes = 18
    rc, out = seal_message(sealer, b"fourteen bytes", budget=budget)
    assert rc == lib.NT_OK
    assert (budget.records, budget.bytes) == (4, 0)
    got, plain, _ = open_message(opener, bytes(out))
    assert bytes(plain[4 : 4 + got]) == b"fourteen bytes"


def declines(opener: RecordOpener, wire: bytes, cap: int = 4096) -> None:
    before = seq(opener)
    rc, out, summary = open_message(opener, wire, cap=cap)
    assert rc == lib.NT_NOT_ONE_RECORD
    assert (summary.records, summary.consumed, summary.written) == (0, 0, 0)
    assert out == bytearray(cap)
    assert seq(opener) == before


def test_anything_but_one_whole_record_that_fits_is_declined_untouched() -> None:
    sealer, opener = pair()
    first = sealer.seal(framed(b"hello"), ContentType.MESSAGE)
    second = sealer.seal(framed(b"world"), ContentType.MESSAGE)
    for cut in range(len(first)):
        declines(opener, first[:cut])
    declines(opener, first + b"\x00")
    declines(opener, first + second)
    declines(opener, first, cap=8)  # content (9 bytes) does not fit
    declines(opener, first, cap=0)  # no buffer at all
    declines(opener, b"\x16" + first[1:])  # not a sealed record's header
    # Nothing was consumed: the same records still open, in order.
    for wire, text in ((first, b"hello"), (second, b"world")):
        rc, out, _ = open_message(opener, wire)
        assert bytes(out[4 : 4 + rc]) == text


@pytest.mark.parametrize(
    ("content", "ctype", "max_message"),
    [
        (framed(b"stream"), APP, NO_LIMIT),  # not a message record
        (framed(b"one", b"two"), MSG, NO_LIMIT),  # two messages
        (framed(b"whole")[:-1], MSG, NO_LIMIT),  # the start of a message
        (b"\x00\x00", MSG, NO_LIMIT),  # not even a length
        (b"", MSG, NO_LIMIT),
        (framed(b"x" * 100), MSG, 99),  # over the limit the caller gives
    ],
)
def test_a_record_holding_anything_else_is_opened_and_described(
    content: bytes, ctype: int, max_message: int
) -> None:
    sealer, opener = pair()
    wire = sealer.seal(content, ctype)
    rc, out, summary = open_message(opener, wire, max_message=max_message)
    assert rc == lib.NT_NOT_ONE_MESSAGE
    assert (summary.records, summary.consumed, summary.written) == (1, len(wire), len(content))
    assert (summary.last_type, summary.last_length) == (ctype, len(content))
    assert bytes(out[: len(content)]) == content
    assert seq(opener) == 1


def test_a_tampered_record_fails_and_the_state_stays_failed() -> None:
    sealer, opener = pair()
    wire = bytearray(sealer.seal(framed(b"hello"), ContentType.MESSAGE))
    wire[-1] ^= 1
    rc, out, _ = open_message(opener, bytes(wire))
    assert rc == lib.NT_ERR_AUTH
    assert out == bytearray(len(out))  # nothing of it released
    good = RecordSealer("aes-256-gcm", KEY, IV).seal(framed(b"hello"), ContentType.MESSAGE)
    assert open_message(opener, good)[0] == lib.NT_ERR_STATE


def test_at_the_record_limit_nothing_opens() -> None:
    sealer, opener = pair()
    lib.nt_aead_set_limit(opener._live(), 1)
    assert open_message(opener, sealer.seal(framed(b"a"), ContentType.MESSAGE))[0] == 1
    rc, _, summary = open_message(opener, sealer.seal(framed(b"b"), ContentType.MESSAGE))
    assert rc == lib.NT_ERR_LIMIT
    assert summary.records == 0


def test_bad_arguments_are_refused() -> None:
    _, opener = pair()
    summary = ffi.new("nt_open_summary *")
    out = ffi.new("uint8_t[64]")
    wire = ffi.new("uint8_t[64]")
    for args in (
        (ffi.NULL, wire, 64, out, 64, MSG, 10, summary),
        (opener._live(), ffi.NULL, 64, out, 64, MSG, 10, summary),
        (opener._live(), wire, 64, ffi.NULL, 64, MSG, 10, summary),
        (opener._live(), wire, 64, out, 64, MSG, 10, ffi.NULL),
    ):
        assert lib.nt_open_message(*args) == lib.NT_ERR_ARG


@given(
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    fragment=st.integers(4, 400),
)
def test_what_it_seals_opens_back_whatever_the_fragment_size(
    messages: list[bytes], fragment: int
) -> None:
    sealer, opener = pair(max_fragment=fragment)
    for message in messages:
        rc, out = seal_message(sealer, message)
        if len(message) + 4 > fragment:
            assert rc == lib.NT_ERR_LENGTH
            continue
        assert rc == lib.NT_OK
        got, plain, _ = open_message(opener, bytes(out), cap=fragment)
        assert got == len(message)
        assert bytes(plain[4 : 4 + got]) == message
    assert seq(sealer) == seq(opener)
