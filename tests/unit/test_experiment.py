"""The drift experiment in a tiny configuration: it runs, and every arm has figures."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from alchimia.agent.learn.site_learning import SitePolicy
from alchimia.experiment import (
    ABLATIONS,
    ARMS,
    add_arguments,
    run,
    run_drift_experiment,
)

TINY = dict(
    plants=2,
    heats=130,
    drift_plant=2,
    drift_at=80,
    seed=3,
    history=40,
    round_every=20,
    window=10,
    pretrain_rounds=2,
    epochs=1,
    holdout=20,
)
TINY_CL = SitePolicy(
    train_window=60, replay_capacity=40, replay_rows=10, adapt_heats=20, adapt_epochs=5
)


def test_tiny_experiment_returns_finite_figures_for_every_arm(tmp_path: Path) -> None:
    png = tmp_path / "out" / "drift.png"
    result = run_drift_experiment(**TINY, out_png=png, policy=TINY_CL)
    assert tuple(result.arms) == ARMS + ABLATIONS
    assert result.drift_plant == "P2" and result.stream_start == 40
    numbers = result.numbers()
    for arm in ARMS:
        figures = numbers[arm]
        assert len(figures) == 8  # {before, after, end, forgetting} x {energy, Cu}
        assert all(math.isfinite(v) for v in figures.values()), (arm, figures)
        assert all(v > 0 for k, v in figures.items() if not k.startswith("forgetting"))
        assert result.arms[arm].errors.shape == (90, len(result.targets))
    # The frozen model cannot forget: same weights, same held-out heats.
    assert numbers["static"]["forgetting_cu_pct"] == 0.0
    assert numbers["local"]["forgetting_cu_pct"] != 0.0
    table = result.table()
    assert all(result.arms[a].label in table for a in ARMS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_supplier_change_shows_in_the_static_models_cu_error() -> None:
    """The frozen model is scored on old and new supplier heats alike: Cu error must rise."""
    result = run_drift_experiment(
        **TINY, policy=TINY_CL, ablations=False, drift="supplier_change:cu_factor=2.0"
    )
    static = result.arms["static"]
    assert static.after["cu_pct"] > 1.5 * static.before["cu_pct"]


def test_arm_d_detects_and_refits_with_the_agents_site_learner() -> None:
    """A strong supplier change: (d)'s SiteLearner finds it after it happened, starts the
    regime near it and re-fits the site part between rounds; the frozen ablation without
    a detector never does."""
    result = run_drift_experiment(
        **{**TINY, "heats": 160, "drift": "supplier_change:cu_factor=3.0"}, policy=TINY_CL
    )
    at_drift_plant = [h for p, h, _ in result.detections if p == "P2"]
    assert at_drift_plant and at_drift_plant[0] >= 80
    assert result.onsets and result.onsets[0] >= 70
    assert result.refits > 0
    assert result.arms["continual"].end["cu_pct"] < result.arms["static"].end["cu_pct"]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="drift_plant"):
        run_drift_experiment(**{**TINY, "drift_plant": 3})
    with pytest.raises(ValueError, match="drift_at"):
        run_drift_experiment(**{**TINY, "drift_at": 45})


def test_command_line_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--plants",
            "2",
            "--heats",
            "100",
            "--drift-at",
            "70",
            "--history",
            "40",
            "--round-every",
            "30",
            "--window",
            "10",
            "--no-plot",
        ]
    )
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "(d) FedAvg hybrid + CL" in out and "supplier_change@70" in out
    assert run(parser.parse_args(["--plants", "2", "--drift-plant", "5", "--no-plot"])) == 2
