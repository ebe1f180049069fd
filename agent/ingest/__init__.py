"""The agent's data path in: sensor sources -> store -> heat assembly -> finished heats.

* ``base``: the point contract (measurements ``eaf_signal``, ``eaf_charge``, ``eaf_tap``;
  docs/SENSORS.md) and what sources share (reasons, counts, rate-limited logs);
* ``mqtt_plc`` (the PLC gateway's MQTT feed) and ``csv_replay`` (a recorded history): the
  real sources; ``simulated``: the simulator as a source, the only module here that
  imports the simulator (not re-exported below, so the real path never loads it);
* ``pipeline``: source -> durable store -> ``heats`` (assembly) as one heat source;
* ``sources``: the agent's heat source built from its settings.

Each source turns its input into store points under one contract and counts what it
rejects.
"""

from alchimia.agent.ingest.base import (
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
from alchimia.agent.ingest.csv_replay import CsvReplaySource
from alchimia.agent.ingest.mqtt_plc import MqttPlcSource, parse_message

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
    "parse_message",
]
