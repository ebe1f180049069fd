from __future__ import annotations

import numpy as np

from alchimia.agent.learn.champion import judge, scaled_error

SCALE = np.array([10.0, 0.1])
ACTUAL = np.array([[100.0, 0.2], [110.0, 0.3], [90.0, 0.25]])


def test_scaled_error_weights_targets_by_their_scale() -> None:
    pred = ACTUAL + np.array([10.0, 0.0])
    assert scaled_error(pred, ACTUAL, SCALE) == 0.5  # (10/10 + 0/0.1) / 2


def test_clearly_worse_challenger_is_kept_out() -> None:
    champion = ACTUAL + np.array([1.0, 0.01])
    worse = ACTUAL + np.array([5.0, 0.05])
    verdict = judge(champion, worse, ACTUAL, SCALE, tolerance=0.1, min_heats=3)
    assert not verdict.swap and "exceeds the tolerance" in verdict.reason
    assert verdict.challenger_error > verdict.champion_error  # type: ignore[operator]


def test_similar_or_better_challenger_swaps_in() -> None:
    champion = ACTUAL + np.array([1.0, 0.01])
    assert judge(champion, ACTUAL + np.array([1.05, 0.01]), ACTUAL, SCALE, 0.1, 3).swap
    assert judge(champion, ACTUAL, ACTUAL, SCALE, 0.1, 3).swap


def test_too_few_heats_to_judge_on_always_swaps() -> None:
    assert judge(ACTUAL, ACTUAL * 9, ACTUAL, SCALE, 0.1, 4).swap
    assert not judge(ACTUAL, ACTUAL * 9, ACTUAL, SCALE, 0.1, 3).swap
