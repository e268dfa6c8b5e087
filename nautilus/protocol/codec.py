"""Byte-level encoding helpers: big-endian integers and length-prefixed vectors.

A :class:`Reader` raises :class:`nautilus.ProtocolViolation` (``decode_error``)
on any short, overlong or malformed input, so that every parser built on it
either returns a well-formed value or fails with the protocol's own error.
"""

from __future__ import annotations

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

    def _take(self, n: int) -> bytes:
        if n > len(self._data) - self._pos:
            raise DecodeError("decode_error: message truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self._take(3), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def vec8(self) -> bytes:
        return self._take(self.u8())

    def vec16(self) -> bytes:
        return self._take(self.u16())

    def vec24(self) -> bytes:
        return self._take(self.u24())

    def done(self) -> None:
        """Require that all input was consumed."""
        if self._pos != len(self._data):
            raise DecodeError("decode_error: trailing bytes after message")
