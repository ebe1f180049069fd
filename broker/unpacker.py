"""A msgpack decoder whose bin values are read-only memoryviews: views into the message
itself (zero copy) for messages over ``SMALL_MESSAGE_BYTES``.

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

Small messages take a fast path: msgpack-python's C decoder under the same limits, then a
pass over its containers for what msgpack cannot check (nesting depth, str-only map keys)
that also wraps each bin value in a read-only memoryview, so that both paths give objects
of the same types (pydantic reads ``bytes`` as a ``str`` or an ``int`` where it refuses a
memoryview). On a 2.7 kB update that is 16 us against the walk's 69 us; copying the bins
costs less than walking them up to a few hundred kB (``bench/bench_codec.py --unpacker``).
Whatever the fast path refuses, for any reason, is decoded again by the walk, which gives
the reason: both paths accept the same messages and decode them to equal objects
(tests/unit/test_unpacker.py compares them on random and hostile input).
"""

from __future__ import annotations

import struct
from typing import Any, NoReturn

import msgpack

from alchimia.broker.limits import DecodeError, Limits

# Messages up to this size take the fast path (msgpack's C decoder, bins copied); larger
# ones the zero-copy walk. bench/bench_codec.py --unpacker measures both paths over sizes:
# the walk wins from about 1 MiB of bins in one tensor; 64 KiB keeps the copies small.
SMALL_MESSAGE_BYTES = 64 * 1024
# The C decoder allocates a list of the declared length before reading its items, and
# nests up to 1024 deep before it stops: a few kB of nested array headers that each claim
# n items cost 1024 * 8n bytes and milliseconds before the refusal. The fast path takes
# arrays of at most this many items (a small message's arrays are tensor shapes and short
# lists); longer ones are left to the walk, which checks depth and bytes left first.
_FAST_MAX_ARRAY_LEN = 256

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
    if len(payload) <= SMALL_MESSAGE_BYTES:
        try:
            return _unpack_small(payload, limits)
        except Exception:  # refused, for whatever reason: the walk says why
            pass
    return _unpack_walk(payload, limits)


def _unpack_walk(payload: bytes, limits: Limits) -> Any:
    """``unpack_views`` by the zero-copy walk over the format (any size)."""
    view = memoryview(payload)
    obj, end = _Reader(view, limits).read(0, 0)
    if end != len(view):
        raise DecodeError(f"{len(view) - end} trailing bytes after the message")
    return obj


class _NotFast(Exception):
    """The fast path does not take this message (the walk decides, and gives the reason)."""


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise _NotFast


def _unpack_small(payload: bytes, limits: Limits) -> Any:
    """``unpack_views`` by msgpack's C decoder; raises on anything the walk would refuse
    (and on some messages it would accept: long arrays, nesting past msgpack's stack)."""
    size = len(payload)
    obj = msgpack.unpackb(
        payload,
        raw=False,
        use_list=True,
        strict_map_key=True,  # str or bytes keys; _views refuses bytes
        unicode_errors="strict",
        max_str_len=limits.max_str_len,
        max_bin_len=size,
        # Every item takes at least one byte: no tighter bound changes what is accepted.
        max_array_len=min(limits.max_container_len, size, _FAST_MAX_ARRAY_LEN),
        max_map_len=min(limits.max_container_len, size // 2),
        max_ext_len=0,  # timestamps (ext -1) carry 4 bytes or more: refused here
        ext_hook=_refuse_ext,  # empty ext values of the other types
    )
    kind = type(obj)
    if kind is bytes:
        return memoryview(obj)
    if kind is dict or kind is list:
        _views(obj, 0, limits.max_depth)
    return obj


def _views(obj: dict[Any, Any] | list[Any], depth: int, max_depth: int) -> None:
    """Check depth and map keys of a decoded container, and turn its bins into read-only
    views, in place (containers at ``depth`` >= ``max_depth`` are refused, as by the walk)."""
    if depth >= max_depth:
        raise _NotFast
    if type(obj) is dict:
        for key, value in obj.items():
            if type(key) is not str:
                raise _NotFast
            kind = type(value)
            if kind is bytes:
                obj[key] = memoryview(value)  # replaces a value: the dict keeps its size
            elif kind is dict or kind is list:
                _views(value, depth + 1, max_depth)
    else:
        for i, value in enumerate(obj):
            kind = type(value)
            if kind is bytes:
                obj[i] = memoryview(value)
            elif kind is dict or kind is list:
                _views(value, depth + 1, max_depth)


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
