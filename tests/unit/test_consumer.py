"""The consumer's side without a network: planned heats from files, the printed table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alchimia.broker.schemas import HeatPrediction, InferResponseBody
from alchimia.consumer import load_heats, planned_heat
from alchimia.infer import table


def test_the_forms_of_a_planned_heat() -> None:
    wire = planned_heat({"heat_id": "H1", "inputs": {"lime_t": 7.0}})
    assert wire.heat_id == "H1" and wire.inputs == {"lime_t": 7.0}
    grades = planned_heat(
        {"heat_id": 7, "charge": {"E3": 40, "HBI": 20.5}, "process": {"lime_t": 7}}
    )
    assert grades.heat_id == "7"
    assert grades.inputs == {"charge_E3_t": 40.0, "charge_HBI_t": 20.5, "lime_t": 7.0}
    flat = planned_heat({"charge_E3_t": 40, "lime_t": 7})
    assert flat.heat_id is None and flat.inputs == {"charge_E3_t": 40.0, "lime_t": 7.0}
    with pytest.raises(ValueError, match="unknown grade"):
        planned_heat({"charge": {"E99": 1.0}})
    with pytest.raises(ValueError, match="beside inputs"):
        planned_heat({"inputs": {}, "lime_t": 7})
    with pytest.raises(ValueError):
        planned_heat({"lime_t": "lots"})


def test_heats_from_json_and_csv(tmp_path: Path) -> None:
    doc = tmp_path / "plan.json"
    doc.write_text(
        json.dumps(
            {
                "level": 0.8,
                "heats": [{"heat_id": "A", "charge": {"E3": 40}, "process": {"lime_t": 7}}],
            }
        )
    )
    heats, level = load_heats(doc)
    assert level == 0.8 and heats[0].inputs == {"charge_E3_t": 40.0, "lime_t": 7.0}
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"lime_t": 7}))
    assert load_heats(one) == ([planned_heat({"lime_t": 7})], None)
    table_csv = tmp_path / "plan.csv"
    table_csv.write_text("heat_id,charge_E3_t,power_on_min,lime_t\nA,40,41.5,7\nB,30,,6\n")
    heats, level = load_heats(table_csv)
    assert level is None and [h.heat_id for h in heats] == ["A", "B"]
    assert heats[1].inputs == {"charge_E3_t": 30.0, "lime_t": 6.0}  # blank: estimated
    table_csv.write_text("heat_id,lime_t\nA,lots\n")
    with pytest.raises(ValueError, match=r"plan.csv:2: lime_t"):
        load_heats(table_csv)
    with pytest.raises(ValueError, match=r"expected a \.json or \.csv"):
        load_heats(tmp_path / "plan.txt")


def test_the_printed_table() -> None:
    answer = InferResponseBody(
        request_id="r",
        model_version=3,
        level=0.9,
        calibration_heats=200,
        predictions=[
            HeatPrediction(
                heat_id="H1",
                outputs={"cu_pct": 0.18123},
                lower={"cu_pct": 0.15},
                upper={"cu_pct": 0.2234},
                power_on_min=41.26,
            ),
            HeatPrediction(outputs={"cu_pct": 0.2}),
        ],
    )
    text = table(answer)
    assert "heat H1: model version 3, 90% interval (calibrated on 200 heats)" in text
    assert "power_on_min estimated 41.3" in text
    assert "cu_pct" in text and "0.18123" in text and "0.2234" in text
    assert "heat 1: model version 3, no interval yet" in text
