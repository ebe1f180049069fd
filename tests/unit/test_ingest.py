"""Sensor sources, heat assembly and the store pipeline, without a network (SQLite store)."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alchimia.agent.ingest import (
    CHARGE_FIELDS,
    CHARGE_MEASUREMENT,
    SIGNAL_FIELDS,
    SIGNAL_MEASUREMENT,
    TAP_FIELDS,
    TAP_MEASUREMENT,
    CsvReplaySource,
    IngestStats,
    Reason,
    Rejected,
    parse_message,
)
from alchimia.agent.ingest.base import parse_number, parse_ts
from alchimia.agent.ingest.csv_replay import HEAT_REQUIRED
from alchimia.agent.ingest.heats import AssembledHeat, HeatAssembler, IncompleteHeat, compute_heat
from alchimia.agent.ingest.mqtt_plc import topic_filter
from alchimia.agent.ingest.pipeline import StorePipeline
from alchimia.agent.ingest.simulated import (
    SimulatedHeats,
    SimulatedSensorSource,
    heat_points,
    heat_start_ns,
    simulated_pipeline,
)
from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.records import Heat
from alchimia.agent.settings import AgentSettings
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.agent.store import Point, SQLiteStore, StoreUnavailableError
from alchimia.cli import build_parser
from alchimia.models.schema import FEATURES, TARGETS
from alchimia.settings_cli import settings_given

SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC  # 2026-01-01T00:00:00Z
SIGNAL_TOPIC = "plant/P1/eaf/P1-EAF1/signal"
TAGS = {"plant": "P1", "furnace": "P1-EAF1", "heat": "H1"}


def plant_sim(k: int = 1, seed: int = 0) -> SimulatedPlant:
    profile, plant_seed = default_plants(k, base_seed=seed)[k - 1]
    return SimulatedPlant(profile, plant_seed)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "store.sqlite3", fsync=False)
    yield s
    s.close()


def relative_errors(got: dict[str, float], want: dict[str, float]) -> dict[str, float]:
    return {k: abs(got[k] - want[k]) / max(abs(want[k]), 1e-9) for k in want}


# -- parsing primitives ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        (T0, T0),
        (str(T0), T0),
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T01:00:00+01:00", T0),
        ("2026-01-01T00:00:00.123456789Z", T0 + 123_456_789),
        ("2026-01-01 00:00:00,5+00:00", T0 + 500_000_000),
    ],
)
def test_parse_ts_is_exact(text: object, ns: int) -> None:
    assert parse_ts(text) == ns


@pytest.mark.parametrize(
    "bad",
    [
        1.767e18,
        True,
        None,
        [T0],
        "2026-01-01T00:00:00",
        "yesterday",
        1_767_225_600,
        1_767_225_600_000,
        "9999-12-31T23:59:59Z",
        -T0,
    ],
)
def test_parse_ts_refuses(bad: object) -> None:
    r = parse_ts(bad)
    assert isinstance(r, Rejected) and r.reason == Reason.BAD_TS


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (1, 1.0),
        (2.5, 2.5),
        ("3.25", 3.25),
        (" -1e3 ", -1000.0),
        (".5", 0.5),
        ("nan", Reason.NON_FINITE),
        ("-Infinity", Reason.NON_FINITE),
        (math.inf, Reason.NON_FINITE),
        (10**400, Reason.NON_FINITE),
        ("1e999", Reason.NON_FINITE),
        ("12,5", Reason.BAD_TYPE),
        ("1_000", Reason.BAD_TYPE),
        (True, Reason.BAD_TYPE),
        (None, Reason.BAD_TYPE),
        ("", Reason.BAD_TYPE),
    ],
)
def test_parse_number(value: object, want: object) -> None:
    got = parse_number(value)
    if isinstance(want, float):
        assert got == want and type(got) is float
    else:
        assert isinstance(got, Rejected) and got.reason == want


def test_ingest_stats_log_one_line_per_reason_and_escape_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = IngestStats(logging.getLogger("t.ingest"))
    with caplog.at_level(logging.WARNING, "t.ingest"):
        for i in range(100):
            s.reject(Reason.BAD_TOPIC, "sensor message on %s rejected", f"plc/{i}\nERROR x")
        s.reject(Reason.BAD_JSON)  # reasons are limited separately
    assert [r.getMessage() for r in caplog.records] == [
        "sensor message on plc/0\\x0aERROR x rejected",
        "input rejected: bad_json",
    ]
    assert s.rejected == {"bad_topic": 100, "bad_json": 1}


def test_ingest_stats_counts_by_reason() -> None:
    s = IngestStats()
    s.accept(3)
    s.reject(Reason.BAD_JSON)
    s.reject(Reason.BAD_JSON)
    s.reject(Reason.OVERSIZED)
    assert s.snapshot() == {"accepted": 3, "rejected": {"bad_json": 2, "oversized": 1}}
    assert s.rejected_total == 3


# -- MQTT messages (sans-I/O) ---------------------------------------------------------------


def msg(values: object = None, **doc: object) -> bytes:
    body: dict[str, object] = {
        "ts": T0,
        "heat": "H1",
        "values": {"active_power_mw": 55.5} if values is None else values,
    }
    body.update(doc)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_good_messages_of_each_kind() -> None:
    p = parse_message(SIGNAL_TOPIC, msg({"active_power_mw": 60, "voltage_v": 900.5}))
    assert p == Point(SIGNAL_MEASUREMENT, TAGS, {"active_power_mw": 60.0, "voltage_v": 900.5}, T0)
    assert all(type(v) is float for v in p.fields.values())  # type: ignore[union-attr]
    charge = {"charge_E3_t": 40, "hot_heel_t": 15.5, "lime_t": 6.0, "tap_temp_aim_c": 1640}
    p = parse_message("plant/P1/eaf/P1-EAF1/charge", msg(charge, ts="2026-01-01T00:00:00Z"))
    assert isinstance(p, Point) and p.measurement == CHARGE_MEASUREMENT and p.ts_ns == T0
    assert p.fields == {k: float(v) for k, v in charge.items()}
    tap = dict.fromkeys(TAP_FIELDS, 0.1)
    p = parse_message("site/a/plant/P1/eaf/P1-EAF1/tap", msg(tap), prefix="site/a")
    assert isinstance(p, Point) and p.measurement == TAP_MEASUREMENT and p.fields == tap
    assert topic_filter("site/a/") == "site/a/plant/+/eaf/+/+"


BIG = 512
MALFORMED: list[tuple[str, str, bytes]] = [
    (Reason.OVERSIZED, SIGNAL_TOPIC, msg() + b" " * BIG),
    (Reason.BAD_JSON, SIGNAL_TOPIC, b'{"ts": 1, '),
    (Reason.BAD_JSON, SIGNAL_TOPIC, b"\xff\xfe{}"),
    (Reason.BAD_JSON, SIGNAL_TOPIC, b""),
    (Reason.BAD_TOPIC, "plant/P1/eaf/P1-EAF1/temperature", msg()),
    (Reason.BAD_TOPIC, "plant/P1/eaf/signal", msg()),
    (Reason.BAD_TOPIC, "plant/P 1/eaf/F1/signal", msg()),
    (Reason.BAD_TOPIC, "other/P1/eaf/P1-EAF1/signal", msg()),
    (Reason.BAD_TYPE, SIGNAL_TOPIC, b"[1, 2]"),
    (Reason.BAD_TYPE, SIGNAL_TOPIC, b'"text"'),
    (Reason.BAD_TYPE, SIGNAL_TOPIC, msg([55.5])),
    (Reason.BAD_TYPE, SIGNAL_TOPIC, msg({"active_power_mw": "55.5"})),
    (Reason.BAD_TYPE, SIGNAL_TOPIC, msg({"active_power_mw": True})),
    (Reason.BAD_TYPE, SIGNAL_TOPIC, msg({"active_power_mw": None})),
    (Reason.BAD_TYPE, SIGNAL_TOPIC, msg({"active_power_mw": {"v": 1}})),
    (Reason.MISSING_HEAT, SIGNAL_TOPIC, msg(heat=...)),
    (Reason.MISSING_HEAT, SIGNAL_TOPIC, msg(heat=None)),
    (Reason.BAD_HEAT, SIGNAL_TOPIC, msg(heat=17)),
    (Reason.BAD_HEAT, SIGNAL_TOPIC, msg(heat="")),
    (Reason.BAD_HEAT, SIGNAL_TOPIC, msg(heat="H 1")),
    (Reason.BAD_HEAT, SIGNAL_TOPIC, msg(heat="H" * 65)),
    (Reason.MISSING_TS, SIGNAL_TOPIC, msg(ts=...)),
    (Reason.BAD_TS, SIGNAL_TOPIC, msg(ts=1.767e18)),
    (Reason.BAD_TS, SIGNAL_TOPIC, msg(ts=1_767_225_600)),
    (Reason.BAD_TS, SIGNAL_TOPIC, msg(ts="2026-01-01T00:00:00")),
    (Reason.BAD_TS, SIGNAL_TOPIC, msg(ts="soon")),
    (Reason.NO_VALUES, SIGNAL_TOPIC, msg(values=...)),
    (Reason.NO_VALUES, SIGNAL_TOPIC, msg({})),
    (Reason.UNKNOWN_FIELD, SIGNAL_TOPIC, msg({"active_power_mw": 1.0, "power_kw": 2.0})),
    (Reason.UNKNOWN_FIELD, "plant/P1/eaf/P1-EAF1/tap", msg({"active_power_mw": 1.0})),
    (Reason.UNKNOWN_FIELD, SIGNAL_TOPIC, msg(seq=5)),
    (
        Reason.NON_FINITE,
        SIGNAL_TOPIC,
        b'{"ts": %d, "heat": "H1", "values": {"voltage_v": NaN}}' % T0,
    ),
    (
        Reason.NON_FINITE,
        SIGNAL_TOPIC,
        b'{"ts": %d, "heat": "H1", "values": {"voltage_v": -Infinity}}' % T0,
    ),
    (Reason.NON_FINITE, SIGNAL_TOPIC, msg({"voltage_v": 10**400})),
    (
        Reason.NON_FINITE,
        SIGNAL_TOPIC,
        b'{"ts": %d, "heat": "H1", "values": {"voltage_v": 1e999}}' % T0,
    ),
]


@pytest.mark.parametrize(
    ("reason", "topic", "payload"),
    MALFORMED,
    ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(MALFORMED)],
)
def test_malformed_messages_are_rejected_with_their_reason(
    reason: str, topic: str, payload: bytes
) -> None:
    got = parse_message(topic, payload, max_bytes=BIG)
    assert isinstance(got, Rejected), got
    assert got.reason == reason, got


def test_malformed_cases_cover_every_message_reason() -> None:
    message_reasons = {
        Reason.OVERSIZED,
        Reason.BAD_JSON,
        Reason.BAD_TOPIC,
        Reason.BAD_TYPE,
        Reason.MISSING_HEAT,
        Reason.BAD_HEAT,
        Reason.MISSING_TS,
        Reason.BAD_TS,
        Reason.NO_VALUES,
        Reason.UNKNOWN_FIELD,
        Reason.NON_FINITE,
    }
    assert {r for r, _, _ in MALFORMED} == message_reasons


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    got = parse_message(SIGNAL_TOPIC, b"[" * 200_000, max_bytes=1 << 20)
    assert isinstance(got, Rejected) and got.reason == Reason.BAD_JSON


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["ts", "heat", "values", *SIGNAL_FIELDS[:3], "x"]), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from([SIGNAL_TOPIC, "plant/P1/eaf/F/tap", "plant/+/eaf/#", "a/b"]),
    payload=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_parser_never_raises(topic: str, payload: bytes) -> None:
    got = parse_message(topic, payload)
    assert isinstance(got, Point | Rejected)
    if isinstance(got, Rejected):
        assert got.reason != Reason.INTERNAL, got


# -- simulated sensor source ----------------------------------------------------------------


def test_simulated_source_emits_exact_timestamps_and_the_simulators_values() -> None:
    heat = plant_sim().next_heat()
    src = SimulatedSensorSource(plant_sim(), history_heats=1, live=False, period_s=5.0)
    points = src.poll()
    assert src.caught_up and src.poll() == []
    start = heat_start_ns(heat)
    assert start == T0  # the simulator's clock starts on 2026-01-01
    charge, *signals, tap = points
    tags = {"plant": heat.plant, "furnace": heat.furnace, "heat": heat.heat_id}
    assert charge == Point(
        CHARGE_MEASUREMENT, tags, {k: float(heat.inputs[k]) for k in CHARGE_FIELDS}, start
    )
    ts, arrays = heat.signal_arrays(5.0)
    assert [p.ts_ns for p in signals] == [start + i * 5 * SEC for i in range(len(ts))]
    assert all(type(p.ts_ns) is int for p in points)
    for name in SIGNAL_FIELDS:
        assert [p.fields[name] for p in signals] == arrays[name].tolist()
    spec = heat.signal_spec
    assert spec is not None
    assert tap == Point(
        TAP_MEASUREMENT,
        tags,
        {k: float(heat.outcome[k]) for k in TAP_FIELDS},
        start + (spec.power_on_s + spec.power_off_s) * SEC,
    )
    assert src.stats.accepted == len(points)


def test_simulated_history_is_emitted_whole_heats_at_a_time() -> None:
    src = SimulatedSensorSource(plant_sim(), history_heats=3, live=False, max_points=10)
    sizes = []
    while not src.caught_up:
        batch = src.poll()
        assert batch[0].measurement == CHARGE_MEASUREMENT
        assert batch[-1].measurement == TAP_MEASUREMENT
        sizes.append(len(batch))
    assert len(sizes) == 3 and src.heats_emitted == 3
    assert src.poll() == []


def test_unpaced_live_heats_keep_coming() -> None:
    src = SimulatedSensorSource(plant_sim(), history_heats=0, max_points=1)
    assert src.caught_up
    heats = {p.tags["heat"] for _ in range(3) for p in src.poll()}
    assert len(heats) == 3


def test_heat_interval_pacing_follows_the_clock() -> None:
    now = [100.0]
    src = SimulatedSensorSource(
        plant_sim(), history_heats=1, heat_interval_s=10.0, clock=lambda: now[0]
    )
    history = src.poll()  # the history heat, whole, at once
    assert history[-1].measurement == TAP_MEASUREMENT and src.caught_up
    first = src.poll()  # live time starts: the charge only
    assert [p.measurement for p in first] == [CHARGE_MEASUREMENT]
    now[0] += 5.0  # half the heat's wall time: about half its samples, no tap
    half = src.poll()
    assert half and {p.measurement for p in half} == {SIGNAL_MEASUREMENT}
    now[0] += 5.0  # the heat ends and the next one begins
    rest = src.poll()
    assert [p.measurement for p in rest[-2:]] == [TAP_MEASUREMENT, CHARGE_MEASUREMENT]
    assert rest[-1].tags["heat"] != rest[-2].tags["heat"]
    n_signals = len(half) + len(rest) - 2
    assert 0.4 < len(half) / n_signals < 0.6
    now[0] += 25.0  # a late poll: the next two heats end, the one after is half done
    late = src.poll()
    assert [p.tags["heat"] for p in late if p.measurement == TAP_MEASUREMENT] == [
        "P1-000002",
        "P1-000003",
    ]
    assert [p.tags["heat"] for p in late if p.measurement == CHARGE_MEASUREMENT] == [
        "P1-000003",
        "P1-000004",
    ]
    assert late[-1].measurement == SIGNAL_MEASUREMENT
    assert src.heats_emitted == 4


def test_realtime_speed_factor() -> None:
    now = [0.0]
    src = SimulatedSensorSource(plant_sim(), 0, realtime=60.0, clock=lambda: now[0])
    src.poll()
    now[0] = 10.0  # 600 simulated seconds
    samples = [p for p in src.poll() if p.measurement == SIGNAL_MEASUREMENT]
    assert len(samples) == 600
    assert samples[-1].ts_ns == T0 + 599 * SEC


@pytest.mark.parametrize(
    "bad",
    [
        {"period_s": 0.0},
        {"period_s": 1e-10},
        {"realtime": -1.0},
        {"heat_interval_s": 0.0},
        {"history_heats": -1},
    ],
)
def test_simulated_source_checks_its_arguments(bad: dict[str, object]) -> None:
    kwargs: dict[str, object] = {"history_heats": 0, **bad}
    with pytest.raises(ValueError):
        SimulatedSensorSource(plant_sim(), **kwargs)  # type: ignore[arg-type]


# -- heat assembly --------------------------------------------------------------------------


def write_heat(store: SQLiteStore, heat: Heat, period_s: float = 1.0, *, tap: bool = True) -> None:
    points = heat_points(heat, period_s)
    assert points[-1].measurement == TAP_MEASUREMENT
    store.write(points if tap else points[:-1])


@pytest.mark.parametrize(("period_s", "tolerance"), [(1.0, 1e-3), (5.0, 0.01), (10.0, 0.01)])
def test_assembled_features_match_the_simulator(
    store: SQLiteStore, period_s: float, tolerance: float
) -> None:
    heats = plant_sim(2).heats(8)
    for h in heats:
        write_heat(store, h, period_s)
    got = HeatAssembler(store, heats[0].plant, heats[0].furnace).new_heats()
    assert [h.heat_id for h in got] == [h.heat_id for h in heats]
    for a, truth in zip(got, heats, strict=True):
        assert list(a.inputs) == list(FEATURES) and list(a.outcome) == list(TARGETS)
        errors = relative_errors(a.inputs, truth.inputs) | relative_errors(a.outcome, truth.outcome)
        # Totals are exact by construction (interval averages); times within the tolerance.
        assert (
            max(errors[k] for k in ("oxygen_nm3", "gas_nm3", "carbon_kg", "energy_kwh_t")) < 1e-9
        ), errors
        assert errors["power_on_min"] < tolerance and errors["power_off_min"] < 3 * tolerance
        assert all(errors[k] == 0 for k in (*CHARGE_FIELDS, *TAP_FIELDS)), errors
        assert a.samples == len(truth.signal_arrays(period_s)[0])


def test_assembly_is_incremental_and_waits_for_the_tap(store: SQLiteStore) -> None:
    h1, h2, h3 = plant_sim().heats(3)
    asm = HeatAssembler(store, h1.plant, h1.furnace)
    assert asm.new_heats() == []
    write_heat(store, h1)
    write_heat(store, h2, tap=False)
    assert [h.heat_id for h in asm.new_heats()] == [h1.heat_id]
    assert asm.new_heats() == []  # nothing new
    assert asm.pending == {}  # h2 is not tapped: not even pending
    write_heat(store, h3)
    assert [h.heat_id for h in asm.new_heats()] == [h3.heat_id]
    write_heat(store, h2)  # tapped late
    assert [h.heat_id for h in asm.new_heats()] == [h2.heat_id]
    assert asm.new_heats() == [] and asm.assembled == 3
    # Another furnace's heats are not this assembler's.
    assert HeatAssembler(store, h1.plant, "EAF9").new_heats() == []


def test_a_tapped_heat_waits_for_its_charge_and_its_chemistry(store: SQLiteStore) -> None:
    heat = plant_sim().next_heat()
    tags = {"plant": heat.plant, "furnace": heat.furnace, "heat": heat.heat_id}
    points = heat_points(heat)
    charge, signals, tap = points[0], points[1:-1], points[-1]
    store.write(signals)
    # Tap temperature at tap, the lab's chemistry a few minutes later.
    first = {k: tap.fields[k] for k in ("tapped_t", "tap_temp_c")}
    store.write([Point(TAP_MEASUREMENT, tags, first, tap.ts_ns)])
    asm = HeatAssembler(store, heat.plant, heat.furnace)
    assert asm.new_heats() == [] and asm.pending == {heat.heat_id: "no_charge"}
    store.write([charge])
    assert asm.new_heats() == [] and asm.pending == {heat.heat_id: "tap_missing_field"}
    chemistry = {k: v for k, v in tap.fields.items() if k not in first}
    store.write([Point(TAP_MEASUREMENT, tags, chemistry, tap.ts_ns + 300 * SEC)])
    (got,) = asm.new_heats()
    assert asm.pending == {}
    assert got.end_ns == tap.ts_ns  # the heat ends at its first tap point
    assert got.outcome == {
        **heat.outcome,
        "energy_kwh_t": pytest.approx(heat.outcome["energy_kwh_t"], rel=1e-9),
    }


def sample(i: int, **fields: float) -> Point:
    return Point(SIGNAL_MEASUREMENT, TAGS, fields, T0 + i * SEC)


CHARGE = Point(
    CHARGE_MEASUREMENT,
    TAGS,
    {"charge_E3_t": 100.0, "hot_heel_t": 15.0, "lime_t": 6.0, "tap_temp_aim_c": 1640.0},
    T0,
)


def tap_at(ts_ns: int, tapped_t: float = 90.0) -> Point:
    return Point(
        TAP_MEASUREMENT, TAGS, {**dict.fromkeys(TAP_FIELDS, 0.1), "tapped_t": tapped_t}, ts_ns
    )


def test_compute_heat_integrates_and_caps_gaps() -> None:
    # 100 s at 36 MW and 360 Nm3/h O2, a 1000 s hole in the data, 50 s at 0 MW, tap.
    on = [
        sample(i, active_power_mw=36.0, lance_o2_nm3h=360.0, carbon_kgmin=6.0) for i in range(100)
    ]
    off = [sample(1100 + i, active_power_mw=0.0) for i in range(50)]
    inputs, outcome, start, end = compute_heat(
        [CHARGE], on + off, [tap_at(T0 + 1150 * SEC)], max_gap_s=60.0
    )
    # The last on-sample holds for 60 s (the cap), not 1001 s.
    assert inputs["power_on_min"] == pytest.approx(159 / 60)
    assert inputs["power_off_min"] == pytest.approx(50 / 60)
    assert outcome["energy_kwh_t"] == pytest.approx(36.0 * 159 / 3.6 / 90.0)
    assert inputs["oxygen_nm3"] == pytest.approx(360.0 * 159 / 3600)
    assert inputs["carbon_kg"] == pytest.approx(6.0 * 159 / 60)
    assert inputs["gas_nm3"] == 0.0  # never reported: nothing burnt
    assert inputs["charge_E3_t"] == 100.0 and inputs["charge_E1_t"] == 0.0
    assert (start, end) == (T0, T0 + 1150 * SEC)


def test_compute_heat_reads_a_switch_inside_a_sample() -> None:
    # 5 s samples; the arc goes on 2 s into sample 1 and off 3 s into sample 5.
    power = [0.0, 30.0 * 3 / 5, 30.0, 30.0, 30.0, 30.0 * 3 / 5, 0.0, 0.0]
    signals = [
        Point(SIGNAL_MEASUREMENT, TAGS, {"active_power_mw": p}, T0 + i * 5 * SEC)
        for i, p in enumerate(power)
    ]
    inputs, *_ = compute_heat([CHARGE], signals, [tap_at(T0 + 40 * SEC)])
    assert inputs["power_on_min"] * 60 == pytest.approx(3.0 + 15.0 + 3.0)
    assert inputs["power_off_min"] * 60 == pytest.approx(40.0 - 21.0)


@pytest.mark.parametrize(
    ("charge", "signals", "taps", "reason"),
    [
        ([], [sample(0, active_power_mw=1.0)], [tap_at(T0 + SEC)], "no_charge"),
        ([CHARGE], [], [tap_at(T0 + SEC)], "no_signals"),
        ([CHARGE], [sample(0, active_power_mw=1.0)], [], "no_tap"),
        (
            [Point(CHARGE_MEASUREMENT, TAGS, {"hot_heel_t": 1.0}, T0)],
            [sample(0, active_power_mw=1.0)],
            [tap_at(T0 + SEC)],
            "charge_missing_field",
        ),
        (
            [CHARGE],
            [sample(0, active_power_mw=1.0)],
            [tap_at(T0 + SEC, tapped_t=0.0)],
            "tap_bad_field",
        ),
        (
            [Point(CHARGE_MEASUREMENT, TAGS, {**CHARGE.fields, "lime_t": "a lot"}, T0)],
            [sample(0, active_power_mw=1.0)],
            [tap_at(T0 + SEC)],
            "charge_bad_field",
        ),
    ],
)
def test_incomplete_heats_say_what_is_missing(
    charge: list[Point], signals: list[Point], taps: list[Point], reason: str
) -> None:
    with pytest.raises(IncompleteHeat) as info:
        compute_heat(charge, signals, taps)
    assert info.value.reason == reason


def test_samples_after_the_tap_are_not_part_of_the_heat(store: SQLiteStore) -> None:
    store.write(
        [
            CHARGE,
            *(sample(i, active_power_mw=36.0) for i in range(10)),
            sample(10, active_power_mw=0.0),
            tap_at(T0 + 11 * SEC),
            sample(11, active_power_mw=999.0),
        ]
    )
    (heat,) = HeatAssembler(store, "P1", "P1-EAF1").new_heats()
    assert heat.samples == 11
    assert heat.outcome["energy_kwh_t"] == pytest.approx(36.0 * 10 / 3.6 / 90.0)
    assert isinstance(heat, AssembledHeat)
    as_heat = heat.to_heat()
    assert (as_heat.heat_id, as_heat.inputs, as_heat.outcome) == ("H1", heat.inputs, heat.outcome)
    assert as_heat.start_ts == T0 / SEC
    assert as_heat.tap_ns == heat.end_ns == T0 + 11 * SEC  # the tap point's timestamp


# -- CSV replay -----------------------------------------------------------------------------


def write_csvs(
    tmp_path: Path, heats: list[Heat], period_s: float
) -> tuple[Path, Path, list[list[str]], list[list[str]]]:
    heat_header = [*HEAT_REQUIRED[:5], *CHARGE_FIELDS, *TAP_FIELDS]
    heat_rows, signal_rows = [], []
    for h in heats:
        start = heat_start_ns(h)
        spec = h.signal_spec
        assert spec is not None
        end = start + (spec.power_on_s + spec.power_off_s) * SEC
        heat_rows.append(
            [
                h.heat_id,
                h.plant,
                h.furnace,
                str(start),
                str(end),
                *(repr(float(h.inputs[k])) for k in CHARGE_FIELDS),
                *(repr(float(h.outcome[k])) for k in TAP_FIELDS),
            ]
        )
        _, arrays = h.signal_arrays(period_s)
        cols = np.column_stack([arrays[f] for f in SIGNAL_FIELDS]).tolist()
        for i, row in enumerate(cols):
            signal_rows.append([str(start + i * round(period_s * SEC)), h.heat_id, *map(repr, row)])
    return (
        tmp_path / "heats.csv",
        tmp_path / "signals.csv",
        [heat_header, *heat_rows],
        [["ts", "heat", *SIGNAL_FIELDS], *signal_rows],
    )


def dump(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_csv_replay_skips_bad_rows_and_assembles_the_good_heats(
    tmp_path: Path, store: SQLiteStore
) -> None:
    heats = plant_sim(3).heats(3)
    heats_csv, signals_csv, hrows, srows = write_csvs(tmp_path, heats, 10.0)
    header, good = hrows[0], hrows[1]
    col = header.index

    def bad_heat(**cells: str) -> list[str]:
        row = [*good]
        for k, v in cells.items():
            row[col(k)] = v
        return row

    bad_heat_rows = {
        Reason.BAD_ROW: [good[:5]],
        Reason.MISSING_HEAT: [bad_heat(heat="")],
        Reason.BAD_HEAT: [bad_heat(heat="H 1")],
        Reason.BAD_ID: [bad_heat(heat="X1", plant="P/1")],
        Reason.MISSING_TS: [bad_heat(heat="X2", tap_ts="")],
        Reason.BAD_TS: [
            bad_heat(heat="X3", charge_ts="2026-01-01"),
            bad_heat(heat="X4", tap_ts=good[col("charge_ts")]),
        ],
        Reason.MISSING_VALUE: [bad_heat(heat="X5", cu_pct="")],
        Reason.BAD_TYPE: [bad_heat(heat="X6", lime_t="six")],
        Reason.NON_FINITE: [bad_heat(heat="X7", tapped_t="inf")],
        Reason.DUPLICATE_HEAT: [good],
    }
    sgood = srows[1]
    bad_signal_rows = {
        Reason.BAD_ROW: [sgood[:-1]],
        Reason.MISSING_HEAT: [[sgood[0], "", *sgood[2:]]],
        Reason.UNKNOWN_HEAT: [[sgood[0], "X1", *sgood[2:]]],
        Reason.MISSING_TS: [["", *sgood[1:]]],
        Reason.BAD_TS: [["1767225600", *sgood[1:]]],
        Reason.NO_VALUES: [[*sgood[:2], *[""] * len(SIGNAL_FIELDS)]],
        Reason.NON_FINITE: [[*sgood[:2], "nan", *sgood[3:]]],
        Reason.BAD_TYPE: [[*sgood[:2], "1,5", *sgood[3:]]],
    }
    # A sample without some sensors is fine: those fields are absent from its point.
    last = srows[-1]
    partial = [str(int(last[0]) + SEC), last[1], last[2], last[3], *[""] * 11]
    dump(
        heats_csv,
        [header, *hrows[1:2], *[r for rs in bad_heat_rows.values() for r in rs], *hrows[2:]],
    )
    dump(
        signals_csv,
        [
            srows[0],
            *srows[1:50],
            *[r for rs in bad_signal_rows.values() for r in rs],
            [],
            *srows[50:],
            partial,
        ],
    )
    src = CsvReplaySource(heats_csv, signals_csv, max_points=500)
    pipe = StorePipeline(src, store, HeatAssembler(store, heats[0].plant, heats[0].furnace))
    got = pipe.history()
    want_rejected: dict[str, int] = {}
    for table in (bad_heat_rows, bad_signal_rows):
        for reason, rows in table.items():
            want_rejected[reason] = want_rejected.get(reason, 0) + len(rows)
    assert dict(src.stats.rejected) == want_rejected
    n_signals = len(srows)  # the good rows, without the header, and the partial one
    assert src.stats.accepted == pipe.points_written == 2 * len(heats) + n_signals
    assert store.count(SIGNAL_MEASUREMENT, {}) == n_signals
    (p,) = store.query_points(SIGNAL_MEASUREMENT, {}, int(partial[0]), int(partial[0]) + 1)
    assert set(p.fields) == set(SIGNAL_FIELDS[:2])
    assert [h.heat_id for h in got] == [h.heat_id for h in heats]
    for a, truth in zip(got, heats, strict=True):
        errors = relative_errors(a.inputs, truth.inputs) | relative_errors(a.outcome, truth.outcome)
        assert max(errors.values()) < 0.01, errors
    assert pipe.poll() == [] and src.caught_up


def test_csv_replay_paced_releases_heats_one_by_one_like_a_live_feed(
    tmp_path: Path, store: SQLiteStore
) -> None:
    """``--replay-pace``: the first ``history_heats`` at once (history), then one heat per
    ``1 / pace`` seconds, in order of charge time, each with all its samples even when the
    signal file lists them late."""
    heats = plant_sim(3).heats(5)
    ids = [h.heat_id for h in heats]
    heats_csv, signals_csv, hrows, srows = write_csvs(tmp_path, heats, 30.0)
    dump(heats_csv, [hrows[0], hrows[3], hrows[1], hrows[2], hrows[5], hrows[4]])
    late = [r for r in srows[1:] if r[1] in (ids[1], ids[3])]
    dump(signals_csv, [srows[0], *(r for r in srows[1:] if r not in late), *late])
    now = [100.0]
    src = CsvReplaySource(heats_csv, signals_csv, pace=0.5, history_heats=2, clock=lambda: now[0])
    pipe = StorePipeline(
        src, store, HeatAssembler(store, heats[0].plant, heats[0].furnace), clock=lambda: now[0]
    )
    assert [h.heat_id for h in pipe.history()] == ids[:2] and src.caught_up
    released = []
    for t, want in (
        (100.0, []),
        (101.9, []),
        (102.0, ids[2:3]),
        (103.0, []),
        (106.5, ids[3:5]),
        (200.0, []),
    ):
        now[0] = t
        got = pipe.poll()
        assert [h.heat_id for h in got] == want, t
        released += got
    assert src.heats_released == 5 and src.poll() == []
    assert store.count(SIGNAL_MEASUREMENT, {}) == len(srows) - 1
    assert src.stats.rejected_total == 0
    for a, truth in zip(released, heats[2:], strict=True):
        errors = relative_errors(a.inputs, truth.inputs) | relative_errors(a.outcome, truth.outcome)
        assert max(errors.values()) < 0.01, errors


def test_csv_replay_pace_reaches_the_source_from_the_agent_settings(tmp_path: Path) -> None:
    heats = plant_sim(3).heats(2)
    heats_csv, signals_csv, hrows, srows = write_csvs(tmp_path, heats, 60.0)
    dump(heats_csv, hrows)
    dump(signals_csv, srows)
    real = dict(
        replay_heats=heats_csv,
        replay_signals=signals_csv,
        plant_id=heats[0].plant,
        furnace_id=heats[0].furnace,
        state_dir=tmp_path / "state",
    )
    source = build_heat_source(AgentSettings(**real, replay_pace=2.0, history_heats=1))
    try:
        assert isinstance(source, StorePipeline)
        assert isinstance(source.source, CsvReplaySource)
        assert (source.source.pace, source.source.history_heats) == (2.0, 1)
        assert [h.heat_id for h in source.history()] == [heats[0].heat_id]
    finally:
        source.close()
        source.store.close()
    flags = [
        "agent",
        "--replay-heats",
        str(heats_csv),
        "--replay-signals",
        str(signals_csv),
        "--plant-id",
        "P3",
        "--furnace-id",
        "EAF1",
        "--replay-pace",
        "2.5",
    ]
    given = settings_given(build_parser().parse_args(flags), AgentSettings)
    from_cli = AgentSettings.load(None, **given)
    assert from_cli.replay_pace == 2.5
    with pytest.raises(ValueError, match="replay_pace"):
        AgentSettings(replay_pace=2.0)
    with pytest.raises(ValueError):
        AgentSettings(**real, replay_pace=0.0)
    with pytest.raises(ValueError, match="pace"):
        CsvReplaySource(heats_csv, signals_csv, pace=float("nan"))


@pytest.mark.parametrize(
    ("which", "header", "match"),
    [
        ("heats", ["heat", "plant"], "missing columns"),
        ("heats", [*HEAT_REQUIRED, "colour"], "unknown columns"),
        ("heats", [*HEAT_REQUIRED, "lime_t"], "duplicate columns"),
        ("signals", ["ts", "heat"], "no data column"),
        ("signals", ["ts", "heat", "active_power_kw"], "unknown columns"),
        ("signals", [], "empty file"),
    ],
)
def test_csv_header_errors_raise_at_once(
    tmp_path: Path, which: str, header: list[str], match: str
) -> None:
    heats_csv, signals_csv = tmp_path / "heats.csv", tmp_path / "signals.csv"
    dump(heats_csv, [list(HEAT_REQUIRED)])
    dump(signals_csv, [["ts", "heat", "active_power_mw"]])
    dump(heats_csv if which == "heats" else signals_csv, [header] if header else [])
    with pytest.raises(ValueError, match=match):
        CsvReplaySource(heats_csv, signals_csv)


# -- pipeline -------------------------------------------------------------------------------


def test_simulated_pipeline_mirrors_simulated_heats(store: SQLiteStore) -> None:
    pipe = simulated_pipeline(2, 7, 5, 0.0, store, period_s=5.0)
    got = pipe.history()
    want = SimulatedHeats(2, 7, 5, 0.0).history()
    assert [h.heat_id for h in got] == [h.heat_id for h in want]
    for a, b in zip(got, want, strict=True):
        assert set(a.inputs) == set(b.inputs) and set(a.outcome) == set(b.outcome)
        errors = relative_errors(a.inputs, b.inputs) | relative_errors(a.outcome, b.outcome)
        assert max(errors.values()) < 0.01, errors
    assert pipe.poll() == []  # interval 0: no live heats, as SimulatedHeats
    assert isinstance(got[0], Heat)


def live_pipeline(
    store: SQLiteStore, history: int, write_interval_s: float
) -> tuple[list[float], StorePipeline]:
    """A live simulated plant (a heat a minute, 5 s samples) on a settable clock."""
    now = [0.0]
    sim = plant_sim()
    src = SimulatedSensorSource(
        sim, history, heat_interval_s=60.0, period_s=5.0, clock=lambda: now[0]
    )
    pipe = StorePipeline(
        src,
        store,
        HeatAssembler(store, sim.profile.name, sim.profile.furnace),
        write_interval_s=write_interval_s,
        clock=lambda: now[0],
    )
    return now, pipe


def test_pipeline_polls_live_heats_once_they_are_tapped(store: SQLiteStore) -> None:
    now, pipe = live_pipeline(store, 2, write_interval_s=1.0)
    assert len(pipe.history()) == 2
    assert pipe.poll() == []
    now[0] = 30.0
    assert pipe.poll() == []  # half a heat is in the store, not assembled
    third = {"heat": "P1-000002"}
    stored = store.count(SIGNAL_MEASUREMENT, third)
    assert stored > 0
    now[0] = 30.5  # new samples wait for the write interval
    assert pipe.poll() == [] and pipe.backlog > 0
    assert store.count(SIGNAL_MEASUREMENT, third) == stored
    now[0] = 60.0  # the tap: written and assembled at once
    assert [h.heat_id for h in pipe.poll()] == ["P1-000002"]
    assert pipe.poll() == []


def test_pipeline_writes_waiting_points_at_close(store: SQLiteStore) -> None:
    now, pipe = live_pipeline(store, 0, write_interval_s=10.0)
    pipe.history()
    now[0] = 20.0
    pipe.poll()  # written: the interval had passed since the (empty) history
    now[0] = 25.0
    pipe.poll()
    waiting, written = pipe.backlog, pipe.points_written
    assert waiting > 0 and written > 0

    def stored() -> int:
        return sum(store.count(m, {}) for m in (SIGNAL_MEASUREMENT, CHARGE_MEASUREMENT))

    assert stored() == written
    pipe.close()
    assert pipe.backlog == 0
    assert stored() == pipe.points_written == written + waiting


@pytest.mark.parametrize("volatile", [True, False, None])
def test_a_volatile_feed_is_written_at_every_poll(
    store: SQLiteStore, volatile: bool | None
) -> None:
    """Points that exist nowhere else (a live MQTT feed) do not wait for the interval; a
    source that does not say is treated as volatile."""

    class Feed:
        stats = IngestStats()
        caught_up = True

        def __init__(self) -> None:
            if volatile is not None:
                self.volatile = volatile
            self.n = 0

        def poll(self) -> list[Point]:
            self.n += 1
            return [sample(self.n, active_power_mw=1.0)]

        def close(self) -> None:
            pass

    now = [0.0]
    pipe = StorePipeline(
        Feed(),
        store,
        HeatAssembler(store, "P1", "P1-EAF1"),
        write_interval_s=60.0,
        clock=lambda: now[0],
    )
    written = [pipe.ingest() for _ in range(3)]
    assert written == ([1, 0, 0] if volatile is False else [1, 1, 1])
    assert store.count(SIGNAL_MEASUREMENT, TAGS) == (1 if volatile is False else 3)


def test_restarted_pipeline_returns_the_stores_heats_as_history(store: SQLiteStore) -> None:
    first = simulated_pipeline(1, 0, 3, 0.0, store, period_s=10.0)
    assert len(first.history()) == 3
    # The same simulated plant again: the history is in the store, only the new heat is written.
    again = simulated_pipeline(1, 0, 4, 0.0, store, period_s=10.0)
    assert [h.heat_id for h in again.history()] == [f"P1-00000{i}" for i in range(4)]
    assert isinstance(again.source, SimulatedSensorSource)
    assert (again.source.heats_skipped, again.source.heats_emitted) == (3, 1)
    new_heat = {"heat": "P1-000003"}
    assert again.points_written == sum(
        store.count(m, new_heat) for m in (CHARGE_MEASUREMENT, SIGNAL_MEASUREMENT, TAP_MEASUREMENT)
    )

    class Idle:
        stats = IngestStats()
        volatile = False
        caught_up = True

        def poll(self) -> list[Point]:
            return []

        def close(self) -> None:
            pass

    pipe = StorePipeline(Idle(), store, HeatAssembler(store, "P1", "P1-EAF1"))
    assert [h.heat_id for h in pipe.history()] == [f"P1-00000{i}" for i in range(4)]
    assert pipe.poll() == []


def test_a_point_the_store_refuses_does_not_stop_ingestion(store: SQLiteStore) -> None:
    class Feed:
        stats = IngestStats()
        volatile = False
        caught_up = True

        def poll(self) -> list[Point]:
            return [
                sample(0, active_power_mw=1.0),
                sample(1, active_power_mw=math.nan),
                sample(2, active_power_mw=2.0),
            ]

        def close(self) -> None:
            pass

    src = Feed()
    pipe = StorePipeline(src, store, HeatAssembler(store, "P1", "P1-EAF1"))
    assert pipe.ingest() == 2
    assert src.stats.rejected == {Reason.STORE_REFUSED: 1}
    assert store.count(SIGNAL_MEASUREMENT, TAGS) == 2


class FlakyStore(SQLiteStore):
    """A SQLite store that fails like an unreachable InfluxDB: when ``down``, or on the
    ``fail_at``-th query."""

    down = False
    fail_at = 0
    queries = 0

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("InfluxDB is down")

    def write(self, points: Sequence[Point]) -> None:
        self._check()
        super().write(points)

    def query_points(
        self,
        measurement: str,
        tags: Mapping[str, str],
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[Point]:
        self._check()
        self.queries += 1
        if self.queries == self.fail_at:
            raise StoreUnavailableError("gone in the middle")
        return super().query_points(measurement, tags, start_ns, end_ns)

    def count(self, measurement: str, tags: Mapping[str, str]) -> int:
        self._check()
        return super().count(measurement, tags)


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[FlakyStore]:
    s = FlakyStore(tmp_path / "flaky.sqlite3", fsync=False)
    yield s
    s.close()


def test_pipeline_rides_out_a_store_outage(flaky: FlakyStore) -> None:
    src = SimulatedSensorSource(plant_sim(), 1, live=True, period_s=10.0, max_points=1000)
    pipe = StorePipeline(src, flaky, HeatAssembler(flaky, "P1", "P1-EAF1"))
    assert [h.heat_id for h in pipe.history()] == ["P1-000000"]
    flaky.down = True
    assert pipe.poll() == []  # the next heats were polled, but could not be written
    kept = pipe.backlog
    assert kept > 0
    assert pipe.poll() == [] and pipe.backlog > kept  # still down: nothing lost
    flaky.down = False
    assert flaky.count(TAP_MEASUREMENT, {}) == 1
    got = [h.heat_id for h in pipe.poll()]
    assert len(got) >= 2 and got == [f"P1-{i:06d}" for i in range(1, len(got) + 1)]
    assert pipe.backlog == 0


def test_a_disk_error_keeps_every_polled_point(
    flaky: FlakyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = SimulatedSensorSource(plant_sim(), 1, live=False)
    pipe = StorePipeline(src, flaky, HeatAssembler(flaky, "P1", "P1-EAF1"))
    write = flaky.write

    def disk_full(points: Sequence[Point]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flaky, "write", disk_full)
    with pytest.raises(OSError):
        pipe.ingest(write_now=True)
    kept = pipe.backlog
    assert kept > 0 and pipe.points_written == 0
    monkeypatch.setattr(flaky, "write", write)
    assert [h.heat_id for h in pipe.history()] == ["P1-000000"]
    assert pipe.points_written >= kept and pipe.backlog == 0


def test_history_refuses_a_store_it_cannot_use(flaky: FlakyStore) -> None:
    flaky.down = True
    pipe = StorePipeline(
        SimulatedSensorSource(plant_sim(), 1, live=False),
        flaky,
        HeatAssembler(flaky, "P1", "P1-EAF1"),
    )
    with pytest.raises(StoreUnavailableError):
        pipe.history()
    assert pipe.backlog > 0


def test_a_store_error_during_assembly_loses_no_heat(flaky: FlakyStore) -> None:
    for heat in plant_sim().heats(3):
        write_heat(flaky, heat, 10.0)
    asm = HeatAssembler(flaky, "P1", "P1-EAF1")
    flaky.fail_at = 4  # taps, heat 0's charge and signals, then heat 1's charge fails
    with pytest.raises(StoreUnavailableError):
        asm.new_heats()
    assert [h.heat_id for h in asm.new_heats()] == ["P1-000000", "P1-000001", "P1-000002"]
