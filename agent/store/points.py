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
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, compress, count
from operator import and_, attrgetter, eq, not_
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias, cast

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


class _Template(NamedTuple):
    tags: dict[str, str]  # snapshot: an id() hit is only trusted if the tags still equal it
    text: str  # one line: "prefix f1=%r,f2=%di %d\n"
    types: tuple[type, ...]
    ints: tuple[int, ...]  # positions of integer fields (range-checked)
    keys: list[str]  # the field keys and their value types as lists: a run's checks
    type_list: list[type]  # compare them repeated, with one C-level comparison each


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

    def encode(self, points: Sequence[Point]) -> bytes:
        """The points as newline-terminated lines; raises on the first invalid point."""
        out: list[str] = []
        if len(points) >= _MIN_RUN and self._encode_run(points, out):
            return out[0].encode()
        done = 0
        for lo, hi in _runs(points):
            if hi - lo >= _MIN_RUN:
                self._encode_points(points[done:lo], out)
                run = points[lo:hi]
                if not self._encode_run(run, out):
                    self._encode_points(run, out)
                done = hi
        self._encode_points(points[done:], out)
        return "".join(out).encode()

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
            entry = _Template(
                dict(point.tags),
                f"{prefix} {','.join(specs)} %d\n",
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

    def _encode_points(self, points: Sequence[Point], out: list[str]) -> None:
        append = out.append
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

    def _encode_run(self, run: Sequence[Point], out: list[str]) -> bool:
        """Append the whole run if all its points have the first one's shape and are valid."""
        head = run[0]
        fields = list(map(_FIELDS, run))
        if type(head.fields) is not dict or list(map(type, fields)).count(dict) != len(run):
            return False
        entry = self._template(head, tuple(map(type, head.fields.values())))
        if entry is None:
            return False
        n = len(run)
        if (
            list(map(_MEASUREMENT, run)).count(head.measurement) != n
            # Equal, not identical: a source may build a new tags dict per point.
            or list(map(_TAGS, run)).count(entry.tags) != n
            or list(map(len, fields)).count(len(entry.keys)) != n
            or list(chain.from_iterable(fields)) != entry.keys * n
        ):
            return False
        values = list(chain.from_iterable(map(dict.values, fields)))
        if list(map(type, values)) != entry.type_list * n:
            return False
        k = len(entry.keys)
        for i in entry.ints:
            column = values[i::k]
            if min(column) < INT64_MIN or max(column) > INT64_MAX:
                return False
        if not sum_is_finite(values):  # overflowing finite values go point by point
            return False
        stamps = list(map(_TS, run))
        if list(map(type, stamps)).count(int) != n or min(stamps) < TS_MIN or max(stamps) > TS_MAX:
            return False
        args: list[object] = [None] * (n * (k + 1))
        for i in range(k):
            args[i :: k + 1] = values[i::k]
        args[k :: k + 1] = stamps
        out.append((entry.text * n) % tuple(args))
        return True


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
