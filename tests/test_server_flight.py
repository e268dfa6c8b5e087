"""Parts of a flight leave while the Connection goes on (Connection._flush_hook,
set by the asyncio and socket adapters): a server's ServerHello before the rest
of its flight is made (the client decapsulates while the server signs and
seals), a server's flight before its tickets, a client's flight before it
switches to its application keys."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest
from protocol_helpers import NOW, Pair, cached_identity, received_data, split_records

import nautilus.asyncio as na
from nautilus import Context
from nautilus.protocol.connection import Connection
from nautilus.protocol.messages import RECORD_HANDSHAKE_PLAIN, RECORD_SEALED

WAIT = 5.0


def test_the_hook_gets_the_server_hello_alone_then_the_flight() -> None:
    pair = Pair.make()
    early: list[bytes] = []
    pair.server._flush_hook = lambda data: early.append(bytes(data))
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    assert pair.server.data_to_send() == b""  # all of it went through the hook
    assert len(early) == 2
    assert [r[0] for r in split_records(early[0])] == [RECORD_HANDSHAKE_PLAIN]
    assert [r[0] for r in split_records(early[1])] == [RECORD_SEALED]
    # The client takes the two parts one after the other.
    pair.client.receive_data(early[0], NOW)
    assert not pair.client.handshake_complete
    pair.client.receive_data(early[1], NOW)
    assert pair.client.handshake_complete
    pair.pump()
    assert pair.server.handshake_complete
    assert pair.server._flush_hook is None  # used once: no reference cycle is kept


def test_a_server_with_tickets_sends_its_flight_before_making_them() -> None:
    pair = Pair.make(server={"tickets_per_handshake": 2}, server_name="srv:1")
    parts: list[bytes] = []
    pair.server._flush_hook = lambda data: parts.append(bytes(data))
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    tickets = pair.server.data_to_send()
    assert [[r[0] for r in split_records(p)] for p in parts] == [
        [RECORD_HANDSHAKE_PLAIN],  # the ServerHello
        [RECORD_SEALED],  # the rest of the flight, in one record
    ]
    assert len(split_records(tickets)) == 2
    for data in (*parts, tickets):
        pair.client.receive_data(data, NOW)
    assert pair.client.handshake_complete
    assert len(pair.client_ctx.session_cache) == 2
    pair.pump()
    assert pair.server.handshake_complete


def test_the_client_hook_gets_its_flight_before_its_application_data() -> None:
    pair = Pair.make()
    flight: list[bytes] = []
    pair.client._flush_hook = lambda data: flight.append(bytes(data))
    pair.start()
    pair.client.send_data(b"sent before the handshake completed")
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    assert pair.client.handshake_complete
    assert pair.client._flush_hook is None  # used once: no reference cycle is kept
    assert len(flight) == 1
    assert [r[0] for r in split_records(flight[0])] == [RECORD_SEALED]  # Finished
    data = pair.client.data_to_send()  # sealed under the application keys, after it
    pair.server.receive_data(flight[0], NOW)
    assert pair.server.handshake_complete
    pair.server.receive_data(data, NOW)
    pair.collect()
    assert received_data(pair.server_events) == b"sent before the handshake completed"


def test_no_hook_no_split() -> None:
    pair = Pair.make()
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    records = split_records(pair.server.data_to_send())
    assert records[0][0] == RECORD_HANDSHAKE_PLAIN
    assert records[1][0] == RECORD_SEALED


def test_a_failed_hello_drops_the_hook() -> None:
    pair = Pair.make()
    pair.server._flush_hook = lambda data: None
    pair.start()
    pair.server.receive_data(b"\x16\x00\x00\x04\xff\xff\xff\xff", NOW)
    assert pair.server.is_closed
    assert pair.server._flush_hook is None


@pytest.fixture
def sign_waits_for_the_client(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The server's signature waits (up to WAIT s) until the client has the
    ServerHello; the event tells whether it arrived first."""
    got_hello = threading.Event()
    original = Connection._sign_transcript

    def slow_sign(self: Connection, context_string: bytes) -> Any:
        got_hello.wait(WAIT)
        return original(self, context_string)

    monkeypatch.setattr(Connection, "_sign_transcript", slow_sign)
    return got_hello


def raw_client(port: int, got_hello: threading.Event, result: list[object]) -> None:
    """A sans-IO client over a plain socket: reads the first bytes of the
    server's answer on their own, then completes the handshake."""
    ident = cached_identity()
    conn = Connection(Context(trusted_peers=[ident.public]), "client")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        conn.start(time.time())
        sock.sendall(conn.data_to_send())
        first = sock.recv(65536)
        result.append(first[:1])
        if first[:1] == bytes([RECORD_HANDSHAKE_PLAIN]) and not any(
            r[0] == RECORD_SEALED for r in split_records(first)
        ):
            got_hello.set()  # only the ServerHello came: the server has not signed yet
        conn.receive_data(first, time.time())
        while not conn.handshake_complete and not conn.is_closed:
            data = sock.recv(65536)
            if not data:
                break
            conn.receive_data(data, time.time())
        result.append(conn.handshake_complete)
        sock.sendall(conn.data_to_send())


def test_blocking_server_sends_its_hello_before_signing(
    sign_waits_for_the_client: threading.Event,
) -> None:
    ctx = Context(cached_identity())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        port = listener.getsockname()[1]
        result: list[object] = []
        client = threading.Thread(target=raw_client, args=(port, sign_waits_for_the_client, result))
        client.start()
        raw, _ = listener.accept()
        raw.settimeout(WAIT)
        with ctx.wrap_socket(raw, server_side=True) as server:
            assert server.session is not None
        client.join(WAIT)
    assert sign_waits_for_the_client.is_set()
    assert result == [bytes([RECORD_HANDSHAKE_PLAIN]), True]


def test_asyncio_server_sends_its_hello_before_signing(
    sign_waits_for_the_client: threading.Event,
) -> None:
    ctx = Context(cached_identity())
    result: list[object] = []
    done = asyncio.Event

    async def main() -> None:
        finished = done()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            finished.set()
            writer.close()

        server = await na.start_server(handler, "127.0.0.1", 0, context=ctx)
        port = server.sockets[0].getsockname()[1]
        client = threading.Thread(target=raw_client, args=(port, sign_waits_for_the_client, result))
        client.start()
        try:
            await asyncio.wait_for(finished.wait(), WAIT * 2)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, client.join, WAIT)
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert sign_waits_for_the_client.is_set()
    assert result == [bytes([RECORD_HANDSHAKE_PLAIN]), True]
