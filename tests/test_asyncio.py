"""nautilus.asyncio end to end over real loopback TCP.

Every test runs its own event loop through ``run()``, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import pytest

import nautilus
import nautilus.asyncio as na
from nautilus import Connection, Context, Identity

GROUPS = ("x25519-mlkem768", "x25519-mlkem1024", "mlkem1024", "mlkem768", "x25519")
CIPHERS = ("aes-256-gcm", "chacha20-poly1305", "aes-128-gcm")
HOST = "127.0.0.1"

SERVER_ID = Identity.generate()
CLIENT_ID = Identity.generate()
OTHER_ID = Identity.generate()


def run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """Run ``coro`` in a fresh event loop; fail if it takes over ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client_ctx(**kw: Any) -> Context:
    kw.setdefault("trusted_peers", [SERVER_ID.public])
    return Context(**kw)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler, ctx: Context | None = None, **kw: Any) -> AsyncIterator[int]:
    """Run a Nautilus stream server on loopback; yield its port."""
    server = await na.start_server(
        handler, HOST, 0, context=ctx if ctx is not None else Context(SERVER_ID), **kw
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (nautilus.NautilusError, ConnectionError):
        pass
    finally:
        writer.close()


# ------------------------------------------------------------------ the matrix


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("group", GROUPS)
def test_echo_every_group_and_cipher(group: str, cipher: str) -> None:
    server_sessions: list[nautilus.SessionInfo] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_sessions.append(writer.get_extra_info("nautilus"))
        await echo(reader, writer)

    async def main() -> None:
        sctx = Context(SERVER_ID, groups=[group], ciphers=[cipher])
        async with serving(handler, sctx) as port:
            reader, writer = await na.open_connection(
                HOST, port, context=client_ctx(groups=[group], ciphers=[cipher])
            )
            info = writer.get_extra_info("nautilus")
            assert isinstance(info, nautilus.SessionInfo)
            assert (info.role, info.group, info.cipher) == ("client", group, cipher)
            assert info.peer_id == SERVER_ID.peer_id
            assert info.trust == "pinned"
            assert info.resumed is False
            assert writer.get_extra_info("peername") == (HOST, port)
            assert writer.get_extra_info("sockname")[0] == HOST
            for size in (1, 100, 16384, 16385, 100_000):
                data = random.randbytes(size)
                writer.write(data)
                assert await reader.readexactly(size) == data
            writer.close()
            await writer.wait_closed()
            assert len(server_sessions) == 1
            srv = server_sessions[0]
            assert (srv.role, srv.group, srv.cipher) == ("server", group, cipher)
            assert srv.peer_id is None  # client authentication is off

    run(main())


def test_hello_retry_when_the_first_share_is_not_the_servers_choice() -> None:
    async def main() -> None:
        sctx = Context(SERVER_ID, groups=["x25519-mlkem768", "mlkem768"])
        async with serving(echo, sctx) as port:
            reader, writer = await na.open_connection(
                HOST, port, context=client_ctx(groups=["mlkem768", "x25519-mlkem768"])
            )
            assert writer.get_extra_info("nautilus").group == "x25519-mlkem768"
            writer.write(b"after a retry")
            assert await reader.readexactly(13) == b"after a retry"
            writer.close()
            await writer.wait_closed()

    run(main())


# -------------------------------------------------------------- authentication


def test_mutual_authentication() -> None:
    seen: list[nautilus.SessionInfo] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("nautilus"))
        await echo(reader, writer)

    async def main() -> None:
        sctx = Context(SERVER_ID, client_auth="required", trusted_peers=[CLIENT_ID.public])
        async with serving(handler, sctx) as port:
            cctx = Context(CLIENT_ID, trusted_peers=[SERVER_ID.peer_id])
            reader, writer = await na.open_connection(HOST, port, context=cctx)
            writer.write(b"mutual")
            assert await reader.readexactly(6) == b"mutual"
            assert writer.get_extra_info("nautilus").peer_id == SERVER_ID.peer_id
            writer.close()
            await writer.wait_closed()
        assert len(seen) == 1
        assert seen[0].peer_id == CLIENT_ID.peer_id
        assert seen[0].trust == "pinned"

    run(main())


@pytest.mark.parametrize("form", ["key", "peer_id"])
def test_expected_peer_match(form: str) -> None:
    async def main() -> None:
        async with serving(echo) as port:
            expected = SERVER_ID.public if form == "key" else SERVER_ID.peer_id
            # No trust store at all: expected_peer alone authenticates the server.
            reader, writer = await na.open_connection(
                HOST, port, context=Context(), expected_peer=expected
            )
            info = writer.get_extra_info("nautilus")
            assert info.trust == "expected"
            assert info.peer_id == SERVER_ID.peer_id
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.close()
            await writer.wait_closed()

    run(main())


def test_known_peers_uses_host_port_as_server_name(tmp_path: Any) -> None:
    known = tmp_path / "known_peers"

    async def main() -> None:
        async with serving(echo) as port:
            trusts = []
            for _ in range(2):
                _reader, writer = await na.open_connection(
                    HOST, port, context=Context(known_peers_file=known)
                )
                trusts.append(writer.get_extra_info("nautilus").trust)
                writer.close()
                await writer.wait_closed()
            assert trusts == ["first-use", "known-peers"]
            assert f"{HOST}:{port} {SERVER_ID.peer_id} " in known.read_text()
            # An explicit server_name is used instead.
            _reader, writer = await na.open_connection(
                HOST, port, context=Context(known_peers_file=known), server_name="svc"
            )
            assert writer.get_extra_info("nautilus").trust == "first-use"
            writer.close()
            await writer.wait_closed()

    run(main())


# ------------------------------------------------------------ protocol level


class Recorder(asyncio.Protocol):
    """Records everything it is told; echoes if asked."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.got: asyncio.Event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


def test_protocol_level_create_connection_and_server() -> None:
    async def main() -> None:
        servers: list[Recorder] = []

        def factory() -> Recorder:
            servers.append(Recorder(echo=True))
            return servers[-1]

        server = await na.create_server(factory, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        transport, proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        assert isinstance(transport, na.NautilusTransport)
        assert isinstance(transport, asyncio.Transport)
        assert isinstance(proto, Recorder)
        assert proto.transport is transport
        assert transport.get_protocol() is proto
        assert transport.get_extra_info("nautilus").peer_id == SERVER_ID.peer_id
        assert transport.get_extra_info("peername") == (HOST, port)
        assert transport.get_extra_info("no-such-thing", 42) == 42
        assert transport.can_write_eof() is False
        with pytest.raises(NotImplementedError):
            transport.write_eof()
        with pytest.raises(TypeError):
            transport.write("text")  # type: ignore[arg-type]
        assert transport.is_reading()
        transport.writelines([b"one ", bytearray(b"two "), memoryview(b"three")])
        while bytes(proto.data) != b"one two three":
            proto.got.clear()
            await proto.got.wait()
        assert servers[0].events == ["made"]
        server_info = servers[0].transport.get_extra_info("nautilus")  # type: ignore[union-attr]
        assert server_info.role == "server"
        # channel binding: both sides derive the same keying material
        a = transport.export_keying_material(b"label", b"ctx", 32)
        b = servers[0].transport.export_keying_material(b"label", b"ctx", 32)  # type: ignore[union-attr]
        assert a == b
        assert len(a) == 32
        # key update, then more data
        transport.update_keys()
        transport.write(b"!")
        while not proto.data.endswith(b"!"):
            proto.got.clear()
            await proto.got.wait()
        transport.close()
        assert transport.is_closing()
        assert await proto.lost is None
        assert await servers[0].lost is None
        assert servers[0].events == ["made", "eof", "lost"]
        assert proto.events == ["made", "lost"]
        transport.write(b"dropped after close")  # ignored, as asyncio transports do
        server.close()
        await server.wait_closed()

    run(main())


def test_protocol_factory_must_return_a_protocol() -> None:
    async def main() -> None:
        async with serving(echo) as port:
            with pytest.raises(TypeError, match=r"asyncio\.Protocol"):
                await na.create_connection(
                    cast(Any, lambda: object()),
                    HOST,
                    port,
                    context=client_ctx(),
                )

    run(main())


# ------------------------------------------------------- transfer, flow control


def test_large_transfer_with_drain() -> None:
    total = 8 << 20
    payload = random.randbytes(total)

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)  # let the client's buffers fill up
        digest = hashlib.sha256()
        got = 0
        while got < total:
            chunk = await reader.read(1 << 16)
            assert chunk
            digest.update(chunk)
            got += len(chunk)
        writer.write(digest.digest())
        await writer.drain()
        assert await reader.read() == b""
        writer.close()

    async def main() -> None:
        async with serving(sink, limit=1 << 16) as port:
            reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            writer.transport.set_write_buffer_limits(high=1 << 16)
            assert writer.transport.get_write_buffer_limits()[1] == 1 << 16
            max_buffered = 0
            blocked = 0.0
            view = memoryview(payload)
            for pos in range(0, total, 1 << 16):
                writer.write(view[pos : pos + (1 << 16)])
                max_buffered = max(max_buffered, writer.transport.get_write_buffer_size())
                t0 = time.perf_counter()
                await writer.drain()
                blocked = max(blocked, time.perf_counter() - t0)
            assert await reader.readexactly(32) == hashlib.sha256(payload).digest()
            writer.close()
            await writer.wait_closed()
            # the server did not read for 0.2 s: drain() must have waited
            assert max_buffered > 1 << 16
            assert blocked > 0.05

    run(main(), timeout=30)


def test_pause_and_resume_propagate() -> None:
    """Server pauses reading -> client TCP buffer fills -> app pause_writing;
    server resumes -> resume_writing, and every byte arrives."""

    async def main() -> None:
        servers: list[Recorder] = []

        def factory() -> Recorder:
            servers.append(Recorder())
            return servers[-1]

        server = await na.create_server(factory, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        transport, proto = await na.create_connection(Recorder, HOST, port, context=client_ctx())
        while not servers:  # the server completes one flight after the client
            await asyncio.sleep(0.001)
        stransport = servers[0].transport
        assert stransport is not None
        stransport.pause_reading()
        assert not stransport.is_reading()
        transport.set_write_buffer_limits(high=1 << 15)
        sent = hashlib.sha256()
        chunk = random.randbytes(1 << 16)
        n = 0
        while "pause" not in proto.events:
            transport.write(chunk)
            sent.update(chunk)
            n += len(chunk)
            await asyncio.sleep(0)
            assert n < 256 << 20, "pause_writing never came"
        assert transport.get_write_buffer_size() > 0
        stransport.resume_reading()
        while len(servers[0].data) < n:
            servers[0].got.clear()
            await servers[0].got.wait()
        assert hashlib.sha256(servers[0].data).digest() == sent.digest()
        assert proto.events[:3] == ["made", "pause", "resume"]
        transport.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    run(main(), timeout=30)


# ------------------------------------------------------------- close semantics


def test_clean_close_by_client_is_eof_for_server() -> None:
    result: asyncio.Future[bytes]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until close_notify
        result.set_result(data)
        assert reader.at_eof()
        writer.close()

    async def main() -> None:
        nonlocal result
        result = asyncio.get_running_loop().create_future()
        async with serving(handler) as port:
            _reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            writer.write(b"last words")
            writer.close()
            await writer.wait_closed()
            assert await result == b"last words"

    run(main())


def test_clean_close_by_server_is_eof_for_client() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        async with serving(handler) as port:
            reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            assert await reader.read() == b"bye"
            assert reader.at_eof()
            assert await reader.read() == b""
            assert writer.transport.is_closing()
            await writer.wait_closed()  # clean: no exception

    run(main())


def test_truncation_when_peer_aborts() -> None:
    """The server aborts (no close_notify): the client must not see a clean EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"partial")
        await writer.drain()
        await reader.readexactly(2)
        writer.transport.abort()

    async def main() -> None:
        async with serving(handler) as port:
            reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            assert await reader.readexactly(7) == b"partial"
            writer.write(b"go")
            with pytest.raises(nautilus.ConnectionLost, match="close_notify"):
                await reader.read()
            with pytest.raises(nautilus.ConnectionLost):
                await reader.readexactly(1)
            with pytest.raises(nautilus.ConnectionLost):
                await writer.wait_closed()

    run(main())


def test_truncation_when_the_servers_tcp_is_closed_underneath() -> None:
    """A FIN without close_notify (the raw TCP transport closed) is ConnectionLost."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"data")
        await writer.drain()
        writer.transport._tcp.close()  # type: ignore[attr-defined]

    async def main() -> None:
        async with serving(handler) as port:
            reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            assert await reader.readexactly(4) == b"data"
            with pytest.raises(nautilus.ConnectionLost):
                await reader.read()
            writer.close()

    run(main())


def test_truncation_when_the_clients_own_tcp_is_closed_underneath() -> None:
    async def main() -> None:
        async with serving(echo) as port:
            reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            writer.transport._tcp.close()  # type: ignore[attr-defined]
            with pytest.raises(nautilus.ConnectionLost):
                await reader.read()

    run(main())


# ------------------------------------------------------------------ many clients


def test_200_concurrent_clients_random_sizes() -> None:
    """Clients send len|data|sha256(data); the server checks the hash and returns
    sha256|data; the client checks both. Every group, with hello retries."""
    rng = random.Random(20240601)
    n_clients = 200
    server_checked = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal server_checked
        (size,) = struct.unpack("!I", await reader.readexactly(4))
        data = await reader.readexactly(size)
        digest = await reader.readexactly(32)
        ok = hashlib.sha256(data).digest() == digest
        server_checked += ok
        writer.write(hashlib.sha256(data).digest() if ok else b"\0" * 32)
        writer.write(data)
        await writer.drain()
        assert await reader.read() == b""
        writer.close()

    contexts = [client_ctx(groups=[g, *[h for h in GROUPS if h != g]]) for g in GROUPS]
    jobs = []
    for _ in range(n_clients):
        jobs.append((rng.choice(contexts), rng.randbytes(rng.randint(0, 256 * 1024))))

    async def client(port: int, ctx: Context, data: bytes) -> None:
        reader, writer = await na.open_connection(HOST, port, context=ctx)
        digest = hashlib.sha256(data).digest()
        writer.writelines([struct.pack("!I", len(data)), data, digest])
        await writer.drain()
        assert await reader.readexactly(32) == digest
        echoed = await reader.readexactly(len(data))
        assert hashlib.sha256(echoed).digest() == digest
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        sctx = Context(SERVER_ID, groups=GROUPS)
        async with serving(handler, sctx, backlog=n_clients) as port:
            await asyncio.gather(*(client(port, c, d) for c, d in jobs))
        assert server_checked == n_clients

    run(main(), timeout=40)


# ---------------------------------------------------------- arguments, failures


def test_bad_arguments_raise_before_any_io() -> None:
    async def main() -> None:
        accepted = 0

        def count(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            w.close()

        plain = await asyncio.start_server(count, HOST, 0)
        port = plain.sockets[0].getsockname()[1]
        ctx = client_ctx()
        sctx = Context(SERVER_ID)
        cases: list[tuple[type[Exception], Callable[[], Awaitable[Any]]]] = [
            (TypeError, lambda: na.open_connection(HOST, port, context="ctx")),  # type: ignore[arg-type]
            (TypeError, lambda: na.open_connection(HOST, port, context=ctx, ssl=True)),
            (TypeError, lambda: na.open_connection(HOST, port, context=ctx, expected_peer=5)),  # type: ignore[arg-type]
            (ValueError, lambda: na.open_connection(HOST, port, context=ctx, expected_peer="x")),
            (TypeError, lambda: na.open_connection(HOST, port, context=ctx, server_name=1)),  # type: ignore[arg-type]
            (ValueError, lambda: na.open_connection(HOST, port, context=ctx, server_name="")),
            (ValueError, lambda: na.open_connection(HOST, port, context=ctx, server_name="s\n:1")),
            (ValueError, lambda: na.create_connection(Recorder, HOST, port, context=ctx, server_name="\0")),  # noqa: E501
            (ValueError, lambda: na.open_channel(HOST, port, context=ctx, server_name="a\tb")),
            (ValueError, lambda: na.open_connection("bad\nhost", port, context=ctx)),  # before DNS
            (TypeError, lambda: na.open_connection([HOST], port, context=ctx)),  # type: ignore[arg-type]
            (ValueError, lambda: na.open_connection(HOST, port, context=ctx, limit=0)),
            (TypeError, lambda: na.open_connection(HOST, port, context=ctx, limit=1.5)),  # type: ignore[arg-type]
            (ValueError, lambda: na.open_connection(HOST, 70000, context=ctx)),
            (TypeError, lambda: na.open_connection(HOST, 1.5, context=ctx)),  # type: ignore[arg-type]
            (TypeError, lambda: na.open_connection(b"127.0.0.1", port, context=ctx)),  # type: ignore[arg-type]
            (TypeError, lambda: na.create_connection(None, HOST, port, context=ctx)),  # type: ignore[arg-type]
            (TypeError, lambda: na.start_server(echo, HOST, 0, context=None)),  # type: ignore[arg-type]
            (ValueError, lambda: na.start_server(echo, HOST, 0, context=Context())),
            (TypeError, lambda: na.start_server(None, HOST, 0, context=sctx)),  # type: ignore[arg-type]
            (TypeError, lambda: na.start_server(echo, HOST, 0, context=sctx, ssl=1)),
            (ValueError, lambda: na.start_server(echo, HOST, 0, context=sctx, limit=-1)),
            (TypeError, lambda: na.create_server(Recorder, HOST, 0, context=object())),  # type: ignore[arg-type]
            (TypeError, lambda: na.create_server(None, HOST, 0, context=sctx)),  # type: ignore[arg-type]
            (TypeError, lambda: na.start_server(echo, b"127.0.0.1", 0, context=sctx)),  # type: ignore[arg-type]
            (TypeError, lambda: na.open_connection(HOST, True, context=ctx)),  # not port 1
            (ValueError, lambda: na.open_connection(HOST, 65536, context=ctx)),
            (TypeError, lambda: na.open_connection(HOST, port, context=ctx, limit=True)),
            (ValueError, lambda: na.start_server(echo, HOST, 0, context=sctx, limit=0)),
            (TypeError, lambda: na.create_connection(Recorder, HOST, port, context=ctx, early_data=5)),  # type: ignore[arg-type]  # noqa: E501
        ]  # fmt: skip
        for exc_type, call in cases:
            with pytest.raises(exc_type):
                await call()
        await asyncio.sleep(0.05)
        assert accepted == 0
        plain.close()
        await plain.wait_closed()

    run(main())


def test_connection_refused_is_an_oserror() -> None:
    async def main() -> None:
        plain = await asyncio.start_server(lambda r, w: None, HOST, 0)
        port = plain.sockets[0].getsockname()[1]
        plain.close()
        await plain.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await na.open_connection(HOST, port, context=client_ctx())

    run(main())


def test_cancelling_open_connection_closes_the_socket() -> None:
    async def main() -> None:
        closed = asyncio.get_running_loop().create_future()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # EOF when the client gives up
            closed.set_result(True)
            writer.close()

        plain = await asyncio.start_server(silent, HOST, 0)
        port = plain.sockets[0].getsockname()[1]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(na.open_connection(HOST, port, context=client_ctx()), 0.2)
        assert await asyncio.wait_for(closed, 2)
        plain.close()
        await plain.wait_closed()

    run(main())


def test_server_callback_runs_only_after_the_handshake() -> None:
    calls = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        assert writer.get_extra_info("nautilus") is not None
        await echo(reader, writer)

    async def main() -> None:
        async with serving(handler) as port:
            with pytest.raises(nautilus.AuthenticationFailed):
                await na.open_connection(
                    HOST, port, context=Context(trusted_peers=[OTHER_ID.public])
                )
            await asyncio.sleep(0.05)
            assert calls == 0
            _r, writer = await na.open_connection(HOST, port, context=client_ctx())
            writer.close()
            await writer.wait_closed()
            assert calls == 1

    run(main())


def test_server_closing_during_the_handshake_is_a_handshake_error() -> None:
    async def main() -> None:
        async def rude(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        plain = await asyncio.start_server(rude, HOST, 0)
        port = plain.sockets[0].getsockname()[1]
        with pytest.raises(nautilus.HandshakeError, match="closed the connection"):
            await na.open_connection(HOST, port, context=client_ctx())
        plain.close()
        await plain.wait_closed()

    run(main())


def test_unusable_known_peers_file_fails_the_handshake(tmp_path: Any) -> None:
    """A local problem found mid-handshake (the known-peers file cannot be
    created) fails open_connection with a Nautilus error and closes the socket."""
    missing_dir = tmp_path / "missing" / "known_peers"

    async def main() -> None:
        async with serving(echo) as port:
            with pytest.raises(nautilus.NautilusError, match="known-peers"):
                await na.open_connection(HOST, port, context=Context(known_peers_file=missing_dir))
            # the server still serves
            reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            writer.write(b"ok")
            assert await reader.readexactly(2) == b"ok"
            writer.close()
            await writer.wait_closed()

    run(main())


def test_set_protocol_and_closed_transport_methods() -> None:
    async def main() -> None:
        async with serving(echo) as port:
            transport, first = await na.create_connection(
                Recorder, HOST, port, context=client_ctx()
            )
            second = Recorder()
            transport.set_protocol(second)
            assert transport.get_protocol() is second
            with pytest.raises(TypeError):
                transport.set_protocol(object())  # type: ignore[arg-type]
            transport.write(b"to the second protocol")
            await second.got.wait()
            assert bytes(second.data) == b"to the second protocol"
            assert not first.data
            transport.close()
            transport.close()  # idempotent
            with pytest.raises(nautilus.ClosedError):
                transport.update_keys()
            with pytest.raises(nautilus.ClosedError):  # messages are not dropped silently
                transport.send_messages([b"after close"])
            assert await second.lost is None
            assert not first.lost.done()
            assert "closing" in repr(transport)

    run(main())


def test_failing_server_protocol_factory_is_logged_and_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> asyncio.Protocol:
        raise RuntimeError("factory is broken")

    async def main() -> None:
        server = await na.create_server(broken, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await na.open_connection(HOST, port, context=client_ctx())
        with pytest.raises(nautilus.ConnectionLost):  # aborted: no close_notify
            await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert any(
        r.name == "nautilus.asyncio" and r.exc_info and "factory is broken" in str(r.exc_info[1])
        for r in caplog.records
    )


def test_an_exception_inside_the_engine_drops_the_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection.receive_data must not raise; if it does anyway, the adapter
    reports ConnectionLost (caused by it), logs it, and drops the connection."""
    original = Connection.receive_data

    def flaky(self: Connection, data: Any, now: float | None = None) -> None:
        if self.role == "server" and self.handshake_complete:
            raise RuntimeError("engine bug")
        original(self, data, now)

    monkeypatch.setattr(Connection, "receive_data", flaky)
    errors: list[BaseException] = []
    started: asyncio.Event

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        try:
            await reader.read()
        except Exception as exc:
            errors.append(exc)
        writer.close()

    async def main() -> None:
        nonlocal started
        started = asyncio.Event()
        async with serving(handler) as port:
            reader, writer = await na.open_connection(HOST, port, context=client_ctx())
            await started.wait()  # the server's handshake is complete too
            writer.write(b"trigger")
            with pytest.raises(nautilus.ConnectionLost):
                await reader.read()
            writer.close()
            for _ in range(100):
                if errors:
                    break
                await asyncio.sleep(0.01)

    run(main())
    assert len(errors) == 1
    assert isinstance(errors[0], nautilus.ConnectionLost)
    assert isinstance(errors[0].__cause__, RuntimeError)
    assert any(r.levelname == "ERROR" and "engine bug" in r.getMessage() for r in caplog.records)
