"""Attacks on the in-memory protocol: men in the middle, downgrades, wrong or
untrusted peers, failed negotiation, stale and replayed hellos, damaged records,
malformed input and timeouts. Each test checks both sides: the side that
detects the problem, and the peer after the alert has been carried across."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from struct import Struct

import pytest
from protocol_helpers import (
    NOW,
    Pair,
    assert_closed_with,
    cached_identity,
    drain_events,
    event_types,
    handshake_message,
    patch_method,
    plain_record,
    pump,
    received_data,
    rewrite_plain_handshake,
    rewrite_sent,
    split_plain_handshake,
    split_records,
)

from nautilus import (
    AlertReceived,
    AuthenticationFailed,
    CertificateExpired,
    ConnectionClosed,
    ConnectionLost,
    Context,
    CustomProtocolStep,
    Handshake,
    HandshakeError,
    HandshakeTimeout,
    IntegrityError,
    KeyAgreementFailed,
    NegotiationFailed,
    ProtocolViolation,
    RecordTimeout,
    State,
)
from nautilus.context import CIPHER_IDS, GROUP_IDS
from nautilus.kem import GROUPS
from nautilus.protocol import keyschedule as ks
from nautilus.protocol.codec import DecodeError, Reader
from nautilus.protocol.connection import _CLIENT_VERIFY, MAX_PEER_KEY_UPDATES, Connection
from nautilus.protocol.messages import (
    BINDER_SIZE,
    MESSAGE_TYPES,
    RECORD_ALERT_PLAIN,
    RECORD_HANDSHAKE_PLAIN,
    RECORD_SEALED,
    AlertCode,
    ClientAuth,
    ClientHello,
    EncryptedExtensions,
    Finished,
    HandshakeBuffer,
    HelloRetry,
    IdentityMsg,
    Message,
    MsgType,
    NewSessionTicket,
    PskMode,
    PskOffer,
    ServerHello,
    StepData,
    StepOffer,
    Verify,
    frame,
)
from nautilus.record import AEAD, DEFAULT_RECORD_LIMIT, ContentType, RecordOpener, RecordSealer


def alert_codes(events: list[object]) -> list[int]:
    return [e.code for e in events if isinstance(e, AlertReceived)]


def both_fail(pair: Pair, client_cls: type, server_cls: type) -> None:
    assert_closed_with(pair.client, pair.client_events, client_cls)
    assert_closed_with(pair.server, pair.server_events, server_cls)
    assert "HandshakeCompleted" not in event_types(pair.client_events)
    assert "HandshakeCompleted" not in event_types(pair.server_events)


def client_hello_editor(
    edit: Callable[[ClientHello], ClientHello],
) -> Callable[[Connection, Connection, bytes], bytes]:
    """An intercept that rewrites every plaintext ClientHello the client sends."""

    def intercept(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "client" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        return rewrite_plain_handshake(
            data,
            lambda _t, body: edit(ClientHello.decode_body(body)).encode_body(),
            only=MsgType.CLIENT_HELLO,
        )

    return intercept


# ------------------------------------------------------------ men in the middle


@pytest.mark.parametrize("group", ["x25519-mlkem768", "mlkem1024", "x25519"])
def test_mitm_substitutes_the_kem_share_in_server_hello(group: str) -> None:
    hello: list[ClientHello] = []

    def mitm(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role == "client" and data[0] == RECORD_HANDSHAKE_PLAIN:
            (msg,), _ = split_plain_handshake(data)
            hello.append(ClientHello.decode_body(msg[1]))
            return data
        if src.role == "server" and data[0] == RECORD_HANDSHAKE_PLAIN:
            # A valid ciphertext for the client's key, whose secret the MITM knows.
            pub = GROUPS[group].PUBLIC_KEY_CLASS.from_public_bytes(hello[0].share)
            _secret, ours = pub.encapsulate()

            def swap(_t: MsgType, body: bytes) -> bytes:
                sh = ServerHello.decode_body(body)
                assert len(ours) == len(sh.share)
                assert ours != sh.share
                return dataclasses.replace(sh, share=ours).encode_body()

            return rewrite_plain_handshake(data, swap, only=MsgType.SERVER_HELLO)
        return data

    opts = {"groups": [group]}
    pair = Pair.make(server=opts, client=opts)
    pair.connect(mitm)
    both_fail(pair, KeyAgreementFailed, KeyAgreementFailed)
    assert alert_codes(pair.server_events) == []  # its alert was unreadable: other keys


def test_mitm_with_its_own_identity_is_not_trusted() -> None:
    real = cached_identity()
    mitm_ident = cached_identity("ed25519", 7)
    client = Connection(Context(trusted_peers=[real.public]), "client")
    mitm_server = Connection(Context(mitm_ident), "server")
    mitm_client = Connection(Context(trusted_peers=[real.public]), "client")
    server = Connection(Context(real), "server")
    for conn in (client, mitm_server, mitm_client, server):
        conn.start(NOW)
    pump(client, mitm_server)
    pump(mitm_client, server)
    c_events = drain_events(client)
    assert_closed_with(client, c_events, AuthenticationFailed)
    assert "not trusted" in str(client.error)
    m_events = drain_events(mitm_server)
    assert_closed_with(mitm_server, m_events, AuthenticationFailed)
    assert alert_codes(m_events) == [48]  # untrusted_peer
    assert not server.is_closed  # the real server merely saw an ordinary client
    assert server.state is State.CONNECTED


def test_mitm_presenting_the_real_key_cannot_sign_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = cached_identity()
    mitm_server = Connection(Context(cached_identity("ed25519", 7)), "server")
    # The attacker's server sends the real server's public key but signs the
    # transcript with its own key.
    patch_method(
        monkeypatch,
        mitm_server,
        "_identity_message",
        lambda: IdentityMsg(real.public.to_bytes(), b""),
    )
    client = Connection(Context(trusted_peers=[real.public]), "client")
    client.start(NOW)
    mitm_server.start(NOW)
    pump(client, mitm_server)
    c_events = drain_events(client)
    assert_closed_with(client, c_events, AuthenticationFailed)
    assert "signature" in str(client.error)
    m_events = drain_events(mitm_server)
    assert_closed_with(mitm_server, m_events, AuthenticationFailed)
    assert alert_codes(m_events) == [51]  # decrypt_error


def test_mitm_stripping_expected_peer_breaks_the_transcript() -> None:
    real = cached_identity()
    mitm_ident = cached_identity("ed25519", 7)
    pair = Pair.make(mitm_ident, pin=False, expected_peer=real.public)
    pair.connect(client_hello_editor(lambda ch: dataclasses.replace(ch, expected_peer=b"")))
    both_fail(pair, KeyAgreementFailed, KeyAgreementFailed)


# -------------------------------------------------------------------- downgrades


def test_downgrade_of_groups_fails_instead_of_negotiating_weaker() -> None:
    strongest = GROUP_IDS["x25519-mlkem1024"]
    opts = {"groups": ["x25519-mlkem1024", "mlkem768"]}
    pair = Pair.make(server=opts, client=opts)
    strip = client_hello_editor(
        lambda ch: dataclasses.replace(ch, groups=tuple(g for g in ch.groups if g != strongest))
    )
    pair.connect(strip)
    both_fail(pair, KeyAgreementFailed, KeyAgreementFailed)


def test_downgrade_of_groups_in_first_hello_only_is_caught_on_retry() -> None:
    strongest = GROUP_IDS["x25519-mlkem1024"]
    opts = {"groups": ["x25519-mlkem1024", "mlkem768"]}
    pair = Pair.make(server=opts, client=opts)
    seen = []
    edit = client_hello_editor(
        lambda ch: dataclasses.replace(ch, groups=tuple(g for g in ch.groups if g != strongest))
    )

    def first_only(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role == "client":
            seen.append(data)
            if len(seen) == 1:
                return edit(src, dst, data)
        return data

    pair.connect(first_only)
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "retried client hello differs" in str(pair.server.error)
    assert_closed_with(pair.client, pair.client_events, KeyAgreementFailed)
    assert alert_codes(pair.client_events) == [47]  # illegal_parameter


def test_downgrade_of_ciphers_fails() -> None:
    opts = {"ciphers": ["aes-256-gcm", "chacha20-poly1305", "aes-128-gcm"]}
    pair = Pair.make(server=opts, client=opts)
    weakest = CIPHER_IDS["aes-128-gcm"]
    pair.connect(client_hello_editor(lambda ch: dataclasses.replace(ch, ciphers=(weakest,))))
    both_fail(pair, KeyAgreementFailed, KeyAgreementFailed)


def test_mitm_changing_the_cipher_in_server_hello_fails() -> None:
    opts = {"ciphers": ["aes-256-gcm", "aes-128-gcm"]}
    pair = Pair.make(server=opts, client=opts)

    def swap(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role == "server" and data[0] == RECORD_HANDSHAKE_PLAIN:
            return rewrite_plain_handshake(
                data,
                lambda _t, b: dataclasses.replace(
                    ServerHello.decode_body(b), cipher=CIPHER_IDS["aes-128-gcm"]
                ).encode_body(),
                only=MsgType.SERVER_HELLO,
            )
        return data

    pair.connect(swap)
    both_fail(pair, KeyAgreementFailed, KeyAgreementFailed)


def test_server_hello_with_a_group_that_had_no_share() -> None:
    opts = {"groups": ["x25519-mlkem768", "mlkem768"]}
    pair = Pair.make(server=opts, client=opts)

    def swap(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role == "server" and data[0] == RECORD_HANDSHAKE_PLAIN:
            return rewrite_plain_handshake(
                data,
                lambda _t, b: dataclasses.replace(
                    ServerHello.decode_body(b), group=GROUP_IDS["mlkem768"]
                ).encode_body(),
                only=MsgType.SERVER_HELLO,
            )
        return data

    pair.connect(swap)
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    # The client's alert is sent in plaintext (no keys yet); the server has keys
    # already but accepts plaintext alerts during the handshake.
    assert_closed_with(pair.server, pair.server_events, KeyAgreementFailed)
    assert alert_codes(pair.server_events) == [47]


# ------------------------------------------------------------ wrong/untrusted peers


@pytest.mark.parametrize("as_string", [False, True], ids=["peer-key", "peer-id"])
def test_wrong_expected_peer(as_string: bool) -> None:
    other = cached_identity("ed25519", 5)
    expected = other.peer_id if as_string else other.public
    pair = Pair.make(expected_peer=expected)
    pair.connect()
    both_fail(pair, AuthenticationFailed, AuthenticationFailed)
    assert "another peer" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [49]  # wrong_peer


def test_wrong_expected_peer_caught_by_the_client_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that ignores the expected_peer hint still cannot pass the
    # client's own check after the signature.
    other = cached_identity("ed25519", 5)
    pair = Pair.make(expected_peer=other.public)
    patch_method(monkeypatch, pair.client, "_expected_hash", lambda: b"")
    pair.connect()
    both_fail(pair, AuthenticationFailed, AuthenticationFailed)
    assert "wrong peer" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [49]


def test_untrusted_peer() -> None:
    pair = Pair.make(pin=False, client={"trusted_peers": [cached_identity("ed25519", 5).public]})
    pair.connect()
    both_fail(pair, AuthenticationFailed, AuthenticationFailed)
    assert "not in trusted_peers" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [48]


# ------------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("server", "client", "what"),
    [
        ({"groups": ["mlkem1024"]}, {"groups": ["mlkem768", "x25519-mlkem768"]}, "group"),
        ({"ciphers": ["aes-128-gcm"]}, {"ciphers": ["chacha20-poly1305"]}, "cipher"),
    ],
)
def test_no_common_group_or_cipher(server: dict, client: dict, what: str) -> None:
    pair = Pair.make(server=server, client=client)
    pair.connect()
    both_fail(pair, NegotiationFailed, NegotiationFailed)
    assert what in str(pair.server.error)
    assert alert_codes(pair.client_events) == [40]
    assert pair.client.data_to_send() == b""
    assert pair.server.data_to_send() == b""


def test_namespace_mismatch() -> None:
    pair = Pair.make(server={"namespace": "chat"}, client={"namespace": "files"})
    pair.connect()
    both_fail(pair, NegotiationFailed, NegotiationFailed)
    assert "namespace" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [93]


def _with_step(step: CustomProtocolStep) -> Handshake:
    hs = Handshake()
    hs.add(step)
    return hs


@pytest.mark.parametrize("requirer", ["client", "server"])
def test_required_step_missing_on_the_peer(requirer: str) -> None:
    hs = _with_step(CustomProtocolStep("example.com/token/1", required=True))
    opts = {"handshake": hs}
    pair = Pair.make(
        server=opts if requirer == "server" else {}, client=opts if requirer == "client" else {}
    )
    pair.connect()
    both_fail(pair, NegotiationFailed, NegotiationFailed)
    assert "example.com/token/1" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [40]


def test_server_agreeing_to_an_unoffered_step_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server knows a step the client never offered and claims it agreed.
    step = CustomProtocolStep("example.com/x")
    liar = Connection(Context(cached_identity(), handshake=_with_step(step)), "server")
    patch_method(monkeypatch, liar, "_agree_steps", lambda offered: [step])
    client = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    client.start(NOW)
    liar.start(NOW)
    pump(client, liar)
    c_events = drain_events(client)
    assert_closed_with(client, c_events, NegotiationFailed)
    assert "not offered" in str(client.error)
    assert_closed_with(liar, drain_events(liar), KeyAgreementFailed)  # illegal_parameter


# ------------------------------------------------------------- stale and replayed


@pytest.mark.parametrize("offset", [-3600.0, -121.0, 121.0, 86400.0])
def test_stale_or_future_client_hello(offset: float) -> None:
    pair = Pair.make()
    pair.client.start(NOW + offset)
    pair.server.start(NOW)
    pair.pump()
    both_fail(pair, ProtocolViolation, ProtocolViolation)
    assert "timestamp" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [91]  # stale_hello


@pytest.mark.parametrize("offset", [-119.0, 119.0])
def test_clock_skew_within_the_limit_is_accepted(offset: float) -> None:
    pair = Pair.make()
    pair.client.start(NOW + offset)
    pair.server.start(NOW)
    pair.pump()
    assert pair.client.handshake_complete
    assert pair.server.handshake_complete


def test_max_clock_skew_is_configurable() -> None:
    pair = Pair.make(server={"max_clock_skew": 5.0})
    pair.client.start(NOW - 6)
    pair.server.start(NOW)
    pair.pump()
    both_fail(pair, ProtocolViolation, ProtocolViolation)


def test_replayed_client_hello_is_refused_by_the_same_context() -> None:
    server_ctx = Context(cached_identity())
    client = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    client.start(NOW)
    hello = client.data_to_send()
    first = Connection(server_ctx, "server")
    first.start(NOW)
    first.receive_data(hello, NOW)
    assert first.state is State.SERVER_WAIT_FLIGHT

    replay = Connection(server_ctx, "server")
    replay.start(NOW + 1)
    replay.receive_data(hello, NOW + 1)
    events = drain_events(replay)
    assert_closed_with(replay, events, ProtocolViolation)
    assert "replay" in str(replay.error)
    assert replay.data_to_send() == plain_record(RECORD_ALERT_PLAIN, bytes([92]))

    # The genuine handshake is unaffected.
    pump(client, first)
    assert client.handshake_complete
    assert first.handshake_complete
    # Another context has its own replay cache.
    elsewhere = Connection(Context(cached_identity()), "server")
    elsewhere.start(NOW)
    elsewhere.receive_data(hello, NOW)
    assert elsewhere.state is State.SERVER_WAIT_FLIGHT


def test_a_replayed_hello_is_refused_for_as_long_as_its_timestamp_passes() -> None:
    """A hello whose timestamp is ahead of the server's clock by almost the
    allowed skew passes the timestamp check until almost twice the skew after
    it first arrived: the replay cache remembers it that long."""
    skew = 120.0  # the default max_clock_skew
    server_ctx = Context(cached_identity())
    assert server_ctx.max_clock_skew == skew
    client = Connection(Context(trusted_peers=[cached_identity().public]), "client")
    client.start(NOW + skew - 1)  # a client clock ahead
    hello = client.data_to_send()
    first = Connection(server_ctx, "server")
    first.start(NOW)
    first.receive_data(hello, NOW)
    assert first.state is State.SERVER_WAIT_FLIGHT

    later = NOW + 2 * skew - 2  # the hello's timestamp is skew - 1 s old then
    replay = Connection(server_ctx, "server")
    replay.start(later)
    replay.receive_data(hello, later)
    assert_closed_with(replay, drain_events(replay), ProtocolViolation)
    assert "replay" in str(replay.error)


# ------------------------------------------------------- records after handshake


def _three_records(pair: Pair) -> list[bytes]:
    wires = []
    for i in range(3):
        pair.client.send_data(bytes([0x41 + i]) * (10 + i))
        wires.append(pair.client.data_to_send())
    assert all(len(split_records(w)) == 1 for w in wires)
    return wires


def _flip(record: bytes, pos: int) -> bytes:
    b = bytearray(record)
    b[pos] ^= 0x01
    return bytes(b)


DAMAGE = {
    "tampered-ciphertext": lambda r: r[0] + _flip(r[1], 8) + r[2],
    "tampered-tag": lambda r: r[0] + _flip(r[1], len(r[1]) - 1) + r[2],
    "tampered-header": lambda r: r[0] + _flip(r[1], 0)[:1] + r[1][1:] + r[2],
    "truncated": lambda r: r[0] + r[1][:-5] + r[2],
    "reordered": lambda r: r[0] + r[2] + r[1],
    "replayed": lambda r: r[0] + r[1] + r[1],
    "dropped": lambda r: r[0] + r[2],
}
GOOD_PREFIX = {
    "tampered-ciphertext": b"A" * 10,
    "tampered-tag": b"A" * 10,
    "tampered-header": b"A" * 10,
    "truncated": b"A" * 10,
    "reordered": b"A" * 10,
    "replayed": b"A" * 10 + b"B" * 11,
    "dropped": b"A" * 10,
}


# What each damage is found to be: a forged record (bad_record_mac), except a
# header whose type byte turned 0x17 into 0x16, which is a plaintext handshake
# record after key agreement (unexpected_message).
DAMAGE_ALERT = {d: (IntegrityError, 20) for d in DAMAGE}
DAMAGE_ALERT["tampered-header"] = (ProtocolViolation, 10)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_records_after_the_handshake(damage: str) -> None:
    pair = Pair.make()
    pair.handshake()
    wire = DAMAGE[damage](_three_records(pair))
    pair.server.receive_data(wire, NOW)
    events = drain_events(pair.server)
    cls, code = DAMAGE_ALERT[damage]
    assert_closed_with(pair.server, events, cls)
    assert received_data(events) == GOOD_PREFIX[damage]  # no byte of the bad record
    alert = pair.server.data_to_send()
    assert split_records(alert)[0][:1] == bytes([RECORD_SEALED])  # the alert is encrypted
    pair.client.receive_data(alert, NOW)
    c_events = drain_events(pair.client)
    assert_closed_with(pair.client, c_events, cls)
    assert alert_codes(c_events) == [code]


def test_first_record_tampered_delivers_nothing() -> None:
    pair = Pair.make()
    pair.handshake()
    r = _three_records(pair)
    pair.server.receive_data(_flip(r[0], 10) + r[1] + r[2], NOW)
    events = drain_events(pair.server)
    assert event_types(events) == ["ConnectionClosed"]
    assert_closed_with(pair.server, events, IntegrityError)


def test_record_cut_short_then_eof_is_connection_lost() -> None:
    pair = Pair.make()
    pair.handshake()
    r = _three_records(pair)
    pair.server.receive_data(r[0] + r[1][:-3], NOW)
    pair.server.receive_eof()
    events = drain_events(pair.server)
    assert received_data(events) == b"A" * 10
    assert_closed_with(pair.server, events, ConnectionLost)


def test_tampering_is_detected_in_the_other_direction_too() -> None:
    pair = Pair.make()
    pair.handshake()
    pair.server.send_data(b"secret")
    wire = pair.server.data_to_send()
    pair.client.receive_data(_flip(wire, 12), NOW)
    events = drain_events(pair.client)
    assert_closed_with(pair.client, events, IntegrityError)
    assert received_data(events) == b""


# ------------------------------------------------------------- malformed input


@pytest.mark.parametrize("victim", ["server", "client"])
@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00\x00\x00", b"\x18\x00\x00\x01\x00", b"\xff"],
    ids=["http", "zeros", "type-0x18", "type-0xff"],
)
def test_garbage_or_unknown_record_type(victim: str, garbage: bytes) -> None:
    pair = Pair.make()
    pair.start()
    hello = pair.client.data_to_send()
    if victim == "server":
        pair.server.receive_data(garbage, NOW)
        pair.collect()
        assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
        assert "unknown record type" in str(pair.server.error)
        pair.client.receive_data(pair.server.data_to_send(), NOW)
        pair.collect()
        assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    else:
        pair.server.receive_data(hello, NOW)
        pair.client.receive_data(garbage, NOW)
        pair.collect()
        assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
        pair.server.receive_data(pair.client.data_to_send(), NOW)
        pair.collect()
        assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert 50 in alert_codes(pair.client_events + pair.server_events)  # decode_error


def test_garbage_after_a_valid_hello() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send() + b"\x99junk", NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)


@pytest.mark.parametrize("declared", [65537, 0xFFFFFF])
def test_oversized_handshake_message_header(declared: int) -> None:
    pair = Pair.make()
    pair.start()
    header = bytes([MsgType.CLIENT_HELLO]) + declared.to_bytes(3, "big")
    pair.server.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, header), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation, exact=False)
    assert "handshake message of" in str(pair.server.error)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert alert_codes(pair.client_events) == [22]  # record_overflow


def test_handshake_message_at_the_size_limit_is_not_an_overflow() -> None:
    pair = Pair.make()
    pair.start()
    header = bytes([MsgType.CLIENT_HELLO]) + (65536).to_bytes(3, "big")
    pair.server.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, header), NOW)
    assert drain_events(pair.server) == []  # waits for the body
    assert pair.server.state is State.SERVER_WAIT_HELLO


@pytest.mark.parametrize("length", [0, 16385, 0xFFFFFF])
def test_plaintext_record_length_out_of_range(length: int) -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(bytes([RECORD_HANDSHAKE_PLAIN]) + length.to_bytes(3, "big"), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "record_overflow" in str(pair.server.error)


def test_unknown_handshake_message_type() -> None:
    # No state accepts it: unexpected_message (docs/protocol.md, section 4), the
    # alert the error names, not decode_error.
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(99, b"")))
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation, exact=False)
    assert "unexpected_message" in str(pair.server.error)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert alert_codes(pair.client_events) == [10]  # unexpected_message


def test_plaintext_handshake_record_after_the_handshake() -> None:
    pair = Pair.make()
    pair.handshake()
    fake = plain_record(RECORD_HANDSHAKE_PLAIN, frame(Finished(bytes(32))))
    pair.client.receive_data(fake, NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "plaintext handshake record" in str(pair.client.error)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert alert_codes(pair.server_events) == [10]  # unexpected_message


def test_plaintext_handshake_record_after_key_agreement_mid_handshake() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    flight = pair.server.data_to_send()
    records = split_records(flight)
    # ServerHello (plaintext), then an injected plaintext record where the
    # encrypted flight should be.
    pair.client.receive_data(records[0], NOW)
    assert pair.client.state is State.CLIENT_WAIT_EXTENSIONS
    pair.client.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, frame(Finished(bytes(32)))))
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)


def test_finished_in_plaintext_first_is_out_of_order() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.server.data_to_send()  # the real flight is lost
    pair.client.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, frame(Finished(bytes(32)))))
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "FINISHED in state client_wait_hello" in str(pair.client.error)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert alert_codes(pair.server_events) == [10]


def test_client_hello_sent_to_a_client_is_out_of_order() -> None:
    a = Connection(Context(), "client")
    b = Connection(Context(), "client")
    a.start(NOW)
    b.start(NOW)
    pump(a, b)
    for conn in (a, b):
        assert_closed_with(conn, drain_events(conn), ProtocolViolation)


def test_second_client_hello_after_the_server_flight() -> None:
    pair = Pair.make()
    pair.start()
    hello = pair.client.data_to_send()
    pair.server.receive_data(hello, NOW)
    pair.server.receive_data(hello, NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)


def test_sealed_record_before_keys() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(bytes([RECORD_SEALED]) + (20).to_bytes(3, "big") + bytes(20))
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "before keys" in str(pair.server.error)


def test_plaintext_alert_on_an_encrypted_connection() -> None:
    pair = Pair.make()
    pair.handshake()
    pair.client.receive_data(plain_record(RECORD_ALERT_PLAIN, b"\x00"), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert ConnectionClosed(None) not in pair.client_events


def test_malformed_alert_during_the_handshake() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(plain_record(RECORD_ALERT_PLAIN, b"\x28\x00"), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)


@pytest.mark.parametrize(
    ("code", "during", "cls"),
    [
        (200, True, HandshakeError),
        (80, True, HandshakeError),
        (200, False, ConnectionLost),
        (20, True, KeyAgreementFailed),
        (20, False, IntegrityError),
        (45, False, CertificateExpired),
        (95, False, RecordTimeout),
        # record_timeout is sent once connected only: during the handshake,
        # a failed handshake as any other (not a ConnectionLost)
        (95, True, HandshakeError),
    ],
)
def test_alert_codes_map_to_named_errors(code: int, during: bool, cls: type) -> None:
    pair = Pair.make()
    if during:
        pair.start()
        pair.server.receive_data(plain_record(RECORD_ALERT_PLAIN, bytes([code])), NOW)
    else:
        pair.handshake()
        pair.server.receive_data(
            pair.client._sealer.seal(bytes([code]), ContentType.ALERT),  # type: ignore[union-attr]
            NOW,
        )
    events = drain_events(pair.server)
    assert_closed_with(pair.server, events, cls)
    assert next(e for e in events if isinstance(e, AlertReceived)).code == code


@pytest.mark.parametrize("payload", [b"", b"\x02", b"\x01\x01"])
def test_malformed_key_update(payload: bytes) -> None:
    pair = Pair.make()
    pair.handshake()
    forged = pair.client._sealer.seal(payload, ContentType.KEY_UPDATE)  # type: ignore[union-attr]
    pair.server.receive_data(forged, NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)


def test_handshake_content_after_the_handshake_is_refused() -> None:
    pair = Pair.make()
    pair.handshake()
    forged = pair.client._sealer.seal(frame(Finished(bytes(32))), ContentType.HANDSHAKE)  # type: ignore[union-attr]
    pair.server.receive_data(forged, NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)


def test_application_data_during_the_handshake_is_refused() -> None:
    pair = Pair.make(server={"ciphers": ["aes-256-gcm"]})
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    records = split_records(pair.server.data_to_send())
    pair.client.receive_data(records[0], NOW)  # ServerHello: keys agreed
    # Application data sealed with the server's handshake key, as the first record.
    key, iv = ks.traffic_keys(pair.server._keys.server_hs, "aes-256-gcm")  # type: ignore[union-attr]
    forged = RecordSealer("aes-256-gcm", key, iv).seal(b"too early")
    pair.client.receive_data(forged, NOW)
    events = drain_events(pair.client)
    assert_closed_with(pair.client, events, ProtocolViolation)
    assert received_data(events) == b""


# ------------------------------------------------------------------------ timeouts


def test_handshake_timeout_on_both_sides() -> None:
    pair = Pair.make(server={"handshake_timeout": 5.0}, client={"handshake_timeout": 3.0})
    pair.start()
    assert pair.client.get_timer() == NOW + 3.0
    assert pair.server.get_timer() == NOW + 5.0
    pair.server.receive_data(pair.client.data_to_send(), NOW)  # the answer is lost
    pair.server.data_to_send()
    pair.client.handle_timer(NOW + 2.999)
    pair.server.handle_timer(NOW + 4.0)
    assert not pair.client.is_closed
    assert not pair.server.is_closed
    pair.client.handle_timer(NOW + 3.0)
    pair.server.handle_timer(NOW + 5.0)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, HandshakeTimeout)
    assert_closed_with(pair.server, pair.server_events, HandshakeTimeout)
    assert isinstance(pair.client.error, TimeoutError)
    assert pair.client.get_timer() is None
    assert pair.server.get_timer() is None


def test_a_clock_set_back_does_not_keep_a_stalled_handshake_for_as_long() -> None:
    """A clock set back (over a second) during a handshake left the deadline
    by the old clock: a peer that stalls kept the handshake, its buffers and
    (with the adapters) a socket, for as long as the clock went back (a day
    here). The handshake's age is then unknown: handle_timer() counts one
    handshake_timeout again from the new time, and the stalled handshake ends
    then. A clock set back under a second changes nothing."""
    pair = Pair.make()
    pair.start()
    hello = pair.client.data_to_send()
    pair.server.receive_data(hello[:10], NOW + 1.0)  # a peer that trickles, then stalls
    pair.server.handle_timer(NOW - 0.5)  # slightly out of order: nothing
    assert pair.server.get_timer() == NOW + 10.0
    back = NOW - 86400.0
    pair.server.handle_timer(back)
    assert not pair.server.is_closed
    assert pair.server.get_timer() == back + 10.0
    pair.server.handle_timer(back + 9.999)
    assert not pair.server.is_closed
    pair.server.handle_timer(back + 10.0)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, HandshakeTimeout)
    # Told the earlier time by a read, the timer is due at once, and counts again.
    other = Pair.make()
    other.start()
    other.server.receive_data(other.client.data_to_send()[:10], back)
    assert other.server.get_timer() == back
    other.server.handle_timer(back)
    assert other.server.get_timer() == back + 10.0
    assert not other.server.is_closed


def test_handshake_timeout_alert_reaches_the_peer() -> None:
    pair = Pair.make()
    pair.start()
    pair.client.handle_timer(NOW + 10.0)
    pair.pump()
    assert_closed_with(pair.client, pair.client_events, HandshakeTimeout)
    assert_closed_with(pair.server, pair.server_events, HandshakeTimeout)
    assert alert_codes(pair.server_events) == [90]


def test_timer_is_off_once_connected() -> None:
    pair = Pair.make()
    pair.start()
    assert pair.client.get_timer() == NOW + 10.0
    pair.pump()
    assert pair.client.get_timer() is None
    assert pair.server.get_timer() is None
    pair.client.handle_timer(NOW + 1e6)
    pair.server.handle_timer(NOW + 1e6)
    assert pair.client.handshake_complete
    assert pair.server.handshake_complete
    assert drain_events(pair.client) == []


# ---------------------------------------------------------- closing mid-handshake


def test_client_closes_during_the_handshake() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.close()
    assert drain_events(pair.client) == []
    pair.pump()
    assert event_types(pair.server_events) == ["AlertReceived", "ConnectionClosed"]
    assert_closed_with(pair.server, pair.server_events, HandshakeError)
    assert "during the handshake" in str(pair.server.error)


def test_server_closes_before_answering() -> None:
    pair = Pair.make()
    pair.start()
    hello = pair.client.data_to_send()
    pair.server.close()
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    pair.collect()
    assert event_types(pair.client_events) == ["AlertReceived", "ConnectionClosed"]
    assert AlertReceived(0, "close_notify") in pair.client_events
    assert_closed_with(pair.client, pair.client_events, HandshakeError)
    pair.server.receive_data(hello, NOW)  # ignored: closed
    assert drain_events(pair.server) == []


# ------------------------------------------------------- forged retry, key change


def test_forged_hello_retry_cannot_downgrade_the_group() -> None:
    # The client offers a hybrid group first and plain x25519 second. A MITM
    # drops the first hello and asks the client to retry with x25519; the
    # server never saw the first hello and picks by its own preference.
    opts = {"groups": ["x25519-mlkem768", "x25519"]}
    pair = Pair.make(server=opts, client=opts)
    pair.start()
    pair.client.data_to_send()  # dropped
    forged = HelloRetry(GROUP_IDS["x25519"])
    pair.client.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, frame(forged)), NOW)
    assert pair.client.state is State.CLIENT_WAIT_RETRIED_HELLO
    pair.pump()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "HELLO_RETRY" in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "HandshakeCompleted" not in event_types(pair.client_events)


def test_hello_retry_for_the_group_already_shared_is_refused() -> None:
    pair = Pair.make()
    pair.start()
    pair.client.data_to_send()
    forged = HelloRetry(GROUP_IDS["x25519-mlkem768"])  # the client's own share group
    pair.client.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, frame(forged)), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "not offered" in str(pair.client.error)


def test_hello_retry_for_an_unoffered_group_is_refused() -> None:
    pair = Pair.make()  # default groups: no plain x25519
    pair.start()
    pair.client.data_to_send()
    forged = HelloRetry(GROUP_IDS["x25519"])
    pair.client.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, frame(forged)), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)


@pytest.mark.parametrize("side", ["server", "client"])
def test_handshake_message_split_across_the_key_change(side: str) -> None:
    pair = Pair.make()
    pair.start()
    hello = pair.client.data_to_send()
    # Trailing bytes of a next message in the same plaintext record as the
    # hello: they would have to be read in plaintext after keys are agreed.
    extra = handshake_message(MsgType.FINISHED, bytes(32))[:10]
    if side == "server":
        messages, _ = split_plain_handshake(hello)
        payload = handshake_message(messages[0][0], messages[0][1]) + extra
        pair.server.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, payload), NOW)
        pair.collect()
        assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
        assert "split across a key change" in str(pair.server.error)
    else:
        pair.server.receive_data(hello, NOW)
        flight = pair.server.data_to_send()
        messages, _rest = split_plain_handshake(flight)
        payload = handshake_message(messages[0][0], messages[0][1]) + extra
        pair.client.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, payload), NOW)
        pair.collect()
        assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
        assert "split across a key change" in str(pair.client.error)


def test_encrypted_extensions_in_plaintext_after_server_hello_is_refused() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    flight = pair.server.data_to_send()
    messages, _rest = split_plain_handshake(flight)
    sh = handshake_message(messages[0][0], messages[0][1])
    ee = frame(EncryptedExtensions(0, (), 16384))
    pair.client.receive_data(plain_record(RECORD_HANDSHAKE_PLAIN, sh + ee), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)


# ------------------------------------------------------------ dishonest clients


def _lie_about_client_auth(
    monkeypatch: pytest.MonkeyPatch, client: Connection, mode: ClientAuth
) -> None:
    honest = client._on_extensions

    def lying(msg: EncryptedExtensions, full: bytes) -> State:
        state = honest(msg, full)
        client._client_auth = mode
        return state

    patch_method(monkeypatch, client, "_on_extensions", lying)


def test_client_identity_when_authentication_is_off_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair = Pair.make(client={"identity": cached_identity("ed25519", 1)})
    _lie_about_client_auth(monkeypatch, pair.client, ClientAuth.OPTIONAL)
    pair.connect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "client authentication is off" in str(pair.server.error)
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert alert_codes(pair.client_events) == [10]


@pytest.mark.parametrize("with_step", [False, True])
def test_server_enforces_required_client_auth(
    monkeypatch: pytest.MonkeyPatch, with_step: bool
) -> None:
    # The client has an identity but pretends it was not asked for one.
    step = CustomProtocolStep("example.com/s", client_payload=lambda ctx, p: b"answer")
    opts: dict = {"handshake": _with_step(step)} if with_step else {}
    pair = Pair.make(
        server={"client_auth": "required", **opts},
        client={"identity": cached_identity("ed25519", 1), **opts},
    )
    _lie_about_client_auth(monkeypatch, pair.client, ClientAuth.OFF)
    pair.connect()
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert "sent no identity" in str(pair.server.error)
    assert "HandshakeCompleted" not in event_types(pair.server_events)
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert alert_codes(pair.client_events) == [116]


def test_client_finished_with_a_wrong_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair.make(server={"ciphers": ["chacha20-poly1305"]})
    stolen: list[bytes] = []
    honest = pair.client._on_server_finished

    def steal(msg: Finished, full: bytes) -> State:
        stolen.append(pair.client._keys.client_hs)  # type: ignore[union-attr]
        return honest(msg, full)

    patch_method(monkeypatch, pair.client, "_on_server_finished", steal)
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    assert pair.client.handshake_complete
    pair.client.data_to_send()  # the genuine Finished is replaced by a forged one
    key, iv = ks.traffic_keys(stolen[0], "chacha20-poly1305")
    forged = RecordSealer("chacha20-poly1305", key, iv).seal(
        frame(Finished(bytes(32))), ContentType.HANDSHAKE
    )
    pair.server.receive_data(forged, NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert "Finished MAC" in str(pair.server.error)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert alert_codes(pair.client_events) == [51]


def test_peer_past_the_record_limit_without_key_update() -> None:
    pair = Pair.make(server={"ciphers": ["aes-128-gcm"]})
    pair.handshake()
    assert pair.client._keys is not None
    key, iv = ks.traffic_keys(pair.client._keys.client_app, "aes-128-gcm")
    rogue = RecordSealer("aes-128-gcm", key, iv, record_limit=2**64 - 1)
    rogue._set_sequence(DEFAULT_RECORD_LIMIT - 1)
    pair.server._opener._set_sequence(DEFAULT_RECORD_LIMIT - 1)  # type: ignore[union-attr]
    pair.server.receive_data(rogue.seal(b"last") + rogue.seal(b"one too many"), NOW)
    events = drain_events(pair.server)
    assert received_data(events) == b"last"
    assert_closed_with(pair.server, events, ProtocolViolation)
    assert "key update" in str(pair.server.error)


# ------------------------------------------------------ malformed sealed records


def _sealed_header(length: int) -> bytes:
    return bytes([RECORD_SEALED]) + length.to_bytes(3, "big")


@pytest.mark.parametrize("during", [False, True], ids=["connected", "handshake"])
@pytest.mark.parametrize("declared", [16384 + 1 + 16 + 1, 1 << 20, 0xFFFFFF])
def test_oversized_sealed_record_is_record_overflow(during: bool, declared: int) -> None:
    """docs/protocol.md, section 6: an oversized record is record_overflow
    (ProtocolViolation), not a forgery; during the handshake no talk of a key
    exchange tampered with. Found from its header alone."""
    pair = Pair.make()
    if during:
        pair.start()
        pair.server.receive_data(pair.client.data_to_send(), NOW)
        hello = split_records(pair.server.data_to_send())[0]
        pair.client.receive_data(hello, NOW)  # ServerHello: keys agreed
        assert pair.client.state is State.CLIENT_WAIT_EXTENSIONS
    else:
        pair.handshake()
    pair.client.receive_data(_sealed_header(declared), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "record_overflow" in str(pair.client.error)
    alert = pair.client.data_to_send()
    assert split_records(alert)[0][:1] == bytes([RECORD_SEALED])
    pair.server.receive_data(alert, NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert alert_codes(pair.server_events) == [22]  # record_overflow


def test_sealed_record_at_the_size_limit_is_not_an_overflow() -> None:
    pair = Pair.make()
    pair.handshake()
    pair.client.receive_data(_sealed_header(16384 + 1 + 16), NOW)
    assert pair.client.handshake_complete  # waits for the body
    pair.client.receive_data(bytes(16384 + 1 + 16), NOW)  # a body that does not verify
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, IntegrityError)


def _large_record_pair() -> Pair:
    """Connected, both sides accepting (and the server sealing) 64 KiB records."""
    big = {"max_record_size": 65536}
    pair = Pair.make(client=big, server=big, server_name="srv:1")
    pair.handshake()
    assert pair.server._sealer is not None
    assert pair.server._sealer.max_fragment == 65536
    return pair


def _ticket_message(size: int) -> bytes:
    """A well-formed NewSessionTicket message of ``size`` bytes, header included."""
    message = frame(NewSessionTicket(3600, 7, b"n", b"t" * (size - 20), 0))
    assert len(message) == size
    return message


@pytest.mark.parametrize("size", [16385, 20000])
@pytest.mark.parametrize(
    "ctype", [ContentType.HANDSHAKE, ContentType.KEY_UPDATE], ids=["handshake", "key_update"]
)
def test_oversized_handshake_record_is_record_overflow_with_a_larger_max_record_size(
    ctype: int, size: int
) -> None:
    """docs/protocol.md, section 1: handshake records (and every other record
    that is not application data or messages) are at most 16 KiB, even when
    the receiver accepts application records of 64 KiB. A well-formed ticket
    of 20000 bytes in one record was stored before; one byte over 16 KiB is
    refused as well."""
    pair = _large_record_pair()
    sealer = pair.server._sealer
    assert sealer is not None
    content = _ticket_message(size) if ctype == ContentType.HANDSHAKE else bytes(size)
    pair.server._out.append(sealer.seal(content, ctype))
    pair.pump()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "record_overflow" in str(pair.client.error)
    assert len(pair.client_ctx.session_cache) == 0
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert alert_codes(pair.server_events) == [22]  # record_overflow


def test_handshake_and_application_records_at_their_own_limits_are_accepted() -> None:
    """The bounds of the test above: a 16 KiB ticket record and a 64 KiB
    application record are both fine."""
    pair = _large_record_pair()
    sealer = pair.server._sealer
    assert sealer is not None
    pair.server._out.append(sealer.seal(_ticket_message(16384), ContentType.HANDSHAKE))
    pair.server.send_data(b"x" * 65536)  # one record
    pair.pump()
    assert pair.client.handshake_complete, pair.client.error
    assert len(pair.client_ctx.session_cache) == 1
    assert received_data(pair.client_events) == b"x" * 65536


def test_oversized_handshake_record_during_the_handshake_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server whose flight (a step payload of 20000 bytes) comes sealed in
    one record over 16 KiB, to a client that accepts 64 KiB application
    records: refused from the header, under handshake keys, not opened."""
    step = CustomProtocolStep("example.com/big", server_payload=lambda ctx: b"p" * 20000)
    big = {"max_record_size": 65536, "handshake": _with_step(step)}
    pair = Pair.make(client=big, server=big)
    honest = Connection._hold_flight

    def hold_in_one_record() -> None:
        assert pair.server._sealer is not None
        pair.server._sealer.set_max_fragment(65536)  # its whole flight in one record
        honest(pair.server)

    patch_method(monkeypatch, pair.server, "_hold_flight", hold_in_one_record)
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    hello, flight = split_records(pair.server.data_to_send())
    assert len(flight) > 4 + 20000
    pair.client.receive_data(hello, NOW)
    pair.client.receive_data(flight[:4], NOW)  # its header alone
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "record_overflow" in str(pair.client.error)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert alert_codes(pair.server_events) == [22]


@pytest.mark.parametrize("declared", [0, 5, 16])
def test_sealed_record_too_short_to_hold_a_tag_is_decode_error(declared: int) -> None:
    pair = Pair.make()
    pair.handshake()
    pair.server.send_data(b"before")
    good = pair.server.data_to_send()
    pair.client.receive_data(good + _sealed_header(declared) + bytes(declared), NOW)
    events = drain_events(pair.client)
    assert received_data(events) == b"before"  # what verified first is delivered
    assert_closed_with(pair.client, events, ProtocolViolation)
    assert "decode_error" in str(pair.client.error)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert alert_codes(pair.server_events) == [50]  # decode_error


def test_authentic_record_without_a_content_type_is_decode_error() -> None:
    """A record that verifies but whose plaintext is all padding (inner type 0)
    is malformed, not forged: decode_error."""
    pair = Pair.make(server={"ciphers": ["aes-256-gcm"]})
    pair.handshake()
    server = pair.server
    assert server._keys is not None
    assert server._sealer is not None
    key, iv = ks.traffic_keys(server._keys.server_app, "aes-256-gcm")
    seq = server._sealer.sequence
    nonce = iv[:4] + (int.from_bytes(iv[4:], "big") ^ seq).to_bytes(8, "big")
    content = b"no type" + b"\x00"
    header = _sealed_header(len(content) + 16)
    record = header + AEAD("aes-256-gcm", key).encrypt(nonce, content, header)
    pair.client.receive_data(record, NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "without a content type" in str(pair.client.error)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert alert_codes(pair.server_events) == [50]  # decode_error


# ----------------------------------------------------------- key update floods


def _key_updates(pair: Pair, n: int, request: bool = True) -> bytes:
    for _ in range(n):
        pair.server.update_keys(request)
    drain_events(pair.server)
    return pair.server.data_to_send()


def test_a_flood_of_key_updates_is_refused() -> None:
    """Each KeyUpdate(request_update) costs the receiver a ratchet (and one
    answer before its next data, however many came): more than
    MAX_PEER_KEY_UPDATES without data in between is a violation."""
    pair = Pair.make()
    pair.handshake()
    pair.collect()
    pair.client.receive_data(_key_updates(pair, 1000), NOW)
    events = drain_events(pair.client)
    assert event_types(events).count("KeysUpdated") == MAX_PEER_KEY_UPDATES
    assert_closed_with(pair.client, events, ProtocolViolation)
    assert "key updates" in str(pair.client.error)
    replies = split_records(pair.client.data_to_send())
    assert len(replies) == 1  # the alert alone: no answer is owed before data
    assert pair.client.stats.key_updates == MAX_PEER_KEY_UPDATES


def test_a_flood_of_unrequested_key_updates_is_refused() -> None:
    pair = Pair.make()
    pair.handshake()
    pair.client.receive_data(_key_updates(pair, MAX_PEER_KEY_UPDATES + 1, False), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert alert_codes(pair.server_events) == [10]  # unexpected_message


def test_key_updates_between_data_or_over_time_are_not_a_flood() -> None:
    pair = Pair.make()
    pair.handshake()
    pair.collect()
    for _ in range(3):  # data resets the count
        wire = _key_updates(pair, MAX_PEER_KEY_UPDATES)
        pair.server.send_message(b"m")
        pair.client.receive_data(wire + pair.server.data_to_send(), NOW)
    pair.server.send_data(b"d")
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    for i in range(3 * MAX_PEER_KEY_UPDATES):  # an idle peer on a rekey timer
        pair.client.receive_data(_key_updates(pair, 1, False), NOW + 1.0 * (i + 1))
    assert pair.client.handshake_complete, pair.client.error
    # The peer's answers to our own requests do not count either: 40 answers
    # and 40 updates of its own make 80 updates, of which 40 count.
    n = MAX_PEER_KEY_UPDATES * 5 // 8
    for _ in range(n):
        pair.client.update_keys(request_peer=True)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    wire = pair.server.data_to_send() + _key_updates(pair, n, False)
    pair.client.receive_data(wire, NOW)
    assert pair.client.stats.key_updates > (2 + 1) * n  # all taken: ours, answers, its own
    pair.pump()
    assert pair.client.handshake_complete, pair.client.error
    assert pair.server.handshake_complete, pair.server.error
    pair.server.send_data(b"still here")
    pair.pump()
    assert received_data(pair.client_events).endswith(b"still here")


# -------------------------------------------------------- internal errors, split tickets


def test_a_handshake_message_without_a_key_is_an_internal_error_not_plaintext(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message after the hellos is never sent in plaintext: if the keys it
    needs are missing (a bug), the connection fails with internal_error."""
    pair = Pair.make()
    honest = Connection._install

    def no_sending_key(send: bytes | None, recv: bytes | None, *, handshake: bool = False) -> None:
        honest(pair.server, None, recv, handshake=handshake)  # the sending key is lost

    patch_method(monkeypatch, pair.server, "_install", no_sending_key)
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert_closed_with(pair.server, pair.server_events, HandshakeError)
    assert "internal error" in str(pair.server.error)
    hello, alert = split_records(pair.server.data_to_send())  # nothing else in the clear
    assert hello[0] == RECORD_HANDSHAKE_PLAIN
    assert hello[4] == MsgType.SERVER_HELLO
    assert alert == plain_record(RECORD_ALERT_PLAIN, b"\x50")  # internal_error (80)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00" * 3, b"\xff" * 40, NewSessionTicket(3600, 1, b"n", b"ticket", 0).encode_body()],
    ids=["empty", "truncated", "garbage", "well-formed"],
)
def test_new_session_ticket_from_a_client_is_unexpected_whatever_its_body(body: bytes) -> None:
    """docs/protocol.md, sections 2.9 and 4: a server refuses a NewSessionTicket
    as a message it never receives (unexpected_message), before decoding it: a
    malformed one was decode_error."""
    pair = Pair.make()
    pair.handshake()
    sealer = pair.client._sealer
    assert sealer is not None
    message = handshake_message(MsgType.NEW_SESSION_TICKET, body)
    pair.client._out.append(sealer.seal(message, ContentType.HANDSHAKE))
    pair.pump()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "unexpected_message: NEW_SESSION_TICKET" in str(pair.server.error)
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert alert_codes(pair.client_events) == [10]  # unexpected_message


def test_update_keys_with_half_a_session_ticket_received() -> None:
    """A NewSessionTicket split across records leaves handshake bytes waiting:
    that is no reason to refuse our own (sending) key update."""
    pair = Pair.make(
        server={"tickets_per_handshake": 1, "client_auth": "optional"}, server_name="srv:1"
    )
    pair.start()
    server = pair.server
    server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.receive_data(server.data_to_send(), NOW)
    server.receive_data(pair.client.data_to_send(), NOW)  # the ticket follows the client's flight
    ticket_record = server.data_to_send()
    assert server._keys is not None
    (opened,) = (  # what the ticket record holds, opened aside (the first under the key)
        RecordOpener._from_secret(server._cipher, server._keys.server_app, 16384)
        .open(ticket_record, batch_type=ContentType.HANDSHAKE)
        .records
    )
    message = opened.data
    assert message[0] == MsgType.NEW_SESSION_TICKET
    sealer = server._sealer
    assert sealer is not None
    sealer._set_sequence(sealer.sequence - 1)  # the same record number, cut in two
    half = len(message) // 2
    pair.client.receive_data(sealer.seal(message[:half], ContentType.HANDSHAKE), NOW)
    pair.client.update_keys()  # raised an internal exception before
    pair.client.receive_data(sealer.seal(message[half:], ContentType.HANDSHAKE), NOW)
    pair.pump()
    assert pair.client.handshake_complete, pair.client.error
    assert pair.server.handshake_complete, pair.server.error
    key = pair.client._cache_key()
    assert key is not None
    assert pair.client_ctx.session_cache.take(key, NOW) is not None


def test_with_psk_offer_changes_the_offer_and_nothing_else() -> None:
    """ClientHello.with_psk_offer (the resuming client's copy of its hello) lists
    every field: each one set to a value of its own is kept."""
    hello = ClientHello(
        random=bytes(range(32)),
        timestamp_ms=123456789,
        namespace=b"ns",
        ciphers=(1, 2),
        groups=(3,),
        share_group=3,
        share=b"share",
        expected_peer=b"peer",
        steps=(StepOffer("x.step", True),),
        max_record_size=4096,
        psk_offer=b"old",
        version=7,
    )
    assert hello.with_psk_offer(b"new") == dataclasses.replace(hello, psk_offer=b"new")
    other = hello.with_psk_offer(b"new")
    fields = [f.name for f in dataclasses.fields(ClientHello)]
    changed = [name for name in fields if getattr(hello, name) != getattr(other, name)]
    assert changed == ["psk_offer"]


def _full_messages() -> list[Message]:
    """One message of each kind that a handshake decodes on its path, every
    optional field set (a PSK offer, cipher and group lists, a step)."""
    offer = PskOffer(PskMode.PSK_ONLY, b"t" * 40, 123456, 2, b"b" * BINDER_SIZE)
    return [
        ClientHello(
            bytes(range(32)), 1700000000123, b"ns", (1, 2, 3), (4, 5), 4, b"share" * 3,
            b"p" * 32, (StepOffer("x.step", True),), 4096, offer.encode(),
        ),
        ServerHello(bytes(32), 4, 1, b"reply", PskMode.PSK_DHE),
        EncryptedExtensions(ClientAuth.OPTIONAL, ("x.step",), 4096, True),
        NewSessionTicket(7200, 99, b"n" * 8, b"ticket", 1024),
        Finished(b"f" * 32),
    ]  # fmt: skip


def test_handshake_messages_refuse_every_truncation_and_trailing_bytes() -> None:
    """Each decoder reads its fixed fields in runs (one struct call per run):
    a body cut anywhere, or followed by one byte more, is a DecodeError, never
    a shorter field taken for a whole one; the whole body decodes as sent."""
    for msg in _full_messages():
        body = msg.encode_body()  # type: ignore[union-attr]
        assert type(msg).decode_body(body) == msg
        for n in range(len(body)):
            with pytest.raises(DecodeError):
                type(msg).decode_body(body[:n])
        with pytest.raises(DecodeError):
            type(msg).decode_body(body + b"\x00")
    offer = PskOffer.decode(_full_messages()[0].psk_offer)
    encoded = offer.encode()
    assert PskOffer.decode(encoded) == offer
    for n in range(len(encoded)):
        with pytest.raises(DecodeError):
            PskOffer.decode(encoded[:n])


def test_a_frame_is_the_type_the_body_length_and_the_body() -> None:
    """frame() packs the 4-byte header in one struct call: the type byte, then
    the body's length in 3 bytes; HandshakeBuffer reads back what it framed;
    a body over 2^24 - 1 bytes cannot be framed."""
    types = {cls: t for t, cls in MESSAGE_TYPES.items()}
    buffer = HandshakeBuffer()
    for msg in _full_messages():
        body = msg.encode_body()  # type: ignore[union-attr]
        framed = frame(msg)
        assert framed == bytes([types[type(msg)]]) + len(body).to_bytes(3, "big") + body
        buffer.feed(framed)
        assert buffer.next_message() == (types[type(msg)], body, framed)
    assert len(frame(Finished(bytes(0xFFFFFF)))) == 4 + 0xFFFFFF
    with pytest.raises(OverflowError, match="at most 16777215 bytes"):
        frame(Finished(bytes(0x1000000)))


def _low_order_x25519(share: bytes) -> bytes:
    return share[:-32] + bytes(32)  # u = 0: every scalar gives the all-zero secret


def _coefficients_not_reduced(share: bytes) -> bytes:
    return b"\xff" * 384 + share[384:]  # ML-KEM's first polynomial: coefficients 4095 >= q


@pytest.mark.parametrize(
    ("group", "spoil"),
    [
        ("x25519-mlkem768", _low_order_x25519),
        ("x25519", _low_order_x25519),
        ("x25519-mlkem768", _coefficients_not_reduced),
        ("mlkem768", _coefficients_not_reduced),
        ("x25519-mlkem768", lambda share: share[:-1]),
        ("mlkem1024", lambda share: share + b"\x00"),
    ],
    ids=[
        "hybrid-low-order",
        "x25519-low-order",
        "hybrid-unreduced",
        "mlkem-unreduced",
        "hybrid-short",
        "mlkem-long",
    ],
)
def test_a_client_key_share_the_server_cannot_use_is_refused(
    group: str, spoil: Callable[[bytes], bytes]
) -> None:
    """A share that is not a key of its group (the wrong length, an ML-KEM
    key failing FIPS 203's modulus check, an X25519 point of small order whose
    secret is all zeros): the server fails with KeyAgreementFailed and tells
    the client illegal_parameter; no handshake completes."""
    opts = {"groups": [group]}
    pair = Pair.make(server=opts, client=opts)
    pair.connect(client_hello_editor(lambda h: dataclasses.replace(h, share=spoil(h.share))))
    assert_closed_with(pair.server, pair.server_events, KeyAgreementFailed)
    assert f"client's {group} key share is invalid" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [AlertCode.ILLEGAL_PARAMETER]
    assert pair.client.is_closed
    assert "HandshakeCompleted" not in event_types(pair.client_events)


@pytest.mark.parametrize(
    ("header", "what"),
    [(b"\x16\x00\x40\x00", "plaintext handshake"), (b"\x15\x00\x40\x00", "plaintext alert")],
)
def test_a_plaintext_record_after_the_handshake_is_refused_from_its_header(
    header: bytes, what: str
) -> None:
    """As a sealed record's header is, a plaintext record's is enough once
    connected: it is refused at once, not after up to 16 KiB of its body."""
    pair = Pair.make()
    pair.handshake()
    pair.collect()
    pair.server.receive_data(header + b"partial body", NOW)
    events = drain_events(pair.server)
    assert_closed_with(pair.server, events, ProtocolViolation)
    assert f"unexpected_message: {what}" in str(pair.server.error)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    pair.collect()
    assert alert_codes(pair.client_events) == [10]  # unexpected_message


# ------------------------------------------------ peers that skip or forge a step


def _leave_out(monkeypatch: pytest.MonkeyPatch, conn: Connection, *dropped: type) -> None:
    """Make ``conn`` leave out of its flights (and its transcript) the handshake
    messages of the ``dropped`` classes: a peer that skips a step."""
    rewrite_sent(monkeypatch, conn, dropped, lambda _msg: None)


@pytest.mark.parametrize(
    "dropped", [(IdentityMsg, Verify), (Verify,)], ids=["identity-and-verify", "verify"]
)
def test_client_refuses_a_server_finished_without_the_servers_proof_of_identity(
    monkeypatch: pytest.MonkeyPatch, dropped: tuple[type, ...]
) -> None:
    """A full handshake's server must present its key and sign the transcript
    before its Finished: a Finished in their place (a valid MAC over what was
    sent) is out of order, not an unauthenticated session."""
    pair = Pair.make()
    _leave_out(monkeypatch, pair.server, *dropped)
    pair.connect()
    both_fail(pair, ProtocolViolation, ProtocolViolation)
    assert "FINISHED in state" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.UNEXPECTED_MESSAGE]


def test_server_refuses_a_client_identity_without_its_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client's Identity binds nothing until its Verify signs the
    transcript: a Finished right after the Identity is out of order."""
    pair = Pair.make(
        server={"client_auth": "required"}, client={"identity": cached_identity("ed25519", 1)}
    )
    _leave_out(monkeypatch, pair.client, Verify)
    pair.connect()
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "FINISHED in state server_wait_verify" in str(pair.server.error)
    assert "HandshakeCompleted" not in event_types(pair.server_events)
    assert alert_codes(pair.client_events) == [AlertCode.UNEXPECTED_MESSAGE]


def test_server_finished_with_a_wrong_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair.make()
    rewrite_sent(monkeypatch, pair.server, Finished, lambda _msg: Finished(bytes(32)))
    pair.connect()
    both_fail(pair, AuthenticationFailed, AuthenticationFailed)
    assert "server's Finished MAC did not verify" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.DECRYPT_ERROR]


def test_a_server_signature_made_with_the_client_context_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two roles sign under different context strings: the server's own
    key signing the right transcript as a client would is not its Verify."""
    pair = Pair.make()
    honest = pair.server._sign_transcript
    patch_method(monkeypatch, pair.server, "_sign_transcript", lambda _c: honest(_CLIENT_VERIFY))
    pair.connect()
    both_fail(pair, AuthenticationFailed, AuthenticationFailed)
    assert "server's signature over the handshake did not verify" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.DECRYPT_ERROR]


@pytest.mark.parametrize(
    "mtype",
    [MsgType.CLIENT_HELLO, MsgType.HELLO_RETRY, MsgType.SERVER_HELLO],
    ids=lambda m: m.name.lower(),
)
def test_a_hello_of_another_protocol_version_is_refused(mtype: MsgType) -> None:
    retry = mtype is MsgType.HELLO_RETRY
    pair = Pair.make(
        server={"groups": ["mlkem768"]} if retry else None,
        client={"groups": ["x25519-mlkem768", "mlkem768"]},
    )
    cls = MESSAGE_TYPES[mtype]

    def edit(src: Connection, dst: Connection, data: bytes) -> bytes:
        if data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        return rewrite_plain_handshake(
            data,
            lambda _t, b: dataclasses.replace(cls.decode_body(b), version=2).encode_body(),
            only=mtype,
        )

    pair.connect(edit)
    both_fail(pair, NegotiationFailed, NegotiationFailed)
    told = pair.client_events if mtype is MsgType.CLIENT_HELLO else pair.server_events
    assert alert_codes(told) == [AlertCode.PROTOCOL_VERSION]


def test_server_hello_with_a_cipher_the_client_did_not_offer() -> None:
    pair = Pair.make(
        server={"ciphers": ["aes-128-gcm", "chacha20-poly1305"]},
        client={"ciphers": ["aes-128-gcm"]},
    )

    def swap(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "server" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        return rewrite_plain_handshake(
            data,
            lambda _t, b: dataclasses.replace(
                ServerHello.decode_body(b), cipher=CIPHER_IDS["chacha20-poly1305"]
            ).encode_body(),
            only=MsgType.SERVER_HELLO,
        )

    pair.connect(swap)
    both_fail(pair, NegotiationFailed, KeyAgreementFailed)
    assert "cipher that was not offered" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.ILLEGAL_PARAMETER]


# ------------------------------------------------------------ field ranges


def _flag_byte(body: bytes, marker: bytes, value: int) -> bytes:
    """``body`` with the byte that follows ``marker`` (once in it) set to ``value``."""
    assert body.count(marker) == 1
    at = body.index(marker) + len(marker)
    return body[:at] + bytes([value]) + body[at + 1 :]


def _hello(**fields: object) -> ClientHello:
    return dataclasses.replace(_full_messages()[0], **fields)  # type: ignore[arg-type]


_STEP = StepOffer("step-id", True)
_EE = EncryptedExtensions(ClientAuth.OPTIONAL, ("step-id",), 4096, True)
_FIELD_CASES: list[tuple[str, Callable[[bytes], object], bytes, bytes]] = [
    ("offer mode none", PskOffer.decode,
     PskOffer(PskMode.PSK_DHE, b"t", 0, 0, bytes(32)).encode(),
     PskOffer(PskMode.NONE, b"t", 0, 0, bytes(32)).encode()),
    ("offer empty ticket", PskOffer.decode,
     PskOffer(PskMode.PSK_DHE, b"t", 0, 0, bytes(32)).encode(),
     PskOffer(PskMode.PSK_DHE, b"", 0, 0, bytes(32)).encode()),
    ("hello empty step id", ClientHello.decode_body,
     _hello(steps=(_STEP,)).encode_body(),
     _hello(steps=(StepOffer("", True),)).encode_body()),
    ("hello step flags 2", ClientHello.decode_body,
     _hello(steps=(_STEP,)).encode_body(),
     _flag_byte(_hello(steps=(_STEP,)).encode_body(), b"\x07step-id", 2)),
    ("server hello mode 3", ServerHello.decode_body,
     ServerHello(bytes(32), 4, 1, b"s", PskMode.PSK_ONLY).encode_body(),
     ServerHello(bytes(32), 4, 1, b"s", 3).encode_body()),
    ("extensions client_auth 3", EncryptedExtensions.decode_body,
     _EE.encode_body(), dataclasses.replace(_EE, client_auth=3).encode_body()),
    ("extensions empty step id", EncryptedExtensions.decode_body,
     _EE.encode_body(), dataclasses.replace(_EE, steps=("",)).encode_body()),
    ("extensions early flag 2", EncryptedExtensions.decode_body,
     _EE.encode_body(), _EE.encode_body()[:-1] + b"\x02"),
    ("step data empty id", StepData.decode_body,
     StepData("step-id", b"p").encode_body(), StepData("", b"p").encode_body()),
    ("ticket empty", NewSessionTicket.decode_body,
     NewSessionTicket(7200, 1, b"n", b"t", 0).encode_body(),
     NewSessionTicket(7200, 1, b"n", b"", 0).encode_body()),
    ("identity empty key", IdentityMsg.decode_body,
     IdentityMsg(b"k", b"").encode_body(), IdentityMsg(b"", b"").encode_body()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("decoder", "good", "bad"), [c[1:] for c in _FIELD_CASES], ids=[c[0] for c in _FIELD_CASES]
)
def test_decoders_refuse_a_field_out_of_its_range(
    decoder: Callable[[bytes], object], good: bytes, bad: bytes
) -> None:
    """A well-formed encoding whose one field holds a value the protocol does
    not define (or an empty value where one is required) is a DecodeError;
    the same message with a defined value decodes."""
    decoder(good)
    with pytest.raises(DecodeError):
        decoder(bad)


_READS: list[tuple[str, Callable[[Reader], object], bytes]] = [
    ("u8", Reader.u8, b"\x01"),
    ("u16", Reader.u16, b"\x01\x02"),
    ("u24", Reader.u24, b"\x01\x02\x03"),
    ("u32", Reader.u32, b"\x01\x02\x03\x04"),
    ("u64", Reader.u64, bytes(range(8))),
    ("raw", lambda r: r.raw(3), b"abc"),
    ("unpack", lambda r: r.unpack(Struct(">HB")), b"\x01\x02\x03"),
    ("vec8", Reader.vec8, b"\x02ab"),
    ("vec16", Reader.vec16, b"\x00\x02ab"),
    ("vec24", Reader.vec24, b"\x00\x00\x02ab"),
]


@pytest.mark.parametrize(("read", "whole"), [r[1:] for r in _READS], ids=[r[0] for r in _READS])
def test_every_reader_read_checks_what_is_left(
    read: Callable[[Reader], object], whole: bytes
) -> None:
    """Each read refuses, at that read, input one byte short of what it takes
    (not only done() at the end: a decoder may read on, or stop there)."""
    r = Reader(whole)
    read(r)
    r.done()
    with pytest.raises(DecodeError, match="truncated"):
        read(Reader(whole[:-1]))


# ------------------------------------------- what the hellos and extensions announce


def test_client_refuses_extensions_agreeing_to_one_step_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hs = _with_step(CustomProtocolStep("example.com/x"))
    pair = Pair.make(server={"handshake": hs}, client={"handshake": hs})
    rewrite_sent(
        monkeypatch, pair.server, EncryptedExtensions,
        lambda ee: dataclasses.replace(ee, steps=ee.steps * 2),
    )  # fmt: skip
    pair.connect()
    both_fail(pair, NegotiationFailed, KeyAgreementFailed)
    assert "not offered" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.ILLEGAL_PARAMETER]


def test_client_refuses_extensions_leaving_out_its_required_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client checks its required steps itself: a server that knows the
    step but does not agree to it in its EncryptedExtensions is refused."""
    hs = _with_step(CustomProtocolStep("example.com/token/1", required=True))
    pair = Pair.make(server={"handshake": hs}, client={"handshake": hs})
    rewrite_sent(
        monkeypatch, pair.server, EncryptedExtensions, lambda ee: dataclasses.replace(ee, steps=())
    )
    pair.connect()
    both_fail(pair, NegotiationFailed, NegotiationFailed)
    assert "required step 'example.com/token/1'" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.NEGOTIATION_FAILED]


@pytest.mark.parametrize("size", [511, 512, 1 << 18, (1 << 18) + 1])
def test_client_takes_a_max_record_size_from_the_server_only_in_512_to_256_kib(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    pair = Pair.make()
    rewrite_sent(
        monkeypatch, pair.server, EncryptedExtensions,
        lambda ee: dataclasses.replace(ee, max_record_size=size),
    )  # fmt: skip
    pair.connect()
    if 512 <= size <= 1 << 18:
        assert pair.client.handshake_complete, pair.client.error
        assert pair.client.session is not None
        assert pair.client.session.max_record_size == min(size, 16384)
        return
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "invalid max_record_size" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.ILLEGAL_PARAMETER]


@pytest.mark.parametrize("size", [511, (1 << 18) + 1])
def test_server_refuses_a_max_record_size_outside_512_to_256_kib(size: int) -> None:
    pair = Pair.make()
    pair.connect(client_hello_editor(lambda ch: dataclasses.replace(ch, max_record_size=size)))
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "invalid max_record_size" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [AlertCode.ILLEGAL_PARAMETER]


def test_server_refuses_a_hello_offering_one_step_twice() -> None:
    step = StepOffer("example.com/x", False)
    hs = _with_step(CustomProtocolStep("example.com/x"))
    pair = Pair.make(server={"handshake": hs}, client={"handshake": hs})
    pair.connect(client_hello_editor(lambda ch: dataclasses.replace(ch, steps=(step, step))))
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert "duplicate step ids" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [AlertCode.ILLEGAL_PARAMETER]


def _retried_hello_editor(
    edit: Callable[[ClientHello], ClientHello],
) -> Callable[[Connection, Connection, bytes], bytes]:
    """An intercept that rewrites the client's second ClientHello (after a HelloRetry)."""
    hellos: list[bytes] = []

    def intercept(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "client" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        hellos.append(data)
        if len(hellos) != 2:
            return data
        return client_hello_editor(edit)(src, dst, data)

    return intercept


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (
            lambda ch: dataclasses.replace(
                ch, share_group=GROUP_IDS["x25519"], share=GROUPS["x25519"].generate()
                .public_key().public_bytes_raw(),
            ),
            "differs from the first",
        ),
        (lambda ch: dataclasses.replace(ch, share=b""), "wrong key share"),
    ],
    ids=["another-group", "no-share"],
)  # fmt: skip
def test_server_refuses_a_retried_hello_without_a_share_for_the_group_it_asked_for(
    edit: Callable[[ClientHello], ClientHello], why: str
) -> None:
    pair = Pair.make(
        server={"groups": ["mlkem768", "x25519"]},
        client={"groups": ["x25519-mlkem768", "mlkem768", "x25519"]},
    )
    pair.connect(_retried_hello_editor(edit))
    assert_closed_with(pair.server, pair.server_events, ProtocolViolation)
    assert why in str(pair.server.error)
    assert alert_codes(pair.client_events) == [AlertCode.ILLEGAL_PARAMETER]


# --------------------------------------------------- key updates and record contents


def test_key_update_bursts_a_second_apart_are_not_a_flood_within_one_they_are() -> None:
    pair = Pair.make()
    pair.handshake()
    pair.client.receive_data(_key_updates(pair, MAX_PEER_KEY_UPDATES, False), NOW)
    pair.client.receive_data(_key_updates(pair, MAX_PEER_KEY_UPDATES, False), NOW + 1.0)
    assert pair.client.handshake_complete, pair.client.error
    pair.client.receive_data(_key_updates(pair, 1, False), NOW + 1.999)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "key updates" in str(pair.client.error)


def test_a_peer_requesting_updates_while_we_await_answers_is_still_counted() -> None:
    """Only an answer (no request of its own) to our update_keys(request_peer=True)
    goes uncounted: updates that request ours in turn count, however many
    answers are owed."""
    pair = Pair.make()
    pair.handshake()
    pair.client.update_keys(request_peer=True)  # (never delivered: no answer comes)
    pair.client.data_to_send()
    pair.client.receive_data(_key_updates(pair, MAX_PEER_KEY_UPDATES + 1, True), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "key updates" in str(pair.client.error)


def test_an_empty_sealed_handshake_record_is_decode_error() -> None:
    pair = Pair.make()
    pair.handshake()
    pair.collect()
    sealer = pair.server._sealer
    assert sealer is not None
    pair.client.receive_data(sealer.seal(b"", ContentType.HANDSHAKE), NOW)
    pair.collect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "empty record" in str(pair.client.error)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.collect()
    assert alert_codes(pair.server_events) == [AlertCode.DECODE_ERROR]


def test_server_refuses_step_data_at_once_from_a_client_that_skipped_its_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under required client authentication a StepData in place of the
    client's Identity is refused when it arrives, not when (or if) the
    client's Finished follows: here it never does."""
    step = CustomProtocolStep("example.com/s", client_payload=lambda ctx, p: b"answer")
    hs = _with_step(step)
    pair = Pair.make(
        server={"client_auth": "required", "handshake": hs},
        client={"identity": cached_identity("ed25519", 1), "handshake": hs},
    )
    _lie_about_client_auth(monkeypatch, pair.client, ClientAuth.OFF)
    _leave_out(monkeypatch, pair.client, Finished)
    pair.connect()
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert "sent no identity" in str(pair.server.error)
    assert alert_codes(pair.client_events) == [AlertCode.CERTIFICATE_REQUIRED]


def test_a_malformed_server_identity_is_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair.make()
    rewrite_sent(monkeypatch, pair.server, IdentityMsg, lambda msg: IdentityMsg(b"not a key", b""))
    pair.connect()
    assert_closed_with(pair.client, pair.client_events, ProtocolViolation)
    assert "malformed identity" in str(pair.client.error)
    assert alert_codes(pair.server_events) == [AlertCode.DECODE_ERROR]
