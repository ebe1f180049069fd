"""The asynchronous (FedBuff) window: staleness weighting, the maximum-staleness cut, K."""

from __future__ import annotations

import pytest

from alchimia.coordinator.fedbuff import AsyncWindow
from alchimia.coordinator.rounds import RoundState


def _window(k: int = 3, max_staleness: int = 2) -> AsyncWindow:
    return AsyncWindow(
        window_id=9,
        base_version=10,
        k=k,
        max_staleness=max_staleness,
        staleness=lambda s: (1 + s) ** -0.5,
    )


def test_stale_updates_are_down_weighted_by_the_staleness_function() -> None:
    w = _window()
    assert w.weight(10, 100) == pytest.approx(100.0)
    assert w.weight(9, 100) == pytest.approx(100 / 2**0.5)
    assert w.weight(8, 100) == pytest.approx(100 / 3**0.5)


def test_updates_staler_than_the_maximum_are_rejected_with_the_reason() -> None:
    w = _window(max_staleness=2)
    assert w.check("a", 0, 8) is None
    assert w.check("a", 0, 7) == "staleness 3 exceeds the maximum of 2"
    assert getattr(w.check("a", 0, 7), "code", None) == "too_stale"
    assert "newer than 10" in (w.check("a", 0, 11) or "")


def test_window_is_ready_after_k_updates_and_ignores_round_ids() -> None:
    w = _window(k=2)
    assert w.check("a", 123, 10) is None  # round id does not matter in async mode
    w.accept("a", "m1", 10)
    assert w.state(0) is RoundState.OPEN
    w.accept("b", "m2", 9)
    assert w.state(0) is RoundState.READY
    assert w.contributors == ["a", "b"]
    w.close()
    assert w.check("c", 0, 10) == "window 9 is closed"


def test_one_update_per_agent_and_base_version() -> None:
    w = _window()
    w.accept("a", "m1", 10)
    assert "already sent" in (w.check("a", 0, 10) or "")
    assert w.check("a", 0, 9) is None  # an older, slower training run still counts


def test_invalid_configuration_rejected() -> None:
    with pytest.raises(ValueError):
        _window(k=0)
