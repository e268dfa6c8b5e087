"""Handshake messages, alerts and their byte encodings (docs/protocol.md, section 3).

Each message is a dataclass with ``encode_body()`` and ``decode_body()``;
:func:`frame` and :class:`HandshakeBuffer` add and strip the 4-byte handshake
header ``msg_type (1) | length (3)``.

The messages are plain dataclasses, not frozen ones, and nothing changes one
once made (``with_psk_offer`` and ``dataclasses.replace`` make new ones): a
frozen dataclass's ``__init__`` stores each field through ``object.__setattr__``,
and with a dozen messages made and read per handshake and side that was 6% of
a psk_only resumption's instructions (callgrind, both sides in memory).
(:class:`StepOffer` stays frozen: it is hashed, as part of a cache key.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from struct import Struct

from nautilus.exceptions import ProtocolViolation
from nautilus.protocol.codec import DecodeError, Reader, Writer

PROTOCOL_VERSION = 1
RANDOM_SIZE = 32
FINISHED_SIZE = 32
MAX_HANDSHAKE_MESSAGE = 65536
"""Largest handshake message body accepted; a longer one is a protocol violation."""

# Record types on the wire (outer header byte).
RECORD_ALERT_PLAIN = 0x15
RECORD_HANDSHAKE_PLAIN = 0x16
RECORD_SEALED = 0x17
PLAIN_HEADER_SIZE = 4
MAX_PLAIN_FRAGMENT = 16384


class MsgType(enum.IntEnum):
    """Handshake message types."""

    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_RETRY = 3
    IDENTITY = 4
    VERIFY = 5
    STEP_DATA = 6
    FINISHED = 7
    ENCRYPTED_EXTENSIONS = 8
    NEW_SESSION_TICKET = 9


# Members by value: a dict lookup, where calling the class (``MsgType(1)``)
# costs about a microsecond on the handshake's path.
MSG_TYPES: dict[int, MsgType] = {int(m): m for m in MsgType}


class AlertCode(enum.IntEnum):
    """Alert codes (one byte). Every alert but close_notify is fatal."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    RECORD_OVERFLOW = 22
    NEGOTIATION_FAILED = 40
    AUTHENTICATION_FAILED = 42
    CERTIFICATE_EXPIRED = 45
    ILLEGAL_PARAMETER = 47
    UNTRUSTED_PEER = 48
    WRONG_PEER = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INTERNAL_ERROR = 80
    HANDSHAKE_TIMEOUT = 90
    STALE_HELLO = 91
    REPLAYED_HELLO = 92
    NAMESPACE_MISMATCH = 93
    KEY_DERIVATION_FAILED = 94
    RECORD_TIMEOUT = 95
    CERTIFICATE_REQUIRED = 116

    @classmethod
    def describe(cls, code: int) -> str:
        """A readable name for ``code`` (unknown codes included)."""
        name = _ALERT_NAMES.get(code)
        return f"unknown_alert_{code}" if name is None else name


_ALERT_NAMES: dict[int, str] = {int(a): a.name.lower() for a in AlertCode}


class PskMode(enum.IntEnum):
    """Resumption modes (ClientHello offer, ServerHello answer)."""

    NONE = 0
    PSK_DHE = 1
    """The ticket's secret plus a fresh hybrid key exchange: forward secret."""
    PSK_ONLY = 2
    """The ticket's secret alone: fastest, not forward secret for that session."""


BINDER_SIZE = 32

# Fixed runs of fields read in one struct call each (``Reader.unpack``).
_HELLO_HEAD = Struct(f">H{RANDOM_SIZE}sQ")  # version, random, timestamp_ms
_SERVER_HELLO_HEAD = Struct(f">H{RANDOM_SIZE}sHH")  # version, random, group, cipher
_OFFER_TAIL = Struct(f">II{BINDER_SIZE}s")  # obfuscated age, early records, binder
_U16_LISTS: dict[int, Struct] = {}


def _u16s(count: int) -> Struct:
    """The format of ``count`` big-endian u16 (a cipher or group list; at most 255)."""
    fmt = _U16_LISTS.get(count)
    if fmt is None:
        fmt = _U16_LISTS[count] = Struct(f">{count}H")
    return fmt


@dataclass
class PskOffer:
    """The resumption offer inside a ClientHello. The binder is the last
    BINDER_SIZE bytes of the whole ClientHello message."""

    mode: int
    ticket: bytes
    obfuscated_age: int
    early_records: int
    binder: bytes

    def encode(self) -> bytes:
        w = Writer().u8(self.mode).vec16(self.ticket).u32(self.obfuscated_age)
        return w.u32(self.early_records).raw(self.binder).bytes()

    @classmethod
    def decode(cls, data: bytes) -> PskOffer:
        r = Reader(data)
        mode = r.u8()
        if mode not in (PskMode.PSK_DHE, PskMode.PSK_ONLY):
            raise DecodeError("decode_error: unknown resumption mode")
        ticket = r.vec16()
        age, early, binder = r.unpack(_OFFER_TAIL)
        r.done()
        if not ticket:
            raise DecodeError("decode_error: empty ticket")
        return cls(mode, ticket, age, early, binder)


class ClientAuth(enum.IntEnum):
    """Client authentication modes, as sent in EncryptedExtensions."""

    OFF = 0
    OPTIONAL = 1
    REQUIRED = 2


PSK_MODES: dict[int, PskMode] = {int(m): m for m in PskMode}
CLIENT_AUTH_MODES: dict[int, ClientAuth] = {int(m): m for m in ClientAuth}


@dataclass(frozen=True)  # hashable: part of the key of the hello-size cache
class StepOffer:
    """A handshake step a side supports."""

    protocol_id: str
    required: bool


def _encode_id(w: Writer, ident: str) -> None:
    data = ident.encode()
    w.vec8(data)


def _decode_id(r: Reader) -> str:
    data = r.vec8()
    if not data:
        raise DecodeError("decode_error: empty step id")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("decode_error: step id is not ASCII") from None


@dataclass
class ClientHello:
    random: bytes
    timestamp_ms: int
    namespace: bytes
    ciphers: tuple[int, ...]
    groups: tuple[int, ...]
    share_group: int
    share: bytes
    expected_peer: bytes
    steps: tuple[StepOffer, ...]
    max_record_size: int
    psk_offer: bytes = b""
    """Empty, or an encoded :class:`PskOffer` (always the last field)."""
    version: int = PROTOCOL_VERSION

    def with_psk_offer(self, psk_offer: bytes) -> ClientHello:
        """This hello with ``psk_offer`` (``dataclasses.replace`` costs twice as much)."""
        return ClientHello(
            self.random, self.timestamp_ms, self.namespace, self.ciphers, self.groups,
            self.share_group, self.share, self.expected_peer, self.steps,
            self.max_record_size, psk_offer, self.version,
        )  # fmt: skip

    def encode_body(self) -> bytes:
        w = Writer().u16(self.version).raw(self.random).u64(self.timestamp_ms)
        w.vec8(self.namespace)
        w.u8(len(self.ciphers))
        for c in self.ciphers:
            w.u16(c)
        w.u8(len(self.groups))
        for g in self.groups:
            w.u16(g)
        w.u16(self.share_group).vec16(self.share).vec8(self.expected_peer)
        w.u8(len(self.steps))
        for s in self.steps:
            _encode_id(w, s.protocol_id)
            w.u8(1 if s.required else 0)
        w.u32(self.max_record_size).vec16(self.psk_offer)
        return w.bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> ClientHello:
        r = Reader(body)
        version, random, ts = r.unpack(_HELLO_HEAD)
        namespace = r.vec8()
        ciphers = r.unpack(_u16s(r.u8()))
        groups = r.unpack(_u16s(r.u8()))
        share_group = r.u16()
        share = r.vec16()
        expected = r.vec8()
        steps = []
        for _ in range(r.u8()):
            ident = _decode_id(r)
            flags = r.u8()
            if flags > 1:
                raise DecodeError("decode_error: unknown step flags")
            steps.append(StepOffer(ident, bool(flags)))
        max_record = r.u32()
        psk = r.vec16()
        r.done()
        return cls(
            random,
            ts,
            namespace,
            ciphers,
            groups,
            share_group,
            share,
            expected,
            tuple(steps),
            max_record,
            psk,
            version,
        )


@dataclass
class HelloRetry:
    group: int
    version: int = PROTOCOL_VERSION

    def encode_body(self) -> bytes:
        return Writer().u16(self.version).u16(self.group).bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> HelloRetry:
        r = Reader(body)
        version, group = r.u16(), r.u16()
        r.done()
        return cls(group, version)


@dataclass
class ServerHello:
    random: bytes
    group: int
    cipher: int
    share: bytes
    psk_mode: int = PskMode.NONE
    version: int = PROTOCOL_VERSION

    def encode_body(self) -> bytes:
        w = Writer().u16(self.version).raw(self.random).u16(self.group).u16(self.cipher)
        return w.vec16(self.share).u8(self.psk_mode).bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> ServerHello:
        r = Reader(body)
        version, random, group, cipher = r.unpack(_SERVER_HELLO_HEAD)
        share = r.vec16()
        psk_mode = r.u8()
        r.done()
        if psk_mode > PskMode.PSK_ONLY:
            raise DecodeError("decode_error: unknown resumption mode")
        return cls(random, group, cipher, share, psk_mode, version)


@dataclass
class EncryptedExtensions:
    client_auth: int
    steps: tuple[str, ...]
    max_record_size: int
    early_data_accepted: bool = False

    def encode_body(self) -> bytes:
        w = Writer().u8(self.client_auth).u8(len(self.steps))
        for s in self.steps:
            _encode_id(w, s)
        return w.u32(self.max_record_size).u8(1 if self.early_data_accepted else 0).bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> EncryptedExtensions:
        r = Reader(body)
        auth = r.u8()
        if auth > ClientAuth.REQUIRED:
            raise DecodeError("decode_error: unknown client_auth mode")
        steps = tuple(_decode_id(r) for _ in range(r.u8()))
        max_record = r.u32()
        early = r.u8()
        r.done()
        if early > 1:
            raise DecodeError("decode_error: bad early_data flag")
        return cls(auth, steps, max_record, bool(early))


@dataclass
class NewSessionTicket:
    lifetime: int
    age_add: int
    nonce: bytes
    ticket: bytes
    max_early_data: int

    def encode_body(self) -> bytes:
        w = Writer().u32(self.lifetime).u32(self.age_add).vec8(self.nonce).vec16(self.ticket)
        return w.u32(self.max_early_data).bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> NewSessionTicket:
        r = Reader(body)
        lifetime, age_add = r.u32(), r.u32()
        nonce, ticket = r.vec8(), r.vec16()
        max_early = r.u32()
        r.done()
        if not ticket:
            raise DecodeError("decode_error: empty ticket")
        return cls(lifetime, age_add, nonce, ticket, max_early)


@dataclass
class IdentityMsg:
    peer_key: bytes
    certificate: bytes

    def encode_body(self) -> bytes:
        return Writer().vec16(self.peer_key).vec24(self.certificate).bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> IdentityMsg:
        r = Reader(body)
        key, cert = r.vec16(), r.vec24()
        r.done()
        if not key:
            raise DecodeError("decode_error: empty identity key")
        return cls(key, cert)


@dataclass
class Verify:
    signature: bytes

    def encode_body(self) -> bytes:
        return Writer().vec16(self.signature).bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> Verify:
        r = Reader(body)
        sig = r.vec16()
        r.done()
        return cls(sig)


@dataclass
class StepData:
    protocol_id: str
    payload: bytes

    def encode_body(self) -> bytes:
        w = Writer()
        _encode_id(w, self.protocol_id)
        return w.vec24(self.payload).bytes()

    @classmethod
    def decode_body(cls, body: bytes) -> StepData:
        r = Reader(body)
        ident = _decode_id(r)
        payload = r.vec24()
        r.done()
        return cls(ident, payload)


@dataclass
class Finished:
    verify_data: bytes

    def encode_body(self) -> bytes:
        return self.verify_data

    @classmethod
    def decode_body(cls, body: bytes) -> Finished:
        if len(body) != FINISHED_SIZE:
            raise DecodeError("decode_error: Finished has the wrong length")
        return cls(body)


Message = (
    ClientHello
    | ServerHello
    | HelloRetry
    | EncryptedExtensions
    | IdentityMsg
    | Verify
    | StepData
    | Finished
    | NewSessionTicket
)

MESSAGE_TYPES: dict[MsgType, type[Message]] = {
    MsgType.CLIENT_HELLO: ClientHello,
    MsgType.SERVER_HELLO: ServerHello,
    MsgType.HELLO_RETRY: HelloRetry,
    MsgType.ENCRYPTED_EXTENSIONS: EncryptedExtensions,
    MsgType.IDENTITY: IdentityMsg,
    MsgType.VERIFY: Verify,
    MsgType.STEP_DATA: StepData,
    MsgType.FINISHED: Finished,
    MsgType.NEW_SESSION_TICKET: NewSessionTicket,
}
_TYPE_OF = {cls: t for t, cls in MESSAGE_TYPES.items()}


_FRAME_HEAD = Struct(">I")  # type (1 byte), then the body's length (3 bytes)
_MAX_BODY = 0xFFFFFF


def frame(msg: Message) -> bytes:
    """The full handshake message: header + body.

    Raises:
        OverflowError: the body is over 2^24 - 1 bytes (its length field's bound).
    """
    body = msg.encode_body()
    size = len(body)
    if size > _MAX_BODY:
        raise OverflowError(f"a handshake message body holds at most {_MAX_BODY} bytes, not {size}")
    return _FRAME_HEAD.pack(_TYPE_OF[type(msg)] << 24 | size) + body


class HandshakeBuffer:
    """Reassembles handshake messages from record contents."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __bool__(self) -> bool:
        return bool(self._buf)

    def next_message(self) -> tuple[MsgType, bytes, bytes] | None:
        """Return ``(type, body, full encoding)`` of the next complete message.

        Raises:
            DecodeError: (``overflow``) a length over MAX_HANDSHAKE_MESSAGE.
            ProtocolViolation: an unknown message type (unexpected_message).
        """
        if len(self._buf) < 4:
            return None
        length = int.from_bytes(self._buf[1:4], "big")
        if length > MAX_HANDSHAKE_MESSAGE:
            raise DecodeError(
                f"record_overflow: handshake message of {length} bytes", overflow=True
            )
        try:
            mtype = MSG_TYPES[self._buf[0]]
        except KeyError:
            # Not a decoding error: a type that no state accepts (section 4 of
            # docs/protocol.md), so the alert is unexpected_message.
            raise ProtocolViolation(
                f"unexpected_message: unknown handshake type {self._buf[0]}"
            ) from None
        if len(self._buf) < 4 + length:
            return None
        full = bytes(self._buf[: 4 + length])
        del self._buf[: 4 + length]
        return mtype, full[4:], full


def decode(mtype: MsgType, body: bytes) -> Message:
    """Decode a message body of type ``mtype``.

    Raises:
        ProtocolViolation: malformed body.
    """
    return MESSAGE_TYPES[mtype].decode_body(body)
