"""Figures of the first federation: demo wall time, message sizes, coordinator time per
round excluding training, and agent process memory.

    .venv/bin/python bench/bench_federation.py [--agents 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from alchimia.broker.embedded import EmbeddedBroker
from alchimia.broker.schemas import UpdateBody, decode, message
from alchimia.coordinator.persistence import CoordinatorDB
from alchimia.coordinator.publishing import initial_weights, model_message
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.coordinator.strategies import make_strategy
from alchimia.demo import run_demo
from alchimia.local import CoordinatorThread
from alchimia.models.spec import ModelSpec
from alchimia.monitor import Monitor


def message_sizes(spec: ModelSpec) -> tuple[bytes, bytes]:
    weights = initial_weights(spec, 0)
    rng = np.random.default_rng(0)
    delta = {
        k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in weights.items()
    }
    update = message(
        "plant-1",
        UpdateBody(
            round_id=1, base_version=0, num_samples=200, delta=delta, metrics={"train_loss": 0.1}
        ),
    )
    model = model_message(
        "coordinator",
        spec,
        weights,
        version=1,
        parent=0,
        round_id=1,
        metadata={"strategy": "fedavg"},
    )
    return update, model


def coordinator_round_seconds(
    spec: ModelSpec, update: bytes, agents: int, repeats: int = 10
) -> float:
    """Decode and aggregate ``agents`` updates, export, check, persist: one round's work."""
    weights = initial_weights(spec, 0)
    strategy = make_strategy("fedavg")
    with tempfile.TemporaryDirectory() as tmp:
        db = CoordinatorDB(Path(tmp))
        start = time.perf_counter()
        for version in range(1, repeats + 1):
            acc = strategy.open_round(weights)
            for _ in range(agents):
                body = decode(update, UpdateBody).body
                acc.add(body.delta, float(body.num_samples))
            weights = acc.finish()
            payload = model_message(
                "coordinator",
                spec,
                weights,
                version=version,
                parent=version - 1,
                round_id=version,
                metadata={},
            )
            db.save_version(version, payload, round_id=version, parent=version - 1, metadata={})
        db.close()
    return (time.perf_counter() - start) / repeats


def agent_rss_mb(agents: int, rounds: int) -> list[tuple[float, float]]:
    """(current, peak) RSS in MB of separate ``alchimia agent`` processes after ``rounds``."""
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = CoordinatorSettings.load(
            None,
            broker=broker.url,
            federation="rss",
            state_dir=Path(tmp),
            rounds=rounds,
            min_agents=agents,
            epochs=5,
            lr=5e-3,
        )
        monitor = Monitor(broker.url, "rss", "rss-monitor").start()
        coordinator = CoordinatorThread(settings).start()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "alchimia",
                    "agent",
                    "--broker",
                    broker.url,
                    "--federation",
                    "rss",
                    "--agent-id",
                    f"plant-{i}",
                    "--plant",
                    str(i),
                    "--history-heats",
                    "300",
                    "--heat-interval",
                    "1",
                    "--log-level",
                    "WARNING",
                ]
            )
            for i in range(1, agents + 1)
        ]
        try:
            ids = {f"plant-{i}" for i in range(1, agents + 1)}
            if not monitor.wait_validation(rounds, ids, 300):
                raise RuntimeError("the agents did not finish the rounds")
            figures = []
            for p in procs:
                status = Path(f"/proc/{p.pid}/status").read_text().splitlines()
                kb = {
                    line.split(":")[0]: int(line.split()[1])
                    for line in status
                    if line.startswith(("VmRSS", "VmHWM"))
                }
                figures.append((kb["VmRSS"] / 1024, kb["VmHWM"] / 1024))
            return figures
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            coordinator.stop()
            monitor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # The model a new federation gets by default.
    spec = ModelSpec(architecture=CoordinatorSettings.model_fields["architecture"].default)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_demo(
            agents=args.agents,
            rounds=args.rounds,
            out_dir=Path(tmp),
            console=Console(file=io.StringIO()),
        )
    demo_s = time.perf_counter() - start

    update, model = message_sizes(spec)
    per_round = coordinator_round_seconds(spec, update, args.agents)
    rss = agent_rss_mb(args.agents, args.rounds)

    n_params = sum(int(np.prod(s)) for s in spec.parameter_shapes().values())
    print(f"default model: {spec.architecture}, {n_params} shared parameters, hidden {spec.hidden}")
    print(
        f"demo wall time ({args.agents} agents, {args.rounds} rounds, embedded broker): "
        f"{demo_s:.1f} s"
    )
    print(f"one update message: {len(update)} bytes")
    print(f"one model message:  {len(model)} bytes")
    print(
        f"coordinator time per round excluding training ({args.agents} updates decoded and "
        f"aggregated, ONNX export + parity check, durable save): {per_round * 1000:.1f} ms"
    )
    for i, (now, peak) in enumerate(rss, 1):
        print(f"agent process plant-{i} RSS: {now:.0f} MB (peak {peak:.0f} MB)")


if __name__ == "__main__":
    main()
