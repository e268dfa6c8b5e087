"""The receive path of the asyncio adapter: TCP reads into the adapter's own
buffer (get_buffer/buffer_updated), incomplete records kept there
(Connection._keep_input), and decrypted data lent to asyncio's
StreamReaderProtocol as views (Connection._data_views)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import pytest

import nautilus
import nautilus.asyncio as na
from nautilus import Connection, Context
from nautilus.protocol.events import ConnectionClosed, DataReceived, Event
from tests.protocol_helpers import NOW, Pair, drain_events
from tests.test_asyncio import HOST, SERVER_ID, client_ctx, run, serving


def _connected_pair(**server: Any) -> Pair:
    pair = Pair.make(server=server, client=dict(server))
    pair.handshake()
    return pair


def _feed_kept(conn: Connection, wire: bytes, cuts: list[int]) -> list[Event]:
    """Feed ``wire`` in pieces as the adapter does: what the Connection leaves
    (``_unread``) is presented again, followed by the next piece."""
    conn._keep_input = True
    kept = b""
    events: list[Event] = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        data = kept + wire[pos:cut]
        pos = cut
        if not data:
            continue
        conn.receive_data(memoryview(data), NOW)
        assert not conn._in, "an incomplete record was copied into the Connection"
        kept = data[len(data) - conn._unread :] if conn._unread else b""
        events += drain_events(conn)
    assert kept == b""
    return events


def test_kept_records_are_opened_when_completed_at_any_cut() -> None:
    pair = _connected_pair()
    rng = random.Random(7)
    payload = rng.randbytes(100_000)
    for i in range(0, len(payload), 7000):
        pair.client.send_data(payload[i : i + 7000])
    wire = pair.client.data_to_send()
    cuts = [*sorted(rng.sample(range(1, len(wire)), 40)), len(wire) - 1]
    events = _feed_kept(pair.server, wire, cuts)
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == payload
    assert pair.server._unread == 0


def test_kept_records_across_a_key_update() -> None:
    pair = _connected_pair()
    pair.client.send_data(b"a" * 20_000)
    pair.client.update_keys(request_peer=False)
    pair.client.send_data(b"b" * 20_000)
    wire = pair.client.data_to_send()
    events = _feed_kept(pair.server, wire, [5, 16_500, len(wire) - 3])
    data = b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived))
    assert data == b"a" * 20_000 + b"b" * 20_000
    assert not pair.server.is_closed


def test_garbage_after_records_is_not_kept_but_fails_the_connection() -> None:
    pair = _connected_pair()
    pair.client.send_data(b"x" * 1000)
    wire = pair.client.data_to_send() + b"\x99\x00\x00\x05hello"
    pair.server._keep_input = True
    pair.server.receive_data(memoryview(wire), NOW)
    events = drain_events(pair.server)
    assert pair.server._unread == 0
    assert [bytes(e.data) for e in events if isinstance(e, DataReceived)] == [b"x" * 1000]
    assert isinstance(events[-1], ConnectionClosed)
    assert isinstance(events[-1].error, nautilus.ProtocolViolation)  # as without _keep_input
    assert pair.server.is_closed


def test_without_keep_input_the_connection_buffers_incomplete_records() -> None:
    pair = _connected_pair()
    pair.client.send_data(b"y" * 5000)
    wire = pair.client.data_to_send()
    pair.server.receive_data(wire[:-10], NOW)
    assert pair.server._unread == 0
    assert len(pair.server._in) == len(wire) - 10
    pair.server.receive_data(wire[-10:], NOW)
    assert [e.data for e in drain_events(pair.server) if isinstance(e, DataReceived)] == [
        b"y" * 5000
    ]


def test_lent_views_are_not_overwritten() -> None:
    pair = _connected_pair()
    pair.server._data_views = True
    pair.client.send_data(b"1" * 3000)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.send_data(b"2" * 3000)
    pair.server.receive_data(pair.client.data_to_send(), NOW)  # the first view is still out
    first, second = (e for e in drain_events(pair.server) if isinstance(e, DataReceived))
    assert isinstance(first.data, bytes)  # made a copy when the buffer was needed again
    assert isinstance(second.data, memoryview)
    assert bytes(first.data) == b"1" * 3000
    assert bytes(second.data) == b"2" * 3000
    pair.server._lent = False  # as the adapter does once delivered: the buffer is reused
    pair.client.send_data(b"3" * 10)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    assert [bytes(e.data) for e in drain_events(pair.server) if isinstance(e, DataReceived)] == [
        b"3" * 10
    ]


def test_a_read_cut_into_many_runs_by_key_updates_needs_one_buffer() -> None:
    """A peer that puts a key update after every byte of data (each update
    ends a run of records): each run's view was kept, and each next run was
    opened into a new buffer as large as the rest of the read, so one 64 KiB
    read took about 100 MB (quadratic). The earlier views become copies
    instead, and the one buffer is reused."""
    import tracemalloc

    pair = _connected_pair()
    pair.server._data_views = True
    wire = bytearray()
    while len(wire) < 65536:
        pair.client.send_data(b"x")
        pair.client.update_keys(request_peer=False)
        wire += pair.client.data_to_send()
    runs = len(wire) // 44
    tracemalloc.start()
    try:
        pair.server.receive_data(bytes(wire), NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data = [e.data for e in drain_events(pair.server) if isinstance(e, DataReceived)]
    assert b"".join(bytes(d) for d in data) == b"x" * len(data)
    assert len(data) >= runs - 1
    assert peak < 16 * len(wire)  # (before: about 1,500 times the read)


# ------------------------------------------------------------------ over TCP


async def _transfer(
    payload: bytes, chunk: int, ctx: Context | None = None, **client: Any
) -> tuple[bytes, list[type]]:
    """Stream ``payload`` to a server that reads slowly; return what it read."""
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(50_000):
            got.append(data)
            if len(got) % 7 == 0:
                await asyncio.sleep(0.001)  # let data pile up: reading pauses
        writer.close()
        done.set()

    async with serving(handler, ctx) as port:
        _, writer = await na.open_connection(HOST, port, context=client_ctx(**client))
        for i in range(0, len(payload), chunk):
            writer.write(payload[i : i + chunk])
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        await done.wait()
    return b"".join(got), [type(g) for g in got]


@pytest.mark.parametrize("chunk", [1000, 65536, 300_000])
def test_stream_transfer_through_the_adapter_buffer(chunk: int) -> None:
    payload = random.Random(chunk).randbytes(3_000_000)
    got, types = run(_transfer(payload, chunk))
    assert got == payload
    assert set(types) == {bytes}


def test_largest_records_grow_the_receive_buffer() -> None:
    big = 262144
    payload = random.Random(3).randbytes(2_000_000)
    ctx = Context(SERVER_ID, max_record_size=big)
    got, _ = run(_transfer(payload, 700_000, ctx, max_record_size=big))
    assert got == payload


async def _burst_then_ten_bytes(handler: Any, big: int) -> None:
    """A client of ``handler``'s server (records of ``big`` bytes): four
    records at once, then, after the server's first byte, ten bytes; it
    closes after the server's second byte."""
    async with serving(handler, Context(SERVER_ID, max_record_size=big)) as port:
        reader, writer = await na.open_connection(
            HOST, port, context=client_ctx(max_record_size=big)
        )
        writer.write(random.Random(9).randbytes(4 * big))
        await reader.readexactly(1)
        writer.write(b"0123456789")
        await reader.readexactly(1)
        writer.close()
        await writer.wait_closed()


def test_a_connection_quiet_again_after_a_burst_keeps_no_large_buffer() -> None:
    """Large reads grow the adapter's buffer and the Connection's decryption
    (scratch) buffer; the first small read after them gave back the first
    but not the second, which stayed as large as the largest record for as
    long as the connection lived: a server holding many connections that
    each once took a burst held hundreds of KiB per connection, idle."""
    big = 262144  # 256 KiB records: a whole one must fit the scratch buffer
    sizes: dict[str, int] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        owner = writer.transport._owner  # type: ignore[attr-defined]
        await reader.readexactly(4 * big)
        scratch = owner._conn._scratch
        sizes["burst"] = len(scratch)
        writer.write(b"k")  # the client sends the small message only now
        await reader.readexactly(10)
        sizes["quiet"] = len(owner._conn._scratch) + len(owner._rbuf)
        # Nothing else holds the large buffer (a view of it would keep it).
        sizes["holders"] = sys.getrefcount(scratch) - 2  # (this name, the argument)
        del scratch
        writer.write(b"k")
        await reader.read()
        writer.close()

    run(_burst_then_ten_bytes(handler, big))
    assert sizes["burst"] >= big
    assert sizes["quiet"] < 65536, sizes
    assert sizes["holders"] == 0, sizes


def test_a_connection_silent_right_after_a_burst_gives_its_buffers_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst whose last read is large leaves the adapter's receive buffer and
    the Connection's decryption buffer grown; with no later read (the peer
    fell silent), they were kept for as long as the connection lived. Now
    given back once _QUIET seconds pass without a read."""
    monkeypatch.setattr(nautilus.asyncio._transport, "_QUIET", 0.2)
    big = 262144
    sizes: dict[str, int] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        owner = writer.transport._owner  # type: ignore[attr-defined]
        await reader.readexactly(4 * big)
        sizes["burst"] = len(owner._conn._scratch) + len(owner._rbuf)
        await asyncio.sleep(1.0)  # the client sends nothing meanwhile
        sizes["quiet"] = len(owner._conn._scratch) + len(owner._rbuf)
        writer.write(b"k")  # and the connection still works, with small reads again
        sizes["echo"] = len(await reader.readexactly(10))
        writer.write(b"k")
        await reader.read()
        writer.close()

    run(_burst_then_ten_bytes(handler, big))
    assert sizes["burst"] >= big, sizes
    assert sizes["quiet"] == 0, sizes
    assert sizes["echo"] == 10


def test_a_plain_protocol_gets_bytes() -> None:
    """Only asyncio's StreamReaderProtocol is lent views: other protocols get bytes."""
    received: list[Any] = []
    done = asyncio.Event()

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.append(data)

        def eof_received(self) -> bool:
            done.set()
            return False

    async def main() -> None:
        server = await na.create_server(Sink, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await na.open_connection(HOST, port, context=client_ctx())
            for _ in range(20):
                writer.write(b"z" * 100_000)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(done.wait(), 5)
        finally:
            server.close()
            await server.wait_closed()

    run(main())
    assert all(type(d) is bytes for d in received)
    assert b"".join(received) == b"z" * 2_000_000


def test_data_received_fallback_for_transports_without_get_buffer() -> None:
    """A transport that calls data_received() (not get_buffer) works too."""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        client = Connection(client_ctx(), "client")
        reader = asyncio.StreamReader()
        app = asyncio.StreamReaderProtocol(reader)
        server_conn = Connection(Context(SERVER_ID), "server")
        proto = na._NautilusProtocol(loop, server_conn, lambda: app, None)

        class FakeTCP(asyncio.Transport):
            def __init__(self) -> None:
                super().__init__()
                self.out: list[bytes] = []

            def write(self, data: Any) -> None:
                self.out.append(bytes(data))

            def is_closing(self) -> bool:
                return False

            def get_write_buffer_size(self) -> int:
                return 0

            def close(self) -> None:
                raise AssertionError(f"closed unexpectedly: {server_conn.error!r}")

        tcp = FakeTCP()
        proto.connection_made(tcp)
        client.start(time.time())
        for _ in range(4):
            wire = client.data_to_send()
            for i in range(0, len(wire), 333):
                proto.data_received(wire[i : i + 333])
            if tcp.out:
                client.receive_data(b"".join(tcp.out), time.time())
                tcp.out.clear()
        assert client.handshake_complete
        client.send_data(b"q" * 50_000)
        wire = client.data_to_send()
        for i in range(0, len(wire), 4096):
            proto.data_received(wire[i : i + 4096])
        return await reader.readexactly(50_000)

    assert run(main()) == b"q" * 50_000


def test_uvloop_stream_transfer() -> None:
    uvloop = pytest.importorskip("uvloop")
    payload = random.Random(5).randbytes(2_000_000)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        got, _ = runner.run(asyncio.wait_for(_transfer(payload, 65536), 10))
    assert got == payload
