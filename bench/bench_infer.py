"""Benchmark of predictions on request: round trip of an ``infer`` request over a local
mosquitto, beside the same serving model in process.

The target (issue 12): p99 of a request/response under 5 ms over a local broker, for one
planned heat. What is measured, each as the median, p99 and max over many sequential
requests after a warm-up:

* ``mqtt round trip``: ``alchimia.consumer.Consumer.infer`` to a running ``Agent`` (its
  request thread, the project's decoder and handler, ONNX Runtime, calibration) through
  mosquitto on 127.0.0.1 (plain listener, QoS 1 both ways), the client's clock from
  before encoding the request to after decoding the answer;
* ``handler in process``: ``agent.requests.Responder.handle`` on the encoded request
  (decode, validate, predict, interval, encode): the agent's share of the round trip;
* ``onnx in process``: ``OnnxPredictor.predict`` of one row: the model alone.

A batch of ``--batch`` heats per request is measured the same way. The agent serves the
initial ``eaf-hybrid-v1`` model of a new federation with its calibration on its 150
history heats (the latency does not depend on the weights); it takes no new heats and
trains nothing, so nothing else competes for the two cores.

Run: ``.venv/bin/python bench/bench_infer.py [--requests 2000] [--batch 100]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures

from alchimia.agent.requests import INFER, Responder
from alchimia.agent.settings import AgentSettings
from alchimia.broker.schemas import InferRequestBody, PlannedHeat, message
from alchimia.consumer import Consumer, ConsumerSettings
from alchimia.local import AgentThread
from alchimia.models.spec import ModelSpec
from tests.data.models import first_model
from tests.data.plans import PLANNED_HEAT
from tests.fixtures.mosquitto import Mosquitto
from tests.integration.helpers import RawClient, wait_for

TARGET_P99_MS = 5.0
PLAN = PLANNED_HEAT


def _stats(samples_s: list[float]) -> tuple[float, float, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return statistics.median(ms), p99, ms[-1]


def _time(fn: Callable[[], object], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100, help="heats per batched request")
    ap.add_argument("--warmup", type=int, default=100)
    args = ap.parse_args()
    spec = ModelSpec(architecture="eaf-hybrid-v1")
    rows: list[tuple[str, tuple[float, float, float], int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        fed = "bench"
        settings = AgentSettings.load(
            None,
            broker=broker.url,
            federation=fed,
            agent_id="plant-1",
            history_heats=150,
            heat_interval_s=0,
            store_sensors=False,
            state_dir=Path(tmp) / "agents",
        )
        agent = AgentThread(settings)
        coordinator = RawClient(broker.host, broker.port, f"{fed}-coordinator")
        try:
            agent.start()
            coordinator.publish(
                f"alchimia/v1/{fed}/model/current",
                first_model(spec),
                retain=True,
            )
            wait_for(lambda: agent.agent.state is not None, 60, "the agent to serve")
            state = agent.agent.state
            one = [PlannedHeat(heat_id="H1", inputs=PLAN)]
            many = [PlannedHeat(heat_id=f"H{i}", inputs=PLAN) for i in range(args.batch)]
            responder = Responder("plant-1", agent.agent.topics, [INFER])
            topic = agent.agent.topics.agent_request("plant-1", "infer")
            with Consumer(
                ConsumerSettings(broker=broker.url, federation=fed, consumer_id="bench")
            ) as consumer:
                for label, heats, n in (
                    ("1 heat", one, args.requests),
                    (f"{args.batch} heats", many, args.requests // 10),
                ):
                    samples = _time(
                        lambda h=heats: consumer.infer("plant-1", h, timeout=10), n, args.warmup
                    )
                    rows.append((f"mqtt round trip, {label}", _stats(samples), n))
                    payload = message("bench", InferRequestBody(request_id="r", heats=heats))
                    samples = _time(
                        lambda p=payload: responder.handle(topic, p, state), n, args.warmup
                    )
                    rows.append((f"handler in process, {label}", _stats(samples), n))
                    x = np.array(
                        [[PLAN.get(f, 0.0) for f in spec.features]] * len(heats), np.float32
                    )
                    samples = _time(lambda x=x: state.predictor.predict(x), n, args.warmup)
                    rows.append((f"onnx in process, {label}", _stats(samples), n))
        finally:
            agent.stop()
            coordinator.close()
            broker.stop()
    print(f"{'what':<32}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'requests':>10}")
    for label, (p50, p99, mx), n in rows:
        print(f"{label:<32}{p50:>10.3f}{p99:>10.3f}{mx:>10.3f}{n:>10}")
    p99 = rows[0][1][1]
    verdict = "MET" if p99 < TARGET_P99_MS else "MISSED"
    print(
        f"{verdict} p99 of one-heat request/response over local mosquitto < "
        f"{TARGET_P99_MS:g} ms: {p99:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
