"""Split-conformal calibration and the planned power-on estimate (no network)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.models.calibration import Calibration
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.schema import FEATURES

TARGETS = ("a", "b")


def _skewed(rng: np.random.Generator, n: int) -> np.ndarray:
    """Residuals of two targets: one normal, one lognormal (skewed, like Cu)."""
    return np.stack([rng.standard_normal(n), rng.lognormal(0.0, 0.8, n) - 1.0], axis=1)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_intervals_cover_at_their_level(level: float) -> None:
    """Marginal coverage (over calibration sets, what conformal guarantees) is the level."""
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(200):
        cal = Calibration(TARGETS, level=level, window=100)
        cal.reset(np.zeros((100, 2)), _skewed(rng, 100))
        y = _skewed(rng, 100)
        lo, hi = cal.interval(np.zeros_like(y))
        hits.append((y >= lo) & (y <= hi))
    coverage = np.concatenate(hits).mean(axis=0)
    assert np.all(coverage >= level - 0.01) and np.all(coverage <= level + 0.03), coverage
    # Equal tails, not a symmetric band: the skewed target's interval leans upwards.
    assert hi[0, 1] + lo[0, 1] > 0.5


def test_finite_sample_rule_and_too_few_heats() -> None:
    cal = Calibration(TARGETS, level=0.9)
    assert np.all(np.isinf(cal.interval(np.zeros((1, 2)))[1]))  # nothing held yet
    r = np.arange(1.0, 10.0)  # 9 residuals: ceil(10 * 0.95) = 10 > 9 -> unbounded
    cal.reset(np.zeros((9, 2)), np.stack([r, r], axis=1))
    assert math.isinf(cal.upper_margin("a", 0.05))
    assert cal.upper_margin("a", 0.2) == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert cal.exceed_probability("a", 7.5) == pytest.approx(3 / 10)


def test_window_keeps_the_newest_and_reset_forgets_the_old_model() -> None:
    cal = Calibration(TARGETS, window=5)
    cal.add(np.zeros((8, 2)), np.arange(16.0).reshape(8, 2))
    assert cal.n == 5 and cal.residuals("a").tolist() == [6.0, 8.0, 10.0, 12.0, 14.0]
    cal.reset(np.zeros((2, 2)), np.ones((2, 2)), version=7)
    assert cal.n == 2 and cal.version == 7
    cal.add(np.zeros((1, 2)), np.array([[np.nan, 1.0]]))  # a non-finite outcome is skipped
    assert cal.n == 2


def test_round_trip_and_bad_input() -> None:
    cal = Calibration(TARGETS, level=0.8, window=50, version=3)
    cal.add(np.zeros((20, 2)), _skewed(np.random.default_rng(2), 20))
    back = Calibration.from_dict(cal.to_dict())
    assert back.version == 3 and back.level == 0.8
    one = np.ones((1, 2))
    np.testing.assert_array_equal(back.interval(one)[0], cal.interval(one)[0])
    with pytest.raises(ValueError, match="targets"):
        cal.add(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="level"):
        Calibration(TARGETS, level=1.0)
    with pytest.raises(ValueError, match="risk"):
        cal.upper_margin("a", 0.0)


def test_power_on_estimate_follows_the_charge() -> None:
    profile, seed = default_plants(2)[1]
    heats = SimulatedPlant(profile, seed).heats(300)
    x = np.array([[h.inputs[f] for f in FEATURES] for h in heats])
    col = FEATURES.index("power_on_min")
    est = PowerOnEstimate.fit(x[:200], FEATURES)
    err = est.estimate(x[200:]) - x[200:, col]
    spread = x[200:, col].std()
    assert np.sqrt(np.mean(err**2)) < 0.75 * spread  # explains most of the variation
    planned = x[200:202].copy()
    planned[:, col] = np.nan
    filled = PowerOnEstimate.from_dict(est.to_dict()).fill(planned)
    np.testing.assert_allclose(filled[:, col], est.estimate(x[200:202]))
    # More of every grade charged takes longer to melt.
    heavier = x[200:201].copy()
    grades = [i for i, f in enumerate(FEATURES) if f.startswith("charge_")]
    heavier[:, grades] *= 1.1
    assert est.estimate(heavier)[0] > est.estimate(x[200:201])[0]
    with pytest.raises(ValueError, match="2 heats"):
        PowerOnEstimate.fit(x[:1], FEATURES)
