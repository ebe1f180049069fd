"""``alchimia optimize`` on a serving directory written as the agent writes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alchimia.agent.learn.serving import ServingFiles
from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.cli import main
from alchimia.models.calibration import Calibration
from alchimia.models.initial import initial_weights
from alchimia.models.onnx_build import build_onnx
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.schema import FEATURES, TARGETS
from alchimia.models.served import load_served
from alchimia.models.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The physics prior of eaf-hybrid-v1 as version 7, calibrated on 120 heats of plant
    P1 and with P1's power-on estimate."""
    directory = tmp_path_factory.mktemp("serving")
    spec = ModelSpec(architecture="eaf-hybrid-v1")
    files = ServingFiles(directory)
    files.save_model(7, spec, build_onnx(spec, initial_weights(spec, 0)))
    profile, seed = default_plants(1)[0]
    heats = SimulatedPlant(profile, seed).heats(120)
    x = np.array([[h.inputs[f] for f in FEATURES] for h in heats])
    y = np.array([[h.outcome[t] for t in TARGETS] for h in heats])
    files.save_power_on(PowerOnEstimate.fit(x, FEATURES))
    cal = Calibration(TARGETS)
    cal.reset(load_served(directory).predictor.predict(x), y, 7)
    files.save_calibration(cal)
    return directory


def _args(serving: Path, order: Path = EXAMPLES / "order.toml", *extra: str) -> list[str]:
    return [
        "optimize",
        "--order",
        str(order),
        "--stock",
        str(EXAMPLES / "stock.toml"),
        "--model",
        str(serving),
        *extra,
    ]


def test_json_plan_for_the_example_order(serving: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(serving, EXAMPLES / "order.toml", "--json", "--risk", "0.1")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["status"] == "optimal" and plan["model_version"] == 7
    assert plan["risk_asked"] == 0.1 and plan["risk_any"] is not None
    tapped = plan["predicted"]["tapped_t"]
    assert 109.0 - 1e-3 <= tapped["mean"] <= 111.0 + 1e-3
    assert tapped["lo"] < tapped["hi"] and plan["level"] == 0.9
    assert plan["predicted"]["cu_pct"]["mean"] + plan["margins"]["cu max"] <= 0.20
    stock = {
        "E3": 60,
        "E1": 30,
        "E2": 40,
        "E8": 20,
        "E40": 60,
        "E46": 20,
        "EHRB": 25,
        "DRI": 30,
        "PIG": 15,
    }
    assert set(plan["charge"]) == set(stock)
    assert all(0.0 <= plan["charge"][g] <= stock[g] + 1e-6 for g in stock)
    assert len(plan["baskets"]) == 3
    # Power-on time comes from the site's estimate for this very charge.
    estimate = load_served(serving).power_on
    row = np.array([[plan["inputs"][f] for f in FEATURES]])
    assert plan["inputs"]["power_on_min"] == pytest.approx(float(estimate.estimate(row)[0]))
    c = plan["cost"]
    assert c["total"] == pytest.approx(c["material"] + c["energy"] + c["co2"])


def test_text_plan_and_an_order_that_cannot_be_met(
    serving: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(serving)) == 0
    out = capsys.readouterr().out
    assert "optimal" in out and "charge, t" in out and "planned power-on" in out
    tight = tmp_path / "tight.toml"
    tight.write_text(
        (EXAMPLES / "order.toml").read_text().replace("cu = { max = 0.20 }", "cu = { max = 0.02 }")
    )
    assert main(_args(serving, tight)) == 1
    out = capsys.readouterr().out
    assert "infeasible" in out and "Cu max 0.02 % cannot be met" in out


def test_bad_files_are_reported_not_raised(
    serving: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("tapped_t = -5\n")
    assert main(_args(serving, bad)) == 2
    assert "tapped_t" in capsys.readouterr().err
    assert main(_args(tmp_path / "nowhere")) == 2


def test_alchimia_optimize_runs_without_torch(serving: Path) -> None:
    """The consumer install has no torch: block it and run the whole command."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from alchimia.cli import main\n"
        f"sys.exit(main(['optimize', '--order', {str(EXAMPLES / 'order.toml')!r}, "
        f"'--stock', {str(EXAMPLES / 'stock.toml')!r}, '--model', {str(serving)!r}, "
        "'--json']))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "optimal"
