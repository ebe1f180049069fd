"""A msgpack decoder whose bin values are read-only views into the message (zero copy).

Why our own decoder rather than ``msgpack.unpackb``: msgpack-python copies every bin value
into a new ``bytes`` object, and msgspec only avoids the copy for statically typed schemas.
A weight delta is one large bin per tensor, so on the coordinator that copy cost as much as
aggregating the update itself (bench/bench_aggregation.py). Everything else a message holds
is small, so a plain Python walk over the format costs microseconds per message. Packing
stays with msgpack-python.

Hostile input is the normal case here: every length is checked against the bytes that are
left and against ``Limits`` before anything is allocated or looped over, nesting is bounded,
ext types (the only msgpack feature that could map to arbitrary objects) are refused, and
every failure is a ``DecodeError`` with a one-line reason.
"""

from __future__ import annotations

import struct
from typing import Any

from alchimia.broker.limits import DecodeError, Limits

_U8 = struct.Struct(">B").unpack_from
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_I8 = struct.Struct(">b").unpack_from
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_F32 = struct.Struct(">f").unpack_from
_F64 = struct.Struct(">d").unpack_from

# Fixed-width scalars: type byte -> (reader, width).
_SCALARS = {
    0xCA: (_F32, 4),
    0xCB: (_F64, 8),
    0xCC: (_U8, 1),
    0xCD: (_U16, 2),
    0xCE: (_U32, 4),
    0xCF: (_U64, 8),
    0xD0: (_I8, 1),
    0xD1: (_I16, 2),
    0xD2: (_I32, 4),
    0xD3: (_I64, 8),
}
# Length-prefixed and container types: type byte -> (kind, reader of the length, its width).
_SIZED = {
    0xC4: ("bin", _U8, 1),
    0xC5: ("bin", _U16, 2),
    0xC6: ("bin", _U32, 4),
    0xD9: ("str", _U8, 1),
    0xDA: ("str", _U16, 2),
    0xDB: ("str", _U32, 4),
    0xDC: ("array", _U16, 2),
    0xDD: ("array", _U32, 4),
    0xDE: ("map", _U16, 2),
    0xDF: ("map", _U32, 4),
}
_EXT = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def unpack_views(payload: bytes, limits: Limits) -> Any:
    """The object ``payload`` encodes; bin values come back as read-only memoryviews.

    ``payload`` must be immutable (``bytes``) so that the views can never change under the
    arrays built on them. Map keys must be strings; trailing bytes are an error.
    """
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    view = memoryview(payload)
    obj, end = _Reader(view, limits).read(0, 0)
    if end != len(view):
        raise DecodeError(f"{len(view) - end} trailing bytes after the message")
    return obj


class _Reader:
    def __init__(self, view: memoryview, limits: Limits) -> None:
        self.view = view
        self.size = len(view)
        self.limits = limits

    def _need(self, pos: int, n: int) -> None:
        if pos + n > self.size:
            raise DecodeError(
                f"message truncated: {n} bytes needed at offset {pos}, {self.size - pos} left"
            )

    def read(self, pos: int, depth: int) -> tuple[Any, int]:
        """(object, position after it) of the item starting at ``pos``."""
        self._need(pos, 1)
        b = self.view[pos]
        pos += 1
        if b <= 0x7F:
            return b, pos
        if b >= 0xE0:
            return b - 0x100, pos
        if b <= 0x8F:
            return self._map(pos, b & 0x0F, depth)
        if b <= 0x9F:
            return self._array(pos, b & 0x0F, depth)
        if b <= 0xBF:
            return self._str(pos, b & 0x1F)
        if b == 0xC0:
            return None, pos
        if b == 0xC2:
            return False, pos
        if b == 0xC3:
            return True, pos
        scalar = _SCALARS.get(b)
        if scalar is not None:
            reader, width = scalar
            self._need(pos, width)
            return reader(self.view, pos)[0], pos + width
        sized = _SIZED.get(b)
        if sized is not None:
            kind, reader, width = sized
            self._need(pos, width)
            n = reader(self.view, pos)[0]
            pos += width
            if kind == "bin":
                return self._bin(pos, n)
            if kind == "str":
                return self._str(pos, n)
            if kind == "array":
                return self._array(pos, n, depth)
            return self._map(pos, n, depth)
        if b in _EXT:
            raise DecodeError("msgpack ext types are not accepted")
        raise DecodeError(f"invalid msgpack type byte 0x{b:02x} at offset {pos - 1}")

    def _bin(self, pos: int, n: int) -> tuple[memoryview, int]:
        self._need(pos, n)
        return self.view[pos : pos + n], pos + n

    def _str(self, pos: int, n: int) -> tuple[str, int]:
        if n > self.limits.max_str_len:
            raise DecodeError(f"string of {n} bytes exceeds the limit of {self.limits.max_str_len}")
        self._need(pos, n)
        try:
            return str(self.view[pos : pos + n], "utf-8"), pos + n
        except UnicodeDecodeError as exc:
            raise DecodeError(f"string at offset {pos} is not valid UTF-8: {exc.reason}") from None

    def _container(self, pos: int, n: int, depth: int, items_per_entry: int) -> None:
        if n > self.limits.max_container_len:
            raise DecodeError(
                f"container of {n} entries exceeds the limit of {self.limits.max_container_len}"
            )
        if depth >= self.limits.max_depth:
            raise DecodeError(f"containers nested deeper than {self.limits.max_depth}")
        # Every item takes at least one byte: a declared length can never outrun the data.
        self._need(pos, n * items_per_entry)

    def _array(self, pos: int, n: int, depth: int) -> tuple[list[Any], int]:
        self._container(pos, n, depth, 1)
        out = []
        for _ in range(n):
            item, pos = self.read(pos, depth + 1)
            out.append(item)
        return out, pos

    def _map(self, pos: int, n: int, depth: int) -> tuple[dict[str, Any], int]:
        self._container(pos, n, depth, 2)
        out: dict[str, Any] = {}
        for _ in range(n):
            key, pos = self.read(pos, depth + 1)
            if not isinstance(key, str):
                raise DecodeError(f"map keys must be strings, got {type(key).__name__}")
            out[key], pos = self.read(pos, depth + 1)
        return out, pos
