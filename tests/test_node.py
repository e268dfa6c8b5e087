"""nautilus.asyncio.Node: peers over real loopback TCP.

Every test runs its own event loop through ``run()``, bounded by a timeout.
``FakePeer`` speaks the node protocol by hand, to force the interleavings a
real race only produces by chance.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from protocol_helpers import record_general_path, round_trips_in_the_lane

import nautilus
import nautilus.asyncio as na
from nautilus import Context, Identity
from nautilus.asyncio import Channel, Node, RetryPolicy
from nautilus.asyncio import node as node_module

HOST = "127.0.0.1"
IDS = [Identity.generate() for _ in range(4)]
OUTSIDER = Identity.generate()
FRAME = struct.Struct(">B7xQ16s16s")
HELLO, START, DONE = 1, 2, 3
LOW_NONCE = bytes(15) + b"\x01"  # the smallest nonce but for all-zero (refused)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """Run ``coro`` in a fresh event loop; fail if it takes over ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def node_ctx(identity: Identity, trusted: list[Identity] | None = None, **kw: Any) -> Context:
    """A node context trusting ``trusted`` (default: every identity in IDS but its own)."""
    peers = [i for i in IDS if i is not identity] if trusted is None else trusted
    return Context(identity, client_auth="required", trusted_peers=[i.public for i in peers], **kw)


@contextlib.asynccontextmanager
async def nodes(count: int, **kw: Any) -> AsyncIterator[list[Node]]:
    started = [Node(node_ctx(IDS[i]), HOST, 0, **kw) for i in range(count)]
    for node in started:
        await node.start()
    try:
        yield started
    finally:
        for node in started:
            node.close()
        for node in started:
            await node.wait_closed()


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


def sees(node: Node, others: set[str]) -> Callable[[], bool]:
    return lambda: set(node.peers) == others


async def settled(a: Node, b: Node) -> None:
    """Wait until each side has exactly one connection to the other."""
    await until(
        lambda: a.connection_count(b.peer_id) == 1 and b.connection_count(a.peer_id) == 1,
        "the tie-break settled",
    )


def check_one_connection(a: Node, b: Node, *, raced: bool = False) -> None:
    """Both sides use the same single connection; after a race (both dials
    completed), the one dialled by the node with the smaller peer id."""
    ca, cb = a.peers[b.peer_id], b.peers[a.peer_id]
    assert a.connection_count(b.peer_id) == 1
    assert b.connection_count(a.peer_id) == 1
    assert ca.get_extra_info("sockname") == cb.get_extra_info("peername")
    assert ca.get_extra_info("peername") == cb.get_extra_info("sockname")
    if raced:
        dialler = a if a.peer_id < b.peer_id else b
        chosen = ca if dialler is a else cb
        assert chosen.session is not None
        assert chosen.session.role == "client"


# ------------------------------------------------------------------ contexts


def test_node_needs_a_context_for_peers() -> None:
    me = IDS[0]
    with pytest.raises(ValueError, match="client_auth='required'"):
        Node(Context(me, trusted_peers=[IDS[1].public]))
    with pytest.raises(ValueError, match="client_auth='required'"):
        Node(Context(me, client_auth="optional", trusted_peers=[IDS[1].public]))
    with pytest.raises(ValueError, match="identity"):
        Node(Context(client_auth="required", trusted_peers=[IDS[1].public]))
    with pytest.raises(ValueError, match="trust settings"):
        Node(Context(me, client_auth="required"))
    with pytest.raises(TypeError, match="Context"):
        Node("context")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        Node(node_ctx(me), HOST, 70000)
    with pytest.raises(ValueError, match=r"port must be in 0\.\.65535, got 65536"):
        Node(node_ctx(me), HOST, 65536)
    with pytest.raises(TypeError, match="on_peer"):
        Node(node_ctx(me), on_peer=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_queue"):
        Node(node_ctx(me), max_queue=0)
    with pytest.raises(ValueError, match="max_pending"):
        Node(node_ctx(me), max_pending=0)
    with pytest.raises(TypeError, match="max_pending"):
        Node(node_ctx(me), max_pending=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_pending"):
        Node(node_ctx(me), max_pending=True)
    node = Node(node_ctx(me))
    with pytest.raises(RuntimeError, match="not been started"):
        _ = node.address
    assert node.peer_id == me.peer_id
    assert not node.is_running
    assert "not started" in repr(node)


def test_connect_argument_checks() -> None:
    async def main() -> None:
        async with nodes(1) as (a,):
            with pytest.raises(ValueError, match="itself"):
                await a.connect(a.address, a.peer_id)
            with pytest.raises(TypeError, match="address"):
                await a.connect("127.0.0.1:1", IDS[1].peer_id)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match=r"port must be in 1\.\.65535, got 0"):
                await a.connect(("127.0.0.1", 0), IDS[1].peer_id)  # port 0: only to listen on
            with pytest.raises(ValueError, match=r"port must be in 1\.\.65535, got 65536"):
                await a.connect(("127.0.0.1", 65536), IDS[1].peer_id)
            with pytest.raises(TypeError, match="address"):  # (an IPv6 4-tuple neither)
                await a.connect(("127.0.0.1", 1, 0), IDS[1].peer_id)  # type: ignore[arg-type]
            with pytest.raises(RuntimeError, match="already running"):
                await a.start()
            assert a.connection_count() == 0
            with pytest.raises(nautilus.InvalidKey):
                await a.connect(a.address, "not a peer id")
            with pytest.raises(TypeError, match="RetryPolicy"):
                await a.connect(a.address, IDS[1].public, retry=3)  # type: ignore[arg-type]
        with pytest.raises(nautilus.ClosedError, match="not running"):
            await a.connect(a.address, IDS[1].peer_id)

    run(main())


# -------------------------------------------------------------- basic peering


def test_connect_returns_the_live_channel_and_reuses_it() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            channel = await a.connect(b.address, b.peer_id)
            assert await a.connect(b.address, IDS[1].public) is channel  # a PeerKey works too
            assert a.peers == {b.peer_id: channel}
            await until(lambda: a.peer_id in b.peers, "b sees a")
            assert channel.peer_id == b.peer_id
            assert await b.accept() is b.peers[a.peer_id]
            assert await a.accept() is channel  # every new channel is reported once
            channel.send_message(b"ping")
            assert await b.peers[a.peer_id].recv_message() == b"ping"
            assert a.connection_count() == 1

    run(main())


def test_connection_count_takes_a_peer_key_and_refuses_other_types() -> None:
    """connect() takes a PeerKey or a peer id: so does connection_count(), which
    counted 0 for a PeerKey (and for any other object) without a word."""

    async def main() -> None:
        async with nodes(2) as (a, b):
            await a.connect(b.address, b.peer_id)
            assert a.connection_count(b.peer_id) == 1
            assert a.connection_count(IDS[1].public) == 1
            assert a.connection_count(OUTSIDER.public) == 0
            with pytest.raises(
                TypeError,
                match="peer_id must be a PeerKey or a peer id, not bytes",
            ):
                a.connection_count(IDS[1].public.to_bytes())  # type: ignore[arg-type]
            with pytest.raises(nautilus.InvalidKey):
                a.connection_count("not a peer id")

    run(main())


def test_request_response_between_nodes_takes_the_message_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once connected, one message each way per round opens and seals in the
    message lane (as on a channel over one connection), not the general path."""
    general = record_general_path(monkeypatch)

    async def main() -> None:
        async with nodes(2) as (a, b):
            channel = await a.connect(b.address, b.peer_id)
            await round_trips_in_the_lane(channel, await b.accept(), general)

    run(main())


def test_three_nodes_connect_in_every_order() -> None:
    pairs = list(itertools.combinations(range(3), 2))

    async def main() -> None:
        for order in itertools.permutations(range(3)):
            async with nodes(3) as ns:
                returned: dict[tuple[int, int], Channel] = {}
                for i in order:  # node i dials the other two, in this order
                    for j in order:
                        if j != i:
                            returned[i, j] = await ns[i].connect(ns[j].address, ns[j].peer_id)
                for i, node in enumerate(ns):
                    others = {ns[j].peer_id for j in range(3) if j != i}
                    await until(sees(node, others), "every node sees the other two")
                    for j in range(3):
                        if j != i:
                            assert returned[i, j] is node.peers[ns[j].peer_id]
                for i, j in pairs:
                    await settled(ns[i], ns[j])
                    check_one_connection(ns[i], ns[j])
                    ci, cj = ns[i].peers[ns[j].peer_id], ns[j].peers[ns[i].peer_id]
                    ci.send_messages([b"%d>%d #%d" % (i, j, k) for k in range(20)])
                    cj.send_messages([b"%d>%d #%d" % (j, i, k) for k in range(20)])
                for i, j in pairs:
                    ci, cj = ns[i].peers[ns[j].peer_id], ns[j].peers[ns[i].peer_id]
                    assert [await cj.recv_message() for _ in range(20)] == [
                        b"%d>%d #%d" % (i, j, k) for k in range(20)
                    ]
                    assert [await ci.recv_message() for _ in range(20)] == [
                        b"%d>%d #%d" % (j, i, k) for k in range(20)
                    ]

    run(main(), timeout=30)


# ---------------------------------------------------------- simultaneous dial


async def race_round(a: Node, b: Node, rng: random.Random, count: int) -> tuple[int, int]:
    """a and b dial each other at once and send ``count`` messages each at once.

    Returns how many connections each side's channel ever used (2: a real race).
    """

    async def dial(x: Node, y: Node, delay: float) -> Channel:
        if delay:
            await asyncio.sleep(delay)
        channel = await x.connect(y.address, y.peer_id)
        # Send at once, in small batches, while the tie-break may be running.
        for k in range(0, count, 10):
            channel.send_messages(
                b"%s %d" % (x.peer_id[-4:].encode(), n) for n in range(k, min(count, k + 10))
            )
            await asyncio.sleep(0)
        return channel

    skew = rng.choice([0.0, 0.0, 0.0, 0.001, 0.003])
    da, db = (skew, 0.0) if rng.random() < 0.5 else (0.0, skew)
    ca, cb = await asyncio.gather(dial(a, b, da), dial(b, a, db))
    assert a.peers[b.peer_id] is ca
    assert b.peers[a.peer_id] is cb
    got_b = [await cb.recv_message() for _ in range(count)]
    got_a: list[bytes] = []
    while len(got_a) < count:  # the batches as merged from the connections
        got_a += await ca.recv_messages(count - len(got_a))
    assert got_b == [b"%s %d" % (a.peer_id[-4:].encode(), n) for n in range(count)]
    assert got_a == [b"%s %d" % (b.peer_id[-4:].encode(), n) for n in range(count)]
    await settled(a, b)
    used = ca._route.joins, cb._route.joins  # type: ignore[attr-defined]
    assert used[0] == used[1]  # both sides saw the same connections
    check_one_connection(a, b, raced=used[0] == 2)
    # Nothing more arrives: every message came exactly once.
    assert ca.queued == (0, 0)
    assert cb.queued == (0, 0)
    # And the survivor carries on.
    ca.send_message(b"after")
    cb.send_message(b"after")
    assert await cb.recv_message() == b"after"
    assert await ca.recv_message() == b"after"
    return used


def test_simultaneous_dials_keep_one_connection_and_lose_nothing() -> None:
    rng = random.Random(7)
    races = 0

    async def main() -> None:
        nonlocal races
        for _ in range(30):
            async with nodes(2) as (a, b):
                used = await race_round(a, b, rng, 200)
                races += max(used) > 1

    run(main(), timeout=40)
    assert races >= 10, f"only {races} of 30 rounds had two connections: no race was tested"


def test_simultaneous_dials_between_the_same_nodes_again_and_again() -> None:
    """The same two nodes race, then one closes the channel, 15 times: closed
    sessions do not capture the connections of the next one."""
    rng = random.Random(8)

    async def main() -> None:
        async with nodes(2) as (a, b):
            for round_ in range(15):
                await race_round(a, b, rng, 50)
                closer, other = (a, b) if round_ % 2 else (b, a)
                closing = closer.peers[other.peer_id]
                remote = other.peers[closer.peer_id]
                closing.send_message(b"bye")
                closing.close()
                assert closer.peers == {}
                assert await remote.recv_message() == b"bye"
                with pytest.raises(EOFError):
                    await remote.recv_message()
                await closing.wait_closed()
                await remote.wait_closed()
                assert other.peers == {}
                await until(
                    lambda: a.connection_count() == 0 and b.connection_count() == 0,
                    "every connection closed",
                )

    run(main(), timeout=40)


# ------------------------------------------------------------------- trust


def test_untrusted_node_is_refused() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            # The outsider trusts a, but a does not trust the outsider.
            outsider = Node(node_ctx(OUTSIDER, trusted=[IDS[0]]), HOST, 0)
            async with outsider:
                with pytest.raises(nautilus.AuthenticationFailed):
                    await outsider.connect(a.address, a.peer_id)
                assert outsider.peers == {}
                assert OUTSIDER.peer_id not in a.peers
                # Dialling the wrong peer at an address fails the same way.
                with pytest.raises(nautilus.AuthenticationFailed, match=r"wrong.peer"):
                    await outsider.connect(b.address, a.peer_id)
                # Retrying does not help against a refusal: it fails at once.
                started = time.monotonic()
                with pytest.raises(nautilus.AuthenticationFailed):
                    await outsider.connect(
                        a.address, a.peer_id, retry=RetryPolicy(attempts=5, initial=1.0)
                    )
                assert time.monotonic() - started < 1.0
                await asyncio.sleep(0.05)
                assert OUTSIDER.peer_id not in a.peers
                assert a.connection_count(OUTSIDER.peer_id) == 0

    run(main())


# ------------------------------------------------------------------- retry


def test_retry_policy_delays() -> None:
    exact = RetryPolicy(attempts=6, initial=0.1, maximum=0.5, multiplier=2.0, jitter=0.0)
    assert [exact.delay(k) for k in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    jittered = RetryPolicy(initial=1.0, maximum=8.0, jitter=0.5)
    for k in range(1, 8):
        base = min(8.0, 2.0 ** (k - 1))
        for _ in range(50):
            assert base * 0.5 <= jittered.delay(k) <= base
    assert RetryPolicy(maximum=3.0).delay(10_000) <= 3.0  # no overflow
    with pytest.raises(ValueError, match="at least 1"):
        exact.delay(0)
    for bad in (
        {"attempts": 0},
        {"initial": -1.0},
        {"jitter": 1.5},
        {"multiplier": 0.5},
        {"initial": 2.0, "maximum": 1.0},
        {"maximum": float("nan")},
        {"maximum": float("inf")},  # a pause without end
        {"jitter": -0.5},  # a pause longer than the delay
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RetryPolicy(**bad)
    with pytest.raises(TypeError):
        RetryPolicy(attempts=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attempts must be an int, not bool"):
        RetryPolicy(attempts=True)
    with pytest.raises(TypeError):
        RetryPolicy(initial="1")  # type: ignore[arg-type]


def test_retry_policy_delay_checks_its_argument() -> None:
    policy = RetryPolicy(jitter=0.0)
    for bad in ("1", 1.0, None, True):
        with pytest.raises(TypeError, match="retry must be an int"):
            policy.delay(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry must be at least 1, got -3"):
        policy.delay(-3)
    assert policy.delay(1) == pytest.approx(0.1)


def test_retry_policy_reaches_its_cap_and_refuses_huge_numbers() -> None:
    """The documented formula holds for any multiplier and retry (a small
    multiplier reaches the cap late; a huge retry overflows to it), and a
    number too large for a float is refused when the policy is made."""
    slow = RetryPolicy(initial=0.1, maximum=5.0, multiplier=1.001, jitter=0.0)
    assert slow.delay(5000) == 5.0  # 0.1 * 1.001 ** 4999 is about 14.8
    assert slow.delay(2) == pytest.approx(0.1001)
    assert RetryPolicy(multiplier=2, jitter=0.0).delay(10**6) == 5.0
    for name in ("initial", "maximum", "multiplier"):
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            RetryPolicy(**{name: 10**400})


async def counting_listener() -> tuple[asyncio.Server, list[float]]:
    """A TCP listener that accepts and hangs up at once (a node shutting down)."""
    accepted: list[float] = []

    def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(hang_up, HOST, 0)
    return server, accepted


def test_retry_is_bounded_and_raises_the_last_error() -> None:
    async def main() -> None:
        server, accepted = await counting_listener()
        port = server.sockets[0].getsockname()[1]
        async with nodes(1) as (a,):
            policy = RetryPolicy(attempts=4, initial=0.02, maximum=0.05, jitter=0.0)
            with pytest.raises(nautilus.HandshakeError) as info:
                await a.connect((HOST, port), IDS[1].peer_id, retry=policy)
            assert type(info.value) is nautilus.HandshakeError  # the peer hung up
            assert len(accepted) == 4
            gaps = [t1 - t0 for t0, t1 in itertools.pairwise(accepted)]
            assert all(gap >= 0.015 for gap in gaps), gaps
            # Without a policy: one attempt.
            with pytest.raises(nautilus.HandshakeError):
                await a.connect((HOST, port), IDS[1].peer_id)
            assert len(accepted) == 5
            # A refused TCP connection is retried too, and its error raised at the end.
            server.close()
            await server.wait_closed()
            with pytest.raises(ConnectionRefusedError):
                await a.connect((HOST, port), IDS[1].peer_id, retry=policy)
            assert a.connection_count() == 0

    run(main())


def test_retry_is_cancellable(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server, accepted = await counting_listener()
        port = server.sockets[0].getsockname()[1]
        async with nodes(1) as (a,):
            policy = RetryPolicy(attempts=1000, initial=0.05, maximum=0.05)
            started = time.monotonic()
            # 1 s: room for a second attempt on a stalled host; delays of 0.025 to
            # 0.05 s allow at most 41 attempts in it, no delay at all hundreds.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(a.connect((HOST, port), IDS[1].peer_id, retry=policy), 1.0)
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.1)  # a dial cut short may still reach the listener
            attempts = len(accepted)
            assert 1 < attempts < 60
            await asyncio.sleep(0.3)
            assert len(accepted) == attempts  # nothing keeps dialling in the background
            assert a.connection_count() == 0
            # Closing the node ends a connect() that is waiting between attempts.
            slow = RetryPolicy(attempts=10, initial=5.0, maximum=5.0)
            caplog.clear()
            pending = asyncio.create_task(a.connect((HOST, port), IDS[1].peer_id, retry=slow))
            # The listener's accept comes before the client sees the hang-up: wait for the
            # attempt to have failed (logged with its retry), not only to have arrived.
            await until(lambda: "; retry 1 in " in caplog.text, "the first attempt failed")
            assert len(accepted) == attempts + 1
            a.close()
            started = time.monotonic()
            with pytest.raises(nautilus.ClosedError) as info:
                await pending
            assert type(info.value.__cause__) is nautilus.HandshakeError  # the last attempt's
            assert time.monotonic() - started < 1.0
        server.close()
        await server.wait_closed()

    with caplog.at_level(logging.DEBUG, logger="nautilus.asyncio"):
        run(main())


def test_restart_and_reconnect_with_retry() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            channel = await a.connect(b.address, b.peer_id)
            channel.send_message(b"before")
            await until(lambda: a.peer_id in b.peers, "b sees a")
            assert await b.peers[a.peer_id].recv_message() == b"before"
            address = b.address
            b.close()
            await b.wait_closed()
            with pytest.raises(EOFError):  # b closed cleanly
                await channel.recv_message()
            await until(lambda: a.peers == {}, "a forgets b")
            with pytest.raises(ConnectionRefusedError):
                await a.connect(address, b.peer_id)

            async def restart_later() -> None:
                await asyncio.sleep(0.3)
                await b.start()

            policy = RetryPolicy(attempts=30, initial=0.02, maximum=0.1, jitter=0.5)
            restarting = asyncio.create_task(restart_later())
            again = await a.connect(address, b.peer_id, retry=policy)
            await restarting
            assert b.address == address  # same port after the restart
            assert again is not channel
            again.send_message(b"after")
            await until(lambda: a.peer_id in b.peers, "b sees a again")
            assert await b.peers[a.peer_id].recv_message() == b"after"
            b.peers[a.peer_id].send_message(b"reply")
            assert await again.recv_message() == b"reply"
            check_one_connection(a, b)

    run(main())


# ---------------------------------------------------------- accept and close


def test_on_peer_callback_and_accept() -> None:
    async def main() -> None:
        seen: list[Channel] = []
        echoed = asyncio.Event()

        async def echo(channel: Channel) -> None:
            seen.append(channel)
            async for message in channel:
                channel.send_message(message.upper())
                echoed.set()

        server = Node(node_ctx(IDS[0]), on_peer=echo)
        async with server, Node(node_ctx(IDS[1])) as client:
            channel = await client.connect(server.address, server.peer_id)
            channel.send_message(b"hello")
            assert await channel.recv_message() == b"HELLO"
            assert seen == [server.peers[client.peer_id]]
            assert await client.accept() is channel
            waiting = asyncio.create_task(client.accept())
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="already waiting"):
                await client.accept()
            client.close()
            with pytest.raises(nautilus.ClosedError):
                await waiting
            with pytest.raises(EOFError):
                await channel.recv_message()

    run(main())


def test_close_cancels_the_on_peer_tasks_and_wait_closed_waits_for_them() -> None:
    """close() cancels the on_peer tasks still running (here one waiting on
    something other than its channel, which close() ends) and wait_closed()
    returns once they have ended: they used to run on after the node closed.
    Until they end the node holds them (the event loop holds tasks only
    weakly: a garbage collection must not destroy a pending one)."""
    import gc

    async def main() -> None:
        started = asyncio.Event()
        finished: list[str] = []

        async def lingers(channel: Channel) -> None:
            started.set()
            try:
                await asyncio.get_running_loop().create_future()  # held by nothing else
            except asyncio.CancelledError:
                finished.append("cancelled")
                raise

        server = Node(node_ctx(IDS[0]), on_peer=lingers)
        async with server, Node(node_ctx(IDS[1])) as client:
            await client.connect(server.address, server.peer_id)
            await asyncio.wait_for(started.wait(), 5)
            gc.collect()
            await asyncio.sleep(0)
            assert finished == []  # still pending, not destroyed
            server.close()
            await asyncio.wait_for(server.wait_closed(), 5)
            assert finished == ["cancelled"]
            assert not server._tasks

    run(main())


def test_wait_closed_returns_as_soon_as_the_connections_have_ended() -> None:
    """wait_closed() of a node with a peer returns once the connection's close
    is done (a round trip: well under a millisecond over loopback), for every
    caller waiting. It used to look every 10 ms, so that no close of a node
    with a peer took less than 10 ms (the loop's clock: sleep(0.01) never
    returns sooner); now the quickest of ten takes under 8 ms, with a wide
    margin for a loaded machine."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        for _ in range(10):
            async with nodes(2) as (a, b):
                channel = await a.connect(b.address, b.peer_id)
                channel.send_message(b"ping")
                await until(lambda: a.peer_id in b.peers, "b sees a")
                assert await b.peers[a.peer_id].recv_message() == b"ping"
                start = loop.time()
                a.close()
                await asyncio.gather(a.wait_closed(), a.wait_closed())  # two callers
                times.append(loop.time() - start)
                assert a.connection_count() == 0
        return times

    times = run(main(), 30)
    assert min(times) < 0.008, times


def test_an_on_peer_task_may_close_its_own_node() -> None:
    """The task calling close() is not cancelled, and its wait_closed() does
    not wait for itself."""

    async def main() -> None:
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def shuts_down(channel: Channel) -> None:
            assert await channel.recv_message() == b"stop"
            server.close()
            await server.wait_closed()  # (called directly: wait_for() would make a new task)
            outcome.set_result("closed")

        server = Node(node_ctx(IDS[0]), on_peer=shuts_down)
        async with server, Node(node_ctx(IDS[1])) as client:
            channel = await client.connect(server.address, server.peer_id)
            channel.send_message(b"stop")
            assert await asyncio.wait_for(outcome, 5) == "closed"
            assert not server.is_running

    run(main())


def test_on_peer_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    def fails(channel: Channel) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        async with Node(node_ctx(IDS[0]), on_peer=fails) as a, Node(node_ctx(IDS[1])) as b:
            channel = await b.connect(a.address, a.peer_id)
            channel.send_message(b"still works")
            await until(lambda: b.peer_id in a.peers, "a sees b")
            assert await a.peers[b.peer_id].recv_message() == b"still works"

    with caplog.at_level(logging.ERROR, logger="nautilus.asyncio"):
        run(main())
    assert "on_peer callback failed" in caplog.text


def test_peer_close_and_reconnect() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            ab = await a.connect(b.address, b.peer_id)
            assert await a.accept() is ab  # a's own new channels are reported too
            ab.send_messages([b"1", b"2", b"3"])
            ab.close()
            assert a.peers == {}
            await until(lambda: a.peer_id in b.peers or b.connection_count() == 0, "b saw a")
            ba = await b.accept()
            assert [m async for m in ba] == [b"1", b"2", b"3"]
            assert b.peers == {}
            await ab.wait_closed()
            await ba.wait_closed()
            # A new session, from the other side this time.
            ba2 = await b.connect(a.address, a.peer_id)
            assert ba2 is not ba
            ba2.send_message(b"again")
            ab2 = await a.accept()
            assert await ab2.recv_message() == b"again"

    run(main())


def test_failed_connection_fails_the_channel_on_both_sides() -> None:
    async def main() -> None:
        async with nodes(2) as (a, b):
            ab = await a.connect(b.address, b.peer_id)
            assert await a.accept() is ab
            ab.send_message(b"one")
            ba = await b.accept()
            assert await ba.recv_message() == b"one"
            ab.abort()
            with pytest.raises(nautilus.ConnectionLost):
                await ba.recv_message()
            with pytest.raises(nautilus.ConnectionLost):
                await ab.recv_message()
            with pytest.raises(nautilus.ClosedError) as info:
                ba.send_message(b"lost")
            assert isinstance(info.value.__cause__, nautilus.ConnectionLost)
            assert a.peers == {}
            assert b.peers == {}
            # The nodes reconnect without trouble.
            again = await b.connect(a.address, a.peer_id)
            again.send_message(b"two")
            assert await (await a.accept()).recv_message() == b"two"

    run(main())


def test_node_close_closes_peers_and_is_idempotent() -> None:
    async def main() -> None:
        async with nodes(3) as (a, b, c):
            ab = await a.connect(b.address, b.peer_id)
            ac = await a.connect(c.address, c.peer_id)
            ab.send_message(b"to b")
            ac.send_message(b"to c")
            a.close()
            a.close()
            await a.wait_closed()
            assert a.peers == {}
            assert a.connection_count() == 0
            for node in (b, c):
                channel = await node.accept()
                assert await channel.recv_message() == f"to {'b' if node is b else 'c'}".encode()
                with pytest.raises(EOFError):
                    await channel.recv_message()
            with pytest.raises(nautilus.ClosedError):
                await a.accept()
            with pytest.raises(nautilus.ClosedError):
                ab.send_message(b"late")

    run(main())


class Silent(asyncio.Protocol):
    """A Nautilus peer that completes the handshake, then says nothing."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def silent_peer(identity: Identity) -> tuple[asyncio.Server, list[Silent]]:
    """A Nautilus server as ``identity`` (trusting IDS[0]) that never sends a node hello."""
    made: list[Silent] = []

    def factory() -> Silent:
        made.append(Silent())
        return made[-1]

    ctx = Context(identity, client_auth="required", trusted_peers=[IDS[0].public])
    return await na.create_server(factory, HOST, 0, context=ctx), made


async def silent_tcp() -> tuple[asyncio.Server, list[asyncio.Future[bytes]]]:
    """A TCP server that accepts and never answers; each connection's read ends at its close."""
    ends: list[asyncio.Future[bytes]] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        end: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        ends.append(end)
        try:
            end.set_result(await reader.read())
        except ConnectionError:
            end.set_result(b"reset")
        writer.close()

    return await asyncio.start_server(swallow, HOST, 0), ends


def test_connect_times_out_when_the_peer_sends_no_hello() -> None:
    async def main() -> None:
        server, made = await silent_peer(IDS[1])
        port = server.sockets[0].getsockname()[1]
        async with Node(node_ctx(IDS[0], handshake_timeout=0.5), HOST, 0) as a:
            started = time.monotonic()
            with pytest.raises(nautilus.HandshakeTimeout, match=r"no node hello within 0\.5 s"):
                await asyncio.wait_for(a.connect((HOST, port), IDS[1].peer_id), 5)
            assert 0.4 < time.monotonic() - started < 3.0
            assert len(made) == 1
            # The connection was closed with an alert: the peer learns why.
            lost = await asyncio.wait_for(made[0].lost, 5)
            assert isinstance(lost, nautilus.HandshakeTimeout), lost
            assert str(lost) == "the peer sent alert handshake_timeout"
            await until(lambda: a.connection_count() == 0, "the connection is gone")
            assert a.peers == {}
            # A timeout is transient: with a policy, it is retried.
            policy = RetryPolicy(attempts=2, initial=0.01, maximum=0.01)
            with pytest.raises(nautilus.HandshakeTimeout):
                await asyncio.wait_for(a.connect((HOST, port), IDS[1].peer_id, retry=policy), 5)
            assert len(made) == 3
        server.close()
        await server.wait_closed()

    run(main())


def test_the_hello_wait_is_the_timeout_the_connection_was_made_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handshake_timeout assigned after a connection was made is for later
    connections: the node hello of this one is still bounded by the old value."""
    original = Node._link_made

    def raise_timeout_first(self: Node, link: Any) -> None:
        self._context.handshake_timeout = 30.0  # (as another thread might, meanwhile)
        original(self, link)

    monkeypatch.setattr(Node, "_link_made", raise_timeout_first)

    async def main() -> None:
        server, _made = await silent_peer(IDS[1])
        port = server.sockets[0].getsockname()[1]
        ctx = node_ctx(IDS[0], handshake_timeout=0.5)
        async with Node(ctx, HOST, 0) as a:
            started = time.monotonic()
            with pytest.raises(nautilus.HandshakeTimeout, match=r"no node hello within 0\.5 s"):
                await asyncio.wait_for(a.connect((HOST, port), IDS[1].peer_id), 5)
            assert time.monotonic() - started < 3.0
            assert ctx.handshake_timeout == 30.0
        server.close()
        await server.wait_closed()

    run(main())


def test_listener_drops_a_dialler_that_sends_no_hello() -> None:
    async def main() -> None:
        async with Node(node_ctx(IDS[0], trusted=[IDS[1]], handshake_timeout=0.5)) as node:
            mute = FakeLink()
            ctx = Context(IDS[1], trusted_peers=[IDS[0].public])
            # (before the dial: the node's wait starts with its HELLO, before we see it)
            started = time.monotonic()
            await na.create_connection(
                lambda: mute, *node.address, context=ctx, expected_peer=node.peer_id
            )
            await mute.expect(HELLO)  # the node says HELLO; the dialler does not
            lost = await asyncio.wait_for(mute.lost, 5)
            assert isinstance(lost, nautilus.HandshakeTimeout), lost  # the alert, not a truncation
            assert 0.3 < time.monotonic() - started < 3.0
            await until(lambda: node.connection_count() == 0, "the connection is gone")
            assert node.peers == {}
            await still_serves(node)

    run(main())


async def close_ends_the_connect(a: Node, pending: asyncio.Task[Any]) -> None:
    """node.close() makes the pending connect() raise ClosedError at once."""
    a.close()
    started = time.monotonic()
    with pytest.raises(nautilus.ClosedError, match="closed while connecting"):
        await asyncio.wait_for(pending, 5)
    assert time.monotonic() - started < 1.0
    await asyncio.wait_for(a.wait_closed(), 10)


def test_node_close_ends_a_connect_waiting_for_the_hello() -> None:
    async def main() -> None:
        server, made = await silent_peer(IDS[1])
        port = server.sockets[0].getsockname()[1]
        a = Node(node_ctx(IDS[0], handshake_timeout=30), HOST, 0)
        await a.start()
        pending = asyncio.create_task(a.connect((HOST, port), IDS[1].peer_id))
        await until(lambda: a.connection_count() == 1, "the handshake completed")
        await close_ends_the_connect(a, pending)
        assert a.connection_count() == 0
        assert len(made) == 1
        await asyncio.wait_for(made[0].lost, 5)
        server.close()
        await server.wait_closed()

    run(main())


def test_node_close_ends_a_connect_still_in_the_handshake() -> None:
    async def main() -> None:
        server, ends = await silent_tcp()
        port = server.sockets[0].getsockname()[1]
        a = Node(node_ctx(IDS[0], handshake_timeout=30), HOST, 0)
        await a.start()
        pending = asyncio.create_task(a.connect((HOST, port), IDS[1].peer_id))
        await until(lambda: len(ends) == 1, "the TCP connection is made")
        await asyncio.sleep(0.05)
        assert not pending.done()
        await close_ends_the_connect(a, pending)
        await asyncio.wait_for(ends[0], 5)  # the dial's socket is closed, not left open
        server.close()
        await server.wait_closed()

    run(main())


def test_node_close_ends_an_inbound_connection_still_in_the_handshake() -> None:
    """A peer that sends its hello and then nothing: the node has no link for
    that connection yet. close() used to leave it open until the handshake
    timeout (or for good if the loop ended first); wait_closed() waits for it."""

    async def main() -> None:
        a = Node(node_ctx(IDS[0], handshake_timeout=30), HOST, 0)
        await a.start()
        hello = nautilus.Connection(node_ctx(IDS[1]), "client", expected_peer=IDS[0].peer_id)
        hello.start(time.time())
        reader, writer = await asyncio.open_connection(*a.address)
        writer.write(hello.data_to_send())
        assert await reader.read(65536)  # the node's flight: the handshake is under way
        a.close()
        await asyncio.wait_for(a.wait_closed(), 5)
        while await asyncio.wait_for(reader.read(65536), 5):
            pass  # the end of the stream, not the handshake timeout's 30 s
        writer.close()

    run(main())


def test_backpressure_through_a_node_channel() -> None:
    size = 16 * 1024

    async def main() -> None:
        async with nodes(2, max_queue=8, max_queue_bytes=64 * 1024) as (a, b):
            ab = await a.connect(b.address, b.peer_id)
            ba = await b.accept()
            sent = 0
            blocked = None
            while sent < 4096:
                ab.send_message(sent.to_bytes(4, "big") + bytes(size - 4))
                sent += 1
                drain = asyncio.create_task(ab.drain())
                done, _ = await asyncio.wait({drain}, timeout=0.3)
                if not done:
                    blocked = drain
                    break
            assert blocked is not None
            assert ba.queued[1] <= 64 * 1024 + 512 * 1024
            for i in range(sent):
                assert int.from_bytes((await ba.recv_message())[:4], "big") == i
            await asyncio.wait_for(blocked, 5)

    run(main(), timeout=20)


# ----------------------------------------------------- the protocol, by hand


class FakeLink(asyncio.Protocol):
    """One connection of a hand-driven peer: control frames and messages in, queued."""

    def __init__(self) -> None:
        self.transport: na.NautilusTransport | None = None
        self.frames: asyncio.Queue[tuple[int, int, bytes, bytes]] = asyncio.Queue()
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, na.NautilusTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= FRAME.size:
            self.frames.put_nowait(FRAME.unpack_from(self._buf))
            del self._buf[: FRAME.size]

    def messages_received(self, messages: tuple[bytes, ...]) -> None:
        for data in messages:
            self.messages.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def frame(self, kind: int, value: int, a: bytes = bytes(16), b: bytes = bytes(16)) -> None:
        assert self.transport is not None
        self.transport.write(FRAME.pack(kind, value, a, b))

    def raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def send(self, *messages: bytes) -> None:
        assert self.transport is not None
        self.transport.send_messages(messages)

    async def expect(self, kind: int) -> tuple[int, bytes, bytes]:
        got, value, a, b = await asyncio.wait_for(self.frames.get(), 5)
        assert got == kind, (got, kind)
        return value, a, b


async def still_serves(node: Node) -> None:
    """The node (which has accept() callers, no on_peer) takes a new peer's channel
    and its message: one bad peer did not stop it."""
    link = await fake_dial(node, IDS[1], b"\x01" * 16, b"\x01" * 16)
    channel = await asyncio.wait_for(node.accept(), 5)
    link.frame(START, 0)
    link.send(b"after the bad one")
    assert await channel.recv_message() == b"after the bad one"


async def fake_dial(node: Node, identity: Identity, nonce: bytes, sid: bytes) -> FakeLink:
    """Connect to ``node`` as ``identity`` and exchange HELLOs."""
    link = FakeLink()
    ctx = Context(identity, trusted_peers=[IDS[0].public])
    await na.create_connection(lambda: link, *node.address, context=ctx, expected_peer=node.peer_id)
    link.frame(HELLO, 1, sid, nonce)
    await link.expect(HELLO)
    return link


def fake_node(**kw: Any) -> Node:
    return Node(node_ctx(IDS[0], trusted=[IDS[1]]), **kw)


def test_messages_from_two_connections_are_put_back_in_order() -> None:
    """The peer moves from connection 1 to connection 2 and the later messages,
    on 2, arrive first: they wait until 1 has delivered the earlier ones."""

    async def main() -> None:
        async with fake_node() as node:
            sid = bytes([1]) * 16
            first = await fake_dial(node, IDS[1], b"\xff" * 16, sid)  # larger nonce: loses
            channel = await node.accept()
            await first.expect(START)  # the node sends on connection 1 for now
            second = await fake_dial(node, IDS[1], LOW_NONCE, sid)
            value, _, _ = await second.expect(START)  # the node moved to connection 2
            assert value == 0
            assert await first.expect(DONE) == (0, bytes(16), bytes(16))
            second.frame(START, 5)
            second.send(*(b"m%d" % i for i in range(5, 10)))
            await asyncio.sleep(0.05)
            assert channel.queued == (0, 0)  # 5..9 wait for 0..4
            first.frame(START, 0)
            first.send(*(b"m%d" % i for i in range(5)))
            first.frame(DONE, 5)
            assert [await channel.recv_message() for _ in range(10)] == [
                b"m%d" % i for i in range(10)
            ]
            assert await asyncio.wait_for(first.lost, 5) is None  # closed after both DONEs
            await until(lambda: node.connection_count(IDS[1].peer_id) == 1, "one connection left")
            channel.send_message(b"reply")
            assert await second.messages.get() == b"reply"

    run(main())


def test_peer_retires_our_connection_before_we_see_its_winner() -> None:
    """The peer has sent DONE on the connection the node uses, but its winner
    is not ready on the node's side yet: the node keeps sending there (the
    peer still reads it) and moves over once the winner is ready."""

    async def main() -> None:
        async with fake_node() as node:
            sid = b"\x05" * 16
            first = await fake_dial(node, IDS[1], b"\xff" * 16, sid)
            channel = await node.accept()
            await first.expect(START)
            first.frame(DONE, 0)  # the peer will not send here any more
            await asyncio.sleep(0.02)
            channel.send_message(b"still on the first")
            assert await asyncio.wait_for(first.messages.get(), 5) == b"still on the first"
            second = await fake_dial(node, IDS[1], LOW_NONCE, sid)
            assert (await second.expect(START))[0] == 1  # message 1 goes on the second
            assert (await first.expect(DONE))[0] == 1  # one message was sent on the first
            assert await asyncio.wait_for(first.lost, 5) is None  # both DONEs: closed
            channel.send_message(b"on the second")
            assert await asyncio.wait_for(second.messages.get(), 5) == b"on the second"
            second.frame(START, 0)
            second.send(b"from the peer")
            assert await channel.recv_message() == b"from the peer"
            assert first.messages.empty()

    run(main())


def test_a_new_session_waits_for_the_old_one_to_end() -> None:
    """A connection announcing another session of the peer is held until the
    peer's old session has ended; its messages are then delivered on the new one."""

    async def main() -> None:
        async with fake_node() as node:
            old = await fake_dial(node, IDS[1], b"\x01" * 16, b"\x01" * 16)
            old_channel = await node.accept()
            await old.expect(START)
            old.frame(START, 0)
            old.send(b"old 0")
            new = await fake_dial(node, IDS[1], b"\x02" * 16, b"\x02" * 16)
            new.frame(START, 0)
            new.send(b"new 0", b"new 1")
            await asyncio.sleep(0.05)
            assert node.peers == {IDS[1].peer_id: old_channel}
            old.send(b"old 1")
            old.transport.close()  # type: ignore[union-attr]  # the peer ends the old session
            assert [m async for m in old_channel] == [b"old 0", b"old 1"]
            new_channel = await asyncio.wait_for(node.accept(), 5)
            assert new_channel is not old_channel
            assert await new_channel.recv_message() == b"new 0"
            assert await new_channel.recv_message() == b"new 1"
            await new.expect(START)

    run(main())


def test_a_held_connection_stops_reading_past_the_queue_bounds() -> None:
    """What a held connection carries waits in its inbox, bounded as a
    channel's queue: past max_queue messages the node stops reading it, so a
    peer cannot fill this node's memory through its next session. Nothing is
    lost: once the connection joins, every message is delivered."""

    async def main() -> None:
        async with fake_node(max_queue=2) as node:
            old = await fake_dial(node, IDS[1], b"\x01" * 16, b"\x01" * 16)
            old_channel = await node.accept()
            old.frame(START, 0)
            new = await fake_dial(node, IDS[1], b"\x02" * 16, b"\x02" * 16)
            await until(lambda: bool(node._held.get(IDS[1].peer_id)), "the node holds it")
            held = node._held[IDS[1].peer_id][0]
            new.frame(START, 0)
            reading = []
            for count in (1, 2, 3):
                new.send(b"new %d" % (count - 1))
                while len(held.inbox) < count:
                    await asyncio.sleep(0.002)
                reading.append(held._reading)
            assert reading == [True, True, False]  # 3 > max_queue
            old.transport.close()  # type: ignore[union-attr]  # the old session ends
            assert [m async for m in old_channel] == []
            new_channel = await asyncio.wait_for(node.accept(), 5)
            got = [await new_channel.recv_message() for _ in range(3)]
            assert got == [b"new 0", b"new 1", b"new 2"]

    run(main())


def test_a_connection_announced_under_a_closed_session_is_closed() -> None:
    async def main() -> None:
        async with fake_node() as node:
            sid = b"\x01" * 16
            first = await fake_dial(node, IDS[1], b"\x01" * 16, sid)
            channel = await node.accept()
            # A second connection: the node says HELLO (with its session id) ...
            late = FakeLink()
            ctx = Context(IDS[1], trusted_peers=[IDS[0].public])
            await na.create_connection(
                lambda: late, *node.address, context=ctx, expected_peer=node.peer_id
            )
            await late.expect(HELLO)
            channel.close()  # ... then closes that session ...
            await asyncio.wait_for(first.lost, 5)
            late.frame(HELLO, 1, sid, LOW_NONCE)  # ... so this one belongs to no session
            assert await asyncio.wait_for(late.lost, 5) is None
            assert node.peers == {}

    run(main())


def test_a_connection_from_a_node_with_our_own_identity_is_closed() -> None:
    """A node whose trust settings include its own key (a shared list) is
    dialled by another node holding the same identity: that is not a peer.
    The connection is closed before any HELLO, and no channel is made."""

    async def main() -> None:
        me = IDS[0]
        async with contextlib.AsyncExitStack() as stack:
            node = Node(node_ctx(me, trusted=[me, IDS[1]]), HOST, 0)
            await node.start()
            stack.push_async_callback(node.wait_closed)
            stack.callback(node.close)
            twin = FakeLink()
            ctx = Context(me, trusted_peers=[me.public])
            await na.create_connection(
                lambda: twin, *node.address, context=ctx, expected_peer=node.peer_id
            )
            assert await asyncio.wait_for(twin.lost, 5) is None
            assert twin.frames.empty()  # no HELLO: the node never took it for a peer
            assert node.peers == {}
            assert node.connection_count() == 0

    run(main())


def padded(frame: bytes) -> bytes:
    """``frame`` with its last reserved byte (after the type) set."""
    return frame[:7] + b"\x01" + frame[8:]


@pytest.mark.parametrize(
    ("script", "alert"),
    [
        pytest.param([("msg", b"early")], "unexpected_message", id="message before START"),
        pytest.param(
            [("frame", (START, 0)), ("frame", (START, 1))], "unexpected_message", id="START twice"
        ),
        pytest.param(
            [("frame", (START, 0)), ("msg", b"x"), ("frame", (DONE, 5))],
            "unexpected_message",
            id="wrong DONE count",
        ),
        pytest.param(
            [("frame", (START, 0)), ("msg", b"x"), ("frame", (DONE, 0))],
            "unexpected_message",
            id="DONE short of the messages sent",
        ),
        pytest.param(
            [("frame", (START, 0)), ("frame", (DONE, 0)), ("frame", (DONE, 0))],
            "unexpected_message",
            id="DONE twice",
        ),
        pytest.param(
            [("frame", (START, 0)), ("msg", b"x"), ("frame", (DONE, 1)), ("msg", b"y")],
            "unexpected_message",
            id="message after DONE",
        ),
        pytest.param(
            [("frame", (DONE, 0)), ("frame", (START, 0))],  # (DONE: nothing sent here)
            "unexpected_message",
            id="START after DONE",
        ),
        pytest.param([("frame", (9, 0))], "decode_error", id="unknown frame"),
        pytest.param([("frame", (HELLO, 1))], "unexpected_message", id="second HELLO"),
        pytest.param([("frame", (START, 3))], "unexpected_message", id="START skipping messages"),
        pytest.param(
            [("frame", (START, 3)), ("msg", b"x")],
            "unexpected_message",
            id="START skipping, then a message",
        ),
        pytest.param(
            [("raw", padded(FRAME.pack(START, 0, bytes(16), bytes(16))))],
            "decode_error",
            id="padding",
        ),
        pytest.param(
            [("frame", (START, 0, b"\x01" * 16))], "decode_error", id="START with a field set"
        ),
        pytest.param(
            [("frame", (START, 0)), ("frame", (DONE, 0, bytes(16), b"\x01" * 16))],
            "decode_error",
            id="DONE with a field set",
        ),
    ],
)
def test_node_protocol_violations_drop_the_connection(
    script: list[tuple[str, Any]], alert: str
) -> None:
    """Each is a protocol violation here, and the peer gets an alert that says so."""

    async def main() -> None:
        async with fake_node() as node:
            link = await fake_dial(node, IDS[1], b"\x01" * 16, b"\x01" * 16)
            channel = await node.accept()
            for kind, arg in script:
                if kind == "msg":
                    link.send(arg)
                elif kind == "raw":
                    link.raw(arg)
                else:
                    link.frame(*arg)
            received: list[bytes] = []

            async def read_all() -> None:
                async for message in channel:  # messages before the violation come first
                    received.append(message)

            with pytest.raises(nautilus.ProtocolViolation, match="node protocol"):
                await read_all()
            assert received in ([], [b"x"])
            lost = await asyncio.wait_for(link.lost, 5)
            assert isinstance(lost, nautilus.ProtocolViolation), lost
            assert str(lost) == f"the peer sent alert {alert}"
            assert node.peers == {}

    run(main())


@pytest.mark.parametrize(
    ("hello", "error"),
    [
        pytest.param(
            FRAME.pack(HELLO, 2, b"\x01" * 16, b"\x01" * 16),
            nautilus.NegotiationFailed("the peer sent alert protocol_version"),
            id="version 2",
        ),
        pytest.param(
            padded(FRAME.pack(HELLO, 1, b"\x01" * 16, b"\x01" * 16)),
            nautilus.ProtocolViolation("the peer sent alert decode_error"),
            id="padding",
        ),
        pytest.param(
            FRAME.pack(HELLO, 1, bytes(16), b"\x01" * 16),
            nautilus.ProtocolViolation("the peer sent alert decode_error"),
            id="all-zero session id",
        ),
        pytest.param(
            FRAME.pack(HELLO, 1, b"\x01" * 16, bytes(16)),
            nautilus.ProtocolViolation("the peer sent alert decode_error"),
            id="all-zero nonce",
        ),
        pytest.param(
            FRAME.pack(START, 0, bytes(16), bytes(16)),
            nautilus.ProtocolViolation("the peer sent alert unexpected_message"),
            id="START before HELLO",
        ),
    ],
)
def test_a_bad_hello_is_refused(hello: bytes, error: nautilus.NautilusError) -> None:
    """Reserved bytes must be zero, and the random session id and nonce must
    not be all-zero (the "no id" value): such a HELLO used to be accepted."""

    async def main() -> None:
        async with fake_node() as node:
            link = FakeLink()
            ctx = Context(IDS[1], trusted_peers=[IDS[0].public])
            await na.create_connection(
                lambda: link, *node.address, context=ctx, expected_peer=node.peer_id
            )
            link.raw(hello)
            lost = await asyncio.wait_for(link.lost, 5)
            assert type(lost) is type(error), lost  # the alert, not a truncation
            assert str(lost) == str(error)
            assert node.peers == {}
            await still_serves(node)

    run(main())


def test_a_start_past_messages_no_connection_carries_fails_the_channel() -> None:
    """The peer moves to a second connection announcing START(3), but it sent
    only messages 0 and 1 on the first (DONE(2)): message 2 can never come,
    and the channel used to wait for it for ever. Once no connection can
    carry it, the lie is a protocol violation."""

    async def main() -> None:
        async with fake_node() as node:
            sid = b"\x01" * 16
            first = await fake_dial(node, IDS[1], b"\xff" * 16, sid)
            channel = await asyncio.wait_for(node.accept(), 5)
            await first.expect(START)
            second = await fake_dial(node, IDS[1], LOW_NONCE, sid)
            await second.expect(START)
            second.frame(START, 3)
            second.send(b"m3")
            first.frame(START, 0)
            first.send(b"m0", b"m1")  # the first may still carry message 2: no failure yet
            received = await asyncio.wait_for(channel.recv_messages(), 5)
            first.frame(DONE, 2)

            async def read_all() -> None:
                async for message in channel:
                    received.append(message)

            with pytest.raises(nautilus.ProtocolViolation, match="node protocol: START"):
                await asyncio.wait_for(read_all(), 5)
            assert received == [b"m0", b"m1"]
            lost = await asyncio.wait_for(second.lost, 5)
            assert isinstance(lost, nautilus.ProtocolViolation), lost
            assert str(lost) == "the peer sent alert unexpected_message"
            assert node.peers == {}

    run(main())


async def one_session(node: Node, sid: bytes) -> tuple[FakeLink, Channel, Any]:
    """A fake peer's session with ``node`` over one connection: that connection
    (its START received), the channel accepted, and the channel's session."""
    winner = await fake_dial(node, IDS[1], LOW_NONCE, sid)
    channel = await asyncio.wait_for(node.accept(), 5)
    await winner.expect(START)
    return winner, channel, channel._route  # type: ignore[attr-defined]


def test_a_peer_dialling_again_and_again_leaves_nothing_behind() -> None:
    """A trusted peer dials 30 more connections under the same session; each
    loses the tie-break and closes after both DONEs. The session used to keep
    every closed connection in its list for as long as it lived (memory, and
    work per message, growing with each dial). A closed loser whose messages
    still wait for an earlier one is kept until they are delivered."""

    async def main() -> None:
        async with fake_node() as node:
            sid = b"\x03" * 16
            winner, channel, route = await one_session(node, sid)
            for i in range(30):
                loser = await fake_dial(node, IDS[1], b"\xff" * 15 + bytes([i]), sid)
                await loser.expect(DONE)
                loser.frame(DONE, 0)
                assert await asyncio.wait_for(loser.lost, 5) is None
                await until(lambda: node.connection_count() == 1, "the loser is closed here too")
                assert route.links == [node._links.copy().pop()]  # type: ignore[attr-defined]
            assert route.joins == 31
            # A loser carrying messages 2 and 3 closes before 0 and 1 arrive.
            late = await fake_dial(node, IDS[1], b"\xfe" * 16, sid)
            await late.expect(DONE)
            late.frame(START, 2)
            late.send(b"m2", b"m3")
            late.frame(DONE, 2)
            assert await asyncio.wait_for(late.lost, 5) is None
            await until(lambda: node.connection_count() == 1, "the late loser is closed here")
            assert len(route.links) == 2  # kept: its messages wait
            winner.frame(START, 0)
            winner.send(b"m0", b"m1")
            assert [await channel.recv_message() for _ in range(4)] == [
                b"m0",
                b"m1",
                b"m2",
                b"m3",
            ]
            assert len(route.links) == 1  # delivered: forgotten
            channel.send_message(b"still here")
            assert await asyncio.wait_for(winner.messages.get(), 5) == b"still here"

    run(main(), timeout=30)


def test_a_peer_that_never_answers_done_cannot_pile_up_connections() -> None:
    """A trusted peer dials more connections under one session and never
    answers the DONE that retires each: they stayed open for as long as the
    session lived (a file descriptor each). From the 33rd such connection on,
    a new one is closed before the node's HELLO (so that no peer ever joins
    it); the channel goes on."""

    async def main() -> None:
        async with fake_node() as node:
            sid = b"\x04" * 16
            winner, channel, _ = await one_session(node, sid)

            def unsettled() -> int:
                return node._unsettled(IDS[1].peer_id)

            mute = []
            for i in range(node_module._MAX_UNANSWERED):
                loser = await fake_dial(node, IDS[1], b"\xff" * 15 + bytes([i]), sid)
                await loser.expect(DONE)  # and never answers
                mute.append(loser)
            assert unsettled() == node_module._MAX_UNANSWERED
            extra = FakeLink()
            ctx = Context(IDS[1], trusted_peers=[IDS[0].public])
            await na.create_connection(
                lambda: extra, *node.address, context=ctx, expected_peer=node.peer_id
            )
            extra.frame(HELLO, 1, sid, b"\xfe" * 16)
            assert await asyncio.wait_for(extra.lost, 5) is None  # closed, no alert
            assert extra.frames.empty()  # before the node's HELLO: nothing to join
            assert unsettled() == node_module._MAX_UNANSWERED
            assert not any(link.lost.done() for link in mute)
            # One answer makes room for one more connection.
            mute[0].frame(DONE, 0)
            assert await asyncio.wait_for(mute[0].lost, 5) is None
            await until(lambda: unsettled() < node_module._MAX_UNANSWERED, "room")
            again = await fake_dial(node, IDS[1], b"\xfd" * 16, sid)
            await again.expect(DONE)
            assert not again.lost.done()
            channel.send_message(b"still here")
            assert await asyncio.wait_for(winner.messages.get(), 5) == b"still here"

    run(main(), timeout=60)


def test_a_burst_of_connects_between_honest_nodes_keeps_the_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two nodes dial each other many times at once (an application sending
    its first requests from many tasks, each with connect()). Every retired
    connection waits for the peer's DONE, which is still on its way: more
    than the bound on unanswered connections counted as a peer that never
    answers, and the connection refused then had already been joined by the
    peer (this node's HELLO had gone out), whose channel failed on its alert,
    and ours with it: every connect() raised ProtocolViolation. A connection
    over the bound is refused before this node's HELLO, which the peer
    needs to join it: the channel survives."""
    monkeypatch.setattr(node_module, "_MAX_UNANSWERED", 4)
    count = 12

    async def main() -> None:
        async with nodes(2) as (a, b):
            dials = [a.connect(b.address, b.peer_id) for _ in range(count)]
            dials += [b.connect(a.address, a.peer_id) for _ in range(count)]
            results = await asyncio.gather(*dials, return_exceptions=True)
            for result in results:  # the channel, or a dial refused before any HELLO
                assert isinstance(result, (Channel, nautilus.ConnectionLost)), repr(result)
            ca, cb = a.peers[b.peer_id], b.peers[a.peer_id]
            assert all(r is ca for r in results[:count] if isinstance(r, Channel))
            assert all(r is cb for r in results[count:] if isinstance(r, Channel))
            ca.send_message(b"ping")
            assert await asyncio.wait_for(cb.recv_message(), 5) == b"ping"
            cb.send_message(b"pong")
            assert await asyncio.wait_for(ca.recv_message(), 5) == b"pong"
            await settled(a, b)

    run(main(), timeout=40)


def test_a_held_connection_is_dropped_after_the_handshake_timeout() -> None:
    """A connection of the peer's next session is held (rule 3) until the old
    session ends here. A peer that never ends it (or an old connection that
    stalls) used to keep the new one held, with what it carried, for ever:
    it is now dropped after the context's handshake_timeout, and the old
    channel carries on."""

    async def main() -> None:
        ctx = node_ctx(IDS[0], trusted=[IDS[1]], handshake_timeout=0.5)
        async with Node(ctx) as node:
            old = await fake_dial(node, IDS[1], b"\x01" * 16, b"\x0a" * 16)
            channel = await asyncio.wait_for(node.accept(), 5)
            await old.expect(START)
            # (before the dial: the node holds it on our HELLO, before we see the node's)
            started = time.monotonic()
            new = await fake_dial(node, IDS[1], b"\x02" * 16, b"\x0b" * 16)  # the next session
            await until(lambda: bool(node._held.get(IDS[1].peer_id)), "the node holds it")
            new.frame(START, 0)
            new.send(b"held")
            lost = await asyncio.wait_for(new.lost, 5)
            assert isinstance(lost, nautilus.HandshakeTimeout), lost  # the alert, not a truncation
            assert 0.3 < time.monotonic() - started < 3.0
            await until(lambda: node.connection_count(IDS[1].peer_id) == 1, "it is gone")
            assert not node._held.get(IDS[1].peer_id)
            assert node.peers == {IDS[1].peer_id: channel}
            old.frame(START, 0)
            old.send(b"still here")
            assert await asyncio.wait_for(channel.recv_message(), 5) == b"still here"
            channel.send_message(b"reply")
            assert await asyncio.wait_for(old.messages.get(), 5) == b"reply"

    run(main())


def test_new_channels_beyond_max_pending_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Without on_peer, new channels wait for accept(): at most max_pending of
    them. Beyond, a peer's connection that would start one is refused (before
    the node's HELLO if it can be, else when it would start the channel);
    the queue used to grow without bound."""

    async def main() -> None:
        async with Node(node_ctx(IDS[0]), max_pending=2) as node:
            # IDS[3] connects and gets the node's HELLO while there is room ...
            early = FakeLink()
            ctx = Context(IDS[3], trusted_peers=[IDS[0].public])
            await na.create_connection(
                lambda: early, *node.address, context=ctx, expected_peer=node.peer_id
            )
            await early.expect(HELLO)
            one = await fake_dial(node, IDS[1], b"\x01" * 16, b"\x01" * 16)
            two = await fake_dial(node, IDS[2], b"\x02" * 16, b"\x02" * 16)
            await until(lambda: len(node.peers) == 2, "two channels wait")
            # ... but the queue is full when its own HELLO comes: dropped.
            early.frame(HELLO, 1, b"\x03" * 16, b"\x03" * 16)
            assert isinstance(await asyncio.wait_for(early.lost, 5), nautilus.ConnectionLost)
            # A new connection is now refused before the node says HELLO.
            late = FakeLink()
            await na.create_connection(
                lambda: late, *node.address, context=ctx, expected_peer=node.peer_id
            )
            await asyncio.wait_for(late.lost, 5)
            assert late.frames.empty()
            assert set(node.peers) == {IDS[1].peer_id, IDS[2].peer_id}
            # Connections of the waiting channels still work; accepting makes room.
            one.frame(START, 0)
            one.send(b"one")
            first = await node.accept()
            assert await asyncio.wait_for(first.recv_message(), 5) == b"one"
            again = await fake_dial(node, IDS[3], b"\x04" * 16, b"\x04" * 16)
            assert (await node.accept()).peer_id == IDS[2].peer_id
            third = await node.accept()
            assert third.peer_id == IDS[3].peer_id
            again.frame(START, 0)
            again.send(b"three")
            assert await asyncio.wait_for(third.recv_message(), 5) == b"three"
            assert not two.lost.done()

    with caplog.at_level(logging.WARNING, logger="nautilus.asyncio"):
        run(main())
    assert f"refusing a new channel from {IDS[3].peer_id}" in caplog.text


def test_closing_the_old_channel_starts_the_peers_next_session() -> None:
    """The peer began a new session (its connection is held, rule 3) before
    this side closed the old channel. The close ends the old session only: the
    held connection starts the new one, which accept() reports with what it
    carried. It used to be refused as part of the closed session and closed
    cleanly, so the peer read a clean end and its messages were lost with no
    error on either side."""

    async def main() -> None:
        async with fake_node() as node:
            old = await fake_dial(node, IDS[1], b"\x01" * 16, b"\x0a" * 16)
            first = await asyncio.wait_for(node.accept(), 5)
            await old.expect(START)
            new = await fake_dial(node, IDS[1], b"\x02" * 16, b"\x0b" * 16)  # the next session
            await until(lambda: bool(node._held.get(IDS[1].peer_id)), "the node holds it")
            new.frame(START, 0)
            new.send(b"sent in the next session")
            first.close()
            assert await asyncio.wait_for(old.lost, 5) is None  # the old session: closed
            second = await asyncio.wait_for(node.accept(), 5)
            assert second is not first
            assert await asyncio.wait_for(second.recv_message(), 5) == b"sent in the next session"
            await new.expect(START)
            second.send_message(b"answer")
            assert await asyncio.wait_for(new.messages.get(), 5) == b"answer"
            assert not new.lost.done()

    run(main())


def test_a_node_channel_close_the_peer_never_read_fails_wait_closed() -> None:
    """As for a channel of one connection: when close() gives up on a peer
    that does not read (5 s), what it had not read is lost, and wait_closed()
    raises ConnectionLost instead of returning as after a clean close."""

    async def main() -> None:
        async with Node(node_ctx(IDS[0])) as a, Node(node_ctx(IDS[1]), max_queue=4) as b:
            ab = await a.connect(b.address, b.peer_id)
            await asyncio.wait_for(b.accept(), 5)  # never read
            while True:  # until the peer's buffers and ours are full
                ab.send_message(bytes(60_000))
                try:
                    await asyncio.wait_for(ab.drain(), 0.3)
                except asyncio.TimeoutError:
                    break
            ab.close()
            with pytest.raises(nautilus.ConnectionLost, match="had not read"):
                await asyncio.wait_for(ab.wait_closed(), 15)

    run(main(), 40)
