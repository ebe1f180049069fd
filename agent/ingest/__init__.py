"""Sensor sources of the edge data path: simulator, PLC gateway over MQTT, CSV replay.

Each source turns its input into store points under one contract (measurements
``eaf_signal``, ``eaf_charge``, ``eaf_tap``; docs/SENSORS.md) and counts what it rejects.
"""

from agent.ingest.base import (
    CHARGE_FIELDS,
    CHARGE_MEASUREMENT,
    CHARGE_REQUIRED,
    SIGNAL_FIELDS,
    SIGNAL_MEASUREMENT,
    TAP_FIELDS,
    TAP_MEASUREMENT,
    IngestStats,
    PointSource,
    Reason,
    Rejected,
)
from agent.ingest.csv_replay import CsvReplaySource
from agent.ingest.mqtt_plc import MqttPlcSource, parse_message
from agent.ingest.simulated import SimulatedSensorSource, heat_points

__all__ = [
    "CHARGE_FIELDS",
    "CHARGE_MEASUREMENT",
    "CHARGE_REQUIRED",
    "SIGNAL_FIELDS",
    "SIGNAL_MEASUREMENT",
    "TAP_FIELDS",
    "TAP_MEASUREMENT",
    "CsvReplaySource",
    "IngestStats",
    "MqttPlcSource",
    "PointSource",
    "Reason",
    "Rejected",
    "SimulatedSensorSource",
    "heat_points",
    "parse_message",
]
