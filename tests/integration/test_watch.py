"""Watching a running federation (issue 13, "See it"): ``alchimia status`` against a real
Mosquitto, coordinator and agents, and Debian's Prometheus scraping their /metrics."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alchimia.broker.embedded import free_port
from alchimia.broker.metrics_http import MetricsServer, serve_metrics
from alchimia.broker.settings import ServiceSettings
from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from alchimia.status import StatusSettings, collect
from tests.integration.helpers import RawClient, alchimia, wait_for

COORDINATOR = {"min_agents": 2, "epochs": 1, "round_timeout_s": 30}
AGENT = {"history_heats": 60, "heat_interval_s": 0.5, "signal_period_s": 30.0}
ENERGY = '{target="energy_kwh_t"}'


def _federation(url: str, name: str, tmp_path: Path, **coordinator: object) -> LocalFederation:
    return LocalFederation(
        url, name, 2, tmp_path / "coord", coordinator={**COORDINATOR, **coordinator}, agent=AGENT
    )


def _forge_update(mosquitto, federation: str, agent_id: str) -> None:
    """An update the coordinator must reject: it does not decode."""
    raw = RawClient(mosquitto.host, mosquitto.port, f"{federation}-forger")
    try:
        raw.publish(Topics(federation).agent_update(agent_id), b"not an update")
    finally:
        raw.close()


def test_status_shows_coordinator_round_and_every_agent(mosquitto, tmp_path: Path) -> None:
    fed = _federation(mosquitto.url, "watch", tmp_path)
    ids = {s.agent_id for s in fed.agent_settings}
    monitor = Monitor(mosquitto.url, "watch", "watch-monitor").start()
    settings = StatusSettings.load(None, broker=mosquitto.url, federation="watch")
    try:
        fed.start_coordinator()
        fed.start_agents()
        assert monitor.wait_validation(1, ids, 90), "no version 1"
        _forge_update(mosquitto, "watch", "plant-1")
        # The coordinator's retained status carries it from its next round on.
        wait_for(
            lambda: (
                (c := collect(settings, 0.3).coordinator) is not None and c.rejected.get("plant-1")
            ),
            60,
            "the rejection in the coordinator status",
        )

        proc = alchimia(
            "status", "--broker", mosquitto.url, "--federation", "watch", "--json", "--wait", "1"
        )
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        doc = json.loads(out[out.index("{") :])
        assert doc["coordinator"]["state"] == "online"
        assert doc["coordinator"]["model_version"] >= 1 and doc["model"]["version"] >= 1
        assert doc["round"]["mode"] == "sync" and doc["round"]["selected_all"]
        agents = {a["agent_id"]: a for a in doc["agents"]}
        assert set(agents) == ids
        for a in agents.values():
            assert a["state"] == "online" and a["software"].startswith("alchimia-agent/")
            assert a["heats"] > 0 and a["model_version"] >= 1
            assert a["serving_version"] is not None and a["drift_events"] == 0
            assert a["metrics"]["validation"]["values"]["mae_energy_kwh_t"] > 0
            assert a["metrics"]["prequential"]["values"]["n"] > 0  # new heats were scored
        assert agents["plant-1"]["rejected"] >= 1 and agents["plant-2"]["rejected"] == 0

        fed.agents[1].stop()  # a clean stop: its retained status says offline
        wait_for(
            lambda: (
                [a.state for a in collect(settings, 0.3).agents if a.agent_id == "plant-2"]
                == ["offline"]
            ),
            30,
            "plant-2 offline",
        )
        fed.coordinator.stop()
        proc = alchimia(
            "status", "--broker", mosquitto.url, "--federation", "watch", "--wait", "0.5"
        )
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1, out  # the coordinator is down
        assert "coordinator coordinator: DOWN" in out, out
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("plant-")}
        assert " online " in rows["plant-1"] and " offline " in rows["plant-2"], out
    finally:
        fed.stop()
        monitor.stop()


def test_prometheus_scrapes_the_coordinator_and_the_agents(
    mosquitto, influxd, prometheus, tmp_path: Path
) -> None:
    ports = {"coordinator": free_port(), "plant-1": free_port(), "plant-2": free_port()}
    fed = _federation(mosquitto.url, "scraped", tmp_path, metrics_port=ports["coordinator"])
    # plant-2 stores its sensor data in a real InfluxDB: its points are sent from the spool.
    fed.agent_settings = [
        s.model_copy(
            update={"metrics_port": ports[s.agent_id]}
            | ({"influx": influxd.url, "database": "scraped"} if s.agent_id == "plant-2" else {})
        )
        for s in fed.agent_settings
    ]
    prom = prometheus(
        {
            "coordinator": [f"127.0.0.1:{ports['coordinator']}"],
            "agent": [f"127.0.0.1:{ports['plant-1']}", f"127.0.0.1:{ports['plant-2']}"],
        }
    )
    try:
        fed.start_coordinator()
        fed.start_agents()
        _forge_update(mosquitto, "scraped", "plant-2")
        wait_for(
            lambda: (
                prom.query('alchimia_model_version{job="coordinator"} >= 1')
                and len(prom.query(f"alchimia_prediction_abs_error_count{ENERGY} > 0")) == 2
                and prom.query('alchimia_store_points_total{result="sent"} > 0')
                and prom.query('alchimia_updates_total{result="rejected"} > 0')
            ),
            90,
            "Prometheus to scrape a new version, scored heats and the forged update",
        )

        assert set(prom.query("up == 1")) == {
            (("instance", f"127.0.0.1:{p}"), ("job", job))
            for job, p in (
                ("coordinator", ports["coordinator"]),
                ("agent", ports["plant-1"]),
                ("agent", ports["plant-2"]),
            )
        }
        value = prom.value
        assert value('alchimia_rounds_total{result="closed"}') >= 1
        assert value('alchimia_rounds_total{result="failed"}') == 0
        assert value('alchimia_updates_total{result="accepted"}') >= 2
        assert value("alchimia_round_duration_seconds_count") >= 1
        assert value('alchimia_agents{state="online"}') == 2
        assert value('sum(alchimia_rejections_total{job="coordinator"})') >= 1
        per_agent = {
            dict(k)["instance"]: v
            for k, v in prom.query('alchimia_heats_total{job="agent"}').items()
        }
        assert all(v > AGENT["history_heats"] for v in per_agent.values()), per_agent
        assert len(prom.query('alchimia_prediction_abs_error_count{target="cu_pct"}')) == 2
        assert len(prom.query("alchimia_drift_events_total == 0")) == 2
        assert value(f'alchimia_spool_bytes{{instance="127.0.0.1:{ports["plant-1"]}"}}') == 0
        stored = prom.query('alchimia_store_points_total{result="stored"} > 0')
        assert len(stored) == 2
        assert value('alchimia_store_points_total{result="rejected"}') == 0  # plant-2's
    finally:
        fed.stop()


class _One(Collector):
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("alchimia_test_value", "a test gauge", value=1)


def test_metrics_are_off_by_default_and_a_taken_port_is_a_clear_error() -> None:
    assert serve_metrics(_One(), ServiceSettings()) is None
    assert serve_metrics(_One(), ServiceSettings(metrics_port=0)) is None
    server = serve_metrics(_One(), ServiceSettings(metrics_port=free_port()))
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as r:
            assert "alchimia_test_value 1.0" in r.read().decode()
        with pytest.raises(ValueError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
            MetricsServer(_One(), "127.0.0.1", server.port)
    finally:
        server.close()
