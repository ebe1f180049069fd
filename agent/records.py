"""The agent's data records, neutral between the real data path and the simulator.

A :class:`Heat` is what heat assembly hands the agent: one finished furnace cycle with
its charge plan (``inputs``, :data:`models.schema.FEATURES`) and its result (``outcome``,
:data:`models.schema.TARGETS`). :data:`SIGNAL_FIELDS` are the field names of the furnace
sensor samples (measurement ``eaf_signal``, docs/SENSORS.md), a contract with PLC
gateways and CSV exports. The simulator (``agent.sim``) produces the same records; the
real data path (``agent.ingest``, ``agent.learn``, ``agent.service``) never imports it.
A :class:`DataContract` names the columns a source's heats carry; the agent checks every
model against it before adopting it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from alchimia.models.schema import FEATURES, TARGETS

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
    tap_ns: int | None = None  # its (first) tap point's timestamp, if it came through a store


@dataclass(frozen=True)
class DataContract:
    """The columns a site's heats carry (``Heat.inputs`` and ``Heat.outcome`` keys): what
    a model may ask of them. A model with any other column would fail on every heat, so
    the agent checks each model against its source's contract before adopting it."""

    features: frozenset[str]
    targets: frozenset[str]

    @classmethod
    def of(cls, features: Iterable[str], targets: Iterable[str]) -> DataContract:
        return cls(frozenset(features), frozenset(targets))

    def check(self, features: Sequence[str], targets: Sequence[str]) -> str | None:
        """Why a model with these columns cannot use this site's heats, or None if it can."""
        for kind, names, have in (
            ("feature", features, self.features),
            ("target", targets, self.targets),
        ):
            twice = sorted(n for n, k in Counter(names).items() if k > 1)
            if twice:
                return f"{kind}(s) listed twice: {', '.join(twice[:5])}"
            missing = [n for n in names if n not in have]
            if missing:
                return (
                    f"{len(missing)} {kind}(s) this site's data does not have: "
                    f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}"
                )
        return None


#: What every heat source of this project produces: the columns of :mod:`models.schema`.
STANDARD_CONTRACT = DataContract.of(FEATURES, TARGETS)

__all__ = ["SIGNAL_FIELDS", "STANDARD_CONTRACT", "DataContract", "Heat"]
