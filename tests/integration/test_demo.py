"""The README's main command, `alchimia demo`, end to end on its embedded defaults
(embedded broker, SQLite stores, simulated plants): rounds improve every plant's model and
plant-1's serving model plans a charge for the example order."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from alchimia.demo import run_demo


def test_the_demo_federates_and_plans_a_charge(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_demo(agents=2, rounds=2, out_dir=tmp_path, console=Console(file=out, width=120))
    first, last = result.validation[0], result.validation[2]
    for agent in first:  # the untrained physics prior is far off; two rounds fix most of it
        assert last[agent]["mae_energy_kwh_t"] < 0.5 * first[agent]["mae_energy_kwh_t"]
    assert result.onnx_path.is_file() and result.served_path.is_file()
    plan = result.plan
    assert plan["status"] == "optimal", plan["infeasible"]
    assert sum(plan["charge"].values()) > 50  # tonnes of scrap for a ~110 t tap
    cu = plan["predicted"]["cu_pct"]
    assert cu["hi"] is not None and cu["lo"] <= cu["mean"] <= cu["hi"]  # calibrated
    assert "charge, t" in out.getvalue()
