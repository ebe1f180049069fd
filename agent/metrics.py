"""An agent's Prometheus metrics (README, "Operations: watching a federation").

:class:`AgentCollector` reads the agent's own state when Prometheus scrapes
(``broker.metrics_http`` serves it): versions, heats, the prequential error, drift events,
updates sent, models refused, requests answered, and its sensor store's figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from alchimia.agent.ingest.pipeline import StorePipeline
from alchimia.agent.ingest.sources import HeatSource
from alchimia.agent.store import InfluxStore

if TYPE_CHECKING:
    from alchimia.agent.service import Agent


@dataclass(frozen=True)
class StoreFigures:
    """Points by result (``stored``: the store took them, i.e. written to SQLite or
    spooled on disk for InfluxDB; ``sent``: acknowledged by InfluxDB; ``rejected``:
    refused by InfluxDB and moved to the spool's ``rejected/``), and spooled bytes not
    yet acknowledged (0 without a spool)."""

    points: dict[str, int]
    spool_bytes: int


def store_figures(source: HeatSource) -> StoreFigures | None:
    """The figures of the agent's sensor store; None when heats bypass any store."""
    if not isinstance(source, StorePipeline):
        return None
    points = {"stored": source.points_written}
    store = source.store
    if not isinstance(store, InfluxStore):
        return StoreFigures(points, 0)
    stats = store.stats
    points.update(sent=stats.sent_points, rejected=stats.rejected_points)
    return StoreFigures(points, store.spool.pending_bytes)


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


class AgentCollector(Collector):
    """Reads a running :class:`~agent.service.Agent` at each scrape."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        yield from _gauge(
            "alchimia_model_version", "Latest global model version adopted", a.model_version
        )
        yield from _gauge(
            "alchimia_serving_version",
            "Global model version serving predictions at this site",
            a.serving_version,
        )
        yield GaugeMetricFamily(
            "alchimia_mqtt_connected",
            "1 while connected to the federation's broker",
            value=int(a.link.connected),
        )
        table = a.table
        yield CounterMetricFamily(
            "alchimia_heats",
            "Finished heats learned of (history included)",
            value=table.seen if table is not None else 0,
        )
        yield CounterMetricFamily(
            "alchimia_updates_sent", "Weight deltas sent", value=a.updates_sent
        )
        yield CounterMetricFamily(
            "alchimia_models_rejected",
            "Global models refused (bad signature, or older than the one adopted)",
            value=a.models_rejected,
        )
        yield CounterMetricFamily(
            "alchimia_challengers_rejected",
            "New global versions not served here: clearly worse on the latest heats",
            value=a.challengers_rejected,
        )
        learner = a.learner
        if learner is not None:
            yield from self._prequential(learner.prequential.snapshot())
            yield CounterMetricFamily(
                "alchimia_drift_events", "Drift events detected", value=learner.drift_events
            )
        requests = CounterMetricFamily(
            "alchimia_requests",
            "Requests (infer, optimize) by result: answered, error_{code}, unanswerable",
            labels=["result"],
        )
        for result, n in sorted(dict(a.responder.counts).items()):
            requests.add_metric([result], n)
        yield requests
        store = store_figures(a.source)
        if store is not None:
            points = CounterMetricFamily(
                "alchimia_store_points",
                "Sensor points by result: "
                "stored (SQLite, or spooled for InfluxDB), sent "
                "(acknowledged by InfluxDB), rejected (refused by "
                "InfluxDB)",
                labels=["result"],
            )
            for result, n in store.points.items():
                points.add_metric([result], n)
            yield points
            yield GaugeMetricFamily(
                "alchimia_spool_bytes",
                "Bytes spooled on disk, not yet acknowledged by InfluxDB",
                value=store.spool_bytes,
            )

    @staticmethod
    def _prequential(snapshot: dict[str, float]) -> Iterator[Metric]:
        """Absolute errors of the predictions made before each outcome was known, per
        target: a summary (sum and count: their ratio is the MAE over any range) and the
        MAE over the latest heats."""
        n = int(snapshot["n"])
        errors = SummaryMetricFamily(
            "alchimia_prediction_abs_error",
            "Absolute error of "
            "each heat's prediction (engineering units), made "
            "before its outcome was known",
            labels=["target"],
        )
        recent = GaugeMetricFamily(
            "alchimia_prediction_abs_error_recent",
            "Mean absolute error over the latest heats (the prequential window)",
            labels=["target"],
        )
        for key, mae in snapshot.items():
            if not key.startswith("mae_") or key.startswith("mae_recent_"):
                continue
            target = key[len("mae_") :]
            errors.add_metric(
                [target], count_value=n, sum_value=mae * n if math.isfinite(mae) else 0.0
            )
            last = snapshot[f"mae_recent_{target}"]
            if math.isfinite(last):
                recent.add_metric([target], last)
        yield errors
        yield recent
