"""Session cache benchmarks: ``store`` and ``take`` on a cache holding about
4096 tickets (1024 servers x 4, the default bounds), three ways:

* ``file``: a cache with a ``path``; each call locks the file, applies what
  changed in it and appends its own change (compacting the journal now and
  then: the mean includes those, the median is the common case).
* ``file-shared``: two caches on one file; before each timed call the other
  cache writes one change, so the timed call also reads and applies it.
* ``memory``: no ``path`` (the path every connection takes by default).

Tickets are shaped like real ones (an opaque ticket of 180 bytes, a 32-byte
PSK and server key). ``take`` is timed one call per round (``pedantic``); the
ticket each round takes is stored again before the next, untimed, so that the
cache stays full. Each benchmark checks afterwards, outside the timing, that
the cache still holds its 4096 tickets and, for the file, that a new cache
reading the file finds the same.

Run: ``.venv/bin/python -m pytest benchmarks/bench_session_cache.py --benchmark-only``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nautilus.sessions import SessionCache, StoredTicket

SERVERS = 1024
PER_SERVER = 4
TICKETS = SERVERS * PER_SERVER
NOW = time.time()
TAKE_ROUNDS = 2000

impls = pytest.mark.parametrize("impl", ["file", "file-shared", "memory"])


def _ticket(n: int) -> StoredTicket:
    return StoredTicket(
        ticket=os.urandom(180),
        psk=os.urandom(32),
        cipher=0x1302,
        server_key=os.urandom(32),
        server_certificate=b"",
        received=NOW,
        lifetime=7200.0,
        age_add=n & 0xFFFFFFFF,
        max_early_data=0,
        namespace=b"nautilus",
    )


def _key(n: int) -> str:
    return SessionCache.key("*", f"server-{n % SERVERS}.example:443")


def _setup(benchmark: Any, op: str, impl: str) -> None:
    benchmark.group = f"session cache {op}, {TICKETS} tickets"
    benchmark.extra_info.update(
        {"kind": "session-cache", "op": op, "impl": impl, "tickets": TICKETS}
    )


@pytest.fixture
def caches(impl: str, tmp_path: Path) -> Iterator[tuple[SessionCache, SessionCache]]:
    """(the cache timed, the cache that writes between calls), filled."""
    if impl == "memory":
        cache = SessionCache()
        other = cache
    else:
        path = tmp_path / "tickets.json"
        cache = SessionCache(path=path)
        other = SessionCache(path=path) if impl == "file-shared" else cache
    for n in range(TICKETS):
        cache.store(_key(n), _ticket(n))
    assert len(cache) == len(other) == TICKETS
    yield cache, other
    assert len(cache) == TICKETS
    if cache._path is not None:
        assert len(SessionCache(path=cache._path)) == TICKETS


@impls
def test_store(benchmark: Any, impl: str, caches: tuple[SessionCache, SessionCache]) -> None:
    _setup(benchmark, "store", impl)
    cache, other = caches
    tickets = [_ticket(n) for n in range(SERVERS)]  # made once, outside the timing
    counter = itertools.count()

    def store() -> None:
        # Each server in turn: its oldest ticket makes room (the cache stays full).
        n = next(counter)
        cache.store(_key(n), tickets[n % SERVERS])

    if other is cache:
        benchmark(store)
        return
    rounds = itertools.count()

    def other_writes() -> None:
        n = next(rounds)
        other.store(_key(n + SERVERS // 2), tickets[(n + SERVERS // 2) % SERVERS])

    benchmark.pedantic(store, setup=other_writes, rounds=TAKE_ROUNDS, iterations=1)


@impls
def test_take(benchmark: Any, impl: str, caches: tuple[SessionCache, SessionCache]) -> None:
    _setup(benchmark, "take", impl)
    cache, other = caches
    tickets = [_ticket(n) for n in range(SERVERS)]
    rounds = itertools.count()
    key = ""

    def put_back() -> None:
        # Untimed: the ticket the last round took is replaced (stored by the
        # other cache when there is one: the timed take then reads it from the
        # file); this round takes from the next server.
        nonlocal key
        n = next(rounds)
        if key:
            other.store(key, tickets[n % SERVERS])
        key = _key(n)

    def take() -> StoredTicket | None:
        return cache.take(key, NOW)

    taken = benchmark.pedantic(take, setup=put_back, rounds=TAKE_ROUNDS, iterations=1)
    assert taken is not None
    put_back()
    assert len(other) == TICKETS
