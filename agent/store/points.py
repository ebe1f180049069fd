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

The encoder's hot path (one cached ``%``-template per measurement + tag set + field keys, so
the tag-set prefix is escaped once and the floats are formatted in C) is what keeps the
agent's CPU per point low.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

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
    return {_check_name("field key", k): normalize_value(k, v) for k, v in fields.items()}


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
    return Point(point.measurement, dict(point.tags), normalize_fields(point.fields),
                 normalize_ts(point.ts_ns))


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
    text: str  # "prefix f1=%r,f2=%di %d\n"
    types: tuple[type, ...]
    ints: tuple[int, ...]  # positions of integer fields (range-checked per point)


class LineEncoder:
    """Encodes points to line protocol, caching one ``%``-template per point shape.

    A shape is measurement + tag set + field keys with their value types. Furnace data
    repeats one shape for a whole heat, so escaping and sorting happen once per heat and a
    point costs a type check and one C-level ``%`` formatting. The first-level cache is keyed
    by the *identity* of the tags mapping (sources reuse one tags dict per heat), confirmed by
    an equality check, so no per-point tuple of the tag items is built; the second level,
    keyed by the tag items, serves callers that build a fresh tags dict per point. Points with
    string or bool fields take the slow path (:func:`encode_line`). Not thread safe.
    """

    def __init__(self) -> None:
        self._by_id: dict[tuple[Any, ...], _Template] = {}
        self._by_items: dict[tuple[Any, ...], _Template] = {}

    def _lookup(self, point: Point, types: tuple[type, ...]) -> _Template | None:
        key = (point.measurement, *point.tags.items(), *point.fields)
        entry = self._by_items.get(key)
        if entry is None or entry.types != types:
            if not all(t is float or t is int for t in types) or not point.fields:
                return None
            prefix = series_prefix(point.measurement, point.tags).replace("%", "%%")
            specs = []
            for k, t in zip(point.fields, types, strict=True):
                name = escape_key(_check_name("field key", k)).replace("%", "%%")
                specs.append(f"{name}=%r" if t is float else f"{name}=%di")
            ints = tuple(i for i, t in enumerate(types) if t is int)
            entry = _Template(dict(point.tags), f"{prefix} {','.join(specs)} %d\n", types, ints)
            if len(self._by_items) >= _TEMPLATE_CACHE_MAX:
                self._by_items.clear()
            self._by_items[key] = entry
        if len(self._by_id) >= _TEMPLATE_CACHE_MAX:
            self._by_id.clear()
        self._by_id[(point.measurement, id(point.tags), *point.fields)] = entry
        return entry

    def encode_lines(self, points: Iterable[Point]) -> list[str]:
        """Each point as one newline-terminated line; raises on the first invalid point."""
        out: list[str] = []
        append = out.append
        by_id = self._by_id
        for p in points:
            fields = p.fields
            values = tuple(fields.values())
            types = tuple(map(type, values))
            tags = p.tags
            entry = by_id.get((p.measurement, id(tags), *fields))
            if entry is None or entry.types != types or entry.tags != tags:
                entry = self._lookup(p, types)
            ts = p.ts_ns
            if entry is not None and type(ts) is int and TS_MIN <= ts <= TS_MAX:
                total = sum(values)
                ints = entry.ints
                # NaN/inf make the sum non-finite (so may an overflow): the slow path decides.
                if total - total == 0 and (
                    not ints or all(INT64_MIN <= values[i] <= INT64_MAX for i in ints)
                ):
                    append(entry.text % (*values, ts))
                    continue
            append(encode_line(p) + "\n")
        return out

    def encode(self, points: Sequence[Point]) -> bytes:
        return "".join(self.encode_lines(points)).encode()
