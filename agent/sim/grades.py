"""Scrap grades: residual composition, metallic yield and melting behaviour.

Composition within a grade varies by supplier and is skewed, not normal (Gaustad, MIT 2009),
so each grade carries a mean and a lognormal spread that a plant's suppliers shift. The
numbers are plausible defaults chosen under the EU-specification aims in
/work/shared/domain/EAF.md; the residual means and spreads are recalled or invented, not
read from a source (check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alchimia.models.schema import GRADES

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

ELEMENTS = ("cu", "sn", "ni", "cr", "mo")
CU, SN, NI, CR, MO = range(len(ELEMENTS))


@dataclass(frozen=True)
class Grade:
    """One scrap grade or iron unit, as the simulator sees it."""

    name: str
    composition_pct: tuple[float, float, float, float, float]  # mean wt% in the metal
    sigma: float  # lognormal shape of a lot's composition: bigger means more skewed
    yield_frac: float  # metallic yield: t liquid steel per t charged
    density_t_m3: float
    energy_factor: float  # multiplies the melting part of the energy: low grades melt worse
    shredded: bool = False  # counts as G_Shr in the Köhle formula
    direct_reduced: bool = False  # counts as G_DRI in the Köhle formula
    pig_iron: bool = False
    gangue_frac: float = 0.0  # SiO2 + Al2O3 that must be fluxed with lime
    takes_moisture: bool = True  # open-yard scrap gets wet; DRI/HBI/pig are kept dry


# Residual means respect the EU-spec sums (E3 <= 0.25, E1 <= 0.40, ...) on average while
# the lognormal tails exceed them, as real lots do. Yields follow the 85-95 % range of
# EAF.md; energy factors are a moderate version of the "+45 % for low grades" finding
# (Haupt et al.). All (check).
_TABLE = (
    Grade("E3", (0.100, 0.010, 0.050, 0.060, 0.010), 0.35, 0.93, 0.60, 1.00),
    Grade("E1", (0.180, 0.025, 0.070, 0.080, 0.015), 0.45, 0.90, 0.50, 1.06),
    Grade("E2", (0.060, 0.005, 0.050, 0.080, 0.010), 0.25, 0.95, 0.60, 0.97),
    Grade("E8", (0.040, 0.008, 0.030, 0.050, 0.005), 0.30, 0.94, 0.40, 1.02),
    Grade("E6", (0.050, 0.010, 0.030, 0.050, 0.005), 0.25, 0.93, 1.00, 0.99),
    Grade("E40", (0.200, 0.015, 0.070, 0.090, 0.015), 0.35, 0.92, 0.95, 1.00, shredded=True),
    Grade("E46", (0.400, 0.050, 0.100, 0.120, 0.020), 0.50, 0.85, 0.90, 1.15, shredded=True),
    Grade("EHRB", (0.220, 0.020, 0.090, 0.090, 0.020), 0.40, 0.92, 0.50, 1.05),
    Grade("E5H", (0.150, 0.010, 0.150, 0.200, 0.040), 0.15, 0.88, 1.20, 1.04),
    Grade(
        "DRI",
        (0.005, 0.001, 0.005, 0.005, 0.001),
        0.15,
        0.88,
        1.80,
        1.00,
        direct_reduced=True,
        gangue_frac=0.07,
        takes_moisture=False,
    ),
    Grade(
        "HBI",
        (0.005, 0.001, 0.005, 0.005, 0.001),
        0.15,
        0.90,
        2.80,
        1.00,
        direct_reduced=True,
        gangue_frac=0.04,
        takes_moisture=False,
    ),
    Grade(
        "PIG",
        (0.010, 0.002, 0.020, 0.030, 0.002),
        0.15,
        0.95,
        3.50,
        1.00,
        pig_iron=True,
        takes_moisture=False,
    ),
)

GRADE_TABLE: dict[str, Grade] = {g.name: g for g in _TABLE}
assert tuple(GRADE_TABLE) == GRADES, "grade table must follow models.schema.GRADES order"
GRADE_INDEX: dict[str, int] = {g: i for i, g in enumerate(GRADES)}

# Column views in GRADES order, so the per-heat code is plain array arithmetic.
COMPOSITION_PCT: FloatArray = np.array([g.composition_pct for g in _TABLE], dtype=np.float64)
SIGMA: FloatArray = np.array([g.sigma for g in _TABLE])
YIELD: FloatArray = np.array([g.yield_frac for g in _TABLE])
DENSITY_T_M3: FloatArray = np.array([g.density_t_m3 for g in _TABLE])
ENERGY_FACTOR: FloatArray = np.array([g.energy_factor for g in _TABLE])
GANGUE: FloatArray = np.array([g.gangue_frac for g in _TABLE])
SHREDDED: BoolArray = np.array([g.shredded for g in _TABLE])
DIRECT_REDUCED: BoolArray = np.array([g.direct_reduced for g in _TABLE])
PIG_IRON: BoolArray = np.array([g.pig_iron for g in _TABLE])
TAKES_MOISTURE: BoolArray = np.array([g.takes_moisture for g in _TABLE])

# Fraction of each element in the charge that ends in the steel. Cu, Sn, Ni and Mo are
# nobler than Fe and stay in the bath; Cr partly oxidises to the slag (check).
RECOVERY: FloatArray = np.array([0.99, 0.98, 0.99, 0.60, 0.97])


def cr_recovery(oxygen_nm3_t: float) -> float:
    """More lance oxygen oxidises more Cr into the slag (invented linear form, check)."""
    return float(np.clip(0.88 - 0.008 * oxygen_nm3_t, 0.35, 0.90))
