"""Aggregation strategies against hand-computed values and independent numpy formulas."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest

from alchimia.broker.codec import TensorMap
from alchimia.coordinator.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Krum,
    Median,
    MultiKrum,
    NormBound,
    Strategy,
    TrimmedMean,
    Weights,
    make_strategy,
)

ALL_NAMES = sorted(STRATEGIES)


def W(**arrays: object) -> Weights:
    """Float32 weights in keyword order."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}


def random_round(
    rng: np.random.Generator,
    shapes: dict[str, tuple[int, ...]],
    n: int,
) -> list[tuple[Weights, float]]:
    return [
        (
            {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
            float(rng.integers(1, 500)),
        )
        for _ in range(n)
    ]


def delta_of(new: Weights, old: Weights) -> np.ndarray:
    """All tensors of new - old as one float64 vector (for distances)."""
    return np.concatenate([(new[k].astype(np.float64) - old[k]).ravel() for k in old])


def flat(w: Weights) -> np.ndarray:
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in w.values()])


SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def g0() -> Weights:
    return {k: np.full(s, 0.5, np.float32) for k, s in SHAPES.items()}


# --------------------------------------------------------------------------- FedAvg family


def test_fedavg_hand_computed() -> None:
    g = W(w=[1.0, 2.0, 3.0], b=[[0.5]])
    new = FedAvg().aggregate(g, [(W(w=[1, 1, -1], b=[[2]]), 1.0), (W(w=[3, 3, 3], b=[[-2]]), 3.0)])
    # (1*d1 + 3*d2) / 4
    np.testing.assert_allclose(new["w"], [3.5, 4.5, 5.0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(new["b"], [[0.5 - 1.0]], rtol=0, atol=1e-6)
    assert list(new) == ["w", "b"]
    assert all(v.dtype == np.float32 for v in new.values())


def test_a_coordinate_an_update_left_at_zero_is_averaged_over_the_others_only() -> None:
    """Submodel averaging: a site that never charges a grade sends 0.0 for its tensors;
    that must not dilute what the sites that do charge it learned."""
    g = W(w=[1.0, 2.0, 3.0])
    ups = [(W(w=[1, 0, 0]), 1.0), (W(w=[3, 3, 0]), 3.0)]
    for strategy in (FedAvg(), make_strategy("fedprox", mu=0.1)):
        new = strategy.aggregate(g, ups)
        # w0: (1*1 + 3*3) / 4; w1: only the second update touched it: 3; w2: untouched.
        np.testing.assert_allclose(new["w"], [1 + 2.5, 2 + 3.0, 3.0], rtol=0, atol=1e-6)
    # Server optimisers see the same per-coordinate mean as their pseudo-gradient.
    momentum = make_strategy("fedavgm", server_lr=1.0, beta=0.0).aggregate(g, ups)
    np.testing.assert_allclose(momentum["w"], [3.5, 5.0, 3.0], rtol=0, atol=1e-6)


def _masked(delta: Weights, **trained: object) -> TensorMap:
    """A decoded update whose tensors in ``trained`` carried a ``trained`` bitmap."""
    out = TensorMap(delta)
    out.trained.update({k: np.asarray(v, dtype=bool) for k, v in trained.items()})
    return out


def test_a_trained_mask_counts_a_deferred_coordinate_and_not_an_untrained_one() -> None:
    """Top-k with error feedback defers most trained coordinates (0 on the wire); its
    ``trained`` bitmap says which ones the site trained (issue 15 section 3)."""
    g = W(w=[1.0, 2.0, 3.0, 4.0], b=[0.0])
    # The first site trained w0 and w1 but deferred them, and never trained w2 or w3.
    first = _masked(W(w=[0, 0, 0, 0], b=[0]), w=[True, True, False, False])
    ups = [(first, 1.0), (W(w=[4, 0, 8, 0], b=[2]), 3.0)]
    for name in ("fedavg", "fedprox"):
        new = make_strategy(name).aggregate(g, ups)
        # w0: (1 * 0 + 3 * 4) / 4, the deferred 0 counts; w1: trained by the first site
        # alone, mean 0; w2: the second site alone (8); w3: untouched; b: no mask, 0 is
        # "untrained" as before.
        np.testing.assert_allclose(new["w"], [1 + 3.0, 2.0, 3 + 8.0, 4.0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(new["b"], [2.0], rtol=0, atol=1e-6)
    # Without the mask the same values read as today: w0 would be the second site's 4.
    plain = FedAvg().aggregate(g, [(dict(first), 1.0), ups[1]])
    np.testing.assert_allclose(plain["w"], [5.0, 2.0, 11.0, 4.0], rtol=0, atol=1e-6)


def test_a_mask_that_matches_the_non_zeros_is_bit_identical_to_no_mask() -> None:
    rng = np.random.default_rng(4)
    g = {"w": rng.standard_normal((3, 70_001)).astype(np.float32), "b": np.zeros(9, np.float32)}
    ups = random_round(rng, {"w": (3, 70_001), "b": (9,)}, 3)
    for delta, _ in ups:
        delta["w"][:, ::5] = 0.0
    masked = [(_masked(d, w=d["w"] != 0, b=d["b"] != 0), w) for d, w in ups]
    a, b = FedAvg().aggregate(g, ups), FedAvg().aggregate(g, masked)
    for k in g:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_mask_is_checked_like_the_delta() -> None:
    g = W(w=[1.0, 2.0])
    acc = FedAvg().open_round(g)
    for bad, reason in [
        (_masked(W(w=[1, 0]), w=[True]), "has shape"),
        (_masked(W(w=[1, 0]), v=[True, True]), "boolean array of a delta tensor"),
    ]:
        with pytest.raises(ValueError, match=reason):
            acc.add(bad, 1.0)
    wrong_dtype = TensorMap(W(w=[1, 0]))
    wrong_dtype.trained["w"] = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="boolean array"):
        acc.add(wrong_dtype, 1.0)
    assert acc.count == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fedavg_streaming_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    g_before = {k: v.copy() for k, v in g.items()}
    updates = random_round(rng, SHAPES, 37)
    weights = np.array([w for _, w in updates])
    acc = FedAvg().open_round(g)
    for i, (d, w) in enumerate(updates):
        acc.add(d, w)
        assert acc.count == i + 1
    new = acc.finish()
    for k in SHAPES:  # non-streaming reference: stack everything, weighted mean in float64
        stack = np.stack([d[k].astype(np.float64) for d, _ in updates])
        ref = g[k] + np.tensordot(weights, stack, axes=1) / weights.sum()
        np.testing.assert_allclose(new[k], ref, rtol=1e-6, atol=1e-6)
    # arrival order does not matter, the global weights were not touched
    shuffled = [updates[i] for i in rng.permutation(len(updates))]
    again = FedAvg().aggregate(g, shuffled)
    for k in SHAPES:
        np.testing.assert_allclose(again[k], new[k], rtol=1e-7, atol=1e-7)
        np.testing.assert_array_equal(g[k], g_before[k])


def test_fedavg_accepts_read_only_wire_buffers() -> None:
    g = W(w=np.zeros(3))
    wire = [np.array([1, 2, 3], "<f4").tobytes(), np.array([3, 2, 1], "<f4").tobytes()]
    updates = [({"w": np.frombuffer(b, dtype="<f4")}, 1.0) for b in wire]
    assert not updates[0][0]["w"].flags.writeable
    np.testing.assert_allclose(FedAvg().aggregate(g, updates)["w"], [2, 2, 2])


def test_fedprox_task_params_and_server_side_is_fedavg() -> None:
    assert FedAvg().task_params() == {}
    assert FedProx().task_params() == {"proximal_mu": 0.01}
    assert make_strategy("fedprox", mu=0.5).task_params() == {"proximal_mu": 0.5}
    rng = np.random.default_rng(3)
    updates = random_round(rng, SHAPES, 4)
    a, b = FedProx(mu=1.0).aggregate(g0(), updates), FedAvg().aggregate(g0(), updates)
    for k in SHAPES:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="mu"):
        FedProx(mu=-1.0)


def test_fedavgm_two_rounds_hand_computed() -> None:
    s = FedAvgM(server_lr=0.5, beta=0.9)
    x1 = s.aggregate(W(p=[0, 0]), [(W(p=[2, 4]), 1.0), (W(p=[4, 2]), 1.0)])
    # v1 = mean delta = [3, 3]; x1 = 0 + 0.5 * v1
    np.testing.assert_allclose(x1["p"], [1.5, 1.5], atol=1e-6)
    x2 = s.aggregate(x1, [(W(p=[1, -1]), 2.0), (W(p=[-2, 2]), 1.0)])
    # mean delta of round 2 is 0, momentum still moves: v2 = 0.9 v1; x2 = x1 + 0.5 v2
    np.testing.assert_allclose(x2["p"], [2.85, 2.85], atol=1e-6)
    np.testing.assert_allclose(s.state_dict()["momentum/p"], [2.7, 2.7], atol=1e-12)
    assert s.state_dict()["rounds"] == 2


def fedopt_reference(
    variant: str,
    x0: np.ndarray,
    deltas: list[np.ndarray],
    eta: float,
    b1: float,
    b2: float,
    tau: float,
) -> list[tuple[np.ndarray, ...]]:
    """Reddi et al. 2021, Algorithm 2, written out independently (v starts at tau**2).

    Returns (x, m, v) after each round.
    """
    m, v, x, out = np.zeros_like(x0), np.full_like(x0, tau**2), x0.copy(), []
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if variant == "adagrad":
            v = v + d**2
        elif variant == "adam":
            v = b2 * v + (1 - b2) * d**2
        else:
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        x = x + eta * m / (np.sqrt(v) + tau)
        out.append((x.copy(), m.copy(), v.copy()))
    return out


FEDOPT_CASES = [
    ("adagrad", FedAdagrad, {}, dict(eta=0.1, b1=0.0, b2=0.0, tau=1e-9)),
    (
        "adagrad",
        FedAdagrad,
        dict(eta=0.3, beta_1=0.9, tau=1e-2),
        dict(eta=0.3, b1=0.9, b2=0.0, tau=1e-2),
    ),
    ("adam", FedAdam, {}, dict(eta=0.1, b1=0.9, b2=0.99, tau=1e-9)),
    (
        "adam",
        FedAdam,
        dict(eta=0.05, beta_1=0.5, beta_2=0.9, tau=1e-3),
        dict(eta=0.05, b1=0.5, b2=0.9, tau=1e-3),
    ),
    ("yogi", FedYogi, {}, dict(eta=0.01, b1=0.9, b2=0.99, tau=1e-3)),
    (
        "yogi",
        FedYogi,
        dict(eta=0.2, beta_1=0.8, beta_2=0.9, tau=1e-2),
        dict(eta=0.2, b1=0.8, b2=0.9, tau=1e-2),
    ),
]


@pytest.mark.parametrize(("variant", "cls", "params", "ref"), FEDOPT_CASES)
def test_fedopt_two_rounds_match_algorithm_2(
    variant: str, cls: type[Strategy], params: dict[str, float], ref: dict[str, float]
) -> None:
    x0 = np.array([0.5, -1.0, 2.0], np.float64)
    # round 1 mean delta [1, 1, -2] (weights 1 and 3); round 2 mean delta [1/16, 1, 3]: for
    # Yogi, v1 - delta2**2 then has both signs, so both branches of the sign are exercised
    r1 = [(W(p=[2.5, 1, -2]), 1.0), (W(p=[0.5, 1, -2]), 3.0)]
    r2 = [(W(p=[0.0625, 1, 3]), 2.0)]
    d1, d2 = np.array([1.0, 1.0, -2.0]), np.array([0.0625, 1.0, 3.0])
    s = cls(**params)
    (e1, m1, v1), (e2, m2, v2) = fedopt_reference(variant, x0, [d1, d2], **ref)
    x1 = s.aggregate(W(p=x0), r1)
    np.testing.assert_allclose(x1["p"], e1, rtol=1e-6, atol=1e-7)
    state = s.state_dict()
    np.testing.assert_allclose(state["m/p"], m1, rtol=1e-9)
    np.testing.assert_allclose(state["v/p"], v1, rtol=1e-9)
    if variant == "yogi":  # both branches of Yogi's sign are taken in round 2
        assert set(np.sign(state["v/p"] - d2**2)) == {1.0, -1.0}
    x2 = s.aggregate(x1, r2)
    np.testing.assert_allclose(x2["p"], e2, rtol=1e-6, atol=1e-7)
    state = s.state_dict()
    np.testing.assert_allclose(state["m/p"], m2, rtol=1e-9)
    np.testing.assert_allclose(state["v/p"], v2, rtol=1e-9)
    assert state["rounds"] == 2
    # the server optimiser really differs from plain averaging
    assert np.abs(x2["p"] - (x1["p"] + d2)).max() > 1e-2


def test_fedadam_first_round_closed_form() -> None:
    # m1 = 0.1 d, v1 ~ 0.01 d^2  =>  step = eta * m1 / sqrt(v1) = eta * sign(d)
    x1 = FedAdam(eta=0.1).aggregate(W(p=[0, 0, 0]), [(W(p=[3.0, -0.2, 50.0]), 1.0)])
    np.testing.assert_allclose(x1["p"], [0.1, -0.1, 0.1], rtol=1e-6)


# --------------------------------------------------------------------------- state


def _npz_round_trip(state: dict[str, object]) -> dict[str, object]:
    buf = io.BytesIO()
    np.savez(buf, **state)  # type: ignore[arg-type]
    buf.seek(0)
    with np.load(buf) as z:
        return {k: z[k] for k in z.files}


FLOWER_VARIANTS = [
    (n, {"flower": 1.0}) for n in ("fedadagrad", "fedadam", "fedyogi", "trimmed_mean", "multikrum")
]


@pytest.mark.parametrize(("name", "params"), [(n, {}) for n in ALL_NAMES] + FLOWER_VARIANTS)
def test_state_round_trip_continues_identically(name: str, params: dict[str, float]) -> None:
    rng = np.random.default_rng(7)
    rounds = [random_round(rng, SHAPES, 5) for _ in range(3)]
    a = make_strategy(name, **params)
    x = a.aggregate(g0(), rounds[0])
    b = make_strategy(name, **params)  # FedAdam's Flower step size follows the loaded rounds
    b.load_state_dict(_npz_round_trip(a.state_dict()))
    xa, xb = x, x
    for upd in rounds[1:]:
        xa, xb = a.aggregate(xa, upd), b.aggregate(xb, upd)
        for k in SHAPES:
            np.testing.assert_array_equal(xa[k], xb[k])
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb) and sa["rounds"] == 3
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_state_dict_is_a_copy_and_fresh_state_differs() -> None:
    rng = np.random.default_rng(8)
    a = FedAdam()
    x = a.aggregate(g0(), random_round(rng, SHAPES, 3))
    state = a.state_dict()
    state["m/w"][...] = 1e6  # type: ignore[index]
    upd = random_round(rng, SHAPES, 3)
    fresh = FedAdam()  # without the loaded moments, round 2 must come out different
    y_fresh = fresh.aggregate(x, upd)
    y = a.aggregate(x, upd)
    assert np.abs(y["w"] - y_fresh["w"]).max() > 1e-3
    assert np.abs(y["w"]).max() < 10  # the mutation of the copy did not leak in


@pytest.mark.parametrize("name", ALL_NAMES)
def test_abandoned_round_changes_nothing(name: str) -> None:
    rng = np.random.default_rng(11)
    r1, junk, r2 = (random_round(rng, SHAPES, 5) for _ in range(3))
    clean, dirty = make_strategy(name), make_strategy(name)
    x_clean, x_dirty = clean.aggregate(g0(), r1), dirty.aggregate(g0(), r1)
    before = dirty.state_dict()
    acc = dirty.open_round(x_dirty)
    for d, w in junk:
        acc.add(d, w)
    del acc  # abandoned: never finished
    after = dirty.state_dict()
    assert sorted(after) == sorted(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    y_clean, y_dirty = clean.aggregate(x_clean, r2), dirty.aggregate(x_dirty, r2)
    for k in SHAPES:
        np.testing.assert_array_equal(y_clean[k], y_dirty[k])
    assert dirty.rounds == 2


def test_load_state_dict_rejects_bad_state() -> None:
    s = FedAdam()
    s.aggregate(g0(), random_round(np.random.default_rng(1), SHAPES, 2))
    state = s.state_dict()
    with pytest.raises(ValueError, match="unexpected state key"):
        FedAdam().load_state_dict({**state, "bogus/w": np.zeros(4)})
    with pytest.raises(ValueError, match="different parameters"):
        FedAdam().load_state_dict({k: v for k, v in state.items() if k != "v/b"})
    with pytest.raises(ValueError, match="rounds"):
        FedAdam().load_state_dict({**state, "rounds": -1})
    with pytest.raises(ValueError, match="unexpected state keys"):
        FedAvg().load_state_dict({"rounds": 1, "momentum/w": np.zeros(3)})
    loaded = FedAdam()
    loaded.load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        loaded.open_round(
            {
                "w": np.zeros((2, 2), np.float32),
                "b": np.zeros(4, np.float32),
                "s": np.zeros((), np.float32),
            }
        )
    with pytest.raises(ValueError, match="parameters"):
        loaded.open_round({"w": np.zeros((3, 4), np.float32)})


# --------------------------------------------------------------------------- validation


def _bad_deltas() -> list[tuple[str, dict[str, object], float]]:
    ok = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    nan = {**ok, "w": np.full((3, 4), np.nan, np.float32)}
    inf = {**ok, "b": np.array([0, np.inf, 0, 0], np.float32)}
    return [
        ("shape", {**ok, "w": np.zeros((4, 3), np.float32)}, 1.0),
        ("missing", {k: v for k, v in ok.items() if k != "b"}, 1.0),
        ("unknown", {**ok, "extra": np.zeros(1, np.float32)}, 1.0),
        ("NaN", nan, 1.0),
        ("NaN", inf, 1.0),
        ("dtype", {**ok, "b": np.zeros(4, np.int64)}, 1.0),
        ("numpy array", {**ok, "b": [0.0, 0.0, 0.0, 0.0]}, 1.0),
        ("weight", ok, -1.0),
        ("weight", ok, float("nan")),
        ("weight", ok, float("inf")),
        ("mapping", [1, 2], 1.0),  # type: ignore[dict-item]
    ]


@pytest.mark.parametrize("name", [*ALL_NAMES, "fedavg+clip"])
def test_validation_errors_leave_round_intact(name: str) -> None:
    s = make_strategy("fedavg", clip_norm=10.0) if name == "fedavg+clip" else make_strategy(name)
    good = random_round(np.random.default_rng(5), SHAPES, 4)
    acc = s.open_round(g0())
    acc.add(*good[0])
    for match, delta, weight in _bad_deltas():
        with pytest.raises(ValueError, match=match):
            acc.add(delta, weight)  # type: ignore[arg-type]
        assert acc.count == 1
    for d, w in good[1:]:
        acc.add(d, w)
    got = acc.finish()
    want = (
        make_strategy("fedavg", clip_norm=10.0) if name == "fedavg+clip" else make_strategy(name)
    ).aggregate(g0(), good)
    for k in SHAPES:
        np.testing.assert_array_equal(got[k], want[k])


def test_round_lifecycle_errors() -> None:
    with pytest.raises(ValueError, match="without updates"):
        FedAvg().open_round(g0()).finish()
    acc = FedAvg().open_round(g0())
    acc.add(*random_round(np.random.default_rng(0), SHAPES, 1)[0])
    acc.finish()
    with pytest.raises(RuntimeError, match="finished"):
        acc.finish()
    with pytest.raises(RuntimeError, match="finished"):
        acc.add(*random_round(np.random.default_rng(0), SHAPES, 1)[0])
    zero = FedAvg().open_round(g0())
    zero.add({k: np.ones(s, np.float32) for k, s in SHAPES.items()}, 0.0)
    with pytest.raises(ValueError, match="total weight"):
        zero.finish()
    with pytest.raises(ValueError, match="empty"):
        FedAvg().open_round({})


def test_huge_finite_deltas_are_accepted_and_clipped() -> None:
    """1e30 overflows the float32 fast norm; the float64 fallback must keep it valid."""
    g = W(a=[0, 0], b=[0])
    huge = W(a=[1e30, -1e30], b=[1e30])
    out = NormBound(FedAvg(), max_norm=1.0).aggregate(g, [(huge, 1.0)])
    np.testing.assert_allclose(flat(out), np.array([1, -1, 1]) / np.sqrt(3), rtol=1e-6)
    plain = FedAvg().aggregate(g, [(huge, 1.0), (W(a=[2e30, -2e30], b=[2e30]), 1.0)])
    np.testing.assert_allclose(flat(plain), [1.5e30, -1.5e30, 1.5e30], rtol=1e-6)
    too_big = {"a": np.array([1e200, 0.0]), "b": np.array([0.0])}  # float64 beyond float32
    with pytest.raises(ValueError, match="too large"):
        FedAvg().open_round(g).add(too_big, 1.0)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_memory_layout_does_not_matter(name: str) -> None:
    """Fortran-ordered or strided arrays must aggregate like C-ordered ones."""
    rng = np.random.default_rng(9)
    updates = random_round(rng, {"w": (5, 3), "b": (6,)}, 5)
    g = {
        "w": rng.standard_normal((5, 3)).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
    }
    odd_g = {"w": np.asfortranarray(g["w"]), "b": np.repeat(g["b"], 2)[::2]}
    odd_updates = [
        ({"w": np.asfortranarray(d["w"]), "b": np.repeat(d["b"], 2)[::2]}, w) for d, w in updates
    ]
    assert not odd_g["w"].flags.c_contiguous and not odd_g["b"].flags.contiguous
    want = make_strategy(name).aggregate(g, updates)
    got = make_strategy(name).aggregate(odd_g, odd_updates)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_zero_weight_update_counts_but_does_not_move_fedavg() -> None:
    acc = FedAvg().open_round(W(p=[1, 1]))
    acc.add(W(p=[100, 100]), 0.0)
    acc.add(W(p=[2, 4]), 5.0)
    assert acc.count == 2
    np.testing.assert_allclose(acc.finish()["p"], [3, 5])


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum"])
def test_robust_max_updates(name: str) -> None:
    s = make_strategy(name, max_updates=3)
    assert not s.streaming
    acc = s.open_round(g0())
    updates = random_round(np.random.default_rng(2), SHAPES, 4)
    for d, w in updates[:3]:
        acc.add(d, w)
    with pytest.raises(ValueError, match="max_updates=3"):
        acc.add(*updates[3])
    assert acc.count == 3
    acc.finish()


def test_robust_copies_wire_buffers() -> None:
    """A reused receive buffer must not change updates already added."""
    buf = bytearray(np.array([1, 2, 3], "<f4").tobytes())
    acc = Median().open_round(W(p=[0, 0, 0]))
    acc.add({"p": np.frombuffer(buf, "<f4")}, 1.0)
    buf[:] = np.array([9, 9, 9], "<f4").tobytes()
    acc.add({"p": np.frombuffer(buf, "<f4")}, 1.0)
    buf[:] = np.array([-5, -5, -5], "<f4").tobytes()
    acc.add({"p": np.frombuffer(buf, "<f4")}, 1.0)
    np.testing.assert_array_equal(acc.finish()["p"], [1, 2, 3])


# --------------------------------------------------------------------------- robust rules


def test_median_hand_computed_and_unweighted() -> None:
    g = W(p=[1, 1, 1], q=[[0]])
    ups = [W(p=[1, 10, 3], q=[[1]]), W(p=[2, -5, 4], q=[[2]]), W(p=[100, 0, 5], q=[[3]])]
    a = Median().aggregate(g, [(u, 1.0) for u in ups])
    b = Median().aggregate(g, [(u, w) for u, w in zip(ups, [1000.0, 1.0, 1.0], strict=True)])
    np.testing.assert_array_equal(a["p"], [3, 1, 5])
    np.testing.assert_array_equal(a["q"], [[2]])
    np.testing.assert_array_equal(b["p"], a["p"])
    even = Median().aggregate(g, [(W(p=[1, 2, 3], q=[[0]]), 1.0), (W(p=[3, 4, 100], q=[[1]]), 1.0)])
    np.testing.assert_array_equal(even["p"], [3, 4, 52.5])


def test_trimmed_mean_hand_computed() -> None:
    ups = [W(p=[1, -50]), W(p=[2, 2]), W(p=[3, 3]), W(p=[4, 4]), W(p=[100, 5])]
    out = TrimmedMean().aggregate(W(p=[0, 0]), [(u, 1.0) for u in ups])
    np.testing.assert_allclose(out["p"], [3.0, 3.0])  # mean(2,3,4) in both coordinates
    plain = TrimmedMean(beta=0.0).aggregate(W(p=[0, 0]), [(u, 1.0) for u in ups])
    np.testing.assert_allclose(plain["p"], [22.0, -7.2], rtol=1e-6)
    two = TrimmedMean(beta=0.4).aggregate(W(p=[0, 0]), [(u, 1.0) for u in ups])
    np.testing.assert_allclose(two["p"], [3.0, 3.0])  # t = 2: the median of 5


def test_trimmed_mean_trim_count_rule() -> None:
    tm = TrimmedMean(beta=0.1)
    assert [tm.trim_count(n) for n in (1, 2, 3, 5, 10, 19, 20, 35)] == [0, 0, 1, 1, 1, 1, 2, 3]
    assert [TrimmedMean(beta=0.0).trim_count(n) for n in (3, 10)] == [0, 0]
    assert [TrimmedMean(beta=0.45).trim_count(n) for n in (3, 4, 10)] == [1, 1, 4]
    for bad in (-0.1, 0.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            TrimmedMean(beta=bad)
    flower = TrimmedMean(beta=0.1, flower=True)  # floor(beta * n) only, as Flower and scipy
    assert [flower.trim_count(n) for n in (3, 5, 9, 10, 19, 20)] == [0, 0, 0, 1, 1, 2]


# 2-D points split over two tensors, so Krum's distances must span all tensors:
# a=(0,0) b=(1,0) c=(0,2) d=(1,1) e=(10,10); n=5, f=1 -> 2 nearest neighbours.
# scores: a 1+2=3, b 1+1=2, c 4+2=6, d 2+1=3 (ties c-d and a-d), e 162+164=326
KRUM_POINTS = [(0, 0), (1, 0), (0, 2), (1, 1), (10, 10)]


def krum_round() -> list[tuple[Weights, float]]:
    return [(W(x=[x], y=[y]), 1.0 + i) for i, (x, y) in enumerate(KRUM_POINTS)]


def test_krum_scores_and_selection_hand_computed() -> None:
    k = Krum()
    acc = k.open_round(W(x=[0], y=[0]))
    for d, w in krum_round():
        acc.add(d, w)
    np.testing.assert_allclose(k.scores(acc), [3, 2, 6, 3, 326])  # type: ignore[arg-type]
    out = acc.finish()
    assert (out["x"][0], out["y"][0]) == (1.0, 0.0)  # b


def test_multikrum_hand_computed() -> None:
    out = MultiKrum().aggregate(W(x=[0], y=[0]), krum_round())  # m = n - f = 4: a, b, c, d
    np.testing.assert_allclose([out["x"][0], out["y"][0]], [0.5, 0.75])
    two = MultiKrum(m=2).aggregate(W(x=[0], y=[0]), krum_round())  # b, then a (tie a/d)
    np.testing.assert_allclose([two["x"][0], two["y"][0]], [0.5, 0.0])
    many = MultiKrum(m=50).aggregate(W(x=[0], y=[0]), krum_round())  # capped at n: the mean
    np.testing.assert_allclose([many["x"][0], many["y"][0]], [2.4, 2.6], rtol=1e-6)


def test_multikrum_flower_weights_the_kept_deltas_by_samples() -> None:
    # Kept: a, b, c, d with weights 1, 2, 3, 4 (krum_round); e (weight 5) is rejected.
    out = MultiKrum(flower=True).aggregate(W(x=[0], y=[0]), krum_round())
    np.testing.assert_allclose([out["x"][0], out["y"][0]], [(2 + 4) / 10, (6 + 4) / 10], rtol=1e-6)
    zero = [(d, 0.0) for d, _ in krum_round()]
    with pytest.raises(ValueError, match="total weight of 0"):
        MultiKrum(flower=True).aggregate(W(x=[0], y=[0]), zero)
    assert MultiKrum().aggregate(W(x=[0], y=[0]), zero)["x"][0] == 0.5  # unweighted: fine


def test_krum_byzantine_count() -> None:
    assert [Krum().byzantine(n) for n in (1, 2, 3, 4, 5, 6, 7, 10)] == [0, 0, 0, 0, 1, 1, 2, 3]
    assert Krum(f=1).byzantine(5) == 1
    with pytest.raises(ValueError, match="n > 2f"):
        Krum(f=2).aggregate(W(x=[0], y=[0]), krum_round())
    single = Krum().aggregate(W(x=[0], y=[0]), krum_round()[2:3])
    assert (single["x"][0], single["y"][0]) == (0.0, 2.0)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="f must be"):
            Krum(f=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="m must be"):
        MultiKrum(m=0)


# --------------------------------------------------------------------------- norm bounding


def test_norm_bound_clips_global_norm() -> None:
    g = W(a=[0], b=[0])
    s = NormBound(FedAvg(), max_norm=1.0)
    acc = s.open_round(g)
    acc.add(W(a=[3], b=[4]), 1.0)  # norm 5 over both tensors -> scaled by 1/5
    out = acc.finish()
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [0.6, 0.8], rtol=1e-6)
    assert acc.clipped == 1  # type: ignore[attr-defined]
    small = NormBound(FedAvg(), max_norm=1.0).aggregate(g, [(W(a=[0.3], b=[0.4]), 1.0)])
    np.testing.assert_allclose([small["a"][0], small["b"][0]], [0.3, 0.4], rtol=1e-6)
    mixed = NormBound(FedAvg(), max_norm=1.0).aggregate(
        g, [(W(a=[3], b=[4]), 1.0), (W(a=[0.2], b=[0.4]), 3.0)]
    )
    # (0.6 + 3 * 0.2) / 4, (0.8 + 3 * 0.4) / 4
    np.testing.assert_allclose([mixed["a"][0], mixed["b"][0]], [0.3, 0.5], rtol=1e-6)


def test_make_strategy_clip_norm_wraps_any_strategy() -> None:
    s = make_strategy("fedavg", clip_norm=5.0)
    assert isinstance(s, NormBound) and isinstance(s.inner, FedAvg) and s.max_norm == 5.0
    assert s.streaming
    r = make_strategy("median", clip_norm=2.0, max_updates=10)
    assert isinstance(r, NormBound) and isinstance(r.inner, Median) and not r.streaming
    assert r.inner.max_updates == 10
    assert make_strategy("fedprox", mu=0.1, clip_norm=1.0).task_params() == {"proximal_mu": 0.1}
    assert isinstance(make_strategy("fedavg", clip_norm=None), FedAvg)
    # a clipped delta reaches a robust inner rule scaled
    out = r.aggregate(W(a=[0], b=[0]), [(W(a=[30], b=[40]), 1.0)])
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [1.2, 1.6], rtol=1e-6)
    with pytest.raises(ValueError, match="max_norm"):
        NormBound(FedAvg(), 0.0)


# --------------------------------------------------------------------------- robustness


ROBUST: dict[str, Callable[[], Strategy]] = {
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multikrum": MultiKrum,
}


@pytest.mark.parametrize("attack", ["huge", "flip"])
def test_robust_rules_resist_one_byzantine_agent(attack: str) -> None:
    rng = np.random.default_rng(42)
    shapes = {"w": (8, 8), "b": (16,)}
    g = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    mu = {k: rng.standard_normal(s) for k, s in shapes.items()}
    honest = [
        {k: (mu[k] + 0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
        for _ in range(4)
    ]
    target = np.mean([flat(h) for h in honest], axis=0)
    scale = 1000.0 if attack == "huge" else -10.0
    evil = {k: (scale * mu[k]).astype(np.float32) for k in shapes}
    updates = [(d, 100.0) for d in [honest[0], honest[1], evil, honest[2], honest[3]]]
    size = float(np.linalg.norm(target))

    def dist(s: Strategy) -> float:
        return float(np.linalg.norm(delta_of(s.aggregate(g, updates), g) - target))

    plain = dist(FedAvg())
    assert plain > (100 * size if attack == "huge" else 2 * size)
    for name, make in ROBUST.items():
        d = dist(make())
        assert d < 0.1 * size, (name, d, size)
        assert d < plain / 20, (name, d, plain)
    # norm bounding bounds the damage to max_norm / n (it cannot remove a bounded attack)
    clipped = dist(make_strategy("fedavg", clip_norm=1.1 * size))
    assert clipped < (0.1 if attack == "huge" else 0.5) * size, (clipped, size)
    assert clipped < plain / 4, (clipped, plain)


# --------------------------------------------------------------------------- registry


def test_registry_and_make_strategy_errors() -> None:
    expected = [
        "fedavg",
        "fedavgm",
        "fedprox",
        "fedadagrad",
        "fedadam",
        "fedyogi",
        "median",
        "trimmed_mean",
        "krum",
        "multikrum",
    ]
    assert sorted(expected) == ALL_NAMES
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert isinstance(make_strategy(name), cls)
        assert cls.__doc__ and "Parameters" in cls.__doc__
    with pytest.raises(ValueError, match=r"unknown strategy 'fedsgd'.*fedadam.*trimmed_mean"):
        make_strategy("fedsgd")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lr'\].*server_lr"):
        make_strategy("fedavgm", lr=0.1)
    # settings and the CLI deliver every parameter as a float
    mk = make_strategy("multikrum", f=1.0, m=3.0, max_updates=10.0)
    assert isinstance(mk, MultiKrum) and (mk.f, mk.m, mk.max_updates) == (1, 3, 10)
    assert isinstance(mk.f, int) and isinstance(mk.max_updates, int)
    with pytest.raises(ValueError, match="max_updates"):
        make_strategy("krum", max_updates=2.5)
    s = make_strategy("fedadam", eta=0.5, beta_2=0.9)
    assert isinstance(s, FedAdam) and (s.eta, s.beta_1, s.beta_2) == (0.5, 0.9, 0.9)
    flags = [
        make_strategy(n, flower=v)
        for n, v in [("fedadam", 1.0), ("fedyogi", 0.0), ("trimmed_mean", True), ("multikrum", 1)]
    ]
    assert [getattr(f, "flower", None) for f in flags] == [True, False, True, True]
    for name, bad in [
        ("fedavgm", {"beta": 1.0}),
        ("fedavgm", {"server_lr": 0.0}),
        ("fedadam", {"tau": 0.0}),
        ("fedyogi", {"beta_2": -0.1}),
        ("median", {"max_updates": 0}),
        ("fedadam", {"flower": 2.0}),
        ("multikrum", {"flower": 0.5}),
        ("trimmed_mean", {"flower": "yes"}),
    ]:
        with pytest.raises(ValueError, match=name):
            make_strategy(name, **bad)
