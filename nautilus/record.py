"""Record protection: AEAD sealing and opening of many records per call.

A :class:`RecordSealer` and a :class:`RecordOpener` each hold one direction's
AEAD key, static IV and 64-bit sequence number; the nonce of record *n* is
``iv XOR n`` and is never sent. One call to :meth:`RecordSealer.seal` splits its
input into as many records as needed; one call to :meth:`RecordOpener.open`
decrypts every complete record in a receive buffer. The wire format is in
``docs/record-layer.md``.

Ciphers: ``"aes-256-gcm"``, ``"aes-128-gcm"``, ``"chacha20-poly1305"``.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import threading
from typing import Any, NamedTuple, NoReturn, TypeVar, cast

from nautilus import _bindings as _b
from nautilus._fork import renew_locks_after_fork
from nautilus.exceptions import ClosedError, IntegrityError

__all__ = [
    "AEAD",
    "CIPHERS",
    "DEFAULT_MAX_FRAGMENT",
    "DEFAULT_RECORD_LIMIT",
    "HEADER_SIZE",
    "IV_SIZE",
    "MAX_FRAGMENT",
    "RECORD_OVERHEAD",
    "REKEY_HISTORY",
    "TAG_SIZE",
    "ContentType",
    "OpenResult",
    "PackedOpen",
    "Record",
    "RecordOpener",
    "RecordSealer",
    "Span",
    "key_size",
]

CIPHERS: tuple[str, ...] = tuple(_b.AEAD_IDS)
"""Supported AEAD names."""
HEADER_SIZE = _b.RECORD_HEADER_BYTES
TAG_SIZE = _b.RECORD_TAG_BYTES
IV_SIZE = _b.RECORD_IV_BYTES
RECORD_OVERHEAD = _b.RECORD_OVERHEAD
"""Bytes a sealed record adds to its content (header, inner type, tag)."""
MAX_FRAGMENT = _b.RECORD_MAX_FRAGMENT
DEFAULT_MAX_FRAGMENT = _b.RECORD_DEFAULT_FRAGMENT
DEFAULT_RECORD_LIMIT = _b.RECORD_DEFAULT_LIMIT
Span = _b.Span
PackedOpen = _b.PackedOpen


class ContentType(enum.IntEnum):
    """Inner content types of sealed records (as in TLS 1.3)."""

    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    KEY_UPDATE = 24
    MESSAGE = 25


class Record(NamedTuple):
    """One opened record (or, when merged, a run of records of one type)."""

    content_type: int
    data: bytes


class OpenResult(NamedTuple):
    """What :meth:`RecordOpener.open` found."""

    records: list[Record]
    consumed: int
    """Input bytes used; the rest starts with an incomplete record."""
    record_count: int
    """Records opened (more than ``len(records)`` when runs were merged)."""


def key_size(cipher: str) -> int:
    """Key length in bytes for ``cipher``.

    Raises:
        ValueError: unknown cipher name.
    """
    return _b.AEAD_KEY_BYTES[_cipher_name(cipher)]


def _cipher_name(cipher: object) -> str:
    if not isinstance(cipher, str):
        raise TypeError(f"cipher must be a str, not {type(cipher).__name__}")
    if cipher not in _b.AEAD_IDS:
        raise ValueError(f"unknown cipher {cipher!r}; expected one of {', '.join(CIPHERS)}")
    return cipher


def _content_type(value: object, name: str = "content_type") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= 255:
        raise ValueError(f"{name} must be in 1..255, got {value}")
    return int(value)


_FINGERPRINT_KEY = secrets.token_bytes(32)
"""Random per-process key of the fingerprints below: a fingerprint kept in
memory tells nothing about the key it stands for."""
_KEY_ONLY = b"nautilus key"


def _fingerprint(key: bytes) -> bytes:
    """A keyed hash of the key in use, so that a rekey to it again is refused
    without the key itself being kept in Python. Of the key alone: the same
    key under another IV reuses nonces as soon as the two IVs' sequences
    overlap (IVs that differ in their low bits)."""
    return hashlib.blake2b(key, digest_size=16, key=_FINGERPRINT_KEY, person=_KEY_ONLY).digest()


REKEY_HISTORY = 1024
"""How many earlier keys of a sealer or opener :meth:`rekey` refuses to go
back to (under any IV), the one in use included."""


def _wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place (same length: no reallocation)."""
    if buf:
        buf[:] = bytes(len(buf))


_D = TypeVar("_D", bound="_Direction")


class _Direction:
    __slots__ = ("_cipher", "_handle", "_used")
    _ENCRYPT: bool

    def __init__(
        self,
        cipher: str,
        key: bytes,
        iv: bytes,
        *,
        max_fragment: int = DEFAULT_MAX_FRAGMENT,
        record_limit: int = DEFAULT_RECORD_LIMIT,
    ) -> None:
        if getattr(self, "_handle", None) is not None:  # (its sequence would restart)
            raise RuntimeError(f"this {type(self).__name__} is already keyed: use rekey()")
        self._cipher = _cipher_name(cipher)
        self._handle: Any = None
        k = _b.as_bytes("key", key, _b.AEAD_KEY_BYTES[self._cipher])
        i = _b.as_bytes("iv", iv, IV_SIZE)
        _check_int("max_fragment", max_fragment, 1, MAX_FRAGMENT)
        _check_int("record_limit", record_limit, 1, _b.UINT64_MAX)
        handle = _b.aead_new(self._cipher, self._ENCRYPT, k, i)
        _b.aead_set_max_fragment(handle, max_fragment)
        _b.aead_set_limit(handle, record_limit)
        self._handle = handle
        # Fingerprints of the keys used, oldest first (a dict as an ordered set).
        self._used: dict[bytes, None] = {_fingerprint(k): None}
        self._init_direction()

    def _init_direction(self) -> None:
        """Per-direction state beyond the key (subclasses)."""

    @classmethod
    def _from_secret(cls: type[_D], cipher: str, secret: bytes, max_fragment: int) -> _D:
        """Internal (the handshake): keyed from a 32-byte traffic secret, key and IV
        derived in C (docs/protocol.md, section 5). No argument checks."""
        self = cls.__new__(cls)
        self._cipher = cipher
        self._handle = None
        handle = _b.aead_new_from_secret(cipher, cls._ENCRYPT, secret)
        _b.aead_set_max_fragment(handle, max_fragment)
        self._handle = handle
        # No fingerprint: the key schedule never repeats a traffic secret (each
        # is derived from the one before), and these objects are the
        # Connection's own (this saves a hash per key of every handshake).
        self._used = {}
        self._init_direction()
        return self

    @property
    def cipher(self) -> str:
        """The AEAD name."""
        return self._cipher

    @property
    def sequence(self) -> int:
        """Sequence number of the next record."""
        return _b.aead_sequence(self._live())

    @property
    def records_remaining(self) -> int:
        """Records this key may still protect before a rekey is needed."""
        return _b.aead_remaining(self._live())

    @property
    def max_fragment(self) -> int:
        """Largest record content in bytes."""
        return _b.aead_max_fragment(self._live())

    def set_max_fragment(self, size: int) -> None:
        """Change the largest record content (the key and sequence stay).

        Raises:
            TypeError, ValueError: not an int in 1..MAX_FRAGMENT.
            nautilus.ClosedError: closed.
        """
        _check_int("max_fragment", size, 1, MAX_FRAGMENT)
        self._set_max_fragment(size)

    def rekey(self, key: bytes, iv: bytes) -> None:
        """Switch to a new key and IV; the sequence number restarts at 0.

        A rekey to the key in use, or to one of the earlier ones of this
        object (the last :data:`REKEY_HISTORY`, the one it was made with
        included), is refused, whatever the IV: restarting a sequence under
        it would use nonces again (the same IV's, or another IV's that
        overlap them). An opener that failed (a record did not authenticate or
        was malformed) stays failed: make a new one.

        Raises:
            TypeError, ValueError: wrong types or lengths.
            ValueError: ``key`` is in use or was used before (with any IV).
            nautilus.ClosedError: closed, or an opener that failed.
        """
        handle = self._rekeyable()
        k = _b.as_bytes("key", key, _b.AEAD_KEY_BYTES[self._cipher])
        i = _b.as_bytes("iv", iv, IV_SIZE)
        fingerprint = _fingerprint(k)
        used = self._used
        if fingerprint in used:  # (keyed hashes: their comparison reveals nothing)
            raise ValueError(
                "rekey needs a new key: this key is in use or was used before, and "
                "restarting a sequence under it (with any IV) would reuse nonces"
            )
        _b.aead_rekey(handle, k, i)
        used[fingerprint] = None
        if len(used) > REKEY_HISTORY:
            del used[next(iter(used))]

    def _rekey_from_secret(self, secret: bytes) -> None:
        """Internal: :meth:`rekey` with the key and IV of a traffic secret
        (the next of the key schedule: never one used before)."""
        _b.aead_rekey_from_secret(self._rekeyable(), secret)

    def _set_max_fragment(self, size: int) -> None:
        """Internal: :meth:`set_max_fragment` without the argument checks."""
        _b.aead_set_max_fragment(self._live(), size)

    def _rekeyable(self) -> Any:
        """The handle, unless closed or (an opener) failed for good."""
        handle = self._live()
        if not self._ENCRYPT and _b.aead_failed(handle):
            raise ClosedError(
                f"{type(self).__name__} failed (a record did not authenticate or was "
                "malformed) and refuses all further use, rekey included: make a new one"
            )
        return handle

    def _set_sequence(self, value: int) -> None:
        """Start from sequence ``value`` (tests of counter exhaustion)."""
        _check_int("sequence", value, 0, _b.UINT64_MAX)
        _b.aead_set_sequence(self._live(), value)

    def close(self) -> None:
        """Wipe the key now. Further use raises :class:`nautilus.ClosedError`."""
        if self._handle is not None:
            _b.aead_free(self._handle)
            self._handle = None

    def _live(self) -> Any:
        if self._handle is None:
            raise ClosedError(f"{type(self).__name__} is closed")
        return self._handle

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        # A copy would share the C state (and its sequence number: nonces would
        # repeat), and close() of one would free it under the other.
        raise TypeError(
            f"{type(self).__name__} cannot be copied or pickled (it owns a C key "
            "state); make a new one"
        )

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"seq={self.sequence}"
        return f"<{type(self).__name__} {self._cipher} {state}>"


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")


class RecordSealer(_Direction):
    """Seals outgoing records for one direction of a connection.

    Args:
        cipher: AEAD name.
        key: traffic key (:func:`key_size` bytes).
        iv: 12-byte static IV.
        max_fragment: largest content per record (default 16 KiB, at most 256 KiB).
        record_limit: records this key may seal before :meth:`seal` refuses
            (default 2**23).

    It cannot be copied or pickled (TypeError): a copy would share the C state
    and so the nonces.

    Raises:
        TypeError, ValueError: wrong types, lengths or ranges.
    """

    __slots__ = ("_out_len",)
    _ENCRYPT = True

    def _init_direction(self) -> None:
        self._out_len = _b.new_out_len()

    def _seal_chunk(self, data: bytes | bytearray | memoryview, content_type: int) -> bytearray:
        """Internal fast path (no argument checks): the sealed records of ``data``
        in a new bytearray. Raises as :meth:`seal`."""
        sealed: bytearray = _b.seal_chunk(self._live(), content_type, data, self._out_len)
        return sealed

    def _seal_within(
        self, data: bytes | bytearray | memoryview, content_type: int, budget: Any
    ) -> bytearray | None:
        """:meth:`_seal_chunk` within ``budget`` (an ``nt_budget``, which shrinks
        by what is sealed); None, nothing sealed, if the records do not fit."""
        sealed: bytearray | None = _b.seal_chunk(
            self._live(), content_type, data, self._out_len, budget
        )
        return sealed

    def sealed_size(self, length: int) -> int:
        """Bytes that sealing ``length`` bytes of content produces."""
        _check_int("length", length, 0, 1 << 62)
        return _b.seal_size(self._live(), length)

    def seal(
        self,
        data: bytes | bytearray | memoryview,
        content_type: int = ContentType.APPLICATION_DATA,
    ) -> bytes:
        """Seal ``data`` into as many records as it needs; return the wire bytes.

        Empty ``data`` makes one empty record. A non-contiguous memoryview is
        copied first.

        Raises:
            TypeError, ValueError: bad arguments.
            nautilus.RecordLimitReached: the key may not seal that many more
                records; nothing was sealed, rekey and call again.
            nautilus.ClosedError: closed, or failed before.
        """
        ct = _content_type(content_type)
        src = _b.input_buffer("data", data)
        return bytes(self._seal_chunk(src, ct))

    def seal_into(
        self,
        data: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
        content_type: int = ContentType.APPLICATION_DATA,
    ) -> int:
        """Like :meth:`seal`, writing into ``out``; returns the bytes written.

        ``out`` is a bytearray or a writable, C-contiguous memoryview, and must
        not overlap ``data`` (sealing reads one while writing the other).

        Raises:
            TypeError: ``out`` is not writable or not contiguous.
            ValueError: ``out`` is smaller than :meth:`sealed_size`, or overlaps
                ``data``; nothing was sealed.
            (and as :meth:`seal`)
        """
        ct = _content_type(content_type)
        src = _b.input_buffer("data", data)
        dst = _b.output_buffer("out", out)
        written, _records = _b.seal_into(self._live(), ct, src, dst)
        return written


def _open_error(failure: _b.OpenFailure) -> Exception:
    """The exception for a failed open; it carries what verified before the
    failure (``records``) and the input that took (``consumed``): always for an
    IntegrityError, and for any other error raised after records were opened,
    so that no opened record is lost."""
    err = failure.error
    if isinstance(err, IntegrityError) or failure.spans:
        carrier = cast(Any, err)
        carrier.records = list(failure.spans)
        carrier.consumed = failure.consumed
    return err


def _byte_len(data: object) -> int:
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    if isinstance(data, memoryview):
        return data.nbytes
    raise TypeError(f"data must be bytes-like, not {type(data).__name__}")


class RecordOpener(_Direction):
    """Opens incoming records for one direction of a connection.

    Takes the same arguments as :class:`RecordSealer`; ``max_fragment`` bounds
    the records it accepts (a larger one is a :class:`nautilus.RecordFormatError`).
    After any failure the opener refuses all further input, and :meth:`rekey`
    too (:class:`nautilus.ClosedError`): make a new one. It cannot be copied or
    pickled (TypeError).
    """

    __slots__ = ("_scratch", "_summary")
    _ENCRYPT = False

    def _init_direction(self) -> None:
        self._scratch = bytearray()
        self._summary = _b.new_open_summary()

    def _open_fast(
        self,
        data: bytes | bytearray | memoryview,
        out: bytearray,
        batch_type: int,
        max_records: int = 0,
    ) -> PackedOpen:
        """Internal fast path of :meth:`open_packed` (no argument checks)."""
        try:
            return _b.open_packed(self._live(), data, out, batch_type, self._summary, max_records)
        except _b.OpenFailure as failure:
            raise _open_error(failure) from None

    def _failure(self, rc: int) -> Exception:
        """The exception of a packed open of ours that returned ``rc`` (not
        NT_OK), as :meth:`_open_fast` raises it (Connection._take_message)."""
        return _open_error(_b.open_failure(rc, self._summary))

    def open_packed(
        self,
        data: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
        batch_type: int = ContentType.APPLICATION_DATA,
        max_records: int = 0,
    ) -> PackedOpen:
        """Open every complete record of ``data`` into ``out``, keeping no per-record data.

        The fast path for bulk data: one C call however many records there
        are. Every record opened but the last is of ``batch_type`` (opening
        stops after any other type), so ``out[:written]`` holds their contents
        back to back, the last record's content (``last_length`` bytes, type
        ``last_type``) at its end. ``out`` must be at least as long as the
        contents; ``len(data)`` always suffices. ``max_records`` bounds the
        number of records opened (0: no bound). ``data`` is only read (a
        non-contiguous memoryview is copied); ``out`` is a bytearray or a
        writable, C-contiguous memoryview that does not overlap ``data``.

        Raises:
            TypeError: ``out`` is not writable or not contiguous.
            ValueError: ``out`` overlaps ``data`` (nothing is opened).
            nautilus.IntegrityError: as :meth:`open_spans`; ``.records`` holds
                one :class:`PackedOpen` describing the records that verified.
            (and as :meth:`open_spans`)
        """
        src = _b.input_buffer("data", data)
        dst = _b.output_buffer("out", out)
        _check_int("max_records", max_records, 0, 1 << 62)
        batch = _content_type(batch_type, "batch_type")
        handle = self._live()
        _b.check_disjoint("data", src, "out", dst)
        try:
            return _b.open_packed(handle, src, dst, batch, self._summary, max_records)
        except _b.OpenFailure as failure:
            raise _open_error(failure) from None

    def open_spans(
        self,
        data: bytearray | memoryview,
        out: bytearray | memoryview | None = None,
        batch_type: int = ContentType.APPLICATION_DATA,
    ) -> tuple[list[Span], int]:
        """Open complete records at the start of ``data`` without copying.

        With ``out`` None the content is decrypted in place and each
        :class:`Span` points into ``data``; otherwise the contents are packed
        one after another into ``out`` and spans point there. Opening stops
        after the first record whose type is not ``batch_type`` (so that the
        caller can act on it, for example rekey), at an incomplete record, at
        the record limit, or when ``out`` is full; the records opened before
        are returned, and the next call reports the limit or the full ``out``.
        Returns ``(spans, bytes consumed)``.

        ``data`` and ``out`` are each a bytearray or a writable, C-contiguous
        memoryview, and must not overlap.

        Raises:
            TypeError: ``data`` or ``out`` is not writable or not contiguous.
            ValueError: ``out`` overlaps ``data`` (nothing is opened), or
                ``out`` cannot hold the first record's content.
            nautilus.IntegrityError: a record failed authentication (altered,
                reordered, replayed); ``.records`` holds the spans before it.
            nautilus.RecordFormatError: a malformed or oversized record.
            nautilus.RecordLimitReached: the peer passed the record limit.
            nautilus.ClosedError: closed, or failed before.
        """
        src = _b.output_buffer("data", data)
        dst = None if out is None else _b.output_buffer("out", out)
        batch = _content_type(batch_type, "batch_type")
        try:
            return _b.open_spans(self._live(), src, dst, batch)
        except _b.OpenFailure as failure:
            raise _open_error(failure) from None

    def open(
        self,
        data: bytes | bytearray | memoryview,
        *,
        merge: bool = False,
        batch_type: int = ContentType.APPLICATION_DATA,
    ) -> OpenResult:
        """Open every complete record at the start of ``data`` (not modified).

        With ``merge`` True, consecutive records of one type come back as one
        :class:`Record`. Stops as :meth:`open_spans` does.

        Raises:
            TypeError: ``merge`` is not a bool (checked before any record is
                opened: a refused call consumes nothing).
            nautilus.IntegrityError: as :meth:`open_spans`; ``.records`` holds
                the :class:`Record` objects that verified before the bad one.
            (and as :meth:`open_spans`)
        """
        if not isinstance(merge, bool):
            raise TypeError(f"merge must be a bool, not {type(merge).__name__}")
        n = _byte_len(data)
        self._live()
        work = bytearray(data)
        if len(self._scratch) < n:
            _wipe(self._scratch)  # it may hold earlier plaintext
            self._scratch = bytearray(n)
        try:
            spans, consumed = self.open_spans(work, self._scratch, batch_type)
        except Exception as exc:
            opened = getattr(exc, "records", None)
            if opened:  # the spans of the records that verified before the failure
                cast(Any, exc).records = self._to_records(cast("list[Span]", opened), merge)
            raise
        return OpenResult(self._to_records(spans, merge), consumed, len(spans))

    def close(self) -> None:
        """Wipe the key and the plaintext this opener holds (its scratch buffer)
        now. Further use raises :class:`nautilus.ClosedError`."""
        super().close()
        _wipe(self._scratch)
        self._scratch = bytearray()

    def __del__(self) -> None:
        # Collected without close(): its plaintext goes all the same (the key
        # is cleansed in C when the handle is freed).
        scratch = getattr(self, "_scratch", None)  # (unset if __init__ failed)
        if scratch:
            _wipe(scratch)

    def _to_records(self, spans: list[Span], merge: bool) -> list[Record]:
        records: list[Record] = []
        with memoryview(self._scratch) as view:
            if merge:
                i = 0
                while i < len(spans):
                    j = i
                    ctype = spans[i].content_type
                    while j + 1 < len(spans) and spans[j + 1].content_type == ctype:
                        j += 1
                    start, end = spans[i].offset, spans[j].offset + spans[j].length
                    records.append(Record(ctype, bytes(view[start:end])))
                    i = j + 1
            else:
                for s in spans:
                    records.append(
                        Record(s.content_type, bytes(view[s.offset : s.offset + s.length]))
                    )
        return records


class AEAD:
    """One-shot AEAD with an explicit 12-byte nonce (the same C code as records).

    For known-answer tests and small protocol uses; records use
    :class:`RecordSealer`/:class:`RecordOpener`, which manage nonces themselves.
    Thread-safe: one C cipher state per object, used by one call at a time
    (the C call releases the GIL).

    Raises:
        TypeError, ValueError: unknown cipher or wrong key length.
    """

    __slots__ = ("__weakref__", "_cipher", "_handle", "_lock")

    def __init__(self, cipher: str, key: bytes) -> None:
        self._cipher = _cipher_name(cipher)
        k = _b.as_bytes("key", key, _b.AEAD_KEY_BYTES[self._cipher])
        self._handle = _b.aead_new(self._cipher, True, k, bytes(IV_SIZE))
        self._lock = threading.Lock()
        renew_locks_after_fork(self, "_lock")

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes = b"") -> bytes:
        """Return ciphertext || 16-byte tag.

        Raises:
            TypeError, ValueError: wrong types; nonce not 12 bytes.
        """
        return self._oneshot(True, nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes = b"") -> bytes:
        """Verify and decrypt ciphertext || tag.

        Raises:
            nautilus.IntegrityError: the tag does not verify.
            TypeError, ValueError: wrong types; nonce not 12 bytes.
        """
        return self._oneshot(False, nonce, data, associated_data)

    def _oneshot(self, encrypt: bool, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        n = _b.as_bytes("nonce", nonce, IV_SIZE)
        aad = _b.as_bytes("associated_data", associated_data)
        body = _b.as_bytes("data", data)
        with self._lock:  # one call at a time on the C cipher state
            return _b.aead_oneshot(self._handle, encrypt, n, aad, body)

    def __reduce__(self) -> NoReturn:
        raise TypeError("AEAD cannot be copied or pickled (it owns a C key state); make a new one")

    def __repr__(self) -> str:
        return f"<AEAD {self._cipher}>"
