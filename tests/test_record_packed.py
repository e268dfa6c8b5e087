"""RecordOpener.open_packed: the summary-only opening path used by Connection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nautilus
from nautilus.record import ContentType, PackedOpen, RecordOpener, RecordSealer

pytestmark = pytest.mark.native

KEY, IV = bytes(range(32)), bytes(range(12))
APP, KU, ALERT = ContentType.APPLICATION_DATA, ContentType.KEY_UPDATE, ContentType.ALERT


def pair(cipher: str = "aes-256-gcm", **kw: int) -> tuple[RecordSealer, RecordOpener]:
    return RecordSealer(cipher, KEY, IV, **kw), RecordOpener(cipher, KEY, IV, **kw)


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "aes-128-gcm", "chacha20-poly1305"])
def test_packs_a_run_and_stops_after_another_type(cipher: str) -> None:
    key = KEY[:16] if cipher == "aes-128-gcm" else KEY
    sealer, opener = (
        RecordSealer(cipher, key, IV, max_fragment=100),
        RecordOpener(cipher, key, IV, max_fragment=100),
    )
    data = bytes(range(256)) * 3
    wire = bytearray(sealer.seal(data) + sealer.seal(b"\x01", KU) + sealer.seal(b"tail"))
    out = bytearray(len(wire))
    first = opener.open_packed(wire, out)
    assert first == PackedOpen(records=9, consumed=len(wire) - 25, written=769, last_type=KU,
                               last_length=1)  # fmt: skip
    assert bytes(out[:768]) == data
    assert out[768:769] == b"\x01"
    second = opener.open_packed(wire[first.consumed :], out)
    assert second == PackedOpen(1, 25, 4, APP, 4)
    assert bytes(out[:4]) == b"tail"


def test_more_than_any_span_bound_in_one_call() -> None:
    sealer, opener = pair(max_fragment=1)
    wire = bytearray(sealer.seal(bytes(5000)))
    out = bytearray(5000)
    opened = opener.open_packed(wire, out)
    assert (opened.records, opened.consumed, opened.written) == (5000, len(wire), 5000)


def test_incomplete_record_left_for_later() -> None:
    sealer, opener = pair()
    wire = bytearray(sealer.seal(b"one") + sealer.seal(b"two"))
    out = bytearray(len(wire))
    opened = opener.open_packed(wire[:-1], out)
    assert (opened.records, opened.written) == (1, 3)
    rest = opener.open_packed(wire[opened.consumed :], out)
    assert (rest.records, bytes(out[: rest.written])) == (1, b"two")


def test_input_may_be_immutable_bytes() -> None:
    sealer, opener = pair()
    wire = sealer.seal(b"from bytes")
    out = bytearray(len(wire))
    opened = opener.open_packed(wire, out)
    assert bytes(out[: opened.written]) == b"from bytes"
    assert opened.consumed == len(wire)


def test_out_of_exactly_the_content_size() -> None:
    sealer, opener = pair()
    wire = bytearray(sealer.seal(b"hello") + sealer.seal(b"world"))
    out = bytearray(10)
    opened = opener.open_packed(wire, out)
    assert opened.records == 2
    assert bytes(out) == b"helloworld"


def test_bad_tag_reports_the_good_records_and_fails() -> None:
    sealer, opener = pair()
    good = sealer.seal(b"good")
    bad = bytearray(sealer.seal(b"secret!"))
    bad[-1] ^= 1
    out = bytearray(64)
    with pytest.raises(nautilus.IntegrityError) as info:
        opener.open_packed(bytearray(good + bad), out)
    (summary,) = info.value.records
    assert isinstance(summary, PackedOpen)
    assert (summary.records, summary.written, summary.consumed) == (1, 4, len(good))
    assert bytes(out[:4]) == b"good"
    assert b"secret" not in bytes(out)
    with pytest.raises(nautilus.ClosedError):
        opener.open_packed(bytearray(good), out)


def test_limit_returns_what_verified_then_refuses() -> None:
    sealer, _ = pair()
    _, opener = pair(record_limit=3)
    wire = bytearray(b"".join(sealer.seal(bytes([i])) for i in range(4)))
    out = bytearray(8)
    opened = opener.open_packed(wire, out)
    assert (opened.records, bytes(out[:3])) == (3, b"\x00\x01\x02")
    with pytest.raises(nautilus.RecordLimitReached):
        opener.open_packed(wire[opened.consumed :], out)


def test_bad_arguments() -> None:
    _, opener = pair()
    with pytest.raises(TypeError, match="data"):
        opener.open_packed("text", bytearray(4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="out"):
        opener.open_packed(bytearray(4), b"immutable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_type"):
        opener.open_packed(bytearray(4), bytearray(4), batch_type=0)


@given(
    chunks=st.lists(st.binary(max_size=700), min_size=1, max_size=8),
    types=st.lists(st.sampled_from([APP, APP, APP, KU, ALERT]), min_size=8, max_size=8),
    fragment=st.integers(1, 300),
)
def test_same_records_as_open_spans(chunks: list[bytes], types: list[int], fragment: int) -> None:
    sealer, opener_a = pair(max_fragment=fragment)
    _, opener_b = pair(max_fragment=fragment)
    wire = bytearray(b"".join(sealer.seal(c, t) for c, t in zip(chunks, types, strict=False)))
    expected = []  # (type, content) per record, from the span API
    buf_a = bytearray(wire)
    while buf_a:
        spans, used = opener_a.open_spans(buf_a)
        expected += [(s.content_type, bytes(buf_a[s.offset : s.offset + s.length])) for s in spans]
        del buf_a[:used]
    got: list[tuple[int, bytes]] = []
    buf_b, out = bytearray(wire), bytearray(len(wire))
    while buf_b:
        p = opener_b.open_packed(buf_b, out)
        data_end = p.written if p.last_type == APP else p.written - p.last_length
        n_data = p.records if p.last_type == APP else p.records - 1
        got += [(APP, b"")] * n_data  # contents of a run are compared joined below
        got_run = bytes(out[:data_end])
        if n_data:
            got[-1] = (APP, got_run)
        if p.last_type != APP:
            got.append((p.last_type, bytes(out[data_end : p.written])))
        del buf_b[: p.consumed]

    def joined(records: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        runs: list[tuple[int, bytes]] = []
        for t, d in records:
            if runs and t == APP and runs[-1][0] == APP:
                runs[-1] = (APP, runs[-1][1] + d)
            else:
                runs.append((t, d))
        return runs

    assert joined(got) == joined(expected)


def test_max_records_bounds_one_call() -> None:
    sealer, opener = pair()
    wire = bytearray(b"".join(sealer.seal(bytes([i]) * 3) for i in range(5)))
    out = bytearray(len(wire))
    first = opener.open_packed(wire, out, max_records=2)
    assert (first.records, bytes(out[: first.written])) == (2, b"\x00" * 3 + b"\x01" * 3)
    rest = opener.open_packed(wire[first.consumed :], out)
    assert rest.records == 3
    assert rest.consumed == len(wire) - first.consumed
    with pytest.raises(ValueError, match="max_records"):
        opener.open_packed(wire, out, max_records=-1)


def test_set_max_fragment_keeps_key_and_sequence() -> None:
    sealer, opener = pair(max_fragment=100)
    first = sealer.seal(bytes(250))  # 3 records
    sealer.set_max_fragment(50)
    assert sealer.max_fragment == 50
    assert sealer.sequence == 3
    second = sealer.seal(bytes(250))  # 5 records, same key, sequence continues
    opened = opener.open_packed(bytearray(first + second), bytearray(600))
    assert (opened.records, opened.written) == (8, 500)
    for bad in (0, -1, (1 << 18) + 1):
        with pytest.raises(ValueError, match="max_fragment"):
            sealer.set_max_fragment(bad)
    with pytest.raises(TypeError, match="max_fragment"):
        sealer.set_max_fragment(1.5)  # type: ignore[arg-type]
