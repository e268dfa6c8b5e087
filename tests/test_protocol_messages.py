"""The message API of the sans-IO engine: ``send_messages`` / ``MessagesReceived``.

A run of message records opened together yields one MessagesReceived event
with every message it completes; a frame may be cut anywhere by the records
(a conforming peer may split its message stream at any byte), and the size
bound is checked as soon as a frame's 4-byte length is in.
"""

from __future__ import annotations

import array
import os
import random

import pytest
from protocol_helpers import Pair, assert_closed_with, drain_events, split_records

from nautilus import (
    AlertReceived,
    ConnectionClosed,
    DataReceived,
    Event,
    MessagesReceived,
    MessageTooLarge,
    ProtocolViolation,
)
from nautilus.protocol.connection import Connection
from nautilus.protocol.messages import AlertCode
from nautilus.record import ContentType

NOW = 1_800_000_000.0


def connected(**server: object) -> Pair:
    pair = Pair.make(server=dict(server))
    pair.handshake()
    return pair


def framed(messages: list[bytes]) -> bytes:
    return b"".join(len(m).to_bytes(4, "big") + m for m in messages)


def seal_message_stream(conn: Connection, pieces: list[bytes]) -> list[bytes]:
    """Seal each piece of a raw message stream as its own record (as a peer that
    cuts its frames anywhere would) and return the records."""
    for piece in pieces:
        conn._seal_application(piece, ContentType.MESSAGE)
    return split_records(conn.data_to_send())


def batches(events: list[Event]) -> list[tuple[bytes, ...]]:
    """The messages of each MessagesReceived, whose byte count is checked."""
    found = [e for e in events if isinstance(e, MessagesReceived)]
    for event in found:
        assert event.nbytes == sum(map(len, event.messages))
    return [e.messages for e in found]


def test_the_messages_of_one_send_come_in_one_event() -> None:
    pair = connected()
    sent = [b"first", b"", os.urandom(300), b"last"]
    pair.client.send_messages(sent)
    pair.server.receive_data(pair.client.data_to_send())
    events = drain_events(pair.server)
    assert events == [MessagesReceived(tuple(sent))]
    assert all(type(m) is bytes for m in events[0].messages)  # type: ignore[attr-defined]


def test_several_sends_read_at_once_come_in_one_event() -> None:
    pair = connected()
    # The first message record after stream traffic (here the handshake) is
    # opened apart: the engine then batches the record type seen last.
    pair.client.send_message(b"warm-up")
    pair.server.receive_data(pair.client.data_to_send())
    assert batches(drain_events(pair.server)) == [(b"warm-up",)]
    sent = [i.to_bytes(2, "big") * i for i in range(50)]
    for m in sent:
        pair.client.send_message(m)  # one record each
    pair.server.receive_data(pair.client.data_to_send())
    assert batches(drain_events(pair.server)) == [tuple(sent)]


def test_bytes_like_messages_are_sent_by_their_size_in_bytes() -> None:
    pair = connected()
    words = array.array("I", [1, 2, 3])

    class Blob(bytes):
        pass

    pair.client.send_messages([bytearray(b"ba"), memoryview(words), Blob(b"sub")])
    pair.server.receive_data(pair.client.data_to_send())
    assert batches(drain_events(pair.server)) == [(b"ba", words.tobytes(), b"sub")]


def test_a_message_larger_than_a_record_is_delivered_when_complete() -> None:
    pair = connected()
    big = os.urandom(40_000)  # three records of at most 16 KiB
    pair.client.send_messages([b"before", big, b"after"])
    records = split_records(pair.client.data_to_send())
    assert len(records) == 3
    got: list[tuple[bytes, ...]] = []
    for record in records:  # one record per receive_data call
        pair.server.receive_data(record)
        got.append(tuple(m for b in batches(drain_events(pair.server)) for m in b))
    assert got == [(b"before",), (), (big, b"after")]


@pytest.mark.parametrize("per_call", [1, 3, 1000])
def test_frames_cut_at_every_byte(per_call: int) -> None:
    pair = connected()
    sent = [b"", b"a", os.urandom(7), os.urandom(300), b"end"]
    stream = framed(sent)
    records = seal_message_stream(pair.client, [stream[i : i + 1] for i in range(len(stream))])
    assert len(records) == len(stream)
    received: list[bytes] = []
    for i in range(0, len(records), per_call):
        pair.server.receive_data(b"".join(records[i : i + per_call]))
        for batch in batches(drain_events(pair.server)):
            assert batch, "an event carries at least one message"
            received += batch
        # Nothing is held back once the bytes of a frame are all in.
        complete, pos = 0, 0
        fed = min(i + per_call, len(stream))
        while pos + 4 <= fed and pos + 4 + int.from_bytes(stream[pos : pos + 4], "big") <= fed:
            pos += 4 + int.from_bytes(stream[pos : pos + 4], "big")
            complete += 1
        assert received == sent[:complete]
    assert received == sent
    assert not pair.server.is_closed


def test_random_cuts_and_random_reads() -> None:
    rng = random.Random(7)
    pair = connected()
    sent = [rng.randbytes(rng.choice([0, 1, 3, 4, 5, 100, 5000])) for _ in range(200)]
    stream = framed(sent)
    pieces, pos = [], 0
    while pos < len(stream):
        size = rng.randint(1, 3000)
        pieces.append(stream[pos : pos + size])
        pos += size
    wire = b"".join(seal_message_stream(pair.client, pieces))
    received: list[bytes] = []
    pos = 0
    while pos < len(wire):
        size = rng.randint(1, 9000)
        pair.server.receive_data(wire[pos : pos + size])
        pos += size
        for batch in batches(drain_events(pair.server)):
            received += batch
    assert received == sent


def test_messages_and_stream_data_keep_their_order() -> None:
    pair = connected()
    pair.client.send_data(b"d1")
    pair.client.send_messages([b"m1", b"m2"])
    pair.client.send_message(b"m3")
    pair.client.send_data(b"d2")
    pair.client.send_data(b"d3")
    pair.client.send_message(b"m4")
    pair.server.receive_data(pair.client.data_to_send())
    order: list[tuple[str, bytes]] = []
    for event in drain_events(pair.server):
        if isinstance(event, DataReceived):
            if order and order[-1][0] == "data":  # stream data may come in any pieces
                order[-1] = ("data", order[-1][1] + event.data)
            else:
                order.append(("data", event.data))
        else:
            assert isinstance(event, MessagesReceived)
            order += [("message", m) for m in event.messages]
    assert order == [
        ("data", b"d1"),
        ("message", b"m1"),
        ("message", b"m2"),
        ("message", b"m3"),
        ("data", b"d2d3"),
        ("message", b"m4"),
    ]


def test_a_frame_cut_by_stream_data_records_is_completed_later() -> None:
    pair = connected()
    stream = framed([b"hello", b"world"])
    pair.client._seal_application(stream[:7], ContentType.MESSAGE)
    pair.client.send_data(b"between")
    pair.client._seal_application(stream[7:], ContentType.MESSAGE)
    pair.server.receive_data(pair.client.data_to_send())
    assert drain_events(pair.server) == [
        DataReceived(b"between"),
        MessagesReceived((b"hello", b"world")),
    ]


def test_a_message_at_the_size_limit_is_accepted() -> None:
    pair = connected(max_message_size=1000)
    pair.client.send_messages([b"x" * 1000, b""])
    pair.server.receive_data(pair.client.data_to_send())
    assert batches(drain_events(pair.server)) == [(b"x" * 1000, b"")]


@pytest.mark.parametrize("split", [False, True])
def test_an_oversized_frame_ends_the_connection_with_record_overflow(split: bool) -> None:
    pair = connected(max_message_size=1000)
    # The client's own bound is larger: the server's is what the server enforces.
    good = [b"whole", b"y" * 1000]
    stream = framed(good) + (1001).to_bytes(4, "big") + b"z" * 10  # the body never comes
    pieces = [stream[i : i + 1] for i in range(len(stream))] if split else [stream]
    records = seal_message_stream(pair.client, pieces)
    for record in records:
        pair.server.receive_data(record)
        if pair.server.is_closed:
            break
    events = drain_events(pair.server)
    assert_closed_with(pair.server, events, ProtocolViolation)
    assert "record_overflow" in str(pair.server.error)
    assert "1001 bytes" in str(pair.server.error)
    # The whole messages before it are delivered, then the end.
    assert [m for b in batches(events) for m in b] == good
    assert isinstance(events[-1], ConnectionClosed)
    if split:  # detected as soon as the length was in, before any of the body
        assert records.index(record) == len(framed(good)) + 3
    pair.client.receive_data(pair.server.data_to_send())
    client_events = drain_events(pair.client)
    assert [e.code for e in client_events if isinstance(e, AlertReceived)] == [22]


def test_sending_checks_every_message_first() -> None:
    pair = connected()
    limit = pair.client_ctx.max_message_size
    with pytest.raises(MessageTooLarge):
        pair.client.send_messages([b"ok", bytes(limit + 1)])
    with pytest.raises(TypeError, match="bytes-like"):
        pair.client.send_messages([b"ok", "text"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one object"):
        pair.client.send_messages(b"one object")
    with pytest.raises(
        TypeError, match=r"^messages must be an iterable of bytes-like objects, not int"
    ):
        pair.client.send_messages(42)  # type: ignore[arg-type]
    assert pair.client.data_to_send() == b""  # all or nothing
    pair.client.send_messages([])
    assert pair.client.data_to_send() == b""


def test_an_oversized_message_is_reported_by_its_size_in_bytes() -> None:
    pair = connected()
    limit = pair.client_ctx.max_message_size
    words = memoryview(array.array("I", bytes(limit + 4)))  # len() is a quarter of that
    for batch in ([b"ok", words], (b"ok", bytes(limit + 4)), iter([b"ok", words])):
        with pytest.raises(MessageTooLarge, match=f"a message of {limit + 4} bytes"):
            pair.client.send_messages(batch)
    assert pair.client.data_to_send() == b""
    pair.client.send_messages((b"a", bytearray(b"bc"), memoryview(b"def")))  # a tuple, mixed
    pair.server.receive_data(pair.client.data_to_send())
    assert batches(drain_events(pair.server)) == [(b"a", b"bc", b"def")]


@pytest.mark.parametrize("cut", [1, 3, 4, 9])
def test_close_notify_in_the_middle_of_a_message_is_not_a_clean_end(cut: int) -> None:
    """A peer's close_notify after part of a frame (some of its length, or the
    length and part of the body) is a protocol violation (decode_error), not
    a clean end: the application would never learn that a message sent to it
    was lost. The whole messages before it are delivered first."""
    pair = connected()
    stream = framed([b"whole", b"cut short"])
    records = seal_message_stream(pair.client, [stream[: 9 + cut]])  # "whole", part of the next
    pair.client._send_alert(AlertCode.CLOSE_NOTIFY)  # (the client stays open to read the answer)
    pair.server.receive_data(b"".join(records) + pair.client.data_to_send())
    events = drain_events(pair.server)
    assert batches(events) == [(b"whole",)]
    assert_closed_with(pair.server, events, ProtocolViolation)
    assert "close_notify in the middle of a message" in str(pair.server.error)
    assert f"({cut} bytes of its frame received)" in str(pair.server.error)
    # The peer is told why, rather than answered with a close_notify.
    pair.client.receive_data(pair.server.data_to_send())
    client_events = drain_events(pair.client)
    assert [e.code for e in client_events if isinstance(e, AlertReceived)] == [
        AlertCode.DECODE_ERROR
    ]


def test_close_notify_after_whole_messages_is_a_clean_end() -> None:
    pair = connected()
    pair.client.send_messages([b"one", b"two"])
    pair.client.close()
    pair.server.receive_data(pair.client.data_to_send())
    events = drain_events(pair.server)
    assert batches(events) == [(b"one", b"two")]
    assert events[-1] == ConnectionClosed(None)
