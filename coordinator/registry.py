"""Agent registry from births and last wills, without I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class AgentInfo:
    agent_id: str
    online: bool
    samples: int
    software: str
    last_seen: float
    # Heats the agent learned of since its last update, as it last said (None: it never
    # said: an older agent, counted as having new data), and the agent's clock then.
    new_heats: int | None = None
    new_heats_ts: float = float("-inf")
    model_version: int | None = None  # the model it holds, as it last said


class Registry:
    def __init__(self) -> None:
        self._agents: dict[str, AgentInfo] = {}

    def update(self, info: AgentInfo) -> bool:
        """Record a status; True if the agent's online state changed.

        A status older (on the agent's own clock) than what is known of its new heats,
        e.g. one overtaken by an update the agent sent after it, keeps the known count.
        """
        old = self._agents.get(info.agent_id)
        if old is not None and info.new_heats_ts < old.new_heats_ts:
            info = replace(info, new_heats=old.new_heats, new_heats_ts=old.new_heats_ts)
        self._agents[info.agent_id] = info
        return old is None or old.online != info.online

    def update_sent(self, agent_id: str, ts: float) -> None:
        """The agent sent an update at ``ts`` (its clock): the heats it had are learned,
        so it has no new data until it says otherwise (agents that never report
        ``new_heats`` are left as they are)."""
        info = self._agents.get(agent_id)
        if info is not None and info.new_heats is not None and ts >= info.new_heats_ts:
            info.new_heats, info.new_heats_ts = 0, ts

    def online(self) -> list[str]:
        return sorted(a.agent_id for a in self._agents.values() if a.online)

    def new_heats(self) -> dict[str, int | None]:
        """Each online agent's latest ``new_heats`` (None where it never reported one)."""
        return {a.agent_id: a.new_heats for a in self.all() if a.online}

    def get(self, agent_id: str) -> AgentInfo | None:
        return self._agents.get(agent_id)

    def all(self) -> list[AgentInfo]:
        return sorted(self._agents.values(), key=lambda a: a.agent_id)
