"""Events a :class:`nautilus.Connection` reports through ``next_event()``.

Small frozen dataclasses, as in h11.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    "known-peers", "first-use", "resumed" (a resumed session whose peer was
    trusted, and is still, under the context's trust settings), or None when
    it was not authenticated or (a server without trust settings) any key
    was taken."""
    namespace: str
    steps: tuple[str, ...]
    """Custom handshake steps that ran."""
    max_record_size: int
    resumed: bool = False
    """True when the handshake resumed a session from a ticket."""
    early_data_accepted: bool = False
    """True when the server accepted the client's 0-RTT early data."""

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
class MessagesReceived(Event):
    """Whole messages of the message API (``Connection.send_messages``).

    One event carries the messages completed by a run of message records
    opened together: usually all that one ``receive_data()`` call brought
    (at least one message; one split across records comes with the run that
    completes it). Order is kept, within the tuple and with the other events.
    """

    messages: tuple[bytes, ...]
    nbytes: int = field(default=-1)
    """The messages' total size in bytes (their framing not counted); the
    Connection gives it, and it is counted here when not given."""

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            object.__setattr__(self, "nbytes", sum(map(len, self.messages)))


@dataclass(frozen=True)
class EarlyDataReceived(Event):
    """(Server) 0-RTT data sent with the client's first flight.

    **It may be a replay**: an attacker who recorded a client's first flight
    can send it again. Nautilus accepts each ticket's early data once per
    server context and only within a freshness window, but that does not
    stop a replay to another server holding the same ticket keys, nor one
    before this server saw the original. Act on early data only if doing so
    twice is harmless (idempotent requests), or wait for HandshakeCompleted.
    """

    data: bytes


@dataclass(frozen=True)
class EarlyDataRejected(Event):
    """(Client) the server did not accept the 0-RTT data given to ``start()``.

    None of it was processed, and the connection sends it again, as ordinary
    data, when the handshake completes: before anything written since, so the
    stream keeps its order and the server receives it exactly once. ``data``
    is all of it, for information (do not send it again).
    """

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
    """The connection is over. ``error`` is None after a clean close_notify.

    Reported once, for an end the connection learned of itself: the peer's
    close_notify (``error`` None) or alert, an error it detected, an EOF, the
    handshake timeout. A local ``Connection.close()`` queues no event.
    """

    error: NautilusError | None = None
