"""Drive the coordinator's lifecycle (coordinator.lifecycle) without I/O and with a fake
clock: the helpers tests/unit/test_lifecycle.py and test_lifecycle_secure.py share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alchimia.broker.schemas import Body, Envelope, StatusBody, UpdateBody, decode, message
from alchimia.coordinator.lifecycle import (
    Checkpoint,
    Command,
    Lifecycle,
    PublishModel,
    PublishStatus,
    PublishTask,
    SaveRound,
    SaveUpdate,
    SaveVersion,
    strategy_from,
)
from alchimia.coordinator.registry import Registry
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.coordinator.trigger import ValidationProgress
from alchimia.models.params import Weights

T0 = 1000.0  # the fake clock starts here
W0: Weights = {"w": np.zeros(4, np.float32), "b": np.ones(2, np.float32)}
# What ``on_built`` answers for a round's new version, in order: the version and the
# round's row saved, then the model, the status and the closed task (with the next one).
ROUND_BUILT = [SaveVersion, SaveRound, PublishModel, PublishStatus, PublishTask]


def make_lifecycle(version: int = 0, weights: Weights = W0, **settings: object) -> Lifecycle:
    """A lifecycle at ``version`` of ``weights``, two agents a round unless told."""
    s = CoordinatorSettings.load(
        None, federation="t", **{"min_agents": 2, "round_timeout_s": 60.0, **settings}
    )
    return Lifecycle(
        s,
        Checkpoint(version, weights, b"model", strategy_from(s)),
        registry=Registry(),
        progress=ValidationProgress(["y"], [1.0]),
        next_round_id=1,
        paused=False,
        now=T0,
    )


def env(sender: str, body: Body) -> Envelope:
    """``body`` as the coordinator decodes it."""
    return decode(message(sender, body))


def online(lc: Lifecycle, *agents: str, version: int | None = None) -> None:
    for agent in agents:
        lc.on_status(
            env(agent, StatusBody(role="agent", state="online", model_version=version)), T0
        )


def delta(scale: float, weights: Weights = W0) -> Weights:
    return {k: np.full(v.shape, scale, np.float32) for k, v in weights.items()}


def send(
    lc: Lifecycle, agent: str, scale: float, round_id: int = 1, base: int = 0, samples: int = 10
) -> list[Command]:
    """An update through on_update and, if accepted, update_saved (what the service does)."""
    payload = message(
        agent,
        UpdateBody(round_id=round_id, base_version=base, num_samples=samples, delta=delta(scale)),
    )
    out: list[Command] = [*lc.on_update(decode(payload, UpdateBody), payload, replayed=False)]
    for command in list(out):
        if isinstance(command, SaveUpdate):
            out += lc.update_saved(command)
    return out


def of(kind: type, commands: Sequence[Command]) -> list:
    """The commands of one kind, in order."""
    return [c for c in commands if isinstance(c, kind)]


def opened(lc: Lifecycle, now: float = T0) -> list[Command]:
    """Tick at ``now``, which must open a round."""
    out = lc.tick(now)
    assert of(SaveRound, out)[0].state == "open"
    return out
