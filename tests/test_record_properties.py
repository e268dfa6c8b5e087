"""Property tests of record sealing and opening (hypothesis)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nautilus
from nautilus.record import ContentType, Record, RecordOpener, RecordSealer

pytestmark = pytest.mark.native

CIPHERS = ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"]
KEY_BYTES = {"aes-128-gcm": 16, "aes-256-gcm": 32, "chacha20-poly1305": 32}
APP = ContentType.APPLICATION_DATA
TYPES = [APP, ContentType.HANDSHAKE, ContentType.ALERT, ContentType.KEY_UPDATE]

FAST = settings(max_examples=150, deadline=None)


@st.composite
def setups(draw: Any, max_fragment: st.SearchStrategy[int] | None = None) -> dict[str, Any]:
    cipher = draw(st.sampled_from(CIPHERS))
    if max_fragment is None:
        max_fragment = st.integers(1, 600)
    return {
        "cipher": cipher,
        "key": draw(st.binary(min_size=KEY_BYTES[cipher], max_size=KEY_BYTES[cipher])),
        "iv": draw(st.binary(min_size=12, max_size=12)),
        "max_fragment": draw(max_fragment),
    }


def make(cfg: dict[str, Any]) -> tuple[RecordSealer, RecordOpener]:
    args = (cfg["cipher"], cfg["key"], cfg["iv"])
    return (
        RecordSealer(*args, max_fragment=cfg["max_fragment"]),
        RecordOpener(*args, max_fragment=cfg["max_fragment"]),
    )


@st.composite
def chunked(draw: Any, max_size: int = 1000) -> list[bytes]:
    """A plaintext cut into the pieces handed to successive seal calls."""
    data = draw(st.binary(max_size=max_size))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=7)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def seal_records(sealer: RecordSealer, pieces: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Seal each piece; return (each record's wire bytes, each record's content)."""
    wires: list[bytes] = []
    contents: list[bytes] = []
    frag = sealer.max_fragment
    for piece in pieces:
        wire = sealer.seal(piece)
        expected = [piece[i : i + frag] for i in range(0, len(piece), frag)] or [b""]
        pos = 0
        for content in expected:
            size = 4 + len(content) + 17
            wires.append(wire[pos : pos + size])
            contents.append(content)
            pos += size
        assert pos == len(wire)
    return wires, contents


@FAST
@given(cfg=setups(), pieces=chunked())
def test_any_plaintext_round_trips(cfg: dict[str, Any], pieces: list[bytes]) -> None:
    sealer, opener = make(cfg)
    wires, contents = seal_records(sealer, pieces)
    stream = b"".join(wires)
    assert sealer.sequence == len(wires)
    result = opener.open(stream)
    assert result.consumed == len(stream)
    assert result.record_count == len(wires)
    assert result.records == [Record(APP, c) for c in contents]
    assert all(0 < len(c) <= cfg["max_fragment"] for c in contents if c)
    # Merged, the runs give back the whole plaintext.
    _, opener2 = make(cfg)
    merged = opener2.open(stream, merge=True)
    assert merged.records == [Record(APP, b"".join(pieces))]


@FAST
@given(
    cfg=setups(st.integers(1, 80)),
    pieces=chunked(300),
    data=st.data(),
)
def test_any_flipped_bit_is_rejected(cfg: dict[str, Any], pieces: list[bytes], data: Any) -> None:
    sealer, opener = make(cfg)
    wires, contents = seal_records(sealer, pieces)
    stream = bytearray(b"".join(wires))
    bit = data.draw(st.integers(0, 8 * len(stream) - 1), label="bit")
    stream[bit // 8] ^= 1 << (bit % 8)
    # Which record was hit, and where it starts.
    index, start = 0, 0
    while start + len(wires[index]) <= bit // 8:
        start += len(wires[index])
        index += 1
    before = [Record(APP, c) for c in contents[:index]]
    # A length byte made larger can make the record look incomplete (but not
    # impossibly long): then it is held back, not released, until more arrives.
    claimed = int.from_bytes(stream[start + 1 : start + 4], "big")
    held_back = (
        1 <= bit // 8 - start <= 3
        and 17 <= claimed <= cfg["max_fragment"] + 17
        and claimed > len(stream) - start - 4
    )
    if held_back:
        result = opener.open(stream)
        assert result.records == before
        assert result.consumed == start
        return
    with pytest.raises(nautilus.IntegrityError) as info:
        opener.open(stream)
    assert info.value.records == before
    assert info.value.consumed == start
    with pytest.raises(nautilus.ClosedError):
        opener.open(b"")


@FAST
@given(cfg=setups(), pieces=chunked(800), data=st.data())
def test_truncated_last_record_is_held_back(
    cfg: dict[str, Any], pieces: list[bytes], data: Any
) -> None:
    sealer, opener = make(cfg)
    wires, contents = seal_records(sealer, pieces)
    cut = data.draw(st.integers(1, len(wires[-1])), label="cut")
    full = b"".join(wires)
    truncated = full[:-cut]
    last_start = len(full) - len(wires[-1])
    buf = bytearray(truncated)
    spans, consumed = opener.open_spans(buf)
    assert consumed == last_start
    assert len(spans) == len(wires) - 1
    assert [bytes(buf[s.offset : s.offset + s.length]) for s in spans] == contents[:-1]
    # The held-back bytes are untouched: nothing of them was decrypted.
    assert bytes(buf[last_start:]) == truncated[last_start:]
    # And when the rest arrives, the record opens.
    rest = opener.open(bytes(buf[last_start:]) + full[len(truncated) :])
    assert rest.records == [Record(APP, contents[-1])]


@FAST
@given(cfg=setups(), pieces=chunked(800), data=st.data())
def test_swapped_records_are_rejected(cfg: dict[str, Any], pieces: list[bytes], data: Any) -> None:
    sealer, opener = make(cfg)
    wires, contents = seal_records(sealer, [*pieces, b"second to last", b"last"])
    i = data.draw(st.integers(0, len(wires) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(wires) - 1), label="j")
    swapped = list(wires)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(nautilus.IntegrityError) as info:
        opener.open(b"".join(swapped))
    assert info.value.records == [Record(APP, c) for c in contents[:i]]
    assert info.value.consumed == sum(len(w) for w in wires[:i])


@st.composite
def typed_pieces(draw: Any) -> list[tuple[int, bytes]]:
    return draw(st.lists(st.tuples(st.sampled_from(TYPES), st.binary(max_size=120)), max_size=8))


@settings(max_examples=100, deadline=None)
@given(cfg=setups(st.integers(1, 50)), pieces=typed_pieces())
def test_byte_at_a_time_equals_all_at_once(
    cfg: dict[str, Any], pieces: list[tuple[int, bytes]]
) -> None:
    sealer, opener = make(cfg)
    stream = b"".join(sealer.seal(data, content_type) for content_type, data in pieces)

    # All at once: each call stops after a record that is not application data.
    at_once: list[Record] = []
    rest = stream
    while rest:
        result = opener.open(rest)
        assert result.consumed > 0
        at_once += result.records
        rest = rest[result.consumed :]
    assert b"".join(r.data for r in at_once) == b"".join(d for _, d in pieces)
    assert len(at_once) == sealer.sequence

    _, trickle_opener = make(cfg)
    buf = bytearray()
    trickled: list[Record] = []
    for byte in stream:
        buf.append(byte)
        result = trickle_opener.open(buf)
        trickled += result.records
        del buf[: result.consumed]
    assert buf == b""
    assert trickled == at_once
    assert trickle_opener.sequence == sealer.sequence
