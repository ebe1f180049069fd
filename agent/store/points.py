"""The Point type, its validation, and InfluxDB line-protocol encoding.

Why the escaping is written here rather than taken from a library (DESIGN.md asks for a
well-kept library where one does the job): the candidates on PyPI either come with the
v2-only ``influxdb-client`` (a large dependency tree we do not otherwise need) or are small
unmaintained packages, and they escape backslashes in keys and tag values or newlines as
``\\n``, which InfluxDB 1.x does *not* unescape, so values would not read back as written.
The rules below were checked against a real ``influxd`` 1.6 (see tests):

* measurement: ``,`` and space are escaped; ``=`` is taken literally;
* tag keys, tag values, field keys: ``,``, ``=`` and space are escaped; a backslash before
  any other character is literal, so backslashes are not escaped, but a name may not *end*
  with one (it would escape the following separator);
* string field values: ``\\`` and ``"`` are escaped; newlines are allowed inside quotes;
* integers get an ``i`` suffix, floats use ``repr`` (shortest text that round-trips
  exactly), booleans ``true``/``false``, timestamps are exact integer nanoseconds.

Values InfluxDB would silently drop or mangle (NaN/inf, empty tag values, the key ``time``,
a measurement starting with ``#``, newlines in names) are refused with a ValueError, so
that what one reads back always equals what one wrote.

The encoder's hot path (:class:`LineEncoder`: a run of points of one shape is checked with
C-level list operations and formatted with one ``%`` over a cached template, so escaping
happens once per shape and per-point Python work is nearly gone) is what keeps the agent's
CPU per point low; :func:`encode_line` stays the reference it must match byte for byte.

Formatting the floats was the largest cost left (``repr`` takes ~0.25 us a value on the
gateway-class VM, cold ~0.5 us), so the hot path has the values of a whole run printed in
one call by ``pydantic_core.to_json`` (pydantic's Rust core, already a dependency of every
install): it prints the same shortest round-trip digits as ``repr``, 5-7 times faster. It
only differs from ``repr`` where ``repr`` writes an exponent with a minus sign (``1e-05``
vs ``1e-5``; ``0.00001`` for values below 1e-4), and such runs (and NaN/infinities) are
recognised in its output and printed with ``repr`` instead; at import a self-test against
``repr`` turns the fast printer off if a pydantic_core version ever prints otherwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, compress, count
from operator import and_, attrgetter, eq, not_
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias, cast

from pydantic_core import to_json

FieldValue: TypeAlias = float | int | str | bool

#: Tags that every furnace data point carries (other measurements may have others).
FURNACE_TAGS: tuple[str, ...] = ("plant", "furnace", "heat")

#: An immutable empty mapping, usable as a default argument.
NO_TAGS: Mapping[str, str] = MappingProxyType({})

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: InfluxDB's own time range (models.MinNanoTime / MaxNanoTime).
TS_MIN = -9223372036854775806
TS_MAX = 9223372036854775806
#: InfluxDB 1.x refuses string field values longer than this many bytes.
MAX_STRING_BYTES = 64 * 1024

_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
_TEMPLATE_CACHE_MAX = 4096
#: Shorter runs are encoded point by point: the run checks cost a few microseconds each.
_MIN_RUN = 8


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


@dataclass(frozen=True, slots=True)
class Point:
    """One sample of a series: measurement + tag set identify it, ts_ns orders it.

    Two points with the same measurement, tags and ``ts_ns`` are the same point for both
    stores: the later one's fields overwrite the earlier one's, field by field.
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    ts_ns: int


def _check_name(kind: str, name: object, *, allow_time: bool = False) -> str:
    if type(name) is not str:
        raise TypeError(f"{kind} must be str, got {type(name).__name__}: {name!r}")
    if not name:
        raise ValueError(f"{kind} must not be empty (InfluxDB drops empty names and tags)")
    if "\n" in name or "\r" in name:
        raise ValueError(f"{kind} {name!r} contains a line break, which line protocol cannot carry")
    if name.endswith("\\"):
        raise ValueError(f"{kind} {name!r} ends with a backslash, which line protocol cannot carry")
    if not allow_time and name == "time":
        raise ValueError(f"{kind} 'time' is reserved by InfluxDB (it would be dropped)")
    return name


def check_measurement(measurement: object) -> str:
    name = _check_name("measurement", measurement, allow_time=True)
    if name.startswith("#"):
        raise ValueError(
            f"measurement {name!r} starts with '#', which line protocol reads as a comment"
        )
    return name


def sum_is_finite(values: Iterable[float]) -> bool:
    """False if a value is NaN or infinite, in one C-level pass (``sum``), not a check per
    value. Finite values whose sum overflows also give False: fast paths that use this send
    them to the exact, slower path, which accepts them."""
    total = sum(values)
    return total - total == 0


def check_field_key(key: object) -> str:
    return _check_name("field key", key)


def check_tags(tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        _check_name("tag key", key)
        _check_name(f"value of tag {key!r}", value, allow_time=True)


def normalize_value(key: str, value: object) -> FieldValue:
    """Validate one field value and turn numpy scalars and the like into plain Python types."""
    t = type(value)
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"field {key!r} is {value!r}: NaN and infinities cannot be stored")
        return value  # type: ignore[return-value]
    if t is bool:
        return value  # type: ignore[return-value]
    if t is int:
        if not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
            raise ValueError(f"field {key!r} = {value} does not fit a signed 64-bit integer")
        return value  # type: ignore[return-value]
    if t is str:
        if len(value.encode()) > MAX_STRING_BYTES:  # type: ignore[attr-defined]
            raise ValueError(f"field {key!r} is longer than {MAX_STRING_BYTES} bytes")
        return value  # type: ignore[return-value]
    # Subclasses and numpy scalars: normalise, then check again as the plain type.
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        return bool(value)
    if isinstance(value, numbers.Integral):
        return normalize_value(key, int(value))
    if isinstance(value, numbers.Real):
        return normalize_value(key, float(value))
    if isinstance(value, str):
        return normalize_value(key, str(value))
    raise TypeError(f"field {key!r} has unsupported type {t.__name__}: {value!r}")


def normalize_fields(fields: Mapping[str, object]) -> dict[str, FieldValue]:
    if not fields:
        raise ValueError("a point needs at least one field")
    return {check_field_key(k): normalize_value(k, v) for k, v in fields.items()}


def normalize_ts(ts_ns: object) -> int:
    """Timestamps must be exact integers: a float would silently lose nanoseconds."""
    if type(ts_ns) is not int:
        if isinstance(ts_ns, bool) or not isinstance(ts_ns, numbers.Integral):
            raise TypeError(f"ts_ns must be an integer number of nanoseconds, got {ts_ns!r}")
        ts_ns = int(ts_ns)
    if not TS_MIN <= ts_ns <= TS_MAX:
        raise ValueError(f"ts_ns {ts_ns} is outside InfluxDB's time range")
    return ts_ns


def normalize_point(point: Point) -> Point:
    """Validate a point and return it with plain Python values (what a store will return)."""
    check_measurement(point.measurement)
    check_tags(point.tags)
    return Point(
        point.measurement,
        dict(point.tags),
        normalize_fields(point.fields),
        normalize_ts(point.ts_ns),
    )


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_key(name: str) -> str:
    """Escape a tag key, tag value or field key."""
    return name.translate(_KEY_ESCAPES)


def escape_string_field(value: str) -> str:
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def format_value(value: FieldValue) -> str:
    """Line-protocol text of an already normalised field value."""
    t = type(value)
    if t is float:
        return repr(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return f"{value}i"
    return escape_string_field(value)  # type: ignore[arg-type]


def series_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    """``measurement,k=v,...`` with tags sorted by key, as InfluxDB recommends."""
    check_measurement(measurement)
    check_tags(tags)
    parts = [escape_measurement(measurement)]
    parts.extend(f"{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()))
    return ",".join(parts)


def tagset_key(tags: Mapping[str, str]) -> str:
    """Canonical text of a tag set: used to identify and order series in both stores."""
    return ",".join(f"{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()))


def encode_line(point: Point) -> str:
    """One point as a line (without the newline); the reference the fast path must match."""
    fields = normalize_fields(point.fields)
    body = ",".join(f"{escape_key(k)}={format_value(v)}" for k, v in fields.items())
    return f"{series_prefix(point.measurement, point.tags)} {body} {normalize_ts(point.ts_ns)}"


#: Byte strings of a printed run that ``repr`` would print otherwise: a value below 1e-4
#: without an exponent (``0.00001``; the test also catches some harmless values such as
#: 10.00001, which then just take the slower way), NaN and infinities (``NaN``,
#: ``Infinity``); and, where there is an ``e`` at all, a negative exponent (``1e-5`` for
#: ``1e-05``; one-byte searches are 30 times cheaper than the others).
_NOT_AS_REPR = (b"0.0000", b"N", b"I")
#: The fast printer; None once the self-test below found it printing otherwise than repr.
_to_json: Callable[[Any], bytes] | None = to_json


def _printed_like_repr(values: list[float | int]) -> bytes | None:
    """The values' text as ``repr`` prints them (ints as ``str``), separated by commas, in
    one C-level call; None if the fast printer is off or some value needs ``repr`` itself."""
    if _to_json is None:
        return None
    text = _to_json(values)
    for mark in _NOT_AS_REPR:
        if mark in text:
            return None
    if b"e" in text and b"e-" in text:
        return None
    return text[1:-1]


def _check_printer() -> None:
    """Turn the fast printer off unless it prints these values exactly as ``repr`` and
    hands back the ones it cannot."""
    global _to_json
    same: list[float | int] = [
        0.0, -0.0, 1.0, -1.0, 1500.0, 0.1, 0.2, 0.30000000000000004, 1 / 3, 2 / 3, 823.456,
        -823.456, 1e-4, -1.5e-4, 0.00012345678901234567, 123456.789, 1e15, 1e16, -1e16,
        9999999999999998.0, 1.2345678901234567e16, 2.0**53, 2.0**53 + 2, 2.0**63, 1e22, 1e23,
        1.7976931348623157e308, 823.4559936523438, 0.1 + 0.7, 100.0 / 3, 3.14159265358979,
        0, 1, -1, INT64_MAX, INT64_MIN,
    ]  # fmt: skip
    others = [1e-5, -9.99e-5, 1.5e-7, 5e-324, 2.2250738585072014e-308, math.nan, math.inf]
    try:
        if _printed_like_repr(same) == b",".join(repr(v).encode() for v in same) and not any(
            _printed_like_repr([1.0, v]) for v in [*others, -math.inf]
        ):
            return
    except Exception:  # any surprise: print with repr
        pass
    _to_json = None


_check_printer()


class _Template(NamedTuple):
    tags: dict[str, str]  # snapshot: an id() hit is only trusted if the tags still equal it
    text: str  # one line: "prefix f1=%r,f2=%di %d\n"
    # The same cut around the values' text, for a run printed by _printed_like_repr:
    head: bytes  # b"prefix f1="
    seps: list[bytes]  # what follows each value: [b",f2=", b"i %d\nprefix f1="]
    tail: bytes  # what follows the last point's last value: b"i %d\n"
    types: tuple[type, ...]
    ints: tuple[int, ...]  # positions of integer fields (range-checked)
    keys: list[str]  # the field keys and their value types as lists: a run's checks
    type_list: list[type]  # compare them repeated, with one C-level comparison each


class _RunShape(NamedTuple):
    """A template's lists for a run of n points: what a run's checks compare with."""

    keys: list[str]  # the field keys, n times
    types: list[type]  # their types, n times
    seps: tuple[bytes, ...]  # the separators, n times but the last


#: Run shapes kept (the last few runs' sizes and shapes), and the largest kept in values.
_RUN_CACHE_MAX = 8
_RUN_CACHE_VALUES = 20_000


_MEASUREMENT = attrgetter("measurement")
_TAGS = attrgetter("tags")
_FIELDS = attrgetter("fields")
_TS = attrgetter("ts_ns")


class LineEncoder:
    """Encodes points to line protocol with one cached ``%``-template per point shape.

    A shape is measurement + tag set + field keys in order + their value types. Furnace
    data keeps one shape for a whole heat, so a whole batch (or each long run of one shape)
    is checked column-wise with C-level list operations (equal measurements and tags, the
    same keys and types, finite floats, integers and timestamps in range) and formatted
    with a single ``%`` over the template repeated once per point: per-point Python work,
    which cost as much as the float formatting itself, is nearly gone. Short runs go point
    by point through the template cache, whose first level is keyed by the *identity* of
    the tags mapping (sources reuse one tags dict per heat) and confirmed by an equality
    check, the second by the tag items (for sources that build a tags dict per point).
    Anything else (strings, bools, NaN, numpy scalars, invalid points) goes to
    :func:`encode_line`, which also raises the exact error. Not thread safe.
    """

    def __init__(self) -> None:
        self._by_id: dict[tuple[Any, ...], _Template] = {}
        self._by_items: dict[tuple[Any, ...], _Template] = {}
        self._runs: dict[tuple[str, int], _RunShape] = {}  # by template text and n

    def encode(self, points: Sequence[Point]) -> bytes:
        """The points as newline-terminated lines; raises on the first invalid point."""
        out: list[bytes] = []
        if len(points) >= _MIN_RUN and self._encode_run(points, out):
            return out[0]
        done = 0
        for lo, hi in _runs(points):
            if hi - lo >= _MIN_RUN:
                self._encode_points(points[done:lo], out)
                run = points[lo:hi]
                if not self._encode_run(run, out):
                    self._encode_points(run, out)
                done = hi
        self._encode_points(points[done:], out)
        return b"".join(out)

    def _template(self, point: Point, types: tuple[type, ...]) -> _Template | None:
        """The template for this point's shape; None if only encode_line can encode it."""
        entry = self._by_id.get((point.measurement, id(point.tags), *point.fields))
        if entry is not None and entry.types == types and entry.tags == point.tags:
            return entry
        key = (point.measurement, *point.tags.items(), *point.fields)
        entry = self._by_items.get(key)
        if entry is None or entry.types != types:
            if not all(t is float or t is int for t in types) or not point.fields:
                return None
            try:
                prefix = series_prefix(point.measurement, point.tags).replace("%", "%%")
                names = [escape_key(check_field_key(k)).replace("%", "%%") for k in point.fields]
            except (TypeError, ValueError):
                return None  # encode_line raises the error it would raise for this point
            specs = [
                f"{name}=%r" if t is float else f"{name}=%di"
                for name, t in zip(names, types, strict=True)
            ]
            ints = tuple(i for i, t in enumerate(types) if t is int)
            head = f"{prefix} {names[0]}="
            ends = ["i" if t is int else "" for t in types]
            seps = [f"{end},{name}=" for end, name in zip(ends, names[1:], strict=False)]
            entry = _Template(
                dict(point.tags),
                f"{prefix} {','.join(specs)} %d\n",
                head.encode(),
                [sep.encode() for sep in [*seps, f"{ends[-1]} %d\n{head}"]],
                f"{ends[-1]} %d\n".encode(),
                types,
                ints,
                list(point.fields),
                list(types),
            )
            if len(self._by_items) >= _TEMPLATE_CACHE_MAX:
                self._by_items.clear()
            self._by_items[key] = entry
        if len(self._by_id) >= _TEMPLATE_CACHE_MAX:
            self._by_id.clear()
        self._by_id[(point.measurement, id(point.tags), *point.fields)] = entry
        return entry

    def _encode_points(self, points: Sequence[Point], out: list[bytes]) -> None:
        if not points:
            return
        lines: list[str] = []
        append = lines.append
        for p in points:
            values = tuple(p.fields.values())
            entry = self._template(p, tuple(map(type, values)))
            ts = p.ts_ns
            if entry is not None and type(ts) is int and TS_MIN <= ts <= TS_MAX:
                ints = entry.ints
                numbers = cast("tuple[float, ...]", values)  # templates are for int/float only
                in_range = not ints or all(INT64_MIN <= numbers[i] <= INT64_MAX for i in ints)
                if in_range and sum_is_finite(numbers):
                    append(entry.text % (*values, ts))
                    continue
            append(encode_line(p) + "\n")  # raises if the point is invalid
        out.append("".join(lines).encode())

    def _encode_run(self, run: Sequence[Point], out: list[bytes]) -> bool:
        """Append the whole run if all its points have the first one's shape and are valid."""
        head = run[0]
        fields = list(map(_FIELDS, run))
        if type(head.fields) is not dict or list(map(type, fields)).count(dict) != len(run):
            return False
        entry = self._template(head, tuple(map(type, head.fields.values())))
        if entry is None:
            return False
        n = len(run)
        shape = self._run_shape(entry, n)
        if (
            list(map(_MEASUREMENT, run)).count(head.measurement) != n
            # Equal, not identical: a source may build a new tags dict per point.
            or list(map(_TAGS, run)).count(entry.tags) != n
            # Each dict's keys, in order (dicts hold each key once: the keys of all the
            # points can only equal the template's n times if each point's do).
            or list(chain.from_iterable(fields)) != shape.keys
        ):
            return False
        values = list(chain.from_iterable(map(dict.values, fields)))
        if list(map(type, values)) != shape.types:
            return False
        k = len(entry.keys)
        for i in entry.ints:
            column = values[i::k]
            if min(column) < INT64_MIN or max(column) > INT64_MAX:
                return False
        stamps = list(map(_TS, run))
        if list(map(type, stamps)).count(int) != n or min(stamps) < TS_MIN or max(stamps) > TS_MAX:
            return False
        # The values' text in one call (NaN and infinities come back as None, like the values
        # that need repr's exponent). Its commas become the keys, the timestamps' places and
        # the next lines' prefixes: one % puts the separators in, a second the timestamps.
        printed = _printed_like_repr(values)
        if printed is not None:
            lines = printed.replace(b",", b"%s") % shape.seps
            out.append(b"".join((entry.head, lines, entry.tail)) % tuple(stamps))
            return True
        if not sum_is_finite(values):  # overflowing finite values too
            return False  # go point by point
        args: list[object] = [None] * (n * (k + 1))
        for i in range(k):
            args[i :: k + 1] = values[i::k]
        args[k :: k + 1] = stamps
        out.append(((entry.text * n) % tuple(args)).encode())
        return True

    def _run_shape(self, entry: _Template, n: int) -> _RunShape:
        key = (entry.text, n)
        shape = self._runs.get(key)
        if shape is None:
            shape = _RunShape(entry.keys * n, entry.type_list * n, tuple((entry.seps * n)[:-1]))
            if n * len(entry.keys) <= _RUN_CACHE_VALUES:
                if len(self._runs) >= _RUN_CACHE_MAX:
                    self._runs.clear()
                self._runs[key] = shape
        return shape


def _runs(points: Sequence[Point]) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of consecutive points that seem to share one shape.

    Only a hint for where to try :meth:`LineEncoder._encode_run`, which checks everything:
    comparing numbers of fields instead of field keys is exact enough and far cheaper.
    """
    try:
        sizes = list(map(len, map(_FIELDS, points)))
    except TypeError:  # fields without a length: encode_line will say what is wrong
        return [(0, len(points))]
    measurements = list(map(_MEASUREMENT, points))
    tags = list(map(_TAGS, points))
    same = map(
        and_,
        map(and_, map(eq, measurements[1:], measurements), map(eq, tags[1:], tags)),
        map(eq, sizes[1:], sizes),
    )
    starts = [0, *compress(count(1), map(not_, same))]
    return list(zip(starts, [*starts[1:], len(points)], strict=True))
