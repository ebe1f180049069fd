"""``alchimia infer``: predict planned heats with a site's serving model over the broker.

    alchimia infer --config consumer.toml --agent-id plant-1 heats.csv [--level 0.9] [--json]

Needs neither torch nor ONNX Runtime: it only speaks MQTT (alchimia.consumer).
Exit status: 0 answered, 1 the agent answered with an error or did not answer, 2 bad
input or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        type=Path,
        metavar="FILE.json|FILE.csv",
        help='planned heats: JSON (one heat, a list, or {"heats": [...]}) or '
        "CSV (a header of feature names, optional heat_id column)",
    )
    p.add_argument("--agent-id", required=True, help="the site whose serving model answers")
    p.add_argument("--consumer-id", help="this identity (default: from --config)")
    p.add_argument("--level", type=float, help="interval level, e.g. 0.9 (default: the site's)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.5g}"


def table(answer: Any) -> str:
    """The answer as text: one block per heat, one line per target."""
    lines = []
    for i, p in enumerate(answer.predictions):
        head = f"heat {p.heat_id or i}: model version {answer.model_version}"
        if p.lower is not None:
            head += (
                f", {answer.level:.0%} interval (calibrated on {answer.calibration_heats} heats)"
            )
        else:
            head += f", no interval yet ({answer.calibration_heats} heats calibrated)"
        if p.power_on_min is not None:
            head += f"; power_on_min estimated {p.power_on_min:.1f}"
        lines.append(head)
        lines.append(f"  {'target':<14}{'predicted':>12}{'lower':>12}{'upper':>12}")
        for t, v in p.outputs.items():
            lo = p.lower.get(t) if p.lower else None
            hi = p.upper.get(t) if p.upper else None
            lines.append(f"  {t:<14}{_fmt(v):>12}{_fmt(lo):>12}{_fmt(hi):>12}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from alchimia.consumer import Consumer, ConsumerSettings, RequestFailed, load_heats

    overrides = {
        k: getattr(args, k, None)
        for k in ("broker", "federation", "username", "password", "consumer_id")
    }
    settings = ConsumerSettings.load(args.config, **overrides)
    try:
        heats, file_level = load_heats(args.file)
    except (OSError, ValueError) as exc:
        print(f"alchimia infer: {exc}", file=sys.stderr)
        return 2
    level = args.level if args.level is not None else file_level
    try:
        with Consumer(settings) as consumer:
            answer = consumer.infer(args.agent_id, heats, level=level, timeout=args.timeout)
    except RequestFailed as exc:
        if args.json:
            print(json.dumps(exc.response.model_dump(mode="json"), indent=1))
        print(
            f"alchimia infer: agent {args.agent_id} refused: {exc.code}: {exc.message}",
            file=sys.stderr,
        )
        return 1
    except (TimeoutError, ConnectionError) as exc:
        print(f"alchimia infer: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer.model_dump(mode="json"), indent=1))
    else:
        print(table(answer))
    return 0
