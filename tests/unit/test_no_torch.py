"""The coordinator and inference consumers run without torch (DESIGN.md, dependencies)."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120
    )


def test_the_coordinator_builds_and_publishes_models_without_torch() -> None:
    done = _run(
        "from alchimia.coordinator.publishing import initial_weights, model_message\n"
        "import alchimia.coordinator.service\n"
        "from alchimia.models.spec import ModelSpec\n"
        "for arch in ('mlp-v1', 'eaf-hybrid-v1'):\n"
        "    spec = ModelSpec(architecture=arch)\n"
        "    msg = model_message('c', spec, initial_weights(spec, 0), version=0, parent=None,\n"
        "                        round_id=None, metadata={})\n"
        "    assert len(msg) > 1000\n"
        "print('ok')\n"
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_blocker_really_blocks_torch() -> None:
    """The check above would pass vacuously if blocking torch did not work."""
    done = _run("from alchimia.models.regressor import build_model\n")
    assert done.returncode != 0 and "torch" in done.stderr


def test_the_command_line_parses_without_torch() -> None:
    """`alchimia coordinator`, `optimize`, `infer`, `characterise` and `status` start
    without torch; the experiments' options (which import it) are read only for
    `alchimia experiment`."""
    done = _run(
        "from alchimia.cli import main\n"
        "for cmd in ('coordinator', 'optimize', 'infer', 'characterise', 'provision',\n"
        "            'status'):\n"
        "    try:\n"
        "        main([cmd, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (cmd, exc.code)\n"
        "print('ok')\n"
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
