"""What the agent writes into its own store beside the sensor data, without I/O.

Each heat predicted before its outcome was known (prequential: test, then learn) gives
two points, and each drift detection one, so that the plant's own Grafana shows predicted
against actual next to the furnace data (docs/SENSORS.md, "What the agent writes"):

* ``alchimia_prediction``: per target ``predicted_{t}``, ``actual_{t}`` and, once the
  site's calibration gives one, ``lower_{t}`` / ``upper_{t}`` (the interval at
  ``interval_level``); and ``model_version``;
* ``alchimia_outcome_error``: per target ``abs_error_{t}`` (``|predicted - actual|``) and,
  with an interval, ``covered_{t}`` (1 inside it, 0 outside); and ``model_version``;
* ``alchimia_drift``: ``error_{t}`` / ``input_{f}`` = 1 for each detector that fired,
  ``onset_heat`` (the heat count where the new regime is estimated to begin),
  ``model_version`` and a text field ``summary`` (an annotation's text).

All carry the furnace tags (``plant``, ``furnace``, ``heat``) and the heat's tap time:
the moment the outcome became known, and the ``eaf_tap`` point's own timestamp. Numbers
are floats, as in the sensor measurements; a value that is not finite is left out (a
store refuses NaN), never fatal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from alchimia.agent.records import Heat
from alchimia.agent.store.points import FieldValue, Point
from alchimia.broker.schemas import PredictionBody

if TYPE_CHECKING:
    from alchimia.agent.learn.site_learning import DriftEvent

PREDICTION_MEASUREMENT = "alchimia_prediction"
ERROR_MEASUREMENT = "alchimia_outcome_error"
DRIFT_MEASUREMENT = "alchimia_drift"
NS = 1_000_000_000


def heat_tags(heat: Heat) -> dict[str, str]:
    """The furnace tags of a heat's points, as its sensor points carry them."""
    return {"plant": heat.plant, "furnace": heat.furnace, "heat": heat.heat_id}


def heat_ts_ns(heat: Heat) -> int:
    """The heat's tap time, ns; its start where it came without one (not from a store)."""
    return heat.tap_ns if heat.tap_ns is not None else round(heat.start_ts * NS)


def _finite(fields: Iterable[tuple[str, float]]) -> dict[str, FieldValue]:
    return {k: float(v) for k, v in fields if math.isfinite(v)}


def prediction_points(heat: Heat, prediction: PredictionBody) -> list[Point]:
    """The ``alchimia_prediction`` and ``alchimia_outcome_error`` points of one heat:
    ``prediction`` as published, ``heat.outcome`` the actual values (a target missing
    there has no actual, error or coverage field)."""
    if prediction.heat_id != heat.heat_id:
        raise ValueError(f"prediction of heat {prediction.heat_id} given for {heat.heat_id}")
    predicted = prediction.outputs
    actual = {t: heat.outcome[t] for t in predicted if t in heat.outcome}
    lower: Mapping[str, float] = prediction.lower or {}
    upper: Mapping[str, float] = prediction.upper or {}
    version = float(prediction.model_version)
    fields = _finite(
        [
            *((f"predicted_{t}", v) for t, v in predicted.items()),
            *((f"actual_{t}", v) for t, v in actual.items()),
            *((f"lower_{t}", v) for t, v in lower.items()),
            *((f"upper_{t}", v) for t, v in upper.items()),
        ]
    )
    errors = _finite((f"abs_error_{t}", abs(predicted[t] - v)) for t, v in actual.items())
    errors.update(
        (f"covered_{t}", float(lower[t] <= v <= upper[t]))
        for t, v in actual.items()
        if t in lower and t in upper and math.isfinite(v)
    )
    tags, ts = heat_tags(heat), heat_ts_ns(heat)
    return [
        Point(PREDICTION_MEASUREMENT, tags, {**fields, "model_version": version}, ts),
        Point(ERROR_MEASUREMENT, tags, {**errors, "model_version": version}, ts),
    ]


def drift_point(heat: Heat, event: DriftEvent, model_version: int | None) -> Point:
    """The ``alchimia_drift`` point of a detection made at ``heat``."""
    fields: dict[str, FieldValue] = {**event.values(), "onset_heat": float(event.onset)}
    if model_version is not None:
        fields["model_version"] = float(model_version)
    parts = [
        f"{kind}: {', '.join(names)}"
        for kind, names in (("errors", event.error_targets), ("inputs", event.input_features))
        if names
    ]
    detail = "; ".join(parts) or "no detail"
    fields["summary"] = f"drift at heat {heat.heat_id} ({detail}), onset at heat {event.onset}"
    return Point(DRIFT_MEASUREMENT, heat_tags(heat), fields, heat_ts_ns(heat))
