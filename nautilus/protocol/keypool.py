"""Ephemeral keys made ahead of use, off a handshake's critical path.

A client's key share (83 µs for x25519-mlkem768) and the X25519 half of a
server's encapsulation (40 µs) do not depend on the peer, so they can be made
while a connection waits for its peer instead of while the peer waits for it.
Each :class:`Context` has one :class:`KeyPool`:

- a Connection *takes* what it needs (made on the spot when the pool is
  empty), and counts what it took;
- the I/O adapters call :meth:`Context.prepare_key_shares` once a
  connection's flight is on the wire, which replaces what was taken since the
  last call, up to :data:`POOL_LIMIT` keys of each kind.

So the pool makes about as many keys as handshakes use (none for
``psk_only`` resumptions, which need no share), and holds at most a few.

Every key is handed out once, then dropped. The pool is emptied in a forked
child: the parent and the child must never use the same ephemeral key.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

from nautilus.exceptions import NautilusError
from nautilus.kem import GROUPS, KEMPrivateKey, X25519KEMPrivateKey

__all__ = ["POOL_LIMIT", "SERVER_EPHEMERAL", "KeyPool"]

POOL_LIMIT = 4
"""Most keys of one kind a pool holds."""

SERVER_EPHEMERAL = "server-x25519"
"""The pool kind of a server's X25519 ephemeral keys (others are group names)."""

_POOLS: weakref.WeakSet[KeyPool] = weakref.WeakSet()
logger = logging.getLogger("nautilus")


class KeyPool:
    """Single-use ephemeral keys of a context, by kind (thread-safe)."""

    __slots__ = ("__weakref__", "_keys", "_lock", "_taken")

    def __init__(self) -> None:
        self._keys: dict[str, list[KEMPrivateKey]] = {}
        self._taken: dict[str, int] = {}  # taken since the last prepare(), by kind
        self._lock = threading.Lock()
        _POOLS.add(self)

    def take_share(self, group: str) -> KEMPrivateKey:
        """A fresh private key of ``group`` (a client key share), never handed out before."""
        key = self._take(group)
        return key if key is not None else GROUPS[group].generate()

    def take_server_ephemeral(self) -> X25519KEMPrivateKey:
        """A fresh X25519 key for the X25519 part of one server encapsulation."""
        key = self._take(SERVER_EPHEMERAL)
        if key is None:
            return X25519KEMPrivateKey.generate()
        assert isinstance(key, X25519KEMPrivateKey)
        return key

    def _take(self, kind: str) -> KEMPrivateKey | None:
        with self._lock:
            self._taken[kind] = self._taken.get(kind, 0) + 1
            keys = self._keys.get(kind)
            return keys.pop() if keys else None

    def prepare(self) -> int:
        """Replace the keys taken since the last call (up to :data:`POOL_LIMIT`
        of a kind); return how many keys were made."""
        made = 0
        while True:
            with self._lock:
                kind = next((k for k, n in self._taken.items() if n > 0), None)
                if kind is None:
                    return made
                keys = self._keys.setdefault(kind, [])
                if len(keys) >= POOL_LIMIT:
                    self._taken[kind] = 0
                    continue
                self._taken[kind] -= 1
            # Made outside the lock: the work releases the GIL, and other
            # threads may take keys meanwhile.
            key: KEMPrivateKey = (
                X25519KEMPrivateKey.generate()
                if kind == SERVER_EPHEMERAL
                else GROUPS[kind].generate()
            )
            with self._lock:
                keys = self._keys.setdefault(kind, [])
                if len(keys) < POOL_LIMIT:
                    keys.append(key)
                    made += 1

    def prepare_quietly(self) -> None:
        """:meth:`prepare` for the I/O adapters, which call it once a flight is
        written: a failure is only logged, since the next handshake makes its
        own keys and reports any failure itself."""
        try:
            self.prepare()
        except NautilusError as exc:
            logger.debug("could not prepare key shares: %s", type(exc).__name__)

    def size(self, kind: str) -> int:
        """How many keys of ``kind`` wait in the pool."""
        with self._lock:
            return len(self._keys.get(kind, ()))

    def clear(self) -> None:
        """Drop every key (they are wiped as they are freed)."""
        with self._lock:
            self._keys.clear()
            self._taken.clear()

    def __repr__(self) -> str:
        with self._lock:
            sizes = {kind: len(keys) for kind, keys in self._keys.items() if keys}
        return f"<nautilus KeyPool {sizes}>"


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._lock = threading.Lock()  # a lock held by another thread at fork stays held
        pool.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
