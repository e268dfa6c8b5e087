"""nt_seal_send: the blocking sockets' seal-and-send call, over real socket pairs.

It must write exactly what nt_seal would seal (the peer opens it), never wait
(a full socket leaves the rest to the caller, NT_PARTIAL), and seal nothing
when it refuses its arguments. With a budget (nt_seal_within) it seals only
what fits, and counts what it sealed.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from nautilus._bindings import ffi, lib
from nautilus.record import RECORD_OVERHEAD, ContentType, RecordOpener, RecordSealer

pytestmark = pytest.mark.native

KEY, IV = bytes(range(32)), bytes(range(12))
APP = int(ContentType.APPLICATION_DATA)


def seal_send(
    sealer: RecordSealer, fd: int, data: bytes, budget: Any = None
) -> tuple[int, int, int, bytearray]:
    """(rc, sealed length, bytes sent, output buffer); ``budget``: an nt_budget, or none."""
    need = lib.nt_seal_size(sealer._live(), len(data))
    out = bytearray(need)
    lens = ffi.new("size_t[2]")
    rc = lib.nt_seal_send(
        sealer._live(),
        ffi.NULL if budget is None else budget,
        fd,
        APP,
        data,
        len(data),
        ffi.from_buffer(out),
        need,
        lens,
    )
    return rc, lens[0], lens[1], out


def read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"the pair closed after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("size", [0, 1, 4096, 16384, 40000])
def test_sends_what_it_sealed_and_the_peer_opens_it(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    sealer, opener = RecordSealer("aes-256-gcm", KEY, IV), RecordOpener("aes-256-gcm", KEY, IV)
    a, b = socket.socketpair()
    with a, b:
        rc, sealed, sent, out = seal_send(sealer, a.fileno(), data)
        assert (rc, sent) == (lib.NT_OK, sealed)
        assert sealed == len(out) == size + ((size + 16383) // 16384 or 1) * RECORD_OVERHEAD
        wire = bytearray(read_exactly(b, sealed))
        assert wire == out
        plain = bytearray(len(wire))
        opened = opener.open_packed(wire, plain)
        assert (opened.consumed, bytes(plain[: opened.written])) == (sealed, data)
        assert sealer.sequence == opened.records


def test_a_full_socket_takes_part_and_the_rest_is_left_to_the_caller() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: more than a small send buffer holds
    sealer, opener = RecordSealer("aes-256-gcm", KEY, IV), RecordOpener("aes-256-gcm", KEY, IV)
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        rc, sealed, sent, out = seal_send(sealer, a.fileno(), data)
        assert rc == lib.NT_PARTIAL
        assert 0 < sent < sealed == len(out)
        a.setblocking(True)
        wire = bytearray()

        def drain() -> None:
            wire.extend(read_exactly(b, sealed))

        reader = threading.Thread(target=drain)
        reader.start()
        a.sendall(memoryview(out)[sent:])  # what the caller does with the rest
        reader.join(10)
        assert not reader.is_alive()
        plain = bytearray(len(wire))
        opened = opener.open_packed(wire, plain)
        assert bytes(plain[: opened.written]) == data


def test_a_closed_peer_is_partial_not_a_crash() -> None:
    sealer = RecordSealer("aes-256-gcm", KEY, IV)
    a, b = socket.socketpair()
    b.close()
    with a:
        rc, sealed, sent, _ = seal_send(sealer, a.fileno(), b"into the void")
        assert (rc, sent) == (lib.NT_PARTIAL, 0)
        assert sealed > 0
        with pytest.raises(BrokenPipeError):  # the caller's own write raises the error
            a.send(b"x")


def test_without_a_socket_it_only_seals() -> None:
    sealer, opener = RecordSealer("aes-256-gcm", KEY, IV), RecordOpener("aes-256-gcm", KEY, IV)
    rc, sealed, sent, out = seal_send(sealer, -1, b"data")
    assert (rc, sent) == (lib.NT_PARTIAL, 0)  # all of it is the caller's to write
    assert sealed == len(out) == 4 + RECORD_OVERHEAD
    plain = bytearray(sealed)
    opened = opener.open_packed(out, plain)
    assert bytes(plain[: opened.written]) == b"data"


def test_refused_arguments_seal_nothing() -> None:
    sealer = RecordSealer("aes-256-gcm", KEY, IV)
    before = sealer.sequence
    out = bytearray(64)
    assert lib.nt_seal_send(sealer._live(), ffi.NULL, 0, APP, b"x", 1, ffi.from_buffer(out), 64,
                            ffi.NULL) == lib.NT_ERR_ARG  # fmt: skip
    a, b = socket.socketpair()
    with a, b:
        small = bytearray(8)  # too small: NT_ERR_BUFFER, nothing sent
        lens = ffi.new("size_t[2]")
        rc = lib.nt_seal_send(sealer._live(), ffi.NULL, a.fileno(), APP, b"data", 4,
                              ffi.from_buffer(small), len(small), lens)  # fmt: skip
        assert (rc, lens[0], lens[1]) == (lib.NT_ERR_BUFFER, 0, 0)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)
    assert sealer.sequence == before


def budget(records: int, content: int) -> Any:
    b = ffi.new("nt_budget *")
    b.records, b.bytes = records, content
    return b


def test_a_budget_counts_what_it_sealed() -> None:
    sealer = RecordSealer("aes-256-gcm", KEY, IV, max_fragment=1000)
    left = budget(10, 5000)
    a, b = socket.socketpair()
    with a, b:
        rc, sealed, sent, _out = seal_send(sealer, a.fileno(), bytes(2500), left)
        assert rc == lib.NT_OK
        assert sent == sealed == 2500 + 3 * RECORD_OVERHEAD
        assert (left.records, left.bytes) == (7, 2500)
        assert sealer.sequence == 3


@pytest.mark.parametrize(
    ("records", "content", "size"),
    [
        (3, 10_000, 2500),  # needs 3 records: a seal must need fewer than the budget's
        (0, 10_000, 0),  # an empty record is still a record
        (100, 2499, 2500),  # one byte over
    ],
)
def test_what_does_not_fit_the_budget_is_not_sealed(records: int, content: int, size: int) -> None:
    sealer = RecordSealer("aes-256-gcm", KEY, IV, max_fragment=1000)
    left = budget(records, content)
    a, b = socket.socketpair()
    with a, b:
        rc, sealed, sent, out = seal_send(sealer, a.fileno(), bytes(size), left)
        assert (rc, sealed, sent) == (lib.NT_DUE, 0, 0)
        assert not any(out)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)
    assert (left.records, left.bytes) == (records, content)
    assert sealer.sequence == 0


def test_the_budget_is_exact_at_its_edge() -> None:
    sealer = RecordSealer("aes-256-gcm", KEY, IV, max_fragment=1000)
    left = budget(4, 3000)  # 3 records and 3000 bytes fit: exactly the whole budget's bytes
    rc, sealed, _sent, out = seal_send(sealer, -1, bytes(3000), left)
    assert rc == lib.NT_PARTIAL
    assert sealed == len(out)
    assert (left.records, left.bytes) == (1, 0)
    opener = RecordOpener("aes-256-gcm", KEY, IV, max_fragment=1000)
    plain = bytearray(len(out))
    assert opener.open_packed(out, plain).written == 3000
    assert seal_send(sealer, -1, b"x", left)[0] == lib.NT_DUE  # nothing left
