"""The agent's own points in its store (agent.learn.outcomes): predictions with intervals
and actual outcomes, prequential errors, drift events; and the agent writing them into
its SQLite store beside the sensor data (docs/SENSORS.md, "What the agent writes")."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.learn.outcomes import (
    DRIFT_MEASUREMENT,
    ERROR_MEASUREMENT,
    PREDICTION_MEASUREMENT,
    drift_point,
    prediction_points,
)
from alchimia.agent.learn.site_learning import DriftEvent
from alchimia.agent.records import Heat
from alchimia.agent.service import Agent
from alchimia.agent.settings import AgentSettings
from alchimia.agent.store import SQLiteStore, encode_line
from alchimia.broker.schemas import ModelBody, PredictionBody, decode
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model

TAP_NS = 1_767_225_600_123_456_789
HEAT = Heat(
    "H-24-01234",
    "P1",
    "P1-EAF1",
    1_767_222_000.5,
    {"lime_t": 7.0},
    {"energy_kwh_t": 380.0, "cu_pct": 0.25},
    tap_ns=TAP_NS,
)
TAGS = {"plant": "P1", "furnace": "P1-EAF1", "heat": "H-24-01234"}


def body(**kw: object) -> PredictionBody:
    args: dict[str, object] = {
        "heat_id": "H-24-01234",
        "model_version": 7,
        "outputs": {"energy_kwh_t": 390.5, "cu_pct": 0.2},
    }
    return PredictionBody(**{**args, **kw})


def test_a_prediction_with_its_interval_gives_prediction_and_error_points() -> None:
    pred, err = prediction_points(
        HEAT,
        body(
            level=0.9,
            lower={"energy_kwh_t": 370.0, "cu_pct": 0.1},
            upper={"energy_kwh_t": 400.0, "cu_pct": 0.22},
        ),
    )
    assert (pred.measurement, err.measurement) == (PREDICTION_MEASUREMENT, ERROR_MEASUREMENT)
    assert pred.tags == err.tags == TAGS
    assert pred.ts_ns == err.ts_ns == TAP_NS  # the eaf_tap point's timestamp
    assert pred.fields == {
        "predicted_energy_kwh_t": 390.5,
        "predicted_cu_pct": 0.2,
        "actual_energy_kwh_t": 380.0,
        "actual_cu_pct": 0.25,
        "lower_energy_kwh_t": 370.0,
        "lower_cu_pct": 0.1,
        "upper_energy_kwh_t": 400.0,
        "upper_cu_pct": 0.22,
        "model_version": 7.0,
    }
    assert err.fields == {
        "abs_error_energy_kwh_t": 10.5,
        "abs_error_cu_pct": pytest.approx(0.05),
        "covered_energy_kwh_t": 1.0,
        "covered_cu_pct": 0.0,
        "model_version": 7.0,
    }
    assert all(type(v) is float for v in (*pred.fields.values(), *err.fields.values()))


def test_without_an_interval_there_are_no_bounds_and_no_coverage() -> None:
    pred, err = prediction_points(HEAT, body())
    assert not any(k.startswith(("lower_", "upper_")) for k in pred.fields)
    assert set(err.fields) == {"abs_error_energy_kwh_t", "abs_error_cu_pct", "model_version"}


def test_missing_or_non_finite_actual_values_are_left_out_never_fatal() -> None:
    heat = Heat("H2", "P1", "P1-EAF1", 1_767_222_000.5, {}, {"energy_kwh_t": math.nan}, tap_ns=None)
    pred, err = prediction_points(
        heat,
        body(
            heat_id="H2",
            level=0.9,
            lower={"energy_kwh_t": 1.0, "cu_pct": 0.0},
            upper={"energy_kwh_t": 2.0, "cu_pct": 1.0},
        ),
    )
    assert "actual_energy_kwh_t" not in pred.fields and "actual_cu_pct" not in pred.fields
    assert pred.fields["predicted_cu_pct"] == 0.2
    assert err.fields == {"model_version": 7.0}
    # No tap time (a heat that did not come through a store): its start, in ns.
    assert pred.ts_ns == 1_767_222_000_500_000_000
    for point in (pred, err):  # what a store accepts
        encode_line(point)


def test_a_prediction_of_another_heat_is_refused() -> None:
    with pytest.raises(ValueError, match="H9"):
        prediction_points(HEAT, body(heat_id="H9"))


def test_a_drift_point_names_the_detectors_that_fired() -> None:
    event = DriftEvent(("cu_pct",), ("charge_E3_t", "lime_t"), onset=141)
    point = drift_point(HEAT, event, 3)
    assert (point.measurement, point.tags, point.ts_ns) == (DRIFT_MEASUREMENT, TAGS, TAP_NS)
    assert point.fields == {
        "error_cu_pct": 1.0,
        "input_charge_E3_t": 1.0,
        "input_lime_t": 1.0,
        "onset_heat": 141.0,
        "model_version": 3.0,
        "summary": "drift at heat H-24-01234 (errors: cu_pct; inputs: charge_E3_t, lime_t), "
        "onset at heat 141",
    }
    assert "model_version" not in drift_point(HEAT, event, None).fields


def test_the_points_read_back_from_sqlite_as_written(tmp_path: Path) -> None:
    points = [*prediction_points(HEAT, body()), drift_point(HEAT, DriftEvent(("cu_pct",), ()), 7)]
    store = SQLiteStore(tmp_path / "s.sqlite3")
    try:
        store.write(points)
        for p in points:
            assert store.query_points(p.measurement, {"heat": HEAT.heat_id}) == [p]
    finally:
        store.close()


# -- the agent -------------------------------------------------------------------------

SPEC = ModelSpec(architecture="eaf-hybrid-v1")


def run_agent(tmp_path: Path, live: int, **settings: object) -> tuple[Agent, list[PredictionBody]]:
    """An agent on the simulator through SQLite, model version 0, driven directly (no
    broker: the link only queues what it would send) until ``live`` heats were predicted
    or a drift was detected; the predictions it published."""
    s = AgentSettings(
        agent_id="plant-1",
        history_heats=60,
        # Heats arrive by the clock: at 1 ms apart a loaded machine hands the agent all of
        # them in one or two batches, predicted before any outcome could calibrate an
        # interval. 10 ms keeps the batches small whatever the load.
        heat_interval_s=0.01,
        signal_period_s=60.0,
        state_dir=tmp_path,
        **settings,
    )
    agent = Agent(s, build_heat_source(s))
    published: list[PredictionBody] = []
    publish = agent.link.publish

    def spy(topic: str, payload: bytes, **kw: object) -> None:
        if topic == agent.topics.agent_predictions("plant-1"):
            published.append(decode(payload, PredictionBody).body)  # type: ignore[arg-type]
        publish(topic, payload, **kw)  # type: ignore[arg-type]

    agent.link.publish = spy  # type: ignore[method-assign]
    agent._history = agent.source.history()
    agent._on_model(
        decode(
            first_model(SPEC),
            ModelBody,
        )
    )
    assert agent.learner is not None
    while len(published) < live and not agent.learner.drift_events:
        agent._ingest()
    assert not agent.step_failures.counts, agent.step_failures.counts
    return agent, published


def test_the_agent_writes_what_it_published_and_its_drift_into_its_store(tmp_path: Path) -> None:
    agent, published = run_agent(tmp_path, 10_000, drift=["supplier_change@100:cu_factor=4.0"])
    store = agent.store
    assert isinstance(store, SQLiteStore)
    preds = store.query_points(PREDICTION_MEASUREMENT, {"plant": "P1"})
    errors = store.query_points(ERROR_MEASUREMENT, {"plant": "P1"})
    taps = {p.tags["heat"]: p.ts_ns for p in store.query_points("eaf_tap", {"plant": "P1"})}
    # One of each per heat predicted (history heats are not), at that heat's tap time.
    assert [p.tags["heat"] for p in preds] == [b.heat_id for b in published]
    assert [p.tags["heat"] for p in errors] == [b.heat_id for b in published]
    assert all(p.ts_ns == taps[p.tags["heat"]] for p in preds + errors)
    assert any(b.lower for b in published), "no interval issued: the test shows too little"
    for point, error, sent in zip(preds, errors, published, strict=True):
        assert point.fields["model_version"] == error.fields["model_version"] == 0.0
        for t, value in sent.outputs.items():
            assert point.fields[f"predicted_{t}"] == value
            actual = point.fields[f"actual_{t}"]
            assert error.fields[f"abs_error_{t}"] == pytest.approx(abs(value - actual))
            if sent.lower and sent.upper:
                assert (point.fields[f"lower_{t}"], point.fields[f"upper_{t}"]) == (
                    sent.lower[t],
                    sent.upper[t],
                )
    # The prequential error the agent reports is the mean of the stored errors.
    mae = agent.learner.prequential.snapshot()["mae_cu_pct"]
    assert sum(e.fields["abs_error_cu_pct"] for e in errors) / len(errors) == pytest.approx(
        mae, rel=1e-5
    )
    (drift,) = store.query_points(DRIFT_MEASUREMENT, {"plant": "P1"})
    # At the heat it was detected at (heat count n is the simulator's heat n - 1).
    assert drift.tags["heat"] == f"P1-{agent.learner.drift_at[0] - 1:06d}"
    assert drift.ts_ns == taps[drift.tags["heat"]]
    assert drift.fields["error_cu_pct"] == 1.0
    assert drift.fields["onset_heat"] == agent.learner.regime_start


def test_store_predictions_off_writes_none(tmp_path: Path) -> None:
    agent, published = run_agent(tmp_path, 5, store_predictions=False)
    assert agent.store is not None and len(published) >= 5
    for m in (PREDICTION_MEASUREMENT, ERROR_MEASUREMENT, DRIFT_MEASUREMENT):
        assert agent.store.count(m, {}) == 0
    assert agent.store.count("eaf_tap", {}) > 60  # the sensor data is there
