"""Helpers for the in-memory protocol tests: identities, contexts, a pump that
moves bytes between two sans-IO Connections, and plaintext-record surgery for
the man-in-the-middle tests."""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from nautilus import (
    ConnectionClosed,
    Context,
    DataReceived,
    Event,
    HandshakeCompleted,
    Identity,
)
from nautilus.protocol.connection import Connection
from nautilus.protocol.messages import (
    RECORD_HANDSHAKE_PLAIN,
    RECORD_SEALED,
    Message,
    MsgType,
)
from nautilus.sessions import TicketContents

NOW = 1_800_000_000.0
"""The fixed wall-clock time of every test (2027-01-15)."""

ALL_GROUPS = ("x25519-mlkem768", "x25519-mlkem1024", "mlkem1024", "mlkem768", "x25519")
ALL_CIPHERS = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305")
KINDS = ("ed25519", "ml-dsa-65", "ed25519+ml-dsa-65")

Intercept = Callable[[Connection, Connection, bytes], bytes]


@functools.cache
def cached_identity(kind: str = "ed25519", n: int = 0) -> Identity:
    """A process-wide identity per (kind, n): key generation is not what we test."""
    return Identity.generate(kind)


def ticket_contents(
    issued: float = NOW, lifetime: float = 7200.0, client_key: bytes = b""
) -> TicketContents:
    """What a server seals in a ticket (random secrets; for ticket-key tests)."""
    return TicketContents(
        issued=issued,
        lifetime=lifetime,
        cipher=0x1302,
        psk=os.urandom(32),
        server_id_hash=os.urandom(32),
        namespace=b"nautilus",
        client_key=client_key,
        client_certificate=b"",
        max_early_data=1024,
        age_add=12345,
        authenticated=issued,
    )


def make_identity(kind: str = "ed25519") -> Identity:
    """A fresh identity."""
    return Identity.generate(kind)


def server_context(identity: Identity | None = None, **kwargs: Any) -> Context:
    """A server context (a fresh Ed25519 identity unless one is given)."""
    return Context(identity if identity is not None else make_identity(), **kwargs)


def client_context(server: Identity | None = None, **kwargs: Any) -> Context:
    """A client context that pins ``server`` (when given)."""
    if server is not None:
        kwargs.setdefault("trusted_peers", [server.public])
    return Context(**kwargs)


def patch_method(
    monkeypatch: pytest.MonkeyPatch, conn: Connection, name: str, replacement: Callable[..., Any]
) -> None:
    """Make ``conn.name(...)`` call ``replacement(...)`` (for a dishonest peer).

    Connection has slots, so the method is replaced on the class for the
    test's duration; every other connection keeps the honest one.
    """
    honest = getattr(Connection, name)

    def dispatch(self: Connection, *args: Any, **kwargs: Any) -> Any:
        if self is conn:
            return replacement(*args, **kwargs)
        return honest(self, *args, **kwargs)

    monkeypatch.setattr(Connection, name, dispatch)


def rewrite_sent(
    monkeypatch: pytest.MonkeyPatch,
    conn: Connection,
    cls: type | tuple[type, ...],
    edit: Callable[[Any], Message | None],
) -> None:
    """Make ``conn`` send ``edit(msg)`` in place of each handshake message of
    class ``cls`` it sends, or leave the message out (of its flight and its
    transcript) where ``edit`` returns None: a dishonest peer."""
    honest = conn._send_handshake

    def send(msg: Message) -> None:
        if isinstance(msg, cls):
            edited = edit(msg)
            if edited is not None:
                honest(edited)
        else:
            honest(msg)

    patch_method(monkeypatch, conn, "_send_handshake", send)


def pump(
    a: Connection,
    b: Connection,
    now: float = NOW,
    *,
    intercept: Intercept | None = None,
    max_flights: int = 64,
) -> int:
    """Move ``data_to_send()`` between ``a`` and ``b`` until neither has anything.

    ``intercept(sender, receiver, data)`` may rewrite (or drop, returning b"")
    each flight. Returns the number of non-empty flights delivered; a flight is
    everything one side had queued when its turn came.
    """
    flights = 0
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if not data:
                continue
            moved = True
            if intercept is not None:
                data = intercept(src, dst, data)
            if data:
                flights += 1
                dst.receive_data(data, now)
        if not moved:
            return flights
        if flights > max_flights:
            raise AssertionError(f"pump did not go quiet after {max_flights} flights")


def drain_events(conn: Connection) -> list[Event]:
    """Every queued event of ``conn``, in order."""
    out: list[Event] = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def received_data(events: Iterable[Event]) -> bytes:
    """The concatenation of the DataReceived events."""
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def closed_error(events: list[Event]) -> BaseException | None:
    """The error of the last event, which must be a ConnectionClosed."""
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, ConnectionClosed), f"last event is {last!r}, not ConnectionClosed"
    return last.error


def assert_closed_with(
    conn: Connection, events: list[Event], cls: type[BaseException], *, exact: bool = True
) -> None:
    """``conn`` is closed and reported exactly one ConnectionClosed, last, whose error
    is of class ``cls`` (exactly, or a subclass when ``exact`` is False)."""
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closes) == 1, events
    assert events[-1] is closes[0], events
    err = closes[0].error
    ok = type(err) is cls if exact else isinstance(err, cls)
    assert ok, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert conn.is_closed
    assert conn.error is err


@dataclass
class Pair:
    """A client and a server Connection over in-memory pipes."""

    client_ctx: Context
    server_ctx: Context
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    now: float = NOW
    client: Connection = field(init=False)
    server: Connection = field(init=False)
    client_events: list[Event] = field(init=False, default_factory=list)
    server_events: list[Event] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.client = Connection(self.client_ctx, "client", **self.client_kwargs)
        self.server = Connection(self.server_ctx, "server")

    @classmethod
    def make(
        cls,
        server_identity: Identity | None = None,
        *,
        server: dict[str, Any] | None = None,
        client: dict[str, Any] | None = None,
        pin: bool = True,
        now: float = NOW,
        **client_kwargs: Any,
    ) -> Pair:
        """Contexts from keyword dicts; with ``pin`` the client pins the server's key.

        The server sends no session tickets unless ``server`` asks for them
        (``tickets_per_handshake``): tickets add records to the server's flight
        (or a flight after the client's), and most tests count flights and records.
        """
        ident = server_identity if server_identity is not None else cached_identity()
        client_opts = dict(client or {})
        if pin:
            client_opts.setdefault("trusted_peers", [ident.public])
        server_opts = {"tickets_per_handshake": 0, **(server or {})}
        return cls(Context(**client_opts), Context(ident, **server_opts), client_kwargs, now)

    def start(self) -> None:
        self.client.start(self.now)
        self.server.start(self.now)

    def pump(self, intercept: Intercept | None = None, now: float | None = None) -> int:
        flights = pump(
            self.client, self.server, self.now if now is None else now, intercept=intercept
        )
        self.collect()
        return flights

    def collect(self) -> None:
        self.client_events += drain_events(self.client)
        self.server_events += drain_events(self.server)

    def connect(self, intercept: Intercept | None = None) -> int:
        """Start both sides and pump; returns the number of flights."""
        self.start()
        return self.pump(intercept)

    def handshake(self) -> int:
        """connect() and require success on both sides."""
        flights = self.connect()
        assert self.client.handshake_complete, self.client_events
        assert self.server.handshake_complete, self.server_events
        return flights


# ------------------------------------------------------------------ wire surgery


def split_records(wire: bytes) -> list[bytes]:
    """Cut a stream of (plaintext or sealed) records at their header lengths."""
    out, pos = [], 0
    while pos < len(wire):
        end = pos + 4 + int.from_bytes(wire[pos + 1 : pos + 4], "big")
        assert end <= len(wire), "truncated record"
        out.append(wire[pos:end])
        pos = end
    return out


def plain_record(rtype: int, payload: bytes) -> bytes:
    return bytes([rtype]) + len(payload).to_bytes(3, "big") + payload


def handshake_message(mtype: int, body: bytes) -> bytes:
    return bytes([mtype]) + len(body).to_bytes(3, "big") + body


def split_plain_handshake(wire: bytes) -> tuple[list[tuple[MsgType, bytes]], bytes]:
    """The handshake messages in the leading plaintext records, and the rest of ``wire``."""
    records = split_records(wire)
    payload = bytearray()
    rest_at = len(records)
    for i, rec in enumerate(records):
        if rec[0] != RECORD_HANDSHAKE_PLAIN:
            rest_at = i
            break
        payload += rec[4:]
    rest = b"".join(records[rest_at:])
    assert all(r[0] == RECORD_SEALED for r in records[rest_at:])
    messages = []
    pos = 0
    while pos < len(payload):
        length = int.from_bytes(payload[pos + 1 : pos + 4], "big")
        messages.append((MsgType(payload[pos]), bytes(payload[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return messages, rest


def rewrite_plain_handshake(
    wire: bytes, edit: Callable[[MsgType, bytes], bytes], *, only: MsgType | None = None
) -> bytes:
    """Apply ``edit(type, body) -> body`` to the plaintext handshake messages of
    ``wire`` (only those of type ``only`` if given) and re-frame them."""
    messages, rest = split_plain_handshake(wire)
    out = bytearray()
    for mtype, body in messages:
        new = edit(mtype, body) if only is None or mtype == only else body
        out += plain_record(RECORD_HANDSHAKE_PLAIN, handshake_message(mtype, new))
    return bytes(out) + rest


def event_types(events: Iterable[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def normalized(events: Iterable[Event]) -> list[tuple[str, Any]]:
    """Events with runs of DataReceived merged (their split depends on chunking)."""
    out: list[tuple[str, Any]] = []
    for e in events:
        if isinstance(e, DataReceived):
            if out and out[-1][0] == "DataReceived":
                out[-1] = ("DataReceived", out[-1][1] + e.data)
            else:
                out.append(("DataReceived", e.data))
        elif isinstance(e, HandshakeCompleted):
            s = e.session
            out.append(("HandshakeCompleted", (s.group, s.cipher, s.peer_id, s.trust)))
        elif isinstance(e, ConnectionClosed):
            out.append(("ConnectionClosed", type(e.error).__name__ if e.error else None))
        else:
            out.append((type(e).__name__, e))
    return out


# ------------------------------------------------------------------ fork()


def in_a_child_forked_with_locks_held(
    locks: Iterable[threading.Lock], child: Callable[[], None]
) -> None:
    """Hold ``locks`` (as other threads would, at the instant of a fork), fork,
    and run ``child()`` in the child; fail unless it returns within 10 s (a
    hang on one of those locks ends the child with SIGALRM)."""
    held = list(locks)
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                signal.alarm(10)
                child()
                code = 0
            finally:
                os._exit(code)
    finally:
        for lock in held:
            lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------- the message lane


def record_general_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on (for the test), each call of ``Connection.receive_data`` or
    ``send_messages``, the general path the message lane bypasses, is
    recorded by name in the list returned."""
    general: list[str] = []
    for name in ("receive_data", "send_messages"):
        original = getattr(Connection, name)

        def counted(self: Connection, *args: Any, _name: str = name, _f: Any = original) -> Any:
            general.append(_name)
            return _f(self, *args)

        monkeypatch.setattr(Connection, name, counted)
    return general


async def round_trips_in_the_lane(client: Any, served: Any, general: list[str]) -> None:
    """Request/response between two asyncio channels: after a warm-up (the
    receive buffers grow to the messages' size, session tickets arrive), 200
    round trips of 1..200-byte messages, each echoed intact and none through
    the general path (``general``: from :func:`record_general_path`)."""
    for _ in range(5):  # warm-up, with messages larger than those below
        client.send_message(bytes(300))
        served.send_message(await served.recv_message())
        assert await client.recv_message() == bytes(300)
    general.clear()
    for i in range(200):
        message = bytes([i]) * (i + 1)
        client.send_message(message)
        served.send_message(await served.recv_message())
        assert await client.recv_message() == message
    assert general == []
