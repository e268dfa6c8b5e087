"""0-RTT early data: accepted once, refused when it should be (and then reported
to the client with exactly the data), never delivered twice, never lost; the
anti-replay rules and their documented limit (docs/sessions.md)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from protocol_helpers import (
    NOW,
    Pair,
    assert_closed_with,
    cached_identity,
    drain_events,
    event_types,
    in_a_child_forked_with_locks_held,
    patch_method,
    received_data,
    rewrite_sent,
    split_plain_handshake,
    split_records,
)

from nautilus import (
    Context,
    DataReceived,
    HandshakeCompleted,
    KeyAgreementFailed,
    ProtocolViolation,
    State,
)
from nautilus.kem import GROUPS
from nautilus.protocol.connection import _CIPHER_BY_ID, Connection
from nautilus.protocol.events import EarlyDataReceived, EarlyDataRejected
from nautilus.protocol.messages import (
    RECORD_SEALED,
    ClientHello,
    EncryptedExtensions,
    HelloRetry,
    MsgType,
    PskOffer,
)
from nautilus.record import ContentType, RecordSealer
from nautilus.sessions import MAX_EARLY_DATA, EarlyDataReplayCache, SessionCache

SERVER_NAME = "srv:1"
CACHE_KEY = SessionCache.key("*", SERVER_NAME)
SERVER = cached_identity()
OTHER = cached_identity("ed25519", 2)
REQUEST = b"GET /index.html (idempotent)"


def first_session(
    server: dict[str, object] | None = None, client: dict[str, object] | None = None
) -> Pair:
    """A full handshake that leaves the client one ticket allowing early data."""
    p = Pair.make(
        server={"tickets_per_handshake": 1, "early_data": True, **(server or {})},
        client={"early_data": True, **(client or {})},
        server_name=SERVER_NAME,
    )
    p.handshake()
    return p


class Capture:
    """Records the client's first flight (hello + early records)."""

    def __init__(self) -> None:
        self.first_flight = b""

    def __call__(self, src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role == "client" and not self.first_flight:
            self.first_flight = data
        return data


def with_early_data(
    p: Pair,
    data: bytes = REQUEST,
    *,
    now: float = NOW,
    client_ctx: Context | None = None,
    server_ctx: Context | None = None,
    capture: Capture | None = None,
) -> Pair:
    """A new connection whose client gives ``data`` to start() as early data."""
    q = Pair(
        client_ctx if client_ctx is not None else p.client_ctx,
        server_ctx if server_ctx is not None else p.server_ctx,
        {"server_name": SERVER_NAME},
        now,
    )
    q.client.start(now, early_data=data)
    q.server.start(now)
    q.pump(capture)
    return q


def early_received(q: Pair) -> bytes:
    return b"".join(e.data for e in q.server_events if isinstance(e, EarlyDataReceived))


def offer_of(first_flight: bytes) -> PskOffer | None:
    messages, _ = split_plain_handshake(first_flight)
    assert messages[0][0] == MsgType.CLIENT_HELLO
    hello = ClientHello.decode_body(messages[0][1])
    return PskOffer.decode(hello.psk_offer) if hello.psk_offer else None


def rejected(q: Pair) -> bytes:
    """The data of the one EarlyDataRejected the client reported (the
    connection sends it again itself)."""
    events = [e for e in q.client_events if isinstance(e, EarlyDataRejected)]
    assert len(events) == 1, q.client_events
    return events[0].data


def replay(flight: bytes, server_ctx: Context, now: float = NOW) -> Connection:
    """Feed a recorded first flight to a new server connection of ``server_ctx``."""
    server = Connection(server_ctx, "server")
    server.start(now)
    server.receive_data(flight, now)
    return server


# ---------------------------------------------------------------------- accepted


def test_early_data_is_accepted_once_before_the_handshake_completes() -> None:
    p = first_session()
    capture = Capture()
    q = with_early_data(p, capture=capture)
    assert event_types(q.server_events) == ["EarlyDataReceived", "HandshakeCompleted"]
    assert q.server_events[0] == EarlyDataReceived(REQUEST)
    assert event_types(q.client_events) == ["HandshakeCompleted"]
    assert q.client.session is not None
    assert q.server.session is not None
    assert q.client.session.early_data_accepted
    assert q.server.session.early_data_accepted
    assert q.client.session.resumed
    (row,) = [r for r in p.server_ctx.sessions if r.early_data_accepted]
    assert row.resumed
    offer = offer_of(capture.first_flight)
    assert offer is not None
    assert offer.early_records == 1
    q.client.send_data(b" then more")
    q.pump()
    assert received_data(q.server_events) == b" then more"  # the early data is not repeated


def first_flight_with_early_data() -> Pair:
    """A resuming pair whose server has read only the client's first flight,
    and accepted its early data (REQUEST)."""
    p = first_session()
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    q.client.start(NOW, early_data=REQUEST)
    q.server.start(NOW)
    q.server.receive_data(q.client.data_to_send(), NOW)
    assert drain_events(q.server) == [EarlyDataReceived(REQUEST)]
    return q


def test_early_data_arrives_with_the_first_flight() -> None:
    """The point of 0-RTT: the server has the request before any round trip."""
    q = first_flight_with_early_data()
    assert not q.server.handshake_complete


def test_early_data_spanning_several_records() -> None:
    p = first_session(server={"max_early_data": 65536})
    data = bytes(range(256)) * 160  # 40960 bytes: three 16 KiB records
    capture = Capture()
    q = with_early_data(p, data, capture=capture)
    assert early_received(q) == data
    offer = offer_of(capture.first_flight)
    assert offer is not None
    assert offer.early_records == 3
    assert received_data(q.server_events) == b""


def test_early_data_with_a_psk_only_resumption() -> None:
    p = first_session(server={"resumption": "psk_only"}, client={"resumption": "psk_only"})
    q = with_early_data(p)
    assert early_received(q) == REQUEST
    assert q.client.session is not None
    assert q.client.session.early_data_accepted


def test_early_data_comes_before_data_sent_after_the_handshake() -> None:
    p = first_session()
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    q.client.start(NOW, early_data=b"first ")
    q.client.send_data(b"second")  # queued until the handshake completes
    q.server.start(NOW)
    q.pump()
    kinds = [(type(e).__name__, getattr(e, "data", None)) for e in q.server_events]
    assert kinds == [
        ("EarlyDataReceived", b"first "),
        ("HandshakeCompleted", None),
        ("DataReceived", b"second"),
    ]


# ------------------------------------------------------------------------ replay


def test_replayed_first_flight_is_refused_by_the_same_context() -> None:
    p = first_session()
    capture = Capture()
    q = with_early_data(p, capture=capture)
    assert early_received(q) == REQUEST
    events = drain_events(replayed := replay(capture.first_flight, p.server_ctx))
    assert not any(isinstance(e, EarlyDataReceived) for e in events)
    assert_closed_with(replayed, events, ProtocolViolation)
    assert "replay" in str(replayed.error)


def test_a_hello_is_remembered_for_the_skew_its_connection_checked_it_with() -> None:
    """Two server connections made while max_clock_skew was 300 s accept a
    hello up to 300 s old; the first records it for that long although the
    setting was lowered meanwhile (it was kept 3 s, and the same hello
    replayed 5 s later to the second connection was taken)."""
    p = Pair.make(server={"max_clock_skew": 300.0})
    first = Connection(p.server_ctx, "server")
    second = Connection(p.server_ctx, "server")
    p.server_ctx.max_clock_skew = 1.0  # for later connections
    p.client.start(NOW)
    hello = p.client.data_to_send()
    first.start(NOW)
    first.receive_data(hello, NOW)
    assert not first.is_closed
    second.start(NOW + 5)
    second.receive_data(hello, NOW + 5)
    assert_closed_with(second, drain_events(second), ProtocolViolation)
    assert "replay" in str(second.error)


def test_replay_is_refused_as_early_data_even_when_the_hello_cache_forgot_it() -> None:
    """The ClientHello replay cache evicts its oldest entries when full; the
    early-data cache (keyed by ticket) is the second line: the replay gets no
    early data. The handshake itself may go on, but the replayer holds no KEM
    key and cannot finish it."""
    p = first_session()
    capture = Capture()
    with_early_data(p, capture=capture)
    p.server_ctx._seen_hellos.clear()  # as if flooded out
    replayed = replay(capture.first_flight, p.server_ctx)
    events = drain_events(replayed)
    assert not any(isinstance(e, EarlyDataReceived) for e in events)
    assert not replayed.handshake_complete
    assert replayed.data_to_send()  # it answered (a resumed server flight) and waits


def test_replay_outside_the_freshness_window_gets_no_early_data() -> None:
    """Even a server that never saw the ticket refuses early data whose age
    (as the client stated it) disagrees with the ticket's by more than
    early_data_window."""
    p = first_session()
    capture = Capture()
    with_early_data(p, capture=capture)
    twin = Context(SERVER, early_data=True, tickets_per_handshake=0)
    twin._ticket_keys = p.server_ctx.ticket_keys  # a server sharing the ticket keys
    events = drain_events(replay(capture.first_flight, twin, now=NOW + 11))
    assert not any(isinstance(e, EarlyDataReceived) for e in events)


def test_replay_to_another_context_sharing_the_ticket_keys_gets_no_early_data() -> None:
    """Anti-replay state is per server Context (and process), so early data is
    accepted only by the Context that issued the ticket (its zone): a Context
    sharing the ticket keys (as a forked child does) resumes the ticket but
    refuses the replayed early data. (It used to accept it a second time.)"""
    p = first_session()
    capture = Capture()
    q = with_early_data(p, capture=capture)
    assert early_received(q) == REQUEST
    twin = Context(SERVER, early_data=True, tickets_per_handshake=0)
    twin._ticket_keys = p.server_ctx.ticket_keys
    replayed = replay(capture.first_flight, twin, now=NOW + 1)
    assert drain_events(replayed) == []
    assert replayed._resumed  # the ticket opens there: only its early data is refused
    assert not replayed.handshake_complete


def test_replay_after_the_clock_went_forward_past_the_ticket_then_back_gets_no_early_data() -> None:
    """The server's clock jumps forward past the ticket's expiry (a 0-RTT
    resumption then makes the replay cache drop the expired entry), then back
    to within the freshness window of the original: the recorded flight was
    accepted as early data a second time. The cache now refuses early data
    for a ticket expiring no later than an entry it forgot."""
    p = first_session(server={"ticket_lifetime": 3600.0})
    capture = Capture()
    q = with_early_data(p, now=NOW + 100, capture=capture)
    assert early_received(q) == REQUEST
    ahead = NOW + 3700  # past the ticket's expiry (NOW + 3600)
    other = Pair(
        Context(trusted_peers=[SERVER.public], early_data=True),
        p.server_ctx,
        {"server_name": SERVER_NAME},
        ahead,
    )
    other.handshake()
    assert early_received(with_early_data(other, now=ahead + 1)) == REQUEST
    replayed = replay(capture.first_flight, p.server_ctx, now=NOW + 101)  # the clock went back
    assert not any(isinstance(e, EarlyDataReceived) for e in drain_events(replayed))
    # A ticket issued after the clock went back (expiring later) still gets its early data.
    later = Pair(
        Context(trusted_peers=[SERVER.public], early_data=True),
        p.server_ctx,
        {"server_name": SERVER_NAME},
        NOW + 102,
    )
    later.handshake()
    assert early_received(with_early_data(later, now=NOW + 103)) == REQUEST


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_server_process_resumes_its_parents_tickets_but_refuses_their_early_data() -> None:
    """A server process that forks after its ticket keys exist (a pre-fork
    server): parent and child share the keys, each with its own replay cache.
    Each used to accept one recorded flight's early data (then the child
    forgot the keys, and never resumed the parent's tickets). The child now
    resumes the parent's ticket, but only the parent, which issued it,
    accepts its early data."""
    p = first_session()
    client = Connection(p.client_ctx, "client", server_name=SERVER_NAME)
    client.start(NOW + 5, early_data=REQUEST)
    flight = client.data_to_send()

    def child() -> None:
        replayed = replay(flight, p.server_ctx, now=NOW + 6)
        assert not any(isinstance(e, EarlyDataReceived) for e in drain_events(replayed))
        assert replayed._resumed  # the ticket opens: only its early data is refused

    in_a_child_forked_with_locks_held([], child)
    original = replay(flight, p.server_ctx, now=NOW + 5)
    assert drain_events(original) == [EarlyDataReceived(REQUEST)]
    assert original._resumed


def test_copied_ticket_gets_its_early_data_accepted_only_once() -> None:
    """A copied ticket resumes (tickets are bearer tokens), but the early-data
    cache refuses its early data the second time; the data is reported back."""
    p = first_session()
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    results = []
    for _ in range(2):
        holder = Context(trusted_peers=[SERVER.public], early_data=True)
        holder.session_cache.store(CACHE_KEY, ticket)
        results.append(with_early_data(p, client_ctx=holder))
    first, second = results
    assert early_received(first) == REQUEST
    assert early_received(second) == b""
    assert second.client.session is not None
    assert second.client.session.resumed
    assert not second.client.session.early_data_accepted
    assert rejected(second) == REQUEST
    assert received_data(second.server_events) == REQUEST  # sent again, once


# -------------------------------------------------------- refused by the server


def _ticket_refused(p: Pair) -> dict[str, object]:
    """Make the server refuse the ticket itself (unknown ticket keys)."""
    return {"server_ctx": Context(SERVER, early_data=True, tickets_per_handshake=0)}


def _server_turned_early_data_off(p: Pair) -> dict[str, object]:
    p.server_ctx.early_data = False
    return {}


def _hello_retry(p: Pair) -> dict[str, object]:
    p.server_ctx.groups = ("mlkem768",)
    return {}


def _age_outside_window(p: Pair) -> dict[str, object]:
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    p.client_ctx.session_cache.store(CACHE_KEY, replace(ticket, received=NOW + 11))
    return {"now": NOW + 11}  # the client thinks the ticket is new; it is 11 s old


def _replay_cache_full(p: Pair) -> dict[str, object]:
    p.server_ctx._early_replay = EarlyDataReplayCache(max_entries=1)
    assert p.server_ctx._early_replay.first_use(b"someone else's ticket", NOW + 99, NOW)
    return {}


@pytest.mark.parametrize(
    ("arrange", "resumed"),
    [
        (_server_turned_early_data_off, True),
        (_hello_retry, True),
        (_age_outside_window, True),
        (_replay_cache_full, True),
        (_ticket_refused, False),
    ],
    ids=["server-early-data-off", "hello-retry", "age-window", "replay-cache-full", "no-ticket"],
)
def test_refused_early_data_is_reported_and_sent_again_once(arrange: object, resumed: bool) -> None:
    p = first_session()
    kwargs = arrange(p)  # type: ignore[operator]
    q = with_early_data(p, **kwargs)
    assert q.client.handshake_complete
    assert q.server.handshake_complete
    assert early_received(q) == b""  # none of it processed as early data
    assert q.client_events[0] == EarlyDataRejected(REQUEST)  # exactly the data
    assert isinstance(q.client_events[1], HandshakeCompleted)
    session = q.client_events[1].session
    assert session.resumed is resumed
    assert not session.early_data_accepted
    # Sent again by the connection itself, as ordinary data after the
    # handshake: the server receives it once.
    assert received_data(q.server_events) == REQUEST
    assert not any(isinstance(e, EarlyDataReceived) for e in q.server_events)
    assert q.server.stats.bytes_received == len(REQUEST)
    assert q.client.stats.bytes_sent == len(REQUEST)


def test_refused_early_data_goes_before_what_was_written_after_it() -> None:
    """Written after start(early_data=A) and before the handshake completes,
    B waits for the handshake; A, refused, is sent again first: the server
    receives A then B, as it does when A is accepted or there is no ticket."""
    for arrange in (None, _server_turned_early_data_off, _ticket_refused):
        p = first_session()
        kwargs = arrange(p) if arrange is not None else {}
        q = Pair(
            kwargs.get("client_ctx", p.client_ctx),  # type: ignore[arg-type]
            kwargs.get("server_ctx", p.server_ctx),  # type: ignore[arg-type]
            {"server_name": SERVER_NAME},
        )
        q.client.start(NOW, early_data=b"A" * 100)
        q.client.send_data(b"B" * 100)
        q.server.start(NOW)
        q.pump()
        assert q.client.handshake_complete, q.client_events
        assert early_received(q) + received_data(q.server_events) == b"A" * 100 + b"B" * 100
        if arrange is not None:
            assert rejected(q) == b"A" * 100


def test_early_data_limit_is_the_tickets_not_the_servers_current_setting() -> None:
    """A ticket carries the limit it was issued with; lowering max_early_data
    affects tickets issued from then on."""
    p = first_session(server={"max_early_data": 1000})
    p.server_ctx.max_early_data = 10
    q = with_early_data(p, b"x" * 500)
    assert early_received(q) == b"x" * 500
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    assert ticket.max_early_data == 10


# ------------------------------------------------------ not sent as early data


def _issue_from_server_without_early_data() -> tuple[Pair, bytes]:
    return first_session(server={"early_data": False}), REQUEST


def _issue_with_zero_allowance() -> tuple[Pair, bytes]:
    return first_session(server={"max_early_data": 0}), REQUEST


def _data_over_the_allowance() -> tuple[Pair, bytes]:
    return first_session(server={"max_early_data": 10}), b"0123456789A"


def _client_without_early_data() -> tuple[Pair, bytes]:
    return first_session(client={"early_data": False}), REQUEST


def _no_ticket() -> tuple[Pair, bytes]:
    p = Pair.make(client={"early_data": True}, server_name=SERVER_NAME)
    return p, REQUEST


@pytest.mark.parametrize(
    "arrange",
    [
        _issue_from_server_without_early_data,
        _issue_with_zero_allowance,
        _data_over_the_allowance,
        _client_without_early_data,
        _no_ticket,
    ],
    ids=["ticket-from-no-0rtt-server", "zero-allowance", "over-allowance", "client-off", "none"],
)
def test_early_data_that_cannot_be_sent_early_is_sent_after_the_handshake(
    arrange: object,
) -> None:
    """Decided by the client before sending: no 0-RTT is attempted, nothing is
    rejected, and the data goes out once as ordinary data."""
    p, data = arrange()  # type: ignore[operator]
    capture = Capture()
    q = with_early_data(p, data, capture=capture)
    offer = offer_of(capture.first_flight)
    assert offer is None or offer.early_records == 0
    assert all(r[0] != RECORD_SEALED for r in split_records(capture.first_flight))
    assert event_types(q.client_events) == ["HandshakeCompleted"]
    assert [type(e) for e in q.server_events] == [HandshakeCompleted, DataReceived]
    assert received_data(q.server_events) == data


# ------------------------------------------------------------------ misbehaving


def test_more_early_data_than_the_ticket_allows_is_a_protocol_violation() -> None:
    """A client that raises its own allowance: within the announced record
    count the server opens the records and counts bytes against the ticket."""
    p = first_session(server={"max_early_data": 100})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    p.client_ctx.session_cache.store(CACHE_KEY, replace(ticket, max_early_data=1 << 20))
    q = with_early_data(p, b"z" * 500)
    assert early_received(q) == b""
    assert_closed_with(q.server, q.server_events, ProtocolViolation)
    assert "early data" in str(q.server.error)


def test_more_early_records_than_the_ticket_allows_are_skipped_unread() -> None:
    p = first_session(server={"max_early_data": 100})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    p.client_ctx.session_cache.store(CACHE_KEY, replace(ticket, max_early_data=1 << 20))
    data = b"w" * 20000  # two records, where the ticket allows one
    q = with_early_data(p, data)
    assert early_received(q) == b""
    assert q.client_events[0] == EarlyDataRejected(data)
    assert received_data(q.server_events) == data  # sent again, once


def test_more_early_records_than_any_ticket_allows_is_a_protocol_violation() -> None:
    """A refused offer's early records are skipped unread, but not however
    many the client announces: more than MAX_EARLY_DATA fills (which no ticket
    of a server allows) is refused at once."""
    p = first_session(server={"max_early_data": 100})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    p.client_ctx.session_cache.store(CACHE_KEY, replace(ticket, max_early_data=1 << 30))
    q = with_early_data(p, b"w" * (MAX_EARLY_DATA + 1))
    assert early_received(q) == b""
    assert_closed_with(q.server, q.server_events, ProtocolViolation)
    assert "early records" in str(q.server.error)
    assert not q.client.handshake_complete


def test_tampered_early_data_record_fails_the_handshake() -> None:
    p = first_session()

    def flip_early(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "client" or dst.state.value != "server_wait_hello":
            return data
        records = split_records(data)
        assert records[-1][0] == RECORD_SEALED
        early = bytearray(records[-1])
        early[10] ^= 0x01
        return b"".join(records[:-1]) + bytes(early)

    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    q.client.start(NOW, early_data=REQUEST)
    q.server.start(NOW)
    q.pump(flip_early)
    assert early_received(q) == b""
    assert_closed_with(q.server, q.server_events, KeyAgreementFailed)
    assert "early data" in str(q.server.error)


def test_early_data_arguments() -> None:
    p = first_session()
    server = Connection(p.server_ctx, "server")
    with pytest.raises(ValueError, match="early_data"):
        server.start(NOW, early_data=b"x")
    client = Connection(p.client_ctx, "client", server_name=SERVER_NAME)
    with pytest.raises(TypeError, match="early_data"):
        client.start(NOW, early_data="text")  # type: ignore[arg-type]
    assert len(p.client_ctx.session_cache) == 1  # the failed start took no ticket
    q = with_early_data(p, b"")  # empty: nothing to send early, nothing rejected
    assert event_types(q.client_events) == ["HandshakeCompleted"]
    assert event_types(q.server_events) == ["HandshakeCompleted"]


def test_early_data_is_not_sent_under_a_cipher_the_client_no_longer_allows() -> None:
    p = first_session(client={"ciphers": ["aes-256-gcm", "chacha20-poly1305"]})
    assert p.client.session is not None
    assert p.client.session.cipher == "aes-256-gcm"
    p.client_ctx.ciphers = ("chacha20-poly1305",)  # aes-256-gcm withdrawn
    p.server_ctx.ciphers = ("chacha20-poly1305",)
    q = with_early_data(p)
    assert q.client.session is not None
    assert q.client.session.cipher == "chacha20-poly1305"
    assert early_received(q) == b""


def test_a_server_that_answers_early_data_and_closes_at_once_delivers_its_answer() -> None:
    """A server that replies to an accepted request and closes before the
    client's Finished: the reply goes first (0.5-RTT, under the server's
    application key), then close_notify. It was dropped, and the client saw a
    clean end without it."""
    q = first_flight_with_early_data()
    q.server.send_data(b"200 OK")
    q.server.close()
    q.client.receive_data(q.server.data_to_send(), NOW)
    events = drain_events(q.client)
    assert received_data(events) == b"200 OK"
    assert event_types(events)[-1] == "ConnectionClosed"
    assert q.client.error is None


def test_a_server_awaiting_the_client_identity_sends_nothing_more_at_close() -> None:
    """The same close while the client's identity is still awaited: what was
    written is not sent to a client not yet authenticated."""
    client_id = cached_identity("ed25519", 5)
    p = Pair.make(
        server={"client_auth": "required", "trusted_peers": [client_id.public]},
        client={"identity": client_id},
    )
    p.start()
    p.server.receive_data(p.client.data_to_send(), NOW)
    p.server.send_data(b"for an authenticated client only")
    p.server.close()
    p.client.receive_data(p.server.data_to_send(), NOW)
    assert received_data(drain_events(p.client)) == b""


def test_a_ticket_is_refused_at_the_instant_its_lifetime_ends() -> None:
    """A ticket is valid while now < issued + lifetime, on the server as on the
    client. At that instant the replay cache forgets the ticket: accepting it
    then let two copies of one ticket (two clients) both send early data."""
    p = first_session(server={"ticket_lifetime": 60.0})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    for client_now, server_now, accepted in (
        (NOW + 59.9, NOW + 59.9, True),
        (NOW + 59.9, NOW + 60, False),
    ):
        cache = SessionCache()
        cache.store(CACHE_KEY, ticket)  # a copy of the same ticket for each client
        ctx = Context(trusted_peers=[SERVER.public], early_data=True, session_cache=cache)
        client = Connection(ctx, "client", server_name=SERVER_NAME)
        client.start(client_now, early_data=REQUEST)
        server = Connection(p.server_ctx, "server")
        server.start(server_now)
        server.receive_data(client.data_to_send(), server_now)
        events = drain_events(server)
        assert (EarlyDataReceived(REQUEST) in events) is accepted
        assert server._resumed is accepted


# ----------------------------------------------------- the early-data replay cache


def test_replay_cache_is_single_use_per_ticket() -> None:
    cache = EarlyDataReplayCache()
    assert cache.first_use(b"ticket-a", NOW + 100, NOW)
    assert not cache.first_use(b"ticket-a", NOW + 100, NOW + 1)
    assert cache.first_use(b"ticket-b", NOW + 100, NOW + 1)
    assert not cache.first_use(b"ticket-b", NOW + 100, NOW + 99)


def test_replay_cache_forgets_a_ticket_once_it_expires() -> None:
    cache = EarlyDataReplayCache()
    assert cache.first_use(b"t", NOW + 100, NOW)
    assert not cache.first_use(b"t", NOW + 100, NOW + 99.9)
    assert cache.first_use(b"t", NOW + 300, NOW + 100)  # the server refuses such a ticket anyway


def test_replay_cache_refuses_what_it_may_have_forgotten_after_the_clock_went_back() -> None:
    cache = EarlyDataReplayCache()
    assert cache.first_use(b"t", NOW + 100, NOW)
    assert cache.first_use(b"u", NOW + 300, NOW + 200)  # the clock went forward: t is dropped
    assert not cache.first_use(b"t", NOW + 100, NOW + 50)  # and back: t may be a replay
    assert not cache.first_use(b"v", NOW + 100, NOW + 50)  # as may any key expiring as early
    assert cache.first_use(b"w", NOW + 101, NOW + 50)  # expiring later: never dropped


def test_full_replay_cache_refuses_rather_than_forgets() -> None:
    cache = EarlyDataReplayCache(max_entries=2)
    assert cache.first_use(b"a", NOW + 100, NOW)
    assert cache.first_use(b"b", NOW + 100, NOW)
    assert not cache.first_use(b"c", NOW + 100, NOW)  # full: refused, a and b kept
    assert not cache.first_use(b"a", NOW + 100, NOW)
    assert cache.first_use(b"c", NOW + 200, NOW + 100)  # a and b expired: room again


def test_replay_cache_does_not_count_expired_entries_against_its_bound() -> None:
    cache = EarlyDataReplayCache(max_entries=2)
    assert cache.first_use(b"long-lived", NOW + 1000, NOW)
    assert cache.first_use(b"short-lived", NOW + 10, NOW)  # an older ticket: expires first
    assert cache.first_use(b"new", NOW + 1000, NOW + 50)  # short-lived has expired


# ------------------------------------------------------------ through an adapter


async def _sans_io_client_over_tcp(
    conn: Connection, cache: SessionCache, port: int, early: bytes | None
) -> None:
    """Drive a sans-IO client over a plain TCP stream until its ticket has
    arrived (first connection) or the handshake is over (second), then close."""
    import asyncio
    import time

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn.start(time.time(), early_data=early)
    try:
        while True:
            writer.write(conn.data_to_send())
            await writer.drain()
            if conn.handshake_complete and (early is not None or len(cache)):
                break
            data = await asyncio.wait_for(reader.read(65536), 5.0)
            assert data, drain_events(conn)
            conn.receive_data(data, time.time())
        conn.close()
        writer.write(conn.data_to_send())
        await writer.drain()
    finally:
        writer.close()


def test_asyncio_server_delivers_accepted_early_data() -> None:
    import asyncio

    from nautilus.asyncio import start_server

    server_ctx = Context(SERVER, early_data=True)
    client_ctx = Context(trusted_peers=[SERVER.public], early_data=True)
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())
        writer.close()

    async def main() -> Connection:
        server = await start_server(handler, "127.0.0.1", 0, context=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            first = Connection(client_ctx, "client", server_name=SERVER_NAME)
            await _sans_io_client_over_tcp(first, client_ctx.session_cache, port, None)
            second = Connection(client_ctx, "client", server_name=SERVER_NAME)
            await _sans_io_client_over_tcp(second, client_ctx.session_cache, port, REQUEST)
            for _ in range(100):
                if len(received) == 2:
                    break
                await asyncio.sleep(0.01)
        return second

    second = asyncio.run(asyncio.wait_for(main(), 10.0))
    assert second.session is not None
    assert second.session.early_data_accepted  # the client will not send it again
    assert received[1] == REQUEST


def test_early_data_is_counted_in_the_connection_stats() -> None:
    p = first_session()
    q = with_early_data(p, b"12345")
    assert early_received(q) == b"12345"
    assert q.client.stats.bytes_sent == 5
    assert q.server.stats.bytes_received == 5


def test_asyncio_client_sends_early_data_and_resends_it_if_refused() -> None:
    """open_connection(early_data=...): accepted as 0-RTT on a resumption; sent
    normally without a ticket; resent by the adapter if the server refuses it."""
    import asyncio

    import nautilus.asyncio

    async def scenario(server_early: bool) -> list[tuple[bytes, bool, bool]]:
        sid = cached_identity()
        sctx = Context(sid, early_data=server_early)
        cctx = Context(trusted_peers=[sid.public], early_data=True)
        got: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.append(await reader.readexactly(9))
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        server = await nautilus.asyncio.start_server(handle, "127.0.0.1", 0, context=sctx)
        port = server.sockets[0].getsockname()[1]
        out = []
        for _ in range(2):
            reader, writer = await nautilus.asyncio.open_connection(
                "127.0.0.1", port, context=cctx, early_data=b"early GET"
            )
            info = writer.get_extra_info("nautilus")
            assert await reader.readexactly(2) == b"ok"
            out.append((got[-1], info.resumed, info.early_data_accepted))
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return out

    accepted = asyncio.run(asyncio.wait_for(scenario(True), 20))
    assert accepted == [(b"early GET", False, False), (b"early GET", True, True)]
    refused = asyncio.run(asyncio.wait_for(scenario(False), 20))
    assert refused == [(b"early GET", False, False), (b"early GET", True, False)]


def test_replay_cache_that_evicts_when_full() -> None:
    """The client-hello cache's policy: a full cache forgets its oldest live entry
    rather than refuse (the early-data cache refuses instead)."""
    from nautilus.sessions import ReplayCache

    cache = ReplayCache(2, evict_when_full=True)
    assert cache.first_use(b"a", NOW + 100, NOW)
    assert cache.first_use(b"b", NOW + 100, NOW)
    assert not cache.first_use(b"b", NOW + 100, NOW)  # a replay
    assert cache.first_use(b"c", NOW + 100, NOW)  # full: "a" is forgotten
    assert cache.first_use(b"a", NOW + 100, NOW)
    assert not cache.first_use(b"c", NOW + 100, NOW)
    refusing = ReplayCache(1, evict_when_full=False)
    assert refusing.first_use(b"a", NOW + 100, NOW)
    assert not refusing.first_use(b"b", NOW + 100, NOW)
    assert refusing.first_use(b"b", NOW + 200, NOW + 150)  # "a" expired


def test_replay_cache_forgets_entries_expiring_out_of_order_and_stays_bounded() -> None:
    """Expired entries are found by their expiry, not by a scan of the whole
    cache (which a flood of hellos made the server pay on every call: see
    test_asyncio_adversarial.py::test_cheap_hellos_cost_no_more_when_the_hello_cache_is_full):
    one behind a longer-lived entry is forgotten as soon as it expires, and a
    cache that evicts keeps its bookkeeping bounded."""
    from nautilus.sessions import ReplayCache

    cache = ReplayCache(3, evict_when_full=False)
    assert cache.first_use(b"long", NOW + 1000, NOW)
    assert cache.first_use(b"short", NOW + 10, NOW)
    assert not cache.first_use(b"short", NOW + 10, NOW + 9)  # still live: a replay
    assert cache.first_use(b"short", NOW + 30, NOW + 11)  # expired, behind "long"
    assert cache.first_use(b"x", NOW + 1000, NOW + 11)
    assert not cache.first_use(b"y", NOW + 1000, NOW + 12)  # full: refused
    assert cache.first_use(b"y", NOW + 1000, NOW + 31)  # "short" expired: room
    evicting = ReplayCache(100, evict_when_full=True)
    for i in range(5000):
        assert evicting.first_use(b"%d" % i, NOW + 1000 - i % 7, NOW + i / 100)
    assert len(evicting._seen) == 100
    assert len(evicting._expiries) <= 2 * 100 + 64
    assert not evicting.first_use(b"4999", NOW + 1000, NOW + 50)  # the newest are kept
    assert evicting.first_use(b"0", NOW + 1000, NOW + 50)  # the oldest were evicted
    assert evicting.first_use(b"4999", NOW + 2000, NOW + 1000)  # all expired by now


@pytest.mark.parametrize("case", ["no ticket", "accepted", "refused", "over the allowance"])
def test_early_data_comes_first_whether_or_not_a_ticket_lets_it_go_as_0rtt(case: str) -> None:
    """send_data() before start(), start(early_data=...), send_data() after:
    the server receives the early data first in every case, as when it is
    accepted as 0-RTT. Without a usable ticket it used to come after the data
    written before start(): the order depended on the client's cache."""
    if case == "no ticket":
        p = Pair.make(server_name=SERVER_NAME)
    elif case == "over the allowance":
        p = first_session(server={"max_early_data": 1})
    else:
        p = first_session()
        p.server_ctx.early_data = case == "accepted"
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    q.client.send_data(b"A|")
    q.client.start(NOW, early_data=b"E|")
    q.client.send_data(b"B|")
    q.server.start(NOW)
    q.pump()
    assert early_received(q) + received_data(q.server_events) == b"E|A|B|"
    assert q.client.session is not None
    assert q.client.session.early_data_accepted == (case == "accepted")


# ------------------------------------------- checks found untested by a mutation run


@pytest.mark.parametrize("size", [100, 101])
def test_early_data_of_exactly_the_tickets_allowance_is_accepted_one_byte_more_is_not(
    size: int,
) -> None:
    p = first_session(server={"max_early_data": 100})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    p.client_ctx.session_cache.store(CACHE_KEY, replace(ticket, max_early_data=1 << 20))
    q = with_early_data(p, b"z" * size)
    if size == 100:
        assert early_received(q) == b"z" * 100
        assert q.server.handshake_complete, q.server.error
        return
    assert early_received(q) == b""
    assert_closed_with(q.server, q.server_events, ProtocolViolation)
    assert "more early data than the ticket allows" in str(q.server.error)


def test_a_refused_early_record_is_refused_from_an_oversized_header() -> None:
    """Refused early records are skipped unread, each at most a 16 KiB record:
    a larger header is record_overflow at once, not up to 16 MiB waited for."""
    p = first_session()
    p.server_ctx.early_data = False  # the ticket allows it; this server now refuses it

    def inflate(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "client" or dst.state.value != "server_wait_hello":
            return data
        records = split_records(data)
        assert records[-1][0] == RECORD_SEALED
        header = bytes([RECORD_SEALED]) + (1 << 20).to_bytes(3, "big")
        return b"".join(records[:-1]) + header + records[-1][4:]

    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    q.client.start(NOW, early_data=REQUEST)
    q.server.start(NOW)
    q.pump(inflate)
    assert_closed_with(q.server, q.server_events, ProtocolViolation)
    assert "oversized early-data record" in str(q.server.error)


def test_an_early_record_of_another_content_type_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = first_session()
    honest = RecordSealer._seal_chunk

    def as_handshake(self: RecordSealer, data: bytes, content_type: int) -> bytearray:
        early = bytes(data) == REQUEST
        return honest(self, data, ContentType.HANDSHAKE if early else content_type)

    monkeypatch.setattr(RecordSealer, "_seal_chunk", as_handshake)
    q = with_early_data(p)
    assert early_received(q) == b""
    assert_closed_with(q.server, q.server_events, ProtocolViolation)
    assert "early data must be application data" in str(q.server.error)


def test_early_data_under_a_cipher_the_server_no_longer_allows_is_refused() -> None:
    """The client still allows the ticket's cipher and sends early data under
    it; the server, which withdrew it, skips that data (sent again after)."""
    p = first_session(client={"ciphers": ["aes-256-gcm", "chacha20-poly1305"]})
    assert p.client.session is not None
    assert p.client.session.cipher == "aes-256-gcm"
    p.server_ctx.ciphers = ("chacha20-poly1305",)
    q = with_early_data(p)
    assert early_received(q) == b""
    assert rejected(q) == REQUEST
    assert received_data(q.server_events) == REQUEST


def _claim_early_data_accepted(monkeypatch: pytest.MonkeyPatch, server: Connection) -> None:
    rewrite_sent(
        monkeypatch, server, EncryptedExtensions, lambda ee: replace(ee, early_data_accepted=True)
    )


def test_client_refuses_early_data_accepted_in_a_resumption_that_sent_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = first_session()
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    _claim_early_data_accepted(monkeypatch, q.server)
    q.connect()
    assert q.client.session is None
    assert_closed_with(q.client, q.client_events, ProtocolViolation)
    assert "accepted early data that was not sent" in str(q.client.error)


def test_client_refuses_early_data_accepted_by_a_full_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client sent early data, the server did not honour the ticket (a
    full handshake) and claims it accepted the data: refused, not lost."""
    p = first_session()
    stranger = Context(SERVER, tickets_per_handshake=0, early_data=True)  # other ticket keys
    q = Pair(p.client_ctx, stranger, {"server_name": SERVER_NAME})
    _claim_early_data_accepted(monkeypatch, q.server)
    q.client.start(NOW, early_data=REQUEST)
    q.server.start(NOW)
    q.pump()
    assert_closed_with(q.client, q.client_events, ProtocolViolation)
    assert "accepted early data that was not sent" in str(q.client.error)


def test_early_data_offered_again_in_a_retried_hello_is_not_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that answers a HelloRetry with its ticket and early data again
    (no Connection does: the retried hello drops its offer). The server
    honours the ticket, and skips that early data unread."""
    opts = {"groups": ["x25519-mlkem768", "mlkem768"]}
    p = first_session(server={"groups": ["mlkem768"]}, client=opts)
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    c = q.client

    def offer_again(msg: HelloRetry, full: bytes) -> State:
        hello, ticket = c._hello, c._ticket
        assert hello is not None
        assert ticket is not None
        c._absorb(full)
        kem = GROUPS["mlkem768"].generate()
        share = kem.public_key().public_bytes_raw()
        c._kem = kem
        c._send_hello(replace(hello, share_group=msg.group, share=share, psk_offer=b""), 1)
        assert c._psk_keys is not None
        secret = c._psk_keys.early_traffic(c._hash())
        with RecordSealer._from_secret(_CIPHER_BY_ID[ticket.cipher], secret, 16384) as sealer:
            c._out.append(sealer._seal_chunk(REQUEST, ContentType.APPLICATION_DATA))
        return State.CLIENT_WAIT_RETRIED_HELLO

    patch_method(monkeypatch, c, "_on_hello_retry", offer_again)
    q.connect()
    assert q.client.handshake_complete, q.client.error
    assert q.server.handshake_complete, q.server.error
    assert q.server.session is not None
    assert q.server.session.resumed
    assert not q.server.session.early_data_accepted
    assert early_received(q) == b""


def test_the_early_data_key_is_dropped_once_its_records_are_read() -> None:
    p = first_session()
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    q.client.start(NOW, early_data=REQUEST)
    q.server.start(NOW)
    q.server.receive_data(q.client.data_to_send(), NOW)
    q.collect()
    assert early_received(q) == REQUEST
    assert q.server._early_opener is None
    assert not q.server.handshake_complete  # (dropped as soon as read, not at the end)
