"""The coordinator's Prometheus collector, read off a real Coordinator fed messages
directly (nothing connected), and the round statistics it serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alchimia.broker.schemas import StatusBody, UpdateBody, decode, message
from alchimia.coordinator.metrics import CoordinatorCollector, CoordinatorStats
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of one scrape, parsed back from the text exposition format."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(CoordinatorSettings.load(None, federation="m", state_dir=tmp_path))
    yield c
    c.db.close()


def test_a_scrape_reads_versions_agents_and_rejected_updates(coordinator: Coordinator) -> None:
    c = coordinator
    registry = CollectorRegistry()
    registry.register(CoordinatorCollector(c))
    first = scrape(registry)
    assert first[("alchimia_model_version", ())] == 0
    assert first[("alchimia_round_open", ())] == 0
    assert first[("alchimia_rounds_total", (("result", "closed"),))] == 0
    assert first[("alchimia_updates_total", (("reason", ""), ("result", "accepted")))] == 0
    assert first[("alchimia_agents", (("state", "online"),))] == 0

    for agent, state in (("a1", "online"), ("a2", "online"), ("a2", "offline")):
        c.handle(
            c.topics.agent_status(agent), message(agent, StatusBody(role="agent", state=state))
        )
    update = UpdateBody(round_id=1, base_version=0, num_samples=10, delta=c.weights)
    c.handle(c.topics.agent_update("a1"), message("a1", update))  # no round is open
    c.handle(c.topics.agent_update("a1"), b"not msgpack")
    c.handle(c.topics.agent_metrics("a2"), b"\x00")
    garbage = c.rejections[-2].code
    got = scrape(registry)
    assert got[("alchimia_agents", (("state", "online"),))] == 1
    assert got[("alchimia_agents", (("state", "offline"),))] == 1
    assert got[("alchimia_updates_total", (("reason", "no_round"), ("result", "rejected")))] == 1
    assert got[("alchimia_updates_total", (("reason", garbage), ("result", "rejected")))] == 1
    # Every rejected message, updates or not, by reason (the coordinator's RejectionLog).
    assert sum(v for (name, _), v in got.items() if name == "alchimia_rejections_total") == 3
    assert got[("alchimia_rejections_total", (("reason", "no_round"),))] == 1
    # The retained status carries the rejections per known agent (`alchimia status`).
    body = decode(c._status("online"), StatusBody).body
    assert body.rejected == {"a1": 2, "a2": 1}


def test_round_results_and_durations() -> None:
    stats = CoordinatorStats()
    for result, seconds in (
        ("closed", 0.2),
        ("closed", 3.0),
        ("closed", 4000.0),
        ("failed", 120.0),
        ("abandoned", 1.0),
    ):
        stats.round_finished(result, seconds)
    buckets, total = stats.round_histogram()
    counts = dict(buckets)
    assert (counts["0.5"], counts["2.5"], counts["5.0"], counts["1800.0"]) == (1, 1, 2, 2)
    assert counts["+Inf"] == 3 and total == pytest.approx(4003.2)  # closed rounds only
    assert stats.rounds == {"closed": 3, "failed": 1, "abandoned": 1}
    with pytest.raises(ValueError, match="unknown round result"):
        stats.round_finished("lost", 1.0)
