"""A whole federation in one process: coordinator and agents on their own threads.

The demo runs on it, and so do the end-to-end tests, against any broker URL. Each part
talks to the others only through the broker, exactly as separate processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.service import Agent
from alchimia.agent.settings import AgentSettings
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings


class CoordinatorThread:
    """A coordinator on its own event loop; ``stop()`` may be called from any thread."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.coordinator: Coordinator | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="coordinator", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self.coordinator = Coordinator(self.settings)
            finally:
                self._ready.set()
            await self.coordinator.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the caller through .error
            self.error = exc
        finally:
            if self.coordinator is not None:
                self.coordinator.db.close()

    def start(self) -> CoordinatorThread:
        self.thread.start()
        self._ready.wait(60)
        if self.error is not None:
            raise RuntimeError(f"coordinator failed to start: {self.error}") from self.error
        return self

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def stop(self, timeout: float = 30) -> None:
        if self._loop is not None and self._stop is not None and self.thread.is_alive():
            # The loop may close between the check and the call when the coordinator has
            # just finished its last round on its own; then there is nothing to stop.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)


class AgentThread:
    def __init__(self, settings: AgentSettings) -> None:
        self.agent = Agent(settings, build_heat_source(settings))
        self._stop = threading.Event()
        self.thread = threading.Thread(
            target=self.agent.run, args=(self._stop,), name=settings.agent_id, daemon=True
        )

    def start(self) -> AgentThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self.thread.join(timeout)


class LocalFederation:
    def __init__(
        self,
        broker_url: str,
        federation: str,
        n_agents: int,
        state_dir: Path,
        coordinator: dict[str, Any] | None = None,
        agent: dict[str, Any] | None = None,
    ) -> None:
        self.coordinator_settings = CoordinatorSettings.load(
            None,
            broker=broker_url,
            federation=federation,
            state_dir=state_dir,
            **(coordinator or {}),
        )
        self.agent_settings = [
            AgentSettings.load(
                None,
                broker=broker_url,
                federation=federation,
                agent_id=f"plant-{i}",
                plant=i,
                state_dir=state_dir / "agents",
                **(agent or {}),
            )
            for i in range(1, n_agents + 1)
        ]
        self.coordinator: CoordinatorThread | None = None
        self.agents: list[AgentThread] = []

    def start_coordinator(self) -> CoordinatorThread:
        self.coordinator = CoordinatorThread(self.coordinator_settings).start()
        return self.coordinator

    def start_agents(self) -> list[AgentThread]:
        self.agents = [AgentThread(s).start() for s in self.agent_settings]
        return self.agents

    def stop(self) -> None:
        for a in self.agents:
            a.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
