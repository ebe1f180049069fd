"""The compiled aggregation loops agree with the numpy expressions they replace."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alchimia.coordinator.strategies import kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [0, 1, 7, 16_385, 1_000_003])
def test_sum_squares_matches_numpy(dtype: type, size: int) -> None:
    x = np.random.default_rng(size).standard_normal(size).astype(dtype)
    want = float(np.sum(x.astype(np.float64) ** 2))
    assert kernels.sum_squares(x) == pytest.approx(want, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sum_squares_is_non_finite_for_nan_and_inf(bad: float) -> None:
    x = np.ones(50_000, np.float32)
    x[31_337] = bad
    assert not math.isfinite(kernels.sum_squares(x))


def test_add_scaled_is_exactly_the_float64_expression() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 301)).astype(np.float32)
    acc = rng.standard_normal((300, 301))
    want = acc + 0.37 * x.astype(np.float64)
    kernels.add_scaled(acc, x, 0.37)
    np.testing.assert_array_equal(acc, want)


def test_kernels_take_read_only_unaligned_views() -> None:
    """Tensors decoded from the wire are read-only and may sit at any byte offset."""
    x = np.arange(1, 1001, dtype=np.float32)
    payload = b"\x00" + x.tobytes()
    view = np.frombuffer(payload, np.float32, offset=1)
    assert not view.flags.aligned and not view.flags.writeable
    acc = np.zeros(1000)
    kernels.add_scaled(acc, view, 2.0)
    np.testing.assert_array_equal(acc, 2.0 * x)
    assert kernels.sum_squares(view) == float(np.sum(x.astype(np.float64) ** 2))


def test_add_scaled_refuses_a_wrong_accumulator() -> None:
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="float64"):
        kernels.add_scaled(np.zeros(10, np.float32), x, 1.0)
    with pytest.raises(ValueError, match="10 elements"):
        kernels.add_scaled(np.zeros(9), x, 1.0)
    with pytest.raises(ValueError, match="contiguous"):  # a flat view of it would be a copy
        kernels.add_scaled(np.zeros((2, 10))[:, :5], x, 1.0)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shift_by_mean_is_bit_identical_to_the_numpy_expression(order: str, dtype: type) -> None:
    rng = np.random.default_rng(7)
    g = np.asarray(rng.standard_normal((70, 31)), dtype=dtype, order=order)
    sums = rng.standard_normal((70, 31)) * 1e3
    want = ((sums / 3.7) + g).astype(dtype)
    got = kernels.shift_by_mean(g, sums, 3.7)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="float64"):
        kernels.shift_by_mean(g, sums.astype(np.float32), 3.7)


@pytest.mark.parametrize(
    "size", [0, 7, kernels.SMALL - 1, kernels.SMALL + 5, 3 * kernels.CHUNK + 1]
)
def test_add_scaled_touched_with_a_mask_counts_the_mask_and_the_non_zeros(size: int) -> None:
    """Both paths (numpy below ``SMALL``, the compiled loop above): the sums are those
    without a mask, the weight counts where ``mask | (x != 0)``."""
    rng = np.random.default_rng(size)
    xs = [rng.standard_normal(size).astype(np.float32) for _ in range(2)]
    for x in xs:
        x[rng.random(size) < 0.5] = 0.0
    mask = rng.random(size) < 0.3
    acc, accs = kernels.packed([x.shape for x in xs])
    touched, toucheds = kernels.packed([x.shape for x in xs])
    touched += 1.0
    kernels.add_scaled_touched(acc, touched, xs, 0.5, 2.0, [mask, None])
    for a, x in zip(accs, xs, strict=True):
        np.testing.assert_array_equal(a, 0.5 * x.astype(np.float64))
    np.testing.assert_array_equal(toucheds[0], np.where(mask | (xs[0] != 0), 3.0, 1.0))
    np.testing.assert_array_equal(toucheds[1], np.where(xs[1] != 0, 3.0, 1.0))
    with pytest.raises(ValueError, match="boolean"):
        kernels.add_scaled_touched(acc, touched, xs, 1.0, 1.0, [mask.astype(np.uint8), None])
    with pytest.raises(ValueError, match="masks"):
        kernels.add_scaled_touched(acc, touched, xs, 1.0, 1.0, [mask])
    with pytest.raises(ValueError, match="flat float64"):
        kernels.add_scaled_touched(np.zeros(acc.size + 1), touched, xs, 1.0, 1.0)


@pytest.mark.parametrize("sizes", [[1], [7, 0, 300], [kernels.SMALL - 1, 5, kernels.SMALL + 3]])
def test_the_numpy_path_for_small_arrays_matches_the_compiled_loops(
    sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below ``SMALL`` elements the passes are numpy expressions (numba stays unloaded):
    the same bits for the adds, the weights and the shift, the norm to rounding, and a
    NaN or inf still found."""
    rng = np.random.default_rng(len(sizes))
    xs = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    for x in xs:
        x[rng.random(x.size) < 0.3] = 0.0
    g = [rng.standard_normal(s).astype(np.float32) for s in sizes]

    def run(small: int) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
        monkeypatch.setattr(kernels, "SMALL", small)
        acc, accs = kernels.packed([x.shape for x in xs])
        acc += 0.25
        touched, toucheds = kernels.packed([x.shape for x in xs])
        kernels.add_scaled_touched(acc, touched, xs, 0.37, 3.0)
        kernels.add_scaled(accs[0], xs[0], -1.5)
        shifted = [kernels.shift_by_mean(a, acc, 2.9) for a, acc in zip(g, accs, strict=True)]
        return kernels.sum_squares_each(xs), accs + toucheds, shifted

    numpy_norms, numpy_sums, numpy_shifted = run(1 << 40)
    norms, sums, shifted = run(0)  # every array through the compiled loops
    assert numpy_norms == pytest.approx(norms, rel=1e-12, abs=0.0)
    for got, want in zip(numpy_sums + numpy_shifted, sums + shifted, strict=True):
        np.testing.assert_array_equal(got, want)
    for small in (1 << 40, 0):
        monkeypatch.setattr(kernels, "SMALL", small)
        bad = [x.copy() for x in xs]
        bad[-1][-1] = np.nan
        assert not math.isfinite(kernels.sum_squares_each(bad)[-1])
