"""Unit tests of the store without a server: line protocol, spool, batching logic, SQLite."""

from __future__ import annotations

import gzip
import json
import logging
import math
import random
import re
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alchimia.agent.store import Point, SpoolFullError, SpoolLockedError, SQLiteStore, open_store
from alchimia.agent.store import points as points_module
from alchimia.agent.store.buffered import SEND_OK, BufferedWriter, FlushTimeout, Outcome, SendResult
from alchimia.agent.store.influx import InfluxHTTP, gzip_body
from alchimia.agent.store.points import (
    INT64_MAX,
    INT64_MIN,
    TS_MAX,
    TS_MIN,
    LineEncoder,
    encode_line,
    normalize_point,
)
from alchimia.agent.store.spool import MAGIC, GroupSync, Spool, SpoolCorruptError, frame_header

T0 = 1_700_000_000_000_000_000
TAGS = {"plant": "p1", "furnace": "f1", "heat": "H0001"}


def pt(i: int, **fields: float | int | str | bool) -> Point:
    return Point("eaf", TAGS, fields or {"v": float(i)}, T0 + i)


# -- line protocol --------------------------------------------------------------------------


def test_escapes_tags_measurement_and_field_keys() -> None:
    p = Point("my meas,x=y", {"tag key": "a b,c=d", "k": 'x"y\\z'}, {"f k=,": 1.5}, 7)
    assert encode_line(p) == 'my\\ meas\\,x=y,k=x"y\\z,tag\\ key=a\\ b\\,c\\=d f\\ k\\=\\,=1.5 7'


def test_tags_are_sorted_so_equal_tag_sets_make_equal_series() -> None:
    a = Point("m", {"b": "2", "a": "1"}, {"f": 1.0}, 1)
    b = Point("m", {"a": "1", "b": "2"}, {"f": 1.0}, 1)
    assert encode_line(a) == encode_line(b) == "m,a=1,b=2 f=1.0 1"


def test_string_fields_escape_quotes_and_backslashes() -> None:
    p = Point("m", {}, {"s": 'say "hi" \\ bye\\', "nl": "a\nb"}, 1)
    assert encode_line(p) == 'm s="say \\"hi\\" \\\\ bye\\\\",nl="a\nb" 1'


def test_value_types() -> None:
    p = Point(
        "m",
        {},
        {
            "i": 3,
            "neg": -(2**63),
            "t": True,
            "f": False,
            "x": 0.1,
            "e": 1e300,
            "tiny": 5e-324,
            "z": -0.0,
            "w": 1500.0,
        },
        2,
    )
    assert encode_line(p) == (
        "m i=3i,neg=-9223372036854775808i,t=true,f=false,x=0.1,e=1e+300,tiny=5e-324,z=-0.0,"
        "w=1500.0 2"
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected_on_both_paths(bad: float) -> None:
    p = Point("m", {"a": "b"}, {"ok": 1.0, "bad": bad}, 1)
    with pytest.raises(ValueError, match="NaN and infinities"):
        encode_line(p)
    enc = LineEncoder()
    enc.encode([Point("m", {"a": "b"}, {"ok": 1.0, "bad": 2.0}, 1)])  # warm the fast path
    with pytest.raises(ValueError, match="NaN and infinities"):
        enc.encode([p])


@pytest.mark.parametrize(
    ("point", "error"),
    [
        (Point("m", {"a": ""}, {"f": 1.0}, 1), "must not be empty"),
        (Point("m", {"": "x"}, {"f": 1.0}, 1), "must not be empty"),
        (Point("", {}, {"f": 1.0}, 1), "must not be empty"),
        (Point("m", {}, {}, 1), "at least one field"),
        (Point("m", {"time": "x"}, {"f": 1.0}, 1), "reserved"),
        (Point("m", {}, {"time": 1.0}, 1), "reserved"),
        (Point("m", {"a": "x\\"}, {"f": 1.0}, 1), "backslash"),
        (Point("m", {"a": "x\ny"}, {"f": 1.0}, 1), "line break"),
        (Point("#m", {}, {"f": 1.0}, 1), "comment"),
        (Point("m", {}, {"f": 2**63}, 1), "64-bit"),
        (Point("m", {}, {"f": 1.0}, 2**63), "time range"),
    ],
)
def test_invalid_points_are_rejected(point: Point, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        LineEncoder().encode([point])


@pytest.mark.parametrize("ts", [1.5e18, "1", True, None])
def test_timestamps_must_be_integers(ts: object) -> None:
    with pytest.raises(TypeError, match="ts_ns"):
        LineEncoder().encode([Point("m", {}, {"f": 1.0}, ts)])  # type: ignore[arg-type]


def test_unsupported_field_type_is_rejected() -> None:
    with pytest.raises(TypeError, match="unsupported type"):
        encode_line(Point("m", {}, {"f": [1.0]}, 1))  # type: ignore[dict-item]


def test_numpy_scalars_are_normalised() -> None:
    np = pytest.importorskip("numpy")
    p = Point("m", {}, {"f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True)}, np.int64(9))
    assert encode_line(p) == "m f=0.5,i=3i,b=true 9"
    assert normalize_point(p) == Point("m", {}, {"f": 0.5, "i": 3, "b": True}, 9)


def test_fast_path_follows_type_changes_of_the_same_shape() -> None:
    enc = LineEncoder()
    data = enc.encode([pt(1, v=1.0), pt(2, v=2), pt(3, v=3.0), pt(4, v="x")])
    assert data.decode().splitlines(keepends=True) == [
        "eaf,furnace=f1,heat=H0001,plant=p1 v=1.0 1700000000000000001\n",
        "eaf,furnace=f1,heat=H0001,plant=p1 v=2i 1700000000000000002\n",
        "eaf,furnace=f1,heat=H0001,plant=p1 v=3.0 1700000000000000003\n",
        'eaf,furnace=f1,heat=H0001,plant=p1 v="x" 1700000000000000004\n',
    ]


def test_fast_path_notices_a_mutated_tags_dict() -> None:
    tags = {"plant": "p1"}
    enc = LineEncoder()
    first = enc.encode([Point("m", tags, {"f": 1.0}, 1)])
    tags["plant"] = "p2"
    second = enc.encode([Point("m", tags, {"f": 1.0}, 1)])
    assert (first, second) == (b"m,plant=p1 f=1.0 1\n", b"m,plant=p2 f=1.0 1\n")


def test_percent_signs_in_names_survive_the_template() -> None:
    p = Point("m%d", {"t%s": "%r"}, {"f%%": 1.0}, 1)
    assert LineEncoder().encode([p]).decode() == encode_line(p) + "\n" == "m%d,t%s=%r f%%=1.0 1\n"
    run = [Point("m%d", {"t%s": "%r"}, {"f%%": 1.0 + i, "%i": i, "g%": 0.5}, i) for i in range(9)]
    assert LineEncoder().encode(run) == "".join(encode_line(p) + "\n" for p in run).encode()


_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1, max_size=8
).filter(lambda s: not s.endswith("\\") and s != "time")
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=10),
)


@settings(max_examples=300, deadline=None)
@given(
    meas=_names.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(_names, _names, max_size=3),
    fields=st.dictionaries(_names, _values, min_size=1, max_size=4),
    ts=st.integers(-9223372036854775806, 9223372036854775806),
)
def test_fast_path_matches_reference_encoding(
    meas: str, tags: dict[str, str], fields: dict[str, object], ts: int
) -> None:
    enc = LineEncoder()
    p = Point(meas, tags, fields, ts)  # type: ignore[arg-type]
    expected = encode_line(p) + "\n"
    assert enc.encode([p, p]) == enc.encode([p, p]) == (expected * 2).encode()  # cached


# Values that make the fast path hand a point to encode_line: refused ones, types without a
# template, finite floats whose sum overflows, a subclass of float.
class _Real(float):
    pass


_ODD_VALUES = {
    float: [math.nan, math.inf, -math.inf, True, "s", 1, 1.7e308, -1.7e308, _Real(2.5)],
    int: [2**63, -(2**63) - 1, False, 1.5],
}
_ODD_STAMPS = [TS_MAX + 1, TS_MIN - 1, True, 1.5]


def _spoil(point: Point, rnd: random.Random) -> Point:
    """The point with one thing the fast path must notice."""
    fields = dict(point.fields)
    what = rnd.choice([0, 0, 0, 0, 1, 2, 3, 4, 5])
    if what == 0 and fields:
        key = rnd.choice(list(fields))
        fields[key] = rnd.choice(_ODD_VALUES[int if type(fields[key]) is int else float])
    elif what == 1:
        fields = dict(reversed(fields.items()))  # same keys, another order
    elif what == 2 and fields:
        fields.popitem()  # a key missing (or none left)
    elif what == 3:
        fields = MappingProxyType(fields)  # type: ignore[assignment]  # not a dict
    elif what == 4:
        return Point(point.measurement, point.tags, fields, rnd.choice(_ODD_STAMPS))
    else:
        return Point(point.measurement, {**point.tags, "t": "x"}, fields, point.ts_ns)
    return Point(point.measurement, point.tags, fields, point.ts_ns)


@settings(max_examples=300, deadline=None)
@given(
    measurements=st.lists(_names.filter(lambda s: not s.startswith("#")), min_size=1, max_size=2),
    tag_sets=st.lists(st.dictionaries(_names, _names, max_size=3), min_size=1, max_size=2),
    shapes=st.lists(
        st.dictionaries(_names, st.sampled_from([float, int]), min_size=1, max_size=4),
        min_size=1,
        max_size=3,
    ),
    # Distinct values, so that a field read from the wrong place shows; no overflowing sum.
    floats=st.lists(st.floats(-1e300, 1e300), min_size=5, max_size=10, unique=True),
    ints=st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=5, max_size=10, unique=True),
    n=st.integers(1, 60),
    seed=st.integers(0, 2**32),
)
def test_batches_of_mixed_shapes_match_the_reference_point_by_point(
    measurements: list[str],
    tag_sets: list[dict[str, str]],
    shapes: list[dict[str, type]],
    floats: list[float],
    ints: list[int],
    n: int,
    seed: int,
) -> None:
    """Runs of shared shapes, shape changes at any point, odd points: same bytes or error."""
    rnd = random.Random(seed)  # hypothesis' own randoms() favour edge cases: runs too short
    switch = rnd.choice([0.0, 0.02, 0.1, 0.5])
    measurement, tags, kinds = measurements[0], tag_sets[0], shapes[0]
    points: list[Point] = []
    for _ in range(n):
        if rnd.random() < switch:  # one thing changes; else the run goes on
            what = rnd.randrange(3)
            if what == 0:
                measurement = rnd.choice(measurements)
            elif what == 1:
                tags = rnd.choice(tag_sets)
            else:
                kinds = rnd.choice(shapes)
        fields = {
            key: rnd.choice(floats) if kind is float else rnd.choice(ints)
            for key, kind in kinds.items()
        }
        point_tags = dict(tags) if rnd.random() < 0.2 else tags  # equal, not the same dict
        points.append(Point(measurement, point_tags, fields, rnd.randint(TS_MIN, TS_MAX)))
    for _ in range(rnd.choice([0, 0, 1, 1, 3])):
        i = rnd.randrange(n)
        points[i] = _spoil(points[i], rnd)

    enc = LineEncoder()
    for _ in range(2):  # cold and warm template cache
        try:
            expected = "".join(encode_line(p) + "\n" for p in points).encode()
        except (TypeError, ValueError) as exc:
            with pytest.raises(type(exc)) as raised:
                enc.encode(points)
            assert str(raised.value) == str(exc)
        else:
            assert enc.encode(points) == expected


def _floats(rnd: random.Random, n: int) -> list[float]:
    """Finite floats of every kind a source sends or a bug makes: any bit pattern, sensor
    values with a few decimals, float32 readings widened to float64, tiny and huge ones."""
    out: list[float] = []
    while len(out) < n:
        kind = rnd.randrange(6)
        if kind == 0:
            v = struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
        elif kind == 1:
            v = round(rnd.uniform(-2e4, 2e4), rnd.randint(0, 7))
        elif kind == 2:
            v = struct.unpack("<f", struct.pack("<f", rnd.uniform(-1e6, 1e6)))[0]
        elif kind == 3:
            v = rnd.random() * 10.0 ** rnd.randint(-12, 20)
        elif kind == 4:
            v = rnd.choice([0.0, -0.0, 1e-4, 9.999e-5, 1e-5, 1e16, 1e15, 2.0**53, 10.00001])
        else:
            v = float(rnd.randint(-(10**6), 10**6))
        if math.isfinite(v):
            out.append(v)
    return out


def test_the_fast_printer_is_on_and_prints_runs_byte_for_byte_as_repr() -> None:
    assert points_module._to_json is not None  # the self-test at import passed
    assert points_module._printed_like_repr([823.456, -0.5, 1500.0, 7]) == b"823.456,-0.5,1500.0,7"
    rnd = random.Random(14)
    enc = LineEncoder()
    keys = [f"c{i}" for i in range(10)]
    for trial in range(300):
        n = rnd.choice([8, 20, 100])
        # Some runs hold only sensor-like values: those take the fast printer.
        values = (
            [round(rnd.uniform(-900, 900), 3) for _ in range(n * 10)]
            if trial % 3 == 0
            else _floats(rnd, n * 10)
        )
        run = [
            Point("eaf", TAGS, dict(zip(keys, values[i * 10 : i * 10 + 10], strict=True)), T0 + i)
            for i in range(n)
        ]
        expected = "".join(encode_line(p) + "\n" for p in run).encode()
        assert enc.encode(run) == expected


@pytest.mark.parametrize(
    "odd", [1e-5, -3.5e-7, 5e-324, 10.00001, 1e16, -1.7976931348623157e308, -0.0, 2**53, True]
)
def test_values_the_fast_printer_hands_back_are_printed_like_repr(odd: float) -> None:
    """Negative exponents, values below 1e-4 and look-alikes go through repr; the rest stays
    on the fast path; a bool or an int among the floats is a different shape."""
    run = [Point("m", {}, {"a": 1.5, "b": float(i), "i": i}, i) for i in range(20)]
    run[7] = Point("m", {}, {"a": odd, "b": 7.0, "i": 7}, 7)
    expected = "".join(encode_line(p) + "\n" for p in run).encode()
    assert LineEncoder().encode(run) == expected


def test_a_printer_that_prints_otherwise_than_repr_is_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exponent_without_sign(values: object) -> bytes:  # "1e16" where repr has "1e+16"
        return json.dumps(values).replace("e+", "e").encode()

    monkeypatch.setattr(points_module, "_to_json", exponent_without_sign)
    points_module._check_printer()
    assert points_module._to_json is None
    run = [Point("m", {}, {"f": 1e16 + i * 2.0}, i) for i in range(10)]
    assert LineEncoder().encode(run) == "".join(encode_line(p) + "\n" for p in run).encode()


# -- spool ----------------------------------------------------------------------------------


def lines(a: int, b: int) -> tuple[bytes, int]:
    return b"".join(f"m f={i}.0 {i}\n".encode() for i in range(a, b)), b - a


def drain(spool: Spool, max_points: int = 10**9) -> bytes:
    out = b""
    while (batch := spool.read_batch(max_points)) is not None:
        out += batch.payload
        spool.commit(batch)
    return out


def test_an_append_of_many_records_is_one_write(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    records = [lines(i, i + 1) for i in range(700)]  # more buffers than one writev takes
    spool.append(records)
    spool.append([lines(700, 705)])
    assert spool.pending_points == 705
    assert drain(spool) == b"".join(r[0] for r in [*records, lines(700, 705)])
    spool.close()


def test_spool_round_trip_and_batches_respect_the_point_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200)  # tiny segments: many rotations
    for i in range(0, 100, 5):
        spool.append([lines(i, i + 5)])
    assert spool.pending_points == 100
    seen = b""
    while (batch := spool.read_batch(12)) is not None:
        assert 0 < batch.points <= 12
        assert batch.payload.count(b"\n") == batch.points
        seen += batch.payload
        spool.commit(batch)
    assert seen == lines(0, 100)[0]
    assert spool.pending_points == 0 and spool.pending_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # committed segments were deleted
    spool.close()


def test_spool_replays_uncommitted_records_after_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=300)
    for i in range(0, 60, 6):
        spool.append([lines(i, i + 6)])
    batch = spool.read_batch(18)
    assert batch is not None
    spool.commit(batch)
    spool.close()  # as after a crash: nothing else was committed
    again = Spool(tmp_path, segment_bytes=300)
    assert again.pending_points == 60 - batch.points
    assert drain(again) == lines(batch.points, 60)[0]
    again.close()


def test_spool_cuts_a_torn_tail_and_keeps_everything_before(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([lines(0, 3)])
    spool.append([lines(3, 5)])
    seg = max(tmp_path.glob("*.seg"))
    spool.close()
    payload, points = lines(5, 9)
    whole = frame_header(payload, points) + payload
    with seg.open("ab") as f:
        f.write(whole[: len(whole) - 4])  # the crash hit in the middle of a write
    again = Spool(tmp_path)
    assert again.pending_points == 5
    assert drain(again) == lines(0, 5)[0]
    again.close()


def test_spool_quarantines_a_corrupt_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=10)  # one record per segment
    for i in range(3):
        spool.append([lines(i, i + 1)])
    spool.close()
    segs = sorted(tmp_path.glob("*.seg"))
    data = bytearray(segs[1].read_bytes())
    data[-2] ^= 0xFF  # flip a payload byte of the middle record
    segs[1].write_bytes(bytes(data))
    again = Spool(tmp_path, segment_bytes=10)
    first = again.read_batch(100)
    assert first is not None and first.payload == lines(0, 1)[0]
    again.commit(first)
    with pytest.raises(SpoolCorruptError) as exc:
        again.read_batch(100)
    moved = again.quarantine_rest_of_segment(exc.value.position, str(exc.value))
    assert moved.read_bytes()[struct.calcsize("<III") :][:-2] == lines(1, 2)[0][:-2]
    assert "checksum" in moved.with_suffix(".reason.json").read_text()
    assert drain(again) == lines(2, 3)[0]
    again.close()


def test_full_spool_refuses_whole_writes_and_keeps_accepted_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=1000, segment_bytes=400)
    accepted = b""
    with caplog.at_level(logging.WARNING, logger="alchimia.agent.store.spool"):
        for i in range(100):
            rec = lines(i * 2, i * 2 + 2)
            try:
                spool.append([rec])
            except SpoolFullError as exc:
                assert "full" in str(exc) and "refused 2 points" in str(exc)
                break
            accepted += rec[0]
        else:
            pytest.fail("the spool never filled up")
        with pytest.raises(SpoolFullError):
            spool.append([lines(900, 902)])  # same size as the refused one
    warnings = [r for r in caplog.records if "FULL" in r.getMessage()]
    assert len(warnings) == 1  # once per full episode, not once per refused call
    assert drain(spool) == accepted  # nothing that was accepted is lost, nothing refused is in
    spool.append([lines(1000, 1001)])  # room again
    assert drain(spool) == lines(1000, 1001)[0]
    spool.close()


def test_a_spool_has_one_owner(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


def test_lost_commit_marker_replays_from_the_oldest_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([lines(0, 4)])
    batch = spool.read_batch(2)
    assert batch is not None
    spool.commit(batch)
    spool.close()
    (tmp_path / "committed").unlink()
    again = Spool(tmp_path)
    assert drain(again) == lines(0, 4)[0]  # replays the acknowledged part too: idempotent
    again.close()


@pytest.mark.parametrize(
    ("marker", "replayed"),
    [
        (None, 2),  # as written: only the unacknowledged part is sent again
        (b"1 8", 4),  # torn before its checksum: replay from the oldest segment
        (b"2 1 00000000" + b" " * 51 + b"\n", 4),  # checksum mismatch
        ("legacy", 2),  # "<segment> <offset>" of an older version: trusted
    ],
)
def test_commit_marker_is_checked_before_it_is_trusted(
    tmp_path: Path, marker: bytes | str | None, replayed: int
) -> None:
    spool = Spool(tmp_path)
    spool.append([lines(i, i + 1) for i in range(4)])
    batch = spool.read_batch(2)
    assert batch is not None
    spool.commit(batch)
    spool.close()
    path = tmp_path / "committed"
    assert len(path.read_bytes()) == 64 and path.read_text().endswith("\n")
    if marker == "legacy":
        path.write_text(" ".join(path.read_text().split()[:2]) + "\n")
    elif isinstance(marker, bytes):
        with path.open("r+b") as f:
            f.write(marker)
    again = Spool(tmp_path)
    assert drain(again) == lines(4 - replayed, 4)[0]
    again.close()


def test_segment_files_start_with_the_format_magic(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([lines(0, 1)])
    spool.close()
    assert all(p.read_bytes().startswith(MAGIC) for p in tmp_path.glob("*.seg"))


# -- grouped fsyncs: at most one per interval, none later than an interval -----------------


def test_group_sync_syncs_at_most_once_per_interval_and_never_later() -> None:
    g = GroupSync(1.0)
    assert g.due == math.inf  # nothing appended, nothing to sync
    assert g.appended(10.0)  # an interval after the last sync (none): synced at once
    g.synced(10.0)
    assert not g.appended(10.2) and not g.appended(10.9)  # these wait ...
    assert g.due == 11.2  # ... one interval after the oldest of them at most
    assert g.appended(11.0)  # an interval after the last sync: syncs them all at once
    g.synced(11.0)
    assert g.due == math.inf
    assert not g.appended(11.5)
    assert g.due == 12.5
    g.failed(12.5)  # a failed sync: the data still waits, tried again an interval later
    assert g.dirty and g.due == 13.5


def test_group_sync_with_interval_zero_syncs_every_append() -> None:
    g = GroupSync(0.0)
    for t in (5.0, 5.0, 5.5):
        assert g.appended(t)
        g.synced(t)


def test_the_spool_groups_its_fsyncs(tmp_path: Path) -> None:
    now = [100.0]
    spool = Spool(tmp_path, fsync_interval=1.0, clock=lambda: now[0])
    for i in range(10):  # ten polls within a second
        now[0] = 100.0 + i / 10
        spool.append([lines(i, i + 1)])
    assert spool.syncs == 1  # the first one; nine wait for the next sync
    assert spool.until_sync() == pytest.approx(0.2)  # due an interval after the second
    spool.sync_if_due()
    assert spool.syncs == 1  # not due yet
    now[0] = 101.1
    spool.sync_if_due()
    assert spool.syncs == 2 and spool.until_sync() == math.inf
    spool.sync_if_due()
    assert spool.syncs == 2  # nothing left to sync
    spool.close()


@pytest.mark.parametrize(("interval", "syncs"), [(0.0, 10), (3600.0, 1)])
def test_fsyncs_per_append_follow_the_interval(tmp_path: Path, interval: float, syncs: int) -> None:
    spool = Spool(tmp_path, fsync_interval=interval, clock=lambda: 7.0)
    for i in range(10):
        spool.append([lines(i, i + 1)])
    assert spool.syncs == syncs
    spool.close()


def test_a_segment_is_fsynced_before_the_next_one_starts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=20, fsync_interval=3600.0, clock=lambda: 7.0)
    for i in range(4):  # each record fills a segment: the next append starts another
        spool.append([lines(i, i + 1)])
    # The first append synced at once, each rotation synced the segment it closed; only the
    # last record, in the open segment, waits for its sync.
    assert len(list(tmp_path.glob("*.seg"))) == 4
    assert spool.syncs == 3 and spool.until_sync() == 3600.0
    spool.close()
    again = Spool(tmp_path)
    assert drain(again) == lines(0, 4)[0]
    again.close()


def test_no_fsync_means_none(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.append([lines(0, 1)])
    spool.sync_if_due()
    assert spool.syncs == 0 and spool.until_sync() == math.inf
    spool.close()


# -- buffered writer (with a scripted sink: the HTTP side is tested against influxd) --------


class ScriptedSink:
    """Answers from a script, then OK; records what it received."""

    def __init__(self, script: list[SendResult] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[bytes] = []
        self.calls = 0
        self.lock = threading.Lock()

    def send(self, payload: bytes, points: int) -> SendResult:
        with self.lock:
            self.calls += 1
            result = self.script.pop(0) if self.script else SEND_OK
            if result.outcome is Outcome.OK:
                self.received.append(payload)
            return result

    def describe(self) -> str:
        return "scripted sink"

    def close(self) -> None:
        pass


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def test_writer_batches_and_delivers_in_order(spool: Spool) -> None:
    sink = ScriptedSink()
    w = BufferedWriter(spool, sink, batch_size=100, flush_interval=60)
    points = [pt(i) for i in range(1050)]
    for i in range(0, 1050, 7):
        w.write(points[i : i + 7])
    w.flush(timeout=30)
    assert b"".join(sink.received) == LineEncoder().encode(points)
    assert all(p.count(b"\n") <= 100 for p in sink.received)
    assert w.stats.sent_points == 1050
    w.close()


def test_writer_keeps_data_through_retries_and_logs_the_outage_once(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    down = SendResult(Outcome.RETRY, "ConnectError: refused")
    sink = ScriptedSink([down] * 4)
    w = BufferedWriter(
        spool, sink, batch_size=10, flush_interval=60, backoff_initial=0.01, backoff_max=0.02
    )
    with caplog.at_level(logging.INFO, logger="alchimia.agent.store.buffered"):
        w.write([pt(i) for i in range(25)])
        w.flush(timeout=30)
    assert b"".join(sink.received) == LineEncoder().encode([pt(i) for i in range(25)])
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in msgs) == 1
    assert sum("reachable again" in m for m in msgs) == 1
    w.close()


def test_flush_times_out_while_the_sink_is_down_and_data_stays_spooled(spool: Spool) -> None:
    sink = ScriptedSink([SendResult(Outcome.RETRY, "down")] * 10**6)
    w = BufferedWriter(
        spool, sink, batch_size=10, flush_interval=60, backoff_initial=0.01, backoff_max=0.05
    )
    w.write([pt(i) for i in range(5)])
    with pytest.raises(FlushTimeout, match="safe in the spool"):
        w.flush(timeout=0.3)
    assert spool.pending_points == 5
    w.close(timeout=0.1)


def test_a_fail_fast_flush_gives_up_at_the_first_failed_try_and_never_waits_out_backoff(
    spool: Spool,
) -> None:
    down = SendResult(Outcome.RETRY, "ConnectError: refused")
    sink = ScriptedSink([down] * 3)
    # A backoff far beyond the flush timeout: each flush must make its own attempt at once.
    w = BufferedWriter(
        spool, sink, batch_size=10, flush_interval=3600, backoff_initial=3600, backoff_max=3600
    )
    w.write([pt(i) for i in range(5)])
    for tries in (1, 2, 3):
        with pytest.raises(FlushTimeout, match="at once: it is unavailable"):
            w.flush(timeout=30, fail_fast=True)
        assert sink.calls == tries and spool.pending_points == 5
    w.flush(timeout=30, fail_fast=True)  # the sink is back: delivered at once
    assert sink.received == [LineEncoder().encode([pt(i) for i in range(5)])]
    w.close()


def test_the_sender_fsyncs_what_falls_due_between_writes(tmp_path: Path) -> None:
    now = [0.0]  # the spool's clock; the sender sleeps in real time until a sync is due
    spool = Spool(tmp_path / "spool", fsync_interval=1.0, clock=lambda: now[0])
    w = BufferedWriter(spool, ScriptedSink(), flush_interval=3600)
    w.write([pt(0)])  # synced at once
    now[0] = 0.5
    w.write([pt(1)])  # waits for a sync due at 1.5, and no write comes after it
    assert spool.syncs == 1
    now[0] = 1.5
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing check
    while spool.syncs < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool.syncs == 2 and spool.until_sync() == math.inf
    w.close()


def test_writes_that_leave_the_fsync_due_time_as_it_is_do_not_wake_the_sender(
    tmp_path: Path,
) -> None:
    """A live feed writes five times a second, fsyncs come once a second: only the first
    write an fsync waits for wakes the sender (to plan it), not the four after it."""
    now = [0.0]
    spool = Spool(tmp_path / "spool", fsync_interval=1.0, clock=lambda: now[0])
    w = BufferedWriter(spool, ScriptedSink(), flush_interval=3600)
    woken_at: list[float] = []
    notify = w._cond.notify_all

    def counting() -> None:
        woken_at.append(now[0])
        notify()

    w._cond.notify_all = counting  # type: ignore[method-assign]
    w.write([pt(0)])  # synced at once
    now[0] = 0.2
    w.write([pt(1)])  # an fsync falls due at 1.2: the sender, asleep for an hour, is woken
    deadline = time.monotonic() + 30  # a bound on waiting, not a timing check
    while w._planned_due != 1.2 and time.monotonic() < deadline:
        time.sleep(0.01)
    for i, t in enumerate((0.4, 0.6, 0.8)):
        now[0] = t
        w.write([pt(2 + i)])
    assert woken_at == [0.2] and spool.syncs == 1
    now[0] = 1.0
    w.write([pt(5)])  # a second after the first fsync: this write syncs all five itself
    assert spool.syncs == 2 and spool.sync_due == math.inf
    w.close()


def test_rejected_batch_is_moved_aside_and_the_rest_delivered(spool: Spool) -> None:
    bad = SendResult(Outcome.REJECT, "partial write: field type conflict", 400)
    sink = ScriptedSink([SEND_OK, bad])
    w = BufferedWriter(spool, sink, batch_size=10, flush_interval=60)
    for i in range(0, 30, 10):
        w.write([pt(j) for j in range(i, i + 10)])
    w.flush(timeout=30)
    enc = LineEncoder()
    assert sink.received == [
        enc.encode([pt(j) for j in range(0, 10)]),
        enc.encode([pt(j) for j in range(20, 30)]),
    ]
    rejected = list((spool.directory / "rejected").glob("*.lp"))
    assert [p.read_bytes() for p in rejected] == [enc.encode([pt(j) for j in range(10, 20)])]
    assert "field type conflict" in rejected[0].with_suffix(".reason.json").read_text()
    assert w.stats.rejected_points == 10
    w.close()


def test_invalid_points_write_nothing(spool: Spool) -> None:
    w = BufferedWriter(spool, ScriptedSink(), flush_interval=60)
    with pytest.raises(ValueError):
        w.write([pt(1), Point("eaf", TAGS, {"v": math.nan}, 2)])
    assert spool.pending_points == 0
    w.close()


# -- SQLite store ---------------------------------------------------------------------------


EXACT = {
    "third": 0.1 + 0.2,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "negz": -0.0,
    "big": 2**63 - 1,
    "small": -(2**63),
    "yes": True,
    "no": False,
    "text": 'a "quoted" \\ line\nbreak ünï',
    "whole": 1500.0,
}


def test_sqlite_reads_back_exactly_what_was_written(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    points = [
        Point(
            "eaf",
            {"plant": "p 1", "furnace": "f,1", "heat": f"H{i // 100}"},
            {**EXACT, "i": i, "x": i / 7},
            T0 + i,
        )
        for i in range(1000)
    ]
    store.write(points[::-1][:500])  # out of order, and in two calls
    store.write(points[::-1][500:])
    back = store.query_points("eaf", {"plant": "p 1"})
    assert back == points
    for got, want in zip(back, points, strict=True):
        assert [type(v) for v in got.fields.values()] == [type(v) for v in want.fields.values()]
        assert math.copysign(1, got.fields["negz"]) == -1
    assert store.count("eaf", {"furnace": "f,1"}) == 1000
    assert store.count("eaf", {"heat": "H3"}) == 100
    assert store.query_points("eaf", {"heat": "H3"}, T0 + 310, T0 + 320) == points[310:320]
    assert store.distinct_tag_values("eaf", "heat") == [f"H{i}" for i in range(10)]
    assert store.distinct_tag_values("eaf", "heat", {"heat": "H4"}) == ["H4"]
    assert store.distinct_tag_values("eaf", "heat", {"plant": "other"}) == []
    assert store.query_points("other", {}) == [] and store.count("eaf", {"heat": "none"}) == 0
    store.close()
    reopened = open_store(None, sqlite_path=tmp_path / "s.db")
    assert reopened.query_points("eaf", {}) == points
    reopened.close()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.one_of(_names, st.sampled_from(["time", "k\\", "a b", "f,=x"])),
            st.one_of(st.floats(), st.sampled_from([1.7e308, _Real(0.5), 1, True])),
            max_size=4,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_sqlite_stores_float_fields_as_normalize_point_does(
    fields: list[dict[str, object]],
) -> None:
    """The fast path for plain float fields: same validation, same stored values."""
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "s.db", fsync=False)
        for _ in range(2):  # the second time with the field keys known
            for i, f in enumerate(fields):
                p = Point("m", {"t": "1"}, f, i)  # type: ignore[arg-type]
                try:
                    want = normalize_point(p)
                except (TypeError, ValueError) as exc:
                    with pytest.raises(type(exc), match=re.escape(str(exc))):
                        store.write([p])
                else:
                    store.write([p])
                    (got,) = store.query_points("m", {}, i, i + 1)
                    assert got.fields == want.fields
                    assert list(map(type, got.fields.values())) == list(
                        map(type, want.fields.values())
                    )
        store.close()


def test_sqlite_one_day_of_one_furnace(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "day.db", fsync=False)
    tags = {"plant": "p1", "furnace": "f1", "heat": "H1"}
    sec = 1_000_000_000
    points = [
        Point("eaf", tags, {f"ch{k}": (i * 31 + k) / 17 for k in range(10)}, T0 + i * sec)
        for i in range(86_400)
    ]
    for i in range(0, len(points), 3600):
        store.write(points[i : i + 3600])
    assert store.count("eaf", tags) == 86_400
    assert store.query_points("eaf", tags) == points
    store.close()


def test_sqlite_same_key_merges_fields_like_influxdb(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "m.db")
    store.write([Point("m", {"a": "1"}, {"f": 1.0, "g": 2.0}, 5)])
    store.write([Point("m", {"a": "1"}, {"f": 3.0}, 5), Point("m", {"a": "1"}, {"h": 4}, 5)])
    store.write([Point("m", {"a": "1"}, {"f": 3.0}, 5)])  # identical replay: no change
    assert store.query_points("m", {}) == [Point("m", {"a": "1"}, {"f": 3.0, "g": 2.0, "h": 4}, 5)]
    assert store.count("m", {}) == 1
    store.close()


def test_sqlite_orders_ties_by_tag_set(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "o.db")
    pts = [Point("m", {"f": f}, {"v": 1.0}, ts) for ts in (2, 1) for f in ("b", "a")]
    store.write(pts)
    assert [(p.ts_ns, p.tags["f"]) for p in store.query_points("m", {})] == [
        (1, "a"),
        (1, "b"),
        (2, "a"),
        (2, "b"),
    ]
    store.close()


def test_sqlite_invalid_point_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "i.db")
    with pytest.raises(ValueError, match="NaN"):
        store.write(
            [Point("m", {"new": "series"}, {"v": 1.0}, 1), Point("m", {}, {"v": math.nan}, 2)]
        )
    assert store.count("m", {}) == 0 and store.distinct_tag_values("m", "new") == []
    store.write([Point("m", {"new": "series"}, {"v": 1.0}, 1)])
    assert store.count("m", {"new": "series"}) == 1
    store.close()


def test_a_write_larger_than_the_whole_spool_says_so(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100, segment_bytes=50)
    with pytest.raises(SpoolFullError, match="exceeds the whole spool"):
        spool.append([lines(0, 50)])
    assert spool.pending_points == 0
    spool.close()


def test_a_partial_reject_sets_aside_only_the_refused_lines(spool: Spool) -> None:
    enc = LineEncoder()
    refused = enc.encode([pt(3)])
    sink = ScriptedSink([SendResult(Outcome.REJECT, "partial write: dropped=1", 400, refused, 1)])
    w = BufferedWriter(spool, sink, batch_size=10, flush_interval=60)
    w.write([pt(i) for i in range(10)])
    w.flush(timeout=30)
    (moved,) = (spool.directory / "rejected").glob("*.lp")
    assert moved.read_bytes() == refused
    assert (w.stats.rejected_points, w.stats.sent_points) == (1, 9)
    w.close()


def test_write_bodies_are_standard_gzip_and_levels_are_checked() -> None:
    payload = b"".join(b"eaf,plant=p1 power_mw=%d.5 %d\n" % (i, i) for i in range(2000))
    for level in range(4):
        assert gzip.decompress(gzip_body(payload, level)) == payload
    with pytest.raises(ValueError, match="gzip_level"):
        InfluxHTTP("http://127.0.0.1:1", "db", gzip_level=4)
