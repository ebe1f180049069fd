"""Admin rollback over a real Mosquitto: ``alchimia coordinator rollback VERSION``
republishes that version's weights as a new version, and the agents follow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from alchimia.broker.schemas import ModelBody, decode
from alchimia.coordinator.persistence import CoordinatorDB
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import wait_for


def test_rollback_reaches_agents(mosquitto, tmp_path: Path) -> None:
    fed = LocalFederation(
        mosquitto.url,
        "rb",
        2,
        tmp_path / "coord",
        # mlp-v1: the MLP stays a working architecture end to end.
        coordinator={"min_agents": 2, "rounds": 0, "epochs": 1, "architecture": "mlp-v1"},
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    monitor = Monitor(mosquitto.url, "rb", "rb-monitor").start()
    try:
        fed.start_coordinator()
        fed.start_agents()
        wait_for(lambda: monitor.model is not None and monitor.model.version >= 3, 120, "v3")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "alchimia",
                "coordinator",
                "--broker",
                mosquitto.url,
                "--federation",
                "rb",
                "rollback",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        new_version = int(out.stdout.strip().rsplit(" ", 1)[-1])
        assert new_version >= 4
        wait_for(
            lambda: all((a.agent.model_version or 0) >= new_version for a in fed.agents),
            60,
            "agents to follow the rollback",
        )
    finally:
        fed.stop()
        monitor.stop()
    db = CoordinatorDB(tmp_path / "coord")
    try:
        rolled = decode(db.load_payload(new_version), ModelBody).body
        v1 = decode(db.load_payload(1), ModelBody).body
    finally:
        db.close()
    assert rolled.metadata["rollback_of"] == 1 and rolled.parent_version == new_version - 1
    for k in v1.weights:
        np.testing.assert_array_equal(rolled.weights[k], v1.weights[k])


def test_rollback_to_a_missing_version_is_refused(mosquitto, tmp_path: Path) -> None:
    fed = LocalFederation(
        mosquitto.url, "rb2", 1, tmp_path / "coord", coordinator={"min_agents": 1, "rounds": 0}
    )
    try:
        coordinator = fed.start_coordinator()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "alchimia",
                "coordinator",
                "--broker",
                mosquitto.url,
                "--federation",
                "rb2",
                "rollback",
                "42",
                "--timeout",
                "3",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and "no confirmation" in out.stderr
        wait_for(
            lambda: any(
                "no model version 42" in r.reason for r in coordinator.coordinator.rejections
            ),
            10,
            "rejection",
        )
    finally:
        fed.stop()
