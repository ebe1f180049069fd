"""A personalised federation over a real Mosquitto: 3 agents, eaf-hybrid-v1.

Every agent serves the global shared part with its own site part, and keeps that model as
ONNX in its state directory: the shared tensors there equal the global model's, the site
tensors differ from site to site, and none of them ever travels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from alchimia.models.spec import ModelSpec
from alchimia.monitor import Monitor
from tests.integration.helpers import RawClient, wait_for

FEDERATION = "personal"


def _initializers(path: Path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def test_each_site_serves_the_global_shared_part_with_its_own_site_part(
    mosquitto, tmp_path: Path
) -> None:
    fed = LocalFederation(
        mosquitto.url,
        FEDERATION,
        3,
        tmp_path / "coord",
        coordinator={
            "min_agents": 3,
            "epochs": 2,
            "lr": 5e-3,
            "round_timeout_s": 60,
            "rounds": 2,
            "architecture": "eaf-hybrid-v1",
        },
        agent={"history_heats": 120, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    monitor = Monitor(mosquitto.url, FEDERATION, f"{FEDERATION}-monitor").start()
    spy = RawClient(mosquitto.host, mosquitto.port, f"{FEDERATION}-spy")
    spy.subscribe(Topics(FEDERATION).all_agents("update"))
    ids = [s.agent_id for s in fed.agent_settings]
    try:
        fed.start_coordinator()
        fed.start_agents()
        wait_for(lambda: monitor.model is not None and monitor.model.version == 2, 180, "version 2")
        files = [a.agent.files for a in fed.agents]
        wait_for(
            lambda: all(
                f.info_path.exists() and json.loads(f.info_path.read_text())["version"] == 2
                for f in files
            ),
            60,
            "every site serving version 2",
        )
        served = [_initializers(f.onnx_path) for f in files]
        infos = [json.loads(f.info_path.read_text()) for f in files]
        updates = [p for a in ids for p in spy.received(Topics(FEDERATION).agent_update(a))]
    finally:
        fed.stop()
        monitor.stop()
        spy.close()
    model = monitor.model
    spec = ModelSpec.model_validate(model.spec)
    assert spec.architecture == "eaf-hybrid-v1"
    assert list(model.weights) == list(spec.parameter_shapes("shared"))  # no site tensor
    site_names = list(spec.parameter_shapes("site"))
    for info, tensors in zip(infos, served, strict=True):
        assert info["spec"] == model.spec and info["site_tensors"] == site_names
        # ONNX export merges initializers of equal value, so a tensor still at its initial
        # zeros may go by another name; trained tensors keep their own.
        assert set(site_names) <= set(tensors)
        assert len(set(model.weights) & set(tensors)) >= len(model.weights) - 2
        for name, value in model.weights.items():  # the global shared part, as published
            if name in tensors:
                np.testing.assert_array_equal(tensors[name], value)
    for name in site_names:  # each site's own part
        values = [t[name] for t in served]
        if name in ("bias_site", "linear_site", "content_site"):
            assert not np.allclose(values[0], values[1])
            assert not np.allclose(values[1], values[2])
    assert len(updates) >= 6
    for payload in updates:
        assert not any(name.encode() in payload for name in site_names)
