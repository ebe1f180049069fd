"""``alchimia experiment federation``: is a plant better off in the federation than alone?

Offline, in one process: five simulated plants of very unequal size (two large, one
middling, two small) that differ in suppliers, furnace size and efficiency, DRI/HBI share
and practice. Each plant's heats are split in time: the first 80 % train, the last 20 %
test. Arms, each scored on every plant's test heats:

* ``local_mlp``: each plant trains ``mlp-v1`` alone;
* ``local_ridge``: each plant fits a ridge regression alone (scikit-learn, alpha by CV);
* ``pooled_mlp``: one ``mlp-v1`` on all plants' heats in one place;
* ``pooled_hybrid``: ``eaf-hybrid-v1`` on all heats in one place, site tensors per plant
  (the upper bound: what the federation could reach if data could be pooled);
* ``fedavg_mlp``: FedAvg rounds of ``mlp-v1`` (the federation as it was);
* ``fed_hybrid``: FedAvg rounds of ``eaf-hybrid-v1`` with FedRep personalisation: the
  shared part aggregated, each plant's site part kept and served at that plant.

The federated arms run the product's code: ``agent.learn.trainer.train_delta`` at each plant,
each delta encoded as the agent encodes it (``update_codec``, with error feedback) into a
real update message and decoded as the coordinator decodes it, ``coordinator.strategies``
on the coordinator, ``num_samples`` = heats trained on. ``--update-codec raw int8 ...``
runs them once per codec and compares bytes per update and test MAE with ``raw``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alchimia import figures
from alchimia.agent.learn.compression import UpdateCompressor
from alchimia.agent.learn.trainer import TrainConfig, train_delta
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.broker.codec_names import CODECS, DEFAULT_TOPK_FRACTION
from alchimia.broker.schemas import UpdateBody, decode, message
from alchimia.coordinator.strategies import Strategy, make_strategy
from alchimia.models.params import Weights, add, compose, get_weights
from alchimia.models.regressor import HeatModel, build_model
from alchimia.models.schema import FEATURES, TARGETS
from alchimia.models.spec import ModelSpec
from alchimia.settings_cli import name_value

ARMS = ("local_mlp", "local_ridge", "pooled_mlp", "pooled_hybrid", "fedavg_mlp", "fed_hybrid")
FEDERATED = ("fedavg_mlp", "fed_hybrid")  # the arms that send updates
ARM_LABELS = {
    "local_mlp": "local MLP",
    "local_ridge": "local ridge",
    "pooled_mlp": "pooled MLP",
    "pooled_hybrid": "pooled hybrid",
    "fedavg_mlp": "FedAvg MLP",
    "fed_hybrid": "federated hybrid (personalised)",
}
SHOWN = (
    ("energy_kwh_t", "energy kWh/t", "{:.2f}"),
    ("tapped_t", "tapped t", "{:.2f}"),
    ("tap_temp_c", "tap temp C", "{:.2f}"),
    ("cu_pct", "Cu %", "{:.4f}"),
)
DEFAULT_SIZES = (1500, 1500, 400, 120, 80)


@dataclass(frozen=True)
class FederationConfig:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    seed: int = 0
    test_fraction: float = 0.2
    rounds: int = 40
    epochs: int = 2  # shared-part epochs per round (the coordinator's default task)
    lr: float = 3e-3
    batch_size: int = 32
    site_epochs: int = TrainConfig.site_epochs
    site_l2: float = TrainConfig.site_l2
    strategy: str = "fedavg"  # of the federated arms, with its parameters
    strategy_params: tuple[tuple[str, float], ...] = ()
    update_topk_fraction: float = DEFAULT_TOPK_FRACTION  # of the topk update codecs


@dataclass
class PlantData:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class FederationResult:
    config: FederationConfig
    plants: list[str]
    mae: dict[str, dict[str, dict[str, float]]]  # arm -> plant -> target -> test MAE
    # federated arm (``arm_key``) -> mean bytes of its update messages, and of the same
    # updates sent raw (float32)
    traffic: dict[str, tuple[float, float]] = field(default_factory=dict)
    wall_s: float = 0.0
    png: Path | None = None
    criteria: list[tuple[str, bool, str]] = field(default_factory=list)

    def table(self) -> str:
        """Markdown: one row per arm and plant, test MAE of the shown targets."""
        head = ["arm", "plant", "train heats", *(unit for _, unit, _ in SHOWN)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        sizes = dict(zip(self.plants, self.config.sizes, strict=True))
        for arm in self.mae:
            for plant in self.plants:
                n = round(sizes[plant] * (1 - self.config.test_fraction))
                cells = [label(arm), plant, str(n)]
                cells += [fmt.format(self.mae[arm][plant][t]) for t, _, fmt in SHOWN]
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def simulate(cfg: FederationConfig) -> list[PlantData]:
    """Each plant's heats, split in time (the last ``test_fraction`` for test)."""
    out = []
    for (profile, plant_seed), n in zip(
        default_plants(len(cfg.sizes), base_seed=cfg.seed), cfg.sizes, strict=True
    ):
        heats = SimulatedPlant(profile, plant_seed).heats(n)
        x = np.array([[h.inputs[f] for f in FEATURES] for h in heats], np.float32)
        y = np.array([[h.outcome[t] for t in TARGETS] for h in heats], np.float32)
        cut = round(n * (1 - cfg.test_fraction))
        out.append(PlantData(profile.name, x[:cut], y[:cut], x[cut:], y[cut:]))
    return out


def _predict(
    spec: ModelSpec,
    shared: Weights,
    site: Weights | None,
    x: np.ndarray,
) -> np.ndarray:
    with torch.no_grad():
        return compose(spec, shared, site)(torch.from_numpy(x)).numpy()


def _mae(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    err = np.abs(pred.astype(np.float64) - actual).mean(axis=0)
    return dict(zip(TARGETS, map(float, err), strict=True))


def _train_cfg(cfg: FederationConfig, round_id: int, proximal_mu: float = 0.0) -> TrainConfig:
    return TrainConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=round_id,
        site_epochs=cfg.site_epochs,
        site_l2=cfg.site_l2,
        proximal_mu=proximal_mu,
    )


def _alone(
    spec: ModelSpec,
    cfg: FederationConfig,
    x: np.ndarray,
    y: np.ndarray,
) -> tuple[Weights, Weights]:
    """Rounds of local training with nobody to average with (same budget as federated)."""
    shared = get_weights(build_model(spec, seed=cfg.seed))
    site = None
    for r in range(cfg.rounds):
        res = train_delta(spec, shared, x, y, _train_cfg(cfg, r), site=site)
        shared, site = add(shared, res.delta), res.site
    return shared, site or {}


@dataclass
class Channel:
    """Plants to coordinator as the product runs it: each delta encoded as the plant's agent
    encodes it (the task's codec, error feedback in an ``UpdateCompressor`` per plant),
    packed in an update message, decoded as the coordinator decodes it. Counts the bytes
    of every message and of the same update sent raw (float32)."""

    codec: str
    topk_fraction: float
    plants: list[str]
    compressors: list[UpdateCompressor] = field(default_factory=list)
    sent_bytes: list[int] = field(default_factory=list)
    raw_bytes: list[int] = field(default_factory=list)
    # Differential privacy at the plants (alchimia/experiment_privacy.py): each delta is
    # clipped and noised as the agent does it, before the codec.
    privatize: Callable[[Weights], Weights] | None = None

    def __post_init__(self) -> None:
        self.compressors = [UpdateCompressor() for _ in self.plants]
        self.adopt(0, None, None)

    def adopt(self, version: int, parent: int | None, round_id: int | None) -> None:
        """Every plant adopts a new global version."""
        for c in self.compressors:
            c.follow(version, parent, round_id)

    def send(
        self, k: int, round_id: int, base_version: int, delta: Weights, num_samples: int
    ) -> Weights:
        """Plant ``k``'s update as the coordinator receives it."""

        def payload(tensors: dict) -> bytes:
            return message(
                self.plants[k],
                UpdateBody(
                    round_id=round_id,
                    base_version=base_version,
                    num_samples=num_samples,
                    delta=tensors,
                    metrics={"train_loss": 0.0},
                ),
            )

        if self.privatize is not None:
            delta = self.privatize(delta)
        wire = payload(self.compressors[k].encode(delta, self.codec, self.topk_fraction))
        self.sent_bytes.append(len(wire))
        self.raw_bytes.append(len(payload(delta)))
        return decode(wire, UpdateBody, check_finite=False).body.delta  # type: ignore[attr-defined]

    def aggregate(
        self,
        strategy: Strategy,
        shared: Weights,
        updates: list[tuple[Weights, float]],
        round_id: int,
        base_version: int,
    ) -> Weights:
        """The round's new shared weights from the updates as received: the strategy's
        aggregate (a secure round overrides it: ``experiment_privacy.SecureChannel``)."""
        return strategy.aggregate(shared, updates)


def federate(
    spec: ModelSpec, cfg: FederationConfig, plants: list[PlantData], channel: Channel | None = None
) -> tuple[Weights, list[Weights]]:
    """Federated rounds over ``plants`` as the product runs them: each plant's update from
    ``train_delta`` through the ``channel`` (default: raw updates), the strategy's
    aggregate; the final shared part and each plant's site part (what that plant serves).
    Also used by the decision-support experiments."""
    strategy = make_strategy(cfg.strategy, **dict(cfg.strategy_params))
    mu = strategy.task_params().get("proximal_mu", 0.0)  # what the task carries to agents
    channel = channel or Channel("raw", cfg.update_topk_fraction, [p.name for p in plants])
    shared = get_weights(build_model(spec, seed=cfg.seed))
    sites: list[Weights | None] = [None] * len(plants)
    for r in range(cfg.rounds):
        updates = []
        for k, p in enumerate(plants):
            res = train_delta(
                spec, shared, p.x_train, p.y_train, _train_cfg(cfg, r, mu), site=sites[k]
            )
            sites[k] = res.site
            delta = channel.send(k, r + 1, r, res.delta, len(p.x_train))
            updates.append((delta, float(len(p.x_train))))
        shared = channel.aggregate(strategy, shared, updates, r + 1, r)
        channel.adopt(r + 1, r, r + 1)  # version r + 1, aggregated in round r + 1
    return shared, [s or {} for s in sites]


def _pooled_hybrid(
    spec: ModelSpec,
    cfg: FederationConfig,
    plants: list[PlantData],
) -> tuple[Weights, list[Weights]]:
    """All heats in one place: one model per plant, the shared tensors tied, every batch
    drawn from the pooled rows, the same site prior as the federated arm."""
    models: list[HeatModel] = [build_model(spec, seed=cfg.seed) for _ in plants]
    shared_names = list(spec.parameter_shapes("shared"))
    for m in models[1:]:
        for name in shared_names:
            setattr(m, name, getattr(models[0], name))
    params = {id(p): p for m in models for p in m.parameters()}
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    xs = [torch.from_numpy(p.x_train) for p in plants]
    ys = [
        m.normalize_targets(torch.from_numpy(p.y_train))
        for m, p in zip(models, plants, strict=True)
    ]
    owner = torch.cat([torch.full((len(p.x_train),), k) for k, p in enumerate(plants)])
    row = torch.cat([torch.arange(len(p.x_train)) for p in plants])
    gen = torch.Generator().manual_seed(cfg.seed)
    epochs = cfg.rounds * cfg.epochs
    for _ in range(epochs):
        for idx in torch.randperm(len(owner), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = torch.zeros(())
            for k, m in enumerate(models):
                rows = row[idx[owner[idx] == k]]
                if len(rows):
                    err = (m.normalized(xs[k][rows]) - ys[k][rows]) ** 2
                    loss = loss + err.mean(dim=1).sum()
            loss = loss / len(idx)
            scales = spec.site_prior_scale()
            for m in models:
                loss = loss + cfg.site_l2 / len(owner) * sum(
                    scales.get(n, 1.0) * (getattr(m, n) ** 2).sum()
                    for n in spec.parameter_shapes("site")
                )
            loss.backward()
            opt.step()
    return get_weights(models[0]), [get_weights(m, "site") for m in models]


def _ridge(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13), alpha_per_target=True)
    )
    model.fit(x_train.astype(np.float64), y_train.astype(np.float64))
    return model.predict(x_test.astype(np.float64))


def arm_key(arm: str, codec: str) -> str:
    """An arm's key in the results: the federated arms with a codec other than raw get it
    appended (``fed_hybrid:int8``)."""
    return arm if codec == "raw" else f"{arm}:{codec}"


def label(key: str) -> str:
    arm, _, codec = key.partition(":")
    return ARM_LABELS[arm] + (f", {codec}" if codec else "")


def run_federation_experiment(
    cfg: FederationConfig,
    arms: tuple[str, ...] = ARMS,
    out_png: Path | None = None,
    codecs: tuple[str, ...] = ("raw",),
) -> FederationResult:
    """Every arm on every plant; the federated arms once per update codec in ``codecs``."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads cost more than they give
    try:
        plants = simulate(cfg)
        names = [p.name for p in plants]
        mlp, hybrid = ModelSpec(), ModelSpec(architecture="eaf-hybrid-v1")
        mae: dict[str, dict[str, dict[str, float]]] = {}
        traffic: dict[str, tuple[float, float]] = {}
        for arm in arms:
            for codec in codecs if arm in FEDERATED else ("raw",):
                key = arm_key(arm, codec)
                channel = (
                    Channel(codec, cfg.update_topk_fraction, names) if arm in FEDERATED else None
                )
                preds = _arm(arm, cfg, plants, mlp, hybrid, channel)
                mae[key] = {
                    p.name: _mae(pred, p.y_test) for p, pred in zip(plants, preds, strict=True)
                }
                if channel is not None:
                    traffic[key] = (
                        float(np.mean(channel.sent_bytes)),
                        float(np.mean(channel.raw_bytes)),
                    )
    finally:
        torch.set_num_threads(threads)
    result = FederationResult(cfg, names, mae, traffic)
    result.criteria = acceptance(result)
    result.wall_s = time.perf_counter() - started
    if out_png is not None:
        result.png = plot(result, out_png)
    return result


def _arm(
    arm: str,
    cfg: FederationConfig,
    plants: list[PlantData],
    mlp: ModelSpec,
    hybrid: ModelSpec,
    channel: Channel | None = None,
) -> list[np.ndarray]:
    """Test-set predictions of one arm, per plant (a federated arm's updates through
    ``channel``)."""
    if arm == "local_ridge":
        return [_ridge(p.x_train, p.y_train, p.x_test) for p in plants]
    if arm == "local_mlp":
        return [
            _predict(mlp, _alone(mlp, cfg, p.x_train, p.y_train)[0], None, p.x_test) for p in plants
        ]
    if arm == "pooled_mlp":
        x = np.concatenate([p.x_train for p in plants])
        y = np.concatenate([p.y_train for p in plants])
        shared, _ = _alone(mlp, cfg, x, y)
        return [_predict(mlp, shared, None, p.x_test) for p in plants]
    if arm in ("pooled_hybrid", "fed_hybrid", "fedavg_mlp"):
        spec = mlp if arm == "fedavg_mlp" else hybrid
        shared, sites = (
            _pooled_hybrid(spec, cfg, plants)
            if arm == "pooled_hybrid"
            else federate(spec, cfg, plants, channel)
        )
        return [
            _predict(spec, shared, site or None, p.x_test)
            for p, site in zip(plants, sites, strict=True)
        ]
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


def acceptance(result: FederationResult) -> list[tuple[str, bool, str]]:
    """The issue's three criteria, each with the figures that decide it."""
    m = result.mae
    out: list[tuple[str, bool, str]] = []
    needed = {"fed_hybrid", "pooled_hybrid", "local_mlp", "local_ridge"}
    if not needed <= set(m):
        return out
    targets = [t for t, _, _ in SHOWN]
    worst = max(
        (m["fed_hybrid"][p][t] / m["pooled_hybrid"][p][t] - 1, p, t)
        for p in result.plants
        for t in targets
    )
    out.append(
        (
            "federated within 5 % of pooled hybrid everywhere",
            worst[0] <= 0.05,
            f"worst {worst[0]:+.1%} ({worst[1]} {worst[2]})",
        )
    )
    order = sorted(result.plants, key=lambda p: result.config.sizes[result.plants.index(p)])
    gains = []
    for p in order[:2]:
        for t in ("energy_kwh_t", "cu_pct"):
            best = min(m["local_mlp"][p][t], m["local_ridge"][p][t])
            gains.append((1 - m["fed_hybrid"][p][t] / best, p, t))
    least = min(gains)
    out.append(
        (
            "small plants >= 20 % better than best local (energy, Cu)",
            least[0] >= 0.2,
            f"least gain {least[0]:.1%} ({least[1]} {least[2]})",
        )
    )
    worst_r = max(
        (m["fed_hybrid"][p][t] / m["local_ridge"][p][t] - 1, p, t)
        for p in result.plants
        for t in targets
    )
    out.append(
        (
            "no plant > 5 % worse than its local ridge",
            worst_r[0] <= 0.05,
            f"worst {worst_r[0]:+.1%} ({worst_r[1]} {worst_r[2]})",
        )
    )
    return out


def codec_costs(result: FederationResult) -> tuple[str, list[tuple[str, bool, str]]]:
    """Each federated arm's lossy codecs against its ``raw`` run: a markdown table of bytes
    per update and relative test-MAE change per plant (mean over the shown targets), and
    the target (bytes <= 0.1 x float32 at a mean test-MAE cost <= 1 %) per codec."""
    head = ["arm", "codec", "bytes/update", "x float32", *result.plants, "mean", "worst"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    criteria = []
    targets = [t for t, _, _ in SHOWN]
    for key, (sent, raw) in result.traffic.items():
        arm, _, codec = key.partition(":")
        if arm not in result.mae:
            continue
        base = result.mae[arm]
        change = {
            p: {t: result.mae[key][p][t] / base[p][t] - 1 for t in targets} for p in result.plants
        }
        mean = float(np.mean([c for p in change.values() for c in p.values()]))
        worst = max((c, p, t) for p, per in change.items() for t, c in per.items())
        ratio = sent / raw
        cells = [
            ARM_LABELS[arm],
            codec or "raw",
            f"{sent:,.0f}",
            f"{ratio:.3f}",
            *(f"{np.mean(list(change[p].values())):+.1%}" for p in result.plants),
            f"{mean:+.1%}",
            f"{worst[0]:+.1%} ({worst[1]} {worst[2]})" if codec else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if codec:
            criteria.append(
                (
                    f"{ARM_LABELS[arm]}, {codec}: bytes <= 0.1 x float32 at <= 1 % test-MAE cost",
                    ratio <= 0.1 and mean <= 0.01,
                    f"{ratio:.3f} x float32 ({sent:,.0f} of {raw:,.0f} bytes), "
                    f"test MAE {mean:+.1%} mean, worst {worst[0]:+.1%} "
                    f"({worst[1]} {worst[2]})",
                )
            )
    return "\n".join(lines), criteria


def plot(result: FederationResult, out_png: Path) -> Path:
    """Test MAE per plant, one panel per shown target, one bar per arm."""
    fig, axes = figures.subplots(1, len(SHOWN), figsize=(16, 4.2))
    arms = list(result.mae)
    width = 0.8 / len(arms)
    pos = np.arange(len(result.plants))
    for ax, (target, unit, _) in zip(axes, SHOWN, strict=True):
        for i, arm in enumerate(arms):
            ax.bar(
                pos + i * width,
                [result.mae[arm][p][target] for p in result.plants],
                width,
                label=label(arm),
            )
        ax.set_xticks(
            pos + 0.4 - width / 2,
            [f"{p}\n{n}" for p, n in zip(result.plants, result.config.sizes, strict=True)],
        )
        ax.set_title(f"test MAE, {unit}")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Federation experiment, seed {result.config.seed}: plants and their heats")
    return figures.save(fig, out_png)


# -- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FederationConfig()
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="simulator seeds; each gets its own table"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(d.sizes), help="heats per plant"
    )
    parser.add_argument("--rounds", type=int, default=d.rounds)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--site-epochs", type=int, default=d.site_epochs)
    parser.add_argument("--site-l2", type=float, default=d.site_l2)
    parser.add_argument("--strategy", default=d.strategy, help="of the federated arms")
    parser.add_argument(
        "--strategy-param",
        dest="strategy_params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=name_value,
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument(
        "--update-codec",
        dest="update_codecs",
        nargs="+",
        default=["raw"],
        choices=CODECS,
        help="run the federated arms once per codec and "
        "compare bytes per update and test MAE with raw (which runs too)",
    )
    parser.add_argument(
        "--update-topk-fraction",
        type=float,
        default=d.update_topk_fraction,
        help="topk codecs: share of each tensor's entries sent",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/federation-experiment.png"),
        help="PNG of the test errors (one per seed: -seedN is appended)",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--dp-epsilon",
        type=_floats,
        default=(),
        metavar="E1,E2,...",
        help="instead of the arms: the federated hybrid without DP and at "
        "each target epsilon, inf: clipping without noise (alchimia/experiment_privacy.py)",
    )
    parser.add_argument(
        "--dp-clip-norm", type=float, default=0.3, help="with --dp-epsilon: the agents' clip norm"
    )
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    parser.add_argument(
        "--dp-noise-seed",
        type=int,
        default=0,
        help="with --dp-epsilon: seed of the noise (the product never fixes it)",
    )
    parser.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="with --dp-epsilon: secure rounds (the product's SecureRound and agents' "
        "clients, in memory), the noise distributed among the plants",
    )


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def run(args: argparse.Namespace) -> int:
    if args.secure_aggregation and not args.dp_epsilon:
        raise SystemExit("--secure-aggregation goes with --dp-epsilon")
    for seed in args.seeds:
        cfg = FederationConfig(
            sizes=tuple(args.sizes),
            seed=seed,
            rounds=args.rounds,
            epochs=args.epochs,
            lr=args.lr,
            site_epochs=args.site_epochs,
            site_l2=args.site_l2,
            strategy=args.strategy,
            strategy_params=tuple(args.strategy_params),
            update_topk_fraction=args.update_topk_fraction,
        )
        if args.dp_epsilon:
            from alchimia.experiment_privacy import report, run_privacy_experiment

            print(
                report(
                    run_privacy_experiment(
                        cfg,
                        args.dp_epsilon,
                        args.dp_clip_norm,
                        args.dp_delta,
                        args.dp_noise_seed,
                        secure=args.secure_aggregation,
                    )
                )
            )
            continue
        png = (
            None
            if args.no_plot
            else args.out.with_name(f"{args.out.stem}-seed{seed}{args.out.suffix}")
        )
        codecs = tuple(dict.fromkeys(["raw", *args.update_codecs]))
        result = run_federation_experiment(cfg, tuple(args.arms), png, codecs)
        print(
            f"seed {seed}: plants {', '.join(result.plants)} with "
            f"{', '.join(map(str, cfg.sizes))} heats (last {cfg.test_fraction:.0%} test); "
            f"{cfg.rounds} rounds x {cfg.epochs} epochs, lr {cfg.lr}, site part "
            f"{cfg.site_epochs} epochs with prior {cfg.site_l2}, strategy {cfg.strategy}"
            f"{dict(cfg.strategy_params) or ''}; test MAE"
        )
        print(result.table())
        costs, codec_criteria = codec_costs(result)
        if len(codecs) > 1:
            print(
                f"update codecs (top-k keeps {cfg.update_topk_fraction:g} of each tensor); "
                f"test-MAE change against raw, mean over {len(SHOWN)} targets"
            )
            print(costs)
        for name, ok, why in result.criteria + codec_criteria:
            print(f"{'MET ' if ok else 'MISSED'} {name}: {why}")
        if result.png is not None:
            print(f"plot: {result.png}")
        print(f"wall time: {result.wall_s:.1f} s")
    return 0
