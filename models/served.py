"""A site's serving model as the plant's own tools read it from disk (no torch).

The agent keeps, in ``{state_dir}/{agent_id}/serving/`` (``agent.learn.serving`` writes it):

* ``model.onnx``: the serving model (global shared part + this site's part);
* ``model.json``: ``{"version", "spec", "site_tensors", "updated_ts"}``;
* ``calibration.json``: the serving model's signed residuals on heats it never trained
  on (``models.calibration.Calibration.to_dict``), for intervals and chance constraints;
* ``power_on.json``: the site's planned power-on time estimate
  (``models.power_on.PowerOnEstimate.to_dict``);
* ``site.npz``: the site tensors (read by the agent only).

:func:`load_served` opens one such directory (or a bare ``.onnx`` file with its
``model.json`` beside it) for ``alchimia optimize --model`` and ``alchimia characterise``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alchimia.models.calibration import Calibration
from alchimia.models.onnx_runtime import OnnxPredictor
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.spec import ModelSpec

ONNX_FILE = "model.onnx"
INFO_FILE = "model.json"
CALIBRATION_FILE = "calibration.json"
POWER_ON_FILE = "power_on.json"
SITE_FILE = "site.npz"


@dataclass(frozen=True)
class ServedModel:
    version: int
    spec: ModelSpec
    predictor: OnnxPredictor
    calibration: Calibration | None  # None: the site has not calibrated this model yet
    power_on: PowerOnEstimate | None


def load_served(path: Path) -> ServedModel:
    """The serving model in directory ``path`` (or the ``.onnx`` file ``path``)."""
    directory = path.parent if path.suffix == ".onnx" else path
    onnx_path = path if path.suffix == ".onnx" else directory / ONNX_FILE
    info_path = directory / INFO_FILE
    for p in (onnx_path, info_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: expected a site's serving directory ({ONNX_FILE} and {INFO_FILE})"
            )
    info = json.loads(info_path.read_text())
    spec = ModelSpec.model_validate(info["spec"])
    predictor = OnnxPredictor(onnx_path.read_bytes(), spec.features, spec.targets)
    cal_path, pon_path = directory / CALIBRATION_FILE, directory / POWER_ON_FILE
    calibration = (
        Calibration.from_dict(json.loads(cal_path.read_text())) if cal_path.is_file() else None
    )
    power_on = (
        PowerOnEstimate.from_dict(json.loads(pon_path.read_text())) if pon_path.is_file() else None
    )
    return ServedModel(int(info["version"]), spec, predictor, calibration, power_on)
