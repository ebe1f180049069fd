"""Aggregation on several threads: the same bits as on one, and rejection still exact."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.coordinator.strategies import kernels, make_strategy
from alchimia.coordinator.strategies.base import Weights

CHUNK = kernels.CHUNK
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17, 1_000_003]
SHAPES = {"a": (3, CHUNK + 5), "b": (7,), "c": (2 * CHUNK - 3,), "d": (CHUNK,)}


@pytest.fixture
def split_everything(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Any array of two chunks or more is spread over the threads; yields the names of the
    threads the norm kernel ran on."""
    monkeypatch.setattr(kernels, "MIN_SHARE", 1)
    seen: set[str] = set()
    compiled = kernels._sum_squares

    def spy(*args: object) -> None:
        seen.add(threading.current_thread().name)
        compiled(*args)

    monkeypatch.setattr(kernels, "_sum_squares", spy)
    before = kernels.threads()
    yield seen
    kernels.set_threads(before)


def on_threads(count: int, fn: Callable[[], object]) -> object:
    kernels.set_threads(count)
    return fn()


@pytest.mark.parametrize(
    ("sizes", "n"),
    [
        ([10 * CHUNK], 3),
        ([1, CHUNK + 1, 0, 7 * CHUNK], 4),
        ([CHUNK] * 5, 5),
        ([3], 2),
        ([4 * CHUNK, 3 * CHUNK], 7),
    ],
)
def test_shares_cover_every_chunk_once_in_order_and_evenly(sizes: list[int], n: int) -> None:
    runs = kernels.shares(sizes, n)
    assert len(runs) == n
    covered = [(i, c) for run in runs for i, c0, c1 in run for c in range(c0, c1)]
    assert covered == [(i, c) for i, s in enumerate(sizes) for c in range(kernels.chunks(s))]
    per_run = [sum(c1 - c0 for _, c0, c1 in run) for run in runs]
    assert max(per_run) - min(per_run) <= 1


def test_sum_squares_is_the_same_bits_for_any_thread_count(split_everything: set[str]) -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(s).astype(np.float32) * 10.0 ** rng.integers(-3, 3) for s in SIZES]
    want = on_threads(1, lambda: kernels.sum_squares_each(xs))
    assert split_everything == {threading.current_thread().name}
    for count in (2, 3, 7):
        assert on_threads(count, lambda: kernels.sum_squares_each(xs)) == want
    assert len(split_everything) >= 2  # helpers ran chunks (an idle one may take several runs)
    wide = [float(np.sum(x.astype(np.float64) ** 2)) for x in xs]
    assert want == pytest.approx(wide, rel=1e-12, abs=0.0)


def test_add_and_shift_are_the_same_bits_for_any_thread_count(split_everything: set[str]) -> None:
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal(s).astype(np.float32) for s in SIZES]
    for x in xs:
        x[::5] = 0.0  # untouched coordinates

    def run() -> list[np.ndarray]:
        acc, accs = kernels.packed([x.shape for x in xs])
        acc += 0.25
        touched, toucheds = kernels.packed([x.shape for x in xs])
        for factor in (0.3, 1.7, -2.9):
            kernels.add_scaled_touched(acc, touched, xs, factor, 1.5)
        return [*accs, *toucheds, kernels.shift_by_mean(xs[-1], accs[-1], 3.3)]

    want = on_threads(1, run)
    got = on_threads(4, run)
    assert len(got) == 2 * len(SIZES) + 1
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)


def updates(seed: int, n: int) -> list[tuple[Weights, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        delta = {k: (0.01 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
        delta["c"][i::7] = 0.0  # submodel averaging: some coordinates untouched
        out.append((delta, float(rng.integers(1, 500)) * 0.37))
    return out


@pytest.mark.parametrize("spec", ["fedavg", "fedavg+clip", "fedadam"])
def test_a_round_is_the_same_bits_for_any_thread_count(
    spec: str, split_everything: set[str]
) -> None:
    glob = {
        k: np.random.default_rng(9).standard_normal(s).astype(np.float32) for k, s in SHAPES.items()
    }
    ups = updates(5, 6)

    def run() -> Weights:
        strategy = (
            make_strategy("fedavg", clip_norm=0.5) if spec == "fedavg+clip" else make_strategy(spec)
        )
        return strategy.aggregate(glob, ups)

    want = on_threads(1, run)
    for count in (2, 5):
        got = on_threads(count, run)
        for k in SHAPES:
            np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize(
    ("where", "bad"), [("a", np.nan), ("c", np.inf), ("d", -np.inf), ("c", 1e200)]
)
def test_rejection_stays_exact_on_threads(
    where: str, bad: float, split_everything: set[str]
) -> None:
    """The bad value sits in the last chunk, which a helper thread checks; the round's result
    is bit for bit the one without the rejected update."""
    kernels.set_threads(4)
    glob = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    ups = updates(6, 4)
    poisoned = {k: v.astype(np.float64) for k, v in updates(7, 1)[0][0].items()}
    poisoned[where].reshape(-1)[-1] = bad
    acc = make_strategy("fedavg").open_round(glob)
    for i, (delta, weight) in enumerate(ups):
        acc.add(delta, weight)
        if i == 1:
            with pytest.raises(ValueError, match=f"delta\\['{where}'\\]"):
                acc.add(poisoned, 100.0)
    got = acc.finish()
    want = make_strategy("fedavg").aggregate(glob, ups)
    for k in SHAPES:
        np.testing.assert_array_equal(got[k], want[k])


def test_set_threads_defaults_to_the_cores_available() -> None:
    before = kernels.threads()
    try:
        assert kernels.set_threads(None) == len(os.sched_getaffinity(0)) == kernels.threads()
        assert kernels.set_threads(3) == 3 == kernels.threads()
        for wrong in (0, -1, True, 2.5):
            with pytest.raises(ValueError, match="threads"):
                kernels.set_threads(wrong)  # type: ignore[arg-type]
        assert kernels.threads() == 3
    finally:
        kernels.set_threads(before)


def test_the_setting_refuses_zero_threads() -> None:
    assert CoordinatorSettings.load(None, aggregation_threads=2).aggregation_threads == 2
    assert CoordinatorSettings.load(None).aggregation_threads is None
    with pytest.raises(ValueError, match="aggregation_threads"):
        CoordinatorSettings.load(None, aggregation_threads=0)


def test_a_forked_child_gets_a_pool_of_its_own(split_everything: set[str]) -> None:
    """Threads do not survive fork: without a new pool the child would wait forever."""
    kernels.set_threads(3)
    x = np.random.default_rng(8).standard_normal(9 * CHUNK).astype(np.float32)
    want = kernels.sum_squares(x)  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if kernels.sum_squares(x) == want else 1)
    deadline = time.monotonic() + 60.0
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's pool")
    assert os.waitstatus_to_exitcode(done[1]) == 0
