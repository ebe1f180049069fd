"""``alchimia experiment drift``: does continual learning pay after a supplier change?

Offline and in one process (no broker): a few simulated plants stream heats in step, one
of them gets a new scrap supplier mid-way, and ways of keeping a model are scored
test-then-train on every heat of that plant. Every arm uses the agent's model,
``eaf-hybrid-v1`` (shared tensors federated, site tensors kept at each plant), and the
agent's training code (``agent.learn.trainer.train_delta``: FedRep, the site part first):

(a) ``local``: the drifting plant alone: the same rounds on all its heats, nobody to
    average with;
(b) ``static``: the model pre-trained federatedly on the history (shared part and each
    plant's site part), then frozen;
(c) ``fedavg``: FedAvg rounds of the shared part on every plant's full accumulated heats,
    each plant's site part from its rounds; no drift handling;
(d) ``continual``: the agent's continual learning: at each plant the agent's own
    ``agent.learn.site_learning.SiteLearner`` (with the agent's default ``SitePolicy``)
    scores each heat, watches for drift, picks the rows of each round (the current
    regime's newest heats plus regime-balanced replay) and re-fits the site part after a
    detection, without waiting for a round. The same object, the same defaults, as
    ``Agent`` runs.

Three ablation rows take (d) apart at the drifting plant, on (d)'s federated shared part:
without its detector (rounds on the newest heats, site part from rounds only), without
its re-fits between rounds (the detector sets the regime, the next round adapts), and
without its site part (the shared part alone).

Every arm starts from the same history and the same initial weights, trains with the same
epochs and learning rate per round (the coordinator's defaults), and sees each heat only
after predicting it. Aggregation is the coordinator's ``fedavg`` strategy.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from alchimia import figures
from alchimia.agent.learn.continual import Prequential
from alchimia.agent.learn.site_learning import SiteLearner, SitePolicy
from alchimia.agent.learn.trainer import TrainConfig, TrainResult, train_delta
from alchimia.agent.sim import SimulatedPlant, default_plants, parse_drift
from alchimia.coordinator.strategies import make_strategy
from alchimia.models.params import Weights, add, get_weights, set_weights
from alchimia.models.regressor import HeatModel, build_model
from alchimia.models.schema import FEATURES, TARGETS
from alchimia.models.spec import ModelSpec

ARMS = ("local", "static", "fedavg", "continual")
ABLATIONS = ("no_detector", "no_refit", "no_site")
ARM_LABELS = {
    "local": "(a) local only, hybrid",
    "static": "(b) static global, hybrid",
    "fedavg": "(c) FedAvg hybrid, no CL",
    "continual": "(d) FedAvg hybrid + CL (the agent)",
    "no_detector": "(d) without its detector",
    "no_refit": "(d) without re-fits between rounds",
    "no_site": "(d) without its site part",
}
SHOWN = (("energy_kwh_t", "kWh/t", "{:.2f}"), ("cu_pct", "Cu %", "{:.4f}"))
SPEC = ModelSpec(architecture="eaf-hybrid-v1")


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
    onsets: list[int] = field(default_factory=list)  # (d): estimated onsets, drift plant
    refits: int = 0  # (d): site re-fits between rounds, all plants

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
                cells += [
                    fmt.format(arm.before[t]),
                    fmt.format(arm.after[t]),
                    fmt.format(arm.end[t]),
                    signed.format(arm.forgetting[t]),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


class _Served:
    """A model kept loaded for per-heat predictions; reloaded only when its weights
    (shared part, site part) are other objects than last time."""

    def __init__(self, spec: ModelSpec) -> None:
        self.model: HeatModel = build_model(spec)
        self.model.eval()
        self.loaded: tuple[Weights, Weights] | None = None  # kept: compared by identity

    def load(self, shared: Weights, site: Weights) -> None:
        if self.loaded is None or self.loaded[0] is not shared or self.loaded[1] is not site:
            set_weights(self.model, shared)
            set_weights(self.model, site, "site")
            self.loaded = (shared, site)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(np.asarray(x, np.float32))).numpy()


def _simulate(
    plants: int, heats: int, drift_plant: int, drift: str, drift_at: int, seed: int, holdout: int
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def run_drift_experiment(
    plants: int = 4,
    heats: int = 1000,
    drift_plant: int = 1,
    drift_at: int = 500,
    seed: int = 0,
    out_png: Path | None = None,
    *,
    history: int = 200,
    round_every: int = 25,
    window: int = 50,
    pretrain_rounds: int = 20,
    epochs: int = 2,
    lr: float = 3e-3,
    batch_size: int = 32,
    holdout: int = 200,
    drift: str = "supplier_change",
    policy: SitePolicy | None = None,
    ewc_lambda: float = 0.0,
    ablations: bool = True,
) -> ExperimentResult:
    """Run the arms on the same simulated heats; ``drift_plant`` counts from 1.

    Heats ``0..history-1`` of every plant are known at the start and pre-train every arm;
    heats from ``history`` on stream in rounds of ``round_every``. ``policy`` is arm (d)'s
    site policy (default: the agent's), ``ewc_lambda`` the EWC strength of its rounds.
    ``ablations`` adds the rows that take arm (d) apart. Epochs, learning rate and batch
    size are the coordinator's defaults.
    """
    if not 1 <= drift_plant <= plants:
        raise ValueError(f"drift_plant must be in 1..{plants}, got {drift_plant}")
    if not history + window <= drift_at <= heats - window:
        raise ValueError("need history + window <= drift_at <= heats - window")
    if min(history, round_every, window, epochs, batch_size, holdout) < 1:
        raise ValueError("history, round_every, window, epochs, batch_size, holdout >= 1")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads cost more than they give
    try:
        run = _Run(
            plants,
            heats,
            drift_plant,
            drift_at,
            seed,
            history,
            round_every,
            window,
            pretrain_rounds,
            TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, ewc_lambda=ewc_lambda),
            holdout,
            drift,
            policy or SitePolicy(),
            ablations,
        )
        result = run.result()
    finally:
        torch.set_num_threads(threads)
    result.wall_s = time.perf_counter() - started
    if out_png is not None:
        result.png = plot(result, out_png)
    return result


class _Run:
    """One experiment: the state of every arm, advanced heat by heat and round by round.

    A model is a (shared part, site part) pair. (d) keeps one ``SiteLearner`` and one site
    part per plant; the ablations keep their own at the drifting plant only and use (d)'s
    shared part.
    """

    def __init__(
        self,
        plants: int,
        heats: int,
        drift_plant: int,
        drift_at: int,
        seed: int,
        history: int,
        round_every: int,
        window: int,
        pretrain_rounds: int,
        train: TrainConfig,
        holdout: int,
        drift: str,
        policy: SitePolicy,
        ablations: bool,
    ) -> None:
        self.spec = spec = SPEC
        self.names, self.X, self.Y, self.hx, self.hy = _simulate(
            plants, heats, drift_plant, drift, drift_at, seed, holdout
        )
        self.plants, self.heats, self.d, self.drift_at = plants, heats, drift_plant - 1, drift_at
        self.seed, self.history, self.round_every, self.window = seed, history, round_every, window
        self.train, self.policy = train, policy
        self.arms = ARMS + (ABLATIONS if ablations else ())
        self.strategy = make_strategy("fedavg")
        self.config: dict[str, object] = dict(
            architecture=spec.architecture,
            plants=plants,
            heats=heats,
            drift_plant=drift_plant,
            drift_at=drift_at,
            seed=seed,
            history=history,
            round_every=round_every,
            window=window,
            pretrain_rounds=pretrain_rounds,
            epochs=train.epochs,
            lr=train.lr,
            batch_size=train.batch_size,
            site_epochs=train.site_epochs,
            ewc_lambda=train.ewc_lambda,
            holdout=holdout,
            drift=drift,
            policy=asdict(policy),
        )

        # Pre-training on the history: federated for (b)-(d), the drifting plant alone for
        # (a). Plain FedRep rounds on every history heat.
        init = get_weights(build_model(spec, seed=seed))
        self.zero_site = get_weights(build_model(spec), "site")  # the site part's zeros
        shared, sites = init, [self.zero_site] * plants
        for r in range(pretrain_rounds):
            results = [
                self._train(shared, sites[k], self.X[k, :history], self.Y[k, :history], r)
                for k in range(plants)
            ]
            sites = [res.site for res in results]
            shared = self._aggregate(shared, [(res.delta, float(history)) for res in results])
        self.local = (init, self.zero_site)
        for r in range(pretrain_rounds):
            res = self._train(*self.local, self.X[self.d, :history], self.Y[self.d, :history], r)
            self.local = (add(self.local[0], res.delta), res.site)
        self.static = (shared, sites[self.d])
        self.fed_shared, self.fed_sites = shared, list(sites)
        self.cl_shared, self.cl_sites = shared, list(sites)
        # (d): the agent's site learner at every plant; ablations at the drifting plant.
        self.learners = [
            SiteLearner(spec.features, spec.targets, spec.y_scale, policy, seed=seed * 1000 + k)
            for k in range(plants)
        ]
        self.abl_learners = (
            {
                "no_detector": SiteLearner(
                    spec.features,
                    spec.targets,
                    spec.y_scale,
                    replace(policy, detect=False),
                    seed=seed * 1000 + self.d,
                ),
                "no_refit": SiteLearner(
                    spec.features, spec.targets, spec.y_scale, policy, seed=seed * 1000 + self.d
                ),
            }
            if ablations
            else {}
        )
        self.abl_sites = dict.fromkeys(self.abl_learners, sites[self.d])
        for k, learner in enumerate(self.learners):
            for i in range(history):  # history heats: learned from, never predicted
                learner.observe(self.X[k, i], self.Y[k, i], None)
        for learner in self.abl_learners.values():
            for i in range(history):
                learner.observe(self.X[self.d, i], self.Y[self.d, i], None)
        self.round_id = pretrain_rounds
        self.served = {arm: _Served(spec) for arm in self.arms}
        self.cl_served = [_Served(spec) for _ in range(plants)]
        self.preq = {arm: Prequential(spec.targets, window) for arm in self.arms}
        self.phase: dict[str, dict[str, dict[str, float]]] = {a: {} for a in self.arms}
        self.held: dict[str, dict[str, dict[str, float]]] = {a: {} for a in self.arms}
        self.errors = {a: np.zeros((heats - history, len(spec.targets))) for a in self.arms}
        self.detections: list[tuple[str, int, tuple[str, ...]]] = []
        self.onsets: list[int] = []

    def _train(
        self,
        shared: Weights,
        site: Weights,
        x: np.ndarray,
        y: np.ndarray,
        round_id: int,
        replay: tuple[np.ndarray, np.ndarray] | None = None,
        epochs: int | None = None,
    ) -> TrainResult:
        cfg = replace(
            self.train, seed=round_id, epochs=self.train.epochs if epochs is None else epochs
        )
        return train_delta(self.spec, shared, x, y, cfg, site=site, replay=replay)

    def _aggregate(self, shared: Weights, updates: Sequence[tuple[Weights, float]]) -> Weights:
        return self.strategy.aggregate(shared, list(updates))

    def model(self, arm: str, k: int) -> tuple[Weights, Weights]:
        """What ``arm`` serves at plant ``k`` now: (shared part, site part)."""
        if arm == "local":
            return self.local
        if arm == "static":
            return self.static
        if arm == "fedavg":
            return self.fed_shared, self.fed_sites[k]
        if arm == "continual":
            return self.cl_shared, self.cl_sites[k]
        if arm == "no_site":
            return self.cl_shared, self.zero_site
        return self.cl_shared, self.abl_sites[arm]

    def _held_out(self, arm: str) -> dict[str, float]:
        self.served[arm].load(*self.model(arm, self.d))
        err = np.abs(self.served[arm].predict(self.hx) - self.hy).mean(axis=0)
        return dict(zip(self.spec.targets, map(float, err), strict=True))

    def _test(self, i: int) -> None:
        """Every arm predicts heat ``i`` before learning from it; (d) at every plant."""
        if i == self.drift_at:  # the models in place when the new supplier's first heat comes
            for arm in self.arms:
                self.held[arm]["before"] = self._held_out(arm)
        for k in range(self.plants):
            x, y = self.X[k, i : i + 1], self.Y[k, i]
            served = self.cl_served[k]
            served.load(self.cl_shared, self.cl_sites[k])
            pred = served.predict(x)[0]
            if k == self.d:
                self._score("continual", i, pred)
            learner = self.learners[k]
            event = learner.observe(x[0], y, pred)
            if event is not None:
                fired = (*event.error_targets, *(f"input:{f}" for f in event.input_features))
                self.detections.append((self.names[k], i, fired))
                if k == self.d:
                    self.onsets.append(event.onset - 1)  # heat count -> heat index
            if learner.refit_due():  # the agent's re-fit: no waiting for a round
                site = learner.refit(self.spec, self.cl_shared, self.cl_sites[k])
                if site is not None:
                    self.cl_sites[k] = site
        x, y = self.X[self.d, i : i + 1], self.Y[self.d, i]
        for arm in self.arms:
            if arm == "continual":
                continue
            self.served[arm].load(*self.model(arm, self.d))
            pred = self.served[arm].predict(x)[0]
            self._score(arm, i, pred)
            if arm in self.abl_learners:
                self.abl_learners[arm].observe(x[0], y, pred)
        for arm in self.arms:
            if i == self.drift_at - 1:
                self.phase[arm]["before"] = self.preq[arm].snapshot()
            if i == self.drift_at + self.window - 1:
                self.phase[arm]["after"] = self.preq[arm].snapshot()

    def _score(self, arm: str, i: int, pred: np.ndarray) -> None:
        y = self.Y[self.d, i]
        self.preq[arm].update(pred, y)
        self.errors[arm][i - self.history] = np.abs(pred - y)

    def _round(self, n: int) -> None:
        """One round per arm, after heat ``n - 1``."""
        r, d = self.round_id, self.d
        res = self._train(*self.local, self.X[d, :n], self.Y[d, :n], r)
        self.local = (add(self.local[0], res.delta), res.site)
        results = [
            self._train(self.fed_shared, self.fed_sites[k], self.X[k, :n], self.Y[k, :n], r)
            for k in range(self.plants)
        ]
        self.fed_sites = [res.site for res in results]
        self.fed_shared = self._aggregate(
            self.fed_shared, [(res.delta, float(n)) for res in results]
        )
        # (d): what the agent does in a round (Agent._maybe_train).
        base, updates = self.cl_shared, []
        for k, learner in enumerate(self.learners):
            x, y, replay = learner.round_rows()
            res = self._train(base, self.cl_sites[k], x, y, r, replay)
            self.cl_sites[k] = res.site
            updates.append((res.delta, float(len(x) + (len(replay[0]) if replay else 0))))
        # The ablations' site parts from their own rows, on the same base (FedRep fits the
        # site part first, with the shared part frozen: epochs=0 gives the same site part).
        for arm, learner in self.abl_learners.items():
            x, y, _ = learner.round_rows()  # replay trains the shared part only
            self.abl_sites[arm] = self._train(base, self.abl_sites[arm], x, y, r, epochs=0).site
        self.cl_shared = self._aggregate(base, updates)
        self.round_id += 1

    def result(self) -> ExperimentResult:
        from rich.console import Console
        from rich.progress import track

        starts = range(self.history, self.heats, self.round_every)
        # Minutes of work: show where it is (on stderr, gone once done; stdout keeps the
        # result tables).
        for start in track(
            starts, description="heats and rounds", transient=True, console=Console(stderr=True)
        ):
            stop = min(start + self.round_every, self.heats)
            for i in range(start, stop):
                self._test(i)
            self._round(stop)
        for arm in self.arms:
            self.held[arm]["end"] = self._held_out(arm)
            self.phase[arm]["end"] = self.preq[arm].snapshot()

        def pick(snap: dict[str, float]) -> dict[str, float]:
            return {t: snap[f"mae_recent_{t}"] for t in self.spec.targets}

        arms = {
            a: ArmResult(
                a,
                ARM_LABELS[a],
                pick(self.phase[a]["before"]),
                pick(self.phase[a]["after"]),
                pick(self.phase[a]["end"]),
                self.held[a]["before"],
                self.held[a]["end"],
                self.errors[a],
            )
            for a in self.arms
        }
        refits = sum(learner.refits for learner in self.learners)
        return ExperimentResult(
            arms,
            self.spec.targets,
            self.history,
            self.names[self.d],
            self.drift_at,
            self.window,
            self.detections,
            0.0,
            None,
            self.config,
            onsets=self.onsets,
            refits=refits,
        )


def plot(result: ExperimentResult, out_png: Path) -> Path:
    """Rolling MAE per arm at the drifted plant, energy and Cu, with drift and detections."""
    fig, axes = figures.subplots(len(SHOWN), 1, figsize=(10, 6.5), sharex=True)
    heats = np.arange(
        result.stream_start, result.stream_start + next(iter(result.arms.values())).errors.shape[0]
    )
    for ax, (target, unit, _) in zip(axes, SHOWN, strict=True):
        j = result.targets.index(target)
        for arm in sorted(result.arms.values(), key=lambda a: a.name == "continual"):
            err = arm.errors[:, j]
            rolling = np.convolve(err, np.ones(result.window), mode="full")[: len(err)]
            counts = np.minimum(np.arange(1, len(err) + 1), result.window)
            ablation = arm.name in ABLATIONS
            ax.plot(
                heats,
                rolling / counts,
                label=arm.label,
                ls="--" if ablation else "-",
                lw=1.0 if ablation else (2.0 if arm.name == "continual" else 1.3),
            )
        ax.axvline(result.drift_at, color="k", ls="--", lw=1)
        for plant, heat, _ in result.detections:
            if plant == result.drift_plant:
                ax.axvline(heat, color="tab:red", ls=":", lw=0.8)
        ax.set_ylabel(f"MAE {unit} (last {result.window})")
        ax.grid(alpha=0.3)
    axes[0].set_title(
        f"Prequential error at {result.drift_plant}: supplier change at heat "
        f"{result.drift_at} (dashed), detections (dotted)"
    )
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("heat")
    return figures.save(fig, out_png)


# -- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plants", type=int, default=4)
    parser.add_argument("--heats", type=int, default=1000, help="heats per plant")
    parser.add_argument("--drift-plant", type=int, default=1, help="plant number, from 1")
    parser.add_argument("--drift-at", type=int, default=500, help="heat index of the drift")
    parser.add_argument(
        "--drift", default="supplier_change", help="NAME[:key=value,...] of agent.sim's scenarios"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--history", type=int, default=200, help="heats known at start")
    parser.add_argument("--round-every", type=int, default=25, help="heats per round")
    parser.add_argument("--window", type=int, default=50, help="heats per error window")
    parser.add_argument(
        "--ewc-lambda",
        type=float,
        default=0.0,
        help="EWC strength in arm (d)'s rounds (the agent's ewc_lambda)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/drift-experiment.png"),
        help="PNG of the rolling error",
    )
    parser.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        result = run_drift_experiment(
            plants=args.plants,
            heats=args.heats,
            drift_plant=args.drift_plant,
            drift_at=args.drift_at,
            seed=args.seed,
            out_png=None if args.no_plot else args.out,
            history=args.history,
            round_every=args.round_every,
            window=args.window,
            drift=args.drift,
            ewc_lambda=args.ewc_lambda,
        )
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print(
        f"drift: {_drift_spec(args.drift, args.drift_at)} at {result.drift_plant}; "
        f"{args.plants} plants x {args.heats} heats, a round every {args.round_every}; "
        f"MAE over {args.window} heats at {result.drift_plant}"
    )
    print(result.table())
    found = [f"{p}@{h} ({', '.join(t)})" for p, h, t in result.detections]
    print(f"detections in (d): {', '.join(found) if found else 'none'}")
    if result.onsets:
        print(
            f"estimated onsets at {result.drift_plant}: "
            f"{', '.join(f'heat {h}' for h in result.onsets)}"
        )
    print(f"site re-fits between rounds in (d): {result.refits}")
    if result.png is not None:
        print(f"plot: {result.png}")
    print(f"wall time: {result.wall_s:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(prog="alchimia experiment drift", description=__doc__)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


__all__ = [
    "ABLATIONS",
    "ARMS",
    "ArmResult",
    "ExperimentResult",
    "add_arguments",
    "plot",
    "run",
    "run_drift_experiment",
]
