"""The edge data path against real servers: influxd for the store, mosquitto for the PLC feed."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from alchimia.agent.ingest import (
    CHARGE_MEASUREMENT,
    SIGNAL_MEASUREMENT,
    TAP_FIELDS,
    TAP_MEASUREMENT,
    MqttPlcSource,
    Reason,
)
from alchimia.agent.ingest.heats import HeatAssembler
from alchimia.agent.ingest.pipeline import StorePipeline
from alchimia.agent.ingest.simulated import (
    SimulatedHeats,
    SimulatedSensorSource,
    simulated_pipeline,
)
from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.records import Heat
from alchimia.agent.settings import AgentSettings
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.agent.store import InfluxStore, SQLiteStore
from tests.fixtures.influxd import InfluxdServer
from tests.fixtures.mosquitto import Mosquitto

pytestmark = pytest.mark.integration

SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC
_names = itertools.count()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until true or ``timeout`` (a bound on waiting, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.sqlite3", fsync=False)
    yield store
    store.close()


@pytest.fixture
def influx_store(influxd: InfluxdServer, tmp_path: Path) -> Iterator[InfluxStore]:
    store = InfluxStore(
        influxd.url,
        f"pipe{os.getpid()}_{next(_names)}",
        tmp_path / "spool",
        fsync=False,
        gzip_level=0,
    )
    yield store
    store.close()


def test_features_are_identical_from_sqlite_and_influxdb(
    sqlite_store: SQLiteStore, influx_store: InfluxStore
) -> None:
    history = 4
    from_sqlite = simulated_pipeline(3, 11, history, 0.0, sqlite_store).history()
    influx_pipe = simulated_pipeline(3, 11, history, 0.0, influx_store)
    from_influx = influx_pipe.history()
    truth = SimulatedHeats(3, 11, history, 0.0).history()
    assert [h.heat_id for h in from_influx] == [h.heat_id for h in truth]
    for a, b, t in zip(from_sqlite, from_influx, truth, strict=True):
        assert a.heat_id == b.heat_id
        assert a.inputs == b.inputs  # exactly equal floats: nothing lost on the way
        assert a.outcome == b.outcome
        assert a.start_ts == b.start_ts
        for key, want in (*t.inputs.items(), *t.outcome.items()):
            assert b.inputs.get(key, b.outcome.get(key)) == pytest.approx(want, rel=1e-3), key
    for measurement in (CHARGE_MEASUREMENT, SIGNAL_MEASUREMENT, TAP_MEASUREMENT):
        assert influx_store.count(measurement, {}) == sqlite_store.count(measurement, {})
    assert influx_pipe.points_written == influx_store.count(SIGNAL_MEASUREMENT, {}) + 2 * history
    assert influx_pipe.poll() == []


class Gateway:
    """What a PLC gateway does: publish JSON records on the furnace's sensor topics."""

    def __init__(self, broker: Mosquitto, plant: str = "P7", furnace: str = "EAF2") -> None:
        self.base = f"plant/{plant}/eaf/{furnace}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-gateway")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.sent = 0

    def raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)
        self.sent += 1

    def send(self, kind: str, heat: str, ts: int | str, values: dict[str, object]) -> None:
        body = {"ts": ts, "heat": heat, "values": values}
        self.raw(f"{self.base}/{kind}", json.dumps(body).encode())

    def charge_and_signals(self, heat: str) -> None:
        """The charge, then 20 min at 60 MW with 1,800 Nm3/h lance O2 and 10 min off, one
        sample a second."""
        charge = {
            "charge_E3_t": 60.0,
            "charge_E40_t": 45.5,
            "hot_heel_t": 15.0,
            "lime_t": 7.2,
            "tap_temp_aim_c": 1640,
        }
        self.send("charge", heat, "2026-01-01T00:00:00Z", charge)
        for i in range(1800):
            on = i < 1200
            self.send(
                "signal",
                heat,
                T0 + i * SEC,
                {
                    "active_power_mw": 60.0 if on else 0.0,
                    "lance_o2_nm3h": 1800.0 if on else 0.0,
                    "voltage_v": 950.0 if on else 0.0,
                },
            )

    def tap(self, heat: str) -> None:
        tap = dict.fromkeys(TAP_FIELDS, 0.05) | {"tapped_t": 100.0, "tap_temp_c": 1638}
        self.send("tap", heat, T0 + 1800 * SEC, tap)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_plc_feed_into_the_store(mosquitto: Mosquitto, sqlite_store: SQLiteStore) -> None:
    source = MqttPlcSource(mosquitto.url, plant="P7", client_id="agent-p7-sensors", max_bytes=4096)
    gateway = Gateway(mosquitto)
    try:
        assert source.wait_subscribed(20)
        pipe = StorePipeline(source, sqlite_store, HeatAssembler(sqlite_store, "P7", "EAF2"))
        assert pipe.history() == []
        heat = "H-0042"
        gateway.charge_and_signals(heat)
        base = gateway.base
        malformed: dict[str, list[tuple[str, bytes]]] = {
            Reason.BAD_JSON: [(f"{base}/signal", b"{oops")],
            Reason.UNKNOWN_FIELD: [
                (
                    f"{base}/signal",
                    json.dumps(
                        {"ts": T0, "heat": heat, "values": {"active_power_kw": 1.0}}
                    ).encode(),
                )
            ],
            Reason.NON_FINITE: [
                (
                    f"{base}/signal",
                    b'{"ts": %d, "heat": "H-0042", "values": {"voltage_v": NaN}}' % T0,
                )
            ],
            Reason.MISSING_HEAT: [
                (f"{base}/signal", json.dumps({"ts": T0, "values": {"voltage_v": 1.0}}).encode())
            ],
            Reason.BAD_TYPE: [
                (
                    f"{base}/signal",
                    json.dumps({"ts": T0, "heat": heat, "values": {"voltage_v": "950"}}).encode(),
                )
            ],
            Reason.BAD_TS: [
                (
                    f"{base}/signal",
                    json.dumps(
                        {"ts": 1767225600.5, "heat": heat, "values": {"voltage_v": 1.0}}
                    ).encode(),
                )
            ],
            Reason.OVERSIZED: [(f"{base}/signal", b"{" + b" " * 5000 + b"}")],
            Reason.BAD_TOPIC: [
                (
                    f"{base}/pressure",
                    json.dumps({"ts": T0, "heat": heat, "values": {"voltage_v": 1.0}}).encode(),
                )
            ],
        }
        for items in malformed.values():
            for topic, payload in items:
                gateway.raw(topic, payload)
        # Not ours: another plant's furnace (outside the subscription).
        gateway.client.publish("plant/P8/eaf/EAF2/signal", b"{}", qos=1).wait_for_publish(10)
        gateway.tap(heat)

        heats: list[Heat] = []
        n_good = 1 + 1800 + 1
        n_bad = sum(len(v) for v in malformed.values())

        def all_in() -> bool:
            heats.extend(pipe.poll())
            return source.stats.accepted + source.stats.rejected_total >= n_good + n_bad

        assert wait_for(all_in)
        assert dict(source.stats.rejected) == {r: len(v) for r, v in malformed.items()}
        assert source.stats.accepted == n_good
        assert sqlite_store.count(SIGNAL_MEASUREMENT, {"heat": heat}) == 1800
        (got,) = heats
        assert got.heat_id == heat
        check_gateway_heat(got)
        assert pipe.poll() == []
    finally:
        gateway.close()
        source.close()


def check_gateway_heat(got: Heat) -> None:
    """The features and outcome of the heat ``Gateway`` sends."""
    assert got.inputs["power_on_min"] == pytest.approx(20.0)
    assert got.inputs["power_off_min"] == pytest.approx(10.0)
    assert got.inputs["oxygen_nm3"] == pytest.approx(1800.0 * 1200 / 3600)
    assert got.inputs["charge_E40_t"] == 45.5 and got.inputs["charge_HBI_t"] == 0.0
    assert got.outcome["energy_kwh_t"] == pytest.approx(60.0 * 1200 / 3.6 / 100.0)
    assert got.outcome["tap_temp_c"] == 1638.0


def test_an_agent_learns_from_its_furnace_on_the_plc_feed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """``alchimia agent --sensor-feed URL --plant-id P7 --furnace-id EAF2``: the settings
    build a pipeline from the feed through the store to assembled heats."""
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        agent_id="agent-p7",
        sensor_feed=mosquitto.url,
        plant_id="P7",
        furnace_id="EAF2",
        state_dir=tmp_path,
    )
    source = build_heat_source(settings)
    assert isinstance(source, StorePipeline) and isinstance(source.source, MqttPlcSource)
    gateway = Gateway(mosquitto)
    try:
        assert source.source.wait_subscribed(20)
        assert source.history() == []
        gateway.charge_and_signals("H-0043")
        gateway.tap("H-0043")
        heats: list[Heat] = []
        assert wait_for(lambda: bool(heats.extend(source.poll()) or heats))
        (got,) = heats
        assert got.heat_id == "H-0043"
        check_gateway_heat(got)
    finally:
        gateway.close()
        source.close()


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"sensor_feed": "mqtt://127.0.0.1:1"}, "needs plant_id and furnace_id"),
        ({"sensor_feed": "mqtt://127.0.0.1:1", "plant_id": "P7"}, "needs plant_id and furnace_id"),
        (
            {"replay_heats": "h.csv", "plant_id": "P7", "furnace_id": "EAF2"},
            "needs both replay_heats and replay_signals",
        ),
        (
            {
                "replay_heats": "h.csv",
                "replay_signals": "s.csv",
                "sensor_feed": "mqtt://127.0.0.1:1",
                "plant_id": "P7",
                "furnace_id": "EAF2",
            },
            "choose one data source",
        ),
        (
            {"sensor_feed": "mqtt://127.0.0.1:1", "plant_id": "P 7", "furnace_id": "EAF2"},
            "plant or furnace id",
        ),
    ],
)
def test_real_data_settings_are_checked(settings: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AgentSettings.load(None, **settings)


def test_mqtt_inbox_overflow_is_counted_not_fatal(mosquitto: Mosquitto) -> None:
    source = MqttPlcSource(mosquitto.url, max_inbox=3)
    gateway = Gateway(mosquitto, "P1", "EAF1")
    try:
        assert source.wait_subscribed(20)
        for i in range(10):
            gateway.send("signal", "H1", T0 + i * SEC, {"voltage_v": 900.0})
        assert wait_for(lambda: source.stats.rejected[Reason.OVERFLOW] == 7)
        points = source.poll()
        assert [p.ts_ns for p in points] == [T0, T0 + SEC, T0 + 2 * SEC]
        gateway.send("signal", "H1", T0 + 99 * SEC, {"voltage_v": 900.0})  # room again
        assert wait_for(lambda: source.queued == 1)
        assert [p.ts_ns for p in source.poll()] == [T0 + 99 * SEC]
    finally:
        gateway.close()
        source.close()


def test_a_tap_record_reaches_influxdb_at_once_other_points_wait_for_the_flush_interval(
    influxd: InfluxdServer, tmp_path: Path
) -> None:
    """Spooled points wait for the flush interval (an hour here), but a heat's tap record is
    POSTed at once, with every point spooled before it: the pipeline writes it at once and
    assembling the heat reads the store, which sends what is spooled first."""
    store = InfluxStore(
        influxd.url,
        f"tap{os.getpid()}_{next(_names)}",
        tmp_path / "spool",
        flush_interval=3600,
        gzip_level=0,
    )
    profile, seed = default_plants(1)[0]
    now = [0.0]
    src = SimulatedSensorSource(
        SimulatedPlant(profile, seed), 0, heat_interval_s=60.0, period_s=5.0, clock=lambda: now[0]
    )
    pipe = StorePipeline(
        src,
        store,
        HeatAssembler(store, profile.name, profile.furnace),
        write_interval_s=0.0,
        clock=lambda: now[0],
    )

    def in_influxdb(measurement: str) -> int:  # asked of the server, with no flush first
        return sum(len(s["values"]) for s in store.http.query(f'SELECT * FROM "{measurement}"'))

    try:
        assert pipe.history() == []
        sent = store.stats.sent_batches
        now[0] = 30.0
        assert pipe.poll() == []  # half a heat: spooled, not sent
        assert store.spool.pending_points > 0 and store.stats.sent_batches == sent
        assert in_influxdb(TAP_MEASUREMENT) == 0
        now[0] = 60.0  # the tap
        assert len(pipe.poll()) == 1
        assert store.spool.pending_points == 0
        assert store.stats.sent_points == pipe.points_written
        assert in_influxdb(TAP_MEASUREMENT) == 1
    finally:
        pipe.close()
        store.close()
