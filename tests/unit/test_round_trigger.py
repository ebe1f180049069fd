"""When the next round opens (rounds follow the data), with a fake clock; and the registry
and selection parts of it."""

from __future__ import annotations

import random

import pytest

from alchimia.broker.schemas import StatusBody, decode, message
from alchimia.coordinator.registry import AgentInfo, Registry
from alchimia.coordinator.rounds import Selection
from alchimia.coordinator.trigger import RoundTrigger


def _decide(
    trigger: RoundTrigger,
    online: dict[str, int | None],
    *,
    min_agents: int = 2,
    now: float = 100.0,
    last_opened: float = 0.0,
    early: str | None = None,
):
    return trigger.decide(
        online, min_agents=min_agents, now=now, last_opened=last_opened, early=early
    )


def test_no_round_on_unchanged_data() -> None:
    d = _decide(RoundTrigger(), {"a": 0, "b": 0, "c": 0})
    assert not d.open and d.wait_s is None and d.fresh == frozenset()


def test_round_opens_when_min_agents_report_enough_new_heats() -> None:
    t = RoundTrigger(min_new_heats=3)
    assert not _decide(t, {"a": 5, "b": 2, "c": 0}).open  # only a has 3 or more
    d = _decide(t, {"a": 5, "b": 3, "c": 0})
    assert d.open and d.fresh == {"a", "b"}


def test_agents_that_never_report_new_heats_count_as_new_data() -> None:
    d = _decide(RoundTrigger(min_new_heats=10), {"old-1": None, "old-2": None})
    assert d.open and d.fresh == {"old-1", "old-2"}
    assert _decide(RoundTrigger(), {"old": None, "new": 0}, min_agents=1).fresh == {"old"}


def test_min_new_heats_zero_is_back_to_back_rounds() -> None:
    d = _decide(RoundTrigger(min_new_heats=0), {"a": 0, "b": 0})
    assert d.open and d.fresh == {"a", "b"}


def test_too_few_agents_online_never_opens_not_even_on_schedule_or_drift() -> None:
    t = RoundTrigger(schedule_s=10)
    assert not _decide(t, {"a": 9}, now=1e6, early="a").open


def test_schedule_opens_a_round_without_new_data_and_says_how_long_to_wait() -> None:
    t = RoundTrigger(schedule_s=60)
    waiting = _decide(t, {"a": 0, "b": 1}, now=45.0, last_opened=0.0)
    assert not waiting.open and waiting.wait_s == pytest.approx(15.0)
    assert waiting.fresh == {"b"}
    assert _decide(t, {"a": 0, "b": 0}, now=60.0, last_opened=0.0).open


def test_drift_report_opens_an_early_round_without_new_data() -> None:
    d = _decide(RoundTrigger(), {"a": 0, "b": 0}, early="b")
    assert d.open and "drift" in d.reason


def test_invalid_trigger() -> None:
    with pytest.raises(ValueError):
        RoundTrigger(min_new_heats=-1)
    with pytest.raises(ValueError):
        RoundTrigger(schedule_s=0)


def test_selection_prefers_agents_with_new_data() -> None:
    sel = Selection(fraction=0.5, min_agents=2)
    pool = [f"p{i}" for i in range(8)]
    for seed in range(20):
        rng = random.Random(seed)
        assert sel.choose(pool, rng, prefer={"p6", "p1"}) is not None
        picked = sel.choose(pool, rng, prefer={"p6", "p1"}) or []
        assert len(picked) == 4 and {"p1", "p6"} <= set(picked)
        assert set(sel.choose(pool, rng, prefer=set(pool[:6])) or []) <= set(pool[:6])
    # Everyone is taken when the fraction says so, new data or not.
    assert Selection(min_agents=2).choose(["b", "a"], random.Random(0), prefer={"a"}) == ["a", "b"]


def test_selection_without_preference_draws_as_before() -> None:
    pool = [f"p{i}" for i in range(10)]
    sel = Selection(fraction=0.3, min_agents=1)
    for prefer in ((), pool):
        assert sel.choose(pool, random.Random(4), prefer=prefer) == sel.choose(
            pool, random.Random(4)
        )


def _status(
    registry: Registry, agent: str, new_heats: int | None, ts: float, online: bool = True
) -> None:
    registry.update(AgentInfo(agent, online, 10, "x", ts, new_heats, ts))


def test_registry_keeps_the_latest_new_heats_of_online_agents() -> None:
    r = Registry()
    _status(r, "a", 4, 1.0)
    _status(r, "b", None, 1.0)
    _status(r, "c", 7, 1.0, online=False)
    assert r.new_heats() == {"a": 4, "b": None}
    _status(r, "a", 9, 2.0)
    assert r.new_heats()["a"] == 9


def test_an_update_sent_clears_new_heats_and_an_older_status_does_not_bring_them_back() -> None:
    r = Registry()
    _status(r, "a", 5, 1.0)
    r.update_sent("a", 2.0)
    assert r.new_heats() == {"a": 0}
    _status(r, "a", 5, 1.5)  # sent before the update, delivered after it
    assert r.new_heats() == {"a": 0}
    _status(r, "a", 2, 3.0)  # heats that came after the update
    assert r.new_heats() == {"a": 2}
    r.update_sent("a", 2.5)  # an update older than the latest status changes nothing
    assert r.new_heats() == {"a": 2}


def test_an_update_sent_by_an_agent_that_never_reports_new_heats_changes_nothing() -> None:
    r = Registry()
    _status(r, "old", None, 1.0)
    r.update_sent("old", 2.0)
    r.update_sent("unknown", 2.0)
    assert r.new_heats() == {"old": None}


def test_status_carries_new_heats_and_older_statuses_still_decode() -> None:
    env = decode(message("a", StatusBody(role="agent", state="online", new_heats=3)), StatusBody)
    assert env.body.new_heats == 3
    assert (
        decode(message("a", StatusBody(role="agent", state="online")), StatusBody).body.new_heats
        is None
    )
    with pytest.raises(ValueError):
        StatusBody(role="agent", state="online", new_heats=-1)
