"""Byte-level encoding helpers: big-endian integers and length-prefixed vectors.

A :class:`Reader` raises :class:`nautilus.ProtocolViolation` (``decode_error``)
on any short, overlong or malformed input, so that every parser built on it
either returns a well-formed value or fails with the protocol's own error.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from nautilus.exceptions import ProtocolViolation


class DecodeError(ProtocolViolation):
    """A message could not be decoded. ``overflow`` is True when it was too long
    (alert record_overflow rather than decode_error)."""

    def __init__(self, message: str, *, overflow: bool = False) -> None:
        super().__init__(message)
        self.overflow = overflow


class Writer:
    """Accumulates an encoding."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, v: int) -> Writer:
        self._buf += v.to_bytes(1, "big")
        return self

    def u16(self, v: int) -> Writer:
        self._buf += v.to_bytes(2, "big")
        return self

    def u24(self, v: int) -> Writer:
        self._buf += v.to_bytes(3, "big")
        return self

    def u32(self, v: int) -> Writer:
        self._buf += v.to_bytes(4, "big")
        return self

    def u64(self, v: int) -> Writer:
        self._buf += v.to_bytes(8, "big")
        return self

    def raw(self, data: bytes) -> Writer:
        self._buf += data
        return self

    def vec8(self, data: bytes) -> Writer:
        return self.u8(len(data)).raw(data)

    def vec16(self, data: bytes) -> Writer:
        return self.u16(len(data)).raw(data)

    def vec24(self, data: bytes) -> Writer:
        return self.u24(len(data)).raw(data)

    def bytes(self) -> bytes:
        return bytes(self._buf)


class Reader:
    """Consumes an encoding; every read checks the remaining length."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    # Each read is written out in full rather than built on the others: a
    # handshake decodes about sixty fields per side, and a Python call costs
    # more than the read itself.

    def _take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._data):
            raise DecodeError("decode_error: message truncated")
        self._pos = end
        return self._data[pos:end]

    def _int(self, n: int) -> int:
        pos = self._pos
        end = pos + n
        data = self._data
        if end > len(data):
            raise DecodeError("decode_error: message truncated")
        self._pos = end
        return int.from_bytes(data[pos:end], "big")

    def u8(self) -> int:
        pos = self._pos
        data = self._data
        if pos >= len(data):
            raise DecodeError("decode_error: message truncated")
        self._pos = pos + 1
        return data[pos]

    def u16(self) -> int:
        return self._int(2)

    def u24(self) -> int:
        return self._int(3)

    def u32(self) -> int:
        return self._int(4)

    def u64(self) -> int:
        return self._int(8)

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def unpack(self, fields: Struct) -> tuple[Any, ...]:
        """Fixed-size fields in one read (a ``struct.Struct``, big-endian)."""
        pos = self._pos
        end = pos + fields.size
        if end > len(self._data):
            raise DecodeError("decode_error: message truncated")
        self._pos = end
        return fields.unpack_from(self._data, pos)

    def vec8(self) -> bytes:
        pos = self._pos
        data = self._data
        if pos >= len(data):
            raise DecodeError("decode_error: message truncated")
        start = pos + 1
        end = start + data[pos]
        if end > len(data):
            raise DecodeError("decode_error: message truncated")
        self._pos = end
        return data[start:end]

    def vec16(self) -> bytes:
        return self._take(self._int(2))

    def vec24(self) -> bytes:
        return self._take(self._int(3))

    def done(self) -> None:
        """Require that all input was consumed."""
        if self._pos != len(self._data):
            raise DecodeError("decode_error: trailing bytes after message")
