"""The site's continual-learning policy (SiteLearner): detection, regime, rows, re-fits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alchimia.agent.learn.site_learning import SiteLearner, SitePolicy
from alchimia.agent.settings import AgentSettings
from alchimia.models.params import get_weights
from alchimia.models.regressor import build_model
from alchimia.models.spec import ModelSpec

FEATURES = ("a", "b")
TARGETS = ("t",)


def _stream(
    learner: SiteLearner,
    n: int,
    err_sd: float,
    err_mean: float,
    seed: int,
    x_shift: float = 0.0,
    learn_every: int = 0,
) -> None:
    """``n`` heats; with ``learn_every`` k, every k-th is a validation heat."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(x_shift, 1.0, 2)
        y = rng.normal(0, 1.0, 1)
        learn = not (learn_every and (learner.observed + 1) % learn_every == 0)
        learner.observe(x, y, y + rng.normal(err_mean, err_sd, 1), learn=learn)


def test_quiet_on_stationary_errors_and_inputs() -> None:
    learner = SiteLearner(FEATURES, TARGETS, [1.0])
    _stream(learner, 2000, 0.1, 0.0, seed=1)
    assert learner.drift_at == []
    assert learner.prequential.snapshot()["n"] == 2000
    assert not learner.refit_due()


def test_error_step_is_detected_after_it_happens() -> None:
    learner = SiteLearner(FEATURES, TARGETS, [1.0])
    _stream(learner, 800, 0.1, 0.0, seed=2)
    _stream(learner, 200, 0.1, 2.0, seed=3)
    assert learner.drift_at and learner.drift_at[0] > 800


def test_input_shift_is_detected_and_replay_stays_bounded() -> None:
    learner = SiteLearner(FEATURES, TARGETS, [1.0], SitePolicy(replay_capacity=100))
    _stream(learner, 800, 0.1, 0.0, seed=4)
    _stream(learner, 300, 0.1, 0.0, seed=5, x_shift=3.0)
    assert learner.drift_at and learner.drift_at[0] > 800
    assert len(learner.replay) <= 100
    x, y = learner.replay_rows(50)  # type: ignore[misc]
    assert len(x) == len(y) <= 50


def test_new_regime_starts_at_the_estimated_onset_with_training_heats_only() -> None:
    learner = SiteLearner(FEATURES, TARGETS, [1.0], SitePolicy(train_window=5000))
    _stream(learner, 600, 0.1, 0.0, seed=6, learn_every=5)
    _stream(learner, 100, 0.1, 1.0, seed=7, learn_every=5)
    assert learner.drift_at, "a one-sigma-plus step must be found within 100 heats"
    alarm = learner.drift_at[0]
    # The onset is estimated before the alarm, and close to the true change at 601.
    assert 590 <= learner.regime_start < alarm
    x, _ = learner.regime_rows(10_000)
    regime = range(learner.regime_start, learner.observed + 1)
    assert len(x) == sum(1 for h in regime if h % 5 != 0)  # validation heats left out
    # A round trains on the regime's heats and replay rows.
    rx, _, replay = learner.round_rows()
    np.testing.assert_array_equal(rx, x)
    assert replay is not None and len(replay[0]) == learner.policy.replay_rows


def test_refits_at_detection_then_every_few_heats_until_one_had_a_full_window() -> None:
    policy = SitePolicy(adapt_heats=20, adapt_every=5, min_regime_heats=5, adapt_epochs=1)
    learner = SiteLearner(FEATURES, TARGETS, [1.0], policy)
    _stream(learner, 600, 0.1, 0.0, seed=8)
    spec = ModelSpec(
        features=FEATURES,
        targets=TARGETS,
        x_center=(0.0, 0.0),
        x_scale=(1.0, 1.0),
        y_center=(0.0,),
        y_scale=(1.0,),
        hidden=(4,),
    )
    refits = []
    for step in range(150):
        _stream(learner, 1, 0.1, 2.0, seed=100 + step)
        if learner.refit_due():
            rows = min(learner.regime_heats, policy.adapt_heats)
            assert learner.refit(spec, {}, None) is None  # mlp-v1: no site tensors
            refits.append((learner.observed, rows))
    assert refits, "the step must be detected and re-fitted on"
    assert refits[0][1] >= policy.min_regime_heats
    assert all(b[0] - a[0] == policy.adapt_every for a, b in itertools.pairwise(refits))
    assert refits[-1][1] == policy.adapt_heats  # the last one had a full window ...
    assert all(r < policy.adapt_heats for _, r in refits[:-1])  # ... and only the last
    assert learner.observed - refits[-1][0] > policy.adapt_every  # then the rounds' turn


def test_refit_moves_the_site_part_only() -> None:
    spec = ModelSpec(architecture="eaf-hybrid-v1")
    rng = np.random.default_rng(0)
    x = (
        np.asarray(spec.x_center)
        + rng.standard_normal((40, len(spec.features))) * np.asarray(spec.x_scale) * 0.3
    ).astype(np.float32)
    y = (np.asarray(spec.y_center) * 1.05).astype(np.float32) * np.ones((40, 1), np.float32)
    learner = SiteLearner(
        spec.features, spec.targets, spec.y_scale, SitePolicy(adapt_epochs=3, min_regime_heats=5)
    )
    for row, out in zip(x, y, strict=True):
        learner.observe(row, out, None)
    shared = get_weights(build_model(spec, seed=1))
    kept = {k: v.copy() for k, v in shared.items()}
    site = learner.refit(spec, shared, None)
    assert site is not None and list(site) == list(spec.parameter_shapes("site"))
    assert any(np.abs(v).sum() > 0 for v in site.values())
    for k in shared:
        np.testing.assert_array_equal(shared[k], kept[k])
    assert learner.refits == 1


def test_policy_defaults_are_the_agents() -> None:
    policy, settings = SitePolicy(), AgentSettings()
    for name in (
        "train_window",
        "replay_rows",
        "adapt_heats",
        "adapt_epochs",
        "adapt_lr",
        "adapt_prior",
        "adapt_every",
    ):
        assert getattr(policy, name) == getattr(settings, name), name


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        SitePolicy(adapt_heats=0)
    with pytest.raises(ValueError):
        SitePolicy(adapt_lr=0.0)
