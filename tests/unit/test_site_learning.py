from __future__ import annotations

import numpy as np

from agent.site_learning import SiteLearner

FEATURES = ("a", "b")
TARGETS = ("t",)


def _stream(learner: SiteLearner, n: int, err_sd: float, err_mean: float, seed: int,
            x_shift: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(x_shift, 1.0, 2)
        y = rng.normal(0, 1.0, 1)
        learner.observe(x, y, y + rng.normal(err_mean, err_sd, 1))


def test_quiet_on_stationary_errors_and_inputs() -> None:
    learner = SiteLearner(FEATURES, TARGETS, [1.0])
    _stream(learner, 2000, 0.1, 0.0, seed=1)
    assert learner.drift_at == []
    assert learner.prequential.snapshot()["n"] == 2000


def test_error_step_is_detected_after_it_happens() -> None:
    learner = SiteLearner(FEATURES, TARGETS, [1.0])
    _stream(learner, 800, 0.1, 0.0, seed=2)
    _stream(learner, 200, 0.1, 2.0, seed=3)
    assert learner.drift_at and learner.drift_at[0] > 800


def test_input_shift_is_detected_and_replay_stays_bounded() -> None:
    learner = SiteLearner(FEATURES, TARGETS, [1.0], replay_capacity=100)
    _stream(learner, 800, 0.1, 0.0, seed=4)
    _stream(learner, 300, 0.1, 0.0, seed=5, x_shift=3.0)
    assert learner.drift_at and learner.drift_at[0] > 800
    assert len(learner.replay) <= 100
    x, y = learner.replay_rows(50)  # type: ignore[misc]
    assert len(x) == len(y) <= 50
