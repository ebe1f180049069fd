"""Continual-learning pieces: hand-computed figures, seeded streams, bounds, regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alchimia.agent.learn.continual import (
    ErrorDriftMonitor,
    EwcPenalty,
    InputDriftMonitor,
    PageHinkley,
    Prequential,
    RegimeReplayBuffer,
    ReplayBuffer,
    fisher_diagonal,
    psi,
)
from alchimia.agent.learn.trainer import TrainConfig, train_delta
from alchimia.models.params import get_weights, set_weights, subtract
from alchimia.models.regressor import build_model
from alchimia.models.spec import ModelSpec

SPEC = ModelSpec(hidden=(8,))


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Plausible raw-unit rows: around the spec's reference centres."""
    rng = np.random.default_rng(seed)
    x = (
        np.asarray(SPEC.x_center)
        + rng.standard_normal((n, len(SPEC.features))) * np.asarray(SPEC.x_scale) * 0.5
    )
    y = (
        np.asarray(SPEC.y_center)
        + rng.standard_normal((n, len(SPEC.targets))) * np.asarray(SPEC.y_scale) * 0.5
    )
    return x.astype(np.float32), y.astype(np.float32)


# -- prequential -------------------------------------------------------------------------


def test_prequential_matches_hand_computation() -> None:
    p = Prequential(("a", "b"), window=2)
    assert p.snapshot()["n"] == 0 and math.isnan(p.snapshot()["mae_a"])
    p.update([1.0, 2.0], [0.0, 0.0])  # |err| = 1, 2
    p.update({"a": 3.0, "b": 0.0}, {"b": 1.0, "a": 0.0})  # |err| = 3, 1 (read by name)
    p.update(np.array([0.0, 0.0]), np.array([5.0, -5.0]))  # |err| = 5, 5
    assert p.snapshot() == pytest.approx(
        {
            "n": 3.0,
            "mae_a": 3.0,
            "mae_b": 8.0 / 3.0,  # all three heats
            "mae_recent_a": 4.0,
            "mae_recent_b": 3.0,  # the last two
        }
    )


def test_prequential_rejects_wrong_width_and_non_finite() -> None:
    p = Prequential(("a", "b"))
    with pytest.raises(ValueError):
        p.update([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        p.update([math.nan, 0.0], [1.0, 2.0])
    assert p.n == 0


# -- error-stream detectors -------------------------------------------------------------


def _abs_noise(seed: int, n: int) -> np.ndarray:
    """A right-skewed, stationary 'absolute error' stream."""
    return np.abs(np.random.default_rng(seed).standard_normal(n))


@pytest.mark.parametrize("seed", range(5))
def test_page_hinkley_stays_quiet_on_stationary_errors(seed: int) -> None:
    ph = PageHinkley()
    assert not any(ph.update(v) for v in _abs_noise(seed, 5000))


@pytest.mark.parametrize("seed", range(5))
def test_page_hinkley_fires_soon_after_a_step_and_locates_it(seed: int) -> None:
    x = _abs_noise(100 + seed, 600)
    x[300:] += 2.0 * x[:300].std()  # a two-sigma rise from heat 300
    ph = PageHinkley()
    fired = [i for i, v in enumerate(x) if ph.update(v)]
    assert fired and 300 <= fired[0] < 340
    assert ph.change_lag is not None and abs((fired[0] - ph.change_lag) - 300) <= 15


def test_page_hinkley_ignores_a_fall() -> None:
    x = _abs_noise(7, 600)
    x[300:] *= 0.3  # the model got better
    ph = PageHinkley()
    assert not any(ph.update(v) for v in x)


def test_error_monitor_names_the_target_whose_error_rose_and_resets_all() -> None:
    rng = np.random.default_rng(3)
    mon = ErrorDriftMonitor(("energy", "cu"), scale=(50.0, 0.1))
    hits = []
    for i in range(500):
        actual = np.array([400.0, 0.15])
        pred = actual + np.array([10.0, 0.01]) * rng.standard_normal(2)
        if i >= 250:
            pred[1] += 0.05  # a bias on Cu only
        if (fired := mon.update(pred, actual)) is not None:
            hits.append((i, fired))
    assert hits and hits[0][1] == ["cu"] and 250 <= hits[0][0] < 280
    assert all(d.n < 500 - hits[0][0] for d in mon.detectors)  # both were reset


# -- input drift ---------------------------------------------------------------------------


def test_psi_small_for_the_same_distribution_large_for_a_shift_and_a_new_value() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(500)
    assert psi(ref, rng.standard_normal(200)) < 0.15
    assert psi(ref, rng.standard_normal(200) + 1.0) > 0.5
    zeros = np.zeros(500)  # an unused grade, always 0 t
    assert psi(zeros, np.zeros(200)) < 0.01  # only the smoothing differs
    assert psi(zeros, np.r_[np.zeros(100), np.full(100, 3.0)]) > 0.25


def test_input_monitor_quiet_on_stationary_inputs() -> None:
    rng = np.random.default_rng(11)
    mon = InputDriftMonitor(["a", "b", "c", "d"])
    rows = np.c_[
        rng.standard_normal((2500, 2)),
        rng.exponential(1.0, 2500),
        np.round(rng.uniform(0, 5, 2500), 1),
    ]  # ties, like tonnes to 0.1 t
    assert all(mon.update(r) is None for r in rows)
    assert mon.last_scores  # it did compare


def test_input_monitor_fires_on_a_step_in_one_feature() -> None:
    rng = np.random.default_rng(12)
    mon = InputDriftMonitor(["a", "b", "c"])  # 500 reference, 200 recent
    fired = []
    for i in range(1100):
        row = rng.standard_normal(3)
        if i >= 800:
            row[1] += 1.0  # one standard deviation
        if (out := mon.update(dict(zip("abc", row, strict=True)))) is not None:
            fired.append((i, out))
    assert fired and fired[0][1] == ["b"] and 800 <= fired[0][0] < 1000  # within a window


# -- replay ------------------------------------------------------------------------------


def test_reservoir_is_bounded_and_uniform_over_the_stream() -> None:
    buf = ReplayBuffer(2000, seed=5)
    for i in range(100_000):
        buf.add([float(i)], [0.0])
        assert len(buf) <= 2000
    kept = buf.arrays()[0][:, 0]
    assert len(kept) == 2000 and len(np.unique(kept)) == 2000
    # Each tenth of the stream holds ~200 of the kept rows (binomial sd ~13).
    counts = np.histogram(kept, bins=10, range=(0, 100_000))[0]
    assert np.all(np.abs(counts - 200) < 60), counts
    x, _ = buf.sample(50)
    assert len(x) == 50 and len(np.unique(x)) == 50


def test_regime_buffer_stays_bounded_and_balanced() -> None:
    buf = RegimeReplayBuffer(400, seed=1, max_regimes=4)
    for i in range(100_000):
        if i % 7_000 == 6_999:
            buf.new_regime()
        buf.add([float(i)], [float(len(buf.regimes))])
        assert len(buf) <= 400
    assert len(buf.regimes) == 4 and all(len(r) <= 100 for r in buf.regimes)


def test_regime_buffer_sample_gives_a_young_regime_its_share() -> None:
    buf = RegimeReplayBuffer(300, seed=2)
    for _ in range(5_000):
        buf.add([0.0], [0.0])
    buf.new_regime()
    for _ in range(30):
        buf.add([1.0], [1.0])
    assert len(buf.regimes[0]) == 150  # shrunk to its half
    x, _ = buf.sample(60)
    assert len(x) == 60 and (x[:, 0] == 1.0).sum() == 30  # balanced, not 30/5030
    x, _ = buf.sample(100, past_only=True)
    assert len(x) == 100 and (x[:, 0] == 0.0).all()


# -- EWC and training ------------------------------------------------------------------------


def test_fisher_matches_a_per_row_backward_loop() -> None:
    model = build_model(SPEC, seed=3)
    x, _ = _rows(4)
    fisher = fisher_diagonal(SPEC, get_weights(model), x)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for row in torch.from_numpy(x):
        out = model.normalized(row[None])[0]
        for k in range(len(SPEC.targets)):
            model.zero_grad()
            out[k].backward(retain_graph=True)
            for n, p in model.named_parameters():
                expected[n] += p.grad**2
    for n, e in expected.items():
        np.testing.assert_allclose(
            fisher[n], e.numpy() * 2 / len(SPEC.targets) / 4, rtol=1e-4, atol=1e-7
        )


def test_ewc_penalty_zero_at_anchor_positive_away_and_same_in_torch() -> None:
    model = build_model(SPEC, seed=4)
    anchor = get_weights(model)
    fisher = fisher_diagonal(SPEC, anchor, _rows(16)[0])
    ewc = EwcPenalty(anchor, fisher, lam=2.0)
    assert ewc.value(anchor) == 0.0 and float(ewc(model).detach()) == 0.0
    moved = {k: v + 0.1 for k, v in anchor.items()}
    expected = 0.5 * 2.0 * sum(float((fisher[k] * 0.01).sum()) for k in anchor)
    assert ewc.value(moved) == pytest.approx(expected, rel=1e-4) and expected > 0
    set_weights(model, moved)
    assert float(ewc(model).detach()) == pytest.approx(expected, rel=1e-4)


def _reference_train_delta(
    spec: ModelSpec, base: dict, x: np.ndarray, y: np.ndarray, cfg: TrainConfig
) -> dict:
    """train_delta as it was before replay and EWC: the online agent's behaviour."""
    model = build_model(spec)
    set_weights(model, base)
    anchor = [p.detach().clone() for p in model.parameters()]
    xs = torch.from_numpy(np.asarray(x, np.float32))
    ys = model.normalize_targets(torch.from_numpy(np.asarray(y, np.float32)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model.normalized(xs[idx]), ys[idx])
            if cfg.proximal_mu > 0:
                loss = loss + 0.5 * cfg.proximal_mu * sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
            loss.backward()
            opt.step()
    return subtract(get_weights(model), base)


@pytest.mark.parametrize("mu", [0.0, 0.1])
def test_train_delta_with_defaults_is_unchanged(mu: float) -> None:
    base = get_weights(build_model(SPEC, seed=1))
    x, y = _rows(70, seed=2)
    cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=16, proximal_mu=mu, seed=9)
    result = train_delta(SPEC, base, x, y, cfg)
    delta, metrics = result.delta, result.metrics
    ref = _reference_train_delta(SPEC, base, x, y, cfg)
    assert list(delta) == list(base) and set(metrics) == {"train_loss"}
    for k in base:
        np.testing.assert_array_equal(delta[k], ref[k])


def test_train_delta_replay_rows_are_trained_on_and_ewc_holds_weights_back() -> None:
    base = get_weights(build_model(SPEC, seed=1))
    x, y = _rows(64, seed=3)
    old = _rows(64, seed=4)
    cfg = TrainConfig(epochs=5, lr=1e-2, batch_size=16)
    plain = train_delta(SPEC, base, x, y, cfg).delta
    with_replay = train_delta(SPEC, base, x, y, cfg, replay=old).delta
    assert any(not np.array_equal(plain[k], with_replay[k]) for k in base)
    held_result = train_delta(
        SPEC, base, x, y, TrainConfig(epochs=5, lr=1e-2, batch_size=16, ewc_lambda=1e4), replay=old
    )
    held, metrics = held_result.delta, held_result.metrics
    fisher = fisher_diagonal(SPEC, base, old[0])
    moved = {k: base[k] + with_replay[k] for k in base}
    kept = {k: base[k] + held[k] for k in base}
    ewc = EwcPenalty(base, fisher, 1.0)
    assert ewc.value(kept) < 0.1 * ewc.value(moved)
    assert metrics["ewc_penalty"] >= 0.0
    # Without replay rows or a Fisher there is nothing to protect: plain training.
    alone = train_delta(
        SPEC, base, x, y, TrainConfig(epochs=5, lr=1e-2, batch_size=16, ewc_lambda=1e4)
    ).delta
    for k in base:
        np.testing.assert_array_equal(alone[k], plain[k])
