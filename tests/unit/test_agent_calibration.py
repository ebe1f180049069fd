"""The agent's calibration wiring, driven directly (no broker: nothing is connected, the
link only queues what it would send): reset on held-out heats at every swap, new heats'
residuals and coverage, the serving files, the snapshot requests are answered from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.service import Agent
from alchimia.agent.settings import AgentSettings
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.broker.schemas import ModelBody, decode
from alchimia.models.served import load_served
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model

SPEC = ModelSpec(architecture="eaf-hybrid-v1")


@pytest.fixture(scope="module")
def model() -> bytes:
    return first_model(SPEC)


def _agent(tmp_path: Path, model: bytes) -> Agent:
    settings = AgentSettings(
        agent_id="plant-1",
        history_heats=150,
        heat_interval_s=0,
        store_sensors=False,
        state_dir=tmp_path,
        status_interval_s=0.001,
        calibration_window=50,
    )
    agent = Agent(settings, build_heat_source(settings))
    agent._history = agent.source.history()
    agent._on_model(decode(model, ModelBody))
    return agent


def test_a_swap_calibrates_on_held_out_heats_and_saves_the_files(
    tmp_path: Path, model: bytes
) -> None:
    agent = _agent(tmp_path, model)
    cal = agent.calibrator
    assert agent.serving_version == 0 and cal is not None
    # 150 history heats, every fifth held out: 30, all under the window of 50.
    assert cal.held_out == 30 and cal.calibration.n == 30 and cal.calibration.version == 0
    x, y = agent.table.validation()
    expected = np.sort(y - agent.serving.predict(x), axis=0)
    assert np.allclose(np.sort(cal.calibration._res, axis=0), expected, atol=1e-4)
    served = load_served(tmp_path / "plant-1" / "serving")
    assert served.calibration.n == 30 and served.calibration.level == 0.9
    assert served.power_on.n == 120  # fitted on the training heats only
    state = agent.state
    assert state.version == 0 and state.calibration.n == 30 and state.power_on is not None
    assert state.calibration is not cal.calibration  # a snapshot, not the live object


def test_new_heats_add_residuals_score_coverage_and_a_refit_resets(
    tmp_path: Path, model: bytes
) -> None:
    agent = _agent(tmp_path, model)
    cal = agent.calibrator
    profile, seed = default_plants(1)[0]
    heats = SimulatedPlant(profile, seed + 1).heats(40)
    before = agent.state
    agent._waiting = list(heats)
    agent._ingest()
    assert cal.added == 40 and cal.calibration.n == 50  # window: newest 50 of 30 + 40
    assert cal.coverage.n == 40 and 0.0 <= cal.coverage.recent().min() <= 1.0
    assert agent.state is not before and agent.state.calibration.n == 50
    assert cal.held_out == 38  # 8 of the 40 new heats were held out
    saved = json.loads((tmp_path / "plant-1/serving/calibration.json").read_text())
    assert len(saved["residuals"]["cu_pct"]) == 50  # written as heats arrive
    # A new site part serves at once: recalibrated on the held-out heats, not the stream.
    site = (
        {k: v + 0.01 for k, v in agent.site_weights.items()}
        if agent.site_weights
        else {k: np.full(s, 0.01, np.float32) for k, s in SPEC.parameter_shapes("site").items()}
    )
    agent._keep_site_part(site)
    # 38 held out, filled up to the window with 12 of the 32 new training heats' residuals.
    assert cal.resets == 2 and cal.calibration.n == 50 and cal.calibration.version == 0
    assert agent.state.calibration.n == 50
    x, y = agent.table.validation()
    held = np.sort(y[-38:] - agent.serving.predict(x[-38:]), axis=0)
    assert np.allclose(np.sort(cal.calibration._res[-38:], axis=0), held, atol=1e-4)
