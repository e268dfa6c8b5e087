"""The sans-IO connection: bytes in, events and bytes out; no sockets, no clock.

The caller feeds received bytes to :meth:`Connection.receive_data`, takes
events from :meth:`Connection.next_event`, sends what
:meth:`Connection.data_to_send` returns, and drives the handshake timeout with
:meth:`Connection.get_timer` / :meth:`Connection.handle_timer`. ``now`` is always
UNIX time in seconds (``time.time()``), passed in by the caller.

A peer that misbehaves never makes ``receive_data`` raise: the connection sends
an alert (where that is safe), closes, and reports
``ConnectionClosed(error=...)`` with the named error. Misuse of the API (wrong
types, sending on a closed connection) raises at once. A local
:meth:`Connection.close` reports no event: the caller knows.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
import os
import struct
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NoReturn, TypeVar, cast

from nautilus import _bindings as _b
from nautilus.context import CIPHER_IDS, GROUP_IDS, Context
from nautilus.exceptions import (
    AuthenticationFailed,
    CertificateExpired,
    ClosedError,
    ConnectionLost,
    HandshakeError,
    HandshakeTimeout,
    IntegrityError,
    InvalidKey,
    KeyAgreementFailed,
    MessageTooLarge,
    NautilusError,
    NegotiationFailed,
    ProtocolViolation,
    RecordFormatError,
    RecordLimitReached,
    RecordTimeout,
    SessionKeyDerivationFailed,
)
from nautilus.identity import Certificate, PeerKey, TrustStore
from nautilus.kem import GROUPS, KEMPrivateKey
from nautilus.protocol import keyschedule as ks
from nautilus.protocol.codec import DecodeError
from nautilus.protocol.events import (
    AlertReceived,
    ConnectionClosed,
    DataReceived,
    EarlyDataReceived,
    EarlyDataRejected,
    Event,
    HandshakeCompleted,
    KeysUpdated,
    MessagesReceived,
    SessionInfo,
)
from nautilus.protocol.messages import (
    BINDER_SIZE,
    CLIENT_AUTH_MODES,
    MAX_HANDSHAKE_MESSAGE,
    MAX_PLAIN_FRAGMENT,
    PLAIN_HEADER_SIZE,
    PSK_MODES,
    RANDOM_SIZE,
    RECORD_ALERT_PLAIN,
    RECORD_HANDSHAKE_PLAIN,
    RECORD_SEALED,
    AlertCode,
    ClientAuth,
    ClientHello,
    EncryptedExtensions,
    Finished,
    HandshakeBuffer,
    HelloRetry,
    IdentityMsg,
    Message,
    MsgType,
    NewSessionTicket,
    PskMode,
    PskOffer,
    ServerHello,
    StepData,
    StepOffer,
    Verify,
    decode,
    frame,
)
from nautilus.protocol.state import (
    CONTENT_ALLOWED,
    HANDSHAKE_STATES,
    LOCAL_TRANSITIONS,
    PLAINTEXT_HANDSHAKE_STATES,
    State,
    transition,
)
from nautilus.protocol.steps import AuthenticationStep, HandshakeStep, StepContext
from nautilus.record import TAG_SIZE, ContentType, PackedOpen, RecordOpener, RecordSealer, _wipe
from nautilus.sessions import (
    _MAX_ADDRESS,
    MAX_EARLY_DATA,
    MAX_TICKET_LIFETIME,
    SessionCache,
    StoredTicket,
    TicketContents,
    _check_utf8_size,
)

__all__ = ["Connection", "ConnectionStats"]

log = logging.getLogger("nautilus.protocol")

_GROUP_BY_ID = {v: k for k, v in GROUP_IDS.items()}
_CIPHER_BY_ID = {v: k for k, v in CIPHER_IDS.items()}
_AUTH_MODE = {
    "off": ClientAuth.OFF,
    "optional": ClientAuth.OPTIONAL,
    "required": ClientAuth.REQUIRED,
}
_SERVER_VERIFY = b"nautilus1 server verify\x00"
_CLIENT_VERIFY = b"nautilus1 client verify\x00"
_HANDSHAKE_RECORD = 16384
# Most early records a client may announce: MAX_EARLY_DATA in full records.
_MAX_EARLY_RECORDS = -(-MAX_EARLY_DATA // _HANDSHAKE_RECORD)
_BUDGET_MARGIN = 64
# Message API frames: a 4-byte big-endian length, then the message.
_pack_length = struct.Struct(">I").pack
_unpack_length = struct.Struct(">I").unpack_from
# The message lane (_take_message, _seal_message) calls the C core directly.
_from_buffer, _nt_open_message, _nt_seal_message = (_b.from_buffer, _b.nt_open_message,
                                                    _b.nt_seal_message)  # fmt: skip
_NT_OK, _NT_DUE, _RECORD_OVERHEAD = _b.NT_OK, _b.NT_DUE, _b.RECORD_OVERHEAD
_NT_NOT_ONE_RECORD, _NT_NOT_ONE_MESSAGE = _b.NT_NOT_ONE_RECORD, _b.NT_NOT_ONE_MESSAGE
_FRAMED_OVERHEAD = 4 + _RECORD_OVERHEAD  # a message's length prefix and its record's overhead
# The members read on every record and every call, named once: before Python
# 3.12, an enum class's __getattr__ makes reading a member from it cost about
# 90 ns (some 800 instructions), ten times a module global.
_CONNECTED, _CLOSED = State.CONNECTED, State.CLOSED
_START_STATES = (State.CLIENT_START, State.SERVER_START)
_APPLICATION_DATA, _MESSAGE = ContentType.APPLICATION_DATA, ContentType.MESSAGE
_CONNECTED_CONTENT = CONTENT_ALLOWED[_CONNECTED]
# The handshake messages sent before any key exists; all others are sealed.
_PLAINTEXT_MESSAGES = frozenset({MsgType.CLIENT_HELLO, MsgType.HELLO_RETRY, MsgType.SERVER_HELLO})


def _message_size(message: bytes | bytearray | memoryview) -> int:
    return message.nbytes if isinstance(message, memoryview) else len(message)


_M = TypeVar("_M")


def _iter_messages(messages: Iterable[_M]) -> Iterator[_M]:
    """An iterator over ``messages``, the argument of a ``send_messages()``.

    Raises:
        TypeError: ``messages`` is one bytes-like object or a str, or not
            iterable (naming the argument, not Python's own message).
    """
    if isinstance(messages, (bytes, bytearray, memoryview, str)):
        raise TypeError("messages must be an iterable of bytes-like objects, not one object")
    try:
        return iter(messages)
    except TypeError:
        raise TypeError(
            f"messages must be an iterable of bytes-like objects, not {type(messages).__name__}"
        ) from None


def _frame_each(messages: Iterable[bytes | bytearray | memoryview], limit: int) -> bytes:
    """Frame ``messages`` one by one (any iterable; the checks say what is wrong)."""
    pack = _pack_length
    parts: list[bytes | bytearray | memoryview] = []
    add = parts.append
    for m in _iter_messages(messages):
        if type(m) is bytes or isinstance(m, (bytes, bytearray)):  # the common case first
            n = len(m)
        elif isinstance(m, memoryview):
            if not m.c_contiguous:
                raise TypeError("a message must be a contiguous buffer (this memoryview is not)")
            n = m.nbytes
        else:
            raise TypeError(f"a message must be bytes-like, not {type(m).__name__}")
        if n > limit:
            _refuse_message(n, limit)
        add(pack(n))
        add(m)
    return b"".join(parts)  # b"" for no messages


def _byte_view(data: memoryview) -> memoryview:
    """``data`` as a flat view of unsigned bytes (receive_data: any format, any shape).

    Raises:
        TypeError: not C-contiguous (its bytes are not one run).
    """
    if not data.c_contiguous:
        raise TypeError("data must be a contiguous buffer (this memoryview is not C-contiguous)")
    try:
        return data.cast("B")
    except (TypeError, ValueError):  # a format cast() does not take: copy the bytes
        return memoryview(data.tobytes())


def _rekey_at(last: float, interval: float) -> float | None:
    """When sending keys that last changed at ``last`` are due for renewal
    (``rekey_interval``): a time after ``last`` even where ``interval`` is below
    the spacing of floats there (around 10**15, a 0.001 s interval vanishes in
    the sum), or None past MAX_NOW, which no accepted ``now`` reaches."""
    at = last + interval
    if at <= last:
        at = math.nextafter(last, math.inf)
    return at if at <= MAX_NOW else None


_HELLO_SIZES: dict[tuple[object, ...], int] = {}
"""Encoded ClientHello body sizes (without a key share or a ticket's offer),
by what they depend on (see _send_client_hello); at most _HELLO_SIZES_KEPT."""
_HELLO_SIZES_KEPT = 64


def _refuse_message(n: int, limit: int) -> NoReturn:
    raise MessageTooLarge(f"a message of {n} bytes exceeds max_message_size ({limit} bytes)")


MAX_PEER_KEY_UPDATES = 64
"""Most key updates a peer may send in a row without application data or
messages in between (within one second of ``now``): more is a protocol
violation (unexpected_message), as in BoringSSL. Each costs two ratchets."""
_TAIL_RECORDS = 64
"""Most records a closed client reads for the server's tickets (Connection.close)."""
_CLOCK_WENT_BACK = 1.0
"""(rekey_interval) A ``now`` over this much before the sending keys last
changed means the clock went back: they are renewed (as ticket keys are).
(handshake_timeout) One over this much before ``start()`` too: the timeout
counts again from that ``now``."""
MAX_NOW = 1e15
"""Latest ``now`` accepted (UNIX seconds, some 31 million years): a ClientHello
carries the time in milliseconds as a u64. Earlier than 0 is refused too."""
# The largest client key share, and a ticket's PskOffer less the ticket
# (mode, ticket<16> length, age, early records, binder).
_MAX_SHARE = max(cls.PUBLIC_KEY_CLASS.public_bytes_length() for cls in GROUPS.values())
_PSK_OFFER_SIZE = 1 + 2 + 4 + 4 + BINDER_SIZE
# StepData = id<8> + payload<24> inside a handshake message of at most MAX_HANDSHAKE_MESSAGE.
_MAX_STEP_PAYLOAD = MAX_HANDSHAKE_MESSAGE - 1 - 255 - 3
_REMOTE_ALERT_ERRORS: dict[int, type[NautilusError]] = {
    AlertCode.NEGOTIATION_FAILED: NegotiationFailed,
    AlertCode.PROTOCOL_VERSION: NegotiationFailed,
    AlertCode.NAMESPACE_MISMATCH: NegotiationFailed,
    AlertCode.AUTHENTICATION_FAILED: AuthenticationFailed,
    AlertCode.CERTIFICATE_EXPIRED: CertificateExpired,
    AlertCode.UNTRUSTED_PEER: AuthenticationFailed,
    AlertCode.WRONG_PEER: AuthenticationFailed,
    AlertCode.DECRYPT_ERROR: AuthenticationFailed,
    AlertCode.CERTIFICATE_REQUIRED: AuthenticationFailed,
    AlertCode.ILLEGAL_PARAMETER: KeyAgreementFailed,
    AlertCode.KEY_DERIVATION_FAILED: SessionKeyDerivationFailed,
    AlertCode.HANDSHAKE_TIMEOUT: HandshakeTimeout,
    AlertCode.RECORD_TIMEOUT: RecordTimeout,
    AlertCode.UNEXPECTED_MESSAGE: ProtocolViolation,
    AlertCode.DECODE_ERROR: ProtocolViolation,
    AlertCode.RECORD_OVERFLOW: ProtocolViolation,
    AlertCode.STALE_HELLO: ProtocolViolation,
    AlertCode.REPLAYED_HELLO: ProtocolViolation,
}


@dataclass(frozen=True)
class ConnectionStats:
    """Counters of a connection (``Connection.stats``)."""

    started: float
    """When the handshake completed (UNIX time; 0 before)."""
    bytes_sent: int
    """Application bytes (stream data and framed messages) sent."""
    bytes_received: int
    key_updates: int
    """Key updates, both directions."""
    last_key_update: float | None


class _Abort(Exception):
    """Internal: stop processing, send ``alert``, close with ``error``."""

    def __init__(self, error: NautilusError, alert: AlertCode | None) -> None:
        super().__init__(_exception_text(error))
        self.error = error
        self.alert = alert


def _exception_text(exc: BaseException) -> str:
    """``str(exc)`` for a message, whatever ``exc`` is: an exception raised by
    outside code (a step's hook, a trust rule) may have a ``__str__`` that
    raises, which must not stop the connection from failing cleanly."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"


def _reentered(call: str) -> NoReturn:
    raise RuntimeError(
        f"{call}() called by a handshake step hook or trust rule of this same "
        "connection: they run inside its start() or receive_data(), which cannot "
        "be entered again (close() is allowed)"
    )


def _abort(cls: type[NautilusError], alert: AlertCode | None, message: str) -> NoReturn:
    raise _Abort(cls(message), alert)


def _format_abort(src: bytes | bytearray | memoryview, pos: int, limit: int) -> _Abort:
    """The failure for the record at ``src[pos:]`` that the record layer found
    malformed (RecordFormatError), given the opener's largest content ``limit``."""
    rtype = src[pos]
    if rtype in (RECORD_ALERT_PLAIN, RECORD_HANDSHAKE_PLAIN):
        return _Abort(
            ProtocolViolation("unexpected_message: plaintext record after key agreement"),
            AlertCode.UNEXPECTED_MESSAGE,
        )
    if rtype != RECORD_SEALED:
        return _Abort(
            ProtocolViolation(f"decode_error: unknown record type 0x{rtype:02x}"),
            AlertCode.DECODE_ERROR,
        )
    length = int.from_bytes(src[pos + 1 : pos + PLAIN_HEADER_SIZE], "big")
    most = limit + 1 + TAG_SIZE
    if length > most:
        return _Abort(
            ProtocolViolation(
                f"record_overflow: a sealed record of {length} bytes (at most {most} accepted)"
            ),
            AlertCode.RECORD_OVERFLOW,
        )
    if length < 1 + TAG_SIZE:
        return _Abort(
            ProtocolViolation(f"decode_error: a sealed record of {length} bytes is too short"),
            AlertCode.DECODE_ERROR,
        )
    return _Abort(
        ProtocolViolation("decode_error: a sealed record without a content type"),
        AlertCode.DECODE_ERROR,
    )


@functools.lru_cache(maxsize=256)
def _peer_id_hash(peer_id: str) -> bytes:
    """SHA-256 of a peer id: what a ClientHello names as the server it
    expects, and what a ticket names as the server that issued it. (Kept:
    a server hashes its own id for every ticket it makes or opens.)"""
    return hashlib.sha256(peer_id.encode()).digest()


def _check_client_arguments(server_name: object, expected_peer: object) -> None:
    """A client Connection's ``server_name`` and ``expected_peer``, checked as
    its constructor does (an adapter checks them before it connects, and
    makes the Connection once the TCP connection is made).

    Raises:
        TypeError, ValueError: as :class:`Connection` says.
    """
    if server_name is not None and not isinstance(server_name, str):
        raise TypeError(f"server_name must be a str, not {type(server_name).__name__}")
    if server_name == "":
        raise ValueError("server_name must not be empty (None: no name)")
    if server_name is not None:
        _check_server_name(server_name)
    if expected_peer is not None and not isinstance(expected_peer, (PeerKey, str)):
        raise TypeError("expected_peer must be a PeerKey or a peer id string")
    if isinstance(expected_peer, str):
        from nautilus.identity import parse_peer_id

        parse_peer_id(expected_peer)


def _check_server_name(name: str) -> None:
    """Refuse a server_name holding a control or format character (NUL, a
    newline, a tab, DEL, a bidirectional override...) or a line or paragraph
    separator: as a certificate's subject name may not, and as no name the
    known-peers file records may. Spaces are allowed (a certificate's name may
    have them: a server_name must be able to equal it).

    Also refuse one over 512 bytes of UTF-8, the most a session cache's key
    takes (a host name has at most 253 bytes; "host:port" 259).

    Raises:
        ValueError: naming the first such character and where it is, or the
            name's size (not the name: it may be megabytes).
    """
    _check_utf8_size("server_name", name, _MAX_ADDRESS)  # (the session cache keys tickets by it)
    if name.isprintable():  # (the common case: nothing refused, in one call)
        return
    for i, char in enumerate(name):
        category = unicodedata.category(char)
        if category[0] == "C" or category in ("Zl", "Zp"):
            raise ValueError(
                "server_name must not contain control or format characters (NUL, "
                f"newlines, tabs...): it holds U+{ord(char):04X} at index {i} (the "
                "adapters' default server_name is the address's 'host:port')"
            )


def _plain_record(rtype: int, payload: bytes) -> bytes:
    return bytes([rtype]) + len(payload).to_bytes(3, "big") + payload


class Connection:
    """One Nautilus connection, client or server side, without I/O.

    Args:
        context: the shared :class:`nautilus.Context`.
        role: ``"client"`` or ``"server"``.
        server_name: (client) the name the known-peers file records the server
            under, usually ``"host:port"``; not empty, and without control or
            format characters (spaces are allowed: a certificate's name may
            have them).
        expected_peer: (client) the peer the client means to reach; any other
            key fails the handshake.

    Raises:
        TypeError, ValueError: bad arguments (a server context without an
            identity, ``expected_peer`` on a server, a ``server_name`` that
            is empty, holds a control character or is over 512 bytes of
            UTF-8, ...).
    """

    # Slots: CPython keeps no per-instance dict, and its attribute reads on the
    # per-record paths stay specialized (an instance dict this large is not).
    __slots__ = (
        "__weakref__",
        "_agreed",
        "_auth_step",
        "_authenticated",
        "_batch_type",
        "_budget",
        "_bytes_received",
        "_bytes_sent",
        "_cfg",
        "_cipher",
        "_client",
        "_client_auth",
        "_ctx",
        "_data_views",
        "_deadline",
        "_early_accepted",
        "_early_bytes",
        "_early_left",
        "_early_limit",
        "_early_opener",
        "_early_sent",
        "_early_skip",
        "_error",
        "_events",
        "_expected_finished",
        "_expected_peer",
        "_flight",
        "_flush_hook",
        "_group",
        "_hello",
        "_hs",
        "_in",
        "_in_hook",
        "_keep_input",
        "_kem",
        "_key_updates",
        "_keys",
        "_last_any_update",
        "_last_update",
        "_lent",
        "_lent_events",
        "_messages",
        "_now",
        "_offered_mode",
        "_opener",
        "_out",
        "_peer_cert",
        "_peer_key",
        "_peer_payloads",
        "_peer_updates",
        "_pending",
        "_psk_keys",
        "_psk_mode",
        "_record_size",
        "_resumed",
        "_retried",
        "_role",
        "_scratch",
        "_scratch_ptr",
        "_sealer",
        "_send_fragment",
        "_sent_at_update",
        "_server_name",
        "_session",
        "_started",
        "_state",
        "_step_state",
        "_steps",
        "_ticket",
        "_tickets_kept",
        "_tickets_tail",
        "_took_keys",
        "_transcript",
        "_trust",
        "_unread",
        "_updates_asked",
        "_updates_mark",
        "_updates_since",
    )

    def __init__(
        self,
        context: Context,
        role: str = "client",
        *,
        server_name: str | None = None,
        expected_peer: PeerKey | str | None = None,
    ) -> None:
        if not isinstance(context, Context):
            raise TypeError(f"context must be a nautilus.Context, not {type(context).__name__}")
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        # The context's settings as they are now: this connection reads them
        # only here, whatever other threads assign to the context meanwhile.
        cfg = context._settings
        assert cfg is not None  # (None only inside Context.__init__)
        if role == "server" and cfg.identity is None:
            raise ValueError("a server needs a context with an identity")
        if role == "server" and (expected_peer is not None or server_name is not None):
            raise ValueError("expected_peer and server_name apply to clients only")
        _check_client_arguments(server_name, expected_peer)
        self._ctx = context
        self._cfg = cfg
        self._in_hook = False  # outside code (a step hook, a trust rule) is running
        self._role = role
        self._client = role == "client"
        self._server_name = server_name
        self._expected_peer = expected_peer
        self._state = State.CLIENT_START if self._client else State.SERVER_START
        self._events: deque[Event] = deque()
        self._out: list[bytes | bytearray] = []  # joined once by data_to_send()
        self._in = bytearray()
        self._scratch = bytearray()
        self._scratch_ptr: object = None  # its C pointer, kept by _take_message
        # Set by the asyncio adapter for an application that copies what it
        # gets (asyncio's StreamReaderProtocol): DataReceived.data is then a
        # memoryview of _scratch, not a copy; _lent says one is out, so that
        # _scratch is not written again until the adapter has delivered it
        # (and cleared _lent).
        self._data_views = False
        self._lent = False
        self._lent_events: list[DataReceived] = []  # those lent since _lent was set
        # Set by the asyncio adapter, which reads into a buffer of its own: an
        # incomplete record at the end of what receive_data() gets is left
        # there (its length in _unread) rather than copied to _in; the
        # adapter presents it again with the bytes that follow.
        self._keep_input = False
        self._unread = 0
        self._hs = HandshakeBuffer()
        self._transcript = hashlib.sha256()
        self._keys: ks.KeySchedule | None = None
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None
        # What the sending key may still seal before it is updated: records (less
        # a margin for the few records, alerts and tickets, it does not count)
        # and bytes. The fast paths seal within it in C, which counts it down.
        self._budget = _b.new_budget()
        self._now = 0.0
        self._deadline: float | None = None
        self._session: SessionInfo | None = None
        self._error: NautilusError | None = None
        self._pending: list[tuple[int, bytes | bytearray]] = []
        self._batch_type: int = _APPLICATION_DATA
        self._messages = bytearray()
        self._steps: tuple[HandshakeStep, ...] = cfg.handshake.custom_steps
        self._auth_step = cfg.handshake.authentication
        self._agreed: list[HandshakeStep] = []
        self._step_state: dict[str, StepContext] = {}
        self._peer_payloads: dict[str, bytes] = {}
        self._peer_key: PeerKey | None = None
        self._peer_cert: Certificate | None = None
        self._trust: str | None = None
        # (server) When the session's full handshake authenticated it: tickets
        # of a resumed session carry the one of the ticket it resumed.
        self._authenticated: float | None = None
        self._kem: KEMPrivateKey | None = None
        # Took a key from the context's pool: the adapter calls
        # Context.prepare_key_shares() once this side's flight is sent.
        self._took_keys = False
        self._flight: list[bytes] | None = None  # held handshake messages (_hold_flight)
        # Set by the I/O adapters: called with the server's ServerHello as soon
        # as it is made, so the client decapsulates while this side signs and
        # seals the rest of its flight; then with that rest, before it derives
        # its application keys and makes its tickets. A client calls it with its
        # flight, before it switches to its application keys. It must take the
        # bytes and not raise.
        self._flush_hook: Callable[[bytes | bytearray], None] | None = None
        self._hello: ClientHello | None = None
        # server: the client Finished that tickets sent with the flight assumed
        self._expected_finished = b""
        self._retried = False
        self._group = ""
        self._cipher = ""
        self._client_auth = ClientAuth.OFF
        # The record size this side announces and accepts.
        self._record_size = cfg.max_record_size
        self._send_fragment = min(self._record_size, _HANDSHAKE_RECORD)
        # Resumption and early data.
        self._resumed = False
        self._ticket: StoredTicket | None = None  # client: the ticket offered
        self._tickets_kept = 0  # client: tickets of this connection stored in the cache
        # client, closed: records it still reads for the server's tickets
        # (_read_after_close); 0 once it reads nothing more
        self._tickets_tail = 0
        self._psk_keys: ks.KeySchedule | None = None
        self._psk_mode = PskMode.NONE
        self._offered_mode = PskMode.NONE  # client: the mode its ClientHello offers
        self._early_sent = b""  # client: early data in flight, until accepted/rejected
        self._early_accepted = False
        self._early_opener: RecordOpener | None = None  # server
        self._early_left = 0  # server: early records still to open
        self._early_skip = 0  # server: refused early records still to skip
        self._early_bytes = 0
        self._early_limit = 0
        # Counters (Connection.stats).
        self._started = 0.0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._key_updates = 0
        # The peer's key updates in a row (_on_key_update): how many, since
        # when, and the bytes received when the count began; and the answers
        # owed to our own requests.
        self._peer_updates = 0
        self._updates_asked = 0
        self._updates_since = 0.0
        self._updates_mark = 0
        self._last_update: float | None = None  # when our sending keys last changed
        self._sent_at_update = 0  # _bytes_sent then (rekey_interval: were they used since?)
        self._last_any_update: float | None = None

    # ----------------------------------------------------------------- public API

    @property
    def role(self) -> str:
        """``"client"`` or ``"server"``."""
        return self._role

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def handshake_complete(self) -> bool:
        """True once the handshake has completed (and until closed)."""
        return self._state is _CONNECTED

    @property
    def is_closed(self) -> bool:
        return self._state is _CLOSED

    @property
    def session(self) -> SessionInfo | None:
        """What the handshake established, once it has completed."""
        return self._session

    @property
    def error(self) -> NautilusError | None:
        """Why the connection failed, if it did."""
        return self._error

    def start(self, now: float, *, early_data: bytes | None = None) -> None:
        """Begin: a client sends its hello; both arm the handshake timer.

        Args:
            now: the time (UNIX seconds).
            early_data: (client) application data to send with the first
                flight as 0-RTT early data, when the context allows it and a
                ticket permits it; otherwise it is sent once the handshake
                completes. If the server refuses it, ``EarlyDataRejected``
                reports it, and it is sent again as ordinary data when the
                handshake completes (before anything written since). Early
                data can be replayed by an attacker: only send what is safe to
                process twice.

        Raises:
            TypeError: ``now`` is not a number, ``early_data`` not bytes.
            ValueError: ``now`` outside 0..MAX_NOW (1e15 s: the ClientHello
                carries it in milliseconds as a u64), ``early_data`` on a
                server, or a ClientHello that cannot be encoded. Nothing was
                changed: the connection can start again.
            ClosedError: already started.
            RuntimeError: called by a handshake step hook or trust rule of
                this connection.
            BaseException: one that is not an ``Exception`` (KeyboardInterrupt,
                SystemExit, asyncio.CancelledError...) raised by a trust rule
                (or a signal handler) while this ran propagates, once the
                connection has failed locally (see :meth:`receive_data`).
        """
        if self._in_hook:
            _reentered("start")
        if early_data is not None:
            if self._role != "client":
                raise ValueError("early_data is for clients")
            if not isinstance(early_data, (bytes, bytearray, memoryview)):
                raise TypeError(f"early_data must be bytes-like, not {type(early_data).__name__}")
        nxt = LOCAL_TRANSITIONS.get((self._state, "start"))
        if nxt is None:
            raise ClosedError(f"start() called in state {self._state.value}")
        previous = self._now
        self._set_now(now)  # (checked after the rest: a refused call keeps the clock)
        try:
            if self._client:
                self._send_client_hello(bytes(early_data) if early_data else b"")
        except _Abort as abort:
            self._fail(abort.error, abort.alert)
            return
        except Exception:
            self._now = previous  # (a hello that cannot be encoded: nothing changed)
            raise
        except BaseException as exc:  # KeyboardInterrupt...: fail, then let it go on
            self._interrupted(exc, "start")
            raise
        if self._state is _CLOSED:
            return  # closed meanwhile (a trust rule called close()): it stays closed
        self._deadline = self._now + self._cfg.handshake_timeout
        self._set_state(nxt)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> None:
        """Feed bytes received from the peer.

        ``data`` may be a memoryview of any format and shape: its bytes are read.

        Raises:
            TypeError: ``data`` is not bytes-like, or a memoryview that is not
                C-contiguous.
            ValueError: ``now`` is out of range (see :meth:`start`).
            ClosedError: ``start()`` was not called.
            RuntimeError: called by a handshake step hook or trust rule of
                this connection (which runs inside this connection's
                ``start()`` or ``receive_data()``).
            BaseException: one that is not an ``Exception`` (KeyboardInterrupt,
                SystemExit, asyncio.CancelledError...) raised by a handshake
                step hook or trust rule (or a signal handler) while this ran.
                It says nothing about the peer, but what was under way is
                lost: the connection fails locally first (an internal_error
                alert queued, closed, ``ConnectionClosed`` with a
                HandshakeError, or ConnectionLost once connected, whose
                ``__cause__`` is the exception), then it propagates.
        """
        if self._in_hook:
            _reentered("receive_data")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if type(data) is memoryview and (
            data.format != "B" or data.ndim != 1 or not data.c_contiguous
        ):
            data = _byte_view(data)  # below, len() and slices count bytes
        if now is not None:
            self._set_now(now)
        if self._state in _START_STATES:
            raise ClosedError("call start(now) before receive_data()")
        self._unread = 0
        if self._state is _CLOSED:
            if self._tickets_tail:
                self._read_after_close(data)
            return
        try:
            buf = self._in
            if (
                buf
                and self._state is _CONNECTED
                and buf[0] == RECORD_SEALED
                and len(buf) >= PLAIN_HEADER_SIZE
                and type(data) in (bytes, memoryview)
            ):
                # A record cut by the previous read: complete it with only the
                # bytes it lacks, so the rest can take the direct path below.
                need = PLAIN_HEADER_SIZE + int.from_bytes(buf[1:4], "big") - len(buf)
                if 0 < need < len(data):
                    buf += memoryview(data)[:need]
                    self._process_input()
                    if self.is_closed:
                        return
                    data = memoryview(data)[need:]
            if (
                not buf
                and type(data) in (bytes, memoryview)
                and data
                and data[0] == RECORD_SEALED
                and self._state is _CONNECTED
            ):
                # Nothing buffered: open the records straight from ``data`` and
                # keep only what is left (an incomplete record, or what follows
                # a key update).
                used = self._open_records(data)
                if self.is_closed:
                    return
                if used == len(data):
                    return  # all taken: nothing buffered, nothing left to process
                if self._keep_input and self._incomplete(data, used):
                    self._unread = len(data) - used  # the caller keeps it
                else:
                    self._in += memoryview(data)[used:]
            else:
                self._in += data
            self._process_input()
            if (
                self._keep_input
                and buf
                and len(buf) <= len(data)
                and self._incomplete(buf, 0)
                and not (self._early_skip or self._early_left)
            ):
                # An incomplete record, the end of ``data``: the caller keeps it.
                self._unread = len(buf)
                buf.clear()
        except Exception as exc:
            self._receive_failed(exc)
        except BaseException as exc:  # KeyboardInterrupt...: fail, then let it go on
            self._interrupted(exc, "receive_data")
            raise

    def _receive_failed(self, exc: Exception) -> None:
        """What received bytes raised: the connection fails with the alert that
        names it; an exception that is not Nautilus's (a bug) propagates."""
        if isinstance(exc, _Abort):
            self._fail(exc.error, exc.alert)
        elif isinstance(exc, DecodeError):
            self._fail(exc, AlertCode.RECORD_OVERFLOW if exc.overflow else AlertCode.DECODE_ERROR)
        elif isinstance(exc, ProtocolViolation):
            self._fail(exc, AlertCode.UNEXPECTED_MESSAGE)
        elif isinstance(exc, NautilusError):  # a local failure (OpenSSL...): the peer must
            self._fail(exc, AlertCode.INTERNAL_ERROR)  # not take the end for a clean close
        else:
            raise exc

    def _interrupted(self, exc: BaseException, call: str) -> None:
        """``call`` was interrupted by ``exc``, not an Exception: a hook or a
        trust rule raised KeyboardInterrupt, SystemExit, asyncio.CancelledError...
        Not the peer's doing, but what was under way (a flight, a record) is
        lost: fail the connection locally before ``exc`` propagates."""
        if self._state is _CLOSED:
            return  # (a hook closed it before raising: it stays as it was closed)
        handshake = self._state in HANDSHAKE_STATES
        cls = HandshakeError if handshake else ConnectionLost
        error = cls(
            f"{call}() was interrupted by {type(exc).__name__} (raised by a handshake step "
            "hook, a trust rule or a signal handler): the connection failed locally"
        )
        error.__cause__ = exc
        # Nothing was sent before start() queued the hello: no alert either.
        said = self._out or self._state not in _START_STATES
        self._fail(error, AlertCode.INTERNAL_ERROR if said else None)

    def _incomplete(self, data: bytes | bytearray | memoryview, pos: int) -> bool:
        """Whether ``data[pos:]`` is the start of a sealed record, and only that."""
        left = len(data) - pos
        return (
            left > 0
            and data[pos] == RECORD_SEALED
            and self._state is _CONNECTED
            and (
                left < PLAIN_HEADER_SIZE
                or left < PLAIN_HEADER_SIZE + int.from_bytes(data[pos + 1 : pos + 4], "big")
            )
        )

    def receive_eof(self) -> None:
        """The peer closed its side of the transport.

        Raises:
            ClosedError: ``start()`` was not called (as for receive_data).
        """
        if self._state in _START_STATES:
            raise ClosedError("call start(now) before receive_eof()")
        if self._state is _CLOSED:
            self._end_after_close()
            return
        if self._state is _CONNECTED:
            err: NautilusError = ConnectionLost(
                "the peer closed the connection without close_notify: data may be truncated"
            )
        else:
            err = HandshakeError("the peer closed the connection during the handshake")
        self._fail(err, None)

    def next_event(self) -> Event | None:
        """The next event, or None when there is none."""
        return self._events.popleft() if self._events else None

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Queue application data; sealed at once, or when the handshake completes.

        Raises:
            TypeError: ``data`` is not bytes-like.
            ClosedError: the connection is closed (``error`` says why, if it failed).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if isinstance(data, memoryview) and not data.c_contiguous:
            raise TypeError("data must be a contiguous buffer")
        if self._state is _CLOSED:
            raise ClosedError("the connection is closed") from self._error
        if not data:
            return
        if self._state is not _CONNECTED:
            self._pending.append((_APPLICATION_DATA, bytes(data)))
            return
        self._seal_application(data, _APPLICATION_DATA)

    def send_message(self, message: bytes | bytearray | memoryview) -> None:
        """Send one message of the message API (delivered whole, in MessagesReceived).

        Messages travel in their own record type, so they may be mixed with
        :meth:`send_data`; each is at most the context's ``max_message_size``.

        Raises:
            TypeError: not bytes-like.
            nautilus.MessageTooLarge: over ``max_message_size``; nothing was sent
                and the connection stays usable.
            ClosedError: the connection is closed.
        """
        self.send_messages((message,))

    def send_messages(self, messages: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send many messages at once: they are framed together and sealed in one call.

        All or nothing: every message is checked before any is sent.

        Raises:
            as :meth:`send_message`.
        """
        self._seal_messages(self._frame_messages(messages))

    def _frame_messages(
        self, messages: Iterable[bytes | bytearray | memoryview]
    ) -> bytes | bytearray:
        """The first half of :meth:`send_messages`: check and frame ``messages``
        (their 4-byte lengths and contents back to back), sealing nothing.
        The asyncio transport collects what it frames in one loop iteration and
        has :meth:`_seal_messages` seal it together (fewer, fuller records).

        Raises:
            as :meth:`send_message`.
        """
        limit = self._cfg.max_message_size
        framed: bytes | bytearray | None = None
        if isinstance(messages, (list, tuple)):
            if len(messages) == 1 and type(one := messages[0]) is bytes:
                # One message (request/response): framed without the loop.
                if len(one) > limit:
                    _refuse_message(len(one), limit)
                framed = _pack_length(len(one)) + one
            else:  # a burst: framed in C, no Python step per message
                packed = _b.frames_pack(messages, limit)
                if isinstance(packed, int):  # the index of the first message over the limit
                    _refuse_message(_message_size(messages[packed]), limit)
                framed = packed
        if framed is None:  # not a list or tuple of single-byte buffers: one at a time
            framed = _frame_each(messages, limit)
        if self._state is _CLOSED:
            raise ClosedError("the connection is closed") from self._error
        return framed

    def _seal_messages(self, framed: bytes | bytearray) -> None:
        """The second half of :meth:`send_messages`: seal framed messages (from
        :meth:`_frame_messages`, one or more calls' joined), or queue them
        until the handshake completes.

        Raises:
            ClosedError: the connection is closed.
        """
        if self._state is _CLOSED:
            raise ClosedError("the connection is closed") from self._error
        if not framed:
            return
        if self._state is not _CONNECTED:
            self._pending.append((_MESSAGE, framed))
            return
        self._seal_application(framed, _MESSAGE)

    def _take_output(self) -> bytes | bytearray:
        """Like :meth:`data_to_send`, without copying a single sealed buffer
        (for the adapters, whose transports take any bytes-like object)."""
        chunks = self._out
        if not chunks:
            return b""
        out = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return out

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport (and forget)."""
        chunks = self._out
        if not chunks:
            return b""
        out = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (UNIX time), or None:
        the handshake deadline, then (with ``rekey_interval``) the next key update."""
        if self._state in HANDSHAKE_STATES:
            deadline = self._deadline
            if deadline is None:
                return None
            if self._handshake_clock_went_back(deadline):
                return self._now  # handle_timer() counts again from now
            return min(deadline, MAX_NOW)
        return self._rekey_time() if self._state is _CONNECTED else None

    def _handshake_clock_went_back(self, deadline: float) -> bool:
        """Whether ``now`` is over a second before :meth:`start` (the handshake
        ``deadline`` less its timeout): the clock went back."""
        return self._now < deadline - self._cfg.handshake_timeout - _CLOCK_WENT_BACK

    def handle_timer(self, now: float) -> None:
        """Fire the timer if ``now`` is at or past :meth:`get_timer`: the
        handshake timeout, or (connected, with ``rekey_interval``) the renewal
        of the sending keys. Called at the time ``get_timer()`` returned, it
        fires: the next ``get_timer()`` is later, or None.

        Raises:
            TypeError: ``now`` is not a number.
            ValueError: ``now`` is out of range (see :meth:`start`).
        """
        self._set_now(now)
        # Each fires at the time get_timer() told, compared as it was told: a
        # timer that handle_timer(get_timer()) did not fire would stay due, a
        # busy loop for the caller.
        due = self.get_timer()  # (clamped to MAX_NOW; with the clock set by now)
        if due is None or now < due:
            return
        if self._state in HANDSHAKE_STATES:
            deadline = self._deadline
            assert deadline is not None  # (get_timer() is None otherwise)
            if self._handshake_clock_went_back(deadline):
                # The deadline, by the old clock, would keep a stalled
                # handshake for as long as the clock went back. Its age is
                # unknown: it gets one handshake_timeout more, from now.
                self._deadline = now + self._cfg.handshake_timeout
                return
            self._fail(
                HandshakeTimeout(
                    f"the handshake did not complete within {self._cfg.handshake_timeout:g} s"
                ),
                AlertCode.HANDSHAKE_TIMEOUT,
            )
        else:  # (connected, with rekey_interval: get_timer() is None otherwise)
            self._rekey()

    @property
    def stats(self) -> ConnectionStats:
        """Counters of this connection (application bytes, key updates)."""
        return ConnectionStats(
            started=self._started,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            key_updates=self._key_updates,
            last_key_update=self._last_any_update,
        )

    def _rekey_time(self) -> float | None:
        """When the sending keys are due for renewal (with ``rekey_interval``,
        once they changed), or None."""
        interval = self._cfg.rekey_interval
        last = self._last_update
        if interval is None or last is None:
            return None
        # A clock set back (by more than the skew between the calls of a
        # socket's reader and writer threads) would otherwise keep the keys
        # for as long again: their age is unknown, they are due now.
        if self._now < last - _CLOCK_WENT_BACK:
            return self._now
        return _rekey_at(last, interval)

    def _rekey_due(self) -> bool:
        # (Compared with the time get_timer() tells, not as ``now - last``:
        # the difference of two rounded times can fall short of the interval
        # at that very time.)
        due = self._rekey_time()
        return due is not None and self._now >= due

    def _rekey(self) -> None:
        """(rekey_interval has passed) Ratchet the sending keys, if they sealed
        anything: keys that sealed nothing protect nothing yet, and their age
        starts again instead (an idle connection sends no KeyUpdates)."""
        if self._bytes_sent != self._sent_at_update:
            self._send_key_update(False)
        else:
            self._last_update = self._now

    def update_keys(self, request_peer: bool = True) -> None:
        """Ratchet the sending keys now; with ``request_peer``, ask the peer to
        ratchet its own (it does so before it sends its next data).

        The peer refuses more than 64 key updates in a row with no data
        between them (within one second): it closes the connection with a
        protocol violation. Send data between bursts of updates.

        Raises:
            TypeError: ``request_peer`` is not a bool.
            ClosedError: the handshake is not complete, or the connection is closed.
        """
        if not isinstance(request_peer, bool):
            raise TypeError(f"request_peer must be a bool, not {type(request_peer).__name__}")
        if self._state is not _CONNECTED:
            raise ClosedError("keys can only be updated on an established connection")
        self._send_key_update(request_peer)

    def close(self) -> None:
        """Send close_notify and close. Idempotent.

        No event is queued: :class:`ConnectionClosed` reports only an end the
        connection learns of itself (the peer's close_notify or alert, an
        error it detects, an EOF, the handshake timeout), never the caller's
        own close, as in h11. Events queued before stay queued; the peer's
        answering close_notify, if it is fed, is ignored, and ``error`` stays
        None.

        Every secret of the connection is dropped (the record keys
        cleansed), with one exception: a connected client that has not kept
        a session ticket of this connection yet (resumption on, the server
        named: see docs/sessions.md) keeps its receive key and the
        resumption secret, and reads on. What :meth:`receive_data` gets then is read only for
        the server's tickets, which go to the session cache as before; the
        rest (application data included) is dropped unread, and no event is
        queued. Those two secrets go too at the server's close_notify (or
        any alert), at :meth:`receive_eof`, at anything that is not a valid
        record, once the cache holds what it keeps of this connection's
        tickets, or after 64 records.

        From a handshake step's hook, the handshake stops there and nothing
        more is sent. Data written while the handshake was in progress is
        sent first by a server that has sent its Finished and awaits nothing
        but the client's Finished (no client identity, no agreed step: as
        0.5-RTT data, which the client reads once its own handshake
        completes); otherwise it is dropped, as the handshake is.
        """
        if self._state is _CLOSED:
            return
        if (
            self._pending
            and self._state in (State.SERVER_WAIT_FLIGHT, State.SERVER_WAIT_FINISHED)
            and self._awaits_only_finished()
            and not self._in_hook
        ):
            self._flush_pending()  # the server's application key is in use since its Finished
        if self._state not in _START_STATES:
            self._send_alert(AlertCode.CLOSE_NOTIFY)
        self._teardown(tickets=self._awaits_tickets())

    def _record_timed_out(self, timeout: float) -> None:
        """(The adapters' ``record_timeout``) The peer left a record or a
        message incomplete for ``timeout`` seconds while this side waited to
        read it: fail with RecordTimeout, sending a record_timeout alert."""
        self._fail(
            RecordTimeout(f"the peer left a record or a message incomplete for {timeout:g} s"),
            AlertCode.RECORD_TIMEOUT,
        )

    def _close_with_alert(self, code: AlertCode) -> None:
        """:meth:`close` with the fatal alert ``code`` instead of close_notify:
        the application above the connection (a Node) found the peer at
        fault. No event is queued, as for :meth:`close`, and ``error`` stays None."""
        if self._state is _CLOSED:
            return
        if self._state not in _START_STATES:
            self._send_alert(code)
        self._teardown()

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """Keying material bound to this session, for channel binding.

        Available while connected: closing (or failing) drops the exporter
        secret with every other one.

        Raises:
            TypeError: wrong types.
            ValueError: ``length`` not in 1..8160, or a label over 245 bytes.
            ClosedError: the handshake has not completed, or the connection is
                closed.
        """
        if not isinstance(label, bytes) or not isinstance(context, bytes):
            raise TypeError("label and context must be bytes")
        if not isinstance(length, int) or isinstance(length, bool):
            raise TypeError("length must be an int")
        if not 1 <= length <= 255 * ks.HASH_SIZE:
            raise ValueError(f"length must be in 1..{255 * ks.HASH_SIZE}, got {length}")
        if len(label) > ks.MAX_LABEL:
            raise ValueError(f"label must be at most {ks.MAX_LABEL} bytes, got {len(label)}")
        keys = self._keys
        if self._state is not _CONNECTED or keys is None or not keys.exporter:
            raise ClosedError(
                "keying material is available once the handshake has completed, "
                "until the connection closes"
            )
        return keys.export(label, context, length)

    def __repr__(self) -> str:
        return f"<nautilus.Connection {self._role} {self._state.value}>"

    # ------------------------------------------------------------- state, events

    def _set_now(self, now: float) -> None:
        """Check and keep ``now``; nothing changes if it is refused."""
        if type(now) is float and 0.0 <= now <= MAX_NOW:  # the common case (NaN fails)
            self._now = now
            return
        if not isinstance(now, (int, float)) or isinstance(now, bool):
            raise TypeError(f"now must be a number (UNIX time), not {type(now).__name__}")
        if not 0 <= now <= MAX_NOW:  # an int is compared exactly: 10**400 is no OverflowError
            shown = f"{now!r}" if isinstance(now, float) or abs(now) < 10**20 else "a huge int"
            raise ValueError(f"now must be a UNIX time in 0..{MAX_NOW:g} seconds, got {shown}")
        self._now = float(now)

    def _set_state(self, new: State) -> None:
        if self._state is _CLOSED:
            return  # closed meanwhile (a hook called close()): it stays closed
        self._state = new

    def _stop_if_closed(self) -> None:
        """Called after code that is not this class's (a step's hook, a trust
        rule, an adapter's flush hook): if that closed the connection, stop
        here; nothing more is made or sent (the caller's _fail does nothing)."""
        if self._state is _CLOSED:
            raise _Abort(ClosedError("the connection was closed during the handshake"), None)

    def _fail(self, error: NautilusError, alert: AlertCode | None) -> None:
        if self._state is _CLOSED:
            return
        if alert is not None:
            self._send_alert(alert)
        self._error = error
        self._events.append(ConnectionClosed(error))
        self._teardown()

    def _teardown(self, *, tickets: bool = False) -> None:
        """Close: drop every secret; with ``tickets`` (a client's close(), see
        :meth:`_awaits_tickets`), all but what reading the server's tickets
        still on their way needs (:meth:`_read_after_close`)."""
        if self._state is _CONNECTED and not self._client:
            self._cfg.sessions._remove(self)
        self._state = _CLOSED
        self._deadline = None
        opener = self._opener
        for direction in (self._sealer, None if tickets else opener, self._early_opener):
            if direction is not None:
                direction.close()
        self._sealer = self._opener = self._early_opener = None
        # Every secret goes (docs/protocol.md, section 5): the key schedule's,
        # the offered ticket's PSK, and handshake messages still held unsealed.
        if self._psk_keys is not None:
            self._psk_keys.wipe()
            self._psk_keys = None
        if tickets:  # (what reading them needs is there: _awaits_tickets)
            assert self._keys is not None
            self._keys.keep_for_tickets()
            self._opener, self._tickets_tail = opener, _TAIL_RECORDS
        else:
            if self._keys is not None:
                self._keys.wipe()
                self._keys = None
            self._in.clear()
        self._ticket = None
        self._expected_finished = b""
        self._flight = None
        self._kem = None
        self._flush_hook = None
        self._pending.clear()
        # A failed handshake's step payloads (an access token...) and hooks' scratch
        # state go too: only a completed handshake dropped them (_connected).
        self._peer_payloads.clear()
        self._step_state.clear()
        self._drop_scratch()  # decrypted data
        self._scratch = bytearray()
        _wipe(self._messages)  # a partial message
        self._messages.clear()

    def __del__(self) -> None:
        # Collected without close(): decrypted data goes all the same, unless
        # the application holds a view of it (DataReceived with data views).
        # The record states' keys are cleansed in C when their handles are freed.
        messages = getattr(self, "_messages", None)  # (unset if __init__ failed)
        if messages is not None:
            self._drop_scratch()
            _wipe(messages)

    def _drop_scratch(self) -> None:
        """Wipe the scratch buffer before it is replaced, unless the
        application holds a view of it (DataReceived with data views)."""
        if not self._lent:
            _wipe(self._scratch)
        self._lent = False
        self._scratch_ptr = None

    def _release_scratch(self) -> None:
        """(the asyncio adapter) Reads have become small again: give back the
        scratch buffer that larger reads grew (up to twice the largest, 1 MiB
        for the adapter's 512 KiB reads), wiped. It never shrank: a connection
        that once took a burst kept it for as long as it lived, quiet or not. The
        next read makes one of its own size. Kept while a view of it is lent;
        the events lent before, delivered, are let go (their views held it)."""
        if not self._lent and self._scratch:
            self._drop_scratch()
            self._scratch = bytearray()
            self._lent_events.clear()

    # -------------------------------------------------------------- record layer

    def _process_input(self) -> None:
        buf = self._in
        while buf and self._state is not _CLOSED:
            rtype = buf[0]
            if rtype == RECORD_SEALED and (self._early_skip or self._early_left):
                if not self._early_record():
                    return
                continue
            if rtype == RECORD_SEALED:
                if self._opener is None:
                    _abort(
                        ProtocolViolation,
                        AlertCode.UNEXPECTED_MESSAGE,
                        "unexpected_message: encrypted record before keys were agreed",
                    )
                used = self._open_records(buf)
                if not used:
                    return
                del buf[:used]
                continue
            if rtype not in (RECORD_ALERT_PLAIN, RECORD_HANDSHAKE_PLAIN):
                _abort(
                    ProtocolViolation,
                    AlertCode.DECODE_ERROR,
                    f"decode_error: unknown record type 0x{rtype:02x}",
                )
            # A plaintext record this state never accepts is refused from its
            # type, as a sealed one is from its header: not after waiting for
            # up to 16 KiB of a body that cannot change the answer.
            if rtype == RECORD_HANDSHAKE_PLAIN:
                if self._opener is not None or self._state not in PLAINTEXT_HANDSHAKE_STATES:
                    _abort(
                        ProtocolViolation,
                        AlertCode.UNEXPECTED_MESSAGE,
                        "unexpected_message: plaintext handshake record after key agreement",
                    )
            elif self._state is _CONNECTED:
                _abort(
                    ProtocolViolation,
                    AlertCode.UNEXPECTED_MESSAGE,
                    "unexpected_message: plaintext alert on an encrypted connection",
                )
            if len(buf) < PLAIN_HEADER_SIZE:
                return
            length = int.from_bytes(buf[1:4], "big")
            if length > MAX_PLAIN_FRAGMENT or length == 0:
                _abort(
                    ProtocolViolation,
                    AlertCode.RECORD_OVERFLOW,
                    f"record_overflow: plaintext record of {length} bytes",
                )
            if len(buf) < PLAIN_HEADER_SIZE + length:
                return
            payload = bytes(buf[PLAIN_HEADER_SIZE : PLAIN_HEADER_SIZE + length])
            del buf[: PLAIN_HEADER_SIZE + length]
            if rtype == RECORD_HANDSHAKE_PLAIN:
                self._handshake_bytes(payload)
            else:
                self._on_alert(payload)

    def _early_record(self) -> bool:
        """(server) Open or skip the early-data records announced by the ClientHello."""
        buf = self._in
        if len(buf) < PLAIN_HEADER_SIZE:
            return False
        if self._early_skip:
            size = PLAIN_HEADER_SIZE + int.from_bytes(buf[1:4], "big")
            if size > PLAIN_HEADER_SIZE + _HANDSHAKE_RECORD + 1 + TAG_SIZE:
                _abort(ProtocolViolation, AlertCode.RECORD_OVERFLOW,
                       "record_overflow: oversized early-data record")  # fmt: skip
            if len(buf) < size:
                return False
            del buf[:size]  # refused early data: skipped unread
            self._early_skip -= 1
            return True
        opener = self._early_opener
        assert opener is not None
        self._writable_scratch(len(buf))
        try:
            opened = opener._open_fast(buf, self._scratch, _APPLICATION_DATA, self._early_left)
        except RecordFormatError as exc:  # a malformed record, not a forged one
            raise _format_abort(buf, exc.consumed, _HANDSHAKE_RECORD) from None
        except NautilusError:
            _abort(KeyAgreementFailed, AlertCode.BAD_RECORD_MAC,
                   "the client's early data did not decrypt")  # fmt: skip
        del buf[: opened.consumed]
        if not opened.records:
            return False
        if opened.last_type != _APPLICATION_DATA:
            _abort(ProtocolViolation, AlertCode.UNEXPECTED_MESSAGE,
                   "unexpected_message: early data must be application data")  # fmt: skip
        self._early_bytes += opened.written
        if self._early_bytes > self._early_limit:
            _abort(ProtocolViolation, AlertCode.RECORD_OVERFLOW,
                   "record_overflow: more early data than the ticket allows")  # fmt: skip
        if opened.written:
            self._bytes_received += opened.written
            self._events.append(EarlyDataReceived(bytes(self._scratch[: opened.written])))
        self._early_left -= opened.records
        if not self._early_left:
            opener.close()
            self._early_opener = None
        return True

    def _reclaim_scratch(self) -> None:
        """Turn the views of the scratch buffer lent since ``_lent`` was set
        into copies (the events are changed in place, wherever they are), so
        that the buffer can be written again. A read whose records a key
        update cuts into many runs then costs copies of what it delivers,
        not a new buffer as large as the rest of the read for each run."""
        for event in self._lent_events:
            object.__setattr__(event, "data", bytes(event.data))
        self._lent_events.clear()
        self._lent = False

    def _writable_scratch(self, size: int) -> None:
        """Make the scratch buffer writable (views lent out become copies) and
        at least ``size`` bytes long (replaced by one twice as long, or ``size``)."""
        if self._lent:
            self._reclaim_scratch()
        if len(self._scratch) < size:
            old = len(self._scratch)
            self._drop_scratch()
            self._scratch = bytearray(max(size, 2 * old))

    def _open_records(self, src: bytes | bytearray | memoryview) -> int:
        """Open and act on the complete records at the start of ``src``; return the
        bytes they took (0: more bytes are needed). The caller drops them."""
        opener = self._opener
        assert opener is not None
        self._writable_scratch(len(src))
        try:
            opened = opener._open_fast(src, self._scratch, self._batch_type)
        except (RecordLimitReached, IntegrityError) as exc:
            self._open_failed(exc, src)
        if opened.records:
            self._deliver(opened)
        return opened.consumed

    def _open_failed(
        self, exc: RecordLimitReached | IntegrityError, src: bytes | bytearray | memoryview
    ) -> NoReturn:
        """The opener refused a record of ``src``: deliver the authentic
        records before it, then raise the failure (an _Abort)."""
        opener = self._opener
        assert opener is not None
        limit = opener.max_fragment  # (read while the opener is still open)
        pos = 0
        if isinstance(exc, IntegrityError):
            pos = exc.consumed
            good = cast("PackedOpen | None", exc.records[0] if exc.records else None)
            if good is not None and good.records:
                self._deliver(good)  # authentic records before the bad one
        raise self._open_abort(exc, src, pos, limit) from None

    # -- the message lane (asyncio channels, blocking sockets' messages) -------------
    # Request/response traffic over the message API is one record per read and
    # per write. For it, the adapters skip the general path (events,
    # output queue, the checks that arbitrary input needs): these two methods
    # open or seal one record in one C call, and hand the message over or back
    # directly. Both apply only in a state where the general path would do
    # exactly the same; anywhere else they decline, having done nothing.

    def _take_message(self, data: memoryview, now: float) -> bytes | bool:
        """Act on ``data``, one read from the peer, when it is exactly one sealed
        record and nothing is under way (connected; nothing buffered, nothing
        waiting in next_event()). Returns the message when the record holds
        exactly one whole message (no event is queued); True when it held
        something else, handled as receive_data() would (its events wait in
        next_event(), its answers in the output); False, having done nothing,
        in any other case: the caller gives ``data`` to receive_data().
        ``data`` is a 1-D view of bytes; ``now`` as for receive_data().
        """
        if (
            self._state is not _CONNECTED
            or self._in
            or self._messages
            or self._events
            or self._lent
        ):
            return False
        self._now = now  # (the adapter's clock: valid, as receive_data() would check)
        opener = self._opener
        assert opener is not None
        scratch = self._scratch
        dst = self._scratch_ptr
        if dst is None:  # (kept until _drop_scratch: scratch is never resized in place)
            dst = self._scratch_ptr = _from_buffer(scratch, require_writable=True)
        summary = opener._summary
        try:
            size = _nt_open_message(
                opener._handle, _from_buffer(data), len(data), dst, len(scratch), _MESSAGE,
                self._cfg.max_message_size, summary,
            )  # fmt: skip
            if size >= 0:  # one record, one message: out[4:4 + size]
                self._bytes_received += size + 4
                self._batch_type = _MESSAGE
                return bytes(memoryview(scratch)[4 : size + 4])
            if size == _NT_NOT_ONE_RECORD:
                return False
            if size != _NT_NOT_ONE_MESSAGE:
                exc = opener._failure(size)
                if isinstance(exc, (RecordLimitReached, IntegrityError)):
                    self._open_failed(exc, data)
                raise exc
            self._deliver(
                PackedOpen(1, summary.consumed, summary.written, summary.last_type,
                           summary.last_length)
            )  # fmt: skip
        except Exception as exc:
            self._receive_failed(exc)
        except BaseException as exc:  # (a signal handler's KeyboardInterrupt...)
            self._interrupted(exc, "receive_data")
            raise
        return True

    def _seal_message(self, message: bytes) -> bytearray | None:
        """One message framed and sealed, for the caller to write at once; None,
        having done nothing, unless nothing is under way (connected, no output
        waiting, no rekey_interval) and the message fits in one record, within
        ``max_message_size`` and this key's budget: then send_message() does it."""
        cfg = self._cfg
        if self._state is not _CONNECTED or self._out or cfg.rekey_interval is not None:
            return None
        size = len(message)
        if size > cfg.max_message_size or size + 4 > self._send_fragment:
            return None
        sealer = self._sealer
        assert sealer is not None
        need = size + _FRAMED_OVERHEAD
        out = bytearray(need)
        rc = _nt_seal_message(
            sealer._handle, self._budget, _MESSAGE, message, size, _from_buffer(out), need
        )
        if rc != _NT_OK:
            if rc == _NT_DUE:  # a key update first: send_message() does it
                return None
            raise _b.seal_failure(rc)
        self._bytes_sent += size + 4
        return out

    def _open_abort(
        self,
        error: RecordLimitReached | IntegrityError,
        src: bytes | bytearray | memoryview,
        pos: int,
        limit: int,
    ) -> _Abort:
        """The failure for the record at ``src[pos:]`` that the record layer
        refused (``limit``: the opener's largest content). Shared with
        NautilusSocket's direct path, which opens records itself.

        A malformed record (RecordFormatError: a bad header or length, or no
        content type) is told apart from one that fails authentication
        (docs/protocol.md, section 6).
        """
        if isinstance(error, RecordLimitReached):
            return _Abort(
                ProtocolViolation(
                    "the peer sent more records than one key may protect without a key update"
                ),
                AlertCode.UNEXPECTED_MESSAGE,
            )
        if isinstance(error, RecordFormatError):
            return _format_abort(src, pos, limit)
        if self._state in HANDSHAKE_STATES:
            return _Abort(
                KeyAgreementFailed(
                    "could not decrypt the peer's handshake records: the key exchange was "
                    "tampered with or the two sides derived different keys"
                ),
                AlertCode.BAD_RECORD_MAC,
            )
        return _Abort(
            IntegrityError(f"a record failed authentication ({error}); connection closed"),
            AlertCode.BAD_RECORD_MAC,
        )

    def _deliver(self, opened: PackedOpen) -> None:
        """Act on opened records: a run of the batch type, then maybe one other.

        The batch type follows the traffic: it becomes the type of the last
        data or message record seen, so a run of either is opened in one call.
        """
        batch = self._batch_type
        last_in_run = opened.last_type == batch
        run_end = opened.written if last_in_run else opened.written - opened.last_length
        if opened.records > (0 if last_in_run else 1):
            self._content(batch, 0, run_end)
        if last_in_run or self._state is _CLOSED:
            return
        ctype = opened.last_type
        self._content(ctype, run_end, opened.written)
        if ctype in (_APPLICATION_DATA, _MESSAGE):
            self._batch_type = ctype

    def _content(self, ctype: int, start: int, end: int) -> None:
        """Handle the content ``self._scratch[start:end]`` of type ``ctype``."""
        state = self._state  # (the connected state's row without hashing the enum)
        allowed = _CONNECTED_CONTENT if state is _CONNECTED else CONTENT_ALLOWED[state]
        if ctype not in allowed:
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                f"unexpected_message: content type {ctype} in state {self._state.value}",
            )
        if ctype == _APPLICATION_DATA:
            if end > start:
                self._bytes_received += end - start
                view = memoryview(self._scratch)[start:end]
                if self._data_views:
                    if not self._lent:
                        self._lent = True
                        self._lent_events.clear()  # (the adapter delivered the last ones)
                    event = DataReceived(cast("bytes", view))
                    self._lent_events.append(event)
                    self._events.append(event)
                else:
                    self._events.append(DataReceived(bytes(view)))
            return
        if ctype == _MESSAGE:
            self._bytes_received += end - start
            self._feed_messages(start, end)
            return
        if end - start > _HANDSHAKE_RECORD:
            # Only application records may be as large as this side's
            # max_record_size (the opener's bound): handshake, alert and key
            # update records are at most 16 KiB (docs/protocol.md, section 1).
            _abort(
                ProtocolViolation,
                AlertCode.RECORD_OVERFLOW,
                f"record_overflow: a record of content type {ctype} holds {end - start} bytes "
                f"(at most {_HANDSHAKE_RECORD})",
            )
        payload = bytes(self._scratch[start:end])
        if ctype == ContentType.HANDSHAKE:
            if not payload:
                _abort(ProtocolViolation, AlertCode.DECODE_ERROR, "decode_error: empty record")
            self._handshake_bytes(payload)
        elif ctype == ContentType.ALERT:
            self._on_alert(payload)
        elif ctype == ContentType.KEY_UPDATE:
            self._on_key_update(payload)

    def _feed_messages(self, start: int, end: int) -> None:
        """Cut the length-prefixed messages out of the message stream
        ``self._scratch[start:end]``: one MessagesReceived event for all that
        are complete; a partial frame waits in ``self._messages``.

        A length over ``max_message_size`` ends the connection as soon as its
        4 bytes are in, before the message body is waited for.
        """
        limit = self._cfg.max_message_size
        data = self._scratch
        first: tuple[bytes, ...] = ()
        first_size = 0
        buf = self._messages
        if buf:  # a frame split across records: complete it (copying only its rest)
            have = len(buf)
            if have < 4:
                take = min(4 - have, end - start)
                buf += memoryview(data)[start : start + take]
                start += take
                have += take
                if have < 4:
                    return
            (n,) = _unpack_length(buf)
            if n > limit:
                self._message_too_large(n, limit)
            take = min(4 + n - have, end - start)
            buf += memoryview(data)[start : start + take]
            start += take
            if len(buf) < 4 + n:
                return  # still incomplete
            first = (bytes(memoryview(buf)[4:]),)
            first_size = n
            buf.clear()
            if start == end:
                self._events.append(MessagesReceived(first, n))
                return
        if end - start >= 4:
            (n,) = _unpack_length(data, start)
            if n == end - start - 4 and n <= limit and not first:
                # Exactly one whole message: one copy.
                message = bytes(memoryview(data)[start + 4 : end])
                self._events.append(MessagesReceived((message,), n))
                return
        # The frames are found in C; one bytes object (one copy) per message.
        messages, pos = _b.frames_cut(data, start, end, limit)
        if messages:  # delivered even if an oversized one follows: they are whole
            size = pos - start - 4 * len(messages)  # (the frames' bytes, less their lengths)
            if first:
                messages, size = first + messages, size + first_size
            self._events.append(MessagesReceived(messages, size))
        elif first:
            self._events.append(MessagesReceived(first, first_size))
        if end - pos >= 4:
            (n,) = _unpack_length(data, pos)
            if n > limit:
                self._message_too_large(n, limit)
        if pos < end:
            buf += memoryview(data)[pos:end]

    def _message_too_large(self, n: int, limit: int) -> NoReturn:
        _abort(
            ProtocolViolation,
            AlertCode.RECORD_OVERFLOW,
            f"record_overflow: the peer sent a message of {n} bytes (max_message_size is {limit})",
        )

    def _install(
        self, send_secret: bytes | None, recv_secret: bytes | None, *, handshake: bool = False
    ) -> None:
        """Switch keys (at a record boundary: no handshake bytes may be pending).

        Handshake records are at most 16 KiB, so during the handshake the opener
        accepts exactly that much, whatever this side's own limit: a larger
        record is refused from its header (record_overflow).
        """
        self._stop_if_closed()  # no key is made for a closed connection
        if recv_secret is not None and self._hs:  # (our sending key does not matter)
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                "unexpected_message: handshake message split across a key change",
            )
        own_limit = self._record_size
        if send_secret is not None:
            if self._flight is not None:
                self._seal_flight()  # held messages go under the key they were made for
            if self._sealer is None:
                self._sealer = RecordSealer._from_secret(
                    self._cipher, send_secret, self._send_fragment
                )
            else:
                self._sealer._rekey_from_secret(send_secret)
            budget = self._budget
            budget.records = max(0, self._cfg.key_update_records - _BUDGET_MARGIN)
            budget.bytes = self._cfg.key_update_bytes
        if recv_secret is not None:
            accept = _HANDSHAKE_RECORD if handshake else own_limit
            opener = self._opener
            if opener is None:
                self._opener = RecordOpener._from_secret(self._cipher, recv_secret, accept)
            else:  # (its C state keyed again: cheaper than a new one)
                opener._rekey_from_secret(recv_secret)
                opener._set_max_fragment(accept)

    def _send_alert(self, code: AlertCode) -> None:
        payload = bytes([code])
        if self._sealer is not None:
            try:
                self._out.append(self._sealer._seal_chunk(payload, ContentType.ALERT))
                return
            except NautilusError:
                return  # nothing more can be said safely
        self._out.append(_plain_record(RECORD_ALERT_PLAIN, payload))

    def _seal_application(self, data: bytes | bytearray | memoryview, ctype: int) -> None:
        sealer = self._sealer
        assert sealer is not None
        if self._cfg.rekey_interval is not None and self._rekey_due():
            self._rekey()
        total = len(data) if type(data) is bytes else memoryview(data).nbytes
        # Fast path: the whole write fits in this key's budget. (Bytes are
        # counted as they are sealed: a key update in the middle of a write
        # must see only those sealed before it, see _rekey.)
        sealed = sealer._seal_within(data, ctype, self._budget)
        if sealed is not None:
            self._bytes_sent += total
            self._out.append(sealed)
            return
        # Near a key update: exact accounting, splitting the write across keys.
        view = memoryview(data).cast("B")
        per_key_records = self._cfg.key_update_records
        budget = self._budget  # (the same struct after a key update: reset by _install)
        pos = 0
        while pos < total:
            sealer = self._sealer
            assert sealer is not None
            room_records = per_key_records - sealer.sequence
            room_bytes = budget.bytes
            if room_records <= 0 or room_bytes <= 0:
                self._send_key_update(False)
                continue
            n = min(total - pos, room_records * sealer.max_fragment, room_bytes)
            self._out.append(sealer._seal_chunk(view[pos : pos + n], ctype))
            pos += n
            self._bytes_sent += n
            budget.bytes -= n
        sealer = self._sealer
        assert sealer is not None
        budget.records = max(0, per_key_records - sealer.sequence - _BUDGET_MARGIN)

    def _send_key_update(self, request_peer: bool) -> None:
        sealer = self._sealer
        assert sealer is not None
        self._out.append(
            sealer._seal_chunk(b"\x01" if request_peer else b"\x00", ContentType.KEY_UPDATE)
        )
        keys = self._keys
        assert keys is not None  # (connected)
        self._install(keys.update_traffic(self._client), None)  # the old secret is dropped
        self._last_update = self._last_any_update = self._now
        self._sent_at_update = self._bytes_sent
        self._key_updates += 1
        if request_peer:
            self._updates_asked += 1  # the peer's answer is not counted (_on_key_update)
        self._events.append(KeysUpdated("send"))

    def _on_key_update(self, payload: bytes) -> None:
        if len(payload) != 1 or payload[0] > 1:
            _abort(ProtocolViolation, AlertCode.DECODE_ERROR, "decode_error: malformed key update")
        # A bound on the work a peer can cause without sending data: its key
        # updates count from the last application data or message bytes it sent
        # (or from a second later on the caller's clock, for an idle connection
        # whose peer rekeys on a timer); past MAX_PEER_KEY_UPDATES it is refused.
        # An answer to an update_keys(request_peer=True) of ours is not counted.
        if payload[0] == 0 and self._updates_asked:
            self._updates_asked -= 1
        elif self._count_peer_update() > MAX_PEER_KEY_UPDATES:
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                f"unexpected_message: more than {MAX_PEER_KEY_UPDATES} key updates from the "
                "peer without data in between",
            )
        keys = self._keys
        assert keys is not None  # (connected)
        self._install(None, keys.update_traffic(not self._client))  # the old one is dropped
        self._last_any_update = self._now
        self._key_updates += 1
        self._events.append(KeysUpdated("receive"))
        if payload[0] == 1:
            # Answered before this side's next data (RFC 8446 section 4.6.3):
            # the sending key is made due, so that any seal updates it first.
            # Requests that arrive while this side sends nothing cost one
            # update, and no output that piles up for a peer that never reads.
            budget = self._budget
            budget.records = budget.bytes = 0

    def _count_peer_update(self) -> int:
        """Count a key update of the peer's; return how many in a row."""
        if self._bytes_received != self._updates_mark or self._now - self._updates_since >= 1.0:
            self._updates_mark, self._updates_since = self._bytes_received, self._now
            self._peer_updates = 0
        self._peer_updates += 1
        return self._peer_updates

    def _on_alert(self, payload: bytes) -> None:
        if len(payload) != 1:
            _abort(ProtocolViolation, AlertCode.DECODE_ERROR, "decode_error: malformed alert")
        code = payload[0]
        name = AlertCode.describe(code)
        self._events.append(AlertReceived(code, name))
        if code == AlertCode.CLOSE_NOTIFY:
            if self._state is _CONNECTED:
                if self._messages:
                    # A clean end cannot fall inside a message frame (this
                    # side's senders only seal whole frames): the peer cut
                    # its own message short. Not an end of stream, or the
                    # application would never learn of the lost message.
                    _abort(
                        ProtocolViolation,
                        AlertCode.DECODE_ERROR,
                        f"decode_error: close_notify in the middle of a message "
                        f"({len(self._messages)} bytes of its frame received)",
                    )
                self._send_alert(AlertCode.CLOSE_NOTIFY)
                self._events.append(ConnectionClosed(None))
                self._teardown()
                return
            err: NautilusError = HandshakeError(
                "the peer closed the connection during the handshake"
            )
        else:
            cls = _REMOTE_ALERT_ERRORS.get(code)
            if cls is None:
                cls = HandshakeError if self._state in HANDSHAKE_STATES else ConnectionLost
            if code == AlertCode.BAD_RECORD_MAC:
                cls = KeyAgreementFailed if self._state in HANDSHAKE_STATES else IntegrityError
            elif code == AlertCode.RECORD_TIMEOUT and self._state in HANDSHAKE_STATES:
                cls = HandshakeError  # (sent once connected only: not a ConnectionLost here)
            err = cls(f"the peer sent alert {name}")
        self._error = err
        self._events.append(ConnectionClosed(err))
        self._teardown()

    # ------------------------------------------------------------ handshake core

    def _handshake_bytes(self, payload: bytes) -> None:
        self._hs.feed(payload)
        while self._state is not _CLOSED:
            item = self._hs.next_message()
            if item is None:
                return
            mtype, body, full = item
            row = transition(self._state, mtype, client=self._client)
            if row is None:
                _abort(
                    ProtocolViolation,
                    AlertCode.UNEXPECTED_MESSAGE,
                    f"unexpected_message: {mtype.name} in state {self._state.value}",
                )
            handler, allowed = row
            msg = decode(mtype, body)
            nxt: State = getattr(self, handler)(msg, full)
            if self.is_closed:
                return  # closed by a hook meanwhile: no transition out of closed
            if nxt not in allowed:  # pragma: no cover - a bug in a handler
                raise AssertionError(f"{handler} chose {nxt} outside {allowed}")
            self._set_state(nxt)

    def _absorb(self, full: bytes) -> None:
        self._transcript.update(full)

    def _hash(self) -> bytes:
        return self._transcript.copy().digest()

    def _send_handshake(self, msg: Message) -> None:
        self._send_framed(frame(msg))

    def _send_framed(self, data: bytes) -> None:
        """Send one framed handshake message (and add it to the transcript).

        Only the hellos go in plaintext: any other message without a sending
        key is an internal error that fails the connection, never a plaintext
        fallback (and a closed connection sends nothing).
        """
        self._stop_if_closed()
        sealer = self._sealer
        if sealer is None and data[0] not in _PLAINTEXT_MESSAGES:
            _abort(
                HandshakeError,
                AlertCode.INTERNAL_ERROR,
                f"internal error: no key to seal handshake message type {data[0]} with",
            )
        self._absorb(data)
        if sealer is None:
            for i in range(0, len(data), MAX_PLAIN_FRAGMENT):
                chunk = data[i : i + MAX_PLAIN_FRAGMENT]
                self._out.append(_plain_record(RECORD_HANDSHAKE_PLAIN, chunk))
        elif self._flight is not None:
            self._flight.append(data)  # sealed with the rest of the flight (_seal_flight)
        else:
            self._out.append(sealer._seal_chunk(data, ContentType.HANDSHAKE))

    def _hold_flight(self) -> None:
        """Hold the sealed handshake messages that follow, to seal them in as few
        records as they fit (one, usually): fewer records to seal and to open."""
        self._flight = []

    def _seal_flight(self) -> None:
        """Seal the held handshake messages (under the current sending key)."""
        flight, self._flight = self._flight, None
        if flight:
            self._stop_if_closed()
            if self._sealer is None:
                _abort(HandshakeError, AlertCode.INTERNAL_ERROR,
                       "internal error: no key to seal the handshake flight with")  # fmt: skip
            data = flight[0] if len(flight) == 1 else b"".join(flight)
            self._out.append(self._sealer._seal_chunk(data, ContentType.HANDSHAKE))

    def _step_context(self, step: HandshakeStep) -> StepContext:
        sc = self._step_state.get(step.protocol_id)
        if sc is None:
            sc = StepContext(self._role, self._cfg.namespace, b"", None)
            self._step_state[step.protocol_id] = sc
        sc.transcript_hash = self._hash()
        sc.peer_key = self._peer_key
        return sc

    def _verify_peer(
        self,
        trust: TrustStore,
        key: PeerKey,
        *,
        certificate: Certificate | None,
        name: str | None,
        now: float,
        expected_peer: PeerKey | str | None,
    ) -> str:
        """The authentication step's trust decision (outside code: while it
        runs, this connection cannot be fed or started again)."""
        self._in_hook = True
        try:
            how = self._auth_step.verify_peer(
                trust, key, certificate=certificate, name=name, now=now,
                expected_peer=expected_peer,
            )  # fmt: skip
        finally:
            self._in_hook = False
        if type(how) is not str or not how:  # (a rule returning False must not accept)
            raise AuthenticationFailed(
                "the trust rule (verify_peer) must return how the peer was trusted, a "
                f"non-empty str, or raise; it returned {type(how).__name__} {how!r:.40}: "
                "the peer is not accepted"
            )
        return how

    def _run_hook(self, step: HandshakeStep, hook: str, *args: object) -> bytes | None:
        self._in_hook = True
        try:
            result = getattr(step, hook)(self._step_context(step), *args)
        except HandshakeError as exc:
            raise _Abort(exc, AlertCode.AUTHENTICATION_FAILED) from None
        except Exception as exc:
            _abort(
                AuthenticationFailed,
                AlertCode.AUTHENTICATION_FAILED,
                f"handshake step {step.protocol_id!r} failed: {_exception_text(exc)}",
            )
        finally:
            self._in_hook = False
        if inspect.iscoroutine(result):  # an async hook: it never runs (no warning either)
            result.close()
        self._stop_if_closed()  # the hook closed this connection: it stays closed
        if hook == "verify_client_payload":
            # Only raising rejects the client: any answer but None (False from a
            # comparison, the coroutine of an async hook that never ran) would
            # otherwise accept it unchecked. Fail closed instead.
            if result is not None:
                _abort(
                    HandshakeError,
                    AlertCode.INTERNAL_ERROR,
                    f"handshake step {step.protocol_id!r}: verify_client_payload must "
                    f"return None and raise to reject the client, not return "
                    f"{type(result).__name__}",
                )
            return None
        if result is not None and not isinstance(result, bytes):
            _abort(
                HandshakeError,
                AlertCode.INTERNAL_ERROR,
                f"handshake step {step.protocol_id!r}: {hook} must return bytes or None",
            )
        if result is not None and len(result) > _MAX_STEP_PAYLOAD:
            _abort(
                HandshakeError,
                AlertCode.INTERNAL_ERROR,
                f"handshake step {step.protocol_id!r}: {hook} returned {len(result)} bytes; "
                f"a step payload is at most {_MAX_STEP_PAYLOAD}",
            )
        return result

    def _identity_message(self) -> IdentityMsg:
        ident = self._cfg.identity
        assert ident is not None
        cert = ident.certificate.to_bytes() if ident.certificate is not None else b""
        return IdentityMsg(ident.public.to_bytes(), cert)

    def _sign_transcript(self, context_string: bytes) -> Verify:
        ident = self._cfg.identity
        assert ident is not None
        return Verify(ident.sign(context_string + self._hash()))

    def _expected_hash(self) -> bytes:
        exp = self._expected_peer
        if exp is None:
            return b""
        return _peer_id_hash(exp.peer_id if isinstance(exp, PeerKey) else exp)

    # ---------------------------------------------------------------- client side

    def _send_client_hello(self, early_data: bytes) -> None:
        """Make and send the ClientHello (with a ticket's offer and early data).

        Raises:
            ValueError: the hello cannot be encoded (custom steps changed after
                they were checked); nothing was taken or sent.
        """
        cfg = self._cfg
        group_names = cfg.groups
        group = group_names[0]
        namespace = cfg.namespace.encode()
        ciphers = tuple(CIPHER_IDS[c] for c in cfg.ciphers)
        groups = tuple(GROUP_IDS[g] for g in group_names)
        expected = self._expected_hash()
        steps = tuple(StepOffer(s.protocol_id, s.required) for s in self._steps)
        random = os.urandom(RANDOM_SIZE)

        def make(share: bytes) -> ClientHello:
            return ClientHello(
                random=random,
                timestamp_ms=int(self._now * 1000),
                namespace=namespace,
                ciphers=ciphers,
                groups=groups,
                share_group=GROUP_IDS[group],
                share=share,
                expected_peer=expected,
                steps=steps,
                max_record_size=self._record_size,
            )

        # Sized before anything is taken (a ticket from the cache, a key share
        # from the pool): a failure leaves all as it was, and the size left
        # over for a key share and a ticket's offer bounds the ticket. The
        # size depends only on these fields (random and timestamp have fixed
        # sizes): it is kept, not encoded again for every connection.
        shape = (namespace, ciphers, groups, len(expected), steps, self._record_size)
        size = _HELLO_SIZES.get(shape)
        if size is None:
            try:
                size = len(make(b"").encode_body())
            except (OverflowError, ValueError, UnicodeError) as exc:
                raise ValueError(f"the ClientHello cannot be encoded: {exc}") from None
            if len(_HELLO_SIZES) >= _HELLO_SIZES_KEPT:
                _HELLO_SIZES.clear()
            _HELLO_SIZES[shape] = size
        room = MAX_HANDSHAKE_MESSAGE - size - _MAX_SHARE
        if room < 0:
            raise ValueError(
                f"the ClientHello would exceed {MAX_HANDSHAKE_MESSAGE} bytes "
                "(too many or too long custom handshake steps)"
            )
        ticket = self._ticket = self._pick_ticket(room - _PSK_OFFER_SIZE)
        self._stop_if_closed()  # (a trust rule ran)
        # A psk_only resumption needs no key share: skip making one. A server
        # that does not grant psk_only asks for a share with a HelloRetry.
        no_share = ticket is not None and self._cfg.resumption == "psk_only"
        if no_share:
            self._kem = None
        else:
            self._kem = self._ctx._key_pool.take_share(group)
            self._took_keys = True
        early = b""
        if (
            ticket is not None
            and early_data
            and self._cfg.early_data
            and len(early_data) <= ticket.max_early_data
            and _CIPHER_BY_ID[ticket.cipher] in self._cfg.ciphers
        ):
            early = early_data
        share = self._kem.public_key().public_bytes_raw() if self._kem is not None else b""
        hello = make(share)
        early_records = -(-len(early) // _HANDSHAKE_RECORD)
        self._send_hello(hello, early_records)
        if early:
            assert ticket is not None
            assert self._psk_keys is not None
            secret = self._psk_keys.early_traffic(self._hash())
            cipher = _CIPHER_BY_ID[ticket.cipher]
            with RecordSealer._from_secret(cipher, secret, _HANDSHAKE_RECORD) as sealer:
                self._out.append(sealer._seal_chunk(early, _APPLICATION_DATA))
            self._early_sent = early
            self._bytes_sent += len(early)
        elif early_data:
            # First, as when it is sent as 0-RTT: before what send_data() queued
            # before start() (the order must not depend on a ticket's being there)
            self._pending.insert(0, (_APPLICATION_DATA, early_data))

    def _send_hello(self, hello: ClientHello, early_records: int) -> None:
        """Send a ClientHello; with a ticket, add the resumption offer and its binder."""
        ticket = self._ticket
        if ticket is None:
            self._hello, self._offered_mode = hello, PskMode.NONE
            self._send_handshake(hello)
            return
        mode = PskMode.PSK_ONLY if self._cfg.resumption == "psk_only" else PskMode.PSK_DHE
        age_ms = max(0, int((self._now - ticket.received) * 1000))
        offer = PskOffer(
            mode, ticket.ticket, (age_ms + ticket.age_add) % (1 << 32), early_records,
            bytes(BINDER_SIZE),
        )  # fmt: skip
        hello = hello.with_psk_offer(offer.encode())
        unbound = frame(hello)  # the binder is its last BINDER_SIZE bytes, still zero
        keys = self._psk_keys = ks.KeySchedule(ticket.psk)
        h = self._transcript.copy()
        h.update(unbound)
        binder = keys.binder(h.digest())
        # The binder is the hello's last field: put in place of the zeros rather
        # than encoded again. self._hello keeps the zeros; the offer's mode is
        # kept apart (the ServerHello is checked against it).
        self._hello, self._offered_mode = hello, mode
        self._send_framed(unbound[:-BINDER_SIZE] + binder)

    def _cache_key(self) -> str | None:
        exp = self._expected_peer
        if exp is None and self._server_name is None:
            return None  # nothing names the server: its tickets could not be found again
        peer_id = "*" if exp is None else (exp.peer_id if isinstance(exp, PeerKey) else exp)
        cfg = self._cfg
        ident = cfg.identity  # tickets of another identity are not this context's
        return SessionCache.key(  # nor those of another namespace
            peer_id,
            self._server_name,
            None if ident is None else ident.peer_id,
            namespace=cfg.namespace,
        )

    def _pick_ticket(self, max_size: int) -> StoredTicket | None:
        """(client) A cached ticket for this server that the context still trusts,
        of at most ``max_size`` bytes (what the ClientHello has room for)."""
        cfg = self._cfg
        key = self._cache_key()
        if cfg.resumption == "off" or key is None:
            return None
        while (ticket := cfg.session_cache.take(key, self._now)) is not None:
            # (The key names the namespace: one of another is a ticket stored
            # so by store() or by a version whose keys did not name it.)
            if ticket.namespace != cfg.namespace.encode() or ticket.cipher not in _CIPHER_BY_ID:
                continue
            if len(ticket.ticket) > max_size:  # its offer would not fit in the hello
                continue
            try:
                server_key = PeerKey.from_bytes(ticket.server_key)
                cert = (
                    Certificate.from_bytes(ticket.server_certificate)
                    if ticket.server_certificate
                    else None
                )
                self._verify_peer(  # (a key not proved here: looked up, never recorded)
                    cfg.trust._lookup_only(), server_key, certificate=cert,
                    name=self._server_name, now=self._now, expected_peer=self._expected_peer,
                )  # fmt: skip
            except Exception as exc:  # trust changed: this ticket is no use, try the next
                log.debug("cached ticket not used: %s", type(exc).__name__)
                continue
            self._peer_key, self._peer_cert = server_key, cert
            return ticket
        return None

    def _on_hello_retry(self, msg: HelloRetry, full: bytes) -> State:
        hello = self._hello
        assert hello is not None
        if msg.version != hello.version:
            _abort(NegotiationFailed, AlertCode.PROTOCOL_VERSION, "unsupported protocol version")
        group = _GROUP_BY_ID.get(msg.group)
        same_group_without_share = msg.group == hello.share_group and not hello.share
        if (
            group is None
            or msg.group not in hello.groups
            or (msg.group == hello.share_group and not same_group_without_share)
        ):
            _abort(
                ProtocolViolation,
                AlertCode.ILLEGAL_PARAMETER,
                "the server asked to retry with a group that was not offered",
            )
        self._absorb(full)
        self._kem = GROUPS[group].generate()
        retried = replace(
            hello, share_group=msg.group, share=self._kem.public_key().public_bytes_raw(),
            psk_offer=b"",
        )  # fmt: skip
        self._send_hello(retried, 0)  # early data is never accepted after a retry
        return State.CLIENT_WAIT_RETRIED_HELLO

    def _on_server_hello(self, msg: ServerHello, full: bytes) -> State:
        hello, kem = self._hello, self._kem
        assert hello is not None
        if msg.version != hello.version:
            _abort(NegotiationFailed, AlertCode.PROTOCOL_VERSION, "unsupported protocol version")
        if msg.group != hello.share_group:
            _abort(
                ProtocolViolation,
                AlertCode.ILLEGAL_PARAMETER,
                "the server chose a group it was given no key share for",
            )
        if msg.cipher not in hello.ciphers or msg.cipher not in _CIPHER_BY_ID:
            _abort(
                NegotiationFailed,
                AlertCode.ILLEGAL_PARAMETER,
                "the server chose a cipher that was not offered",
            )
        self._group = _GROUP_BY_ID[msg.group]
        self._cipher = _CIPHER_BY_ID[msg.cipher]
        self._absorb(full)
        offered = self._offered_mode
        if msg.psk_mode != PskMode.NONE and (
            offered == PskMode.NONE or (msg.psk_mode == PskMode.PSK_ONLY != offered)
        ):
            _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER,
                   "the server resumed in a way the client did not offer")  # fmt: skip
        if msg.psk_mode == PskMode.PSK_ONLY:
            if msg.share:
                _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER,
                       "a key share in a resumption without key exchange")  # fmt: skip
            shared = ks.ZEROS
        else:
            if kem is None:
                _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER,
                       "the server needs a key share that the client did not send")  # fmt: skip
            try:
                shared = kem.decapsulate(msg.share)
            except (InvalidKey, ValueError) as exc:
                _abort(
                    KeyAgreementFailed,
                    AlertCode.ILLEGAL_PARAMETER,
                    f"the server's key share is invalid: {exc}",
                )
        self._kem = None
        self._psk_mode = PSK_MODES[msg.psk_mode]  # (checked by the decoder)
        if msg.psk_mode != PskMode.NONE:
            assert self._psk_keys is not None
            keys, self._resumed = self._psk_keys, True
        else:  # a full handshake: forget what the ticket said about the server
            keys, self._peer_key, self._peer_cert = ks.KeySchedule(), None, None
        self._psk_keys = None
        keys.handshake(shared, self._hash())
        self._keys = keys
        self._install(keys.client_hs, keys.server_hs, handshake=True)
        return State.CLIENT_WAIT_EXTENSIONS

    def _on_extensions(self, msg: EncryptedExtensions, full: bytes) -> State:
        offered = {s.protocol_id: s for s in self._steps}
        if len(set(msg.steps)) != len(msg.steps) or any(i not in offered for i in msg.steps):
            _abort(
                NegotiationFailed,
                AlertCode.ILLEGAL_PARAMETER,
                "the server agreed to a handshake step that was not offered",
            )
        for s in self._steps:
            if s.required and s.protocol_id not in msg.steps:
                _abort(
                    NegotiationFailed,
                    AlertCode.NEGOTIATION_FAILED,
                    f"the server does not support the required step {s.protocol_id!r}",
                )
        if not 512 <= msg.max_record_size <= (1 << 18):
            _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER, "invalid max_record_size")
        if msg.early_data_accepted and not (self._early_sent and self._resumed):
            _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER,
                   "the server accepted early data that was not sent")  # fmt: skip
        if self._resumed and msg.client_auth != ClientAuth.OFF:
            _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER,
                   "a resumed session asked for client authentication")  # fmt: skip
        self._agreed = [offered[i] for i in msg.steps]
        self._client_auth = CLIENT_AUTH_MODES[msg.client_auth]  # (checked by the decoder)
        self._send_fragment = min(self._record_size, msg.max_record_size)
        self._absorb(full)
        if self._early_sent:
            if msg.early_data_accepted:
                self._early_accepted = True
            else:
                # Not processed: sent again as ordinary data when the handshake
                # completes, before what was written since (stream order).
                self._bytes_sent -= len(self._early_sent)
                self._pending.insert(0, (_APPLICATION_DATA, self._early_sent))
                self._events.append(EarlyDataRejected(self._early_sent))
            self._early_sent = b""
        if self._resumed:
            self._trust = "resumed"
            return State.CLIENT_WAIT_FINISHED
        return State.CLIENT_WAIT_IDENTITY

    def _on_server_finished(self, msg: Finished, full: bytes) -> State:
        keys = self._keys
        assert keys is not None
        if not ks.finished_ok(ks.finished_mac(keys.server_hs, self._hash()), msg.verify_data):
            _abort(
                AuthenticationFailed,
                AlertCode.DECRYPT_ERROR,
                "the server's Finished MAC did not verify",
            )
        self._absorb(full)
        through_finished = self._hash()  # (the application secrets' transcript: derived below)
        # Our flight: identity (if asked for), step answers, Finished.
        self._hold_flight()
        if self._client_auth is not ClientAuth.OFF and self._cfg.identity is not None:
            self._send_handshake(self._identity_message())
            self._send_handshake(self._sign_transcript(_CLIENT_VERIFY))
        elif self._client_auth is ClientAuth.REQUIRED:
            _abort(
                AuthenticationFailed,
                AlertCode.CERTIFICATE_REQUIRED,
                "the server requires client authentication and this context has no identity",
            )
        for step in self._agreed:
            payload = self._run_hook(
                step, "client_payload", self._peer_payloads.get(step.protocol_id)
            )
            if payload is not None:
                self._send_handshake(StepData(step.protocol_id, payload))
        self._send_handshake(Finished(ks.finished_mac(keys.client_hs, self._hash())))
        self._seal_flight()
        hook, self._flush_hook = self._flush_hook, None  # no cycle left behind
        if hook is not None:  # the flight leaves before the keys are derived and switched
            hook(self._take_output())
            self._stop_if_closed()
        keys.application(through_finished)
        keys.resumption_secret(self._hash())
        self._connected()
        return _CONNECTED

    # ---------------------------------------------------------------- server side

    def _on_client_hello(self, msg: ClientHello, full: bytes) -> State:
        ctx, cfg = self._ctx, self._cfg
        first = self._hello
        if msg.version != 1:
            _abort(
                NegotiationFailed,
                AlertCode.PROTOCOL_VERSION,
                f"the client speaks protocol version {msg.version}; this server speaks 1",
            )
        if first is not None:
            same = (
                first.random,
                first.timestamp_ms,
                first.namespace,
                first.ciphers,
                first.groups,
                first.expected_peer,
                first.steps,
                first.max_record_size,
            )
            now = (
                msg.random,
                msg.timestamp_ms,
                msg.namespace,
                msg.ciphers,
                msg.groups,
                msg.expected_peer,
                msg.steps,
                msg.max_record_size,
            )
            if same != now or msg.share_group != GROUP_IDS[self._group]:
                _abort(
                    ProtocolViolation,
                    AlertCode.ILLEGAL_PARAMETER,
                    "the retried client hello differs from the first",
                )
        else:
            skew = abs(self._now - msg.timestamp_ms / 1000.0)
            if skew > cfg.max_clock_skew:
                _abort(
                    ProtocolViolation,
                    AlertCode.STALE_HELLO,
                    f"client hello timestamp is {skew:.3f} s away from now "
                    f"(max_clock_skew={cfg.max_clock_skew:g})",
                )
            if ctx._hello_replayed(msg.random, self._now, cfg.max_clock_skew):
                _abort(
                    ProtocolViolation,
                    AlertCode.REPLAYED_HELLO,
                    "this client hello was seen before (replay)",
                )
        if msg.namespace != cfg.namespace.encode():
            _abort(
                NegotiationFailed,
                AlertCode.NAMESPACE_MISMATCH,
                f"the client's namespace {msg.namespace!r} is not {cfg.namespace!r}",
            )
        cipher = next((c for c in cfg.ciphers if CIPHER_IDS[c] in msg.ciphers), None)
        group = next((g for g in cfg.groups if GROUP_IDS[g] in msg.groups), None)
        if cipher is None or group is None:
            what = "cipher" if cipher is None else "key-exchange group"
            _abort(NegotiationFailed, AlertCode.NEGOTIATION_FAILED, f"no common {what}")
        self._agreed = self._agree_steps(msg.steps)
        ident = cfg.identity
        assert ident is not None
        if msg.expected_peer and msg.expected_peer != _peer_id_hash(ident.peer_id):
            _abort(
                AuthenticationFailed,
                AlertCode.WRONG_PEER,
                "the client expects another peer (wrong target)",
            )
        if not 512 <= msg.max_record_size <= (1 << 18):
            _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER, "invalid max_record_size")
        offer = PskOffer.decode(msg.psk_offer) if msg.psk_offer else None
        group_mismatch = GROUP_IDS[group] != msg.share_group
        contents = None
        if offer is not None:
            if (
                group_mismatch
                and PSK_MODES[offer.mode] == PskMode.PSK_ONLY
                and cfg.resumption == "psk_only"
                and msg.share_group in msg.groups
                and _GROUP_BY_ID.get(msg.share_group) in cfg.groups
            ):
                # A psk_only resumption has no key exchange: the group of the
                # client's hello (one this server allows) does, if the ticket
                # is honoured, rather than a HelloRetry for a key share.
                contents = self._usable_ticket(offer)
                if contents is not None:
                    group, group_mismatch = _GROUP_BY_ID[msg.share_group], False
            elif not group_mismatch:
                contents = self._usable_ticket(offer)
        self._stop_if_closed()  # (a trust rule ran)
        if offer is not None and contents is not None:
            keys = ks.KeySchedule(contents.psk)
            h = self._transcript.copy()
            h.update(full[:-BINDER_SIZE] + bytes(BINDER_SIZE))
            if not ks.finished_ok(keys.binder(h.digest()), offer.binder):
                _abort(AuthenticationFailed, AlertCode.DECRYPT_ERROR,
                       "the resumption binder did not verify")  # fmt: skip
            allow_psk_only = cfg.resumption == "psk_only"
            mode = PSK_MODES[offer.mode] if allow_psk_only else PskMode.PSK_DHE
        else:
            keys, mode = ks.KeySchedule(), PskMode.NONE
        # A retry when the share is for another group, or missing and needed.
        retry = group_mismatch or (mode != PskMode.PSK_ONLY and not msg.share)
        if retry and contents is not None:  # the retried hello is judged afresh
            contents, keys, mode = None, ks.KeySchedule(), PskMode.NONE
        self._absorb(full)
        self._group, self._cipher = group, cipher
        if offer is not None and offer.early_records:
            self._decide_early_data(offer, contents, keys, retry or first is not None)
        if retry:
            if first is not None:
                _abort(
                    ProtocolViolation,
                    AlertCode.ILLEGAL_PARAMETER,
                    "the retried client hello has the wrong key share",
                )
            self._hello = msg
            self._send_handshake(HelloRetry(GROUP_IDS[group]))
            return State.SERVER_WAIT_RETRIED_HELLO
        self._hello = msg
        if mode == PskMode.PSK_ONLY:
            shared, reply = ks.ZEROS, b""
        else:
            pub_cls = GROUPS[group].PUBLIC_KEY_CLASS
            try:
                share = pub_cls.from_public_bytes(msg.share)
                if group.startswith("x25519"):  # with a prepared X25519 key
                    self._took_keys = True
                    shared, reply = share._encapsulate_with_ephemeral(
                        self._ctx._key_pool.take_server_ephemeral()
                    )
                else:
                    shared, reply = share.encapsulate()
            except (InvalidKey, ValueError) as exc:
                _abort(
                    KeyAgreementFailed,
                    AlertCode.ILLEGAL_PARAMETER,
                    f"the client's {group} key share is invalid: {exc}",
                )
        self._psk_mode = mode
        self._resumed = mode != PskMode.NONE
        self._send_handshake(
            ServerHello(os.urandom(RANDOM_SIZE), GROUP_IDS[group], CIPHER_IDS[cipher], reply, mode)
        )
        hook, self._flush_hook = self._flush_hook, None  # no cycle left behind
        if hook is not None:
            hook(self._take_output())
            self._stop_if_closed()
        keys.handshake(shared, self._hash())
        self._keys = keys
        self._install(keys.server_hs, keys.client_hs, handshake=True)
        self._hold_flight()
        self._client_auth = ClientAuth.OFF if self._resumed else _AUTH_MODE[cfg.client_auth]
        self._send_fragment = min(self._record_size, msg.max_record_size)
        self._send_handshake(
            EncryptedExtensions(
                self._client_auth,
                tuple(s.protocol_id for s in self._agreed),
                self._record_size,
                self._early_accepted,
            )
        )
        if self._resumed:
            assert contents is not None
            self._authenticated = contents.authenticated
            if contents.client_key:
                # As after a full handshake: a server with no trust settings
                # (and no custom rule) checked the key against nothing.
                self._trust = "resumed" if self._checks_client_keys() else None
                self._peer_key = PeerKey.from_bytes(contents.client_key)
                if contents.client_certificate:
                    self._peer_cert = Certificate.from_bytes(contents.client_certificate)
        else:
            self._send_handshake(self._identity_message())
            self._send_handshake(self._sign_transcript(_SERVER_VERIFY))
        for step in self._agreed:
            payload = self._run_hook(step, "server_payload")
            if payload is not None:
                self._send_handshake(StepData(step.protocol_id, payload))
        self._send_handshake(Finished(ks.finished_mac(keys.server_hs, self._hash())))
        self._seal_flight()
        if hook is not None:  # the flight leaves; what follows is made while the client reads it
            hook(self._take_output())
            self._stop_if_closed()
        keys.application(self._hash())
        # As in TLS 1.3, the server sends under its application keys from here
        # on: the client switches to them on reading this Finished, so that it
        # can read an alert about its own flight.
        self._install(keys.server_app, None)
        self._sealer_fragment()
        if self._awaits_only_finished() and self._issues_tickets():
            self._send_early_tickets()
        return State.SERVER_WAIT_FLIGHT

    def _send_early_tickets(self) -> None:
        """(server) Tickets right behind this flight, when the client's flight is
        certain to be its Finished alone (no identity asked, no step agreed).

        As RFC 8446 section 4.6.1 allows, the resumption secret is derived from
        the transcript with the Finished the client must send; that Finished is
        then checked against the one kept here. The flight has left (through the
        adapter's hook), so the client reads it while the tickets are made, and
        after the client's Finished the server has nothing left to make.
        """
        keys = self._keys
        assert keys is not None
        expected = ks.finished_mac(keys.client_hs, self._hash())
        transcript = self._transcript.copy()
        transcript.update(frame(Finished(expected)))
        keys.resumption_secret(transcript.digest())
        self._expected_finished = expected
        self._send_tickets()

    def _checks_client_keys(self) -> bool:
        """(server) Whether a client's key is checked against trust: trust
        settings, or a custom authentication step's rule. Otherwise any
        client key is taken, and the session reports ``trust`` None."""
        return self._cfg.trust.configured or type(self._auth_step) is not AuthenticationStep

    def _usable_ticket(self, offer: PskOffer) -> TicketContents | None:
        """(server) The ticket's contents if it can be honoured, else None (which
        means a full handshake: never an error)."""
        ctx, cfg, now = self._ctx, self._cfg, self._now
        if cfg.resumption == "off":
            return None
        contents = ctx.ticket_keys.open(offer.ticket, now)
        if contents is None:
            return None
        ident = cfg.identity
        assert ident is not None
        if not contents.issued - 60 <= now < contents.issued + contents.lifetime:
            return None
        if now >= contents.authenticated + MAX_TICKET_LIFETIME:  # (as issued: a bound kept)
            return None
        if contents.namespace != cfg.namespace.encode():
            return None
        if contents.server_id_hash != _peer_id_hash(ident.peer_id):
            return None
        if not contents.client_key:
            return None if cfg.client_auth == "required" else contents
        # The client was authenticated: it must still be trusted.
        try:
            key = PeerKey.from_bytes(contents.client_key)
            cert = (
                Certificate.from_bytes(contents.client_certificate)
                if contents.client_certificate
                else None
            )
            if self._checks_client_keys():
                self._verify_peer(  # (a key not proved here: looked up, never recorded)
                    cfg.trust._lookup_only(), key, certificate=cert,
                    name=cert.subject_name if cert is not None else None,
                    now=now, expected_peer=None,
                )  # fmt: skip
        except Exception:
            return None
        return contents

    def _decide_early_data(
        self,
        offer: PskOffer,
        contents: TicketContents | None,
        keys: ks.KeySchedule,
        retried: bool,
    ) -> None:
        """(server) Accept the announced early records, or arrange to skip them.

        Called with the ClientHello in the transcript."""
        if offer.early_records > _MAX_EARLY_RECORDS:  # (else skipped, however many)
            _abort(
                ProtocolViolation,
                AlertCode.ILLEGAL_PARAMETER,
                f"the client announces {offer.early_records} early records; no ticket "
                f"allows more than {_MAX_EARLY_RECORDS}",
            )
        ctx, cfg = self._ctx, self._cfg
        accept = (
            contents is not None
            and not retried
            and cfg.early_data
            and contents.max_early_data > 0
            and contents.zone == ctx._early_zone  # (its replay cache is this one)
            and contents.cipher in _CIPHER_BY_ID
            and _CIPHER_BY_ID[contents.cipher] in cfg.ciphers
            and offer.early_records <= -(-contents.max_early_data // _HANDSHAKE_RECORD)
        )
        if accept:
            assert contents is not None
            client_age = ((offer.obfuscated_age - contents.age_add) % (1 << 32)) / 1000.0
            server_age = self._now - contents.issued
            accept = abs(client_age - server_age) <= cfg.early_data_window and (
                ctx._early_replay.first_use(
                    offer.ticket, contents.issued + contents.lifetime, self._now
                )
            )
        if not accept:
            self._early_skip = offer.early_records
            return
        assert contents is not None
        cipher = _CIPHER_BY_ID[contents.cipher]
        secret = keys.early_traffic(self._hash())
        self._early_opener = RecordOpener._from_secret(cipher, secret, _HANDSHAKE_RECORD)
        self._early_left = offer.early_records
        self._early_limit = contents.max_early_data
        self._early_accepted = True

    def _agree_steps(self, offered: tuple[StepOffer, ...]) -> list[HandshakeStep]:
        theirs = {o.protocol_id: o for o in offered}
        if len(theirs) != len(offered):
            _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER, "duplicate step ids offered")
        ours = {s.protocol_id for s in self._steps}
        for o in offered:
            if o.required and o.protocol_id not in ours:
                _abort(
                    NegotiationFailed,
                    AlertCode.NEGOTIATION_FAILED,
                    f"the client requires handshake step {o.protocol_id!r}, "
                    "which this server does not support",
                )
        agreed = []
        for s in self._steps:
            if s.protocol_id in theirs:
                agreed.append(s)
            elif s.required:
                _abort(
                    NegotiationFailed,
                    AlertCode.NEGOTIATION_FAILED,
                    f"the client does not support the required step {s.protocol_id!r}",
                )
        return agreed

    def _on_client_finished(self, msg: Finished, full: bytes) -> State:
        keys = self._keys
        assert keys is not None
        if self._peer_key is None and self._client_auth is ClientAuth.REQUIRED:
            _abort(
                AuthenticationFailed,
                AlertCode.CERTIFICATE_REQUIRED,
                "client authentication is required and the client sent no identity",
            )
        expected = self._expected_finished or ks.finished_mac(keys.client_hs, self._hash())
        if not ks.finished_ok(expected, msg.verify_data):
            _abort(
                AuthenticationFailed,
                AlertCode.DECRYPT_ERROR,
                "the client's Finished MAC did not verify",
            )
        for step in self._agreed:
            self._run_hook(step, "verify_client_payload", self._peer_payloads.get(step.protocol_id))
        self._absorb(full)
        if not self._expected_finished:  # else derived, and the tickets sent, with the flight
            keys.resumption_secret(self._hash())
        self._connected()
        return _CONNECTED

    # -------------------------------------------------------------- both sides

    def _on_identity(self, msg: IdentityMsg, full: bytes) -> State:
        if not self._client and self._client_auth is ClientAuth.OFF:
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                "unexpected_message: client identity sent but client authentication is off",
            )
        try:
            self._peer_key = PeerKey.from_bytes(msg.peer_key)
            self._peer_cert = Certificate.from_bytes(msg.certificate) if msg.certificate else None
        except (ValueError, NautilusError) as exc:
            _abort(
                ProtocolViolation,
                AlertCode.DECODE_ERROR,
                f"decode_error: malformed identity: {exc}",
            )
        self._absorb(full)
        return State.CLIENT_WAIT_VERIFY if self._client else State.SERVER_WAIT_VERIFY

    def _on_verify(self, msg: Verify, full: bytes) -> State:
        key = self._peer_key
        assert key is not None
        context = _SERVER_VERIFY if self._client else _CLIENT_VERIFY
        try:
            key.verify(msg.signature, context + self._hash())
        except AuthenticationFailed:
            _abort(
                AuthenticationFailed,
                AlertCode.DECRYPT_ERROR,
                f"the {'server' if self._client else 'client'}'s signature over the "
                "handshake did not verify",
            )
        expected = self._expected_peer if self._client else None
        if expected is not None and not key.matches(expected):
            want = expected.peer_id if isinstance(expected, PeerKey) else expected
            _abort(
                AuthenticationFailed,
                AlertCode.WRONG_PEER,
                f"wrong peer: expected {want}, got {key.peer_id}",
            )
        if self._client or self._checks_client_keys():
            name = (
                self._server_name
                if self._client
                else (self._peer_cert.subject_name if self._peer_cert is not None else None)
            )
            try:
                self._trust = self._verify_peer(
                    self._cfg.trust,
                    key,
                    certificate=self._peer_cert,
                    name=name,
                    now=self._now,
                    expected_peer=expected,
                )
            except AuthenticationFailed as exc:
                expired = isinstance(exc, CertificateExpired)
                alert = AlertCode.CERTIFICATE_EXPIRED if expired else AlertCode.UNTRUSTED_PEER
                raise _Abort(exc, alert) from None
            except Exception as exc:  # an unusable known-peers file, a custom step's bug
                _abort(
                    AuthenticationFailed,
                    AlertCode.INTERNAL_ERROR,
                    "could not decide whether the peer is trusted: "
                    f"{type(exc).__name__}: {_exception_text(exc)}",
                )
        else:
            self._trust = None  # server without trust settings: accepts any client key
        self._absorb(full)
        return State.CLIENT_WAIT_FINISHED if self._client else State.SERVER_WAIT_FINISHED

    def _on_step_data(self, msg: StepData, full: bytes) -> State:
        if not self._client and self._peer_key is None and self._client_auth is ClientAuth.REQUIRED:
            _abort(
                AuthenticationFailed,
                AlertCode.CERTIFICATE_REQUIRED,
                "client authentication is required and the client sent no identity",
            )
        agreed = {s.protocol_id for s in self._agreed}
        if msg.protocol_id not in agreed or msg.protocol_id in self._peer_payloads:
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                f"unexpected_message: data for step {msg.protocol_id!r}",
            )
        self._peer_payloads[msg.protocol_id] = msg.payload
        self._absorb(full)
        return State.CLIENT_WAIT_FINISHED if self._client else State.SERVER_WAIT_FINISHED

    def _connected(self) -> None:
        keys = self._keys
        assert keys is not None
        if self._client:
            self._install(keys.client_app, keys.server_app)
            self._sealer_fragment()
        else:
            self._install(None, keys.client_app)  # sending keys switched after our Finished
        keys.wipe_handshake()
        self._deadline = None
        self._started = self._last_update = self._now
        self._sent_at_update = self._bytes_sent
        self._session = SessionInfo(
            role=self._role,
            group=self._group,
            cipher=self._cipher,
            peer_key=self._peer_key,
            trust=self._trust,
            namespace=self._cfg.namespace,
            steps=tuple(s.protocol_id for s in self._agreed),
            max_record_size=self._send_fragment,
            resumed=self._resumed,
            early_data_accepted=self._early_accepted,
        )
        self._step_state.clear()
        self._peer_payloads.clear()
        self._events.append(HandshakeCompleted(self._session))
        if not self._client:
            self._cfg.sessions._add(self)
            if not self._expected_finished and self._issues_tickets():
                self._send_tickets()
            keys.resumption = b""  # its tickets are made: a server needs it no more
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Seal what was written while the handshake was in progress."""
        pending, self._pending = self._pending, []
        for ctype, data in pending:
            self._seal_application(data, ctype)

    def _awaits_only_finished(self) -> bool:
        """(server) The client's flight can only be its Finished: no identity
        asked, no step agreed (whose verification could still refuse it)."""
        return self._client_auth is ClientAuth.OFF and not self._agreed

    def _issues_tickets(self) -> bool:
        """(server) Whether this handshake ends with session tickets."""
        return self._cfg.resumption != "off" and self._cfg.tickets_per_handshake > 0

    def _send_tickets(self) -> None:
        """(server) Session tickets for resuming later; this server keeps no state.
        The callers check :meth:`_issues_tickets` first."""
        cfg, keys = self._cfg, self._keys
        ident = cfg.identity
        assert keys is not None
        assert ident is not None
        assert self._sealer is not None
        max_early = cfg.max_early_data if cfg.early_data else 0
        server_hash = _peer_id_hash(ident.peer_id)
        client_key = self._peer_key.to_bytes() if self._peer_key is not None else b""
        client_cert = self._peer_cert.to_bytes() if self._peer_cert is not None else b""
        now = self._now
        lifetime = cfg.ticket_lifetime
        authenticated = self._authenticated
        if authenticated is None:  # a full handshake: authenticated now
            authenticated = now
        else:  # resumed: its tickets end when the original authentication is
            # MAX_TICKET_LIFETIME old (resuming again and again does not extend it)
            left = authenticated + MAX_TICKET_LIFETIME - now
            if left < lifetime:
                if left < 1.0:
                    return
                lifetime = float(int(left))
        namespace = cfg.namespace.encode()
        for _ in range(cfg.tickets_per_handshake):
            rand = os.urandom(12)
            nonce, age_add = rand[:8], int.from_bytes(rand[8:], "big")
            contents = TicketContents(
                now, lifetime, CIPHER_IDS[self._cipher], keys.ticket_psk(nonce), server_hash,
                namespace, client_key, client_cert, max_early, age_add, authenticated,
                self._ctx._early_zone,
            )  # fmt: skip
            ticket = self._ctx.ticket_keys.seal(contents, now)
            msg = NewSessionTicket(int(lifetime), age_add, nonce, ticket, max_early)
            self._out.append(self._sealer._seal_chunk(frame(msg), ContentType.HANDSHAKE))

    def _on_new_session_ticket(self, msg: NewSessionTicket, full: bytes) -> State:
        """(client) Keep a ticket in the context's session cache. (A server
        never gets here: the state table refuses the message before it is
        decoded, see state.RECEIVED_BY_CLIENT_ONLY.)"""
        keys, key = self._keys, self._cache_key()
        if self._cfg.resumption == "off" or keys is None or key is None:
            return _CONNECTED
        if self._peer_key is None or not msg.lifetime:
            return _CONNECTED
        cache = self._cfg.session_cache
        if self._tickets_kept >= cache.tickets_per_server:
            # The cache keeps no more for one server: a server sending more
            # (a flood) costs no more stores, nor writes to a cache's file.
            return _CONNECTED
        self._tickets_kept += 1
        cache.store(
            key,
            StoredTicket(
                ticket=msg.ticket,
                psk=keys.ticket_psk(msg.nonce),
                cipher=CIPHER_IDS[self._cipher],
                server_key=self._peer_key.to_bytes(),
                server_certificate=self._peer_cert.to_bytes() if self._peer_cert else b"",
                received=self._now,
                lifetime=min(float(msg.lifetime), MAX_TICKET_LIFETIME),
                age_add=msg.age_add,
                max_early_data=min(msg.max_early_data, MAX_EARLY_DATA),
                namespace=self._cfg.namespace.encode(),
            ),
        )
        return _CONNECTED

    def _awaits_tickets(self) -> bool:
        """(client, closing) Whether a session ticket of this server may still
        arrive and be kept: connected, none kept yet, and a cache key."""
        return (
            self._state is _CONNECTED
            and self._client
            and not self._tickets_kept
            and self._cfg.resumption != "off"
            and self._opener is not None
            and self._keys is not None
            and bool(self._keys.resumption)
            and self._cache_key() is not None
        )

    def _read_after_close(self, data: bytes | bytearray | memoryview) -> None:
        """(client, closed: see :meth:`close`) Read what the server still sends
        for its session tickets; drop the rest. Nothing is answered (this side
        has sent its close_notify) and nothing fails: anything unexpected (a
        forged record, a message that is not a ticket) ends the reading, as
        the server's alert does."""
        self._in += data
        more = False
        try:
            more = self._tickets_in_tail()
        except Exception as exc:  # whatever it was, the reading ends (the peer is not told)
            log.debug("a closed client stops reading for tickets: %s", type(exc).__name__)
        finally:
            if not more:  # (a BaseException too: what was opened in place is wiped)
                self._end_after_close()

    def _tickets_in_tail(self) -> bool:
        """Open the complete records received after close; False: stop reading."""
        buf, opener, keys = self._in, self._opener, self._keys
        assert opener is not None
        assert keys is not None
        while self._tickets_tail > 0:
            if not buf:
                return True  # (more may come)
            if buf[0] != RECORD_SEALED:
                return False
            # In place, up to the first record that is not a handshake one.
            spans, used = opener.open_spans(buf, None, ContentType.HANDSHAKE)
            if not used:
                return True  # an incomplete record (at most the opener's bound)
            for span in spans:
                if self._tickets_tail <= 0:
                    return False
                self._tickets_tail -= 1
                ctype, start, end = span.content_type, span.offset, span.offset + span.length
                if ctype == ContentType.HANDSHAKE:
                    self._hs.feed(bytes(memoryview(buf)[start:end]))
                    while (item := self._hs.next_message()) is not None:
                        mtype, body, full = item
                        if mtype is not MsgType.NEW_SESSION_TICKET:
                            return False
                        msg = decode(mtype, body)
                        assert isinstance(msg, NewSessionTicket)
                        self._on_new_session_ticket(msg, full)
                elif ctype == ContentType.KEY_UPDATE and end - start == 1 and buf[start] <= 1:
                    opener._rekey_from_secret(keys.update_traffic(False))
                elif ctype not in (ContentType.APPLICATION_DATA, ContentType.MESSAGE):
                    return False  # an alert (the server's close_notify), or garbage
            buf[:used] = bytes(used)  # (opened in place: wiped)
            del buf[:used]
            if self._tickets_kept >= self._cfg.session_cache.tickets_per_server:
                return False
        return False

    def _end_after_close(self) -> None:
        """Drop what a closed client kept to read its tickets (if it did)."""
        self._tickets_tail = 0
        if self._opener is not None:
            self._opener.close()
            self._opener = None
        if self._keys is not None:
            self._keys.wipe()
            self._keys = None
        _wipe(self._in)
        self._in.clear()
        self._hs = HandshakeBuffer()

    def _sealer_fragment(self) -> None:
        """Application records use the negotiated size (handshake ones were <= 16 KiB)."""
        sealer = self._sealer
        assert sealer is not None
        sealer.set_max_fragment(self._send_fragment)
