"""The synchronous round state machine, driven with a fake clock."""

from __future__ import annotations

import random

import pytest

from alchimia.coordinator.rounds import RoundState, Selection, SyncRound


def _round(quorum: int = 2, deadline: float = 100.0) -> SyncRound:
    return SyncRound(
        window_id=7,
        base_version=3,
        selected=frozenset({"a", "b", "c"}),
        quorum=quorum,
        deadline_ts=deadline,
    )


def test_round_is_ready_when_all_selected_answered_before_the_deadline() -> None:
    r = _round()
    for i, agent in enumerate("abc"):
        assert r.state(10.0) is RoundState.OPEN
        assert r.check(agent, 7, 3) is None
        r.accept(agent, f"m{i}", 3)
    assert r.state(10.0) is RoundState.READY


def test_deadline_with_quorum_is_ready_and_reports_stragglers() -> None:
    r = _round(quorum=2)
    r.accept("a", "m1", 3)
    r.accept("c", "m2", 3)
    assert r.state(99.9) is RoundState.OPEN
    assert r.state(100.0) is RoundState.READY
    assert r.missing == ["b"]


def test_deadline_below_quorum_fails() -> None:
    r = _round(quorum=2)
    r.accept("a", "m1", 3)
    assert r.state(100.0) is RoundState.FAILED


def test_late_update_after_close_is_rejected() -> None:
    r = _round()
    r.accept("a", "m1", 3)
    r.close()
    assert r.state(0.0) is RoundState.CLOSED
    assert r.check("b", 7, 3) == "round 7 is closed"
    assert getattr(r.check("b", 7, 3), "code", None) == "round_closed"  # counted under it


@pytest.mark.parametrize(
    ("sender", "round_id", "base", "reason"),
    [
        ("a", 6, 3, "open round is 7"),
        ("z", 7, 3, "not selected"),
        ("a", 7, 2, "round base is 3"),
    ],
)
def test_wrong_round_sender_or_base_rejected(
    sender: str, round_id: int, base: int, reason: str
) -> None:
    assert reason in (_round().check(sender, round_id, base) or "")


def test_duplicate_update_from_the_same_agent_rejected() -> None:
    r = _round()
    r.accept("a", "m1", 3)
    assert "already sent" in (r.check("a", 7, 3) or "")
    assert r.accepted == {"m1": "a"}  # message id -> agent, as in async windows


def test_quorum_must_fit_the_selection() -> None:
    with pytest.raises(ValueError, match="quorum"):
        _round(quorum=4)


def test_selection_waits_for_enough_agents_and_respects_bounds() -> None:
    rng = random.Random(1)
    assert Selection(min_agents=3).choose(["a", "b"], rng) is None
    assert Selection(min_agents=2).choose(["b", "a", "c"], rng) == ["a", "b", "c"]
    picked = Selection(fraction=0.5, min_agents=1, max_agents=3).choose(
        [f"p{i}" for i in range(10)], rng
    )
    assert picked is not None and len(picked) == 3 and picked == sorted(picked)
    assert len(Selection(fraction=0.1, min_agents=2).choose(list("abcdef"), rng) or []) == 2
    with pytest.raises(ValueError):
        Selection(fraction=0)
