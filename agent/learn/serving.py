"""What a site serves, on disk: the model file a plant's own tools can use, and the site
tensors that never leave the site.

``{state_dir}/{agent_id}/serving/``:

* ``model.onnx``: the serving model (the global shared part with this site's part), the
  same raw-units contract as ``model/current``'s ONNX; replaced on every swap;
* ``model.json``: ``{"version", "spec", "site_tensors", "updated_ts"}``: which global version
  it serves and the columns (``spec.features``, ``spec.targets``);
* ``site.npz``: the site tensors (numpy arrays, no pickle), so a restart keeps what the
  site learned;
* ``calibration.json`` and ``power_on.json``: the serving model's calibration and the
  site's power-on time estimate (``models.served`` documents and reads them).

Every file is written to a temporary name, flushed to disk and renamed over the old one:
a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from alchimia.broker.durable import atomic_write
from alchimia.models.calibration import Calibration
from alchimia.models.params import Weights
from alchimia.models.power_on import PowerOnEstimate
from alchimia.models.served import CALIBRATION_FILE, INFO_FILE, ONNX_FILE, POWER_ON_FILE, SITE_FILE
from alchimia.models.spec import ModelSpec


class ServingFiles:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def onnx_path(self) -> Path:
        return self.dir / ONNX_FILE

    @property
    def info_path(self) -> Path:
        return self.dir / INFO_FILE

    @property
    def site_path(self) -> Path:
        return self.dir / SITE_FILE

    def save_model(self, version: int, spec: ModelSpec, onnx_bytes: bytes) -> None:
        """The model now served; the ONNX file first, so model.json never names a model
        that is not on disk."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.onnx_path, onnx_bytes)
        info = {
            "version": version,
            "spec": spec.model_dump(mode="json"),
            "site_tensors": list(spec.parameter_shapes("site")),
            "updated_ts": time.time(),
        }
        atomic_write(self.info_path, json.dumps(info, indent=1).encode())

    def save_calibration(self, calibration: Calibration) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / CALIBRATION_FILE, json.dumps(calibration.to_dict()).encode())

    def save_power_on(self, estimate: PowerOnEstimate) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / POWER_ON_FILE, json.dumps(estimate.to_dict()).encode())

    def save_site(self, site: Mapping[str, np.ndarray]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        # numpy's stub types **kwds as if a key could be allow_pickle (none here is).
        np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in site.items()})  # type: ignore[arg-type]
        atomic_write(self.site_path, buf.getvalue())

    def load_site(self, spec: ModelSpec) -> Weights | None:
        """The saved site tensors if they fit ``spec``; None if absent or of another model."""
        if not self.site_path.exists():
            return None
        with np.load(self.site_path, allow_pickle=False) as z:
            site = {k: z[k].astype(np.float32) for k in z.files}
        shapes = spec.parameter_shapes("site")
        if list(site) != list(shapes) or any(site[k].shape != s for k, s in shapes.items()):
            return None
        return site
