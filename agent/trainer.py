"""Local training: from the task's base weights to a weight delta."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from models.params import Weights, get_weights, set_weights, subtract
from models.regressor import build_model
from models.spec import ModelSpec


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    proximal_mu: float = 0.0  # FedProx: pulls local weights towards the base version
    seed: int = 0
    # EWC (agent.continual.regularise): keeps the weights that replayed old heats need near
    # the base. Off by default: it acts only with replay rows or a Fisher, and in the drift
    # experiment (docs/CONTINUAL.md) replay alone did as well.
    ewc_lambda: float = 0.0


def train_delta(spec: ModelSpec, base: Mapping[str, np.ndarray], x: np.ndarray,
                y: np.ndarray, cfg: TrainConfig, *,
                replay: tuple[np.ndarray, np.ndarray] | None = None,
                fisher: Mapping[str, np.ndarray] | None = None,
                ) -> tuple[Weights, dict[str, float]]:
    """Train a copy of the base model on (x, y); return (trained - base, metrics).

    Adam with MSE on normalised targets, so every target counts alike whatever its unit.
    ``replay`` rows (old heats from a replay buffer) are trained on next to the new ones;
    with ``cfg.ewc_lambda > 0`` the loss also gets an EWC penalty anchored at ``base``, with
    ``fisher`` or else the Fisher information of the base model on the replay rows.
    """
    if len(x) == 0:
        raise ValueError("no training rows")
    model = build_model(spec)
    set_weights(model, base)
    anchor = [p.detach().clone() for p in model.parameters()]
    ewc = None
    has_replay = replay is not None and len(replay[0]) > 0
    if cfg.ewc_lambda > 0 and (fisher is not None or has_replay):
        from agent.continual.regularise import EwcPenalty, fisher_diagonal

        if fisher is None:
            fisher = fisher_diagonal(spec, base, replay[0])  # type: ignore[index]
        ewc = EwcPenalty(base, fisher, cfg.ewc_lambda)
    if has_replay:
        x = np.concatenate([np.asarray(x, np.float32), np.asarray(replay[0], np.float32)])
        y = np.concatenate([np.asarray(y, np.float32), np.asarray(replay[1], np.float32)])
    xs = torch.from_numpy(np.asarray(x, np.float32))
    ys = model.normalize_targets(torch.from_numpy(np.asarray(y, np.float32)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    loss_sum, batches = 0.0, 0
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model.normalized(xs[idx]), ys[idx])
            if cfg.proximal_mu > 0:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                                 strict=True))
                loss = loss + 0.5 * cfg.proximal_mu * prox
            if ewc is not None:
                loss = loss + ewc(model)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            batches += 1
    metrics = {"train_loss": loss_sum / max(batches, 1)}
    if ewc is not None:
        metrics["ewc_penalty"] = ewc.value(get_weights(model))
    return subtract(get_weights(model), base), metrics
