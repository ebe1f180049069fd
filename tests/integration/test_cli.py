"""``alchimia coordinator`` and ``alchimia agent`` as separate processes, configured the
three documented ways (TOML file, environment, flags), against a real Mosquitto."""

from __future__ import annotations

from pathlib import Path

from alchimia.coordinator.persistence import CoordinatorDB
from tests.integration.helpers import alchimia, run_until_coordinator_exits


def test_processes_federate_with_file_env_and_flag_settings(mosquitto, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "coordinator.toml"
    # The file says 9 rounds and another federation; env and flags must win over it.
    config.write_text(
        f'federation = "wrong"\nrounds = 9\nmin_agents = 2\nstate_dir = "{state}"\nepochs = 1\n'
    )
    coordinator = alchimia(
        "coordinator",
        "--config",
        str(config),
        "--broker",
        mosquitto.url,
        "--rounds",
        "2",
        env={"ALCHIMIA_COORDINATOR_FEDERATION": "cli"},
    )
    agents = [
        alchimia(
            "agent",
            "--broker",
            mosquitto.url,
            "--plant",
            str(i),
            "--history-heats",
            "50",
            "--heat-interval",
            "0",
            "--state-dir",
            str(tmp_path / "agents"),
            env={"ALCHIMIA_AGENT_FEDERATION": "cli", "ALCHIMIA_AGENT_AGENT_ID": f"p{i}"},
        )
        for i in (1, 2)
    ]
    code, out, agent_logs = run_until_coordinator_exits(coordinator, agents)
    assert code == 0, out
    assert "federation cli" in out and "round 2 closed" in out, out
    db = CoordinatorDB(state)
    try:
        assert db.latest_version() == 2
        assert sorted(db.versions()[-1][3]["contributors"]) == ["p1", "p2"]
    finally:
        db.close()
    for log in agent_logs:
        assert "sent update for round 2" in log, log


def test_bad_settings_fail_with_a_clear_message(tmp_path: Path) -> None:
    proc = alchimia("agent", "--broker", "http://nope", "--agent-id", "a")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "mqtt://HOST:PORT" in out
    proc = alchimia("coordinator", "--config", str(tmp_path / "missing.toml"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "does not exist" in out
