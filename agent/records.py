"""The agent's data records, neutral between the real data path and the simulator.

A :class:`Heat` is what heat assembly hands the agent: one finished furnace cycle with
its charge plan (``inputs``, :data:`models.schema.FEATURES`) and its result (``outcome``,
:data:`models.schema.TARGETS`). :data:`SIGNAL_FIELDS` are the field names of the furnace
sensor samples (measurement ``eaf_signal``, docs/SENSORS.md), a contract with PLC
gateways and CSV exports. The simulator (``agent.sim``) produces the same records; the
real data path (``agent.ingest``, ``agent.learn``, ``agent.service``) never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Sensor sample fields, in the order the simulator and CSV exports list them.
SIGNAL_FIELDS: tuple[str, ...] = (
    "active_power_mw",
    "voltage_v",
    "current_ka",
    "electrode_pos_m",
    "burner_gas_nm3h",
    "burner_o2_nm3h",
    "lance_o2_nm3h",
    "carbon_kgmin",
    "offgas_co_pct",
    "offgas_co2_pct",
    "offgas_temp_c",
    "panel_water_in_c",
    "panel_water_out_c",
)


@dataclass(frozen=True)
class Heat:
    """One finished furnace cycle: the plan (inputs) and the result (outcome)."""

    heat_id: str
    plant: str
    furnace: str
    start_ts: float  # unix seconds
    inputs: dict[str, float]
    outcome: dict[str, float]


__all__ = ["SIGNAL_FIELDS", "Heat"]
