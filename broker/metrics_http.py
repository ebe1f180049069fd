"""Prometheus metrics over HTTP for a long-running service (coordinator or agent).

Each service has one custom collector (``coordinator.metrics``, ``agent.metrics``) that
reads the service's own state when Prometheus scrapes, so the service keeps no second set
of counters. Every server has a registry of its own, not prometheus_client's global one:
several agents in one process (the demo, the tests) each serve their own figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.registry import Collector

from alchimia.broker.http_thread import ServedInThread
from alchimia.broker.settings import ServiceSettings


class MetricsServer(ServedInThread):
    """``/metrics`` on ``host:port`` from a thread of its own, until ``close``."""

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)  # CPU, memory, open files (Linux)
        try:
            super().__init__(*start_http_server(port, host, self.registry))
        except OSError as exc:  # a settings problem: say which
            raise ValueError(f"cannot serve metrics on {host}:{port}: {exc}") from None


def serve_metrics(collector: Collector, settings: ServiceSettings) -> MetricsServer | None:
    """The service's metrics server, or None when ``metrics_port`` is 0 or unset."""
    if not settings.metrics_port:
        return None
    return MetricsServer(collector, settings.metrics_host, settings.metrics_port)
