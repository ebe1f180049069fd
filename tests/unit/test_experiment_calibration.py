"""``alchimia experiment calibration`` on a tiny configuration: it runs the agent's
calibration policy end to end and reports coverage per phase, plant and target."""

from __future__ import annotations

import numpy as np

from alchimia.experiment_calibration import CalibrationConfig, run_calibration_experiment
from alchimia.models.schema import TARGETS


def test_a_small_run_reports_coverage_per_phase_plant_and_target() -> None:
    cfg = CalibrationConfig(
        plants=2,
        heats=300,
        history=100,
        drift_at=180,
        settle=20,
        pretrain_rounds=3,
        round_every=40,
        window=60,
        seed=1,
    )
    result = run_calibration_experiment(cfg)
    assert result.plants == ["P1", "P2"] and result.drifting == ["P1"]
    assert {p: result.heats["before"][p] for p in result.plants} == {"P1": 80, "P2": 80}
    assert result.heats["after"]["P2"] == 100
    assert result.resets >= 2 * (200 // 40)  # one per round and plant at least
    pooled = np.concatenate(
        [list(result.coverage[ph][p].values()) for ph in ("before", "after") for p in result.plants]
    )
    assert 0.75 < pooled.mean() < 1.0  # 90 % intervals: roughly right even this small
    assert np.all(np.isnan(result.hits[:, : cfg.history]))  # history heats: no interval
    assert result.hits.shape == (2, 300, len(TARGETS))
    text = result.table()
    assert "| before | P1* | 80 |" in text and "| after | P2 | 100 |" in text
