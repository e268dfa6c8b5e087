"""Events a :class:`nautilus.Connection` reports through ``next_event()``.

Small frozen dataclasses, as in h11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nautilus.exceptions import NautilusError
    from nautilus.identity import PeerKey


@dataclass(frozen=True)
class SessionInfo:
    """What a completed handshake established."""

    role: str
    group: str
    cipher: str
    peer_key: PeerKey | None
    """The peer's identity key, or None for an unauthenticated client."""
    trust: str | None
    """How the peer was trusted: "expected", "pinned", "certificate",
    "known-peers", "first-use", or None when it was not authenticated."""
    namespace: str
    steps: tuple[str, ...]
    """Custom handshake steps that ran."""
    max_record_size: int
    resumed: bool = False

    @property
    def peer_id(self) -> str | None:
        """The peer's id (``did:key:...`` for Ed25519), or None."""
        return self.peer_key.peer_id if self.peer_key is not None else None


@dataclass(frozen=True)
class Event:
    """Base class of connection events."""


@dataclass(frozen=True)
class HandshakeCompleted(Event):
    session: SessionInfo


@dataclass(frozen=True)
class DataReceived(Event):
    data: bytes


@dataclass(frozen=True)
class MessageReceived(Event):
    """One whole message of the message API (``Connection.send_message``)."""

    data: bytes


@dataclass(frozen=True)
class KeysUpdated(Event):
    """The receiving (``direction="receive"``) or sending keys were ratcheted."""

    direction: str


@dataclass(frozen=True)
class AlertReceived(Event):
    code: int
    description: str


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The connection is over. ``error`` is None after a clean close_notify."""

    error: NautilusError | None = None
