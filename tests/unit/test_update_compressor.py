"""Error feedback at the agent (agent.learn.compression): what was not sent is sent later,
and the residual is dropped exactly when the model it was owed to is gone."""

from __future__ import annotations

import numpy as np
import pytest

from alchimia.agent.learn.compression import UpdateCompressor
from alchimia.broker.codec import Encoded
from alchimia.broker.codec_names import LOSSY, MASKED
from alchimia.broker.compression import decompress_trained

SHAPES = {"w": (20, 10), "b": (10,)}


def _sent(out: dict) -> dict[str, np.ndarray]:
    """What the coordinator decodes from the tensors ``encode`` returned."""
    return {
        k: decompress_trained(v.wire, int(np.prod(SHAPES[k])))[0].reshape(SHAPES[k])
        if isinstance(v, Encoded)
        else v
        for k, v in out.items()
    }


def _deltas(rounds: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Steps with a steady direction and noise, like gradient steps near a slope."""
    rng = np.random.default_rng(seed)
    drift = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    return [
        {
            k: (0.1 * drift[k] + 0.05 * rng.standard_normal(s)).astype(np.float32)
            for k, s in SHAPES.items()
        }
        for _ in range(rounds)
    ]


def _norm(tensors: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in tensors.values())))


@pytest.mark.parametrize("codec", LOSSY)
def test_the_sum_of_sent_updates_tracks_the_sum_of_true_deltas(codec: str) -> None:
    ef, plain = UpdateCompressor(), UpdateCompressor()
    true = {k: np.zeros(s) for k, s in SHAPES.items()}
    with_ef = {k: np.zeros(s) for k, s in SHAPES.items()}
    without = {k: np.zeros(s) for k, s in SHAPES.items()}
    for version, delta in enumerate(_deltas(200), start=1):
        ef.follow(version, version - 1, version)  # an unbroken chain of aggregations
        sent = _sent(ef.encode(delta, codec, 0.05))
        plain.follow(version, None, None)  # a broken chain every time: no error feedback
        dropped = _sent(plain.encode(delta, codec, 0.05))
        for k in SHAPES:
            true[k] += delta[k]
            with_ef[k] += sent[k]
            without[k] += dropped[k]
    assert ef.residual is not None
    gap = {k: true[k] - with_ef[k] for k in SHAPES}
    # What is owed is exactly what has not been sent (up to float32 rounding) ...
    assert _norm({k: gap[k] - ef.residual[k] for k in SHAPES}) < 1e-3 * _norm(true)
    # ... and it stays small, where dropping it lets the error grow with every round.
    plain_gap = _norm({k: true[k] - without[k] for k in SHAPES})
    assert _norm(gap) < 0.06 * _norm(true)
    if codec.startswith("topk"):
        assert _norm(gap) < 0.1 * plain_gap


def test_raw_sends_the_delta_plus_what_is_still_owed_then_owes_nothing() -> None:
    comp = UpdateCompressor()
    first, second = _deltas(2)
    comp.follow(1, 0, 1)
    sent = _sent(comp.encode(first, "topk", 0.05))
    owed = {k: first[k] - sent[k] for k in SHAPES}
    comp.follow(2, 1, 2)
    out = comp.encode(second, "raw", 0.05)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    for k in SHAPES:
        np.testing.assert_allclose(out[k], second[k] + owed[k], rtol=1e-6)
    assert comp.residual is None
    assert comp.encode(second, "raw", 0.05) == second


@pytest.mark.parametrize(
    ("version", "parent", "round_id", "kept"),
    [
        (2, 1, 7, True),  # the aggregation of the version the update was sent on
        (2, 1, None, False),  # version 2 is an admin rollback: the versions chased are gone
        (3, 2, 8, False),  # version 2 was missed: it may have been a rollback
        (0, None, None, False),  # a new federation's initial model
        (1, 0, 5, False),  # versions went backwards: another coordinator's state
    ],
)
def test_the_residual_is_kept_only_along_unbroken_aggregations(
    version, parent, round_id, kept: bool
) -> None:
    comp = UpdateCompressor()
    comp.follow(1, 0, 6)
    comp.encode(_deltas(1)[0], "topk", 0.05)
    assert comp.residual is not None
    comp.follow(version, parent, round_id)
    assert (comp.residual is not None) == kept


def test_rounds_the_agent_skips_keep_the_residual() -> None:
    comp = UpdateCompressor()
    comp.follow(1, 0, 1)
    comp.encode(_deltas(1)[0], "int8", 0.05)
    for v in range(2, 6):  # four versions aggregated without this agent
        comp.follow(v, v - 1, v)
    assert comp.residual is not None


def test_a_residual_of_other_shapes_is_not_added() -> None:
    comp = UpdateCompressor()
    comp.follow(1, 0, 1)
    comp.encode(_deltas(1)[0], "topk", 0.05)
    comp.follow(2, 1, 2)
    other = {"w": np.ones((3, 3), np.float32)}
    np.testing.assert_array_equal(comp.encode(other, "raw", 0.05)["w"], other["w"])


@pytest.mark.parametrize("codec", MASKED)
def test_top_k_marks_what_this_round_trained_and_what_it_sends(codec: str) -> None:
    """The ``trained`` bitmap: this round's non-zero delta and every sent entry; a
    coordinate the plant never trains stays unmarked, and one that only a residual from an
    earlier round holds is marked only when it is sent."""
    ef = UpdateCompressor()
    ef.follow(1, None, None)
    first = np.zeros(16, np.float32)
    first[:8] = np.arange(1, 9)  # 8..15: never trained
    ef.encode({"w": first}, codec, 0.125)  # sends 6, 7; owes 0..5
    ef.follow(2, 1, 2)
    second = np.zeros(16, np.float32)
    second[[0, 1]] = [0.5, 20.0]  # 2..5 owed only; 1 is this round's largest
    wire = ef.encode({"w": second}, codec, 0.125)["w"].wire
    values, trained = decompress_trained(wire, 16)
    sent = np.flatnonzero(values)
    np.testing.assert_array_equal(sent, [1, 5])  # 20.5 (1) and the largest owed, 6.0 (5)
    assert trained is not None
    np.testing.assert_array_equal(np.flatnonzero(trained), [0, 1, 5])
