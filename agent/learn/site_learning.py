"""The site's continual-learning policy, without I/O: one object that the agent
(``agent.service``) and the drift experiment (``alchimia experiment drift``) both drive.

Fed every finished heat (its features, its outcome, and the prediction the serving model
made before the outcome was known), :class:`SiteLearner` keeps the prequential error,
watches the error stream (Page-Hinkley per target) and the inputs (PSI), keeps a
regime-balanced replay memory, and decides:

* **where the current regime starts**: at a detection, at the onset the detector
  estimates (``PageHinkley.change_lag``), not at the alarm;
* **which heats a site adaptation trains on**: the newest ``adapt_heats`` training heats
  of the current regime (validation heats are scored and watched, never trained on);
* **when to re-fit**: at once after a detection (as soon as the regime holds
  ``min_regime_heats`` training heats), then every ``adapt_every`` heats until a re-fit
  had a full ``adapt_heats`` of the regime's training heats; from then on the federated
  rounds keep the site part current;
* **what a round trains on**: the newest ``train_window`` training heats of the current
  regime, plus ``replay_rows`` regime-balanced old heats.

A re-fit is an update of the site part only (:func:`agent.learn.trainer.train_delta` with
``epochs=0``): the shared part, the federation's, is left alone, so the served global
version and every later one apply with the site's new offsets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from alchimia.agent.learn.continual import (
    ErrorDriftMonitor,
    InputDriftMonitor,
    PageHinkley,
    Prequential,
    RegimeReplayBuffer,
)
from alchimia.agent.learn.trainer import TrainConfig, train_delta
from alchimia.models.params import Weights
from alchimia.models.spec import ModelSpec


@dataclass(frozen=True)
class DriftEvent:
    error_targets: tuple[str, ...]  # targets whose prediction error rose (Page-Hinkley)
    input_features: tuple[str, ...]  # features whose distribution moved (PSI)
    onset: int = 0  # heat count (1-based) where the new regime is estimated to begin

    def values(self) -> dict[str, float]:
        """Figures for the ``drift`` metrics message."""
        out = {f"error_{t}": 1.0 for t in self.error_targets}
        out.update({f"input_{f}": 1.0 for f in self.input_features})
        return out


@dataclass(frozen=True)
class SitePolicy:
    """The knobs of :class:`SiteLearner`; the defaults are the agent's (``AgentSettings``)
    and what ``alchimia experiment drift`` measures (docs/CONTINUAL.md)."""

    train_window: int = 2000  # newest training heats of the regime a round trains on
    replay_rows: int = 200  # old heats replayed beside them in a round
    replay_capacity: int = 500  # replay memory, split over regimes
    adapt_heats: int = 50  # newest training heats of the regime a site re-fit uses
    adapt_epochs: int = 30  # epochs over the site part per re-fit
    adapt_lr: float = 3e-3
    # Prior of a re-fit, in heats, centred on the site part before it: the few new heats
    # move what they show (a new supplier's Cu), not what they only add noise to (at 0.2,
    # the rounds' prior, re-fits cost ~1 kWh/t just after a drift; docs/CONTINUAL.md).
    adapt_prior: float = 10.0
    adapt_every: int = 5  # heats between re-fits while the regime is young
    min_regime_heats: int = 5  # training heats of a new regime before the first re-fit
    batch_size: int = 32
    ph_threshold: float = 20.0  # Page-Hinkley threshold (docs/CONTINUAL.md)
    window: int = 50  # heats of the recent prequential error
    input_reference: int = 500  # PSI: reference rows
    input_window: int = 200  # PSI: recent rows
    detect: bool = True  # False: score and remember only, never start a regime (ablation)

    def __post_init__(self) -> None:
        if (
            min(
                self.train_window,
                self.adapt_heats,
                self.adapt_epochs,
                self.adapt_every,
                self.min_regime_heats,
                self.batch_size,
                self.window,
            )
            < 1
        ):
            raise ValueError(
                "train_window, adapt_heats, adapt_epochs, adapt_every, "
                "min_regime_heats, batch_size and window must be >= 1"
            )
        if self.replay_rows < 0 or not self.adapt_lr > 0:
            raise ValueError("need replay_rows >= 0 and adapt_lr > 0")


class SiteLearner:
    """Test-then-train bookkeeping and the adaptation policy of one site (module doc)."""

    def __init__(
        self,
        features: Sequence[str],
        targets: Sequence[str],
        y_scale: Sequence[float],
        policy: SitePolicy | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.policy = p = policy or SitePolicy()
        self.prequential = Prequential(targets, p.window)
        self.errors = ErrorDriftMonitor(
            targets, y_scale, lambda: PageHinkley(threshold=p.ph_threshold)
        )
        self.inputs = InputDriftMonitor(features, p.input_reference, p.input_window)
        self.replay = RegimeReplayBuffer(p.replay_capacity, seed)
        self.observed = 0  # heats seen (1-based counts below refer to it)
        self.drift_at: list[int] = []  # heat counts at which drift was detected
        self.regime_start = 1  # heat count of the current regime's first heat
        self.refits = 0
        self._last_refit: int | None = None  # heat count of the last site re-fit
        self._last_refit_rows = 0  # training heats that re-fit had
        self._regime_detected = False  # the current regime began at a detection
        # Training heats only, newest last, with their heat counts: a round and a re-fit
        # train on the current regime's part of it.
        self._rows: deque[tuple[int, np.ndarray, np.ndarray]] = deque(
            maxlen=max(p.train_window, p.adapt_heats)
        )

    # -- observing
    def observe(
        self, x: np.ndarray, y: np.ndarray, pred: np.ndarray | None, *, learn: bool = True
    ) -> DriftEvent | None:
        """Score the prediction made before the outcome (None: there was none, e.g. a
        history heat), watch errors and inputs, and remember the heat as a training heat
        unless ``learn`` is False (a validation heat: scored and watched, never trained
        on). Returns the drift detected at this heat, if any."""
        self.observed += 1
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        fired_errors: list[str] | None = None
        if pred is not None:
            self.prequential.update(pred, y)
            if self.policy.detect:
                fired_errors = self.errors.update(pred, y)
        fired_inputs = self.inputs.update(x) if self.policy.detect else None
        event = None
        if fired_errors or fired_inputs:
            onset = self.observed - self._lag(fired_errors or [])
            event = DriftEvent(tuple(fired_errors or ()), tuple(fired_inputs or ()), onset)
            self.drift_at.append(self.observed)
            self.regime_start = max(onset, self.regime_start)
            self._regime_detected, self._last_refit, self._last_refit_rows = True, None, 0
            self.replay.new_regime()  # keep the old regime's rows apart, with their share
        if learn:
            self.replay.add(x, y)
            self._rows.append((self.observed, x, y))
        return event

    def _lag(self, targets: list[str]) -> int:
        """How many heats back the error rise began: the longest estimate of the targets
        that fired (the other detectors' estimates belong to older alarms)."""
        lags = [
            d.change_lag or 0
            for t, d in zip(self.errors.targets, self.errors.detectors, strict=True)
            if t in targets and isinstance(d, PageHinkley)
        ]
        return max(lags, default=0)

    @property
    def drift_events(self) -> int:
        return len(self.drift_at)

    # -- what to train on
    def regime_rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` training heats of the current regime (possibly none)."""
        rows = [r for r in self._rows if r[0] >= self.regime_start][-n:] if n > 0 else []
        width_x = len(self.inputs.features)
        if not rows:
            return (
                np.empty((0, width_x), np.float32),
                np.empty((0, len(self.prequential.targets)), np.float32),
            )
        return np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])

    @property
    def regime_heats(self) -> int:
        """Training heats of the current regime held (up to the row window)."""
        return sum(1 for r in self._rows if r[0] >= self.regime_start)

    def replay_rows(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Regime-balanced old heats to train on beside the recent ones (None if empty)."""
        n = self.policy.replay_rows if n is None else n
        if len(self.replay) == 0 or n <= 0:
            return None
        return self.replay.sample(n)

    def round_rows(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """What a federated round trains on: the newest ``train_window`` training heats of
        the current regime (the newest ``min_regime_heats`` of any regime while it holds
        none yet) and the replay rows."""
        p = self.policy
        x, y = self.regime_rows(p.train_window)
        if len(x) == 0 and self._rows:
            rows = list(self._rows)[-p.min_regime_heats :]
            x, y = np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])
        return x, y, self.replay_rows()

    # -- site adaptation
    def refit_due(self) -> bool:
        """A detection started a regime whose site part needs a re-fit now: at once (once
        the regime holds ``min_regime_heats`` training heats), then every
        ``adapt_every`` heats until a re-fit had ``adapt_heats`` of them."""
        p = self.policy
        if not self._regime_detected or self.regime_heats < p.min_regime_heats:
            return False
        if self._last_refit is None:
            return True
        return (
            self.observed - self._last_refit >= p.adapt_every
            and self._last_refit_rows < p.adapt_heats
        )

    def refit(
        self,
        spec: ModelSpec,
        shared: Mapping[str, np.ndarray],
        site: Mapping[str, np.ndarray] | None,
    ) -> Weights | None:
        """Re-fit the site part on the current regime's newest ``adapt_heats`` training
        heats, with ``shared`` frozen; the new site part, or None if the architecture has
        no site tensors or the regime holds too few heats. Marks the re-fit done."""
        p = self.policy
        x, y = self.regime_rows(p.adapt_heats)
        if len(x) < p.min_regime_heats:
            return None
        self._last_refit, self._last_refit_rows = self.observed, len(x)
        if not spec.parameter_shapes("site"):
            return None
        cfg = TrainConfig(
            epochs=0,
            lr=p.adapt_lr,
            batch_size=p.batch_size,
            seed=self.observed,
            site_epochs=p.adapt_epochs,
            site_l2=p.adapt_prior,
            site_anchor=True,
        )
        self.refits += 1
        return train_delta(spec, shared, x, y, cfg, site=site).site


__all__ = ["DriftEvent", "SiteLearner", "SitePolicy"]
