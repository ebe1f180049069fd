"""``alchimia experiment characterise``: how close is the learned scrap characterisation to
the truth the simulator knows?

The federation of ``alchimia experiment federation`` (five unequal plants, the hybrid
federated with FedAvg, each plant's site part kept and served at that plant:
``experiment_federation.simulate`` + ``federate``) is trained; each plant's serving model
is exported to ONNX and characterised on that plant's training heats by
``models.characterise`` (torch-free, as ``alchimia characterise`` does), with the plant's
power-on estimate fitted on the same heats. The simulator's truth per plant:

* yield: ``agent.sim.grades.YIELD`` (the same for every plant; a heat's yield varies by
  1 % around it);
* effective content (% of the charged mass x recovery at 35 Nm3 O2 per t, what the model
  learns): ``YIELD x PlantProfile.composition_means() x RECOVERY``, Cr's recovery
  ``cr_recovery(35)``;
* energy effect: the simulator's noise-free energy (``agent.sim.plant._energy_kwh_t``, its
  power-on time planned by its own rule from the charge) times the heat's metal, at the
  plant's average heat and with one tonne of that charge replaced by the grade, the
  process plan held: the same substitution as the model's.

Scored over the grades the plant charges (in any of its heats): absolute yield error,
relative content error per element, absolute energy error, and the coverage of the
reported intervals (the share of those grades whose truth lies inside). The prior's error
(the untrained model's yields and contents) is the baseline a characterisation must beat.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from alchimia import figures
from alchimia.agent.sim import default_plants
from alchimia.agent.sim import grades as sg
from alchimia.agent.sim.plant import POWER_FACTOR, UTILISATION, PlantProfile, _energy_kwh_t
from alchimia.experiment_federation import (
    DEFAULT_SIZES,
    FederationConfig,
    PlantData,
    federate,
    simulate,
)
from alchimia.models import hybrid_layout as hl
from alchimia.models.characterise import (
    DEFAULT_LEVEL,
    ELEMENTS,
    SUBSTITUTION_T,
    Characterisation,
    Estimate,
    characterise,
    substituted,
)
from alchimia.models.onnx_build import build_onnx
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.schema import FEATURES, GRADES
from alchimia.models.spec import ModelSpec

SPEC = ModelSpec(architecture="eaf-hybrid-v1")
_COL = {f: i for i, f in enumerate(FEATURES)}
_GRADE_COLS = [_COL[f"charge_{g}_t"] for g in GRADES]
ELEMENT_LABELS = dict(zip(ELEMENTS, ("Cu", "Sn", "Ni", "Cr", "Mo"), strict=True))


# -- the simulator's truth --------------------------------------------------------------


def true_contents(profile: PlantProfile) -> np.ndarray:
    """[G, E] % of the charged mass x recovery at the reference oxygen (35 Nm3/t)."""
    recovery = sg.RECOVERY.copy()
    recovery[sg.CR] = sg.cr_recovery(35.0)
    return sg.YIELD[:, None] * profile.composition_means() * recovery[None, :]


def true_heat_kwh(profile: PlantProfile, x: np.ndarray) -> float:
    """Noise-free electrical energy of a heat with inputs ``x`` (power-on time planned by
    the simulator's own rule, the tap temperature at its expected value), kWh."""
    masses = np.clip(x[_GRADE_COLS], 0.0, None)
    total, metal = float(masses.sum()), float(masses @ sg.YIELD)
    lime, carbon = float(x[_COL["lime_t"]]), float(x[_COL["carbon_kg"]])
    oxygen, gas = float(x[_COL["oxygen_nm3"]]), float(x[_COL["gas_nm3"]])
    off, aim = float(x[_COL["power_off_min"]]), float(x[_COL["tap_temp_aim_c"]])
    heel = float(x[_COL["hot_heel_t"]])
    planned = _energy_kwh_t(
        masses,
        total,
        metal,
        lime,
        oxygen,
        gas,
        carbon,
        38.0 + off,
        aim,
        0.0,
        profile.efficiency,
        profile.base_loss_kwh_t,
        0.0,
    )
    power_mw = profile.transformer_mva * POWER_FACTOR * UTILISATION
    on = float(np.clip(planned * metal / (power_mw * 1e3) * 60.0, 15.0, 90.0))
    tap_c = aim - 0.5 * max(off - 20.0, 0.0)
    kwh_t = _energy_kwh_t(
        masses,
        total,
        metal,
        lime,
        oxygen,
        gas,
        carbon,
        on + off,
        tap_c,
        heel - profile.hot_heel_t,
        profile.efficiency,
        profile.base_loss_kwh_t,
        0.0,
    )
    return kwh_t * metal


def true_energy_effects(profile: PlantProfile, x: np.ndarray) -> np.ndarray:
    """[G] kWh per heat per t of the grade replacing 1 t of the average charge of ``x``."""
    x0 = np.asarray(x, np.float64).mean(axis=0)
    base = true_heat_kwh(profile, x0)
    return np.array(
        [
            (true_heat_kwh(profile, substituted(x0, k, SUBSTITUTION_T)) - base) / SUBSTITUTION_T
            for k in range(len(GRADES))
        ]
    )


# -- scoring ----------------------------------------------------------------------------


@dataclass
class PlantScore:
    plant: str
    heats: int
    charged: list[str]
    yield_mae: float
    yield_mae_prior: float
    yield_cover: float
    content_rel: dict[str, float]  # element -> mean |learned / true - 1| over charged
    content_rel_prior: dict[str, float]
    content_cover: dict[str, float]
    energy_mae: float
    energy_cover: float
    uncharged_yield_halfwidth: float  # mean half-width of the yield interval, uncharged
    uncharged_cover: float  # coverage of yields and contents of uncharged grades
    misses: int = 0  # charged grade x property with the truth outside its interval
    flagged: int = 0  # charged grade x property flagged (Estimate.flagged)
    misses_flagged: int = 0  # misses that were flagged
    rows: list[dict[str, float | str]] = field(default_factory=list)  # per charged grade


def _inside(truth: float, lo: float, hi: float) -> bool:
    return lo <= truth <= hi


def score(
    name: str,
    profile: PlantProfile,
    char: Characterisation,
    x: np.ndarray,
) -> PlantScore:
    contents = true_contents(profile)
    energy = true_energy_effects(profile, x)
    prior_y, prior_c = hl.yield_prior(), hl.content_prior()
    charged = [k for k, g in enumerate(char.grades) if g.heats_charged > 0]
    absent = [k for k in range(len(GRADES)) if k not in charged]

    def est(k: int, p: str) -> Estimate:

        return char.grades[k].properties[p]

    yerr = [abs(est(k, "yield").value - sg.YIELD[k]) for k in charged]
    rel = {
        e: float(np.mean([abs(est(k, e).value / contents[k, j] - 1) for k in charged]))
        for j, e in enumerate(ELEMENTS)
    }
    rel_prior = {
        e: float(np.mean([abs(prior_c[k, j] / contents[k, j] - 1) for k in charged]))
        for j, e in enumerate(ELEMENTS)
    }
    cover = {
        e: float(np.mean([_inside(contents[k, j], est(k, e).lo, est(k, e).hi) for k in charged]))
        for j, e in enumerate(ELEMENTS)
    }
    unc_cover = [_inside(sg.YIELD[k], est(k, "yield").lo, est(k, "yield").hi) for k in absent]
    unc_cover += [
        _inside(contents[k, j], est(k, e).lo, est(k, e).hi)
        for k in absent
        for j, e in enumerate(ELEMENTS)
    ]
    truths = {
        "yield": sg.YIELD,
        **{e: contents[:, j] for j, e in enumerate(ELEMENTS)},
        "energy_kwh_per_t": energy,
    }
    missed = [
        (k, p)
        for k in charged
        for p in truths
        if not _inside(truths[p][k], est(k, p).lo, est(k, p).hi)
    ]
    flagged = [(k, p) for k in charged for p in truths if est(k, p).flagged]
    rows = []
    for k in charged:
        g = char.grades[k]
        row: dict[str, float | str] = {
            "grade": g.grade,
            "t_heat": g.mean_charge_t,
            "yield_true": float(sg.YIELD[k]),
        }
        for p, truth in (
            ("yield", sg.YIELD[k]),
            ("cu_pct", contents[k, 0]),
            ("energy_kwh_per_t", energy[k]),
        ):
            e = est(k, p)
            row.update({f"{p}_true": float(truth), p: e.value, f"{p}_lo": e.lo, f"{p}_hi": e.hi})
        rows.append(row)
    return PlantScore(
        plant=name,
        heats=char.n_heats,
        charged=[GRADES[k] for k in charged],
        yield_mae=float(np.mean(yerr)),
        yield_mae_prior=float(np.mean([abs(prior_y[k] - sg.YIELD[k]) for k in charged])),
        yield_cover=float(
            np.mean([_inside(sg.YIELD[k], est(k, "yield").lo, est(k, "yield").hi) for k in charged])
        ),
        content_rel=rel,
        content_rel_prior=rel_prior,
        content_cover=cover,
        energy_mae=float(
            np.mean([abs(est(k, "energy_kwh_per_t").value - energy[k]) for k in charged])
        ),
        energy_cover=float(
            np.mean(
                [
                    _inside(energy[k], est(k, "energy_kwh_per_t").lo, est(k, "energy_kwh_per_t").hi)
                    for k in charged
                ]
            )
        ),
        uncharged_yield_halfwidth=float(
            np.mean([(est(k, "yield").hi - est(k, "yield").lo) / 2 for k in absent])
        )
        if absent
        else math.nan,
        uncharged_cover=float(np.mean(unc_cover)) if unc_cover else math.nan,
        misses=len(missed),
        flagged=len(flagged),
        misses_flagged=len(set(missed) & set(flagged)),
        rows=rows,
    )


# -- the experiment ---------------------------------------------------------------------


@dataclass
class CharacteriseResult:
    seed: int
    config: FederationConfig
    level: float
    scores: list[PlantScore]
    characterisations: list[Characterisation]
    wall_s: float = 0.0
    png: Path | None = None

    def summary_table(self) -> str:
        el = [ELEMENT_LABELS[e] for e in ELEMENTS]
        head = [
            "plant",
            "heats",
            "grades",
            "yield MAE (prior)",
            "yield cover",
            *(f"{e} rel err (prior)" for e in el),
            "content cover",
            "energy MAE kWh/t",
            "energy cover",
            "uncharged: yield ±, cover",
            "misses (flagged) / flags",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in self.scores:
            cover = np.mean(list(s.content_cover.values()))
            cells = [
                s.plant,
                str(s.heats),
                str(len(s.charged)),
                f"{s.yield_mae:.3f} ({s.yield_mae_prior:.3f})",
                f"{s.yield_cover:.0%}",
                *(f"{s.content_rel[e]:.0%} ({s.content_rel_prior[e]:.0%})" for e in ELEMENTS),
                f"{cover:.0%}",
                f"{s.energy_mae:.1f}",
                f"{s.energy_cover:.0%}",
                "-"
                if math.isnan(s.uncharged_cover)
                else f"±{s.uncharged_yield_halfwidth:.3f}, {s.uncharged_cover:.0%}",
                f"{s.misses} ({s.misses_flagged}) / {s.flagged}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def detail_table(self) -> str:
        head = [
            "plant",
            "grade",
            "t/heat",
            "yield true",
            "yield learned [interval]",
            "Cu true %",
            "Cu learned % [interval]",
            "energy true",
            "energy learned [interval]",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in self.scores:
            for r in s.rows:
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            s.plant,
                            str(r["grade"]),
                            f"{r['t_heat']:.1f}",
                            f"{r['yield_true']:.3f}",
                            f"{r['yield']:.3f} [{r['yield_lo']:.3f}, {r['yield_hi']:.3f}]",
                            f"{r['cu_pct_true']:.4f}",
                            f"{r['cu_pct']:.4f} [{r['cu_pct_lo']:.4f}, {r['cu_pct_hi']:.4f}]",
                            f"{r['energy_kwh_per_t_true']:+.0f}",
                            f"{r['energy_kwh_per_t']:+.0f} [{r['energy_kwh_per_t_lo']:+.0f}, "
                            f"{r['energy_kwh_per_t_hi']:+.0f}]",
                        ]
                    )
                    + " |"
                )
        return "\n".join(lines)

    def pooled(self) -> dict[str, float]:
        """Coverage over every plant's charged grades together."""
        n_y = sum(len(s.charged) for s in self.scores)
        return {
            "yield": sum(s.yield_cover * len(s.charged) for s in self.scores) / n_y,
            "contents": sum(
                cast(float, np.mean(list(s.content_cover.values()))) * len(s.charged)
                for s in self.scores
            )
            / n_y,
            "energy": sum(s.energy_cover * len(s.charged) for s in self.scores) / n_y,
        }


def run_characterise_experiment(
    cfg: FederationConfig, level: float = DEFAULT_LEVEL, out_png: Path | None = None
) -> CharacteriseResult:
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plants = simulate(cfg)
        shared, sites = federate(SPEC, cfg, plants)
        onnx = [build_onnx(SPEC, shared, site or None) for site in sites]
    finally:
        torch.set_num_threads(threads)
    result = characterise_plants(cfg, plants, onnx, level)
    result.wall_s = time.perf_counter() - started
    if out_png is not None:
        result.png = plot(result, out_png)
    return result


def characterise_plants(
    cfg: FederationConfig, plants: list[PlantData], onnx: list[bytes], level: float = DEFAULT_LEVEL
) -> CharacteriseResult:
    """Each plant's serving model (``onnx``) characterised on its training heats, scored
    against the simulator's truth for that plant."""
    profiles = [p for p, _ in default_plants(len(cfg.sizes), base_seed=cfg.seed)]
    chars, scores = [], []
    for data, profile, model in zip(plants, profiles, onnx, strict=True):
        power_on = PowerOnEstimate.fit(data.x_train, FEATURES)
        char = characterise(model, SPEC, data.x_train, data.y_train, power_on, "site", level)
        char.source = f"{data.name} serving model"
        chars.append(char)
        scores.append(score(data.name, profile, char, data.x_train))
    return CharacteriseResult(cfg.seed, cfg, level, scores, chars)


def plot(result: CharacteriseResult, out_png: Path) -> Path:
    """Learned against true, every plant's charged grades: yield, Cu, energy effect."""
    fig, axes = figures.subplots(1, 3, figsize=(15, 4.6))
    panels = (
        ("yield", "yield t/t", False),
        ("cu_pct", "Cu % of charged mass", True),
        ("energy_kwh_per_t", "energy kWh per t of grade", False),
    )
    for ax, (prop, label, log) in zip(axes, panels, strict=True):
        lo_all, hi_all = [], []
        for s in result.scores:
            rows = [cast(dict[str, float], r) for r in s.rows]  # the numbers ("grade" unread)
            truth = np.array([r[f"{prop}_true"] for r in rows], float)
            value = np.array([r[prop] for r in rows], float)
            err = np.array(
                [
                    [r[prop] - r[f"{prop}_lo"] for r in rows],
                    [r[f"{prop}_hi"] - r[prop] for r in rows],
                ],
                float,
            )
            ax.errorbar(truth, value, yerr=err, fmt="o", ms=4, capsize=2, label=s.plant)
            lo_all += [*truth, *value]
            hi_all += [*truth, *value]
        lo, hi = min(lo_all), max(hi_all)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"learned {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Scrap characterisation vs simulator truth, seed {result.seed}, "
        f"{result.config.rounds} rounds ({result.level:.0%} intervals)"
    )
    return figures.save(fig, out_png)


# -- command line (arguments: alchimia.characterise.add_experiment_arguments) ------------


def run(args: argparse.Namespace) -> int:
    for seed in args.seeds:
        cfg = FederationConfig(
            sizes=tuple(args.sizes or DEFAULT_SIZES), seed=seed, rounds=args.rounds
        )
        png = (
            None
            if args.no_plot
            else args.out.with_name(f"{args.out.stem}-seed{seed}{args.out.suffix}")
        )
        result = run_characterise_experiment(cfg, args.level, png)
        print(
            f"seed {seed}: plants {', '.join(s.plant for s in result.scores)} with "
            f"{', '.join(map(str, cfg.sizes))} heats (characterised on the first "
            f"{1 - cfg.test_fraction:.0%}, the heats they trained on); federated hybrid, "
            f"{cfg.rounds} rounds x {cfg.epochs} epochs, {cfg.strategy}; "
            f"{args.level:.0%} intervals; errors over the grades each plant charges"
        )
        print(result.summary_table())
        print()
        print(result.detail_table())
        pooled = result.pooled()
        print(
            f"\ncoverage over all plants' charged grades (nominal {args.level:.0%}): "
            f"yield {pooled['yield']:.0%}, contents {pooled['contents']:.0%}, "
            f"energy {pooled['energy']:.0%}"
        )
        if result.png is not None:
            print(f"plot: {result.png}")
        print(f"wall time: {result.wall_s:.1f} s")
    return 0
