"""``alchimia experiment drift``: does continual learning pay after a supplier change?

Offline and in one process (no broker): a few simulated plants stream heats in step, one
of them gets a new scrap supplier mid-way, and four ways of keeping a model are scored
test-then-train on every heat of that plant:

(a) ``local``: each plant trains its own model on all its heats, alone;
(b) ``static``: a global model pre-trained federatedly on the history, then frozen;
(c) ``fedavg``: FedAvg rounds on each plant's full accumulated heats, no drift handling;
(d) ``continual``: FedAvg rounds on each plant's recent heats plus regime-balanced replay
    (EWC available, off by default), a Page-Hinkley detector per target on each site's
    error stream (and a PSI input monitor), and a plant-only fine-tune of the global model
    that each site serves; a detection starts a new regime (the fine-tune forgets the
    rows before the estimated onset) and re-tunes at once and every few heats while the
    regime is young, without waiting for a round. The global model stays federated.

Two ablation rows take (d) apart: its federated model without the site fine-tune, and
the site fine-tune refreshed after every round but with no detector.

Every arm starts from the same history and the same initial weights, trains with the same
epochs and learning rate per round, and sees each heat only after predicting it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from agent.continual import (
    ErrorDriftMonitor,
    InputDriftMonitor,
    PageHinkley,
    Prequential,
    RegimeReplayBuffer,
    local_finetune,
)
from agent.sim import SimulatedPlant, default_plants, parse_drift
from agent.trainer import TrainConfig, train_delta
from coordinator.strategies import make_strategy
from models.params import Weights, get_weights, set_weights
from models.regressor import HeatModel, build_model
from models.schema import FEATURES, TARGETS
from models.spec import ModelSpec

ARMS = ("local", "static", "fedavg", "continual")
ABLATIONS = ("cl_global", "finetune_rounds")
ARM_LABELS = {
    "local": "(a) local only",
    "static": "(b) static global",
    "fedavg": "(c) FedAvg, no CL",
    "continual": "(d) FedAvg + CL",
    "cl_global": "(d) without its site fine-tune",
    "finetune_rounds": "(d) without its detector",
}
SHOWN = (("energy_kwh_t", "kWh/t", "{:.2f}"), ("cu_pct", "Cu %", "{:.4f}"))


@dataclass(frozen=True)
class ContinualConfig:
    """Knobs of arm (d); defaults are what docs/CONTINUAL.md measured."""

    recent_rows: int = 300  # newest rows of the current regime a round trains on
    replay_capacity: int = 400  # per plant, split over regimes
    replay_rows: int = 100  # replayed next to the recent rows in a round
    ewc_lambda: float = 0.0  # EWC in the federated rounds (Fisher on the replay rows)
    finetune_epochs: int = 20
    finetune_lr: float = 1e-3
    finetune_rows: int = 200  # newest rows of the current regime a site fine-tune uses
    finetune_replay: int = 0  # rows from past regimes mixed into the site fine-tune
    finetune_ewc: float = 0.0
    finetune_always: bool = True  # serve a site fine-tune from the start, not only after drift
    adapt_every: int = 5  # heats between site fine-tunes while a new regime is young
    min_regime_rows: int = 5  # rows of a new regime before the first site fine-tune
    ph_threshold: float = 20.0


@dataclass
class ArmResult:
    name: str
    label: str
    before: dict[str, float]  # prequential MAE over the last `window` heats before drift
    after: dict[str, float]  # ... over the first `window` heats from the drift on
    end: dict[str, float]  # ... over the last `window` heats
    held_out_before: dict[str, float]  # MAE on held-out pre-drift-regime heats, at drift
    held_out_end: dict[str, float]  # the same heats, at the end
    errors: np.ndarray = field(repr=False)  # |error| per streamed heat, drift plant

    @property
    def forgetting(self) -> dict[str, float]:
        """Held-out pre-drift-regime error at the end minus at the drift (> 0: forgot)."""
        return {t: self.held_out_end[t] - self.held_out_before[t] for t in self.held_out_end}


@dataclass
class ExperimentResult:
    arms: dict[str, ArmResult]
    targets: tuple[str, ...]
    stream_start: int  # heat index of the first streamed (predicted) heat
    drift_plant: str
    drift_at: int
    window: int
    detections: list[tuple[str, int, tuple[str, ...]]]  # (plant, heat index, targets)
    wall_s: float
    png: Path | None
    config: dict[str, object]

    def numbers(self) -> dict[str, dict[str, float]]:
        """Flat figures per arm: ``{phase}_{target}`` for the shown targets."""
        out: dict[str, dict[str, float]] = {}
        for name, arm in self.arms.items():
            row: dict[str, float] = {}
            for t, _, _ in SHOWN:
                row[f"before_{t}"] = arm.before[t]
                row[f"after_{t}"] = arm.after[t]
                row[f"end_{t}"] = arm.end[t]
                row[f"forgetting_{t}"] = arm.forgetting[t]
            out[name] = row
        return out

    def table(self) -> str:
        """A Markdown table: readable in a terminal and pasteable into the docs."""
        head = ["arm"]
        for _, unit, _ in SHOWN:
            head += [f"{unit} before", f"{unit} after", f"{unit} end", f"{unit} forgetting"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in self.arms.values():
            cells = [arm.label]
            for t, _, fmt in SHOWN:
                signed = fmt.replace("{:", "{:+")
                cells += [fmt.format(arm.before[t]), fmt.format(arm.after[t]),
                          fmt.format(arm.end[t]), signed.format(arm.forgetting[t])]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


class _Served:
    """A model kept loaded for per-heat predictions; reloaded only when weights change."""

    def __init__(self, spec: ModelSpec, weights: Weights) -> None:
        self.model: HeatModel = build_model(spec)
        self.model.eval()
        self.weights = weights
        set_weights(self.model, weights)

    def load(self, weights: Weights) -> None:
        if weights is not self.weights:
            set_weights(self.model, weights)
            self.weights = weights

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def _apply(weights: Weights, delta: Weights) -> Weights:
    return {k: (weights[k] + delta[k]).astype(np.float32) for k in weights}


def _fedavg(global_w: Weights, updates: Sequence[tuple[Weights, float]]) -> Weights:
    return make_strategy("fedavg").aggregate(global_w, list(updates))


def _simulate(plants: int, heats: int, drift_plant: int, drift: str, drift_at: int,
              seed: int, holdout: int) -> tuple[list[str], np.ndarray, np.ndarray,
                                                np.ndarray, np.ndarray]:
    """Heat arrays per plant, [plant, heat, column], plus held-out pre-drift-regime heats.

    The held-out heats come from a twin of the drifting plant (same profile, another seed,
    no drift): the old regime, never trained on.
    """
    profiles = default_plants(plants, base_seed=seed)
    xs, ys, names = [], [], []
    for k, (profile, plant_seed) in enumerate(profiles):
        drifts = [parse_drift(_drift_spec(drift, drift_at))] if k == drift_plant - 1 else []
        hs = SimulatedPlant(profile, plant_seed, drifts).heats(heats)
        xs.append([[h.inputs[f] for f in FEATURES] for h in hs])
        ys.append([[h.outcome[t] for t in TARGETS] for h in hs])
        names.append(profile.name)
    profile, plant_seed = profiles[drift_plant - 1]
    twin = SimulatedPlant(profile, plant_seed + 7919).heats(holdout)
    hx = np.array([[h.inputs[f] for f in FEATURES] for h in twin], np.float32)
    hy = np.array([[h.outcome[t] for t in TARGETS] for h in twin], np.float32)
    return names, np.array(xs, np.float32), np.array(ys, np.float32), hx, hy


def _drift_spec(drift: str, drift_at: int) -> str:
    name, _, params = drift.partition(":")
    return f"{name}@{drift_at}" + (f":{params}" if params else "")


class _Site:
    """Arm (d) at one plant: detectors, replay, where the current regime began, and the
    site fine-tune it serves once a drift was detected there."""

    def __init__(self, spec: ModelSpec, cc: ContinualConfig, seed: int) -> None:
        self.errors = ErrorDriftMonitor(spec.targets, spec.y_scale,
                                        lambda: PageHinkley(threshold=cc.ph_threshold))
        self.inputs = InputDriftMonitor(spec.features)
        self.replay = RegimeReplayBuffer(cc.replay_capacity, seed=seed)
        self.regime_start = 0  # heat index where the current regime began
        self.personal: Weights | None = None  # the site fine-tune, once adapted
        self.adapted = False
        self.last_tune = -1

    def observe(self, i: int, pred: np.ndarray, x: np.ndarray, y: np.ndarray,
                ) -> tuple[str, ...] | None:
        """One heat's outcome; returns what fired (a new regime starts here) or None."""
        fired = self.errors.update(pred, y)
        onset = i
        if fired:
            lags = [det.change_lag or 0 for det in self.errors.detectors
                    if isinstance(det, PageHinkley)]
            onset = i - max(lags, default=0)
        moved = self.inputs.update(x)
        if moved:
            fired = [*(fired or []), *(f"input:{f}" for f in moved)]
        if fired:
            self.replay.new_regime()
            self.regime_start = max(onset, self.regime_start)
            self.adapted, self.last_tune = True, -1
        self.replay.add(x, y)
        return tuple(fired) if fired else None

    def tune_due(self, i: int, every: int, young: int) -> bool:
        """Re-tune at once after a detection, then every ``every`` heats while the regime
        has fewer than ``young`` rows (later, the refresh after each round suffices)."""
        return self.adapted and (self.last_tune < 0 or (
            i - self.last_tune >= every and i - self.regime_start < young))


def run_drift_experiment(plants: int = 4, heats: int = 1000, drift_plant: int = 1,
                         drift_at: int = 500, seed: int = 0, out_png: Path | None = None, *,
                         history: int = 200, round_every: int = 25, window: int = 50,
                         pretrain_rounds: int = 20, epochs: int = 2, lr: float = 3e-3,
                         batch_size: int = 32, holdout: int = 200,
                         drift: str = "supplier_change",
                         continual: ContinualConfig | None = None,
                         ablations: bool = True) -> ExperimentResult:
    """Run the four arms on the same simulated heats; ``drift_plant`` counts from 1.

    Heats ``0..history-1`` of every plant are known at the start and pre-train every arm;
    heats from ``history`` on stream in rounds of ``round_every``. ``ablations`` adds two
    rows that take arm (d) apart (its federated model alone; a site fine-tune after every
    round without any detector). Epochs, learning rate and batch size are the
    coordinator's defaults.
    """
    if not 1 <= drift_plant <= plants:
        raise ValueError(f"drift_plant must be in 1..{plants}, got {drift_plant}")
    if not history + window <= drift_at <= heats - window:
        raise ValueError("need history + window <= drift_at <= heats - window")
    if min(history, round_every, window, epochs, batch_size, holdout) < 1:
        raise ValueError("history, round_every, window, epochs, batch_size, holdout >= 1")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 20-64-32-8 MLP: threads cost more than they give
    try:
        run = _Run(plants, heats, drift_plant, drift_at, seed, history, round_every, window,
                   pretrain_rounds, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size),
                   holdout, drift, continual or ContinualConfig(), ablations)
        result = run.result()
    finally:
        torch.set_num_threads(threads)
    result.wall_s = time.perf_counter() - started
    if out_png is not None:
        result.png = plot(result, out_png)
    return result


class _Run:
    """One experiment: state of every arm, advanced round by round."""

    def __init__(self, plants: int, heats: int, drift_plant: int, drift_at: int, seed: int,
                 history: int, round_every: int, window: int, pretrain_rounds: int,
                 train: TrainConfig, holdout: int, drift: str, cc: ContinualConfig,
                 ablations: bool) -> None:
        self.spec = spec = ModelSpec()
        self.names, self.X, self.Y, self.hx, self.hy = _simulate(
            plants, heats, drift_plant, drift, drift_at, seed, holdout)
        self.plants, self.heats, self.d, self.drift_at = plants, heats, drift_plant - 1, drift_at
        self.seed, self.history, self.round_every, self.window = seed, history, round_every, window
        self.train, self.cc = train, cc
        self.arms = ARMS + (ABLATIONS if ablations else ())
        self.config: dict[str, object] = dict(
            plants=plants, heats=heats, drift_plant=drift_plant, drift_at=drift_at, seed=seed,
            history=history, round_every=round_every, window=window,
            pretrain_rounds=pretrain_rounds, epochs=train.epochs, lr=train.lr,
            batch_size=train.batch_size, holdout=holdout, drift=drift, continual=cc)

        # Pre-training on the history: federated for (b)-(d), each plant alone for (a).
        init = get_weights(build_model(spec, seed=seed))
        global_w = init
        for r in range(pretrain_rounds):
            global_w = _fedavg(global_w, [(self._delta(global_w, k, 0, history, r),
                                           float(history)) for k in range(plants)])
        self.local_w = []
        for k in range(plants):
            w = init
            for r in range(pretrain_rounds):
                w = _apply(w, self._delta(w, k, 0, history, r))
            self.local_w.append(w)
        self.static_w = self.fed_w = self.cl_w = self.ft_w = global_w
        self.sites = [_Site(spec, cc, seed * 1000 + k) for k in range(plants)]
        for k, site in enumerate(self.sites):
            for i in range(history):
                site.replay.add(self.X[k, i], self.Y[k, i])
                site.inputs.update(self.X[k, i])
        self.round_id = pretrain_rounds
        if cc.finetune_always:
            for k, site in enumerate(self.sites):
                site.adapted = True
                self._site_tune(k, history - 1)
        self.served = {arm: _Served(spec, init) for arm in self.arms}
        self.preq = {arm: Prequential(spec.targets, window) for arm in self.arms}
        self.phase: dict[str, dict[str, dict[str, float]]] = {a: {} for a in self.arms}
        self.held: dict[str, dict[str, dict[str, float]]] = {a: {} for a in self.arms}
        self.errors = {a: np.zeros((heats - history, len(spec.targets))) for a in self.arms}
        self.detections: list[tuple[str, int, tuple[str, ...]]] = []

    def _delta(self, base: Weights, k: int, lo: int, hi: int, round_id: int,
               ewc: float = 0.0, replay: tuple[np.ndarray, np.ndarray] | None = None,
               ) -> Weights:
        cfg = replace(self.train, seed=round_id, ewc_lambda=ewc)
        return train_delta(self.spec, base, self.X[k, lo:hi], self.Y[k, lo:hi], cfg,
                           replay=replay).delta

    def weights(self, arm: str, k: int) -> Weights:
        """What ``arm`` serves at plant ``k`` now."""
        if arm == "local":
            return self.local_w[k]
        if arm == "static":
            return self.static_w
        if arm == "fedavg":
            return self.fed_w
        if arm == "continual":
            site = self.sites[k]
            return site.personal if site.adapted and site.personal is not None else self.cl_w
        if arm == "cl_global":
            return self.cl_w
        return self.ft_w  # finetune_rounds, scored at the drift plant only

    def _finetune(self, k: int, lo: int, hi: int, replay_rows: int = 0) -> Weights:
        site, cc = self.sites[k], self.cc
        replay = site.replay.sample(replay_rows, past_only=True)
        return local_finetune(self.spec, self.cl_w, self.X[k, lo:hi], self.Y[k, lo:hi],
                              replay=replay if len(replay[0]) else None,
                              epochs=cc.finetune_epochs, lr=cc.finetune_lr,
                              batch_size=self.train.batch_size, ewc_lambda=cc.finetune_ewc,
                              seed=self.seed + hi)

    def _site_tune(self, k: int, i: int) -> None:
        """Site fine-tune of (d)'s federated model on the current regime's newest rows."""
        site = self.sites[k]
        lo = max(site.regime_start, i + 1 - self.cc.finetune_rows)
        if i + 1 - lo >= self.cc.min_regime_rows:
            site.personal = self._finetune(k, lo, i + 1, self.cc.finetune_replay)
            site.last_tune = i

    def _held_out(self, arm: str) -> dict[str, float]:
        self.served[arm].load(self.weights(arm, self.d))
        err = np.abs(self.served[arm].predict(self.hx) - self.hy).mean(axis=0)
        return dict(zip(self.spec.targets, map(float, err), strict=True))

    def _test(self, i: int) -> None:
        """Every arm predicts heat ``i`` before learning from it."""
        if i == self.drift_at:  # the models in place when the new supplier's first heat comes
            for arm in self.arms:
                self.held[arm]["before"] = self._held_out(arm)
        for k in range(self.plants):
            x, y = self.X[k, i:i + 1], self.Y[k, i]
            for arm in self.arms:
                if k != self.d and arm != "continual":
                    continue  # only the drift plant is scored; (d) acts at every site
                self.served[arm].load(self.weights(arm, k))
                pred = self.served[arm].predict(x)[0]
                if k == self.d:
                    self.preq[arm].update(pred, y)
                    self.errors[arm][i - self.history] = np.abs(pred - y)
                if arm == "continual":
                    fired = self.sites[k].observe(i, pred, self.X[k, i], y)
                    if fired:
                        self.detections.append((self.names[k], i, fired))
                    if self.sites[k].tune_due(i, self.cc.adapt_every, self.cc.finetune_rows):
                        self._site_tune(k, i)  # the early update: no waiting for a round
        for arm in self.arms:
            if i == self.drift_at - 1:
                self.phase[arm]["before"] = self.preq[arm].snapshot()
            if i == self.drift_at + self.window - 1:
                self.phase[arm]["after"] = self.preq[arm].snapshot()

    def _round(self, n: int) -> None:
        """One round per arm, after heat ``n - 1``."""
        r, cc = self.round_id, self.cc
        self.local_w = [_apply(w, self._delta(w, k, 0, n, r))
                        for k, w in enumerate(self.local_w)]
        self.fed_w = _fedavg(self.fed_w, [(self._delta(self.fed_w, k, 0, n, r), float(n))
                                          for k in range(self.plants)])
        ups = []
        for k, site in enumerate(self.sites):
            lo = max(site.regime_start, n - cc.recent_rows)
            replay = site.replay.sample(cc.replay_rows)
            delta = self._delta(self.cl_w, k, lo, n, r, cc.ewc_lambda,
                                replay if len(replay[0]) else None)
            ups.append((delta, float(n - lo + len(replay[0]))))
        self.cl_w = _fedavg(self.cl_w, ups)
        for k, site in enumerate(self.sites):
            if site.adapted:
                self._site_tune(k, n - 1)
        if "finetune_rounds" in self.arms:
            self.ft_w = self._finetune(self.d, max(n - cc.finetune_rows, 0), n)
        self.round_id += 1

    def result(self) -> ExperimentResult:
        for start in range(self.history, self.heats, self.round_every):
            stop = min(start + self.round_every, self.heats)
            for i in range(start, stop):
                self._test(i)
            self._round(stop)
        for arm in self.arms:
            self.held[arm]["end"] = self._held_out(arm)
            self.phase[arm]["end"] = self.preq[arm].snapshot()

        def pick(snap: dict[str, float]) -> dict[str, float]:
            return {t: snap[f"mae_recent_{t}"] for t in self.spec.targets}

        arms = {a: ArmResult(a, ARM_LABELS[a], pick(self.phase[a]["before"]),
                             pick(self.phase[a]["after"]), pick(self.phase[a]["end"]),
                             self.held[a]["before"], self.held[a]["end"], self.errors[a])
                for a in self.arms}
        return ExperimentResult(arms, self.spec.targets, self.history, self.names[self.d],
                                self.drift_at, self.window, self.detections, 0.0, None,
                                self.config)


def plot(result: ExperimentResult, out_png: Path) -> Path:
    """Rolling MAE per arm at the drifted plant, energy and Cu, with drift and detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SHOWN), 1, figsize=(10, 6.5), sharex=True)
    heats = np.arange(result.stream_start, result.stream_start + next(
        iter(result.arms.values())).errors.shape[0])
    for ax, (target, unit, _) in zip(axes, SHOWN, strict=True):
        j = result.targets.index(target)
        for arm in sorted(result.arms.values(), key=lambda a: a.name == "continual"):
            err = arm.errors[:, j]
            rolling = np.convolve(err, np.ones(result.window), mode="full")[: len(err)]
            counts = np.minimum(np.arange(1, len(err) + 1), result.window)
            ablation = arm.name in ABLATIONS
            ax.plot(heats, rolling / counts, label=arm.label, ls="--" if ablation else "-",
                    lw=1.0 if ablation else (2.0 if arm.name == "continual" else 1.3))
        ax.axvline(result.drift_at, color="k", ls="--", lw=1)
        for plant, heat, _ in result.detections:
            if plant == result.drift_plant:
                ax.axvline(heat, color="tab:red", ls=":", lw=0.8)
        ax.set_ylabel(f"MAE {unit} (last {result.window})")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Prequential error at {result.drift_plant}: supplier change at heat "
                      f"{result.drift_at} (dashed), detections (dotted)")
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("heat")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


# -- command line ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plants", type=int, default=4)
    parser.add_argument("--heats", type=int, default=1000, help="heats per plant")
    parser.add_argument("--drift-plant", type=int, default=1, help="plant number, from 1")
    parser.add_argument("--drift-at", type=int, default=500, help="heat index of the drift")
    parser.add_argument("--drift", default="supplier_change",
                        help="NAME[:key=value,...] of agent.sim's scenarios")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history", type=int, default=200, help="heats known at start")
    parser.add_argument("--round-every", type=int, default=25, help="heats per round")
    parser.add_argument("--window", type=int, default=50, help="heats per error window")
    parser.add_argument("--ewc-lambda", type=float, default=ContinualConfig.ewc_lambda,
                        help="EWC strength in arm (d)'s rounds")
    parser.add_argument("--out", type=Path, default=Path("runs/drift-experiment.png"),
                        help="PNG of the rolling error")
    parser.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        result = run_drift_experiment(
            plants=args.plants, heats=args.heats, drift_plant=args.drift_plant,
            drift_at=args.drift_at, seed=args.seed,
            out_png=None if args.no_plot else args.out, history=args.history,
            round_every=args.round_every, window=args.window, drift=args.drift,
            continual=ContinualConfig(ewc_lambda=args.ewc_lambda))
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print(f"drift: {_drift_spec(args.drift, args.drift_at)} at {result.drift_plant}; "
          f"{args.plants} plants x {args.heats} heats, a round every {args.round_every}; "
          f"MAE over {args.window} heats at {result.drift_plant}")
    print(result.table())
    found = [f"{p}@{h} ({', '.join(t)})" for p, h, t in result.detections]
    print(f"detections in (d): {', '.join(found) if found else 'none'}")
    if result.png is not None:
        print(f"plot: {result.png}")
    print(f"wall time: {result.wall_s:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(prog="alchimia experiment drift", description=__doc__)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


__all__ = ["ABLATIONS", "ARMS", "ArmResult", "ContinualConfig", "ExperimentResult",
           "add_arguments", "plot", "run", "run_drift_experiment"]
