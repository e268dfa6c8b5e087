"""Sessions: resumption tickets, the client session cache, the server's session table.

* :class:`TicketKeys`: the server's ticket-encryption keys. Tickets are sealed
  with AES-256-GCM under the current key; keys rotate on a schedule and the
  previous key still opens tickets for one ticket lifetime. The server keeps no
  per-client state for tickets.
* :class:`SessionCache`: the client's tickets, in memory (bounded, least
  recently used out first) and optionally in a file readable only by its owner.
  Keyed by the server's identity and address; each ticket is used once.
* :class:`SessionTable`: a view of a server context's live sessions for operators.

The wire formats are in docs/sessions.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import os
import stat
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nautilus.exceptions import IdentityFileError
from nautilus.protocol.codec import DecodeError, Reader, Writer
from nautilus.record import AEAD

if TYPE_CHECKING:
    from nautilus.protocol.connection import Connection

__all__ = [
    "MAX_TICKET_LIFETIME",
    "LiveSession",
    "SessionCache",
    "SessionTable",
    "StoredTicket",
    "TicketContents",
    "TicketKeys",
]

log = logging.getLogger("nautilus.sessions")

MAX_TICKET_LIFETIME = 7 * 24 * 3600.0
"""Hard maximum lifetime of a ticket: 7 days (as RFC 8446 section 4.6.1)."""
_TICKET_VERSION = 1
_TICKET_AAD = b"nautilus ticket v1"
_KEY_ID_SIZE = 8
_MAX_RETIRED_KEYS = 64
_NONCE_SIZE = 12


@dataclass(frozen=True)
class TicketContents:
    """What a ticket carries (sealed: nothing of it travels in clear)."""

    issued: float
    """Server time of issue (UNIX seconds)."""
    lifetime: float
    cipher: int
    psk: bytes
    server_id_hash: bytes
    """SHA-256 of the issuing server's peer id (a new identity voids old tickets)."""
    namespace: bytes
    client_key: bytes
    """The client's PeerKey encoding, empty if the client was not authenticated."""
    client_certificate: bytes
    max_early_data: int
    age_add: int

    def encode(self) -> bytes:
        w = Writer().u8(_TICKET_VERSION).u64(int(self.issued * 1000)).u32(int(self.lifetime))
        w.u16(self.cipher).vec8(self.psk).vec8(self.server_id_hash).vec8(self.namespace)
        w.vec16(self.client_key).vec24(self.client_certificate)
        return w.u32(self.max_early_data).u32(self.age_add).bytes()

    @classmethod
    def decode(cls, data: bytes) -> TicketContents:
        r = Reader(data)
        if r.u8() != _TICKET_VERSION:
            raise DecodeError("unknown ticket version")
        issued, lifetime = r.u64() / 1000.0, float(r.u32())
        cipher = r.u16()
        psk, server_hash, namespace = r.vec8(), r.vec8(), r.vec8()
        client_key, cert = r.vec16(), r.vec24()
        max_early, age_add = r.u32(), r.u32()
        r.done()
        return cls(issued, lifetime, cipher, psk, server_hash, namespace, client_key, cert,
                   max_early, age_add)  # fmt: skip


class _Key:
    __slots__ = ("aead", "created", "key_id")

    def __init__(self, now: float) -> None:
        self.key_id = os.urandom(_KEY_ID_SIZE)
        self.aead = AEAD("aes-256-gcm", os.urandom(32))
        self.created = now


class TicketKeys:
    """The server's rotating ticket keys (in memory; a restart voids all tickets).

    Args:
        rotation: seconds between key rotations.
        lifetime: ticket lifetime; a retired key keeps opening tickets for
            this long after its retirement (so every ticket opens for its whole
            lifetime, whatever the rotation interval).

    Raises:
        ValueError: a non-positive rotation or lifetime, or a lifetime over 7 days.
    """

    def __init__(self, rotation: float, lifetime: float) -> None:
        if not 0 < lifetime <= MAX_TICKET_LIFETIME:
            raise ValueError(f"ticket lifetime must be in (0, {MAX_TICKET_LIFETIME:g}] s")
        if rotation <= 0:
            raise ValueError("ticket key rotation interval must be positive")
        self.rotation = rotation
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._current: _Key | None = None
        # Retired keys with the time they retired: each still opens tickets for
        # one lifetime (a ticket sealed just before retirement lives that long).
        self._retired: list[tuple[_Key, float]] = []

    def _retire_locked(self, now: float) -> _Key:
        if self._current is not None:
            self._retired.append((self._current, now))
        self._current = _Key(now)
        return self._current

    def _rotate_if_due(self, now: float) -> _Key:
        cur = self._current
        if cur is None or now - cur.created >= self.rotation or now < cur.created:
            cur = self._retire_locked(now)
        self._retired = [(k, t) for k, t in self._retired if now - t <= self.lifetime]
        del self._retired[:-_MAX_RETIRED_KEYS]  # older tickets then fall back to full handshakes
        return cur

    def rotate(self, now: float) -> None:
        """Start sealing with a new key now; tickets under the old ones stay valid.
        (To void every ticket, after a suspected leak: :meth:`retire_all`.)"""
        with self._lock:
            self._retire_locked(now)

    def retire_all(self) -> None:
        """Forget every key: every ticket issued so far stops opening."""
        with self._lock:
            self._current = None
            self._retired.clear()

    def seal(self, contents: TicketContents, now: float) -> bytes:
        """An opaque ticket: key id || nonce || AES-256-GCM(contents)."""
        with self._lock:
            key = self._rotate_if_due(now)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = key.aead.encrypt(nonce, contents.encode(), _TICKET_AAD + key.key_id)
        return key.key_id + nonce + sealed

    def open(self, ticket: bytes, now: float) -> TicketContents | None:
        """The contents of a ticket sealed by a current or previous key, or None."""
        if len(ticket) < _KEY_ID_SIZE + _NONCE_SIZE + 16:
            return None
        key_id, nonce = ticket[:_KEY_ID_SIZE], ticket[_KEY_ID_SIZE : _KEY_ID_SIZE + _NONCE_SIZE]
        with self._lock:
            self._rotate_if_due(now)
            keys = [self._current, *(k for k, _ in self._retired)]
        for key in keys:
            if key is not None and key.key_id == key_id:
                try:
                    plain = key.aead.decrypt(
                        nonce, ticket[_KEY_ID_SIZE + _NONCE_SIZE :], _TICKET_AAD + key_id
                    )
                    return TicketContents.decode(plain)
                except Exception:  # tampered, or not ours: fall back to a full handshake
                    return None
        return None


class ReplayCache:
    """Keys seen recently, each kept until its own expiry; bounded and thread-safe.

    When full (after dropping what has expired), ``evict_when_full`` decides:
    forget the oldest entry (a weaker check for one old key), or refuse the new
    one (``first_use`` answers False).
    """

    def __init__(self, max_entries: int, *, evict_when_full: bool) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._max = max_entries
        self._evict = evict_when_full

    def first_use(self, key: bytes, expires: float, now: float) -> bool:
        """Record ``key`` until ``expires``; False if it is already there (a replay),
        or if the cache is full and refuses new entries."""
        with self._lock:
            seen = self._seen
            while seen:  # expired entries at the front
                oldest, exp = next(iter(seen.items()))
                if exp > now:
                    break
                del seen[oldest]
            if key in seen:
                return False
            if len(seen) >= self._max:  # entries expire out of order: sweep them all
                for old in [k for k, e in seen.items() if e <= now]:
                    del seen[old]
                if len(seen) >= self._max:
                    if not self._evict:
                        return False
                    seen.popitem(last=False)
            seen[key] = expires
            return True

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._seen.clear()


class EarlyDataReplayCache(ReplayCache):
    """Tickets whose early data was accepted, until they expire (single use).

    When full, the cache refuses new entries rather than forget live ones:
    early data is then rejected (the handshake still resumes).
    """

    def __init__(self, max_entries: int = 65536) -> None:
        super().__init__(max_entries, evict_when_full=False)

    def first_use(self, ticket: bytes, expires: float, now: float) -> bool:
        """Record ``ticket``; False if it was used before (a replay) or the cache is full."""
        return super().first_use(hashlib.sha256(ticket).digest(), expires, now)


@dataclass(frozen=True)
class StoredTicket:
    """A ticket as the client keeps it. Holds a secret: never log it."""

    ticket: bytes
    psk: bytes
    cipher: int
    server_key: bytes
    """The server's PeerKey encoding, checked against trust when resuming."""
    server_certificate: bytes
    received: float
    lifetime: float
    age_add: int
    max_early_data: int
    namespace: bytes

    def expired(self, now: float) -> bool:
        return now >= self.received + self.lifetime or now < self.received - 60

    def to_json(self) -> dict[str, Any]:
        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode()

        return {
            "ticket": b64(self.ticket),
            "psk": b64(self.psk),
            "cipher": self.cipher,
            "server_key": b64(self.server_key),
            "server_certificate": b64(self.server_certificate),
            "received": self.received,
            "lifetime": self.lifetime,
            "age_add": self.age_add,
            "max_early_data": self.max_early_data,
            "namespace": b64(self.namespace),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoredTicket:
        def unb64(k: str) -> bytes:
            return base64.b64decode(d[k], validate=True)

        if not all(math.isfinite(float(d[k])) for k in ("received", "lifetime")):
            raise ValueError("non-finite time in a stored ticket")

        return cls(
            unb64("ticket"),
            unb64("psk"),
            int(d["cipher"]),
            unb64("server_key"),
            unb64("server_certificate"),
            float(d["received"]),
            float(d["lifetime"]),
            int(d["age_add"]),
            int(d["max_early_data"]),
            unb64("namespace"),
        )

    def __repr__(self) -> str:
        return f"<StoredTicket received={self.received:.0f} lifetime={self.lifetime:.0f}>"


class SessionCache:
    """The client's resumption tickets, shared by every connection of a context.

    Args:
        max_entries: most servers (identity + address) kept; the least
            recently used goes first.
        tickets_per_server: most tickets kept per server.
        path: optional file to persist tickets across processes (created with
            mode 0600; it holds secrets).

    Raises:
        TypeError, ValueError: bad arguments.
        nautilus.IdentityFileError: ``path`` is readable or writable by other
            users. A corrupt file is logged and replaced, not fatal.
    """

    def __init__(
        self,
        max_entries: int = 1024,
        *,
        tickets_per_server: int = 4,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        for name, value in (
            ("max_entries", max_entries),
            ("tickets_per_server", tickets_per_server),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.max_entries = max_entries
        self.tickets_per_server = tickets_per_server
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list[StoredTicket]] = OrderedDict()
        self._path = Path(path) if path is not None else None
        if self._path is not None:
            self._load()

    @staticmethod
    def key(server_id: str, address: str | None) -> str:
        """The cache key of a server: its peer id and the address dialled."""
        return f"{server_id} {address or ''}"

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._entries.values())

    def store(self, key: str, ticket: StoredTicket) -> None:
        """Keep ``ticket`` for the server ``key`` (see :meth:`key`)."""
        with self._lock:
            tickets = self._entries.pop(key, [])
            tickets.append(ticket)
            del tickets[: -self.tickets_per_server]
            self._entries[key] = tickets
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            self._save_locked()

    def take(self, key: str, now: float) -> StoredTicket | None:
        """Remove and return the newest unexpired ticket for ``key`` (single use)."""
        with self._lock:
            tickets = self._entries.get(key)
            if not tickets:
                return None
            found = None
            while tickets and found is None:
                candidate = tickets.pop()
                if not candidate.expired(now):
                    found = candidate
            if tickets:
                self._entries.move_to_end(key)
            else:
                del self._entries[key]
            self._save_locked()
            return found

    def clear(self) -> None:
        """Forget every ticket."""
        with self._lock:
            self._entries.clear()
            self._save_locked()

    # ---------------------------------------------------------------- the file

    def _load(self) -> None:
        path = self._path
        assert path is not None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise IdentityFileError(f"session cache {str(path)!r} cannot be read: {exc}") from None
        try:
            with os.fdopen(fd, "rb") as fh:
                mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
                raw = b"" if mode & 0o077 else fh.read()
        except OSError as exc:  # a directory, an I/O error
            raise IdentityFileError(f"session cache {str(path)!r} cannot be read: {exc}") from None
        if mode & 0o077:
            raise IdentityFileError(
                f"session cache {str(path)!r} is accessible to other users "
                f"(mode {mode:o}); it holds secrets: chmod 600 it"
            )
        try:
            data = json.loads(raw.decode())
            if data.get("format") != "nautilus-session-cache-v1":
                raise ValueError("not a Nautilus session cache")
            for key, items in data["servers"].items():
                tickets = [StoredTicket.from_json(i) for i in items]
                self._entries[str(key)] = tickets[-self.tickets_per_server :]
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        except (
            ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError
        ) as exc:  # fmt: skip
            log.warning(
                "session cache %s is corrupt (%s); starting empty", path, type(exc).__name__
            )
            self._entries.clear()

    def _save_locked(self) -> None:
        path = self._path
        if path is None:
            return
        data = {
            "format": "nautilus-session-cache-v1",
            "servers": {k: [t.to_json() for t in v] for k, v in self._entries.items()},
        }
        # mkstemp: a new file (O_EXCL) with mode 0600, never one left by someone else.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def __repr__(self) -> str:
        where = f" file={str(self._path)!r}" if self._path else ""
        return f"<SessionCache {len(self)} tickets{where}>"


@dataclass(frozen=True)
class LiveSession:
    """One live session, as the server's session table shows it."""

    peer_id: str | None
    group: str
    cipher: str
    resumed: bool
    early_data_accepted: bool
    bytes_sent: int
    bytes_received: int
    started: float
    last_key_update: float | None
    key_updates: int


class SessionTable:
    """The live sessions of a server context (weakly held, bounded)."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._conns: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._max = max_sessions
        self.dropped = 0
        """Sessions not tracked because the table was full."""

    def _add(self, conn: Connection) -> None:
        with self._lock:
            if len(self._conns) >= self._max:
                self.dropped += 1
                return
            self._conns.add(conn)

    def _remove(self, conn: Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def __len__(self) -> int:
        with self._lock:
            return len(self._conns)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(self.snapshot())

    def snapshot(self) -> list[LiveSession]:
        """The live sessions now."""
        with self._lock:
            conns = list(self._conns)
        out = []
        for c in conns:
            info = c.session
            if info is None or c.is_closed:
                continue
            st = c.stats
            out.append(
                LiveSession(
                    info.peer_id,
                    info.group,
                    info.cipher,
                    info.resumed,
                    info.early_data_accepted,
                    st.bytes_sent,
                    st.bytes_received,
                    st.started,
                    st.last_key_update,
                    st.key_updates,
                )
            )
        return out
