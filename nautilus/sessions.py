"""Sessions: resumption tickets, the client session cache, the server's session table.

* :class:`TicketKeys`: the server's ticket-encryption keys. Tickets are sealed
  with AES-256-GCM under the current key; keys rotate on a schedule and the
  previous key still opens tickets for one ticket lifetime. The server keeps no
  per-client state for tickets.
* :class:`SessionCache`: the client's tickets, in memory (bounded, least
  recently used out first) and optionally in a file readable only by its owner,
  which several caches (and processes) can share.
  Keyed by the server's identity and address, and the client's identity and
  namespace; each ticket is used once.
* :class:`SessionTable`: a view of a server context's live sessions for operators.

The wire formats are in docs/sessions.md.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import hmac
import json
import logging
import math
import os
import re
import secrets
import stat
import struct
import tempfile
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from nautilus._fork import live_members, renew_locks_after_fork
from nautilus.exceptions import IdentityFileError, NautilusError
from nautilus.identity import _MAX_PEER_ID, _fspath, _open_checked, _write_private_file
from nautilus.identity import _check_time as _seconds
from nautilus.protocol.codec import DecodeError
from nautilus.record import AEAD, _wipe

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows: the file store is not locked
    _fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from nautilus.protocol.connection import Connection

__all__ = [
    "MAX_EARLY_DATA",
    "MAX_SHARED_SECRET",
    "MAX_TICKET_LIFETIME",
    "MIN_SHARED_SECRET",
    "ZONE_SIZE",
    "LiveSession",
    "SessionCache",
    "SessionTable",
    "StoredTicket",
    "TicketContents",
    "TicketKeys",
    "write_ticket_secret",
]

log = logging.getLogger("nautilus.sessions")

MAX_TICKET_LIFETIME = 7 * 24 * 3600.0
"""Hard maximum lifetime of a ticket: 7 days (as RFC 8446 section 4.6.1)."""
MAX_EARLY_DATA = 1 << 20
"""Most 0-RTT early data a ticket may allow (the ``max_early_data`` setting's bound)."""
_TICKET_VERSION = 3  # 3: with the early-data zone (tickets of older versions do not open)
# The format: the version, issued (ms), lifetime (s), cipher, then vectors
# with 1-, 1-, 1-, 2-, 3- and 1-byte length prefixes (PSK, server id hash,
# namespace, client key, client certificate, zone), the fixed tail between
# the last two. (_TICKET_START ends with the PSK's length.)
_TICKET_START = struct.Struct(">BQIHB")
_TRUNCATED = "decode_error: message truncated"
_TICKET_TAIL = struct.Struct(">IIQ")  # max_early_data, age_add, authenticated (ms)
_TICKET_AAD = b"nautilus ticket v1"
_KEY_ID_SIZE = 8
_MAX_RETIRED_KEYS = 1024
"""Most retired ticket keys kept (about 2 KiB of memory each: 2 MiB at most)."""
_ROTATIONS_PER_LIFETIME = _MAX_RETIRED_KEYS - 1
_CLOCK_WENT_BACK = 1.0
"""A ``now`` over this much, and over one rotation interval, before the
current key's start means the clock went back (a new key then, the schedule
running from that time); less is the ordinary skew between connections of
several threads, each passing the time its data arrived, or a small step of
the clock. (Each process of a forking family re-keys at its own time: a
smaller threshold would split their schedules at every stale time a
connection passes.) Counted from the key's start, which the family shares,
not from the latest time seen: after a step back late in an interval, the key
seals for up to two intervals and this threshold in all."""
_CHAIN_LABEL = b"nautilus ticket key chain"
_KEY_LABEL = b"nautilus ticket key"
_KEY_ID_LABEL = b"nautilus ticket key id"
_MAX_ADVANCE = 1 << 16
"""Most rotation intervals the key chain steps through at once (a hash each,
about a tenth of a second in all); a longer jump of the clock starts a new
chain, as a restart does."""
_SHARED_SALT = b"nautilus shared ticket key secret v1"
_SHARED_LINK_LABEL = b"nautilus shared ticket key link"
MIN_SHARED_SECRET = 32
"""Fewest bytes of a secret given to :meth:`TicketKeys.share_secret`."""
MAX_SHARED_SECRET = 4096
"""Most bytes of a secret given to :meth:`TicketKeys.share_secret`."""
_SECRET_FILE_SIZE = MIN_SHARED_SECRET
"""Bytes of the random secret :func:`write_ticket_secret` writes."""
_MAX_SHARED_LINK = 1 << 62
"""Most intervals from 1970 a shared key's link may be (its number is 8 bytes)."""
ZONE_SIZE = 8
"""Bytes of an early-data zone (see :attr:`TicketContents.zone`)."""
_NONCE_SIZE = 12
_U32_MAX = 0xFFFFFFFF
_CACHE_FORMAT = "nautilus-session-cache-v2"
_CACHE_FORMAT_V1 = "nautilus-session-cache-v1"
"""The format before the journal: one JSON object, read and then replaced by a journal."""
_DEFAULT_NAMESPACE = "nautilus"
"""A Context's default namespace: its cache keys are those of the versions
before the namespace was part of them."""


@dataclass
class TicketContents:
    """What a ticket carries (sealed: nothing of it travels in clear).

    Not frozen, for the reason given in nautilus.protocol.messages: the server
    makes two per resumption (the ticket it opens, the one it seals); nothing
    changes one once made.
    """

    issued: float
    """Server time of issue (UNIX seconds)."""
    lifetime: float
    cipher: int
    psk: bytes = field(repr=False)  # a secret: never in a repr
    server_id_hash: bytes
    """SHA-256 of the issuing server's peer id (a new identity voids old tickets)."""
    namespace: bytes
    client_key: bytes
    """The client's PeerKey encoding, empty if the client was not authenticated."""
    client_certificate: bytes
    max_early_data: int
    age_add: int
    authenticated: float
    """Server time of the full handshake that authenticated the session (a
    ticket issued by a resumed session inherits it): no ticket outlives it by
    more than MAX_TICKET_LIFETIME, however often the session is resumed."""
    zone: bytes = b""
    """The early-data zone of the issuing server: its Context in its process
    (a child made by ``fork()`` has a zone of its own). Ticket keys are shared
    with forked children, but each process has its own early-data replay
    cache: only the zone that issued a ticket accepts its early data, so a
    recorded first flight's early data is accepted once at most."""

    def encode(self) -> bytes:
        """The contents in the ticket's format (in one join: a server seals one
        per handshake). Times are rounded to the millisecond, so that a time
        decoded from a ticket encodes the same again (a resumed session's
        tickets carry its ``authenticated``).

        Raises:
            OverflowError, struct.error, ValueError, TypeError: a field out of
                range for its encoding, or of the wrong type.
        """
        psk, server_hash, namespace = self.psk, self.server_id_hash, self.namespace
        key, cert, zone = self.client_key, self.client_certificate, self.zone
        head = _TICKET_START.pack(
            _TICKET_VERSION, round(self.issued * 1000), int(self.lifetime), self.cipher, len(psk)
        )
        tail = _TICKET_TAIL.pack(
            self.max_early_data, self.age_add, round(self.authenticated * 1000)
        )
        return b"".join(
            (
                head, psk, len(server_hash).to_bytes(1, "big"), server_hash,
                len(namespace).to_bytes(1, "big"), namespace, len(key).to_bytes(2, "big"), key,
                len(cert).to_bytes(3, "big"), cert, tail, len(zone).to_bytes(1, "big"), zone,
            )
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> TicketContents:
        """Read what :meth:`encode` wrote.

        Raises:
            nautilus.protocol.codec.DecodeError: another version, input cut
                short anywhere, or bytes left over.
        """
        end = len(data)
        start = _TICKET_START.size
        if end < start:
            raise DecodeError(_TRUNCATED)
        version, issued_ms, lifetime, cipher, n = _TICKET_START.unpack_from(data)
        if version != _TICKET_VERSION:
            raise DecodeError("unknown ticket version")
        # The vectors are read without a check each: a slice past the end is
        # short, and a length prefix past it reads as 0, but then the
        # position has gone past the end (each step adds the width and the
        # length that the input was cut inside), which the checks below catch.
        pos = start + n
        psk = data[start:pos]
        n = data[pos] if pos < end else 0
        server_hash = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        n = data[pos] if pos < end else 0
        namespace = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        n = int.from_bytes(data[pos : pos + 2], "big")
        client_key = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        n = int.from_bytes(data[pos : pos + 3], "big")
        cert = data[pos + 3 : pos + 3 + n]
        pos += 3 + n
        if pos + _TICKET_TAIL.size + 1 > end:  # the fixed tail and the zone's length
            raise DecodeError(_TRUNCATED)
        max_early, age_add, authenticated_ms = _TICKET_TAIL.unpack_from(data, pos)
        pos += _TICKET_TAIL.size
        n = data[pos]
        zone = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if pos != end:
            raise DecodeError(
                _TRUNCATED if pos > end else "decode_error: trailing bytes after message"
            )
        return cls(issued_ms / 1000.0, float(lifetime), cipher, psk, server_hash, namespace,
                   client_key, cert, max_early, age_add, authenticated_ms / 1000.0,
                   zone)  # fmt: skip


def check_ticket_timing(
    rotation: object, lifetime: object, *, names: tuple[str, str] = ("rotation", "lifetime")
) -> tuple[float, float]:
    """Check a ticket-key rotation interval and a ticket lifetime (seconds);
    returns them as floats. ``names`` are the settings named in errors.

    A retired key must open its tickets for one whole lifetime, and at most
    1024 retired keys are kept (the one retired a lifetime ago, and those
    retired since): so a lifetime may span at most 1023 rotations.

    Raises:
        TypeError: either is not a number.
        ValueError: either is not positive and finite, the lifetime is over
            7 days, or the rotation is shorter than ``lifetime / 1023``.
    """
    rotation_name, lifetime_name = names
    rot = _seconds(rotation_name, rotation)
    life = _seconds(lifetime_name, lifetime)
    for name, value in ((rotation_name, rot), (lifetime_name, life)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value:g}")
    if life > MAX_TICKET_LIFETIME:
        raise ValueError(f"{lifetime_name} must be at most {MAX_TICKET_LIFETIME:g} s, got {life:g}")
    if life > rot * _ROTATIONS_PER_LIFETIME:
        raise ValueError(
            f"{rotation_name} ({rot:g} s) must be at least {lifetime_name} ({life:g} s) / "
            f"{_ROTATIONS_PER_LIFETIME} = {life / _ROTATIONS_PER_LIFETIME:g} s: at most "
            f"{_MAX_RETIRED_KEYS} retired keys are kept, and each must open its tickets "
            "for their whole lifetime"
        )
    return rot, life


class _Key:
    __slots__ = ("aead", "key_id")

    def __init__(self, chain: bytearray) -> None:
        """The key of one link of a chain (its AES-256-GCM key and its id)."""
        self.key_id = hmac.digest(chain, _KEY_ID_LABEL, "sha256")[:_KEY_ID_SIZE]
        self.aead = AEAD("aes-256-gcm", hmac.digest(chain, _KEY_LABEL, "sha256"))


class TicketKeys:
    """The server's rotating ticket keys (in memory: a restart voids all
    tickets, unless the keys come from a shared secret; a child made by
    ``fork()`` shares them).

    The keys follow a chain: a random secret made at the first use (or
    before a ``fork()``), then ``SHA-256(label || secret)`` at each rotation,
    on a schedule that starts at the first use; each key and its id are
    ``HMAC(secret, label)``. So a process forked from this one, which
    inherits the chain, makes the same keys at the same times as its parent
    and its siblings: each opens the tickets of the others, through every
    rotation. The chain only goes forward, so a key once forgotten cannot be
    made again from what the process keeps. (Each process accepts early data
    only for the tickets it issued itself: :attr:`TicketContents.zone`.)

    Processes that are not forked from one another (several machines, or
    workers started on their own) share the keys through :meth:`share_secret`:
    each key is then derived from a secret they all hold, on a schedule
    counted from 1970, so a restarted process also opens the tickets issued
    before its restart.

    Args:
        rotation: seconds between key rotations.
        lifetime: ticket lifetime; a retired key keeps opening tickets for
            this long after its retirement (so every ticket opens for its whole
            lifetime, whatever the rotation interval).

    Raises:
        TypeError: ``rotation`` or ``lifetime`` is not a number.
        ValueError: a rotation or lifetime that is not positive and finite, a
            lifetime over 7 days, or a rotation shorter than ``lifetime / 1023``
            (:func:`check_ticket_timing`).
    """

    def __init__(self, rotation: float, lifetime: float) -> None:
        self._rotation, self._lifetime = check_ticket_timing(rotation, lifetime)
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        # The chain: the secret of the current key's link, the link's number,
        # and the time link 0 started (link n is current from
        # _anchor + n * rotation); None before the first use.
        self._chain: bytearray | None = None
        self._link = 0
        self._anchor = 0.0
        self._current: _Key | None = None
        # Retired keys in retirement order, with the time each retired: each
        # still opens tickets for one lifetime (a ticket sealed just before
        # retirement lives that long). The oldest go first, from the left.
        self._retired: deque[tuple[_Key, float]] = deque()
        # Every key that opens tickets, current and retired, by key id; the
        # retirement time, None for the current key.
        self._by_id: dict[bytes, tuple[_Key, float | None]] = {}
        # With a secret shared with other processes (share_secret): the
        # secret, as HMAC(salt, secret); the keys of the links that may open
        # tickets, by link (link n is current from n * rotation); and the
        # link, rotation and lifetime the window was made for.
        self._shared: bytearray | None = None
        self._window: dict[int, _Key] = {}
        self._window_at: tuple[int, float, float] | None = None
        # share_secret() was called: the keys made before retire at the next time passed.
        self._switched = False
        self._held_for_fork = False  # (its lock is held across a fork: _keys_before_fork)
        _TICKET_KEYS.add(self)

    @property
    def rotation(self) -> float:
        """Seconds between key rotations."""
        return self._rotation

    @property
    def lifetime(self) -> float:
        """Ticket lifetime: how long a retired key keeps opening tickets."""
        return self._lifetime

    @property
    def shares_secret(self) -> bool:
        """Whether the keys are derived from a secret given to :meth:`share_secret`."""
        return self._shared is not None

    def set_timing(self, rotation: float, lifetime: float) -> None:
        """Change the rotation interval and the lifetime, checked as by the
        constructor; they apply from the next :meth:`seal` or :meth:`open`.
        The current key stays current for the new interval from its start.
        (With a shared secret, a new rotation interval means new keys from
        the next seal or open, the old ones retired then: the keys are
        derived from the interval too.)

        Raises:
            TypeError, ValueError: as the constructor.
        """
        rot, life = check_ticket_timing(rotation, lifetime)
        with self._lock:
            start = self._anchor + self._link * self._rotation
            self._rotation, self._lifetime = rot, life
            self._anchor = start - self._link * rot

    def _install(self, key: _Key, retired: float | None) -> None:
        if retired is not None:
            self._retired.append((key, retired))
        self._by_id[key.key_id] = (key, retired)  # (a 64-bit id collision replaces a key)

    def _drop_locked(self, key: _Key) -> None:
        """``key`` opens no more tickets (unless another key took its id)."""
        if self._by_id.get(key.key_id, (None,))[0] is key:
            del self._by_id[key.key_id]

    def _current_until_locked(self) -> float:
        """When the chain's current key stops sealing, on its schedule."""
        return self._anchor + (self._link + 1) * self._rotation

    def _new_chain_locked(self, now: float) -> None:
        """A new random chain whose first key is current from ``now``; the
        current key retires then, or at the end of its interval if that came
        first (unused since: after a quiet spell, or a jump of the clock)."""
        cur = self._current
        if cur is not None:
            self._install(cur, min(now, self._current_until_locked()))
        self._wipe_chain_locked()
        self._chain = bytearray(secrets.token_bytes(32))
        self._link, self._anchor = 0, now
        self._make_current_locked()

    def _make_current_locked(self) -> None:
        """The key of the chain's current link becomes the current key."""
        assert self._chain is not None
        self._current = _Key(self._chain)
        self._install(self._current, None)

    def _forget_locked(self, *, keep_shared: bool = False) -> None:
        """Forget the chain and every key (see :meth:`retire_all`), and the
        shared secret unless ``keep_shared``."""
        self._wipe_chain_locked()
        self._current = None
        self._retired.clear()
        self._by_id.clear()
        self._window, self._window_at, self._switched = {}, None, False
        if not keep_shared:
            self._wipe_shared_locked()

    def _wipe_shared_locked(self, new: bytearray | None = None) -> None:
        """Wipe the shared secret, replaced by ``new`` in one assignment (a
        child forked meanwhile, this lock held, has the old or the new one,
        never none: see _keys_after_fork_in_child)."""
        old, self._shared = self._shared, new
        if old is not None:
            _wipe(old)

    def _wipe_chain_locked(self) -> None:
        if self._chain is not None:
            _wipe(self._chain)
            self._chain = None

    def _step_locked(self) -> None:
        """The next link: SHA-256(label || this link's secret), in place."""
        chain = self._chain
        assert chain is not None
        step = hashlib.sha256(_CHAIN_LABEL)
        step.update(chain)
        chain[:] = step.digest()
        self._link += 1

    def _advance_locked(self, link: int, now: float) -> None:
        """Step the chain to ``link`` (past the current one), as the schedule
        says at ``now``; the keys of the links passed are kept as retired if
        they may still open tickets (another process may have used them)."""
        rot, start = self._rotation, self._anchor + (self._link + 1) * self._rotation
        cur, chain = self._current, self._chain
        assert cur is not None
        assert chain is not None
        self._install(cur, start)
        while True:
            self._step_locked()
            if self._link == link:
                break
            start += rot  # this link's retirement: the next one's start
            if now - start <= self._lifetime:
                self._install(_Key(chain), start)
        self._make_current_locked()

    def _rekey_now_locked(self, now: float) -> None:
        """The next link's key is current from ``now`` (the schedule moves
        with it): after the clock went back."""
        cur = self._current
        assert cur is not None
        self._install(cur, now)
        self._step_locked()
        self._anchor = now - self._link * self._rotation
        self._make_current_locked()

    def _apply_switch_locked(self, now: float) -> None:
        """After :meth:`share_secret`: the keys made before (the chain's
        current key, or the window of the secret shared before) retire at
        ``now``, or at the end of their interval if that came first."""
        self._switched = False
        cur, self._current = self._current, None
        if cur is not None:  # (at the end of its interval if that came first: no use since)
            self._install(cur, min(now, self._current_until_locked()))
        self._retire_window_locked(now)

    def _retire_window_locked(self, now: float) -> None:
        """The window's keys retire, each at its own retirement or ``now``."""
        at = self._window_at
        if at is None:
            return
        rot = at[1]
        for link, key in sorted(self._window.items()):
            self._install(key, min((link + 1) * rot, now))
        self._window, self._window_at = {}, None

    def _shared_key_locked(self, now: float) -> _Key:
        """The key of the shared schedule's link at ``now``; the window of
        keys is made again when ``now`` passes into the next link or is over
        one link back (the clock went back), or when the timing changed."""
        rot, life = self._rotation, self._lifetime
        span = now / rot
        if not -_MAX_SHARED_LINK < span < _MAX_SHARED_LINK:
            raise ValueError(
                f"now ({now:g} s) is too far from 1970 for ticket keys derived from a shared "
                f"secret every {rot:g} s"
            )
        link = math.floor(span)
        at = self._window_at
        if at is None or at[1:] != (rot, life) or not at[0] - 1 <= link <= at[0]:
            self._make_window_locked(link, now)
        return self._window[link]

    def _make_window_locked(self, link: int, now: float) -> None:
        """The keys of the links that may open tickets at ``now``: from the
        one retired a lifetime ago to the next one (which a process whose
        clock is a little ahead seals with already). Each is current from
        ``link * rotation`` and retires one interval later. The previous
        link's key is kept even if it opens nothing (a lifetime shorter than
        the interval): a time back in its interval seals with it."""
        rot, life = self._rotation, self._lifetime
        if self._window_at is not None and self._window_at[1] != rot:
            self._retire_window_locked(now)  # (made for another schedule)
        old, window = self._window, {}
        first = max(link - _MAX_RETIRED_KEYS, min(link - 1, math.ceil((now - life) / rot) - 1))
        for n in range(first, link + 2):
            key = old.pop(n, None)
            if key is None:
                key = self._derive_locked(n, rot)
            window[n] = key
            self._by_id[key.key_id] = (key, None if n >= link else (n + 1) * rot)
        for key in old.values():  # (out of the window: opens nothing now)
            self._drop_locked(key)
        self._window, self._window_at = window, (link, rot, life)

    def _derive_locked(self, link: int, rot: float) -> _Key:
        """The key of one link of the shared schedule."""
        assert self._shared is not None
        info = _SHARED_LINK_LABEL + struct.pack(">dq", rot, link)
        secret = bytearray(hmac.digest(self._shared, info, "sha256"))
        try:
            return _Key(secret)
        finally:
            _wipe(secret)

    def _rotate_if_due(self, now: float, *, for_fork: bool = False) -> _Key:
        """The current key at ``now`` (made, or the chain stepped, or the
        shared schedule followed, as due);
        retired keys past their lifetime are forgotten. ``for_fork``: only
        make the chain or step it forward, and forget only the keys past
        their lifetime by over _CLOCK_WENT_BACK too (the hook's time may be
        a little later than the one its connections pass), and those over
        the cap: a socketserver.ForkingMixIn parent, which never seals nor
        opens a ticket, would keep every key its forks stepped through."""
        if self._switched:
            self._apply_switch_locked(now)
        cur = self._current
        if self._shared is not None:
            cur = self._shared_key_locked(now)
        elif cur is None or self._chain is None:
            self._new_chain_locked(now)
        else:
            rot = self._rotation
            if now < self._anchor + self._link * rot - max(_CLOCK_WENT_BACK, rot):
                if not for_fork:
                    self._rekey_now_locked(now)  # the clock went back
            else:
                span = (now - self._anchor) / rot  # (infinite for far-apart finite times)
                if span >= self._link + _MAX_ADVANCE + 1:
                    self._new_chain_locked(now)  # (as after a restart)
                else:
                    link = max(self._link, math.floor(span))
                    if link > self._link:
                        self._advance_locked(link, now)
        retired, kept = self._retired, self._lifetime + (_CLOCK_WENT_BACK if for_fork else 0.0)
        # Older tickets than the cap allows fall back to full handshakes; the
        # settings keep a lifetime's worth of keys within it.
        while retired and (now - retired[0][1] > kept or len(retired) > _MAX_RETIRED_KEYS):
            self._drop_locked(retired.popleft()[0])
        due = cur if self._shared is not None else self._current
        assert due is not None
        return due

    @staticmethod
    def _check_now(now: object) -> None:
        _seconds("now", now)

    def rotate(self, now: float) -> None:
        """Start sealing with a new key now; tickets under the old ones stay valid.
        (To void every ticket, after a suspected leak: :meth:`retire_all`, in
        every process that shares the keys: the chain makes every later key.)
        The new key starts a new chain, whose schedule runs from ``now``:
        processes forked before this call make other keys from now on, so
        that their new tickets open in the process that issued them only (and
        in its later children).

        With a shared secret the keys change on the shared schedule only
        (every process must make the same key at the same time): to change
        them at once, give every process a new secret.

        Raises:
            TypeError, ValueError: ``now`` is not a finite number.
            RuntimeError: the keys follow a shared secret (:meth:`share_secret`).
        """
        self._check_now(now)
        with self._lock:
            if self._shared is not None:
                raise RuntimeError(
                    "these ticket keys are derived from a shared secret and change on its "
                    "schedule: to change them now, give every process a new secret "
                    "(share_secret), or stop sharing (share_secret(None)) first"
                )
            if self._switched:
                self._apply_switch_locked(now)
            # A new chain, not the next link: the processes forked before
            # reach that link on their own schedule, and would open its tickets.
            self._new_chain_locked(now)

    def retire_all(self) -> None:
        """Forget every key and the chain: every ticket issued so far stops
        opening here, and the next key starts a new chain (so this process's
        new tickets open in no process forked before). A shared secret is
        forgotten too (it makes the keys again): the keys are this process's
        own from then on, until :meth:`share_secret` is given a new one."""
        with self._lock:
            self._forget_locked()

    def share_secret(self, secret: bytes | bytearray | None) -> None:
        """Derive the keys from ``secret``, which other processes share, from
        the next :meth:`seal` or :meth:`open` (None: stop, and make keys of
        this process's own again).

        Every process (on any machine) given the same secret, with the same
        rotation interval, makes the same keys at the same times without
        talking to the others: key n, ``HMAC(secret, n)`` in effect, is
        current from ``n * rotation`` seconds after 1970. So each opens the
        tickets of the others, and a restarted process those issued before
        its restart. The keys made before this call stop sealing then and
        keep opening their tickets for one lifetime. Keep the secret as
        secret as the server's identity key: it makes every key, past and
        future, while it is in use (no forward secrecy for the tickets: see
        docs/sessions.md 2.4); nothing here wipes the caller's copy.

        Raises:
            TypeError: ``secret`` is not bytes, bytearray or None.
            ValueError: ``secret`` is shorter than 32 bytes or longer than 4096.
        """
        shared = None
        if secret is not None:
            if not isinstance(secret, (bytes, bytearray)):
                raise TypeError(
                    f"secret must be bytes, bytearray or None, not {type(secret).__name__}"
                )
            if not MIN_SHARED_SECRET <= len(secret) <= MAX_SHARED_SECRET:
                raise ValueError(
                    f"a shared ticket key secret must be {MIN_SHARED_SECRET} to "
                    f"{MAX_SHARED_SECRET} bytes (random), got {len(secret)}"
                )
            shared = bytearray(hmac.digest(_SHARED_SALT, secret, "sha256"))  # (no copy of it)
        with self._lock:
            if shared is None and self._shared is None and not self._switched:
                return  # (nothing was shared: the keys stay)
            self._wipe_shared_locked(shared)
            self._wipe_chain_locked()  # (a new chain when the sharing stops)
            self._switched = True

    def share_secret_file(self, path: str | os.PathLike[str]) -> None:
        """:meth:`share_secret` with the bytes of the file at ``path`` (all of
        them: a raw binary file, as :func:`write_ticket_secret` writes).

        The file is checked as an identity file is (``Identity.load``): a
        symbolic link is followed, and what it leads to must be a regular file
        that neither group nor others may access (``mode & 0o077`` zero; fix
        with ``chmod 600``). At most ``MAX_SHARED_SECRET + 1`` bytes are read,
        into memory that is wiped once the secret is derived (or refused).

        Raises:
            TypeError: ``path`` is not a str or path-like of str.
            ValueError: ``path`` is empty or contains a NUL character.
            nautilus.IdentityFileError (a ValueError): the file is missing or
                cannot be opened or read; it is not a regular file; group or
                others may access it; or it holds fewer than 32 or more than
                4096 bytes. Messages name the file, never its content.
        """
        target = _fspath("path", path)
        where = f"ticket secret file '{target}'"
        buf = bytearray(MAX_SHARED_SECRET + 1)  # (one more: a larger file is seen)
        secret: bytearray | None = None
        try:
            fd = _open_checked(target, os.O_RDONLY, where, 0o077, "chmod 600")
            try:
                size = _read_into(fd, buf, where)
            finally:
                os.close(fd)
            if size > MAX_SHARED_SECRET:
                raise IdentityFileError(f"{where} is too large (over {MAX_SHARED_SECRET} bytes)")
            if size < MIN_SHARED_SECRET:
                raise IdentityFileError(
                    f"{where} is too short: {size} bytes, a shared ticket key secret "
                    f"has {MIN_SHARED_SECRET} to {MAX_SHARED_SECRET}"
                )
            secret = bytearray(size)
            secret[:] = memoryview(buf)[:size]  # (no bytes object made on the way)
            self.share_secret(secret)
        finally:
            _wipe(buf)
            if secret is not None:
                _wipe(secret)

    def seal(self, contents: TicketContents, now: float) -> bytes:
        """An opaque ticket: key id || nonce || AES-256-GCM(contents).

        Raises:
            TypeError, ValueError: ``contents`` is not a TicketContents, a field
                of it is out of range for its encoding (or of the wrong type),
                or ``now`` is not a finite number.
            ValueError: with a shared secret, ``now`` is 2**62 rotation
                intervals or more from 1970.
        """
        if not isinstance(contents, TicketContents):
            raise TypeError(f"contents must be a TicketContents, not {type(contents).__name__}")
        self._check_now(now)
        try:
            plain = contents.encode()
        except (struct.error, OverflowError, ValueError, TypeError):
            # (no detail: an error's message could show a field's value)
            raise ValueError(
                "the ticket contents cannot be encoded: a field is out of range for its "
                "encoding or of the wrong type"
            ) from None
        with self._lock:
            key = self._rotate_if_due(now)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = key.aead.encrypt(nonce, plain, _TICKET_AAD + key.key_id)
        return key.key_id + nonce + sealed

    def open(self, ticket: bytes, now: float) -> TicketContents | None:
        """The contents of a ticket sealed by a current or previous key, or None.

        Raises:
            TypeError, ValueError: ``ticket`` is not bytes, or ``now`` is not a
                finite number.
            ValueError: with a shared secret, ``now`` is 2**62 rotation
                intervals or more from 1970.
        """
        if not isinstance(ticket, bytes):
            raise TypeError(f"ticket must be bytes, not {type(ticket).__name__}")
        self._check_now(now)
        if len(ticket) < _KEY_ID_SIZE + _NONCE_SIZE + 16:
            return None
        key_id, nonce = ticket[:_KEY_ID_SIZE], ticket[_KEY_ID_SIZE : _KEY_ID_SIZE + _NONCE_SIZE]
        with self._lock:
            self._rotate_if_due(now)
            entry = self._by_id.get(key_id)
            # A key retired over a lifetime ago can sit behind one retired
            # later (the clock went back): it opens nothing either way.
            if entry is not None and entry[1] is not None and now - entry[1] > self._lifetime:
                entry = None
        if entry is None:
            return None
        key = entry[0]
        try:
            plain = key.aead.decrypt(
                nonce, ticket[_KEY_ID_SIZE + _NONCE_SIZE :], _TICKET_AAD + key_id
            )
            return TicketContents.decode(plain)
        except Exception:  # tampered, or not ours: fall back to a full handshake
            return None


def _read_into(fd: int, buf: bytearray, where: str) -> int:
    """Read ``fd`` from its start into ``buf`` until its end or until ``buf``
    is full; return the bytes read.

    Raises:
        nautilus.IdentityFileError: it cannot be read (named by ``where``).
    """
    size = 0
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", buffering=0, closefd=False) as fh, memoryview(buf) as view:
            while size < len(buf) and (count := fh.readinto(view[size:])):
                size += count
    except OSError as exc:
        raise IdentityFileError(f"{where} cannot be read: {exc.strerror}") from None
    return size


def write_ticket_secret(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write a new secret for :meth:`TicketKeys.share_secret_file` to ``path``:
    32 random bytes (``os.urandom``), a raw binary file with mode 0600.

    The file is written as ``Identity.save`` writes one: a temporary file in
    the same directory (never readable by others, even briefly), synced, then
    linked to ``path``, which fails if anything is there (a dangling symbolic
    link included: none is followed); with ``overwrite=True`` renamed over
    ``path`` instead (a symbolic link there is replaced, not followed). Copy
    the file to every server that is to share the keys, keeping its mode.

    Raises:
        TypeError, ValueError, FileExistsError, OSError: as
            :meth:`nautilus.Identity.save` (a bad ``path`` or ``overwrite``,
            ``path`` exists without ``overwrite``, the file system refused).
    """
    secret = bytearray(os.urandom(_SECRET_FILE_SIZE))
    try:
        _write_private_file(path, secret, overwrite=overwrite, short_name="nautilus-secret")
    finally:
        _wipe(secret)


_TICKET_KEYS: weakref.WeakSet[TicketKeys] = weakref.WeakSet()
"""Every TicketKeys of the process (for the fork hooks below)."""


_FORK_LOCK_WAIT = 0.1
"""Seconds the fork hook waits for a TicketKeys' lock (held by another thread)."""


def _keys_before_fork() -> None:
    """Before ``fork()``: every TicketKeys makes its chain, or brings it to
    now, so that the children (which may have a parent that never seals a
    ticket, as under socketserver.ForkingMixIn) share it. Each keeps its lock
    across the fork, so that no other thread is changing it at the instant
    of the fork; one whose lock stays held by another thread is forgotten in
    the child (its state may be half-changed there)."""
    now = time.time()
    for keys in live_members(_TICKET_KEYS):
        if not keys._lock.acquire(timeout=_FORK_LOCK_WAIT):
            continue
        keys._held_for_fork = True
        try:
            keys._rotate_if_due(now, for_fork=True)
        except (NautilusError, ValueError) as exc:  # pragma: no cover - OpenSSL failed, far clock
            log.debug("ticket keys not made before fork: %s", type(exc).__name__)


def _keys_after_fork_in_parent() -> None:
    for keys in live_members(_TICKET_KEYS):
        if keys._held_for_fork:
            keys._held_for_fork = False
            keys._lock.release()


def _keys_after_fork_in_child() -> None:
    for keys in live_members(_TICKET_KEYS):
        if keys._held_for_fork:
            keys._held_for_fork = False
        else:  # (no lock: the child has no other thread)
            keys._forget_locked(keep_shared=True)  # (the secret is swapped whole: never half-made)
        if keys._lock.locked():  # held by the forking thread, or renewed already
            keys._lock.release()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(
        before=_keys_before_fork,
        after_in_parent=_keys_after_fork_in_parent,
        after_in_child=_keys_after_fork_in_child,
    )


class ReplayCache:
    """Keys seen recently, each kept until its own expiry; bounded and thread-safe.

    When full (after dropping what has expired), ``evict_when_full`` decides:
    forget the oldest entry (a weaker check for one old key), or refuse the new
    one (``first_use`` answers False).

    A cache that refuses rather than forgets also refuses a key that expires
    no later than an entry it has dropped as expired: such a key comes after
    the clock went back, and may be one of those it forgot.
    """

    def __init__(self, max_entries: int, *, evict_when_full: bool) -> None:
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # key -> expiry, oldest first
        # (expiry, key) of every entry, soonest first, so that expired entries
        # are found without scanning the cache: entries expire out of order
        # (tickets of other lifetimes, contexts of other clock skews), and a
        # scan of a full cache on each call cost milliseconds (7 ms for 65536
        # entries) that a client sending cheap hellos made the server pay for
        # each. Entries of keys evicted or renewed since stay here until they
        # come up (they no longer match _seen) or the heap is rebuilt.
        self._expiries: list[tuple[float, bytes]] = []
        self._max = max_entries
        self._evict = evict_when_full
        # The latest expiry of an entry dropped as expired. A key expiring no
        # later may have been dropped: a clock that went forward past a
        # ticket's expiry, then back within its lifetime, made the early-data
        # cache forget the ticket, and its early data was accepted again.
        self._forgot_until = -math.inf

    def first_use(self, key: bytes, expires: float, now: float) -> bool:
        """Record ``key`` until ``expires``; False if it is already there (a replay),
        or if the cache is full and refuses new entries."""
        with self._lock:
            seen = self._seen
            heap = self._expiries
            while heap and heap[0][0] <= now:  # every expired entry, in O(log n) each
                exp, old = heapq.heappop(heap)
                if seen.get(old) == exp:
                    del seen[old]
                    self._forgot_until = max(self._forgot_until, exp)
            if key in seen:
                return False
            if not self._evict and expires <= self._forgot_until:
                return False  # (only after the clock went back: then now < _forgot_until)
            if len(seen) >= self._max:
                if not self._evict:
                    return False
                seen.popitem(last=False)
            seen[key] = expires
            heapq.heappush(heap, (expires, key))
            if len(heap) > 2 * len(seen) + 64:  # mostly entries evicted since: rebuild
                heap[:] = [(exp, k) for k, exp in seen.items()]
                heapq.heapify(heap)
            return True

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._seen.clear()
            self._expiries.clear()


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
    """A ticket as the client keeps it. Holds a secret: never log it.

    Raises:
        TypeError: a field of the wrong type.
        ValueError: a field out of range: ``ticket`` must be 1 to 65535 bytes,
            ``psk`` 1 to 255, ``namespace`` at most 255, ``server_key`` and
            ``server_certificate`` at most 65535 (each came in a handshake
            message of at most 64 KiB); ``cipher`` in
            0..65535; ``age_add`` and ``max_early_data`` in 0..2**32-1;
            ``received`` finite; ``lifetime`` finite, over 0 and at most 7 days.
    """

    ticket: bytes
    psk: bytes = field(repr=False)  # a secret: never in a repr
    cipher: int
    server_key: bytes
    """The server's PeerKey encoding, checked against trust when resuming."""
    server_certificate: bytes
    received: float
    lifetime: float
    age_add: int
    max_early_data: int
    namespace: bytes

    def __post_init__(self) -> None:
        # The common case (a ticket the Connection just received) in one test;
        # then each field again, to say what is wrong.
        t, lifetime = self.ticket, self.lifetime
        if (
            type(t) is bytes
            and 0 < len(t) <= 0xFFFF
            and type(self.psk) is bytes
            and 0 < len(self.psk) <= 0xFF
            and type(self.server_key) is bytes
            and len(self.server_key) <= 0xFFFF
            and type(self.server_certificate) is bytes
            and len(self.server_certificate) <= 0xFFFF
            and type(self.namespace) is bytes
            and len(self.namespace) <= 0xFF
            and type(self.cipher) is int
            and 0 <= self.cipher <= 0xFFFF
            and type(self.age_add) is int
            and 0 <= self.age_add <= _U32_MAX
            and type(self.max_early_data) is int
            and 0 <= self.max_early_data <= _U32_MAX
            and type(self.received) is float
            and math.isfinite(self.received)
            and type(lifetime) is float
            and 0 < lifetime <= MAX_TICKET_LIFETIME
        ):
            return
        # No value in these messages: some fields are secret (psk, age_add).
        for name, lo, hi in (
            ("ticket", 1, 0xFFFF),
            ("psk", 1, 0xFF),
            ("server_key", 0, 0xFFFF),
            ("server_certificate", 0, 0xFFFF),
            ("namespace", 0, 0xFF),
        ):
            data = getattr(self, name)
            if not isinstance(data, bytes):
                raise TypeError(f"StoredTicket {name} must be bytes, not {type(data).__name__}")
            if not lo <= len(data) <= hi:
                raise ValueError(f"StoredTicket {name} must be {lo} to {hi} bytes")
        for name, hi in (("cipher", 0xFFFF), ("age_add", _U32_MAX), ("max_early_data", _U32_MAX)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"StoredTicket {name} must be an int, not {type(value).__name__}")
            if not 0 <= value <= hi:
                raise ValueError(f"StoredTicket {name} must be in 0..{hi}")
        received = _seconds("StoredTicket received", self.received)
        lifetime = _seconds("StoredTicket lifetime", self.lifetime)
        if not 0 < lifetime <= MAX_TICKET_LIFETIME:
            raise ValueError(f"StoredTicket lifetime must be in (0, {MAX_TICKET_LIFETIME:g}] s")
        object.__setattr__(self, "received", received)
        object.__setattr__(self, "lifetime", lifetime)

    def expired(self, now: float) -> bool:
        """Whether the ticket is of no use at ``now`` (UNIX seconds): its
        lifetime is over, or it was "received" more than 60 s after ``now``
        (a clock set back: its age cannot be known).

        Raises:
            TypeError, ValueError: ``now`` is not a finite number (a bool, a
                NaN or an infinity, not a number at all), as for
                :meth:`SessionCache.take`.
        """
        if type(now) is not float or not math.isfinite(now):
            now = _seconds("now", now)
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
        """The ticket of :meth:`to_json`'s form, strictly: base64 strings for
        bytes, JSON integers for ints, JSON numbers for times.

        Raises:
            KeyError: a field is missing.
            TypeError: ``d`` is not a dict, or a field has the wrong JSON type.
            ValueError: bad base64, or a value out of range (see the class).
        """
        if not isinstance(d, dict):
            raise TypeError(f"a stored ticket must be a JSON object, not {type(d).__name__}")

        def unb64(k: str) -> bytes:
            v = d[k]
            if not isinstance(v, str):
                raise TypeError(f"stored ticket {k} must be a base64 str, not {type(v).__name__}")
            return base64.b64decode(v, validate=True)  # ValueError (binascii.Error) if bad

        def integer(k: str) -> int:
            v = d[k]
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"stored ticket {k} must be an int, not {type(v).__name__}")
            return v

        def seconds(k: str) -> float:
            return _seconds(f"stored ticket {k}", d[k])  # OverflowError becomes ValueError

        return cls(
            unb64("ticket"),
            unb64("psk"),
            integer("cipher"),
            unb64("server_key"),
            unb64("server_certificate"),
            seconds("received"),
            seconds("lifetime"),
            integer("age_add"),
            integer("max_early_data"),
            unb64("namespace"),
        )

    def __repr__(self) -> str:
        return f"<StoredTicket received={self.received:.0f} lifetime={self.lifetime:.0f}>"


_FileSig = tuple[int, int, int, int]
"""What identifies a version of the cache file: (st_dev, st_ino, st_size, st_mtime_ns)."""

# What a corrupt file can raise while parsed (from_json: TypeError, ValueError,
# KeyError; json: ValueError, RecursionError for deep nesting).
_CORRUPT = (ValueError, TypeError, KeyError, OverflowError, RecursionError)

_OPEN_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_NONBLOCK", 0)
)
"""Added to every opening of the cache file and its lock file: never through
a symbolic link, never inherited by a child process, bytes as they are
(Windows), and no wait in open() (a FIFO put at the path; the files are then
refused as not regular)."""

_NONCE_BYTES = 16
"""The lock file's name (random), after its two counters."""

_COMPACT_SLACK = 128
"""The journal is compacted when it holds at least twice as many records as
the cache writing to it holds tickets, plus this many."""

_RECORD_ROOM = 32 * 1024
"""The room each record has within the bound on the file's size (a cache
reads no more): the largest store record a Nautilus client writes (hybrid
keys and certificates on both sides, a 255-byte namespace, a 512-byte
address) takes about 31 KiB."""

_MAX_ADDRESS = 512
"""Most bytes (UTF-8) of the address in a cache key, and so of a client's
server_name: a host name has at most 253, "host:port" 259. Within it the
largest store record stays within _RECORD_ROOM (key() bounds every part)."""


def _check_utf8_size(name: str, value: str | None, most: int) -> None:
    """Refuse ``value`` if its UTF-8 takes over ``most`` bytes.

    Raises:
        ValueError: naming ``name`` and the size (not the value: it may be
            megabytes).
    """
    size = 0 if value is None else len(value.encode("utf-8", "surrogatepass"))
    if size > most:
        raise ValueError(f"{name} is {size} bytes of UTF-8; at most {most} are allowed")


def _sig(st: os.stat_result) -> _FileSig:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# A compaction's temporary file, beside the cache file: tempfile.mkstemp's
# ".<name>.XXXXXXXX.tmp" (8 random characters). Its name is the longest made
# there ("<name>.lock" is shorter): what it adds to the file's name.
_TEMP_SUFFIX = ".tmp"
_MKSTEMP_RANDOM = 8
_TEMP_NAME_EXTRA = 2 + _MKSTEMP_RANDOM + len(_TEMP_SUFFIX)  # (the prefix's two dots)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _name_max(directory: Path) -> int:
    """The longest file name (bytes) ``directory`` takes: its file system's
    NAME_MAX, or 255 (Linux and macOS) where that cannot be asked."""
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # (no pathconf on Windows)
        return 255
    return limit if limit > 0 else 255  # (-1: no limit it can tell)


def _remove_leftovers(path: Path) -> None:
    """Delete the temporary files of compactions that never finished (the
    process was killed between writing one and renaming it): each holds
    tickets, PSKs included. Called with the file's lock held, when no other
    cache is compacting, so every such file there is a leftover. Only names
    that ``tempfile.mkstemp`` gives for this file are touched."""
    pattern = re.compile(
        re.escape(_temp_prefix(path)) + f"[a-z0-9_]{{{_MKSTEMP_RANDOM}}}" + re.escape(_TEMP_SUFFIX)
    )
    try:
        with os.scandir(path.parent) as entries:
            names = [e.name for e in entries if pattern.fullmatch(e.name)]
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(path.parent / name)
            log.warning("nautilus: removed %s, left by an unfinished compaction", name)


def _sync_directory(directory: Path) -> None:
    """Sync ``directory`` to the disk (after a rename in it), where a directory
    can be opened (O_DIRECTORY: not on Windows). A failure is ignored: the
    file was replaced whole, so a crash before the directory reaches the
    disk leaves the previous file, whole, in its place."""
    if not hasattr(os, "O_DIRECTORY"):
        return  # pragma: no cover - Windows
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # (a file system that cannot sync a directory)
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_at_most(fh: BinaryIO, limit: int, size: int) -> bytes | None:
    """What ``fh`` holds from where it is to its end, or None if that is over
    ``limit`` bytes (no more than ``limit + 1`` are read). ``size``, its size
    as last seen, is read at once; the rest (it grew since) in small reads,
    so that no buffer of ``limit`` bytes is made for a small file.

    Raises:
        OSError: it cannot be read.
    """
    chunks = []
    total, want = 0, size + 1  # (one more: the end is seen in the same read)
    while chunk := fh.read(min(want, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
        want = 1 << 16
    return b"".join(chunks)


def _lock_head(fd: int) -> tuple[int, int, bytes | None]:
    """What the lock file's first 32 bytes hold: the write generation and the
    compaction epoch (two big-endian 64-bit numbers; what is missing counts as
    0: an empty lock file, or the 8-byte one of an earlier version), then its
    name (None if it has none yet).

    Raises:
        OSError: the lock file cannot be read.
    """
    data = os.pread(fd, 16 + _NONCE_BYTES, 0)
    generation = int.from_bytes(data[:8], "big") if len(data) >= 8 else 0
    epoch = int.from_bytes(data[8:16], "big") if len(data) >= 16 else 0
    name = data[16:] if len(data) == 16 + _NONCE_BYTES else None
    return generation, epoch, name


def _ticket_id(ticket: StoredTicket) -> str:
    """A ticket's name in the journal's removal records: a hash of the opaque
    ticket (the bytes every hello sends in clear; never the PSK)."""
    return hashlib.blake2b(ticket.ticket, digest_size=16).hexdigest()


def _line(record: dict[str, Any]) -> bytes:
    """One line of the journal, without its newline (JSON escapes control
    characters: there is none inside)."""
    return json.dumps(record, separators=(",", ":")).encode()


def _store_line(key: str, ticket: StoredTicket) -> bytes:
    return _line({"op": "store", "key": key, "ticket": ticket.to_json()})


_JOURNAL_HEADER = _line({"format": _CACHE_FORMAT}) + b"\n"
"""The first line of a journal, as written."""


def _header_length(raw: bytes) -> int:
    """The length of the journal header that starts ``raw`` (its newline
    included): a first line that is a JSON object of format v2; 0 if there is
    none (a file of format v1, or corrupt)."""
    if raw.startswith(_JOURNAL_HEADER):
        return len(_JOURNAL_HEADER)
    end = raw.find(b"\n") + 1
    try:
        head = json.loads(raw[:end]) if end else None
    except _CORRUPT:
        return 0
    return end if isinstance(head, dict) and head.get("format") == _CACHE_FORMAT else 0


_CACHES: weakref.WeakSet[SessionCache] = weakref.WeakSet()
"""Every SessionCache of the process (for _after_fork_in_child)."""


def _after_fork_in_child() -> None:
    """In a child made by fork(): a thread of the parent may have been inside
    an operation, holding a cache's lock and the flock of its lock file, or
    about to take it (the child's copy of the descriptor shares the flock: the
    parent would wait for the child's end, and the child for a thread it does
    not have). Each cache gets a new lock and reads its file whole at its next
    operation, and every descriptor of a cache's lock file is closed: the
    child has no operation in progress, so any it has is an inherited one. They
    are found among the open descriptors (where the system lists them), else
    by the one an operation had recorded.

    An in-memory cache starts empty: the parent and the child must not both
    use one (single-use) ticket. A cache with a file shares its tickets
    through the file, which hands each out once."""
    idents: set[tuple[int, int]] = set()
    recorded: list[int] = []
    for cache in list(_CACHES):
        cache._lock = threading.Lock()
        cache._lock_fd = -1
        if cache._open_lock_fd >= 0:
            recorded.append(cache._open_lock_fd)
            cache._open_lock_fd = -1
        if cache._path is None:
            cache._entries.clear()
            cache._live = 0
            continue
        cache._generation = cache._epoch = None
        if cache._open_lock_ident is not None:
            idents.add(cache._open_lock_ident)
        with contextlib.suppress(OSError):
            st = os.stat(cache._lock_path, follow_symlinks=False)
            idents.add((st.st_dev, st.st_ino))
    if not idents:
        return
    listed = _open_descriptors()
    for fd in recorded if listed is None else listed:
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in idents:
                os.close(fd)


def _open_descriptors() -> list[int] | None:
    """This process's open file descriptors, or None where the system does
    not list them (/proc/self/fd, /dev/fd)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        return [int(name) for name in names if name.isdigit()]
    return None


class SessionCache:
    """The client's resumption tickets, shared by every connection of a context.

    Args:
        max_entries: most servers (identity + address) kept; the least
            recently used goes first.
        tickets_per_server: most tickets kept per server.
        path: optional file to persist tickets across processes (created with
            mode 0600; it holds secrets). With a path, the file is the store,
            a journal of changes: every operation locks it (a sidecar
            ``<path>.lock`` file, where ``fcntl`` exists), applies what other
            caches appended since this one last looked, and appends its own
            change; the journal is compacted when it has grown to twice
            what the cache holds. A file that cannot be written is logged
            (once per streak of failures) and the tickets stay in memory; no
            operation raises because of it.

    Raises:
        TypeError, ValueError: bad arguments (ValueError too for a ``path``
            whose file name, 14 bytes longer, would be too long for the
            file system: the cache's temporary files are named so).
        nautilus.IdentityFileError: ``path`` is in a directory that does not
            exist, is a directory or a symbolic link, cannot be read, or is
            readable or writable by other users. A corrupt file, or one over
            the size the bounds allow (docs/sessions.md), is logged and
            replaced, not fatal.
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
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self._max_entries = max_entries
        self._tickets_per_server = tickets_per_server
        # The longest journal these bounds let a cache write (a compaction
        # comes before 2 * tickets + 128 records), and a torn last line.
        self._max_file_size = len(_JOURNAL_HEADER) + _RECORD_ROOM * (
            2 * max_entries * tickets_per_server + _COMPACT_SLACK + 1
        )
        """The most of the file this cache reads: a larger one is corrupt."""
        self._lock = threading.Lock()
        _CACHES.add(self)  # (its locks are made again in a forked child)
        self._entries: OrderedDict[str, list[StoredTicket]] = OrderedDict()
        self._path: Path | None = None
        # The rest is the file store's.
        self._live = 0
        """The tickets in ``_entries``, counted by the functions that apply records."""
        self._file_sig: _FileSig | None = None
        """The file as this cache last read or wrote it (None: no file)."""
        self._offset = 0
        """The bytes of the file this cache has applied: up to the end of its
        last complete line."""
        self._records = 0
        """The records in the file after its header (for the compaction rule)."""
        self._lines: dict[tuple[str, int], tuple[StoredTicket, bytes]] = {}
        """The store line each ticket was read from or written as, by (key,
        id(ticket)) (the ticket is kept with it: its id names no other object
        meanwhile). A compaction writes these lines again rather than encode
        every ticket, and reading the file whole parses only the lines not in
        here. It has every ticket held, and is cut to them at each compaction
        and each reading of the whole file (so bounded by the journal's length)."""
        self._rewrite = False
        """The file is not a journal this cache follows (format v1, corrupt,
        or not readable): the next write replaces it."""
        self._generation: int | None = None
        """The lock file's write generation when this cache last read or wrote
        the file (None: unknown, so the next locked operation reads it whole)."""
        self._epoch: int | None = None
        """The lock file's compaction epoch, likewise: it changes whenever the
        file is replaced (compacted), which the other caches then read whole."""
        self._lock_fd = -1
        """The locked lock file during an operation (-1: none, or not locked)."""
        self._open_lock_fd = -1
        """The lock file's descriptor from its opening (before the flock) to its
        closing, for the fork hook; -1: none open."""
        self._open_lock_ident: tuple[int, int] | None = None
        """(st_dev, st_ino) of that descriptor's file, once known."""
        self._lock_counters = (0, 0)
        """The lock file's generation and epoch, as read when it was locked
        for the operation in progress (and as this cache wrote them since)."""
        self._lock_nonce: bytes | None = None
        """The name of the lock file this cache last locked: 16 random bytes
        that its first locker writes at offset 16 (after the counters). A lock
        file deleted and made again (its counters restarting at 0, maybe on
        the same inode number) has another."""
        self._unsaved = False
        """The last write failed: memory holds what the file does not."""
        self._failing: set[str] = set()
        """The file actions ("lock", "read", "write", "generation") failing
        now: each streak of failures is logged once, when it starts."""
        if path is None:
            return
        fspath = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not isinstance(fspath, str):
            raise TypeError(f"path must be a str or os.PathLike[str], not {type(path).__name__}")
        if "\0" in fspath:
            raise ValueError(f"session cache path {fspath!r} holds a NUL byte")
        # Absolute: a later os.chdir() must not move the store (to a directory never checked).
        self._path = Path(fspath).absolute()
        if os.path.basename(fspath) in ("", ".", ".."):  # "", "/", "dir/", "dir/.", ".."...
            raise IdentityFileError(f"session cache {fspath!r}: a directory, not a file")
        if not os.path.isdir(self._path.parent):
            raise IdentityFileError(
                f"session cache {fspath!r}: its directory {str(self._path.parent)!r} "
                "does not exist or is not a directory"
            )
        # Beside the file: "<name>.lock", and a compaction's ".<name>.XXXXXXXX.tmp".
        name_max = _name_max(self._path.parent)
        if len(os.fsencode(self._path.name)) + _TEMP_NAME_EXTRA > name_max:
            raise ValueError(
                f"session cache {fspath!r}: the file name is too long for the temporary "
                f"files made beside it (at most {name_max - _TEMP_NAME_EXTRA} bytes here)"
            )
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        # The lock file's state before the file (unlocked): a write in between
        # makes the next operation read the file again, never miss it.
        self._generation, self._epoch, self._lock_nonce = self._peek_lock_state()
        raw, sig = self._read_file()  # a directory (even ".") raises here
        if sig is not None:
            self._load(raw, sig)

    @property
    def max_entries(self) -> int:
        """Most servers kept (read-only: the bound is set at construction)."""
        return self._max_entries

    @property
    def tickets_per_server(self) -> int:
        """Most tickets kept per server (read-only, as max_entries)."""
        return self._tickets_per_server

    @staticmethod
    def key(
        server_id: str,
        address: str | None,
        client_id: str | None = None,
        *,
        namespace: str = _DEFAULT_NAMESPACE,
    ) -> str:
        """The cache key of a server: its peer id and the address dialled, the
        peer id of the client identity the tickets were obtained with (None: a
        context without an identity), and the context's namespace. A ticket
        resumes the session it came from, the client's authentication
        included: only a context with the same identity may use it; and only
        a server of its namespace opens it, so contexts of other namespaces
        keep their tickets apart.

        Raises:
            TypeError: ``server_id`` or ``namespace`` is not a str, or
                ``address`` or ``client_id`` neither a str nor None.
            ValueError: ``server_id`` is empty or holds a newline or a space,
                or ``client_id`` holds a newline or a space, or either starts
                with a double quote or is over 128 characters (peer ids do
                none of these; ``server_id`` may be "*", any server at
                ``address``); ``address`` is over 512 bytes of UTF-8 (a host
                name has at most 253), or ``namespace`` over 255.
        """
        if not isinstance(server_id, str):
            raise TypeError(f"server_id must be a str, not {type(server_id).__name__}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str or None, not {type(address).__name__}")
        if client_id is not None and not isinstance(client_id, str):
            raise TypeError(f"client_id must be a str or None, not {type(client_id).__name__}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        _check_utf8_size("address", address, _MAX_ADDRESS)
        _check_utf8_size("namespace", namespace, 255)
        for name, part in (("server_id", server_id), ("client_id", client_id)):
            if part is not None and len(part) > _MAX_PEER_ID:
                raise ValueError(
                    f"{name} is {len(part)} characters; a peer id has at most {_MAX_PEER_ID}"
                )
        if (
            not server_id
            or "\n" in server_id
            or " " in server_id
            or server_id.startswith('"')
            or (
                client_id is not None
                and ("\n" in client_id or " " in client_id or client_id.startswith('"'))
            )
        ):
            raise ValueError(
                "server_id and client_id must be peer ids (not empty, no newline or "
                "space, not starting with a double quote)"
            )
        base = f"{server_id} {address or ''}"
        # The client's id first, before a newline: a peer id has neither a
        # space nor a newline, so no address makes one key equal another.
        key = base if client_id is None else f"{client_id}\n{base}"
        if namespace == _DEFAULT_NAMESPACE:
            return key  # (the key of the versions before the namespace was in it)
        # Another namespace first, as a JSON string on a line of its own: it
        # ends at its closing quote (newlines and quotes in it are escaped),
        # and no key of the default namespace starts with a quote.
        return f"{json.dumps(namespace)}\n{key}"

    def __len__(self) -> int:
        with self._lock, self._file_op():
            return self._live

    def store(self, key: str, ticket: StoredTicket) -> None:
        """Keep ``ticket`` for the server ``key`` (see :meth:`key`).

        Raises:
            TypeError: ``key`` is not a str or ``ticket`` not a StoredTicket.
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if not isinstance(ticket, StoredTicket):
            raise TypeError(f"ticket must be a StoredTicket, not {type(ticket).__name__}")
        with self._lock:
            if self._path is None:  # in memory (the common case): no file to hold
                self._apply_store(key, ticket)
                return
            with self._file_op():
                line = _store_line(key, ticket)
                self._apply_store(key, ticket)
                self._lines[key, id(ticket)] = (ticket, line)
                self._write_locked(line)

    def take(self, key: str, now: float) -> StoredTicket | None:
        """Remove and return the newest unexpired ticket for ``key`` (single use,
        also across the caches that share a file).

        Raises:
            TypeError, ValueError: ``key`` is not a str, or ``now`` not a finite number.
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if type(now) is not float or not math.isfinite(now):
            now = _seconds("now", now)
        with self._lock:
            if self._path is None:  # in memory (the common case): no file to hold
                return self._take_locked(key, now)[0]
            with self._file_op():
                found, popped = self._take_locked(key, now)
                if popped:  # one removal record names them all, newest first
                    ids = [_ticket_id(t) for t in popped]
                    self._write_locked(_line({"op": "remove", "key": key, "ids": ids}))
                return found

    def _take_locked(self, key: str, now: float) -> tuple[StoredTicket | None, list[StoredTicket]]:
        """Pop ``key``'s tickets, newest first, up to the first unexpired one:
        (that one or None, every ticket popped)."""
        tickets = self._entries.get(key)
        if not tickets:
            return None, []
        found = None
        popped = []
        while tickets and found is None:
            candidate = tickets.pop()
            popped.append(candidate)
            if not candidate.expired(now):
                found = candidate
        self._live -= len(popped)
        if tickets:
            self._entries.move_to_end(key)
        else:
            del self._entries[key]
        return found, popped

    def clear(self) -> None:
        """Forget every ticket (in the file too, for every cache that shares it)."""
        with self._lock:
            if self._path is None:
                self._entries.clear()
                self._live = 0
                return
            with self._file_op():
                self._entries.clear()
                self._live = 0
                self._snapshot_locked()  # a file of its header only

    # ------------------------------------------------- records, as every cache applies them

    def _apply_store(self, key: str, ticket: StoredTicket) -> None:
        """Keep ``ticket`` (store(), and a store record): the server becomes the
        most recently used; its oldest ticket beyond tickets_per_server, and
        the least recently used server beyond max_entries, go."""
        entries = self._entries
        tickets = entries.pop(key, [])
        live = self._live - len(tickets)
        tickets.append(ticket)
        del tickets[: -self._tickets_per_server]
        entries[key] = tickets
        live += len(tickets)
        while len(entries) > self._max_entries:
            live -= len(entries.popitem(last=False)[1])
        self._live = live

    def _apply_removal(self, key: str, ids: list[str]) -> None:
        """A removal record: the newest ticket of ``key`` with each id goes (a
        cache with other bounds may not hold it); the server is then the most
        recently used, as after a take, or gone if it has no ticket left."""
        tickets = self._entries.get(key)
        if tickets is None:
            return
        for ticket_id in ids:
            for i in range(len(tickets) - 1, -1, -1):  # the taker's order: the last first
                if _ticket_id(tickets[i]) == ticket_id:
                    del tickets[i]
                    self._live -= 1
                    break
        if tickets:
            self._entries.move_to_end(key)
        else:
            del self._entries[key]

    def _apply_line(self, line: bytes) -> None:
        """Apply one record of the journal (a line without its newline).

        Raises:
            ValueError, TypeError, KeyError, OverflowError, RecursionError: a
                corrupt record.
        """
        record = json.loads(line)
        if not isinstance(record, dict):
            raise TypeError("a record must be a JSON object")
        op, key = record["op"], record["key"]
        if not isinstance(key, str):
            raise TypeError("a record's key must be a str")
        if op == "store":
            ticket = StoredTicket.from_json(record["ticket"])
            self._apply_store(key, ticket)
            self._lines[key, id(ticket)] = (ticket, line)
        elif op == "remove":
            ids = record["ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise TypeError("a removal's ids must be a list of str")
            self._apply_removal(key, ids)
        else:
            raise ValueError("unknown record")

    # ---------------------------------------------------------------- the file

    def _read_file(self) -> tuple[bytes | None, _FileSig | None]:
        """The file's contents and signature; (None, None) if there is no file,
        and None for the contents of a file over ``_max_file_size`` bytes
        (read no further than that).

        Raises:
            nautilus.IdentityFileError: it cannot be read (a directory, a
                symbolic link, no permission) or others may access it.
        """
        path = self._path
        assert path is not None
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise IdentityFileError(f"session cache {str(path)!r} cannot be read: {exc}") from None
        try:  # (errors below name the descriptor, not the path: strerror says why)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
                    raise OSError(0, "not a regular file")
                mode = stat.S_IMODE(st.st_mode)
                limit = self._max_file_size
                raw = None
                if not mode & 0o077 and st.st_size <= limit:
                    raw = _read_at_most(fh, limit, st.st_size)
        except OSError as exc:  # a directory, a FIFO or device, an I/O error
            raise IdentityFileError(
                f"session cache {str(path)!r} cannot be read: {exc.strerror or type(exc).__name__}"
            ) from None
        if mode & 0o077:
            raise IdentityFileError(
                f"session cache {str(path)!r} is accessible to other users "
                f"(mode {mode:o}); it holds secrets: chmod 600 it"
            )
        return raw, _sig(st)

    def _follows(self, st: os.stat_result) -> bool:
        """Whether ``st`` is the journal this cache follows: the same file (device
        and inode), a regular file that only its owner may access, at least as
        long as what this cache has applied."""
        seen = self._file_sig
        return (
            seen is not None
            and (st.st_dev, st.st_ino) == seen[:2]
            and stat.S_ISREG(st.st_mode)
            and not stat.S_IMODE(st.st_mode) & 0o077
            and st.st_size >= self._offset
        )

    def _read_tail(self) -> tuple[bytes, _FileSig] | None:
        """What the file holds past the part this cache has applied, and the
        file's signature; None if the path no longer holds the journal this
        cache follows (the caller then reads it whole).

        The read starts one byte early, at the newline that ends the last line
        applied: another byte there means another file (or one rewritten in
        place), whatever its inode says.

        Raises:
            OSError: the file cannot be read.
        """
        path, seen, offset = self._path, self._file_sig, self._offset
        assert path is not None
        assert seen is not None
        assert offset > 0
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        chunks = []
        try:
            st = os.fstat(fd)
            if not self._follows(st) or st.st_size > self._max_file_size:
                return None  # (one too large is then refused as corrupt, unread)
            os.lseek(fd, offset - 1, os.SEEK_SET)
            want = st.st_size - offset + 1
            while want > 0:
                chunk = os.read(fd, want)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if data[:1] != b"\n":
            return None
        return data[1:], _sig(st)

    def _load(self, raw: bytes | None, sig: _FileSig | None) -> None:
        """Hold what the file ``raw`` holds, instead of what this cache held: a
        journal (a last line without its newline, torn or being written, is not
        applied), or a file of format v1 (replaced by a journal at the next
        write). A corrupt file, or one too large to be read (``raw`` None), is
        logged, and the cache starts empty."""
        # The store lines read or written before, and what each holds: after a
        # compaction by another cache, most lines of the file are among them.
        known = {line: (key, t) for (key, _), (t, line) in self._lines.items()}
        self._file_sig = sig
        self._entries = OrderedDict()
        self._lines = {}
        self._live = self._offset = self._records = 0
        if raw is None:
            self._too_large()
            return
        try:
            start = _header_length(raw)
            if start:
                end = raw.rfind(b"\n") + 1
                lines = raw[start:end].split(b"\n")[:-1]
                for line in lines:
                    held = known.get(line)
                    if held is None:
                        self._apply_line(line)
                    else:
                        key, ticket = held
                        self._apply_store(key, ticket)
                        self._lines[key, id(ticket)] = (ticket, line)
                self._offset, self._records, self._rewrite = end, len(lines), False
                self._lines = self._live_lines()
            else:
                self._entries = self._parse_v1(raw)
                self._live = sum(len(v) for v in self._entries.values())
                self._rewrite = True
        except _CORRUPT as exc:
            self._corrupt(type(exc).__name__)

    def _apply_tail(self, tail: bytes, sig: _FileSig) -> None:
        """Apply the complete lines of ``tail`` (what follows the part this
        cache has applied). A corrupt one voids the whole file, as when read whole."""
        self._file_sig = sig
        end = tail.rfind(b"\n") + 1  # a last line without its newline waits
        if not end:
            return
        lines = tail[: end - 1].split(b"\n")
        try:
            for line in lines:
                self._apply_line(line)
        except _CORRUPT as exc:
            self._corrupt(type(exc).__name__)
            return
        self._offset += end
        self._records += len(lines)

    def _too_large(self) -> None:
        """The file is over the size this cache reads: corrupt."""
        self._corrupt(
            f"over {self._max_file_size} bytes, more than a journal within the bounds "
            "of this cache holds"
        )

    def _corrupt(self, why: str) -> None:
        """The file is corrupt (``why``: the error, never a ticket): logged,
        the cache starts empty, and the next write replaces the file."""
        log.warning("session cache %s is corrupt (%s); starting empty", self._path, why)
        self._entries = OrderedDict()
        self._lines = {}
        self._live = 0
        self._rewrite = True

    def _live_lines(self) -> dict[tuple[str, int], tuple[StoredTicket, bytes]]:
        """The store line of each ticket held (a ticket with none, read from a
        file of format v1, is encoded now)."""
        lines = self._lines
        live = {}
        for key, tickets in self._entries.items():
            for t in tickets:
                held = lines.get((key, id(t)))
                live[key, id(t)] = (t, _store_line(key, t)) if held is None else held
        return live

    def _parse_v1(self, raw: bytes) -> OrderedDict[str, list[StoredTicket]]:
        """The tickets of a file of format v1 (one JSON object), bounded.

        Raises:
            ValueError, TypeError, KeyError, OverflowError, RecursionError: a
                corrupt file.
        """
        data = json.loads(raw.decode())
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT_V1:
            raise ValueError("not a Nautilus session cache")
        servers = data["servers"]
        if not isinstance(servers, dict):
            raise TypeError("servers must be a JSON object")
        entries: OrderedDict[str, list[StoredTicket]] = OrderedDict()
        for key, items in servers.items():
            if not isinstance(items, list):
                raise TypeError("a server's tickets must be a JSON list")
            tickets = [StoredTicket.from_json(i) for i in items]
            if tickets:
                entries[key] = tickets[-self._tickets_per_server :]
        while len(entries) > self._max_entries:
            entries.popitem(last=False)
        return entries

    @contextlib.contextmanager
    def _file_op(self) -> Iterator[None]:
        """One operation on the file store, under ``self._lock``: hold the file
        lock and apply what changed in the file since this cache last read or
        wrote it; the operation then writes its change. No file failure is
        raised: each streak of them is logged once, and memory keeps the tickets."""
        if self._path is None:
            yield
            return
        with self._file_locked() as fd:
            self._lock_fd = fd
            try:
                self._refresh_locked()
                yield
            finally:
                self._lock_fd = -1

    def _peek_lock_state(self) -> tuple[int | None, int | None, bytes | None]:
        """The lock file's generation, epoch and name, read without locking
        (None: unknown)."""
        if _fcntl is None:
            return None, None, None
        try:
            fd = os.open(self._lock_path, os.O_RDONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            return 0, 0, None  # no cache has written the file under the lock yet
        except OSError:
            return None, None, None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, None, None
            return _lock_head(fd)
        except OSError:
            return None, None, None
        finally:
            os.close(fd)

    def _lock_file(self) -> int:
        """Open and flock the lock file; its descriptor. The lock is the one at
        ``<path>.lock`` now: one deleted or replaced between the open and the
        flock is opened again. A lock file other than the one this cache saw
        last (another name: its counters started again) makes the next
        refresh read the cache file whole.

        Raises:
            OSError: it cannot be opened or locked, or is not a regular file.
        """
        assert _fcntl is not None
        flags = os.O_RDWR | os.O_CREAT | _OPEN_FLAGS
        for _ in range(8):
            fd = self._open_lock_fd = os.open(self._lock_path, flags, 0o600)
            self._open_lock_ident = None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(0, "not a regular file")
                self._open_lock_ident = (st.st_dev, st.st_ino)  # (known before it is locked)
                _fcntl.flock(fd, _fcntl.LOCK_EX)
                try:
                    now = os.stat(self._lock_path, follow_symlinks=False)
                except FileNotFoundError:
                    now = None
            except BaseException:
                self._close_lock_file(fd)
                raise
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                try:  # (read once: the counters are kept for the operation)
                    generation, epoch, nonce = _lock_head(fd)
                    if nonce is None:  # a new lock file: name it
                        nonce = secrets.token_bytes(_NONCE_BYTES)
                        os.pwrite(fd, nonce, 16)
                except BaseException:
                    self._close_lock_file(fd)
                    raise
                self._lock_counters = (generation, epoch)
                if nonce != self._lock_nonce:
                    if self._lock_nonce is not None:
                        self._generation = self._epoch = None  # its counters restarted
                    self._lock_nonce = nonce
                return fd
            self._close_lock_file(fd)  # unlinked or replaced meanwhile: lock the one there now
        raise OSError(0, "replaced again and again while being locked")

    def _close_lock_file(self, fd: int) -> None:
        """Close the lock file's descriptor (releasing its flock); forgotten by
        the fork hook only once it is closed."""
        try:
            os.close(fd)
        finally:
            self._open_lock_fd = -1

    @contextlib.contextmanager
    def _file_locked(self) -> Iterator[int]:
        """Hold an exclusive flock on the sidecar lock file (none without fcntl);
        yields its descriptor, or -1 if it is not locked."""
        fd = -1
        if _fcntl is not None:
            try:
                fd = self._lock_file()
            except OSError as exc:
                self._failed(
                    "lock",
                    f"cannot be locked ({exc.strerror or type(exc).__name__}): "
                    "a change by another process sharing it may be lost",
                )
            else:
                self._works("lock")
        try:
            yield fd
        finally:
            if fd >= 0:
                self._close_lock_file(fd)  # releases the lock

    def _refresh_locked(self) -> None:
        """Apply what other caches changed in the file: nothing if the lock
        file's generation is the one this cache last saw (or, unlocked, the
        file's size and modification time are); the lines appended since, if
        only that happened; else (the epoch differs: it was compacted; another
        inode: replaced or deleted) the whole file."""
        if self._unsaved:
            return  # memory is authoritative until a write succeeds
        assert self._path is not None
        state = self._locked_state()
        try:
            st: os.stat_result | None = os.stat(self._path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            self._rewrite = True  # memory is all this cache can write
            self._failed("read", f"cannot be read ({exc.strerror or type(exc).__name__})")
            return
        if st is None:
            if self._file_sig is not None:  # deleted: the store is empty
                self._forget_file()
        else:
            how = self._what_changed(st, state)
            if how == "tail":
                try:
                    tail = self._read_tail()
                except OSError as exc:
                    self._rewrite = True
                    self._failed("read", f"cannot be read ({exc.strerror or type(exc).__name__})")
                    return
                if tail is None:
                    how = "whole"
                else:
                    self._apply_tail(*tail)
            if how == "whole":
                try:
                    raw, sig = self._read_file()
                except IdentityFileError as exc:
                    # str(exc) names the file and why; it holds no secret.
                    self._rewrite = True
                    self._failed("read", f"cannot be read again: {exc}")
                    return
                if sig is None:  # deleted since the stat
                    self._forget_file()
                else:
                    self._load(raw, sig)
        # None when unlocked: the next locked operation reads the file whole.
        self._generation, self._epoch = (None, None) if state is None else state
        self._works("read")

    def _forget_file(self) -> None:
        """The file was deleted: the store is empty."""
        self._entries = OrderedDict()
        self._lines = {}
        self._file_sig = None
        self._live = self._offset = self._records = 0
        self._rewrite = False

    def _what_changed(
        self, st: os.stat_result, state: tuple[int, int] | None
    ) -> Literal["none", "tail", "whole"]:
        """What to read of the file (``st``, the lock file's ``state``): "none",
        "tail" (only lines were appended) or "whole"."""
        seen = self._file_sig
        if not self._follows(st) or (state is not None and state[1] != self._epoch):
            return "whole"  # (one open to others is then refused, and logged)
        assert seen is not None
        changed = state[0] != self._generation if state is not None else _sig(st) != seen
        if self._rewrite:  # not a journal this cache follows: read it again if it changed
            return "whole" if changed or _sig(st) != seen else "none"
        if st.st_size > self._offset:
            return "tail"
        return "whole" if changed else "none"  # the same size, yet rewritten: read it whole

    def _locked_state(self) -> tuple[int, int] | None:
        """The lock file's generation and epoch under the lock (None: not locked)."""
        return None if self._lock_fd < 0 else self._lock_counters

    def _write_locked(self, line: bytes) -> None:
        """Write one change (``line``, a record already applied to memory):
        appended to the journal, or the file replaced by what memory holds
        when it must be (after a failed write, a file this cache does not
        follow, none yet) or when the journal holds at least 2 * tickets + 128
        records (compaction)."""
        if (
            self._unsaved
            or self._rewrite
            or self._file_sig is None
            or self._records >= 2 * self._live + _COMPACT_SLACK
            or not self._append_locked(line)
        ):
            self._snapshot_locked()

    def _append_locked(self, line: bytes) -> bool:
        """Append ``line`` and its newline to the journal this cache follows, in one write.
        False if the path no longer holds it (the caller replaces the file);
        True if appended, or if that failed (noted, memory keeps the change).

        Under the lock, this cache has read the file to its end: bytes past
        its last complete line are a torn line (an append cut short by a crash
        or a full disk), dropped before appending. Unlocked, they may be
        another cache's record: the file is then replaced."""
        path, seen, offset = self._path, self._file_sig, self._offset
        assert path is not None
        assert seen is not None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | _OPEN_FLAGS)
        except OSError:
            return False  # gone, a symbolic link now, read-only: replace it
        try:
            st = os.fstat(fd)
            if not self._follows(st) or (st.st_size > offset and self._lock_fd < 0):
                return False  # (one open to others gets no secret: it is replaced)
            if st.st_size > offset and not self._past_offset(path, offset, st):
                return False  # not a journal this cache can append to now: replace it
            offset = self._offset
            if st.st_size > offset:
                os.ftruncate(fd, offset)
            data = line + b"\n"
            written = os.write(fd, data)
            if written != len(data):  # a full disk: take the torn line back
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, offset)
                raise OSError(0, f"wrote {written} of {len(data)} bytes")
            after = os.fstat(fd)
        except OSError as exc:
            self._unsaved = True
            self._failed(
                "write",
                f"cannot be written ({exc.strerror or type(exc).__name__}): "
                "its tickets are kept in memory only",
            )
            return True
        finally:
            os.close(fd)
        self._offset += len(line) + 1
        self._records += 1
        self._file_sig = _sig(after)
        self._bump_locked(replaced=False)
        self._works("write")
        return True

    def _past_offset(self, path: Path, offset: int, st: os.stat_result) -> bool:
        """Bytes follow the last line this cache applied, though it read the
        file to its end under the lock: a torn line (no newline: the caller
        drops it), or whole records that another cache wrote without holding
        the lock (the lock file was deleted or replaced while in use). Those
        are applied, and the lock's failure logged. False if they could not
        be read or are corrupt, or the file is over the size this cache reads
        (corrupt too, unread): the file is then replaced by what memory holds.

        Raises:
            OSError: the file cannot be read.
        """
        if st.st_size > self._max_file_size:
            self._too_large()  # (not read)
            return False
        rfd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        try:
            extra = os.pread(rfd, st.st_size - offset, offset)
        finally:
            os.close(rfd)
        if b"\n" not in extra:
            return True
        self._failed(
            "lock",
            "was not exclusive: another cache wrote to the file without holding "
            f"{str(self._lock_path)!r} (deleted or replaced while in use?); a ticket "
            "may have been taken twice",
        )
        self._apply_tail(extra, _sig(st))
        return not self._rewrite

    def _snapshot_locked(self) -> None:
        """Replace the file by what memory holds: a new 0600 file (the header,
        then a store record per ticket, least recently used server first),
        synced to the disk, renamed over it, and the directory then synced. A
        failure is noted, and the tickets stay in memory."""
        path = self._path
        assert path is not None
        self._lines = live = self._live_lines()
        # A line per ticket held: one stored twice (the same object) is twice.
        body = [live[key, id(t)][1] for key, tickets in self._entries.items() for t in tickets]
        data = _JOURNAL_HEADER
        if body:
            data += b"\n".join(body) + b"\n"
        _remove_leftovers(path)
        tmp: Path | None = None
        try:
            # mkstemp: a new file (O_EXCL) with mode 0600, never one left by someone else.
            fd, tmp_name = tempfile.mkstemp(
                prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent
            )
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                # On the disk before the rename: a crash after it must not
                # leave an empty or partial file in place of the journal.
                os.fsync(fh.fileno())
                written = os.fstat(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if not isinstance(exc, OSError):
                raise
            self._unsaved = True
            self._failed(
                "write",
                f"cannot be written ({exc.strerror or type(exc).__name__}): "
                "its tickets are kept in memory only",
            )
            return
        _sync_directory(path.parent)  # the rename on the disk too
        self._unsaved = self._rewrite = False
        self._file_sig = _sig(written)
        self._offset = len(data)
        self._records = len(body)
        self._bump_locked(replaced=True)
        self._works("write")

    def _bump_locked(self, *, replaced: bool) -> None:
        """Tell the other caches that the file changed: the lock file's next
        generation, and its next epoch if the file was ``replaced``. Unlocked,
        or if the lock file cannot be written, this cache no longer knows them
        (its next locked operation reads the file whole)."""
        self._generation = self._epoch = None
        if self._lock_fd < 0:
            return
        try:
            generation, epoch = self._lock_counters
            generation = (generation + 1) % 2**64
            if replaced:
                epoch = (epoch + 1) % 2**64
            os.pwrite(self._lock_fd, generation.to_bytes(8, "big") + epoch.to_bytes(8, "big"), 0)
        except OSError as exc:
            self._failed(
                "generation",
                f"lock file cannot be written ({exc.strerror or type(exc).__name__}): "
                "other caches sharing it may miss this change",
            )
        else:
            self._generation, self._epoch = self._lock_counters = generation, epoch
            self._works("generation")

    def _failed(self, action: str, problem: str) -> None:
        """Log ``problem`` if it starts a streak of failures of ``action``.
        (The messages name the file and the OS error, never a ticket.)"""
        if action not in self._failing:
            self._failing.add(action)
            log.warning(
                "session cache %s %s (logged once until this works again)", self._path, problem
            )

    def _works(self, action: str) -> None:
        """``action`` worked: the end of its streak of failures, if any."""
        if action in self._failing:
            self._failing.discard(action)
            log.info("session cache %s: the file can be used again (%s)", self._path, action)

    def __repr__(self) -> str:
        where = f" file={str(self._path)!r}" if self._path else ""
        with self._lock:  # what this cache holds now: no file access in a repr
            count = self._live
        return f"<SessionCache {count} tickets{where}>"


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
    """The live sessions of a server context (weakly held, bounded).

    Args:
        max_sessions: most sessions tracked; more are counted in :attr:`dropped`.

    Raises:
        TypeError, ValueError: ``max_sessions`` is not an int of at least 1.
    """

    def __init__(self, max_sessions: int = 100_000) -> None:
        if not isinstance(max_sessions, int) or isinstance(max_sessions, bool):
            raise TypeError(f"max_sessions must be an int, not {type(max_sessions).__name__}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")
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
