"""Ephemeral keys made ahead of use (nautilus/protocol/keypool.py,
Context.prepare_key_shares) and the encapsulation with a prepared X25519 key."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

import nautilus.asyncio as na
from nautilus import ClosedError, Context, NautilusError
from nautilus.kem import (
    GROUPS,
    MLKEM768PrivateKey,
    X25519KEMPrivateKey,
    X25519MLKEM768PrivateKey,
)
from nautilus.protocol.keypool import POOL_LIMIT, SERVER_EPHEMERAL, KeyPool
from nautilus.protocol.messages import PskMode
from tests.protocol_helpers import Pair, cached_identity, patch_method

X25519_GROUPS = [g for g in GROUPS if g.startswith("x25519")]


# ----------------------------------------------- encapsulation with a prepared key


@pytest.mark.parametrize("group", X25519_GROUPS)
def test_encapsulate_with_ephemeral_round_trip(group: str) -> None:
    private = GROUPS[group].generate()
    eph = X25519KEMPrivateKey.generate()
    shared, ciphertext = private.public_key()._encapsulate_with_ephemeral(eph)
    assert private.decapsulate(ciphertext) == shared
    # The X25519 part of the ciphertext is the prepared key's public key ...
    assert ciphertext[-32:] == eph.public_key().public_bytes_raw()
    # ... and its secret is X25519(eph, the peer's X25519 public key).
    peer_x = X25519PublicKey.from_public_bytes(private.public_key().public_bytes_raw()[-32:])
    expected = X25519PrivateKey.from_private_bytes(eph.private_bytes_raw()).exchange(peer_x)
    assert shared[-32:] == expected


def test_encapsulate_with_ephemeral_differs_per_key() -> None:
    pub = X25519MLKEM768PrivateKey.generate().public_key()
    a = pub._encapsulate_with_ephemeral(X25519KEMPrivateKey.generate())
    b = pub._encapsulate_with_ephemeral(X25519KEMPrivateKey.generate())
    assert a[0] != b[0]
    assert a[1] != b[1]


def test_encapsulate_with_ephemeral_needs_an_x25519_part() -> None:
    pub = MLKEM768PrivateKey.generate().public_key()
    with pytest.raises(ClosedError):
        pub._encapsulate_with_ephemeral(X25519KEMPrivateKey.generate())


def test_encapsulate_with_ephemeral_needs_an_x25519_private_key() -> None:
    pub = X25519MLKEM768PrivateKey.generate().public_key()
    with pytest.raises(TypeError, match="X25519KEMPrivateKey"):
        pub._encapsulate_with_ephemeral(X25519MLKEM768PrivateKey.generate())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="X25519KEMPrivateKey"):
        pub._encapsulate_with_ephemeral(b"\x01" * 32)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the pool


def _public(key: object) -> bytes:
    return key.public_key().public_bytes_raw()  # type: ignore[attr-defined, no-any-return]


def test_empty_pool_makes_keys_on_the_spot() -> None:
    pool = KeyPool()
    share = pool.take_share("x25519-mlkem768")
    assert isinstance(share, X25519MLKEM768PrivateKey)
    eph = pool.take_server_ephemeral()
    assert isinstance(eph, X25519KEMPrivateKey)
    assert pool.size("x25519-mlkem768") == 0


def test_prepare_replaces_what_was_taken() -> None:
    pool = KeyPool()
    assert pool.prepare() == 0  # nothing taken: nothing made
    pool.take_share("mlkem768")
    pool.take_share("mlkem768")
    pool.take_server_ephemeral()
    assert pool.prepare() == 3
    assert pool.size("mlkem768") == 2
    assert pool.size(SERVER_EPHEMERAL) == 1
    assert pool.prepare() == 0  # already replaced


def test_prepared_keys_are_handed_out_once_then_replaced() -> None:
    pool = KeyPool()
    seen: set[bytes] = set()
    for _ in range(12):
        key = pool.take_share("x25519")
        assert _public(key) not in seen
        seen.add(_public(key))
        pool.prepare()
    assert len(seen) == 12
    assert pool.size("x25519") == 1


def test_the_pool_is_bounded() -> None:
    pool = KeyPool()
    for _ in range(POOL_LIMIT * 3):
        pool.take_share("x25519")
    assert pool.prepare() == POOL_LIMIT
    assert pool.size("x25519") == POOL_LIMIT
    assert pool.prepare() == 0


def test_a_taken_prepared_key_is_the_one_handed_out() -> None:
    pool = KeyPool()
    pool.take_share("x25519")
    pool.prepare()
    waiting = pool._keys["x25519"][-1]
    assert pool.take_share("x25519") is waiting
    assert pool.size("x25519") == 0


def test_clear_and_repr_show_no_key_material() -> None:
    pool = KeyPool()
    pool.take_share("x25519")
    pool.prepare()
    key = pool._keys["x25519"][0]
    text = repr(pool)
    assert "x25519" in text
    assert "1" in text
    assert key.private_bytes_raw().hex() not in text
    assert _public(key).hex()[:16] not in text
    pool.clear()
    assert pool.size("x25519") == 0


def test_prepare_from_many_threads() -> None:
    pool = KeyPool()
    taken: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            key = pool.take_share("x25519")
            with lock:
                taken.append(_public(key))
            pool.prepare()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 40
    assert len(set(taken)) == 40  # no key was handed out twice
    assert pool.size("x25519") <= POOL_LIMIT


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_reuses_the_parents_keys() -> None:
    pool = KeyPool()
    pool.take_share("x25519")
    pool.take_server_ephemeral()
    pool.prepare()
    assert pool.size("x25519") == 1
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what its pool holds, then leave at once
        try:
            os.write(write_end, b"%d %d" % (pool.size("x25519"), pool.size(SERVER_EPHEMERAL)))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = f.read()
    os.waitpid(pid, 0)
    assert report == b"0 0"
    assert pool.size("x25519") == 1  # the parent keeps its own


# ------------------------------------------------------------ in the handshake


def test_handshakes_use_the_prepared_keys() -> None:
    pair = Pair.make()
    pair.handshake()
    assert pair.client._took_keys
    assert pair.server._took_keys
    assert pair.client_ctx.prepare_key_shares() == 1
    assert pair.server_ctx.prepare_key_shares() == 1
    group = pair.client_ctx.groups[0]
    share = pair.client_ctx._key_pool._keys[group][-1]

    second = Pair(pair.client_ctx, pair.server_ctx)
    second.handshake()
    assert second.client._hello is not None
    assert second.client._hello.share == _public(share)
    assert second.client._kem is None  # dropped after use
    assert pair.client_ctx._key_pool.size(group) == 0
    assert pair.server_ctx._key_pool.size(SERVER_EPHEMERAL) == 0
    assert second.client.session is not None
    assert second.server.session is not None
    assert second.client.export_keying_material(
        b"t", b"", 32
    ) == second.server.export_keying_material(b"t", b"", 32)


def test_the_server_reply_carries_the_prepared_x25519_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair = Pair.make()
    pair.handshake()
    pair.server_ctx.prepare_key_shares()
    eph = pair.server_ctx._key_pool._keys[SERVER_EPHEMERAL][-1]
    replies: list[bytes] = []

    second = Pair(pair.client_ctx, pair.server_ctx)
    original = second.client._on_server_hello

    def spy(msg, full):  # type: ignore[no-untyped-def]
        replies.append(msg.share)
        return original(msg, full)

    patch_method(monkeypatch, second.client, "_on_server_hello", spy)
    second.handshake()
    assert replies
    assert replies[0][-32:] == eph.public_key().public_bytes_raw()


def test_pure_mlkem_servers_take_no_x25519_key() -> None:
    pair = Pair.make(server={"groups": ["mlkem768"]}, client={"groups": ["mlkem768"]})
    pair.handshake()
    assert pair.client._took_keys
    assert not pair.server._took_keys
    assert pair.server_ctx.prepare_key_shares() == 0


def test_psk_only_resumptions_take_no_key_share() -> None:
    server = {"resumption": "psk_only", "tickets_per_handshake": 1}
    first = Pair.make(server=server, client={"resumption": "psk_only"}, server_name="peer")
    first.handshake()
    first.pump()
    first.client_ctx.prepare_key_shares()
    first.server_ctx.prepare_key_shares()
    second = Pair(first.client_ctx, first.server_ctx, {"server_name": "peer"})
    second.handshake()
    assert second.client.session is not None
    assert second.client.session.resumed
    assert second.client._psk_mode is PskMode.PSK_ONLY
    assert not second.client._took_keys
    assert not second.server._took_keys
    assert first.client_ctx.prepare_key_shares() == 0
    assert first.server_ctx.prepare_key_shares() == 0


# ------------------------------------------------------------------- the adapters


def test_the_asyncio_adapter_prepares_keys_after_each_flight() -> None:
    ident = cached_identity()
    sctx = Context(ident)
    cctx = Context(trusted_peers=[ident.public])
    group = cctx.groups[0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(10))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await na.start_server(handler, "127.0.0.1", 0, context=sctx)
        port = server.sockets[0].getsockname()[1]
        try:
            for _ in range(3):
                reader, writer = await na.open_connection("127.0.0.1", port, context=cctx)
                writer.write(b"ping")
                assert await reader.read(10) == b"ping"
                writer.close()
                await writer.wait_closed()
                await asyncio.sleep(0)  # let the loop run the scheduled callbacks
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert cctx._key_pool.size(group) == 1
    assert sctx._key_pool.size(SERVER_EPHEMERAL) == 1
    assert cctx.prepare_key_shares() == 0
    assert sctx.prepare_key_shares() == 0


def test_the_socket_adapter_prepares_keys_after_each_flight() -> None:
    ident = cached_identity()
    sctx = Context(ident)
    cctx = Context(trusted_peers=[ident.public])
    group = cctx.groups[0]
    for _ in range(2):
        a, b = socket.socketpair()
        a.settimeout(10)
        b.settimeout(10)
        result: list[bytes] = []

        def serve(sock: socket.socket = b, result: list[bytes] = result) -> None:
            with sctx.wrap_socket(sock, server_side=True) as s:
                data = s.recv(10)
                result.append(data)
                s.sendall(data)

        t = threading.Thread(target=serve)
        t.start()
        with cctx.wrap_socket(a, server_name="peer") as c:
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"  # the server is done before this side closes
        t.join(10)
        assert result == [b"ping"]
    assert cctx._key_pool.size(group) == 1
    assert sctx._key_pool.size(SERVER_EPHEMERAL) == 1


def test_prepare_quietly_logs_a_failure_and_raises_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pool = KeyPool()
    pool.take_share("x25519")
    pool.take_share("x25519")

    def fail() -> X25519KEMPrivateKey:
        raise NautilusError("no randomness")

    monkeypatch.setattr(X25519KEMPrivateKey, "generate", staticmethod(fail))
    with pytest.raises(NautilusError):
        pool.prepare()  # the documented call raises ...
    with caplog.at_level("DEBUG", logger="nautilus"):
        pool.prepare_quietly()  # ... the adapters' call logs
    assert pool.size("x25519") == 0
    assert "could not prepare key shares: NautilusError" in caplog.text
    assert "no randomness" not in caplog.text
