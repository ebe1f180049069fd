"""EAF heat simulator: the project's stand-in for plant data that cannot be downloaded.

Physics first (mass balance for yield and chemistry, a Köhle-type energy form), with
plants that differ in scrap mix, size, efficiency and suppliers, and drift scenarios that
make a learned model go stale. See /work/shared/domain/EAF.md for the figures used.

Its heats are :class:`SimulatedHeat`: the neutral record :class:`agent.records.Heat` with
the signals and hidden truth only a simulator knows.
"""

from alchimia.agent.records import SIGNAL_FIELDS, Heat
from alchimia.agent.sim.drift import (
    Drift,
    HbiShareChange,
    HeatEffects,
    RefractoryWear,
    SeasonalMoisture,
    SupplierChange,
    parse_drift,
)
from alchimia.agent.sim.grades import ELEMENTS, GRADE_TABLE, Grade
from alchimia.agent.sim.plant import (
    HeatTruth,
    PlantProfile,
    SimulatedHeat,
    SimulatedPlant,
    default_plants,
)
from alchimia.agent.sim.signals import SignalSpec

__all__ = [
    "ELEMENTS",
    "GRADE_TABLE",
    "SIGNAL_FIELDS",
    "Drift",
    "Grade",
    "HbiShareChange",
    "Heat",
    "HeatEffects",
    "HeatTruth",
    "PlantProfile",
    "RefractoryWear",
    "SeasonalMoisture",
    "SignalSpec",
    "SimulatedHeat",
    "SimulatedPlant",
    "SupplierChange",
    "default_plants",
    "parse_drift",
]
