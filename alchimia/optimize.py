"""``alchimia optimize``: the cheapest charge for an order, on a site's serving model.

    alchimia optimize --order ORDER.toml --stock STOCK.toml --model DIR [--risk 0.05] [--json]
    alchimia optimize --order ORDER.toml --stock STOCK.toml --agent-id plant-1 \
        [--config consumer.toml | --broker URL --federation NAME] [--risk 0.05] [--json]

``DIR`` is a site's serving directory (``model.onnx``, ``model.json``, ``calibration.json``,
``power_on.json``; ``models.served``); with ``--agent-id`` the agent plans it on the model
it serves, over the broker (``optimize/request``, docs/PROTOCOL.md), as a plant HMI would.
Torch-free: onnxruntime, numpy, scipy, pydantic (over the broker: MQTT only).
Exit status 0 with a plan, 1 when the order cannot be met (the answer says which
constraint fails and by how much), 2 for unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--order", type=Path, required=True, help="order TOML (deploy/examples/order.toml)"
    )
    parser.add_argument(
        "--stock", type=Path, required=True, help="stock TOML (deploy/examples/stock.toml)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="a site's serving directory (or its model.onnx)")
    where.add_argument(
        "--agent-id",
        help="ask this agent over the broker (with --config or "
        "--broker/--federation: a consumer identity)",
    )
    parser.add_argument("--consumer-id", help="this identity (default: from --config)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the agent's answer"
    )
    parser.add_argument(
        "--risk",
        type=float,
        default=0.05,
        help="allowed probability of each element ending over its maximum",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_plan(plan: dict[str, Any], out: IO[str] | None = None) -> None:
    """The plan for a person at the furnace or in the scrap yard."""
    w = (out or sys.stdout).write
    w(
        f"{plan['order']}: {plan['status']} (model version {plan['model_version']}, "
        f"risk {plan['risk_asked']:g})\n"
    )
    for message in [v["message"] for v in plan["infeasible"]] + plan["warnings"]:
        w(f"  ! {message}\n")
    w("\ncharge, t\n")
    for grade, t in plan["charge"].items():
        if t > 0:
            w(f"  {grade:<6} {t:8.2f}\n")
    w(f"  {'total':<6} {sum(plan['charge'].values()):8.2f}\n")
    if plan.get("baskets"):
        for i, basket in enumerate(plan["baskets"], 1):
            parts = ", ".join(f"{g} {t:.1f}" for g, t in basket.items())
            w(f"  basket {i}: {parts}\n")
    level = plan["level"]
    w(f"\npredicted (interval {'-' if level is None else f'{level:.0%}'})\n")
    digits = {"energy_kwh_t": 1, "tapped_t": 1, "tap_temp_c": 0}
    for target, p in plan["predicted"].items():
        d = digits.get(target, 4)
        w(f"  {target:<13} {_fmt(p['mean'], d):>9}  [{_fmt(p['lo'], d)}, {_fmt(p['hi'], d)}]\n")
    w(f"  planned power-on {plan['inputs'].get('power_on_min', float('nan')):.1f} min\n")
    c = plan["cost"]
    w(
        f"\ncost: material {c['material']:.0f}, energy {c['energy']:.0f}, CO2 {c['co2']:.0f}, "
        f"total {c['total']:.0f} ({c['per_t']:.2f} per t tapped); "
        f"CO2 {plan['co2_t']['total']:.2f} t\n"
    )
    if plan["risk"]:
        risks = ", ".join(f"{el} {_fmt(p, 3)}" for el, p in plan["risk"].items())
        w(f"probability over the maximum: {risks}\n")
    if plan["binding"]:
        w("binding:\n")
        for b in plan["binding"]:
            price = b.get("shadow_price")
            extra = "" if price is None else f" (cost per t per unit of limit {price:+.4g})"
            w(f"  {b['constraint']}: {b['value']:.4g} at limit {b['limit']:.4g}{extra}\n")


def run(args: argparse.Namespace) -> int:
    from alchimia.models.charge import load_order, load_stock, optimize

    order, stock = load_order(args.order), load_stock(args.stock)
    if args.agent_id is not None:
        plan = _ask_agent(args)
        if plan is None:
            return 1
    else:
        from alchimia.models.served import load_served

        plan = optimize(order, stock, load_served(args.model), args.risk).to_dict()
    if args.json:
        print(json.dumps(plan, indent=1))
    else:
        print_plan(plan)
    return 0 if plan["status"] == "optimal" else 1


def _ask_agent(args: argparse.Namespace) -> dict[str, Any] | None:
    """The agent's plan over the broker; None (and why on stderr) if it gave none."""
    import tomllib

    from alchimia.consumer import Consumer, ConsumerSettings, RequestFailed

    overrides = {
        k: getattr(args, k, None)
        for k in ("broker", "federation", "username", "password", "consumer_id")
    }
    settings = ConsumerSettings.load(args.config, **overrides)
    order = tomllib.loads(args.order.read_text())
    stock = tomllib.loads(args.stock.read_text())
    try:
        with Consumer(settings) as consumer:
            answer = consumer.optimize(
                args.agent_id, order, stock, risk=args.risk, timeout=args.timeout
            )
    except RequestFailed as exc:
        print(
            f"alchimia optimize: agent {args.agent_id} refused: {exc.code}: {exc.message}",
            file=sys.stderr,
        )
        return None
    except (TimeoutError, ConnectionError) as exc:
        print(f"alchimia optimize: {exc}", file=sys.stderr)
        return None
    return answer.plan
