"""Client-level differential privacy (issue 15 §2): the agents' clipping and noise
(agent/learn/privacy.py), the coordinator's accountant (coordinator/privacy.py), the DP
fields of the task, the `dp` metadata in `alchimia status`."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from alchimia.agent.learn.privacy import UpdatePrivatizer, clip, entropy_rng, l2_norm, privatize
from alchimia.broker.schemas import DecodeError, TaskBody, decode, message
from alchimia.broker.signing import SignatureError, sign_task, verify_task
from alchimia.broker.topics import Topics
from alchimia.coordinator.privacy import PrivacyLedger, epsilon, noise_for_epsilon
from alchimia.coordinator.publishing import initial_weights, model_message
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.models.spec import ModelSpec
from alchimia.status import FederationView, summary


def _delta(rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    return {
        "a": (scale * rng.standard_normal((7, 5))).astype(np.float32),
        "b": (scale * rng.standard_normal(11)).astype(np.float32),
        "c": np.zeros(3, np.float32),
    }


# -- the agent: clipping and noise ---------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-6, 1e4), clip_norm=st.floats(1e-3, 1e3))
def test_clipping_bounds_the_norm_and_keeps_the_direction(seed, scale, clip_norm) -> None:
    delta = _delta(np.random.default_rng(seed), scale)
    clipped = clip(delta, clip_norm)
    assert l2_norm(clipped) <= clip_norm
    norm = l2_norm(delta)
    factor = min(1.0, clip_norm / norm)
    for k, v in delta.items():  # the same direction, shrunk only when over the bound
        np.testing.assert_allclose(clipped[k], v * factor, rtol=1e-5, atol=1e-30)
    if norm <= clip_norm:
        assert all(np.array_equal(clipped[k], v) for k, v in delta.items())


def test_noise_has_std_z_times_c_on_every_coordinate() -> None:
    rng = np.random.default_rng(7)  # fixed here only: the product seeds from the OS
    z, c = 1.3, 0.25
    zeros = {"w": np.zeros((400, 500), np.float32), "b": np.zeros(500, np.float32)}
    noisy = privatize(zeros, c, z, rng)
    values = np.concatenate([v.ravel() for v in noisy.values()]).astype(np.float64)
    n = values.size
    # The sample std of n normals is within 5 standard errors (sigma / sqrt(2n)).
    assert abs(values.std() - z * c) < 5 * z * c / math.sqrt(2 * n)
    assert abs(values.mean()) < 5 * z * c / math.sqrt(n)
    assert np.count_nonzero(values) == n  # untrained (zero) coordinates are noised too
    assert all(v.dtype == np.float32 and v.shape == zeros[k].shape for k, v in noisy.items())


def test_the_update_is_clipped_before_the_noise() -> None:
    big = {"w": np.full(10_000, 3.0, np.float32)}  # norm 300
    out = privatize(big, 1.0, 0.01, np.random.default_rng(1))["w"]
    # Clipped to norm 1 (each value 0.01), then noise of std 0.01.
    assert abs(out.mean() - 0.01) < 5 * 0.01 / 100


def test_no_dp_in_the_task_passes_the_delta_through_and_dp_changes_it() -> None:
    delta = _delta(np.random.default_rng(0), 1.0)
    privatizer = UpdatePrivatizer()
    assert privatizer.apply(delta, None, None) is delta
    out = privatizer.apply(delta, 0.5, 1.0)
    assert not any(np.array_equal(out[k], v) for k, v in delta.items())


def test_the_product_noise_is_not_reproducible() -> None:
    a, b = entropy_rng().standard_normal(8), entropy_rng().standard_normal(8)
    assert not np.array_equal(a, b)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="clip norm"):
        clip({"a": np.ones(2, np.float32)}, 0.0)
    with pytest.raises(ValueError, match="noise multiplier"):
        privatize({"a": np.ones(2, np.float32)}, 1.0, 0.0, np.random.default_rng(0))


# -- the coordinator: accountant ----------------------------------------------------------


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    by_rounds = [epsilon(((1.0, n),), 1e-5) for n in (1, 2, 10, 100)]
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 4
    by_noise = [epsilon(((z, 10),), 1e-5) for z in (0.5, 1.0, 2.0, 8.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4
    assert epsilon((), 1e-5) == 0.0


def test_epsilon_matches_dp_accounting_directly() -> None:
    # Replace-one: the clipped delta moves by up to 2 C, so multiplier z / 2.
    z, rounds, delta = 4.0, 30, 1e-5
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z / 2), rounds)
    assert epsilon(((z, rounds),), delta) == pytest.approx(acc.get_epsilon(delta), rel=1e-12)
    # The PLD accountant is tighter than RDP and agrees to within a small factor.
    tight = pld.PLDAccountant()
    tight.compose(dp_accounting.GaussianDpEvent(z / 2), rounds)
    assert (
        0.6 * epsilon(((z, rounds),), delta)
        < tight.get_epsilon(delta)
        <= epsilon(((z, rounds),), delta)
    )


def test_a_single_gaussian_round_matches_the_classical_bound() -> None:
    # One Gaussian mechanism with sigma / sensitivity = s >= sqrt(2 ln(1.25 / delta)) / eps
    # is (eps, delta)-DP (Dwork & Roth, Thm 3.22), so RDP's epsilon is no larger.
    delta, eps = 1e-5, 0.5
    s = math.sqrt(2 * math.log(1.25 / delta)) / eps
    assert epsilon(((2 * s, 1),), delta) <= eps


def test_noise_for_epsilon_is_the_smallest_that_meets_the_target() -> None:
    for target in (1.0, 4.0, 16.0):
        z = noise_for_epsilon(target, 1e-5, 40)
        assert epsilon(((z, 40),), 1e-5) <= target
        assert epsilon(((z * 0.99, 40),), 1e-5) > target


def test_the_ledger_reports_the_worst_plant_and_replays_from_metadata() -> None:
    ledger = PrivacyLedger(1e-5)
    history = [
        {"initial": True},
        {"strategy": "fedavg", "contributors": ["p1", "p2"]},  # before DP: free
    ]
    for contributors, z in ((["p1", "p2"], 2.0), (["p1"], 2.0), (["p1", "p3"], 3.0)):
        ledger.record(contributors, z)
        history.append(
            {"strategy": "fedavg", "contributors": contributors, "dp": ledger.metadata(0.5, z)}
        )
    assert ledger.epsilon_of("p1") == pytest.approx(epsilon(((2.0, 2), (3.0, 1)), 1e-5))
    assert ledger.epsilon_of("p1") > ledger.epsilon_of("p2") > 0
    assert ledger.epsilon_of("nobody") == 0.0
    eps, rounds = ledger.worst()
    assert (eps, rounds) == (ledger.epsilon_of("p1"), 3)
    md = history[-1]["dp"]
    assert md["epsilon"] == eps and md["rounds"] == 3 and md["delta"] == 1e-5
    assert (md["noise_multiplier"], md["clip_norm"]) == (3.0, 0.5)
    again = PrivacyLedger.replay(1e-5, history)  # a restarted coordinator
    assert again.spent == ledger.spent and again.worst() == ledger.worst()


# -- the task and the settings ------------------------------------------------------------

KEY = Ed25519PrivateKey.generate()
TASK = TaskBody(
    round_id=3,
    state="open",
    base_version=2,
    deadline_ts=1_800_000_000.0,
    selected=["plant-1"],
    dp_clip_norm=0.3,
    dp_noise_multiplier=4.5,
)


def test_dp_fields_survive_signing_and_the_wire() -> None:
    body = decode(message("coordinator", sign_task(TASK, KEY)), TaskBody).body
    assert isinstance(body, TaskBody)
    assert (body.dp_clip_norm, body.dp_noise_multiplier) == (0.3, 4.5)
    verify_task(body, KEY.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"dp_clip_norm": 3.0},
        {"dp_noise_multiplier": 0.5},
        {"dp_clip_norm": None, "dp_noise_multiplier": None},
    ],
)
def test_a_changed_dp_field_breaks_the_signature(change: dict) -> None:
    forged = sign_task(TASK, KEY).model_copy(update=change)
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_task(forged, KEY.public_key())


def test_dp_fields_come_together_and_positive() -> None:
    base = TASK.model_dump(exclude={"dp_clip_norm", "dp_noise_multiplier"})
    for bad in (
        {"dp_clip_norm": 0.3},
        {"dp_noise_multiplier": 1.0},
        {"dp_clip_norm": 0.0, "dp_noise_multiplier": 1.0},
    ):
        with pytest.raises(ValidationError):
            TaskBody(**base, **bad)
    wire = message("coordinator", TASK).replace(b"dp_noise_multiplier", b"dp_noise_multiplieX")
    with pytest.raises(DecodeError):
        decode(wire, TaskBody)
    with pytest.raises(ValidationError, match="set together"):
        CoordinatorSettings(dp_clip_norm=1.0)
    s = CoordinatorSettings(dp_clip_norm=1.0, dp_noise_multiplier=2.0)
    assert (s.dp_clip_norm, s.dp_noise_multiplier, s.dp_delta) == (1.0, 2.0, 1e-5)


# -- alchimia status -----------------------------------------------------------------------


def test_status_shows_the_models_epsilon() -> None:
    spec = ModelSpec(architecture="mlp-v1")
    ledger = PrivacyLedger(1e-5)
    ledger.record(["plant-1", "plant-2"], 4.5)
    dp = ledger.metadata(0.3, 4.5)
    view = FederationView("steel")
    view.feed(
        Topics("steel").model_current,
        model_message(
            "coordinator",
            spec,
            initial_weights(spec, 0),
            version=1,
            parent=0,
            round_id=1,
            metadata={"strategy": "fedavg", "contributors": ["plant-1", "plant-2"], "dp": dp},
        ),
    )
    status = view.status()
    assert status.model is not None and status.model.dp == dp
    line = next(x for x in summary(status, 0.0) if x.startswith("privacy:"))
    assert f"epsilon {dp['epsilon']:.3g} at delta 1e-05" in line
    assert "1 updates" in line and "noise multiplier 4.5" in line
    assert status.to_dict()["model"]["dp"]["epsilon"] == dp["epsilon"]


# -- the experiment ------------------------------------------------------------------------


def test_the_experiment_calibrates_z_per_epsilon_and_tabulates() -> None:
    from alchimia.experiment_federation import FederationConfig
    from alchimia.experiment_privacy import report, run_privacy_experiment

    cfg = FederationConfig(sizes=(60, 40), rounds=2, epochs=1)
    result = run_privacy_experiment(cfg, (2.0, 1e4), clip_norm=0.3, delta=1e-5)
    assert list(result.runs) == [None, 2.0, 1e4]
    z, reported, _, clipped = result.runs[2.0]
    assert z == noise_for_epsilon(2.0, 1e-5, 2) and reported is not None and reported <= 2.0
    assert result.runs[None][0] is None and result.median_norm > 0
    assert 0.0 <= clipped <= 1.0
    # Almost no noise at epsilon 1e4: close to no DP; epsilon 2 costs more (or diverges).
    base, loose, tight = (
        np.mean([v for p in result.runs[e][2].values() for v in p.values()])
        for e in (None, 1e4, 2.0)
    )
    assert abs(loose / base - 1) < abs(tight / base - 1) or np.isnan(tight)
    text = report(result)
    assert "no DP" in text and "| 2 (" in text
