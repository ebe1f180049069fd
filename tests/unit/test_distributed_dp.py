"""Distributed differential privacy under secure aggregation (docs/FEDERATION.md,
"Differential privacy"; docs/PROTOCOL.md, "Differential privacy in a secure round"): each
agent's SecaggClient clips its delta to C, weighs it 1 and adds N(0, (z C)^2 / t), t the
roster's threshold; the coordinator's sum of at least t inputs carries noise of std at
least z C. Statistical checks use many coordinates, so that a wrong scale (t - 1 or
t + 1 instead of t, or none) is many standard errors away from the tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest

import alchimia.agent.secagg_client as secagg_client
from alchimia.agent.learn.privacy import l2_norm, privatize
from alchimia.agent.secagg_client import Phase as ClientPhase
from alchimia.agent.secagg_client import SecaggClient
from alchimia.broker import secagg
from alchimia.broker.schemas import SecaggMaskedBody, TaskBody
from alchimia.coordinator.lifecycle import BuildModel, PublishSecagg
from alchimia.coordinator.privacy import PrivacyLedger
from alchimia.coordinator.rounds import Refusal
from alchimia.coordinator.secure_round import Finished, SecureRound
from alchimia.status import privacy_line
from tests.unit.lifecycle_driver import T0, of
from tests.unit.test_lifecycle_secure import AGENTS, WS, Plants, _deltas, _open, _secure
from tests.unit.test_secure_round import BASE, DEADLINE, OPENED, ROUND, TIMEOUT, Federation

C, Z = 0.5, 2.0
P = 20_000  # coordinates: a standard deviation estimated to ~0.5 %
BIG = {"w": (100, 200)}
TOL = 0.03  # relative, on a standard deviation: 6 standard errors at P coordinates


def _dp(fed: Federation, clip_norm: float = C, z: float = Z) -> Federation:
    """``fed`` with the DP parameters in its task and its round (as the lifecycle makes
    them), its clients made anew from that task, seeded noise."""
    fed.task = TaskBody(
        **{
            **fed.task.model_dump(),
            "dp_clip_norm": clip_norm,
            "dp_noise_multiplier": z,
        }
    )
    fed.clients = {
        a: SecaggClient(a, fed.task, rng=np.random.default_rng(k)) for k, a in enumerate(fed.ids)
    }
    fed.round = SecureRound(
        ROUND,
        BASE,
        fed.ids,
        1,
        fed.base,
        phase_timeout_s=TIMEOUT,
        opened_ts=OPENED,
        deadline_ts=DEADLINE,
        unit_weights=True,
    )
    return fed


def _zero(fed: Federation) -> None:
    fed.deltas = {a: [np.zeros_like(b) for b in fed.base.values()] for a in fed.ids}


@pytest.fixture
def inputs(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, np.ndarray]:
    """Each client's input x before its masks (spied on ``mask_input``), by self seed."""
    seen: dict[bytes, np.ndarray] = {}
    mask_input = secagg.mask_input

    def spy(x: np.ndarray, self_seed: bytes, pairs):  # type: ignore[no-untyped-def]
        seen[self_seed] = x.copy()
        return mask_input(x, self_seed, pairs)

    monkeypatch.setattr(secagg_client.secagg, "mask_input", spy)
    return seen


def _values(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One tensor's input: its values w * d and its weight words, decoded."""
    n = x.size // 2
    values = x[:n].view(np.int64).astype(np.float64) / 2.0**secagg.FRACTION_BITS
    return values, x[n:].view(np.int64) / 2.0**secagg.FRACTION_BITS


@pytest.mark.parametrize(("n", "t"), [(3, 2), (6, 4)])
def test_each_client_adds_noise_of_std_zc_over_sqrt_t_with_weight_one(
    inputs: dict[bytes, np.ndarray], n: int, t: int
) -> None:
    fed = _dp(Federation(n, shapes=BIG))
    _zero(fed)  # the input is the noise alone
    done = fed.run()
    assert fed.round.threshold == t
    assert len(inputs) == n
    expected = Z * C / math.sqrt(t)
    for x in inputs.values():
        noise, weights = _values(x)
        assert abs(noise.std() / expected - 1) < TOL, (noise.std(), expected)
        assert abs(noise.mean()) < 5 * expected / math.sqrt(P)
        assert np.all(weights == 1.0)  # weight 1, and every coordinate counts as trained
    # the clients' noise is independent: their inputs are uncorrelated
    a, b = (_values(x)[0] for x in list(inputs.values())[:2])
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(P)
    # the heats never leave: each masked input said 1, the sum's weight is the count
    assert done.partial.total_weight == n and done.partial.count == n
    assert np.all(done.partial.touched["w"] == n)


def test_the_noise_is_added_once_the_threshold_is_known(inputs: dict[bytes, np.ndarray]) -> None:
    """A delta set before the roster waits, clipped, for the threshold."""
    fed = _dp(Federation(5, shapes=BIG))
    _zero(fed)
    fed.keys(fed.ids)
    client = fed.clients[fed.ids[0]]
    assert client.set_delta(fed.deltas[fed.ids[0]], 300) == []  # before the roster
    assert client.threshold == 0 and not inputs
    fed.shares(fed.ids)
    (masked,) = client.on_inbox(fed.inboxes[client.agent_id])
    assert isinstance(masked, SecaggMaskedBody) and masked.num_samples == 1
    (x,) = inputs.values()
    noise, _ = _values(x)
    assert abs(noise.std() / (Z * C / math.sqrt(3)) - 1) < TOL


def test_the_delta_is_clipped_to_c_before_the_noise(inputs: dict[bytes, np.ndarray]) -> None:
    fed = _dp(Federation(3, shapes=BIG), z=1e-9)  # noise far below the fixed point's step
    rng = np.random.default_rng(5)
    big = [rng.normal(size=BIG["w"]).astype(np.float32)]  # norm ~ 141, far over C
    fed.deltas = {a: [b * (k + 1) for b in big] for k, a in enumerate(fed.ids)}
    fed.run()
    for x in inputs.values():
        values, _ = _values(x)
        assert l2_norm({"w": values}) <= C * (1 + 1e-5)
        assert l2_norm({"w": values}) >= C * (1 - 1e-4)
        cosine = np.dot(values, big[0].ravel()) / (np.linalg.norm(values) * np.linalg.norm(big[0]))
        assert cosine > 1 - 1e-6  # scaled, not turned


def test_a_small_delta_is_not_scaled(inputs: dict[bytes, np.ndarray]) -> None:
    fed = _dp(Federation(3, shapes=BIG), z=1e-9)
    fed.deltas = {a: [np.full(BIG["w"], 1e-3, np.float32)] for a in fed.ids}  # norm 0.14
    fed.run()
    for x in inputs.values():
        np.testing.assert_allclose(_values(x)[0], 1e-3, atol=2.0**-24)


@pytest.mark.parametrize("survivors", [5, 3])
def test_the_coordinators_sum_carries_noise_of_std_at_least_zc(survivors: int) -> None:
    """Five agents, threshold 3: the sum of the survivors' inputs has noise of std
    z C sqrt(|U3| / t), z C when exactly t survive; the mean of the deltas moves by it."""
    fed = _dp(Federation(5, shapes=BIG, seed=3))
    rng = np.random.default_rng(9)
    fed.deltas = {a: [(rng.normal(size=BIG["w"]) * 1e-3).astype(np.float32)] for a in fed.ids}
    alive = fed.ids[:survivors]
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    fed.train(alive)  # the others dropped out after sharing: masked against, then gone
    if survivors < len(fed.ids):
        fed.tick(DEADLINE)
    fed.reveal(alive)
    (done,) = fed.result
    assert isinstance(done, Finished) and done.partial.contributors == tuple(alive)
    exact = sum(fed.deltas[a][0].astype(np.float64) for a in alive)  # none clipped
    noise = done.partial.sums["w"] - exact
    expected = Z * C * math.sqrt(survivors / fed.round.threshold)
    assert abs(noise.std() / expected - 1) < TOL, (noise.std(), expected)
    assert noise.std() >= Z * C * (1 - TOL)
    assert done.partial.total_weight == survivors


def test_privatize_shares_the_noise() -> None:
    rng = np.random.default_rng(0)
    delta = {"w": np.zeros(P, np.float32)}
    for shares in (1, 4):
        noise = privatize(delta, C, Z, rng, shares=shares)["w"]
        assert abs(noise.std() / (Z * C / math.sqrt(shares)) - 1) < TOL
    with pytest.raises(ValueError, match="at least 1"):
        privatize(delta, C, Z, rng, shares=0)


def test_the_product_clients_noise_is_not_reproducible() -> None:
    fed = Federation(3)
    task = TaskBody(**{**fed.task.model_dump(), "dp_clip_norm": C, "dp_noise_multiplier": Z})
    a, b = (SecaggClient(fed.ids[0], task) for _ in range(2))
    assert a._rng is not b._rng
    assert a._rng.standard_normal() != b._rng.standard_normal()


def test_without_dp_the_heats_are_the_weight() -> None:
    fed = Federation(3)
    done = fed.run()
    assert done.partial.total_weight == sum(fed.weights.values()) > 3
    assert all(c.dp is None for c in fed.clients.values())


def test_a_weight_other_than_one_is_refused_in_a_dp_round() -> None:
    """An agent that ignores the task's DP and weighs by its heats is refused: its input
    could move the sum by more than 2 C."""
    fed = _dp(Federation(3))
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    a = fed.ids[0]
    client = fed.clients[a]
    assert client.on_inbox(fed.inboxes[a]) == []
    (masked,) = client.set_delta(fed.deltas[a], 7)
    assert isinstance(masked, SecaggMaskedBody) and masked.num_samples == 1
    forged = masked.model_copy(update={"num_samples": 7})
    answer = fed.round.on_masked(a, forged, fed.now)
    assert isinstance(answer, Refusal) and answer.code == "bad_masked"
    assert "differential privacy" in answer
    assert fed.round.on_masked(a, masked, fed.now) == []


def test_a_noised_delta_that_does_not_fit_sends_nothing() -> None:
    fed = _dp(Federation(3), clip_norm=1e6, z=1e6)  # noise std ~7e11: over 2^24
    fed.keys(fed.ids)
    fed.shares(fed.ids)
    client = fed.clients[fed.ids[0]]
    assert client.on_inbox(fed.inboxes[fed.ids[0]]) == []
    with pytest.raises(secagg.EncodingError, match="noised delta does not fit"):
        client.set_delta(fed.deltas[fed.ids[0]], 5)
    assert client.phase is ClientPhase.OUT and client.skipped
    # set before the inbox: the inbox answers nothing
    fed2 = _dp(Federation(3), clip_norm=1e6, z=1e6)
    fed2.keys(fed2.ids)
    other = fed2.clients[fed2.ids[1]]
    assert other.set_delta(fed2.deltas[fed2.ids[1]], 5) == []
    fed2.shares(fed2.ids)
    assert other.on_inbox(fed2.inboxes[fed2.ids[1]]) == []
    assert other.phase is ClientPhase.OUT


# -- the coordinator


def test_a_secure_dp_round_says_its_noise_was_distributed() -> None:
    lc = _secure(dp_clip_norm=C, dp_noise_multiplier=Z)
    task = _open(lc)
    assert (task.dp_clip_norm, task.dp_noise_multiplier, task.secure_aggregation) == (C, Z, True)
    deltas, weights = _deltas()
    plants = Plants(lc, task, deltas, weights)
    plants.start()  # deltas set before the roster: noised once the threshold is in
    out = plants.run(T0 + 1)
    assert not plants.rejects
    assert of(PublishSecagg, out)
    [build] = of(BuildModel, out)
    dp = build.metadata["dp"]
    ledger = PrivacyLedger(lc.settings.dp_delta)
    ledger.record(AGENTS, Z)
    assert dp == ledger.metadata(C, Z, distributed=True)
    assert dp["noise"] == "distributed" and dp["epsilon"] > 0 and dp["rounds"] == 1
    assert build.metadata["secure_aggregation"] is True
    # the mean moved by noise of std about z C sqrt(5 / 3) / 5 per coordinate, weight 1
    assert not np.array_equal(build.weights["layers.0.weight"], WS["layers.0.weight"])
    assert "noise distributed under secure aggregation" in privacy_line(dp)
    assert "DP at the agents" in privacy_line(ledger.metadata(C, Z))
    assert ledger.metadata(C, Z)["noise"] == "local"


# -- the experiment


def test_the_experiment_runs_secure_rounds_with_distributed_noise() -> None:
    from alchimia.experiment_federation import FederationConfig
    from alchimia.experiment_privacy import report, run_privacy_experiment

    cfg = FederationConfig(sizes=(60, 40, 30), rounds=2, epochs=1)
    plain = run_privacy_experiment(cfg, (2.0,), clip_norm=0.3)
    secure = run_privacy_experiment(cfg, (2.0, math.inf), clip_norm=0.3, secure=True)
    assert list(secure.runs) == [None, 2.0, math.inf] and secure.secure
    # without DP, a secure round is FedAvg to fixed-point precision: the same errors
    for p in secure.plants:
        for t, v in secure.runs[None][2][p].items():
            assert v == pytest.approx(plain.runs[None][2][p][t], rel=1e-3)
    # the same z, noise shared among the plants: the mean carries less of it
    assert secure.runs[2.0][0] == plain.runs[2.0][0]
    cost = {
        name: np.mean([v for p in r.runs[2.0][2].values() for v in p.values()])
        for name, r in (("plain", plain), ("secure", secure))
    }
    assert cost["secure"] < cost["plain"]
    z, reported, _, _ = secure.runs[math.inf]
    assert z is None and reported == math.inf
    text = report(secure)
    assert "distributed DP under secure aggregation" in text and "2 of 3" in text
    assert "| inf (no noise) | 0 |" in text
