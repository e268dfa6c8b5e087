"""socketserver over Nautilus: many concurrent clients, failing handshakes in between.

Protocol of the echo handler: the client sends an 8-byte length and that many
bytes; the server answers with the SHA-256 of what it read, then the bytes
themselves. Every byte is checked on both sides.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import logging
import os
import random
import select
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import nautilus
from nautilus import Context, DataReceived, EarlyDataRejected, Identity
from nautilus.protocol.connection import Connection
from nautilus.server import NautilusServerMixin

HOST = "127.0.0.1"
SERVER_ID = Identity.generate()
OTHER_ID = Identity.generate()
CLIENTS = 50


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Bound every test: dump the stacks and exit if one hangs."""
    faulthandler.dump_traceback_later(90, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


class EchoServer(NautilusServerMixin, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.handled = 0
        self.failures: list[BaseException] = []
        self.lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        assert exc is not None
        with self.lock:
            self.failures.append(exc)


class HashEcho(socketserver.StreamRequestHandler):
    timeout = 20

    def handle(self) -> None:
        (size,) = struct.unpack(">Q", self.rfile.read(8))
        data = self.rfile.read(size)
        assert len(data) == size
        assert self.request.session is not None
        self.wfile.write(hashlib.sha256(data).digest())
        self.wfile.write(data)
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.handled += 1  # type: ignore[attr-defined]


@contextlib.contextmanager
def serving(**ctx_kw: Any) -> Iterator[EchoServer]:
    server = EchoServer((HOST, 0), HashEcho, context=Context(SERVER_ID, **ctx_kw))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not server.failures, server.failures


def exchange(port: int, seed: int) -> int:
    rng = random.Random(seed)
    size = rng.choice([0, 1, rng.randint(2, 5000), rng.randint(5000, 600_000)])
    data = rng.randbytes(size)
    ctx = Context(trusted_peers=[SERVER_ID.public])
    with nautilus.create_connection((HOST, port), context=ctx, timeout=30) as sock:
        sock.sendall(struct.pack(">Q", size) + data)
        with sock.makefile("rb") as f:
            digest = f.read(32)
            echoed = f.read(size)
            assert f.read(1) == b""  # then a clean end
    assert digest == hashlib.sha256(data).digest()
    assert echoed == data
    return size


def run_clients(port: int, seeds: list[int]) -> list[int]:
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            results[seed] = exchange(port, seed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a client did not finish"
    if errors:
        raise errors[0]
    return [results[s] for s in seeds]


def test_fifty_concurrent_clients() -> None:
    with serving() as server:
        port = server.server_address[1]
        sizes = run_clients(port, list(range(CLIENTS)))
        assert len(sizes) == CLIENTS
    assert server.handled == CLIENTS


def test_failing_handshakes_in_the_middle(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nautilus.server")
    with serving(handshake_timeout=2.0) as server:
        port = server.server_address[1]
        address = (HOST, port)
        silent = socket.create_connection(address)  # says nothing: times out on the server

        def bad_clients() -> None:
            # A client that expects another server.
            with pytest.raises(nautilus.AuthenticationFailed):
                nautilus.create_connection(
                    address, context=Context(), expected_peer=OTHER_ID.public, timeout=10
                )
            # A client that trusts another key.
            with pytest.raises(nautilus.AuthenticationFailed):
                nautilus.create_connection(
                    address, context=Context(trusted_peers=[OTHER_ID.public]), timeout=10
                )
            # Garbage instead of a hello.
            with socket.create_connection(address) as junk:
                junk.sendall(b"GET / HTTP/1.1\r\n\r\n")
                junk.settimeout(10)
                with contextlib.suppress(ConnectionError):
                    while junk.recv(4096):
                        pass
            # Connect and leave at once.
            socket.create_connection(address).close()

        bad = threading.Thread(target=bad_clients, daemon=True)
        bad.start()
        sizes = run_clients(port, list(range(100, 125)))  # while the silent one waits
        bad.join(30)
        assert not bad.is_alive()
        deadline = time.monotonic() + 10
        while "HandshakeTimeout" not in caplog.text:  # the silent client's turn
            assert time.monotonic() < deadline
            time.sleep(0.05)
        silent.settimeout(10)
        assert silent.recv(100)[:1] == b"\x15"  # a plaintext handshake_timeout alert
        silent.close()
        sizes += run_clients(port, list(range(200, 225)))  # and it still serves
    assert len(sizes) == 50
    assert server.handled == 50
    text = caplog.text
    for name in ("AuthenticationFailed", "ProtocolViolation", "HandshakeTimeout"):
        assert name in text, text
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "nautilus.server")


def test_plain_tcp_server_and_handle_request() -> None:
    class Server(NautilusServerMixin, socketserver.TCPServer):
        allow_reuse_address = True

    server = Server((HOST, 0), HashEcho, context=Context(SERVER_ID))
    with server:
        port = server.server_address[1]
        server.timeout = 10
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        exchange(port, 7)
        thread.join(10)
        assert not thread.is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_clients_of_a_forking_server_resume() -> None:
    """socketserver.ForkingMixIn serves each connection in a new child: the
    parent makes its ticket keys before the first fork, so that every child
    opens the tickets of the others (each child used to make keys of its
    own, so no client ever resumed). The server runs in a process of its own,
    single-threaded as such servers are (a fork while another thread is inside
    OpenSSL can leave the child waiting for one of its locks)."""

    class Server(NautilusServerMixin, socketserver.ForkingTCPServer):
        allow_reuse_address = True
        timeout = 30
        lock = threading.Lock()  # (for HashEcho, in each child)
        handled = 0

    connections = 5  # the last one sends its request as 0-RTT data
    server = Server((HOST, 0), HashEcho, context=Context(SERVER_ID, early_data=True))
    pid = os.fork()
    if pid == 0:  # the server process
        code = 1
        try:
            signal.alarm(60)
            for _ in range(connections):
                server.handle_request()
            server.server_close()  # (waits for the children)
            code = 0
        finally:
            os._exit(code)
    server.socket.close()  # (the server process has its own)
    resumed = []
    try:
        ctx = Context(trusted_peers=[SERVER_ID.public], early_data=True)
        for n in range(connections - 1):
            data = b"request %d" % n
            with nautilus.create_connection(server.server_address, context=ctx, timeout=30) as sock:
                sock.sendall(struct.pack(">Q", len(data)) + data)
                with sock.makefile("rb") as f:
                    assert f.read(32) == hashlib.sha256(data).digest()
                    assert f.read(len(data)) == data
                    assert f.read(1) == b""  # then a clean end (the ticket came before)
                assert sock.session is not None
                resumed.append(sock.session.resumed)
        # Early data: another child than the one that issued the ticket
        # refuses it (its zone); the client sends it again after the handshake.
        data = b"early request"
        events = []
        host, port = server.server_address
        with socket.create_connection((host, port), timeout=30) as raw:
            conn = Connection(ctx, "client", server_name=f"{host}:{port}")
            conn.start(time.time(), early_data=struct.pack(">Q", len(data)) + data)
            raw.sendall(conn.data_to_send())
            while chunk := raw.recv(65536):
                conn.receive_data(chunk, time.time())
                raw.sendall(conn.data_to_send())
                while (event := conn.next_event()) is not None:
                    events.append(event)
        assert conn.session is not None
        resumed.append(conn.session.resumed)
        assert not conn.session.early_data_accepted
        assert [type(e) for e in events if isinstance(e, EarlyDataRejected)] == [EarlyDataRejected]
        received = b"".join(e.data for e in events if isinstance(e, DataReceived))
        assert received == hashlib.sha256(data).digest() + data  # served once
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert resumed == [False, True, True, True, True]


def test_mixin_checks_its_context() -> None:
    with pytest.raises(TypeError):
        EchoServer((HOST, 0), HashEcho)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        EchoServer((HOST, 0), HashEcho, context="ctx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identity"):
        EchoServer((HOST, 0), HashEcho, context=Context())


def test_closing_a_socket_whose_handshake_never_started_leaves_what_arrived_unread() -> None:
    """ForkingMixIn's parent closes its copy of each request right after the
    fork, before any handshake: that close must not read (and drop) the
    client's first flight from the connection it shares with the child, which
    then waited for it until the handshake timed out."""
    listener = socket.create_server((HOST, 0))
    client = socket.create_connection(listener.getsockname(), timeout=10)
    with listener, client:
        raw, _ = listener.accept()
        childs_copy = raw.dup()  # what a forked child holds
        with childs_copy:
            wrapped = Context(SERVER_ID).wrap_socket(
                raw, server_side=True, do_handshake_on_connect=False
            )
            client.sendall(b"a client's first flight")
            readable, _, _ = select.select([childs_copy], [], [], 10)
            assert readable
            wrapped.close()  # (the parent's close_request)
            childs_copy.setblocking(False)
            assert childs_copy.recv(100) == b"a client's first flight"
