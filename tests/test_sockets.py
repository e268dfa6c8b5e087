"""nautilus.NautilusSocket end to end over real loopback TCP sockets.

Each test runs its server end in a thread (:class:`Peer`); the peer's socket
has a timeout, so a stuck test fails with a timeout there, and a watchdog
bounds every test in time.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import faulthandler
import functools
import gc
import hashlib
import io
import os
import random
import select
import selectors
import socket
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from protocol_helpers import in_a_child_forked_with_locks_held, record_general_path

import nautilus
import nautilus.sockets
from nautilus import Connection, Context, Identity, NautilusSocket
from nautilus.protocol.messages import AlertCode
from nautilus.record import ContentType
from nautilus.sockets import wrap_socket

GROUPS = ("x25519-mlkem768", "x25519-mlkem1024", "mlkem1024", "mlkem768", "x25519")
CIPHERS = ("aes-256-gcm", "chacha20-poly1305", "aes-128-gcm")
HOST = "127.0.0.1"
PEER_TIMEOUT = 10.0

SERVER_ID = Identity.generate()
CLIENT_ID = Identity.generate()
OTHER_ID = Identity.generate()


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Bound every test: dump the stacks and exit if one hangs."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def server_ctx(**kw: Any) -> Context:
    return Context(SERVER_ID, **kw)


def client_ctx(**kw: Any) -> Context:
    kw.setdefault("trusted_peers", [SERVER_ID.public])
    return Context(**kw)


class Peer:
    """Accept ``count`` connections in a thread and run ``handler`` on each.

    With ``wrap`` the accepted socket is wrapped (server side, handshake at
    once) and closed after the handler; otherwise the handler gets the raw
    socket. Results and errors are collected; :meth:`result` joins.
    """

    def __init__(
        self,
        handler: Callable[[Any], Any],
        ctx: Context | None = None,
        *,
        count: int = 1,
        wrap: bool = True,
        timeout: float | None = PEER_TIMEOUT,
    ) -> None:
        self.handler = handler
        self.ctx = ctx if ctx is not None else server_ctx()
        self.count = count
        self.wrap = wrap
        self.timeout = timeout
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(PEER_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.address = (HOST, self.port)
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                raw, _ = self.listener.accept()
                raw.settimeout(self.timeout)
                try:
                    if self.wrap:
                        with self.ctx.wrap_socket(raw, server_side=True) as sock:
                            self.results.append(self.handler(sock))
                    else:
                        with raw:
                            self.results.append(self.handler(raw))
                except BaseException as exc:
                    self.errors.append(exc)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.listener.close()

    def join(self, timeout: float = 20.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the peer thread did not finish"

    def result(self, timeout: float = 20.0) -> Any:
        """The handler's result (the only one, or the list); re-raise its error."""
        self.join(timeout)
        if self.errors:
            raise self.errors[0]
        return self.results[0] if self.count == 1 else self.results


def echo(sock: NautilusSocket) -> int:
    total = 0
    while data := sock.recv(1 << 16):
        sock.sendall(data)
        total += len(data)
    return total


def recv_exactly(sock: NautilusSocket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise EOFError(f"the peer closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def connect(peer: Peer, **kw: Any) -> NautilusSocket:
    ctx = kw.pop("context", None) or client_ctx()
    return nautilus.create_connection(peer.address, context=ctx, **kw)


def raw_handshake(sock: socket.socket, conn: Connection) -> None:
    """Drive a sans-IO Connection's handshake over a plain socket."""
    conn.start(time.time())
    while not conn.handshake_complete:
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        data = sock.recv(65536)
        assert data, "the peer closed during the handshake"
        conn.receive_data(data, time.time())
        assert not conn.is_closed, conn.error
    out = conn.data_to_send()
    if out:
        sock.sendall(out)


def wait_for_data(sock: socket.socket, conn: Connection) -> bytes:
    """Feed ``conn`` until it delivers stream data; return that data. Data
    ``conn`` already holds comes first: the read that ended raw_handshake()
    may have taken the peer's first data with its Finished (a slow reader)."""
    while True:
        got = b"".join(
            e.data for e in iter(conn.next_event, None) if type(e) is nautilus.DataReceived
        )
        if got:
            return got
        data = sock.recv(65536)
        assert data, "the peer closed"
        conn.receive_data(data, time.time())


def read_until_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            out += data
    return bytes(out)


# --------------------------------------------------------------------- matrix


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("group", GROUPS)
def test_every_group_and_cipher(group: str, cipher: str) -> None:
    def handler(sock: NautilusSocket) -> tuple[Any, int]:
        return sock.session, echo(sock)

    peer = Peer(handler, server_ctx(groups=[group], ciphers=[cipher]))
    sizes = (1, 100, 16383, 16384, 16385, 100_000, 300_000)
    with connect(peer, context=client_ctx(groups=[group], ciphers=[cipher])) as sock:
        info = sock.session
        assert info is not None
        assert (info.role, info.group, info.cipher) == ("client", group, cipher)
        assert info.peer_id == SERVER_ID.peer_id
        assert info.trust == "pinned"
        assert info.resumed is False
        assert sock.server_side is False
        for size in sizes:
            data = random.randbytes(size)
            assert sock.send(data) == size
            assert recv_exactly(sock, size) == data
            sock.sendall(data)
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                assert n > 0
                got += n
            assert buf == data
    srv, total = peer.result()
    assert (srv.role, srv.group, srv.cipher, srv.peer_id) == ("server", group, cipher, None)
    assert total == 2 * sum(sizes)


def test_hello_retry_and_client_authentication() -> None:
    def handler(sock: NautilusSocket) -> Any:
        sock.sendall(b"hi")
        return sock.session

    peer = Peer(handler, server_ctx(groups=["x25519-mlkem768", "mlkem768"], client_auth="required"))
    ctx = Context(
        CLIENT_ID, trusted_peers=[SERVER_ID.public], groups=["mlkem768", "x25519-mlkem768"]
    )
    with connect(peer, context=ctx) as sock:
        assert sock.recv(10) == b"hi"
        assert sock.session is not None
        assert sock.session.group == "x25519-mlkem768"
    srv = peer.result()
    assert srv.peer_id == CLIENT_ID.peer_id


# ------------------------------------------------------------- stream calls


def test_recv_variants_and_buffers() -> None:
    payload = bytes(range(256)) * 64  # 16 KiB

    def handler(sock: NautilusSocket) -> None:
        sock.sendall(payload)
        assert sock.recv(1) == b"!"

    peer = Peer(handler)
    with connect(peer) as sock:
        assert sock.recv(0) == b""
        assert sock.recv_into(bytearray(0)) == 0
        first = sock.recv(10)  # a short read from a larger buffered chunk
        assert first == payload[: len(first)]
        got = bytearray(first)
        arr = array.array("i", bytes(400))  # 4-byte items: counted in bytes
        n = sock.recv_into(arr)
        assert 0 < n <= 400
        got += arr.tobytes()[:n]
        buf = bytearray(1000)
        n = sock.recv_into(buf, 7)
        assert 0 < n <= 7
        got += buf[:n]
        while len(got) < len(payload):
            got += sock.recv(3000)
        assert bytes(got) == payload
        assert sock.pending() == 0
        assert sock.send(memoryview(b"!")) == 1
    peer.result()


def test_send_accepts_any_bytes_like_object() -> None:
    peer = Peer(lambda sock: recv_exactly(sock, 12 + 8 + 3))
    with connect(peer) as sock:
        sock.sendall(array.array("i", [1, 2, 3]))
        assert sock.send(memoryview(b"abcdefgh")) == 8
        sock.sendall(bytearray(b"xyz"))
        assert sock.send(b"") == 0
        assert sock.recv(1) == b""  # the server is done: nothing was lost
    assert peer.result() == array.array("i", [1, 2, 3]).tobytes() + b"abcdefghxyz"


def nagle_off(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_the_first_write_after_the_handshake_is_pushed_then_nagle_is_back() -> None:
    """The handshake ends with a small record of the protocol's own (the
    client's Finished, the server's tickets): the application's first small
    write (a request, a greeting) must not wait behind it for the peer's
    delayed ACK. It leaves with TCP_NODELAY; the next write puts Nagle back
    as the application had it (its own writes then behave as over ssl)."""

    def serve(sock: NautilusSocket) -> list[bool]:
        seen = [nagle_off(sock)]  # handshake done (wrap_socket), nothing written
        sock.sendall(b"greeting")  # server speaks first
        seen.append(nagle_off(sock))
        assert recv_exactly(sock, 7) == b"request"
        sock.sendall(b"reply")
        seen.append(nagle_off(sock))
        assert sock.recv_message() == b"m"  # (then the server closes)
        return seen

    peer = Peer(serve)
    with connect(peer) as sock:
        assert not nagle_off(sock)
        assert recv_exactly(sock, 8) == b"greeting"
        sock.sendall(b"request")
        assert nagle_off(sock)  # pushed
        assert recv_exactly(sock, 5) == b"reply"
        sock.send_message(b"m")  # the next writer (any of them) restores Nagle
        assert not nagle_off(sock)
    assert peer.result() == [False, True, False]


def test_the_write_after_update_keys_is_pushed_too() -> None:
    """A key update is also a record of the protocol's own, written alone: a
    small request right behind it waited 44 ms for the peer's delayed ACK."""
    peer = Peer(echo)
    seen = []
    with connect(peer, timeout=PEER_TIMEOUT) as sock:
        for then in (b"b", b"c"):
            # The first time right after the handshake (its push still on),
            # the second time with Nagle back.
            sock.update_keys(request_peer=True)
            sock.sendall(b"request")
            seen.append(nagle_off(sock))  # pushed
            assert recv_exactly(sock, 7) == b"request"
            sock.sendall(then)  # the next writer restores Nagle
            seen.append(nagle_off(sock))
            assert recv_exactly(sock, 1) == then
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
    assert seen == [True, False, True, False]
    assert peer.result() == 16


def test_an_application_that_turned_nagle_off_keeps_it_off() -> None:
    peer = Peer(echo)
    with connect(peer, timeout=PEER_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(3):
            sock.sendall(b"x" * 100)
            assert recv_exactly(sock, 100) == b"x" * 100
            assert nagle_off(sock)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""
    assert peer.result() == 300


def test_a_request_right_after_the_handshake_does_not_wait_for_a_delayed_ack() -> None:
    """The stall itself (Linux delays an ACK by 40 ms or more): the first
    request's answer took over 40 ms on each connection before the push.
    Generous: most of 6 connections under 30 ms."""

    def serve(sock: NautilusSocket) -> None:
        sock.sendall(sock.recv(100))

    peer = Peer(serve, count=6)
    ctx = client_ctx()
    times = []
    for _ in range(6):
        with connect(peer, context=ctx, timeout=PEER_TIMEOUT) as sock:
            start = time.monotonic()
            sock.sendall(b"request")
            assert recv_exactly(sock, 7) == b"request"
            times.append(time.monotonic() - start)
    peer.result()
    assert sum(t < 0.030 for t in times) >= 4, times


def test_a_server_flight_after_a_hello_retry_does_not_wait_for_a_delayed_ack() -> None:
    """The server's flight leaves in parts (its ServerHello at once, then the
    rest, then its tickets); with Nagle on, each part waited for the ACK of
    the one before, which a client that has just sent its second hello
    delays: every psk_only resumption against a psk_dhe server (a HelloRetry)
    took 43 ms instead of 2. Generous: most of 6 resumptions under 30 ms."""

    def serve(sock: NautilusSocket) -> None:
        sock.sendall(b"x")  # behind the tickets
        assert sock.recv(10) == b""

    peer = Peer(serve, count=7)  # the server resumes psk_dhe (the default)
    ctx = client_ctx(resumption="psk_only")
    times = []
    for i in range(7):
        start = time.monotonic()
        with connect(peer, context=ctx, timeout=PEER_TIMEOUT) as sock:
            times.append(time.monotonic() - start)
            assert sock.session is not None
            assert sock.session.resumed == (i > 0)
            assert recv_exactly(sock, 1) == b"x"  # (the ticket is taken)
    peer.result()
    assert sum(t < 0.030 for t in times[1:]) >= 4, times


def test_the_handshake_flights_leave_with_nagle_off_then_nagle_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the test above measures: every part of the server's flights is
    written with TCP_NODELAY (Nagle held the parts after the first for the
    client's ACK), and the application has Nagle as it was once the
    handshake has completed."""
    written: list[bool] = []
    send_nowait = nautilus.sockets._send_nowait

    def spy(sock: socket.socket, data: Any) -> int:
        if isinstance(sock, NautilusSocket) and sock._server_side and not sock._hs_done:
            written.append(nagle_off(sock))
        return send_nowait(sock, data)

    monkeypatch.setattr(nautilus.sockets, "_send_nowait", spy)
    # (nagle_off: the server's Nagle right after the handshake)
    peer = Peer(nagle_off, server_ctx(groups=["x25519-mlkem768", "mlkem768"]))
    ctx = client_ctx(groups=["mlkem768", "x25519-mlkem768"])  # a HelloRetry for the first
    with connect(peer, context=ctx) as sock:
        assert not nagle_off(sock)
        assert sock.session is not None
        assert sock.session.group == "x25519-mlkem768"
    assert peer.result() is False
    assert len(written) >= 2, written  # the ServerHello, the rest (and the HelloRetry)
    assert all(written), written


def test_a_socket_dropped_before_its_handshake_is_freed_without_the_cycle_collector() -> None:
    """As a plain socket (or ssl's): dropping it unclosed closes it at once.
    The hook that sends parts of a flight was set when the socket was
    wrapped, a reference cycle through the Connection: an accepted socket
    whose peer had gone (or a wrapped one never used) kept its descriptor
    until the cycle collector ran."""
    listener = socket.create_server((HOST, 0))
    raw = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    socks = [
        server_ctx().wrap_socket(accepted, server_side=True, do_handshake_on_connect=False),
        client_ctx().wrap_socket(socket.socket()),  # unconnected: the handshake runs in connect()
    ]
    refs = [weakref.ref(s) for s in socks]
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # (dropped unclosed on purpose)
            del socks
            assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()
        raw.close()
        listener.close()


def test_makefile_readline_binary() -> None:
    lines = [f"line {i} {'x' * (i % 50)}\n".encode() for i in range(20_000)]

    def handler(sock: NautilusSocket) -> None:
        with sock.makefile("wb") as out:
            for line in lines:
                out.write(line)
        with sock.makefile("rb") as inp:
            assert inp.readline() == b"done\n"

    peer = Peer(handler)
    with connect(peer) as sock, sock.makefile("rwb") as f:
        for i, want in enumerate(lines):
            assert f.readline() == want, i
        f.write(b"done\n")
        f.flush()
    peer.result()


def test_makefile_text() -> None:
    lines = [f"ligne {i} été ✓ {i * 7}\n" for i in range(20_000)]

    def handler(sock: NautilusSocket) -> int:
        with sock.makefile("w", encoding="utf-8") as out:
            out.writelines(lines)
        with sock.makefile("r", encoding="utf-8") as inp:
            return sum(1 for _ in inp)

    peer = Peer(handler)
    with connect(peer) as sock:
        with sock.makefile("r", encoding="utf-8", newline="") as f:
            for want in lines:
                assert f.readline() == want
        with sock.makefile("w", encoding="utf-8") as w:
            w.write("a\nb\nc\n")
    assert peer.result() == 3


def test_makefile_keeps_the_connection_open_after_close() -> None:
    """As http.client does: the file outlives ``sock.close()``; close_notify
    goes out when the last file is closed."""

    def handler(sock: NautilusSocket) -> bytes:
        sock.sendall(b"response body")
        return sock.recv(10)

    peer = Peer(handler)
    sock = connect(peer)
    f = sock.makefile("rb")
    sock.close()
    assert f.read(13) == b"response body"
    f.close()
    assert sock.fileno() == -1
    assert peer.result() == b""  # the server saw close_notify: a clean end


def test_large_transfer_sha256() -> None:
    size = 24 * 1024 * 1024

    def handler(sock: NautilusSocket) -> bytes:
        h = hashlib.sha256()
        rng = random.Random(1)
        sent = 0
        while sent < size:
            chunk = rng.randbytes(min(size - sent, rng.randint(1, 1 << 20)))
            h.update(chunk)
            sock.sendall(chunk)
            sent += len(chunk)
        return h.digest()

    peer = Peer(handler)
    h = hashlib.sha256()
    got = 0
    buf = bytearray(1 << 20)
    with connect(peer) as sock:
        while n := sock.recv_into(buf):
            h.update(memoryview(buf)[:n])
            got += n
    assert got == size
    assert peer.result() == h.digest()


def test_sendfile(tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    data = random.randbytes(700_000)
    path.write_bytes(data)
    peer = Peer(lambda sock: recv_exactly(sock, 600_000))
    with connect(peer) as sock, open(path, "rb") as f:
        assert sock.sendfile(f, offset=100_000) == 600_000
        assert f.tell() == 700_000
        with pytest.raises(ValueError, match="binary"), open(path) as text:
            sock.sendfile(text)
        assert sock.recv(1) == b""
    assert peer.result() == data[100_000:]


def test_sendfile_after_a_timeout_leaves_the_file_after_the_accepted_bytes() -> None:
    """A timed-out write has accepted all of its data: the file position counts
    the chunk whose write timed out, so sending on from there repeats nothing."""
    data = random.randbytes(16 * 1024 * 1024)
    release = threading.Event()

    def handler(sock: NautilusSocket) -> tuple[bytes, bytes]:
        assert release.wait(PEER_TIMEOUT)  # do not read until the client timed out
        return hashlib.sha256(recv_exactly(sock, len(data))).digest(), sock.recv(1)

    peer = Peer(handler)
    f = io.BytesIO(data)
    with connect(peer) as sock:
        # The first chunk always fits (a later one times out), the whole file never.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.sendfile(f)
        assert 0 < f.tell() < len(data)
        release.set()
        sock.settimeout(PEER_TIMEOUT)
        sock.sendfile(f)  # on from the file position (the rest queued goes first)
        assert f.tell() == len(data)
    assert peer.result() == (hashlib.sha256(data).digest(), b"")


def test_sendfile_non_blocking_leaves_the_file_after_the_accepted_bytes() -> None:
    """WantWriteError accepts nothing: the chunk read for it goes back to the file,
    the first one included."""
    data = random.randbytes(3 * 1024 * 1024)
    first = bytes(10 * 1024 * 1024)  # more than the socket buffers hold
    release = threading.Event()

    def handler(sock: NautilusSocket) -> tuple[bytes, bytes]:
        assert release.wait(PEER_TIMEOUT)
        got = recv_exactly(sock, len(first) + len(data))
        return hashlib.sha256(got).digest(), sock.recv(1)

    peer = Peer(handler)
    f = io.BytesIO(data)
    with connect(peer) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.setblocking(False)
        sock.sendall(first)  # accepted; most of it stays queued
        with pytest.raises(nautilus.WantWriteError):
            sock.sendfile(f)
        assert f.tell() == 0  # nothing of the file was accepted
        release.set()
        deadline = time.monotonic() + PEER_TIMEOUT
        while f.tell() < len(data):
            assert time.monotonic() < deadline
            with contextlib.suppress(nautilus.WantWriteError):
                sock.sendfile(f)
            select.select([], [sock], [], 1.0)
        while True:  # write what is still queued
            assert time.monotonic() < deadline
            try:
                sock.send(b"")
                break
            except nautilus.WantWriteError:
                select.select([], [sock], [], 1.0)
        sock.settimeout(PEER_TIMEOUT)
    assert peer.result() == (hashlib.sha256(first + data).digest(), b"")


# ------------------------------------------------------------------ timeouts


def test_recv_timeout_then_retry() -> None:
    go = threading.Event()

    def handler(sock: NautilusSocket) -> None:
        assert go.wait(10)
        sock.sendall(b"late")
        assert sock.recv(1) == b""

    peer = Peer(handler)
    with connect(peer, timeout=5) as sock:
        assert sock.gettimeout() == 5
        sock.settimeout(0.1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sock.recv(10)
        with pytest.raises(socket.timeout):
            sock.recv_into(bytearray(10))
        assert time.monotonic() - t0 < 2
        go.set()
        sock.settimeout(5)
        assert recv_exactly(sock, 4) == b"late"
    peer.result()


def test_handshake_timeout_against_a_silent_server() -> None:
    listener = socket.create_server((HOST, 0))  # accepts (backlog) and never answers
    with listener:
        ctx = client_ctx(handshake_timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(nautilus.HandshakeTimeout):
            nautilus.create_connection(listener.getsockname(), context=ctx)
        assert 0.25 < time.monotonic() - t0 < 3


def test_handshake_timeout_against_a_silent_server_in_non_blocking_mode() -> None:
    """A non-blocking handshake is bounded too: once handshake_timeout has
    passed, do_handshake() raises HandshakeTimeout, not WantReadError for ever."""
    listener = socket.create_server((HOST, 0))  # accepts (backlog) and never answers
    with listener:
        raw = socket.create_connection(listener.getsockname())
        sock = client_ctx(handshake_timeout=0.2).wrap_socket(raw, do_handshake_on_connect=False)
        sock.setblocking(False)

        def handshake_until_it_ends() -> None:
            give_up = time.monotonic() + 10  # (a bound for the loop, not a measurement)
            while time.monotonic() < give_up:
                try:
                    sock.do_handshake()
                except nautilus.WantReadError:
                    select.select([sock], [], [], 0.05)
                except nautilus.WantWriteError:
                    select.select([], [sock], [], 0.05)

        with sock, pytest.raises(nautilus.HandshakeTimeout):
            handshake_until_it_ends()


def test_a_handshake_resumed_after_its_deadline_times_out_without_waiting() -> None:
    """The socket's own timeout interrupted the handshake; resumed only once
    handshake_timeout has passed, it raises HandshakeTimeout at once: a
    deadline already past is no wait without end for a silent server."""
    done = threading.Event()
    peer = Peer(lambda raw: done.wait(3), wrap=False)  # silent; hangs up after 3 s at most
    raw = socket.create_connection(peer.address)
    with client_ctx(handshake_timeout=0.2).wrap_socket(raw, do_handshake_on_connect=False) as sock:
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.do_handshake()
        time.sleep(0.3)  # past the handshake's deadline (no measurement)
        sock.settimeout(None)
        with pytest.raises(nautilus.HandshakeTimeout):
            sock.do_handshake()
        done.set()
    peer.result()


def test_handshake_timeout_on_the_server_side() -> None:
    def handler(raw: socket.socket) -> None:
        ctx = server_ctx(handshake_timeout=0.3)
        sock = wrap_socket(ctx, raw, server_side=True, do_handshake_on_connect=False)
        with sock, pytest.raises(nautilus.HandshakeTimeout):
            sock.do_handshake()
        with pytest.raises(OSError, match="closed"):
            sock.recv(1)

    peer = Peer(handler, wrap=False)
    with socket.create_connection(peer.address, timeout=5) as silent:
        data = read_until_eof(silent)  # the server's alert, then the end
        assert data[:1] == b"\x15"
    peer.result()


def test_socket_timeout_shorter_than_the_handshake_timeout_is_resumable() -> None:
    timed_out_twice = threading.Event()

    def handler(raw: socket.socket) -> None:
        # Answer late: once the client's handshake has timed out twice (a sleep
        # here saw fewer timeouts when the client's thread was slow to run).
        assert timed_out_twice.wait(PEER_TIMEOUT)
        with server_ctx().wrap_socket(raw, server_side=True) as sock:
            echo(sock)

    peer = Peer(handler, wrap=False)
    raw = socket.create_connection(peer.address)
    sock = client_ctx().wrap_socket(raw, do_handshake_on_connect=False)
    with sock:
        sock.settimeout(0.1)
        timeouts = 0
        while True:
            try:
                sock.do_handshake()
                break
            except nautilus.HandshakeTimeout:
                raise
            except TimeoutError:
                timeouts += 1
                assert timeouts < 100
                if timeouts == 2:
                    timed_out_twice.set()
        assert timeouts >= 2
        assert sock.session is not None
        sock.settimeout(5)
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"
    peer.result()


def test_timed_out_send_stays_queued_and_is_flushed_later() -> None:
    size = 16 * 1024 * 1024
    release = threading.Event()

    def handler(sock: NautilusSocket) -> bytes:
        assert release.wait(10)  # do not read until the client timed out
        return hashlib.sha256(recv_exactly(sock, size + 3)).digest()

    peer = Peer(handler)
    data = random.randbytes(size)
    with connect(peer) as sock:
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.sendall(data)  # more than the socket buffers hold
        release.set()
        sock.settimeout(10)
        sock.sendall(b"end")  # writes the rest first, in order
        assert sock.recv(1) == b""
    assert peer.result() == hashlib.sha256(data + b"end").digest()


def send_until_timeout(send: Callable[[int], object], limit: int) -> int:
    """Call ``send(0)``, ``send(1)``... until one raises TimeoutError (more than
    the socket buffers hold); the number of calls, that one included: it was
    accepted (see NautilusSocket.send)."""
    for i in range(limit):
        try:
            send(i)
        except TimeoutError:
            return i + 1
    raise AssertionError(f"no send timed out in {limit} calls")


def test_small_sends_that_time_out_stay_queued_in_order() -> None:
    """sendall of one record at a time (the timed path's short branch) on a
    socket the peer does not read: the one that times out was accepted, what
    the socket did not take of it goes out first, and the peer reads every
    byte of every accepted call, in order."""
    release = threading.Event()
    chunk = random.randbytes(4096)

    def handler(sock: NautilusSocket) -> bytes:
        assert release.wait(10)
        return hashlib.sha256(read_until_eof(sock)).digest()

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.settimeout(0.2)
        calls = send_until_timeout(lambda i: sock.sendall(bytes([i % 251]) + chunk), 100_000)
        release.set()
        sock.settimeout(10)
    expected = b"".join(bytes([i % 251]) + chunk for i in range(calls))
    assert peer.result() == hashlib.sha256(expected).digest()


def _stalling_server(first: Callable[[Connection], bytes]) -> Peer:
    """A hand-driven server that sends ``first(conn)`` (what it makes the
    Connection seal, cut short) once connected, then waits for the end."""

    def handler(raw: socket.socket) -> list[nautilus.Event]:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        raw.sendall(first(conn))
        conn.receive_data(read_until_eof(raw), time.time())
        return list(iter(conn.next_event, None))

    return Peer(handler, wrap=False)


def _half_a_record(conn: Connection) -> bytes:
    conn.send_data(b"the rest of this record never comes")
    record = conn.data_to_send()
    return record[: len(record) // 2]


def _one_record_of_a_message(conn: Connection) -> bytes:
    conn.send_message(os.urandom(40_000))  # three records of 16 KiB
    out = conn.data_to_send()
    return out[: 4 + int.from_bytes(out[1:4], "big")]  # its first record, whole


@pytest.mark.parametrize("call", ["recv", "recv_into", "recv_message"])
def test_a_peer_that_stalls_in_the_middle_of_a_record_or_message(call: str) -> None:
    """record_timeout on blocking sockets: a read that waits for the rest of
    a record (or of a message) waits that long at most; then the call raises
    RecordTimeout and the peer gets a record_timeout alert."""
    first = _one_record_of_a_message if call == "recv_message" else _half_a_record
    peer = _stalling_server(first)
    with connect(peer, context=client_ctx(record_timeout=0.5)) as sock:
        read: Callable[[], object] = {
            "recv": lambda: sock.recv(100),
            "recv_into": lambda: sock.recv_into(bytearray(65536)),
            "recv_message": sock.recv_message,
        }[call]
        t0 = time.monotonic()
        with pytest.raises(nautilus.RecordTimeout, match=r"incomplete for 0\.5 s"):
            read()
        assert 0.4 < time.monotonic() - t0 < 3
        with pytest.raises(nautilus.ClosedError):  # failed for good
            sock.recv(100)
    events = peer.result()
    alerts = [e for e in events if isinstance(e, nautilus.AlertReceived)]
    assert [a.code for a in alerts] == [AlertCode.RECORD_TIMEOUT]
    closed = events[-1]
    assert isinstance(closed, nautilus.ConnectionClosed)
    assert isinstance(closed.error, nautilus.RecordTimeout)


def test_record_timeout_counts_each_wait_and_restarts_with_each_byte() -> None:
    """Time between the application's calls does not count, and any bytes of
    the record restart the count: the record arrives whole."""

    def handler(raw: socket.socket) -> None:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        conn.send_data(b"first")
        head = conn.data_to_send()
        conn.send_data(b"x" * 3000)
        record = conn.data_to_send()
        raw.sendall(head + record[:100])
        time.sleep(1.0)  # the client is away meanwhile (not in a call)
        for i in range(100, len(record), 400):  # the rest, 0.2 s apart
            raw.sendall(record[i : i + 400])
            time.sleep(0.2)
        read_until_eof(raw)

    peer = Peer(handler, wrap=False)
    with connect(peer, context=client_ctx(record_timeout=0.8)) as sock:
        assert sock.recv(100) == b"first"
        time.sleep(0.9)  # longer than the timeout, away from the socket
        assert recv_exactly(sock, 3000) == b"x" * 3000  # 1.6 s in pieces
    peer.result()


def test_a_socket_timeout_shorter_than_record_timeout_applies_first() -> None:
    """A socket timeout shorter than record_timeout bounds the wait as before:
    TimeoutError, nothing lost, and the record arrives on a later call."""
    rest = threading.Event()

    def handler(raw: socket.socket) -> None:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        conn.send_data(b"y" * 500)
        record = conn.data_to_send()
        raw.sendall(record[:50])
        assert rest.wait(10)
        raw.sendall(record[50:])
        read_until_eof(raw)

    peer = Peer(handler, wrap=False)
    with connect(peer, context=client_ctx(record_timeout=5.0)) as sock:
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError) as info:
            sock.recv(1000)
        assert not isinstance(info.value, nautilus.NautilusError)
        rest.set()
        sock.settimeout(5)
        assert recv_exactly(sock, 500) == b"y" * 500
    peer.result()


def test_a_close_by_another_thread_before_the_record_timeout_wait_is_ebadf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader about to wait (record_timeout) for the rest of a record, and
    the socket closed by another thread just then: OSError(EBADF), as for a
    read on a closed socket, not poll()'s ValueError for a descriptor of -1."""
    peer = _stalling_server(_half_a_record)
    real = nautilus.sockets._recv_nowait

    def closed_meanwhile(sock: socket.socket, into: memoryview) -> int:
        try:
            return real(sock, into)
        except BlockingIOError:  # nothing more: close it from another thread first
            closer = threading.Thread(target=sock.close)
            closer.start()
            closer.join(5)
            raise

    with connect(peer, context=client_ctx(record_timeout=5.0)) as sock:
        monkeypatch.setattr(nautilus.sockets, "_recv_nowait", closed_meanwhile)
        t0 = time.monotonic()
        with pytest.raises(OSError, match="closed") as info:
            sock.recv(100)
        assert info.value.errno == errno.EBADF
        assert not isinstance(info.value, nautilus.NautilusError)
        assert time.monotonic() - t0 < 3  # (at once, not after the record_timeout)
        monkeypatch.undo()
    peer.result()


# -------------------------------------------------------------- non-blocking


def drive(sel: selectors.BaseSelector, step: Callable[[], bool], sock: socket.socket) -> None:
    """Call ``step`` until it returns True, waiting as its Want* errors say."""
    deadline = time.monotonic() + 10
    while True:
        try:
            if step():
                return
            events = selectors.EVENT_READ
        except nautilus.WantReadError:
            events = selectors.EVENT_READ
        except nautilus.WantWriteError:
            events = selectors.EVENT_WRITE
        sel.modify(sock, events)
        assert time.monotonic() < deadline
        sel.select(1.0)


def test_non_blocking_both_ends_in_one_selector_loop() -> None:
    """Both ends non-blocking in one thread: the handshake and a 4 MiB exchange
    in each direction are driven only through WantReadError/WantWriteError."""
    listener = socket.create_server((HOST, 0))
    raw_c = socket.create_connection(listener.getsockname())
    raw_s, _ = listener.accept()
    listener.close()
    for raw in (raw_c, raw_s):
        raw.setblocking(False)
    client = client_ctx().wrap_socket(raw_c, do_handshake_on_connect=False)
    server = server_ctx().wrap_socket(raw_s, server_side=True, do_handshake_on_connect=False)
    assert client.gettimeout() == 0.0
    with pytest.raises(nautilus.WantReadError) as info:
        server.do_handshake()
    assert info.value.errno == errno.EAGAIN
    sel = selectors.DefaultSelector()
    ends = {"client": client, "server": server}
    size = 4 * 1024 * 1024
    out = {name: random.randbytes(size) for name in ends}
    sent = dict.fromkeys(ends, 0)
    got = {name: bytearray() for name in ends}
    done_hs: set[str] = set()
    flushed: set[str] = set()
    for name, sock in ends.items():
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, name)
    deadline = time.monotonic() + 20
    while len(flushed) < 2 or any(len(got[n]) < size for n in ends):
        assert time.monotonic() < deadline, "the selector loop did not finish"
        for key, _mask in sel.select(1.0):
            name = key.data
            sock = ends[name]
            want = selectors.EVENT_READ
            try:
                if name not in done_hs:
                    sock.do_handshake()
                    done_hs.add(name)
                while sent[name] < size:  # write as long as the socket takes it
                    chunk = out[name][sent[name] : sent[name] + 100_000]
                    sent[name] += sock.send(chunk)
                if name not in flushed:
                    sock.send(b"")  # write what is still queued
                    flushed.add(name)
                while True:  # read everything available, buffered data included
                    data = sock.recv(65536)
                    assert data, "unexpected end of stream"
                    got[name] += data
            except nautilus.WantReadError:
                want = selectors.EVENT_READ
            except nautilus.WantWriteError:
                want = selectors.EVENT_READ | selectors.EVENT_WRITE
            sel.modify(sock, want, name)
    assert bytes(got["client"]) == out["server"]
    assert bytes(got["server"]) == out["client"]
    assert client.session is not None
    assert server.session is not None
    sel.close()
    client.close()
    server.setblocking(True)
    server.settimeout(5)
    assert server.recv(1) == b""
    server.close()


def test_non_blocking_connect_then_handshake() -> None:
    peer = Peer(echo)
    sock = client_ctx().wrap_socket(socket.socket(), do_handshake_on_connect=False)
    sock.setblocking(False)
    assert sock.connect_ex(peer.address) in (0, errno.EINPROGRESS)
    with pytest.raises(ValueError, match="already-connected"):  # connecting or connected
        sock.connect_ex(peer.address)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_WRITE)

    def handshake() -> bool:
        sock.do_handshake()
        return True

    drive(sel, handshake, sock)
    assert sock.server_name == f"{HOST}:{peer.port}"
    assert sock.send(b"ping") == 4

    def read() -> bool:
        return sock.recv(10) == b"ping"

    drive(sel, read, sock)
    sel.close()
    sock.close()
    peer.result()


def test_wrap_rejects_handshake_on_connect_for_non_blocking_sockets() -> None:
    peer = Peer(lambda raw: read_until_eof(raw), wrap=False)
    raw = socket.create_connection(peer.address)
    raw.setblocking(False)
    with pytest.raises(ValueError, match="non-blocking"):
        client_ctx().wrap_socket(raw)
    assert raw.fileno() != -1  # refused before taking the socket over
    raw.close()
    assert peer.result() == b""


# ------------------------------------------------------------------ closing


def test_clean_close_gives_empty_reads() -> None:
    def handler(sock: NautilusSocket) -> None:
        sock.sendall(b"last words")
        sock.send_message(b"last message")

    peer = Peer(handler)
    with connect(peer) as sock:
        assert recv_exactly(sock, 10) == b"last words"
        assert sock.recv(10) == b""
        assert sock.recv(10) == b""
        assert sock.recv_into(bytearray(5)) == 0
        assert sock.recv_message() == b"last message"
        with pytest.raises(EOFError):
            sock.recv_message()
        with pytest.raises(nautilus.ClosedError):
            sock.sendall(b"too late")
    peer.result()


def test_context_manager_closes_and_sends_close_notify() -> None:
    peer = Peer(lambda sock: sock.recv(10))
    with connect(peer) as sock:
        fd = sock.fileno()
        assert fd >= 0
    assert sock.fileno() == -1
    assert peer.result() == b""  # a clean end, not ConnectionLost
    with pytest.raises(OSError, match="closed") as info:
        sock.recv(1)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError, match="closed"):
        sock.sendall(b"x")
    with pytest.raises(OSError, match="closed") as info:  # not "done": the socket is gone
        sock.do_handshake()
    assert info.value.errno == errno.EBADF
    sock.close()  # idempotent


def test_what_was_received_and_not_read_is_gone_after_close() -> None:
    """A closed socket raises EBADF on every read, as a plain socket does,
    even with stream data and a message received and not yet read."""

    def serve(sock: NautilusSocket) -> bytes:
        sock.sendall(b"0123456789")
        sock.send_message(b"a message")
        return sock.recv(10)

    peer = Peer(serve)
    sock = connect(peer)
    assert sock.recv(1) == b"0"  # the rest, and the message, stay buffered
    for _ in range(100):  # (the message's record may come in a later read)
        if sock._msgs:
            break
        time.sleep(0.01)
    sock.close()
    assert peer.result() == b""
    for read in (
        lambda: sock.recv(1),
        lambda: sock.recv(0),
        lambda: sock.recv_into(bytearray(4)),
        lambda: sock.recv_into(bytearray(0)),
        lambda: sock.recv_message(),
    ):
        with pytest.raises(OSError, match="closed") as info:
            read()
        assert info.value.errno == errno.EBADF


def test_a_handshake_after_shutdown_is_refused_and_sends_nothing() -> None:
    seen: list[bytes] = []
    peer = Peer(lambda raw: seen.append(read_until_eof(raw)), wrap=False)
    raw = socket.create_connection(peer.address, timeout=5)
    with client_ctx().wrap_socket(raw, do_handshake_on_connect=False) as sock:
        sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(nautilus.ClosedError, match="shut down before the handshake"):
            sock.do_handshake()
    peer.result()
    assert seen == [b""]  # no ClientHello on a socket shut down


def test_shutdown_write_ends_the_session() -> None:
    def handler(sock: NautilusSocket) -> bytes:
        sock.sendall(b"ready")
        data = recv_exactly(sock, 5)
        assert sock.recv(10) == b""
        return data

    peer = Peer(handler)
    with connect(peer) as sock:
        assert recv_exactly(sock, 5) == b"ready"
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # no half-close: reading is over too
        with pytest.raises(nautilus.ClosedError):
            sock.sendall(b"more")
    assert peer.result() == b"hello"


def test_shutdown_from_another_thread_wakes_a_blocked_writer_and_reader() -> None:
    """A writer blocked in sendall (the peer does not read) and a reader blocked
    in recv: shutdown(SHUT_RDWR) from a third thread does not wait for the
    writer; it shuts TCP down, which wakes both. The close_notify could not
    go after the writer's partial record: the peer sees ConnectionLost."""
    release = threading.Event()

    def handler(sock: NautilusSocket) -> tuple[int, Exception | None]:
        assert release.wait(PEER_TIMEOUT)  # do not read while the client is stuck
        got = 0
        try:
            while data := sock.recv(1 << 20):
                got += len(data)
        except Exception as exc:
            return got, exc
        return got, None

    peer = Peer(handler)
    results: dict[str, Any] = {}

    def run(name: str, call: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                results[name] = call()
            except BaseException as exc:
                results[name] = exc

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    with connect(peer) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        writer = run("writer", lambda: sock.sendall(bytes(32 * 1024 * 1024)))
        reader = run("reader", lambda: sock.recv(10))
        deadline = time.monotonic() + PEER_TIMEOUT
        while not sock._write_lock.locked() or select.select([], [sock], [], 0)[1]:
            assert time.monotonic() < deadline, "the writer did not block"
            time.sleep(0.01)
        time.sleep(0.2)  # the writer waits in the kernel, the reader too
        stopper = run("shutdown", lambda: sock.shutdown(socket.SHUT_RDWR))
        stopper.join(5)
        hung = stopper.is_alive()
        if hung:  # free the threads before failing
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        for thread in (stopper, writer, reader):
            thread.join(PEER_TIMEOUT)
            assert not thread.is_alive()
        release.set()
        assert not hung, "shutdown() waited for the blocked writer"
        assert results["shutdown"] is None
        assert isinstance(results["writer"], OSError), results["writer"]
        assert results["reader"] == b""
        with pytest.raises(nautilus.ClosedError):
            sock.sendall(b"more")
    got, error = peer.result()
    assert 0 < got < 32 * 1024 * 1024
    assert type(error) is nautilus.ConnectionLost, error


def test_truncation_raises_connection_lost() -> None:
    def handler(raw: socket.socket) -> None:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        conn.send_data(b"partial")
        raw.sendall(conn.data_to_send())
        # and now close TCP without close_notify

    peer = Peer(handler, wrap=False)
    with connect(peer) as sock:
        peer.result()
        assert recv_exactly(sock, 7) == b"partial"
        with pytest.raises(nautilus.ConnectionLost):
            sock.recv(10)
        with pytest.raises(nautilus.ClosedError) as info:
            sock.recv(10)
        assert isinstance(info.value.__cause__, nautilus.ConnectionLost)


def test_end_during_the_handshake_raises_handshake_error() -> None:
    peer = Peer(lambda raw: raw.recv(65536), wrap=False)  # read the hello, then close
    with pytest.raises(nautilus.HandshakeError) as info:
        connect(peer)
    assert type(info.value) is nautilus.HandshakeError
    peer.result()


def test_forged_record_raises_integrity_error_and_sends_an_alert() -> None:
    def handler(raw: socket.socket) -> bytes:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        conn.send_data(b"genuine")
        raw.sendall(conn.data_to_send())
        conn.send_data(b"forged!")
        record = bytearray(conn.data_to_send())
        record[-1] ^= 1
        raw.sendall(record)
        return read_until_eof(raw)

    peer = Peer(handler, wrap=False)
    with connect(peer) as sock:
        assert recv_exactly(sock, 7) == b"genuine"
        with pytest.raises(nautilus.IntegrityError):
            sock.recv(10)
        with pytest.raises(nautilus.ClosedError):
            sock.sendall(b"x")
    alert = peer.result()
    assert alert
    assert alert[0] == 0x17


@pytest.mark.parametrize(
    ("record", "message", "alert"),
    [
        (bytes([0x17]) + (70000).to_bytes(3, "big") + bytes(70000), "record_overflow", 22),
        (bytes([0x17, 0, 0, 3]) + bytes(3), "too short", 50),
        (b"\x7f\x00\x00\x20" + bytes(32), "unknown record type", 50),
        (bytes([0x17]) + (300_000).to_bytes(3, "big") + bytes(300_000), "record_overflow", 22),
    ],
)
def test_malformed_record_on_the_direct_path_fails_as_in_the_connection(
    record: bytes, message: str, alert: int
) -> None:
    """recv_into with a large buffer opens records straight into it; a
    malformed one there gets the Connection's own error and alert
    (record_overflow, decode_error), not bad_record_mac."""

    def handler(raw: socket.socket) -> str:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        raw.sendall(record)
        conn.receive_data(read_until_eof(raw), time.time())
        return str(conn.error)

    peer = Peer(handler, wrap=False)
    with connect(peer) as sock, pytest.raises(nautilus.ProtocolViolation, match=message):
        sock.recv_into(bytearray(max(100_000, len(record))))  # (room for the record it claims)
    assert peer.result() == f"the peer sent alert {AlertCode(alert).name.lower()}"


# ----------------------------------------------------------------- threads


def test_one_reader_and_one_writer_thread_on_each_side() -> None:
    """Both directions at once, with automatic key updates every 16 records and
    explicit ones (answered by the reader threads) on top; every byte is hashed."""
    size = 8 * 1024 * 1024

    def pump(sock: NautilusSocket, seed: int) -> tuple[bytes, bytes]:
        sent = hashlib.sha256()
        received = hashlib.sha256()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                rng = random.Random(seed)
                total = 0
                i = 0
                while total < size:
                    chunk = rng.randbytes(min(size - total, rng.randint(1, 200_000)))
                    sent.update(chunk)
                    if i % 3:
                        sock.sendall(chunk)
                    else:
                        sock.send(chunk)
                    total += len(chunk)
                    i += 1
                    if i % 20 == 0:
                        sock.update_keys(request_peer=True)
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                total = 0
                buf = bytearray(100_000)
                while total < size:
                    n = sock.recv_into(buf)
                    assert n, "early end of stream"
                    received.update(memoryview(buf)[:n])
                    total += n
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=f, daemon=True) for f in (writer, reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        if errors:
            raise errors[0]
        return sent.digest(), received.digest()

    def serve(sock: NautilusSocket) -> tuple[bytes, bytes]:
        digests = pump(sock, 2)
        # Close after the client's end: it may still be answering a key
        # update this side requested, and bytes arriving after a close make
        # the kernel reset the connection, which destroys what the client
        # had not read yet (docs/sockets.md, closing).
        assert sock.recv(1) == b""
        return digests

    ctx_kw = {"key_update_records": 16}
    peer = Peer(serve, server_ctx(**ctx_kw))
    with connect(peer, context=client_ctx(**ctx_kw)) as sock:
        c_sent, c_received = pump(sock, 1)
    s_sent, s_received = peer.result()
    assert c_sent == s_received
    assert s_sent == c_received


# ------------------------------------------------------------- message API


def test_ten_thousand_messages_in_order() -> None:
    count = 10_000

    def handler(sock: NautilusSocket) -> list[bytes]:
        got = [sock.recv_message() for _ in range(2 * count)]
        sock.send_message(b"done")
        return got

    peer = Peer(handler)
    msgs = [struct.pack(">I", i) + b"m" * (i % 97) for i in range(count)]
    with connect(peer) as sock:
        for m in msgs:
            sock.send_message(m)
        sock.send_messages(msgs)  # the same again, batched in one call
        assert sock.recv_message() == b"done"
    assert peer.result() == msgs + msgs


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "timeout"])
def test_request_response_takes_the_message_lane(
    monkeypatch: pytest.MonkeyPatch, timeout: float | None
) -> None:
    """One message per record each way: send_message seals each in one call
    (Connection._seal_message) and recv_message opens each read in one call
    (Connection._take_message), on both sides, in blocking mode and with a
    timeout; in non-blocking mode send_message takes the general path."""
    general = record_general_path(monkeypatch)

    def handler(sock: NautilusSocket) -> int:
        count = 0
        while True:
            try:
                message = sock.recv_message()
            except EOFError:
                return count
            sock.send_message(message)
            count += 1

    peer = Peer(handler, timeout=timeout)
    with connect(peer, timeout=timeout) as sock:
        for _ in range(5):  # warm-up: the tickets arrive, the buffers settle
            sock.send_message(bytes(300))
            assert sock.recv_message() == bytes(300)
        general.clear()
        for i in range(200):
            message = bytes([i]) * (i + 1)
            sock.send_message(message)
            assert sock.recv_message() == message
        assert general == []
        sock.settimeout(0.0)
        sock.send_message(b"non-blocking")
        assert general == ["send_messages"]
        sock.settimeout(5.0)
        assert sock.recv_message() == b"non-blocking"
    assert peer.result() == 206


class _ReaderQueuesFirst:
    """A state lock that, the first time a writer takes it, first does what a
    reader thread may do just before: seal a record of its own (a key update,
    as when answering the peer's) and queue it for writing."""

    def __init__(self, sock: NautilusSocket) -> None:
        self.sock = sock
        self.lock = sock._state_lock
        self.done = False

    def acquire(self, *args: Any) -> bool:
        return self.lock.acquire(*args)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> None:
        self.lock.acquire()
        if not self.done:
            self.done = True
            self.sock._conn.update_keys(request_peer=False)
            self.sock._take_output()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_output_a_reader_queued_goes_out_before_a_lane_message() -> None:
    """A record a reader sealed and queued while a writer waited for the state
    lock must be written before the message the writer then seals: the lane
    checks the queue under that lock, and leaves the message to the general
    path, which writes the queue first. Out of order, the peer would read the
    message under keys it does not have yet."""

    def handler(sock: NautilusSocket) -> list[bytes]:
        return [sock.recv_message() for _ in range(2)]

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.send_message(b"before")
        sock._state_lock = _ReaderQueuesFirst(sock)  # type: ignore[assignment]
        sock.send_message(b"after the key update")
        assert sock._state_lock.done  # type: ignore[attr-defined]
        assert sock.recv(1) == b""
    assert peer.result() == [b"before", b"after the key update"]


def test_a_message_that_timed_out_stays_queued_and_arrives_whole() -> None:
    """With a timeout, a message the socket could not take in time was
    accepted (as send documents): what is left of it goes out before the
    next message, and the peer gets every message whole, in order."""
    release = threading.Event()
    message = random.randbytes(16_000)  # one record each: the lane

    def handler(sock: NautilusSocket) -> list[bytes]:
        assert release.wait(10)  # read nothing until the client timed out
        got = []
        while (m := sock.recv_message()) != b"end":
            got.append(m)
        return got

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.settimeout(0.2)
        accepted = send_until_timeout(lambda _: sock.send_message(message), 10_000)
        release.set()
        sock.settimeout(10)
        sock.send_message(b"end")  # writes the rest of the last one first
        assert sock.recv(1) == b""
    assert peer.result() == [message] * accepted


def test_message_bounds_locally() -> None:
    peer = Peer(lambda sock: [sock.recv_message() for _ in range(3)])
    with connect(peer, context=client_ctx(max_message_size=1000)) as sock:
        with pytest.raises(nautilus.MessageTooLarge):
            sock.send_message(b"x" * 1001)
        with pytest.raises(nautilus.MessageTooLarge):
            sock.send_messages([b"fine", b"x" * 1001])  # all or nothing
        sock.send_message(b"x" * 1000)
        sock.send_messages([b"", b"after"])
        assert sock.recv(1) == b""
    assert peer.result() == [b"x" * 1000, b"", b"after"]


def test_message_bound_is_the_one_the_connection_was_made_with() -> None:
    """max_message_size lowered on the context after a connection was made is
    for later connections: this one keeps its bound for what it sends, as its
    Connection does (the socket checked the context's current value)."""
    ctx = client_ctx(max_message_size=1000)
    peer = Peer(lambda sock: sock.recv_message())
    with connect(peer, context=ctx) as sock:
        ctx.max_message_size = 10
        sock.send_message(b"x" * 1000)
        with pytest.raises(nautilus.MessageTooLarge, match="1000 bytes"):
            sock.send_messages([b"x" * 1001])
    assert peer.result() == b"x" * 1000


def test_oversized_message_from_the_peer_is_a_protocol_violation() -> None:
    def handler(sock: NautilusSocket) -> None:
        assert sock.recv_message() == b"small"
        with pytest.raises(nautilus.ProtocolViolation):
            sock.recv_message()

    peer = Peer(handler, server_ctx(max_message_size=100))
    with connect(peer, context=client_ctx(max_message_size=10_000)) as sock:
        sock.send_message(b"small")
        sock.send_message(b"y" * 5000)  # fine by the client's bound, not the server's
        with pytest.raises(nautilus.ProtocolViolation):  # the server's alert
            sock.recv(10)
    peer.result()


def test_close_notify_in_the_middle_of_a_message_is_a_protocol_violation() -> None:
    """A peer's close_notify after part of a message frame is not a clean end
    (EOFError would hide the message cut short): recv_message raises
    ProtocolViolation after the whole messages before it, and the peer is
    told with a decode_error alert."""

    def handler(sock: NautilusSocket) -> None:
        assert sock.recv_message() == b"whole"
        with pytest.raises(nautilus.ProtocolViolation, match="middle of a message"):
            sock.recv_message()

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.send_message(b"whole")
        with sock._state_lock:  # part of a frame: its length (10) and 3 bytes
            sock._conn._seal_application(b"\x00\x00\x00\x0aabc", ContentType.MESSAGE)
            sock._conn._send_alert(AlertCode.CLOSE_NOTIFY)  # (the socket stays open)
            sock._take_output()
        with sock._write_lock:
            sock._write_out(None, nowait=False)
        with pytest.raises(nautilus.ProtocolViolation, match="decode_error"):
            sock.recv_message()
    peer.result()


def test_messages_and_stream_data_interleaved() -> None:
    chunks = [random.randbytes(random.randint(1, 40_000)) for _ in range(50)]
    msgs = [f"message {i}".encode() for i in range(50)]

    def handler(sock: NautilusSocket) -> tuple[bytes, list[bytes]]:
        # All the stream data first, then all the messages: each kind is
        # buffered apart from the other.
        data = recv_exactly(sock, sum(map(len, chunks)))
        got = [sock.recv_message() for _ in msgs]
        assert sock.pending_messages() == 0
        return data, got

    peer = Peer(handler)
    with connect(peer) as sock:
        for chunk, msg in zip(chunks, msgs, strict=True):
            sock.sendall(chunk)
            sock.send_message(msg)
        assert sock.recv(1) == b""
    data, got = peer.result()
    assert data == b"".join(chunks)
    assert got == msgs


@pytest.mark.parametrize("flood", ["stream", "messages", "empty messages"])
def test_the_kind_not_read_cannot_grow_without_bound(
    flood: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that sends only the kind of data the application does not read
    (stream data to recv_message(), messages to recv()) made the socket keep
    all of it: hundreds of megabytes. Past the bound the socket reads no more
    and says why; nothing is lost, and once the other kind is read it goes on."""
    monkeypatch.setattr(nautilus.sockets, "UNREAD_LIMIT", 200_000)
    monkeypatch.setattr(nautilus.sockets, "UNREAD_ITEMS", 300)
    if flood == "stream":
        pieces = [bytes([i]) * 10_000 for i in range(60)]  # 600 KB in 60 records
    elif flood == "messages":
        pieces = [bytes([i]) * 10_000 for i in range(60)]
    else:
        pieces = [b""] * 2000  # nothing on the wire but their framing

    def handler(sock: NautilusSocket) -> tuple[int, list[bytes], bytes, bytes]:
        read = sock.recv_message if flood == "stream" else functools.partial(sock.recv, 100)
        with pytest.raises(nautilus.UnreadLimitReached, match="read them first") as info:
            read()
        assert isinstance(info.value, BufferError)
        if flood == "stream":
            held = sock.pending()
            assert held <= 200_000 + nautilus.sockets.RECV_BUFFER_SIZE
            data = recv_exactly(sock, sum(map(len, pieces)))  # every byte, in order
            got, tail = [sock.recv_message()], data
        else:
            held = sock.pending_messages()
            assert held <= 300 + nautilus.sockets.RECV_BUFFER_SIZE // 21
            got, tail = [sock.recv_message() for _ in pieces], recv_exactly(sock, 4)
        sock.sendall(b"done")  # (the client closes only then: nothing is cut)
        return held, got, tail, sock.recv(1)

    peer = Peer(handler, server_ctx(max_message_size=20_000))
    with connect(peer, context=client_ctx(max_message_size=20_000)) as sock:
        for piece in pieces:
            if flood == "stream":
                sock.sendall(piece)
            else:
                sock.send_message(piece)
        if flood == "stream":
            sock.send_message(b"after")
        else:
            sock.sendall(b"last")
        assert recv_exactly(sock, 4) == b"done"
    held, got, tail, end = peer.result()
    assert held > 0
    if flood == "stream":
        assert got == [b"after"]
        assert tail == b"".join(pieces)
    else:
        assert got == pieces
        assert tail == b"last"
    assert end == b""


@pytest.mark.parametrize("count", [300, 301])
def test_unread_messages_may_reach_unread_items_but_not_pass_it(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty messages cost no bytes to hold, so their number is bounded too:
    UNREAD_ITEMS of them may wait while recv() waits for stream data; one
    more, and recv() refuses to read on."""
    monkeypatch.setattr(nautilus.sockets, "UNREAD_ITEMS", 300)

    def handler(sock: NautilusSocket) -> list[bytes]:
        try:
            answer = sock.recv(100)
        except nautilus.UnreadLimitReached:
            answer = b"refused"
        got = [sock.recv_message() for _ in range(count)]
        sock.sendall(answer)
        return got

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.send_messages([b""] * count)  # sealed together: they arrive together
        expected = b"refused" if count > 300 else b"data"
        if count <= 300:
            sock.sendall(b"data")
        assert recv_exactly(sock, len(expected)) == expected
    assert peer.result() == [b""] * count


def test_stream_data_up_to_max_message_size_may_wait_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound on the kind not being read is at least max_message_size (one
    message of the other kind must fit): stream data of that size waiting
    while recv_message() waits is no reason to refuse."""
    monkeypatch.setattr(nautilus.sockets, "UNREAD_LIMIT", 100_000)
    size = 250_000

    def handler(sock: NautilusSocket) -> tuple[bytes, bytes]:
        sock.settimeout(0.05)
        while sock.pending() < size:  # each call reads on (and keeps the stream data)
            with contextlib.suppress(TimeoutError):
                sock.recv_message()
        sock.settimeout(PEER_TIMEOUT)
        sock.sendall(b"go")
        return sock.recv_message(), recv_exactly(sock, size)

    peer = Peer(handler, server_ctx(max_message_size=300_000))
    with connect(peer, context=client_ctx(max_message_size=300_000)) as sock:
        data = random.Random(7).randbytes(size)
        sock.sendall(data)
        assert recv_exactly(sock, 2) == b"go"
        sock.send_message(b"after")
        result = peer.result()
    assert result == (b"after", data)


# ----------------------------------------------------------------- details


def test_addresses_fileno_and_attributes() -> None:
    def handler(sock: NautilusSocket) -> tuple[Any, Any, bool]:
        found = (sock.getpeername(), sock.getsockname(), sock.server_side)
        sock.sendall(b"k")
        return found

    peer = Peer(handler)
    with connect(peer) as sock:
        assert isinstance(sock, socket.socket)
        assert isinstance(sock, NautilusSocket)
        assert sock.getpeername() == peer.address
        assert sock.getsockname()[0] == HOST
        assert sock.fileno() >= 0
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert isinstance(sock.context, Context)
        assert sock.server_name == f"{HOST}:{peer.port}"
        assert "NautilusSocket" in repr(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local = sock.getsockname()
        assert sock.recv(1) == b"k"
    peername, sockname, server_side = peer.result()
    assert peername == local
    assert sockname == peer.address
    assert server_side is True


def test_export_keying_material_and_update_keys() -> None:
    def handler(sock: NautilusSocket) -> bytes:
        key = sock.export_keying_material(b"label", b"ctx", 32)
        sock.update_keys()
        echo(sock)
        return key

    peer = Peer(handler)
    with connect(peer) as sock:
        key = sock.export_keying_material(b"label", b"ctx", 32)
        sock.update_keys(request_peer=False)
        for _ in range(3):
            sock.sendall(b"after key update")
            assert recv_exactly(sock, 16) == b"after key update"
            sock.update_keys()
    assert peer.result() == key


def test_connect_an_unconnected_socket() -> None:
    peer = Peer(echo)
    sock = client_ctx().wrap_socket(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with sock:
        assert sock.session is None
        with pytest.raises(OSError, match="not connected"):
            sock.recv(1)
        sock.connect(peer.address)  # the handshake runs here
        assert sock.session is not None
        assert sock.server_name == f"{HOST}:{peer.port}"
        with pytest.raises(ValueError, match="already"):
            sock.connect(peer.address)
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
    peer.result()


def test_connect_ex_reports_errors() -> None:
    port = socket.create_server((HOST, 0))
    address = port.getsockname()
    port.close()  # nobody listens there now
    with client_ctx().wrap_socket(socket.socket()) as sock:
        assert sock.connect_ex(address) == errno.ECONNREFUSED


def test_wrapped_listener_accepts_wrapped_sockets() -> None:
    listener = server_ctx().wrap_socket(socket.create_server((HOST, 0)), server_side=True)
    listener.settimeout(PEER_TIMEOUT)
    results: list[Any] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            results.append(conn.session)
            echo(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with listener, nautilus.create_connection(listener.getsockname(), context=client_ctx()) as s:
        s.sendall(b"abc")
        assert recv_exactly(s, 3) == b"abc"
        with pytest.raises(ValueError, match="server-side"):
            s.accept()
    thread.join(10)
    assert results
    assert results[0].role == "server"


def test_implicit_handshake_on_first_use() -> None:
    peer = Peer(echo)
    raw = socket.create_connection(peer.address)
    sock = client_ctx().wrap_socket(raw, do_handshake_on_connect=False)
    with sock:
        assert sock.session is None
        sock.sendall(b"implicit")  # runs the handshake first
        assert sock.session is not None
        assert recv_exactly(sock, 8) == b"implicit"
    peer.result()


# -------------------------------------------------------- handshake failures


def test_wrong_expected_peer() -> None:
    def handler(raw: socket.socket) -> None:
        sock = server_ctx().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with sock, pytest.raises(nautilus.AuthenticationFailed):
            sock.do_handshake()

    peer = Peer(handler, wrap=False)
    with pytest.raises(nautilus.AuthenticationFailed, match=r"wrong"):
        nautilus.create_connection(
            peer.address, context=Context(), expected_peer=OTHER_ID.public.peer_id
        )
    peer.result()


def test_untrusted_server_from_create_connection() -> None:
    def handler(raw: socket.socket) -> None:
        s = server_ctx().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with s, pytest.raises(nautilus.AuthenticationFailed):
            s.do_handshake()

    peer = Peer(handler, wrap=False)
    with pytest.raises(nautilus.AuthenticationFailed, match="no trust configured"):
        nautilus.create_connection(peer.address, context=Context())
    peer.result()


def test_untrusted_server_from_do_handshake() -> None:
    ctx = Context(trusted_peers=[OTHER_ID.public])

    def handler(raw: socket.socket) -> None:
        s = server_ctx().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with s, pytest.raises(nautilus.AuthenticationFailed):
            s.do_handshake()

    peer = Peer(handler, wrap=False)
    raw = socket.create_connection(peer.address)
    with ctx.wrap_socket(raw, do_handshake_on_connect=False) as sock:
        with pytest.raises(nautilus.AuthenticationFailed, match=r"trust"):
            sock.do_handshake()
        with pytest.raises(nautilus.ClosedError):
            sock.do_handshake()
        with pytest.raises(nautilus.ClosedError):
            sock.recv(1)
        with pytest.raises(nautilus.ClosedError):
            sock.sendall(b"x")
        assert sock.session is None
    peer.result()


def test_required_client_auth_without_a_client_identity() -> None:
    def handler(raw: socket.socket) -> None:
        ctx = server_ctx(client_auth="required")
        s = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with s, pytest.raises(nautilus.AuthenticationFailed):
            s.do_handshake()

    peer = Peer(handler, wrap=False)
    with pytest.raises(nautilus.AuthenticationFailed, match="client authentication"):
        connect(peer)
    peer.result()


# ------------------------------------------------------------ bad arguments


def test_bad_arguments_are_refused_before_any_io() -> None:
    seen: list[bytes] = []

    def handler(raw: socket.socket) -> None:
        seen.append(read_until_eof(raw))

    peer = Peer(handler, wrap=False)
    raw = socket.create_connection(peer.address)
    sock = client_ctx().wrap_socket(raw, do_handshake_on_connect=False)
    with sock:
        bad: list[tuple[type[BaseException], Callable[[], object]]] = [
            (ValueError, lambda: sock.recv(-1)),
            (TypeError, lambda: sock.recv("10")),  # type: ignore[arg-type]
            (ValueError, lambda: sock.recv(10, 1)),
            (TypeError, lambda: sock.recv(10, "x")),  # type: ignore[arg-type]
            (TypeError, lambda: sock.recv_into(b"readonly")),
            (TypeError, lambda: sock.recv_into("str")),  # type: ignore[arg-type]
            (ValueError, lambda: sock.recv_into(bytearray(4), 10)),
            (ValueError, lambda: sock.recv_into(bytearray(4), -1)),
            (ValueError, lambda: sock.recv_into(bytearray(4), 2, 1)),
            (TypeError, lambda: sock.send("text")),  # type: ignore[arg-type]
            (TypeError, lambda: sock.sendall(123)),  # type: ignore[arg-type]
            (ValueError, lambda: sock.send(b"x", 1)),
            (ValueError, lambda: sock.sendall(b"x", socket.MSG_OOB)),
            (TypeError, lambda: sock.send_message("text")),  # type: ignore[arg-type]
            (TypeError, lambda: sock.send_messages(b"one object")),
            (TypeError, lambda: sock.send_messages([b"a", 1])),  # type: ignore[list-item]
            (TypeError, lambda: sock.send_messages(None)),  # type: ignore[arg-type]
            (nautilus.MessageTooLarge, lambda: sock.send_message(b"x" * (16 * 1024 * 1024 + 1))),
            (TypeError, lambda: sock.update_keys("yes")),  # type: ignore[arg-type]
            (TypeError, lambda: sock.shutdown("x")),  # type: ignore[arg-type]
            (ValueError, lambda: sock.shutdown(99)),
            (TypeError, lambda: sock.export_keying_material("a", b"", 32)),  # type: ignore[arg-type]
            (ValueError, lambda: sock.export_keying_material(b"a", b"", 0)),
            (ValueError, lambda: sock.sendto(b"x", ("h", 1))),
            (ValueError, lambda: sock.recvfrom(1)),
            (NotImplementedError, lambda: sock.recvmsg(1)),
            (NotImplementedError, lambda: sock.dup()),
            (ValueError, lambda: sock.accept()),
            (ValueError, lambda: sock.sendfile(io.BytesIO(b"x"), -1)),
        ]
        for exc, call in bad:
            with pytest.raises(exc):
                call()
        with pytest.raises(TypeError, match=r"^messages must be an iterable .* not NoneType$"):
            sock.send_messages(None)  # type: ignore[arg-type]
        assert sock.session is None
        with pytest.raises(nautilus.ClosedError):  # keys exist only after the handshake
            sock.export_keying_material(b"a", b"", 32)
        os.close(sock.detach())  # close without a word: the peer must have seen nothing
    peer.result()
    assert seen == [b""]


def test_a_detached_socket_is_closed_and_writes_nothing_more() -> None:
    """detach() hands the descriptor over, as socket.detach(): the object is then
    a closed socket (EBADF, not a ConnectionLost it never had), it drops the
    session's keys, and nothing more goes out on the descriptor (no close_notify
    written after the fact by close() or the with block)."""
    seen: list[bytes] = []

    def handler(sock: NautilusSocket) -> None:
        assert sock.recv(10) == b"ping"
        sock.sendall(b"pong")
        try:
            seen.append(sock.recv(10))
        except nautilus.ConnectionLost:
            seen.append(b"lost")

    peer = Peer(handler)
    with nautilus.create_connection(peer.address, context=client_ctx(), timeout=5) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"pong"
        conn = sock._conn
        fd = sock.detach()
        assert sock.fileno() == -1
        assert conn.is_closed
        for call in (lambda: sock.recv(10), lambda: sock.recv(0), lambda: sock.sendall(b"x"),
                     lambda: sock.recv_message(), lambda: sock.send_message(b"x")):  # fmt: skip
            with pytest.raises(OSError, match="closed") as info:
                call()
            assert info.value.errno == errno.EBADF, info.value
    raw = socket.socket(fileno=fd)  # still open, and still the connection to the peer
    assert raw.getpeername() == peer.address
    raw.close()  # the peer sees no close_notify: only the TCP end
    peer.result()
    assert seen == [b"lost"]


def test_bad_flags_buffers_and_files_are_refused_naming_the_argument() -> None:
    """Falsy flags that are not ints, strided buffers of signed bytes, objects
    that are not binary files: clear errors, before any I/O."""
    seen: list[bytes] = []

    def handler(raw: socket.socket) -> None:
        seen.append(read_until_eof(raw))

    peer = Peer(handler, wrap=False)
    raw = socket.create_connection(peer.address, timeout=2)  # a handshake would time out
    sock = client_ctx().wrap_socket(raw, do_handshake_on_connect=False)
    with sock:
        bad: list[tuple[type[BaseException], str, Callable[[], object]]] = [
            (TypeError, "flags", lambda: sock.recv(10, None)),  # type: ignore[arg-type]
            (TypeError, "flags", lambda: sock.recv(10, 0.0)),  # type: ignore[arg-type]
            (TypeError, "flags", lambda: sock.recv_into(bytearray(4), 0, "")),  # type: ignore[arg-type]
            (TypeError, "flags", lambda: sock.send(b"x", None)),  # type: ignore[arg-type]
            (TypeError, "flags", lambda: sock.sendall(b"x", b"")),  # type: ignore[arg-type]
            (ValueError, "flags", lambda: sock.recv_into(bytearray(4), 0, socket.MSG_PEEK)),
            (TypeError, "buffer", lambda: sock.recv_into(None)),  # type: ignore[arg-type]
            (
                TypeError,
                "contiguous",
                lambda: sock.recv_into(memoryview(array.array("b", bytes(8)))[::2]),
            ),
            (TypeError, "file", lambda: sock.sendfile(None)),
            (TypeError, "file", lambda: sock.sendfile(b"not a file")),
            (ValueError, "binary", lambda: sock.sendfile(io.StringIO("text"))),
            (TypeError, "offset", lambda: sock.sendfile(io.BytesIO(b"x"), "1")),  # type: ignore[arg-type]
            (ValueError, "offset", lambda: sock.sendfile(io.BytesIO(b"x"), -1)),
            (TypeError, "count", lambda: sock.sendfile(io.BytesIO(b"x"), 0, 1.5)),  # type: ignore[arg-type]
            (ValueError, "count", lambda: sock.sendfile(io.BytesIO(b"x"), 0, 0)),
            (TypeError, "flags", lambda: sock.recv(10, True)),  # a bool is no flag
            (TypeError, "how", lambda: sock.shutdown(True)),  # nor a SHUT_WR
            (TypeError, "offset", lambda: sock.sendfile(io.BytesIO(b"xy"), True)),
            (TypeError, "count", lambda: sock.sendfile(io.BytesIO(b"xy"), 0, True)),
            (ValueError, "too small", lambda: sock.recv_into(bytearray(4), 5)),
            (TypeError, "contiguous", lambda: sock.send_messages([memoryview(b"abcdef")[::2]])),
        ]
        for exc, name, call in bad:
            with pytest.raises(exc, match=name):
                call()
        assert sock.recv(0, 0) == b""
        assert sock.recv_into(bytearray(0), 0, socket.MsgFlag(0)) == 0
        assert sock.session is None
        os.close(sock.detach())  # close without a word: the peer must have seen nothing
    peer.result()
    assert seen == [b""]


def test_a_refused_connect_keeps_no_server_name_from_its_address(tmp_path: Any) -> None:
    """connect() made the server name from the address before the TCP connect:
    a connect refused for its address kept it, and the next connect's server
    was recorded in the known-peers file under the refused address's name."""
    peer = Peer(echo)
    known = tmp_path / "known"
    sock = Context(known_peers_file=known).wrap_socket(socket.socket())
    with sock:
        with pytest.raises(OverflowError):
            sock.connect((HOST, 70000))  # (as socket.connect: a port beyond 65535)
        with pytest.raises(TypeError):
            sock.connect((HOST, "1"))
        assert sock.server_name is None
        sock.settimeout(PEER_TIMEOUT)
        sock.connect(peer.address)
        assert sock.server_name == f"{HOST}:{peer.port}"
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
    peer.result()
    names = [line.split()[0] for line in known.read_text().splitlines()[1:]]
    assert names == [f"{HOST}:{peer.port}"]


def test_a_server_name_with_control_characters_is_refused_before_any_io() -> None:
    """Given, or made from the address dialled (``host:port``): refused by the
    Connection before the socket connects, sends, or is taken over."""
    ctx = client_ctx()
    message = r"^server_name must not contain control"
    with socket.create_server((HOST, 0)) as listener:
        listener.setblocking(False)
        address = listener.getsockname()[:2]
        with pytest.raises(ValueError, match=message):
            nautilus.create_connection(address, context=ctx, server_name="srv\n:1")
        with pytest.raises(ValueError, match=message):  # no DNS look-up either
            nautilus.create_connection(("bad\nhost", address[1]), context=ctx)
        with socket.socket() as raw:
            with pytest.raises(ValueError, match=message):
                ctx.wrap_socket(raw, server_name="srv\0:1")
            assert raw.fileno() != -1  # not taken over
            sock = ctx.wrap_socket(raw)  # unconnected: its server_name comes from connect()
            with sock, pytest.raises(ValueError, match=message):
                sock.connect(("bad\thost", address[1]))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
        with socket.create_connection(address) as raw:
            accepted, _ = listener.accept()
            with accepted:
                with pytest.raises(ValueError, match=message):
                    ctx.wrap_socket(raw, server_name="a\u2028b")
                assert raw.fileno() != -1
                accepted.setblocking(False)
                with pytest.raises(BlockingIOError):
                    accepted.recv(1)  # nothing sent


def test_bad_arguments_to_the_constructors() -> None:
    ctx = client_ctx()
    with pytest.raises(TypeError):
        NautilusSocket()
    with socket.socket() as raw, pytest.raises(TypeError):
        wrap_socket("not a context", raw)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.wrap_socket("not a socket")  # type: ignore[arg-type]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(ValueError, match="stream"),
    ):
        ctx.wrap_socket(udp)
    with socket.socket() as s:
        with pytest.raises(TypeError):
            ctx.wrap_socket(s, server_side=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="clients only"):
            server_ctx().wrap_socket(s, server_side=True, expected_peer=OTHER_ID.public)
        with pytest.raises(ValueError, match="identity"):
            ctx.wrap_socket(s, server_side=True)
        with pytest.raises(TypeError):
            ctx.wrap_socket(s, expected_peer=42)  # type: ignore[arg-type]
        assert s.fileno() != -1  # none of these took the socket over
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for kwargs, exc in [
        ({"address": "127.0.0.1:80"}, TypeError),
        ({"address": (HOST, 70000)}, ValueError),
        ({"address": (HOST, 1), "timeout": 0}, ValueError),
        ({"address": (HOST, 1), "timeout": float("inf")}, ValueError),  # (not OverflowError)
        ({"address": (HOST, 1), "timeout": float("nan")}, ValueError),
        ({"address": (HOST, 1), "timeout": 2**70}, ValueError),  # (not OverflowError)
        ({"address": (HOST, 1), "timeout": 1e12}, ValueError),
        ({"address": (HOST, 1), "timeout": "1"}, TypeError),
        ({"address": (HOST, 1), "context": "ctx"}, TypeError),
        ({"address": (HOST, 1), "server_name": 5}, TypeError),
        ({"address": (HOST, 1), "expected_peer": "not a peer id"}, ValueError),
        ({"address": (HOST, 1), "source_address": "x"}, TypeError),
        # (the next five made a socket, looked the address up, and raised
        # bind()'s OverflowError or TypeError with the socket left unclosed)
        ({"address": (HOST, 1), "source_address": (HOST, 70000)}, ValueError),
        ({"address": (HOST, 1), "source_address": (HOST, -1)}, ValueError),
        ({"address": (HOST, 1), "source_address": (HOST, "0")}, TypeError),
        ({"address": (HOST, 1), "source_address": (HOST, True)}, TypeError),
        ({"address": (HOST, 1), "source_address": (HOST,)}, TypeError),
    ]:
        kwargs.setdefault("context", ctx)
        with pytest.raises(exc):
            nautilus.create_connection(**kwargs)  # type: ignore[arg-type]
    if descriptors is not None:  # no socket made for a refused call
        assert len(os.listdir("/proc/self/fd")) <= descriptors
    with client_ctx().wrap_socket(socket.socket(), server_side=False) as s:
        pass
    listener = server_ctx().wrap_socket(socket.socket(), server_side=True)
    with listener, pytest.raises(ValueError, match="server-side"):
        listener.connect((HOST, 1))


def test_session_resumption_with_a_ticket() -> None:
    def handler(sock: NautilusSocket) -> bool:
        sock.sendall(b"hi")  # after the session ticket
        assert sock.recv(1) == b""
        assert sock.session is not None
        return sock.session.resumed

    peer = Peer(handler, count=2)
    ctx = client_ctx()
    with connect(peer, context=ctx) as sock:
        assert recv_exactly(sock, 2) == b"hi"
        assert sock.session is not None
        assert sock.session.resumed is False
    with connect(peer, context=ctx) as sock:
        assert recv_exactly(sock, 2) == b"hi"
        assert sock.session is not None
        assert sock.session.resumed is True
    assert peer.result() == [False, True]


def test_a_client_closed_before_its_ticket_keeps_no_key() -> None:
    """The server's ticket follows the client's flight (client identity
    required); the client sends and closes at once. Whether or not the
    ticket arrived in time to be kept, close() leaves no key behind (a
    closed client reads on for its ticket only until the socket goes)."""

    def handler(sock: NautilusSocket) -> bytes:
        return sock.recv(100)

    peer = Peer(
        handler, server_ctx(client_auth="required", trusted_peers=[CLIENT_ID.public]), count=3
    )
    ctx = client_ctx(identity=CLIENT_ID)
    for _ in range(3):
        sock = connect(peer, context=ctx)
        sock.sendall(b"request")
        conn = sock._conn
        sock.close()
        assert conn.is_closed
        assert conn._keys is None
        assert conn._opener is None
    assert peer.result() == [b"request"] * 3


@pytest.mark.parametrize("how", ["shutdown", "close with a reader blocked"])
def test_a_client_awaiting_its_ticket_keeps_no_key_after_shutdown_or_close(how: str) -> None:
    """A server that sends no ticket and waits: the client's shutdown(), or
    its close() while another thread is blocked in recv(), leaves no key."""
    done = threading.Event()

    def handler(sock: NautilusSocket) -> None:
        done.wait(PEER_TIMEOUT)

    peer = Peer(handler, server_ctx(tickets_per_handshake=0))
    sock = connect(peer)
    conn = sock._conn
    reader = None
    try:
        if how == "shutdown":
            sock.shutdown(socket.SHUT_WR)
        else:

            def read() -> None:
                with contextlib.suppress(OSError):  # (the socket closes under it)
                    sock.recv(10)

            reader = threading.Thread(target=read)
            reader.start()
            for _ in range(100):  # until the reader holds the read lock
                if sock._read_lock.locked():
                    break
                time.sleep(0.01)
            assert sock._read_lock.locked()
            sock.close()
        assert conn.is_closed
        assert conn._keys is None
        assert conn._opener is None
    finally:
        done.set()
        sock.close()
        if reader is not None:
            reader.join(PEER_TIMEOUT)
    peer.result()


def test_mixed_partial_reads_of_one_chunk() -> None:
    payload = random.randbytes(200_000)

    def handler(sock: NautilusSocket) -> None:
        sock.sendall(payload)
        assert sock.recv(1) == b""

    peer = Peer(handler)
    with connect(peer) as sock:
        t0 = time.monotonic()
        assert sock.recv(0) == b""  # does not wait for data
        assert time.monotonic() - t0 < 1
        got = bytearray()
        buf = bytearray(5000)
        rng = random.Random(3)
        while len(got) < len(payload):
            if rng.random() < 0.5:
                got += sock.recv(rng.randint(1, 7000))
            else:
                n = sock.recv_into(buf, rng.randint(1, 5000))
                got += buf[:n]
        assert bytes(got) == payload
    peer.result()


def test_writer_during_a_handshake_driven_by_a_reader() -> None:
    """A reader starts the implicit handshake and then blocks reading; a writer
    that arrived during the handshake must not wait for that read."""

    def handler(raw: socket.socket) -> None:
        time.sleep(0.3)  # a slow server: both threads meet in the handshake
        with server_ctx().wrap_socket(raw, server_side=True) as sock:
            echo(sock)

    peer = Peer(handler, wrap=False)
    sock = client_ctx().wrap_socket(
        socket.create_connection(peer.address), do_handshake_on_connect=False
    )
    sock.settimeout(10)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(recv_exactly(sock, 4)), daemon=True)
    with sock:
        reader.start()
        time.sleep(0.1)
        sock.sendall(b"ping")  # the server answers only once it has this
        reader.join(10)
        assert got == [b"ping"]
    peer.result()


def test_early_data_reaches_the_server_as_stream_data() -> None:
    if "early_data" not in Context.__init__.__code__.co_varnames:
        pytest.skip("this build has no 0-RTT")

    def handler(sock: NautilusSocket) -> bytes:
        data = sock.recv(100)
        assert sock.session is not None  # the handshake has completed when data is read
        assert sock.session.early_data_accepted == (data == b"early!")
        return data

    peer = Peer(handler, server_ctx(early_data=True), count=2)
    ctx = client_ctx(early_data=True)
    with connect(peer, context=ctx) as sock:  # the first session: a ticket
        sock.sendall(b"first")
        assert sock.recv(1) == b""
    raw = socket.create_connection(peer.address, timeout=PEER_TIMEOUT)
    with raw:
        conn = Connection(ctx, "client", server_name=f"{HOST}:{peer.port}")
        conn.start(time.time(), early_data=b"early!")
        raw.sendall(conn.data_to_send())
        while not conn.handshake_complete:
            conn.receive_data(raw.recv(65536), time.time())
            raw.sendall(conn.data_to_send())
        assert conn.session is not None
        assert conn.session.early_data_accepted  # type: ignore[attr-defined]
        conn.close()
        raw.sendall(conn.data_to_send())
    assert peer.result() == [b"first", b"early!"]


def _first_flight_with_early_data(
    ctx: Context, name: str, port: int, early: bytes
) -> socket.socket:
    """A client's hello with 0-RTT data (a ticket of ``name``), and nothing
    after it (a stalled client, or a replayed first flight); the raw socket
    is returned open."""
    conn = Connection(ctx, "client", server_name=name)
    conn.start(time.time(), early_data=early)
    assert conn._early_sent, "no ticket allowed the 0-RTT data"
    raw = socket.create_connection((HOST, port), timeout=PEER_TIMEOUT)
    raw.sendall(conn.data_to_send())
    return raw


@pytest.mark.parametrize("handshake_first", [False, True], ids=["recv", "do_handshake"])
def test_early_data_is_read_only_once_the_handshake_completes(handshake_first: bool) -> None:
    """A server socket wrapped with do_handshake_on_connect=False: recv()
    returned accepted 0-RTT data while the handshake was still in progress
    (``session`` None), and even after it had failed. The data is now held
    until the handshake completes, read first then, and never read from a
    client that does not finish (a replay of its first flight)."""
    ctx = client_ctx(early_data=True)
    sctx = server_ctx(early_data=True, handshake_timeout=1.0)
    peer = Peer(lambda sock: sock.recv(100), sctx)
    with connect(peer, context=ctx) as sock:  # the first session: a ticket
        sock.sendall(b"first")
        assert sock.recv(1) == b""
    assert peer.result() == b"first"
    listener = socket.create_server((HOST, 0))
    with (
        listener,
        sctx.wrap_socket(listener, server_side=True, do_handshake_on_connect=False) as server,
    ):
        port = server.getsockname()[1]
        raw = _first_flight_with_early_data(ctx, f"{HOST}:{peer.port}", port, b"POST /transfer")
        with raw:
            accepted, _ = server.accept()
            with accepted:
                accepted.settimeout(0.3)
                got: list[object] = []
                deadline = time.monotonic() + PEER_TIMEOUT
                while time.monotonic() < deadline:
                    try:
                        if handshake_first:
                            accepted.do_handshake()
                        got.append(accepted.recv(100))
                    except nautilus.HandshakeTimeout:
                        break
                    except TimeoutError:
                        assert accepted.session is None
                        continue
                assert got == []  # never the early data of an unfinished handshake
                with pytest.raises(nautilus.ClosedError):
                    accepted.recv(100)


# ------------------------------------------- the bulk paths: direct seal and open


def test_recv_into_small_buffers_and_nbytes_on_the_direct_path() -> None:
    """Records larger than the caller's buffer, and ``nbytes``, interleaved
    with reads large enough to take whole batches of records."""
    payload = random.randbytes(1_500_000)

    def handler(sock: NautilusSocket) -> None:
        rng = random.Random(4)
        pos = 0
        while pos < len(payload):  # uneven writes, some of them waited for
            step = rng.randint(1, 60_000)
            sock.sendall(payload[pos : pos + step])
            pos += step
            if rng.random() < 0.2:
                time.sleep(0.001)
        assert sock.recv(1) == b""

    peer = Peer(handler)
    with connect(peer) as sock:
        got = bytearray()
        big = bytearray(300_000)
        rng = random.Random(5)
        while len(got) < len(payload):
            kind = rng.random()
            if kind < 0.3:
                size = rng.choice((1, 17, 1000, 16_383, 16_384, 16_385))
                n = sock.recv_into(big, size)
                assert 0 < n <= size
            elif kind < 0.6:
                n = sock.recv_into(big)
                assert n > 0
            elif kind < 0.7:  # not contiguous: the general path
                strided = memoryview(bytearray(4000))[::2]
                n = sock.recv_into(strided)
                assert 0 < n <= 2000
                big[:n] = strided[:n]
            else:
                small = bytearray(rng.randint(1, 20_000))
                n = sock.recv_into(small)
                assert 0 < n <= len(small)
                big[:n] = small[:n]
            got += big[:n]
        assert bytes(got) == payload
    peer.result()


ONE_BYTE_BUFFERS: dict[str, Callable[[int], Any]] = {
    "array-b": lambda n: array.array("b", bytes(n)),
    "ctypes-c_char": lambda n: (ctypes.c_char * n)(),
    "ctypes-c_ubyte": lambda n: (ctypes.c_ubyte * n)(),  # format '<B'
    "memoryview-c": lambda n: memoryview(bytearray(n)).cast("c"),
    "memoryview-2d": lambda n: memoryview(bytearray(n)).cast("B", (2, n // 2)),
}


@pytest.mark.parametrize("make", ONE_BYTE_BUFFERS.values(), ids=ONE_BYTE_BUFFERS.keys())
def test_recv_into_buffers_of_any_format(
    make: Callable[[int], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buffers whose items are not unsigned bytes ('b', 'c', ctypes' '<c' and '<B',
    2-D) take stream bytes as plain sockets' do, on the buffered path and on the
    direct path, where a message record read with the stream data must reach
    recv_message() (and not linger in the caller's buffer)."""
    stream = bytes(range(100))

    def handler(raw: socket.socket) -> bytes:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        assert wait_for_data(raw, conn) == b"go"
        conn.send_data(stream)
        raw.sendall(conn.data_to_send())
        assert wait_for_data(raw, conn) == b"next"
        conn.send_data(b"A" * 10)
        conn.send_message(b"a message")
        conn.send_data(b"B" * 10)
        raw.sendall(conn.data_to_send())  # one write: the three records are read at once
        return read_until_eof(raw)

    opened: list[int] = []
    open_direct = NautilusSocket._open_direct

    def spy(self: NautilusSocket, view: memoryview, size: int) -> int:
        opened.append(open_direct(self, view, size))
        return opened[-1]

    monkeypatch.setattr(NautilusSocket, "_open_direct", spy)
    peer = Peer(handler, wrap=False)
    with connect(peer, timeout=PEER_TIMEOUT) as sock:
        sock.sendall(b"go")
        assert sock.recv(6) == stream[:6]  # the rest waits in the socket object
        buf = make(50)
        assert sock.recv_into(buf) == 50
        assert memoryview(buf).tobytes() == stream[6:56]
        assert sock.recv_into(buf, 40) == 40
        assert memoryview(buf).tobytes()[:40] == stream[56:96]
        assert sock.recv_into(buf) == 4
        assert memoryview(buf).tobytes()[:4] == stream[96:]
        sock.settimeout(None)  # blocking: recv_into opens records into the buffer itself
        sock.sendall(b"next")
        buf = make(100)
        assert sock.recv_into(buf) == 10
        assert memoryview(buf).tobytes() == b"A" * 10 + bytes(90)  # the message is not there
        assert sock.recv_message() == b"a message"
        assert sock.recv_into(buf) == 10
        assert memoryview(buf).tobytes()[:10] == b"B" * 10
    assert opened[:1] == [10]  # the direct path opened the A record and the message
    peer.result()


@pytest.mark.parametrize("record_size", [65536, 200_000])
def test_records_larger_than_a_new_sockets_receive_buffer(record_size: int) -> None:
    """A new socket reads into a small buffer; records larger than it, read with
    ``recv`` (the Connection's path, which keeps partial records) and with a
    large ``recv_into`` (the direct path, which needs the whole record in the
    buffer) in turn, arrive intact."""
    payload = random.Random(record_size).randbytes(1_200_000)

    def handler(sock: NautilusSocket) -> None:
        rng = random.Random(6)
        pos = 0
        while pos < len(payload):
            step = rng.randint(1, 3 * record_size)
            sock.sendall(payload[pos : pos + step])
            pos += step
        assert sock.recv(1) == b""

    peer = Peer(handler, server_ctx(max_record_size=record_size))
    with connect(peer, context=client_ctx(max_record_size=record_size)) as sock:
        got = bytearray()
        big = bytearray(1 << 19)
        rng = random.Random(7)
        while len(got) < len(payload):
            if rng.random() < 0.4:
                data = sock.recv(rng.randint(1, 5000))
                assert data
                got += data
            else:
                n = sock.recv_into(big)
                assert n > 0
                got += big[:n]
        assert bytes(got) == payload
    peer.result()


def test_an_idle_socket_holds_a_small_receive_buffer() -> None:
    """Connected and idle, a pair of sockets holds a few KiB of receive buffers
    (not 256 KiB each); bulk reads grow them."""
    import tracemalloc

    import nautilus.sockets as sockets_module

    only_sockets = [tracemalloc.Filter(True, sockets_module.__file__)]
    ready, done = threading.Event(), threading.Event()

    def handler(sock: NautilusSocket) -> None:
        ready.set()
        assert done.wait(PEER_TIMEOUT)
        sock.sendall(bytes(1_000_000))
        assert sock.recv(1) == b""

    tracemalloc.start()
    try:
        peer = Peer(handler)
        with connect(peer) as sock:
            assert ready.wait(PEER_TIMEOUT)
            idle = tracemalloc.take_snapshot().filter_traces(only_sockets)
            idle_bytes = sum(stat.size for stat in idle.statistics("filename"))
            done.set()
            assert len(recv_into_exactly(sock, 1_000_000)) == 1_000_000
            bulk = tracemalloc.take_snapshot().filter_traces(only_sockets)
            bulk_bytes = sum(stat.size for stat in bulk.statistics("filename"))
        peer.result()
    finally:
        tracemalloc.stop()
    assert idle_bytes < 96 * 1024, idle_bytes
    assert bulk_bytes >= idle_bytes + sockets_module.RECV_BUFFER_SIZE // 2, (idle_bytes, bulk_bytes)


def recv_into_exactly(sock: NautilusSocket, size: int) -> bytes:
    """``size`` bytes read with ``recv_into`` into a 256 KiB buffer (the direct path)."""
    got = bytearray()
    buf = bytearray(1 << 18)
    while len(got) < size:
        n = sock.recv_into(buf)
        assert n, f"the stream ended after {len(got)} of {size} bytes"
        got += buf[:n]
    return bytes(got)


@pytest.mark.parametrize("timeout", [None, PEER_TIMEOUT], ids=["blocking", "timeout"])
def test_large_sends_from_any_buffer_are_accounted_and_intact(timeout: float | None) -> None:
    """Sends larger than one sealing step, from bytes, bytearray, memoryview
    and a typed array; the Connection's byte counters follow the direct path
    (blocking) or the timed one."""
    parts: list[Any] = [
        random.randbytes(1_000_001),
        bytearray(random.randbytes(600_000)),
        memoryview(random.randbytes(300_000))[1000:],
        array.array("I", range(100_000)),
    ]
    expected = b"".join(bytes(p) for p in parts)

    def handler(sock: NautilusSocket) -> tuple[bytes, int]:
        return recv_into_exactly(sock, len(expected)), sock._conn.stats.bytes_received

    peer = Peer(handler)
    with connect(peer, timeout=timeout) as sock:
        for i, part in enumerate(parts):
            if i % 2:
                assert sock.send(part) == memoryview(part).nbytes
            else:
                sock.sendall(part)
        assert sock._conn.stats.bytes_sent == len(expected)
        assert sock.recv(1) == b""  # the server closes first: its ticket is read
    got, received = peer.result()
    assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()
    assert received == len(expected)


def test_small_sendalls_into_a_full_socket_arrive_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 KiB sendalls (one record each, the direct path's short branch) while
    the peer does not read yet: the socket fills and takes part of a record;
    its rest (or all of it) is written before the next record is sealed."""
    payload = random.randbytes(1_000_000)
    start_reading = threading.Event()

    def handler(sock: NautilusSocket) -> bytes:
        assert start_reading.wait(PEER_TIMEOUT)
        return recv_into_exactly(sock, len(payload))

    rests: list[int] = []
    write_all = NautilusSocket._write_all

    def counted(sock: NautilusSocket, data: Any, then: Any = None) -> None:
        rests.append(len(data))
        write_all(sock, data, then)

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        monkeypatch.setattr(NautilusSocket, "_write_all", counted)
        timer = threading.Timer(0.2, start_reading.set)
        timer.start()
        for i in range(0, len(payload), 4096):
            sock.sendall(payload[i : i + 4096])
        assert sock._conn.stats.bytes_sent == len(payload)
        timer.join()
    assert peer.result() == payload
    assert rests, "the socket never took only part of a record"
    assert all(0 < n <= 4096 + nautilus.sockets._OVERHEAD for n in rests), rests


@pytest.mark.parametrize("size", [4096, 100_000, 600_000])
def test_timed_sends_into_a_full_socket_arrive_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """With a timeout, sends (one record, several, more than one sealing step)
    while the peer does not read yet: the socket takes part of what was
    sealed; the rest is copied out of the reused buffer and written, with the
    timeout, before anything else is sealed."""
    payload = random.randbytes(1_500_000)
    start_reading = threading.Event()

    def handler(sock: NautilusSocket) -> bytes:
        assert start_reading.wait(PEER_TIMEOUT)
        return recv_into_exactly(sock, len(payload))

    rests: list[int] = []
    raw_send = nautilus.sockets._raw_send

    def counted(sock: socket.socket, data: Any, *flags: int) -> int:
        rests.append(len(data))
        return raw_send(sock, data, *flags)

    peer = Peer(handler)
    with connect(peer, timeout=PEER_TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        monkeypatch.setattr(nautilus.sockets, "_raw_send", counted)
        timer = threading.Timer(0.2, start_reading.set)
        timer.start()
        for i in range(0, len(payload), size):
            sock.sendall(payload[i : i + size])
        assert sock._conn.stats.bytes_sent == len(payload)
        timer.join()
    assert peer.result() == payload
    assert rests, "the socket never took only part of what was sealed"


def test_a_timed_send_the_socket_takes_at_once_makes_no_python_socket_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a timeout, CPython's socket send() and sendall() poll() before
    writing; ssl tries first. A send that the socket takes at once is sealed
    and written by one C call, without them."""

    def handler(sock: NautilusSocket) -> bytes:
        return recv_into_exactly(sock, 20 * 4096)

    def refuse(*args: Any) -> int:
        raise AssertionError("a Python socket write (which polls first)")

    payload = random.randbytes(20 * 4096)
    peer = Peer(handler)
    with connect(peer, timeout=PEER_TIMEOUT) as sock:
        monkeypatch.setattr(nautilus.sockets, "_raw_send", refuse)  # (all writes but C's)
        for i in range(0, len(payload), 4096):
            sock.sendall(payload[i : i + 4096])
            assert sock.send(b"") == 0
        monkeypatch.undo()
        assert sock._conn.stats.bytes_sent == len(payload)
    assert peer.result() == payload


@pytest.mark.parametrize(
    ("ctx_kw", "write", "per_update"),
    [
        ({"key_update_records": 20}, 150_000, 16384 * 20),
        ({"key_update_bytes": 50_000}, 4096, 50_000),
    ],
    ids=["records", "bytes"],
)
@pytest.mark.parametrize("timeout", [None, PEER_TIMEOUT], ids=["blocking", "timeout"])
def test_key_updates_on_the_direct_paths(
    ctx_kw: dict[str, int], write: int, per_update: int, timeout: float | None
) -> None:
    """A small key-update budget (records, or bytes): the direct send path (or
    the timed one) hands the sealing near each update to the Connection, the
    direct open path hands it the updates."""
    payload = random.randbytes(2_000_000)

    def handler(sock: NautilusSocket) -> tuple[bytes, int]:
        return recv_into_exactly(sock, len(payload)), sock._conn.stats.key_updates

    peer = Peer(handler, server_ctx(**ctx_kw))
    with connect(peer, context=client_ctx(**ctx_kw), timeout=timeout) as sock:
        for i in range(0, len(payload), write):
            sock.sendall(payload[i : i + write])
        updates = sock._conn.stats.key_updates
        assert sock.recv(1) == b""
    got, peer_updates = peer.result()
    assert got == payload
    assert updates >= (len(payload) - 1) // per_update  # the last key need not be full
    assert peer_updates == updates


@pytest.mark.parametrize("when", ["before wrapping", "after wrapping, before connect"])
def test_rekey_interval_ratchets_the_keys_of_a_blocking_socket(when: str) -> None:
    """A ``rekey_interval`` is honoured on the send path, also when it is set
    on the context after wrap_socket(): connect() then makes the Connection
    (for the address's server name) from the context as it is at that time."""

    def handler(sock: NautilusSocket) -> bytes:
        return recv_into_exactly(sock, 3)

    peer = Peer(handler)
    ctx = client_ctx(resumption="off")
    if when == "before wrapping":
        ctx.rekey_interval = 0.05
    with ctx.wrap_socket(socket.socket()) as sock:
        if when != "before wrapping":
            ctx.rekey_interval = 0.05
        sock.settimeout(PEER_TIMEOUT)
        sock.connect(peer.address)
        for piece in (b"a", b"b", b"c"):
            time.sleep(0.1)
            sock.sendall(piece)
        updates = sock._conn.stats.key_updates
    assert peer.result() == b"abc"
    assert updates >= 2  # the keys were older than the interval at the last two sends


def test_counters_are_reachable_from_the_socket() -> None:
    def handler(sock: NautilusSocket) -> tuple[int, int, int]:
        data = recv_exactly(sock, 100)
        sock.sendall(b"y" * len(data[:10]))
        stats = sock.stats
        return stats.bytes_sent, stats.bytes_received, stats.key_updates

    peer = Peer(handler)
    with connect(peer) as sock:
        # (the update first: the server answers it before its data, which
        # the client reads once it has the server's update too)
        sock.update_keys(request_peer=True)
        sock.sendall(b"x" * 100)
        assert recv_exactly(sock, 10) == b"y" * 10
        stats = sock.stats
        assert (stats.bytes_sent, stats.bytes_received, stats.key_updates) == (100, 10, 2)
    assert peer.result() == (10, 100, 2)


def test_records_cut_into_many_reads_with_a_key_update_and_a_message_between() -> None:
    """The peer writes its records in small uneven pieces: every record is cut
    across reads; a key update (which asks for ours) and a message sit between
    stream data; the reader answers the update and both keep working."""
    chunks = [random.randbytes(n) for n in (40_000, 3, 20_000, 70_000)]

    def handler(raw: socket.socket) -> bytes:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        wait_for_data(raw, conn)
        conn.send_data(chunks[0])
        conn.send_data(chunks[1])
        conn.update_keys(request_peer=True)
        conn.send_data(chunks[2])
        conn.send_message(b"a message between")
        conn.send_data(chunks[3])
        wire = conn.data_to_send()
        rng = random.Random(7)
        pos = 0
        while pos < len(wire):
            step = rng.randint(1, 9000)
            raw.sendall(wire[pos : pos + step])
            pos += step
            time.sleep(0.002)
        wait_for_data(raw, conn)
        assert not conn.is_closed, conn.error
        assert conn.stats.key_updates == 2  # ours, and the peer's answer
        conn.close()
        raw.sendall(conn.data_to_send())
        return read_until_eof(raw)

    peer = Peer(handler, wrap=False)
    with connect(peer) as sock:
        sock.sendall(b"go")  # the records come after the handshake, not with it
        got = bytearray()
        buf = bytearray(1 << 17)
        want = sum(len(c) for c in chunks)
        while len(got) < want:
            n = sock.recv_into(buf)
            assert n
            got += buf[:n]
        assert bytes(got) == b"".join(chunks)
        assert sock.recv_message() == b"a message between"
        sock.sendall(b"done")
        assert sock.recv_into(buf) == 0  # close_notify
    peer.result()


def test_forged_record_after_good_ones_in_one_read() -> None:
    """Authentic records, then a forged one, arrive in one TCP write: the
    authentic data is delivered, then IntegrityError, and an alert goes out."""
    good = random.randbytes(50_000)

    def handler(raw: socket.socket) -> bytes:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        wait_for_data(raw, conn)
        conn.send_data(good)
        genuine = conn.data_to_send()
        conn.send_data(b"forged!")
        record = bytearray(conn.data_to_send())
        record[-1] ^= 1
        raw.sendall(genuine + record)
        return read_until_eof(raw)

    peer = Peer(handler, wrap=False)
    with connect(peer) as sock:
        sock.sendall(b"go")
        assert recv_into_exactly(sock, len(good)) == good
        buf = bytearray(1 << 18)
        with pytest.raises(nautilus.IntegrityError):
            sock.recv_into(buf)
        with pytest.raises(nautilus.ClosedError):
            sock.recv_into(buf)
        with pytest.raises(nautilus.ClosedError):
            sock.sendall(b"x")
    alert = peer.result()
    assert alert
    assert alert[0] == 0x17


def test_close_notify_right_after_data_in_one_read() -> None:
    payload = random.randbytes(30_000)

    def handler(raw: socket.socket) -> None:
        conn = Connection(server_ctx(), "server")
        raw_handshake(raw, conn)
        wait_for_data(raw, conn)
        conn.send_data(payload)
        conn.close()
        raw.sendall(conn.data_to_send())
        read_until_eof(raw)

    peer = Peer(handler, wrap=False)
    with connect(peer) as sock:
        sock.sendall(b"go")
        buf = bytearray(1 << 18)
        got = bytearray()
        while n := sock.recv_into(buf):
            got += buf[:n]
        assert bytes(got) == payload
        assert sock.recv_into(buf) == 0
    peer.result()


def test_pending_counts_records_read_ahead_for_select_loops() -> None:
    """recv_into reads records ahead of what the caller's buffer takes: pending()
    reports them, so a select() loop that checks it does not wait for nothing."""
    payload = random.randbytes(200_000)

    def handler(sock: NautilusSocket) -> None:
        assert sock.recv(2) == b"go"
        sock.sendall(payload)
        assert sock.recv(1) == b""

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.sendall(b"go")
        time.sleep(0.2)  # let it all arrive: one read takes it
        buf = bytearray(40_000)
        got = bytearray()
        n = sock.recv_into(buf)
        got += buf[:n]
        sock.setblocking(False)
        while len(got) < len(payload):
            if not sock.pending():
                assert select.select([sock], [], [], 5.0)[0], "nothing to read"
            n = sock.recv_into(buf)
            got += buf[:n]
        assert bytes(got) == payload
        sock.setblocking(True)
    peer.result()


@pytest.mark.parametrize("close_notify", [True, False])
@pytest.mark.parametrize("timeout", [0.0, PEER_TIMEOUT, None])
def test_server_reads_what_arrived_although_its_ticket_write_fails(
    close_notify: bool, timeout: float | None
) -> None:
    """A client sends its Finished and data (and close_notify, or not), then
    resets the connection. The server's ticket write after the handshake
    fails, but what arrived before the reset is still the server's to read:
    recv() returns it rather than the write error, then reports the end."""
    listener = socket.create_server((HOST, 0))
    with listener:
        raw = socket.create_connection(listener.getsockname(), timeout=PEER_TIMEOUT)
        accepted, _ = listener.accept()
    accepted.setblocking(False)
    server = server_ctx().wrap_socket(accepted, server_side=True, do_handshake_on_connect=False)
    with raw, server:
        conn = Connection(client_ctx(), "client", server_name=f"{HOST}:1")
        conn.start(time.time())
        raw.sendall(conn.data_to_send())
        while not conn.handshake_complete:
            with contextlib.suppress(nautilus.WantReadError):
                server.do_handshake()
            select.select([raw], [], [], PEER_TIMEOUT)
            conn.receive_data(raw.recv(65536), time.time())
        conn.send_data(b"last words")
        if close_notify:
            conn.close()
        raw.sendall(conn.data_to_send())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # a reset: the server's ticket write meets it
        select.select([server], [], [], PEER_TIMEOUT)
        time.sleep(0.05)  # let the reset arrive as well
        server.settimeout(timeout)
        assert server.recv(100) == b"last words"
        if close_notify:
            assert server.recv(100) == b""
        else:
            with pytest.raises(nautilus.ConnectionLost):
                server.recv(100)
        with pytest.raises((OSError, nautilus.ClosedError)):
            server.sendall(b"too late")


def test_close_pushes_held_output_before_a_reset_can_drop_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes that arrive between close()'s last read and the close itself make
    the kernel reset the connection, dropping output it still holds back
    (TCP_CORK here; Nagle waiting for an ACK does the same). close() pushes
    the last data and the close_notify out before it lets go of the socket."""
    send_late = threading.Event()

    def handler(raw: socket.socket) -> tuple[bytes, bool]:
        conn = Connection(server_ctx(resumption="off"), "server")
        raw_handshake(raw, conn)
        assert send_late.wait(PEER_TIMEOUT)
        conn.send_data(b"too late to be read")
        raw.sendall(conn.data_to_send())
        got, clean = bytearray(), False
        with contextlib.suppress(ConnectionResetError):
            while data := raw.recv(65536):
                conn.receive_data(data, time.time())
                for event in iter(conn.next_event, None):
                    if type(event) is nautilus.DataReceived:
                        got += event.data
                    elif type(event) is nautilus.ConnectionClosed:
                        clean = event.error is None
        return bytes(got), clean

    absorb = NautilusSocket._absorb_arrived

    def absorb_then_let_bytes_arrive(self: NautilusSocket) -> None:
        absorb(self)
        send_late.set()
        assert select.select([self], [], [], PEER_TIMEOUT)[0]

    peer = Peer(handler, wrap=False)
    sock = connect(peer, context=client_ctx(resumption="off"))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    sock.sendall(b"last words")  # held back by the cork
    monkeypatch.setattr(NautilusSocket, "_absorb_arrived", absorb_then_let_bytes_arrive)
    sock.close()
    assert peer.result() == (b"last words", True)


def test_output_a_reader_queued_goes_before_the_next_piece_of_a_large_sendall() -> None:
    """A reader takes the peer's key update request while a writer is in the
    middle of a large sendall (blocked: the peer does not read yet). The
    answer is owed before the next data: the writer sends it before its next
    piece, which it seals under the new key: the peer opens everything, in
    order."""
    payload = random.randbytes(3_000_000)  # several pieces of the direct path
    start_reading = threading.Event()

    def handler(raw: socket.socket) -> tuple[bytes, int]:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn = Connection(server_ctx(resumption="off"), "server")
        raw_handshake(raw, conn)
        conn.update_keys(request_peer=True)
        conn.send_data(b"ping")
        raw.sendall(conn.data_to_send())
        assert start_reading.wait(PEER_TIMEOUT)
        got = bytearray()
        while len(got) < len(payload):
            data = raw.recv(1 << 16)
            assert data, f"the client closed after {len(got)} bytes"
            conn.receive_data(data, time.time())
            for event in iter(conn.next_event, None):
                assert not isinstance(event, nautilus.ConnectionClosed), event.error
                if type(event) is nautilus.DataReceived:
                    got += event.data
        return bytes(got), conn.stats.key_updates

    peer = Peer(handler, wrap=False)
    with connect(peer, context=client_ctx(resumption="off")) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        writer = threading.Thread(target=sock.sendall, args=(payload,))
        writer.start()
        deadline = time.monotonic() + PEER_TIMEOUT
        while not sock._write_lock.locked():  # the writer is in its sendall
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert sock.recv(4) == b"ping"  # the key update request came first
        assert not sock._queued  # (the answer is the writer's: before its next piece)
        start_reading.set()
        writer.join(PEER_TIMEOUT)
        assert not writer.is_alive()
        got, peer_updates = peer.result()
    assert got == payload
    assert peer_updates == 2  # its own update and the client's answer


def test_a_child_forked_while_the_socket_locks_were_held_gets_new_ones() -> None:
    """fork() while other threads are inside calls on a NautilusSocket (its
    read, write, handshake and state locks held): the child, which has none
    of those threads, gets unlocked locks instead of waiting for ever."""
    peer = Peer(echo)
    with connect(peer) as sock:

        def child() -> None:  # it neither sends nor reads on the parent's session
            now = [sock._read_lock, sock._write_lock, sock._hs_lock, sock._state_lock]
            assert not any(lock.locked() for lock in now)
            assert len(sock.export_keying_material(b"fork test", b"", 32)) == 32

        held = [sock._read_lock, sock._write_lock, sock._hs_lock, sock._state_lock]
        in_a_child_forked_with_locks_held(held, child)
        sock.sendall(b"still usable in the parent")
        assert recv_exactly(sock, 26) == b"still usable in the parent"
    assert peer.result() == 26


def test_shut_rd_wakes_a_blocked_reader_with_an_end_and_keeps_writing() -> None:
    """shutdown(SHUT_RD) while another thread waits in recv(): the reader gets
    b"" (it used to take its own empty read for a truncation by the peer,
    ConnectionLost, and fail the connection both ways); writing goes on, and
    the peer gets what follows and a clean end."""

    def handler(sock: NautilusSocket) -> bytes:
        got = bytearray()
        while data := sock.recv(100):
            got += data
        return bytes(got)

    peer = Peer(handler)
    with connect(peer, timeout=PEER_TIMEOUT) as sock:
        woken: list[object] = []
        reader = threading.Thread(target=lambda: woken.append(sock.recv(10)))
        reader.start()
        deadline = time.monotonic() + PEER_TIMEOUT
        while not sock._read_lock.locked():  # until it waits for the peer
            assert time.monotonic() < deadline, "the reader did not start"
            time.sleep(0.01)
        time.sleep(0.1)
        sock.shutdown(socket.SHUT_RD)
        reader.join(PEER_TIMEOUT)
        assert woken == [b""]
        assert sock.recv(10) == b""
        sock.sendall(b"still writing")
    assert peer.result() == b"still writing"


def test_a_failed_shutdown_leaves_the_socket_as_it_was() -> None:
    """shutdown() on a socket that is not connected raises ENOTCONN, as on a
    plain socket, and marks nothing: reading it still says "not connected"
    rather than "shut down"."""
    sock = client_ctx().wrap_socket(socket.socket(), do_handshake_on_connect=False)
    with sock:
        with pytest.raises(OSError, match="not connected") as failed:
            sock.shutdown(socket.SHUT_RD)
        assert failed.value.errno == errno.ENOTCONN
        assert not sock._eof
        assert not sock._read_shut
        with pytest.raises(OSError, match="not connected") as reading:
            sock.recv_message()
        assert reading.value.errno == errno.ENOTCONN


def test_close_reads_what_arrived_while_it_wrote_the_queued_output() -> None:
    """A timed-out sendall leaves output queued; close() writes it (here for
    a while: the peer reads slowly) and the peer answers the key update that
    went first meanwhile. That answer used to stay unread when the socket was
    closed, so the kernel reset the connection and the peer lost the end of
    the data and the close_notify."""
    size = 8_000_000

    def handler(sock: NautilusSocket) -> tuple[int, bool]:
        time.sleep(1.0)  # the client's sendall times out meanwhile
        got = 0
        buf = bytearray(1 << 16)
        while n := sock.recv_into(buf):
            got += n
            time.sleep(0.0005)
        return got, True

    peer = Peer(handler, timeout=30.0)
    sock = connect(peer, timeout=0.3)
    sock.update_keys(True)  # the server answers with a key update of its own
    with pytest.raises(TimeoutError):
        sock.sendall(os.urandom(size))
    sock.settimeout(30.0)
    sock.close()
    assert peer.result(40.0) == (size, True)  # all of it, then a clean end


def test_a_reset_after_our_shut_rdwr_reads_as_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """After shutdown(SHUT_RDWR), TCP may report ECONNRESET to a reader in
    another thread that had not reached its read yet: a peer that answers our
    close_notify, or closes with our close_notify unread, resets the
    connection (seen with `nautilus connect`, 5 times in 300 connections).
    This side asked for the end: recv() returns b"", not ConnectionLost. The
    test holds the reader past its checks until the shutdown, then gives it
    the reset."""
    shut = threading.Event()
    waiting = threading.Event()
    real_recv_into = nautilus.sockets._raw_recv_into

    client: list[NautilusSocket] = []

    def late_recv_into(sock: Any, *args: Any) -> int:
        if sock not in client or waiting.is_set():  # (the peer's reads pass through)
            return real_recv_into(sock, *args)
        waiting.set()
        assert shut.wait(PEER_TIMEOUT)
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    def handler(sock: NautilusSocket) -> bytes:
        return sock.recv(100)  # our close_notify: b""

    peer = Peer(handler)
    with connect(peer, timeout=PEER_TIMEOUT) as sock:
        sock.settimeout(None)
        client.append(sock)
        monkeypatch.setattr(nautilus.sockets, "_raw_recv_into", late_recv_into)
        got: list[object] = []

        def read() -> None:
            try:
                got.append(sock.recv(10))
            except Exception as exc:
                got.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        assert waiting.wait(PEER_TIMEOUT)
        sock.shutdown(socket.SHUT_RDWR)
        shut.set()
        reader.join(PEER_TIMEOUT)
        assert got == [b""]
        assert sock.recv(10) == b""
    assert peer.result() == b""


# ------------------------------------------- a hook raising a BaseException


class Interrupt(BaseException):
    """Not an Exception, as KeyboardInterrupt or SystemExit."""


def test_a_hook_raising_a_base_exception_fails_the_handshake_and_the_peer_learns_it() -> None:
    """The exception propagates from the call that ran the hook; the connection
    failed locally first (docs/protocol.md): its internal_error alert is sent,
    so the peer is told, not just cut off, and later calls fail at once."""
    step_id = "example.com/interrupted"

    def interrupt(ctx: nautilus.StepContext, payload: bytes | None) -> bytes:
        raise Interrupt("from the hook")

    def handshake_with(step: nautilus.CustomProtocolStep) -> nautilus.Handshake:
        hs = nautilus.Handshake()
        hs.add(step)
        return hs

    def server_side(sock: NautilusSocket) -> None:
        sock.recv(1)

    server = server_ctx(handshake=handshake_with(nautilus.CustomProtocolStep(step_id)))
    peer = Peer(server_side, server)
    client = client_ctx(
        handshake=handshake_with(nautilus.CustomProtocolStep(step_id, client_payload=interrupt))
    )
    raw = socket.create_connection(peer.address, timeout=PEER_TIMEOUT)
    sock = client.wrap_socket(raw, do_handshake_on_connect=False)
    with pytest.raises(Interrupt):
        sock.do_handshake()
    # The peer is told at once, and a later call fails at once (it used to
    # read, waiting for a peer that waited for us, until a timeout).
    with pytest.raises(nautilus.HandshakeError, match="internal_error"):
        peer.result(timeout=5)
    started = time.monotonic()
    with pytest.raises(nautilus.ClosedError, match="interrupted by Interrupt") as info:
        sock.sendall(b"x")
    assert time.monotonic() - started < 2
    assert isinstance(info.value.__cause__, nautilus.HandshakeError)
    assert isinstance(info.value.__cause__.__cause__, Interrupt)
    sock.close()


@pytest.mark.parametrize("timeout", [None, 0.0, 2.0])
def test_the_no_wait_socket_calls_never_wait(timeout: float | None) -> None:
    """_send_nowait and _recv_nowait (a flight's early parts, reading what has
    arrived before a close) return at once whatever the socket's timeout:
    Python's own send and recv with MSG_DONTWAIT wait for the whole timeout on
    a socket that has one (they poll first)."""
    ns = nautilus.sockets
    a, b = socket.socketpair()

    def fill() -> None:  # until the socket buffers are full
        while True:
            assert ns._send_nowait(a, b"x" * 65536) > 0

    with a, b:
        a.settimeout(timeout)
        buf = bytearray(16)
        start = time.monotonic()
        with pytest.raises(BlockingIOError):
            ns._recv_nowait(a, buf)  # nothing has arrived
        with pytest.raises(BlockingIOError):
            fill()
        assert time.monotonic() - start < 1.0  # (a 2 s timeout was not waited for)
        b.sendall(b"hello")
        for _ in range(100):  # (the bytes are there at once on a socketpair)
            try:
                assert ns._recv_nowait(a, buf) == 5
                break
            except BlockingIOError:
                time.sleep(0.01)
        assert bytes(buf[:5]) == b"hello"
        b.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        assert ns._recv_nowait(a, buf) == 0  # the end of the stream


class _HandlerRaised(Exception):
    """What a signal handler raises (a KeyboardInterrupt, in real life)."""


def _read_until_the_end(sock: NautilusSocket) -> tuple[bytes, BaseException | None]:
    """(a Peer's handler) What arrives until the end or a failure, and the failure."""
    received = bytearray()
    try:
        while chunk := sock.recv(1 << 16):
            received += chunk
    except nautilus.NautilusError as exc:
        return bytes(received), exc
    return bytes(received), None


def _a_bulk_write_interrupted(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    interrupting: Callable[[Any], Any],
    raised: type[Exception],
    timeout: float | None,
) -> None:
    """A 4 MiB sendall through a small socket buffer, with
    ``nautilus.sockets.<name>`` replaced by ``interrupting(<name>)``, which
    raises ``raised`` as a signal handler would: the call raises it, the
    connection fails, and the peer reads an authentic prefix, then the end."""
    size = 4 * 1024 * 1024
    data = random.randbytes(size)
    real = getattr(nautilus.sockets, name)
    peer = Peer(_read_until_the_end)
    with connect(peer) as sock:
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        monkeypatch.setattr(nautilus.sockets, name, interrupting(real))
        with pytest.raises(raised, match="the signal handler raised"):
            sock.sendall(data)
        monkeypatch.setattr(nautilus.sockets, name, real)
        _writes_are_refused_after_the_loss(sock)
    received, error = peer.result()
    assert isinstance(error, nautilus.ConnectionLost), repr(error)  # not IntegrityError
    assert 0 < len(received) < size
    assert data.startswith(received)


def _writes_are_refused_after_the_loss(sock: NautilusSocket) -> None:
    """A write interrupted by a signal handler failed the connection: later
    writes raise ClosedError, caused by ConnectionLost."""
    for write in (lambda: sock.sendall(b"more"), lambda: sock.send_message(b"next")):
        with pytest.raises(nautilus.ClosedError) as info:
            write()
        assert isinstance(info.value.__cause__, nautilus.ConnectionLost)


@pytest.mark.parametrize("raised", [_HandlerRaised, TimeoutError])
def test_a_signal_handler_raising_after_a_partial_write_never_breaks_a_record(
    raised: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal arrives while a blocking sendall waits for a full socket and
    its handler raises. The kernel's send() returns what it took so far, and
    Python runs the handler before the count reaches the caller: the count is
    dropped (a plain socketpair shows it: megabytes delivered of a send() that
    raised). Keeping the whole piece as unsent wrote those bytes twice, and the
    peer failed with IntegrityError, as for a forged record. The part written
    is unknown, so nothing more is: the connection fails (ConnectionLost, then
    ClosedError), and the peer sees an authentic prefix, then the end without
    close_notify. (A handler's TimeoutError, as alarm handlers raise, on a
    socket without a timeout: the same, and the call raises it as it is.)"""
    calls = [0]

    def interrupting(real_send: Any) -> Any:
        def send_then_handler_raises(sock: socket.socket, view: Any) -> int:
            sent: int = real_send(sock, view)
            calls[0] += 1
            if calls[0] == 3 and sent:  # (what CPython does when the handler raises)
                raise raised("the signal handler raised")
            return sent

        return send_then_handler_raises

    _a_bulk_write_interrupted(monkeypatch, "_raw_send", interrupting, raised, None)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_signal_handler_raising_right_after_a_piece_is_sealed_never_breaks_a_record(
    timeout: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk writers seal and send each piece in one C call; when the socket
    takes part of it, the rest is written next. A signal handler raising as
    that call returns (Python runs it before the result reaches the caller)
    dropped the rest of the record: the next write followed half a record
    and the peer failed as for a forged one. The connection fails instead
    (as for a handler raising during the wait, above): ConnectionLost, then
    ClosedError, and the peer sees an authentic prefix, then the end."""
    partial = [0]

    def interrupting(real: Any) -> Any:
        def seal_send_then_handler_raises(*args: Any) -> int:
            rc: int = real(*args)
            if rc == nautilus.sockets._NT_PARTIAL:
                partial[0] += 1
                if partial[0] == 2:
                    raise _HandlerRaised("the signal handler raised")
            return rc

        return seal_send_then_handler_raises

    _a_bulk_write_interrupted(monkeypatch, "_nt_seal_send", interrupting, _HandlerRaised, timeout)
    assert partial[0] == 2


@pytest.mark.parametrize("path", ["message lane", "general path"])
def test_a_signal_handler_raising_between_the_seal_and_the_write_never_skips_a_record(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """send_message seals a message as one record, then writes it; the general
    path (send_messages, small sends) takes the Connection's output, then writes
    it. A signal handler raising in between dropped a sealed record: the next
    one came with a sequence number the peer did not expect, and it failed as
    for a forged record. The connection fails instead (ConnectionLost, then
    ClosedError); the peer gets what came before, then the end."""
    name = "_seal_message" if path == "message lane" else "data_to_send"
    real = getattr(Connection, name)
    armed: list[Connection | None] = [None]  # the connection whose call raises

    def then_handler_raises(self: Connection, *args: Any) -> Any:
        out = real(self, *args)
        # (Only the writer's: the peer's thread, in this process too, also
        # takes its output, e.g. its session tickets, and took the raise.)
        if self is armed[0] and out:
            armed[0] = None
            raise _HandlerRaised("the signal handler raised")
        return out

    def handler(sock: NautilusSocket) -> tuple[list[bytes], BaseException | None]:
        got = []
        try:
            while True:
                got.append(sock.recv_message())
        except EOFError:
            return got, None
        except nautilus.NautilusError as exc:
            return got, exc

    peer = Peer(handler)
    with connect(peer) as sock:
        sock.send_message(b"first")
        sock.send_message(b"second")  # (the two first writes take the general path)
        monkeypatch.setattr(Connection, name, then_handler_raises)
        armed[0] = sock._conn
        write = (
            (lambda: sock.send_message(b"dropped"))
            if path == "message lane"
            else (lambda: sock.send_messages([b"dropped", b"too"]))
        )
        with pytest.raises(_HandlerRaised):
            write()
        monkeypatch.setattr(Connection, name, real)
        _writes_are_refused_after_the_loss(sock)
    got, error = peer.result()
    assert got == [b"first", b"second"]
    assert isinstance(error, nautilus.ConnectionLost), repr(error)  # not IntegrityError


def test_a_mode_change_by_another_thread_during_a_write_never_cuts_a_record() -> None:
    """A writer blocked in a large blocking sendall (the peer does not read yet);
    another thread makes the socket non-blocking. The rest of the write meets a
    full socket in non-blocking mode: the record it was writing must not be left
    half-written with the next one behind it (the peer would fail or wait for
    ever). The call accepts all of its data, as a non-blocking send does (the
    rest is queued), and the next call writes it first: the peer reads it all."""
    size = 4 * 1024 * 1024
    data = random.randbytes(size)
    release = threading.Event()

    def handler(sock: NautilusSocket) -> bytes:
        assert release.wait(PEER_TIMEOUT)
        return hashlib.sha256(recv_exactly(sock, size + 3)).digest()

    peer = Peer(handler)
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            sock.sendall(data)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with connect(peer) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        deadline = time.monotonic() + PEER_TIMEOUT
        while not sock._write_lock.locked() or select.select([], [sock], [], 0)[1]:
            assert time.monotonic() < deadline, "the writer did not block"
            time.sleep(0.01)
        sock.setblocking(False)  # the write in progress goes on as it was
        release.set()
        writer.join(PEER_TIMEOUT)
        assert not writer.is_alive()
        assert outcome == [None], outcome
        sock.settimeout(PEER_TIMEOUT)
        sock.sendall(b"end")  # writes what was queued first
        assert peer.result() == hashlib.sha256(data + b"end").digest()


# ------------------------------------------------------------- resets in the handshake


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_reset_right_behind_the_servers_flight_is_a_handshake_error() -> None:
    """The server sends its flight and resets the connection: the client's
    write of its own flight fails (EPIPE, ECONNRESET). During the handshake
    that is a HandshakeError (its ``__cause__`` the socket's error), as a
    reset read is, never the bare OSError; if that write went out before the
    reset came, the first read raises ConnectionLost. (Found by a fuzzing
    campaign.)"""
    for _ in range(5):
        listener = socket.create_server((HOST, 0))
        port = listener.getsockname()[1]

        def serve(listener: socket.socket) -> None:
            sock, _ = listener.accept()
            listener.close()
            conn = Connection(Context(SERVER_ID), "server")
            conn.start(time.time())
            while not (out := conn.data_to_send()):
                conn.receive_data(sock.recv(65536), time.time())
            sock.sendall(out)
            _reset(sock)

        t = threading.Thread(target=serve, args=(listener,))
        t.start()
        ctx = Context(trusted_peers=[SERVER_ID.public])
        try:
            sock = nautilus.create_connection((HOST, port), context=ctx, timeout=5)
        except nautilus.HandshakeError:
            pass
        else:  # our flight left before the reset came: the first read meets it
            with sock, pytest.raises(nautilus.ConnectionLost):
                sock.recv(100)
        t.join(5)


def test_a_client_resetting_after_its_hello_is_a_handshake_error_on_the_server() -> None:
    """The server's handshake has begun (it waits for the hello) when the
    client sends its hello and resets: reading the hello, or writing the
    flight that answers it, fails; either is a HandshakeError."""
    for _ in range(5):
        with socket.create_server((HOST, 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            sock = server_ctx().wrap_socket(
                accepted, server_side=True, do_handshake_on_connect=False
            )
            with sock:
                sock.setblocking(False)
                with pytest.raises(nautilus.WantReadError):
                    sock.do_handshake()  # begun: connected, waiting for the hello
                hello = Connection(Context(trusted_peers=[SERVER_ID.public]), "client")
                hello.start(time.time())
                client.sendall(hello.data_to_send())
                _reset(client)
                time.sleep(0.05)
                sock.settimeout(5)
                with pytest.raises(nautilus.HandshakeError) as caught:
                    sock.do_handshake()
                assert not isinstance(caught.value, nautilus.ClosedError)
