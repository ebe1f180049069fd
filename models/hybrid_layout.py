"""The physics-structured model ``eaf-hybrid-v1`` as data, without torch: its tensors,
which of them are shared by the federation and which stay at a site, its energy-balance
terms and the priors it starts from.

The coordinator and the wire decoders need the names and shapes (they check deltas); the
torch module (``models.hybrid``) builds its parameters from this same table, in this order.

Structure (../shared/domain/EAF.md):

* metal from the charge  M = sum_g y_g x_g  (learned metallic yield per grade);
  tapped mass = M + heel coefficient x (heel - reference) + calibration;
* each tap element e = (sum_g c_ge r_e x_g + heel_t h_e) / (M + heel_t): a mass balance of
  learned grade contents c_ge, an element recovery r_e that depends on the oxygen blown
  per tonne (oxidation), and the hot heel's carry-over h_e. ``c_ge`` is per tonne
  *charged* and already holds the element's recovery at the reference oxygen (35 Nm3 per
  t of metal): wt% of the charged grade x recovery; the data cannot separate the two
  (``r_e`` is only the change of recovery with oxygen, 1 at the reference);
* electrical energy and tap temperature = a linear form in Köhle-type terms (grade shares,
  G_E/G_A, slag formers, carbon, O2, burner gas, heel, power-on/off time, superheat) plus
  a small residual network that starts at zero.

Site tensors are offsets from the shared physics (zero = "this furnace behaves like the
federation's"): supplier-specific grade yields and contents, the heel's composition, the
furnace's energy and temperature coefficients (losses, transformer power, efficiency) and
an output calibration. They never leave the site (docs/PROTOCOL.md, "Personalisation").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np

from alchimia.models.schema import GRADES, TARGET_REFERENCE

ARCHITECTURE: Final = "eaf-hybrid-v1"
ELEMENT_TARGETS = ("cu_pct", "sn_pct", "ni_pct", "cr_pct", "mo_pct")
LINEAR_TARGETS = ("energy_kwh_t", "tap_temp_c")  # linear energy-balance part + residual net
CALIBRATED_TARGETS = ("energy_kwh_t", "tapped_t", "tap_temp_c")

# Energy-balance terms, each with a reference centre and scale (normalised in the graph).
# Per-tonne terms divide by the model's own metal estimate M (Köhle's G_A).
TERMS: tuple[tuple[str, float, float], ...] = (
    *((f"share_{g}", 0.08, 0.15) for g in GRADES),  # x_g / G_E: scrap quality, DRI, pig
    ("charge_per_metal", 0.12, 0.05),  # G_E / M - 1 (Köhle: 400 (G_E/G_A - 1))
    ("lime_kg_t", 70.0, 25.0),  # slag formers (Köhle: 1000 G_Z/G_A)
    ("carbon_kg_t", 16.0, 5.0),  # foaming and oxidation
    ("oxygen_nm3_t", 35.0, 8.0),  # chemical energy (Köhle: -4.3 M_O2)
    ("gas_nm3_t", 7.0, 3.0),  # burners (Köhle: -8 M_gas)
    ("heel_t_t", 0.15, 0.05),  # hot heel per tonne
    ("power_on_min", 38.0, 8.0),  # time losses (Köhle: + t_on)
    ("power_off_min", 14.0, 6.0),  # time losses (Köhle: + t_off)
    ("superheat_c", 40.0, 20.0),  # aim - 1600 C (Köhle: 0.3 (T - 1600))
    ("power_on_min_t", 0.38, 0.1),  # t_on / M: arc energy = furnace power x time / mass
)
TERM_NAMES = tuple(t[0] for t in TERMS)
HEEL_REFERENCE_T = 15.0

# Priors (EAF.md; values marked "check" there are plausible, not measured).
# Metallic yield ~85-95 % by grade, shredded >= 92 %; DRI/HBI ~90 % Fe; pig iron ~94 %
# (4-4.5 % C, ~0.7 % Si, ~0.75 % Mn burn off).
YIELD_PRIOR: dict[str, float] = {
    **dict.fromkeys(GRADES, 0.90),
    "E40": 0.92,
    "E2": 0.93,
    "E8": 0.92,
    "E6": 0.92,
    "E46": 0.87,
    "E5H": 0.87,
    "DRI": 0.90,
    "HBI": 0.90,
    "PIG": 0.94,
}
# Residual aims (sum of Cu+Sn+Cr+Ni+Mo, %) of the EU scrap specification; DRI/HBI and pig
# iron are nearly residual-free (DRI Cu ~0.01 %). A grade starts at half its aim, split
# over the elements in the proportions of the typical tap chemistry (models.schema).
RESIDUAL_AIM_PCT: dict[str, float] = {
    "E3": 0.25,
    "E1": 0.40,
    "E2": 0.30,
    "E8": 0.30,
    "E6": 0.30,
    "E40": 0.30,
    "E46": 0.60,
    "EHRB": 0.45,
    "E5H": 0.30,
    "DRI": 0.02,
    "HBI": 0.02,
    "PIG": 0.02,
}
YIELD_STEP = 0.1  # one unit of a yield tensor moves the yield by this much
# The site prior's strength per site tensor, relative to TrainConfig.site_l2 (1 if absent):
# a grade's residuals differ by supplier far more than a furnace's coefficients differ
# from the federation's (EAF.md: composition within a grade varies by supplier, skewed),
# so a site's grade contents are held back ten times less. Measured in experiment
# federation (docs/FEDERATION.md): P4 Cu 0.0056 -> 0.0051 % (seed 0), 0.0114 -> 0.0083 %
# (seed 2).
SITE_PRIOR_SCALE: dict[str, float] = {"content_site": 0.1}

# Name -> (shape builder, part). Order is the wire order of each part.
G, E, K, L, C = (
    len(GRADES),
    len(ELEMENT_TARGETS),
    len(TERMS),
    len(LINEAR_TARGETS),
    len(CALIBRATED_TARGETS),
)


def tensor_shapes(
    n_features: int, hidden: tuple[int, ...]
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of the hybrid: name -> (shape, "shared" | "site"), in order."""
    shapes: dict[str, tuple[tuple[int, ...], str]] = {
        "yield_shared": ((G,), "shared"),
        "content_shared": ((G, E), "shared"),  # log of grade content x recovery, vs prior
        "recovery_o2": ((E,), "shared"),  # d log(recovery) / d (normalised O2 per t)
        "heel_pct_shared": ((E,), "shared"),  # log of heel composition vs typical tap
        "heel_coef": ((1,), "shared"),  # t tapped per t of heel above the reference
        "bias_shared": ((C,), "shared"),
        "linear_shared": ((L, K), "shared"),
    }
    sizes = (n_features, *hidden, L)
    for i in range(len(sizes) - 1):
        shapes[f"residual_w{i}"] = ((sizes[i + 1], sizes[i]), "shared")
        shapes[f"residual_b{i}"] = ((sizes[i + 1],), "shared")
    shapes.update(
        {
            "yield_site": ((G,), "site"),
            "content_site": ((G, E), "site"),
            "heel_pct_site": ((E,), "site"),
            "bias_site": ((C,), "site"),
            "linear_site": ((L, K), "site"),
        }
    )
    return shapes


# -- the grade properties in numpy: the one place their formulas live -------------------
# ``weights`` maps tensor names to arrays (a site's serving model: shared and site
# tensors; the federation's model: the shared ones, a missing site tensor counts as 0).
# ``models.hybrid.EafHybrid`` computes the same in torch (tests/unit/test_hybrid.py and
# tests/unit/test_characterise.py check that they agree).


def yield_prior() -> np.ndarray:
    """Prior metallic yield per grade (``GRADES`` order)."""
    return np.array([YIELD_PRIOR[g] for g in GRADES], np.float64)


def content_prior() -> np.ndarray:
    """Prior effective content (wt% of the charged grade x recovery) per grade and
    element: half the grade's residual aim, split like the typical tap chemistry."""
    typical = np.array([TARGET_REFERENCE[t][0] for t in ELEMENT_TARGETS])
    split = typical / typical.sum()
    aims = np.array([RESIDUAL_AIM_PCT[g] for g in GRADES])
    return 0.5 * aims[:, None] * split[None, :]


def _tensor(
    weights: Mapping[str, np.ndarray],
    name: str,
    shape: tuple[int, ...],
) -> np.ndarray:
    value = weights.get(name)
    if value is None:
        return np.zeros(shape, np.float64)
    value = np.asarray(value, np.float64)
    if value.shape != shape:
        raise ValueError(f"{name}: shape {value.shape} != {shape}")
    return value


def grade_yields(weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """Metallic yield per grade, t metal per t charged: the prior, the federation's
    offset, the site's (``y_g = prior_g + YIELD_STEP (yield_shared + yield_site)``)."""
    return yield_prior() + YIELD_STEP * (
        _tensor(weights, "yield_shared", (G,)) + _tensor(weights, "yield_site", (G,))
    )


def grade_contents(weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """Effective content per grade and element [G, E], % of the charged mass: wt% x
    recovery at the reference oxygen (``c = prior exp(content_shared + content_site)``)."""
    return content_prior() * np.exp(
        _tensor(weights, "content_shared", (G, E)) + _tensor(weights, "content_site", (G, E))
    )
