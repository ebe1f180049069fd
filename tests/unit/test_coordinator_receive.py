"""The receiver's batches (``Coordinator._receive``): between two messages it ticks the
lifecycle in the waiting round driver's stead, and must wake the driver whenever that tick
leaves it something to do, commands or a new deadline, else the driver sleeps past it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alchimia.coordinator.lifecycle import PublishStatus
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(CoordinatorSettings.load(None, federation="batch", state_dir=tmp_path))
    c._driver_waits, c._driver_deadline = True, None
    yield c
    c.db.close()


def test_a_tick_that_moves_the_deadline_wakes_the_driver(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator.lifecycle, "tick", lambda now: [])
    monkeypatch.setattr(coordinator.lifecycle, "next_deadline", lambda: 123.0)
    coordinator.changed.set()  # a message changed something
    assert coordinator._tick_between() is False  # the batch stops: the driver runs first
    assert coordinator.changed.is_set()
    coordinator._driver_deadline = 123.0  # the deadline the driver waits for already
    assert coordinator._tick_between() is True  # nothing for the driver: the batch goes on
    assert not coordinator.changed.is_set()


def test_commands_of_a_tick_go_to_the_driver_in_order(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = [PublishStatus(), PublishStatus()]
    monkeypatch.setattr(coordinator.lifecycle, "tick", lambda now: commands)
    coordinator.changed.set()
    assert coordinator._tick_between() is False
    assert list(coordinator._outbox) == commands
    assert coordinator.changed.is_set()
    coordinator._driver_waits = False  # the driver is busy: it ticks itself
    assert coordinator._tick_between() is True
    assert list(coordinator._outbox) == commands
