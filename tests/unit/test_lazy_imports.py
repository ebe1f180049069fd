"""Heavy modules are imported when they are needed, not with the process (issue 14 §2: the
coordinator's resident memory idle and under load, the time of ``alchimia --help``).
Each check runs in a fresh interpreter; none measures time or memory."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_coordinator_aggregates_the_default_model_without_numba() -> None:
    """numba and LLVM (~140 MB resident) load only for a tensor of ``kernels.SMALL``
    elements or more: not for the default model, nor by importing the coordinator."""
    done = _run(
        "import sys\n"
        "import numpy as np\n"
        "import alchimia.coordinator.service\n"
        "from alchimia.coordinator.publishing import initial_weights\n"
        "from alchimia.coordinator.strategies import kernels, make_strategy\n"
        "from alchimia.models.spec import ModelSpec\n"
        "assert 'numba' not in sys.modules, 'imported with the coordinator'\n"
        "g = initial_weights(ModelSpec(architecture='eaf-hybrid-v1'), 0)\n"
        "acc = make_strategy('fedavg', clip_norm=10.0).open_round(g)\n"
        "for k in range(3):\n"
        "    acc.add({n: np.full(v.shape, 1e-3 * k, np.float32) for n, v in g.items()}, 10.0)\n"
        "new = acc.finish()\n"
        "assert set(new) == set(g)\n"
        "assert 'numba' not in sys.modules, 'imported by a round of the default model'\n"
        "big = np.ones(kernels.SMALL, np.float32)\n"
        "assert kernels.sum_squares(big) == kernels.SMALL\n"
        "assert 'numba' in sys.modules, 'a large tensor must take the compiled loops'\n"
        "print('ok')\n"
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_alchimia_help_imports_neither_numpy_nor_pydantic() -> None:
    """`alchimia --help` lists the commands; the modules it imports for their options
    import numpy, pydantic and the rest only when that command runs."""
    done = _run(
        "import sys\n"
        "from alchimia.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted({'numpy', 'pydantic', 'onnx', 'onnxruntime', 'numba', 'torch'}\n"
        "               & set(sys.modules))\n"
        "print('heavy:', heavy)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("heavy: []"), done.stdout[-500:]
