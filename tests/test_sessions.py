"""Session resumption over in-memory connection pairs: tickets, their failure
modes, the two resumption modes, ticket keys, key rotation within a session,
counters and the server's session table (docs/sessions.md).

Time is passed in: ``NOW`` is the fixed test clock, and tests move it forward
to expire tickets or rotate keys.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    NOW,
    Pair,
    assert_closed_with,
    cached_identity,
    event_types,
    handshake_message,
    in_a_child_forked_with_locks_held,
    patch_method,
    plain_record,
    received_data,
    rewrite_plain_handshake,
    rewrite_sent,
    split_plain_handshake,
    split_records,
    ticket_contents,
)

import nautilus.context as context_module
import nautilus.sessions
import nautilus.sessions as sessions_module
from nautilus import (
    AuthenticationFailed,
    ConnectionClosed,
    Context,
    CustomProtocolStep,
    DataReceived,
    Handshake,
    HandshakeCompleted,
    IntegrityError,
    KeyAgreementFailed,
    KeysUpdated,
    ProtocolViolation,
)
from nautilus.context import _SETTINGS
from nautilus.identity import TrustStore
from nautilus.protocol import keyschedule as ks
from nautilus.protocol.codec import DecodeError
from nautilus.protocol.connection import Connection
from nautilus.protocol.messages import (
    BINDER_SIZE,
    RECORD_HANDSHAKE_PLAIN,
    ClientAuth,
    ClientHello,
    EncryptedExtensions,
    Finished,
    MsgType,
    NewSessionTicket,
    PskMode,
    PskOffer,
    ServerHello,
    frame,
)
from nautilus.record import ContentType, RecordOpener, RecordSealer
from nautilus.sessions import (
    _MAX_ADVANCE,
    _MAX_RETIRED_KEYS,
    MAX_EARLY_DATA,
    MAX_TICKET_LIFETIME,
    ZONE_SIZE,
    LiveSession,
    SessionCache,
    SessionTable,
    StoredTicket,
    TicketContents,
    TicketKeys,
)

SERVER_NAME = "srv:1"
CACHE_KEY = SessionCache.key("*", SERVER_NAME)
SERVER = cached_identity()
CLIENT = cached_identity("ed25519", 1)
CLIENT_CACHE_KEY = SessionCache.key("*", SERVER_NAME, CLIENT.peer_id)
"""Where a context with the identity CLIENT keeps its tickets for the server."""
OTHER = cached_identity("ed25519", 2)


class Flights:
    """An intercept that records every flight as (sender role, bytes)."""

    def __init__(self) -> None:
        self.flights: list[tuple[str, bytes]] = []

    def __call__(self, src: Connection, dst: Connection, data: bytes) -> bytes:
        self.flights.append((src.role, data))
        return data

    def first(self, role: str) -> bytes:
        return next(data for who, data in self.flights if who == role)

    def wire(self) -> bytes:
        return b"".join(data for _, data in self.flights)


def first_session(
    server: dict[str, object] | None = None, client: dict[str, object] | None = None
) -> Pair:
    """A full handshake after which the client holds the server's ticket(s)."""
    p = Pair.make(
        server={"tickets_per_handshake": 1, **(server or {})},
        client=client,
        server_name=SERVER_NAME,
    )
    # hello, server flight, client flight; the ticket follows the server's
    # flight, unless the server asks for the client's identity or may agree a
    # step (then it follows the client's flight, whose contents it depends on)
    opts = server or {}
    certain = opts.get("client_auth", "off") == "off" and "handshake" not in opts
    assert p.handshake() == (3 if certain else 4)
    assert p.client.session is not None
    assert not p.client.session.resumed
    return p


def resume(
    p: Pair,
    *,
    now: float = NOW,
    client_ctx: Context | None = None,
    server_ctx: Context | None = None,
    intercept: object = None,
) -> Pair:
    """A second connection between the contexts of ``p`` (or replacements)."""
    q = Pair(
        client_ctx if client_ctx is not None else p.client_ctx,
        server_ctx if server_ctx is not None else p.server_ctx,
        {"server_name": SERVER_NAME},
        now,
    )
    q.connect(intercept)  # type: ignore[arg-type]
    return q


def client_hello(flight: bytes) -> ClientHello:
    """The ClientHello at the start of a client's first flight."""
    messages, _ = split_plain_handshake(flight)
    assert messages[0][0] == MsgType.CLIENT_HELLO
    return ClientHello.decode_body(messages[0][1])


def server_hello(flight: bytes) -> ServerHello:
    messages, _ = split_plain_handshake(flight)
    body = next(b for t, b in messages if t == MsgType.SERVER_HELLO)
    return ServerHello.decode_body(body)


def completed(q: Pair) -> tuple[bool, bool]:
    """(client resumed, server resumed); both sides must have completed."""
    assert q.client.handshake_complete, q.client_events
    assert q.server.handshake_complete, q.server_events
    assert q.client.session is not None
    assert q.server.session is not None
    return q.client.session.resumed, q.server.session.resumed


def replace_ticket(p: Pair, **changes: object) -> StoredTicket:
    """Swap the client's cached ticket for an edited copy; returns the original."""
    cache = p.client_ctx.session_cache
    original = cache.take(CACHE_KEY, NOW)
    assert original is not None
    cache.store(CACHE_KEY, replace(original, **changes))  # type: ignore[arg-type]
    return original


# --------------------------------------------------------------- resumption works


def test_resumed_session_is_reported_as_resumed_on_both_sides() -> None:
    p = first_session()
    assert len(p.client_ctx.session_cache) == 1
    flights = Flights()
    q = resume(p, intercept=flights)
    assert completed(q) == (True, True)
    assert client_hello(flights.first("client")).psk_offer
    assert server_hello(flights.first("server")).psk_mode == PskMode.PSK_DHE
    c, s = q.client.session, q.server.session
    assert c is not None
    assert s is not None
    assert c.trust == "resumed"
    assert c.peer_id == SERVER.peer_id  # carried over from the ticket
    assert s.peer_key is None  # the client was anonymous in the original session
    assert s.trust is None  # ...and still is: nothing was authenticated
    assert (c.group, c.cipher) == (s.group, s.cipher)
    assert event_types(q.client_events) == ["HandshakeCompleted"]
    assert event_types(q.server_events) == ["HandshakeCompleted"]
    q.client.send_data(b"ping")
    q.server.send_data(b"pong")
    q.pump()
    assert received_data(q.server_events) == b"ping"
    assert received_data(q.client_events) == b"pong"


def test_tickets_follow_the_server_flight_when_the_client_flight_is_certain() -> None:
    """No identity asked and no step agreed: the client's flight can only be its
    Finished, so the tickets (RFC 8446 section 4.6.1) leave right behind the
    server's flight, and the client holds them before the server has read its
    Finished. Their PSK is the one the client derives after its Finished."""
    p = Pair.make(server={"tickets_per_handshake": 2}, server_name=SERVER_NAME)
    p.start()
    p.server.receive_data(p.client.data_to_send(), NOW)
    flight = p.server.data_to_send()
    _hello, _flight, *tickets = split_records(flight)
    assert len(tickets) == 2
    p.client.receive_data(flight, NOW)
    assert p.client.handshake_complete
    assert len(p.client_ctx.session_cache) == 2
    assert not p.server.handshake_complete
    p.server.receive_data(p.client.data_to_send(), NOW)
    assert p.server.handshake_complete
    assert p.server.data_to_send() == b""  # nothing left to send after the client's Finished
    for _ in range(2):
        q = resume(p)
        assert completed(q) == (True, True)


def test_a_wrong_client_finished_still_fails_when_tickets_went_early() -> None:
    p = Pair.make(server={"tickets_per_handshake": 1}, server_name=SERVER_NAME)
    p.start()
    p.server.receive_data(p.client.data_to_send(), NOW)
    p.client.receive_data(p.server.data_to_send(), NOW)
    assert len(p.client_ctx.session_cache) == 1
    p.client.data_to_send()  # the genuine Finished is dropped; a forged one is sent
    key, iv = ks.traffic_keys(p.server._keys.client_hs, p.server._cipher)  # type: ignore[union-attr]
    forged = RecordSealer(p.server._cipher, key, iv).seal(
        frame(Finished(bytes(32))), ContentType.HANDSHAKE
    )
    p.server.receive_data(forged, NOW)
    p.collect()
    assert_closed_with(p.server, p.server_events, AuthenticationFailed)
    assert "Finished MAC" in str(p.server.error)
    assert "HandshakeCompleted" not in event_types(p.server_events)
    assert len(p.server_ctx.sessions) == 0


def test_tickets_wait_for_the_client_flight_when_it_is_not_certain() -> None:
    """A step with a client payload (or a request for the client's identity)
    makes the client's flight unknown in advance: the tickets then follow it."""
    step = CustomProtocolStep("example.com/echo/1", client_payload=lambda ctx, p: b"hello")
    hs = Handshake()
    hs.add(step)
    p = first_session(server={"handshake": hs}, client={"handshake": hs})
    assert p.client.session is not None
    assert p.client.session.steps == ("example.com/echo/1",)
    assert len(p.client_ctx.session_cache) == 1
    assert completed(resume(p)) == (True, True)


def test_resumed_server_flight_skips_identity_and_signature() -> None:
    """A resumption proves the server through the PSK: no Identity, no Verify."""
    p = first_session()
    full = Flights()
    q0 = Pair(p.client_ctx, p.server_ctx)  # no server_name: does not touch the cache
    q0.connect(full)
    resumed = Flights()
    q = resume(p, intercept=resumed)
    assert completed(q) == (True, True)
    assert len(resumed.first("server")) < len(full.first("server")) - 64


def test_resumption_carries_the_client_identity_under_required_client_auth() -> None:
    p = first_session(
        server={"client_auth": "required", "trusted_peers": [CLIENT.public]},
        client={"identity": CLIENT},
    )
    assert p.server.session is not None
    assert p.server.session.peer_id == CLIENT.peer_id
    q = resume(p)
    assert completed(q) == (True, True)
    assert q.server.session is not None
    assert q.client.session is not None
    assert q.server.session.peer_id == CLIENT.peer_id
    assert q.server.session.trust == "resumed"
    assert q.client.session.peer_id == SERVER.peer_id
    assert q.client.session.trust == "resumed"


def test_resumed_server_reports_no_trust_for_an_anonymous_client() -> None:
    """trust is None when the peer was not authenticated, resumed or not."""
    p = first_session()
    q = resume(p)
    assert q.server.session is not None
    assert q.server.session.peer_key is None
    assert q.server.session.trust is None


def test_cached_tickets_need_a_server_name_or_expected_peer() -> None:
    """Without a name for the server, its tickets could never be found: none is kept."""
    p = Pair.make(server={"tickets_per_handshake": 2})
    p.handshake()
    assert len(p.client_ctx.session_cache) == 0
    q = Pair.make(server={"tickets_per_handshake": 2}, expected_peer=SERVER.peer_id)
    q.handshake()
    assert len(q.client_ctx.session_cache) == 2
    assert q.client_ctx.session_cache.take(SessionCache.key(SERVER.peer_id, None), NOW)


# ------------------------------------------------- failures: fall back or refuse


def test_ticket_expired_on_the_client_is_not_offered() -> None:
    p = first_session()
    flights = Flights()
    q = resume(p, now=NOW + 7200, intercept=flights)  # ticket_lifetime is 7200 s
    assert completed(q) == (False, False)
    assert client_hello(flights.first("client")).psk_offer == b""
    assert q.client.session is not None
    assert q.client.session.trust == "pinned"
    fresh = p.client_ctx.session_cache.take(CACHE_KEY, NOW + 7200)
    assert fresh is not None
    assert fresh.received == NOW + 7200
    assert len(p.client_ctx.session_cache) == 0  # the expired one was dropped by take()


def test_ticket_expired_on_the_server_falls_back_to_a_full_handshake() -> None:
    """The client's view of the age is not trusted: the server checks its own."""
    p = first_session()
    later = NOW + 7201
    replace_ticket(p, received=later)  # the client believes the ticket is new
    flights = Flights()
    q = resume(p, now=later, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer  # offered...
    assert completed(q) == (False, False)  # ...and refused: a full handshake
    assert server_hello(flights.first("server")).psk_mode == PskMode.NONE
    assert q.client.session is not None
    assert q.client.session.trust == "pinned"
    assert q.client.session.peer_id == SERVER.peer_id


def test_rotation_never_voids_a_live_ticket_retiring_all_keys_does() -> None:
    """Rotated-out keys keep opening tickets for one lifetime after their
    retirement; ``retire_all()`` (a suspected key leak) voids every ticket."""
    p = first_session(server={"tickets_per_handshake": 3})
    p.server_ctx.tickets_per_handshake = 0  # the resumptions must use the old tickets
    keys = p.server_ctx.ticket_keys
    keys.rotate(NOW)
    assert completed(resume(p)) == (True, True)
    keys.rotate(NOW + 1)
    keys.rotate(NOW + 2)  # the issuing key is two rotations old
    assert completed(resume(p, now=NOW + 2)) == (True, True)
    keys.retire_all()
    assert completed(resume(p, now=NOW + 3)) == (False, False)


def test_ticket_from_another_server_context_is_not_honoured() -> None:
    """Same identity, another Context: other ticket keys (as after a restart)."""
    p = first_session()
    other = Context(SERVER, tickets_per_handshake=0)
    q = resume(p, server_ctx=other)
    assert completed(q) == (False, False)
    assert q.client.session is not None
    assert q.client.session.trust == "pinned"


def test_ticket_is_bound_to_the_issuing_identity_even_under_shared_ticket_keys() -> None:
    p = first_session(client={"trusted_peers": [SERVER.public, OTHER.public]})
    other = Context(OTHER, tickets_per_handshake=0)
    other._ticket_keys = p.server_ctx.ticket_keys  # opens the ticket, but not for OTHER
    q = resume(p, server_ctx=other)
    assert completed(q) == (False, False)
    assert q.client.session is not None
    assert q.client.session.peer_id == OTHER.peer_id  # not the ticket's server key


def test_tampered_ticket_falls_back_to_a_full_handshake() -> None:
    p = first_session()
    original = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert original is not None
    for i in (0, 9, len(original.ticket) // 2, len(original.ticket) - 1):
        flipped = bytearray(original.ticket)
        flipped[i] ^= 0x01
        p.client_ctx.session_cache.store(CACHE_KEY, replace(original, ticket=bytes(flipped)))
        assert completed(resume(p)) == (False, False), i
    p.client_ctx.session_cache.store(CACHE_KEY, replace(original, ticket=b"\x00"))
    assert completed(resume(p)) == (False, False)


def test_copied_ticket_resumes_for_whoever_holds_it() -> None:
    """Tickets are bearer tokens: the ticket and its PSK are all a resumption
    needs (the binder proves knowledge of the PSK, which the copier has). The
    server keeps no record of used tickets, so both resumptions succeed."""
    p = first_session()
    stolen = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert stolen is not None
    for _ in range(2):
        thief = Context(trusted_peers=[SERVER.public])
        thief.session_cache.store(CACHE_KEY, stolen)
        q = resume(p, client_ctx=thief)
        assert completed(q) == (True, True)


def test_tampered_binder_is_authentication_failed() -> None:
    p = first_session()

    def flip_binder(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "client" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        return rewrite_plain_handshake(
            data,
            lambda _t, body: body[:-BINDER_SIZE] + bytes(b ^ 0x5A for b in body[-BINDER_SIZE:]),
            only=MsgType.CLIENT_HELLO,
        )

    q = resume(p, intercept=flip_binder)
    assert_closed_with(q.server, q.server_events, AuthenticationFailed)
    assert "binder" in str(q.server.error)
    assert_closed_with(q.client, q.client_events, AuthenticationFailed)  # decrypt_error alert


def test_stripping_the_resumption_offer_fails_the_handshake() -> None:
    """The offer is in the transcript: a man in the middle who removes it to
    force a full handshake only makes the two sides derive different keys."""
    p = first_session()

    def strip(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "client" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        messages, _rest = split_plain_handshake(data)
        hello = ClientHello.decode_body(messages[0][1])
        body = replace(hello, psk_offer=b"").encode_body()
        return plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(MsgType.CLIENT_HELLO, body))

    q = resume(p, intercept=strip)
    assert not q.client.handshake_complete
    assert not q.server.handshake_complete
    assert isinstance(q.client.error, (KeyAgreementFailed, ProtocolViolation))


def test_client_refuses_a_resumption_mode_it_did_not_offer() -> None:
    """A ServerHello that claims psk_only for a psk_dhe offer is refused before
    any key is derived (checked before the transcript catches it)."""
    p = first_session()

    def to_psk_only(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "server" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        messages, rest = split_plain_handshake(data)
        hello = ServerHello.decode_body(messages[0][1])
        body = replace(hello, psk_mode=PskMode.PSK_ONLY, share=b"").encode_body()
        head = plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(MsgType.SERVER_HELLO, body))
        return head + rest

    q = resume(p, intercept=to_psk_only)
    assert_closed_with(q.client, q.client_events, ProtocolViolation)
    assert "did not offer" in str(q.client.error)


def test_client_refuses_a_resumption_it_did_not_ask_for() -> None:
    """A ServerHello that claims psk_dhe when the client offered no ticket."""

    def to_psk_dhe(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "server" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        messages, rest = split_plain_handshake(data)
        hello = ServerHello.decode_body(messages[0][1])
        body = replace(hello, psk_mode=PskMode.PSK_DHE).encode_body()
        head = plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(MsgType.SERVER_HELLO, body))
        return head + rest

    q = Pair.make(server_name=SERVER_NAME)
    q.connect(to_psk_dhe)
    assert_closed_with(q.client, q.client_events, ProtocolViolation)
    assert "did not offer" in str(q.client.error)


def test_client_refuses_a_key_share_in_a_psk_only_answer() -> None:
    p = first_session(server={"resumption": "psk_only"}, client={"resumption": "psk_only"})

    def add_share(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "server" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        messages, rest = split_plain_handshake(data)
        hello = ServerHello.decode_body(messages[0][1])
        assert hello.psk_mode == PskMode.PSK_ONLY
        body = replace(hello, share=bytes(1120)).encode_body()
        head = plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(MsgType.SERVER_HELLO, body))
        return head + rest

    q = resume(p, intercept=add_share)
    assert_closed_with(q.client, q.client_events, ProtocolViolation)
    assert "key share" in str(q.client.error)


def test_ticket_not_used_when_the_client_no_longer_trusts_the_server() -> None:
    p = first_session()
    p.client_ctx.trust = TrustStore(trusted_peers=[OTHER.public])  # SERVER unpinned
    flights = Flights()
    q = resume(p, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer == b""
    assert len(p.client_ctx.session_cache) == 0  # the unusable ticket was dropped
    # The full handshake then fails on trust, as it would without any ticket.
    assert_closed_with(q.client, q.client_events, AuthenticationFailed)
    assert "not trusted" in str(q.client.error)


def test_a_cached_ticket_never_records_its_server_in_the_known_peers_file(tmp_path: Path) -> None:
    """The user deleted the server's known-peers entry (what the changed-key
    error tells them to do) while a ticket for it was cached. The ticket's key
    did not prove itself in the new connection: it is looked up, not recorded.
    It used to be written back at start(), so the server's new key was then
    refused as a changed key, until the ticket expired (up to 7 days)."""
    known = tmp_path / "known_peers"
    p = first_session(client={"known_peers_file": known, "trusted_peers": []})
    assert p.client.session is not None
    assert p.client.session.trust == "first-use"
    assert len(p.client_ctx.session_cache) == 1
    known.unlink()  # the entry deleted: the server changed its key
    new_server = Context(OTHER, tickets_per_handshake=0)
    q = resume(p, server_ctx=new_server)
    assert q.client.session is not None, q.client_events
    assert not q.client.session.resumed
    assert q.client.session.trust == "first-use"  # the new key, recorded now
    assert q.client.session.peer_id == OTHER.peer_id
    assert SERVER.peer_id not in known.read_text()
    assert OTHER.peer_id in known.read_text()


def test_a_cached_ticket_is_not_used_once_its_known_peers_entry_is_deleted(
    tmp_path: Path,
) -> None:
    """The same server, still able to open the ticket: its key is not in the
    known-peers file any more, and a cached ticket's key is only looked up,
    so the ticket is not used (a full handshake records the key anew)."""
    known = tmp_path / "known_peers"
    p = first_session(client={"known_peers_file": known, "trusted_peers": []})
    assert len(p.client_ctx.session_cache) == 1
    known.unlink()
    q = resume(p)
    assert q.client.session is not None, q.client_events
    assert not q.client.session.resumed
    assert q.client.session.trust == "first-use"
    assert SERVER.peer_id in known.read_text()


def test_server_no_longer_trusting_the_client_forces_a_full_handshake() -> None:
    p = first_session(
        server={"client_auth": "required", "trusted_peers": [CLIENT.public]},
        client={"identity": CLIENT},
    )
    p.server_ctx.trust = TrustStore(trusted_peers=[OTHER.public])  # CLIENT unpinned
    q = resume(p)
    # The client completes a full handshake (not resumed) and learns of its
    # rejection from the server's alert, as for any untrusted client.
    completed_event = next(e for e in q.client_events if isinstance(e, HandshakeCompleted))
    assert completed_event.session.resumed is False
    assert completed_event.session.trust == "pinned"
    assert q.server.session is None
    assert_closed_with(q.server, q.server_events, AuthenticationFailed)
    assert_closed_with(q.client, q.client_events, AuthenticationFailed)


def test_server_that_now_requires_client_auth_refuses_an_anonymous_ticket() -> None:
    p = first_session(client={"identity": CLIENT})  # client_auth off: ticket is anonymous
    p.server_ctx.client_auth = "required"
    q = resume(p)
    assert completed(q) == (False, False)
    assert q.server.session is not None
    assert q.server.session.peer_id == CLIENT.peer_id


def test_cipher_no_longer_allowed_by_the_client_still_resumes_under_an_allowed_one() -> None:
    """The PSK does not depend on the cipher (SHA-256 throughout), so a ticket
    from an aes-256-gcm session resumes under the cipher negotiated now."""
    p = first_session(client={"ciphers": ["aes-256-gcm", "chacha20-poly1305"]})
    assert p.client.session is not None
    assert p.client.session.cipher == "aes-256-gcm"
    p.client_ctx.ciphers = ("chacha20-poly1305",)
    q = resume(p)
    assert completed(q) == (True, True)
    assert q.client.session is not None
    assert q.client.session.cipher == "chacha20-poly1305"


def test_resumption_after_a_hello_retry() -> None:
    """A HelloRetry does not void the offer: the second hello carries it again
    with a binder over the longer transcript."""
    p = first_session()
    p.server_ctx.groups = ("mlkem768",)
    flights = Flights()
    q = resume(p, intercept=flights)
    assert completed(q) == (True, True)
    assert q.client.session is not None
    assert q.client.session.group == "mlkem768"
    assert len([f for f in flights.flights if f[0] == "client"]) == 3  # hello, hello, Finished


def test_a_psk_only_resumption_needs_no_hello_retry_for_the_servers_first_group() -> None:
    """A psk_only resumption has no key exchange: a hello whose group is not
    the server's first choice (but one it allows) resumes at once, where it
    used to get a HelloRetry (a round trip, and a key share made for nothing).
    A group the server does not allow still gets the retry."""
    groups = ["mlkem768", "x25519-mlkem768"]
    p = first_session(
        server={"groups": groups, "resumption": "psk_only"},
        client={"groups": groups, "resumption": "psk_only"},
    )
    p.server_ctx.groups = ("x25519-mlkem768", "mlkem768")  # another first choice now
    flights = Flights()
    q = resume(p, intercept=flights)
    assert completed(q) == (True, True)
    assert q.client.session is not None
    assert q.client.session.group == "mlkem768"  # the client's, allowed by the server
    assert server_hello(flights.first("server")).psk_mode == PskMode.PSK_ONLY
    assert len([f for f in flights.flights if f[0] == "client"]) == 2  # hello, Finished
    p.server_ctx.groups = ("x25519-mlkem768",)  # the client's group is no longer allowed
    flights = Flights()
    q = resume(p, intercept=flights)
    assert completed(q) == (True, True)
    assert len([f for f in flights.flights if f[0] == "client"]) == 3  # hello, hello, Finished


def test_garbage_resumption_offer_is_a_decode_error() -> None:
    p = first_session()

    def bad_mode(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "client" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        messages, _rest = split_plain_handshake(data)
        hello = ClientHello.decode_body(messages[0][1])
        offer = PskOffer.decode(hello.psk_offer)
        garbled = bytes([9]) + offer.encode()[1:]
        body = replace(hello, psk_offer=garbled).encode_body()
        return plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(MsgType.CLIENT_HELLO, body))

    q = resume(p, intercept=bad_mode)
    assert_closed_with(q.server, q.server_events, ProtocolViolation, exact=False)
    assert "unknown resumption mode" in str(q.server.error)


# ------------------------------------------------------------- psk_dhe, psk_only


def _resume_with_mode(p: Pair, ticket: StoredTicket, mode: str) -> tuple[Pair, Flights]:
    client = Context(trusted_peers=[SERVER.public], resumption=mode)
    client.session_cache.store(CACHE_KEY, ticket)
    flights = Flights()
    q = resume(p, client_ctx=client, intercept=flights)
    assert completed(q) == (True, True)
    return q, flights


def test_psk_dhe_and_psk_only_resumptions_of_one_ticket_have_different_keys() -> None:
    p = first_session(server={"resumption": "psk_only"})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    dhe, dhe_flights = _resume_with_mode(p, ticket, "psk_dhe")
    only, only_flights = _resume_with_mode(p, ticket, "psk_only")
    assert dhe.client._keys is not None
    assert only.client._keys is not None
    assert dhe.client._keys.client_app != only.client._keys.client_app
    assert dhe.client.export_keying_material(b"x", b"", 32) != only.client.export_keying_material(
        b"x", b"", 32
    )
    # psk_dhe: a fresh key exchange (a KEM ciphertext); psk_only: no key share at all.
    dhe_hello = server_hello(dhe_flights.first("server"))
    only_hello = server_hello(only_flights.first("server"))
    assert (dhe_hello.psk_mode, only_hello.psk_mode) == (PskMode.PSK_DHE, PskMode.PSK_ONLY)
    assert len(dhe_hello.share) == 1120  # x25519-mlkem768 ciphertext
    assert only_hello.share == b""


def _passive_decrypt(flights: Flights, psk: bytes, cipher: str) -> bytes:
    """What an eavesdropper holding a ticket's PSK reads of a recorded resumption,
    assuming it was psk_only (KEM secret all zeros). Raises if it was not."""
    client_msgs, _ = split_plain_handshake(flights.flights[0][1])
    server_msgs, sealed = split_plain_handshake(flights.flights[1][1])
    transcript = hashlib.sha256()
    for mtype, body in client_msgs + server_msgs:
        transcript.update(handshake_message(mtype, body))
    keys = ks.KeySchedule(psk)
    keys.handshake(ks.ZEROS, transcript.copy().digest())
    server_hs = RecordOpener(cipher, *ks.traffic_keys(keys.server_hs, cipher))
    flight, *tickets = split_records(sealed)  # EncryptedExtensions and Finished; the ticket
    (opened,) = server_hs.open(flight, batch_type=ContentType.HANDSHAKE).records
    assert opened.content_type == ContentType.HANDSHAKE
    transcript.update(opened.data)
    keys.application(transcript.digest())
    server_app = RecordOpener(cipher, *ks.traffic_keys(keys.server_app, cipher))
    assert len(tickets) == 1  # the new ticket, readable too
    (opened,) = server_app.open(tickets[0], batch_type=ContentType.HANDSHAKE).records
    assert opened.data[0] == MsgType.NEW_SESSION_TICKET
    finished, *data_records = split_records(flights.flights[2][1])
    client_hs = RecordOpener(cipher, *ks.traffic_keys(keys.client_hs, cipher))
    client_hs.open(finished, batch_type=ContentType.HANDSHAKE)
    app = RecordOpener(cipher, *ks.traffic_keys(keys.client_app, cipher))
    return b"".join(r.data for rec in data_records for r in app.open(rec).records)


def test_psk_only_session_is_readable_by_whoever_gets_the_ticket_psk_dhe_is_not() -> None:
    """The forward-secrecy trade-off: a psk_only session's keys follow from the
    PSK and the public transcript, so a later theft of the client's cache (or of
    the server's ticket key) exposes recorded traffic; psk_dhe mixes in a fresh
    key exchange that the PSK alone cannot undo."""
    p = first_session(server={"resumption": "psk_only"})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    for mode in ("psk_only", "psk_dhe"):
        client = Context(trusted_peers=[SERVER.public], resumption=mode)
        client.session_cache.store(CACHE_KEY, ticket)
        flights = Flights()
        q = Pair(client, p.server_ctx, {"server_name": SERVER_NAME})
        q.client.start(NOW)
        q.server.start(NOW)
        pump_one = q.client.data_to_send()
        flights.flights.append(("client", pump_one))
        q.server.receive_data(pump_one, NOW)
        reply = q.server.data_to_send()
        flights.flights.append(("server", reply))
        q.client.receive_data(reply, NOW)
        q.client.send_data(b"attack at dawn")
        final = q.client.data_to_send()
        flights.flights.append(("client", final))
        q.server.receive_data(final, NOW)
        q.collect()
        assert received_data(q.server_events) == b"attack at dawn"
        assert q.client.session is not None
        cipher = q.client.session.cipher
        if mode == "psk_only":
            assert _passive_decrypt(flights, ticket.psk, cipher) == b"attack at dawn"
        else:
            with pytest.raises(IntegrityError):
                _passive_decrypt(flights, ticket.psk, cipher)


def test_psk_dhe_server_answers_a_psk_only_offer_with_psk_dhe() -> None:
    p = first_session()  # server resumption="psk_dhe" (the default)
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    _q, flights = _resume_with_mode(p, ticket, "psk_only")
    first_hello = client_hello(flights.first("client"))
    offer = PskOffer.decode(first_hello.psk_offer)
    assert offer.mode == PskMode.PSK_ONLY
    assert first_hello.share == b""  # a psk_only offer sends no key share...
    server_flights = [data for who, data in flights.flights if who == "server"]
    retry, _ = split_plain_handshake(server_flights[0])
    assert [t for t, _ in retry] == [MsgType.HELLO_RETRY]  # ...so the server asks for one
    answer = server_hello(server_flights[1])
    assert answer.psk_mode == PskMode.PSK_DHE
    assert len(answer.share) == 1120


def test_psk_only_server_answers_a_psk_dhe_offer_with_psk_dhe() -> None:
    p = first_session(server={"resumption": "psk_only"})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    _, flights = _resume_with_mode(p, ticket, "psk_dhe")
    assert server_hello(flights.first("server")).psk_mode == PskMode.PSK_DHE


def test_resumption_off_on_the_server_ignores_offers_and_issues_no_tickets() -> None:
    p = first_session()
    p.server_ctx.resumption = "off"
    flights = Flights()
    q = resume(p, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer
    assert completed(q) == (False, False)
    assert len(p.client_ctx.session_cache) == 0  # nothing new issued


def test_resumption_off_on_the_client_offers_nothing() -> None:
    p = first_session()
    p.client_ctx.resumption = "off"
    flights = Flights()
    q = resume(p, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer == b""
    assert completed(q) == (False, False)


# ----------------------------------------------------------------------- tickets


def test_three_tickets_per_handshake_give_three_resumptions() -> None:
    p = first_session(server={"tickets_per_handshake": 3})
    assert len(p.client_ctx.session_cache) == 3
    p.server_ctx.tickets_per_handshake = 0  # the resumptions issue no more
    for left in (2, 1, 0):
        assert completed(resume(p)) == (True, True)
        assert len(p.client_ctx.session_cache) == left
    assert completed(resume(p)) == (False, False)


def test_tickets_are_single_use_and_a_resumed_session_issues_a_new_one() -> None:
    p = first_session()
    for _ in range(3):
        q = resume(p)
        assert completed(q) == (True, True)
        assert len(p.client_ctx.session_cache) == 1  # used one, received one
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    p.client_ctx.session_cache.store(CACHE_KEY, ticket)
    p.server_ctx.tickets_per_handshake = 0
    assert completed(resume(p)) == (True, True)
    assert completed(resume(p)) == (False, False)  # the only ticket was used


def test_ticket_issued_by_a_resumed_session_keeps_the_identities() -> None:
    p = first_session(
        server={"client_auth": "required", "trusted_peers": [CLIENT.public]},
        client={"identity": CLIENT},
    )
    for _ in range(2):
        q = resume(p)
        assert completed(q) == (True, True)
        assert q.server.session is not None
        assert q.server.session.peer_id == CLIENT.peer_id
    ticket = p.client_ctx.session_cache.take(CLIENT_CACHE_KEY, NOW)
    assert ticket is not None
    assert ticket.server_key == SERVER.public.to_bytes()


def test_resuming_again_and_again_never_outlives_the_authentication() -> None:
    """A ticket issued by a resumed session inherits the time of the full
    handshake that authenticated the session: tickets get shorter as that
    ages, and MAX_TICKET_LIFETIME after it the client must authenticate
    again (a stolen ticket, resumed every few days, would otherwise carry
    its client's identity for ever)."""
    day = 86400.0
    p = first_session(
        server={
            "client_auth": "required",
            "trusted_peers": [CLIENT.public],
            "ticket_lifetime": MAX_TICKET_LIFETIME,
        },
        client={"identity": CLIENT},
    )
    lifetimes = []
    for now in (NOW + 6 * day, NOW + 6.9 * day):
        q = resume(p, now=now)
        assert completed(q) == (True, True)
        assert q.server.session is not None
        assert q.server.session.peer_id == CLIENT.peer_id
        ticket = p.client_ctx.session_cache.take(CLIENT_CACHE_KEY, now)
        assert ticket is not None
        lifetimes.append(ticket.lifetime)
        p.client_ctx.session_cache.store(CLIENT_CACHE_KEY, ticket)
    assert lifetimes == [day, int(0.1 * day)]  # what is left of the 7 days, in whole seconds
    # The client believes its last ticket is fresh: the server's own bound refuses it.
    cache = p.client_ctx.session_cache
    last = cache.take(CLIENT_CACHE_KEY, NOW + 6.9 * day)
    assert last is not None
    cache.store(CLIENT_CACHE_KEY, replace(last, received=NOW + 7 * day, lifetime=day))
    later = NOW + 7 * day + 10
    flights = Flights()
    q = resume(p, now=later, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer  # offered, and refused:
    assert completed(q) == (False, False)  # a full handshake, which authenticates anew
    q = resume(p, now=later + day)
    assert completed(q) == (True, True)


def test_the_bound_on_the_authentication_is_checked_when_a_ticket_is_opened() -> None:
    """A ticket whose own lifetime is not over, but whose authentication is
    MAX_TICKET_LIFETIME old (as no server issues), is not honoured."""
    p = first_session()
    stored = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert stored is not None
    later = NOW + MAX_TICKET_LIFETIME + 10
    server_hash = hashlib.sha256(SERVER.peer_id.encode()).digest()
    contents = TicketContents(
        later - 60, 3600.0, stored.cipher, stored.psk, server_hash, b"nautilus", b"", b"", 0,
        stored.age_add, NOW,
    )  # fmt: skip
    for auth_time, resumed in ((NOW, False), (NOW + 86400, True)):  # a day later: honoured
        forged = p.server_ctx.ticket_keys.seal(replace(contents, authenticated=auth_time), later)
        p.client_ctx.session_cache.store(
            CACHE_KEY, replace(stored, ticket=forged, received=later - 60, lifetime=3600.0)
        )
        q = resume(p, now=later)
        assert completed(q) == (resumed, resumed)


def test_a_resumed_server_without_trust_settings_reports_no_trust() -> None:
    """A server with no trust settings takes any client key, and reports
    ``trust`` None: a resumption of that session says the same, not
    "resumed" (which would read as a key checked once)."""
    p = first_session(server={"client_auth": "optional"}, client={"identity": CLIENT})
    assert p.server.session is not None
    assert (p.server.session.peer_id, p.server.session.trust) == (CLIENT.peer_id, None)
    q = resume(p)
    assert completed(q) == (True, True)
    assert q.server.session is not None
    assert (q.server.session.peer_id, q.server.session.trust) == (CLIENT.peer_id, None)


def test_a_ticket_is_used_only_by_a_context_with_the_identity_it_was_obtained_with() -> None:
    """Contexts may share a SessionCache. A ticket resumes the session it came
    from, the client's authentication included: another identity (or none)
    sharing the cache must not resume as the first one, and a context whose
    identity was replaced must present the new one."""
    other, third = cached_identity("ed25519", 3), cached_identity("ed25519", 4)
    shared = SessionCache()
    server = {
        "client_auth": "optional",
        "trusted_peers": [CLIENT.public, other.public, third.public],
        "tickets_per_handshake": 1,
    }
    p = first_session(server=server, client={"identity": CLIENT, "session_cache": shared})
    for ident in (other, None):
        ctx = Context(ident, trusted_peers=[SERVER.public], session_cache=shared)
        q = resume(p, client_ctx=ctx)
        assert completed(q) == (False, False)
        assert q.server.session is not None
        assert q.server.session.peer_id == (None if ident is None else ident.peer_id)
    q = resume(p)  # the ticket's own identity: resumed, as CLIENT
    assert completed(q) == (True, True)
    assert q.server.session is not None
    assert q.server.session.peer_id == CLIENT.peer_id
    p.client_ctx.identity = third  # a new identity for this context: presented
    q = resume(p)
    assert completed(q) == (False, False)
    assert q.server.session is not None
    assert q.server.session.peer_id == third.peer_id
    p.client_ctx.identity = other  # the tickets obtained as ``other`` resume as other
    q = resume(p)
    assert completed(q) == (True, True)
    assert q.server.session is not None
    assert q.server.session.peer_id == other.peer_id


def test_cache_key_names_the_client_identity() -> None:
    assert SessionCache.key("srv", "h:1") == "srv h:1"
    assert SessionCache.key("srv", "h:1", None) == "srv h:1"
    assert SessionCache.key("srv", "h:1", CLIENT.peer_id) == f"{CLIENT.peer_id}\nsrv h:1"
    # No address (free text) makes an anonymous key equal an identified one.
    for address in (f"h:1 as {CLIENT.peer_id}", f"h:1\n{CLIENT.peer_id}", f"{CLIENT.peer_id}\n"):
        assert SessionCache.key("srv", address) != SessionCache.key("srv", "h:1", CLIENT.peer_id)
    assert SessionCache.key("*", f"{CLIENT.peer_id}\n* h:1") != SessionCache.key(
        "*", "h:1", CLIENT.peer_id
    )
    with pytest.raises(TypeError, match="client_id"):
        SessionCache.key("srv", "h:1", CLIENT)  # type: ignore[arg-type]
    for server_id, client_id in ((f"{CLIENT.peer_id}\n*", None), ("*", "a b"), ("*", "a\nb")):
        with pytest.raises(ValueError, match="peer ids"):
            SessionCache.key(server_id, "h:1", client_id)


def test_a_context_takes_only_the_tickets_of_its_own_namespace() -> None:
    """Contexts of two namespaces share a SessionCache and dial one server
    name (one server identity, a server context per namespace): each keeps
    and takes its own tickets, and never consumes the other's, which only a
    server of the other namespace opens."""
    shared = SessionCache()
    servers = {
        ns: Context(SERVER, namespace=ns, tickets_per_handshake=1) for ns in ("app-a", "app-b")
    }
    clients = {
        ns: Context(trusted_peers=[SERVER.public], namespace=ns, session_cache=shared)
        for ns in ("app-a", "app-b")
    }

    def connect(ns: str) -> Pair:
        q = Pair(clients[ns], servers[ns], {"server_name": SERVER_NAME})
        q.handshake()
        return q

    assert completed(connect("app-a")) == (False, False)  # app-a's ticket is kept
    assert len(shared) == 1
    assert completed(connect("app-b")) == (False, False)  # no ticket of its own: full
    assert len(shared) == 2  # app-a's ticket is still there, with app-b's
    assert completed(connect("app-a")) == (True, True)
    assert completed(connect("app-b")) == (True, True)
    assert len(shared) == 2  # each resumed session left a ticket for its namespace
    a_key = SessionCache.key("*", SERVER_NAME, namespace="app-a")
    ticket = shared.take(a_key, NOW)
    assert ticket is not None
    assert ticket.namespace == b"app-a"


def test_cache_key_names_the_namespace() -> None:
    # The default namespace's key is the key of the versions before it was named.
    assert SessionCache.key("srv", "h:1", namespace="nautilus") == "srv h:1"
    assert Context().namespace == "nautilus"
    assert SessionCache.key("srv", "h:1", CLIENT.peer_id, namespace="app") == (
        f'"app"\n{CLIENT.peer_id}\nsrv h:1'
    )
    # Namespaces are free text: quotes, spaces and newlines in them, or in the
    # address, make no key equal another.
    keys = [
        SessionCache.key("srv", address, client, namespace=ns)
        for ns in ("nautilus", "app", 'app"\nsrv h:1', "a b", "a\nb", "")
        for client in (None, CLIENT.peer_id)
        for address in ("h:1", '"app"\nsrv h:1', "h:1\nsrv")
    ]
    assert len(set(keys)) == len(keys)
    with pytest.raises(TypeError, match="namespace"):
        SessionCache.key("srv", "h:1", namespace=b"app")  # type: ignore[arg-type]
    for server_id, client_id in (('"app"', None), ("srv", '"app"')):
        with pytest.raises(ValueError, match="double quote"):
            SessionCache.key(server_id, "h:1", client_id)


def test_ticket_lifetime_is_bounded_to_seven_days() -> None:
    assert MAX_TICKET_LIFETIME == 7 * 24 * 3600
    Context(SERVER, ticket_lifetime=MAX_TICKET_LIFETIME)
    with pytest.raises(ValueError, match="ticket_lifetime"):
        Context(SERVER, ticket_lifetime=MAX_TICKET_LIFETIME + 1)
    with pytest.raises(ValueError, match="ticket_lifetime"):
        Context(SERVER, ticket_lifetime=0.5)
    with pytest.raises(TypeError, match="ticket_lifetime"):
        Context(SERVER, ticket_lifetime="1h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tickets_per_handshake"):
        Context(SERVER, tickets_per_handshake=9)
    with pytest.raises(ValueError, match="resumption"):
        Context(SERVER, resumption="psk")
    with pytest.raises(TypeError, match="session_cache"):
        Context(session_cache={})  # type: ignore[arg-type]


def test_lifetime_announced_by_the_server_is_what_the_client_keeps() -> None:
    p = first_session(server={"ticket_lifetime": 60.0})
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    assert ticket.lifetime == 60.0
    assert ticket.received == NOW


def _mutual_pair_issuing_two_tickets() -> Pair:
    """A server requiring CLIENT's identity and sending two tickets (after the
    client's Finished, as under client authentication), not yet started."""
    return Pair.make(
        server={
            "tickets_per_handshake": 2,
            "client_auth": "required",
            "trusted_peers": [CLIENT.public],
        },
        client={"identity": CLIENT},
        server_name=SERVER_NAME,
    )


def test_a_connection_keeps_the_settings_its_context_had_when_it_was_made() -> None:
    """Settings assigned (by another thread) while a handshake is in flight
    are for later connections: one handshake never mixes two values of a
    setting. Under client authentication a server sends its tickets after
    the client's Finished; it used to decide on them with the values of that
    moment, after choosing the mode at the hello."""
    p = _mutual_pair_issuing_two_tickets()
    p.start()
    p.server.receive_data(p.client.data_to_send(), NOW)  # the hello
    p.server_ctx.tickets_per_handshake = 0
    p.server_ctx.resumption = "off"
    p.server_ctx.ticket_lifetime = 60.0
    p.server_ctx.client_auth = "off"
    p.pump()
    assert p.client.handshake_complete
    assert p.server.handshake_complete
    assert len(p.client_ctx.session_cache) == 2  # as configured when the connection was made
    ticket = p.client_ctx.session_cache.take(CLIENT_CACHE_KEY, NOW)
    assert ticket is not None
    assert ticket.lifetime == 7200.0
    contents = p.server_ctx.ticket_keys.open(ticket.ticket, NOW)
    assert contents is not None
    assert contents.lifetime == 7200.0
    p.client_ctx.session_cache.store(CLIENT_CACHE_KEY, ticket)  # (taken above to look at it)
    later = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    later.handshake()  # the new settings: no resumption, no tickets, no client auth
    assert later.client.session is not None
    assert not later.client.session.resumed
    assert later.server.session is not None
    assert later.server.session.peer_id is None
    assert len(p.client_ctx.session_cache) == 1  # the one ticket offered was used up


def test_the_settings_snapshot_is_read_only() -> None:
    ctx = Context(SERVER)
    snapshot = ctx._settings
    assert snapshot is not None
    with pytest.raises(AttributeError, match="read-only"):
        snapshot.client_auth = "required"  # type: ignore[misc]
    for copier in (copy.copy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            copier(snapshot)
    ctx.client_auth = "required"
    assert snapshot.client_auth == "off"  # a new snapshot, the old one unchanged
    assert ctx._settings is not None
    assert ctx._settings.client_auth == "required"
    assert {n: getattr(ctx._settings, n) for n in _SETTINGS} == {
        n: getattr(ctx, n) for n in _SETTINGS
    }


def _server_sends_ticket(p: Pair, msg: NewSessionTicket) -> None:
    sealer = p.server._sealer
    assert sealer is not None
    p.server._out.append(sealer.seal(frame(msg), ContentType.HANDSHAKE))
    p.pump()


def test_client_caps_the_lifetime_a_server_announces() -> None:
    p = Pair.make(server_name=SERVER_NAME)  # no tickets from the server itself
    p.handshake()
    _server_sends_ticket(p, NewSessionTicket(0xFFFFFFFF, 7, b"n", b"opaque", 0))
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    assert ticket.lifetime == MAX_TICKET_LIFETIME
    _server_sends_ticket(p, NewSessionTicket(0, 7, b"n", b"opaque", 0))  # lifetime 0: drop it
    assert len(p.client_ctx.session_cache) == 0
    assert p.client.handshake_complete
    _server_sends_ticket(p, NewSessionTicket(3600, 7, b"n", b"opaque", 0xFFFFFFFF))
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    assert ticket.max_early_data == MAX_EARLY_DATA  # what a (Nautilus) server could take


def test_a_connection_stores_no_more_tickets_than_the_cache_keeps_per_server() -> None:
    """A server sending tickets without end (each one a locked write for a
    cache with a file) gets no more stored than the cache keeps per server;
    the rest are ignored, and the connection goes on."""
    cache = SessionCache(tickets_per_server=3)
    p = Pair.make(client={"session_cache": cache}, server_name=SERVER_NAME)
    p.handshake()
    stored: list[StoredTicket] = []
    original_store = cache.store

    def store(key: str, ticket: StoredTicket) -> None:
        stored.append(ticket)
        original_store(key, ticket)

    cache.store = store  # type: ignore[method-assign]
    for n in range(10):
        _server_sends_ticket(p, NewSessionTicket(3600, n, b"n", b"opaque%d" % n, 0))
    assert [t.ticket for t in stored] == [b"opaque0", b"opaque1", b"opaque2"]
    assert len(cache) == 3
    p.client.send_data(b"still connected")
    p.pump()
    assert p.server_events[-1] == DataReceived(b"still connected")


def test_new_session_ticket_sent_by_a_client_is_a_protocol_violation() -> None:
    p = first_session()
    sealer = p.client._sealer
    assert sealer is not None
    p.client._out.append(
        sealer.seal(frame(NewSessionTicket(3600, 1, b"n", b"ticket", 0)), ContentType.HANDSHAKE)
    )
    p.pump()
    assert_closed_with(p.server, p.server_events, ProtocolViolation)
    assert "unexpected_message: NEW_SESSION_TICKET" in str(p.server.error)


def test_tickets_carry_nothing_in_clear() -> None:
    """Neither identity key, nor the PSK, nor the ticket contents are visible on
    the wire, in the full handshake that issues tickets or in a resumption."""
    p = _mutual_pair_issuing_two_tickets()
    full = Flights()
    p.connect(full)
    q = resume(p, intercept=(resumed := Flights()))
    assert completed(q) == (True, True)
    wire = full.wire() + resumed.wire()
    remaining = p.client_ctx.session_cache.take(CLIENT_CACHE_KEY, NOW)
    assert remaining is not None
    secrets = {
        "server key": SERVER.public.to_bytes()[1:],
        "client key": CLIENT.public.to_bytes()[1:],
        "psk": remaining.psk,
        "server id hash": hashlib.sha256(SERVER.peer_id.encode()).digest(),
        "server id": SERVER.peer_id.encode(),
        "client id": CLIENT.peer_id.encode(),
    }
    for name, secret in secrets.items():
        assert secret not in wire, name
    contents = p.server_ctx.ticket_keys.open(remaining.ticket, NOW)
    assert contents is not None
    assert contents.psk == remaining.psk
    assert contents.client_key == CLIENT.public.to_bytes()
    assert contents.encode() not in remaining.ticket


def _up_to_the_ticket(**server: object) -> Pair:
    """A server that requires client authentication: its ticket follows the
    client's flight. The client has completed and sent its Finished, which
    the server has read (its ticket is in its output)."""
    p = Pair.make(
        server={
            "tickets_per_handshake": 1,
            "client_auth": "required",
            "trusted_peers": [CLIENT.public],
            **server,
        },
        client={"identity": CLIENT},
        server_name=SERVER_NAME,
    )
    p.start()
    p.server.receive_data(p.client.data_to_send(), NOW)
    p.client.receive_data(p.server.data_to_send(), NOW)
    assert p.client.handshake_complete
    p.server.receive_data(p.client.data_to_send(), NOW)  # the client's flight
    assert p.server.handshake_complete
    return p


def _closed_before_its_ticket(**server: object) -> Pair:
    """As _up_to_the_ticket, then the client closes before anything more
    arrives; the server has not read its close_notify yet."""
    p = _up_to_the_ticket(**server)
    p.collect()  # (events queued before close() stay queued)
    p.client.close()
    assert len(p.client_ctx.session_cache) == 0
    return p


def test_a_client_that_closes_before_its_ticket_arrives_still_keeps_it() -> None:
    """A client that sends and closes at once, as asyncio's write() then
    close(): the ticket that follows its flight is read after the close."""
    p = _closed_before_its_ticket()
    keys = p.client._keys
    assert keys is not None  # what reading the ticket needs, and nothing else
    assert (keys.client_app, keys.exporter) == (b"", b"")
    assert len(keys.server_app) == len(keys.resumption) == 32
    p.server.send_data(b"late reply")  # data after the ticket: dropped unread
    p.client.receive_data(p.server.data_to_send(), NOW)
    assert len(p.client_ctx.session_cache) == 1
    assert p.client.next_event() is None  # no event after close(), as before
    assert p.client._keys is not None  # more tickets could come, up to the server's end
    p.server.receive_data(p.client.data_to_send(), NOW)  # the close_notify
    assert p.server.is_closed
    p.client.receive_data(p.server.data_to_send(), NOW)  # the server's close_notify
    assert p.client._keys is None
    assert p.client._opener is None
    assert (keys.server_app, keys.resumption) == (b"", b"")
    assert p.client.next_event() is None
    assert p.client.error is None
    q = resume(p)
    assert completed(q) == (True, True)
    assert q.server.session is not None
    assert q.server.session.peer_id == CLIENT.peer_id


def test_a_closed_client_reads_its_ticket_across_a_key_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send_tickets = Connection._send_tickets

    def after_a_key_update(self: Connection) -> None:
        """The server updates its sending key, then sends its ticket."""
        assert self._sealer is not None
        assert self._keys is not None
        self._out.append(self._sealer._seal_chunk(b"\x00", ContentType.KEY_UPDATE))
        self._install(self._keys.update_traffic(False), None)
        send_tickets(self)

    monkeypatch.setattr(Connection, "_send_tickets", after_a_key_update)
    p = _closed_before_its_ticket()
    assert len(split_records(p.client.data_to_send())) == 1  # its close_notify
    wire = p.server.data_to_send()
    assert len(split_records(wire)) == 2
    p.client.receive_data(wire, NOW)
    assert len(p.client_ctx.session_cache) == 1
    assert p.client.data_to_send() == b""  # nothing answered: the client has closed
    monkeypatch.undo()
    assert completed(resume(p)) == (True, True)


def test_a_closed_client_completes_a_ticket_record_cut_by_its_close() -> None:
    """Half of the ticket's record had arrived when the client closed: the
    rest completes it."""
    p = _up_to_the_ticket()
    ticket = p.server.data_to_send()
    assert len(split_records(ticket)) == 1
    half = len(ticket) // 2
    p.client.receive_data(ticket[:half], NOW)
    p.client.close()
    p.client.receive_data(ticket[half:], NOW)
    assert len(p.client_ctx.session_cache) == 1


@pytest.mark.parametrize(
    "ending", ["eof", "garbage", "forged record", "alert", "records", "handshake records"]
)
def test_a_closed_client_stops_reading_for_tickets(ending: str) -> None:
    """However the reading for a ticket ends, the last keys go, nothing is
    raised and no event is queued."""
    # (Else a server that sends no ticket: the client's next record is the
    # server's first.)
    withheld = ending in ("eof", "garbage", "forged record")
    p = _closed_before_its_ticket(tickets_per_handshake=1 if withheld else 0)
    ticket = p.server.data_to_send()
    if ending == "eof":
        p.client.receive_eof()
    elif ending == "garbage":
        p.client.receive_data(b"\x16\x00\x00\x01\x00", NOW)  # a plaintext record
    elif ending == "forged record":
        p.client.receive_data(b"\x17\x00\x00\x20" + bytes(32), NOW)
    elif ending == "alert":
        p.server.close()
        p.client.receive_data(p.server.data_to_send(), NOW)
    elif ending == "records":  # a server sending data and no ticket: 64 records at most
        for i in range(70):
            p.server.send_data(b"%d" % i)
        wire = p.server.data_to_send()
        assert len(split_records(wire)) == 70
        p.client.receive_data(wire, NOW)
    else:  # tickets that are not kept (lifetime 0), in one read: 64 records at most
        sealer = p.server._sealer
        assert sealer is not None
        unusable = frame(NewSessionTicket(0, 0, bytes(8), bytes(32), 0))
        wire = b"".join(sealer._seal_chunk(unusable, ContentType.HANDSHAKE) for _ in range(70))
        p.client.receive_data(wire, NOW)
    assert p.client._keys is None
    assert p.client._opener is None
    assert p.client.next_event() is None
    assert p.client.error is None
    if ticket:
        p.client.receive_data(ticket, NOW)  # too late: nothing reads it any more
    assert len(p.client_ctx.session_cache) == 0


def test_a_closed_client_reads_no_ticket_it_could_not_find_again() -> None:
    """Without a server name or expected peer, tickets are not cached: a
    client's close() then drops every secret at once."""
    p = Pair.make(server={"tickets_per_handshake": 1, "client_auth": "optional"})
    p.start()
    p.server.receive_data(p.client.data_to_send(), NOW)
    p.client.receive_data(p.server.data_to_send(), NOW)
    p.client.close()
    assert p.client._keys is None
    assert p.client._opener is None


# ------------------------------------------------------------------ ticket keys


def _contents(issued: float = NOW, lifetime: float = 7200.0) -> TicketContents:
    return ticket_contents(issued, lifetime, CLIENT.public.to_bytes())


def test_ticket_contents_repr_hides_the_psk() -> None:
    c = _contents()
    for text in (repr(c), str(c), repr([c]), f"{c!r}"):
        assert c.psk.hex() not in text
        assert repr(c.psk) not in text
        assert "psk" not in text
    assert "cipher=4866" in repr(c)  # the rest is still shown


def test_ticket_contents_round_trip() -> None:
    c = _contents()
    assert TicketContents.decode(c.encode()) == c
    zoned = replace(c, zone=os.urandom(ZONE_SIZE))
    assert TicketContents.decode(zoned.encode()) == zoned
    # 1: before the time of the authentication was carried; 2: before the zone
    for version in (1, 2, 4):
        with pytest.raises(Exception, match="version"):
            TicketContents.decode(bytes([version]) + c.encode()[1:])
    with pytest.raises(Exception):  # noqa: B017,PT011 - any DecodeError
        TicketContents.decode(c.encode() + b"\x00")


def test_truncated_ticket_contents_never_decode() -> None:
    """Cut at every length (in the fixed fields, a length prefix, a vector): a
    DecodeError each time, never a short field taken for a whole one."""
    encoded = _contents().encode()
    for n in range(len(encoded)):
        with pytest.raises(DecodeError, match="truncated"):
            TicketContents.decode(encoded[:n])


def _reference_ticket_encoding(c: TicketContents) -> bytes:
    """The ticket format written out field by field (docs: what a fleet's
    processes sharing a ticket secret must agree on, whatever their version
    of the encoder): version 3, issued (ms, u64), lifetime (s, u32), cipher
    (u16), then vectors with 1-, 1-, 1-, 2- and 3-byte lengths (PSK, server id
    hash, namespace, client key, certificate), max_early_data and age_add
    (u32), authenticated (ms, u64), and the zone (1-byte length)."""

    def vector(data: bytes, width: int) -> bytes:
        return len(data).to_bytes(width, "big") + data

    return b"".join(
        [
            bytes([3]),
            round(c.issued * 1000).to_bytes(8, "big"),
            int(c.lifetime).to_bytes(4, "big"),
            c.cipher.to_bytes(2, "big"),
            vector(c.psk, 1),
            vector(c.server_id_hash, 1),
            vector(c.namespace, 1),
            vector(c.client_key, 2),
            vector(c.client_certificate, 3),
            c.max_early_data.to_bytes(4, "big"),
            c.age_add.to_bytes(4, "big"),
            round(c.authenticated * 1000).to_bytes(8, "big"),
            vector(c.zone, 1),
        ]
    )


def _lengths(limit: int) -> st.SearchStrategy[int]:
    """Lengths of a vector: small ones, and those at its prefix's bound."""
    return st.one_of(st.integers(0, 40), st.sampled_from([limit - 1, limit]))


@settings(max_examples=150, deadline=None)
@given(
    psk=_lengths(255),
    server_hash=_lengths(255),
    namespace=_lengths(255),
    client_key=st.one_of(st.integers(0, 300), st.sampled_from([65535])),
    cert=st.one_of(st.integers(0, 300), st.sampled_from([65536, 70000])),
    zone=_lengths(255),
    numbers=st.tuples(
        st.integers(0, 2**52),  # issued and authenticated, in ms
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**16 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**52),
    ),
    cut=st.integers(1, 1 << 20),
)
def test_ticket_contents_format_for_any_field_sizes(
    psk: int,
    server_hash: int,
    namespace: int,
    client_key: int,
    cert: int,
    zone: int,
    numbers: tuple[int, int, int, int, int, int],
    cut: int,
) -> None:
    """The encoding is the documented format (so tickets open across versions
    of the encoder), decodes to the same contents, and refuses the input cut
    short (anywhere) or with a byte more."""
    issued_ms, lifetime, cipher, max_early, age_add, authenticated_ms = numbers
    c = TicketContents(
        issued_ms / 1000.0, float(lifetime), cipher, os.urandom(psk), os.urandom(server_hash),
        os.urandom(namespace), os.urandom(client_key), os.urandom(cert), max_early, age_add,
        authenticated_ms / 1000.0, os.urandom(zone),
    )  # fmt: skip
    encoded = c.encode()
    assert encoded == _reference_ticket_encoding(c)
    assert TicketContents.decode(encoded) == c
    with pytest.raises(DecodeError, match="truncated"):
        TicketContents.decode(encoded[: len(encoded) - 1 - cut % len(encoded)])
    with pytest.raises(DecodeError, match="trailing"):
        TicketContents.decode(encoded + bytes([cut & 0xFF]))


def test_ticket_contents_fields_out_of_range_are_not_encoded() -> None:
    """A vector longer than its length prefix allows, or a number out of its
    field's range, raises (TicketKeys.seal turns it into a ValueError that
    names no value) rather than writing a ticket that decodes otherwise."""
    c = _contents()
    for bad in (
        replace(c, psk=bytes(256)),
        replace(c, namespace=bytes(256)),
        replace(c, client_key=bytes(65536)),
        replace(c, client_certificate=bytes(1 << 24)),
        replace(c, zone=bytes(256)),
        replace(c, cipher=1 << 16),
        replace(c, age_add=-1),
    ):
        with pytest.raises((OverflowError, struct.error)):
            bad.encode()
    keys = TicketKeys(rotation=3600, lifetime=7200)
    with pytest.raises(ValueError, match="cannot be encoded"):
        keys.seal(replace(c, zone=bytes(256)), NOW)


def test_ticket_keys_seal_and_open() -> None:
    keys = TicketKeys(rotation=3600, lifetime=7200)
    c = _contents()
    ticket = keys.seal(c, NOW)
    assert keys.open(ticket, NOW) == c
    assert c.psk not in ticket
    assert c.client_key not in ticket
    assert keys.seal(c, NOW) != ticket  # a fresh nonce every time
    other = TicketKeys(rotation=3600, lifetime=7200)
    other.seal(c, NOW)
    assert other.open(ticket, NOW) is None


@pytest.mark.parametrize(
    "field",
    [
        {"cipher": -1},
        {"lifetime": 2.0**40},
        {"age_add": "x"},
        {"psk": b"p" * 300},
        {"issued": math.nan},
        {"issued": "x"},
    ],
    ids=["negative", "too-large", "wrong-type", "long-vector", "nan", "str"],
)
def test_ticket_keys_refuse_contents_that_cannot_be_encoded(field: dict[str, object]) -> None:
    """A field out of range for the ticket's encoding (or of the wrong type)
    is a ValueError from seal() (as documented) that shows no field's value,
    not struct's or int's own errors."""
    keys = TicketKeys(rotation=3600, lifetime=7200)
    with pytest.raises(ValueError, match="cannot be encoded"):
        keys.seal(replace(_contents(), **field), NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: b"",
        lambda t: t[:35],
        lambda t: t[:-1],
        lambda t: t + b"\x00",
        lambda t: bytes([t[0] ^ 1]) + t[1:],  # key id
        lambda t: t[:10] + bytes([t[10] ^ 1]) + t[11:],  # nonce
        lambda t: t[:40] + bytes([t[40] ^ 1]) + t[41:],  # ciphertext
        lambda t: t[:-1] + bytes([t[-1] ^ 1]),  # tag
        lambda t: os.urandom(len(t)),
    ],
    ids=["empty", "short", "cut", "longer", "key-id", "nonce", "body", "tag", "random"],
)
def test_ticket_keys_refuse_garbage(mangle: object) -> None:
    keys = TicketKeys(rotation=3600, lifetime=7200)
    ticket = keys.seal(_contents(), NOW)
    assert keys.open(mangle(ticket), NOW) is None  # type: ignore[operator]


def test_ticket_keys_sealed_garbage_under_a_valid_key_is_refused() -> None:
    """A well-sealed blob that is not a ticket encoding: None, not an exception."""
    keys = TicketKeys(rotation=3600, lifetime=7200)
    good = keys.seal(_contents(), NOW)
    key = keys._current
    assert key is not None
    nonce = os.urandom(12)
    junk = key.aead.encrypt(nonce, b"\x01junk", b"nautilus ticket v1" + key.key_id)
    assert keys.open(key.key_id + nonce + junk, NOW) is None
    assert keys.open(good, NOW) is not None


def test_ticket_keys_rotation_schedule() -> None:
    keys = TicketKeys(rotation=100, lifetime=1000)
    t0 = keys.seal(_contents(), NOW)
    assert keys.seal(_contents(), NOW + 99)[:8] == t0[:8]  # same key id
    t1 = keys.seal(_contents(), NOW + 100)
    assert t1[:8] != t0[:8]  # rotated
    t2 = keys.seal(_contents(), NOW + 200)
    assert len({t0[:8], t1[:8], t2[:8]}) == 3
    for t in (t0, t1, t2):
        assert keys.open(t, NOW + 200) is not None  # retired keys still open
    assert keys.open(t0, NOW + 100 + 1000) is not None  # t0's key retired at NOW + 100
    assert keys.open(t0, NOW + 100 + 1001) is None  # ...and is gone one lifetime later
    assert keys.open(t1, NOW + 100 + 1001) is not None  # retired at NOW + 200


def test_retired_key_is_honoured_for_one_lifetime_then_dropped() -> None:
    keys = TicketKeys(rotation=1e6, lifetime=500)
    old = keys.seal(_contents(), NOW)
    keys.rotate(NOW + 10)
    keys.rotate(NOW + 20)
    assert keys.open(old, NOW + 10 + 500) is not None
    assert keys.open(old, NOW + 10 + 501) is None
    fresh = keys.seal(_contents(), NOW + 600)
    keys.retire_all()
    assert keys.open(fresh, NOW + 600) is None
    assert keys.open(keys.seal(_contents(), NOW + 600), NOW + 600) is not None


def test_clock_going_back_over_an_interval_rotates_the_key() -> None:
    """A clock that went back by over one rotation interval starts a new key
    (the schedule runs from then); within one interval of the key's start the
    key stays, so that the processes sharing its chain keep one schedule."""
    keys = TicketKeys(rotation=3600, lifetime=7200)
    t = keys.seal(_contents(), NOW)
    assert keys.seal(_contents(), NOW - 5)[:8] == t[:8]
    assert keys.seal(_contents(), NOW - 3599)[:8] == t[:8]
    assert keys.seal(_contents(), NOW - 3601)[:8] != t[:8]
    assert keys.open(t, NOW - 3601) is not None  # still opens: a retired key


def test_a_step_back_of_the_clock_counts_from_the_current_keys_start() -> None:
    """The threshold counts from the current key's start (shared by every
    process of a forking family), not from the latest time seen: a clock set
    back by nearly two intervals late in one keeps the key, which then seals
    for just under three intervals of real time, as docs/sessions.md says
    (it said two at most, and that a step back over one interval rotated)."""
    keys = TicketKeys(rotation=100, lifetime=1000)
    first = keys.seal(_contents(), NOW)[:8]  # the key starts at NOW
    assert keys.seal(_contents(), NOW + 99)[:8] == first  # 99 s later
    assert keys.seal(_contents(), NOW - 99)[:8] == first  # set back by 198 s
    assert keys.seal(_contents(), NOW + 99.9)[:8] == first  # 198.9 s later: 297.9 s in all
    second = keys.seal(_contents(), NOW + 100)[:8]  # its interval ends, by the clock
    assert second != first
    assert keys.seal(_contents(), NOW + 0.5)[:8] == second  # set back by 99.5 s: kept
    assert keys.seal(_contents(), NOW - 1.5)[:8] not in (first, second)  # by 101.5 s


def _sealed_in_a_child(work: Callable[[], bytes]) -> bytes:
    """Fork; ``work()`` runs in the child (it may assert, and returns a
    ticket it sealed there); the ticket, back in the parent."""
    read_end, write_end = os.pipe()

    def child() -> None:
        os.close(read_end)
        ticket = work()
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(ticket)

    in_a_child_forked_with_locks_held([], child)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_stale_time_in_one_process_keeps_the_family_on_one_schedule() -> None:
    """A connection that passes a time a little before the current key's start
    (taken before another thread stepped the chain) used to count as the clock
    going back: that process re-keyed from its own time, a link ahead of the
    others for good, and its new tickets did not open in them."""
    keys = TicketKeys(rotation=100, lifetime=1000)
    keys.seal(_contents(), NOW)  # the chain starts at NOW

    def child() -> bytes:
        keys.seal(_contents(NOW + 100.5), NOW + 100.5)  # link 1, from NOW + 100
        keys.seal(_contents(NOW + 98.5), NOW + 98.5)  # a stale time, 1.5 s before
        return keys.seal(_contents(NOW + 150), NOW + 150)

    assert keys.open(_sealed_in_a_child(child), NOW + 150) is not None


def test_a_slightly_earlier_now_from_another_thread_does_not_rotate() -> None:
    """Connections in several threads pass the times their data arrived, a
    little out of order: that is not the clock going back, and must not make
    keys (each a retired key to keep, up to the cap) far faster than the
    rotation interval."""
    keys = TicketKeys(rotation=1, lifetime=63)
    first = keys.seal(_contents(), NOW)[:8]
    for step in range(1, 100):
        assert keys.seal(_contents(), NOW - step / 200)[:8] == first  # up to 0.5 s earlier
    assert keys.seal(_contents(), NOW + 1)[:8] != first  # the interval still applies


def test_key_retired_over_a_lifetime_ago_opens_nothing_after_the_clock_went_back() -> None:
    keys = TicketKeys(rotation=100, lifetime=1000)
    keys.seal(_contents(), NOW)
    ticket = keys.seal(_contents(), NOW + 5000)  # rotates: its key is made at NOW + 5000
    keys.seal(_contents(), NOW + 10)  # the clock went back: that key retires at NOW + 10
    assert keys.open(ticket, NOW + 10 + 1000) is not None
    # retired a lifetime ago, though behind a key retired later (at NOW + 5000)
    assert keys.open(ticket, NOW + 10 + 1001) is None


def test_a_huge_jump_of_the_clock_starts_a_new_chain_at_once() -> None:
    """The chain steps once per rotation interval passed; past _MAX_ADVANCE of
    them (a `now` far ahead) it starts anew, as a restart would, rather than
    step for ever. Tickets of the old chain open for a lifetime after their
    key's interval ended (not after the jump: the key sealed nothing since)."""
    keys = TicketKeys(rotation=1, lifetime=1000)
    old = keys.seal(_contents(), NOW)
    results: list[bytes] = []
    far = NOW + 1e12  # about 10**12 steps
    worker = threading.Thread(target=lambda: results.append(keys.seal(_contents(far), far)))
    worker.daemon = True
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the chain stepped through every interval"
    assert results[0][:8] != old[:8]
    assert keys._link == 0  # a new chain
    assert keys.open(results[0], far + 1) is not None
    assert keys.open(old, far + 1000) is None  # retired at NOW + 1, not at `far`
    assert keys._link == 1000  # (opening at far + 1000 stepped the chain)
    # Within the bound the chain steps, and keeps its place in the schedule.
    near = far + 1000 + _MAX_ADVANCE
    assert keys.seal(_contents(near), near)[:8] != results[0][:8]
    assert keys._link == 1000 + _MAX_ADVANCE


def test_the_chain_steps_through_at_most_max_advance_intervals_at_once() -> None:
    """A jump of _MAX_ADVANCE intervals is stepped through; one of a single
    interval more starts a new chain."""
    keys = TicketKeys(rotation=1, lifetime=10)
    keys.seal(_contents(), NOW)
    keys.seal(_contents(), NOW + _MAX_ADVANCE + 0.5)
    assert keys._link == _MAX_ADVANCE
    jumping = TicketKeys(rotation=1, lifetime=10)
    jumping.seal(_contents(), NOW)
    jumping.seal(_contents(), NOW + _MAX_ADVANCE + 1)
    assert jumping._link == 0  # a new chain


@pytest.mark.parametrize(
    ("rotation", "lifetime", "first", "then"),
    [(1.0, 10.0, -1e308, 1e308), (1e-300, 1e-300, NOW, NOW + 1e9)],
)
def test_times_too_far_apart_for_a_float_start_a_new_chain(
    rotation: float, lifetime: float, first: float, then: float
) -> None:
    """Finite times whose distance in rotation intervals overflows a float
    (an OverflowError from seal and open, not among the errors they name)
    start a new chain, as any jump over _MAX_ADVANCE intervals."""
    keys = TicketKeys(rotation=rotation, lifetime=lifetime)
    old = keys.seal(_contents(), first)
    ticket = keys.seal(_contents(), then)
    assert ticket[:8] != old[:8]
    assert keys._link == 0  # a new chain
    assert keys.open(ticket, then) is not None
    assert keys.open(old, then) is None  # retired at the end of its interval, long before


def test_the_before_fork_hook_forgets_keys_past_their_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socketserver.ForkingMixIn parent never seals nor opens a ticket: only
    the before-fork hook steps its keys, at each fork. It forgets the keys
    past their lifetime (by over a second, for the connections whose time is
    a little earlier than its own), and keeps within the cap: it kept every
    key it stepped through, one per rotation, for as long as the server ran."""
    keys = TicketKeys(rotation=1, lifetime=10)
    clock = [NOW]
    monkeypatch.setattr(nautilus.sessions, "_TICKET_KEYS", weakref.WeakSet([keys]))
    monkeypatch.setattr(nautilus.sessions, "time", SimpleNamespace(time=lambda: clock[0]))

    def fork_at(now: float) -> None:  # (what os.fork() runs in the parent)
        clock[0] = now
        nautilus.sessions._keys_before_fork()
        nautilus.sessions._keys_after_fork_in_parent()
        assert not keys._lock.locked()

    for interval in range(_MAX_RETIRED_KEYS + 100):  # a fork in each interval
        fork_at(NOW + interval)
    assert len(keys._retired) <= 10 + 2  # a lifetime's worth, and the second
    assert set(keys._by_id) == {k.key_id for k, _ in keys._retired} | {keys._current.key_id}
    start = NOW + _MAX_RETIRED_KEYS + 100
    ticket = keys.seal(_contents(start), start)  # under the key retired at start + 1
    fork_at(start + 1 + 10 + 0.5)  # a connection's time may be a second earlier
    assert keys.open(ticket, start + 1 + 10) is not None
    fork_at(start + 1 + 10 + 1.5)
    assert ticket[:8] not in keys._by_id


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_processes_make_the_same_ticket_keys_through_rotations() -> None:
    """A child made by fork() shares the key chain: parent and child each
    step it on their own, and open each other's tickets rotations later."""
    keys = TicketKeys(rotation=100, lifetime=1000)
    parent_ticket = keys.seal(_contents(), NOW)  # the chain starts at NOW

    def child() -> bytes:
        assert keys.open(parent_ticket, NOW + 350) is not None  # 3 rotations later
        return keys.seal(_contents(NOW + 420), NOW + 420)  # under link 4

    child_ticket = _sealed_in_a_child(child)
    assert keys.open(child_ticket, NOW + 430) is not None  # the parent steps to link 4 itself
    assert keys.seal(_contents(NOW + 430), NOW + 430)[:8] == child_ticket[:8]  # the same key
    assert keys.open(parent_ticket, NOW + 430) is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_that_skips_links_keeps_their_keys_for_the_tickets_of_its_siblings() -> None:
    """The parent seals nothing while a child seals under link 2; when the
    parent steps from link 0 to link 4 at once it keeps the keys of the links
    it passed, and opens the child's ticket."""
    keys = TicketKeys(rotation=100, lifetime=1000)
    keys.seal(_contents(), NOW)  # the chain starts at NOW

    def child() -> bytes:
        return keys.seal(_contents(NOW + 250), NOW + 250)  # under link 2

    child_ticket = _sealed_in_a_child(child)
    assert keys.open(child_ticket, NOW + 430) is not None  # the parent steps to link 4
    assert keys._link == 4


def test_rotate_retires_the_key_at_the_end_of_its_interval_if_that_came_first() -> None:
    """rotate() after a quiet spell retired the current key at the call, so
    its tickets opened up to the spell's length longer than the schedule
    allows (a retired key opens for one lifetime after its retirement)."""
    keys = TicketKeys(rotation=10, lifetime=100)
    ticket = keys.seal(_contents(), NOW)
    keys.rotate(NOW + 1000)  # the key stopped sealing at NOW + 10
    assert keys.open(ticket, NOW + 1000) is None
    keys = TicketKeys(rotation=10, lifetime=100)
    ticket = keys.seal(_contents(), NOW)
    keys.rotate(NOW + 5)  # within the interval: retired now
    assert keys.open(ticket, NOW + 105) is not None
    assert keys.open(ticket, NOW + 105.5) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_after_rotate_the_new_tickets_open_in_no_process_forked_before() -> None:
    """rotate() starts a new chain: a process forked before the call does not
    make the new keys, not even when its own schedule reaches the next link
    (it did, when rotate() only stepped the shared chain)."""
    start = time.time()
    keys = TicketKeys(rotation=100, lifetime=1000)
    parent_ticket = keys.seal(_contents(start), start)  # the chain starts here

    def child() -> bytes:
        keys.rotate(start + 10)
        assert keys.open(parent_ticket, start + 20) is not None  # the old keys stay valid
        return keys.seal(_contents(start + 20), start + 20)

    child_ticket = _sealed_in_a_child(child)
    for later in (20, 101, 201, 501):  # the parent steps its own chain meanwhile
        assert keys.open(child_ticket, start + later) is None
    assert keys.open(parent_ticket, start + 501) is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_context_that_never_sealed_a_ticket_makes_its_keys_before_a_fork() -> None:
    """A socketserver.ForkingMixIn parent never seals a ticket: its ticket
    keys are made before the fork, so that every child (each serving one
    connection) opens the tickets of the others."""
    ctx = Context(SERVER)
    assert ctx._ticket_keys is None  # made on first use otherwise

    def child() -> bytes:
        now = time.time()
        return ctx.ticket_keys.seal(_contents(now), now)

    tickets = [_sealed_in_a_child(child) for _ in range(2)]
    assert ctx._ticket_keys is not None
    for ticket in tickets:
        assert ctx.ticket_keys.open(ticket, time.time()) is not None
    assert Context(SERVER, resumption="off")._ticket_keys is None  # (one that issues none)


class _ChangingSet(weakref.WeakSet[Any]):
    """A WeakSet that gains a member at each step of an iteration, as when
    another thread adds one meanwhile."""

    def __init__(self, members: list[Any], make: Any) -> None:
        super().__init__(members)
        self.made: list[Any] = list(members)  # (kept alive)
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        for member in super().__iter__():
            self.made.append(self.make())
            self.add(self.made[-1])
            yield member


def test_the_before_fork_hooks_copy_their_sets_in_one_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread making a TicketKeys or a Context while a thread forked
    changed the set a before-fork hook was iterating: RuntimeError ("Set
    changed size during iteration"; about one fork in 300 beside a thread
    making TicketKeys), printed by fork(), and the keys after that point
    forgotten in the child."""
    keys = _ChangingSet([TicketKeys(60, 600) for _ in range(3)], lambda: TicketKeys(60, 600))
    monkeypatch.setattr(sessions_module, "_TICKET_KEYS", keys)
    sessions_module._keys_before_fork()
    sessions_module._keys_after_fork_in_parent()
    assert len(keys) >= 3
    assert all(k._chain is not None and not k._lock.locked() for k in keys.made)
    contexts = _ChangingSet([Context(SERVER) for _ in range(3)], lambda: Context(SERVER))
    monkeypatch.setattr(context_module, "_CONTEXTS", contexts)
    context_module._before_fork()
    assert all(ctx._ticket_keys is not None for ctx in contexts.made[:3])


def test_ticket_opens_for_its_whole_lifetime_under_the_default_rotation() -> None:
    """With rotation < lifetime (the defaults, 3600 s / 7200 s), a ticket sealed
    just before a rotation still opens at the end of its lifetime."""
    keys = TicketKeys(rotation=3600, lifetime=7200)
    keys.seal(_contents(), NOW)  # the first key is made at NOW
    ticket = keys.seal(_contents(NOW + 3599), NOW + 3599)
    for now in (NOW + 3601, NOW + 7201, NOW + 10800, NOW + 3599 + 7200):
        assert keys.open(ticket, now) is not None, now


def test_ticket_resumes_for_its_whole_lifetime_on_a_busy_server() -> None:
    p = Pair.make(server={"tickets_per_handshake": 1}, server_name=SERVER_NAME)
    p.server_ctx.ticket_keys.seal(_contents(), NOW)  # the first key is made at NOW
    p.now = NOW + 3599
    p.handshake()  # the client's ticket is sealed under that key, 1 s before rotation
    for later in (NOW + 3601, NOW + 7201):  # other clients: new keys are made
        Pair(Context(trusted_peers=[SERVER.public]), p.server_ctx, now=later).handshake()
    p.server_ctx.tickets_per_handshake = 0
    q = resume(p, now=NOW + 3599 + 7199)
    assert completed(q) == (True, True)


def test_ticket_keys_bad_arguments() -> None:
    with pytest.raises(ValueError, match="lifetime"):
        TicketKeys(rotation=10, lifetime=0)
    with pytest.raises(ValueError, match="lifetime"):
        TicketKeys(rotation=10, lifetime=MAX_TICKET_LIFETIME + 1)
    with pytest.raises(ValueError, match="rotation"):
        TicketKeys(rotation=0, lifetime=10)
    for bad in (math.nan, math.inf, -math.inf, 10**400):
        with pytest.raises(ValueError, match=r"^rotation"):
            TicketKeys(rotation=bad, lifetime=10)
        with pytest.raises(ValueError, match=r"^lifetime"):
            TicketKeys(rotation=10, lifetime=bad)
    for wrong in ("10", None, True):
        with pytest.raises(TypeError, match=r"^rotation"):
            TicketKeys(rotation=wrong, lifetime=10)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^lifetime"):
            TicketKeys(rotation=10, lifetime=wrong)  # type: ignore[arg-type]
    keys = TicketKeys(rotation=10, lifetime=10)
    with pytest.raises(TypeError, match="now"):
        keys.seal(_contents(), "now")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        keys.open(b"x" * 64, math.nan)
    with pytest.raises(TypeError, match="ticket"):
        keys.open("ticket", NOW)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="contents"):
        keys.seal(b"contents", NOW)  # type: ignore[arg-type]


def test_a_ticket_lifetime_of_seven_days_is_the_most_allowed() -> None:
    """Seven days exactly is allowed; any more is refused for itself (with a
    rotation interval that would keep the keys of a longer lifetime)."""
    assert TicketKeys(rotation=3600, lifetime=MAX_TICKET_LIFETIME).lifetime == MAX_TICKET_LIFETIME
    with pytest.raises(ValueError, match=r"^lifetime must be at most"):
        TicketKeys(rotation=3600, lifetime=MAX_TICKET_LIFETIME + 0.5)


def test_at_most_the_cap_of_retired_keys_is_kept() -> None:
    """However the keys came to be retired (here rotate() again and again
    within one lifetime), no more than _MAX_RETIRED_KEYS are kept: the
    oldest goes first, and its tickets then fall back to full handshakes."""
    keys = TicketKeys(rotation=3600, lifetime=7200)
    ticket = keys.seal(_contents(), NOW)
    for _ in range(_MAX_RETIRED_KEYS):
        keys.rotate(NOW)
    assert keys.open(ticket, NOW) is not None  # its key is the oldest of the cap's worth
    assert len(keys._retired) == _MAX_RETIRED_KEYS
    keys.rotate(NOW)
    assert keys.open(ticket, NOW) is None
    assert len(keys._retired) == _MAX_RETIRED_KEYS


def test_ticket_opens_for_its_whole_lifetime_with_the_most_rotations_allowed() -> None:
    """A lifetime may span 1023 rotations: every key retired within one
    lifetime is kept, so a ticket opens until its last second."""
    rotation = 10.0
    lifetime = rotation * (_MAX_RETIRED_KEYS - 1)
    keys = TicketKeys(rotation=rotation, lifetime=lifetime)
    keys.seal(_contents(), NOW)  # the first key is made at NOW
    issued = NOW + rotation - 1  # sealed 1 s before its key retires
    ticket = keys.seal(_contents(issued, lifetime), issued)
    now = NOW
    while now + rotation < issued + lifetime - 1:
        now += rotation
        keys.seal(_contents(now, lifetime), now)  # a busy server: a new key every rotation
    assert keys.open(ticket, now) is not None
    assert keys.open(ticket, issued + lifetime - 1) is not None
    assert len(keys._retired) <= _MAX_RETIRED_KEYS
    # its key retired at NOW + rotation and opens for one lifetime from then, no longer
    assert keys.open(ticket, NOW + rotation + lifetime) is not None
    assert keys.open(ticket, NOW + rotation + lifetime + 1) is None


def test_ticket_timing_beyond_the_retired_key_cap_is_refused() -> None:
    most = MAX_TICKET_LIFETIME / (_MAX_RETIRED_KEYS - 1)  # the shortest rotation for 7 days
    Context(SERVER, ticket_lifetime=MAX_TICKET_LIFETIME, ticket_key_rotation=most)
    with pytest.raises(ValueError, match=r"ticket_key_rotation.*ticket_lifetime"):
        Context(SERVER, ticket_lifetime=MAX_TICKET_LIFETIME, ticket_key_rotation=most - 1)
    with pytest.raises(ValueError, match=r"ticket_key_rotation.*ticket_lifetime"):
        Context(SERVER, ticket_lifetime=7200, ticket_key_rotation=7)
    with pytest.raises(ValueError, match=r"rotation.*lifetime"):
        TicketKeys(rotation=7, lifetime=7200)
    ctx = Context(SERVER, ticket_lifetime=7200, ticket_key_rotation=3600)
    with pytest.raises(ValueError, match=r"ticket_key_rotation.*ticket_lifetime"):
        ctx.ticket_key_rotation = 7  # refused when set, not at the first handshake
    assert (ctx.ticket_key_rotation, ctx.ticket_lifetime) == (3600, 7200)


def test_context_ticket_keys_follow_its_settings() -> None:
    ctx = Context(SERVER, ticket_lifetime=600, ticket_key_rotation=60)
    keys = ctx.ticket_keys
    assert keys is ctx.ticket_keys
    assert (keys.rotation, keys.lifetime) == (60, 600)


def test_changing_the_ticket_timing_changes_the_ticket_keys_in_use() -> None:
    ctx = Context(SERVER, ticket_lifetime=7200, ticket_key_rotation=3600)
    keys = ctx.ticket_keys
    ticket = keys.seal(_contents(), NOW)
    ctx.ticket_key_rotation = 60
    ctx.ticket_lifetime = 600
    assert ctx.ticket_keys is keys  # the same keys: tickets issued so far still open
    assert (keys.rotation, keys.lifetime) == (60, 600)
    assert keys.seal(_contents(), NOW + 60)[:8] != ticket[:8]  # rotated after 60 s
    assert keys.open(ticket, NOW + 60 + 600) is not None  # retired at NOW + 60, for 600 s
    assert keys.open(ticket, NOW + 60 + 601) is None
    with pytest.raises(ValueError, match="ticket_lifetime"):
        ctx.ticket_lifetime = 60 * _MAX_RETIRED_KEYS  # over 1023 rotations of 60 s
    assert (keys.rotation, keys.lifetime) == (60, 600)
    with pytest.raises(ValueError, match="lifetime"):
        keys.set_timing(1, 7200)
    with pytest.raises(AttributeError):
        keys.lifetime = 5  # type: ignore[misc]
    assert (keys.rotation, keys.lifetime) == (60, 600)


# Every setting of a Context: values refused (with the error), and one accepted
# with the value kept.
_BAD_SETTINGS: list[tuple[str, object, type[Exception]]] = [
    ("identity", "identity", TypeError),
    ("trust", None, TypeError),
    ("trust", [SERVER.public], TypeError),
    ("groups", ("x448",), ValueError),
    ("groups", "mlkem768", TypeError),
    ("groups", ("mlkem768", "mlkem768"), ValueError),
    ("ciphers", ("aes-512",), ValueError),
    ("ciphers", (), ValueError),
    ("ciphers", ("chacha20-poly1305", "chacha20-poly1305"), ValueError),
    ("client_auth", "requird", ValueError),
    ("client_auth", None, TypeError),
    ("handshake_timeout", 0, ValueError),
    ("handshake_timeout", "10", TypeError),
    ("handshake_timeout", 86400.5, ValueError),
    ("record_timeout", 0, ValueError),
    ("record_timeout", math.inf, ValueError),
    ("record_timeout", "60", TypeError),
    ("namespace", "", ValueError),
    ("namespace", b"app", TypeError),
    ("namespace", "\u00e9" * 128, ValueError),  # 128 characters, 256 bytes of UTF-8
    ("max_message_size", 0, ValueError),
    ("max_message_size", (1 << 31) + 1, ValueError),
    ("max_clock_skew", -1, ValueError),
    ("max_clock_skew", 0.0, ValueError),  # no real hello arrives in no time
    ("max_clock_skew", 86400.5, ValueError),
    ("max_record_size", 100, ValueError),
    ("max_record_size", context_module.MIN_RECORD_SIZE - 1, ValueError),
    ("key_update_records", 0, ValueError),
    ("key_update_bytes", 1.5, TypeError),
    ("rekey_interval", math.nan, ValueError),
    ("rekey_interval", 1e9 + 1, ValueError),
    ("handshake", "core", TypeError),
    ("resumption", "psk-only", ValueError),
    ("resumption", 0, TypeError),
    ("session_cache", None, TypeError),
    ("ticket_lifetime", -1.0, ValueError),
    ("ticket_lifetime", MAX_TICKET_LIFETIME + 1, ValueError),
    ("ticket_key_rotation", 0, ValueError),
    ("ticket_key_rotation", math.inf, ValueError),
    ("ticket_key_rotation", 1e9 + 1, ValueError),
    ("tickets_per_handshake", -3, ValueError),
    ("tickets_per_handshake", 1.0, TypeError),
    ("early_data", "no", TypeError),
    ("early_data", 1, TypeError),
    ("max_early_data", -1, ValueError),
    ("max_early_data", MAX_EARLY_DATA + 1, ValueError),
    ("early_data_window", math.inf, ValueError),
    ("early_data_window", 3600.5, ValueError),
    ("sessions", None, TypeError),
]
_GOOD_SETTINGS: list[tuple[str, object, object]] = [
    ("identity", None, None),
    ("trust", TrustStore(trusted_peers=[OTHER.public]), None),
    ("groups", ["mlkem768"], ("mlkem768",)),
    ("ciphers", ["chacha20-poly1305"], ("chacha20-poly1305",)),
    ("client_auth", "required", "required"),
    ("handshake_timeout", 5, 5.0),
    ("record_timeout", None, None),
    ("namespace", "other-app", "other-app"),
    ("max_message_size", 1024, 1024),
    ("max_clock_skew", 30, 30.0),
    ("max_record_size", 4096, 4096),
    ("key_update_records", 1000, 1000),
    ("key_update_bytes", 1 << 30, 1 << 30),
    ("rekey_interval", 60, 60.0),
    ("handshake", Handshake(), None),
    ("resumption", "psk_only", "psk_only"),
    ("session_cache", SessionCache(), None),
    ("ticket_lifetime", 3600, 3600.0),
    ("ticket_key_rotation", 600, 600.0),
    ("tickets_per_handshake", 3, 3),
    ("early_data", True, True),
    ("max_early_data", 0, 0),
    ("early_data_window", 1, 1.0),
    ("sessions", SessionTable(5), None),
]


def test_every_context_setting_is_covered_below() -> None:
    assert {name for name, _, _ in _BAD_SETTINGS} == set(_SETTINGS)
    assert {name for name, _, _ in _GOOD_SETTINGS} == set(_SETTINGS)


@pytest.mark.parametrize(("name", "value", "error"), _BAD_SETTINGS)
def test_bad_context_setting_is_refused_when_assigned_and_the_old_value_stays(
    name: str, value: object, error: type[Exception]
) -> None:
    ctx = Context(SERVER)
    before = getattr(ctx, name)
    with pytest.raises(error, match=name):
        setattr(ctx, name, value)
    assert getattr(ctx, name) is before
    if name in ("trust", "sessions"):
        return  # made by the constructor, not arguments of it
    if value is None and name in ("groups", "ciphers", "handshake", "session_cache"):
        return  # to the constructor, None means the default
    with pytest.raises(error, match=name):
        Context(**{"identity": SERVER, name: value})  # the same check as the constructor's


@pytest.mark.parametrize(("name", "value", "kept"), _GOOD_SETTINGS)
def test_good_context_setting_takes_effect_when_assigned(
    name: str, value: object, kept: object
) -> None:
    ctx = Context(SERVER)
    setattr(ctx, name, value)
    if kept is None:
        assert getattr(ctx, name) is value
    else:
        assert getattr(ctx, name) == kept
        assert type(getattr(ctx, name)) is type(kept)


def test_unknown_context_setting_is_refused() -> None:
    ctx = Context(SERVER)
    with pytest.raises(AttributeError, match="client_atuh"):
        ctx.client_atuh = "required"  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="client_auth"):
        del ctx.client_auth
    assert ctx.client_auth == "off"


def test_a_context_cannot_be_copied_or_pickled() -> None:
    """A copy would share the original's ticket keys, replay caches and
    session table (changing its ticket timing changed the original's keys)."""
    ctx = Context(SERVER)
    _ = ctx.ticket_keys
    for copier in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            copier(ctx)


# ------------------------------------------------- key rotation, counters, table


def test_rekey_interval_drives_key_updates_through_the_timer() -> None:
    p = Pair.make(client={"rekey_interval": 60}, server={"rekey_interval": 60})
    p.handshake()
    assert p.client.get_timer() == NOW + 60
    assert p.server.get_timer() == NOW + 60
    p.client.send_data(b"under the first keys")
    p.pump()
    p.client.handle_timer(NOW + 59.5)
    assert p.client.data_to_send() == b""  # not yet
    p.client.handle_timer(NOW + 60)
    p.pump(now=NOW + 60)
    assert event_types(p.client_events)[-1] == "KeysUpdated"
    assert p.client_events[-1] == KeysUpdated("send")
    assert p.server_events[-1] == KeysUpdated("receive")
    assert p.client.get_timer() == NOW + 120
    assert p.server.get_timer() == NOW + 60  # its own sending keys are still the first
    p.client.send_data(b"after")
    p.pump(now=NOW + 60)
    assert p.server_events[-1].data == b"after"  # type: ignore[union-attr]


def test_rekey_interval_renews_the_keys_when_the_clock_goes_back() -> None:
    """A clock set back (by more than a second) leaves the sending keys' age
    unknown: they are renewed at once, as ticket keys are. (The keys were
    kept until the new clock reached the old time plus the interval: a clock
    set back one day ratcheted nothing for a day.) Less than a second back
    (the calls of a socket's reader and writer threads) changes nothing."""
    p = Pair.make(client={"rekey_interval": 60.0})
    p.handshake()
    p.client.send_data(b"under the first keys")
    p.pump()
    p.client.handle_timer(NOW - 0.5)  # slightly out of order: nothing
    assert p.client.data_to_send() == b""
    assert p.client.get_timer() == NOW + 60
    back = NOW - 86400.0
    p.client.handle_timer(back)
    assert p.client.stats.key_updates == 1
    p.pump(now=back)
    assert p.server_events[-1] == KeysUpdated("receive")
    assert p.client.get_timer() == back + 60  # the new keys' age, by the new clock
    # Told of the earlier time by a read, the next timer is due at once, and a
    # send ratchets first.
    q = Pair.make(client={"rekey_interval": 60.0})
    q.handshake()
    q.client.send_data(b"under the first keys")
    q.pump()
    q.server.send_data(b"hello")
    q.pump(now=back)  # the client learns the time from the data it receives
    assert q.client.get_timer() == back
    q.client.send_data(b"under new keys")
    q.pump(now=back)
    assert q.client.stats.key_updates == 1
    assert q.server_events[-2:] == [KeysUpdated("receive"), DataReceived(b"under new keys")]
    assert q.client.error is None
    assert q.server.error is None


@pytest.mark.parametrize(
    ("start", "interval"),
    [
        (1713436424.41124, 0.1),  # today's clock: the sum rounds, the difference is short
        (NOW + 0.000563, 1e9),  # the sum crosses 2**32: rounded to the coarser spacing
        (1e15 - 5.0, 0.001),  # the interval is under the spacing of floats there
        (1e15 - 5.0, 60.0),  # the renewal falls after MAX_NOW
    ],
)
def test_handle_timer_at_the_time_get_timer_tells_always_fires(
    start: float, interval: float
) -> None:
    """handle_timer(get_timer()) renews the keys, and the next timer is later
    (or None). It compared ``now - last`` with the interval while get_timer()
    told ``last + interval``: where the rounded sum made the difference fall
    short (rekey_interval=0.1 at today's clock, nearly always), the timer
    neither fired nor moved, and a caller driving a clock from get_timer()
    looped for ever with the keys never renewed."""
    p = Pair.make(
        client={"rekey_interval": interval}, server={"rekey_interval": interval}, now=start
    )
    p.handshake()
    for round_ in range(3):
        p.client.send_data(b"under these keys")
        p.pump()
        due = p.client.get_timer()
        if due is None:  # (only past MAX_NOW: no accepted now reaches it)
            assert start + interval > 1e15
            return
        assert due > p.client._now or round_ == 0
        p.client.handle_timer(due)
        assert p.client.stats.key_updates == round_ + 1, (round_, due)
        after = p.client.get_timer()
        assert after is None or after > due
        p.pump(now=due)
    assert p.client.error is None
    assert p.server.error is None


def test_rekey_interval_leaves_keys_that_sealed_nothing_and_restarts_their_age() -> None:
    """An interval that passes with nothing sent sends no KeyUpdate (the keys
    protect nothing yet): their age starts again. Idle connections used to
    ratchet at every interval, each side, and with an interval under 1/64 s
    the peer refused them as a flood (MAX_PEER_KEY_UPDATES)."""
    p = Pair.make(client={"rekey_interval": 0.01}, server={"rekey_interval": 0.01})
    p.handshake()
    for tick in range(1, 200):  # two idle seconds of timers
        now = NOW + tick * 0.01
        p.client.handle_timer(now)
        p.server.handle_timer(now)
        assert p.client.data_to_send() == b""
        assert p.server.data_to_send() == b""
    assert p.client.get_timer() == pytest.approx(NOW + 2.0)  # restarted at the last tick
    assert p.client.stats.key_updates == 0
    p.client.send_data(b"now the keys are used")
    p.client.handle_timer(NOW + 2.0)
    p.pump(now=NOW + 2.0)
    assert p.client.stats.key_updates == 1  # ratcheted once they sealed something
    assert p.server_events[-1] == KeysUpdated("receive")
    assert p.client.error is None
    assert p.server.error is None


def test_rekey_interval_ratchets_a_key_that_took_over_in_the_middle_of_a_write() -> None:
    """150 bytes with key_update_bytes=100: 100 under the first keys, a key
    update, 50 under the next. Those 50 count for the next keys: the
    interval then ratchets them. (The whole write was counted before it was
    sealed, so the next keys seemed to have sealed nothing, and only their
    age was restarted, again and again.)"""
    opts = {"key_update_bytes": 100, "rekey_interval": 10.0}
    p = Pair.make(server=dict(opts), client=dict(opts))
    p.handshake()
    p.client.send_data(b"x" * 150)
    p.pump(now=NOW)
    assert p.client.stats.key_updates == 1  # the one in the middle of the write
    p.client.handle_timer(NOW + 10)
    p.pump(now=NOW + 10)
    assert p.client.stats.key_updates == 2  # the interval's
    assert received_data(p.server_events) == b"x" * 150


def test_rekey_interval_applies_on_send_after_the_interval() -> None:
    """The connection has no clock: ``now`` comes from receive_data/handle_timer.
    Once it has passed the interval, the next send ratchets first."""
    p = Pair.make(client={"rekey_interval": 30})
    p.handshake()
    p.client.send_data(b"a")
    assert p.client.stats.key_updates == 0
    p.client.receive_data(b"", NOW + 31)  # tells the connection the time
    p.client.send_data(b"b")
    p.pump(now=NOW + 31)
    assert p.client.stats.key_updates == 1
    assert p.client.stats.last_key_update == NOW + 31
    assert p.server.stats.key_updates == 1
    assert received_data(p.server_events) == b"ab"


def test_no_rekey_interval_means_no_timer_after_the_handshake() -> None:
    p = Pair.make()
    assert p.client.get_timer() is None
    p.start()
    assert p.client.get_timer() == NOW + 10.0  # the handshake deadline
    p.pump()
    assert p.client.get_timer() is None
    p.client.handle_timer(NOW + 1e6)
    assert p.client.data_to_send() == b""


def test_connection_stats_count_application_bytes_and_key_updates() -> None:
    p = Pair.make()
    before = p.client.stats
    assert (before.started, before.bytes_sent, before.key_updates) == (0.0, 0, 0)
    assert before.last_key_update is None
    p.now = NOW + 5
    p.handshake()
    p.client.send_data(b"x" * 1000)
    p.client.send_message(b"m" * 10)
    p.server.send_data(b"y" * 20)
    p.pump(now=NOW + 6)
    c, s = p.client.stats, p.server.stats
    assert c.started == s.started == NOW + 5
    assert (c.bytes_sent, c.bytes_received) == (1000 + 4 + 10, 20)
    assert (s.bytes_sent, s.bytes_received) == (20, 1000 + 4 + 10)
    p.client.update_keys(request_peer=True)
    p.pump(now=NOW + 7)
    p.server.send_data(b"z")  # the server's answer goes before its next data
    p.pump(now=NOW + 7)
    c, s = p.client.stats, p.server.stats
    assert c.key_updates == 2
    assert s.key_updates == 2
    assert c.last_key_update == s.last_key_update == NOW + 7


def test_session_table_lists_live_server_sessions() -> None:
    p = first_session(server={"client_auth": "optional"}, client={"identity": CLIENT})
    q = resume(p, now=NOW + 1)
    anonymous = Pair(Context(trusted_peers=[SERVER.public]), p.server_ctx, now=NOW + 2)
    anonymous.handshake()
    table = p.server_ctx.sessions
    assert len(table) == 3
    q.client.send_data(b"12345")
    q.pump(now=NOW + 3)
    q.server.update_keys(request_peer=False)
    q.server.send_data(b"abc")
    q.pump(now=NOW + 3)
    rows = sorted(table, key=lambda r: r.started)
    assert all(isinstance(r, LiveSession) for r in rows)
    assert [r.started for r in rows] == [NOW, NOW + 1, NOW + 2]
    assert [r.resumed for r in rows] == [False, True, False]
    assert [r.peer_id for r in rows] == [CLIENT.peer_id, CLIENT.peer_id, None]
    assert {r.group for r in rows} == {"x25519-mlkem768"}
    assert rows[1].cipher == q.server.session.cipher  # type: ignore[union-attr]
    assert (rows[1].bytes_received, rows[1].bytes_sent) == (5, 3)
    assert rows[1].key_updates == 1
    assert rows[1].last_key_update == NOW + 3
    assert rows[0].last_key_update is None
    assert not any(r.early_data_accepted for r in rows)
    assert table.snapshot() == list(table)


def test_session_table_drops_closed_and_failed_sessions() -> None:
    p = first_session()
    q = resume(p)
    table = p.server_ctx.sessions
    assert len(table) == 2
    q.client.close()
    q.pump()
    assert len(table) == 1
    p.server.close()  # the server closes its side
    assert len(table) == 0
    assert table.snapshot() == []
    r = resume(p)
    assert len(table) == 1
    r.server.receive_data(b"\x17\x00\x00\x20" + bytes(32))  # a forged record: fatal
    assert r.server.is_closed
    assert len(table) == 0


def test_clients_and_failed_handshakes_are_not_in_the_table() -> None:
    p = Pair.make(client={"identity": CLIENT}, pin=False)
    p.connect()  # the client trusts nobody: the handshake fails
    assert not p.server.handshake_complete or p.server.is_closed
    assert len(p.server_ctx.sessions) == 0
    assert len(p.client_ctx.sessions) == 0


def test_session_table_is_bounded_and_counts_what_it_dropped() -> None:
    server = Context(SERVER, tickets_per_handshake=0)
    server.sessions = SessionTable(max_sessions=2)
    pairs = []
    for _ in range(4):
        pair = Pair(Context(trusted_peers=[SERVER.public]), server)
        pair.handshake()
        pairs.append(pair)
    assert len(server.sessions) == 2
    assert server.sessions.dropped == 2
    pairs[0].client.close()
    pairs[0].pump()
    assert len(server.sessions) == 1
    pair = Pair(Context(trusted_peers=[SERVER.public]), server)
    pair.handshake()
    assert len(server.sessions) == 2
    assert server.sessions.dropped == 2


def test_session_table_checks_max_sessions() -> None:
    for bad, error in ((0, ValueError), (-1, ValueError), ("x", TypeError), (True, TypeError)):
        with pytest.raises(error, match="max_sessions"):
            SessionTable(bad)  # type: ignore[arg-type]
    assert len(SessionTable(1)) == 0


def test_session_table_holds_connections_weakly() -> None:
    import gc

    server = Context(SERVER, tickets_per_handshake=0)
    pair = Pair(Context(trusted_peers=[SERVER.public]), server)
    pair.handshake()
    assert len(server.sessions) == 1
    del pair
    gc.collect()
    assert len(server.sessions) == 0


def test_resumed_session_events_end_cleanly() -> None:
    p = first_session()
    q = resume(p)
    q.client.close()
    q.pump()
    assert isinstance(q.server_events[-1], ConnectionClosed)
    assert q.server_events[-1].error is None


def test_session_api_is_exported_from_the_package() -> None:
    import nautilus

    names = ("SessionCache", "EarlyDataReceived", "EarlyDataRejected")
    assert [n for n in names if not hasattr(nautilus, n)] == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_locks_were_held_can_use_the_context() -> None:
    """fork() while other threads hold a Context's locks (settings, ticket
    keys, replay caches, the session table, the ticket AEAD): the child, which
    has none of those threads, gets new locks and works, where it used to wait
    for ever. (Ticket keys whose lock another thread held at the fork may be
    half-changed: the child forgets them, so the parent's tickets do not open
    there, the child's own do.)"""
    ctx = Context(SERVER, early_data=True)
    keys = ctx.ticket_keys
    contents_now = NOW
    sealed = keys.seal(_contents(), contents_now)
    current = keys._current
    assert current is not None
    held = [
        ctx._settings_lock,
        ctx._replay_lock,
        keys._lock,
        ctx._early_replay._lock,
        ctx._seen_hellos._lock,
        ctx.sessions._lock,
        current.aead._lock,
    ]

    def child() -> None:
        ctx.client_auth = "optional"
        assert keys.open(sealed, contents_now) is None
        assert keys.open(keys.seal(_contents(), contents_now), contents_now) is not None
        assert ctx._early_replay.first_use(b"t", NOW + 10, NOW)
        assert not ctx._hello_replayed(b"r" * 32, NOW, 120.0)
        assert len(ctx.sessions) == 0

    in_a_child_forked_with_locks_held(held, child)


# ------------------------------------------- checks found untested by a mutation run


def test_client_refuses_a_psk_dhe_answer_to_its_psk_only_offer_without_a_share() -> None:
    """A psk_only offer sends no key share: a ServerHello that answers it with
    a key exchange (psk_dhe and a share) has nothing to decapsulate with."""
    p = first_session(server={"resumption": "psk_only"}, client={"resumption": "psk_only"})

    def to_psk_dhe(src: Connection, dst: Connection, data: bytes) -> bytes:
        if src.role != "server" or data[0] != RECORD_HANDSHAKE_PLAIN:
            return data
        return rewrite_plain_handshake(
            data,
            lambda _t, b: replace(
                ServerHello.decode_body(b), psk_mode=PskMode.PSK_DHE, share=bytes(1120)
            ).encode_body(),
            only=MsgType.SERVER_HELLO,
        )

    q = resume(p, intercept=to_psk_dhe)
    assert_closed_with(q.client, q.client_events, ProtocolViolation)
    assert "key share that the client did not send" in str(q.client.error)


def test_client_refuses_a_resumption_that_asks_for_its_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resumed session is authenticated by the ticket: EncryptedExtensions
    asking for the client's identity there is refused, not answered."""
    p = first_session()
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    rewrite_sent(
        monkeypatch, q.server, EncryptedExtensions,
        lambda ee: replace(ee, client_auth=ClientAuth.OPTIONAL),
    )  # fmt: skip
    q.connect()
    assert_closed_with(q.client, q.client_events, ProtocolViolation)
    assert "resumed session asked for client authentication" in str(q.client.error)
    assert "HandshakeCompleted" not in event_types(q.client_events)


def test_a_cached_ticket_of_another_namespace_is_not_offered() -> None:
    p = first_session()
    replace_ticket(p, namespace=b"another")
    flights = Flights()
    q = resume(p, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer == b""
    assert completed(q) == (False, False)


def test_ticket_of_another_namespace_is_not_honoured_under_shared_ticket_keys() -> None:
    """Two contexts of one identity sharing ticket keys, in two namespaces:
    a ticket of the first, offered in the second, opens but is not honoured."""
    p = first_session()
    other = Context(SERVER, tickets_per_handshake=0, namespace="another")
    other._ticket_keys = p.server_ctx.ticket_keys
    client = Context(trusted_peers=[SERVER.public], namespace="another")
    ticket = p.client_ctx.session_cache.take(CACHE_KEY, NOW)
    assert ticket is not None
    key = SessionCache.key("*", SERVER_NAME, namespace="another")
    client.session_cache.store(key, replace(ticket, namespace=b"another"))
    flights = Flights()
    q = resume(p, client_ctx=client, server_ctx=other, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer != b""  # offered...
    assert completed(q) == (False, False)  # ...and not honoured


@pytest.mark.parametrize(("behind", "resumed"), [(60.0, True), (61.0, False)])
def test_a_ticket_issued_over_a_minute_ahead_of_the_servers_clock_is_not_honoured(
    behind: float, resumed: bool
) -> None:
    p = first_session()
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    q.client.start(NOW)
    q.server.start(NOW - behind)
    q.pump(now=NOW - behind)
    assert completed(q) == (resumed, resumed)


@pytest.mark.parametrize(("left", "lifetimes"), [(1.5, [1]), (0.5, [])])
def test_a_resumed_session_issues_no_ticket_with_under_a_second_of_authentication_left(
    monkeypatch: pytest.MonkeyPatch, left: float, lifetimes: list[int]
) -> None:
    p = first_session(server={"ticket_lifetime": MAX_TICKET_LIFETIME})
    now = NOW + MAX_TICKET_LIFETIME - left
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME}, now)
    received: list[int] = []
    honest = q.client._on_new_session_ticket

    def spy(msg: NewSessionTicket, full: bytes) -> object:
        received.append(msg.lifetime)
        return honest(msg, full)

    patch_method(monkeypatch, q.client, "_on_new_session_ticket", spy)
    q.connect()
    assert completed(q) == (True, True)
    assert received == lifetimes  # (not even one of lifetime 0, which no client keeps)
    assert len(p.client_ctx.session_cache) == len(lifetimes)


def _forged_ticket(p: Pair) -> bytes:
    """A sealed record with a NewSessionTicket from the server's keys (the
    client keeps whatever ticket bytes it is given)."""
    sealer = p.server._sealer
    assert sealer is not None
    return sealer._seal_chunk(
        frame(NewSessionTicket(3600, 0, bytes(8), b"t" * 32, 0)), ContentType.HANDSHAKE
    )


@pytest.mark.parametrize(("records", "kept"), [(63, 1), (64, 0)])
@pytest.mark.parametrize("kind", ["data", "unusable tickets"])
def test_a_closed_client_keeps_no_ticket_past_its_64th_record(
    kind: str, records: int, kept: int
) -> None:
    """Counted within one read too: a run of handshake records is opened in
    one call, and the count stops it in the middle."""
    p = _closed_before_its_ticket(tickets_per_handshake=0)
    sealer = p.server._sealer
    assert sealer is not None
    if kind == "data":
        for i in range(records):
            p.server.send_data(b"%d" % i)
        wire = p.server.data_to_send()
    else:  # lifetime 0: read, and not kept
        unusable = frame(NewSessionTicket(0, 0, bytes(8), bytes(32), 0))
        wire = b"".join(sealer._seal_chunk(unusable, ContentType.HANDSHAKE) for _ in range(records))
    p.client.receive_data(wire + _forged_ticket(p), NOW)
    assert len(p.client_ctx.session_cache) == kept


def test_a_closed_client_stops_at_a_handshake_message_that_is_not_a_ticket() -> None:
    p = _closed_before_its_ticket(tickets_per_handshake=0)
    sealer = p.server._sealer
    assert sealer is not None
    p.client.receive_data(
        sealer._seal_chunk(frame(Finished(bytes(32))), ContentType.HANDSHAKE) + _forged_ticket(p),
        NOW,
    )
    assert len(p.client_ctx.session_cache) == 0
    assert p.client._keys is None
    assert p.client.error is None


def test_a_psk_only_hello_whose_share_group_it_does_not_list_gets_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server takes a psk_only hello's share_group (no key exchange, so
    no HelloRetry) only if the client lists it among its groups: else it asks
    for a group of the list, and resumes with that one."""
    opts = {"resumption": "psk_only"}
    p = Pair.make(
        server={"tickets_per_handshake": 1, "groups": ["mlkem768", "x25519-mlkem768"], **opts},
        client={"groups": ["x25519-mlkem768", "mlkem768"], **opts},
        server_name=SERVER_NAME,
    )
    p.handshake()
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": SERVER_NAME})
    honest = q.client._send_hello
    sent: list[ClientHello] = []

    def unlisted(hello: ClientHello, early_records: int) -> None:
        if not sent:  # the first hello: its share group left out of its list
            hello = replace(hello, groups=tuple(g for g in hello.groups if g != hello.share_group))
        sent.append(hello)
        honest(hello, early_records)

    patch_method(monkeypatch, q.client, "_send_hello", unlisted)
    q.connect()
    assert len(sent) == 2  # a HelloRetry came
    assert completed(q) == (True, True)
    assert q.server.session is not None
    assert q.server.session.group == "mlkem768"


def test_a_cached_ticket_of_an_unknown_cipher_is_not_offered() -> None:
    """A ticket whose cipher this version does not know (a cache file written
    by another version): left unused, a full handshake instead."""
    p = first_session()
    replace_ticket(p, cipher=0x7F7F)
    flights = Flights()
    q = resume(p, intercept=flights)
    assert client_hello(flights.first("client")).psk_offer == b""
    assert completed(q) == (False, False)


def test_a_client_with_resumption_off_keeps_no_ticket() -> None:
    p = Pair.make(
        server={"tickets_per_handshake": 2}, client={"resumption": "off"}, server_name=SERVER_NAME
    )
    p.handshake()
    p.pump()
    assert len(p.client_ctx.session_cache) == 0


@pytest.mark.parametrize(
    ("update", "kept"),
    [(b"\x00", 1), (b"\x02", 0), (b"\x00\x00", 0)],
    ids=["valid", "value", "length"],
)
def test_a_closed_client_stops_reading_at_a_malformed_key_update(update: bytes, kept: int) -> None:
    """What follows a malformed key update (here a ticket under the next key)
    is not read: the reading ends there, as at any record it cannot use. After
    a valid one, the ticket is read and kept."""
    p = _closed_before_its_ticket(tickets_per_handshake=0)
    sealer, keys = p.server._sealer, p.server._keys
    assert sealer is not None
    assert keys is not None
    wire = sealer._seal_chunk(update, ContentType.KEY_UPDATE)
    p.server._install(keys.update_traffic(False), None)  # the next key, as a valid update
    p.client.receive_data(wire + _forged_ticket(p), NOW)
    assert len(p.client_ctx.session_cache) == kept
