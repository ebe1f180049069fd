"""The coordinator's rate limit budgets each kind of an agent's messages apart
(issue 17, item 7): a flood of one kind never silences another."""

from __future__ import annotations

from pathlib import Path

from alchimia.broker.schemas import MetricsBody, StatusBody, message
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings


def test_a_metrics_flood_does_not_use_up_the_status_budget(tmp_path: Path) -> None:
    settings = CoordinatorSettings.load(
        None, federation="budget", state_dir=tmp_path, rate_limit_per_s=0.001, rate_limit_burst=5
    )
    c = Coordinator(settings)
    try:
        metrics = message(
            "a1", MetricsBody(model_version=0, scope="validation", values={"mae_energy_kwh_t": 1.0})
        )
        for _ in range(20):
            c.handle(c.topics.agent_metrics("a1"), metrics)
        limited = [r for r in c.rejections if r.reason == "rate limit exceeded"]
        assert len(limited) == 15  # the burst of 5 passed, the rest did not
        c.handle(
            c.topics.agent_status("a1"), message("a1", StatusBody(role="agent", state="online"))
        )
        assert "a1" in c.registry.online()
        assert len(c.rejections) == 15
        assert c.rejection_log.counts == {"rate_limited": 15}
    finally:
        c.db.close()
