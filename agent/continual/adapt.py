"""Plant-specific adaptation: a fine-tune that is served on site and never sent.

The global model stays the federation's shared average; after a local drift the site
serves that model fine-tuned on its recent heats, so one plant's new supplier neither
waits for a federated round nor pulls every other plant's model towards it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.trainer import TrainConfig, train_delta
from models.params import Weights
from models.spec import ModelSpec


def local_finetune(spec: ModelSpec, weights: Mapping[str, np.ndarray], x_recent: np.ndarray,
                   y_recent: np.ndarray, *,
                   replay: tuple[np.ndarray, np.ndarray] | None = None,
                   epochs: int = 20, lr: float = 1e-3, batch_size: int = 32,
                   ewc_lambda: float = 0.0, seed: int = 0) -> Weights:
    """``weights`` trained further on recent heats (plus optional replay rows).

    Many epochs at a small learning rate: there are few recent rows, and the start point
    already knows the plant. EWC (``ewc_lambda`` > 0, Fisher on the replay rows) keeps what
    the replay rows need.
    """
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      ewc_lambda=ewc_lambda)
    delta = train_delta(spec, weights, x_recent, y_recent, cfg, replay=replay).delta
    return {k: (np.asarray(weights[k], np.float32) + delta[k]).astype(np.float32)
            for k in weights}
