"""A model that does not fit the site's data is not adopted, and no heat is lost when a
step fails (issue 17 item 4). The agent is driven directly: no broker, nothing connected
(the link only queues what it would send)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alchimia.agent.learn.dataset import HeatTable
from alchimia.agent.records import STANDARD_CONTRACT, DataContract
from alchimia.agent.service import Agent
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.models.schema import FEATURES, TARGETS
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model_envelope
from tests.unit.agent_driver import offline_agent

RENAMED = (*FEATURES[:-1], "tap_temp_aim_k")  # one feature renamed, as the fuzzer did


def test_the_contract_names_what_a_model_asks_for_and_the_site_lacks() -> None:
    assert STANDARD_CONTRACT.check(FEATURES, TARGETS) is None
    assert STANDARD_CONTRACT.check(FEATURES[:5], TARGETS[:1]) is None  # fewer is fine
    assert STANDARD_CONTRACT.check(RENAMED, TARGETS) == (
        "1 feature(s) this site's data does not have: tap_temp_aim_k"
    )
    assert STANDARD_CONTRACT.check(FEATURES, (*TARGETS, "s_pct")) == (
        "1 target(s) this site's data does not have: s_pct"
    )
    assert STANDARD_CONTRACT.check((*FEATURES, FEATURES[0]), TARGETS) == (
        f"feature(s) listed twice: {FEATURES[0]}"
    )
    many = DataContract.of([], TARGETS).check([f"f{i}" for i in range(7)], TARGETS)
    assert many == "7 feature(s) this site's data does not have: f0, f1, f2, f3, f4, ..."


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return offline_agent(tmp_path)


def _heats(n: int) -> list:
    profile, seed = default_plants(1)[0]
    return list(SimulatedPlant(profile, seed + 1).heats(n))


def test_a_model_with_a_renamed_feature_is_rejected_and_heats_keep_coming_in(agent: Agent) -> None:
    agent._on_model(first_model_envelope(ModelSpec(), 1))
    assert agent.model_version == 1 and agent.table is not None
    bad = ModelSpec(features=RENAMED)  # mlp-v1 takes any columns: a valid model otherwise
    agent._on_model(first_model_envelope(bad, 2))
    assert agent.model_version == 1 and agent.serving_version == 1 and agent.spec == ModelSpec()
    assert agent.models_rejected == 1
    assert agent.rejections.counts == {"model_contract": 1}
    seen = agent.table.seen
    agent._waiting = _heats(20)
    agent._step()
    assert agent.table.seen == seen + 20 and not agent._waiting
    assert not agent.step_failures.counts


def test_the_first_model_is_checked_too(agent: Agent) -> None:
    agent._on_model(first_model_envelope(ModelSpec(features=RENAMED), 1))
    assert agent.model_version is None and agent.table is None
    agent._waiting = _heats(5)
    agent._step()  # the heats wait for a model that fits
    assert len(agent._waiting) == 5


class _Broken:
    """A serving model whose runtime fails (ONNX Runtime out of memory, say)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("ONNX Runtime failed")


def test_a_failing_step_is_counted_and_loses_no_heat(agent: Agent) -> None:
    agent._on_model(first_model_envelope(ModelSpec(), 1))
    seen, n_train = agent.table.seen, agent.table.n_train
    agent.serving = _Broken()  # type: ignore[assignment]
    agent._waiting = _heats(10)
    agent._step()
    assert agent.table.seen == seen + 10 and agent.table.n_train == n_train + 8
    assert not agent._waiting and len(agent.recent) == 10
    assert agent.step_failures.counts == {"predict": 1}
    agent.table = HeatTable(("not_a_column",), TARGETS)  # a heat that cannot be filed
    agent._waiting = _heats(3)
    agent._step()
    assert len(agent._waiting) == 3  # kept to be retried, not dropped
    assert agent.step_failures.counts["ingest"] == 1
