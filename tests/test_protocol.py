"""The sans-IO Connection between two honest peers: negotiation, round trips,
session info, data, key updates, exporters, closing, client authentication,
identities, certificates, known peers and API misuse."""

from __future__ import annotations

import array
import dataclasses
import gc
import math
import os

import pytest
from protocol_helpers import (
    ALL_CIPHERS,
    ALL_GROUPS,
    KINDS,
    NOW,
    Pair,
    assert_closed_with,
    cached_identity,
    drain_events,
    event_types,
    make_identity,
    pump,
    received_data,
    split_plain_handshake,
    split_records,
)

from nautilus import (
    AlertReceived,
    AuthenticationFailed,
    Certificate,
    CertificateExpired,
    ClosedError,
    ConnectionClosed,
    ConnectionLost,
    Context,
    CryptoFailure,
    DataReceived,
    HandshakeCompleted,
    HandshakeError,
    HandshakeTimeout,
    Identity,
    InvalidKey,
    KeysUpdated,
    NegotiationFailed,
    ProtocolViolation,
    State,
)
from nautilus.context import DEFAULT_GROUPS
from nautilus.protocol import keyschedule as ks
from nautilus.protocol.connection import MAX_NOW, Connection
from nautilus.protocol.messages import RECORD_SEALED, MsgType
from nautilus.record import RECORD_OVERHEAD, ContentType


def connected_pair(**kwargs: object) -> Pair:
    pair = Pair.make(**kwargs)  # type: ignore[arg-type]
    pair.handshake()
    return pair


def completed(events: list[object]) -> HandshakeCompleted:
    done = [e for e in events if isinstance(e, HandshakeCompleted)]
    assert len(done) == 1, events
    return done[0]


# ------------------------------------------------------------- negotiation, RTTs


@pytest.mark.parametrize("cipher", ALL_CIPHERS)
@pytest.mark.parametrize("group", ALL_GROUPS)
def test_handshake_every_group_and_cipher(group: str, cipher: str) -> None:
    server_ident = cached_identity()
    opts = {"groups": [group], "ciphers": [cipher]}
    pair = Pair.make(server_ident, server=opts, client=opts)
    flights = pair.handshake()
    # ClientHello -> server flight -> client Finished: one round trip before the
    # client may send, plus the Finished flight.
    assert flights == 3
    assert event_types(pair.client_events) == ["HandshakeCompleted"]
    assert event_types(pair.server_events) == ["HandshakeCompleted"]
    cs = pair.client_events[0].session
    ss = pair.server_events[0].session
    for s in (cs, ss):
        assert (s.group, s.cipher, s.namespace, s.steps) == (group, cipher, "nautilus", ())
        assert s.max_record_size == 16384
        assert s.resumed is False
    assert (cs.role, ss.role) == ("client", "server")
    assert cs.peer_key == server_ident.public
    assert cs.peer_id == server_ident.peer_id
    assert cs.trust == "pinned"
    assert ss.peer_key is None
    assert ss.peer_id is None
    assert ss.trust is None
    assert pair.client.session is cs
    assert pair.server.session is ss
    assert pair.client.state is State.CONNECTED is pair.server.state
    assert pair.client.get_timer() is None
    assert pair.server.get_timer() is None

    pair.client.send_data(b"ping " + group.encode())
    pair.server.send_data(b"pong " + cipher.encode())
    assert pair.pump() == 2
    assert received_data(pair.server_events) == b"ping " + group.encode()
    assert received_data(pair.client_events) == b"pong " + cipher.encode()


def _first_server_message(flight_log: list[tuple[str, bytes]]) -> MsgType:
    role, wire = flight_log[1]
    assert role == "server"
    messages, _ = split_plain_handshake(wire)
    return messages[0][0]


@pytest.mark.parametrize(
    ("client_groups", "server_groups", "chosen"),
    [
        (("mlkem768", "x25519-mlkem1024"), ("x25519-mlkem1024", "mlkem768"), "x25519-mlkem1024"),
        (("x25519-mlkem768", "mlkem1024"), ("mlkem1024",), "mlkem1024"),
        (("x25519", "x25519-mlkem768"), ("x25519-mlkem768", "x25519"), "x25519-mlkem768"),
    ],
)
def test_hello_retry_costs_one_extra_round_trip(
    client_groups: tuple[str, ...], server_groups: tuple[str, ...], chosen: str
) -> None:
    log: list[tuple[str, bytes]] = []

    def record(src: Connection, dst: Connection, data: bytes) -> bytes:
        log.append((src.role, data))
        return data

    pair = Pair.make(server={"groups": server_groups}, client={"groups": client_groups})
    pair.start()
    flights = pair.pump(record)
    assert pair.client.handshake_complete
    assert pair.server.handshake_complete
    # ClientHello, HelloRetry, ClientHello again, server flight, client Finished.
    assert flights == 5
    assert [r for r, _ in log] == ["client", "server", "client", "server", "client"]
    assert _first_server_message(log) is MsgType.HELLO_RETRY
    assert len(split_records(log[1][1])) == 1  # the retry request is alone in its flight
    assert completed(pair.client_events).session.group == chosen
    assert completed(pair.server_events).session.group == chosen


@pytest.mark.parametrize("kind", ["ed25519", "ed25519+ml-dsa-65"])
def test_each_sealed_flight_is_sealed_together(kind: str) -> None:
    """The sealed messages of a flight share records: one record unless they
    exceed a record's 16 KiB (then as few as fit); the plaintext ServerHello
    is the flight's only other record."""
    log: list[tuple[str, bytes]] = []

    def record(src: Connection, dst: Connection, data: bytes) -> bytes:
        log.append((src.role, data))
        return data

    server_ident = cached_identity(kind)
    client_ident = cached_identity(kind, 1)
    pair = Pair.make(
        server_ident,
        server={"client_auth": "required", "trusted_peers": [client_ident.public]},
        client={"identity": client_ident},
    )
    pair.start()
    assert pair.pump(record) == 3
    assert pair.client.handshake_complete
    assert pair.server.handshake_complete
    (_, server_flight), (_, client_flight) = log[1], log[2]
    server_records = split_records(server_flight)
    assert server_records[0][0] != RECORD_SEALED  # the ServerHello
    sealed = server_records[1:]
    assert all(r[0] == RECORD_SEALED for r in sealed)
    # EncryptedExtensions, Identity, Verify and Finished.
    content = sum(len(r) for r in sealed) - RECORD_OVERHEAD * len(sealed)
    assert len(sealed) == -(-content // 16384)
    client_records = split_records(client_flight)
    assert all(r[0] == RECORD_SEALED for r in client_records)
    content = sum(len(r) for r in client_records) - RECORD_OVERHEAD * len(client_records)
    assert len(client_records) == -(-content // 16384)
    if kind == "ed25519":
        assert len(sealed) == 1
        assert len(client_records) == 1


def _round_trip(pair: Pair) -> None:
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.receive_data(pair.server.data_to_send(), NOW)


@pytest.mark.parametrize(
    ("server_groups", "rtts"), [(("x25519-mlkem768",), 1), (("mlkem1024", "x25519-mlkem768"), 2)]
)
def test_client_can_send_after_one_round_trip_or_two_with_retry(
    server_groups: tuple[str, ...], rtts: int
) -> None:
    pair = Pair.make(server={"groups": server_groups})
    pair.start()
    for _ in range(rtts - 1):
        _round_trip(pair)
        assert not pair.client.handshake_complete
    _round_trip(pair)
    assert pair.client.handshake_complete
    assert not pair.server.handshake_complete  # it still waits for the client's Finished
    pair.client.send_data(b"first bytes")
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    assert event_types(drain_events(pair.server)) == ["HandshakeCompleted", "DataReceived"]


def test_no_retry_when_the_first_share_is_the_servers_choice() -> None:
    log: list[tuple[str, bytes]] = []

    def record(src: Connection, dst: Connection, data: bytes) -> bytes:
        log.append((src.role, data))
        return data

    pair = Pair.make(
        server={"groups": ["mlkem768", "mlkem1024"]}, client={"groups": ["mlkem1024", "mlkem768"]}
    )
    pair.start()
    # The server prefers mlkem768 but the client's share is mlkem1024, which the
    # server also accepts: the server picks by its own preference, so it retries.
    assert pair.pump(record) == 5
    assert _first_server_message(log) is MsgType.HELLO_RETRY
    assert completed(pair.client_events).session.group == "mlkem768"


def test_server_preference_decides_the_cipher() -> None:
    pair = connected_pair(
        server={"ciphers": ["aes-128-gcm", "chacha20-poly1305"]},
        client={"ciphers": ["chacha20-poly1305", "aes-256-gcm", "aes-128-gcm"]},
    )
    assert completed(pair.client_events).session.cipher == "aes-128-gcm"
    assert completed(pair.server_events).session.cipher == "aes-128-gcm"


def test_x25519_alone_is_not_offered_by_default() -> None:
    assert "x25519" not in Context().groups
    assert Context().groups == DEFAULT_GROUPS
    # A client that only speaks x25519 cannot reach a default server ...
    pair = Pair.make(client={"groups": ["x25519"]})
    pair.connect()
    assert_closed_with(pair.server, pair.server_events, NegotiationFailed)
    assert_closed_with(pair.client, pair.client_events, NegotiationFailed)
    assert AlertReceived(40, "negotiation_failed") in pair.client_events
    # ... and a default client never agrees to x25519 with a server that prefers it.
    pair = connected_pair(server={"groups": ["x25519", "mlkem768"]})
    assert completed(pair.client_events).session.group == "mlkem768"
    # Listed on both sides, it works.
    pair = connected_pair(server={"groups": ["x25519"]}, client={"groups": ["x25519"]})
    assert completed(pair.client_events).session.group == "x25519"


# ------------------------------------------------------------------ session info


def test_trust_pinned_by_peer_id_string() -> None:
    ident = cached_identity()
    pair = connected_pair(client={"trusted_peers": [ident.peer_id]})
    assert completed(pair.client_events).session.trust == "pinned"


@pytest.mark.parametrize("as_string", [False, True])
def test_trust_expected_peer(as_string: bool) -> None:
    ident = cached_identity()
    expected = ident.peer_id if as_string else ident.public
    pair = connected_pair(pin=False, expected_peer=expected)
    session = completed(pair.client_events).session
    assert session.trust == "expected"
    assert session.peer_key == ident.public


def test_expected_peer_wins_over_pins() -> None:
    ident = cached_identity()
    pair = connected_pair(expected_peer=ident.public)  # also pinned
    assert completed(pair.client_events).session.trust == "expected"


def test_namespace_is_reported() -> None:
    pair = connected_pair(server={"namespace": "chat/v2"}, client={"namespace": "chat/v2"})
    assert completed(pair.client_events).session.namespace == "chat/v2"
    assert completed(pair.server_events).session.namespace == "chat/v2"


def test_max_record_size_is_the_smaller_of_both() -> None:
    pair = connected_pair(server={"max_record_size": 1024}, client={"max_record_size": 4096})
    assert completed(pair.client_events).session.max_record_size == 1024
    assert completed(pair.server_events).session.max_record_size == 1024
    pair.client.send_data(b"c" * 5000)
    pair.server.send_data(b"s" * 5000)
    c_wire = pair.client.data_to_send()
    s_wire = pair.server.data_to_send()
    assert [len(r) for r in split_records(c_wire)] == [1024 + RECORD_OVERHEAD] * 4 + [
        5000 - 4096 + RECORD_OVERHEAD
    ]
    assert len(split_records(s_wire)) == 5
    pair.server.receive_data(c_wire, NOW)
    pair.client.receive_data(s_wire, NOW)
    pair.collect()
    assert received_data(pair.server_events) == b"c" * 5000
    assert received_data(pair.client_events) == b"s" * 5000


# -------------------------------------------------------------------------- data


def test_client_data_queued_before_the_handshake_rides_with_its_finished() -> None:
    pair = Pair.make()
    pair.client.send_data(b"early-1")  # even before start()
    pair.start()
    pair.client.send_data(bytearray(b"early-2"))
    pair.client.send_data(memoryview(b"early-3"))
    pair.client.send_data(b"")  # nothing
    assert pair.pump() == 3  # no extra flight: the data goes with the Finished
    assert event_types(pair.server_events) == ["HandshakeCompleted", "DataReceived"]
    assert received_data(pair.server_events) == b"early-1early-2early-3"


def test_server_data_queued_before_the_handshake_is_sent_once_connected() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.send_data(b"hello from the server")
    assert pair.pump() == 4
    assert event_types(pair.client_events) == ["HandshakeCompleted", "DataReceived"]
    assert received_data(pair.client_events) == b"hello from the server"


def test_data_both_ways_many_messages() -> None:
    pair = connected_pair()
    for i in range(20):
        pair.client.send_data(b"c%d;" % i)
        pair.server.send_data(b"s%d;" % i)
        pair.pump()
    assert received_data(pair.server_events) == b"".join(b"c%d;" % i for i in range(20))
    assert received_data(pair.client_events) == b"".join(b"s%d;" % i for i in range(20))


@pytest.mark.parametrize("size", [16384, 16385, 200_000])
def test_large_data_is_split_into_records_and_merged(size: int) -> None:
    pair = connected_pair()
    data = os.urandom(size)
    pair.client.send_data(data)
    wire = pair.client.data_to_send()
    records = split_records(wire)
    assert len(records) == math.ceil(size / 16384)
    assert all(r[0] == RECORD_SEALED for r in records)
    assert max(len(r) for r in records) == 16384 + RECORD_OVERHEAD
    pair.server.receive_data(wire, NOW)
    events = drain_events(pair.server)
    assert event_types(events) == ["DataReceived"]  # one event for the whole run
    assert received_data(events) == data


def test_large_data_fed_byte_ranges_arrives_in_order() -> None:
    pair = connected_pair()
    data = os.urandom(50_000)
    pair.server.send_data(data)
    wire = pair.server.data_to_send()
    for i in range(0, len(wire), 777):
        pair.client.receive_data(wire[i : i + 777])
    assert received_data(drain_events(pair.client)) == data


# --------------------------------------------------------------------- key update


def test_update_keys_ratchets_both_directions() -> None:
    pair = connected_pair()
    pair.collect()
    pair.client_events.clear()
    pair.server_events.clear()
    pair.client.update_keys()
    assert drain_events(pair.client) == [KeysUpdated("send")]
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    # The server follows the request: it ratchets its receiving key now, and
    # its sending key before its next data (RFC 8446 section 4.6.3).
    assert drain_events(pair.server) == [KeysUpdated("receive")]
    assert pair.server.data_to_send() == b""
    pair.server.send_data(b"and back")
    assert drain_events(pair.server) == [KeysUpdated("send")]
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    assert drain_events(pair.client) == [KeysUpdated("receive"), DataReceived(b"and back")]
    assert pair.client.data_to_send() == b""  # no ping-pong of updates

    pair.client.send_data(b"after update")
    pair.server.send_data(b"and again")
    pair.pump()
    assert received_data(pair.server_events) == b"after update"
    assert received_data(pair.client_events) == b"and again"
    assert pair.server.stats.key_updates == pair.client.stats.key_updates == 2


def test_requests_that_arrive_while_this_side_is_silent_cost_one_update() -> None:
    """A peer's requests are answered by one update before this side's next
    data, however many came meanwhile: a peer that asks again and again and
    never reads makes no output pile up (nothing is sent until data is)."""
    pair = connected_pair()
    pair.collect()
    for _ in range(10):
        pair.client.send_data(b"x")  # (data between: not a flood of updates)
        pair.client.update_keys()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    assert pair.server.data_to_send() == b""
    assert pair.server.stats.key_updates == 10  # its receiving key, ten times
    pair.server.send_data(b"reply")
    records = split_records(pair.server.data_to_send())
    assert len(records) == 2  # one key update, then the data
    assert pair.server.stats.key_updates == 11
    pair.client.receive_data(b"".join(records), NOW)
    assert drain_events(pair.client)[-2:] == [KeysUpdated("receive"), DataReceived(b"reply")]


def test_update_keys_without_request_ratchets_one_direction() -> None:
    pair = connected_pair()
    pair.server.update_keys(request_peer=False)
    pair.server.send_data(b"x")
    assert drain_events(pair.server) == [KeysUpdated("send")]
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    assert drain_events(pair.client) == [KeysUpdated("receive"), DataReceived(b"x")]
    assert pair.client.data_to_send() == b""


def test_repeated_key_updates_keep_data_flowing() -> None:
    pair = connected_pair()
    for i in range(5):
        (pair.client if i % 2 else pair.server).update_keys()
        pair.client.send_data(b"%d" % i)
        pair.server.send_data(b"%d" % i)
        pair.pump()
    assert received_data(pair.server_events) == b"01234"
    assert received_data(pair.client_events) == b"01234"
    # Each side's own update (a request) also answers the other's last request.
    assert [e.direction for e in pair.client_events if isinstance(e, KeysUpdated)] == [
        "receive",
        "send",
        "receive",
        "send",
        "receive",
    ]


def test_automatic_key_update_after_key_update_records() -> None:
    pair = connected_pair(client={"key_update_records": 2, "max_record_size": 512})
    pair.collect()
    data = os.urandom(512 * 7)
    pair.client.send_data(data)
    sent = drain_events(pair.client)
    # 7 records, a key update after every 2: 3 updates, each one record more.
    assert sent == [KeysUpdated("send")] * 3
    wire = pair.client.data_to_send()
    assert len(split_records(wire)) == 7 + 3
    pair.server.receive_data(wire, NOW)
    events = drain_events(pair.server)
    assert [e for e in events if isinstance(e, KeysUpdated)] == [KeysUpdated("receive")] * 3
    assert received_data(events) == data
    assert pair.server.data_to_send() == b""  # automatic updates do not ask the peer


def test_no_key_seals_more_than_key_update_records_tickets_included() -> None:
    """Records that are not data (session tickets, key updates) count too: a
    server that sent two tickets under its application key updates it when
    data brings the key's records to key_update_records, not 64 records later."""
    limit = 70
    pair = connected_pair(server={"key_update_records": limit, "tickets_per_handshake": 2})
    sealer = pair.server._sealer
    assert sealer is not None
    assert sealer.sequence == 2  # the tickets
    updates = 0
    for i in range(2 * limit):
        pair.server.send_data(b"%d" % i)
        assert sealer.sequence <= limit
        updates += drain_events(pair.server).count(KeysUpdated("send"))
    assert updates == 2
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    assert received_data(drain_events(pair.client)) == b"".join(b"%d" % i for i in range(2 * limit))


def test_automatic_key_update_after_key_update_bytes() -> None:
    pair = connected_pair(server={"key_update_bytes": 1000})
    data = os.urandom(3500)
    pair.server.send_data(data[:2500])
    pair.server.send_data(data[2500:])
    assert drain_events(pair.server) == [KeysUpdated("send")] * 3
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    events = drain_events(pair.client)
    assert event_types(events).count("KeysUpdated") == 3
    assert received_data(events) == data


# ----------------------------------------------------------------------- exporter


def test_export_keying_material_matches_and_is_per_session() -> None:
    a = connected_pair()
    b = connected_pair()
    ea_c = a.client.export_keying_material(b"EXPORTER-test", b"ctx", 48)
    ea_s = a.server.export_keying_material(b"EXPORTER-test", b"ctx", 48)
    assert ea_c == ea_s
    assert len(ea_c) == 48
    assert b.client.export_keying_material(b"EXPORTER-test", b"ctx", 48) != ea_c
    assert a.client.export_keying_material(b"EXPORTER-other", b"ctx", 48) != ea_c
    assert a.client.export_keying_material(b"EXPORTER-test", b"ctx2", 48) != ea_c
    assert a.client.export_keying_material(b"EXPORTER-test", b"ctx", 16) != ea_c[:16]
    assert len(a.server.export_keying_material(b"", b"", 8160)) == 8160
    # Key updates do not change the exporter.
    a.client.update_keys()
    a.pump()
    assert a.server.export_keying_material(b"EXPORTER-test", b"ctx", 48) == ea_c


def test_export_keying_material_argument_checks() -> None:
    pair = Pair.make()
    pair.start()
    with pytest.raises(ClosedError):
        pair.client.export_keying_material(b"l", b"c", 32)
    pair.pump()
    conn = pair.client
    with pytest.raises(ValueError, match="length"):
        conn.export_keying_material(b"l", b"c", 0)
    with pytest.raises(ValueError, match="length"):
        conn.export_keying_material(b"l", b"c", 8161)
    assert len(conn.export_keying_material(b"l" * 245, b"c", 32)) == 32
    with pytest.raises(ValueError, match="label must be at most 245 bytes, got 246"):
        conn.export_keying_material(b"l" * 246, b"c", 32)
    with pytest.raises(TypeError):
        conn.export_keying_material("l", b"c", 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        conn.export_keying_material(b"l", bytearray(b"c"), 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        conn.export_keying_material(b"l", b"c", 32.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        conn.export_keying_material(b"l", b"c", True)


# --------------------------------------------------------------------------- close


@pytest.mark.parametrize("closer", ["client", "server"])
def test_close_notify(closer: str) -> None:
    pair = connected_pair()
    pair.collect()
    pair.client_events.clear()
    pair.server_events.clear()
    me, peer = (pair.client, pair.server) if closer == "client" else (pair.server, pair.client)
    me.send_data(b"last words")
    me.close()
    assert me.is_closed
    assert me.error is None
    assert drain_events(me) == []
    me.close()  # idempotent
    peer.receive_data(me.data_to_send(), NOW)
    events = drain_events(peer)
    assert events == [
        DataReceived(b"last words"),
        AlertReceived(0, "close_notify"),
        ConnectionClosed(None),
    ]
    assert peer.is_closed
    assert peer.error is None
    # The peer answers with its own close_notify; the closed side ignores it.
    answer = peer.data_to_send()
    assert answer[:1] == bytes([RECORD_SEALED])
    me.receive_data(answer, NOW)
    assert drain_events(me) == []
    with pytest.raises(ClosedError):
        peer.send_data(b"x")


def test_a_local_close_during_the_handshake_reports_no_event() -> None:
    """docs/protocol.md, section 6: close() queues no ConnectionClosed, in the
    middle of the handshake too; the peer learns of it from the close_notify."""
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)  # the server's flight is out
    pair.client.close()
    assert pair.client.is_closed
    assert pair.client.error is None
    assert drain_events(pair.client) == []
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    events = drain_events(pair.server)
    assert_closed_with(pair.server, events, HandshakeError)
    assert [e.code for e in events if isinstance(e, AlertReceived)] == [0]
    pair.client.receive_data(pair.server.data_to_send(), NOW)  # ignored: closed
    assert drain_events(pair.client) == []


def test_close_before_start_sends_nothing() -> None:
    conn = Connection(Context(), "client")
    conn.close()
    assert conn.is_closed
    assert conn.data_to_send() == b""
    with pytest.raises(ClosedError):
        conn.start(NOW)


def test_eof_after_handshake_without_close_notify_is_connection_lost() -> None:
    pair = connected_pair()
    pair.collect()
    pair.client.receive_eof()
    events = drain_events(pair.client)
    assert event_types(events) == ["ConnectionClosed"]
    assert_closed_with(pair.client, events, ConnectionLost)
    assert pair.client.data_to_send() == b""  # nothing to say on a dead transport
    pair.client.receive_eof()  # again: nothing new
    assert drain_events(pair.client) == []


def test_eof_after_close_notify_is_clean() -> None:
    pair = connected_pair()
    pair.server.close()
    pair.pump()
    pair.client.receive_eof()
    assert pair.client.error is None
    assert [e for e in pair.client_events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(None)
    ]


def test_eof_during_handshake_is_a_handshake_error() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.receive_eof()
    events = drain_events(pair.client)
    assert_closed_with(pair.client, events, HandshakeError)


# --------------------------------------------------------------- client auth


def test_client_auth_off_sends_no_identity() -> None:
    client_ident = cached_identity("ed25519", 1)
    pair = connected_pair(client={"identity": client_ident})
    s = completed(pair.server_events).session
    assert s.peer_key is None
    assert s.trust is None


def test_client_auth_optional_without_identity() -> None:
    pair = connected_pair(server={"client_auth": "optional"})
    s = completed(pair.server_events).session
    assert s.peer_key is None
    assert s.trust is None


def test_client_auth_optional_with_identity() -> None:
    client_ident = cached_identity("ed25519", 1)
    pair = connected_pair(server={"client_auth": "optional"}, client={"identity": client_ident})
    s = completed(pair.server_events).session
    assert s.peer_key == client_ident.public
    assert s.peer_id == client_ident.peer_id
    assert s.trust is None  # a server without trust settings takes any client key


def test_client_auth_required_and_pinned() -> None:
    client_ident = cached_identity("ed25519", 1)
    pair = connected_pair(
        server={"client_auth": "required", "trusted_peers": [client_ident.public]},
        client={"identity": client_ident},
    )
    s = completed(pair.server_events).session
    assert (s.peer_key, s.trust) == (client_ident.public, "pinned")


def test_client_auth_required_without_identity_fails_on_both_sides() -> None:
    pair = Pair.make(server={"client_auth": "required"})
    pair.connect()
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert AlertReceived(116, "certificate_required") in pair.server_events
    assert "HandshakeCompleted" not in event_types(pair.client_events)
    assert "HandshakeCompleted" not in event_types(pair.server_events)


def test_client_auth_required_with_untrusted_client_fails_on_both_sides() -> None:
    client_ident = cached_identity("ed25519", 1)
    stranger = cached_identity("ed25519", 2)
    pair = Pair.make(
        server={"client_auth": "required", "trusted_peers": [stranger.public]},
        client={"identity": client_ident},
    )
    pair.connect()
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert AlertReceived(48, "untrusted_peer") in pair.client_events
    assert "HandshakeCompleted" not in event_types(pair.server_events)


# ----------------------------------------------------------------- identity kinds


@pytest.mark.parametrize("kind", KINDS)
def test_server_identity_kinds(kind: str) -> None:
    ident = cached_identity(kind)
    pair = connected_pair(server_identity=ident)
    s = completed(pair.client_events).session
    assert s.peer_key == ident.public
    assert s.peer_key.kind == kind
    assert s.trust == "pinned"
    if kind == "ed25519":
        assert s.peer_id.startswith("did:key:z6Mk")
    else:
        assert s.peer_id.startswith("nautilus:")


@pytest.mark.parametrize("kind", KINDS)
def test_client_identity_kinds(kind: str) -> None:
    client_ident = cached_identity(kind)
    pair = connected_pair(
        server={"client_auth": "required", "trusted_peers": [client_ident.peer_id]},
        client={"identity": client_ident},
    )
    s = completed(pair.server_events).session
    assert (s.peer_key, s.trust) == (client_ident.public, "pinned")


# -------------------------------------------------------------------- certificates


def _certified_server(
    issuer: Identity, name: str = "db.example", *, not_before: float, not_after: float
) -> Identity:
    ident = make_identity()
    cert = Certificate.issue(issuer, ident.public, name, not_before=not_before, not_after=not_after)
    return ident.with_certificate(cert)


def test_certificate_from_a_trusted_issuer() -> None:
    issuer = cached_identity("ed25519", 3)
    server = _certified_server(issuer, not_before=NOW - 60, not_after=NOW + 3600)
    pair = connected_pair(
        server_identity=server,
        pin=False,
        client={"trusted_issuers": [issuer.public]},
        server_name="db.example",
    )
    s = completed(pair.client_events).session
    assert (s.peer_key, s.trust) == (server.public, "certificate")


def test_certificate_from_an_ml_dsa_issuer_by_peer_id() -> None:
    issuer = cached_identity("ml-dsa-65")
    server = _certified_server(issuer, not_before=NOW - 60, not_after=NOW + 3600)
    pair = connected_pair(
        server_identity=server, pin=False, client={"trusted_issuers": [issuer.peer_id]}
    )
    assert completed(pair.client_events).session.trust == "certificate"


@pytest.mark.parametrize(
    ("window", "server_name", "trusted_issuer_n", "alert", "message", "client_cls"),
    [
        ((NOW - 7200, NOW - 3600), "db.example", 3, 45, "expired", CertificateExpired),
        ((NOW + 3600, NOW + 7200), "db.example", 3, 45, "not yet valid", CertificateExpired),
        ((NOW - 60, NOW + 3600), "db.example", 4, 48, "unknown issuer", AuthenticationFailed),
        (
            (NOW - 60, NOW + 3600),
            "other.example",
            3,
            48,
            "not for 'other.example'",
            AuthenticationFailed,
        ),
    ],
    ids=["expired", "not-yet-valid", "wrong-issuer", "wrong-name"],
)
def test_bad_certificate_fails_on_both_sides(
    window: tuple[float, float],
    server_name: str,
    trusted_issuer_n: int,
    alert: int,
    message: str,
    client_cls: type[Exception],
) -> None:
    issuer = cached_identity("ed25519", 3)
    server = _certified_server(issuer, not_before=window[0], not_after=window[1])
    trusted = cached_identity("ed25519", trusted_issuer_n)
    pair = Pair.make(
        server,
        pin=False,
        client={"trusted_issuers": [trusted.public]},
        server_name=server_name,
    )
    pair.connect()
    assert_closed_with(pair.client, pair.client_events, client_cls)
    assert message in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, client_cls)
    assert any(isinstance(e, AlertReceived) and e.code == alert for e in pair.server_events)


@pytest.mark.parametrize(
    ("subject", "server_name"),
    [
        ("\u212aexample.com", "kexample.com:443"),  # KELVIN SIGN, which str.lower() makes "k"
        ("\u212aEXAMPLE.COM", "kexample.com:443"),
        ("\u00c9xample.com", "\u00e9xample.com:443"),  # not ASCII: compared exactly
    ],
    ids=["kelvin-sign", "kelvin-sign-upper", "non-ascii-upper"],
)
def test_a_certificate_for_another_name_is_refused_even_if_unicode_lower_makes_it_the_host(
    subject: str, server_name: str
) -> None:
    """A certificate for a host is valid for "host:port" in any ASCII case, and
    in no other case mapping. The comparison used str.lower(), which also maps
    KELVIN SIGN (U+212A) to "k": a server holding a certificate that a trusted
    issuer made for the distinct name "\u212aexample.com" was accepted, as
    "certificate", by a client dialling kexample.com:443."""
    issuer = cached_identity("ed25519", 3)
    server = _certified_server(issuer, subject, not_before=NOW - 60, not_after=NOW + 3600)
    pair = Pair.make(
        server, pin=False, client={"trusted_issuers": [issuer.public]}, server_name=server_name
    )
    pair.connect()
    assert pair.client.session is None
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert f"not for {server_name!r}" in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert any(isinstance(e, AlertReceived) and e.code == 48 for e in pair.server_events)
    # ASCII case still does not matter.
    ascii_name = "KExample.COM:443"
    ok = connected_pair(
        server_identity=_certified_server(
            issuer, "kexample.com", not_before=NOW - 60, not_after=NOW + 3600
        ),
        pin=False,
        client={"trusted_issuers": [issuer.public]},
        server_name=ascii_name,
    )
    assert completed(ok.client_events).session.trust == "certificate"


def test_certificate_is_ignored_without_trusted_issuers() -> None:
    issuer = cached_identity("ed25519", 3)
    server = _certified_server(issuer, not_before=NOW - 60, not_after=NOW + 3600)
    pair = Pair.make(server, pin=False, client={"trusted_peers": [cached_identity().public]})
    pair.connect()
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert "not trusted" in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)


# ---------------------------------------------------------------- known peers


def test_known_peers_trust_on_first_use(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "known_peers")
    server = make_identity()
    opts = {"known_peers_file": path}

    first = connected_pair(server_identity=server, pin=False, client=opts, server_name="db:5432")
    assert completed(first.client_events).session.trust == "first-use"
    assert os.path.exists(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with open(path) as fh:
        text = fh.read()
    assert f"db:5432 {server.peer_id} " in text

    again = connected_pair(server_identity=server, pin=False, client=opts, server_name="db:5432")
    assert completed(again.client_events).session.trust == "known-peers"

    # Another name is another first use.
    other = connected_pair(server_identity=server, pin=False, client=opts, server_name="db2:5432")
    assert completed(other.client_events).session.trust == "first-use"

    impostor = Pair.make(make_identity(), pin=False, client=opts, server_name="db:5432")
    impostor.connect()
    assert_closed_with(impostor.client, impostor.client_events, AuthenticationFailed)
    message = str(impostor.client.error)
    assert "'db:5432'" in message
    assert "changed" in message
    assert "line 2" in message
    assert_closed_with(impostor.server, impostor.server_events, AuthenticationFailed)
    with open(path) as fh:
        lines = [ln for ln in fh.read().splitlines() if ln and not ln.startswith("#")]
    # The impostor was not recorded: one line per name, both for the real key.
    assert [ln.split()[:2] for ln in lines] == [
        ["db:5432", server.peer_id],
        ["db2:5432", server.peer_id],
    ]


def test_known_peers_needs_a_server_name(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "known_peers")
    pair = Pair.make(pin=False, client={"known_peers_file": path})
    pair.connect()
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert "name" in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert not os.path.exists(path)


def test_no_trust_at_all_fails() -> None:
    pair = Pair.make(pin=False)
    pair.connect()
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert "no trust configured" in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)


# -------------------------------------------------------------------- API misuse


def test_constructor_argument_checks() -> None:
    ident = cached_identity()
    with pytest.raises(TypeError):
        Connection(object(), "client")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="role"):
        Connection(Context(), "peer")
    with pytest.raises(ValueError, match="identity"):
        Connection(Context(), "server")
    with pytest.raises(ValueError, match="clients only"):
        Connection(Context(ident), "server", expected_peer=ident.public)
    with pytest.raises(ValueError, match="clients only"):
        Connection(Context(ident), "server", server_name="x")
    with pytest.raises(TypeError):
        Connection(Context(), "client", server_name=b"host")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Connection(Context(), "client", expected_peer=b"key")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        Connection(Context(), "client", expected_peer="did:key:not-a-key")


def test_a_server_name_with_control_characters_is_refused() -> None:
    """A server_name is a name (the known-peers file's, a certificate's): a
    control or format character in it (NUL, a newline, a tab, DEL, C1, a
    bidirectional mark, a lone surrogate, a line separator) is refused when
    the connection is made, naming the parameter and the character; spaces,
    which a certificate's name may hold, are not."""
    for name in ("srv\0:1", "srv\n:1", "srv:1\r", "a\tb", "a\x7fb", "a\x85b", "a\u200eb",
                 "a\u2028b", "a\ud800b"):  # fmt: skip
        char = next(c for c in name if not c.isprintable())
        with pytest.raises(ValueError, match=rf"^server_name .* U\+{ord(char):04X} at index"):
            Connection(Context(), "client", server_name=name)
    for name in ("Acme Billing", "a\u00a0b", "ünïcode.example:443", "[::1]:443"):
        Connection(Context(), "client", server_name=name)


def test_calls_before_start() -> None:
    conn = Connection(Context(), "client")
    assert conn.state is State.CLIENT_START
    assert conn.get_timer() is None
    assert conn.data_to_send() == b""
    with pytest.raises(ClosedError, match="start"):
        conn.receive_data(b"\x16\x00\x00\x01\x00", NOW)
    with pytest.raises(ClosedError):
        conn.update_keys()
    assert conn.next_event() is None


def test_a_refused_start_leaves_the_clock_alone() -> None:
    """start() refused (already started) changes nothing, the time it was given
    included: a later send_data(), which takes no time, must not see the keys
    as older than rekey_interval."""
    pair = Pair.make(client={"rekey_interval": 60.0}, server={"rekey_interval": 60.0})
    pair.handshake()
    pair.client.send_data(b"before")  # (a key that sealed nothing is not renewed)
    pair.pump()
    timer = pair.client.get_timer()
    with pytest.raises(ClosedError):
        pair.client.start(NOW + 1e6)
    assert pair.client.get_timer() == timer
    pair.client.send_data(b"after")
    pair.pump()
    assert pair.client.stats.key_updates == 0
    assert pair.server_events[-1] == DataReceived(b"after")


def test_bad_argument_types() -> None:
    pair = Pair.make()
    with pytest.raises(TypeError):
        pair.client.start("now")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pair.client.start(True)
    assert pair.client.state is State.CLIENT_START  # a bad call changes nothing
    pair.start()
    with pytest.raises(ClosedError):
        pair.client.start(NOW)
    with pytest.raises(TypeError):
        pair.client.receive_data("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pair.client.receive_data(b"", now="later")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pair.client.send_data("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pair.client.send_data(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pair.client.handle_timer(None)  # type: ignore[arg-type]
    with pytest.raises(ClosedError):
        pair.client.update_keys()
    pair.pump()
    assert pair.client.handshake_complete


def test_send_on_closed_raises_closed_error_chained_to_the_failure() -> None:
    pair = Pair.make(pin=False)
    pair.connect()
    assert pair.client.is_closed
    with pytest.raises(ClosedError) as info:
        pair.client.send_data(b"x")
    assert isinstance(info.value.__cause__, AuthenticationFailed)
    with pytest.raises(ClosedError):
        pair.client.update_keys()
    # Receiving on a closed connection is ignored rather than an error.
    pair.client.receive_data(b"\x17\x00\x00\x05hello", NOW)
    assert drain_events(pair.client) == []

    done = connected_pair()
    done.client.close()
    with pytest.raises(ClosedError):
        done.client.send_data(b"x")
    with pytest.raises(ClosedError):
        done.client.update_keys()


def test_repr_and_role() -> None:
    conn = Connection(Context(), "client")
    assert conn.role == "client"
    assert "client" in repr(conn)
    assert "client_start" in repr(conn)
    assert pump(conn, Connection(Context(cached_identity()), "server")) == 0


def test_server_cannot_export_before_the_client_finished() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    assert not pair.server.handshake_complete
    with pytest.raises(ClosedError):
        pair.server.export_keying_material(b"label", b"", 32)


def test_no_export_after_a_failed_handshake() -> None:
    pair = Pair.make(server={"client_auth": "required"})
    pair.connect()
    assert isinstance(pair.server.error, AuthenticationFailed)
    with pytest.raises(ClosedError):
        pair.server.export_keying_material(b"label", b"", 32)


def test_simultaneous_key_updates_cross_cleanly() -> None:
    pair = connected_pair()
    pair.collect()
    pair.client_events.clear()
    pair.server_events.clear()
    pair.client.update_keys()
    pair.server.update_keys()
    pair.client.send_data(b"from client")
    pair.server.send_data(b"from server")
    pair.pump()
    for events, data in (
        (pair.client_events, b"from server"),
        (pair.server_events, b"from client"),
    ):
        directions = [e.direction for e in events if isinstance(e, KeysUpdated)]
        assert sorted(directions) == ["receive", "send"]  # each sent its data before the other's
        assert received_data(events) == data
    pair.client.send_data(b"again")  # now the answers, before the data
    pair.server.send_data(b"again")
    pair.pump()
    for events in (pair.client_events, pair.server_events):
        directions = [e.direction for e in events if isinstance(e, KeysUpdated)]
        assert sorted(directions) == ["receive", "receive", "send", "send"]
        assert received_data(events).endswith(b"again")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_now_is_refused(bad: float) -> None:
    server = Connection(Context(cached_identity()), "server")
    with pytest.raises(ValueError, match="now"):
        server.start(bad)


def test_nan_now_does_not_let_a_stale_hello_through() -> None:
    pair = Pair.make()
    pair.client.start(NOW - 10**6)
    pair.server.start(NOW)
    try:
        pair.server.receive_data(pair.client.data_to_send(), math.nan)
    except ValueError:
        return  # refusing the bad time is fine too
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)


# ------------------------------------------------------- the time, and its range


@pytest.mark.parametrize("bad", [-1.0, -1e-9, 1.9e16, 1e300, 10**400, -(10**400), math.nan])
def test_now_out_of_range_is_refused_before_any_change(bad: float) -> None:
    """The ClientHello carries ``now`` in milliseconds as a u64: a time it cannot
    carry is a ValueError naming now, whatever the call, and nothing changes."""
    client = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    with pytest.raises(ValueError, match="now"):
        client.start(bad)
    assert client.state is State.CLIENT_START
    assert client.get_timer() is None
    assert client.data_to_send() == b""
    pair = connected_pair()
    for call in (
        lambda: pair.client.receive_data(b"", bad),
        lambda: pair.client.handle_timer(bad),
    ):
        with pytest.raises(ValueError, match="now"):
            call()
    assert pair.client.handshake_complete
    assert pair.client.data_to_send() == b""
    client.start(NOW)  # the refused call left it ready to start
    assert client.state is State.CLIENT_WAIT_HELLO


@pytest.mark.parametrize("edge", [0, 0.0, MAX_NOW, int(MAX_NOW)])
def test_now_at_the_edges_of_its_range(edge: float) -> None:
    pair = Pair.make(now=edge)
    pair.handshake()  # the hello's u64 timestamp carries both ends
    assert pair.client.get_timer() is None


def test_rekey_timer_when_the_handshake_completed_at_time_zero() -> None:
    pair = Pair.make(now=0.0, server={"rekey_interval": 5.0}, client={"rekey_interval": 5.0})
    pair.handshake()
    assert pair.client.get_timer() == 5.0  # 0.0 is a time, not "never"
    pair.client.send_data(b"x")  # (keys that sealed nothing are not ratcheted)
    pair.client.handle_timer(5.0)
    assert KeysUpdated("send") in drain_events(pair.client)
    assert pair.client.get_timer() == 10.0


# ------------------------------------------------------ receive_data's buffers


@pytest.mark.parametrize("code", ["H", "h"])
def test_receive_data_reads_the_bytes_of_a_memoryview_of_any_format(code: str) -> None:
    """len() of such a view counts items, not bytes: what counts is its bytes.
    (Two-byte items: the first, 0x17 0x00, reads as 0x17, the sealed type.)"""
    pair = connected_pair()
    pair.collect()
    pair.server.send_data(b"A" * 19)
    pair.server.send_data(b"B" * 19)
    wire = pair.server.data_to_send()
    assert len(wire) == 80  # two records of 40 bytes
    arr = array.array(code)
    arr.frombytes(wire[:56])  # the first record and 16 bytes of the second: 56 bytes
    pair.client.receive_data(memoryview(arr), NOW)
    assert received_data(drain_events(pair.client)) == b"A" * 19
    pair.client.receive_data(wire[56:], NOW)  # the rest of the second record
    events = drain_events(pair.client)
    assert received_data(events) == b"B" * 19
    assert pair.client.handshake_complete


def test_receive_data_reads_a_multidimensional_view_and_a_cut_record() -> None:
    pair = connected_pair()
    pair.collect()
    pair.server.send_data(b"A" * 19)
    pair.server.send_data(b"B" * 19)
    wire = pair.server.data_to_send()
    arr = array.array("H")
    arr.frombytes(wire[:60])  # a record and a half: 30 items
    pair.client.receive_data(memoryview(arr), NOW)
    rest = memoryview(bytearray(wire[60:])).cast("B", (4, 5))  # the other half, 2-D
    pair.client.receive_data(rest, NOW)
    assert received_data(drain_events(pair.client)) == b"A" * 19 + b"B" * 19
    assert pair.client.handshake_complete
    # During the handshake too (the buffered path).
    hs = Pair.make()
    hs.start()
    hello = hs.client.data_to_send()
    arr = array.array("B", hello)  # format "B", but not a bytes object
    view = memoryview(arr).cast("c")  # itemsize 1, yet not unsigned bytes
    hs.server.receive_data(view, NOW)
    hs.pump()
    assert hs.client.handshake_complete
    assert hs.server.handshake_complete


@pytest.mark.parametrize("connected", [False, True])
def test_receive_data_refuses_a_non_contiguous_memoryview(connected: bool) -> None:
    pair = Pair.make()
    if connected:
        pair.handshake()
        pair.server.send_data(b"hello")
    else:
        pair.start()
    wire = pair.server.data_to_send() if connected else pair.client.data_to_send()
    receiver = pair.client if connected else pair.server
    state = receiver.state
    spread = bytes(b for x in wire for b in (x, 0))
    with pytest.raises(TypeError, match="data must be a contiguous buffer"):
        receiver.receive_data(memoryview(spread)[::2], NOW)
    assert receiver.state is state  # nothing was read
    receiver.receive_data(wire, NOW)  # the same bytes, contiguous
    if connected:
        assert received_data(drain_events(pair.client)) == b"hello"
    else:
        pair.pump()
        assert pair.client.handshake_complete


# ---------------------------------------------------------------------- secrets


def test_a_key_update_drops_the_secret_it_replaces() -> None:
    """Forward secrecy across key updates: neither side keeps generation 0 of the
    direction that was updated, so it cannot be derived again."""
    pair = connected_pair()
    client, server = pair.client, pair.server
    assert client._keys is not None
    assert server._keys is not None
    gen0 = client._keys.client_app
    server_gen0 = server._keys.server_app
    assert server._keys.client_app == gen0
    for _ in range(3):
        client.update_keys(request_peer=False)
        pair.pump()
    gen3 = gen0
    for _ in range(3):
        gen3 = ks.next_traffic_secret(gen3)
    for conn in (client, server):
        keys = conn._keys
        assert keys is not None
        assert keys.client_app == gen3  # the current generation only
        assert gen0 not in _held_bytes(conn)
    assert client._keys.server_app == server._keys.server_app == server_gen0  # not updated
    client.send_data(b"after")
    pair.pump()
    assert received_data(pair.server_events).endswith(b"after")


def _held_bytes(conn: Connection) -> list[object]:
    """Every value a Connection and its key schedules hold (slots, one level down)."""
    values: list[object] = []
    for obj in (conn, conn._keys, conn._psk_keys):
        if obj is None:
            continue
        for name in type(obj).__slots__:
            if hasattr(obj, name):
                values.append(getattr(obj, name))
    return values


def test_a_local_failure_while_receiving_is_an_internal_error_not_a_clean_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Nautilus error raised inside receive_data by this side (OpenSSL
    failing to seal a ticket, say) fails the connection with internal_error:
    it does not escape, and the peer does not see a clean end."""
    pair = Pair.make(server={"tickets_per_handshake": 1})

    def broken_seal(*_args: object) -> bytes:
        raise CryptoFailure("encrypt: OpenSSL failure")

    monkeypatch.setattr(pair.server_ctx.ticket_keys, "seal", broken_seal)
    pair.connect()
    assert pair.server.is_closed
    assert isinstance(pair.server.error, CryptoFailure)
    assert pair.client.is_closed
    assert "internal_error" in str(pair.client.error)


@pytest.mark.parametrize("changed", ["client", "server"])
def test_a_record_size_set_during_a_handshake_is_for_later_connections(changed: str) -> None:
    """A connection keeps the record size it announced: the context's
    max_record_size lowered (by another thread) while its handshake is in
    flight applies to later connections only."""
    pair = Pair.make()
    pair.client.start(NOW)
    pair.server.start(NOW)
    pair.server.receive_data(pair.client.data_to_send(), NOW)  # hello: 16384
    ctx = pair.client_ctx if changed == "client" else pair.server_ctx
    ctx.max_record_size = 512
    pair.pump()
    assert pair.client.handshake_complete
    assert pair.server.handshake_complete
    sender, receiver = (
        (pair.server, pair.client) if changed == "client" else (pair.client, pair.server)
    )
    sender.send_data(b"x" * 8000)
    receiver.receive_data(sender.data_to_send(), NOW)
    got = [e for e in drain_events(receiver) if isinstance(e, DataReceived)]
    assert b"".join(bytes(e.data) for e in got) == b"x" * 8000
    assert not receiver.is_closed
    later = Connection(ctx, changed)
    assert later._record_size == 512


@pytest.mark.parametrize("ending", ["close", "peer_close", "collected"])
def test_closing_wipes_decrypted_data(ending: str) -> None:
    """What was decrypted (the scratch buffer, a partial message) is zeroed
    when the connection closes, when the scratch buffer is replaced, and when
    a connection never closed is garbage-collected."""
    pair = Pair.make()
    pair.handshake()
    client, server = pair.client, pair.server
    server.send_data(b"plain secret " * 100)
    pair.pump()
    first = client._scratch
    assert b"plain secret" in first
    server.send_data(b"larger secret " * 5000)  # a larger scratch buffer replaces it
    pair.pump()
    assert b"plain secret" not in first
    server.send_messages([b"whole message"])
    server._seal_application((100).to_bytes(4, "big") + b"partial message", ContentType.MESSAGE)
    pair.pump()
    scratch, partial = client._scratch, client._messages
    assert b"larger secret" in scratch
    assert b"partial message" in partial
    if ending == "close":
        client.close()
        assert client.is_closed
    elif ending == "peer_close":
        server.close()
        pair.pump()
        assert client.is_closed
    else:
        del pair, client, server
        gc.collect()
    assert b"larger secret" not in scratch
    assert b"message" not in scratch
    assert b"partial message" not in partial


@pytest.mark.parametrize("ending", ["close", "peer_close", "failure"])
def test_closing_drops_every_secret(ending: str) -> None:
    pair = Pair.make(server={"tickets_per_handshake": 1}, server_name="srv:1")
    pair.handshake()
    client = pair.client
    keys = client._keys
    assert keys is not None
    # While connected the client keeps what it still needs: its traffic
    # secrets, the exporter, and the resumption secret (a NewSessionTicket may
    # still come).
    assert all(len(s) == 32 for s in (keys.client_app, keys.server_app, keys.exporter))
    assert len(keys.resumption) == 32
    client.export_keying_material(b"l", b"", 16)
    secrets = [keys.client_app, keys.server_app, keys.exporter, keys.resumption]
    if ending == "close":
        client.close()
    elif ending == "peer_close":
        pair.server.close()
        pair.pump()
    else:
        client.receive_data(b"\x17\x00\x00\x20" + bytes(32), NOW)  # a forged record
    assert client.is_closed
    assert client._keys is None
    assert client._psk_keys is None
    assert client._ticket is None
    assert (keys.client_app, keys.server_app, keys.exporter, keys.resumption) == (b"",) * 4
    held = _held_bytes(client)
    assert not any(s in held for s in secrets)
    with pytest.raises(ClosedError, match="until the connection closes"):
        client.export_keying_material(b"l", b"", 16)


def test_a_client_still_stores_tickets_that_arrive_after_the_handshake() -> None:
    """With client authentication the server's tickets follow the client's
    Finished: the client, connected by then, still has its resumption secret."""
    pair = Pair.make(
        server={"tickets_per_handshake": 2, "client_auth": "optional"}, server_name="srv:1"
    )
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    assert pair.client.handshake_complete  # before any ticket
    pair.pump()
    cache = pair.client_ctx.session_cache
    key = pair.client._cache_key()
    assert key is not None
    assert cache.take(key, NOW) is not None
    assert cache.take(key, NOW) is not None


def test_a_cached_ticket_too_large_for_the_hello_is_left_unused() -> None:
    """A ticket may be 65535 bytes, its offer then does not fit in a ClientHello:
    the client goes without it (a full handshake) instead of failing in start()."""
    pair = Pair.make(server={"tickets_per_handshake": 1}, server_name="srv:1")
    pair.handshake()
    cache = pair.client_ctx.session_cache
    key = pair.client._cache_key()
    assert key is not None
    ticket = cache.take(key, NOW)
    assert ticket is not None
    cache.store(key, dataclasses.replace(ticket, ticket=bytes(65535)))
    again = Pair(pair.client_ctx, pair.server_ctx, {"server_name": "srv:1"})
    again.handshake()
    assert again.client.session is not None
    assert not again.client.session.resumed


@pytest.mark.parametrize("client_auth", ["off", "optional"])  # tickets early / after
def test_a_server_drops_its_resumption_secret_once_its_tickets_are_made(
    client_auth: str,
) -> None:
    pair = Pair.make(server={"tickets_per_handshake": 1, "client_auth": client_auth})
    pair.handshake()
    keys = pair.server._keys
    assert keys is not None
    assert keys.resumption == b""
    assert len(keys.exporter) == 32  # what it still needs stays
    assert pair.server.export_keying_material(b"l", b"", 16) == pair.client.export_keying_material(
        b"l", b"", 16
    )


def test_the_timer_never_names_a_time_handle_timer_refuses() -> None:
    """A handshake started just below MAX_NOW: its deadline (now +
    handshake_timeout) is clamped, so handle_timer(get_timer()) fires it
    instead of raising ValueError (that handshake could never time out)."""
    conn = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    conn.start(MAX_NOW - 1)
    when = conn.get_timer()
    assert when == MAX_NOW
    conn.handle_timer(when)
    assert isinstance(conn.error, HandshakeTimeout)


def test_receive_eof_before_start_is_refused_as_receive_data_is() -> None:
    conn = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    with pytest.raises(ClosedError, match=r"call start\(now\) before receive_eof"):
        conn.receive_eof()
    assert conn.error is None
    conn.start(NOW)  # still usable
    assert conn.data_to_send()
