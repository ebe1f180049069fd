"""The federation's privacy budget: client-level (user-level) differential privacy of the
updates that went into the published models, accounted with Google's ``dp-accounting``.

What is accounted (docs/FEDERATION.md, "Differential privacy"): with DP on, every agent
clips its shared delta to L2 norm ``clip_norm`` (C) and adds N(0, (z C)^2) to every
coordinate before the update leaves the site (``agent/learn/privacy.py``), z being
``noise_multiplier``. Each plant is one user. Changing all of a plant's heats moves its
clipped delta by at most 2 C, so each update is a Gaussian mechanism of noise multiplier
z / 2 with respect to replacing the plant's data (``replace_one``); the coordinator sees
each update, everything after it (aggregates, models, their metadata) is post-processing.
A plant's loss composes over the rounds it contributed to (one mechanism per update in a
published version), with no amplification by sampling: selection here is not Poisson
sampling (it prefers plants with new heats, async windows invite everyone). The figure
reported is the worst plant's (the most rounds): ``epsilon`` at the federation's
``delta``, from the RDP accountant (``dp_accounting.rdp``).

With secure aggregation the noise is distributed (``agent/secagg_client.py``): each of
the round's agents adds N(0, (z C)^2 / t) to its clipped delta, weight 1, t the round's
threshold, and the coordinator sees only the sum of at least t of them, whose noise has
std at least z C while one plant moves it by at most 2 C: again a Gaussian mechanism of
multiplier at least z / 2 per round for each contributor, accounted alike (assuming at
least t of the summed agents added their noise honestly; docs/FEDERATION.md). The
version's ``dp`` says which (``noise``: ``local`` or ``distributed``).

Sans-I/O: the coordinator records each aggregated version's contributors and rebuilds the
ledger after a restart from the stored versions' metadata (``replay``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

RELATION = "replace_one"  # each plant's data replaced: sensitivity 2 C (module docstring)
ACCOUNTANT = "rdp"


@lru_cache(maxsize=4096)
def epsilon(rounds: tuple[tuple[float, int], ...], delta: float) -> float:
    """Epsilon at ``delta`` of one plant that sent ``count`` updates at noise multiplier
    ``z`` for each ``(z, count)`` in ``rounds`` (replace-one: each a Gaussian mechanism of
    multiplier z / 2). 0 for no rounds; inf where some z is 0 (no noise)."""
    if not rounds:
        return 0.0
    if any(z <= 0 for z, n in rounds if n > 0):
        return math.inf
    # Imported here: dp_accounting pulls in scipy.signal and scipy.stats (a second at
    # start-up), which a coordinator without DP never needs; and scipy's array-API probe
    # trips over tests/unit/test_no_torch.py's torch blocker.
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    for z, n in rounds:
        accountant.compose(dp_accounting.GaussianDpEvent(z / 2), n)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target: float, delta: float, rounds: int, tol: float = 1e-3) -> float:
    """The smallest noise multiplier z (to within ``tol`` relative) whose ``rounds`` updates
    cost at most ``target`` epsilon at ``delta``: what a federation that plans ``rounds``
    rounds per plant sets for a budget (bisection on ``epsilon``, which falls with z)."""
    if target <= 0 or rounds < 1:
        raise ValueError("needs a positive epsilon and at least one round")
    lo, hi = 1e-3, 1.0
    while epsilon(((hi, rounds),), delta) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target}")
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon(((mid, rounds),), delta) > target else (lo, mid)
    return hi


@dataclass
class PrivacyLedger:
    """Updates each plant contributed to published versions, by noise multiplier."""

    delta: float
    spent: dict[str, Counter[float]] = field(default_factory=dict)

    def record(self, contributors: Iterable[str], noise_multiplier: float) -> None:
        """One more aggregated version: each contributor sent one update at this z."""
        for agent in contributors:
            self.spent.setdefault(agent, Counter())[float(noise_multiplier)] += 1

    def _rounds(self, agent: str) -> tuple[tuple[float, int], ...]:
        return tuple(sorted(self.spent.get(agent, Counter()).items()))

    def epsilon_of(self, agent: str) -> float:
        return epsilon(self._rounds(agent), self.delta)

    def worst(self) -> tuple[float, int]:
        """The largest epsilon of any plant, and the most updates any plant sent."""
        signatures = {self._rounds(a) for a in self.spent}  # plants alike cost alike
        eps = max((epsilon(s, self.delta) for s in signatures), default=0.0)
        rounds = max((sum(c.values()) for c in self.spent.values()), default=0)
        return eps, rounds

    def metadata(
        self, clip_norm: float, noise_multiplier: float, *, distributed: bool = False
    ) -> dict[str, Any]:
        """The ``dp`` entry of a version's metadata (docs/PROTOCOL.md, ``model``);
        ``distributed``: a secure round's, its noise shared among the agents."""
        eps, rounds = self.worst()
        return {
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": self.delta,
            "noise_multiplier": noise_multiplier,
            "clip_norm": clip_norm,
            "rounds": rounds,
            "relation": RELATION,
            "accountant": ACCOUNTANT,
            "noise": "distributed" if distributed else "local",
        }

    @classmethod
    def replay(cls, delta: float, metadata: Iterable[Mapping[str, Any]]) -> PrivacyLedger:
        """The ledger of stored versions (oldest first): each version made with DP
        counts its contributors at its noise multiplier. Versions made without DP count
        nothing: the figure covers the rounds since DP was on (docs/FEDERATION.md)."""
        ledger = cls(delta)
        for md in metadata:
            dp = md.get("dp")
            if isinstance(dp, Mapping) and "contributors" in md:
                ledger.record(md["contributors"], float(dp["noise_multiplier"]))
        return ledger
