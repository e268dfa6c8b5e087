"""Message framing in C (csrc/nt_frames.c) and its two Python helpers.

``frames_pack`` must write exactly the 4-byte-length framing that the
message API has always used, and give way (None) to the Python path for
anything that is not a list of single-byte buffers. ``frames_cut`` must find
exactly the whole frames that a byte-by-byte reading of the stream finds,
wherever the stream is cut, and stop before a length over the limit.
"""

from __future__ import annotations

import array
import ctypes
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import Pair

from nautilus import MessagesReceived
from nautilus import _bindings as _b
from nautilus._bindings import ffi, lib

pytestmark = pytest.mark.native

LIMIT = 1 << 20


def reference_frame(messages: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(m)) + m for m in messages)


def reference_cut(data: bytes, start: int, end: int, limit: int) -> tuple[tuple[bytes, ...], int]:
    """The whole frames of data[start:end], read one length at a time."""
    found, pos = [], start
    while end - pos >= 4:
        (n,) = struct.unpack_from(">I", data, pos)
        if n > limit or end - pos - 4 < n:
            break
        found.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return tuple(found), pos


messages_st = st.lists(st.binary(max_size=300), max_size=40)


@settings(max_examples=200, deadline=None)
@given(messages_st)
def test_pack_writes_the_reference_framing(messages: list[bytes]) -> None:
    framed = _b.frames_pack(messages, LIMIT)
    assert isinstance(framed, (bytes, bytearray))
    assert bytes(framed) == reference_frame(messages)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(1, 70), st.data())
def test_pack_frames_messages_all_of_one_size(size: int, count: int, data: st.DataObject) -> None:
    """A batch of one size takes its own path (one join, the prefixes between
    the messages): the same framing, and the limit still applies."""
    messages = data.draw(st.lists(st.binary(min_size=size, max_size=size), min_size=count,
                                  max_size=count))  # fmt: skip
    if count > 1 and data.draw(st.booleans()):
        messages[-1] = bytearray(messages[-1])  # bytes and bytearray may be mixed
    assert bytes(_b.frames_pack(messages, LIMIT)) == reference_frame(messages)  # type: ignore[arg-type]
    if size:
        at_limit = _b.frames_pack(messages, size)  # every message exactly at the limit
        assert isinstance(at_limit, (bytes, bytearray))
        assert bytes(at_limit) == reference_frame(messages)
        assert _b.frames_pack(messages, size - 1) == 0  # the first is over the limit


@settings(max_examples=200, deadline=None)
@given(messages_st, st.data())
def test_cut_finds_the_whole_frames_wherever_the_stream_ends(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"junk" + reference_frame(messages)
    end = data.draw(st.integers(4, len(stream)))
    got = _b.frames_cut(stream, 4, end, LIMIT)
    assert got == reference_cut(stream, 4, end, LIMIT)
    assert _b.frames_cut(bytearray(stream), 4, end, LIMIT) == got  # the receive buffer's type


def test_cut_stops_before_a_length_over_the_limit() -> None:
    stream = reference_frame([b"a" * 10, b"b" * 11, b"c"])
    messages, pos = _b.frames_cut(stream, 0, len(stream), 10)
    assert messages == (b"a" * 10,)
    assert pos == 14  # where the 11-byte frame starts: the caller reads and refuses it


def test_cut_takes_more_frames_than_one_format_buffer_holds() -> None:
    # 4-byte frames (empty messages) and a mix of lengths: thousands of frames
    # need several C calls, each describing as many as fit.
    empties = [b""] * 5000
    mixed = [bytes([i % 251]) * (i % 70) for i in range(3000)]
    for messages in (empties, mixed):
        stream = reference_frame(messages)
        assert _b.frames_cut(stream, 0, len(stream), LIMIT) == (tuple(messages), len(stream))


def test_cut_joins_the_frames_of_two_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """700 frames of 256 bytes take two C calls: their cuts are joined in order."""
    calls = []
    real = _b.lib

    class Counting:
        def __getattr__(self, name: str) -> Any:
            if name == "nt_frames_layout":
                calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(_b, "lib", Counting())
    messages = [bytes([i % 251]) * 256 for i in range(700)]
    stream = reference_frame(messages) + b"\x00\x00"  # and an incomplete length
    assert _b.frames_cut(stream, 0, len(stream), LIMIT) == (tuple(messages), len(stream) - 2)
    assert len(calls) == 2


def test_cut_keeps_a_bounded_number_of_compiled_layouts() -> None:
    # Each count of frames is a new struct format: more of them than are kept
    # are all cut right, and the compiled ones kept stay bounded.
    for count in range(1, 3 * _b._LAYOUTS_KEPT):
        messages = [bytes([count]) * 5] * count
        stream = reference_frame(messages)
        assert _b.frames_cut(stream, 0, len(stream), LIMIT) == (tuple(messages), len(stream))
        assert 1 <= len(_b._layouts) <= _b._LAYOUTS_KEPT
    again = reference_frame([b"x" * 5] * 7)  # a format seen before: cut the same
    assert _b.frames_cut(again, 0, len(again), LIMIT) == ((b"x" * 5,) * 7, len(again))


def test_pack_reports_the_first_message_over_the_limit() -> None:
    assert _b.frames_pack([b"ok", b"x" * 11, b"y" * 12], 10) == 1
    assert _b.frames_pack([b"x" * 10], 10) == bytearray(reference_frame([b"x" * 10]))


def test_pack_gives_way_for_what_it_cannot_count() -> None:
    words = memoryview(array.array("I", [1, 2, 3]))  # len() counts items, not bytes
    assert _b.frames_pack([b"a", words], LIMIT) is None
    assert _b.frames_pack([b"a", "text"], LIMIT) is None  # type: ignore[list-item]
    assert _b.frames_pack([b"a", 7], LIMIT) is None  # type: ignore[list-item]
    assert _b.frames_pack([b"a", memoryview(b"mv")], LIMIT) is None  # any view: by nbytes
    ok = [bytearray(b"ba"), b"mv", b"b"]
    assert _b.frames_pack(ok, LIMIT) == bytearray(reference_frame([b"ba", b"mv", b"b"]))


def test_wrong_lengths_that_cancel_out_are_framed_by_byte_count() -> None:
    """A zero-size 2-D buffer (len() 3, 0 bytes) beside a buffer of 2-byte
    items (len() 3, 6 bytes): the lengths add up to the bytes joined, so the
    check in C passed, and the peer received b"AAB" and b"BCC" instead of
    b"" and b"AABBCC". Such batches now take the general path."""
    empty_rows = memoryview((ctypes.c_uint8 * 0 * 3)())
    words = memoryview(array.array("H", [0x4141, 0x4242, 0x4343]))
    assert (len(empty_rows), empty_rows.nbytes, len(words), words.nbytes) == (3, 0, 3, 6)
    assert _b.frames_pack([empty_rows, words], LIMIT) is None
    pair = Pair.make()
    pair.handshake()
    pair.client.send_messages([empty_rows, words])
    pair.pump()
    got = [m for e in pair.server_events if isinstance(e, MessagesReceived) for m in e.messages]
    assert got == [b"", words.tobytes()]


def test_the_c_calls_refuse_bad_arguments() -> None:
    data = reference_frame([b"abc"])
    fmt = ffi.new("char[]", 64)
    result = ffi.new("size_t[4]")
    assert lib.nt_frames_layout(data, len(data), len(data) + 1, LIMIT, fmt, 64, 9, result) == (
        lib.NT_ERR_ARG
    )
    assert lib.nt_frames_layout(data, len(data), 0, LIMIT, fmt, 0, 9, result) == lib.NT_ERR_ARG
    assert lib.nt_frames_layout(data, len(data), 0, LIMIT, fmt, 64, 9, ffi.NULL) == lib.NT_ERR_ARG
    # A format buffer too small for even one frame: nothing described, "call again".
    assert lib.nt_frames_layout(data, len(data), 0, LIMIT, fmt, 4, 9, result) == lib.NT_OK
    assert (result[0], result[1], result[2], result[3]) == (0, 0, 0, 1)
    # max_frames reached: the same.
    assert lib.nt_frames_layout(data, len(data), 0, LIMIT, fmt, 64, 0, result) == lib.NT_OK
    assert (result[0], result[3]) == (0, 1)

    body = b"abcdef"
    out = bytearray(64)
    over = ffi.new("size_t *")

    def pack(lens: list[int], limit: int = LIMIT, cap: int = 64) -> int:
        c_lens = ffi.new("uint64_t[]", lens)
        return int(
            lib.nt_frames_pack(
                body, len(body), c_lens, len(lens), limit, ffi.from_buffer(out), cap, over
            )
        )

    assert pack([2, 3]) == lib.NT_ERR_LENGTH  # lengths that do not add up to the body
    assert pack([4, 4]) == lib.NT_ERR_LENGTH
    assert pack([6], cap=9) == lib.NT_ERR_BUFFER
    assert pack([6], limit=1 << 32) == lib.NT_ERR_ARG
    assert bytes(out) == bytes(64)  # nothing written by a refused call
    assert pack([2, 4], cap=14) == lib.NT_OK
    assert over[0] == 2
    assert bytes(out[:14]) == reference_frame([b"ab", b"cdef"])
    assert pack([2, 4], limit=3) == lib.NT_OK
    assert over[0] == 1


def test_pack_frames_a_message_of_exactly_the_limit_among_others() -> None:
    # Mixed sizes go to C (all of one size are joined in Python).
    messages = [b"", b"a" * 7, b"bc", b"d" * 7]
    assert _b.frames_pack(messages, 7) == reference_frame(messages)
    assert _b.frames_pack(messages, 6) == 1


def test_layout_repeating_an_item_writes_nothing_past_the_format_buffer() -> None:
    data = reference_frame([b"12345", b"67890"])  # two like-sized frames: "=4x5s4x5s"
    fmt = ffi.new("char[]", 16)
    ffi.memmove(fmt, b"#" * 16, 16)
    result = ffi.new("size_t[4]")
    # Room for "=4x5s" and three bytes of the repeated "4x5s": one frame, "call again".
    assert lib.nt_frames_layout(data, len(data), 0, LIMIT, fmt, 8, 9, result) == lib.NT_OK
    assert (result[0], result[1], result[2], result[3]) == (1, 9, 5, 1)
    assert ffi.buffer(fmt, 16)[:] == b"=4x5s" + b"#" * 11
    assert lib.nt_frames_layout(data, len(data), 0, LIMIT, fmt, 9, 9, result) == lib.NT_OK
    assert (result[0], result[1], result[2], result[3]) == (2, 18, 9, 0)
    assert ffi.buffer(fmt, 16)[:] == b"=4x5s4x5s" + b"#" * 7
