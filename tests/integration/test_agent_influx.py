"""An agent configured with an InfluxDB URL stores its plant's sensor data there and
learns from heats assembled back out of it (real influxd, real mosquitto)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from alchimia.agent.ingest.pipeline import StorePipeline
from alchimia.agent.settings import AgentSettings
from alchimia.agent.store import open_store
from alchimia.agent.store.spool import Spool
from alchimia.broker.schemas import StatusBody, decode
from alchimia.broker.topics import Topics
from alchimia.consumer import Consumer, ConsumerSettings
from alchimia.local import AgentThread, LocalFederation
from alchimia.models.spec import ModelSpec
from alchimia.monitor import Monitor
from tests.data.models import first_model
from tests.data.plans import PLANNED_HEAT
from tests.fixtures.influxd import InfluxdServer
from tests.integration.helpers import RawClient, alchimia, wait_for


def test_agent_streams_sensor_data_into_influxdb_and_trains_on_it(
    mosquitto, influxd, tmp_path: Path
) -> None:
    database = "agent_e2e"
    fed = LocalFederation(
        mosquitto.url,
        "influx",
        1,
        tmp_path / "coord",
        coordinator={"min_agents": 1, "rounds": 1, "epochs": 1},
        agent={
            "history_heats": 20,
            "heat_interval_s": 0,
            "influx": influxd.url,
            "database": database,
            "signal_period_s": 10.0,
        },
    )
    monitor = Monitor(mosquitto.url, "influx", "influx-monitor").start()
    try:
        fed.start_coordinator()
        fed.start_agents()
        assert monitor.wait_validation(1, {"plant-1"}, 120)
    finally:
        fed.stop()
        monitor.stop()
    assert fed.agents[0].agent.table is not None
    assert fed.agents[0].agent.table.seen == 20
    store = open_store(influxd.url, database, spool_dir=tmp_path / "reader-spool")
    try:
        heats = store.distinct_tag_values("eaf_tap", "heat", {"plant": "P1"})
        assert len(heats) == 20
        assert store.count("eaf_charge", {"plant": "P1"}) == 20
        assert store.count("eaf_signal", {"plant": "P1", "heat": heats[0]}) > 100
    finally:
        store.close()


PLAN = PLANNED_HEAT


def test_an_agent_started_while_influxdb_is_down_serves_then_learns_its_history(
    mosquitto, influxd_factory: Callable[[], InfluxdServer], tmp_path: Path
) -> None:
    """Issue 17 item 3: the agent used to exit (FlushTimeout from its history, before it
    even connected). Now it connects, serves and spools at once, and learns from the
    history when InfluxDB answers, with every point delivered."""
    server = influxd_factory()
    server.stop()
    topics, spec = Topics("down"), ModelSpec(architecture="eaf-hybrid-v1")
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        federation="down",
        agent_id="plant-1",
        history_heats=20,
        heat_interval_s=0,
        influx=server.url,
        database="down",
        signal_period_s=10.0,
        state_dir=tmp_path / "agents",
    )
    watcher = RawClient(mosquitto.host, mosquitto.port, "down-watcher")
    watcher.subscribe(topics.agent_status("plant-1"))
    agent = AgentThread(settings).start()
    a = agent.agent
    try:
        watcher.publish(
            topics.model_current,
            first_model(spec),
            retain=True,
        )

        def online() -> bool:
            return any(
                decode(p, StatusBody).body.state == "online"
                for p in watcher.received(topics.agent_status("plant-1"))
            )

        wait_for(online, 30, "the agent's online status while InfluxDB is down")
        wait_for(lambda: a.state is not None, 30, "the model served")
        with Consumer(
            ConsumerSettings(broker=mosquitto.url, federation="down", consumer_id="hmi-1")
        ) as consumer:
            answer = consumer.infer("plant-1", [{"inputs": PLAN}], timeout=30)
        assert answer.model_version == 0 and len(answer.predictions) == 1
        source = a.source
        assert isinstance(source, StorePipeline)
        wait_for(lambda: a.step_failures.counts["history"] >= 1, 30, "a first try")
        assert a.table is not None and a.table.seen == 0  # nothing read from the store yet
        assert source.points_written > 0  # ... but the history is spooled
        server.start()
        wait_for(
            lambda: a.table is not None and a.table.seen == 20,
            60,
            "the history learned once InfluxDB answers",
        )
        assert a.new_heats == 20
    finally:
        agent.stop()
        watcher.close()
    store = open_store(server.url, "down", spool_dir=tmp_path / "reader-spool")
    try:
        tags = {"plant": "P1"}
        stored = sum(store.count(m, tags) for m in ("eaf_signal", "eaf_charge", "eaf_tap"))
        assert len(store.distinct_tag_values("eaf_tap", "heat", tags)) == 20
        assert stored == source.points_written  # every point delivered, none twice
    finally:
        store.close()


def test_a_sigtermed_agent_delivers_its_spool(mosquitto, influxd, tmp_path: Path) -> None:
    """SIGTERM (systemd's stop) closes the store: what is spooled goes to InfluxDB then,
    not at the next start (points wait up to the flush interval, 5 s by default)."""
    state = tmp_path / "agents"
    agent = alchimia(
        "agent",
        "--broker",
        mosquitto.url,
        "--federation",
        "term",
        "--agent-id",
        "plant-1",
        "--plant",
        "1",
        "--influx",
        influxd.url,
        "--database",
        "term",
        "--state-dir",
        str(state),
        "--history-heats",
        "5",
        "--heat-interval",
        "0.5",
        "--signal-period",
        "10",
    )
    try:
        spool = state / "plant-1" / "spool"
        # The history went in (its tap points flush at once); live heats then follow.
        reader = open_store(influxd.url, "term", spool_dir=tmp_path / "reader-spool")
        try:
            wait_for(lambda: reader.count("eaf_tap", {"plant": "P1"}) >= 7, 60, "live heats")
        finally:
            reader.close()
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=60)
        assert agent.returncode == 0, out
    finally:
        if agent.poll() is None:
            agent.kill()
    left = Spool(spool, fsync=False)
    try:
        assert left.pending_points == 0, f"{left.pending_points} points left spooled"
    finally:
        left.close()
