"""``alchimia experiment calibration``: do the sites' intervals cover what they promise?

Offline and in one process (no broker): a few simulated plants stream heats in step and
run what the agent runs: the federated hybrid (``eaf-hybrid-v1``, FedAvg of the shared
part, each plant's site part), the agent's ``SiteLearner`` at every plant (drift
detection, site re-fits, the rows of each round) and the agent's ``SiteCalibrator``
(split conformal on held-out heats, reset at every model swap, filled up with the
stream's residuals, fed each new heat's residual). Every fifth heat is a validation heat,
as in the agent's ``HeatTable``: never trained on, held out for calibration. One plant
(or every plant) drifts mid-way.

Every streamed heat gets its interval at ``level`` before its outcome is known; coverage
is the share of outcomes inside, per plant and target, in three phases: ``before`` the
drift, the ``transient`` just after it (``settle`` heats: the site detects, re-fits and
re-calibrates), and ``after``. The issue's target: ``before`` and ``after`` within
+-3 points of the level at every plant.

What differs from the agent: every new global version serves (the agent's
champion/challenger check is left out), and a round's site part serves with the new
version at once (the agent serves it first with the old version).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from alchimia.agent.learn.calibrating import MIN_RESET_HEATS, SiteCalibrator
from alchimia.agent.learn.site_learning import SiteLearner, SitePolicy
from alchimia.agent.learn.trainer import TrainConfig, TrainResult, train_delta
from alchimia.agent.sim import SimulatedPlant, default_plants, parse_drift
from alchimia.coordinator.strategies import make_strategy
from alchimia.models.calibration import DEFAULT_LEVEL, DEFAULT_WINDOW
from alchimia.models.params import Weights, get_weights, set_weights
from alchimia.models.regressor import HeatModel, build_model
from alchimia.models.schema import FEATURES, TARGETS
from alchimia.models.spec import ModelSpec

SPEC = ModelSpec(architecture="eaf-hybrid-v1")
PHASES = ("before", "transient", "after")
VAL_EVERY = 5  # the agent's HeatTable: every fifth heat is a validation heat
SHORT = {
    "energy_kwh_t": "energy",
    "tapped_t": "tapped",
    "tap_temp_c": "temp",
    "cu_pct": "Cu",
    "sn_pct": "Sn",
    "ni_pct": "Ni",
    "cr_pct": "Cr",
    "mo_pct": "Mo",
}


@dataclass(frozen=True)
class CalibrationConfig:
    plants: int = 4
    heats: int = 4000  # per plant: ~1,800 scored heats per phase (SE ~0.7 points)
    drift: str = "supplier_change"  # NAME[:key=value,...] of agent.sim's scenarios
    drift_plant: int = 1  # from 1; 0: every plant drifts
    drift_at: int = 2000
    settle: int = 200  # heats after the drift counted as transient
    seed: int = 0
    history: int = 200
    round_every: int = 25
    pretrain_rounds: int = 20
    epochs: int = 2
    lr: float = 3e-3
    batch_size: int = 32
    level: float = DEFAULT_LEVEL
    window: int = DEFAULT_WINDOW
    min_reset_heats: int = MIN_RESET_HEATS

    def __post_init__(self) -> None:
        if not 0 <= self.drift_plant <= self.plants:
            raise ValueError(f"drift_plant must be in 0..{self.plants}")
        if not (self.history < self.drift_at and self.drift_at + self.settle < self.heats):
            raise ValueError("need history < drift_at and drift_at + settle < heats")
        if min(self.history, self.round_every, self.epochs, self.batch_size, self.window) < 1:
            raise ValueError("history, round_every, epochs, batch_size, window must be >= 1")


@dataclass
class CalibrationResult:
    config: CalibrationConfig
    plants: list[str]
    drifting: list[str]
    # phase -> plant -> target -> coverage; and the heats it is over
    coverage: dict[str, dict[str, dict[str, float]]]
    heats: dict[str, dict[str, int]]
    width: dict[str, dict[str, dict[str, float]]]  # mean interval width, same keys
    detections: list[tuple[str, int]] = field(default_factory=list)  # (plant, heat index)
    resets: int = 0
    wall_s: float = 0.0
    # [plant, heat, target]: 1 inside, 0 outside, NaN no interval (history heats)
    hits: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0)), repr=False)

    def plant_mean(self, phase: str, plant: str) -> float:
        """Coverage of one plant in one phase, averaged over the targets."""
        return float(np.mean(list(self.coverage[phase][plant].values())))

    def worst(
        self,
        phases: tuple[str, ...] = ("before", "after"),
    ) -> tuple[float, str, str, str]:
        """Largest |coverage - level| over plants and targets: (gap, phase, plant, target)."""
        return max(
            (abs(c - self.config.level), ph, p, t)
            for ph in phases
            for p, row in self.coverage[ph].items()
            for t, c in row.items()
        )

    def worst_plant(
        self,
        phases: tuple[str, ...] = ("before", "after"),
    ) -> tuple[float, str, str]:
        """Largest |mean coverage over targets - level|: (gap, phase, plant)."""
        return max(
            (abs(self.plant_mean(ph, p) - self.config.level), ph, p)
            for ph in phases
            for p in self.plants
        )

    def met(self, tolerance: float = 0.03) -> bool:
        return self.worst()[0] <= tolerance

    def table(self) -> str:
        """Markdown: one row per phase and plant, coverage (%) per target and over all
        targets, and the mean interval width of energy and Cu."""
        head = [
            "phase",
            "plant",
            "heats",
            *(SHORT.get(t, t) for t in TARGETS),
            "all",
            "width kWh/t",
            "width Cu %",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for ph in PHASES:
            for p in self.plants:
                mark = "*" if p in self.drifting else ""
                cells = [ph, p + mark, str(self.heats[ph][p])]
                cells += [f"{100 * self.coverage[ph][p][t]:.1f}" for t in TARGETS]
                cells += [
                    f"{100 * self.plant_mean(ph, p):.1f}",
                    f"{self.width[ph][p]['energy_kwh_t']:.1f}",
                    f"{self.width[ph][p]['cu_pct']:.4f}",
                ]
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


class _Model:
    """One plant's served model, reloaded only when its weights change."""

    def __init__(self) -> None:
        self.model: HeatModel = build_model(SPEC)
        self.model.eval()
        self.loaded: tuple[Weights, Weights] | None = None

    def load(self, shared: Weights, site: Weights) -> _Model:
        if self.loaded is None or self.loaded[0] is not shared or self.loaded[1] is not site:
            set_weights(self.model, shared)
            set_weights(self.model, site, "site")
            self.loaded = (shared, site)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def _simulate(cfg: CalibrationConfig) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    xs, ys, names, drifting = [], [], [], []
    for k, (profile, plant_seed) in enumerate(default_plants(cfg.plants, base_seed=cfg.seed)):
        drifts = []
        if cfg.drift_plant in (0, k + 1):
            name, _, params = cfg.drift.partition(":")
            drifts = [parse_drift(f"{name}@{cfg.drift_at}" + (f":{params}" if params else ""))]
            drifting.append(profile.name)
        heats = SimulatedPlant(profile, plant_seed, drifts).heats(cfg.heats)
        xs.append([[h.inputs[f] for f in FEATURES] for h in heats])
        ys.append([[h.outcome[t] for t in TARGETS] for h in heats])
        names.append(profile.name)
    return names, drifting, np.array(xs, np.float32), np.array(ys, np.float32)


def run_calibration_experiment(cfg: CalibrationConfig) -> CalibrationResult:
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads cost more than they give
    try:
        result = _run(cfg)
    finally:
        torch.set_num_threads(threads)
    result.wall_s = time.perf_counter() - started
    return result


def _run(cfg: CalibrationConfig) -> CalibrationResult:  # noqa: C901
    names, drifting, X, Y = _simulate(cfg)
    n_plants, n_targets = len(names), len(TARGETS)
    validation = (np.arange(cfg.heats) + 1) % VAL_EVERY == 0  # heat index -> held out
    train = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    strategy = make_strategy("fedavg")
    policy = SitePolicy()

    def fit(
        shared: Weights,
        site: Weights | None,
        x: np.ndarray,
        y: np.ndarray,
        round_id: int,
        replay: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> TrainResult:
        cfg_r = TrainConfig(**{**asdict(train), "seed": round_id})
        return train_delta(SPEC, shared, x, y, cfg_r, site=site, replay=replay)

    # Pre-training on the history's training heats, federated (what a new site finds).
    hist = ~validation[: cfg.history]
    shared = get_weights(build_model(SPEC, seed=cfg.seed))
    sites: list[Weights] = [get_weights(build_model(SPEC), "site")] * n_plants
    for r in range(cfg.pretrain_rounds):
        res = [
            fit(shared, sites[k], X[k, : cfg.history][hist], Y[k, : cfg.history][hist], r)
            for k in range(n_plants)
        ]
        sites = [x.site for x in res]
        shared = strategy.aggregate(shared, [(x.delta, float(hist.sum())) for x in res])

    learners = [
        SiteLearner(SPEC.features, SPEC.targets, SPEC.y_scale, policy, seed=cfg.seed * 1000 + k)
        for k in range(n_plants)
    ]
    cals = [
        SiteCalibrator(SPEC.targets, cfg.level, cfg.window, cfg.min_reset_heats)
        for _ in range(n_plants)
    ]
    models = [_Model() for _ in range(n_plants)]
    for k in range(n_plants):
        for i in range(cfg.history):
            learners[k].observe(X[k, i], Y[k, i], None, learn=not validation[i])
            if validation[i]:
                cals[k].hold_out(i + 1, X[k, i], Y[k, i])
        cals[k].reset(models[k].load(shared, sites[k]).predict)

    hits = np.full((n_plants, cfg.heats, n_targets), np.nan)
    widths = np.full((n_plants, cfg.heats, n_targets), np.nan)
    detections: list[tuple[str, int]] = []
    round_id = cfg.pretrain_rounds
    for start in range(cfg.history, cfg.heats, cfg.round_every):
        stop = min(start + cfg.round_every, cfg.heats)
        for i in range(start, stop):
            for k in range(n_plants):
                x, y = X[k, i : i + 1], Y[k, i : i + 1]
                pred = models[k].load(shared, sites[k]).predict(x)
                lo, hi = cals[k].interval(pred)  # issued before the outcome is known
                if np.isfinite(lo).all() and np.isfinite(hi).all():
                    hits[k, i] = (y[0] >= lo[0]) & (y[0] <= hi[0])
                    widths[k, i] = hi[0] - lo[0]
                cals[k].observe(pred, y, lo, hi, counts=[i + 1])
                learner = learners[k]
                if learner.observe(x[0], y[0], pred[0], learn=not validation[i]) is not None:
                    detections.append((names[k], i))
                if validation[i]:
                    cals[k].hold_out(i + 1, x[0], y[0])
                if learner.refit_due():  # the agent's site re-fit, then a reset
                    site = learner.refit(SPEC, shared, sites[k])
                    if site is not None:
                        sites[k] = site
                        cals[k].reset(
                            models[k].load(shared, site).predict, regime_start=learner.regime_start
                        )
        # A round, as the agent runs it (Agent._maybe_train), then every site serves the
        # new version with its new site part: a reset at every plant.
        updates = []
        for k, learner in enumerate(learners):
            x, y, replay = learner.round_rows()
            result = fit(shared, sites[k], x, y, round_id, replay)
            sites[k] = result.site
            updates.append((result.delta, float(len(x) + (len(replay[0]) if replay else 0))))
        shared = strategy.aggregate(shared, updates)
        round_id += 1
        for k in range(n_plants):
            cals[k].reset(
                models[k].load(shared, sites[k]).predict, regime_start=learners[k].regime_start
            )

    bounds = {
        "before": (cfg.history, cfg.drift_at),
        "transient": (cfg.drift_at, cfg.drift_at + cfg.settle),
        "after": (cfg.drift_at + cfg.settle, cfg.heats),
    }
    coverage: dict[str, dict[str, dict[str, float]]] = {}
    width: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for ph, (a, b) in bounds.items():
        coverage[ph], width[ph], counts[ph] = {}, {}, {}
        for k, p in enumerate(names):
            h, w = hits[k, a:b], widths[k, a:b]
            scored = np.isfinite(h[:, 0])
            counts[ph][p] = int(scored.sum())
            coverage[ph][p] = dict(zip(TARGETS, map(float, np.nanmean(h, axis=0)), strict=True))
            width[ph][p] = dict(zip(TARGETS, map(float, np.nanmean(w, axis=0)), strict=True))
    return CalibrationResult(
        cfg,
        names,
        drifting,
        coverage,
        counts,
        width,
        detections,
        resets=sum(c.resets for c in cals),
        hits=hits,
    )


# -- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CalibrationConfig()
    parser.add_argument("--plants", type=int, default=d.plants)
    parser.add_argument("--heats", type=int, default=d.heats, help="heats per plant")
    parser.add_argument(
        "--drift", default=d.drift, help="NAME[:key=value,...] of agent.sim's scenarios"
    )
    parser.add_argument(
        "--drift-plant",
        type=int,
        default=d.drift_plant,
        help="plant number from 1; 0: every plant drifts",
    )
    parser.add_argument("--drift-at", type=int, default=d.drift_at)
    parser.add_argument(
        "--settle",
        type=int,
        default=d.settle,
        help="heats after the drift reported apart (transient)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[d.seed])
    parser.add_argument("--history", type=int, default=d.history)
    parser.add_argument("--round-every", type=int, default=d.round_every)
    parser.add_argument("--level", type=float, default=d.level)
    parser.add_argument("--window", type=int, default=d.window, help="calibration window (heats)")
    parser.add_argument("--min-reset-heats", type=int, default=d.min_reset_heats)


def run(args: argparse.Namespace) -> int:
    for seed in args.seeds:
        try:
            cfg = CalibrationConfig(
                plants=args.plants,
                heats=args.heats,
                drift=args.drift,
                drift_plant=args.drift_plant,
                drift_at=args.drift_at,
                settle=args.settle,
                seed=seed,
                history=args.history,
                round_every=args.round_every,
                level=args.level,
                window=args.window,
                min_reset_heats=args.min_reset_heats,
            )
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        result = run_calibration_experiment(cfg)
        print(
            f"seed {seed}: {len(result.plants)} plants x {cfg.heats} heats, "
            f"{cfg.drift} at heat {cfg.drift_at} at {', '.join(result.drifting) or 'none'} "
            f"(*); {cfg.level:.0%} intervals, window {cfg.window}; coverage % of the "
            f"streamed heats (transient: the {cfg.settle} heats after the drift)"
        )
        print(result.table())
        gap, ph, p = result.worst_plant()
        print(
            f"{'MET ' if gap <= 0.03 else 'MISSED'} every plant's coverage (mean over "
            f"targets) within +-3 points of {cfg.level:.0%} before and after the drift: "
            f"worst {gap * 100:.1f} points ({ph}, {p})"
        )
        gap, ph, p, t = result.worst()
        print(
            f"{'MET ' if gap <= 0.03 else 'MISSED'} every plant and target within +-3 "
            f"points: worst {gap * 100:.1f} points ({ph}, {p}, {t})"
        )
        found = ", ".join(f"{p}@{i}" for p, i in result.detections)
        print(
            f"detections: {found or 'none'}; calibration resets: {result.resets}; "
            f"wall time {result.wall_s:.1f} s"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(prog="alchimia experiment calibration", description=__doc__)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


__all__ = [
    "CalibrationConfig",
    "CalibrationResult",
    "add_arguments",
    "run",
    "run_calibration_experiment",
]
