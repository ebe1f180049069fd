"""An agent's Prometheus collector and the figures its retained status carries, driven
directly (no broker: the link only queues what it would send)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.metrics import AgentCollector, store_figures
from alchimia.agent.service import Agent
from alchimia.agent.settings import AgentSettings
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.broker.embedded import free_port
from alchimia.broker.schemas import ModelBody, decode
from alchimia.models.spec import ModelSpec
from alchimia.status import FederationView
from tests.data.models import first_model
from tests.unit.test_coordinator_metrics import scrape

SPEC = ModelSpec(architecture="eaf-hybrid-v1")


def test_a_scrape_reads_heats_errors_and_the_store(tmp_path: Path) -> None:
    settings = AgentSettings(
        agent_id="plant-1",
        history_heats=60,
        heat_interval_s=0,
        signal_period_s=30.0,
        state_dir=tmp_path,
        status_interval_s=0.001,
    )
    agent = Agent(settings, build_heat_source(settings))  # the simulator through SQLite
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    try:
        assert ("alchimia_model_version", ()) not in scrape(registry)  # none adopted yet
        agent._history = agent.source.history()
        agent._on_model(
            decode(
                first_model(SPEC),
                ModelBody,
            )
        )
        profile, seed = default_plants(1)[0]
        agent._waiting = SimulatedPlant(profile, seed + 1).heats(20)
        agent._ingest()
        got = scrape(registry)
        assert got[("alchimia_model_version", ())] == 0
        assert got[("alchimia_serving_version", ())] == 0
        assert got[("alchimia_heats_total", ())] == 80  # 60 of history, 20 new
        assert got[("alchimia_drift_events_total", ())] == 0
        energy = (("target", "energy_kwh_t"),)
        # Only the 20 new heats were predicted before their outcome (history is not).
        assert got[("alchimia_prediction_abs_error_count", energy)] == 20
        mae = agent.learner.prequential.snapshot()["mae_energy_kwh_t"]
        assert got[("alchimia_prediction_abs_error_sum", energy)] / 20 == pytest.approx(mae)
        assert got[("alchimia_prediction_abs_error_recent", energy)] == pytest.approx(mae)
        stored = agent.source.points_written
        assert (
            stored > 0 and got[("alchimia_store_points_total", (("result", "stored"),))] == stored
        )
        assert got[("alchimia_spool_bytes", ())] == 0  # SQLite: nothing waits to be sent

        # The retained status carries what `alchimia status` shows, without metrics.
        view = FederationView(settings.federation)
        view.feed(agent.topics.agent_status("plant-1"), agent._status("online"))
        (seen,) = view.status().agents
        assert (seen.state, seen.model_version, seen.serving_version) == ("online", 0, 0)
        assert (seen.drift_events, seen.models_rejected, seen.heats) == (0, 0, agent.table.n_train)
        assert seen.metrics["validation"].values["n"] == 60 // 5  # when version 0 came
        assert seen.metrics["prequential"].values["n"] == 20
        assert np.isfinite(seen.metrics["validation"].values["mae_cu_pct"])
    finally:
        agent.source.close()
        agent.source.store.close()


def test_points_for_an_unreachable_influxdb_wait_in_the_spool(tmp_path: Path) -> None:
    settings = AgentSettings(
        agent_id="plant-1",
        history_heats=3,
        heat_interval_s=0,
        signal_period_s=30.0,
        state_dir=tmp_path,
        influx=f"http://127.0.0.1:{free_port()}",
    )
    source = build_heat_source(settings)
    try:
        source.ingest(write_now=True)
        figures = store_figures(source)
        assert figures is not None and figures.points["stored"] == source.points_written > 0
        assert figures.points["sent"] == figures.points["rejected"] == 0
        assert figures.spool_bytes > 0
    finally:
        source.close()
        source.store.close(timeout=0.1)


def test_heats_straight_from_the_simulator_have_no_store_figures(tmp_path: Path) -> None:
    settings = AgentSettings(store_sensors=False, state_dir=tmp_path)
    assert store_figures(build_heat_source(settings)) is None
