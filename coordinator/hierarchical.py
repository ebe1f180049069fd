"""Two-level aggregation, without I/O: plant aggregators pre-sum their agents' updates into
one partial each, the coordinator folds the partials into its round (docs/SCALE.md,
"Two-level aggregation").

A plant aggregator applies to each update the coordinator's own rules, in the
coordinator's order (``coordinator/lifecycle.py``, ``Lifecycle.on_update``): a ``msg_id``
seen before is ``replayed``; the round's checks (``SyncRound.check``: round, selection,
base version, one update per agent); then the delta is validated and folded into float64
sums by ``MeanAccumulator`` itself (``bad_delta`` leaves the sums untouched). Its
``partial()`` holds what FedAvg's accumulator holds before it finishes: per coordinate the sum of
``weight x delta`` and the weight of the updates that touched it, the total weight and the
count. ``merge_partial`` adds a partial into the coordinator's accumulator, after checking
all of it, so the round finishes exactly as a flat one would (submodel averaging, the
server optimisers' step and strategy state included).

Which strategies compose: those whose accumulator is ``MeanAccumulator`` (the sums are
linear in the updates): ``fedavg``, ``fedprox`` (its proximal term is the agents'),
``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad`` (their server step acts on the mean
delta, once per round, at the top). ``median``, ``trimmed_mean``, ``krum`` and
``multikrum`` need every update at once (an order statistic, pairwise distances): a sum
cannot stand in for them, and ``merge_partial`` refuses their accumulators.

Exactness: the method is exact (the same sums, regrouped); the float64 arithmetic is not
associative. A flat round adds the terms ``w_i d_i`` one after another in arrival order; a
plant adds its own, and the top adds the plants' sums, which regroups the additions. The
results are the same bits whenever the float64 sums are exact, i.e. every partial sum of
every coordinate is representable (e.g. float32 deltas on a common grid and integer
weights: tests/unit/test_hierarchical.py, for any split and any order, strategy state
included). Otherwise each float64 sum of K terms differs from the flat one by at most
about ``2 (K - 1) x 2**-53 x sum_i |w_i d_i|`` (both orders' rounding bound), ~1e-16
relative where the terms share a sign, far below the float32 rounding of the new weights:
those are the same bits except where the mean lies within that error of a float32
rounding boundary, and then one float32 ulp apart (tested on random deltas). A flat round
is itself only reproducible for a fixed arrival order, which MQTT does not fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from alchimia.coordinator.rounds import Refusal, SyncRound
from alchimia.coordinator.strategies.base import Accumulator, Weights, check_global
from alchimia.coordinator.strategies.fedavg import MeanAccumulator


@dataclass(frozen=True)
class Partial:
    """One plant's pre-summed round: what it would send upstream (docs/SCALE.md)."""

    plant: str
    round_id: int
    base_version: int
    sums: dict[str, np.ndarray]  # float64: sum of weight x delta over accepted updates
    touched: dict[str, np.ndarray]  # float64: weight of the updates that trained it there
    total_weight: float
    count: int
    contributors: tuple[str, ...]


def _refuse_finish(sums: dict[str, np.ndarray], total: float) -> Weights:
    raise RuntimeError("a plant aggregator does not finish a round: send partial() upstream")


class PlantAggregator:
    """Pre-sums one plant's updates of one round under the coordinator's rejection rules.

    ``selected`` is the round's selection restricted to this plant's agents (the task's
    ``selected``, filtered); ``seen`` the message ids this plant has already taken (replay
    protection across rounds, kept by the caller).
    """

    def __init__(
        self,
        plant: str,
        global_weights: Weights,
        round_id: int,
        base_version: int,
        selected: Iterable[str],
        seen: set[str] | None = None,
    ) -> None:
        check_global(global_weights)
        self.plant = plant
        self._round = SyncRound(
            window_id=round_id,
            base_version=base_version,
            selected=frozenset(selected),
            quorum=1,
            deadline_ts=math.inf,
        )
        self._acc = MeanAccumulator(global_weights, _refuse_finish)
        self._seen = set() if seen is None else seen

    @property
    def count(self) -> int:
        """Updates accepted so far."""
        return self._acc.count

    def offer(
        self,
        sender: str,
        msg_id: str,
        round_id: int,
        base_version: int,
        num_samples: int,
        delta: Weights,
    ) -> Refusal | None:
        """Take one update, or say why not (the coordinator's codes); a refused update
        leaves the sums as they were."""
        if msg_id in self._seen:
            return Refusal("replayed", f"message {msg_id} replayed")
        reason = self._round.check(sender, round_id, base_version)
        if reason is not None:
            return reason
        try:
            self._acc.add(delta, self._round.weight(base_version, num_samples))
        except ValueError as exc:
            return Refusal("bad_delta", str(exc))
        self._seen.add(msg_id)
        self._round.accept(sender, msg_id, base_version)
        return None

    def partial(self) -> Partial:
        """The sums so far (copies), for the coordinator's ``merge_partial``."""
        if self.count == 0:
            raise ValueError(f"plant {self.plant}: no accepted update to send")
        return Partial(
            self.plant,
            self._round.window_id,
            self._round.base_version,
            {k: v.copy() for k, v in self._acc._sums.items()},
            {k: v.copy() for k, v in self._acc._touched.items()},
            self._acc.total_weight,
            self.count,
            tuple(self._round.contributors),
        )


def check_partial(global_weights: Weights, partial: Partial) -> None:
    """Reject a partial that could not come from valid updates, before any of it is added:
    the model's tensor names and shapes, float64, finite sums, touched weights in
    [0, total] (up to float64 rounding), a finite total > 0 and a count >= 1."""
    if not (math.isfinite(partial.total_weight) and partial.total_weight > 0.0):
        raise ValueError(f"partial of {partial.plant}: total weight {partial.total_weight}")
    if partial.count < 1 or len(partial.contributors) != partial.count:
        raise ValueError(
            f"partial of {partial.plant}: count {partial.count} for "
            f"{len(partial.contributors)} contributors"
        )
    ceiling = partial.total_weight * (1.0 + 1e-12)
    for what, arrays in (("sums", partial.sums), ("touched", partial.touched)):
        if set(arrays) != set(global_weights):
            raise ValueError(
                f"partial of {partial.plant}: {what} has parameters "
                f"{sorted(arrays)}, the model {sorted(global_weights)}"
            )
        for name, ref in global_weights.items():
            arr = arrays[name]
            if arr.dtype != np.float64 or arr.shape != ref.shape:
                raise ValueError(
                    f"partial of {partial.plant}: {what}[{name!r}] is "
                    f"{arr.dtype} {arr.shape}, not float64 {ref.shape}"
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"partial of {partial.plant}: {what}[{name!r}] is not finite")
            if what == "touched" and (arr.min(initial=0.0) < 0.0 or arr.max(initial=0.0) > ceiling):
                raise ValueError(
                    f"partial of {partial.plant}: touched[{name!r}] outside [0, total weight]"
                )


def merge_partial(acc: Accumulator, global_weights: Weights, partial: Partial) -> None:
    """Add a plant's partial into a round's accumulator (a linear strategy's), all checks
    first: on ValueError the accumulator is unchanged."""
    if not isinstance(acc, MeanAccumulator):
        raise ValueError(
            f"{type(acc).__name__} does not take partials: only the mean-based "
            "strategies do (median, trimmed mean and Krum need every update; "
            "with clip_norm each update is clipped before it is summed)"
        )
    acc._check_open()
    check_partial(global_weights, partial)
    for name in acc._sums:
        acc._sums[name] += partial.sums[name]
        acc._touched[name] += partial.touched[name]
    acc._total += partial.total_weight
    acc._count += partial.count
