"""A real Agent driven in process, without a broker: the helper tests/unit/test_agent_faults.py
and test_agent_secagg.py share."""

from __future__ import annotations

from pathlib import Path

from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.service import Agent
from alchimia.agent.settings import AgentSettings


def offline_agent(state_dir: Path, agent_id: str = "plant-1") -> Agent:
    """An Agent on simulated heats (30 of history, loaded, no heat interval, no sensor
    store) whose link is connected to nothing: it only queues what it would send."""
    settings = AgentSettings(
        agent_id=agent_id,
        history_heats=30,
        heat_interval_s=0,
        store_sensors=False,
        state_dir=state_dir,
    )
    agent = Agent(settings, build_heat_source(settings))
    agent._history = agent.source.history()
    return agent
