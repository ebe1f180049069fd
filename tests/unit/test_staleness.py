"""Staleness discounts (FedBuff; Xie et al. 2019) against their closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from alchimia.coordinator.staleness import (
    STALENESS,
    Constant,
    Hinge,
    Polynomial,
    constant,
    hinge,
    make_staleness,
    polynomial,
)


def test_constant() -> None:
    f = constant()
    assert [f(s) for s in (0, 1, 10, 10**9)] == [1.0, 1.0, 1.0, 1.0]
    assert isinstance(f, Constant)


def test_polynomial_closed_form() -> None:
    f = polynomial()  # FedBuff's 1 / sqrt(1 + s)
    assert f(0) == 1.0
    assert f(3) == pytest.approx(0.5)
    assert f(8) == pytest.approx(1 / 3)
    g = polynomial(a=2.0)
    assert g(1) == pytest.approx(0.25)
    assert g(9) == pytest.approx(0.01)
    assert polynomial(a=0.0)(100) == 1.0


def test_hinge_closed_form_and_boundary() -> None:
    f = hinge()  # a=10, b=4
    assert [f(s) for s in range(5)] == [1.0] * 5
    assert f(5) == pytest.approx(1 / 11)
    assert f(6) == pytest.approx(1 / 21)
    g = hinge(a=0.5, b=0)
    assert g(0) == 1.0
    assert g(2) == pytest.approx(0.5)
    assert g(4) == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", sorted(STALENESS))
def test_range_and_monotone(name: str) -> None:
    f = make_staleness(name)
    values = [f(s) for s in range(200)]
    assert all(0.0 < v <= 1.0 for v in values)
    assert values[0] == 1.0
    assert all(b <= a for a, b in itertools.pairwise(values))
    assert f(np.int64(3)) == f(3)


def test_never_exactly_zero() -> None:
    assert 0.0 < polynomial(a=1000.0)(10**6) <= 1.0
    assert 0.0 < hinge(a=1e300, b=0)(10**9) <= 1.0


@pytest.mark.parametrize("f", [constant(), polynomial(), hinge()])
def test_bad_staleness_raises(f: object) -> None:
    for bad in (-1, -100):
        with pytest.raises(ValueError, match=">= 0"):
            f(bad)  # type: ignore[operator]
    for bad in (1.5, "3", True, None):
        with pytest.raises(ValueError, match="integer"):
            f(bad)  # type: ignore[operator]


def test_make_staleness() -> None:
    f = make_staleness("polynomial", a=1.0)
    assert isinstance(f, Polynomial) and f(1) == pytest.approx(0.5)
    h = make_staleness("hinge", a=2.0, b=1)
    assert isinstance(h, Hinge) and h(3) == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match=r"unknown staleness function 'exp'.*constant.*hinge"):
        make_staleness("exp")
    with pytest.raises(ValueError, match="unexpected keyword"):
        make_staleness("constant", a=1.0)
    for name, params in [
        ("polynomial", {"a": -1.0}),
        ("hinge", {"b": -1.0}),
        ("hinge", {"a": math.nan}),
    ]:
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            make_staleness(name, **params)
