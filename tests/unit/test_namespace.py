"""One import name, ``alchimia`` (issue 13 §3): the folders agent/, coordinator/, broker/,
models/ and deploy/ are the packages alchimia.agent, ... (setup.py's package_dir)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OLD = ("agent", "coordinator", "broker", "models", "deploy")


def test_nothing_is_imported_under_an_old_top_level_name() -> None:
    """From the repository root the folders are importable as top-level packages too; a
    module imported both ways would exist twice. deploy/dev/namespace.py --check finds
    every import, code string, module path and config entry still to rewrite."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "dev" / "namespace.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_packages_load_from_their_folders_and_no_old_name_is_loaded() -> None:
    code = (
        "import sys\n"
        "import alchimia.cli, alchimia.consumer, alchimia.agent.service, "
        "alchimia.coordinator.service, alchimia.deploy.provision\n"
        f"old = sorted(m for m in sys.modules if m.split('.')[0] in {OLD!r})\n"
        "assert not old, old\n"
        "print(alchimia.agent.__file__, alchimia.coordinator.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    agent, coordinator = done.stdout.split()
    assert Path(agent) == ROOT / "agent" / "__init__.py"
    assert Path(coordinator) == ROOT / "coordinator" / "__init__.py"
