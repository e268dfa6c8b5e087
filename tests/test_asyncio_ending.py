"""nautilus.asyncio: how connections end when the peer stops reading, stalls
after its close_notify, or the application cancels; and argument checks.

The peer that stalls is a Connection driven by hand over a plain asyncio TCP
stream with a small receive buffer: it completes the handshake, then stops
reading, so our side's writes back up and its drain() blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import socket
import time
import weakref
from collections.abc import Coroutine
from typing import Any

import pytest

import nautilus
import nautilus.asyncio as na
from nautilus import Connection, Context, Identity
from nautilus.asyncio import _transport
from nautilus.protocol.events import HandshakeCompleted

HOST = "127.0.0.1"
SERVER_ID = Identity.generate()
LINGER = 1.5  # _transport._LINGER during these tests (5 s in use)
AT_ONCE = 0.5  # well within LINGER: woken by the close itself, not by the end of TCP


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client_ctx() -> Context:
    return Context(trusted_peers=[SERVER_ID.public])


@pytest.fixture
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_transport, "_LINGER", LINGER)


class StallingPeer:
    """A client Connection driven by hand; it can stop reading for good."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = Connection(client_ctx(), "client")

    @classmethod
    async def connect(cls, port: int) -> StallingPeer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        peer = cls(reader, writer)
        conn = peer.conn
        conn.start(time.time())
        writer.write(conn.data_to_send())
        while not any(isinstance(e, HandshakeCompleted) for e in iter(conn.next_event, None)):
            data = await reader.read(65536)
            assert data, "the server closed during the handshake"
            conn.receive_data(data, time.time())
            writer.write(conn.data_to_send())
        return peer

    def stop_reading(self) -> None:
        self.writer.transport.pause_reading()

    def send_close_notify(self) -> None:
        self.conn.close()
        self.writer.write(self.conn.data_to_send())

    def drop(self) -> None:
        self.writer.transport.abort()


async def _drain_then_set(drain: Any, done: asyncio.Event) -> None:
    await drain()
    done.set()


async def blocked_in_drain(send: Any, drain: Any) -> asyncio.Task[None]:
    """Write until drain() blocks (the peer has stopped reading); the task
    that is blocked in it."""

    async def flood() -> None:
        while True:
            send()
            await drain()

    task = asyncio.ensure_future(flood())
    for _ in range(200):  # the peer's buffers fill within a few MB
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
        drained = asyncio.Event()
        prober = asyncio.ensure_future(_drain_then_set(drain, drained))
        await asyncio.sleep(0.05)
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
        if not drained.is_set():
            return task
    raise AssertionError("drain() never blocked")


async def channel_to_stalling_peer() -> tuple[asyncio.Server, na.Channel, StallingPeer]:
    got: asyncio.Future[na.Channel] = asyncio.get_running_loop().create_future()
    server = await na.start_channel_server(got.set_result, HOST, 0, context=Context(SERVER_ID))
    peer = await StallingPeer.connect(server.sockets[0].getsockname()[1])
    channel = await asyncio.wait_for(got, 5)
    peer.stop_reading()
    return server, channel, peer


def _socket_closed(sock: Any) -> bool:
    """Closed: asyncio keeps the socket object with fd -1, uvloop drops it."""
    return sock is None or sock.fileno() == -1


def _closed_within(seconds: float, waiting: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
    return asyncio.wait_for(asyncio.shield(waiting), seconds)


# ------------------------------------------------- a peer that stopped reading


def test_channel_close_towards_a_peer_that_stopped_reading(short_linger: None) -> None:
    """close() wakes a drain() blocked for the peer at once (ClosedError), and
    the connection ends once the linger is over, although the peer never
    reads what was queued: the socket is closed, and wait_closed() reports
    that the close did not complete (what was queued is lost)."""

    async def main() -> None:
        server, channel, peer = await channel_to_stalling_peer()
        message = b"m" * 60_000
        task = await blocked_in_drain(lambda: channel.send_message(message), channel.drain)
        t0 = time.monotonic()
        channel.close()
        with pytest.raises(nautilus.ClosedError):
            await asyncio.wait_for(task, AT_ONCE)
        assert time.monotonic() - t0 < AT_ONCE
        with pytest.raises(nautilus.ConnectionLost, match="had not read"):  # not a clean close
            await _closed_within(LINGER + 3, channel.wait_closed())
        assert _socket_closed(channel.get_extra_info("socket"))
        peer.drop()
        server.close()
        await server.wait_closed()

    run(main())


def test_stream_close_towards_a_peer_that_stopped_reading(short_linger: None) -> None:
    async def main() -> None:
        got: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(writer)

        server = await na.start_server(handler, HOST, 0, context=Context(SERVER_ID))
        peer = await StallingPeer.connect(server.sockets[0].getsockname()[1])
        writer = await asyncio.wait_for(got, 5)
        peer.stop_reading()
        task = await blocked_in_drain(lambda: writer.write(b"s" * 60_000), writer.drain)
        writer.close()
        with pytest.raises(nautilus.ConnectionLost, match="had not read"):  # not a clean close
            await _closed_within(LINGER + 3, writer.wait_closed())
        assert _socket_closed(writer.transport.get_extra_info("socket"))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, nautilus.NautilusError):
            await task
        peer.drop()
        server.close()
        await server.wait_closed()

    run(main())


def test_peer_close_notify_then_stall(short_linger: None) -> None:
    """The peer sends close_notify, then neither reads nor closes TCP: the
    drain() blocked for it raises at once, and the connection ends in time."""

    async def main() -> None:
        server, channel, peer = await channel_to_stalling_peer()
        message = b"n" * 60_000
        task = await blocked_in_drain(lambda: channel.send_message(message), channel.drain)
        peer.send_close_notify()
        with pytest.raises(nautilus.ClosedError):
            await asyncio.wait_for(task, AT_ONCE)
        with pytest.raises(EOFError):
            await asyncio.wait_for(channel.recv_message(), 1)
        with pytest.raises(nautilus.ConnectionLost, match="had not read"):
            await _closed_within(LINGER + 3, channel.wait_closed())
        peer.drop()
        server.close()
        await server.wait_closed()

    run(main())


def test_channel_abort_after_close_ends_a_lingering_close() -> None:
    """With the usual 5 s linger: abort() after close() drops the connection now."""

    async def main() -> None:
        server, channel, peer = await channel_to_stalling_peer()
        message = b"a" * 60_000
        task = await blocked_in_drain(lambda: channel.send_message(message), channel.drain)
        channel.close()
        with pytest.raises(nautilus.ClosedError):
            await asyncio.wait_for(task, 1)
        with pytest.raises(asyncio.TimeoutError):
            await _closed_within(0.3, channel.wait_closed())  # lingering
        t0 = time.monotonic()
        channel.abort()
        await _closed_within(2, channel.wait_closed())
        assert time.monotonic() - t0 < 2
        peer.drop()
        server.close()
        await server.wait_closed()

    run(main())


def test_node_channel_close_wakes_a_drain_blocked_for_its_peer() -> None:
    """A node's peer stops taking messages (its queue fills, reading pauses,
    TCP backs up): closing the channel wakes our blocked drain() at once."""
    ids = [Identity.generate(), Identity.generate()]

    def ctx(me: int) -> Context:
        return Context(ids[me], client_auth="required", trusted_peers=[ids[1 - me].public])

    async def main() -> None:
        a, b = na.Node(ctx(0), HOST, 0), na.Node(ctx(1), HOST, 0)
        await a.start()
        await b.start()
        try:
            channel = await a.connect(b.address, b.peer_id)  # b never reads
            message = b"q" * 60_000
            task = await blocked_in_drain(lambda: channel.send_message(message), channel.drain)
            channel.close()
            with pytest.raises(nautilus.ClosedError):
                await asyncio.wait_for(task, AT_ONCE)
        finally:
            a.close()
            b.close()
            await a.wait_closed()
            await b.wait_closed()

    run(main())


@pytest.mark.skipif(
    os.environ.get("NAUTILUS_TEST_LOOP") == "uvloop",
    reason="uvloop's TCP transport cannot be patched (its write_eof is read-only)",
)
def test_close_when_the_half_close_fails_does_not_raise() -> None:
    """The peer reset the connection and TCP has not reported it yet:
    shutting down our side fails (ENOTCONN); close() still ends the
    connection and raises nothing."""

    async def main() -> None:
        got: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(writer)

        server = await na.start_server(handler, HOST, 0, context=Context(SERVER_ID))
        _reader, client = await na.open_connection(
            HOST, server.sockets[0].getsockname()[1], context=client_ctx()
        )
        writer = await asyncio.wait_for(got, 5)
        transport = writer.transport
        assert isinstance(transport, na.NautilusTransport)

        def refused() -> None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

        transport._tcp.write_eof = refused  # type: ignore[method-assign]
        writer.close()  # no exception
        with contextlib.suppress(nautilus.NautilusError, ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), 5)
        assert transport.is_closing()
        client.close()
        with contextlib.suppress(nautilus.NautilusError, ConnectionError):
            await client.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


# ----------------------------------------------------------------- cancellation


def test_cancel_during_the_tcp_connect_leaves_no_unretrieved_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel that lands while asyncio finishes the TCP connection (after
    our protocol's connection_made): the handshake waiter, which the closing
    transport then fails, is settled, not left with an unretrieved exception."""
    reported: list[dict[str, Any]] = []
    original = _transport._NautilusProtocol.connection_made
    cancel_me: list[asyncio.Task[Any]] = []

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        original(self, transport)
        if cancel_me:
            cancel_me.pop().cancel()  # lands in loop.create_connection's last await

    monkeypatch.setattr(_transport._NautilusProtocol, "connection_made", connection_made)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        server = await na.start_channel_server(
            lambda _ch: None, HOST, 0, context=Context(SERVER_ID)
        )
        port = server.sockets[0].getsockname()[1]
        for _ in range(5):
            task = asyncio.ensure_future(na.open_channel(HOST, port, context=client_ctx()))
            cancel_me.append(task)
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)  # the transport closes, connection_lost runs
        gc.collect()
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()

    run(main())
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported


def test_an_engine_that_raises_in_start_fails_the_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection.start() must not raise; if it does, the connect fails at
    once with ConnectionLost (caused by it) rather than waiting for ever."""

    def start(self: Connection, now: float | None = None, **kw: Any) -> None:
        raise RuntimeError("broken engine")

    async def main() -> None:
        server = await na.start_channel_server(
            lambda _ch: None, HOST, 0, context=Context(SERVER_ID)
        )
        port = server.sockets[0].getsockname()[1]
        with monkeypatch.context() as patch:
            patch.setattr(Connection, "start", start)
            with pytest.raises(nautilus.ConnectionLost) as info:
                await asyncio.wait_for(na.open_channel(HOST, port, context=client_ctx()), 5)
        assert isinstance(info.value.__cause__, RuntimeError)
        channel = await na.open_channel(HOST, port, context=client_ctx())  # still serving
        channel.close()
        await channel.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


# ------------------------------------------------------------- argument checks


def test_transport_and_channel_argument_checks() -> None:
    class Data(bytes):
        pass

    async def main() -> None:
        got: asyncio.Future[na.Channel] = asyncio.get_running_loop().create_future()
        server = await na.start_channel_server(got.set_result, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TypeError, match="early_data"):
            await na.open_channel(HOST, port, context=client_ctx(), early_data=b"x")
        channel = await na.open_channel(HOST, port, context=client_ctx())
        served = await asyncio.wait_for(got, 5)
        with pytest.raises(TypeError, match="contiguous"):
            channel.send_message(memoryview(b"abcdef")[::2])
        with pytest.raises(TypeError, match="contiguous"):
            channel.send_messages([b"ok", memoryview(b"abcdef")[::2]])
        channel.send_message(Data(b"subclass"))  # a bytes subclass is bytes-like
        assert await asyncio.wait_for(served.recv_message(), 5) == b"subclass"
        channel.close()
        await channel.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_stream_transport_argument_checks_and_a_bytes_subclass() -> None:
    class Data(bytes):
        pass

    async def main() -> None:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.put_nowait(await reader.readexactly(8))
            writer.close()

        server = await na.start_server(handler, HOST, 0, context=Context(SERVER_ID))
        _reader, writer = await na.open_connection(
            HOST, server.sockets[0].getsockname()[1], context=client_ctx()
        )
        transport = writer.transport
        assert isinstance(transport, na.NautilusTransport)
        with pytest.raises(TypeError, match="request_peer"):
            transport.update_keys("no")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="high"):
            transport.set_write_buffer_limits("x")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="high must be None or an int, not bool"):
            transport.set_write_buffer_limits(True)
        with pytest.raises(ValueError, match="low must not be negative"):
            transport.set_write_buffer_limits(100, -1)
        writer.write(Data(b"subclass"))
        assert await asyncio.wait_for(got.get(), 5) == b"subclass"
        writer.close()
        with contextlib.suppress(nautilus.NautilusError, ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_connection_update_keys_checks_its_argument() -> None:
    conn = Connection(client_ctx(), "client")
    with pytest.raises(TypeError, match="request_peer"):
        conn.update_keys(1)  # type: ignore[arg-type]


# ------------------------------------------------------------ nothing left behind


def test_a_finished_server_connection_is_freed_without_the_garbage_collector() -> None:
    """Once a server connection has ended and its handler has returned, its
    Connection and protocol are freed by reference counting alone: they form no
    reference cycle (which only the garbage collector could break, with all
    they hold, after a while)."""
    refs: list[weakref.ref[Connection]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refs.append(weakref.ref(writer.transport._conn))  # type: ignore[attr-defined]
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await na.start_server(handle, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await na.open_connection(HOST, port, context=client_ctx())
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        for _ in range(20):  # the server's side ends within a few loop iterations
            if refs and refs[0]() is None:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    gc.collect()
    gc.disable()
    try:
        run(main())
        assert len(refs) == 1
        assert refs[0]() is None
        left = [o for o in gc.get_objects() if isinstance(o, _transport._NautilusProtocol)]
        assert left == []
    finally:
        gc.enable()


def test_a_client_that_writes_and_closes_at_once_keeps_its_ticket() -> None:
    """The server asks for the client's identity, so its ticket follows the
    client's flight: a client that writes and closes without reading gets it
    during its lingering close, and its next connection resumes."""
    client_id = Identity.generate()
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.read())
        writer.close()

    async def main() -> list[tuple[bool, int]]:
        sctx = Context(SERVER_ID, client_auth="required", trusted_peers=[client_id.public])
        server = await na.start_server(handle, HOST, 0, context=sctx)
        port = server.sockets[0].getsockname()[1]
        cctx = Context(client_id, trusted_peers=[SERVER_ID.public])
        seen = []
        for _ in range(3):
            _reader, writer = await na.open_connection(HOST, port, context=cctx)
            writer.write(b"request")
            info = writer.get_extra_info("nautilus")
            writer.close()
            await writer.wait_closed()
            seen.append((info.resumed, len(cctx.session_cache)))
            conn = writer.transport._conn  # type: ignore[attr-defined]
            assert conn._keys is None  # the last keys went at the end
            assert conn._opener is None
        server.close()
        await server.wait_closed()
        return seen

    assert run(main()) == [(False, 1), (True, 1), (True, 1)]
    assert requests == [b"request"] * 3


def test_a_ticket_record_cut_by_the_close_is_completed() -> None:
    """Half of the ticket's record has arrived (the adapter keeps it) when
    the client writes and closes; the rest arrives during the lingering close."""
    client_id = Identity.generate()
    sctx = Context(SERVER_ID, client_auth="required", trusted_peers=[client_id.public])
    listener = socket.create_server((HOST, 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    received = []

    def serve() -> None:
        """A server Connection driven by hand that sends its ticket's record in
        two parts: the second once the client's request and close have come."""
        raw, _ = listener.accept()
        with raw:
            raw.settimeout(10)
            conn = Connection(sctx, "server")
            conn.start(time.time())
            while not conn.handshake_complete:
                conn.receive_data(raw.recv(65536), time.time())
                out = conn.data_to_send()
                if not conn.handshake_complete:
                    raw.sendall(out)
            half = len(out) // 2  # (out: the ticket's record)
            raw.sendall(out[:half])
            while data := raw.recv(65536):
                received.append(data)
                if len(received) == 1:
                    time.sleep(0.2)  # (the close_notify follows the request)
                    raw.sendall(out[half:])

    async def main() -> int:
        cctx = Context(client_id, trusted_peers=[SERVER_ID.public])
        task = asyncio.get_running_loop().run_in_executor(None, serve)
        _reader, writer = await na.open_connection(HOST, port, context=cctx, server_name="srv")
        await asyncio.sleep(0.2)  # the ticket's first half has arrived
        writer.write(b"request")
        writer.close()
        await writer.wait_closed()
        await task
        return len(cctx.session_cache)

    with listener:
        assert run(main()) == 1
    assert received


# ------------------------------------------------------------- resets by the peer


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the peer's next call fails at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def _server_flight_then_reset(listener: socket.socket) -> None:
    """A server that sends its whole flight, then resets the connection
    without waiting for the client's (blocking, in a thread)."""
    sock, _ = listener.accept()
    listener.close()
    with contextlib.closing(sock):
        conn = Connection(Context(SERVER_ID), "server")
        conn.start(time.time())
        while not (out := conn.data_to_send()):
            data = sock.recv(65536)
            if not data:
                return
            conn.receive_data(data, time.time())
        sock.sendall(out)
        _reset(sock)


def test_a_reset_right_behind_the_servers_flight_is_a_nautilus_error() -> None:
    """The client completes its handshake from the server's flight, and its
    write of its own flight already meets the reset: the connection is lost
    before ``create_connection`` resumes. It raises a HandshakeError, or
    returns streams whose first read raises ConnectionLost; never an
    AssertionError (the transport was let go of with the lost connection)
    or a bare OSError. (Found by a fuzzing campaign over loopback.)"""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        outcomes = set()
        for _ in range(5):
            listener = socket.create_server((HOST, 0))
            port = listener.getsockname()[1]
            evil = loop.run_in_executor(None, _server_flight_then_reset, listener)
            try:
                reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            except nautilus.HandshakeError:
                outcomes.add("HandshakeError")
            else:
                with pytest.raises(nautilus.ConnectionLost):
                    await asyncio.wait_for(reader.read(100), 5)
                writer.close()
                with pytest.raises(nautilus.ConnectionLost):
                    await writer.wait_closed()
                outcomes.add("ConnectionLost")
            await evil
        assert outcomes

    run(main())


def test_drain_after_the_tcp_transport_failed_raises_connection_lost() -> None:
    """Between a TCP failure (a reset: the TCP transport is closing at once)
    and its ``connection_lost()`` on the loop's next round, the connection is
    not yet closing: a write then pauses the writer, and ``drain()`` waits
    for the report and raises the connection's error, ``ConnectionLost``,
    not asyncio's bare ``ConnectionResetError('Connection lost')``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(nautilus.NautilusError, ConnectionError):
            await reader.read()
        writer.close()

    async def main() -> None:
        server = await na.start_server(handle, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await na.open_connection(HOST, port, context=client_ctx())
        transport = writer.transport
        assert isinstance(transport, na.NautilusTransport)
        transport._tcp.abort()  # as a reset does: TCP closes now, reports it next round
        assert not transport.is_closing()
        writer.write(b"into a connection that is gone")
        with pytest.raises(nautilus.ConnectionLost):
            await asyncio.wait_for(writer.drain(), 5)
        assert transport.is_closing()
        with pytest.raises(nautilus.ConnectionLost):
            await reader.read(100)
        server.close()
        await server.wait_closed()

    run(main())
