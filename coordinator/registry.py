"""Agent registry from births and last wills, without I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AgentInfo:
    agent_id: str
    online: bool
    samples: int
    software: str
    last_seen: float


class Registry:
    def __init__(self) -> None:
        self._agents: dict[str, AgentInfo] = {}

    def update(self, info: AgentInfo) -> bool:
        """Record a status; True if the agent's online state changed."""
        old = self._agents.get(info.agent_id)
        self._agents[info.agent_id] = info
        return old is None or old.online != info.online

    def online(self) -> list[str]:
        return sorted(a.agent_id for a in self._agents.values() if a.online)

    def get(self, agent_id: str) -> AgentInfo | None:
        return self._agents.get(agent_id)

    def all(self) -> list[AgentInfo]:
        return sorted(self._agents.values(), key=lambda a: a.agent_id)
