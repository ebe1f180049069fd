"""``alchimia experiment charge`` in a tiny configuration: every arm runs end to end on
the simulator, and the figures mean what they say."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alchimia.cli import main
from alchimia.experiment_charge import (
    ARM_LABELS,
    FAMILIES,
    ChargeConfig,
    ChargeResult,
    run_charge_experiment,
)

TINY = ChargeConfig(
    sizes=(80, 60),
    rounds=3,
    orders=8,
    calibration_heats=40,
    arms=("practice", "optimised", "plain", "mean"),
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> ChargeResult:
    png = tmp_path_factory.mktemp("charge") / "charge.png"
    return run_charge_experiment(TINY, png)


def test_every_arm_executes_every_order_at_every_plant(result: ChargeResult) -> None:
    assert result.plants == ["P1", "P2"]
    assert len(result.rows) == 2 * 8 * 4
    summary = result.summary()
    for arm in TINY.arms:
        for plant in ["P1", "P2", "all"]:
            f = summary[arm][plant]
            assert f["orders"] == (16 if plant == "all" else 8)
            assert all(math.isfinite(v) for v in f.values()), (arm, plant, f)
            assert 300 < f["cost_t"] < 700 and 250 < f["kwh_t"] < 600
            assert 0.0 <= f["off_spec"] <= 1.0
    # Practice charges the ordered tonnes over the plant's historical yield (~0.9).
    for r in result.rows:
        assert r.tapped_t > 0 and r.charge_t > r.tapped_t
        if r.arm == "practice":
            assert 1.02 < r.charge_t / r.tapped_aim_t < 1.25
    assert result.png is not None and result.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = result.table()
    assert all(ARM_LABELS[a] in table for a in TINY.arms)
    assert all(name in result.family_table() for name, *_ in FAMILIES)


def test_the_optimiser_saves_on_loose_orders_and_the_margin_keeps_it_in_spec(
    result: ChargeResult,
) -> None:
    fam = result.by_family()
    loose = FAMILIES[0][0]
    assert fam["optimised"][loose]["cost_t"] < fam["practice"][loose]["cost_t"] - 5.0
    s = result.summary()
    # Without the chance constraint the optimiser rides the limits: more heats off spec.
    assert s["mean"]["all"]["off_spec"] > s["optimised"]["all"]["off_spec"]
    assert s["mean"]["all"]["cost_t"] < s["optimised"]["all"]["cost_t"]


def test_the_command_line_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "charge.json"
    assert (
        main(
            [
                "experiment",
                "charge",
                "--sizes",
                "80",
                "60",
                "--rounds",
                "2",
                "--orders",
                "3",
                "--no-plot",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "seed 0" in text and "(b) optimiser" in text and "| all |" in text
    data = json.loads(out.read_text())
    assert set(data["0"]["summary"]) == {"practice", "optimised"}
