"""When the next round opens: rounds follow the data, without I/O.

Each agent reports in its status how many heats it has learned of since the last update
it sent (``new_heats``). A round opens when at least ``min_agents`` online agents have
new data, when a drift report asks for one, or when the schedule says so; otherwise the
coordinator waits (on its event, with ``wait_s`` as the timeout) and never spins rounds
on unchanged data. An agent that never reported ``new_heats`` (an older agent) counts as
having new data, so a federation of older agents behaves as before and nothing deadlocks.

Data already held (the history an agent starts with, a CSV replay) gets as many rounds as
it needs: while the federation's mean validation error improves by at least
``min_improvement`` from one version to the next (``ValidationProgress``), another round
opens without new heats; once it levels off, rounds wait for new heats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    open: bool
    reason: str
    fresh: frozenset[str]  # online agents with new data: the selection prefers them
    wait_s: float | None = None  # when not open: seconds until the schedule is due


@dataclass(frozen=True)
class RoundTrigger:
    min_new_heats: int = 1  # 0: every online agent counts as having new data
    schedule_s: float | None = None  # open a round anyway this long after the last one

    def __post_init__(self) -> None:
        if self.min_new_heats < 0:
            raise ValueError("min_new_heats must be >= 0")
        if self.schedule_s is not None and not self.schedule_s > 0:
            raise ValueError("the round schedule must be > 0 seconds")

    def has_new_data(self, new_heats: int | None) -> bool:
        return new_heats is None or new_heats >= self.min_new_heats

    def decide(
        self,
        online: Mapping[str, int | None],
        *,
        min_agents: int,
        now: float,
        last_opened: float,
        early: str | None = None,
        improving: str | None = None,
    ) -> Decision:
        """Whether to open a round now.

        ``online`` maps each online agent to its latest ``new_heats`` (None: not reported);
        ``last_opened`` is when the previous round opened (or the coordinator started);
        ``early`` names an agent whose drift report asked for an early round.
        """
        fresh = frozenset(a for a, n in online.items() if self.has_new_data(n))
        if len(online) < min_agents:
            return Decision(False, f"{len(online)} of {min_agents} agents online", fresh)
        if early is not None:
            return Decision(True, f"drift reported by {early}", fresh)
        if len(fresh) >= min_agents:
            return Decision(True, f"new heats at {len(fresh)} agents", fresh)
        if improving is not None:  # the data it has still teaches the federation something
            return Decision(True, improving, fresh)
        if self.schedule_s is not None:
            due = last_opened + self.schedule_s
            if now >= due:
                return Decision(True, f"schedule ({self.schedule_s:g} s)", fresh)
            return Decision(
                False, f"new heats at {len(fresh)} of {min_agents} agents needed", fresh, due - now
            )
        return Decision(False, f"new heats at {len(fresh)} of {min_agents} agents needed", fresh)


@dataclass
class ValidationProgress:
    """The agents' validation reports per model version, reduced to one figure: the mean
    over agents of the mean over targets of MAE / the target's reference scale."""

    targets: Sequence[str]
    y_scale: Sequence[float]
    min_improvement: float = 0.01
    _errors: dict[int, dict[str, float]] = field(default_factory=dict)

    def report(self, version: int, agent: str, values: Mapping[str, float]) -> None:
        scaled = [
            values[f"mae_{t}"] / s
            for t, s in zip(self.targets, self.y_scale, strict=True)
            if f"mae_{t}" in values
        ]
        if len(scaled) == len(self.targets):
            self._errors.setdefault(version, {})[agent] = sum(scaled) / len(scaled)
            for old in [v for v in self._errors if v < version - 8]:
                del self._errors[old]

    def improving(self, version: int, parent: int | None) -> str | None:
        """Why another round on unchanged data is worth it, or None: the agents that
        reported both versions saw their mean error fall by at least ``min_improvement``."""
        if parent is None or version not in self._errors or parent not in self._errors:
            return None
        both = self._errors[version].keys() & self._errors[parent].keys()
        if not both:
            return None
        new = sum(self._errors[version][a] for a in both) / len(both)
        old = sum(self._errors[parent][a] for a in both) / len(both)
        if not new <= old * (1.0 - self.min_improvement):
            return None
        return f"validation error of version {version} {new / old - 1:+.1%} vs {parent}"
