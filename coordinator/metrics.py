"""The coordinator's Prometheus metrics (README, "Operations: watching a federation").

:class:`CoordinatorStats` is the little the service counts beyond its own state (rounds
by outcome, their durations, updates by outcome), without I/O; :class:`CoordinatorCollector`
reads the service at scrape time (``broker.metrics_http`` serves it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from alchimia.coordinator.service import Coordinator

ROUND_RESULTS = ("closed", "failed", "abandoned")
# Seconds from a round's opening to its new version being published.
ROUND_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class CoordinatorStats:
    """Counts since the coordinator started: rounds by result (and the duration of those
    that produced a version), updates accepted and rejected by reason."""

    def __init__(self) -> None:
        self.rounds: Counter[str] = Counter()
        self.round_buckets = [0] * len(ROUND_BUCKETS)  # not cumulative
        self.round_seconds = 0.0
        self.updates_accepted = 0
        self.updates_rejected: Counter[str] = Counter()  # by reason code

    def round_finished(self, result: str, seconds: float) -> None:
        """A round (or async window) ended: ``closed`` (a new version), ``failed`` (no
        quorum by the deadline) or ``abandoned`` (a rollback); ``seconds`` since it opened."""
        if result not in ROUND_RESULTS:
            raise ValueError(f"unknown round result {result!r}")
        self.rounds[result] += 1
        if result == "closed":
            self.round_seconds += seconds
            for i, le in enumerate(ROUND_BUCKETS):
                if seconds <= le:
                    self.round_buckets[i] += 1
                    break

    def update_accepted(self) -> None:
        self.updates_accepted += 1

    def message_rejected(self, topic: str, code: str) -> None:
        """A message dropped under reason ``code`` (``broker.rejections``): counted here
        when it was an update (all of them: ``Coordinator.rejection_log``)."""
        if topic.endswith("/update"):
            self.updates_rejected[code] += 1

    def round_histogram(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` buckets (``+Inf`` last) and the sum, for Prometheus."""
        buckets, total = [], 0
        for le, n in zip(ROUND_BUCKETS, self.round_buckets, strict=True):
            total += n
            buckets.append((repr(le), float(total)))
        buckets.append(("+Inf", float(self.rounds["closed"])))
        return buckets, self.round_seconds


class CoordinatorCollector(Collector):
    """Reads a running :class:`~coordinator.service.Coordinator` at each scrape."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator
        stats = c.stats
        yield GaugeMetricFamily(
            "alchimia_model_version", "Current global model version", value=c.version
        )
        window = c.window
        yield GaugeMetricFamily(
            "alchimia_round_open",
            "1 while a round (sync) or buffer window (async) is open",
            value=int(window is not None and not window.closed),
        )
        rounds = CounterMetricFamily(
            "alchimia_rounds",
            "Rounds and async windows ended since the coordinator started, by result",
            labels=["result"],
        )
        for result in ROUND_RESULTS:
            rounds.add_metric([result], stats.rounds[result])
        yield rounds
        buckets, seconds = stats.round_histogram()
        yield HistogramMetricFamily(
            "alchimia_round_duration_seconds",
            "Seconds from a round's opening to its new "
            "version being published (rounds that produced a version)",
            buckets=buckets,
            sum_value=seconds,
        )
        updates = CounterMetricFamily(
            "alchimia_updates",
            "Updates received since the coordinator started, by result and rejection reason",
            labels=["result", "reason"],
        )
        updates.add_metric(["accepted", ""], stats.updates_accepted)
        for reason, n in sorted(stats.updates_rejected.items()):
            updates.add_metric(["rejected", reason], n)
        yield updates
        rejected = CounterMetricFamily(
            "alchimia_rejections",
            "Messages the coordinator "
            "dropped (updates, statuses, metrics, admin commands), "
            "by reason",
            labels=["reason"],
        )
        for reason, n in sorted(c.rejection_log.snapshot().items()):
            rejected.add_metric([reason], n)
        yield rejected
        agents = c.registry.all()
        known = GaugeMetricFamily(
            "alchimia_agents",
            "Agents known to the coordinator, by state (their retained status)",
            labels=["state"],
        )
        online = sum(a.online for a in agents)
        known.add_metric(["online"], online)
        known.add_metric(["offline"], len(agents) - online)
        yield known
