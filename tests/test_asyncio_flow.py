"""nautilus.asyncio write coalescing and paused reading, over loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import nautilus
import nautilus.asyncio as na
from nautilus import Context, Identity
from nautilus.asyncio import _transport
from nautilus.protocol.connection import Connection
from nautilus.record import ContentType

HOST = "127.0.0.1"
SERVER_ID = Identity.generate()


def run(coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client_ctx() -> Context:
    return Context(trusted_peers=[SERVER_ID.public])


class Recorder(asyncio.Protocol):
    def __init__(self, *, paused: bool = False, echo: bool = False) -> None:
        self.paused = paused
        self.echo = echo
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.got = asyncio.Event()
        self.calls_while_paused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.paused:
            transport.pause_reading()
            assert not transport.is_reading()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_reading() and not self.transport.is_closing():
            self.calls_while_paused += 1
        self.data += data
        self.got.set()
        if self.echo:
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.got.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.got.set()
        if not self.lost.done():
            self.lost.set_result(exc)


async def _server(
    cls: type[Recorder] = Recorder, ctx: Context | None = None, **kw: Any
) -> tuple[asyncio.Server, int, list[Recorder]]:
    """A Nautilus protocol server whose protocols are ``cls(**kw)``, kept in a list."""
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(cls(**kw))
        return made[-1]

    server = await na.create_server(factory, HOST, 0, context=ctx or Context(SERVER_ID))
    return server, server.sockets[0].getsockname()[1], made


async def _wait(cond: Callable[[], bool], proto: Recorder, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not cond():
            proto.got.clear()
            await proto.got.wait()

    await asyncio.wait_for(loop(), timeout)


async def _first(made: list[Recorder]) -> Recorder:
    while not made:  # the server completes its handshake one flight after the client
        await asyncio.sleep(0.01)
    return made[0]


# ----------------------------------------------------------------- coalescing


def test_small_writes_in_one_iteration_arrive_whole_and_in_order() -> None:
    async def main() -> None:
        server, port, _servers = await _server(echo=True)
        transport, proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        pieces = [random.randbytes(random.randrange(1, 3000)) for _ in range(500)]
        pieces.append(random.randbytes(100_000))  # a large one after small ones
        pieces += [bytearray(random.randbytes(10)), memoryview(random.randbytes(7))]  # type: ignore[list-item]
        expected = b"".join(bytes(p) for p in pieces)
        for i, p in enumerate(pieces):
            transport.write(p)
            if i == 1:
                assert transport.get_write_buffer_size() >= len(p)  # collected, not sent yet
        await _wait(lambda: len(proto.data) >= len(expected), proto)
        assert bytes(proto.data) == expected
        transport.close()
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(main())


def test_a_buffer_changed_after_write_is_sent_as_it_was() -> None:
    async def main() -> None:
        server, port, servers = await _server()
        transport, _proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        buf = bytearray(b"a" * 100)
        transport.write(buf)  # sent at once
        buf[:] = b"b" * 100
        transport.write(buf)  # collected
        buf[:] = b"c" * 100
        transport.write(memoryview(buf))  # collected
        buf[:] = b"d" * 100
        transport.close()
        while not servers or "lost" not in servers[0].events:
            await asyncio.sleep(0.01)
        assert bytes(servers[0].data) == b"a" * 100 + b"b" * 100 + b"c" * 100
        server.close()
        await server.wait_closed()

    run(main())


def test_writes_then_close_deliver_everything_then_eof() -> None:
    got: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        try:
            data = await reader.read()
            end = "eof"
        except Exception as exc:
            end = repr(exc)
        got.put_nowait((data, end))
        writer.close()

    async def main() -> None:
        server = await na.start_server(handler, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await na.open_connection(HOST, port, context=client_ctx())
        sent = bytearray()
        for _ in range(300):
            piece = random.randbytes(random.randrange(1, 2000))
            writer.write(piece)
            sent += piece
        # no drain, no yield: close must seal and send what was collected first
        writer.close()
        data, end = await got.get()
        assert end == "eof"
        assert data == sent
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_abort_drops_collected_writes() -> None:
    async def main() -> None:
        server, port, servers = await _server()
        transport, _proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        transport.write(b"x" * 10)
        transport.write(b"y" * 10)  # collected
        assert transport.get_write_buffer_size() >= 10
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        while not servers or "lost" not in servers[0].events:
            await asyncio.sleep(0.01)
        assert isinstance(await servers[0].lost, nautilus.ConnectionLost)
        assert b"y" not in servers[0].data
        server.close()
        await server.wait_closed()

    run(main())


class MessageRecorder(Recorder):
    """Records stream data and messages in arrival order: ("d", bytes) / ("m", bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[str, bytes]] = []
        self.messages = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.items.append(("d", bytes(data)))

    def messages_received(self, messages: tuple[bytes, ...]) -> None:
        self.items += [("m", m) for m in messages]
        self.messages += len(messages)
        self.got.set()


def _normal(items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Adjacent stream pieces joined (records may split or join them)."""
    out: list[tuple[str, bytes]] = []
    for kind, data in items:
        if kind == "d" and out and out[-1][0] == "d":
            out[-1] = ("d", out[-1][1] + data)
        elif kind == "m" or data:
            out.append((kind, data))
    return out


async def _message_link() -> tuple[asyncio.Server, na.NautilusTransport, list[Any]]:
    """A MessageRecorder server, and a client transport to it (its send_messages)."""
    server, port, servers = await _server(MessageRecorder)
    transport, _proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
    assert isinstance(transport, na.NautilusTransport)
    return server, transport, servers


def test_message_batches_in_one_iteration_arrive_whole_and_in_order() -> None:
    """Batches sent in one loop iteration are held and sent together (more
    than 192 KiB of them too), in order with stream writes between them; what
    is held counts in the write buffer size."""

    async def main() -> None:
        server, transport, servers = await _message_link()
        expected: list[tuple[str, bytes]] = []
        rng = random.Random(8)
        for i in range(120):
            batch = [rng.randbytes(rng.randrange(0, 900)) for _ in range(rng.randrange(1, 40))]
            transport.send_messages(batch)
            expected += [("m", m) for m in batch]
            if i == 1:  # the first batch left; this one waits for the end of the iteration
                assert transport.get_write_buffer_size() >= sum(map(len, batch))
            if i % 7 == 3:
                piece = rng.randbytes(rng.randrange(1, 500))
                transport.write(piece)
                expected.append(("d", piece))
        count = sum(kind == "m" for kind, _ in expected)
        proto = await _first(servers)
        await _wait(lambda: proto.messages >= count, proto)
        assert _normal(proto.items) == _normal(expected)
        transport.close()
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(main())


def test_message_batches_of_one_iteration_are_sealed_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first batch of a loop iteration is sealed at once; the batches
    that follow it are framed and sealed together in one call (full records,
    rather than a short one per batch), at the end of the iteration or once
    _COALESCE_MESSAGES bytes (192 KiB) wait; a write between batches seals those
    before it."""
    sealed: list[tuple[int, int]] = []
    real = Connection._seal_application

    def spy(self: Connection, data: Any, ctype: int) -> None:
        if self._client:
            sealed.append((ctype, len(data)))
        real(self, data, ctype)

    monkeypatch.setattr(Connection, "_seal_application", spy)

    async def main() -> None:
        server, transport, servers = await _message_link()
        batch = [bytes([i]) * 256 for i in range(64)]
        framed = 64 * (4 + 256)
        for _ in range(4):
            transport.send_messages(batch)
        assert [ctype for ctype, _ in sealed] == [ContentType.MESSAGE]  # the first, at once
        assert transport.get_write_buffer_size() >= 3 * framed
        await asyncio.sleep(0)  # the loop's next callbacks seal and send the others
        assert sealed[1:] == [(ContentType.MESSAGE, 3 * framed)]
        sealed.clear()
        await asyncio.sleep(0)
        transport.send_messages(batch)  # at once
        for _ in range(2):
            transport.send_messages(batch)
        transport.write(b"data")  # seals the two batches first
        for _ in range(300):  # 300 x 16,640 bytes: sealed every 12 batches
            transport.send_messages(batch)
        await asyncio.sleep(0)
        sizes = [size for ctype, size in sealed if ctype == ContentType.MESSAGE]
        assert sizes[:2] == [framed, 2 * framed]
        assert (ContentType.APPLICATION_DATA, 4) in sealed
        per_seal = -(-_transport._COALESCE_MESSAGES // framed)  # batches: the first that reach it
        rest = [300 % per_seal * framed] if 300 % per_seal else []
        assert sizes[2:] == [per_seal * framed] * (300 // per_seal) + rest
        proto = await _first(servers)
        await _wait(lambda: proto.messages >= 307 * 64, proto)
        assert (
            proto.items
            == [("m", m) for m in batch] * 7 + [("d", b"data")] + [("m", m) for m in batch] * 300
        )
        transport.close()
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(main())


def test_message_batches_then_close_deliver_everything_then_eof() -> None:
    async def main() -> None:
        server, transport, servers = await _message_link()
        sent = [random.randbytes(300) for _ in range(2000)]
        for i in range(0, len(sent), 50):
            transport.send_messages(sent[i : i + 50])
        transport.close()  # no yield: what is held goes out before close_notify
        proto = await _first(servers)
        assert await proto.lost is None
        assert proto.items == [("m", m) for m in sent]
        assert proto.events == ["eof", "lost"]
        server.close()
        await server.wait_closed()

    run(main())


def test_abort_drops_held_message_batches() -> None:
    async def main() -> None:
        server, transport, servers = await _message_link()
        transport.send_messages([b"first"])  # sent at once
        transport.send_messages([b"held"] * 10)
        assert transport.get_write_buffer_size() >= 40
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        proto = await _first(servers)
        assert isinstance(await proto.lost, nautilus.ConnectionLost)
        assert ("m", b"held") not in proto.items
        server.close()
        await server.wait_closed()

    run(main())


class CountingSelector(selectors.DefaultSelector):
    """Counts the event loop's iterations (one select() each)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.calls += 1
        return super().select(timeout)


class ThreadedChannelServer:
    """A channel server with its own event loop (on a CountingSelector) in a
    thread, so that the test's loop can block without holding it up."""

    def __init__(self, handler: Callable[[na.Channel], Coroutine[Any, Any, None]]) -> None:
        self.selector = CountingSelector()
        self._handler = handler
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadedChannelServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.SelectorEventLoop(self.selector)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        server = await na.start_channel_server(self._handler, HOST, 0, context=Context(SERVER_ID))
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop
        server.close()
        await server.wait_closed()


def _run_on(selector: selectors.BaseSelector, coro: Coroutine[Any, Any, Any]) -> Any:
    loop = asyncio.SelectorEventLoop(selector)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 15))
    finally:
        loop.close()


def test_request_response_costs_each_side_two_loop_iterations_per_message() -> None:
    """A lone write (the reply to what was just read, or the next request)
    leaves at once and schedules nothing: each side's loop runs twice per
    round trip (the read, then the task that answers it), not three times."""

    async def echo(channel: na.Channel) -> None:
        with contextlib.suppress(EOFError):
            while True:
                channel.send_message(await channel.recv_message())
                await channel.drain()
        channel.close()

    client_selector = CountingSelector()
    with ThreadedChannelServer(echo) as server:

        async def main() -> tuple[float, float]:
            channel = await na.open_channel(HOST, server.port, context=client_ctx())
            for _ in range(5):
                channel.send_message(b"warm")
                assert await channel.recv_message() == b"warm"
            count = 300
            client_before, server_before = client_selector.calls, server.selector.calls
            for i in range(count):
                message = i.to_bytes(4, "big") * 64
                channel.send_message(message)
                await channel.drain()
                assert await channel.recv_message() == message
            client = (client_selector.calls - client_before) / count
            served = (server.selector.calls - server_before) / count
            channel.close()
            await channel.wait_closed()
            return client, served

        client, served = _run_on(client_selector, main())
    assert client <= 2.1, client
    assert served <= 2.1, served


def test_a_sender_that_does_not_yield_learns_of_a_reset_at_its_next_drain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The peer is gone (it aborted; our writes meet a reset): the TCP write
    fails, and drain() (which returns at once while writing is not paused)
    waits for the end and raises it, rather than letting a sender that never
    yields write into a closed transport for ever."""
    aborted = threading.Event()

    async def abort(channel: na.Channel) -> None:
        channel.abort()
        aborted.set()

    with ThreadedChannelServer(abort) as server:

        async def main() -> int:
            channel = await na.open_channel(HOST, server.port, context=client_ctx())
            assert aborted.wait(10)  # blocking: this loop does not run meanwhile
            time.sleep(0.05)
            batch = [b"m" * 256] * 64
            for i in range(2000):
                try:
                    channel.send_messages(batch)
                    await channel.drain()
                except nautilus.ConnectionLost:
                    assert channel.is_closing()
                    with pytest.raises(nautilus.ClosedError):
                        channel.send_messages(batch)
                    return i
            raise AssertionError("2000 batches sent to a reset connection, and no error")

        with caplog.at_level(logging.WARNING, logger="asyncio"):
            sent = _run_on(selectors.DefaultSelector(), main())
    assert sent < 50
    assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]


def test_a_write_in_a_later_iteration_is_sent_though_nothing_follows() -> None:
    """After a write, one made in a later loop iteration with nothing received
    in between is collected, and sent by the loop's next callbacks even if
    nothing else is written; so is a message batch."""

    async def main() -> None:
        server, transport, servers = await _message_link()
        transport.write(b"first")  # sent at once
        for _ in range(3):
            await asyncio.sleep(0)
        transport.write(b"second")
        proto = await _first(servers)
        await _wait(lambda: len(proto.data) >= 11, proto)
        assert bytes(proto.data) == b"firstsecond"
        transport.send_messages([b"m1"])  # sent at once
        for _ in range(3):
            await asyncio.sleep(0)
        transport.send_messages([b"m2", b"m3"])
        await _wait(lambda: proto.messages >= 3, proto)
        assert _normal(proto.items) == [
            ("d", b"firstsecond"),
            ("m", b"m1"),
            ("m", b"m2"),
            ("m", b"m3"),
        ]
        transport.close()
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(main())


def test_write_type_errors() -> None:
    async def main() -> None:
        server, port, servers = await _server()
        transport, proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        with pytest.raises(TypeError):
            transport.write("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            transport.write(memoryview(b"abcdef")[::2])
        transport.write(b"")
        transport.write(b"ok")
        with pytest.raises(TypeError):  # refused when collected too (the write above corks)
            transport.write(memoryview(b"abcdef")[::2])
        with pytest.raises(TypeError):
            transport.write(123)  # type: ignore[arg-type]
        transport.close()
        await proto.lost
        with pytest.raises(TypeError):
            transport.write(123)  # type: ignore[arg-type]
        transport.write(b"dropped")
        assert servers[0].data == b"ok"
        server.close()
        await server.wait_closed()

    run(main())


def test_writes_after_close_are_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """As asyncio's own transports: writing to a closed transport does not
    raise, the data goes nowhere, and a writer that keeps at it is warned once."""

    async def main() -> None:
        server, port, servers = await _server()
        transport, proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        transport.write(b"before")
        await _wait(lambda: bool(servers and servers[0].data), servers[0] if servers else proto)
        transport.close()
        with caplog.at_level(logging.WARNING, logger="nautilus"):
            for _ in range(3 * _transport._WARN_WRITES_AFTER_CLOSE):
                transport.write(b"dropped")
        warnings = [r for r in caplog.records if "write() on a closed connection" in r.message]
        assert len(warnings) == 1
        await proto.lost
        await _wait(lambda: "lost" in servers[0].events, servers[0])
        assert servers[0].data == b"before"
        server.close()
        await server.wait_closed()

    run(main())


# --------------------------------------------------------------- paused reading


def test_paused_reading_holds_data_and_eof_until_resumed() -> None:
    async def main() -> None:
        server, port, servers = await _server(paused=True)
        transport, proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        payload = random.randbytes(100_000)
        transport.write(payload)
        transport.close()  # close_notify, then the client's FIN
        srv = await _first(servers)
        await asyncio.sleep(0.3)
        assert srv.data == b""
        assert srv.events == []
        assert srv.transport is not None
        assert not srv.transport.is_reading()
        srv.transport.resume_reading()
        assert srv.transport.is_reading()
        await _wait(lambda: "lost" in srv.events, srv)
        assert bytes(srv.data) == payload
        assert srv.events == ["eof", "lost"]
        assert await srv.lost is None
        assert srv.calls_while_paused == 0
        assert await proto.lost is None  # the server's reply close_notify ended the linger
        server.close()
        await server.wait_closed()

    run(main())


def test_pausing_again_inside_data_received_holds_the_rest() -> None:
    class Stepper(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.transport is not None
            self.transport.pause_reading()

    async def main() -> None:
        server, port, servers = await _server(Stepper, paused=True)
        transport, _proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        payload = random.randbytes(1 << 20)
        transport.write(payload)
        srv = await _first(servers)
        assert srv.transport is not None
        while len(srv.data) < len(payload):
            before = len(srv.data)
            srv.transport.resume_reading()
            for _ in range(100):
                await asyncio.sleep(0)
                if len(srv.data) > before:
                    break
            else:
                await asyncio.sleep(0.05)
            assert not srv.transport.is_reading()
        assert bytes(srv.data) == payload
        assert srv.calls_while_paused == 0
        transport.close()
        srv.transport.resume_reading()
        await _wait(lambda: "lost" in srv.events, srv)
        assert srv.events == ["eof", "lost"]
        server.close()
        await server.wait_closed()

    run(main())


def test_truncation_while_paused_is_reported_after_the_data() -> None:
    async def main() -> None:
        server, port, servers = await _server(paused=True)
        transport, _proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        transport.write(b"before the cut")
        await asyncio.sleep(0.1)
        transport.abort()  # FIN without close_notify
        srv = await _first(servers)
        await asyncio.sleep(0.2)
        assert srv.events == []
        assert srv.transport is not None
        srv.transport.resume_reading()
        await _wait(lambda: "lost" in srv.events, srv)
        assert bytes(srv.data) == b"before the cut"
        assert isinstance(await srv.lost, nautilus.ConnectionLost)
        server.close()
        await server.wait_closed()

    run(main())


def test_close_while_paused_with_held_data() -> None:
    async def main() -> None:
        server, port, servers = await _server(paused=True)
        transport, proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        transport.write(random.randbytes(600_000))  # past the held limit: TCP reading pauses
        await asyncio.sleep(0.2)
        srv = await _first(servers)
        assert srv.transport is not None
        srv.transport.close()  # without ever reading
        assert await srv.lost is None
        assert srv.data == b""
        exc = await proto.lost
        assert exc is None or isinstance(exc, nautilus.NautilusError)
        server.close()
        await server.wait_closed()

    run(main())


def test_stream_reader_flow_control_with_large_transfer() -> None:
    payload = random.randbytes(8 << 20)

    digests: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        n = 0
        while data := await reader.read(5000):  # small reads: the reader pauses often
            h.update(data)
            n += len(data)
            if n % 7 == 0:
                await asyncio.sleep(0.001)
        digests.put_nowait(h.digest())
        writer.close()

    async def main() -> None:
        server = await na.start_server(handler, HOST, 0, context=Context(SERVER_ID), limit=4096)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await na.open_connection(HOST, port, context=client_ctx())
        view = memoryview(payload)
        for pos in range(0, len(payload), 1000):
            writer.write(view[pos : pos + 1000])
            await writer.drain()
        writer.close()
        assert await digests.get() == hashlib.sha256(payload).digest()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main(), timeout=60)


def test_early_data_waits_while_the_server_application_has_paused_reading() -> None:
    async def main() -> None:
        sctx = Context(SERVER_ID, early_data=True)
        cctx = Context(trusted_peers=[SERVER_ID.public], early_data=True)
        server, port, made = await _server(ctx=sctx, paused=True)
        for attempt in range(2):
            transport, _proto = await na.create_connection(
                Recorder, HOST, port, context=cctx, early_data=b"early;"
            )
            accepted = transport.get_extra_info("nautilus").early_data_accepted
            assert accepted == (attempt == 1)  # the second one resumes, with 0-RTT
            transport.write(b"after")
            while len(made) <= attempt:  # the server completes one flight after the client
                await asyncio.sleep(0.01)
            srv = made[attempt]
            await asyncio.sleep(0.2)
            assert srv.data == b""
            assert srv.transport is not None
            srv.transport.resume_reading()
            await _wait(lambda srv=srv: len(srv.data) >= 11, srv)  # type: ignore[misc]
            assert bytes(srv.data) == b"early;after"
            assert srv.calls_while_paused == 0
            transport.close()
            await _wait(lambda srv=srv: "lost" in srv.events, srv)  # type: ignore[misc]
        server.close()
        await server.wait_closed()

    run(main())


async def _early_data_pair() -> tuple[
    list[dict[str, Any]], Context, Context, asyncio.Server, int, list[Recorder]
]:
    """Contexts allowing 0-RTT, a server, and a client ticket from a first
    connection; what the loop reports is collected in the list returned."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    sctx = Context(SERVER_ID, early_data=True)
    cctx = Context(trusted_peers=[SERVER_ID.public], early_data=True)
    server, port, made = await _server(ctx=sctx)
    _reader, writer = await na.open_connection(HOST, port, context=cctx)  # a ticket
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    return errors, sctx, cctx, server, port, made


def test_refused_early_data_and_a_failed_handshake_in_one_read() -> None:
    """The server refuses the early data and then the handshake itself (it now
    requires client authentication): both arrive in one read. The client gets
    the handshake's own error, the server the client's alert, and nothing is
    reported to the loop (resending the refused data raised ClosedError there,
    and the real error was lost)."""

    async def main() -> None:
        errors, sctx, cctx, server, port, _made = await _early_data_pair()
        sctx.client_auth = "required"
        with pytest.raises(nautilus.AuthenticationFailed, match="client authentication"):
            await asyncio.wait_for(
                na.open_connection(HOST, port, context=cctx, early_data=b"GET /"), 5
            )
        await asyncio.sleep(0.1)
        assert errors == []
        server.close()
        await server.wait_closed()

    run(main())


def test_reset_after_early_data_before_the_handshake_completes() -> None:
    """The server holds accepted 0-RTT data until its application exists; a
    client that resets the connection before its Finished leaves nothing behind."""

    async def main() -> None:
        errors, _sctx, cctx, server, port, made = await _early_data_pair()
        conn = nautilus.Connection(cctx, "client", server_name=f"{HOST}:{port}")
        reader, writer = await asyncio.open_connection(HOST, port)
        conn.start(time.time(), early_data=b"early")
        writer.write(conn.data_to_send())
        flight = await asyncio.wait_for(reader.read(65536), 5)
        conn.receive_data(flight, time.time())
        assert conn.session is not None
        assert conn.session.early_data_accepted
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, without the client's Finished
        await asyncio.sleep(0.3)
        assert len(made) == 1  # only the first connection reached the application
        assert errors == []
        server.close()
        await server.wait_closed()

    run(main())


def test_a_producer_writing_in_a_callback_until_paused_is_paused() -> None:
    """The asyncio producer pattern, in a callback (connection_made, which the
    handshake's last read calls): write until pause_writing(). Writes made in
    a callback were sealed once 64 KiB waited but not sent, so the TCP
    buffer's water marks never saw them: the loop never ended, the memory
    grew without bound. get_write_buffer_size() counts what waits too."""
    cap = 64 << 20

    class Producer(asyncio.Protocol):
        def __init__(self) -> None:
            self.paused = False
            self.written = 0
            self.largest = 0

        def pause_writing(self) -> None:
            self.paused = True

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            chunk = bytes(4096)
            while not self.paused and self.written < cap:
                transport.write(chunk)
                self.written += len(chunk)
                self.largest = max(self.largest, transport.get_write_buffer_size())

    async def main() -> None:
        server, port, _made = await _server(paused=True)  # the peer reads nothing
        transport, producer = await na.create_connection(Producer, HOST, port, context=client_ctx())
        assert producer.paused
        assert producer.written < cap // 4
        assert producer.largest > 0
        transport.abort()
        server.close()
        await server.wait_closed()

    run(main())


def test_rekey_interval_ratchets_the_keys_of_a_side_that_only_sends() -> None:
    """The connection's timer is run after the handshake too: rekey_interval
    used to have no effect over asyncio (the timer was armed only during the
    handshake, and writes do not tell the connection the time)."""

    async def main() -> None:
        server, port, made = await _server(ctx=Context(SERVER_ID, rekey_interval=0.1))
        transport, _ = await na.create_connection(
            asyncio.Protocol,
            HOST,
            port,
            context=Context(trusted_peers=[SERVER_ID.public], rekey_interval=0.1),
        )
        assert isinstance(transport, na.NautilusTransport)
        for _ in range(8):  # 0.8 s of sending
            transport.write(b"x" * 1000)
            await asyncio.sleep(0.1)
        peer = await _first(made)
        await _wait(lambda: len(peer.data) == 8000, peer)
        sent = transport._conn.stats.key_updates
        assert sent >= 3  # about one per 0.1 s (and none from the idle server's keys)
        server_conn = peer.transport._conn  # type: ignore[union-attr]
        assert server_conn.stats.key_updates == sent
        transport.close()
        server.close()
        await server.wait_closed()

    run(main())


class Failing(Recorder):
    """Raises from one callback: ``data_received`` (on the data b"boom"), or ``eof_received``."""

    fail_in = "data_received"

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.fail_in == "data_received" and b"boom" in data:
            raise RuntimeError("the application's own bug")

    def eof_received(self) -> bool:
        super().eof_received()
        if self.fail_in == "eof_received":
            raise RuntimeError("the application's own bug")
        return False


@pytest.mark.parametrize("case", ["data_received", "held data", "eof_received", "early data"])
def test_a_callback_that_raises_is_reported_as_itself(case: str) -> None:
    """As with asyncio's own transports: the loop's exception handler is told
    which callback failed, the connection is dropped, and connection_lost()
    gets the application's exception. It used to get ConnectionLost, "the
    peer closed the connection without close_notify" (data held while paused:
    without even a cause), None after eof_received(), and nothing at all
    after accepted 0-RTT data (whose failure was also blamed on
    connection_made)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        sctx = Context(SERVER_ID, early_data=True)
        cctx = Context(trusted_peers=[SERVER_ID.public], early_data=True)
        made: list[Failing] = []

        def factory() -> Failing:
            proto = Failing(paused=case == "held data" and len(made) == 1)  # (not the first)
            proto.fail_in = "eof_received" if case == "eof_received" else "data_received"
            made.append(proto)
            return proto

        server = await na.create_server(factory, HOST, 0, context=sctx)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await na.open_connection(HOST, port, context=cctx)  # a ticket
        await _first(made)
        writer.close()
        await writer.wait_closed()
        early = b"boom" if case == "early data" else b""
        transport, client = await na.create_connection(
            Recorder, HOST, port, context=cctx, early_data=early
        )
        assert transport.get_extra_info("nautilus").early_data_accepted == bool(early)
        while len(made) < 2:
            await asyncio.sleep(0.01)
        peer = made[1]
        if case == "eof_received":
            transport.close()
        elif case != "early data":
            transport.write(b"boom")
        if case == "held data":
            await asyncio.sleep(0.1)
            assert peer.transport is not None
            peer.transport.resume_reading()
        lost = await asyncio.wait_for(peer.lost, 5)
        assert isinstance(lost, RuntimeError)
        assert str(lost) == "the application's own bug"
        assert peer.events.count("lost") == 1
        reported = [e for e in errors if e.get("protocol") is peer]
        callback = "eof_received()" if case == "eof_received" else "data_received()"
        assert [e["message"] for e in reported] == [f"nautilus: protocol.{callback} call failed"]
        if case != "eof_received":  # the client sees the drop as a truncation
            assert isinstance(await asyncio.wait_for(client.lost, 5), nautilus.ConnectionLost)
        transport.close()
        server.close()
        await server.wait_closed()

    run(main())
