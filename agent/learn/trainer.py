"""Local training: from the task's base weights (and the site's own tensors) to a weight
delta of the shared part and an updated site part.

Personalisation follows FedRep (Collins et al., "Exploiting Shared Representations for
Personalized Federated Learning", ICML 2021): with the shared tensors frozen the site
tensors are fitted first, then the shared tensors are trained with the site part fixed,
and only the shared delta leaves the site. The site fit carries a Gaussian prior towards
zero (the federation's physics), of strength ``site_l2`` heats, so a plant with 80 heats
moves its site tensors only as far as its data supports (a hierarchical model's
shrinkage). Architectures without site tensors (``mlp-v1``) train as plain FedAvg clients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from alchimia.models.params import Weights, get_weights, set_weights, subtract
from alchimia.models.regressor import HeatModel, build_model
from alchimia.models.spec import ModelSpec


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1  # over the shared part; 0 adapts the site part only
    lr: float = 1e-3
    batch_size: int = 32
    proximal_mu: float = 0.0  # FedProx: pulls local weights towards the base version
    seed: int = 0
    # EWC (agent.learn.continual.regularise): keeps the weights that replayed old heats
    # need near the base. Off by default: it acts only with replay rows or a Fisher, and
    # in the drift experiment (docs/CONTINUAL.md) replay alone did as well.
    ewc_lambda: float = 0.0
    site_epochs: int = 10  # FedRep: epochs over the site tensors before the shared ones
    site_l2: float = 0.2  # prior strength of the site tensors, in heats (see module doc)
    # The prior's centre: zero (the federation's physics), or with ``site_anchor`` the site
    # part training starts from (what the site knew: a site re-fit on a few new heats).
    site_anchor: bool = False


@dataclass(frozen=True)
class TrainResult:
    delta: Weights  # trained - base, shared tensors only: what an update carries
    site: Weights  # the site tensors after training: stay at the site
    metrics: dict[str, float]


def _epochs(
    model: HeatModel,
    params: list[torch.nn.Parameter],
    xs: torch.Tensor,
    ys: torch.Tensor,
    epochs: int,
    cfg: TrainConfig,
    gen: torch.Generator,
    penalty: Callable[[], torch.Tensor] | None,
) -> float:
    """Adam over ``params`` only, MSE on normalised targets; returns the mean batch loss."""
    opt = torch.optim.Adam(params, lr=cfg.lr)
    loss_sum, batches = 0.0, 0
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model.normalized(xs[idx]), ys[idx])
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            batches += 1
    return loss_sum / max(batches, 1)


def train_delta(  # noqa: C901
    spec: ModelSpec,
    base: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    site: Mapping[str, np.ndarray] | None = None,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    fisher: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train a copy of the base model (with ``site``, or a fresh site part) on (x, y).

    Adam with MSE on normalised targets, so every target counts alike whatever its unit.
    ``replay`` rows (old heats from a replay buffer) are trained on next to the new ones by
    the shared part; the site part is fitted on (x, y) alone, because it describes the
    site as it is now and old-regime heats would pull it back (docs/CONTINUAL.md). With
    ``cfg.ewc_lambda > 0`` the loss also gets an EWC penalty anchored at ``base``, with
    ``fisher`` or else the Fisher information of the base model on the replay rows.
    """
    if len(x) == 0:
        raise ValueError("no training rows")
    model = build_model(spec)
    set_weights(model, base)
    if site is not None:
        set_weights(model, site, "site")
    named = dict(model.named_parameters())
    shared = [named[k] for k in spec.parameter_shapes("shared")]
    site_params = [named[k] for k in spec.parameter_shapes("site")]
    anchor = [p.detach().clone() for p in shared]
    ewc = None
    has_replay = replay is not None and len(replay[0]) > 0
    if cfg.ewc_lambda > 0 and (fisher is not None or has_replay):
        from alchimia.agent.learn.continual.regularise import EwcPenalty, fisher_diagonal

        if fisher is None:
            assert replay is not None  # has_replay
            fisher = fisher_diagonal(spec, base, replay[0])
        ewc = EwcPenalty(base, fisher, cfg.ewc_lambda)
    n_site = len(x)  # the site part is fitted on these rows only, never on replay
    if has_replay and replay is not None:
        x = np.concatenate([np.asarray(x, np.float32), np.asarray(replay[0], np.float32)])
        y = np.concatenate([np.asarray(y, np.float32), np.asarray(replay[1], np.float32)])
    xs = torch.from_numpy(np.asarray(x, np.float32))
    ys = model.normalize_targets(torch.from_numpy(np.asarray(y, np.float32)))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    metrics: dict[str, float] = {}
    if site_params and cfg.site_epochs > 0:
        prior = cfg.site_l2 / n_site
        centre = [
            p.detach().clone() if cfg.site_anchor else torch.zeros_like(p) for p in site_params
        ]

        scales = spec.site_prior_scale()
        strength = [prior * scales.get(k, 1.0) for k in spec.parameter_shapes("site")]

        def shrink() -> torch.Tensor:
            return torch.stack(
                [
                    s * ((p - c) ** 2).sum()
                    for p, c, s in zip(site_params, centre, strength, strict=True)
                ]
            ).sum()

        for p in shared:
            p.requires_grad_(False)
        metrics["site_loss"] = _epochs(
            model, site_params, xs[:n_site], ys[:n_site], cfg.site_epochs, cfg, gen, shrink
        )
        for p in shared:
            p.requires_grad_(True)
    if cfg.epochs > 0:

        def shared_penalty() -> torch.Tensor:
            loss = torch.zeros(())
            if cfg.proximal_mu > 0:
                loss = loss + 0.5 * cfg.proximal_mu * sum(
                    ((p - a) ** 2).sum() for p, a in zip(shared, anchor, strict=True)
                )
            if ewc is not None:
                loss = loss + ewc(model)
            return loss

        for p in site_params:
            p.requires_grad_(False)
        metrics["train_loss"] = _epochs(
            model,
            shared,
            xs,
            ys,
            cfg.epochs,
            cfg,
            gen,
            shared_penalty if cfg.proximal_mu > 0 or ewc is not None else None,
        )
    if ewc is not None:
        metrics["ewc_penalty"] = ewc.value(get_weights(model))
    return TrainResult(subtract(get_weights(model), base), get_weights(model, "site"), metrics)
