"""The sans-IO connection: bytes in, events and bytes out; no sockets, no clock.

The caller feeds received bytes to :meth:`Connection.receive_data`, takes
events from :meth:`Connection.next_event`, sends what
:meth:`Connection.data_to_send` returns, and drives the handshake timeout with
:meth:`Connection.get_timer` / :meth:`Connection.handle_timer`. ``now`` is always
UNIX time in seconds (``time.time()``), passed in by the caller.

A peer that misbehaves never makes ``receive_data`` raise: the connection sends
an alert (where that is safe), closes, and reports
``ConnectionClosed(error=...)`` with the named error. Misuse of the API (wrong
types, sending on a closed connection) raises at once.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import deque
from collections.abc import Iterable
from typing import NoReturn, cast

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
    RecordLimitReached,
    SessionKeyDerivationFailed,
)
from nautilus.identity import Certificate, PeerKey
from nautilus.kem import GROUPS, KEMPrivateKey
from nautilus.protocol import keyschedule as ks
from nautilus.protocol.codec import DecodeError
from nautilus.protocol.events import (
    AlertReceived,
    ConnectionClosed,
    DataReceived,
    Event,
    HandshakeCompleted,
    KeysUpdated,
    MessageReceived,
    SessionInfo,
)
from nautilus.protocol.messages import (
    MAX_HANDSHAKE_MESSAGE,
    MAX_PLAIN_FRAGMENT,
    PLAIN_HEADER_SIZE,
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
from nautilus.record import ContentType, PackedOpen, RecordOpener, RecordSealer

__all__ = ["Connection"]

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
    AlertCode.UNEXPECTED_MESSAGE: ProtocolViolation,
    AlertCode.DECODE_ERROR: ProtocolViolation,
    AlertCode.RECORD_OVERFLOW: ProtocolViolation,
    AlertCode.STALE_HELLO: ProtocolViolation,
    AlertCode.REPLAYED_HELLO: ProtocolViolation,
}


class _Abort(Exception):
    """Internal: stop processing, send ``alert``, close with ``error``."""

    def __init__(self, error: NautilusError, alert: AlertCode | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.alert = alert


def _abort(cls: type[NautilusError], alert: AlertCode | None, message: str) -> NoReturn:
    raise _Abort(cls(message), alert)


def _plain_record(rtype: int, payload: bytes) -> bytes:
    return bytes([rtype]) + len(payload).to_bytes(3, "big") + payload


class Connection:
    """One Nautilus connection, client or server side, without I/O.

    Args:
        context: the shared :class:`nautilus.Context`.
        role: ``"client"`` or ``"server"``.
        server_name: (client) the name the known-peers file records the server
            under, usually ``"host:port"``.
        expected_peer: (client) the peer the client means to reach; any other
            key fails the handshake.

    Raises:
        TypeError, ValueError: bad arguments (a server context without an
            identity, ``expected_peer`` on a server, ...).
    """

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
        if role == "server" and context.identity is None:
            raise ValueError("a server needs a context with an identity")
        if role == "server" and (expected_peer is not None or server_name is not None):
            raise ValueError("expected_peer and server_name apply to clients only")
        if server_name is not None and not isinstance(server_name, str):
            raise TypeError(f"server_name must be a str, not {type(server_name).__name__}")
        if expected_peer is not None and not isinstance(expected_peer, (PeerKey, str)):
            raise TypeError("expected_peer must be a PeerKey or a peer id string")
        if isinstance(expected_peer, str):
            from nautilus.identity import parse_peer_id

            parse_peer_id(expected_peer)
        self._ctx = context
        self._role = role
        self._client = role == "client"
        self._server_name = server_name
        self._expected_peer = expected_peer
        self._state = State.CLIENT_START if self._client else State.SERVER_START
        self._events: deque[Event] = deque()
        self._out = bytearray()
        self._in = bytearray()
        self._scratch = bytearray()
        self._hs = HandshakeBuffer()
        self._transcript = hashlib.sha256()
        self._keys: ks.KeySchedule | None = None
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None
        self._send_secret = b""
        self._recv_secret = b""
        self._bytes_since_update = 0
        self._now = 0.0
        self._deadline: float | None = None
        self._session: SessionInfo | None = None
        self._error: NautilusError | None = None
        self._pending: list[tuple[int, bytes]] = []
        self._batch_type: int = ContentType.APPLICATION_DATA
        self._messages = bytearray()
        self._steps: tuple[HandshakeStep, ...] = context.handshake.custom_steps
        self._auth_step = context.handshake.authentication
        self._agreed: list[HandshakeStep] = []
        self._step_state: dict[str, StepContext] = {}
        self._peer_payloads: dict[str, bytes] = {}
        self._peer_key: PeerKey | None = None
        self._peer_cert: Certificate | None = None
        self._trust: str | None = None
        self._kem: KEMPrivateKey | None = None
        self._hello: ClientHello | None = None
        self._retried = False
        self._group = ""
        self._cipher = ""
        self._client_auth = ClientAuth.OFF
        self._send_fragment = min(context.max_record_size, _HANDSHAKE_RECORD)

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
        return self._state is State.CONNECTED

    @property
    def is_closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def session(self) -> SessionInfo | None:
        """What the handshake established, once it has completed."""
        return self._session

    @property
    def error(self) -> NautilusError | None:
        """Why the connection failed, if it did."""
        return self._error

    def start(self, now: float) -> None:
        """Begin: a client sends its hello; both arm the handshake timer.

        Raises:
            TypeError: ``now`` is not a number.
            ClosedError: already started.
        """
        self._set_now(now)
        nxt = LOCAL_TRANSITIONS.get((self._state, "start"))
        if nxt is None:
            raise ClosedError(f"start() called in state {self._state.value}")
        self._deadline = self._now + self._ctx.handshake_timeout
        try:
            if self._client:
                self._send_client_hello()
        except _Abort as abort:
            self._fail(abort.error, abort.alert)
            return
        self._set_state(nxt)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> None:
        """Feed bytes received from the peer.

        Raises:
            TypeError: ``data`` is not bytes-like.
            ClosedError: ``start()`` was not called.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if now is not None:
            self._set_now(now)
        if self._state in (State.CLIENT_START, State.SERVER_START):
            raise ClosedError("call start(now) before receive_data()")
        if self._state is State.CLOSED:
            return
        self._in += data
        try:
            self._process_input()
        except _Abort as abort:
            self._fail(abort.error, abort.alert)
        except DecodeError as exc:
            alert = AlertCode.RECORD_OVERFLOW if "record_overflow" in str(exc) else None
            self._fail(exc, alert or AlertCode.DECODE_ERROR)
        except ProtocolViolation as exc:
            self._fail(exc, AlertCode.UNEXPECTED_MESSAGE)

    def receive_eof(self) -> None:
        """The peer closed its side of the transport."""
        if self._state is State.CLOSED:
            return
        if self._state is State.CONNECTED:
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
        if self._state is State.CLOSED:
            raise ClosedError("the connection is closed") from self._error
        if not data:
            return
        if self._state is not State.CONNECTED:
            self._pending.append((ContentType.APPLICATION_DATA, bytes(data)))
            return
        self._seal_application(data, ContentType.APPLICATION_DATA)

    def send_message(self, message: bytes | bytearray | memoryview) -> None:
        """Send one message of the message API (delivered whole, as MessageReceived).

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
        if isinstance(messages, (bytes, bytearray, memoryview, str)):
            raise TypeError("messages must be an iterable of bytes-like objects, not one object")
        limit = self._ctx.max_message_size
        parts: list[bytes | bytearray | memoryview] = []
        for m in messages:
            if not isinstance(m, (bytes, bytearray, memoryview)):
                raise TypeError(f"a message must be bytes-like, not {type(m).__name__}")
            n = m.nbytes if isinstance(m, memoryview) else len(m)
            if n > limit:
                raise MessageTooLarge(
                    f"a message of {n} bytes exceeds max_message_size ({limit} bytes)"
                )
            parts.append(n.to_bytes(4, "big"))
            parts.append(m)
        if self._state is State.CLOSED:
            raise ClosedError("the connection is closed") from self._error
        if not parts:
            return
        framed = b"".join(parts)
        if self._state is not State.CONNECTED:
            self._pending.append((ContentType.MESSAGE, framed))
            return
        self._seal_application(framed, ContentType.MESSAGE)

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport (and forget)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (UNIX time), or None."""
        return self._deadline if self._state in HANDSHAKE_STATES else None

    def handle_timer(self, now: float) -> None:
        """Fire the handshake timeout if ``now`` is past it.

        Raises:
            TypeError: ``now`` is not a number.
        """
        self._set_now(now)
        if self._deadline is not None and self._state in HANDSHAKE_STATES and now >= self._deadline:
            self._fail(
                HandshakeTimeout(
                    f"the handshake did not complete within {self._ctx.handshake_timeout:g} s"
                ),
                AlertCode.HANDSHAKE_TIMEOUT,
            )

    def update_keys(self, request_peer: bool = True) -> None:
        """Ratchet the sending keys now, and ask the peer to ratchet its own.

        Raises:
            ClosedError: the handshake is not complete, or the connection is closed.
        """
        if self._state is not State.CONNECTED:
            raise ClosedError("keys can only be updated on an established connection")
        self._send_key_update(request_peer)

    def close(self) -> None:
        """Send close_notify and close. Idempotent."""
        if self._state is State.CLOSED:
            return
        if self._state not in (State.CLIENT_START, State.SERVER_START):
            self._send_alert(AlertCode.CLOSE_NOTIFY)
        self._teardown()

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """Keying material bound to this session, for channel binding.

        Raises:
            TypeError: wrong types.  ValueError: ``length`` not in 1..8160.
            ClosedError: the handshake has not completed.
        """
        if not isinstance(label, bytes) or not isinstance(context, bytes):
            raise TypeError("label and context must be bytes")
        if not isinstance(length, int) or isinstance(length, bool):
            raise TypeError("length must be an int")
        if not 1 <= length <= 255 * ks.HASH_SIZE:
            raise ValueError(f"length must be in 1..{255 * ks.HASH_SIZE}, got {length}")
        keys = self._keys
        if self._session is None or self._error is not None or keys is None or not keys.exporter:
            raise ClosedError(
                "keying material is available once the handshake has completed, "
                "and not after a failure"
            )
        return keys.export(label, context, length)

    def __repr__(self) -> str:
        return f"<nautilus.Connection {self._role} {self._state.value}>"

    # ------------------------------------------------------------- state, events

    def _set_now(self, now: float) -> None:
        if not isinstance(now, (int, float)) or isinstance(now, bool):
            raise TypeError(f"now must be a number (UNIX time), not {type(now).__name__}")
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite UNIX time, got {now}")
        self._now = float(now)

    def _set_state(self, new: State) -> None:
        self._state = new

    def _fail(self, error: NautilusError, alert: AlertCode | None) -> None:
        if self._state is State.CLOSED:
            return
        if alert is not None:
            self._send_alert(alert)
        self._error = error
        self._keys = None
        self._events.append(ConnectionClosed(error))
        self._teardown()

    def _teardown(self) -> None:
        self._state = State.CLOSED
        self._deadline = None
        for direction in (self._sealer, self._opener):
            if direction is not None:
                direction.close()
        self._sealer = self._opener = None
        self._kem = None
        self._send_secret = self._recv_secret = b""
        self._pending.clear()
        self._in.clear()

    # -------------------------------------------------------------- record layer

    def _process_input(self) -> None:
        buf = self._in
        while buf and self._state is not State.CLOSED:
            rtype = buf[0]
            if rtype == RECORD_SEALED:
                if self._opener is None:
                    _abort(
                        ProtocolViolation,
                        AlertCode.UNEXPECTED_MESSAGE,
                        "unexpected_message: encrypted record before keys were agreed",
                    )
                if not self._open_records():
                    return
                continue
            if rtype not in (RECORD_ALERT_PLAIN, RECORD_HANDSHAKE_PLAIN):
                _abort(
                    ProtocolViolation,
                    AlertCode.DECODE_ERROR,
                    f"decode_error: unknown record type 0x{rtype:02x}",
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
                if self._opener is not None or self._state not in PLAINTEXT_HANDSHAKE_STATES:
                    _abort(
                        ProtocolViolation,
                        AlertCode.UNEXPECTED_MESSAGE,
                        "unexpected_message: plaintext handshake record after key agreement",
                    )
                self._handshake_bytes(payload)
            else:
                if self._state is State.CONNECTED:
                    _abort(
                        ProtocolViolation,
                        AlertCode.UNEXPECTED_MESSAGE,
                        "unexpected_message: plaintext alert on an encrypted connection",
                    )
                self._on_alert(payload)

    def _open_records(self) -> bool:
        """Open what complete records there are; False if more bytes are needed."""
        opener = self._opener
        assert opener is not None
        if len(self._scratch) < len(self._in):
            self._scratch = bytearray(max(len(self._in), 2 * len(self._scratch)))
        try:
            opened = opener.open_packed(self._in, self._scratch, self._batch_type)
        except RecordLimitReached:
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                "the peer sent more records than one key may protect without a key update",
            )
        except IntegrityError as exc:
            del self._in[: exc.consumed]
            good = cast("PackedOpen | None", exc.records[0] if exc.records else None)
            if good is not None and good.records:
                self._deliver(good)  # authentic records before the bad one
            if self._state in HANDSHAKE_STATES:
                _abort(
                    KeyAgreementFailed,
                    AlertCode.BAD_RECORD_MAC,
                    "could not decrypt the peer's handshake records: the key exchange was "
                    "tampered with or the two sides derived different keys",
                )
            raise _Abort(
                IntegrityError(f"a record failed authentication ({exc}); connection closed"),
                AlertCode.BAD_RECORD_MAC,
            ) from None
        del self._in[: opened.consumed]
        if not opened.records:
            return False
        self._deliver(opened)
        return True

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
        if last_in_run or self._state is State.CLOSED:
            return
        ctype = opened.last_type
        self._content(ctype, run_end, opened.written)
        if ctype in (ContentType.APPLICATION_DATA, ContentType.MESSAGE):
            self._batch_type = ctype

    def _content(self, ctype: int, start: int, end: int) -> None:
        """Handle the content ``self._scratch[start:end]`` of type ``ctype``."""
        if ctype not in CONTENT_ALLOWED[self._state]:
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                f"unexpected_message: content type {ctype} in state {self._state.value}",
            )
        if ctype == ContentType.APPLICATION_DATA:
            if end > start:
                self._events.append(DataReceived(bytes(self._scratch[start:end])))
            return
        if ctype == ContentType.MESSAGE:
            self._feed_messages(start, end)
            return
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
        """Cut length-prefixed messages out of the message stream."""
        buf = self._messages
        if buf:
            buf += self._scratch[start:end]
            data: bytes | bytearray = buf
            pos, stop = 0, len(buf)
        else:  # the common case: parse straight from the opened records
            data, pos, stop = self._scratch, start, end
        limit = self._ctx.max_message_size
        events = self._events
        while stop - pos >= 4:
            n = int.from_bytes(data[pos : pos + 4], "big")
            if n > limit:
                _abort(
                    ProtocolViolation,
                    AlertCode.RECORD_OVERFLOW,
                    f"record_overflow: the peer sent a message of {n} bytes "
                    f"(max_message_size is {limit})",
                )
            if stop - pos - 4 < n:
                break
            events.append(MessageReceived(bytes(data[pos + 4 : pos + 4 + n])))
            pos += 4 + n
        if data is buf:
            del buf[:pos]
        else:
            buf += self._scratch[pos:stop]

    def _install(
        self, send_secret: bytes | None, recv_secret: bytes | None, *, handshake: bool = False
    ) -> None:
        """Switch keys (at a record boundary: no handshake bytes may be pending).

        Handshake records are at most 16 KiB, so during the handshake the opener
        accepts that much even if this side's own limit is lower.
        """
        if self._hs:
            _abort(
                ProtocolViolation,
                AlertCode.UNEXPECTED_MESSAGE,
                "unexpected_message: handshake message split across a key change",
            )
        own_limit = self._ctx.max_record_size
        if send_secret is not None:
            key, iv = ks.traffic_keys(send_secret, self._cipher)
            if self._sealer is None:
                self._sealer = RecordSealer(self._cipher, key, iv, max_fragment=self._send_fragment)
            else:
                self._sealer.rekey(key, iv)
            self._send_secret = send_secret
            self._bytes_since_update = 0
        if recv_secret is not None:
            key, iv = ks.traffic_keys(recv_secret, self._cipher)
            if self._opener is not None:
                self._opener.close()
            accept = max(own_limit, _HANDSHAKE_RECORD) if handshake else own_limit
            self._opener = RecordOpener(self._cipher, key, iv, max_fragment=accept)
            self._recv_secret = recv_secret

    def _send_alert(self, code: AlertCode) -> None:
        payload = bytes([code])
        if self._sealer is not None:
            try:
                self._out += self._sealer.seal(payload, ContentType.ALERT)
                return
            except NautilusError:
                return  # nothing more can be said safely
        self._out += _plain_record(RECORD_ALERT_PLAIN, payload)

    def _seal_application(self, data: bytes | bytearray | memoryview, ctype: int) -> None:
        sealer = self._sealer
        assert sealer is not None
        view = memoryview(data).cast("B")
        total, pos = len(view), 0
        per_key_records = self._ctx.key_update_records
        per_key_bytes = self._ctx.key_update_bytes
        while pos < total:
            room_records = per_key_records - sealer.sequence
            room_bytes = per_key_bytes - self._bytes_since_update
            if room_records <= 0 or room_bytes <= 0:
                self._send_key_update(False)
                continue
            n = min(total - pos, room_records * sealer.max_fragment, room_bytes)
            self._out += sealer.seal(view[pos : pos + n], ctype)
            pos += n
            self._bytes_since_update += n

    def _send_key_update(self, request_peer: bool) -> None:
        sealer = self._sealer
        assert sealer is not None
        self._out += sealer.seal(bytes([1 if request_peer else 0]), ContentType.KEY_UPDATE)
        self._install(ks.next_traffic_secret(self._send_secret), None)
        self._events.append(KeysUpdated("send"))

    def _on_key_update(self, payload: bytes) -> None:
        if len(payload) != 1 or payload[0] > 1:
            _abort(ProtocolViolation, AlertCode.DECODE_ERROR, "decode_error: malformed key update")
        self._install(None, ks.next_traffic_secret(self._recv_secret))
        self._events.append(KeysUpdated("receive"))
        if payload[0] == 1:
            self._send_key_update(False)

    def _on_alert(self, payload: bytes) -> None:
        if len(payload) != 1:
            _abort(ProtocolViolation, AlertCode.DECODE_ERROR, "decode_error: malformed alert")
        code = payload[0]
        name = AlertCode.describe(code)
        self._events.append(AlertReceived(code, name))
        if code == AlertCode.CLOSE_NOTIFY:
            if self._state is State.CONNECTED:
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
            err = cls(f"the peer sent alert {name}")
        self._error = err
        self._events.append(ConnectionClosed(err))
        self._teardown()

    # ------------------------------------------------------------ handshake core

    def _handshake_bytes(self, payload: bytes) -> None:
        self._hs.feed(payload)
        while self._state is not State.CLOSED:
            item = self._hs.next_message()
            if item is None:
                return
            mtype, body, full = item
            row = transition(self._state, mtype)
            if row is None:
                _abort(
                    ProtocolViolation,
                    AlertCode.UNEXPECTED_MESSAGE,
                    f"unexpected_message: {mtype.name} in state {self._state.value}",
                )
            handler, allowed = row
            msg = decode(mtype, body)
            nxt: State = getattr(self, handler)(msg, full)
            if nxt not in allowed:  # pragma: no cover - a bug in a handler
                raise AssertionError(f"{handler} chose {nxt} outside {allowed}")
            self._set_state(nxt)

    def _absorb(self, full: bytes) -> None:
        self._transcript.update(full)

    def _hash(self) -> bytes:
        return self._transcript.copy().digest()

    def _send_handshake(self, msg: Message) -> None:
        data = frame(msg)
        self._absorb(data)
        if self._sealer is None:
            for i in range(0, len(data), MAX_PLAIN_FRAGMENT):
                self._out += _plain_record(RECORD_HANDSHAKE_PLAIN, data[i : i + MAX_PLAIN_FRAGMENT])
        else:
            self._out += self._sealer.seal(data, ContentType.HANDSHAKE)

    def _step_context(self, step: HandshakeStep) -> StepContext:
        sc = self._step_state.get(step.protocol_id)
        if sc is None:
            sc = StepContext(self._role, self._ctx.namespace, b"", None)
            self._step_state[step.protocol_id] = sc
        sc.transcript_hash = self._hash()
        sc.peer_key = self._peer_key
        return sc

    def _run_hook(self, step: HandshakeStep, hook: str, *args: object) -> bytes | None:
        try:
            result = getattr(step, hook)(self._step_context(step), *args)
        except HandshakeError as exc:
            raise _Abort(exc, AlertCode.AUTHENTICATION_FAILED) from None
        except Exception as exc:
            _abort(
                AuthenticationFailed,
                AlertCode.AUTHENTICATION_FAILED,
                f"handshake step {step.protocol_id!r} failed: {exc}",
            )
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
        ident = self._ctx.identity
        assert ident is not None
        cert = ident.certificate.to_bytes() if ident.certificate is not None else b""
        return IdentityMsg(ident.public.to_bytes(), cert)

    def _sign_transcript(self, context_string: bytes) -> Verify:
        ident = self._ctx.identity
        assert ident is not None
        return Verify(ident.sign(context_string + self._hash()))

    def _expected_hash(self) -> bytes:
        exp = self._expected_peer
        if exp is None:
            return b""
        peer_id = exp.peer_id if isinstance(exp, PeerKey) else exp
        return hashlib.sha256(peer_id.encode()).digest()

    # ---------------------------------------------------------------- client side

    def _send_client_hello(self) -> None:
        group = self._ctx.groups[0]
        self._kem = GROUPS[group].generate()
        self._hello = ClientHello(
            random=os.urandom(RANDOM_SIZE),
            timestamp_ms=int(self._now * 1000),
            namespace=self._ctx.namespace.encode(),
            ciphers=tuple(CIPHER_IDS[c] for c in self._ctx.ciphers),
            groups=tuple(GROUP_IDS[g] for g in self._ctx.groups),
            share_group=GROUP_IDS[group],
            share=self._kem.public_key().public_bytes_raw(),
            expected_peer=self._expected_hash(),
            steps=tuple(StepOffer(s.protocol_id, s.required) for s in self._steps),
            max_record_size=self._ctx.max_record_size,
        )
        self._send_handshake(self._hello)

    def _on_hello_retry(self, msg: HelloRetry, full: bytes) -> State:
        hello = self._hello
        assert hello is not None
        if msg.version != hello.version:
            _abort(NegotiationFailed, AlertCode.PROTOCOL_VERSION, "unsupported protocol version")
        group = _GROUP_BY_ID.get(msg.group)
        if group is None or msg.group not in hello.groups or msg.group == hello.share_group:
            _abort(
                ProtocolViolation,
                AlertCode.ILLEGAL_PARAMETER,
                "the server asked to retry with a group that was not offered",
            )
        self._absorb(full)
        self._kem = GROUPS[group].generate()
        self._hello = ClientHello(
            hello.random,
            hello.timestamp_ms,
            hello.namespace,
            hello.ciphers,
            hello.groups,
            msg.group,
            self._kem.public_key().public_bytes_raw(),
            hello.expected_peer,
            hello.steps,
            hello.max_record_size,
            hello.psk_identity,
            hello.version,
        )
        self._send_handshake(self._hello)
        return State.CLIENT_WAIT_RETRIED_HELLO

    def _on_server_hello(self, msg: ServerHello, full: bytes) -> State:
        hello, kem = self._hello, self._kem
        assert hello is not None
        assert kem is not None
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
        try:
            shared = kem.decapsulate(msg.share)
        except (InvalidKey, ValueError) as exc:
            _abort(
                KeyAgreementFailed,
                AlertCode.ILLEGAL_PARAMETER,
                f"the server's key share is invalid: {exc}",
            )
        self._kem = None
        keys = ks.KeySchedule()
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
        self._agreed = [offered[i] for i in msg.steps]
        self._client_auth = ClientAuth(msg.client_auth)
        self._send_fragment = min(self._ctx.max_record_size, msg.max_record_size)
        self._absorb(full)
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
        keys.application(self._hash())
        # Our flight: identity (if asked for), step answers, Finished.
        if self._client_auth is not ClientAuth.OFF and self._ctx.identity is not None:
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
        keys.resumption_secret(self._hash())
        self._connected()
        return State.CONNECTED

    # ---------------------------------------------------------------- server side

    def _on_client_hello(self, msg: ClientHello, full: bytes) -> State:
        ctx = self._ctx
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
            if skew > ctx.max_clock_skew:
                _abort(
                    ProtocolViolation,
                    AlertCode.STALE_HELLO,
                    f"client hello timestamp is {skew:.0f} s away from now "
                    f"(max_clock_skew={ctx.max_clock_skew:g})",
                )
            if ctx._hello_replayed(msg.random, self._now):
                _abort(
                    ProtocolViolation,
                    AlertCode.REPLAYED_HELLO,
                    "this client hello was seen before (replay)",
                )
        if msg.namespace != ctx.namespace.encode():
            _abort(
                NegotiationFailed,
                AlertCode.NAMESPACE_MISMATCH,
                f"the client's namespace {msg.namespace!r} is not {ctx.namespace!r}",
            )
        cipher = next((c for c in ctx.ciphers if CIPHER_IDS[c] in msg.ciphers), None)
        group = next((g for g in ctx.groups if GROUP_IDS[g] in msg.groups), None)
        if cipher is None or group is None:
            what = "cipher" if cipher is None else "key-exchange group"
            _abort(NegotiationFailed, AlertCode.NEGOTIATION_FAILED, f"no common {what}")
        self._agreed = self._agree_steps(msg.steps)
        ident = ctx.identity
        assert ident is not None
        if (
            msg.expected_peer
            and msg.expected_peer != hashlib.sha256(ident.peer_id.encode()).digest()
        ):
            _abort(
                AuthenticationFailed,
                AlertCode.WRONG_PEER,
                "the client expects another peer (wrong target)",
            )
        if not 512 <= msg.max_record_size <= (1 << 18):
            _abort(ProtocolViolation, AlertCode.ILLEGAL_PARAMETER, "invalid max_record_size")
        self._absorb(full)
        self._group, self._cipher = group, cipher
        if GROUP_IDS[group] != msg.share_group:
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
        pub_cls = GROUPS[group].PUBLIC_KEY_CLASS
        try:
            shared, reply = pub_cls.from_public_bytes(msg.share).encapsulate()
        except (InvalidKey, ValueError) as exc:
            _abort(
                KeyAgreementFailed,
                AlertCode.ILLEGAL_PARAMETER,
                f"the client's {group} key share is invalid: {exc}",
            )
        self._send_handshake(
            ServerHello(os.urandom(RANDOM_SIZE), GROUP_IDS[group], CIPHER_IDS[cipher], reply)
        )
        keys = ks.KeySchedule()
        keys.handshake(shared, self._hash())
        self._keys = keys
        self._install(keys.server_hs, keys.client_hs, handshake=True)
        self._client_auth = _AUTH_MODE[ctx.client_auth]
        self._send_fragment = min(ctx.max_record_size, msg.max_record_size)
        self._send_handshake(
            EncryptedExtensions(
                self._client_auth, tuple(s.protocol_id for s in self._agreed), ctx.max_record_size
            )
        )
        self._send_handshake(self._identity_message())
        self._send_handshake(self._sign_transcript(_SERVER_VERIFY))
        for step in self._agreed:
            payload = self._run_hook(step, "server_payload")
            if payload is not None:
                self._send_handshake(StepData(step.protocol_id, payload))
        self._send_handshake(Finished(ks.finished_mac(keys.server_hs, self._hash())))
        keys.application(self._hash())
        # As in TLS 1.3, the server sends under its application keys from here
        # on: the client switches to them on reading this Finished, so that it
        # can read an alert about its own flight.
        self._install(keys.server_app, None)
        self._sealer_fragment()
        return State.SERVER_WAIT_FLIGHT

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
        if not ks.finished_ok(ks.finished_mac(keys.client_hs, self._hash()), msg.verify_data):
            _abort(
                AuthenticationFailed,
                AlertCode.DECRYPT_ERROR,
                "the client's Finished MAC did not verify",
            )
        for step in self._agreed:
            self._run_hook(step, "verify_client_payload", self._peer_payloads.get(step.protocol_id))
        self._absorb(full)
        keys.resumption_secret(self._hash())
        self._connected()
        return State.CONNECTED

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
        custom_rule = type(self._auth_step) is not AuthenticationStep
        if self._client or self._ctx.trust.configured or custom_rule:
            name = (
                self._server_name
                if self._client
                else (self._peer_cert.subject_name if self._peer_cert is not None else None)
            )
            try:
                self._trust = self._auth_step.verify_peer(
                    self._ctx.trust,
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
                    f"could not decide whether the peer is trusted: {type(exc).__name__}: {exc}",
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
        self._session = SessionInfo(
            role=self._role,
            group=self._group,
            cipher=self._cipher,
            peer_key=self._peer_key,
            trust=self._trust,
            namespace=self._ctx.namespace,
            steps=tuple(s.protocol_id for s in self._agreed),
            max_record_size=self._send_fragment,
        )
        self._step_state.clear()
        self._peer_payloads.clear()
        self._events.append(HandshakeCompleted(self._session))
        pending, self._pending = self._pending, []
        for ctype, data in pending:
            self._seal_application(data, ctype)

    def _sealer_fragment(self) -> None:
        """Application records use the negotiated size (handshake ones were <= 16 KiB)."""
        sealer = self._sealer
        assert sealer is not None
        if sealer.max_fragment != self._send_fragment:
            key, iv = ks.traffic_keys(self._send_secret, self._cipher)
            sealer.close()
            self._sealer = RecordSealer(self._cipher, key, iv, max_fragment=self._send_fragment)
