"""Admin commands over a real Mosquitto (``alchimia coordinator pause|resume|stop``) and
the version registry on disk (``alchimia models list|export``, retention)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from alchimia.local import LocalFederation
from tests.integration.helpers import wait_for


def _admin(url: str, federation: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "alchimia",
            "coordinator",
            "--broker",
            url,
            "--federation",
            federation,
            *args,
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _models(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alchimia", "models", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pause_resume_stop_and_the_version_files(mosquitto, tmp_path: Path) -> None:
    state = tmp_path / "coord"
    fed = LocalFederation(
        mosquitto.url,
        "adm",
        2,
        state,
        coordinator={
            "min_agents": 2,
            "rounds": 0,
            "epochs": 1,
            "round_schedule_s": 0.5,
            "keep_versions": 3,
        },
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    try:
        thread = fed.start_coordinator()
        coordinator = thread.coordinator
        assert coordinator is not None
        fed.start_agents()
        wait_for(lambda: coordinator.version >= 4, 120, "version 4")

        out = _admin(mosquitto.url, "adm", "pause")
        assert out.returncode == 0 and "paused" in out.stdout, out.stderr
        paused_at = coordinator.version
        time.sleep(3.0)  # several schedule periods: rounds would have opened
        assert coordinator.version <= paused_at + 1  # only the round open then may finish
        assert coordinator.paused and coordinator.db.flag("paused") == "1"

        out = _admin(mosquitto.url, "adm", "resume")
        assert out.returncode == 0 and "running" in out.stdout, out.stderr
        wait_for(lambda: coordinator.version >= paused_at + 3, 120, "rounds again")

        out = _admin(mosquitto.url, "adm", "stop")
        assert out.returncode == 0 and "stopping" in out.stdout, out.stderr
        wait_for(lambda: thread.done, 120, "the coordinator to stop after its round")
        assert thread.error is None
        last = coordinator.version
    finally:
        fed.stop()

    listing = _models(state, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [r["version"] for r in rows] == list(range(last + 1))
    assert [r["version"] for r in rows if r["kept"]] == [last - 2, last - 1, last]
    assert rows[0]["initial"] and rows[-1]["contributors"]

    onnx_file = tmp_path / "latest.onnx"
    out = _models(state, "export", str(last), "--onnx", str(onnx_file))
    assert out.returncode == 0, out.stderr
    session = ort.InferenceSession(onnx_file.read_bytes())
    name, width = session.get_inputs()[0].name, session.get_inputs()[0].shape[1]
    assert np.isfinite(session.run(None, {name: np.ones((1, width), np.float32)})[0]).all()
    pruned = _models(state, "export", "0", "--onnx", str(tmp_path / "v0.onnx"))
    assert pruned.returncode == 1 and "not kept" in pruned.stderr
