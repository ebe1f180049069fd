"""``alchimia demo``: a local federation on simulated plants, start to finish."""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from alchimia.agent.sim import SimulatedPlant, default_plants
from alchimia.broker.embedded import EmbeddedBroker
from alchimia.local import LocalFederation
from alchimia.models.onnx_runtime import OnnxPredictor
from alchimia.monitor import Monitor

# deploy/examples in a checkout, alchimia/deploy/examples (package data) in an install.
EXAMPLES = Path(str(files("alchimia.deploy") / "examples"))

# Targets shown per plant in the round table (the model predicts all of models.schema.TARGETS).
SHOWN = (("energy_kwh_t", "kWh/t", "{:6.1f}"), ("cu_pct", "Cu%", "{:6.4f}"))


@dataclass
class DemoResult:
    federation: str
    broker: str
    onnx_path: Path
    final_version: int
    served_path: Path = Path()
    # version -> agent -> validation MAE per target
    validation: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    prediction: dict[str, float] = field(default_factory=dict)
    actual: dict[str, float] = field(default_factory=dict)
    plan: dict = field(default_factory=dict)  # plant-1's optimised charge (ChargePlan)
    wall_s: float = 0.0


def run_demo(
    *,
    broker: str | None = None,
    agents: int = 3,
    rounds: int = 5,
    federation: str | None = None,
    strategy: str = "fedavg",
    mode: str = "sync",
    secure_aggregation: bool = False,
    architecture: str = "eaf-hybrid-v1",
    influx: str | None = None,
    out_dir: Path = Path("runs"),
    console: Console | None = None,
    round_timeout_s: float = 120.0,
) -> DemoResult:
    console = console or Console()
    started = time.perf_counter()
    federation = federation or f"demo-{uuid.uuid4().hex[:6]}"
    run_dir = out_dir / federation
    shutil.rmtree(run_dir, ignore_errors=True)
    embedded = None if broker else EmbeddedBroker().start()
    url = broker or embedded.url  # type: ignore[union-attr]
    console.print(
        f"[bold]federation[/] {federation}  [bold]broker[/] {url}"
        f"{' (embedded)' if embedded else ''}  [bold]agents[/] {agents}  "
        f"[bold]rounds[/] {rounds}  [bold]strategy[/] {strategy} ({mode}"
        f"{', secure aggregation' if secure_aggregation else ''})  "
        f"[bold]model[/] {architecture}"
    )
    fed = LocalFederation(
        url,
        federation,
        agents,
        run_dir / "coordinator",
        coordinator={
            "rounds": rounds,
            "min_agents": agents,
            "strategy": strategy,
            "architecture": architecture,
            "mode": mode,
            "secure_aggregation": secure_aggregation,
            "buffer_k": agents,
            "round_timeout_s": round_timeout_s,
        },
        agent={"history_heats": 300, "heat_interval_s": 1.0, "influx": influx},
    )
    where = f"InfluxDB {influx}, database 'alchimia'" if influx else "SQLite files"
    console.print(f"sensor data: {where} under {run_dir / 'agents'} (spool and stores)")
    monitor = Monitor(url, federation, f"{federation}-monitor").start()
    ids = [s.agent_id for s in fed.agent_settings]
    try:
        fed.start_coordinator()
        for a in fed.start_agents():
            console.print(f"  {a.agent.id}: simulated plant {a.agent.settings.plant}")
        result = DemoResult(federation, url, run_dir / "model.onnx", rounds)
        _follow_rounds(console, monitor, fed, ids, rounds, round_timeout_s, result)
        model = monitor.model
        if model is None or model.version != rounds:
            raise RuntimeError(f"the federation did not reach version {rounds}")
        result.onnx_path.write_bytes(model.onnx)
        served = fed.agents[0].agent.files  # plant-1's served model: shared + its site part
        result.served_path = served.onnx_path
        predictor = OnnxPredictor(
            served.onnx_path.read_bytes(), model.spec["features"], model.spec["targets"]
        )
        profile, seed = default_plants(1)[0]
        heat = SimulatedPlant(profile, seed + 1000).next_heat()
        result.prediction = predictor.predict_one(heat.inputs)
        result.actual = heat.outcome
    finally:
        fed.stop()
        monitor.stop()
        if embedded is not None:
            embedded.stop()
    result.wall_s = time.perf_counter() - started
    console.print(f"\nglobal model v{rounds}: [bold]{result.onnx_path.resolve()}[/]")
    console.print(
        f"plant-1 serves: [bold]{result.served_path.resolve()}[/] (global shared "
        "part + its site part)"
    )
    console.print(f"one prediction by ONNX Runtime with it for a new heat of {profile.name}:")
    for name, value in result.prediction.items():
        console.print(f"  {name:14s} predicted {value:10.4f}   actual {result.actual[name]:10.4f}")
    _next_charge(console, served.dir, result)
    console.print(f"demo finished in {result.wall_s:.1f} s")
    return result


def _next_charge(console: Console, serving_dir: Path, result: DemoResult) -> None:
    """Decision support on what plant-1 serves: the cheapest charge for the example order
    (what ``alchimia optimize --model SERVING_DIR`` prints)."""
    from alchimia.models.charge import load_order, load_stock, optimize
    from alchimia.models.served import load_served
    from alchimia.optimize import print_plan

    order, stock = EXAMPLES / "order.toml", EXAMPLES / "stock.toml"
    console.print(
        f"\nplant-1's next charge for {order} from {stock}, chemistry held with "
        f"95 % confidence (alchimia optimize --model {serving_dir.resolve()}):"
    )
    plan = optimize(load_order(order), load_stock(stock), load_served(serving_dir), 0.05)
    result.plan = plan.to_dict()
    print_plan(result.plan, console.file)


def _follow_rounds(
    console: Console,
    monitor: Monitor,
    fed: LocalFederation,
    ids: list[str],
    rounds: int,
    timeout: float,
    result: DemoResult,
) -> None:
    width = 7 * len(SHOWN)  # each figure is 6 wide plus a space
    head = "version " + "".join(f"{a:>{width}s}" for a in ids)
    units = " " * 8 + "".join(
        " ".join(f"{unit:>6s}" for _, unit, _ in SHOWN).rjust(width) for _ in ids
    )
    console.print(
        "\nvalidation MAE on each plant's held-out heats of the model it would serve "
        "(the global version with the plant's own site part)"
    )
    console.print(head)
    console.print(units)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("rounds", total=rounds)
        for version in range(rounds + 1):
            if not monitor.wait_validation(version, set(ids), timeout):
                err = fed.coordinator.error if fed.coordinator else None
                raise RuntimeError(
                    f"no validation figures for version {version} in {timeout} s"
                    + (f": coordinator failed: {err}" if err else "")
                )
            figures = monitor.validation[version]
            result.validation[version] = {a: dict(figures[a]) for a in ids}
            cells = "".join(
                f"{' '.join(fmt.format(figures[a][f'mae_{t}']) for t, _, fmt in SHOWN):>{width}s}"
                for a in ids
            )
            console.print(f"{version:7d} {cells}")
            progress.update(bar, completed=version)
