"""The coordinator's lifecycle (coordinator.lifecycle) driven without I/O and with a fake
clock: quorum and deadline, crash and resume, replays, a rollback in the middle of a round,
admin pause and stop."""

from __future__ import annotations

import numpy as np
import pytest

from alchimia.broker.schemas import (
    AdminBody,
    MetricsBody,
    ModelBody,
    UpdateBody,
    decode,
    message,
)
from alchimia.coordinator.lifecycle import (
    BuildModel,
    DropPending,
    LeftOpen,
    Lifecycle,
    LoadVersion,
    PublishModel,
    PublishStatus,
    PublishTask,
    Reject,
    SavePaused,
    SaveRound,
    SaveUpdate,
    SaveVersion,
    Stop,
    Wake,
)
from tests.unit.lifecycle_driver import ROUND_BUILT, T0, W0
from tests.unit.lifecycle_driver import delta as _delta
from tests.unit.lifecycle_driver import env as _env
from tests.unit.lifecycle_driver import make_lifecycle as _lifecycle
from tests.unit.lifecycle_driver import of as _of
from tests.unit.lifecycle_driver import online as _online
from tests.unit.lifecycle_driver import opened as _opened
from tests.unit.lifecycle_driver import send as _send


def test_a_round_opens_once_enough_agents_are_online_and_its_task_is_published() -> None:
    lc = _lifecycle()
    _online(lc, "a1")
    assert lc.tick(T0) == [] and lc.next_deadline() is None  # waits for an event
    _online(lc, "a2")
    out = _opened(lc)
    task = _of(PublishTask, out)[0].task
    # Every online agent is selected: the task says so instead of listing them.
    assert (task.round_id, task.state, task.selected_all, task.selected) == (1, "open", True, [])
    assert task.deadline_ts == T0 + 60 and lc.next_deadline() == T0 + 60
    assert isinstance(out[-1], PublishStatus)  # fresh rejection counts beside the task
    assert lc.tick(T0 + 1) == []  # nothing new: nothing to do


def test_an_update_counts_only_once_saved_and_a_replay_is_rejected() -> None:
    lc = _lifecycle()
    _online(lc, "a1", "a2")
    _opened(lc)
    payload = message(
        "a1", UpdateBody(round_id=1, base_version=0, num_samples=10, delta=_delta(1.0))
    )
    env = decode(payload, UpdateBody)
    [save] = lc.on_update(env, payload, replayed=False)
    assert isinstance(save, SaveUpdate) and save.payload == payload
    assert lc.window is not None and lc.window.accepted == {}  # not staged yet
    assert lc.update_saved(save) == [Wake()]
    assert lc.window.accepted == {env.msg_id: "a1"}
    [reject] = lc.on_update(env, payload, replayed=True)
    assert isinstance(reject, Reject) and reject.code == "replayed"
    assert _of(Reject, _send(lc, "a1", 2.0))[0].code == "duplicate"


def test_failed_quorum_at_the_deadline_drops_the_updates_and_the_next_round_opens() -> None:
    lc = _lifecycle()
    _online(lc, "a1", "a2")
    _opened(lc)
    _send(lc, "a1", 1.0)
    assert lc.tick(T0 + 59.9) == []
    out = lc.tick(T0 + 60)
    failed = _of(SaveRound, out)[0]
    assert (failed.round_id, failed.state, failed.accepted) == (1, "failed", ["a1"])
    assert _of(DropPending, out) == [DropPending(1)]
    assert [t.task.state for t in _of(PublishTask, out)] == ["closed", "open"]
    assert not _of(BuildModel, out) and lc.version == 0
    assert lc.stats.rounds["failed"] == 1 and lc.next_round_id == 3  # round 2 is open


def test_a_round_aggregates_builds_saves_then_publishes() -> None:
    lc = _lifecycle()
    _online(lc, "a1", "a2")
    _opened(lc)
    _send(lc, "a1", 1.0, samples=10)
    _send(lc, "a2", 4.0, samples=30)
    [build] = lc.tick(T0 + 5)
    assert isinstance(build, BuildModel) and (build.version, build.parent) == (1, 0)
    assert build.metadata["contributors"] == ["a1", "a2"]
    np.testing.assert_allclose(build.weights["w"], (10 * 1 + 30 * 4) / 40)
    assert lc.tick(T0 + 6) == [] and lc.version == 0  # waits for the build
    out = lc.on_built(build, b"v1", T0 + 7)
    assert [type(c) for c in out] == ROUND_BUILT
    assert out[0].payload == b"v1" and out[1].state == "closed"
    assert lc.version == 1 and lc.model_payload == b"v1" and lc.rounds_completed == 1


def _crash_mid_round() -> tuple[LeftOpen, Lifecycle]:
    """A round with a1's update saved, then the process gone: what the database keeps."""
    first = _lifecycle()
    _online(first, "a1", "a2")
    opened = _of(SaveRound, _opened(first))[0]
    save = _of(SaveUpdate, _send(first, "a1", 1.0))[0]
    left = LeftOpen(
        opened.round_id,
        opened.mode,
        opened.base_version,
        opened.selected,
        opened.opened_ts,
        opened.deadline_ts,
        False,
        [(save.msg_id, save.agent_id, save.base_version, save.weight, save.payload)],
    )
    return left, _lifecycle()


def test_crash_and_resume_keeps_the_accepted_update_and_its_deadline() -> None:
    left, lc = _crash_mid_round()
    assert lc.resume(left, T0 + 30) == []
    assert lc.window is not None and lc.window.contributors == ["a1"]
    assert lc.next_deadline() == T0 + 60  # the round's own deadline, not a new one
    assert [t.task.state for t in _of(PublishTask, lc.announce())] == ["open"]
    assert _of(Reject, _send(lc, "a1", 9.0))[0].code == "duplicate"
    _send(lc, "a2", 3.0)
    [build] = lc.tick(T0 + 31)
    assert isinstance(build, BuildModel)
    np.testing.assert_allclose(build.weights["w"], 2.0)  # each update counted once


def test_resume_closes_an_aggregated_round_and_abandons_an_outdated_one() -> None:
    left, lc = _crash_mid_round()
    aggregated = LeftOpen(**{**left.__dict__, "aggregated": True, "pending": []})
    [closed] = lc.resume(aggregated, T0 + 1)
    assert isinstance(closed, SaveRound) and closed.state == "closed" and lc.window is None
    out = _lifecycle(version=3).resume(left, T0 + 1)  # base 0 is no longer current
    assert out[0] == DropPending(1) and out[1].state == "abandoned"


def test_rollback_in_the_middle_of_a_round_abandons_it_then_publishes_a_new_version() -> None:
    lc = _lifecycle(version=5)
    _online(lc, "a1", "a2")
    _opened(lc)
    _send(lc, "a1", 1.0, base=5)
    rollback = _env("admin", AdminBody(action="rollback", version=2))
    assert _of(Reject, lc.on_admin(rollback, version_exists=False))[0].code == ("unknown_version")
    assert lc.on_admin(rollback, version_exists=True) == [Wake()]
    out = lc.tick(T0 + 10)
    assert _of(SaveRound, out)[0].state == "abandoned" and _of(DropPending, out)
    assert out[-1] == LoadVersion(2) and lc.tick(T0 + 11) == []
    v2 = {k: v + 2 for k, v in W0.items()}
    stored = message("c", ModelBody(version=2, spec={}, onnx=b"x", weights=v2))
    [build] = lc.on_loaded(2, stored, None, T0 + 12)
    assert isinstance(build, BuildModel) and (build.version, build.parent) == (6, 5)
    assert build.metadata["rollback_of"] == 2 and build.round_id is None
    out = lc.on_built(build, b"v6", T0 + 13)
    assert [type(c) for c in out] == [SaveVersion, PublishModel, PublishStatus]
    assert lc.version == 6
    np.testing.assert_array_equal(lc.weights["b"], v2["b"])
    task = _of(PublishTask, _opened(lc, T0 + 14))[0].task  # the next round starts there
    assert (task.round_id, task.base_version) == (2, 6)


def test_a_reported_replay_or_an_agent_left_behind_gets_the_model_again() -> None:
    lc = _lifecycle(version=4, min_agents=3)  # no round opens meanwhile
    _online(lc, "a1", version=4)
    lc.on_metrics(_env("a1", MetricsBody(model_version=2, scope="model_rejected", values={})), T0)
    assert _of(PublishModel, lc.tick(T0)) == [PublishModel(b"model")]
    assert lc.tick(T0 + 1) == [] and lc.next_deadline() is None
    _online(lc, "a2", version=3)  # joined while the broker held version 3
    assert lc.next_deadline() == T0 + 10  # ten seconds after the last publication
    assert lc.tick(T0 + 9) == []
    assert _of(PublishModel, lc.tick(T0 + 10)) == [PublishModel(b"model")]
    assert lc.next_deadline() == T0 + 20


def test_pause_keeps_rounds_closed_and_stop_comes_after_the_open_round() -> None:
    lc = _lifecycle(round_interval_s=30.0)
    _online(lc, "a1", "a2")
    assert SavePaused(True) in lc.on_admin(_env("admin", AdminBody(action="pause")), True)
    assert lc.tick(T0) == [PublishStatus()] and lc.activity == "paused"  # the confirmation
    assert lc.tick(T0 + 100) == [] and lc.window is None
    lc.on_admin(_env("admin", AdminBody(action="resume")), True)
    _opened(lc, T0 + 101)
    lc.on_admin(_env("admin", AdminBody(action="stop")), True)
    assert lc.tick(T0 + 102) == [PublishStatus()] and lc.activity == "stopping"
    _send(lc, "a1", 1.0)
    _send(lc, "a2", 1.0)
    [build] = lc.tick(T0 + 103)
    out = lc.on_built(build, b"v1", T0 + 104)
    assert lc.tick(T0 + 104) == [Stop()]  # no pause between rounds to wait for
    assert out and lc.tick(T0 + 200) == [] and lc.next_deadline() is None


def test_a_drift_report_cuts_the_pause_between_rounds_short() -> None:
    lc = _lifecycle(round_interval_s=300.0)
    _online(lc, "a1", "a2")
    _opened(lc)
    _send(lc, "a1", 1.0)
    _send(lc, "a2", 1.0)
    [build] = lc.tick(T0 + 1)
    lc.on_built(build, b"v1", T0 + 2)
    assert lc.tick(T0 + 3) == [] and lc.next_deadline() == T0 + 302
    lc.on_metrics(
        _env("a2", MetricsBody(model_version=1, scope="drift", values={"mae": 9.0})), T0 + 4
    )
    assert _of(SaveRound, _opened(lc, T0 + 4))[0].round_id == 2


def test_a_task_lists_the_selected_agents_when_not_every_online_agent_is() -> None:
    lc = _lifecycle(max_agents=2)
    _online(lc, "a1", "a2", "a3")
    task = _of(PublishTask, _opened(lc))[0].task
    assert not task.selected_all and len(task.selected) == 2
    [left_out] = {"a1", "a2", "a3"} - set(task.selected)
    assert [r.code for r in _of(Reject, _send(lc, left_out, 1.0))] == ["not_selected"]


def test_an_async_window_invites_agents_that_come_online_later() -> None:
    lc = _lifecycle(mode="async", min_agents=1, buffer_k=2)
    _online(lc, "a1")
    task = _of(PublishTask, _opened(lc))[0].task
    assert task.selected_all and task.selects("a2")  # the retained task invites latecomers
    assert lc.next_deadline() is None  # a window has no deadline
    _online(lc, "a2")
    assert _of(PublishTask, lc.tick(T0 + 1)) == []  # the same task: nothing to republish
    assert _of(SaveUpdate, _send(lc, "a2", 1.0))


@pytest.mark.parametrize("base", [0, 1])
def test_both_window_kinds_key_accepted_by_message_id(base: int) -> None:
    lc = _lifecycle(mode="async" if base else "sync", min_agents=1)
    _online(lc, "a1")
    _opened(lc)
    save = _of(SaveUpdate, _send(lc, "a1", 1.0))[0]
    assert lc.window is not None and lc.window.accepted == {save.msg_id: "a1"}


def test_with_dp_the_task_tells_the_agents_and_each_version_reports_the_budget() -> None:
    lc = _lifecycle(dp_clip_norm=1.0, dp_noise_multiplier=2.0)
    _online(lc, "a1", "a2")
    task = _of(PublishTask, _opened(lc))[0].task
    assert (task.dp_clip_norm, task.dp_noise_multiplier) == (1.0, 2.0)
    _send(lc, "a1", 1.0)
    _send(lc, "a2", 1.0)
    [build] = _of(BuildModel, lc.tick(T0 + 1))
    dp = build.metadata["dp"]
    assert (dp["rounds"], dp["noise_multiplier"], dp["clip_norm"]) == (1, 2.0, 1.0)
    assert dp["epsilon"] == pytest.approx(lc.privacy.epsilon_of("a1")) and dp["epsilon"] > 0
    assert lc.privacy.worst()[1] == 1  # each plant sent one update


def test_without_dp_nothing_is_accounted() -> None:
    lc = _lifecycle()
    _online(lc, "a1", "a2")
    task = _of(PublishTask, _opened(lc))[0].task
    assert task.dp_clip_norm is None and task.dp_noise_multiplier is None
    _send(lc, "a1", 1.0)
    _send(lc, "a2", 1.0)
    [build] = _of(BuildModel, lc.tick(T0 + 1))
    assert "dp" not in build.metadata and lc.privacy.spent == {}
