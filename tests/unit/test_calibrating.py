"""The site's calibration policy (agent.learn.calibrating) without a network."""

from __future__ import annotations

import numpy as np
import pytest

from alchimia.agent.learn.calibrating import SiteCalibrator, min_heats

TARGETS = ("a", "b")


def test_min_heats_is_the_first_finite_interval() -> None:
    assert min_heats(0.9) == 20 and min_heats(0.8) == 10 and min_heats(0.99) == 199
    cal = SiteCalibrator(TARGETS, 0.9, 100, min_reset_heats=1)
    for n in range(1, 23):
        cal.hold_out(n, np.zeros(3), np.full(2, float(n)))
        cal.reset(lambda x: np.zeros((len(x), 2)))
        lo, hi = cal.interval(np.zeros((1, 2)))
        assert (np.isfinite(lo).all() and np.isfinite(hi).all()) == (n >= min_heats(0.9)), n


def test_reset_calibrates_the_new_model_on_held_out_heats_of_the_regime() -> None:
    cal = SiteCalibrator(TARGETS, 0.9, window=100, min_reset_heats=10)
    for count in range(1, 301):
        if count % 5 == 0:  # every fifth heat held out, as HeatTable does
            cal.hold_out(count, np.full(3, float(count)), np.full(2, float(count)))
    seen: list[np.ndarray] = []

    def model(x: np.ndarray) -> np.ndarray:
        seen.append(x[:, 0].copy())
        return np.zeros((len(x), 2))

    assert cal.reset(model, version=4) == 60  # all held out (the deque keeps 100)
    assert cal.calibration.version == 4 and cal.calibration.n == 60
    # A regime that began at heat 201: its 20 held-out heats only.
    assert cal.reset(model, version=5, regime_start=201) == 20
    assert seen[-1].min() == 205 and cal.calibration.residuals("a").min() == 205
    # A young regime (4 held-out heats): topped up with the newest older ones.
    assert cal.reset(model, version=6, regime_start=281) == 10
    assert list(seen[-1]) == [float(c) for c in range(255, 301, 5)]
    assert cal.resets == 3


def test_observe_scores_the_intervals_issued_and_adds_the_residuals() -> None:
    rng = np.random.default_rng(0)
    cal = SiteCalibrator(TARGETS, 0.8, window=50, min_reset_heats=50)
    pred = np.zeros((1, 2))
    lo, hi = cal.interval(pred)
    cal.observe(pred, np.ones((1, 2)), lo, hi)  # no interval yet: not scored, still added
    assert cal.coverage.n == 0 and cal.calibration.n == 1
    for _ in range(2000):
        lo, hi = cal.interval(pred)
        y = rng.standard_normal((1, 2))
        cal.observe(pred, y, lo, hi)
    assert cal.coverage.total > 1900 and cal.coverage.n == 50
    assert cal.coverage.overall() == pytest.approx([0.8, 0.8], abs=0.03)
    values = cal.values()
    assert values["level"] == 0.8 and values["n"] == 50 and values["heats"] == 50
    assert set(values) == {"level", "n", "heats", "coverage_a", "coverage_b", "width_a", "width_b"}
    assert 1.5 < values["width_a"] < 4.0  # ~2 x 1.28 for a standard normal


def test_a_heat_outside_its_interval_counts_as_a_miss() -> None:
    cal = SiteCalibrator(TARGETS, 0.9, window=30)
    cal.coverage.add(np.array([[0.0, 5.0]]), np.array([[-1.0, -1.0]]), np.array([[1.0, 1.0]]))
    assert list(cal.coverage.recent()) == [1.0, 0.0]
    cal.coverage.add(
        np.array([[0.0, 0.0]]), np.array([[-np.inf, -1.0]]), np.array([[1.0, 1.0]])
    )  # unbounded: skipped
    assert cal.coverage.n == 1


def test_a_young_regime_is_filled_up_with_the_streams_residuals() -> None:
    cal = SiteCalibrator(TARGETS, 0.9, window=20, min_reset_heats=4)
    zero = np.zeros((1, 2))
    for count in range(1, 41):
        y = np.full((1, 2), float(count))
        cal.observe(zero, y, zero - 1, zero + 1, counts=[count])
        if count % 5 == 0:
            cal.hold_out(count, np.zeros(3), y[0])
    model = lambda x: np.full((len(x), 2), 0.5)  # noqa: E731
    # 8 held-out heats (all): 12 of the stream's newest other heats fill the window.
    assert cal.reset(model) == 8
    res = cal.calibration.residuals("a")
    assert len(res) == 20
    assert list(res[-8:]) == [c - 0.5 for c in range(5, 41, 5)]  # the new model's
    assert list(res[:12]) == [c for c in range(24, 40) if c % 5][-12:]  # as predicted then
    # A regime from heat 31: its 2 held-out heats (4 at least: the newest 4) and its 8
    # other heats of the stream.
    assert cal.reset(model, regime_start=31) == 4
    assert sorted(cal.calibration.residuals("a")) == sorted(
        [c - 0.5 for c in (25, 30, 35, 40)] + [c for c in range(31, 41) if c % 5]
    )
    # A full window of held-out heats needs nothing from the stream.
    full = SiteCalibrator(TARGETS, 0.9, window=8)
    for count in range(1, 41):
        full.observe(zero, np.ones((1, 2)), zero, zero)
        if count % 5 == 0:
            full.hold_out(count, np.zeros(3), np.zeros(2))
    full.reset(model)
    assert full.calibration.n == 8 and np.all(full.calibration.residuals("a") == -0.5)
