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


def train_delta(spec: ModelSpec, base: Mapping[str, np.ndarray], x: np.ndarray,
                y: np.ndarray, cfg: TrainConfig) -> tuple[Weights, dict[str, float]]:
    """Train a copy of the base model on (x, y); return (trained - base, metrics).

    Adam with MSE on normalised targets, so every target counts alike whatever its unit.
    """
    if len(x) == 0:
        raise ValueError("no training rows")
    model = build_model(spec)
    set_weights(model, base)
    anchor = [p.detach().clone() for p in model.parameters()]
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
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            batches += 1
    return subtract(get_weights(model), base), {"train_loss": loss_sum / max(batches, 1)}
