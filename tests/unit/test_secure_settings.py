"""Which coordinator settings secure aggregation runs with (coordinator/settings.py)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from alchimia.coordinator.settings import SUM_STRATEGIES, CoordinatorSettings
from alchimia.coordinator.strategies import STRATEGIES, make_strategy
from alchimia.coordinator.strategies.fedavg import MeanAccumulator


def test_sum_strategies_are_exactly_those_that_aggregate_from_a_mean() -> None:
    weights = {"w": np.zeros(3, np.float32)}
    from_sum = {
        name
        for name in STRATEGIES
        if isinstance(make_strategy(name).open_round(weights), MeanAccumulator)
    }
    assert set(SUM_STRATEGIES) == from_sum


@pytest.mark.parametrize("strategy", SUM_STRATEGIES)
def test_secure_aggregation_runs_with_every_mean_strategy(strategy: str) -> None:
    assert CoordinatorSettings(
        secure_aggregation=True, strategy=strategy, min_agents=3
    ).secure_aggregation


def test_secure_aggregation_runs_with_dp_its_noise_distributed() -> None:
    s = CoordinatorSettings(
        secure_aggregation=True, min_agents=3, dp_clip_norm=1.0, dp_noise_multiplier=1.0
    )
    assert s.secure_aggregation and s.dp_noise_multiplier == 1.0


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"min_agents": 2}, "min_agents >= 3"),
        ({"mode": "async"}, "mode sync"),
        ({"strategy": "median"}, "needs only the sum"),
        ({"strategy": "krum"}, "needs only the sum"),
        ({"clip_norm": 1.0}, "no clip_norm"),
        ({"update_codec": "int8"}, "update_codec raw"),
    ],
)
def test_secure_aggregation_refuses_what_needs_each_update(
    change: dict[str, object], why: str
) -> None:
    with pytest.raises(ValidationError, match=why):
        CoordinatorSettings(secure_aggregation=True, **{"min_agents": 3, **change})
    CoordinatorSettings(secure_aggregation=False, **change)  # fine without it
