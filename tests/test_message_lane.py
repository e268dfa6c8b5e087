"""The message lane (Connection._take_message / _seal_message): the asyncio
channels' short path for one message per record. It must either do exactly
what the general path (receive_data, send_messages) would, or decline having
done nothing; these tests hold it to both, in memory."""

from __future__ import annotations

import os
from typing import Any

import pytest
from protocol_helpers import (
    NOW,
    Pair,
    assert_closed_with,
    drain_events,
    event_types,
    split_records,
)

from nautilus import (
    AlertReceived,
    ConnectionClosed,
    DataReceived,
    IntegrityError,
    KeysUpdated,
    MessagesReceived,
    ProtocolViolation,
)
from nautilus.protocol.connection import Connection

MESSAGE = os.urandom(256)
WARM = MESSAGE * 8


def warm(pair: Pair) -> None:
    """Have each side open a 2 KiB message: the lane takes records up to the
    size of its buffer, which the general path grows to what it has read."""
    for src, dst in ((pair.client, pair.server), (pair.server, pair.client)):
        src.send_message(WARM)
        dst.receive_data(src.data_to_send(), NOW)
        assert drain_events(dst) == [MessagesReceived((WARM,))]


def lane_pair(**server: Any) -> Pair:
    """A connected pair, its server warmed up."""
    pair = Pair.make(server=server)
    pair.handshake()
    warm(pair)
    return pair


def sealed(conn: Connection, message: bytes) -> bytes:
    out = conn._seal_message(message)
    assert out is not None
    return bytes(out)


def take(conn: Connection, wire: bytes) -> bytes | bool:
    return conn._take_message(memoryview(wire), NOW)


def test_one_message_per_record_goes_straight_through_both_ways() -> None:
    pair = lane_pair()
    client, server = pair.client, pair.server
    before = server.stats
    for i in range(50):
        message = MESSAGE[: i * 5]  # 0..245 bytes: the empty message too
        assert take(server, sealed(client, message)) == message
        assert take(client, sealed(server, message[::-1])) == message[::-1]
    assert drain_events(server) == []
    assert drain_events(client) == []
    assert client.data_to_send() == b""
    assert server.data_to_send() == b""
    # Counted as the general path counts them: each message and its 4-byte length.
    framed = sum(i * 5 + 4 for i in range(50))
    assert server.stats.bytes_received - before.bytes_received == framed
    assert server.stats.bytes_sent == client.stats.bytes_received


def test_what_the_lane_seals_the_general_path_opens_and_back() -> None:
    pair = lane_pair()
    client, server = pair.client, pair.server
    server.receive_data(sealed(client, b"lane out"), NOW)
    assert drain_events(server) == [MessagesReceived((b"lane out",))]
    server.send_message(b"general out")
    assert take(client, server.data_to_send()) == b"general out"


def _events_waiting(pair: Pair) -> bytes:
    pair.client.send_data(b"unread")
    pair.server.receive_data(pair.client.data_to_send(), NOW)  # a DataReceived not taken
    return sealed(pair.client, b"next")


def _partial_buffered(pair: Pair) -> bytes:
    first = sealed(pair.client, b"first")
    pair.server.receive_data(first[:7], NOW)  # an incomplete record waits in the buffer
    return first[7:]


def _two_records(pair: Pair) -> bytes:
    return sealed(pair.client, b"one") + sealed(pair.client, b"two")


def _cut_record(pair: Pair) -> bytes:
    return sealed(pair.client, b"only part of it")[:-1]


def _plaintext_record(pair: Pair) -> bytes:
    return bytes([0x16, 0, 0, 1, 0])


# Each case: what makes the lane decline, and what receive_data then makes of it.
DECLINED = {
    "an event waits": (_events_waiting, [DataReceived(b"unread"), MessagesReceived((b"next",))]),
    "a record is incomplete": (_partial_buffered, [MessagesReceived((b"first",))]),
    "two records": (_two_records, [MessagesReceived((b"one", b"two"))]),
    "a cut record": (_cut_record, []),
}


@pytest.mark.parametrize("case", list(DECLINED))
def test_the_lane_declines_having_done_nothing(case: str) -> None:
    pair = lane_pair()
    make, expected = DECLINED[case]
    wire = make(pair)
    assert take(pair.server, wire) is False
    pair.server.receive_data(wire, NOW)  # the general path sees the same bytes, unspent
    assert drain_events(pair.server) == expected
    assert not pair.server.is_closed


def test_the_lane_declines_before_the_handshake_and_for_a_plaintext_record() -> None:
    pair = Pair.make()
    pair.start()
    hello = pair.client.data_to_send()
    assert take(pair.server, hello) is False  # not connected: nothing read
    pair.server.receive_data(hello, NOW)
    assert pair.server.data_to_send()  # the server answered the hello it got whole
    connected = lane_pair()
    assert take(connected.server, _plaintext_record(connected)) is False
    assert connected.client._seal_message(MESSAGE) is not None
    assert Pair.make().client._seal_message(MESSAGE) is None  # not started


def test_a_record_holding_two_messages_is_handled_as_receive_data_would() -> None:
    pair = lane_pair()
    pair.client.send_messages([b"a", b"bc"])  # framed together: one record
    assert take(pair.server, pair.client.data_to_send()) is True
    assert drain_events(pair.server) == [MessagesReceived((b"a", b"bc"))]


def test_application_data_in_the_lane_is_stream_data() -> None:
    pair = lane_pair()
    pair.client.send_data(b"stream bytes")
    assert take(pair.server, pair.client.data_to_send()) is True
    assert drain_events(pair.server) == [DataReceived(b"stream bytes")]
    assert take(pair.server, sealed(pair.client, b"and a message")) == b"and a message"


def test_a_message_split_over_records_completes_across_lane_and_general_path() -> None:
    pair = lane_pair(max_record_size=512)  # the server accepts small records...
    pair.client.send_message(b"x" * 1500)  # ...and the client seals this one in 3
    records = split_records(pair.client.data_to_send())
    assert len(records) == 3
    assert take(pair.server, records[0]) is True  # opened: the start of a message
    assert drain_events(pair.server) == []
    for record in records[1:]:
        assert take(pair.server, record) is False  # a partial message waits: declined
        pair.server.receive_data(record, NOW)
    assert drain_events(pair.server) == [MessagesReceived((b"x" * 1500,))]
    assert take(pair.server, sealed(pair.client, b"whole")) == b"whole"


def test_a_key_update_in_the_lane_ratchets_and_answers() -> None:
    pair = lane_pair()
    pair.client.update_keys(request_peer=True)
    assert [type(e) for e in drain_events(pair.client)] == [KeysUpdated]  # (taken first)
    assert take(pair.server, pair.client.data_to_send()) is True
    events = drain_events(pair.server)  # the client's keys
    assert events
    assert all(isinstance(e, KeysUpdated) for e in events)
    assert pair.server.data_to_send() == b""  # the answer goes before the server's next data
    pair.server.send_message(b"first")  # declined by the lane (a key update is due)...
    answer = pair.server.data_to_send()  # ...so the server's own key update, then the message
    assert drain_events(pair.server) == [KeysUpdated("send")]
    assert len(split_records(answer)) == 2
    assert take(pair.client, answer) is False  # two records: the general path
    pair.client.receive_data(answer, NOW)
    assert drain_events(pair.client) == [KeysUpdated("receive"), MessagesReceived((b"first",))]
    # Both directions run on the new keys, through the lane again.
    assert take(pair.server, sealed(pair.client, b"after")) == b"after"
    assert take(pair.client, sealed(pair.server, b"back")) == b"back"


def test_the_lane_seals_across_scheduled_key_updates() -> None:
    pair = Pair.make(server={"key_update_records": 70}, client={"key_update_records": 70})
    pair.handshake()
    warm(pair)
    server, conn = pair.server, pair.client
    declined = 0
    for i in range(300):
        message = i.to_bytes(2, "big") * 8
        out = conn._seal_message(message)
        if out is None:  # this key's budget is spent: the general path updates the key
            declined += 1
            conn.send_message(message)
            out = bytearray(conn.data_to_send())
        taken = take(server, bytes(out))
        if taken is True or taken is False:
            if taken is False:
                server.receive_data(bytes(out), NOW)
            events = drain_events(server)
            assert events[-1] == MessagesReceived((message,))
        else:
            assert taken == message
    assert declined >= 3
    assert conn.stats.key_updates >= 3
    assert not server.is_closed


def test_a_tampered_record_in_the_lane_fails_as_in_the_general_path() -> None:
    pair = lane_pair()
    wire = bytearray(sealed(pair.client, MESSAGE))
    late = sealed(pair.client, b"late")  # the record after it
    wire[40] ^= 1
    assert take(pair.server, bytes(wire)) is True
    events = drain_events(pair.server)
    assert event_types(events) == ["ConnectionClosed"]
    assert_closed_with(pair.server, events, IntegrityError)
    alert = pair.server.data_to_send()
    pair.client.receive_data(alert, NOW)
    client_events = drain_events(pair.client)
    assert [e.code for e in client_events if isinstance(e, AlertReceived)] == [20]
    assert take(pair.server, late) is False  # closed: declined


def test_an_oversized_message_in_the_lane_is_refused_like_any_other() -> None:
    pair = Pair.make(server={"max_message_size": 100})
    pair.handshake()
    pair.client.send_data(WARM)  # (stream data: over the server's max_message_size)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    assert drain_events(pair.server) == [DataReceived(WARM)]
    assert take(pair.server, sealed(pair.client, b"y" * 101)) is True
    events = drain_events(pair.server)
    assert_closed_with(pair.server, events, ProtocolViolation)
    assert "max_message_size" in str(pair.server.error)


def test_close_notify_in_the_lane_ends_the_connection_cleanly() -> None:
    pair = lane_pair()
    pair.client.close()
    assert take(pair.server, pair.client.data_to_send()) is True
    events = drain_events(pair.server)
    assert isinstance(events[-1], ConnectionClosed)
    assert events[-1].error is None


@pytest.mark.parametrize(
    "why",
    ["rekey_interval", "larger than a record", "over max_message_size", "output waiting"],
)
def test_sealing_declines_having_done_nothing(why: str) -> None:
    client_opts: dict[str, Any] = {}
    if why == "rekey_interval":
        client_opts["rekey_interval"] = 3600.0
    if why == "over max_message_size":
        client_opts["max_message_size"] = 10
    pair = Pair.make(client=client_opts, server={"max_record_size": 512})
    pair.handshake()
    client = pair.client
    message = b"m" * (600 if why == "larger than a record" else 20)
    if why == "output waiting":
        client.send_data(b"queued first")
    sent = client.stats.bytes_sent
    assert client._seal_message(message) is None
    assert client.stats.bytes_sent == sent
    if why == "over max_message_size":
        return  # (send_message raises MessageTooLarge: tested with the message API)
    client.send_message(message)  # the general path: still in order, nothing lost
    pair.server.receive_data(client.data_to_send(), NOW)
    expected = [MessagesReceived((message,))]
    if why == "output waiting":
        expected.insert(0, DataReceived(b"queued first"))
    assert drain_events(pair.server) == expected
