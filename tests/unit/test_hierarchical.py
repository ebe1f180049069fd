"""Two-level aggregation (coordinator/hierarchical.py) against flat aggregation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alchimia.coordinator.hierarchical import Partial, PlantAggregator, check_partial, merge_partial
from alchimia.coordinator.strategies import make_strategy
from alchimia.coordinator.strategies.base import Weights

ROUND, BASE = 7, 3
LINEAR = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
Update = tuple[str, str, Weights, int]  # sender, msg_id, delta, num_samples


def _global() -> Weights:
    rng = np.random.default_rng(1)
    return {
        "w": rng.standard_normal((6, 5)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }


def _updates(k: int, *, grid: bool, seed: int = 2) -> list[Update]:
    """k updates; ``grid``: multiples of 2**-12 in [-1/4, 1/4], so every float64 sum of
    up to thousands of them times integer weights < 1024 is exact. A quarter of the
    coordinates are exact zeros (untrained: submodel averaging)."""
    rng = np.random.default_rng(seed)
    out: list[Update] = []
    for i in range(k):
        delta: Weights = {}
        for name, ref in _global().items():
            if grid:
                vals = rng.integers(-1024, 1025, ref.shape) * 2.0**-12
            else:
                vals = rng.standard_normal(ref.shape) * 10.0 ** rng.uniform(-6, -1, ref.shape)
            vals[rng.random(ref.shape) < 0.25] = 0.0
            delta[name] = vals.astype(np.float32)
        out.append((f"a{i:02d}", f"{i:032x}", delta, int(rng.integers(1, 1000))))
    return out


def _bad(sender: str, msg_id: str) -> Update:
    delta = {k: np.zeros(v.shape, np.float32) for k, v in _global().items()}
    delta["w"][2, 3] = np.nan
    return sender, msg_id, delta, 5


def _flat(strategy: str, updates: list[Update]) -> tuple[Weights, dict]:
    """The coordinator's round: each update added in arrival order; a bad delta refused."""
    strat, g = make_strategy(strategy), _global()
    acc = strat.open_round(g)
    for _, _, delta, n in updates:
        try:
            acc.add(delta, float(n))
        except ValueError:
            continue
    return acc.finish(), strat.state_dict()


def _two_level(
    strategy: str,
    updates: list[Update],
    plants: list[list[int]],
) -> tuple[Weights, dict]:
    """Plants pre-sum the updates given by index (each in that order), the top merges the
    partials in list order."""
    strat, g = make_strategy(strategy), _global()
    partials: list[Partial] = []
    for p, members in enumerate(plants):
        plant = PlantAggregator(
            f"plant-{p}", g, ROUND, BASE, selected=[updates[i][0] for i in members]
        )
        for i in members:
            sender, msg_id, delta, n = updates[i]
            plant.offer(sender, msg_id, ROUND, BASE, n, delta)
        if plant.count:  # a plant whose only update was refused sends nothing
            partials.append(plant.partial())
    acc = strat.open_round(g)
    for partial in partials:
        merge_partial(acc, g, partial)
    return acc.finish(), strat.state_dict()


def _splits(k: int) -> dict[str, list[list[int]]]:
    rng = np.random.default_rng(3)
    cuts = sorted(rng.choice(np.arange(1, k), 4, replace=False).tolist())
    bounds = [0, *cuts, k]
    return {
        "one plant": [list(range(k))],
        "one agent per plant": [[i] for i in range(k)],
        "contiguous runs": [list(range(a, b)) for a, b in itertools.pairwise(bounds)],
        "interleaved, 3 plants": [list(range(r, k, 3)) for r in range(3)],
        "random, 5 plants, merged backwards": [
            sorted(np.flatnonzero(labels == p).tolist())
            for labels in [rng.integers(0, 5, k)]
            for p in range(4, -1, -1)
            if (labels == p).any()
        ],
    }


def _same_bits(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32))
        for k in a
    )


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", LINEAR)
def test_two_level_is_flat_bit_for_bit_when_the_sums_are_exact(strategy: str) -> None:
    updates = _updates(24, grid=True)
    updates[5] = _bad(*updates[5][:2])  # rejected at its plant as at the coordinator
    flat, flat_state = _flat(strategy, updates)
    shuffled = [updates[i] for i in np.random.default_rng(4).permutation(len(updates))]
    assert _same_bits(_flat(strategy, shuffled)[0], flat)  # exact sums: any order
    for name, plants in _splits(len(updates)).items():
        two, two_state = _two_level(strategy, updates, plants)
        assert _same_bits(two, flat), name
        assert _same_state(two_state, flat_state), name
    assert not _same_bits(flat, _global())


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_two_level_within_one_float32_ulp_of_flat_for_any_deltas(strategy: str) -> None:
    updates = _updates(40, grid=False)
    updates[11] = _bad(*updates[11][:2])
    flat, _ = _flat(strategy, updates)
    for name, plants in _splits(len(updates)).items():
        two, _ = _two_level(strategy, updates, plants)
        for k in flat:
            ulps = np.abs(
                two[k].view(np.int32).astype(np.int64) - flat[k].view(np.int32).astype(np.int64)
            )
            assert ulps.max() <= 1, (name, k)


def test_dropping_a_plant_or_its_touched_weights_changes_the_result() -> None:
    updates = _updates(12, grid=True)
    flat, _ = _flat("fedavg", updates)
    assert not _same_bits(_two_level("fedavg", updates, [list(range(6))])[0], flat)
    g = _global()
    plant = PlantAggregator("p", g, ROUND, BASE, selected=[u[0] for u in updates])
    for sender, msg_id, delta, n in updates:
        assert plant.offer(sender, msg_id, ROUND, BASE, n, delta) is None
    part = plant.partial()
    no_touch = Partial(
        part.plant,
        ROUND,
        BASE,
        part.sums,
        {k: np.full_like(v, part.total_weight) for k, v in part.touched.items()},
        part.total_weight,
        part.count,
        part.contributors,
    )
    acc = make_strategy("fedavg").open_round(g)
    merge_partial(acc, g, no_touch)
    assert not _same_bits(acc.finish(), flat)  # the untrained zeros must not count


def test_plant_refuses_what_the_coordinator_refuses_and_keeps_its_sums() -> None:
    g = _global()
    (a, ma, da, na), (b, mb, db, nb) = _updates(2, grid=True)
    seen: set[str] = set()
    plant = PlantAggregator("p", g, ROUND, BASE, selected=[a, b], seen=seen)
    assert plant.offer(a, ma, ROUND, BASE, na, da) is None
    before = plant.partial()
    wrong_shape = {**db, "b": np.zeros(4, np.float32)}
    cases = {
        "replayed": (b, ma, ROUND, BASE, nb, db),
        "wrong_round": (b, mb, ROUND + 1, BASE, nb, db),
        "not_selected": ("other", "f" * 32, ROUND, BASE, nb, db),
        "wrong_base": (b, mb, ROUND, BASE - 1, nb, db),
        "duplicate": (a, "e" * 32, ROUND, BASE, na, da),
    }
    for code, args in cases.items():
        assert plant.offer(*args).code == code
    for delta in (_bad(b, mb)[2], wrong_shape, {"w": db["w"]}):
        assert plant.offer(b, mb, ROUND, BASE, nb, delta).code == "bad_delta"
    after = plant.partial()
    assert after.count == 1 and after.contributors == (a,)
    assert all(np.array_equal(after.sums[k], before.sums[k]) for k in g)
    assert plant.offer(b, mb, ROUND, BASE, nb, db) is None  # refused, not consumed
    assert seen == {ma, mb}
    assert (
        PlantAggregator("q", g, ROUND, BASE, selected=[a], seen=seen)
        .offer(a, ma, ROUND, BASE, na, da)
        .code
        == "replayed"
    )  # across rounds, via ``seen``


def test_a_plant_without_updates_sends_nothing() -> None:
    with pytest.raises(ValueError, match="no accepted update"):
        PlantAggregator("p", _global(), ROUND, BASE, selected=["a"]).partial()


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean", "krum", "multikrum"])
def test_order_statistics_do_not_take_partials(strategy: str) -> None:
    g = _global()
    sender, msg_id, delta, n = _updates(1, grid=True)[0]
    plant = PlantAggregator("p", g, ROUND, BASE, selected=[sender])
    plant.offer(sender, msg_id, ROUND, BASE, n, delta)
    with pytest.raises(ValueError, match="does not take partials"):
        merge_partial(make_strategy(strategy).open_round(g), g, plant.partial())


def _corrupt(part: Partial, what: str) -> Partial:
    sums = {k: v.copy() for k, v in part.sums.items()}
    touched = {k: v.copy() for k, v in part.touched.items()}
    total, count = part.total_weight, part.count
    if what == "nan":
        sums["b"][1] = np.nan
    elif what == "float32":
        sums["w"] = sums["w"].astype(np.float32)
    elif what == "shape":
        touched["b"] = touched["b"][:4]
    elif what == "names":
        sums["extra"] = sums.pop("b")
    elif what == "touched above total":
        touched["w"][0, 0] = 2 * total
    elif what == "negative touched":
        touched["w"][0, 0] = -1.0
    elif what == "zero total":
        total = 0.0
    elif what == "count":
        count += 1
    return Partial(
        part.plant, part.round_id, part.base_version, sums, touched, total, count, part.contributors
    )


@pytest.mark.parametrize(
    "what",
    [
        "nan",
        "float32",
        "shape",
        "names",
        "touched above total",
        "negative touched",
        "zero total",
        "count",
    ],
)
def test_a_bad_partial_is_refused_whole(what: str) -> None:
    updates = _updates(6, grid=True)
    g = _global()
    parts = []
    for p, members in enumerate([[0, 1, 2], [3, 4, 5]]):
        plant = PlantAggregator(f"p{p}", g, ROUND, BASE, selected=[updates[i][0] for i in members])
        for i in members:
            plant.offer(updates[i][0], updates[i][1], ROUND, BASE, updates[i][3], updates[i][2])
        parts.append(plant.partial())
    check_partial(g, parts[1])
    acc = make_strategy("fedavg").open_round(g)
    merge_partial(acc, g, parts[0])
    with pytest.raises(ValueError, match="partial of p1"):
        merge_partial(acc, g, _corrupt(parts[1], what))
    merge_partial(acc, g, parts[1])
    assert _same_bits(acc.finish(), _flat("fedavg", updates)[0])
