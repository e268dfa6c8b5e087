"""nautilus.asyncio against misbehaving peers and a man in the middle.

Every test runs a Nautilus echo server with normal clients talking to it in
the background for the whole test (the harness fails if any of them fails),
attacks it, and checks that a normal client still completes a handshake
afterwards. Attacks come from raw sockets, sans-IO Connections driven by
hand, and a record-aware TCP proxy on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import pytest

import nautilus
import nautilus.asyncio as na
from nautilus import Connection, Context, Identity

HOST = "127.0.0.1"
GROUPS = ("x25519-mlkem768", "x25519-mlkem1024", "mlkem1024", "mlkem768", "x25519")
SERVER_ID = Identity.generate()
CLIENT_ID = Identity.generate()
OTHER_ID = Identity.generate()
LOGGER = "nautilus.asyncio"

ALERT_RECORD = 0x15
HANDSHAKE_RECORD = 0x16
SEALED_RECORD = 0x17


def run(coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def good_client_ctx(**kw: Any) -> Context:
    kw.setdefault("trusted_peers", [SERVER_ID.public])
    return Context(**kw)


def plain_alert(code: int) -> bytes:
    return bytes([ALERT_RECORD, 0, 0, 1, code])


# --------------------------------------------------------------------- harness


class Harness:
    """An echo server plus background traffic from well-behaved clients."""

    def __init__(self, caplog: pytest.LogCaptureFixture, ctx: Context) -> None:
        self.caplog = caplog
        self.ctx = ctx
        self.port = 0
        self.server_errors: list[BaseException] = []
        self.handled: list[tuple[str, int]] = []  # peernames the application saw
        self.background_ok = 0
        self.background_failures: list[BaseException] = []
        self._stop = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handled.append(writer.get_extra_info("peername"))
        self._writers.append(writer)
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except Exception as exc:
            self.server_errors.append(exc)
        finally:
            writer.close()

    async def normal_session(self, payload: bytes = b"still serving") -> None:
        """A well-behaved client: handshake, echo, clean close."""
        reader, writer = await asyncio.wait_for(
            na.open_connection(HOST, self.port, context=good_client_ctx()), 5
        )
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
        writer.close()
        await writer.wait_closed()

    async def _background(self) -> None:
        while not self._stop.is_set():
            try:
                await self.normal_session(os.urandom(100))
                self.background_ok += 1
            except Exception as exc:  # pragma: no cover - reported by stop()
                self.background_failures.append(exc)
            await asyncio.sleep(0.02)

    async def wait_for_log(self, *needles: str, timeout: float = 3.0) -> str:
        """Wait for a nautilus.asyncio log line containing every needle."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.caplog.records:
                if record.name == LOGGER:
                    text = record.getMessage()
                    if all(n in text for n in needles):
                        return text
            if time.monotonic() > deadline:
                lines = [r.getMessage() for r in self.caplog.records if r.name == LOGGER]
                raise AssertionError(f"no log line with {needles}; got {lines}")
            await asyncio.sleep(0.01)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Harness]:
        self.caplog.set_level(logging.DEBUG, logger=LOGGER)
        server = await na.start_server(self._echo, HOST, 0, context=self.ctx)
        self.port = server.sockets[0].getsockname()[1]
        await self.normal_session()
        traffic = asyncio.create_task(self._background())
        try:
            yield self
            # after the attack, the same server still serves a normal client
            await self.normal_session(b"after the attack")
        finally:
            self._stop.set()
            await traffic
            for writer in self._writers:
                writer.close()
            server.close()
            await server.wait_closed()
        assert not self.background_failures, self.background_failures
        assert self.background_ok >= 1


def harness(caplog: pytest.LogCaptureFixture, **kw: Any) -> Harness:
    return Harness(caplog, Context(SERVER_ID, **kw))


class Raw:
    """What a raw-socket exchange got back."""

    def __init__(self, reply: bytes, elapsed: float, sockname: tuple[str, int]) -> None:
        self.reply, self.elapsed, self.sockname = reply, elapsed, sockname


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> Raw:
    """Send ``data`` on a plain TCP socket; return all bytes until EOF, and the time."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    sockname = writer.get_extra_info("sockname")
    if data:
        writer.write(data)
    try:
        reply = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return Raw(reply, time.monotonic() - t0, sockname)


# ------------------------------------------------------------------------ proxy


class RecordSplitter:
    """Cuts a byte stream into records: type (1) | length (3) | payload."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            end = 4 + int.from_bytes(self.buf[1:4], "big")
            if len(self.buf) < end:
                break
            out.append(bytes(self.buf[:end]))
            del self.buf[:end]
        return out


Hook = Callable[[bytes, int], bytes]
"""(record, index of the record in its direction) -> record to forward."""


class Proxy:
    """A loopback TCP proxy that forwards whole records, through optional hooks."""

    def __init__(self, target: int, c2s: Hook | None = None, s2c: Hook | None = None) -> None:
        self.target = target
        self.c2s, self.s2c = c2s, s2c
        self.first_flights: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # ends the pumps (cancelling the handler
            writer.close()  # tasks would make asyncio 3.11 log errors)
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
        await self._server.wait_closed()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection(HOST, self.target)
        self._writers += [cwriter, swriter]
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(
                self._pump(creader, swriter, self.c2s, record_first=True),
                self._pump(sreader, cwriter, self.s2c, record_first=False),
            )
        finally:
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hook: Hook | None,
        *,
        record_first: bool,
    ) -> None:
        split = RecordSplitter()
        index = 0
        try:
            while data := await reader.read(1 << 16):
                out = []
                for record in split.feed(data):
                    if record_first and index == 0:
                        self.first_flights.append(record)
                    out.append(hook(record, index) if hook is not None else record)
                    index += 1
                if out:
                    writer.write(b"".join(out))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def replay_first_flight(self, which: int = 0) -> Raw:
        """Send a recorded client first flight on a new connection."""
        return await raw_exchange(self.target, self.first_flights[which])


def flip_bit(record: bytes) -> bytes:
    """Flip one bit in the middle of a record's ciphertext (not the header)."""
    tampered = bytearray(record)
    tampered[4 + (len(record) - 4) // 2] ^= 0x01
    return bytes(tampered)


# ----------------------------------------------------- authentication failures


def test_wrong_expected_peer(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with harness(caplog).running() as h:
            with pytest.raises(nautilus.AuthenticationFailed):
                await na.open_connection(
                    HOST, h.port, context=good_client_ctx(), expected_peer=OTHER_ID.public
                )
            await h.wait_for_log("handshake", "AuthenticationFailed", "wrong target")

    run(main())


def test_untrusted_server_key(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with harness(caplog).running() as h:
            with pytest.raises(nautilus.AuthenticationFailed, match="not trusted"):
                await na.open_connection(
                    HOST, h.port, context=Context(trusted_peers=[OTHER_ID.public])
                )
            await h.wait_for_log("AuthenticationFailed", "untrusted_peer")

    run(main())


def test_client_without_identity_when_client_auth_required(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        hx = harness(caplog, client_auth="required", trusted_peers=[CLIENT_ID.public])
        hx.normal_session = _mutual_session(hx)  # type: ignore[method-assign]
        async with hx.running() as h:
            with pytest.raises(nautilus.AuthenticationFailed, match="requires client auth"):
                await na.open_connection(HOST, h.port, context=good_client_ctx())
            await h.wait_for_log("AuthenticationFailed", "certificate_required")

    run(main())


def _mutual_session(h: Harness) -> Callable[..., Coroutine[Any, Any, None]]:
    async def session(payload: bytes = b"still serving") -> None:
        ctx = Context(CLIENT_ID, trusted_peers=[SERVER_ID.public])
        reader, writer = await na.open_connection(HOST, h.port, context=ctx)
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
        writer.close()
        await writer.wait_closed()

    return session


async def _untrusted_client(h: Harness) -> BaseException:
    """The client's side of its handshake completes (1-RTT); the server then
    rejects it, and the client learns it on its first read."""
    ctx = Context(OTHER_ID, trusted_peers=[SERVER_ID.public])
    reader, writer = await na.open_connection(HOST, h.port, context=ctx)
    with pytest.raises(nautilus.NautilusError) as info:
        await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await h.wait_for_log("AuthenticationFailed", OTHER_ID.peer_id, "not trusted")
    assert writer.get_extra_info("sockname") not in h.handled  # never reached the app
    return info.value


def test_untrusted_client_when_client_auth_required(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        hx = harness(caplog, client_auth="required", trusted_peers=[CLIENT_ID.public])
        hx.normal_session = _mutual_session(hx)  # type: ignore[method-assign]
        async with hx.running() as h:
            await _untrusted_client(h)

    run(main())


def test_untrusted_client_learns_authentication_failed(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        hx = harness(caplog, client_auth="required", trusted_peers=[CLIENT_ID.public])
        hx.normal_session = _mutual_session(hx)  # type: ignore[method-assign]
        async with hx.running() as h:
            error = await _untrusted_client(h)
            assert isinstance(error, nautilus.AuthenticationFailed), repr(error)

    run(main())


def test_a_verify_hook_that_answers_false_does_not_let_the_client_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over loopback: a server whose verify_client_payload answers with a
    comparison (False for a wrong token) instead of raising used to accept
    the client, and hand its data to the application. It now fails the
    handshake: the client learns it on its first read, nothing is echoed, and
    the application never sees the connection."""
    sid = "example.com/token"
    server_hs = nautilus.Handshake()
    server_hs.add(  # optional: the harness's background clients lack the step
        nautilus.CustomProtocolStep(
            sid,
            verify_client_payload=lambda c, p: p == b"good token",  # type: ignore[arg-type,return-value]
        )
    )
    client_hs = nautilus.Handshake()
    client_hs.add(nautilus.CustomProtocolStep(sid, client_payload=lambda c, p: b"bad token"))

    async def main() -> None:
        hx = harness(caplog, handshake=server_hs)
        async with hx.running() as h:
            reader, writer = await na.open_connection(
                HOST, h.port, context=good_client_ctx(handshake=client_hs)
            )
            writer.write(b"let me in")
            with pytest.raises(nautilus.ConnectionLost, match="internal_error"):
                await asyncio.wait_for(reader.read(100), 5)  # (no data: nothing echoed)
            writer.close()
            log = await h.wait_for_log("verify_client_payload must return None")
            assert "not return bool" in log
            assert writer.get_extra_info("sockname") not in h.handled

    run(main())


# ---------------------------------------------------------- negotiation failures


@pytest.mark.parametrize(
    ("server_kw", "client_kw", "needle"),
    [
        ({"groups": ["mlkem768"]}, {"groups": ["x25519"]}, "key-exchange group"),
        ({"ciphers": ["aes-128-gcm"]}, {"ciphers": ["chacha20-poly1305"]}, "cipher"),
        ({"namespace": "app-a"}, {"namespace": "app-b"}, "namespace"),
    ],
    ids=["no-common-group", "no-common-cipher", "namespace-mismatch"],
)
def test_negotiation_failures(
    caplog: pytest.LogCaptureFixture,
    server_kw: dict[str, Any],
    client_kw: dict[str, Any],
    needle: str,
) -> None:
    async def main() -> None:
        hx = harness(caplog, **server_kw)
        good = {k: v for k, v in server_kw.items()}

        async def session(payload: bytes = b"still serving") -> None:
            reader, writer = await na.open_connection(
                HOST, hx.port, context=good_client_ctx(**good)
            )
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
            writer.close()
            await writer.wait_closed()

        hx.normal_session = session  # type: ignore[method-assign]
        async with hx.running() as h:
            with pytest.raises(nautilus.NegotiationFailed):
                await na.open_connection(HOST, h.port, context=good_client_ctx(**client_kw))
            await h.wait_for_log("NegotiationFailed", needle)

    run(main())


# ------------------------------------------------------------- raw-socket abuse


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        b"\x00" * 64,
        b"\x17\x00\x00\x20" + b"\xaa" * 32,  # a sealed record before any key exists
        b"\x16\x00\x00\x08\x63\x00\x00\x04abcd",  # unknown handshake message type
        b"\x16\x00\x00\x08\x01\x00\x00\x04abcd",  # a ClientHello that does not decode
        b"\x15\x00\x00\x01\x28",  # a plaintext alert (negotiation_failed) at the start
        bytes(range(256)) * 8,
    ],
    ids=["http", "zeros", "sealed-first", "bad-type", "bad-hello", "alert-first", "bytes"],
)
def test_garbage_from_a_raw_socket(caplog: pytest.LogCaptureFixture, garbage: bytes) -> None:
    async def main() -> None:
        async with harness(caplog).running() as h:
            raw = await raw_exchange(h.port, garbage)
            assert raw.elapsed < 2
            # an alert or nothing at all (an alert received is never answered)
            assert raw.reply == b"" or raw.reply[0] == ALERT_RECORD
            assert raw.sockname not in h.handled
            await h.wait_for_log("handshake", "failed")

    run(main())


@pytest.mark.parametrize("layer", ["record", "message"])
def test_oversized_handshake_message(caplog: pytest.LogCaptureFixture, layer: str) -> None:
    """A plaintext handshake record (or message) declaring a huge length is
    refused at once: the server does not wait to buffer it."""
    if layer == "record":
        attack = b"\x16\xff\xff\xff" + b"\x01" * 1000
    else:  # a full 16 KiB record whose message header declares 16 MiB
        attack = b"\x16\x00\x40\x00" + b"\x01\xff\xff\xff" + b"\x00" * (16384 - 4)

    async def main() -> None:
        async with harness(caplog).running() as h:
            raw = await raw_exchange(h.port, attack)
            assert raw.reply == plain_alert(22)  # record_overflow
            assert raw.elapsed < 2
            await h.wait_for_log("ProtocolViolation", "record_overflow")

    run(main())


# --------------------------------------------------------------------- timeouts


def test_silent_client_is_timed_out_by_the_server(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with harness(caplog, handshake_timeout=0.5).running() as h:
            silent = asyncio.create_task(raw_exchange(h.port, b""))
            await asyncio.sleep(0.1)
            await h.normal_session(b"served while a client stays silent")
            raw = await silent
            assert raw.reply == plain_alert(90)  # handshake_timeout
            assert 0.4 < raw.elapsed < 3
            await h.wait_for_log("HandshakeTimeout")

    run(main())


def test_silent_server_times_out_the_client() -> None:
    async def main() -> None:
        seen = asyncio.get_running_loop().create_future()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(await reader.read())  # everything until the client closes
            writer.close()

        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(nautilus.HandshakeTimeout):
            await na.open_connection(HOST, port, context=good_client_ctx(handshake_timeout=0.3))
        assert 0.25 < time.monotonic() - t0 < 3
        sent = await asyncio.wait_for(seen, 3)
        assert sent[0] == HANDSHAKE_RECORD  # the ClientHello...
        assert sent.endswith(plain_alert(90))  # ... then the timeout alert, then EOF
        server.close()
        await server.wait_closed()

    run(main())


def test_client_that_stalls_after_its_hello(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with harness(caplog, handshake_timeout=0.5).running() as h:
            hand = Connection(good_client_ctx(), "client")
            hand.start(time.time())
            stalled = asyncio.create_task(raw_exchange(h.port, hand.data_to_send()))
            await asyncio.sleep(0.1)
            await h.normal_session(b"served while a client stalls")
            raw = await stalled
            assert raw.reply[0] == HANDSHAKE_RECORD  # the server's flight...
            # ... then its timeout alert, sealed: header, 1-byte alert, type, 16-byte tag
            assert raw.reply[-22:-18] == bytes([SEALED_RECORD, 0, 0, 18])
            assert 0.4 < raw.elapsed < 3
            assert raw.sockname not in h.handled
            await h.wait_for_log("HandshakeTimeout")

    run(main())


async def _connected_by_hand(
    port: int, **kw: Any
) -> tuple[Connection, asyncio.StreamReader, asyncio.StreamWriter]:
    """A client Connection driven by hand over plain TCP, its handshake done."""
    hand = Connection(good_client_ctx(**kw), "client")
    hand.start(time.time())
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(hand.data_to_send())
    while not hand.handshake_complete:
        data = await asyncio.wait_for(reader.read(1 << 16), 5)
        assert data, "the server closed during the handshake"
        hand.receive_data(data, time.time())
        writer.write(hand.data_to_send())
    return hand, reader, writer


async def _echoed(hand: Connection, reader: asyncio.StreamReader, size: int) -> bytes:
    """Read and open the server's records until ``size`` bytes of data came back."""
    got = b""
    while len(got) < size:
        data = await asyncio.wait_for(reader.read(1 << 16), 5)
        assert data, "the server closed before echoing"
        hand.receive_data(data, time.time())
        while (event := hand.next_event()) is not None:
            if isinstance(event, nautilus.DataReceived):
                got += event.data
            else:
                assert not isinstance(event, nautilus.ConnectionClosed), event.error
    return got


def test_a_client_that_stalls_in_the_middle_of_a_record(caplog: pytest.LogCaptureFixture) -> None:
    """Once connected, a peer that leaves a record incomplete for
    record_timeout is sent a record_timeout alert and disconnected; the
    server's application gets RecordTimeout, and so does the stalled client."""

    async def main() -> None:
        async with harness(caplog, record_timeout=0.5).running() as h:
            hand, reader, writer = await _connected_by_hand(h.port)
            hand.send_data(b"first, a whole record")
            writer.write(hand.data_to_send())
            assert await _echoed(hand, reader, 21) == b"first, a whole record"
            hand.send_data(b"then half of one")
            record = hand.data_to_send()
            writer.write(record[: len(record) // 2])
            t0 = time.monotonic()
            rest = await asyncio.wait_for(reader.read(), 5)  # until the server's FIN
            elapsed = time.monotonic() - t0
            writer.close()
            assert 0.4 < elapsed < 3
            # One sealed alert: header, 1-byte alert, type, 16-byte tag.
            assert rest[:4] == bytes([SEALED_RECORD, 0, 0, 18])
            assert len(rest) == 22
            hand.receive_data(rest, time.time())
            alert, closed = hand.next_event(), hand.next_event()
            assert isinstance(alert, nautilus.AlertReceived)
            assert alert.code == 95
            assert isinstance(closed, nautilus.ConnectionClosed)
            assert isinstance(closed.error, nautilus.RecordTimeout)
            assert "record_timeout" in str(closed.error)
            await asyncio.sleep(0.1)
            assert [type(e) for e in h.server_errors] == [nautilus.RecordTimeout]
            assert "incomplete for 0.5 s" in str(h.server_errors[0])

    run(main())


async def _stall_after_the_first_record_of_a_message(
    hand: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Send the first of four records of a message, then nothing: the server
    (record_timeout=0.5) must answer with its record_timeout alert and close."""
    hand.send_message(os.urandom(2000))  # four records (of 512 bytes)
    out = hand.data_to_send()
    first = 4 + int.from_bytes(out[1:4], "big")
    assert out[0] == SEALED_RECORD
    assert first < len(out)
    writer.write(out[:first])
    t0 = time.monotonic()
    rest = await asyncio.wait_for(reader.read(), 5)  # until the server's FIN
    elapsed = time.monotonic() - t0
    writer.close()
    assert 0.4 < elapsed < 3
    hand.receive_data(rest, time.time())
    events = list(iter(hand.next_event, None))
    assert isinstance(events[-1], nautilus.ConnectionClosed)
    assert isinstance(events[-1].error, nautilus.RecordTimeout)


def test_a_client_that_stalls_in_the_middle_of_a_message(caplog: pytest.LogCaptureFixture) -> None:
    """The same for a message of the message API cut at a record boundary:
    every record is complete, the message is not."""

    async def main() -> None:
        async with harness(caplog, record_timeout=0.5).running() as h:
            # Small records: the first arrives whole, in one read.
            hand, reader, writer = await _connected_by_hand(h.port, max_record_size=512)
            await _stall_after_the_first_record_of_a_message(hand, reader, writer)
            await asyncio.sleep(0.1)
            assert [type(e) for e in h.server_errors] == [nautilus.RecordTimeout]

    run(main())


def test_a_channel_peer_that_stalls_after_one_record_of_a_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same on a channel, whose reads of exactly one record take the
    message lane: a record that starts a longer message, read alone, is
    followed by nothing, and the channel is timed out all the same."""

    async def main() -> None:
        errors: list[BaseException] = []

        async def on_channel(channel: na.Channel) -> None:
            try:
                async for _message in channel:
                    pass
            except Exception as exc:
                errors.append(exc)

        async with harness(caplog).running():
            ctx = Context(SERVER_ID, record_timeout=0.5)
            server = await na.start_channel_server(on_channel, HOST, 0, context=ctx)
            port = server.sockets[0].getsockname()[1]
            hand, reader, writer = await _connected_by_hand(port, max_record_size=512)
            for _ in range(2):  # whole messages, one record each, read alone
                hand.send_message(bytes(508))
                writer.write(hand.data_to_send())
                await asyncio.sleep(0.1)
            await _stall_after_the_first_record_of_a_message(hand, reader, writer)
            await asyncio.sleep(0.1)
            assert [type(e) for e in errors] == [nautilus.RecordTimeout]
            server.close()
            await server.wait_closed()

    run(main())


def test_a_client_that_sends_a_record_slowly_is_not_timed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """record_timeout bounds the time without progress, not a record's whole
    time: a record sent in pieces, each within the timeout, arrives."""

    async def main() -> None:
        # (0.2 s between pieces, 0.6 s under the timeout: a loaded machine's
        # event loop may lag, and the test runs both sides in one loop)
        async with harness(caplog, record_timeout=0.8).running() as h:
            hand, reader, writer = await _connected_by_hand(h.port)
            payload = os.urandom(3000)
            hand.send_data(payload)
            record = hand.data_to_send()
            pieces = 8  # 8 x 0.2 s: twice the timeout in all
            step = -(-len(record) // pieces)
            for i in range(0, len(record), step):
                writer.write(record[i : i + step])
                await asyncio.sleep(0.2)
            assert await _echoed(hand, reader, len(payload)) == payload
            writer.close()
            assert not h.server_errors

    run(main())


def test_a_record_left_incomplete_while_the_application_does_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Time during which the server's application has paused reading
    (backpressure) does not count against the peer: a client whose writes
    wait on the server for longer than record_timeout is not timed out."""

    async def main() -> None:
        received = bytearray()
        done = asyncio.get_running_loop().create_future()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.sleep(1.5)  # the reader's buffer fills: reading pauses
                while data := await reader.read(1 << 16):
                    received.extend(data)
                done.set_result(None)
            except Exception as exc:
                done.set_exception(exc)
            writer.close()

        ctx = Context(SERVER_ID, record_timeout=0.3)
        server = await na.start_server(slow, HOST, 0, context=ctx, limit=1 << 14)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await na.open_connection(HOST, port, context=good_client_ctx())
        payload = os.urandom(8 << 20)
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done, 10)
        assert received == payload
        server.close()
        await server.wait_closed()

    run(main())


def test_a_pause_of_the_application_right_after_part_of_a_record_does_not_count() -> None:
    """The server's application pauses reading for most of record_timeout
    just as part of a record arrives, then resumes: the peer has the whole
    timeout again from the resume (it sends the rest after the timeout
    counted from the partial record, but within it counted from the resume)."""

    class Pausing(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            self.data = b""
            self.lost: BaseException | str | None = "open"

        def data_received(self, data: bytes) -> None:
            self.data += data
            if data == b"pause":
                self.transport.pause_reading()
                loop = asyncio.get_running_loop()
                loop.call_later(0.9, self.transport.resume_reading)

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost = exc

    async def main() -> None:
        apps: list[Pausing] = []

        def factory() -> Pausing:
            apps.append(Pausing())
            return apps[-1]

        ctx = Context(SERVER_ID, record_timeout=1.0)
        server = await na.create_server(factory, HOST, 0, context=ctx)
        port = server.sockets[0].getsockname()[1]
        hand, _reader, writer = await _connected_by_hand(port)
        hand.send_data(b"pause")
        first = hand.data_to_send()
        hand.send_data(b"x" * 100)
        second = hand.data_to_send()
        writer.write(first + second[:50])  # the pause, and half of the next record
        await asyncio.sleep(1.2)  # past the timeout from here, not from the resume
        writer.write(second[50:])
        await asyncio.sleep(0.3)
        assert apps[0].lost == "open"
        assert apps[0].data == b"pause" + b"x" * 100
        writer.close()
        server.close()
        await server.wait_closed()

    run(main())


# ------------------------------------------------------------ man in the middle


class TamperOnce:
    """A proxy hook: once armed, flip one bit of the next sealed record, once."""

    def __init__(self) -> None:
        self.armed = False
        self.tampered = 0

    def __call__(self, record: bytes, _index: int) -> bytes:
        if self.armed and record[0] == SEALED_RECORD and not self.tampered:
            self.tampered += 1
            return flip_bit(record)
        return record


@pytest.mark.parametrize("direction", ["client-to-server", "server-to-client"])
def test_tampered_application_record(caplog: pytest.LogCaptureFixture, direction: str) -> None:
    tamper = TamperOnce()

    async def main() -> None:
        async with harness(caplog).running() as h:
            hooks = {"c2s": tamper} if direction == "client-to-server" else {"s2c": tamper}
            async with Proxy(h.port, **hooks) as proxy:
                reader, writer = await na.open_connection(
                    HOST, proxy.port, context=good_client_ctx(), server_name="proxied"
                )
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                tamper.armed = True
                writer.write(b"this record gets one bit flipped")
                with pytest.raises(nautilus.IntegrityError):
                    await asyncio.wait_for(reader.read(), 5)
                assert tamper.tampered == 1
                writer.close()
                for _ in range(300):
                    if h.server_errors:
                        break
                    await asyncio.sleep(0.01)
                # the server's reader raised too: it detected the forgery itself
                # (client-to-server) or got the client's bad_record_mac alert
                assert [type(e) for e in h.server_errors] == [nautilus.IntegrityError]

    run(main())


def test_tampered_record_after_good_records_in_one_segment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Good records before the forged one are delivered; then IntegrityError."""
    armed = False
    sealed_after_arming = 0

    def tamper(record: bytes, _index: int) -> bytes:
        nonlocal sealed_after_arming
        if not (armed and record[0] == SEALED_RECORD):
            return record
        sealed_after_arming += 1
        return flip_bit(record) if sealed_after_arming == 3 else record

    async def main() -> None:
        nonlocal armed
        async with harness(caplog).running() as h, Proxy(h.port, c2s=tamper) as proxy:
            reader, writer = await na.open_connection(
                HOST, proxy.port, context=good_client_ctx(), server_name="proxied"
            )
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            armed = True
            writer.write(os.urandom(40000))  # three records, forwarded in one write
            with pytest.raises(nautilus.NautilusError):
                await asyncio.wait_for(reader.read(), 5)
            for _ in range(300):
                if h.server_errors:
                    break
                await asyncio.sleep(0.01)
            assert [type(e) for e in h.server_errors] == [nautilus.IntegrityError]

    run(main())


@pytest.mark.parametrize("direction", ["client-to-server", "server-to-client"])
def test_tampered_message_on_a_channel(direction: str) -> None:
    """Request/response on a channel takes the message lane (one record per
    read); a forged record there fails both ends as on the general path."""
    tamper = TamperOnce()

    async def main() -> None:
        served: list[na.Channel] = []
        server_errors: list[BaseException] = []

        async def echo(channel: na.Channel) -> None:
            served.append(channel)
            try:
                while True:
                    channel.send_message(await channel.recv_message())
                    await channel.drain()
            except EOFError:
                pass
            except nautilus.NautilusError as exc:
                server_errors.append(exc)

        server = await na.start_channel_server(echo, HOST, 0, context=Context(SERVER_ID))
        port = server.sockets[0].getsockname()[1]
        hooks = {"c2s": tamper} if direction == "client-to-server" else {"s2c": tamper}
        try:
            async with Proxy(port, **hooks) as proxy:
                channel = await na.open_channel(
                    HOST, proxy.port, context=good_client_ctx(), server_name="proxied"
                )
                for i in range(20):
                    channel.send_message(b"ping %d" % i)
                    assert await channel.recv_message() == b"ping %d" % i
                tamper.armed = True
                channel.send_message(b"this record gets one bit flipped")
                with pytest.raises(nautilus.IntegrityError):
                    await asyncio.wait_for(channel.recv_message(), 5)
                assert tamper.tampered == 1
                for _ in range(300):
                    if server_errors:
                        break
                    await asyncio.sleep(0.01)
                # The server detected the forgery (client-to-server) or got the
                # client's bad_record_mac alert: either way an IntegrityError.
                assert [type(e) for e in server_errors] == [nautilus.IntegrityError]
            # The server still serves a new channel.
            again = await na.open_channel(HOST, port, context=good_client_ctx())
            again.send_message(b"after the attack")
            assert await asyncio.wait_for(again.recv_message(), 5) == b"after the attack"
            again.close()
            await again.wait_closed()
        finally:
            for channel in served:
                channel.close()
            server.close()
            await server.wait_closed()

    run(main())


def _replace_server_share(record: bytes) -> bytes:
    """Decode a plaintext ServerHello record and replace its key share with
    random bytes of the same length."""
    assert record[0] == HANDSHAKE_RECORD
    assert record[4] == 2  # ServerHello
    body = 8  # record header (4) + handshake header (4)
    share_len_at = body + 2 + 32 + 2 + 2  # version, random, group, cipher
    share_len = int.from_bytes(record[share_len_at : share_len_at + 2], "big")
    start = share_len_at + 2
    assert start + share_len + 1 == len(record)  # then psk_mode (1 byte)
    return record[:start] + os.urandom(share_len) + record[start + share_len :]


@pytest.mark.parametrize("group", GROUPS)
def test_substituted_server_key_share(caplog: pytest.LogCaptureFixture, group: str) -> None:
    def mitm(record: bytes, index: int) -> bytes:
        return _replace_server_share(record) if index == 0 else record

    async def main() -> None:
        async with harness(caplog, groups=list(GROUPS)).running() as h:
            async with Proxy(h.port, s2c=mitm) as proxy:
                with pytest.raises(nautilus.KeyAgreementFailed):
                    await na.open_connection(
                        HOST,
                        proxy.port,
                        context=good_client_ctx(groups=[group]),
                        server_name="proxied",
                    )
            await h.wait_for_log("handshake", "failed")

    run(main())


def test_replayed_client_hello(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with harness(caplog).running() as h, Proxy(h.port) as proxy:
            reader, writer = await na.open_connection(
                HOST, proxy.port, context=good_client_ctx(), server_name="proxied"
            )
            writer.write(b"original")
            assert await reader.readexactly(8) == b"original"
            writer.close()
            await writer.wait_closed()
            # the recorded ClientHello, sent again on a new connection
            raw = await proxy.replay_first_flight(0)
            assert raw.reply == plain_alert(92)  # replayed_hello, then EOF
            await h.wait_for_log("ProtocolViolation", "replay")
            assert raw.sockname not in h.handled  # never reached the application

    run(main())


def test_cheap_hellos_cost_no_more_when_the_hello_cache_is_full() -> None:
    """A client hello is recorded in the server's replay cache before anything
    costly (key agreement, signing), so a client can send hellos that fail
    cheaply (here: another namespace), one per connection, about 272 a second
    to keep the 65536-entry cache full. Every hello then made the cache scan
    all its entries for expired ones (7 ms each for 65536): the server paid
    tens of times what the hello cost to send. Per hello, a full cache must
    cost about what an empty one does."""
    from nautilus.context import REPLAY_CACHE_SIZE

    ctx = Context(SERVER_ID)
    conn = Connection(good_client_ctx(namespace="not-the-server's"))
    conn.start(time.time())
    template = conn.data_to_send()
    assert template[:1] == bytes([HANDSHAKE_RECORD])
    assert template[4] == 1  # a ClientHello
    count = 150

    def hellos() -> list[bytes]:  # each with its own random (bytes 10..42)
        return [template[:10] + os.urandom(32) + template[42:] for _ in range(count)]

    async def cost(flights: list[bytes], port: int) -> float:
        start = time.process_time()
        for flight in flights:
            raw = await raw_exchange(port, flight)
            assert raw.reply[:1] == bytes([ALERT_RECORD])  # refused: namespace
        return time.process_time() - start

    async def main() -> tuple[float, float]:
        server = await na.start_server(lambda r, w: w.close(), HOST, 0, context=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            await cost(hellos()[:20], port)  # warm up
            empty = await cost(hellos(), port)
            now = time.time()
            for _ in range(REPLAY_CACHE_SIZE):  # as a flood of hellos leaves it
                ctx._seen_hellos.first_use(os.urandom(32), now + 241.0, now)
            full = await cost(hellos(), port)
            return empty, full
        finally:
            server.close()
            await server.wait_closed()

    empty, full = run(main(), timeout=60)
    assert full < 3 * empty + 0.05, (empty, full)


def test_replay_while_the_original_is_still_connected(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with harness(caplog).running() as h, Proxy(h.port) as proxy:
            reader, writer = await na.open_connection(
                HOST, proxy.port, context=good_client_ctx(), server_name="proxied"
            )
            raw = await proxy.replay_first_flight(0)
            assert raw.reply == plain_alert(92)
            # the original connection is unaffected
            writer.write(b"original")
            assert await reader.readexactly(8) == b"original"
            writer.close()
            await writer.wait_closed()

    run(main())


# ------------------------------------------- a hook raising a BaseException


class Interrupt(BaseException):
    """Not an Exception, as asyncio.CancelledError or KeyboardInterrupt."""


class Stop(KeyboardInterrupt):
    """A KeyboardInterrupt of the test's own (caught by pytest.raises)."""


STEP = "example.com/interrupted"


def _step_handshake(step: nautilus.CustomProtocolStep) -> nautilus.Handshake:
    hs = nautilus.Handshake()
    hs.add(step)
    return hs


def _interrupting_client(exc_type: type[BaseException]) -> Context:
    def interrupt(ctx: nautilus.StepContext, payload: bytes | None) -> bytes:
        raise exc_type("from the hook")

    step = nautilus.CustomProtocolStep(STEP, client_payload=interrupt)
    return good_client_ctx(handshake=_step_handshake(step))


def _server_with_the_step() -> Context:
    return Context(SERVER_ID, handshake=_step_handshake(nautilus.CustomProtocolStep(STEP)))


def test_a_hook_raising_a_base_exception_is_a_local_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/asyncio.md: a BaseException that is not KeyboardInterrupt or
    SystemExit (asyncio.CancelledError...) from a hook fails the connection as
    a local error, reported to the loop's exception handler; it was reported
    as the peer closing the connection."""

    async def main() -> None:
        async with Harness(caplog, _server_with_the_step()).running() as h:
            handled: list[dict[str, Any]] = []
            asyncio.get_running_loop().set_exception_handler(lambda _, c: handled.append(c))
            with pytest.raises(nautilus.HandshakeError, match="interrupted by Interrupt") as info:
                await asyncio.wait_for(
                    na.open_connection(HOST, h.port, context=_interrupting_client(Interrupt)), 5
                )
            assert isinstance(info.value.__cause__, Interrupt)
            assert [type(c.get("exception")) for c in handled] == [Interrupt]
            # The server was told: internal_error, not an end of the connection.
            await h.wait_for_log("failed", "internal_error")

    run(main())


@pytest.mark.skipif(
    os.environ.get("NAUTILUS_TEST_LOOP") == "uvloop",
    reason="uvloop hands an exception raised in a protocol callback to the transport's "
    "error path: it does not leave the loop",
)
def test_a_hook_raising_keyboard_interrupt_propagates_after_a_local_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """KeyboardInterrupt (and SystemExit) from a hook leave the event loop, as
    asyncio lets them; the connection failed locally before, and the waiting
    open_connection() learns it when the loop runs again."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    loop = asyncio.new_event_loop()
    try:
        server = loop.run_until_complete(
            na.start_server(lambda r, w: None, HOST, 0, context=_server_with_the_step())
        )
        port = server.sockets[0].getsockname()[1]
        task = loop.create_task(na.open_connection(HOST, port, context=_interrupting_client(Stop)))
        guard = loop.call_later(5, task.cancel)  # (bounded in time whatever happens)
        with pytest.raises(Stop):
            loop.run_until_complete(task)
        with pytest.raises(nautilus.HandshakeError, match="interrupted by Stop") as info:
            loop.run_until_complete(task)
        assert isinstance(info.value.__cause__, Stop)
        guard.cancel()

        async def server_told() -> None:
            while not any(
                "internal_error" in r.getMessage() for r in caplog.records if r.name == LOGGER
            ):
                await asyncio.sleep(0.01)

        loop.run_until_complete(asyncio.wait_for(server_told(), 5))
        server.close()
        loop.run_until_complete(server.wait_closed())
    finally:
        loop.close()
