"""``nautilus.Context``: configuration shared by many connections (like ``ssl.SSLContext``)."""

from __future__ import annotations

import math
import os
import platform
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from nautilus.identity import Identity, PeerKey, TrustStore
from nautilus.kem import GROUPS
from nautilus.protocol.keypool import KeyPool
from nautilus.protocol.steps import Handshake
from nautilus.record import CIPHERS, MAX_FRAGMENT
from nautilus.sessions import (
    MAX_TICKET_LIFETIME,
    EarlyDataReplayCache,
    ReplayCache,
    SessionCache,
    SessionTable,
    TicketKeys,
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
            raise ValueError(f"unknown {kind[:-1]} {item!r}; expected one of {', '.join(allowed)}")
        if item in out:
            raise ValueError(f"{kind[:-1]} {item!r} listed twice")
        out.append(item)
    if not out:
        raise ValueError(f"{kind} must not be empty")
    return tuple(out)


def _number(name: str, value: object, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return float(value)


def _integer(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


class Context:
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
        namespace: application id; both sides must use the same one.
        max_message_size: bound of one message of the message API.
        max_clock_skew: seconds a client hello's timestamp may differ from now.
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

    Raises:
        TypeError, ValueError: any argument of the wrong type or out of range,
            with a message naming it.
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
        namespace: str = "nautilus",
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
        if identity is not None and not isinstance(identity, Identity):
            raise TypeError(f"identity must be a nautilus.Identity, not {type(identity).__name__}")
        self.identity = identity
        self.trust = TrustStore(
            trusted_peers=trusted_peers,
            known_peers_file=known_peers_file,
            trusted_issuers=trusted_issuers,
        )
        self.groups = _names("groups", DEFAULT_GROUPS if groups is None else groups, GROUP_IDS)
        self.ciphers = _names(
            "ciphers", default_ciphers() if ciphers is None else ciphers, CIPHER_IDS
        )
        if client_auth not in CLIENT_AUTH_MODES:
            raise ValueError(f"client_auth must be one of {CLIENT_AUTH_MODES}, got {client_auth!r}")
        self.client_auth = client_auth
        self.handshake_timeout = _number("handshake_timeout", handshake_timeout, 0.001, 86400)
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not 1 <= len(namespace.encode()) <= 255:
            raise ValueError("namespace must be 1 to 255 bytes of UTF-8")
        self.namespace = namespace
        self.max_message_size = _integer("max_message_size", max_message_size, 1, 1 << 31)
        self.max_clock_skew = _number("max_clock_skew", max_clock_skew, 0.0, 86400)
        self.max_record_size = _integer(
            "max_record_size", max_record_size, MIN_RECORD_SIZE, MAX_FRAGMENT
        )
        self.key_update_records = _integer("key_update_records", key_update_records, 1, 1 << 22)
        self.key_update_bytes = _integer("key_update_bytes", key_update_bytes, 1, 1 << 40)
        self.rekey_interval = (
            None if rekey_interval is None else _number("rekey_interval", rekey_interval, 1e-3, 1e9)
        )
        if resumption not in RESUMPTION_MODES:
            raise ValueError(f"resumption must be one of {RESUMPTION_MODES}, got {resumption!r}")
        self.resumption = resumption
        if session_cache is not None and not isinstance(session_cache, SessionCache):
            raise TypeError(
                f"session_cache must be a nautilus.SessionCache, not {type(session_cache).__name__}"
            )
        self.session_cache = session_cache if session_cache is not None else SessionCache()
        self.ticket_lifetime = _number("ticket_lifetime", ticket_lifetime, 1.0, MAX_TICKET_LIFETIME)
        self.ticket_key_rotation = _number("ticket_key_rotation", ticket_key_rotation, 1.0, 1e9)
        self.tickets_per_handshake = _integer("tickets_per_handshake", tickets_per_handshake, 0, 8)
        if not isinstance(early_data, bool):
            raise TypeError(f"early_data must be a bool, not {type(early_data).__name__}")
        self.early_data = early_data
        self.max_early_data = _integer("max_early_data", max_early_data, 0, 1 << 20)
        self.early_data_window = _number("early_data_window", early_data_window, 0.0, 3600.0)
        self.sessions = SessionTable()
        """(server) The live sessions of this context, for operators."""
        self._ticket_keys: TicketKeys | None = None
        self._early_replay = EarlyDataReplayCache()
        if handshake is not None and not isinstance(handshake, Handshake):
            raise TypeError(f"handshake must be a Handshake, not {type(handshake).__name__}")
        self.handshake = handshake if handshake is not None else Handshake()
        self._replay_lock = threading.Lock()
        # A full hello cache forgets its oldest entry rather than refuse clients.
        self._seen_hellos = ReplayCache(REPLAY_CACHE_SIZE, evict_when_full=True)
        self._key_pool = KeyPool()

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
            TypeError, ValueError: bad arguments.
            nautilus.HandshakeError: (with ``do_handshake_on_connect``) the
                handshake failed; the socket is closed.
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
            if self._ticket_keys is None:
                self._ticket_keys = TicketKeys(self.ticket_key_rotation, self.ticket_lifetime)
            return self._ticket_keys

    def _hello_replayed(self, random: bytes, now: float) -> bool:
        """Record a client hello's random; True if it was seen within the window.

        Entries live for twice ``max_clock_skew`` (any older hello is refused
        by its timestamp anyway); the cache is bounded, oldest out first.
        """
        return not self._seen_hellos.first_use(random, now + 2 * self.max_clock_skew + 1.0, now)

    def __repr__(self) -> str:
        who = self.identity.peer_id if self.identity is not None else "no identity"
        return f"<nautilus.Context {who} groups={list(self.groups)} ciphers={list(self.ciphers)}>"
