"""Property tests of the sans-IO Connection: chunking does not matter, random
input never raises, and a single flipped bit never yields a handshake with
mismatched keys."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    NOW,
    Pair,
    cached_identity,
    drain_events,
    handshake_message,
    normalized,
    plain_record,
    pump,
)

from nautilus import (
    ConnectionClosed,
    Context,
    HandshakeCompleted,
    HandshakeError,
    NautilusError,
)
from nautilus.protocol.connection import Connection
from nautilus.protocol.messages import RECORD_ALERT_PLAIN, RECORD_HANDSHAKE_PLAIN, MsgType

PROPS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PAYLOAD_A = bytes(range(256)) * 160  # 40 KiB: three records
PAYLOAD_B = b"server says hello" * 50
PAYLOAD_C = b"after the key update"


def _chunked(data: bytes, rng: random.Random, max_piece: int) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, max_piece)
        pieces.append(data[pos : pos + n])
        pos += n
    return pieces


def _pump_chunked(a: Connection, b: Connection, rng: random.Random | None, max_piece: int) -> None:
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if not data:
                continue
            moved = True
            pieces = [data] if rng is None else _chunked(data, rng, max_piece)
            for piece in pieces:
                dst.receive_data(piece, NOW)
        if not moved:
            return


def _scenario(rng: random.Random | None, max_piece: int = 1) -> tuple[list, list]:
    pair = Pair.make()
    pair.start()
    pair.client.send_data(b"early")
    _pump_chunked(pair.client, pair.server, rng, max_piece)
    pair.client.send_data(PAYLOAD_A)
    pair.server.send_data(PAYLOAD_B)
    pair.client.update_keys()
    pair.client.send_data(PAYLOAD_C)
    _pump_chunked(pair.client, pair.server, rng, max_piece)
    pair.server.update_keys(request_peer=False)
    pair.server.send_data(PAYLOAD_C)
    _pump_chunked(pair.client, pair.server, rng, max_piece)
    pair.client.close()
    _pump_chunked(pair.client, pair.server, rng, max_piece)
    return normalized(drain_events(pair.client)), normalized(drain_events(pair.server))


REFERENCE = _scenario(None)


def test_reference_scenario_is_what_we_think() -> None:
    client, server = REFERENCE
    # The server's own update (not requested) also answers the client's
    # request, which is answered before the server's next data.
    assert [name for name, _ in client] == [
        "HandshakeCompleted",
        "KeysUpdated",
        "DataReceived",
        "KeysUpdated",
        "DataReceived",
    ]
    assert client[2][1] == PAYLOAD_B
    assert client[4][1] == PAYLOAD_C
    assert [name for name, _ in server] == [
        "HandshakeCompleted",
        "DataReceived",
        "KeysUpdated",
        "DataReceived",
        "KeysUpdated",
        "AlertReceived",
        "ConnectionClosed",
    ]
    assert server[1][1] == b"early" + PAYLOAD_A
    assert server[3][1] == PAYLOAD_C
    assert server[-1] == ("ConnectionClosed", None)


@PROPS
@given(seed=st.integers(0, 2**32 - 1), max_piece=st.sampled_from([1, 3, 17, 200, 5000, 70000]))
def test_any_chunking_gives_the_same_events(seed: int, max_piece: int) -> None:
    assert _scenario(random.Random(seed), max_piece) == REFERENCE


def _record_fuzz() -> st.SearchStrategy[bytes]:
    """Random bytes, and random bodies inside well-formed plaintext framing."""
    framed = st.builds(
        lambda t, body: plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(t, body)),
        st.sampled_from(list(MsgType)),
        st.binary(max_size=300),
    )
    alert = st.builds(
        lambda body: plain_record(RECORD_ALERT_PLAIN, body), st.binary(min_size=1, max_size=3)
    )
    raw = st.binary(max_size=600)
    sealed = st.builds(
        lambda body: b"\x17" + len(body).to_bytes(3, "big") + body, st.binary(max_size=300)
    )
    return st.one_of(raw, framed, alert, sealed)


def _check_no_raise_and_named_error(conn: Connection, inputs: list[bytes]) -> None:
    for data in inputs:
        conn.receive_data(data, NOW)  # must never raise
    events = drain_events(conn)
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    if conn.is_closed:
        assert len(closes) == 1
        assert events[-1] is closes[0]
        assert isinstance(closes[0].error, NautilusError)
        assert conn.error is closes[0].error
    else:
        assert closes == []
    assert not any(isinstance(e, HandshakeCompleted) for e in events)


@PROPS
@given(inputs=st.lists(_record_fuzz(), min_size=1, max_size=4))
def test_random_input_to_a_server_never_raises(inputs: list[bytes]) -> None:
    server = Connection(Context(cached_identity()), "server")
    server.start(NOW)
    _check_no_raise_and_named_error(server, inputs)


@PROPS
@given(inputs=st.lists(_record_fuzz(), min_size=1, max_size=4))
def test_random_input_to_a_client_never_raises(inputs: list[bytes]) -> None:
    client = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    client.start(NOW)
    client.data_to_send()
    _check_no_raise_and_named_error(client, inputs)


@PROPS
@given(inputs=st.lists(_record_fuzz(), min_size=1, max_size=3))
def test_random_input_to_a_connected_side_never_raises(inputs: list[bytes]) -> None:
    pair = Pair.make()
    pair.handshake()
    for data in inputs:
        pair.server.receive_data(data, NOW)
    events = drain_events(pair.server)
    if pair.server.is_closed:
        assert isinstance(events[-1], ConnectionClosed)
        assert isinstance(events[-1].error, NautilusError)
    # Nothing forged is ever delivered as data.
    assert not any(type(e).__name__ == "DataReceived" for e in events)


@PROPS
@given(flight=st.integers(0, 2), where=st.floats(0, 1, exclude_max=True))
def test_a_flipped_bit_in_the_handshake_never_yields_mismatched_keys(
    flight: int, where: float
) -> None:
    pair = Pair.make()
    count = [0]

    def flip(src: Connection, dst: Connection, data: bytes) -> bytes:
        i = count[0]
        count[0] += 1
        if i != flight:
            return data
        bit = int(where * len(data) * 8)
        out = bytearray(data)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)

    pair.start()
    pump(pair.client, pair.server, intercept=flip)
    # A flip in a length field can leave a side waiting: the timer ends that.
    pair.client.handle_timer(NOW + 60)
    pair.server.handle_timer(NOW + 60)
    pump(pair.client, pair.server)
    pair.collect()

    if pair.client.session is not None and pair.server.session is not None:
        label = b"property"
        assert pair.client.session.peer_key == cached_identity().public
        if not (pair.client.is_closed or pair.server.is_closed):
            assert pair.client.export_keying_material(
                label, b"", 32
            ) == pair.server.export_keying_material(label, b"", 32)
    errors = [
        e.error for e in pair.client_events + pair.server_events if isinstance(e, ConnectionClosed)
    ]
    assert any(isinstance(err, HandshakeError) for err in errors), errors
    assert all(isinstance(err, NautilusError) for err in errors)
    assert not (pair.client.handshake_complete and pair.server.handshake_complete)


def _real_client_hello_body() -> bytes:
    client = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    client.start(NOW)
    raw = client.data_to_send()
    return raw[8:]  # record header (4) and handshake header (4)


@PROPS
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_a_mutated_client_hello_never_raises(
    edits: list[tuple[float, int, bool]], cut: float | None
) -> None:
    body = bytearray(_real_client_hello_body())
    for where, value, insert in edits:
        i = int(where * len(body))
        if insert:
            body.insert(i, value)
        else:
            body[i] = value
    if cut is not None:
        del body[int(cut * len(body)) :]
    server = Connection(Context(cached_identity()), "server")
    server.start(NOW)
    message = handshake_message(MsgType.CLIENT_HELLO, bytes(body))
    records = [message[i : i + 16384] for i in range(0, len(message), 16384)]
    _check_no_raise_and_named_error(
        server, [plain_record(RECORD_HANDSHAKE_PLAIN, r) for r in records]
    )
