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
