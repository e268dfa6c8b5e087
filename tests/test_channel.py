"""nautilus.asyncio.Channel: messages over real loopback TCP.

Every test runs its own event loop through ``run()``, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from protocol_helpers import record_general_path, round_trips_in_the_lane

import nautilus
import nautilus.asyncio as na
from nautilus import Context, Identity
from nautilus.record import ContentType

HOST = "127.0.0.1"
SERVER_ID = Identity.generate()
CLIENT_ID = Identity.generate()


def run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """Run ``coro`` in a fresh event loop; fail if it takes over ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client_ctx(**kw: Any) -> Context:
    kw.setdefault("trusted_peers", [SERVER_ID.public])
    return Context(**kw)


@contextlib.asynccontextmanager
async def pair(
    server_ctx: Context | None = None, ctx: Context | None = None, **kw: Any
) -> AsyncIterator[tuple[na.Channel, na.Channel]]:
    """A connected (client channel, server channel) pair on loopback."""
    accepted: asyncio.Queue[na.Channel] = asyncio.Queue()
    server = await na.start_channel_server(
        accepted.put_nowait,
        HOST,
        0,
        context=server_ctx if server_ctx is not None else Context(SERVER_ID),
        **kw,
    )
    port = server.sockets[0].getsockname()[1]
    client = await na.open_channel(
        HOST, port, context=ctx if ctx is not None else client_ctx(), **kw
    )
    served = await accepted.get()
    try:
        yield client, served
    finally:
        client.close()
        served.close()
        server.close()
        await server.wait_closed()


def numbered(i: int, rng: random.Random) -> bytes:
    """Message ``i``: its number, then 0..300 bytes derived from it."""
    return i.to_bytes(4, "big") + bytes([i % 251]) * rng.randrange(300)


# ------------------------------------------------------------------ ordering


def test_counters_are_reachable_from_a_channel_and_its_stream_twin() -> None:
    """Channel.stats and get_extra_info("nautilus_stats") give the connection's
    counters (application bytes each way, with the messages' length prefixes,
    key updates) on both sides."""

    async def main() -> None:
        async with pair() as (client, served):
            client.send_message(b"x" * 100)
            assert await served.recv_message() == b"x" * 100
            served.send_message(b"y" * 10)
            assert await client.recv_message() == b"y" * 10
            for channel, sent, received in ((client, 104, 14), (served, 14, 104)):
                stats = channel.stats
                assert stats is not None
                assert (stats.bytes_sent, stats.bytes_received) == (sent, received)
                assert stats.key_updates == 0
                assert channel.get_extra_info("nautilus_stats") == stats

    run(main())


def test_ten_thousand_messages_in_order_both_ways() -> None:
    count = 10_000
    rng = random.Random(1)
    sent = [numbered(i, rng) for i in range(count)]

    async def main() -> None:
        async with pair() as (client, served):

            async def echo() -> None:
                async for message in served:
                    served.send_message(message)
                    await served.drain()

            echo_task = asyncio.create_task(echo())
            for i, message in enumerate(sent):
                client.send_message(message)
                if i % 500 == 0:
                    await client.drain()
            await client.drain()
            got = [await client.recv_message() for _ in range(count)]
            assert got == sent
            client.close()
            await client.wait_closed()
            await echo_task  # the server saw the close as the end of its iteration

    run(main())


def test_request_response_takes_the_message_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """One message per record each way: both sides open and seal each message
    in the lane, not the general path."""
    general = record_general_path(monkeypatch)

    async def main() -> None:
        async with pair() as (client, served):
            await round_trips_in_the_lane(client, served, general)

    run(main())


def test_send_messages_batched() -> None:
    rng = random.Random(2)
    batches = [[numbered(i * 1000 + j, rng) for j in range(1000)] for i in range(5)]

    async def main() -> None:
        async with pair() as (client, served):
            client.send_messages(batches[0])  # a list
            client.send_messages(iter(batches[1]))  # an iterator
            client.send_messages(m for m in batches[2])  # a generator
            client.send_messages(tuple(bytearray(m) for m in batches[3]))  # bytearrays
            client.send_messages(memoryview(m) for m in batches[4])  # memoryviews
            client.send_messages([])  # nothing at all
            await client.drain()
            expected = [m for batch in batches for m in batch]
            got = [await served.recv_message() for _ in expected]
            assert got == expected
            assert served.queued == (0, 0)

    run(main())


def test_send_messages_argument_errors() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            for bad in (b"abc", bytearray(b"abc"), "abc", memoryview(b"abc")):
                with pytest.raises(TypeError, match="iterable"):
                    client.send_messages(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                client.send_messages([b"ok", "not bytes"])  # type: ignore[list-item]
            for bad in (42, None):  # named, not "'int' object is not iterable"
                with pytest.raises(TypeError, match=r"^messages must be an iterable .* not "):
                    client.send_messages(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                client.send_message("text")  # type: ignore[arg-type]
            client.send_message(b"still usable")
            assert await served.recv_message() == b"still usable"

    run(main())


def test_empty_messages() -> None:
    pattern = [b"", b"x", b"", b"", b"yz", b""]

    async def main() -> None:
        async with pair() as (client, served):
            for m in pattern:
                client.send_message(m)
            client.send_messages(pattern)
            client.send_messages([b""] * 100)
            await client.drain()
            expected = pattern + pattern + [b""] * 100
            assert [await served.recv_message() for _ in expected] == expected
            client.close()
            with pytest.raises(EOFError):
                await served.recv_message()

    run(main())


# -------------------------------------------------------------------- bounds


def test_message_too_large_leaves_the_channel_usable() -> None:
    limit = 1000

    async def main() -> None:
        async with pair(ctx=client_ctx(max_message_size=limit)) as (client, served):
            with pytest.raises(nautilus.MessageTooLarge, match="1001 bytes"):
                client.send_message(b"x" * (limit + 1))
            # All or nothing: one oversized message in a batch sends nothing.
            with pytest.raises(nautilus.MessageTooLarge):
                client.send_messages([b"first", b"y" * (limit + 1), b"last"])
            client.send_message(b"z" * limit)
            client.send_messages([b"a", b"b"])
            await client.drain()
            assert await served.recv_message() == b"z" * limit
            assert await served.recv_message() == b"a"
            assert await served.recv_message() == b"b"
            assert not client.is_closing()

    run(main())


def test_oversized_frame_from_peer_is_a_protocol_violation() -> None:
    """A peer whose context allows bigger messages sends one over our bound: the
    receiver's connection closes with ProtocolViolation (after what came before)."""

    async def main() -> None:
        server_ctx = Context(SERVER_ID, max_message_size=1000)
        async with pair(server_ctx, client_ctx(max_message_size=1 << 20)) as (client, served):
            client.send_message(b"fits" * 250)  # exactly 1000 bytes
            client.send_message(b"x" * 1001)
            client.send_message(b"never delivered")
            assert await served.recv_message() == b"fits" * 250
            with pytest.raises(nautilus.ProtocolViolation, match="max_message_size"):
                await served.recv_message()
            with pytest.raises(nautilus.ProtocolViolation):
                await served.recv_message()  # the error stays
            with pytest.raises(nautilus.ProtocolViolation):
                await served.wait_closed()
            with pytest.raises(nautilus.ClosedError) as info:
                served.send_message(b"late")
            assert isinstance(info.value.__cause__, nautilus.ProtocolViolation)
            # The sender learns it from the receiver's record_overflow alert.
            with pytest.raises(nautilus.ProtocolViolation):
                await client.recv_message()
            assert client.is_closing()

    run(main())


# --------------------------------------------------------------------- close


def test_close_right_after_sending_delivers_everything_then_eof() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            client.send_messages(b"%d" % i for i in range(500))
            for i in range(500, 1000):
                client.send_message(b"%d" % i)
            client.close()  # no drain: close_notify goes after the messages
            client.close()  # idempotent
            assert client.is_closing()
            got = [m async for m in served]  # ends at EOF, without raising
            assert got == [b"%d" % i for i in range(1000)]
            with pytest.raises(EOFError):
                await served.recv_message()
            with pytest.raises(EOFError):
                await served.recv_message()  # and stays at EOF
            with pytest.raises(nautilus.ClosedError, match="cannot send: the peer closed"):
                served.send_message(b"too late")
            with pytest.raises(nautilus.ClosedError):
                await served.drain()
            await served.wait_closed()  # a clean close: no error
            await client.wait_closed()
            with pytest.raises(nautilus.ClosedError, match="closed"):
                client.send_messages([b"after close"])
            with pytest.raises(EOFError):
                await client.recv_message()

    run(main())


def test_recv_waiting_when_either_side_closes() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            waiting = asyncio.create_task(served.recv_message())
            await asyncio.sleep(0.01)
            client.close()
            with pytest.raises(EOFError, match="peer"):
                await waiting
            await client.wait_closed()
        async with pair() as (client, served):
            waiting = asyncio.create_task(client.recv_message())
            await asyncio.sleep(0.01)
            client.close()  # a local close wakes the local reader too
            with pytest.raises(EOFError):
                await waiting

    run(main())


def test_messages_received_before_a_local_close_stay_readable() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            served.send_messages([b"one", b"two"])
            await served.drain()
            while client.queued[0] < 2:
                await asyncio.sleep(0.005)
            client.close()
            assert await client.recv_message() == b"one"
            assert await client.recv_message() == b"two"
            with pytest.raises(EOFError):
                await client.recv_message()

    run(main())


def test_interleaved_sends_and_close_from_both_sides() -> None:
    """Both sides send while one closes: no error, every message before the
    close_notify arrives, in order, then EOF."""

    async def main() -> None:
        for round_ in range(5):
            async with pair() as (client, served):

                async def chatter(channel: na.Channel, count: int) -> int:
                    sent = 0
                    with contextlib.suppress(nautilus.ClosedError):
                        for i in range(count):
                            channel.send_message(i.to_bytes(4, "big"))
                            sent += 1
                            if i % 50 == 0:
                                await asyncio.sleep(0)
                    return sent

                async def collect(channel: na.Channel) -> list[int]:
                    return [int.from_bytes(m, "big") async for m in channel]

                collector = asyncio.create_task(collect(served))
                talker = asyncio.create_task(chatter(served, 100_000))
                n = await chatter(client, 200 + 100 * round_)
                client.close()
                got = await collector
                assert got == list(range(n))
                assert await talker < 100_000  # it saw the close and stopped
                await client.wait_closed()
                await served.wait_closed()

    run(main(), timeout=20)


def test_truncation_is_reported_after_the_messages_before_it() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            client.send_messages([b"a", b"b"])
            await client.drain()
            await asyncio.sleep(0.02)
            client.abort()  # no close_notify
            client.abort()  # idempotent
            with pytest.raises(nautilus.ConnectionLost, match="aborted"):
                await client.recv_message()
            assert await served.recv_message() == b"a"
            assert await served.recv_message() == b"b"
            with pytest.raises(nautilus.ConnectionLost):
                await served.recv_message()
            with pytest.raises(nautilus.ConnectionLost):
                await served.wait_closed()
            with pytest.raises(nautilus.ConnectionLost):
                await served.drain()

    run(main())


def test_close_notify_in_the_middle_of_a_message_is_a_protocol_violation() -> None:
    """A peer that sends part of a message frame, then close_notify, cut its
    own message short: the channel reports a ProtocolViolation after the
    whole messages before it, never a clean end (EOFError) that would hide
    the lost message. The peer gets a decode_error alert."""

    async def main() -> None:
        async with pair() as (client, served):
            client.send_message(b"whole")
            transport = client._route.route_transport()
            assert transport is not None
            # Part of the next frame: its length (10) and 3 bytes of its body.
            transport._conn._seal_application(b"\x00\x00\x00\x0aabc", ContentType.MESSAGE)
            client.close()  # close_notify right behind it
            assert await served.recv_message() == b"whole"
            with pytest.raises(nautilus.ProtocolViolation, match="middle of a message"):
                await served.recv_message()
            with pytest.raises(nautilus.ProtocolViolation):
                await served.wait_closed()

    run(main())


# ------------------------------------------------------------ recv_messages


async def queued_at_least(channel: na.Channel, count: int) -> None:
    while channel.queued[0] < count:
        await asyncio.sleep(0.005)


async def take_until_end(
    channel: na.Channel, max_count: int | None = None
) -> tuple[list[bytes], Exception]:
    """recv_messages() until it raises: (the messages, what it raised)."""
    got: list[bytes] = []
    while True:
        try:
            got += await channel.recv_messages(max_count)
        except Exception as exc:
            return got, exc


def test_recv_messages_takes_what_is_queued_up_to_max_count() -> None:
    rng = random.Random(3)
    sent = [numbered(i, rng) for i in range(100)]

    async def main() -> None:
        async with pair() as (client, served):
            served.send_messages(sent)
            await served.drain()
            await queued_at_least(client, 100)
            assert client.queued == (100, sum(map(len, sent)))
            assert await client.recv_messages(1) == sent[:1]
            assert await client.recv_messages(max_count=9) == sent[1:10]
            assert client.queued == (90, sum(map(len, sent[10:])))
            assert await client.recv_messages(90) == sent[10:]  # exactly what is left
            assert client.queued == (0, 0)
            served.send_messages(sent[:5])
            await queued_at_least(client, 5)
            assert await client.recv_messages(1000) == sent[:5]  # fewer than asked
            served.send_messages(sent[5:])
            got: list[bytes] = []
            while len(got) < 95:
                batch = await client.recv_messages()  # no limit
                assert batch, "recv_messages returns at least one message"
                got += batch
            assert got == sent[5:]
            assert client.queued == (0, 0)

    run(main())


def test_the_queued_byte_count_is_exact_when_frames_span_records() -> None:
    """Batches sent in one loop iteration are sealed together in full 16 KiB
    records, so frames are cut across records: the messages still arrive
    whole and in order, and ``queued`` counts exactly their bytes."""
    rng = random.Random(5)
    sent = [numbered(i, rng) * rng.randrange(1, 12) for i in range(400)]

    async def main() -> None:
        async with pair() as (client, served):
            for i in range(0, len(sent), 20):
                served.send_messages(sent[i : i + 20])
            await served.drain()
            await queued_at_least(client, len(sent))
            assert client.queued == (len(sent), sum(map(len, sent)))
            assert await client.recv_messages() == sent
            assert client.queued == (0, 0)

    run(main())


def test_taking_one_at_a_time_from_a_long_queue_then_the_rest() -> None:
    """recv_message() from a queue of thousands, mixed with recv_messages()
    with and without max_count: order and ``queued`` stay exact."""
    rng = random.Random(11)
    sent = [numbered(i, rng) for i in range(12_000)]

    async def main() -> None:
        async with pair(max_queue=20_000, max_queue_bytes=1 << 26) as (client, served):
            served.send_messages(sent)
            await served.drain()
            await queued_at_least(client, len(sent))
            got: list[bytes] = []
            for i in range(9_000):
                got.append(await client.recv_message())
                if i % 1_000 == 0:
                    assert client.queued == (len(sent) - len(got), sum(map(len, sent[len(got) :])))
            got += await client.recv_messages(max_count=500)
            assert client.queued == (len(sent) - len(got), sum(map(len, sent[len(got) :])))
            got.append(await client.recv_message())
            got += await client.recv_messages()
            assert client.queued == (0, 0)
            assert got == sent
            served.send_messages(sent[:3])  # an emptied queue fills again
            await queued_at_least(client, 3)
            assert [await client.recv_message() for _ in range(3)] == sent[:3]
            assert client.queued == (0, 0)

    run(main())


def test_recv_messages_waits_for_the_first_message() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            waiting = asyncio.create_task(served.recv_messages())
            await asyncio.sleep(0.02)
            assert not waiting.done()
            client.send_message(b"wake up")
            assert await waiting == [b"wake up"]
            # A cancelled wait loses nothing.
            waiting = asyncio.create_task(served.recv_messages())
            await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            client.send_messages([b"a", b"b"])
            got = await served.recv_messages()
            if got == [b"a"]:
                got += await served.recv_messages()
            assert got == [b"a", b"b"]

    run(main())


def test_recv_messages_at_a_clean_end_and_after_a_failure() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            client.send_messages([b"one", b"two", b"three"])
            client.close()
            got, end = await take_until_end(served, 2)
            assert got == [b"one", b"two", b"three"]
            assert isinstance(end, EOFError)
            assert "peer" in str(end)
            with pytest.raises(EOFError):
                await served.recv_messages()  # and stays at EOF
            with pytest.raises(EOFError):
                await served.recv_message()
        async with pair() as (client, served):
            client.send_messages([b"a", b"b"])
            await client.drain()
            await queued_at_least(served, 2)
            client.abort()  # no close_notify: a truncation
            with pytest.raises(nautilus.ConnectionLost):
                await client.recv_messages()
            assert await served.recv_messages() == [b"a", b"b"]
            with pytest.raises(nautilus.ConnectionLost):
                await served.recv_messages()
            with pytest.raises(nautilus.ConnectionLost):
                await served.recv_messages()  # the error stays

    run(main())


def test_recv_messages_gets_the_messages_before_an_oversized_one() -> None:
    async def main() -> None:
        server_ctx = Context(SERVER_ID, max_message_size=1000)
        async with pair(server_ctx, client_ctx(max_message_size=1 << 20)) as (client, served):
            client.send_messages([b"fits" * 250, b"also"])
            client.send_message(b"x" * 1001)
            got, end = await take_until_end(served)
            assert got == [b"fits" * 250, b"also"]
            assert isinstance(end, nautilus.ProtocolViolation)
            assert "max_message_size" in str(end)

    run(main())


def test_recv_messages_argument_checks_and_one_reader() -> None:
    async def main() -> None:
        async with pair() as (client, served):
            for bad in (0, -1):
                with pytest.raises(ValueError, match="max_count"):
                    await client.recv_messages(bad)
            for wrong in (1.5, True, "3"):
                with pytest.raises(TypeError, match="max_count"):
                    await client.recv_messages(wrong)  # type: ignore[arg-type]
            served.send_message(b"kept")
            await queued_at_least(client, 1)
            with pytest.raises(ValueError, match="at least 1"):  # checked before anything is taken
                await client.recv_messages(0)
            assert client.queued[0] == 1
            assert await client.recv_messages(None) == [b"kept"]
            first = asyncio.create_task(client.recv_message())
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="already waiting"):
                await client.recv_messages()
            served.send_message(b"for the first reader")
            assert await first == b"for the first reader"

    run(main())


def test_slow_receiver_taking_batches_resumes_the_sender() -> None:
    size = 16 * 1024
    max_bytes = 64 * 1024

    async def main() -> None:
        async with pair(max_queue=16, max_queue_bytes=max_bytes) as (client, served):
            sent = 0
            blocked: asyncio.Task[None] | None = None
            while sent < 4096:
                client.send_messages([sent.to_bytes(4, "big") + bytes(size - 4)])
                sent += 1
                drain = asyncio.create_task(client.drain())
                done, _ = await asyncio.wait({drain}, timeout=0.3)
                if not done:
                    blocked = drain
                    break
            assert blocked is not None, "drain() never blocked although nobody reads"
            assert served.queued[1] <= max_bytes + 512 * 1024
            got = 0
            while got < sent:
                for message in await served.recv_messages(5):
                    assert int.from_bytes(message[:4], "big") == got
                    got += 1
            await asyncio.wait_for(blocked, 5)  # reading resumed: the writer drained
            assert served.queued == (0, 0)

    run(main(), timeout=20)


# --------------------------------------------------------------- backpressure


def test_slow_receiver_blocks_the_senders_drain() -> None:
    size = 16 * 1024
    max_bytes = 64 * 1024

    async def main() -> None:
        async with pair(max_queue=16, max_queue_bytes=max_bytes) as (client, served):
            sent = 0
            blocked: asyncio.Task[None] | None = None
            while sent < 4096:  # at most 64 MiB; the buffers fill long before
                client.send_message(sent.to_bytes(4, "big") + bytes(size - 4))
                sent += 1
                drain = asyncio.create_task(client.drain())
                done, _ = await asyncio.wait({drain}, timeout=0.3)
                if not done:
                    blocked = drain
                    break
            assert blocked is not None, "drain() never blocked although nobody reads"
            # The receiver stopped reading: its queue is bounded (the limit plus
            # at most what one socket read held), the rest waits in TCP.
            queued_messages, queued_bytes = served.queued
            assert queued_bytes <= max_bytes + 512 * 1024
            assert queued_messages < sent
            for i in range(sent):
                message = await served.recv_message()
                assert int.from_bytes(message[:4], "big") == i
            await asyncio.wait_for(blocked, 5)  # reading resumed: the writer drained
            assert served.queued == (0, 0)

    run(main(), timeout=20)


async def queued_until(channel: na.Channel, count: int) -> None:
    """Wait until ``channel`` holds ``count`` messages (the run() timeout bounds it)."""
    while channel.queued[0] != count:
        await asyncio.sleep(0.002)


def test_reading_stops_just_past_the_queue_limits_and_resumes_at_half() -> None:
    """The queue may reach its limits; one message more stops reading, and
    taking messages resumes it once the queue is down to half the limits."""

    async def main() -> None:
        async with pair(max_queue=4, max_queue_bytes=1 << 20) as (client, served):
            for i in range(4):
                client.send_message(b"%d" % i)
                await queued_until(served, i + 1)
                assert served._reading, f"stopped reading at {i + 1} of 4 messages"
            client.send_message(b"4")
            await queued_until(served, 5)
            assert not served._reading
            assert [await served.recv_message() for _ in range(2)] == [b"0", b"1"]
            assert not served._reading  # 3 queued: over half of 4
            assert await served.recv_message() == b"2"
            assert served._reading  # 2 queued: half
        async with pair(max_queue=1000, max_queue_bytes=100) as (client, served):
            client.send_message(bytes(60))
            await queued_until(served, 1)
            client.send_message(bytes(40))
            await queued_until(served, 2)
            assert served._reading  # 100 bytes: at the limit
            client.send_message(b"x")
            await queued_until(served, 3)
            assert not served._reading  # 101 bytes
            assert await served.recv_message() == bytes(60)
            assert served._reading  # 41 bytes: below half

    run(main())


# ------------------------------------------------------------ misc behaviour


def test_session_information_and_peer_ids() -> None:
    async def main() -> None:
        server_ctx = Context(SERVER_ID, client_auth="required")
        async with pair(server_ctx, client_ctx(identity=CLIENT_ID)) as (client, served):
            assert client.peer_id == SERVER_ID.peer_id
            assert served.peer_id == CLIENT_ID.peer_id
            assert client.session is not None
            assert client.session.role == "client"
            assert served.session is not None
            assert served.session.trust is None  # a server without trust settings
            assert client.get_extra_info("peername") == served.get_extra_info("sockname")
            assert client.get_extra_info("no such thing", 7) == 7
            assert "Channel" in repr(client)
        async with pair() as (client, served):
            assert served.peer_id is None  # the client did not authenticate

    run(main())


def test_rejected_client_learns_it_on_first_recv() -> None:
    async def main() -> None:
        server_ctx = Context(SERVER_ID, client_auth="required", trusted_peers=[SERVER_ID.public])
        server = await na.start_channel_server(lambda ch: None, HOST, 0, context=server_ctx)
        port = server.sockets[0].getsockname()[1]
        channel = await na.open_channel(HOST, port, context=client_ctx(identity=CLIENT_ID))
        with pytest.raises(nautilus.AuthenticationFailed):
            await channel.recv_message()
        server.close()
        await server.wait_closed()

    run(main())


def test_one_reader_at_a_time() -> None:
    async def main() -> None:
        async with pair() as (client, _served):
            first = asyncio.create_task(client.recv_message())
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="already waiting"):
                await client.recv_message()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            _served.send_message(b"after a cancelled recv")
            assert await client.recv_message() == b"after a cancelled recv"

    run(main())


@pytest.mark.parametrize("batch", [False, True], ids=["recv_message", "recv_messages"])
@pytest.mark.parametrize("cancel", [False, True], ids=["resumed", "cancelled"])
def test_a_message_handed_to_the_waiting_reader_is_never_lost(batch: bool, cancel: bool) -> None:
    """The message lane hands a message straight to the waiting reader, past
    the queue. Messages that arrive before the reader runs again queue behind
    it; and a reader cancelled before it ran again leaves the message it was
    handed at the head of the queue."""

    async def main() -> None:
        async with pair() as (client, _served):
            reader = asyncio.create_task(client.recv_messages() if batch else client.recv_message())
            await asyncio.sleep(0.01)  # waiting, on an empty queue
            client._feed_one(b"handed")  # what the lane does with a one-message record
            client._feed((b"queued", b"after"))  # then a record of two (the general path)
            if cancel:
                reader.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reader
                assert client.queued == (3, 17)
                assert await client.recv_messages() == [b"handed", b"queued", b"after"]
            elif batch:
                assert await reader == [b"handed", b"queued", b"after"]
            else:
                assert await reader == b"handed"
                assert await client.recv_messages() == [b"queued", b"after"]
            assert client.queued == (0, 0)

    run(main())


def test_callback_errors_close_the_channel(caplog: pytest.LogCaptureFixture) -> None:
    async def sync_fails(channel: na.Channel) -> None:
        raise RuntimeError("boom in a coroutine")

    def fails(channel: na.Channel) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        for callback in (fails, sync_fails):
            server = await na.start_channel_server(callback, HOST, 0, context=Context(SERVER_ID))
            port = server.sockets[0].getsockname()[1]
            channel = await na.open_channel(HOST, port, context=client_ctx())
            with pytest.raises(EOFError):
                await channel.recv_message()
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.ERROR, logger="nautilus.asyncio"):
        run(main())
    assert "channel callback failed" in caplog.text


def test_argument_checks() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="max_queue"):
            await na.open_channel(HOST, 1, context=client_ctx(), max_queue=0)
        with pytest.raises(TypeError, match="max_queue_bytes"):
            await na.open_channel(HOST, 1, context=client_ctx(), max_queue_bytes=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="max_queue must be an int, not bool"):
            await na.open_channel(HOST, 1, context=client_ctx(), max_queue=True)
        with pytest.raises(TypeError, match="early_data"):
            await na.open_channel(HOST, 1, context=client_ctx(), early_data=b"x")
        with pytest.raises(TypeError, match="callable"):
            await na.start_channel_server(None, HOST, 0, context=Context(SERVER_ID))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="ssl"):
            await na.open_channel(HOST, 1, context=client_ctx(), ssl=True)
        with pytest.raises(ConnectionRefusedError):
            await na.open_channel(HOST, 1, context=client_ctx())

    run(main())
