"""The ``alchimia`` console command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path

from alchimia.logs import configure as configure_logging
from alchimia.settings_cli import add_settings_arguments, settings_given


def _logging_options(p: argparse.ArgumentParser, level: str) -> None:
    p.add_argument("--log-level", default=level)
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line (for log shippers)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (flags and env override it)")
    p.add_argument("--broker", help="mqtt://HOST:PORT")
    p.add_argument("--federation", help="federation name (topic prefix alchimia/v1/NAME)")
    p.add_argument("--username")
    p.add_argument("--password")
    _logging_options(p, "INFO")


def _experiment_arguments(
    drift: argparse.ArgumentParser,
    federation: argparse.ArgumentParser,
    charge: argparse.ArgumentParser,
    calibration: argparse.ArgumentParser,
    characterise: argparse.ArgumentParser,
) -> None:
    """The experiments' own options; their modules import torch, so they are read only
    when the command line asks for an experiment."""
    from alchimia.characterise import add_experiment_arguments  # light: no torch
    from alchimia.experiment_charge import add_arguments as add_charge_arguments

    add_experiment_arguments(characterise)
    add_charge_arguments(charge)  # torch-free until it runs
    try:  # torch is needed: an inference-only install has no experiments
        from alchimia.experiment import add_arguments as add_drift_arguments
        from alchimia.experiment_calibration import add_arguments as add_calibration_arguments
        from alchimia.experiment_federation import add_arguments as add_federation_arguments
    except ImportError as exc:
        for kind in (drift, federation, calibration):
            kind.set_defaults(missing=f"needs the training extra (pip install .[train]): {exc}")
    else:
        add_drift_arguments(drift)
        add_federation_arguments(federation)
        add_calibration_arguments(calibration)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``command`` given) every command with only that one's
    options in full: the experiments' options import torch and provisioning's import the
    crypto stack, which the other commands (and ``--help``) do without."""
    parser = argparse.ArgumentParser(prog="alchimia", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a local federation on simulated plants")
    demo.add_argument("--broker", help="external broker mqtt://HOST:PORT (default: embedded)")
    demo.add_argument("--agents", type=int, default=3, help="simulated plants, one agent each")
    demo.add_argument("--rounds", type=int, default=5, help="federated rounds before it stops")
    demo.add_argument("--federation", help="default: demo-<random>")
    demo.add_argument(
        "--strategy",
        default="fedavg",
        help="aggregation strategy (README, "
        "'Aggregation'): fedavg, fedprox, fedadam, median, krum, ...",
    )
    demo.add_argument("--mode", choices=["sync", "async"], default="sync")
    demo.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="the coordinator sees only the sum of the plants' updates "
        "(docs/SECURITY.md, 'Secure aggregation'; sync mode)",
    )
    demo.add_argument(
        "--architecture", choices=["eaf-hybrid-v1", "mlp-v1"], default="eaf-hybrid-v1"
    )
    demo.add_argument("--influx", help="store sensor data in this InfluxDB (default: SQLite)")
    demo.add_argument("--out", type=Path, default=Path("runs"), help="where models are written")
    _logging_options(demo, "WARNING")

    coord = sub.add_parser(
        "coordinator", help="run the coordinator service (or send it an admin command)"
    )
    coord.add_argument("--config", type=Path, help="TOML config file (flags and env override it)")
    _logging_options(coord, "INFO")
    if command in (None, "coordinator"):  # the settings import numpy and pydantic models
        from alchimia.coordinator.settings import CoordinatorSettings

        add_settings_arguments(coord, CoordinatorSettings)
    actions = coord.add_subparsers(dest="action", metavar="{rollback,pause,resume,stop}")
    for action, text in (
        ("rollback", "roll the federation back to VERSION (a new version)"),
        ("pause", "open no new round until resume (the open one finishes)"),
        ("resume", "open rounds again after a pause"),
        ("stop", "stop the coordinator after the current round"),
    ):
        admin = actions.add_parser(action, help=text)
        if action == "rollback":
            admin.add_argument("version", type=int)
        admin.add_argument("--admin-id", default="admin")
        admin.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="seconds to wait for the coordinator's confirmation",
        )

    agent = sub.add_parser("agent", help="run an edge agent")
    agent.add_argument("--config", type=Path, help="TOML config file (flags and env override it)")
    _logging_options(agent, "INFO")
    if command in (None, "agent"):
        from alchimia.agent.settings import AgentSettings

        add_settings_arguments(agent, AgentSettings)
    experiment = sub.add_parser("experiment", help="offline experiments on simulated plants")
    kinds = experiment.add_subparsers(
        dest="experiment",
        required=True,
        metavar="{drift,federation,charge,calibration,characterise}",
    )
    drift = kinds.add_parser(
        "drift",
        help="supplier change at one plant: local, static "
        "global, federated, federated + continual learning",
    )
    federation = kinds.add_parser(
        "federation",
        help="five unequal plants: local, pooled and federated models, MLP, ridge and the hybrid",
    )
    charge = kinds.add_parser(
        "charge",
        help="the charge optimiser against each plant's "
        "practice mix, the charges executed by the simulator",
    )
    calibration = kinds.add_parser(
        "calibration", help="coverage of the sites' calibrated intervals, before and after a drift"
    )
    characterise_x = kinds.add_parser(
        "characterise",
        help="learned scrap characterisation of each plant against the simulator's truth",
    )
    for kind in (drift, federation, charge, calibration, characterise_x):
        _logging_options(kind, "WARNING")
    if command in (None, "experiment"):
        _experiment_arguments(drift, federation, charge, calibration, characterise_x)

    from alchimia.optimize import add_arguments as add_optimize_arguments

    optimize = sub.add_parser(
        "optimize",
        help="the cheapest charge for an order on a site's serving model (no torch needed)",
    )
    _common(optimize)
    add_optimize_arguments(optimize)

    from alchimia.infer import add_arguments as add_infer_arguments  # light: no torch

    infer = sub.add_parser(
        "infer", help="predict planned heats with a site's serving model (no torch needed)"
    )
    _common(infer)
    add_infer_arguments(infer)

    status = sub.add_parser(
        "status",
        help="what a running federation is doing: coordinator, "
        "round, every agent (read off the bus)",
    )
    _common(status)
    status.add_argument(
        "--wait", type=float, default=2.0, help="seconds to listen after connecting (default 2)"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    from alchimia.characterise import add_arguments as add_characterise_arguments  # no torch

    characterise = sub.add_parser(
        "characterise",
        help="learned properties of each scrap grade (yield, residuals, energy) with uncertainty",
    )
    add_characterise_arguments(characterise)
    _logging_options(characterise, "WARNING")

    from alchimia.versions import add_arguments as add_versions_arguments  # light

    versions = sub.add_parser(
        "models",
        help="list the coordinator's model versions or "
        "export one as ONNX (reads its state directory)",
    )
    add_versions_arguments(versions)
    _logging_options(versions, "WARNING")

    provision = sub.add_parser(
        "provision",
        help="create or update a federation's CA, "
        "certificates, passwords, ACLs and mosquitto config",
    )
    _logging_options(provision, "INFO")
    if command in (None, "provision"):
        from alchimia.deploy.provision import add_arguments as add_provision_arguments

        add_provision_arguments(provision)
    return parser


def run_coordinator(args: argparse.Namespace) -> int:
    from alchimia.coordinator.service import Coordinator
    from alchimia.coordinator.settings import CoordinatorSettings

    if args.action is not None:
        return run_admin(args)
    settings = CoordinatorSettings.load(args.config, **settings_given(args, CoordinatorSettings))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        coordinator = Coordinator(settings)
        try:
            await coordinator.run(stop)
        finally:
            coordinator.db.close()

    asyncio.run(main())
    return 0


def run_admin(args: argparse.Namespace) -> int:
    """``alchimia coordinator rollback|pause|resume|stop``: one command over the bus."""
    from alchimia.broker.schemas import AdminBody
    from alchimia.coordinator.admin import send_admin
    from alchimia.coordinator.settings import CoordinatorSettings

    settings = CoordinatorSettings.load(args.config, **settings_given(args, CoordinatorSettings))
    command = AdminBody(action=args.action, version=getattr(args, "version", None))
    try:
        line = asyncio.run(send_admin(settings, command, args.admin_id, args.timeout))
    except TimeoutError:
        why = f" and does version {args.version} exist" if args.action == "rollback" else ""
        print(
            f"no confirmation within {args.timeout:.0f} s: is the coordinator running{why}?",
            file=sys.stderr,
        )
        return 1
    print(f"federation {settings.federation} {line}")
    return 0


def run_versions(args: argparse.Namespace) -> int:
    from alchimia.versions import run

    return run(args)


def run_agent(args: argparse.Namespace) -> int:
    from alchimia.agent.ingest.sources import build_heat_source
    from alchimia.agent.service import Agent
    from alchimia.agent.settings import AgentSettings

    s = AgentSettings.load(args.config, **settings_given(args, AgentSettings))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    Agent(s, build_heat_source(s)).run(stop)
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    try:  # every experiment trains: an inference-only install has none
        import torch  # noqa: F401
    except ImportError as exc:
        args.missing = f"needs the agent extra (pip install .[agent]): {exc}"
    if getattr(args, "missing", None):
        print(f"alchimia experiment: {args.missing}", file=sys.stderr)
        return 2
    if args.experiment == "charge":
        from alchimia.experiment_charge import run
    elif args.experiment == "characterise":
        from alchimia.experiment_characterise import run
    elif args.experiment == "federation":
        from alchimia.experiment_federation import run
    elif args.experiment == "calibration":
        from alchimia.experiment_calibration import run
    else:
        from alchimia.experiment import run
    return run(args)


def run_optimize(args: argparse.Namespace) -> int:
    from alchimia.optimize import run

    return run(args)


def run_infer(args: argparse.Namespace) -> int:
    from alchimia.infer import run

    return run(args)


def run_status(args: argparse.Namespace) -> int:
    from alchimia.status import run

    return run(args)


def run_characterise(args: argparse.Namespace) -> int:
    from alchimia.characterise import run

    return run(args)


def run_provision(args: argparse.Namespace) -> int:
    from alchimia.deploy.provision import run

    return run(args)


def run_demo_command(args: argparse.Namespace) -> int:
    from alchimia.demo import run_demo

    run_demo(
        broker=args.broker,
        agents=args.agents,
        rounds=args.rounds,
        federation=args.federation,
        strategy=args.strategy,
        mode=args.mode,
        secure_aggregation=args.secure_aggregation,
        architecture=args.architecture,
        influx=args.influx,
        out_dir=args.out,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else "").parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    commands = {
        "demo": run_demo_command,
        "coordinator": run_coordinator,
        "agent": run_agent,
        "provision": run_provision,
        "experiment": run_experiment,
        "optimize": run_optimize,
        "infer": run_infer,
        "status": run_status,
        "characterise": run_characterise,
        "models": run_versions,
    }
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as exc:  # settings errors: say what to fix
        print(f"alchimia {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
