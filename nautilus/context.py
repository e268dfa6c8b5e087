"""``nautilus.Context``: configuration shared by many connections (like ``ssl.SSLContext``)."""

from __future__ import annotations

import math
import os
import platform
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from nautilus._fork import live_members, renew_locks_after_fork
from nautilus.identity import Identity, PeerKey, TrustStore
from nautilus.kem import GROUPS
from nautilus.protocol.keypool import KeyPool
from nautilus.protocol.steps import Handshake
from nautilus.record import CIPHERS, MAX_FRAGMENT
from nautilus.sessions import (
    _DEFAULT_NAMESPACE,
    _FORK_LOCK_WAIT,
    MAX_EARLY_DATA,
    MAX_TICKET_LIFETIME,
    ZONE_SIZE,
    EarlyDataReplayCache,
    ReplayCache,
    SessionCache,
    SessionTable,
    TicketKeys,
    check_ticket_timing,
)

if TYPE_CHECKING:
    import socket

    from nautilus.sockets import NautilusSocket

__all__ = ["CIPHER_IDS", "DEFAULT_GROUPS", "GROUP_IDS", "Context", "default_ciphers"]

# Wire ids. Where TLS has a code point for the same construction we use it.
GROUP_IDS: dict[str, int] = {
    "x25519-mlkem768": 0x11EC,  # TLS X25519MLKEM768 (same byte layout)
    "x25519-mlkem1024": 0xFE01,  # private use: no TLS code point
    "mlkem1024": 0x0202,  # TLS MLKEM1024
    "mlkem768": 0x0201,  # TLS MLKEM768
    "x25519": 0x001D,  # TLS x25519
}
CIPHER_IDS: dict[str, int] = {
    "aes-128-gcm": 0x1301,
    "aes-256-gcm": 0x1302,
    "chacha20-poly1305": 0x1303,
}
DEFAULT_GROUPS: tuple[str, ...] = ("x25519-mlkem768", "x25519-mlkem1024", "mlkem1024", "mlkem768")
"""Groups offered by default; ``x25519`` alone (not post-quantum) only when named."""
CLIENT_AUTH_MODES = ("off", "optional", "required")
RESUMPTION_MODES = ("psk_dhe", "psk_only", "off")
MIN_RECORD_SIZE = 512
REPLAY_CACHE_SIZE = 65536

if set(GROUP_IDS) != set(GROUPS) or set(CIPHER_IDS) != set(CIPHERS):  # pragma: no cover
    raise ImportError("nautilus.context: wire ids out of step with nautilus.kem / nautilus.record")


def _cpu_has_aes() -> bool:
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return True  # ARMv8 crypto extensions are near-universal on 64-bit ARM servers
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " aes" in line
    except OSError:
        pass
    return machine in ("x86_64", "amd64")


def default_ciphers() -> tuple[str, ...]:
    """AES-GCM first where the CPU has AES instructions, ChaCha20-Poly1305 elsewhere."""
    if _cpu_has_aes():
        return ("aes-256-gcm", "chacha20-poly1305", "aes-128-gcm")
    return ("chacha20-poly1305", "aes-256-gcm", "aes-128-gcm")


def _names(kind: str, value: object, allowed: dict[str, int]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{kind} must be a sequence of names, not {type(value).__name__}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{kind} entries must be str, not {type(item).__name__}")
        if item not in allowed:
            raise ValueError(
                f"{kind}: unknown {kind[:-1]} {item!r}; expected one of {', '.join(allowed)}"
            )
        if item in out:
            raise ValueError(f"{kind}: {kind[:-1]} {item!r} listed twice")
        out.append(item)
    if not out:
        raise ValueError(f"{kind} must not be empty")
    return tuple(out)


def _number(name: str, value: object, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"{name} must be in {lo}..{hi}, got an int too large") from None
    if not (math.isfinite(number) and lo <= number <= hi):
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return number


def _integer(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


# The checks of every public setting of a Context: each takes the value given
# and returns the value kept (or raises TypeError / ValueError naming the
# setting). Context.__init__ and assignment (Context.__setattr__) both use them.
_Check = Callable[[Any], object]


def _choice(name: str, allowed: tuple[str, ...]) -> _Check:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        return value

    return check


def _instance(name: str, cls: type, what: str, *, optional: bool = False) -> _Check:
    def check(value: object) -> object:
        if value is None and optional:
            return None
        if not isinstance(value, cls):
            raise TypeError(f"{name} must be {what}, not {type(value).__name__}")
        return value

    return check


def _namespace(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"namespace must be a str, not {type(value).__name__}")
    if not 1 <= len(value.encode()) <= 255:
        raise ValueError("namespace must be 1 to 255 bytes of UTF-8")
    return value


def _flag(name: str) -> _Check:
    def check(value: object) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
        return value

    return check


_SETTINGS: dict[str, _Check] = {
    "identity": _instance("identity", Identity, "a nautilus.Identity or None", optional=True),
    "trust": _instance("trust", TrustStore, "a nautilus.TrustStore"),
    "groups": lambda v: _names("groups", v, GROUP_IDS),
    "ciphers": lambda v: _names("ciphers", v, CIPHER_IDS),
    "client_auth": _choice("client_auth", CLIENT_AUTH_MODES),
    "handshake_timeout": lambda v: _number("handshake_timeout", v, 0.001, 86400),
    "record_timeout": lambda v: None if v is None else _number("record_timeout", v, 0.001, 86400),
    "namespace": _namespace,
    "max_message_size": lambda v: _integer("max_message_size", v, 1, 1 << 31),
    # (1 s at least: a hello's timestamp is in milliseconds and takes time to arrive)
    "max_clock_skew": lambda v: _number("max_clock_skew", v, 1.0, 86400),
    "max_record_size": lambda v: _integer("max_record_size", v, MIN_RECORD_SIZE, MAX_FRAGMENT),
    "key_update_records": lambda v: _integer("key_update_records", v, 1, 1 << 22),
    "key_update_bytes": lambda v: _integer("key_update_bytes", v, 1, 1 << 40),
    "rekey_interval": lambda v: None if v is None else _number("rekey_interval", v, 1e-3, 1e9),
    "handshake": _instance("handshake", Handshake, "a nautilus.Handshake"),
    "resumption": _choice("resumption", RESUMPTION_MODES),
    "session_cache": _instance("session_cache", SessionCache, "a nautilus.SessionCache"),
    "ticket_lifetime": lambda v: _number("ticket_lifetime", v, 1.0, MAX_TICKET_LIFETIME),
    "ticket_key_rotation": lambda v: _number("ticket_key_rotation", v, 1.0, 1e9),
    "tickets_per_handshake": lambda v: _integer("tickets_per_handshake", v, 0, 8),
    "early_data": _flag("early_data"),
    "max_early_data": lambda v: _integer("max_early_data", v, 0, MAX_EARLY_DATA),
    "early_data_window": lambda v: _number("early_data_window", v, 0.0, 3600.0),
    "sessions": _instance("sessions", SessionTable, "a nautilus.sessions.SessionTable"),
}
_TICKET_TIMING = ("ticket_key_rotation", "ticket_lifetime")


class _SettingFields:
    """The settings of a Context, declared once for :class:`Context` and for
    :class:`_Settings` (the snapshot a connection reads)."""

    __slots__ = ()

    identity: Identity | None
    trust: TrustStore
    groups: tuple[str, ...]
    ciphers: tuple[str, ...]
    client_auth: str
    handshake_timeout: float
    record_timeout: float | None
    namespace: str
    max_message_size: int
    max_clock_skew: float
    max_record_size: int
    key_update_records: int
    key_update_bytes: int
    rekey_interval: float | None
    handshake: Handshake
    resumption: str
    session_cache: SessionCache
    ticket_lifetime: float
    ticket_key_rotation: float
    tickets_per_handshake: int
    early_data: bool
    max_early_data: int
    early_data_window: float
    sessions: SessionTable
    """(server) The live sessions of this context, for operators."""


class _Settings(_SettingFields):
    """Every setting of a Context as it was at one moment: read-only.

    A Context replaces its snapshot on each assignment (under a lock), and a
    Connection takes the current one when it is made: whatever other threads
    assign meanwhile, one handshake sees one consistent set of settings.
    """

    __slots__ = tuple(_SETTINGS)

    def __init__(self, context: Context) -> None:
        for name in _SETTINGS:
            object.__setattr__(self, name, getattr(context, name))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a snapshot of a Context's settings is read-only")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a snapshot of a Context's settings cannot be copied or pickled")


class Context(_SettingFields):
    """Settings and trust for many connections; the ``ssl.SSLContext`` of Nautilus.

    Args:
        identity: this side's identity (required to act as a server, and for
            client authentication).
        trusted_peers: pinned peer keys or peer ids (an allow-list).
        known_peers_file: trust-on-first-use file, like SSH's known_hosts.
        trusted_issuers: issuers whose certificates are accepted.
        groups: key-exchange groups in preference order (default
            :data:`DEFAULT_GROUPS`; ``"x25519"`` only when listed).
        ciphers: AEADs in preference order (default :func:`default_ciphers`).
        client_auth: ``"off"``, ``"optional"`` or ``"required"`` (servers).
        handshake_timeout: seconds a handshake may take, on both sides.
        record_timeout: (asyncio and blocking sockets) seconds the peer may
            leave a record, or a message of the message API, incomplete
            without sending more of it, once connected; then the connection
            fails with :class:`~nautilus.RecordTimeout` and a record_timeout
            alert (None: no limit).
        namespace: application id; both sides must use the same one.
        max_message_size: bound of one message of the message API.
        max_clock_skew: seconds a client hello's timestamp may differ from now
            (1 s to 1 day; default 120 s).
        max_record_size: largest record content this side sends and accepts
            (512 B to 256 KiB; default 16 KiB).
        key_update_records, key_update_bytes: keys are ratcheted automatically
            after this many records or bytes in one direction.
        rekey_interval: seconds after which sending keys are ratcheted
            automatically (None: no age limit).
        handshake: the handshake steps (default: the core steps only).
        resumption: ``"psk_dhe"`` (resume with a ticket plus a fresh key
            exchange: forward secret), ``"psk_only"`` (client: ask for the
            faster resumption without a key exchange, not forward secret for
            that session; server: also grant it) or ``"off"``.
        session_cache: (client) where tickets are kept; by default each
            context has its own in-memory :class:`SessionCache`.
        ticket_lifetime: (server) seconds a ticket is valid (at most 7 days).
        ticket_key_rotation: (server) seconds between ticket-key rotations.
        tickets_per_handshake: (server) tickets sent after each handshake (0: none).
        early_data: allow 0-RTT early data (client: send it; server: accept
            it). Off by default: early data can be replayed by an attacker.
        max_early_data: (server) most early-data bytes a ticket allows.
        early_data_window: (server) seconds a client's view of a ticket's age
            may differ from the server's for its early data to be accepted.

    Every setting is an attribute of the same name, which may be changed
    between connections by assignment (``ctx.client_auth = "required"``): the
    value is checked as by the constructor, and a bad one raises (naming the
    setting) and leaves the old value. A connection reads the settings its
    context had when the connection was made (one snapshot, whatever other
    threads assign meanwhile): an assignment applies to connections made after
    it, never to a handshake in flight. Changing ``ticket_lifetime`` or
    ``ticket_key_rotation`` also changes the ticket keys in use. ``trust`` is
    the :class:`nautilus.TrustStore` made of the trust arguments, and
    ``sessions`` the server's :class:`~nautilus.sessions.SessionTable`.

    Raises:
        TypeError, ValueError: any argument of the wrong type or out of range,
            with a message naming it; ``ticket_key_rotation`` shorter than
            ``ticket_lifetime / 1023`` (at most 1024 retired ticket keys are
            kept, and each must open its tickets for their whole lifetime).
        AttributeError: assignment to a name that is not a setting.
    """

    def __init__(
        self,
        identity: Identity | None = None,
        *,
        trusted_peers: Iterable[PeerKey | str] = (),
        known_peers_file: str | os.PathLike[str] | None = None,
        trusted_issuers: Iterable[PeerKey | str] = (),
        groups: Sequence[str] | None = None,
        ciphers: Sequence[str] | None = None,
        client_auth: str = "off",
        handshake_timeout: float = 10.0,
        record_timeout: float | None = 60.0,
        namespace: str = _DEFAULT_NAMESPACE,
        max_message_size: int = 16 * 1024 * 1024,
        max_clock_skew: float = 120.0,
        max_record_size: int = 16384,
        key_update_records: int = 1 << 22,
        key_update_bytes: int = 1 << 36,
        rekey_interval: float | None = None,
        handshake: Handshake | None = None,
        resumption: str = "psk_dhe",
        session_cache: SessionCache | None = None,
        ticket_lifetime: float = 7200.0,
        ticket_key_rotation: float = 3600.0,
        tickets_per_handshake: int = 1,
        early_data: bool = False,
        max_early_data: int = 16384,
        early_data_window: float = 10.0,
    ) -> None:
        self._replay_lock = threading.Lock()
        self._settings_lock = threading.Lock()
        renew_locks_after_fork(self, "_replay_lock", "_settings_lock")
        self._settings: _Settings | None = None  # made once every setting is set
        self._ticket_keys: TicketKeys | None = None
        settings: dict[str, object] = {
            "identity": identity,
            "trust": TrustStore(
                trusted_peers=trusted_peers,
                known_peers_file=known_peers_file,
                trusted_issuers=trusted_issuers,
            ),
            "groups": DEFAULT_GROUPS if groups is None else groups,
            "ciphers": default_ciphers() if ciphers is None else ciphers,
            "client_auth": client_auth,
            "handshake_timeout": handshake_timeout,
            "record_timeout": record_timeout,
            "namespace": namespace,
            "max_message_size": max_message_size,
            "max_clock_skew": max_clock_skew,
            "max_record_size": max_record_size,
            "key_update_records": key_update_records,
            "key_update_bytes": key_update_bytes,
            "rekey_interval": rekey_interval,
            "handshake": Handshake() if handshake is None else handshake,
            "resumption": resumption,
            "session_cache": SessionCache() if session_cache is None else session_cache,
            "ticket_lifetime": ticket_lifetime,
            "ticket_key_rotation": ticket_key_rotation,
            "tickets_per_handshake": tickets_per_handshake,
            "early_data": early_data,
            "max_early_data": max_early_data,
            "early_data_window": early_data_window,
            "sessions": SessionTable(),
        }
        assert settings.keys() == _SETTINGS.keys()
        for name, value in settings.items():
            setattr(self, name, value)  # checked by __setattr__
        self._settings = _Settings(self)
        self._early_replay = EarlyDataReplayCache()
        # A full hello cache forgets its oldest entry rather than refuse clients.
        self._seen_hellos = ReplayCache(REPLAY_CACHE_SIZE, evict_when_full=True)
        self._key_pool = KeyPool()
        # Stamped in the tickets this context issues: only this context, in
        # this process, accepts their early data (a forked child gets its own).
        self._early_zone = os.urandom(ZONE_SIZE)
        _CONTEXTS.add(self)

    def __setattr__(self, name: str, value: object) -> None:
        """Settings are checked when assigned, as by the constructor.

        Raises:
            TypeError, ValueError: a bad value, naming the setting (the old
                value stays).
            AttributeError: ``name`` is not a setting of a Context.
        """
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        check = _SETTINGS.get(name)
        if check is None:
            raise AttributeError(f"nautilus.Context has no setting {name!r}")
        value = check(value)
        with self._settings_lock:  # the value and the snapshot change together
            self._assign(name, value)
            if self._settings is not None:  # (None while __init__ sets them one by one)
                self._settings = _Settings(self)

    def _assign(self, name: str, value: object) -> None:
        if name not in _TICKET_TIMING:
            object.__setattr__(self, name, value)
            return
        with self._replay_lock:  # as ticket_keys, which reads both to make the keys
            timing = {n: self.__dict__.get(n) for n in _TICKET_TIMING}
            timing[name] = value
            if None not in timing.values():  # both are set (in __init__, from the second on)
                rotation, lifetime = check_ticket_timing(
                    timing["ticket_key_rotation"], timing["ticket_lifetime"], names=_TICKET_TIMING
                )
                if self._ticket_keys is not None:  # the keys in use follow the settings
                    self._ticket_keys.set_timing(rotation, lifetime)
            object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name in _SETTINGS:
            raise AttributeError(f"the setting {name!r} of a nautilus.Context cannot be deleted")
        object.__delattr__(self, name)

    def prepare_key_shares(self) -> int:
        """Make, ahead of time, the ephemeral keys that the next handshakes need.

        A client's key share and the X25519 key of a server's reply do not
        depend on the peer. A connection takes a prepared one if there is one,
        and makes one on the spot otherwise. This call replaces the keys taken
        since the previous call (at most a few of each kind are kept, each is
        used once). The asyncio and socket adapters call it once a connection's
        handshake flight is sent, so the work is done while the peer computes
        its answer; sans-IO users may do the same, or never call it.

        Returns how many keys were made (0 when none were taken).

        Raises:
            nautilus.NautilusError: OpenSSL failed to make a key.
        """
        return self._key_pool.prepare()

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        expected_peer: PeerKey | str | None = None,
        do_handshake_on_connect: bool = True,
        server_name: str | None = None,
    ) -> NautilusSocket:
        """Wrap a connected (or, for clients, about to connect) TCP socket, like
        ``ssl.SSLContext.wrap_socket``; see :class:`nautilus.NautilusSocket`.

        Raises:
            as :func:`nautilus.sockets.wrap_socket`: TypeError, ValueError for
                bad arguments (before any I/O); OSError: the socket is closed
                or failed; nautilus.HandshakeError and subclasses, TimeoutError:
                (with ``do_handshake_on_connect``) the handshake failed, and
                the socket is closed.
        """
        from nautilus.sockets import wrap_socket

        return wrap_socket(
            self,
            sock,
            server_side=server_side,
            expected_peer=expected_peer,
            do_handshake_on_connect=do_handshake_on_connect,
            server_name=server_name,
        )

    @property
    def ticket_keys(self) -> TicketKeys:
        """(server) The ticket keys, made on first use."""
        with self._replay_lock:
            return self._ticket_keys_locked()

    def _ticket_keys_locked(self) -> TicketKeys:
        """The ticket keys, made if there are none yet (``_replay_lock`` held)."""
        if self._ticket_keys is None:
            self._ticket_keys = TicketKeys(self.ticket_key_rotation, self.ticket_lifetime)
        return self._ticket_keys

    def _hello_replayed(self, random: bytes, now: float, max_clock_skew: float) -> bool:
        """Record a client hello's random; True if it was seen within the window.

        Entries live for twice ``max_clock_skew``, the setting the connection
        checked the hello's timestamp with (any older hello is refused by its
        timestamp anyway); the cache is bounded, oldest out first.
        """
        return not self._seen_hellos.first_use(random, now + 2 * max_clock_skew + 1.0, now)

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a Context cannot be copied or pickled: its ticket keys, replay caches, "
            "session table and locks belong to its connections (a copy would share "
            "them); make a new Context with the same arguments"
        )

    def __repr__(self) -> str:
        who = self.identity.peer_id if self.identity is not None else "no identity"
        return f"<nautilus.Context {who} groups={list(self.groups)} ciphers={list(self.ciphers)}>"


_CONTEXTS: weakref.WeakSet[Context] = weakref.WeakSet()
"""Every Context of the process (for the fork hooks)."""


def _before_fork() -> None:
    """Before ``fork()``: a context that can serve makes its ticket keys now
    (they are made on first use otherwise), so that the children share them
    (see TicketKeys; a socketserver.ForkingMixIn parent never seals a ticket).
    A context whose lock another thread holds is left as it is."""
    for ctx in live_members(_CONTEXTS):
        if ctx._ticket_keys is not None or ctx.identity is None or ctx.resumption == "off":
            continue
        if ctx._replay_lock.acquire(timeout=_FORK_LOCK_WAIT):
            try:
                ctx._ticket_keys_locked()
            finally:
                ctx._replay_lock.release()


def _after_fork_in_child() -> None:
    for ctx in live_members(_CONTEXTS):
        ctx._early_zone = os.urandom(ZONE_SIZE)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
